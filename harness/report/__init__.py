"""Reporters: JUnit XML and Fuchsia's summary.json, and merging shards' results.

They read only `harness.results` records, so a run can be re-reported or merged
long after its guests are gone.
"""

from harness.report.junit import junit_string, write_junit
from harness.report.merge import merge_runs
from harness.report.summary import atomic_write, load_summary, summary_dict, write_summary
from harness.results import RunResult


def write_reports(run: RunResult) -> None:
    """junit.xml and summary.json in the run's directory, each written atomically."""
    write_summary(run, run.out_dir / "summary.json")
    write_junit(run, run.out_dir / "junit.xml")


__all__ = [
    "atomic_write",
    "junit_string",
    "load_summary",
    "merge_runs",
    "summary_dict",
    "write_junit",
    "write_reports",
    "write_summary",
]
