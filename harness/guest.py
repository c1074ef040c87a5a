"""A booted guest: what a suite sees. Console + engine control + lifecycle.

Reboots are the engine's business, not the suite's: QEMU resets in place and
the same process carries on; crosvm exits with 32 and the Guest launches it
again on a fresh pty, logging a visible separator into the same serial log.
Either way `reboot()` returns when the new boot reached its shell.

A guest can also start from a saved VM instead of a boot (`restore()`, driven by
harness.snapshot): its first Boot is then marked `restored`, the only way a suite
can tell, and a later reboot is a real boot as on any guest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from harness.console import (
    CommandResult,
    Console,
    ConsoleEOF,
    ConsoleTimeout,
    SerialLog,
    open_console_pty,
)
from harness.engines.base import Engine, RestoreFrom, RunPaths, Vmm, VmmSetup
from harness.environments import Environment
from harness.errors import HarnessError
from harness.exits import ExitInfo, ExitKind
from harness.folders import safe_name
from harness.images.model import GuestImage
from harness.profiles import Crash, Profile, get_profile
from harness.workdirs import private_workdir

_BOOT_ID = re.compile(rb"boot_id=([0-9a-f-]+)")
# How long an exited VMM's console is still read for what it wrote last (see wait_exit).
DRAIN_AFTER_EXIT_S = 2.0


class BootTimeout(HarnessError):
    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


class GuestExited(HarnessError):
    """The VMM exited when the test did not expect it to."""

    def __init__(self, info: ExitInfo, tail: str, stderr: str = "") -> None:
        super().__init__(f"the VMM exited unexpectedly: {info.explanation}")
        self.info = info
        self.tail = tail
        self.stderr = stderr


class RestoreFailed(HarnessError):
    """A restore that did not give a guest with a working shell: the host's fault (INFRA_FAIL),
    with the VMM's own words."""


@dataclasses.dataclass
class Boot:
    index: int
    launched_at: float
    ready_s: float = 0.0
    boot_id: str = ""
    relaunch: bool = False
    # Not booted but restored from this snapshot (its boot_id is the saved boot's);
    # `ready_s` is then the time from launch to a shell that answered.
    restored: str = ""


