"""Stability across many runs, for FYI dashboards: is an environment ready to be blocking?

New builders start FYI (`blocking: false`) and are promoted once they are
stable. This module reads the summary.json of many runs (never a VMM) and
answers, per environment and per test: how often it passed, how often it was
flaky, how many runs saw it, how boot time moves, and whether each FYI
environment passed its last K runs.

Choices, made so that a promotion is never granted on weak evidence:

- A run *passes* for an environment when none of its tests failed (FAIL,
  INFRA_FAIL or ABORT) and at least one really ran and passed. A flaky pass
  (failed, then passed on retry) counts as a pass, as it does for the exit
  status; skips count neither way. A run where every test was skipped (the
  engine is missing on that bot) is no evidence, so it is not a pass.
- Infrastructure failures count against: a builder whose host keeps failing
  is not ready to block anyone's change either.
- EXONERATED (only in Fuchsia's own summary files: a failure declared not to
  count) fails no run, as it fails no exit status, but it is no pass either:
  counted as `exonerated`, outside the pass rate, like a skip.
- An interrupted run is not a pass; its tests that never started (ABORT in an
  interrupted run) are counted as `interrupted`, not as failures, so they do
  not drag pass rates down.
- The window is the last K runs *that include the environment*; an
  environment seen in fewer than K runs is not ready.
- Boot time is the `boot_s` property the runner records on each attempt that
  booted a guest; an attempt whose guest was restored from a snapshot has the cold
  boot that snapshot was saved from (`snapshot_boot_s`), so an environment whose
  tests all restore still has its boot time (it changes only with a new snapshot,
  that is when the image, the VMM or the command line changed). Per run, the
  median of an environment's (or a test's) samples; the trend is first, last,
  median and a least-squares slope in seconds per run, the run index counting
  every run given, in start order.

Any summary.json is read, the harness's own and Fuchsia's (old and new
formats): tests of a Fuchsia file carry no environment tag, so they are
grouped under the environment "" (shown as `(no environment)`) and count as
blocking, since nothing in the file says otherwise.

- VMM CPU is what the block test measures around its transfers (the VMM
  session's CPU seconds, `vmm_cpu_s_write` + `vmm_cpu_s_read`): the one
  figure recorded the same way on every engine, so its trend is comparable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.report.summary import load_summary, rfc3339
from harness.results import RunResult, Status, TestResult
from harness.textsafe import name_safe, terminal_safe

SUMMARY = "summary.json"
DEFAULT_LAST = 5
BOOT_PROPERTY = "boot_s"
SNAPSHOT_BOOT_PROPERTY = "snapshot_boot_s"  # issue 13: a restored guest's saved boot
VMM_CPU_PREFIX = "vmm_cpu_s"
FORMAT = 1

_FAILED = (Status.FAIL, Status.INFRA_FAIL, Status.ABORT)


# -- reading runs ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """One run's summary.json, read back."""

    summary: Path
    run: RunResult

    @property
    def directory(self) -> Path:
        return self.summary.parent

    @property
    def started(self) -> dt.datetime:
        return self.run.started


def find_summaries(dirs: Sequence[Path]) -> list[Path]:
    """The summary.json of each run under `dirs`, each file once.

    A directory holding summary.json is a run directory; otherwise each of its
    immediate subdirectories that holds one is (a `results/` folder, whose
    `latest` link is then not counted twice). A directory with neither is an
    error naming the summary.json that was expected.
    """
    if not dirs:
        raise ConfigError("command line", None, "RESULTS_DIR", "give at least one directory")
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for d in map(Path, dirs):
        if not d.is_dir():
            problem = "not a directory" if d.exists() else "no such directory"
            raise ConfigError(str(d), None, None, problem)
        direct = d / SUMMARY
        if direct.exists():
            add(direct)
            continue
        # Real directories before links, so `latest` is reported by its own name.
        subdirs = sorted((p for p in d.iterdir() if p.is_dir()),
                         key=lambda p: (p.is_symlink(), p.name))
        inner = [p / SUMMARY for p in subdirs if (p / SUMMARY).exists()]
        if not inner:
            raise ConfigError(str(direct), None, None,
                              "missing: not a run directory, and none of its subdirectories "
                              "holds a summary.json")
        for path in inner:
            add(path)
    return found


def load_runs(dirs: Sequence[Path]) -> list[LoadedRun]:
    """Every run under `dirs`, oldest first (by the run's start time, then by path)."""
    runs = [LoadedRun(path, load_summary(path)) for path in find_summaries(dirs)]
    return sorted(runs, key=lambda r: (r.started, str(r.summary)))


