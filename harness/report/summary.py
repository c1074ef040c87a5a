"""summary.json in Fuchsia's format, readable back into a RunResult.

Fuchsia's Go tools (the ResultDB uploader, tefmocheck, the recipes' readers)
unmarshal summary.json into the structs of tools/testing/runtests/runtests.go,
so each test entry carries exactly their fields, with their JSON types and
their omit-empty rules: a `failure_reason` is an object or absent, never a
string, because one string there stops every Go reader at "cannot unmarshal".
Everything runtests.go does not declare goes under the `harness` key of each
entry (and `harness_run` at the top), which Go's decoder ignores. That record
holds the whole TestResult with every attempt, so `load_summary` rebuilds the
run exactly: merging shards, scheduling by past durations and re-reporting
never depend on the lossy Fuchsia view.

Files the harness did not write (Fuchsia's own, old and new) are read from the
Fuchsia fields alone: statuses in either spelling (`PASS`, old `Pass`),
EXONERATED, `output_file` (old) or `output_files` with `output_dir`, a
`failure_reason` object (or the old string), `null` for empty lists.

Path convention (shared with the runner): `TestResult.folder` and the values
of `Attempt.artifacts` are paths relative to the run directory (the one
holding summary.json), in POSIX form. Absolute paths are accepted; those
outside the run directory are kept in the `harness` record but not listed in
`output_files`, which Fuchsia requires to be relative. As Fuchsia's testrunner
does (tools/testing/testrunner/outputs.go), a test's `output_dir` is its own
folder and its `output_files` are relative to that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import posixpath
import re
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import ConfigError
from harness.parsers import display_name
from harness.results import Attempt, Case, RunResult, Status, TestResult

SUMMARY_FORMAT = 2

# The files a test folder holds by convention; listed when present even if no
# attempt recorded them as artifacts (a run interrupted before it could).
STANDARD_FILES = ("serial.log", "vmm-command.txt", "vmm-stderr.log")

# Go's zero time.Time: what a Go writer puts in start_time when it has none (testsharder's
# summary_if_skipped), and what a Go reader makes of a missing start_time.
GO_ZERO_TIME = dt.datetime(1, 1, 1, tzinfo=dt.UTC)


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


def run_files(run: RunResult, result: TestResult) -> list[str]:
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


def output_location(run: RunResult, result: TestResult) -> tuple[str, list[str]]:
    """runtests.go's (output_dir, output_files) for `result`.

    output_dir is the test's folder relative to the run directory (empty when it
    has none, or one outside the run directory) and each output file is relative
    to it, as Fuchsia's testrunner writes them; a file outside the folder but
    inside the run directory gets a `../` path, as testrunner's filepath.Rel does.
    """
    files = run_files(run, result)
    folder = run_relative(run.out_dir, result.folder) if result.folder else None
    if not folder or folder == ".":
        return "", files
    return folder, [posixpath.relpath(f, folder) for f in files]


def failure_reason(message: str) -> dict[str, Any] | None:
    """runtests.FailureReasonFromMessage: the whole trimmed message as one error, or None.

    Not cut short: runtests.go keeps the full diagnostic in summary.json and leaves
    truncation to the uploaders (tools/testing/resultdb/lib.go cuts each message to
    1024 bytes). `trace` and `truncated_errors_count` are omitted, as Go omits them
    when empty.
    """
    text = message.strip()
    return {"errors": [{"message": text}]} if text else None


def is_failure(status: Status) -> bool:
    """runtests.IsFailure: anything but PASS and SKIP, EXONERATED included."""
    return status not in (Status.PASS, Status.SKIP)


def _duration_ms(seconds: float) -> int:
    return round(seconds * 1000) if math.isfinite(seconds) and seconds > 0 else 0


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def _case_entry(case: Case) -> dict[str, Any]:
    """runtests.TestCaseResult, its fields in Go's order."""
    display = display_name(case)  # testparser's DisplayName: `::` for Rust, `/` for Go
    entry: dict[str, Any] = {
        "display_name": display,
        "suite_name": case.suite,
        "case_name": case.name,
        "status": case.status.value,
        "duration_nanos": (
            round(case.duration_s * 1e9)
            if math.isfinite(case.duration_s) and case.duration_s > 0
            else 0
        ),
        "format": case.format,
    }
    reason = failure_reason(case.message) if is_failure(case.status) else None
    if reason is not None:
        entry["failure_reason"] = reason
    # output_files and output_dir are omitempty and a case has none of its own.
    entry["tags"] = _tag_list(dict(sorted(case.tags.items())))
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
    out = _tag_list(tags) + _tag_list(result.tags)
    if result.attempts:
        out += _tag_list(result.final.properties)
    return out


