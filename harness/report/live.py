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

from harness.report.junit import JunitRenderer
from harness.report.summary import SummaryRenderer, atomic_write
from harness.results import RunResult

SUMMARY = "summary.json"
JUNIT = "junit.xml"


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

    def write(self, run: RunResult) -> None:
        """Write summary.json, then junit.xml, each atomically; OSError propagates.

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
