"""Decide whether KVM really works by booting a guest under it.

/dev/kvm opening is not enough: on a nested paravirtual KVM it opens and every
real guest then dies with "KVM internal error ... emulation failure". Only a
boot to the marker proves it, so that is what the probe does (once: harness.accel
keeps the verdict on disk, for both engines).

Neither VMM exits when KVM fails a guest this way, so the probe also watches the
VMM's stderr for the words each one uses, and ends as soon as one appears:
QEMU's "KVM internal error. Suberror" (it stops the vCPUs and waits), and crosvm's
vcpu loop's (src/crosvm/sys/linux/vcpu.rs, commit f1e797a) "unexpected vcpu exit:
InternalError", which it logs and then runs the vCPU again, forever, so that its
stderr grows without end. It reads that log in bounded steps from where it left off.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

import anyio

from harness.engines.base import Engine, VmmSetup
from harness.environments import Environment
from harness.errors import HarnessError
from harness.fuchsia.tefmocheck import vmm_failure
from harness.guest import Guest
from harness.images.environment import image_for
from harness.profiles.base import clean_text

# A working KVM boots the image to its shell in a second or two; one that takes
# longer than this is no better than TCG (here, a nested paravirtual KVM runs the
# guest for about 28 s of host kernel time before it reports an emulation failure).
PROBE_TIMEOUT_S = 20.0
STDERR_POLL_S = 0.2
# At most this much of the VMM's stderr is read per poll: a VMM flooding it (crosvm's
# InternalError loop) is read at its newest end, never in full.
STDERR_READ_MAX = 64 * 1024
_LINE_CARRY_MAX = 4096


async def probe_boot(engine: Engine, env: Environment, binary: str) -> tuple[bool, str]:
    """Boot `env`'s image with `binary` under KVM; (True, how long) or (False, why).

    `env` is the environment that proves KVM (harness.accel.probe_environment: one
    with a shell to reach).
    """
    try:
        image = await anyio.to_thread.run_sync(image_for, env)
    except HarnessError as e:
        return False, f"probe boot impossible: {e}"
    probe_env = dataclasses.replace(env, accel="kvm", boot_timeout_s=PROBE_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="harness-kvm-probe-") as tmp:
        try:
            guest = Guest(probe_env, engine, image, Path(tmp) / "serial.log",
                          setup=VmmSetup(binary, "kvm"))
        except HarnessError as e:
            return False, f"probe boot impossible: {e}"
        verdict: list[tuple[bool, str]] = []
        try:
            with anyio.move_on_after(PROBE_TIMEOUT_S + 15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_vmm_stderr, guest, tg.cancel_scope, verdict)
                    try:
                        boot = await guest.start()
                        verdict.append((True, "probe boot under KVM reached the shell in "
                                              f"{boot.ready_s:.1f} s"))
                    except HarnessError as e:
                        # A VMM that said why and exited (crosvm's "vcpu hit unknown error",
                        # status 33) may do so between two polls of the watch: its words
                        # explain the failure better than the exit does.
                        said = StderrWatch(guest.paths.stderr_log).poll()
                        last = said or stderr_last_line(guest.paths.stderr_log)
                        detail = f" ({last})" if last else ""
                        verdict.append((False, f"probe boot under KVM failed: {e}{detail}"))
                    tg.cancel_scope.cancel()
        finally:
            await guest.close()
    if not verdict:
        return False, f"probe boot under KVM did not reach the shell in {PROBE_TIMEOUT_S:g} s"
    return verdict[0]


class StderrWatch:
    """Reads a growing log from where it left off, a bounded amount at a time, and finds
    the first KVM failure line in it."""

    def __init__(self, path: Path, read_max: int = STDERR_READ_MAX) -> None:
        self.path = path
        self.read_max = read_max
        self.offset = 0
        self.carry = b""  # the unfinished last line of the previous read
        self.bytes_read = 0

    def poll(self) -> str | None:
        """The first failure line in what was added since the last poll, or None."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self.offset:  # truncated or replaced: start again
                    self.offset, self.carry = 0, b""
                if size - self.offset > self.read_max:
                    # Flooded: only the newest part is read (a failure that floods the log
                    # repeats its line there too).
                    self.offset, self.carry = size - self.read_max, b""
                f.seek(self.offset)
                data = f.read(self.read_max)
        except OSError:
            return None
        self.offset += len(data)
        self.bytes_read += len(data)
        text = self.carry + data
        cut = text.rfind(b"\n") + 1  # only whole lines are judged; the rest waits
        self.carry = text[cut:][-_LINE_CARRY_MAX:]
        # One list of failure lines for the probe and the crash scan: tefmocheck's host-log
        # checks, which hold QEMU's and crosvm's KVM failure lines.
        # The line is reported from the failure's own words on, without the log prefix.
        failure = vmm_failure(text[:cut])
        if failure is None:
            return None
        at = failure[0]
        return clean_text(text[at:text.find(b"\n", at)]).strip()


async def watch_vmm_stderr(guest: Guest, scope: anyio.CancelScope,
                           verdict: list[tuple[bool, str]]) -> None:
    """End the probe as soon as the VMM says on its stderr that KVM failed the guest.

    Neither QEMU nor crosvm exits then (QEMU stops the vCPUs; crosvm retries them
    forever), so without this the probe would wait out its whole deadline on every
    new machine.
    """
    watch = StderrWatch(guest.paths.stderr_log)
    while True:
        await anyio.sleep(STDERR_POLL_S)
        line = watch.poll()
        if line is not None:
            verdict.append((False, f"probe boot under KVM failed: the VMM said {line!r}"))
            scope.cancel()
            return


def stderr_last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a log that may be huge (read from its end only)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return ""
    lines = clean_text(data).strip().splitlines()
    # Without crosvm's `[TIME LEVEL module] ` prefix: the words are what a reader needs.
    return re.sub(r"^\[[^\]]*\] ", "", lines[-1].strip()) if lines else ""
