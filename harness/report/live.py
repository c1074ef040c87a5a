"""junit.xml and summary.json rewritten while a run goes on, at a bounded cost.

The runner announces a finished test only once both files hold it (see
harness.recorder), so they are rewritten many times per run. Each rewrite is
atomic (a reader, or a harness killed mid-write, sees the old file or the new
one) and reuses every test it rendered before (JunitRenderer, SummaryRenderer):
each test is rendered once (or a few times, if the console budget per test
shrinks), and what each rewrite adds is joining strings and writing the bytes.
That part grows with the run, so it is measured here for the recorder to pace.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from harness.report.html import write_run_report
from harness.report.junit import JunitRenderer
from harness.report.summary import SummaryRenderer, atomic_write
from harness.results import RunResult

SUMMARY = "summary.json"
JUNIT = "junit.xml"
# report.html renders the whole run each time (about 0.6 s for 100 tests with 2,000 cases):
# while the run goes on it is rewritten at most this often, and always at the end.
HTML_EVERY_S = 10.0


@dataclasses.dataclass
class WriteStats:
    """What the writes of one run cost (reported by the recorder and the benchmark)."""

    writes: int = 0
    seconds: float = 0.0
    longest_s: float = 0.0
    last_s: float = 0.0
    last_rewrite_s: float = 0.0  # the last write without rendering its new tests
    bytes: int = 0

    def add(self, seconds: float, rendering_s: float, size: int) -> None:
        self.writes += 1
        self.seconds += seconds
        self.longest_s = max(self.longest_s, seconds)
        self.last_s = seconds
        self.last_rewrite_s = max(0.0, seconds - rendering_s)
        self.bytes += size


class LiveReports:
    """Both result files of one run directory, rendered incrementally."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self._junit = JunitRenderer()
        self._summary = SummaryRenderer()
        self.stats = WriteStats()
        self._html_at: float | None = None
        # Why report.html could not be written, if it could not (a secondary view: its
        # failure is said once, and never costs the run or the results already written).
        self.html_error: str | None = None

    def write(self, run: RunResult, *, final: bool = False) -> None:
        """Write summary.json, then junit.xml, each atomically (OSError propagates), then
        report.html if it is due (`final`: always).

        Not thread-safe against changes to `run`'s records: call it with records
        that no longer change (the recorder passes finished results and frozen
        placeholders for the rest).
        """
        t0 = time.perf_counter()
        rendered = self._summary.render_s + self._junit.render_s
        summary = self._summary.document(run).encode("ascii")
        atomic_write(self.out_dir / SUMMARY, summary)
        junit = self._junit.document(run).encode("utf-8")
        atomic_write(self.out_dir / JUNIT, junit)
        rendered = self._summary.render_s + self._junit.render_s - rendered
        self.stats.add(time.perf_counter() - t0, rendered, len(summary) + len(junit))
        now = time.monotonic()
        if final or self._html_at is None or now - self._html_at >= HTML_EVERY_S:
            self._html_at = now
            try:
                write_run_report(run)
            except Exception as e:  # a bug in the HTML view must not cost the run
                self.html_error = f"report.html not written: {type(e).__name__}: {e}"
            else:
                self.html_error = None
