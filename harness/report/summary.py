"""summary.json in Fuchsia's format, readable back into a RunResult.

Fuchsia's dashboards are the strictest reader, so each test entry carries
exactly the fields they know (name, gn_label, result, start_time,
duration_milliseconds, output_files, tags, cases); everything they do not
know goes under extra keys they ignore. The `harness` key of each entry holds
the whole TestResult with every attempt, so `load_summary` rebuilds the run
exactly: merging shards, scheduling by past durations and re-reporting never
depend on the lossy Fuchsia view.

Path convention (shared with the runner): `TestResult.folder` and the values
of `Attempt.artifacts` are paths relative to the run directory (the one
holding summary.json), in POSIX form. Absolute paths are accepted; those
outside the run directory are kept in the `harness` record but not listed in
`output_files`, which Fuchsia requires to be relative.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import ConfigError
from harness.results import Attempt, Case, RunResult, Status, TestResult

SUMMARY_FORMAT = 1

# The files a test folder holds by convention; listed when present even if no
# attempt recorded them as artifacts (a run interrupted before it could).
STANDARD_FILES = ("serial.log", "vmm-command.txt", "vmm-stderr.log")

# Case statuses Fuchsia knows; a case cannot be an infrastructure failure there.
_CASE_STATUS = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.INFRA_FAIL: "FAIL",
    Status.ABORT: "ABORT",
    Status.SKIP: "SKIP",
}

# "path/file.cc:123: Failure: ..." -> "Failure: ...": Fuchsia wants fail_reason
# free of line numbers so the same failure groups together across builds.
_LOCATION_PREFIX = re.compile(r"^\s*[\w./+-]+:\d+(?::\d+)?:\s*")
_FAIL_REASON_MAX = 256


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half.

    A CI job can be killed mid-write (a timeout, a Ctrl-C while reporting);
    a truncated junit.xml or summary.json would then hide the whole run. The
    temporary file is in the same directory so `os.replace` is a rename on
    one file system, and it is fsynced first so the rename cannot land before
    the data after a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def rfc3339(t: dt.datetime) -> str:
    """UTC RFC 3339 with a `Z`; naive times are taken as UTC (the harness records UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(s: str) -> dt.datetime:
    """Parse RFC 3339, including Go's nanosecond fractions that `fromisoformat` rejects."""
    s = re.sub(r"(\.\d{6})\d+", r"\1", s.strip())
    t = dt.datetime.fromisoformat(s)
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def run_relative(out_dir: Path, path: str) -> str | None:
    """`path` relative to the run directory in POSIX form, or None if it lies outside it."""
    p = Path(path)
    if p.is_absolute():
        for base in (out_dir, out_dir.resolve()):
            with contextlib.suppress(ValueError):
                return p.relative_to(base).as_posix()
        return None
    rel = PurePosixPath(p.as_posix())
    if ".." in rel.parts or not rel.parts:
        return None
    return rel.as_posix()


def output_files(run: RunResult, result: TestResult) -> list[str]:
    """Every file of `result` inside the run directory, relative to it, each once."""
    files: list[str] = []
    for attempt in result.attempts:
        for path in attempt.artifacts.values():
            rel = run_relative(run.out_dir, path)
            if rel is not None and rel not in files:
                files.append(rel)
    folder = run_relative(run.out_dir, result.folder) if result.folder else None
    if folder is not None:
        for name in STANDARD_FILES:
            rel = f"{folder}/{name}"
            if rel not in files and (run.out_dir / rel).is_file():
                files.append(rel)
    return files


def fail_reason(message: str) -> str:
    """The first line of `message`, without a source location, short enough to group on."""
    for line in message.splitlines():
        line = _LOCATION_PREFIX.sub("", line).strip()
        if line:
            if len(line) > _FAIL_REASON_MAX:
                line = line[: _FAIL_REASON_MAX - 3] + "..."
            return line
    return ""


def _duration_ms(seconds: float) -> int:
    return round(seconds * 1000) if math.isfinite(seconds) and seconds > 0 else 0


def _case_entry(case: Case) -> dict[str, Any]:
    display = f"{case.suite}.{case.name}" if case.suite else case.name
    entry: dict[str, Any] = {
        "display_name": display,
        "suite_name": case.suite,
        "case_name": case.name,
        "status": _CASE_STATUS[case.status],
        "duration_nanos": (
            round(case.duration_s * 1e9)
            if math.isfinite(case.duration_s) and case.duration_s > 0
            else 0
        ),
        "format": case.format,
    }
    if not case.status.ok:
        entry["fail_reason"] = fail_reason(case.message) or case.status.value
    return entry


def _tags(result: TestResult) -> list[dict[str, str]]:
    tags = {
        "environment": result.environment,
        "suite": result.suite,
        "engine": result.engine,
        "arch": result.arch,
        "accel": result.accel,
        "kernel": result.kernel,
        "blocking": "true" if result.blocking else "false",
        "flaky": "true" if result.flaky else "false",
        "attempts": str(len(result.attempts)),
    }
    out = [{"key": k, "value": v} for k, v in tags.items()]
    out += [{"key": k, "value": v} for k, v in result.tags.items()]
    if result.attempts:
        out += [{"key": k, "value": v} for k, v in result.final.properties.items()]
    return out


def _test_entry(run: RunResult, result: TestResult) -> dict[str, Any]:
    status = result.status
    entry: dict[str, Any] = {
        "name": result.test,
        "gn_label": result.label,
        "result": status.value,
        "start_time": rfc3339(result.start_time),
        # The span of all attempts, so start_time + duration is when the test ended.
        "duration_milliseconds": _duration_ms(result.duration_s),
        "output_files": output_files(run, result),
        "tags": _tags(result),
        "cases": [_case_entry(c) for c in result.final.cases] if result.attempts else [],
        # A harness or host failure is a failure mode of the testing, not of the code
        # under test; Fuchsia's dashboards keep those apart.
        "is_testing_failure_mode": status == Status.INFRA_FAIL,
    }
    if not status.ok:
        message = result.final.message if result.attempts else "no attempt ran"
        entry["failure_reason"] = fail_reason(message) or status.value
    entry["harness"] = result.to_json()
    return entry


def summary_dict(run: RunResult) -> dict[str, Any]:
    """The summary.json document for `run`."""
    return {"tests": [_test_entry(run, r) for r in run.results], **_run_fields(run)}


def _run_fields(run: RunResult) -> dict[str, Any]:
    """Everything in the document after its tests (SummaryRenderer renders tests apart)."""
    return {
        "outputs": {},
        "harness_run": {
            "format": SUMMARY_FORMAT,
            "interrupted": run.interrupted,
            "started": rfc3339(run.started),
            "duration_s": round(run.duration_s, 6),
            "blocking_failed": run.blocking_failed,
            "totals": run.totals(),
        },
    }


def _json(value: Any, indent: str) -> str:
    """`value` as json.dumps(indent=2) writes it at a nesting of `indent` (JSON text holds
    no raw newline inside a string, so re-indenting is a plain replace)."""
    return json.dumps(value, indent=2, ensure_ascii=True).replace("\n", "\n" + indent)


class SummaryRenderer:
    """summary.json from per-test entries it keeps between calls.

    The text is exactly `json.dumps(summary_dict(run), indent=2, ensure_ascii=True)`,
    but a test's entry is rendered again only when its record changed, so rewriting
    the file after every finished test costs that test plus joining strings (a
    3,000-test document takes most of a second to render whole). An entry is only
    reused for the very same TestResult object (see harness.report.junit.JunitRenderer).
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[TestResult, tuple[object, ...], str]] = {}
        self.render_s = 0.0  # time spent rendering tests (the rest is joining strings)

    def _entry(self, run: RunResult, r: TestResult) -> str:
        last = r.attempts[-1] if r.attempts else None
        key = (str(run.out_dir), len(r.attempts), id(last), r.status, r.folder, r.repro,
               len(last.cases) if last else 0, len(last.artifacts) if last else 0,
               r.accel, r.kernel)
        hit = self._cache.get(id(r))
        if hit is not None and hit[0] is r and hit[1] == key:
            return hit[2]
        t0 = time.perf_counter()
        text = "    " + _json(_test_entry(run, r), "    ")
        self.render_s += time.perf_counter() - t0
        self._cache[id(r)] = (r, key, text)
        return text

    def document(self, run: RunResult) -> str:
        live = {id(r) for r in run.results}
        for k in [k for k in self._cache if k not in live]:
            del self._cache[k]
        entries = [self._entry(run, r) for r in run.results]
        parts = ['"tests": ' + ("[\n" + ",\n".join(entries) + "\n  ]" if entries else "[]")]
        parts += [f"{json.dumps(k)}: {_json(v, '  ')}" for k, v in _run_fields(run).items()]
        return "{\n  " + ",\n  ".join(parts) + "\n}\n"


def summary_string(run: RunResult) -> str:
    """summary.json as text.

    ASCII-only on purpose: guest text can hold lone surrogates, which UTF-8
    cannot encode but a JSON `\\udxxx` escape can, so the round trip through
    `load_summary` is exact.
    """
    return SummaryRenderer().document(run)


def write_summary(run: RunResult, path: Path) -> None:
    """Write summary.json atomically."""
    atomic_write(Path(path), summary_string(run).encode("ascii"))


def _from_fuchsia(entry: dict[str, Any]) -> TestResult:
    """Best-effort TestResult from a plain Fuchsia entry (one not written by this harness)."""
    tags: dict[str, str] = {}
    for tag in entry.get("tags", []) or []:
        tags[str(tag["key"])] = str(tag["value"])
    known = ("environment", "suite", "engine", "arch", "accel", "kernel", "blocking")
    fields = {k: tags.pop(k, "") for k in known}
    for derived in ("flaky", "attempts"):
        tags.pop(derived, None)
    cases = [
        Case(
            name=c.get("case_name") or c["display_name"],
            status=Status(c["status"]),
            suite=c.get("suite_name", ""),
            duration_s=float(c.get("duration_nanos", 0)) / 1e9,
            message=c.get("fail_reason", ""),
            format=c.get("format", ""),
        )
        for c in entry.get("cases", []) or []
    ]
    attempt = Attempt(
        status=Status(entry["result"]),
        message=entry.get("failure_reason", ""),
        start_time=parse_time(entry["start_time"]),
        duration_s=float(entry.get("duration_milliseconds", 0)) / 1000,
        cases=cases,
        artifacts={f: f for f in entry.get("output_files", []) or []},
    )
    return TestResult(
        test=entry["name"],
        suite=fields["suite"],
        environment=fields["environment"],
        engine=fields["engine"],
        arch=fields["arch"],
        blocking=fields["blocking"] != "false",
        label=entry.get("gn_label", ""),
        accel=fields["accel"],
        kernel=fields["kernel"],
        tags=tags,
        attempts=[attempt],
    )


def load_summary(path: Path) -> RunResult:
    """Read a summary.json back into a RunResult whose out_dir is the file's directory.

    Our own files come back exactly (from each entry's `harness` record); a
    plain Fuchsia summary.json is read as one attempt per entry. Bad input is
    a ConfigError naming the file and the entry.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(path), None, None, f"cannot read: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), None, None, f"not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        raise ConfigError(str(path), None, "tests", "expected an object with a 'tests' list")
    results: list[TestResult] = []
    for i, entry in enumerate(doc["tests"]):
        where = f"tests[{i}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" ({entry['name']})"
        try:
            if not isinstance(entry, dict):
                raise TypeError("expected an object")
            record = entry.get("harness")
            results.append(
                TestResult.from_json(record) if record is not None else _from_fuchsia(entry)
            )
        except KeyError as e:
            raise ConfigError(str(path), where, str(e.args[0]), "missing") from e
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(str(path), where, None, f"malformed: {e}") from e
    meta = doc.get("harness_run") or {}
    try:
        started = parse_time(meta["started"]) if "started" in meta else (
            min((r.start_time for r in results), default=dt.datetime.now(dt.UTC))
        )
        duration = float(meta.get("duration_s", 0.0))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(path), "harness_run", None, f"malformed: {e}") from e
    return RunResult(
        results=results,
        out_dir=path.parent,
        interrupted=bool(meta.get("interrupted", False)),
        started=started,
        duration_s=duration,
    )
