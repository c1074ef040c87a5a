"""How an interrupt reaches work that runs in a worker thread (an image build).

anyio can cancel a task but not a thread: a task waiting in
`anyio.to_thread.run_sync` waits for the thread to return. So the thread's code
polls a StopToken between steps and while its child processes run, and stops
them itself: at the first request after a grace period for the child to exit
(SIGTERM), at the second ("hurry") at once (SIGKILL). The token travels in a
context variable, which anyio copies into its worker threads, so code deep in a
build (a KVM probe boot building its image, for one) finds it without every
layer in between passing it along.
"""

from __future__ import annotations

import contextvars
import threading


class Stopped(Exception):
    """The work was asked to stop (the run was interrupted); not a failure of the work.

    Deliberately not a HarnessError: nothing may report it as the image's, the
    package's or the test's fault.
    """


class StopToken:
    """Set once by the signal handling of a run; read by any thread."""

    GRACE_S = 5.0  # how long a child process gets to exit after SIGTERM, unless hurried

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self.reason = ""

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.reason = reason
        self._stop.set()

    def hurry(self) -> None:
        self._hurry.set()
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def grace_s(self) -> float:
        return 0.0 if self._hurry.is_set() else self.GRACE_S

    def check(self) -> None:
        """Raise Stopped if a stop was requested (call between steps of long work)."""
        if self._stop.is_set():
            raise Stopped(self.reason or "stopped")


CURRENT: contextvars.ContextVar[StopToken | None] = contextvars.ContextVar(
    "harness_stop_token", default=None)


def current() -> StopToken | None:
    """The token of the run this code works for, if any."""
    return CURRENT.get()


def check() -> None:
    """Raise Stopped if the current run asked its work to stop."""
    token = CURRENT.get()
    if token is not None:
        token.check()
