"""summary.json as Fuchsia's tools read it, and Fuchsia's own summary files as read here.

Two real consumers and real files:

- A Go program (tests/go/summaryreader) that declares tools/testing/runtests/runtests.go's
  structs and unmarshals summary.json as Fuchsia's ResultDB uploader does; what it
  prints is compared with the harness's own model of the run. It runs on the harness's
  summary of a synthetic run of every kind, on Fuchsia's own test data, and (integration)
  on the summary.json of a real run that booted a guest.
- Fuchsia's own summary files (tests/fixtures/fuchsia-summary, copied from Fuchsia's
  sources; old and new formats) through `harness stability` and `harness merge`, as a
  user runs them.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from harness.cache import cache_dir
from harness.cli import main
from harness.report import load_summary, write_summary
from harness.report.summary import GO_ZERO_TIME, parse_time
from harness.results import Attempt, Case, RunResult, Status
from harness.results import TestResult as TResult  # not "Test*": pytest would collect it

ROOT = Path(__file__).resolve().parent.parent
GO_READER = ROOT / "tests" / "go" / "summaryreader"
FIXTURES = ROOT / "tests" / "fixtures" / "fuchsia-summary"
XSD = ROOT / "tests" / "schemas" / "junit-10.xsd"
ENV = "qemu-x64-minimal"
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


# -- the Go reader -----------------------------------------------------------------------------


def go_env() -> dict[str, str]:
    """Offline, reproducible builds: no module downloads, caches under the harness's cache."""
    env = dict(os.environ)
    env.update(
        GOFLAGS="-mod=mod",
        GOCACHE=str(cache_dir() / "go-build"),
        GOPATH=str(cache_dir() / "go"),
        GOPROXY="off",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    return env


@pytest.fixture(scope="module")
def go_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go reader, built for this test session. No Go is a failure: ./dev installs it."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("no `go` on PATH: ./dev setup installs Debian's golang-go, which these "
                    "tests need to read summary.json as Fuchsia's Go tools do")
    binary = tmp_path_factory.mktemp("go") / "summaryreader"
    proc = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_READER, env=go_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"go build failed:\n{proc.stderr}"
    return binary


