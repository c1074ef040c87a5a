"""SIGINT, SIGTERM and SIGHUP for the whole of `harness run`, every repeat included.

Handlers are installed once, before the inputs are read, and stay until the
process is about to exit, so no signal ever meets Python's default action (a
KeyboardInterrupt in the middle of writing results, or death by SIGHUP or a
second SIGTERM with work directories left behind). What a signal does depends
on when it comes:

- before the event loop runs (reading inputs): `Interrupted` is raised at once,
  nothing has been started that needs tearing down;
- while the run is going: the first one starts an orderly teardown (every test
  cancelled, every guest stopped, image builds asked to stop, results written);
  each later one hurries it (child processes are killed without a grace period)
  but never skips writing the results or removing the work directories;
- after the results are final (the `--keep` phase, the last lines): only recorded.

A signal is handled in the main thread, which is also the event loop's: the
handler queues the delivery with `call_soon_threadsafe`, which wakes the loop.
Exit status: 128 + the first signal's number, as a shell reports it (130 for
SIGINT, 143 for SIGTERM, 129 for SIGHUP).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType, TracebackType

from harness.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Delivery = Callable[[signal.Signals, int], None]


def exit_status(sig: signal.Signals) -> int:
    return 128 + int(sig)


class RunSignals:
    """The run's signal handlers (a context manager) and what they have received."""

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, object] = {}
        self._mode = "raise"  # "raise" | "deliver" | "record"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Delivery | None = None
        self._delivered = 0
        self._event: asyncio.Event | None = None
        self.final_count: int | None = None  # signals that arrived before the results were final

    # -- installation --------------------------------------------------------------------------

    def __enter__(self) -> RunSignals:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received.append(sig)
        if self._mode == "raise":
            raise Interrupted(int(sig), sig.name)  # nothing started: nothing to tear down
        loop = self._loop
        if self._mode == "deliver" and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._flush)

    # -- phases --------------------------------------------------------------------------------

    def record_only(self) -> None:
        """From now on signals are only recorded (until `attach` delivers them)."""
        self._mode = "record"

    def attach(self, deliver: Delivery) -> None:
        """In the event loop: deliver every signal so far, and each later one, to `deliver`
        as (signal, how many have arrived)."""
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._event = asyncio.Event()
        self._mode = "deliver"
        self._flush()

    def results_final(self) -> None:
        """The results are written: later signals no longer interrupt the run."""
        if self.final_count is None:
            self.final_count = len(self.received)

    def detach(self) -> None:
        self._mode = "record"
        self._deliver = None
        self._loop = None

    def _flush(self) -> None:
        while self._delivered < len(self.received):
            self._delivered += 1
            sig = self.received[self._delivered - 1]
            if self._deliver is not None and (self.final_count is None
                                              or self._delivered <= self.final_count):
                self._deliver(sig, self._delivered)
            if self._event is not None:
                self._event.set()

    async def wait(self) -> signal.Signals:
        """Wait for the next signal (the `--keep` phase ends on one)."""
        if self._event is None:
            raise RuntimeError("RunSignals.wait before attach")
        seen = len(self.received)
        while len(self.received) <= seen:
            self._event.clear()
            await self._event.wait()
        return self.received[-1]

    # -- what it means for the run -------------------------------------------------------------

    @property
    def interrupting(self) -> list[signal.Signals]:
        """The signals that interrupted the run (not those after its results were final)."""
        return self.received[: self.final_count] if self.final_count is not None \
            else list(self.received)

    @property
    def first(self) -> signal.Signals | None:
        sigs = self.interrupting
        return sigs[0] if sigs else None

    @property
    def exit_status(self) -> int | None:
        first = self.first
        return exit_status(first) if first is not None else None
