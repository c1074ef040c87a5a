"""A VMM process: started in its own process group, always killed and reaped.

Every VMM runs in a new session so that one signal to its process group takes
down whatever it spawned (crosvm forks device processes when sandboxed), and
so that a Ctrl-C on the person's terminal reaches the harness, which then tears
guests down in order, rather than the VMMs directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.abc import Process


def _death_wrapper() -> list[str]:
    """`setpriv --pdeathsig KILL --`: the VMM dies with the harness, even a SIGKILLed one.

    Teardown normally kills every VMM in order; this covers the one case it cannot,
    the harness itself killed with SIGKILL (an OOM kill, a CI runner's hard timeout).
    setpriv is util-linux's, essential on Debian; without it the VMM is started bare.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


async def start_vmm(
    argv: Sequence[str], *, console_fd: int, stderr_path: Path, env: dict[str, str] | None = None
) -> Process:
    """Start `argv` with the console pty slave on stdin/stdout and stderr to its own log."""
    with open(stderr_path, "ab") as err:
        return await anyio.open_process(
            [*_death_wrapper(), *argv],
            stdin=console_fd,
            stdout=console_fd,
            stderr=err,
            start_new_session=True,
            env=env,
        )


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid`; gone processes are not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def kill_and_reap(process: Process, *, grace_s: float = 0.0) -> int:
    """SIGTERM (after `grace_s`, SIGKILL) the process group, then reap. Shielded from cancellation.

    Shielded because this runs while a run is being cancelled (SIGINT, a deadline),
    which is exactly when a VMM must not be left behind.
    """
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            if grace_s > 0:
                signal_group(process.pid, signal.SIGTERM)
                with anyio.move_on_after(grace_s):
                    await process.wait()
            if process.returncode is None:
                signal_group(process.pid, signal.SIGKILL)
        rc = await process.wait()
        # The leader is reaped; children it left in the group get the same end.
        signal_group(process.pid, signal.SIGKILL)
        await _group_gone(process.pid)
    return rc


GROUP_EXIT_WAIT_S = 2.0


async def _group_gone(pgid: int) -> None:
    """Wait (briefly, bounded) until no process of the group is left running.

    What a VMM holds exclusively (a TAP device, opened once; an image's write lock) is free
    only when the last process holding it has exited: crosvm's device processes, or the
    QEMU the crosvm double runs, may outlive the leader by a moment after SIGKILL, and the
    next guest of the same environment would find the TAP busy. A zombie holds nothing (and
    who reaps it is not ours to wait for). Polled: nothing notifies of the end of another
    process's children; they die within milliseconds of SIGKILL.
    """
    deadline = time.monotonic() + GROUP_EXIT_WAIT_S
    while time.monotonic() < deadline and _group_running(pgid):
        await anyio.sleep(0.01)


def _group_running(pgid: int, proc: Path = Path("/proc")) -> bool:
    """Whether a process of group `pgid` is alive (not a zombie)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is stat's field 3 (state), fields[2] field 5 (the process group).
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def describe_returncode(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by {name}"
    return f"exit status {rc}"


class ProcessVmm:
    """Shared process half of a `harness.engines.base.Vmm`: wait, returncode, kill.

    Engines subclass `(ProcessVmm, Vmm)` and add their control channel.
    """

    def __init__(self, process: Process) -> None:
        self.process = process
        self.pid = process.pid

    async def wait(self) -> int:
        return await self.process.wait()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def kill(self) -> None:
        await kill_and_reap(self.process)
