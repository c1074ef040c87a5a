"""The engine contract: a pure argv builder, a launch, control, and the meaning of an exit.

Engines know nothing of suites. A Guest owns one engine and turns its exits into
lifecycle events (a reset that needs a relaunch, a panic, a clean stop).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from pathlib import Path
from typing import Any

from harness.environments import Environment
from harness.errors import Unsupported
from harness.images.model import GuestImage


class ExitKind(enum.StrEnum):
    STOP = "stop"  # guest powered off, or the host stopped it
    RESET = "reset"  # guest rebooted; the VMM exited so the caller can launch it again
    CRASH = "crash"  # VMM-side failure of a vCPU or device
    PANIC = "panic"  # guest kernel panic reported through pvpanic
    WATCHDOG = "watchdog"  # vCPU stall detector reset
    INVALID_ARGS = "invalid-args"  # the VMM rejected its command line: the harness's fault
    ERROR = "error"  # the VMM failed to configure or run
    KILLED = "killed"  # ended by a signal


@dataclasses.dataclass(frozen=True)
class ExitInfo:
    kind: ExitKind
    returncode: int
    explanation: str

    @property
    def infra(self) -> bool:
        """Whether this exit is the host's or harness's fault rather than the guest's."""
        return self.kind in (ExitKind.INVALID_ARGS, ExitKind.ERROR, ExitKind.KILLED,
                             ExitKind.CRASH)


@dataclasses.dataclass(frozen=True)
class RestoreFrom:
    """A saved VM to start from instead of booting (harness.snapshot).

    `state` is what the engine saved: QEMU's migration stream (a file), crosvm's
    snapshot (a directory). `transport` is how this QEMU reads a stream ("file" where
    it has the `file:` migration URI, QEMU >= 8.2; "fd" otherwise); crosvm has none.
    """

    state: Path
    transport: str = ""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Per-guest host paths; `workdir` is private (0700) and unique to this guest.

    `disk_format`: "raw" (the disks of a booted guest), or "qcow2" (the overlays a
    restored guest writes to, on the read-only base disks its snapshot was saved with).
    `restore`: start from this saved VM instead of booting (an input of the pure argv
    builder, like everything else here).
    """

    workdir: Path
    disks: tuple[Path, ...] = ()
    disk_format: str = "raw"
    restore: RestoreFrom | None = None

    @property
    def control_socket(self) -> Path:
        return self.workdir / "control.sock"

    @property
    def stderr_log(self) -> Path:
        return self.workdir / "vmm-stderr.log"


class Vmm(abc.ABC):
    """One launched VMM process and its control channel."""

    pid: int

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the process to exit and return its status (negative: signal)."""

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None: ...

    @abc.abstractmethod
    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the VM without telling the guest; kill the process group after `timeout`."""

    async def power_button(self) -> None:
        raise Unsupported("this engine has no power button")

    async def balloon(self, size_bytes: int) -> None:
        """Inflate the balloon so that it holds `size_bytes` taken from the guest (0: deflate).

        crosvm's meaning, the one suites use; QEMU's target-size value is derived from it.
        """
        raise Unsupported("this engine has no balloon control")

    async def balloon_stats(self) -> dict[str, Any]:
        """At least `balloon_actual`: bytes the balloon holds now."""
        raise Unsupported("this engine has no balloon statistics")

    async def suspend(self) -> None:
        raise Unsupported("this engine cannot suspend")

    async def resume(self) -> None:
        raise Unsupported("this engine cannot resume")

    # -- snapshots (harness.snapshot) -----------------------------------------------------------

    async def save_state(self, dest: Path, timeout: float = 120.0) -> None:
        """Pause the VM and save its whole state to `dest` (which must not exist yet)."""
        raise Unsupported("this engine cannot save a VM's state")

    async def finish_restore(self, source: RestoreFrom, timeout: float) -> None:
        """Bring a VMM launched with `RunPaths.restore` to a running guest; raise
        HarnessError with the VMM's own words if the restore fails, never wait past
        `timeout`."""
        raise Unsupported("this engine cannot restore a VM's state")

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill the whole process group and reap it. Idempotent; never raises."""


class Engine(abc.ABC):
    name: str

    @abc.abstractmethod
    def command(self, env: Environment, image: GuestImage, paths: RunPaths) -> list[str]:
        """The exact argv, a pure function of its inputs (printed for repro)."""

    @abc.abstractmethod
    async def unavailable(self, env: Environment) -> str | None:
        """None when `env` can run here, otherwise the reason it is skipped."""

    @abc.abstractmethod
    async def launch(
        self, env: Environment, image: GuestImage, paths: RunPaths, console_fd: int
    ) -> Vmm:
        """Start the VMM with its serial console on `console_fd` (a pty slave)."""

    @abc.abstractmethod
    def classify_exit(self, returncode: int) -> ExitInfo: ...

    def implicit_devices(self, env: Environment) -> frozenset[str]:
        """Devices this engine presents whether or not the configuration names them."""
        return frozenset({"rtc", "serial"})

    def accel(self, env: Environment) -> str:
        """The accelerator this engine will use for `env` (after probing, where it probes)."""
        return "kvm"

    # -- snapshots (harness.snapshot) -----------------------------------------------------------

    async def settle(self, env: Environment) -> None:
        """Probe now whatever `command()` depends on (QEMU's KVM verdict), so that the
        argv a snapshot is keyed on is the argv that will run."""
        del env  # nothing to probe for most engines

    async def snapshot_unavailable(self, env: Environment) -> str | None:
        """None when `env`'s guests can be saved and restored here, else why not."""
        return f"the {self.name} engine cannot save and restore a VM"

    async def restore_from(self, env: Environment, state: Path) -> RestoreFrom:
        """How a guest of `env` starts from the saved `state` (an input to `command()`)."""
        del env
        return RestoreFrom(state)

    async def vmm_identity(self, env: Environment) -> str:
        """What identifies the VMM a snapshot was saved by: a state saved by one version
        is not restored by another."""
        return ""


def kernel_args(env: Environment) -> list[str]:
    """The guest kernel command line both engines pass: profile, panic policy, then environment.

    The environment's own arguments come last so that a person can override anything
    the profile or policy chose (the kernel takes the last value of a repeated key).
    For a run of a tests.json entry they end with the test environment's
    `emulator.kernel_args` (harness.plan.run_environment), botanist's order.
    """
    from harness.profiles import get_profile

    args = list(get_profile(env.profile).kernel_args(
        arch=env.arch, engine=env.engine, nodename=env.name, entropy_mixin=env.entropy_mixin))
    if env.profile == "linux":
        # reset: panic reboots the guest after 1 s, the harness reports the crash and goes on;
        # halt: the guest stays down with the panic on screen until the harness stops it.
        args.append("panic=1" if env.panic_policy == "reset" else "panic=0")
    args += env.kernel_args
    return args
