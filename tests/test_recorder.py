"""Durable results: what the terminal reports is on disk first, at a bounded cost.

In process, with real files: the runner's progress lines are checked against
summary.json and junit.xml at the moment each line is printed, and a 3,000-test
run's rewrites are measured. No guest is needed: tests of an environment whose
engine is unavailable finish (SKIP) through the same recorder path as any other.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import pytest
import xmlschema

from harness import environments as envmod
from harness import plan as planmod
from harness.engines.base import BinaryLookup
from harness.outputs import Terminal
from harness.recorder import NOT_FINISHED, Recorder
from harness.report import write_reports
from harness.report.junit import JunitRenderer, junit_string
from harness.report.summary import SummaryRenderer, summary_dict, summary_string
from harness.results import Attempt, Case, RunResult, Status
from harness.results import TestResult as TResult
from harness.runner import Runner, RunOptions
from harness.spec import parse_specs

ROOT = Path(__file__).resolve().parent.parent
XSD = ROOT / "tests" / "schemas" / "junit-10.xsd"
ENV = "qemu-x64-minimal"
LINE = re.compile(r"^\[\s*\d+/\d+\] (\S+)\s+\S+\s+(\S+) \(")


class _Unavailable:
    """An engine that cannot run here (no binary): every test of an FYI environment
    finishes at once, as SKIP."""

    name = "qemu"
    accelerators = ("tcg",)

    def locate(self, arch: str) -> BinaryLookup:
        return BinaryLookup("no-vmm", None, "", "no engine here (test double)")


class _DiskChecker(io.StringIO):
    """A terminal that, as each progress line is printed, reads both result files from
    disk and records any line whose verdict they do not hold yet."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.problems: list[str] = []
        self.checked = 0

    def write(self, text: str) -> int:
        for line in text.splitlines():
            m = LINE.match(line)
            if not m:
                continue
            verdict, name = m.groups()
            self.checked += 1
            summary = json.loads((self.out / "summary.json").read_text())
            entry = next((t for t in summary["tests"] if t["name"] == name), None)
            if entry is None or entry["result"] != verdict:
                self.problems.append(f"{line!r}: summary.json says {entry and entry['result']}")
            junit = ET.parse(self.out / "junit.xml").getroot()
            case = next((c for c in junit.iter("testcase") if c.get("name") == name), None)
            if case is None or (verdict == "SKIP") != (case.find("skipped") is not None):
                self.problems.append(f"{line!r}: junit.xml does not hold it")
        return super().write(text)


def test_each_line_is_printed_only_once_its_result_is_on_disk(tmp_path: Path) -> None:
    n = 150
    specs = parse_specs([{"test": {"name": f"t{i}", "path": "/bin/true"},
                          "environments": [{"dimensions": {"device_type": "QEMU", "cpu": "x64",
                                                           "devices": "minimal"}}]}
                         for i in range(n)], "<test>")
    plan = planmod.make_plan(specs, envmod.load(None), planmod.Selection(env_names=(ENV,)))
    out = tmp_path / "out"
    stream = _DiskChecker(out)
    runner = Runner(plan.runs, {}, {"qemu": _Unavailable()},  # type: ignore[dict-item]
                    RunOptions(out_dir=out, jobs=4, terminal=Terminal(stream)),
                    image_for=lambda env: pytest.fail("no image needed"))
    run = anyio.run(runner.run, backend="asyncio")
    assert [r.status for r in run.results] == [Status.SKIP] * n
    assert stream.checked == n and not stream.problems, stream.problems[:3]
    assert runner.recorder is not None
    # Tests that finish together share a write: far fewer writes than tests.
    assert runner.recorder.reports.stats.writes < n
    final = json.loads((out / "summary.json").read_text())
    assert final["harness_run"]["interrupted"] is False
    xmlschema.XMLSchema(str(XSD)).validate(str(out / "junit.xml"))


