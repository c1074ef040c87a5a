"""`harness stability`: pass rates, flakes, boot trends and FYI readiness across runs.

Every run here is a real results directory: hand-made RunResults written through
`harness.report.write_reports`, then read back the way the command reads CI's.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.report import write_reports
from harness.results import Attempt, RunResult, Status
from harness.results import TestResult as TResult  # not "Test*": pytest would collect it
from harness.stability import Trend, analyze, find_summaries, load_runs, stability

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
P, F, S, A, INFRA = Status.PASS, Status.FAIL, Status.SKIP, Status.ABORT, Status.INFRA_FAIL
EX = Status.EXONERATED


def result(env: str, test: str, statuses: Sequence[Status], *, blocking: bool = False,
           boot: Sequence[float | None] = (), day: int = 0) -> TResult:
    attempts = []
    for i, s in enumerate(statuses):
        b = boot[i] if i < len(boot) else None
        attempts.append(Attempt(
            status=s, message="" if s.ok else f"{test} {s.value}",
            start_time=T0 + dt.timedelta(days=day, seconds=i), duration_s=1.0,
            properties={"boot_s": f"{b:.3f}"} if b is not None else {},
        ))
    return TResult(test=test, suite="core", environment=env, engine="qemu", arch="x86_64",
                   blocking=blocking, attempts=attempts, folder=f"{env}/{test}")


def write_run(root: Path, name: str, day: int, results: Sequence[TResult], *,
              interrupted: bool = False) -> Path:
    out = root / name
    write_reports(RunResult(results=list(results), out_dir=out, interrupted=interrupted,
                            started=T0 + dt.timedelta(days=day), duration_s=60.0))
    assert (out / "summary.json").is_file()
    return out


def fyi_runs(root: Path, verdicts: Sequence[str], env: str = "crosvm-x64") -> list[Path]:
    """One run per verdict for an FYI environment: 'p' pass, 'f' fail, 'k' flaky, 's' skip."""
    dirs = []
    for day, v in enumerate(verdicts):
        statuses = {"p": [P], "f": [F], "k": [F, P], "s": [S]}[v]
        dirs.append(write_run(root, f"run-{day:02d}", day, [
            result(env, "boot", statuses, day=day),
            result(env, "devices", [S if v == "s" else P], day=day),
            result("qemu-x64", "boot", [P], blocking=True, day=day),
        ]))
    return dirs


def env_of(report_json: dict, name: str) -> dict:
    return next(e for e in report_json["environments"] if e["environment"] == name)


def test_pass_rate_flakes_and_runs_seen(tmp_path: Path) -> None:
    write_run(tmp_path, "a", 0, [result("e", "t", [P]), result("e", "u", [S])])
    write_run(tmp_path, "b", 1, [result("e", "t", [F, P]), result("e", "u", [P])])
    write_run(tmp_path, "c", 2, [result("e", "t", [F, F])])
    write_run(tmp_path, "d", 3, [result("e", "t", [INFRA]), result("e", "u", [P])])
    report = stability([tmp_path], last=2)
    (env,) = report.environments
    t, u = env.tests
    assert (t.test, t.runs_seen, t.passed, t.flaky, t.failed, t.skipped) == ("t", 4, 2, 1, 2, 0)
    assert t.pass_rate == pytest.approx(0.5)
    assert t.statuses == {"PASS": 2, "FAIL": 1, "INFRA_FAIL": 1}
    assert t.last_status == "INFRA_FAIL"
    # Skips count neither way: 2 of 2 that ran.
    assert (u.runs_seen, u.passed, u.skipped, u.pass_rate) == (3, 2, 1, 1.0)
    assert env.runs_seen == 4


def test_exonerated_fails_no_run_and_is_no_pass(tmp_path: Path) -> None:
    """EXONERATED (from Fuchsia's files): outside the pass rate, and no failed run."""
    write_run(tmp_path, "a", 0, [result("e", "t", [P]), result("e", "x", [EX])])
    write_run(tmp_path, "b", 1, [result("e", "t", [P]), result("e", "x", [P])])
    report = stability([tmp_path], last=2)
    (env,) = report.environments
    _, x = env.tests
    assert (x.passed, x.failed, x.exonerated, x.skipped, x.pass_rate) == (1, 0, 1, 0, 1.0)
    assert x.statuses == {"EXONERATED": 1, "PASS": 1}
    assert [v.verdict for v in env.history] == ["pass", "pass"]
    assert env.ready is True
    assert x.to_json()["exonerated"] == 1


def test_never_ran_has_no_pass_rate(tmp_path: Path) -> None:
    write_run(tmp_path, "a", 0, [result("e", "t", [S])])
    (env,) = stability([tmp_path]).environments
    assert env.tests[0].pass_rate is None
    assert env.tests[0].to_json()["pass_rate"] is None


def test_runs_ordered_by_start_time_not_by_name(tmp_path: Path) -> None:
    write_run(tmp_path, "zzz-oldest", 0, [result("e", "t", [P], boot=[1.0])])
    write_run(tmp_path, "aaa-newest", 2, [result("e", "t", [F], boot=[3.0])])
    write_run(tmp_path, "mmm-middle", 1, [result("e", "t", [P], boot=[2.0])])
    runs = load_runs([tmp_path])
    assert [r.directory.name for r in runs] == ["zzz-oldest", "mmm-middle", "aaa-newest"]
    (env,) = analyze(runs).environments
    assert [v.verdict for v in env.history] == ["pass", "pass", "fail"]
    assert env.tests[0].last_status == "FAIL"


def test_boot_trend(tmp_path: Path) -> None:
    # Per run, the median of the samples (a retry boots again); slope over the run index.
    write_run(tmp_path, "r0", 0, [result("e", "t", [P], boot=[2.0])])
    write_run(tmp_path, "r1", 1, [result("e", "t", [F, P], boot=[2.0, 3.0])])  # median 2.5
    write_run(tmp_path, "r2", 2, [result("e", "other", [P], boot=[9.0])])  # t absent here
    write_run(tmp_path, "r3", 3, [result("e", "t", [P], boot=[3.5])])
    (env,) = stability([tmp_path]).environments
    t = next(x for x in env.tests if x.test == "t")
    assert t.boot is not None
    assert t.boot.points == ((0, 2.0), (1, 2.5), (3, 3.5))
    assert (t.boot.first, t.boot.last, t.boot.median) == (2.0, 3.5, 2.5)
    assert t.boot.slope_per_run == pytest.approx(0.5)
    # The environment's trend pools all its tests' boots, per run.
    assert env.boot is not None
    assert env.boot.points == ((0, 2.0), (1, 2.5), (2, 9.0), (3, 3.5))
    js = t.to_json()["boot_s"]
    assert js["first"] == 2.0 and js["last"] == 3.5 and js["slope_per_run"] == 0.5


def test_trend_edge_cases(tmp_path: Path) -> None:
    assert Trend(((4, 1.5),)).slope_per_run is None
    assert Trend(((0, 1.0), (1, 1.0))).slope_per_run == 0.0
    assert Trend(((0, 3.0), (1, 2.0), (2, 1.0))).slope_per_run == pytest.approx(-1.0)
    # Shared-guest tests have no boot_s; garbage values are ignored, not fatal.
    bad = result("e", "t", [P])
    bad.attempts[0].properties["boot_s"] = "n/a"
    write_run(tmp_path, "r", 0, [bad, result("e", "u", [P])])
    (env,) = stability([tmp_path]).environments
    assert env.boot is None and all(t.boot is None for t in env.tests)


def test_ready_after_k_passing_runs(tmp_path: Path) -> None:
    fyi_runs(tmp_path, "fpppkp")  # an old failure, then 5 passes (one of them flaky)
    report = stability([tmp_path], last=5)
    env = next(e for e in report.environments if e.environment == "crosvm-x64")
    assert env.ready is True
    assert "passed each of the last 5 runs" in env.reason
    assert "1 flaky result" in env.reason
    assert report.ready == ["crosvm-x64"]
    # The blocking environment has nothing to decide.
    blocking = next(e for e in report.environments if e.environment == "qemu-x64")
    assert blocking.ready is None and blocking.reason == "already blocking"
    # With K=6 the old failure is in the window.
    env6 = next(e for e in stability([tmp_path], last=6).environments
                if e.environment == "crosvm-x64")
    assert env6.ready is False
    assert "1 of the last 6 runs did not pass" in env6.reason
    assert "failed boot" in env6.reason and "run-00" in env6.reason


def test_not_ready_when_seen_in_fewer_than_k_runs(tmp_path: Path) -> None:
    fyi_runs(tmp_path, "ppp")
    (fyi,) = [e for e in stability([tmp_path], last=5).environments if not e.blocking]
    assert fyi.ready is False
    assert fyi.reason == "seen in 3 of the 5 runs needed"
    assert stability([tmp_path], last=3).ready == ["crosvm-x64"]


def test_window_counts_only_runs_that_include_the_environment(tmp_path: Path) -> None:
    fyi_runs(tmp_path, "ppp")
    # Later runs without the environment at all do not break its streak.
    write_run(tmp_path, "run-10", 10, [result("qemu-x64", "boot", [P], blocking=True)])
    assert stability([tmp_path], last=3).ready == ["crosvm-x64"]


def test_failure_or_all_skipped_run_in_window_is_not_ready(tmp_path: Path) -> None:
    fyi_runs(tmp_path / "f", "ppfpp")
    env = next(e for e in stability([tmp_path / "f"], last=5).environments if not e.blocking)
    assert env.ready is False and "failed boot" in env.reason and "run-02" in env.reason
    # Every test skipped (no crosvm on that bot) is no evidence of stability.
    fyi_runs(tmp_path / "s", "ppspp")
    env = next(e for e in stability([tmp_path / "s"], last=5).environments if not e.blocking)
    assert env.ready is False and "every test was skipped" in env.reason
    assert [v.verdict for v in env.history] == ["pass", "pass", "skipped", "pass", "pass"]


def test_interrupted_run(tmp_path: Path) -> None:
    write_run(tmp_path, "a", 0, [result("e", "t", [P]), result("e", "u", [A])],
              interrupted=True)
    write_run(tmp_path, "b", 1, [result("e", "t", [P]), result("e", "u", [P])])
    (env,) = stability([tmp_path], last=2).environments
    u = next(t for t in env.tests if t.test == "u")
    assert (u.failed, u.interrupted, u.pass_rate) == (0, 1, 1.0)
    assert env.history[0].verdict == "interrupted"
    assert env.ready is False and "interrupted" in env.reason


def test_dirs_run_dirs_folders_and_latest_link(tmp_path: Path) -> None:
    results = tmp_path / "results"
    dirs = fyi_runs(results, "pp")
    (results / "latest").symlink_to(dirs[-1].name)
    (results / "not-a-run").mkdir()
    single = write_run(tmp_path, "elsewhere", 5, [result("crosvm-x64", "boot", [P], day=5)])
    found = find_summaries([results, single, dirs[0]])
    assert [p.parent.name for p in found] == ["run-00", "run-01", "elsewhere"]
    report = stability([results, single], last=3)
    assert [r.directory.name for r in report.runs] == ["run-00", "run-01", "elsewhere"]
    assert report.ready == ["crosvm-x64"]


def test_missing_summary_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as e:
        stability([empty])
    assert e.value.file == str(empty / "summary.json")
    assert "missing" in str(e.value)
    with pytest.raises(ConfigError, match="no such directory"):
        stability([tmp_path / "nope"])


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "not valid JSON"),
    ('{"tests": 3}', "expected an object with a 'tests' list"),
    ('{"tests": [{"name": "x", "harness": {"test": "x"}}]}', "missing"),
    ('{"tests": [{"name": "x", "result": "MAYBE", "start_time": "2024-01-01T00:00:00Z"}]}',
     "malformed"),
])
def test_malformed_summary_exit_2_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str) -> None:
    good = write_run(tmp_path / "results", "good", 0, [result("e", "t", [P])])
    bad = tmp_path / "results" / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text(content)
    assert main(["stability", str(good.parent)]) == 2
    err = capsys.readouterr().err
    assert str(bad / "summary.json") in err
    assert problem in err


