"""A finished test is on disk before the terminal says so.

The runner hands each finished test here; the recorder rewrites junit.xml and
summary.json (atomically, see harness.report.live) so that they hold it, and
only then prints its progress line. If the harness is killed right after a
PASS line, the files already say PASS. Tests that have not finished are in the
files too, as ABORT saying so, and the run as interrupted: that is what the
files must say if this write turns out to be the last one.

Writes are batched and paced. Tests that finish while a write is going on are
covered by the next one. Each test is rendered once (harness.report.live), but
joining and writing the whole files grows with the run: after a rewrite that
took W seconds the next waits 4 W, so rewriting takes at most a fifth of the
run's time whatever its size (3,000 tests: about a tenth of a second per
rewrite on an idle machine; at the start of a run, milliseconds). Lines wait
for their write rather than being printed ahead of it.

When a write fails (a full disk, a read-only mount) the tests go on; the lines
of the tests it should have saved say `[not on disk: REASON]`, and the next
write tries again with everything.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from harness.outputs import Terminal, describe
from harness.report.live import LiveReports
from harness.results import Attempt, RunResult, Status, TestResult

# The share of the run's wall time the recorder may spend writing results.
DUTY = 0.2
NOT_FINISHED = ("did not finish: the run ended before this test did (the harness was killed), "
                "or is still going")


@dataclasses.dataclass
class _Pending:
    """Lines waiting for the write that makes them true."""

    lines: list[str]


def placeholder(result: TestResult, started: dt.datetime) -> TestResult:
    """What the files say about a test that has not finished: a frozen copy, ABORT."""
    copied = copy.copy(result)
    copied.tags = dict(result.tags)
    copied.attempts = [Attempt(Status.ABORT, message=NOT_FINISHED, start_time=started)]
    return copied


class Recorder:
    """Writes the results after each finished test, then prints what the test reported."""

    def __init__(self, results: Sequence[TestResult], out_dir: Path, terminal: Terminal,
                 started: dt.datetime) -> None:
        self.out_dir = out_dir
        self.terminal = terminal
        self.started = started
        self._t0 = time.monotonic()
        self._slots = [placeholder(r, started) for r in results]
        self._index = {id(r): i for i, r in enumerate(results)}
        self._found: dict[int, list[TestResult]] = {}  # slot -> the crash scan's tests
        self.reports = LiveReports(out_dir)
        self._lines: list[_Pending] = []
        self._wake = anyio.Event()
        self._closing = False
        self._close_requested = anyio.Event()
        self._idle = anyio.Event()
        self._next_write = 0.0
        self.error: str | None = None  # the last write's failure, if it failed
        self.failures: list[str] = []  # every distinct failure, for the run's report

    def finished(self, result: TestResult, lines: Sequence[str],
                 found: Sequence[TestResult] = ()) -> None:
        """`result` is final; print `lines` once the files hold it (and `found`, the tests
        the crash scan made of its logs, right after it). From the event loop."""
        slot = self._index[id(result)]
        self._slots[slot] = result
        if found:
            self._found[slot] = list(found)
        self._lines.append(_Pending(list(lines)))
        self._wake.set()

    def say(self, line: str) -> None:
        """A line that reports no result (printed in order with the results' lines)."""
        self._lines.append(_Pending([line]))
        self._wake.set()

    async def serve(self) -> None:
        """The writing task; runs until `close`. It writes the files once at the start
        too, so that a harness killed during its first boot leaves every test listed."""
        try:
            self._wake.set()
            while not self._closing:
                await self._wake.wait()
                self._wake = anyio.Event()
                delay = self._next_write - time.monotonic()
                if delay > 0 and not self._closing:
                    with anyio.move_on_after(delay):  # or until `close`, which writes at once
                        await self._close_requested.wait()
                if self._closing:
                    break
                await self._write(self._snapshot())
        finally:
            self._idle.set()

    def _snapshot(self) -> RunResult:
        """What the files must say if the harness dies after writing them."""
        results: list[TestResult] = []
        for slot, result in enumerate(self._slots):
            results.append(result)
            results.extend(self._found.get(slot, ()))
        return RunResult(results=results, out_dir=self.out_dir, interrupted=True,
                         started=self.started, duration_s=time.monotonic() - self._t0)

    async def close(self, final: RunResult) -> str | None:
        """Write the final results and print every line still waiting; the error, if any."""
        self._closing = True
        self._wake.set()
        self._close_requested.set()
        with anyio.CancelScope(shield=True):
            await self._idle.wait()
            await self._write(final, final=True)
        return self.error

    async def _write(self, run: RunResult, *, final: bool = False) -> None:
        lines, self._lines = self._lines, []
        html_error = self.reports.html_error
        try:
            await anyio.to_thread.run_sync(functools.partial(self.reports.write, run,
                                                             final=final))
        except OSError as e:
            error = f"cannot write the results: {describe(e)}"
            if error not in self.failures:
                self.failures.append(error)
                self.terminal.say(f"harness: {error}; the tests go on, and the results they "
                                  "report below are not on disk yet", always=True)
            self.error = error
            for pending in lines:
                first, *rest = pending.lines
                self.terminal.say(f"{first} [not on disk: {e.strerror or e}]")
                for line in rest:
                    self.terminal.say(line)
        else:
            if self.error is not None:
                self.terminal.say("harness: the results are written again, everything "
                                  "reported so far is on disk", always=True)
            self.error = None
            if self.reports.html_error is not None and self.reports.html_error != html_error:
                self.terminal.say(f"harness: {self.reports.html_error}", always=True)
            for pending in lines:
                for line in pending.lines:
                    self.terminal.say(line)
        # Paced by the rewrite alone: rendering each new test is a cost per test, paid
        # once whenever it is written, while joining and writing the whole files is the
        # part that grows with the run and would make it quadratic if not spaced out.
        spent = self.reports.stats.last_rewrite_s if self.reports.stats.writes else 0.0
        self._next_write = time.monotonic() + spent * (1 / DUTY - 1)