def _result(i: int, tail: int) -> TResult:
    attempt = Attempt(Status.PASS, duration_s=1.0, serial_tail=("x" * 79 + "\n") * (tail // 80),
                      properties={"boot_s": "1.0"}, artifacts={"serial.log": f"e/t{i}/serial.log"},
                      cases=[Case(f"case{j}", Status.PASS) for j in range(3)])
    return TResult(test=f"t{i}", suite="path", environment="qemu-x64-minimal", engine="qemu",
                   arch="x86_64", blocking=False, attempts=[attempt], folder=f"e/t{i}",
                   repro=f"harness run -k t{i}")


def test_three_thousand_results_cost_a_few_full_writes_not_thousands(tmp_path: Path) -> None:
    """3,000 tests finishing in quick succession (a shared guest running short programs):
    the files are rewritten in batches, every line comes out in order, and all the
    rewriting costs a few times one full write of the final documents. Rewriting both
    files after each test, as the promise "on disk before it is printed" would naively
    need, would cost about 1,500 full writes. Compared under the same load, so the
    bound does not depend on how busy the machine is."""
    n = 3000
    finals = [_result(i, 1024) for i in range(n)]
    blanks = [TResult(test=r.test, suite=r.suite, environment=r.environment, engine=r.engine,
                      arch=r.arch, blocking=False, folder=r.folder) for r in finals]
    stream = io.StringIO()
    started = dt.datetime.now(dt.UTC)

    async def main() -> tuple[Recorder, float]:
        recorder = Recorder(blanks, tmp_path / "live", Terminal(stream), started)
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.serve)
            for i, (blank, final) in enumerate(zip(blanks, finals, strict=True)):
                blank.attempts = final.attempts
                recorder.finished(blank, [f"line {i}"])
                await anyio.sleep(0.002)  # a test every 2 ms
            run = RunResult(results=blanks, out_dir=tmp_path / "live", started=started)
            assert await recorder.close(run) is None
        return recorder, time.monotonic() - t0

    recorder, elapsed = anyio.run(main, backend="asyncio")
    stats = recorder.reports.stats
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(n)]
    t0 = time.perf_counter()
    write_reports(RunResult(results=finals, out_dir=tmp_path, started=started))
    full = time.perf_counter() - t0
    assert stats.seconds <= 4 * full, (stats, full)
    data = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert len(data["tests"]) == n and all(t["result"] == "PASS" for t in data["tests"])
    print(f"\n3,000 results, one every 2 ms: {stats.writes} writes, {stats.seconds:.2f} s "
          f"writing in a {elapsed:.2f} s run (one full write: {full:.2f} s), longest "
          f"{stats.longest_s:.2f} s, {stats.bytes / 1e6:.0f} MB written")


def test_unfinished_tests_are_in_the_files_as_not_finished(tmp_path: Path) -> None:
    """What a harness killed now would leave: the finished test with its verdict, the
    others ABORT saying they did not finish, the run marked interrupted."""
    finals = [_result(i, 100) for i in range(3)]
    blanks = [TResult(test=r.test, suite=r.suite, environment=r.environment, engine=r.engine,
                      arch=r.arch, blocking=False, folder=r.folder) for r in finals]

    async def main() -> None:
        recorder = Recorder(blanks, tmp_path, Terminal(io.StringIO()), dt.datetime.now(dt.UTC))
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.serve)
            blanks[1].attempts = finals[1].attempts
            recorder.finished(blanks[1], ["done"])
            with anyio.fail_after(10):
                while not (tmp_path / "summary.json").exists():
                    await anyio.sleep(0.01)
            # Read as a killed harness would leave them.
            data = json.loads((tmp_path / "summary.json").read_text())
            assert data["harness_run"]["interrupted"] is True
            results = {t["name"]: t for t in data["tests"]}
            assert results["t1"]["result"] == "PASS"
            for name in ("t0", "t2"):
                assert results[name]["result"] == "ABORT"
                assert results[name]["harness"]["attempts"][-1]["message"] == NOT_FINISHED
            xmlschema.XMLSchema(str(XSD)).validate(str(tmp_path / "junit.xml"))
            tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")


def test_cached_renderers_write_exactly_what_a_full_render_writes(tmp_path: Path) -> None:
    """The incremental documents equal a fresh render after every change, including a
    record replaced by another and one whose console budget moves."""
    results = [_result(i, 200) for i in range(30)]
    run = RunResult(results=results, out_dir=tmp_path, started=dt.datetime.now(dt.UTC),
                    duration_s=3.0)
    junit, summary = JunitRenderer(), SummaryRenderer()
    for step in range(4):
        assert junit.document(run) == junit_string(run)
        assert summary.document(run) == summary_string(run)
        assert json.loads(summary.document(run)) == json.loads(json.dumps(summary_dict(run)))
        results[step] = _result(100 + step, 300)  # a finished test replaces a placeholder
        results[step + 5].attempts.append(Attempt(Status.FAIL, message="again"))