# -- trends ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trend:
    """A series of per-run values (run index, value): boot seconds, here."""

    points: tuple[tuple[int, float], ...]

    @property
    def first(self) -> float:
        return self.points[0][1]

    @property
    def last(self) -> float:
        return self.points[-1][1]

    @property
    def median(self) -> float:
        return statistics.median(v for _, v in self.points)

    @property
    def slope_per_run(self) -> float | None:
        """Least-squares slope in units per run; None with fewer than two runs."""
        if len(self.points) < 2:
            return None
        xs = [float(x) for x, _ in self.points]
        ys = [y for _, y in self.points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            return None
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx

    def to_json(self) -> dict[str, Any]:
        slope = self.slope_per_run
        return {
            "samples": len(self.points),
            "first": round(self.first, 3),
            "last": round(self.last, 3),
            "median": round(self.median, 3),
            "slope_per_run": None if slope is None else round(slope, 4),
            "points": [[x, round(v, 3)] for x, v in self.points],
        }


def make_trend(points: Sequence[tuple[int, float]]) -> Trend | None:
    return Trend(tuple(points)) if points else None


def _seconds(raw: str | None) -> float | None:
    """A property holding seconds, as a number: None when absent, not a number, negative or
    not finite (a hand-edited or foreign summary.json may hold anything)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def boot_samples(result: TestResult) -> list[float]:
    """The `boot_s` of each attempt that booted a guest, else the boot its snapshot was
    saved from (a shared guest's tests have neither)."""
    out: list[float] = []
    for attempt in result.attempts:
        raw = attempt.properties.get(BOOT_PROPERTY, attempt.properties.get(SNAPSHOT_BOOT_PROPERTY))
        value = _seconds(raw)
        if value is not None:
            out.append(value)
    return out


def vmm_cpu_samples(result: TestResult) -> list[float]:
    """Per attempt that measured it, the VMM CPU seconds of its `vmm_cpu_s*` properties."""
    out: list[float] = []
    for attempt in result.attempts:
        total, seen = 0.0, False
        for key, raw in attempt.properties.items():
            value = _seconds(raw) if key.startswith(VMM_CPU_PREFIX) else None
            if value is not None:
                total, seen = total + value, True
        if seen:
            out.append(total)
    return out


# -- per test and per environment ---------------------------------------------------------------


def _interrupted(run: RunResult, result: TestResult) -> bool:
    return run.interrupted and result.status == Status.ABORT


@dataclasses.dataclass
class TestStability:
    """One (environment, test) across the runs that include it."""

    __test__ = False  # not a pytest test class

    environment: str
    test: str
    runs_seen: int = 0
    passed: int = 0  # final PASS, flaky ones included
    flaky: int = 0
    failed: int = 0  # FAIL, INFRA_FAIL, ABORT (except ABORTs of an interrupted run)
    skipped: int = 0
    exonerated: int = 0
    interrupted: int = 0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    last_status: str = ""
    last_message: str = ""
    boot: Trend | None = None

    @property
    def pass_rate(self) -> float | None:
        """Passed / (passed + failed); None when it never ran (only skips or interruptions)."""
        ran = self.passed + self.failed
        return self.passed / ran if ran else None

    def add(self, run: RunResult, result: TestResult) -> None:
        self.runs_seen += 1
        status = result.status
        self.statuses[status.value] = self.statuses.get(status.value, 0) + 1
        self.last_status = "FLAKY" if result.flaky else status.value
        self.last_message = result.final.message if result.attempts else ""
        if status == Status.PASS:
            self.passed += 1
            self.flaky += result.flaky
        elif status == Status.SKIP:
            self.skipped += 1
        elif status == Status.EXONERATED:
            self.exonerated += 1
        elif _interrupted(run, result):
            self.interrupted += 1
        else:
            self.failed += 1

    def to_json(self) -> dict[str, Any]:
        rate = self.pass_rate
        return {
            "environment": self.environment,
            "test": self.test,
            "runs_seen": self.runs_seen,
            "passed": self.passed,
            "flaky": self.flaky,
            "failed": self.failed,
            "skipped": self.skipped,
            "exonerated": self.exonerated,
            "interrupted": self.interrupted,
            "pass_rate": None if rate is None else round(rate, 4),
            "statuses": dict(sorted(self.statuses.items())),
            "last_status": self.last_status,
            "last_message": self.last_message,
            "boot_s": self.boot.to_json() if self.boot else None,
        }


@dataclasses.dataclass(frozen=True)
class RunVerdict:
    """What one run says about one environment: pass, fail, skipped or interrupted."""

    index: int  # position among all runs given, oldest first
    directory: str
    started: dt.datetime
    verdict: str
    failed: tuple[str, ...] = ()
    flaky: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.index,
            "directory": self.directory,
            "started": rfc3339(self.started),
            "verdict": self.verdict,
            "failed": list(self.failed),
            "flaky": list(self.flaky),
        }


def run_verdict(index: int, loaded: LoadedRun, results: Sequence[TestResult]) -> RunVerdict:
    run = loaded.run
    failed = tuple(sorted(r.test for r in results
                          if r.status in _FAILED and not _interrupted(run, r)))
    flaky = tuple(sorted(r.test for r in results if r.flaky))
    if any(_interrupted(run, r) for r in results):
        verdict = "interrupted"
    elif failed:
        verdict = "fail"
    elif not any(r.status == Status.PASS for r in results):
        verdict = "skipped"
    else:
        verdict = "pass"
    return RunVerdict(index, str(loaded.directory), loaded.started, verdict, failed, flaky)


@dataclasses.dataclass
class EnvironmentStability:
    environment: str
    blocking: bool  # as of the latest run that includes it
    tests: list[TestStability]
    history: list[RunVerdict]  # every run that includes it, oldest first
    boot: Trend | None
    ready: bool | None  # None: already blocking, nothing to decide
    reason: str
    vmm_cpu: Trend | None = None

    @property
    def runs_seen(self) -> int:
        return len(self.history)

    def window(self, last: int) -> list[RunVerdict]:
        return self.history[-last:]

    def to_json(self, last: int) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "blocking": self.blocking,
            "runs_seen": self.runs_seen,
            "ready": self.ready,
            "reason": self.reason,
            "window": [v.to_json() for v in self.window(last)],
            "boot_s": self.boot.to_json() if self.boot else None,
            "vmm_cpu_s": self.vmm_cpu.to_json() if self.vmm_cpu else None,
            "tests": [t.to_json() for t in self.tests],
        }