def _test_entry(run: RunResult, result: TestResult) -> dict[str, Any]:
    """runtests.TestDetails, its fields in the order Go's encoder writes them.

    The embedded TestResult comes first (output_files, output_dir, cases,
    failure_reason), then TestDetails' own fields. data_sinks is omitempty and the
    harness has none; source_label and affected are not omitempty, so they are
    written empty/false (tests.json gives the harness no source label, and a run
    is never a tryjob's affected-tests run); metadata is a struct, which Go's
    omitempty never drops, so it is always an object.
    """
    status = result.status
    output_dir, files = output_location(run, result)
    entry: dict[str, Any] = {
        "output_files": files,
        "output_dir": output_dir,
        "cases": [_case_entry(c) for c in result.final.cases] if result.attempts else [],
    }
    if is_failure(status):
        reason = failure_reason(result.final.message if result.attempts else "no attempt ran")
        if reason is not None:
            entry["failure_reason"] = reason
    entry.update({
        "name": result.test,
        "gn_label": result.label,
        "source_label": "",
        "result": status.value,
        "start_time": rfc3339(result.start_time),
        # The span of all attempts, so start_time + duration is when the test ended.
        "duration_milliseconds": _duration_ms(result.duration_s),
        # Only the crash scan's synthetic tests (tefmocheck's), never an ordinary
        # INFRA_FAIL: Fuchsia's dashboards count these apart from the tests themselves.
        "is_testing_failure_mode": result.testing_failure_mode,
        "affected": False,
        "tags": _tags(result),
        "metadata": {},
        "harness": result.to_json(),
    })
    return entry


def summary_dict(run: RunResult) -> dict[str, Any]:
    """The summary.json document for `run` (runtests.TestSummary, plus `harness_run`)."""
    return {"tests": [_test_entry(run, r) for r in run.results], **_run_fields(run)}


