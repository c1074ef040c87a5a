"""What it costs to have every finished test on disk before it is reported.

`python benchmarks/results_writes.py [--tests 3000]` feeds the recorder
(harness.recorder) with finished tests the size of real ones (an 8 KiB serial
tail, three cases, a repro line) at several rates, and reports how many times
junit.xml and summary.json were rewritten, the time spent writing against the
run's wall time, how long a line waited for its write, and the bytes written.
For scale it also times one whole render and write of the final documents, with
today's renderers and with those of 8ac61a2 (read from git), which rendered the
whole run on each write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.outputs import Terminal  # noqa: E402
from harness.recorder import Recorder  # noqa: E402
from harness.report import write_reports  # noqa: E402
from harness.report.summary import summary_string  # noqa: E402
from harness.results import Attempt, Case, RunResult, Status, TestResult  # noqa: E402

BASE = "8ac61a2"


def result(i: int) -> TestResult:
    attempt = Attempt(Status.PASS, duration_s=1.0, serial_tail=("x" * 79 + "\n") * 100,
                      properties={"boot_s": "1.000", "exit_status": "0"},
                      artifacts={"serial.log": f"qemu-x64-minimal/t{i}/serial.log"},
                      cases=[Case(f"case{j}", Status.PASS, duration_s=0.01) for j in range(3)])
    return TestResult(test=f"t{i}", suite="path", environment="qemu-x64-minimal", engine="qemu",
                      arch="x86_64", blocking=False, attempts=[attempt],
                      folder=f"qemu-x64-minimal/t{i}",
                      repro=f"/venv/bin/harness run --tests /x/tests.json -k t{i}")


class _Clock(io.StringIO):
    """A terminal that notes when each line is printed."""

    def __init__(self) -> None:
        super().__init__()
        self.printed: dict[int, float] = {}

    def write(self, text: str) -> int:
        now = time.monotonic()
        for line in text.splitlines():
            if line.startswith("line "):
                self.printed[int(line.split()[1])] = now
        return super().write(text)


def scenario(n: int, every_s: float, out: Path) -> dict[str, float]:
    finals = [result(i) for i in range(n)]
    blanks = [TestResult(test=r.test, suite=r.suite, environment=r.environment, engine=r.engine,
                         arch=r.arch, blocking=False, folder=r.folder) for r in finals]
    clock = _Clock()
    finished: dict[int, float] = {}
    started = dt.datetime.now(dt.UTC)

    async def main() -> tuple[Recorder, float]:
        recorder = Recorder(blanks, out, Terminal(clock), started)
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.serve)
            for i, (blank, final) in enumerate(zip(blanks, finals, strict=True)):
                blank.attempts = final.attempts
                finished[i] = time.monotonic()
                recorder.finished(blank, [f"line {i}"])
                await anyio.sleep(every_s)
            await recorder.close(RunResult(results=blanks, out_dir=out, started=started))
        return recorder, time.monotonic() - t0

    recorder, wall = anyio.run(main, backend="asyncio")
    stats = recorder.reports.stats
    waits = [clock.printed[i] - finished[i] for i in range(n)]
    return {"wall_s": wall, "writes": stats.writes, "writing_s": stats.seconds,
            "longest_s": stats.longest_s, "wait_median_s": statistics.median(waits),
            "wait_max_s": max(waits), "mb": stats.bytes / 1e6}


def base_scenario(n: int, every_s: float, out: Path, junit_base, limit_s: float  # type: ignore[no-untyped-def]
                  ) -> tuple[int, int, float]:
    """The runner of BASE: after a finished test, both files rendered whole and written, at
    most every 0.5 s, in the event loop. Stopped after `limit_s`: (tests done, writes, s)."""
    from harness.report.summary import atomic_write

    finals = [result(i) for i in range(n)]
    blanks = [TestResult(test=r.test, suite=r.suite, environment=r.environment, engine=r.engine,
                         arch=r.arch, blocking=False, folder=r.folder) for r in finals]
    run = RunResult(results=blanks, out_dir=out, started=dt.datetime.now(dt.UTC))
    out.mkdir(parents=True, exist_ok=True)
    t0 = last = time.monotonic()
    writes = done = 0
    for blank, final in zip(blanks, finals, strict=True):
        blank.attempts = final.attempts
        done += 1
        if time.monotonic() - last > 0.5:
            last = time.monotonic()
            atomic_write(out / "summary.json", summary_string(run).encode("ascii"))
            atomic_write(out / "junit.xml", junit_base(run).encode("utf-8"))
            writes += 1
        time.sleep(every_s)
        if time.monotonic() - t0 > limit_s:
            break
    return done, writes, time.monotonic() - t0


def old_junit_string():  # type: ignore[no-untyped-def]
    """junit_string as of BASE, which rendered the whole document each time."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASE}:harness/report/junit.py"],
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("junit_base", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, "junit_base.py", "exec"), module.__dict__)
    return module.junit_string


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests", type=int, default=3000)
    args = parser.parse_args()
    n = args.tests
    with tempfile.TemporaryDirectory() as tmp:
        run = RunResult(results=[result(i) for i in range(n)], out_dir=Path(tmp),
                        started=dt.datetime.now(dt.UTC))
        t0 = time.perf_counter()
        write_reports(run)
        full = time.perf_counter() - t0
        junit_base = old_junit_string()
        t0 = time.perf_counter()
        junit_base(run)
        summary_string(run)
        full_base = time.perf_counter() - t0
        print(f"{n} tests: one whole render and write of both files {full:.2f} s "
              f"(renderers of {BASE}: {full_base:.2f} s to render alone)")
        print(f"{BASE} rewrote both files at most every 0.5 s, each time whole: on a run "
              f"finishing tests faster than that, writing all the time, in the event loop")
        print("test every | wall s | writes | writing s | share | longest s | "
              "line waits median/max s | MB written")
        for every in (0.0, 0.002, 0.02):
            sub = Path(tmp) / f"every-{every}"
            r = scenario(n, every, sub)
            print(f"{every * 1000:>7.0f} ms | {r['wall_s']:6.1f} | {r['writes']:6.0f} | "
                  f"{r['writing_s']:9.2f} | {r['writing_s'] / r['wall_s']:5.0%} | "
                  f"{r['longest_s']:9.2f} | {r['wait_median_s']:.2f}/{r['wait_max_s']:.2f} | "
                  f"{r['mb']:.0f}")
        done, writes, wall = base_scenario(n, 0.02, Path(tmp) / "base", junit_base, 120.0)
        print(f"{BASE}, a test every 20 ms: after {wall:.0f} s, {done} of {n} tests done "
              f"({writes} whole rewrites, in the event loop); at that pace all {n} would take "
              f"about {wall / done * n / 60:.0f} min instead of {n * 0.02 / 60:.0f} min")


if __name__ == "__main__":
    main()