def readiness(blocking: bool, history: Sequence[RunVerdict], last: int) -> tuple[bool | None, str]:
    """Whether an FYI environment may be made blocking, and why (or why not)."""
    if blocking:
        return None, "already blocking"
    if len(history) < last:
        return False, f"seen in {len(history)} of the {last} runs needed"
    window = list(history[-last:])
    bad = [v for v in window if not v.passed]
    if not bad:
        flaky = sum(len(v.flaky) for v in window)
        note = f" ({flaky} flaky result{'s' * (flaky != 1)} among them)" if flaky else ""
        return True, f"passed each of the last {last} runs{note}"
    latest = bad[-1]
    what = {
        "fail": "failed " + ", ".join(latest.failed[:5]) + (
            f" and {len(latest.failed) - 5} more" if len(latest.failed) > 5 else ""),
        "skipped": "every test was skipped (no evidence)",
        "interrupted": "the run was interrupted",
    }[latest.verdict]
    return False, (f"{len(bad)} of the last {last} runs did not pass; latest: "
                   f"{latest.directory} ({rfc3339(latest.started)}): {what}")


@dataclasses.dataclass
class StabilityReport:
    runs: list[LoadedRun]
    last: int
    environments: list[EnvironmentStability]

    @property
    def ready(self) -> list[str]:
        return [e.environment for e in self.environments if e.ready]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "last": self.last,
            "runs": [
                {"run": i, "directory": str(r.directory), "summary": str(r.summary),
                 "started": rfc3339(r.started), "interrupted": r.run.interrupted,
                 "tests": len(r.run.results)}
                for i, r in enumerate(self.runs)
            ],
            "ready_to_block": self.ready,
            "environments": [e.to_json(self.last) for e in self.environments],
        }