def _run_fields(run: RunResult) -> dict[str, Any]:
    """Everything in the document after its tests (SummaryRenderer renders tests apart).

    `outputs` is omitempty in runtests.go and the harness has no suite-wide outputs.
    """
    return {
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


# -- reading files the harness did not write ------------------------------------------------


class _Bad(Exception):
    """A problem with one field of an entry; load_summary adds the file and the entry."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _status(value: object, field: str) -> Status:
    """A status in runtests.go's spelling or the older `Pass`/`Fail` one."""
    if isinstance(value, str):
        for candidate in (value, value.upper()):
            with contextlib.suppress(ValueError):
                return Status(candidate)
    known = ", ".join(s.value for s in Status)
    raise _Bad(field, f"malformed: unknown status {value!r} (known: {known})")


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any,
         field: str) -> Any:
    """d[key] if it has the type Go would accept; `default` when absent or null."""
    value = d.get(key)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _Bad(field, f"malformed: expected a number, not {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Bad(field, f"malformed: expected {names}, not {type(value).__name__}")
    return value


def _list_of_dicts(d: dict[str, Any], key: str, field: str) -> list[dict[str, Any]]:
    items: list[Any] = _get(d, key, list, [], field)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Bad(f"{field}[{i}]", "malformed: expected an object")
    return items


def _reason_texts(d: dict[str, Any], field: str) -> tuple[list[str], list[str]]:
    """(messages, traces) of a failure_reason object, or of the older plain string."""
    reason = d.get("failure_reason")
    if reason is None:
        return [], []
    if isinstance(reason, str):
        return ([reason] if reason else []), []
    if not isinstance(reason, dict):
        raise _Bad(f"{field}.failure_reason", "malformed: expected an object")
    messages: list[str] = []
    traces: list[str] = []
    errors = _list_of_dicts(reason, "errors", f"{field}.failure_reason.errors")
    for i, error in enumerate(errors):
        where = f"{field}.failure_reason.errors[{i}]"
        message = _get(error, "message", str, "", f"{where}.message")
        trace = _get(error, "trace", str, "", f"{where}.trace")
        if message:
            messages.append(message)
        if trace:
            traces.append(trace)
    return messages, traces


def _tag_dict(d: dict[str, Any], field: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for i, tag in enumerate(_list_of_dicts(d, "tags", f"{field}tags")):
        key = _get(tag, "key", str, None, f"{field}tags[{i}].key")
        if key is None:
            raise _Bad(f"{field}tags[{i}].key", "missing")
        tags[key] = _get(tag, "value", str, "", f"{field}tags[{i}].value")
    return tags


def _case_from_fuchsia(c: dict[str, Any], field: str) -> Case:
    messages, traces = _reason_texts(c, field)
    legacy = _get(c, "fail_reason", str, "", f"{field}.fail_reason")  # before failure_reason
    if legacy and not messages:
        messages = [legacy]
    display = _get(c, "display_name", str, "", f"{field}.display_name")
    return Case(
        name=_get(c, "case_name", str, "", f"{field}.case_name") or display,
        status=_status(c.get("status"), f"{field}.status"),
        suite=_get(c, "suite_name", str, "", f"{field}.suite_name"),
        duration_s=_get(c, "duration_nanos", (int, float), 0, f"{field}.duration_nanos") / 1e9,
        message="\n".join(messages + traces),
        format=_get(c, "format", str, "", f"{field}.format"),
        tags=_tag_dict(c, f"{field}."),
    )


def _start_time(entry: dict[str, Any]) -> dt.datetime:
    raw = _get(entry, "start_time", str, None, "start_time")
    if raw is None:
        return GO_ZERO_TIME
    try:
        return parse_time(raw)
    except ValueError as e:
        raise _Bad("start_time", f"malformed: not an RFC 3339 time: {raw!r}") from e


def _from_fuchsia(entry: dict[str, Any]) -> TestResult:
    """A TestResult from a plain runtests.go entry (one not written by this harness).

    Fields the model has no place for (source_label, affected, metadata,
    data_sinks, a case's own output files) are not kept.
    """
    name = _get(entry, "name", str, None, "name")
    if name is None:
        raise _Bad("name", "missing")
    if "result" not in entry:
        raise _Bad("result", "missing")
    tags = _tag_dict(entry, "")
    known = ("environment", "suite", "engine", "arch", "accel", "kernel", "blocking")
    fields = {k: tags.pop(k, "") for k in known}
    for derived in ("flaky", "attempts"):
        tags.pop(derived, None)
    cases = [
        _case_from_fuchsia(c, f"cases[{i}]")
        for i, c in enumerate(_list_of_dicts(entry, "cases", "cases"))
    ]
    output_dir = _get(entry, "output_dir", str, "", "output_dir")
    files = _get(entry, "output_files", list, [], "output_files")
    for i, f in enumerate(files):
        if not isinstance(f, str):
            raise _Bad(f"output_files[{i}]", "malformed: expected a string")
    old = _get(entry, "output_file", str, "", "output_file")  # before output_files
    if old and old not in files:
        files = [*files, old]
    messages, traces = _reason_texts(entry, "")
    attempt = Attempt(
        status=_status(entry["result"], "result"),
        message="\n".join(messages),
        details="\n".join(traces),
        start_time=_start_time(entry),
        duration_s=_get(entry, "duration_milliseconds", (int, float), 0,
                        "duration_milliseconds") / 1000,
        cases=cases,
        artifacts={f: posixpath.join(output_dir, f) if output_dir else f for f in files if f},
    )
    return TestResult(
        test=name,
        suite=fields["suite"],
        environment=fields["environment"],
        engine=fields["engine"],
        arch=fields["arch"],
        blocking=fields["blocking"] != "false",
        label=_get(entry, "gn_label", str, "", "gn_label"),
        accel=fields["accel"],
        kernel=fields["kernel"],
        tags=tags,
        attempts=[attempt],
        testing_failure_mode=_get(entry, "is_testing_failure_mode", bool, False,
                                  "is_testing_failure_mode"),
    )


def load_summary(path: Path) -> RunResult:
    """Read a summary.json back into a RunResult whose out_dir is the file's directory.

    Our own files come back exactly (from each entry's `harness` record); a
    plain Fuchsia summary.json, old or new, is read as one attempt per entry.
    Bad input is a ConfigError naming the file, the entry and the field.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(path), None, None, f"cannot read: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), None, None, f"not valid JSON: {e}") from e
    # Go writes a nil slice as null: a summary with no tests says "tests": null.
    if not isinstance(doc, dict) or "tests" not in doc or not (
            doc["tests"] is None or isinstance(doc["tests"], list)):
        raise ConfigError(str(path), None, "tests", "expected an object with a 'tests' list")
    results: list[TestResult] = []
    for i, entry in enumerate(doc["tests"] or []):
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
        except _Bad as e:
            raise ConfigError(str(path), where, e.field, e.problem) from e
        except KeyError as e:
            raise ConfigError(str(path), where, str(e.args[0]), "missing") from e
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(str(path), where, None, f"malformed: {e}") from e
    meta = doc.get("harness_run") or {}
    try:
        # A Fuchsia file has no run start: its earliest test's, ignoring Go's zero time.
        known = [r.start_time for r in results if r.start_time > GO_ZERO_TIME]
        started = parse_time(meta["started"]) if "started" in meta else (
            min(known, default=GO_ZERO_TIME if results else dt.datetime.now(dt.UTC))
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