def test_last_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fyi_runs(tmp_path, "p")
    assert main(["stability", str(tmp_path), "--last", "0"]) == 2
    assert "--last" in capsys.readouterr().err


def test_cli_json_for_dashboards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fyi_runs(tmp_path, "pkp")
    assert main(["stability", str(tmp_path), "--last", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == 1 and doc["last"] == 3
    assert doc["ready_to_block"] == ["crosvm-x64"]
    assert [r["directory"] for r in doc["runs"]] == [
        str(tmp_path / f"run-0{i}") for i in range(3)]
    env = env_of(doc, "crosvm-x64")
    assert env["blocking"] is False and env["ready"] is True and env["runs_seen"] == 3
    assert [w["verdict"] for w in env["window"]] == ["pass", "pass", "pass"]
    assert env["window"][1]["flaky"] == ["boot"]
    boot = next(t for t in env["tests"] if t["test"] == "boot")
    assert boot["flaky"] == 1 and boot["pass_rate"] == 1.0 and boot["runs_seen"] == 3
    assert env_of(doc, "qemu-x64")["ready"] is None


def test_cli_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fyi_runs(tmp_path, "pfk")
    write_run(tmp_path, "run-09", 9, [result("crosvm-x64", "boot", [P], boot=[2.0], day=9),
                                      result("qemu-x64", "boot", [P], blocking=True, day=9)])
    assert main(["stability", str(tmp_path), "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 runs from 2024-05-01T12:00:00.000000Z" in out
    assert "crosvm-x64 (FYI): seen in 4 runs" in out
    assert "READY to be made blocking: passed each of the last 2 runs" in out
    assert "qemu-x64 (blocking): seen in 4 runs" in out
    lines = out.splitlines()
    boot_line = next(line for line in lines if line.strip().startswith("boot ") and "75%" in line)
    assert "75% (3/4)" in boot_line and "FLAKY" not in boot_line  # last run: a clean pass
    assert out.rstrip().endswith("ready to be made blocking: crosvm-x64")