def analyze(runs: Sequence[LoadedRun], last: int = DEFAULT_LAST) -> StabilityReport:
    """The stability of every environment and test in `runs` (oldest first)."""
    if last < 1:
        raise ConfigError("command line", None, "--last", f"must be at least 1, not {last}")
    tests: dict[tuple[str, str], TestStability] = {}
    test_boot: dict[tuple[str, str], list[tuple[int, float]]] = {}
    env_boot: dict[str, list[tuple[int, float]]] = {}
    env_cpu: dict[str, list[tuple[int, float]]] = {}
    history: dict[str, list[RunVerdict]] = {}
    blocking: dict[str, bool] = {}
    for index, loaded in enumerate(runs):
        by_env: dict[str, list[TestResult]] = {}
        for result in loaded.run.results:
            by_env.setdefault(result.environment, []).append(result)
            key = (result.environment, result.test)
            tests.setdefault(key, TestStability(*key)).add(loaded.run, result)
            samples = boot_samples(result)
            if samples:
                test_boot.setdefault(key, []).append((index, statistics.median(samples)))
        for env, results in by_env.items():
            history.setdefault(env, []).append(run_verdict(index, loaded, results))
            blocking[env] = any(r.blocking for r in results)
            samples = [s for r in results for s in boot_samples(r)]
            if samples:
                env_boot.setdefault(env, []).append((index, statistics.median(samples)))
            cpu = [s for r in results for s in vmm_cpu_samples(r)]
            if cpu:
                env_cpu.setdefault(env, []).append((index, statistics.median(cpu)))
    for key, stab in tests.items():
        stab.boot = make_trend(test_boot.get(key, []))
    environments = []
    for env in sorted(history):
        ready, reason = readiness(blocking[env], history[env], last)
        environments.append(EnvironmentStability(
            environment=env,
            blocking=blocking[env],
            tests=sorted((t for (e, _), t in tests.items() if e == env), key=lambda t: t.test),
            history=history[env],
            boot=make_trend(env_boot.get(env, [])),
            ready=ready,
            reason=reason,
            vmm_cpu=make_trend(env_cpu.get(env, [])),
        ))
    return StabilityReport(list(runs), last, environments)


# -- text --------------------------------------------------------------------------------------


def _trend_text(trend: Trend | None) -> str:
    if trend is None:
        return "-"
    slope = trend.slope_per_run
    text = f"{trend.first:.2f}/{trend.last:.2f}/{trend.median:.2f}"
    return text + (f" {slope:+.3f}/run" if slope is not None else "")


def _rate_text(t: TestStability) -> str:
    rate = t.pass_rate
    if rate is None:
        return "-"
    return f"{rate * 100:.0f}% ({t.passed}/{t.passed + t.failed})"


def report_text(report: StabilityReport) -> str:
    """The report for a person: one block per environment, one line per test."""
    runs = report.runs
    if not runs:
        return "no runs\n"
    lines = [
        f"{len(runs)} run{'s' * (len(runs) != 1)} from {rfc3339(runs[0].started)} to "
        f"{rfc3339(runs[-1].started)}; readiness over each FYI environment's last "
        f"{report.last} runs",
        "boot s, VMM CPU s: first/last/median of the per-run median, slope in s per run",
    ]
    for env in report.environments:
        kind = "blocking" if env.blocking else "FYI"
        lines.append("")
        name = name_safe(env.environment) or "(no environment)"
        lines.append(f"{name} ({kind}): seen in {env.runs_seen} "
                     f"run{'s' * (env.runs_seen != 1)}, boot s {_trend_text(env.boot)}"
                     + (f", VMM CPU s {_trend_text(env.vmm_cpu)}" if env.vmm_cpu else ""))
        if env.ready is not None:
            verdict = "READY to be made blocking" if env.ready else "not ready"
            lines.append(f"  {verdict}: {terminal_safe(env.reason)}")
        width = max([len("test"), *(len(name_safe(t.test)) for t in env.tests)])
        lines.append(f"  {'test':<{width}}  {'pass rate':<12} {'flaky':>5} {'skip':>4} "
                     f"{'runs':>4}  {'last':<10} boot s")
        for t in env.tests:
            lines.append(f"  {name_safe(t.test):<{width}}  {_rate_text(t):<12} {t.flaky:>5} "
                         f"{t.skipped:>4} {t.runs_seen:>4}  {t.last_status:<10} "
                         f"{_trend_text(t.boot)}")
    lines.append("")
    ready = report.ready
    lines.append("ready to be made blocking: " +
                 (", ".join(name_safe(e) or "(no environment)" for e in ready)
                  if ready else "none"))
    return "\n".join(lines) + "\n"


def stability(dirs: Sequence[Path], last: int = DEFAULT_LAST) -> StabilityReport:
    """Read every run under `dirs` and analyze them (the `harness stability` command)."""
    if last < 1:
        raise ConfigError("command line", None, "--last", f"must be at least 1, not {last}")
    return analyze(load_runs(dirs), last)