class Guest:
    def __init__(
        self,
        env: Environment,
        engine: Engine,
        image: GuestImage,
        serial_log: Path,
        *,
        setup: VmmSetup,
        workdir: Path | None = None,
        disks: Sequence[Path] = (),
        log_cap: int | None = None,
        own_workdir: bool | None = None,
        disk_format: str = "raw",
        restore: RestoreFrom | None = None,
    ) -> None:
        self.env = env
        self.engine = engine
        self.image = image
        self.setup = setup
        self.profile: Profile = get_profile(env.profile)
        self.workdir = workdir or private_workdir(f"harness-{safe_name(env.name)[:24]}-")
        self._own_workdir = workdir is None if own_workdir is None else own_workdir
        self.paths = RunPaths(workdir=self.workdir, disks=tuple(disks), disk_format=disk_format,
                              restore=restore)
        try:
            # Before anything is opened: an engine that refuses the inputs leaves nothing behind.
            engine.check_image(env, image)
            self.command_line: list[str] = engine.command(env, image, self.paths, setup)
            # An unwritable results folder (OutputError) leaves nothing behind either.
            self.log = SerialLog(serial_log, cap=log_cap)
        except BaseException:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.console = Console(self.log, self.profile)
        self.vmm: Vmm | None = None
        self.boots: list[Boot] = []
        self.exits: list[ExitInfo] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def _launch(self) -> None:
        master, slave = open_console_pty()
        try:
            self.vmm = await self.engine.launch(self.env, self.image, self.paths, self.setup,
                                               slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.console.attach(master)

    async def launch(self) -> Boot:
        """Launch the VMM and return at once: the caller watches the console itself
        (a boot test, which has no shell to wait for, only a verdict on serial)."""
        self.log.mark(f"boot 1: {self.env.name} ({self.env.engine}, {self.env.arch})")
        boot = Boot(1, time.monotonic())
        self.boots.append(boot)
        await self._launch()
        return boot

    async def start(self) -> Boot:
        """Launch the VMM and wait for the first boot to reach the shell."""
        await self.launch()
        return await self.wait_boot(self.env.boot_timeout_s)

    async def restore(self, *, label: str, boot_id: str, transcript: bytes | None,
                      timeout: float) -> Boot:
        """Start the VMM from the saved VM in `paths.restore` and return once its shell
        answers, with the clock set and the network renewed (the profile's `after_restore`).

        The console is made to read as a booted guest's: `transcript`, the console of the
        boot that was saved, goes into the serial log first (None: the log already holds
        it, the guest that saved it having written there), so the log has its boot marker
        and the crash scan reads a whole boot. Whatever fails on the way (the VMM refuses
        the state, exits, or the shell does not answer by `timeout`) is a RestoreFailed
        carrying the VMM's stderr.
        """
        source = self.paths.restore
        if source is None:
            raise HarnessError("restore() needs a guest created with a RestoreFrom")
        if transcript is not None:
            self.log.mark(f"the console of the boot saved as snapshot {label}, which this "
                          f"guest is restored from")
            self.log.write(transcript)
        self.log.mark(f"boot 1: {self.env.name} ({self.env.engine}, {self.env.arch}) restored "
                      f"from snapshot {label}")
        boot = Boot(1, time.monotonic(), boot_id=boot_id, restored=label)
        self.boots.append(boot)
        try:
            with anyio.fail_after(timeout):
                await self._launch()
                vmm = self.vmm
                assert vmm is not None
                await vmm.finish_restore(source, timeout)
                # A later launch (crosvm's relaunch after a reset) is a boot, not a restore.
                self.paths = dataclasses.replace(self.paths, restore=None)
                # Set just before it is sent: rounding to the nearest second keeps the
                # guest within half a second of the host (date -s takes whole seconds), plus
                # however long the command took to reach `date`: on a host so loaded that
                # the round trip took over a second, the clock is set once more.
                for _ in range(2):
                    fixup = self.profile.after_restore(round(time.time() + 0.05))
                    if not fixup:
                        break
                    result = await self.console.run(fixup, timeout)
                    if result.status != 0:
                        raise HarnessError(f"`{fixup}` exited {result.status} in the restored "
                                           f"guest: {result.output[-500:]}")
                    if result.duration_s < 1.0:
                        break
        except TimeoutError:
            raise RestoreFailed(self._restore_problem(
                label, f"no answering shell within {timeout:g} s")) from None
        except (HarnessError, ConsoleEOF, ConsoleTimeout) as e:
            raise RestoreFailed(self._restore_problem(label, str(e))) from e
        boot.ready_s = time.monotonic() - boot.launched_at
        self.log.mark(f"restored in {boot.ready_s:.2f} s; the guest runs on from here")
        return boot

    def _restore_problem(self, label: str, what: str) -> str:
        err = self.vmm_stderr(2000).strip()
        vmm = self.env.engine
        return (f"restore from snapshot {label} failed: {what}"
                + (f"; {vmm} said: {err}" if err else ""))

    async def wait_reset(self, timeout: float | None = None) -> Boot:
        """The guest resets on its own (a panic under the reset policy): wait for the new boot."""
        self.boots.append(Boot(len(self.boots) + 1, time.monotonic()))
        return await self.wait_boot(timeout or self.env.boot_timeout_s)

    async def wait_boot(self, timeout: float) -> Boot:
        """Wait for the boot marker and the prompt, relaunching the VMM after a reset exit."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BootTimeout(f"no boot marker within {timeout:g} s", self.log.tail())
            try:
                marker = await self.console.expect([self.profile.boot_marker], remaining,
                                                   what="boot marker")
                break
            except ConsoleTimeout as e:
                raise BootTimeout(f"no boot marker within {timeout:g} s", e.tail) from None
            except ConsoleEOF:
                info = await self._reap()
                # An engine that exits on a reset (crosvm: 32) and, where pvpanic is present,
                # on a panic (crosvm: 34) instead of letting the guest's panic=N reset it as
                # QEMU does: under the "reset" panic policy both must come back the same way.
                resets = info.kind == ExitKind.RESET or (
                    info.kind == ExitKind.PANIC and self.env.panic_policy == "reset")
                if resets and self.engine.relaunches_on_reset:
                    await self.relaunch(info)
                    continue
                raise GuestExited(info, self.log.tail(), self.vmm_stderr()) from None
        boot = self.boots[-1]
        text = marker.group(0)
        if b"\n" not in text:
            text += (await self.console.expect([rb"[^\n]*\n"], 5.0,
                                               what="end of the boot marker line")).group(0)
        m = _BOOT_ID.search(text)
        if m:
            boot.boot_id = m.group(1).decode()
        await self.console.expect([self.profile.prompt], max(5.0, deadline - time.monotonic()),
                                  what="shell prompt")
        boot.ready_s = time.monotonic() - boot.launched_at
        return boot

    async def relaunch(self, info: ExitInfo) -> None:
        """crosvm leaves the restart to its caller: launch again, same serial log."""
        n = len(self.boots)
        self.log.mark(f"boot {n}: relaunching {self.env.engine} after {info.explanation}")
        self.boots[-1].relaunch = True
        await self._launch()

    async def reap(self) -> ExitInfo:
        """The VMM closed the console: how it exited (waited for briefly, then classified)."""
        return await self._reap()

    async def _reap(self, timeout: float = 10.0) -> ExitInfo:
        """The VMM closed its console: wait for its exit and classify it."""
        vmm = self.vmm
        if vmm is None:
            raise HarnessError("no VMM")
        with anyio.move_on_after(timeout):
            await vmm.wait()
        await vmm.kill()  # kills if still running; always closes the control channel
        rc = vmm.returncode if vmm.returncode is not None else -9
        info = await vmm.exit_info(rc) or self.engine.classify_exit(rc)
        self.exits.append(info)
        self.console.detach()
        return info

    async def wait_exit(self, timeout: float) -> ExitInfo:
        """Wait for the VMM to exit (after a shutdown request); kill it at the deadline."""
        vmm = self.vmm
        if vmm is None:
            return self.exits[-1]
        # Read the console to its end while waiting: the VMM never blocks on output, and
        # what the guest said last (`Requesting system poweroff`) reaches the serial log
        # even when the VMM exited before this wait began. Once it has exited, the end
        # is near: a process it left holding the console cannot make this wait long.
        drain = timeout if vmm.returncode is None else min(timeout, DRAIN_AFTER_EXIT_S)
        with anyio.move_on_after(timeout):
            with contextlib.suppress(ConsoleEOF, ConsoleTimeout):
                await self.console.expect([re.compile(rb"(?!x)x")], drain, what="exit")
            await vmm.wait()
        if vmm.returncode is None:
            tail = self.log.tail()
            await vmm.kill()
            raise ConsoleTimeout(f"the VMM did not exit within {timeout:g} s", tail)
        return await self._reap()

    # -- what tests do -------------------------------------------------------------------------

    async def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        try:
            return await self.console.run(command, timeout)
        except ConsoleEOF:
            info = await self._reap()
            raise GuestExited(info, self.log.tail(), self.vmm_stderr()) from None

    async def check(self, command: str, timeout: float = 60.0) -> str:
        """Run `command`; a non-zero status fails the test with its output."""
        result = await self.run(command, timeout)
        assert result.status == 0, (
            f"`{command}` exited {result.status}:\n{result.output[-2000:]}")
        return result.output

    async def reboot(self, timeout: float | None = None) -> Boot:
        """Guest-initiated reboot; returns the new boot once its shell is up."""
        old_id = self.boots[-1].boot_id if self.boots else ""
        self.boots.append(Boot(len(self.boots) + 1, time.monotonic()))
        self.log.mark(f"guest-initiated reboot requested; boot {len(self.boots)} follows")
        self.console.sendline(self.profile.reboot_command)
        boot = await self.wait_boot(timeout or self.env.boot_timeout_s)
        if old_id and boot.boot_id == old_id:
            raise HarnessError(f"boot_id unchanged ({old_id}): the guest did not really reboot")
        return boot

    async def shutdown(self, timeout: float = 120.0) -> ExitInfo:
        """Guest-initiated power-off; returns how the VMM exited."""
        self.console.sendline(self.profile.shutdown_command)
        return await self.wait_exit(timeout)

    async def power_button(self) -> None:
        if self.vmm is None:
            raise HarnessError("the VMM is not running")
        await self.vmm.power_button()

    async def stop(self, timeout: float = 10.0) -> ExitInfo:
        """Host stop (`crosvm stop`, QMP quit): the guest is not told."""
        if self.vmm is None:
            return self.exits[-1]
        await self.vmm.stop(timeout)
        return await self._reap()

    async def panic(self, timeout: float = 30.0) -> Crash:
        """Make the guest kernel panic and wait for the crash signature."""
        if self.profile.panic_command is None:
            raise HarnessError(f"profile {self.profile.name} has no way to panic the guest")
        self.console.sendline(self.profile.panic_command)
        # If the VMM exits meanwhile (crosvm on a pvpanic panic), the console remembers
        # the EOF, so wait_reset() reaps and relaunches at once.
        return await self.console.wait_crash(timeout)

    async def balloon(self, size_bytes: int) -> None:
        """Inflate the balloon to hold `size_bytes` of the guest's memory (0 deflates)."""
        if self.vmm is None:
            raise HarnessError("the VMM is not running")
        await self.vmm.balloon(size_bytes)

    async def balloon_stats(self) -> dict[str, Any]:
        if self.vmm is None:
            raise HarnessError("the VMM is not running")
        return await self.vmm.balloon_stats()

    def expected_devices(self) -> frozenset[str]:
        """The configured devices plus what the engine always adds."""
        return frozenset(self.env.devices.devices) | self.implicit_devices()

    def implicit_devices(self) -> frozenset[str]:
        """What the engine presents whatever the configuration says."""
        return self.engine.implicit_devices(self.env)

    @property
    def capabilities(self) -> Mapping[str, Any]:
        return self.image.capabilities

    def vmm_stderr(self, limit: int = 4000) -> str:
        try:
            return self.paths.stderr_log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.vmm is not None and self.vmm.returncode is None

    async def close(self) -> None:
        """Tear down whatever is left: kill the VMM group, close the log, remove the workdir."""
        with anyio.CancelScope(shield=True):
            if self.vmm is not None and self.vmm.returncode is None:
                await self.vmm.kill()
            self.console.detach()
            self.log.close()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