def go_read(reader: Path, summary: Path) -> dict[str, Any]:
    proc = subprocess.run([str(reader), str(summary)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"Go could not read {summary}:\n{proc.stderr}"
    return json.loads(proc.stdout)


def expected_messages(status: Status, message: str) -> list[str]:
    """What runtests.FailureReasonFromMessage makes of a failure's message."""
    text = message.strip()
    return [text] if text and status not in (Status.PASS, Status.SKIP) else []


def check_digest(digest: dict[str, Any], run: RunResult) -> None:
    """Go's view of every test equals the harness's model of it."""
    assert [t["name"] for t in digest["tests"]] == [r.test for r in run.results]
    assert digest["results"] == dict(collections.Counter(r.status.value for r in run.results))
    assert digest["failures"] == [r.test for r in run.results
                                  if r.status not in (Status.PASS, Status.SKIP)]
    assert digest["outputs"] == []
    cases = collections.Counter(c.status.value for r in run.results if r.attempts
                                for c in r.final.cases)
    assert digest["case_results"] == dict(cases)
    for seen, r in zip(digest["tests"], run.results, strict=True):
        where = r.key
        assert seen["gn_label"] == r.label, where
        assert seen["result"] == r.status.value, where
        if r.attempts:  # a test that never ran has no start time of its own
            assert parse_time(seen["start_time"]) == r.start_time, where
        assert seen["duration_milliseconds"] == round(r.duration_s * 1000), where
        assert seen["is_testing_failure_mode"] is r.testing_failure_mode, where
        assert seen["affected"] is False and seen["source_label"] == "", where
        tags = dict(seen["tags"])
        assert (tags["environment"], tags["suite"], tags["attempts"]) == (
            r.environment, r.suite, str(len(r.attempts))), where
        message = r.final.message if r.attempts else "no attempt ran"
        messages = expected_messages(r.status, message)
        assert seen["failure_reason"]["present"] is bool(messages), where
        assert seen["failure_reason"]["messages"] == messages, where
        model_cases = r.final.cases if r.attempts else []
        assert len(seen["cases"]) == len(model_cases), where
        for got, case in zip(seen["cases"], model_cases, strict=True):
            assert (got["case_name"], got["suite_name"], got["status"], got["format"]) == (
                case.name, case.suite, case.status.value, case.format), where
            assert got["duration_nanos"] == round(case.duration_s * 1e9), where
            assert got["failure_reason"]["messages"] == expected_messages(
                case.status, case.message), where
            assert got["tags"] == [[k, v] for k, v in sorted(case.tags.items())], where
        # Every listed file is where Go's readers look: run dir / output_dir / file.
        folder = r.folder if r.folder else ""
        assert seen["output_dir"] == folder, where
        for f in seen["output_files"]:
            assert (run.out_dir / seen["output_dir"] / f).is_file(), (where, f)


def every_kind(out_dir: Path) -> RunResult:
    """Each status, retries, parsed cases with and without failure text, a synthetic test."""
    def result(test: str, statuses: list[Status], message: str = "") -> TResult:
        attempts = [Attempt(status=s, message=message if s != Status.PASS else "",
                            start_time=T0 + dt.timedelta(seconds=10 * i),
                            duration_s=1.25 + i,
                            artifacts={"serial.log": f"e/{test}/attempt-{i}/serial.log"})
                    for i, s in enumerate(statuses, 1)]
        return TResult(test=test, suite="core", environment="e", engine="qemu", arch="x86_64",
                       blocking=True, attempts=attempts, label=f"//t:{test}", folder=f"e/{test}")

    cases = result("cases", [Status.FAIL], "1 case failed")
    cases.final.cases = [
        Case("Passes", Status.PASS, "S", 0.001, format="GoogleTest"),
        Case("Fails", Status.FAIL, "S", 0.0025, "x.cc:1: Failure\nExpected: 1 == 2",
             "GoogleTest", tags={"expectation": "failure", "a": "b"}),
        Case("Quiet", Status.FAIL, "S", 0.0, "", "GoogleTest"),
        Case("Skipped", Status.SKIP, "S", 0.0, "disabled", "GoogleTest"),
        Case("Hung", Status.ABORT, "", 1.5, "timed out", "FTF"),
    ]
    scan = result("string_in_log/serial.log/ZIRCON KERNEL PANIC", [Status.FAIL],
                  "ZIRCON KERNEL PANIC\nwith its context")
    scan.testing_failure_mode = True
    never = result("never-ran", [])
    return RunResult(results=[
        result("pass", [Status.PASS]),
        result("fail", [Status.FAIL], "  exited 1  "),
        result("silent-fail", [Status.FAIL], ""),
        result("infra", [Status.INFRA_FAIL], "no VMM"),
        result("abort", [Status.ABORT], "deadline of 8 s"),
        result("skip", [Status.SKIP]),
        result("flaky", [Status.FAIL, Status.PASS], "first try failed"),
        result("exonerated", [Status.EXONERATED], "declared not critical"),
        cases, scan, never,
    ], out_dir=out_dir, started=T0, duration_s=30.0)


def test_go_reads_every_kind_of_result(go_reader: Path, tmp_path: Path) -> None:
    run = every_kind(tmp_path)
    for r in run.results:
        for a in r.attempts:
            for rel in a.artifacts.values():
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / rel).write_text("log\n")
    write_summary(run, tmp_path / "summary.json")
    digest = go_read(go_reader, tmp_path / "summary.json")
    check_digest(digest, run)
    scan = next(t for t in digest["tests"] if t["name"].startswith("string_in_log/"))
    assert scan["is_testing_failure_mode"] is True
    assert scan["failure_reason"]["messages"] == ["ZIRCON KERNEL PANIC\nwith its context"]
    assert [t["name"] for t in digest["tests"] if t["is_testing_failure_mode"]] == [
        scan["name"]]
    infra = next(t for t in digest["tests"] if t["name"] == "infra")
    assert infra["is_testing_failure_mode"] is False


def test_go_rejects_what_the_old_writer_wrote(go_reader: Path, tmp_path: Path) -> None:
    """The reader is strict where Go is: a string failure_reason (the harness's old output)
    stops it, so the tests above would catch a writer that went back to it."""
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"tests": [{"name": "t", "result": "FAIL",
                                           "start_time": "2024-05-01T12:00:00Z",
                                           "failure_reason": "boom"}]}))
    proc = subprocess.run([str(go_reader), str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert "cannot unmarshal string" in proc.stderr and "failure_reason" in proc.stderr
    path.write_text(json.dumps({"tests": [{"name": "t", "result": "PASS",
                                           "start_time": "2024-05-01T12:00:00Z",
                                           "cases": [{"duration_nanos": 1.5}]}]}))
    proc = subprocess.run([str(go_reader), str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and "duration_nanos" in proc.stderr


@pytest.mark.parametrize("name", ["summary_exonerated.json", "summary.json",
                                  "summary_long_name.json"])
def test_go_and_the_harness_agree_on_fuchsia_files(go_reader: Path, name: str) -> None:
    """Fuchsia's own files: what Go sees is what load_summary reads (statuses normalised)."""
    digest = go_read(go_reader, FIXTURES / name)
    run = load_summary(FIXTURES / name)
    assert [t["name"] for t in digest["tests"]] == [r.test for r in run.results]
    for seen, r in zip(digest["tests"], run.results, strict=True):
        assert Status(seen["result"].upper()) == r.status
        # Both cut Go's nanoseconds to microseconds; a missing time is Go's zero time.
        assert parse_time(seen["start_time"]) == r.start_time
        assert seen["failure_reason"]["messages"] == (
            r.final.message.split("\n") if r.final.message else [])
        assert [(c["case_name"], c["status"].upper(), c["duration_nanos"] / 1e9)
                for c in seen["cases"]] == [(c.name, c.status.value, c.duration_s)
                                           for c in r.final.cases]


# -- Fuchsia's own files through the harness's readers -----------------------------------------


def test_load_fuchsia_exonerated_file() -> None:
    run = load_summary(FIXTURES / "summary_exonerated.json")
    by_name = {r.test: r for r in run.results}
    assert [r.status for r in run.results] == [
        Status.EXONERATED, Status.FAIL, Status.PASS, Status.SKIP, Status.FAIL]
    failed = by_name["prefix/failed_target_with_exonerated_case"]
    assert failed.final.message == "CaseExonerated: Flaky run instance"
    assert failed.final.cases == [
        Case("CaseExonerated", Status.EXONERATED, "SuiteX", 0.0, "Flaky run instance",
             "GoogleTest"),
        Case("CasePassed", Status.PASS, "SuiteX", 50e-9, "", "GoogleTest")]
    assert failed.final.artifacts == {"path/to/output.txt": "path/to/output.txt"}
    assert failed.label == "label_case_exonerated" and failed.environment == ""
    assert run.started == dt.datetime(2020, 6, 13, 22, 28, 37, 358413, tzinfo=dt.UTC)
    assert run.blocking_failed  # the FAIL tests; the EXONERATED one alone would not


def test_load_fuchsia_old_file() -> None:
    run = load_summary(FIXTURES / "summary.json")
    r4 = next(r for r in run.results if r.test == "host_x64/testtarget4")
    assert [(c.suite, c.name, c.status) for c in r4.final.cases][:3] == [
        ("suiteA", "test::caseA", Status.FAIL), ("suiteB", "test::caseA", Status.FAIL),
        ("suiteB", "test::caseB", Status.PASS)]
    r1 = run.results[0]
    assert r1.final.cases[2].duration_s == pytest.approx(130.48)
    long_run = load_summary(FIXTURES / "summary_long_name.json")
    assert long_run.results[0].start_time == GO_ZERO_TIME  # that entry has no start_time
    assert long_run.started == run.started


def write_dir(root: Path, name: str, doc: Any) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps(doc))
    return directory


def sharder_summaries(root: Path) -> list[Path]:
    """One run directory per testsharder shard, holding that shard's summary_if_skipped."""
    shards = json.loads((FIXTURES / "skip_unaffected_tests.golden.json").read_text())
    return [write_dir(root, shard["name"].replace(":", "-"), shard["summary_if_skipped"])
            for shard in shards]


def test_stability_reads_fuchsia_files(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    for name in ("summary.json", "summary_exonerated.json", "summary_long_name.json"):
        d = runs / name.removesuffix(".json")
        d.mkdir(parents=True)
        shutil.copy(FIXTURES / name, d / "summary.json")
    sharder_summaries(runs)
    assert main(["stability", str(runs), "--json", "--last", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["runs"]) == 6
    (env,) = doc["environments"]
    assert env["environment"] == "" and env["blocking"] is True and env["ready"] is None
    tests = {t["test"]: t for t in env["tests"]}
    exonerated = tests["prefix/exonerated_target_only"]
    assert (exonerated["exonerated"], exonerated["failed"], exonerated["pass_rate"]) == (1, 0, None)
    assert exonerated["last_status"] == "EXONERATED"
    # testtarget1 passed in summary.json and summary_long_name.json; testtarget2 failed in both.
    assert (tests["prefix/testtarget1"]["passed"], tests["prefix/testtarget1"]["runs_seen"]) == (
        2, 2)
    assert tests["host_x64/testtarget2"]["pass_rate"] == 0.0
    skipped = [t for name, t in tests.items() if name.startswith("fuchsia-pkg://fuchsia.com/")
               and "hermetic-test" in name]
    assert len(skipped) == 4 and all(t["skipped"] == 1 for t in skipped)
    # The testsharder runs start at Go's zero time, so they are the oldest.
    assert [r["started"] for r in doc["runs"][:3]] == ["0001-01-01T00:00:00.000000Z"] * 3
    verdicts = [(Path(w["directory"]).name, w["verdict"]) for w in env["window"]]
    assert verdicts == [("summary_exonerated", "fail"), ("summary_long_name", "fail")]

    assert main(["stability", str(runs)]) == 0
    text = capsys.readouterr().out
    assert "(no environment) (blocking): seen in 6 runs" in text
    assert "EXONERATED" in text


def test_stability_rejects_an_unknown_status_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(FIXTURES / "summary2.json", d / "summary.json")
    assert main(["stability", str(d)]) == 2
    err = capsys.readouterr().err
    assert (f"{d / 'summary.json'}: tests[3] (host_x64/testtarget4): field 'cases[5].status': "
            "malformed: unknown status 'foo'") in err
    assert "Traceback" not in err


def test_merge_fuchsia_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(FIXTURES / "summary.json", old / "summary.json")
    (old / "path" / "to").mkdir(parents=True)
    (old / "path" / "to" / "output.txt").write_text("old output\n")
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(FIXTURES / "summary_exonerated.json", new / "summary.json")
    shards = sharder_summaries(tmp_path / "sharder")
    out = tmp_path / "merged"
    # FAIL tests among them: the merged run fails, as each of those files' runs did.
    assert main(["merge", str(old), str(new), *map(str, shards), "--out", str(out)]) == 1
    assert "merged 14 results" in capsys.readouterr().out
    merged = load_summary(out / "summary.json")
    assert len(merged.results) == 5 + 5 + 4
    statuses = collections.Counter(r.status.value for r in merged.results)
    assert statuses == {"PASS": 4, "FAIL": 4, "EXONERATED": 1, "SKIP": 5}
    assert merged.started == dt.datetime(2020, 6, 13, 22, 28, 37, 358413, tzinfo=dt.UTC)
    # The one output file that exists is copied; the others were never there.
    assert (out / "path" / "to" / "output.txt").read_text() == "old output\n"
    xmlschema.XMLSchema(str(XSD)).validate(str(out / "junit.xml"))
    written = json.loads((out / "summary.json").read_text())
    entry = next(t for t in written["tests"] if t["name"] == "prefix/exonerated_target_only")
    assert entry["result"] == "EXONERATED" and entry["output_files"] == ["path/to/output.txt"]
    case = next(t for t in written["tests"]
                if t["name"] == "prefix/failed_target_with_exonerated_case")["cases"][0]
    assert case["status"] == "EXONERATED"
    assert case["failure_reason"] == {"errors": [{"message": "Flaky run instance"}]}


def test_merge_an_exonerated_run_alone_passes(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads((FIXTURES / "summary_exonerated.json").read_text())
    doc["tests"] = [t for t in doc["tests"] if t["result"] != "FAIL"]
    d = write_dir(tmp_path, "exonerated", doc)
    assert main(["merge", str(d), "--out", str(tmp_path / "out")]) == 0
    assert "merged 3 results" in capsys.readouterr().out


# -- a real run, read by Go --------------------------------------------------------------------

GTEST_OUTPUT = "\\n".join([
    "[==========] Running 3 tests from 1 test suite.",
    "[----------] 3 tests from Summary",
    "[ RUN      ] Summary.Passes",
    "[       OK ] Summary.Passes (1 ms)",
    "[ RUN      ] Summary.Fails",
    "summary_test.cc:12: Failure",
    "Expected: 1 == 2",
    "[  FAILED  ] Summary.Fails (2 ms)",
    "[ RUN      ] Summary.Skipped",
    "[  SKIPPED ] Summary.Skipped (0 ms)",
    "[----------] 3 tests from Summary (3 ms total)",
    "[==========] 3 tests from 1 test suite ran. (3 ms total)",
    "[  PASSED  ] 1 test.",
    "[  FAILED  ] 1 test, listed below:",
    "[  FAILED  ] Summary.Fails",
]) + "\\n"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private TMPDIR: VMM sockets must fit a Unix socket path, and a VMM left
    behind can be found by it."""
    path = Path(tempfile.mkdtemp(prefix="hs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
def test_go_reads_a_real_run(go_reader: Path, tmp_path: Path, short_tmp: Path) -> None:
    """A pass, a failure with parsed cases, an abort: two guest boots.

    The programs share a guest until one fails, which discards it, so the failure
    comes second and the abort last, on a second guest.
    """
    where = [{"dimensions": {"device_type": "QEMU", "cpu": "x64", "devices": "minimal"}}]
    entries = [
        {"name": "passes", "path": "/bin/true"},
        {"name": "gtest", "path": "/bin/sh",
         "args": ["-c", f"printf '{GTEST_OUTPUT}'; exit 1"]},
        {"name": "hangs", "path": "/bin/sleep", "args": ["600"], "timeout_secs": 8},
    ]
    tests = tmp_path / "tests.json"
    tests.write_text(json.dumps([
        {"test": {"timeout_secs": 60, **e}, "environments": where} for e in entries]))
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(short_tmp))
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--quiet", "--tests", str(tests),
         "--env", ENV, "--jobs", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    left = subprocess.run(["pgrep", "-f", f"qemu-system.*{short_tmp}"], capture_output=True,
                          text=True, check=False).stdout.split()
    assert not left, f"a VMM was left behind: {left}"
    assert proc.returncode == 0, proc.stderr  # qemu-x64-minimal is FYI: failures do not block

    run = load_summary(out / "summary.json")
    assert [(r.test, r.status) for r in run.results] == [
        ("passes", Status.PASS), ("gtest", Status.FAIL), ("hangs", Status.ABORT)]
    gtest = run.results[1]
    assert [(c.name, c.status) for c in gtest.final.cases] == [
        ("Passes", Status.PASS), ("Fails", Status.FAIL), ("Skipped", Status.SKIP)]
    # Each has a guest of its own, restored from the environment's snapshot (harness.snapshot).
    assert [r.final.properties.get("start") for r in run.results] == ["restore"] * 3

    digest = go_read(go_reader, out / "summary.json")
    check_digest(digest, run)
    assert digest["results"] == {"PASS": 1, "FAIL": 1, "ABORT": 1}
    assert digest["case_results"] == {"PASS": 1, "FAIL": 1, "SKIP": 1}
    by_name = {t["name"]: t for t in digest["tests"]}
    (message,) = by_name["gtest"]["failure_reason"]["messages"]
    assert message == "/bin/sh exited 1; failed cases: Fails"
    (fails_case,) = [c for c in by_name["gtest"]["cases"] if c["status"] == "FAIL"]
    assert fails_case["failure_reason"]["messages"] == [
        "summary_test.cc:12: Failure\nExpected: 1 == 2"]
    assert fails_case["display_name"] == "Summary.Fails" and fails_case["format"] == "GoogleTest"
    assert "deadline of 8 s" in by_name["hangs"]["failure_reason"]["messages"][0]
    assert not any(t["is_testing_failure_mode"] for t in digest["tests"])
    for t in digest["tests"]:
        assert "serial.log" in t["output_files"], t["name"]
