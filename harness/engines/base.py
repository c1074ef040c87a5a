"""The engine contract: a pure argv builder, a launch, control, and the meaning of an exit.

Engines know nothing of suites. A Guest owns one engine and turns its exits into
lifecycle events (a reset that needs a relaunch, a panic, a clean stop).

What an engine needs from the host (the binary it runs, the accelerator it may
use) is found out before a command line is built, by whoever launches it
(harness.accel), and handed in as a `VmmSetup`: `command()` reads nothing, so the
argv `harness plan` prints is the argv a run launches, given the same setup.
Where the engines differ in ways other layers must know, they say so with a
capability (`accelerators`, `relaunches_on_reset`, `adds_console_argument`), never
by their name being compared elsewhere.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from pathlib import Path
from typing import Any

from harness.environments import Environment
from harness.errors import HarnessError, Unsupported
from harness.exits import ExitInfo
from harness.images.model import GuestImage
from harness.profiles import get_profile


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


@dataclasses.dataclass(frozen=True)
class BinaryLookup:
    """Where an engine's binary comes from, and what is wrong with it if anything.

    `name` is the program's own name, what a command line shows when none is found.
    """

    name: str
    path: str | None
    source: str  # "argument", an environment variable, "PATH", or "" (not found)
    problem: str | None = None

    @property
    def shown(self) -> str:
        """The binary as argv[0]: its path, or its name when there is none."""
        return self.path or self.name


@dataclasses.dataclass(frozen=True)
class VmmSetup:
    """What the host decided for one VMM launch, before its command line is built.

    `binary`: the VMM's path (harness.engines.base.Engine.locate); `accel`: "kvm" or
    "tcg", from the environment's policy and the KVM verdict (harness.accel);
    `version`: what the binary says it is, where the engine can tell ("" otherwise).
    """

    binary: str
    accel: str
    version: str = ""


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

    async def exit_info(self, returncode: int) -> ExitInfo | None:
        """What this VMM's exit meant, where the VMM knows more than its status (QMP
        events, crosvm's last log lines); None: the engine's `classify_exit` decides."""
        del returncode
        return None

    async def power_button(self) -> None:
        raise Unsupported("this engine has no power button")

    async def balloon(self, size_bytes: int) -> None:
        """Inflate the balloon so that it holds `size_bytes` taken from the guest (0: deflate).

        crosvm's meaning, the one suites use; QEMU's target-size value is derived from it.
        """
        raise Unsupported("this engine has no balloon control")

    async def balloon_stats(self) -> dict[str, Any]:
        """At least `balloon_actual`: bytes the balloon holds now. (Any: the VMM's own
        report, passed on as it came; crosvm adds the guest driver's `stats`.)"""
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
    # The accelerators the engine can run a guest with, preferred first. One without "tcg"
    # cannot run a guest where KVM does not work (crosvm); one without "kvm" is never probed.
    accelerators: tuple[str, ...] = ("kvm", "tcg")
    # The VMM exits on a guest reset instead of resetting in place, and leaves the restart
    # to its caller (crosvm's status 32): the Guest launches it again into the same log.
    relaunches_on_reset: bool = False
    # The VMM adds the console= kernel argument itself for its console serial port (crosvm);
    # the profile must not add a second one.
    adds_console_argument: bool = False

    @abc.abstractmethod
    def locate(self, arch: str) -> BinaryLookup:
        """The VMM binary for `arch` guests, or why there is none (looked up on the host)."""

    async def version(self, binary: str) -> str:
        """What `binary` says its version is, recorded with every result ("" unknown)."""
        del binary
        return ""

    def kvm_precheck(self, arch: str) -> str | None:
        """Why KVM cannot work for `arch` guests without trying (None: a probe boot decides).

        Cheap host facts only; the verdict that counts is a probe boot (harness.accel).
        """
        del arch
        return kvm_access_problem()

    def check_image(self, env: Environment, image: GuestImage) -> None:
        """Refuse an image this engine cannot boot (a HarnessError saying why), before any
        command line is built or anything is started. Reads the image's files if it must."""
        del env, image

    @abc.abstractmethod
    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        """The exact argv, a pure function of its inputs (printed for repro): it reads
        no file, cache or PATH; what the host decided comes in `setup`."""

    @abc.abstractmethod
    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> Vmm:
        """Start the VMM with its serial console on `console_fd` (a pty slave)."""

    @abc.abstractmethod
    def classify_exit(self, returncode: int) -> ExitInfo: ...

    def implicit_devices(self, env: Environment) -> frozenset[str]:
        """Devices this engine presents whether or not the configuration names them."""
        del env
        return frozenset({"rtc", "serial"})

    def device_unavailable(self, env: Environment, device: str) -> str | None:
        """Why a test that needs `device` cannot run on `env` here (None: it can).

        A per-test reason rather than a whole-environment one: a missing host
        resource for one device only costs the tests that need that device.
        """
        del env, device
        return None

    # -- snapshots (harness.snapshot) -----------------------------------------------------------

    async def snapshot_unavailable(self, env: Environment) -> str | None:
        """None when `env`'s guests can be saved and restored here, else why not."""
        return f"the {self.name} engine cannot save and restore a VM"

    async def restore_from(self, env: Environment, state: Path, setup: VmmSetup) -> RestoreFrom:
        """How a guest of `env` starts from the saved `state` (an input to `command()`), with
        the VMM `setup` will launch."""
        del env, setup
        return RestoreFrom(state)


def binary_key(path: str) -> str:
    """A binary as a cache key: its path, size and mtime, so that a rebuilt or replaced one
    (the same path, the same version string) is another binary; the path alone where it
    cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def kvm_access_problem() -> str | None:
    """Why /dev/kvm cannot be used by this process (None: it opens read-write)."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except FileNotFoundError:
        return ("no /dev/kvm (no virtualisation on this machine, or the kvm module is not "
                "loaded)")
    except OSError as e:
        return f"cannot open /dev/kvm read-write ({e.strerror})"
    return None


def kernel_args(env: Environment, *, vmm_adds_console: bool = False) -> list[str]:
    """The guest kernel command line both engines pass: profile, panic policy, then environment.

    The environment's own arguments come last so that a person can override anything
    the profile or policy chose (the kernel takes the last value of a repeated key).
    For a run of a tests.json entry they end with the test environment's
    `emulator.kernel_args` (harness.plan.run_environment), botanist's order.
    `vmm_adds_console`: the engine's `adds_console_argument`.
    """
    profile = get_profile(env.profile)
    args = list(profile.kernel_args(arch=env.arch, vmm_adds_console=vmm_adds_console,
                                    nodename=env.name, entropy_mixin=env.entropy_mixin))
    args += profile.panic_args(env.panic_policy)
    args += env.kernel_args
    return args


class EnvironmentUnavailable(HarnessError):
    """An environment cannot run on this host (no binary, no working KVM): the reason."""
