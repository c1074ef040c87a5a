"""A 'VMM' played by a thread on a pty slave, for tests that script a console.

tests/test_fuchsia_boottest.py (a script of chunks) and tests/test_suites_offline.py (a
transcript that answers commands) play their guest from a thread; this is what both share:
the exit (closing the slave is the hangup the console sees), waiting for it without
polling, and stop/kill as a VMM's.
"""

from __future__ import annotations

import asyncio
import os
import threading

import anyio

from harness.engines.base import Vmm


class ThreadVmm(Vmm):
    """Subclasses write `play()`, run in a thread started by `start()`, and end it with
    `_close(status)`; `_stop` tells a play that waits for input to return."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pid = os.getpid()
        self._rc: int | None = None
        self._stop = threading.Event()
        # Set when the play 'exits' (from its thread, or stop/kill): what wait() awaits.
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self.thread = threading.Thread(target=self.play, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def play(self) -> None:
        raise NotImplementedError

    def _close(self, rc: int) -> None:
        # What was written before the hangup stays readable after it (the pty keeps it for
        # the master), so the console reads the last words first.
        if self._rc is None:
            self._rc = rc
            self._stop.set()
            os.close(self.fd)
            self._loop.call_soon_threadsafe(self._exited.set)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._rc is not None
        return self._rc

    @property
    def returncode(self) -> int | None:
        return self._rc

    async def stop(self, timeout: float = 10.0) -> None:
        self._close(0)

    async def kill(self) -> None:
        self._close(-9)
        await anyio.to_thread.run_sync(self.thread.join, 2.0)
