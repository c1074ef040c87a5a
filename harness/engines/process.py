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
    return rc


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
