"""JUnit XML for CI (Jenkins, GitLab) and people, valid under junit-10.xsd.

junit-xml builds the document; three things it cannot do are patched on the
element tree afterwards: Surefire's flakyFailure/rerunFailure elements for
retried tests, times that junit-10.xsd accepts (it allows at most three
decimals on suites, junit-xml writes Python's float repr), and dropping the
`disabled` attribute the schema rejects. All guest text passes through
`xml_safe` first, because junit-xml either raises on an ESC or writes a
character reference XML 1.0 forbids, and one such byte makes the whole file
unreadable to every consumer.

Shape: one <testsuite> per environment, one <testcase> per (environment,
test) with classname `<environment>.<suite>`, and one more <testcase> per
parsed case of the final attempt with classname `<environment>.<suite>.<test>`,
so a failing zxtest case shows up by name in CI. junit-10.xsd has no
<properties> inside <testcase>, so per-test metrics become suite properties
named `<test>.<metric>` (`<test>.attempt<N>.<metric>` for earlier attempts)
and are also listed at the top of the test's system-out.

Files for CI: each test's system-out lists its files as `[[ATTACHMENT|path]]`
lines, each alone on its line, serial.log first: Jenkins' junit-attachments
plugin archives every one, GitLab shows the first one of a failed test. The
path is relative to the working directory when the run directory is inside it
(GitLab resolves it in the job's artifacts, Jenkins in the workspace), else
absolute. GitLab also reads a `file` attribute on <testcase> (the test's source,
relative to the repository), but junit-10.xsd does not allow one (Jenkins' xUnit
plugin validates against that schema and rejects the file; pytest's xunit2
family leaves `file` out for the same reason). So `file` is written only where
its reader is: under GitLab CI (`GITLAB_CI` set), or when `HARNESS_JUNIT_FILE=1`
asks for it (`=0` never); everywhere else junit.xml stays valid under the schema.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import junit_xml

from harness.parsers import display_name
from harness.report.summary import atomic_write, rfc3339
from harness.results import Attempt, Case, RunResult, Status, TestResult
from harness.textsafe import head_tail, normalize_newlines, xml_safe

# GitLab rejects a JUnit file over 30 MB. Console text is the only unbounded part,
# so it is cut to head and tail per testcase, and the per-test share shrinks when a
# run has so many tests that 64 KiB each would not fit in FILE_BUDGET.
SYSTEM_OUT_LIMIT = 64 * 1024
SYSTEM_OUT_MIN = 2 * 1024
FILE_BUDGET = 25 * 1024 * 1024  # 26.2 MB: room under 30 MB for a misestimate
# Rough sizes of what cannot be cut: a test's testcase, header lines and properties,
# and one case's <testcase> element.
_FIXED_PER_TEST = 2048
_FIXED_PER_CASE = 256
RERUN_OUT_LIMIT = 16 * 1024
DETAILS_LIMIT = 16 * 1024
CASE_DETAILS_LIMIT = 4 * 1024
MESSAGE_LIMIT = 1024

_ERRORS = (Status.INFRA_FAIL, Status.ABORT)

# What Jenkins (a line `[[ATTACHMENT|path]]`) and GitLab (case-insensitive) read as an
# attachment. Guest text could carry one and have the CI archive any file of its host,
# so in guest text it is broken up with a space; only the harness's own lines stay.
_ATTACHMENT = re.compile(r"\[\[(ATTACHMENT)\|", re.IGNORECASE)


def defang_attachments(text: str) -> str:
    return _ATTACHMENT.sub(r"[[\1 |", text)


def _seconds(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def _time(value: float) -> str:
    """Decimal seconds with three places, the only form junit-10.xsd's SUREFIRE_TIME takes."""
    return f"{_seconds(value):.3f}"


def _clip(text: str, limit: int, *, head: int | None = None, where: str = "") -> str:
    """`text` made XML-safe and cut to about `limit` bytes (its head and tail)."""
    safe = defang_attachments(xml_safe(normalize_newlines(text)))
    return head_tail(safe, limit, limit // 4 if head is None else head, where=where)


def _message(text: str, fallback: str) -> str:
    """An attribute-sized message: the head only, since attributes are read as one line."""
    return _clip(text.strip(), MESSAGE_LIMIT, head=MESSAGE_LIMIT) or fallback


def _serial_log(run: RunResult, result: TestResult, attempt: Attempt | None) -> str:
    """Where this attempt's whole serial log is, as a path a reader can open."""
    rel = ""
    if attempt is not None:
        for key, path in attempt.artifacts.items():
            if key in ("serial.log", "serial") or Path(path).name == "serial.log":
                rel = path
                break
    if not rel and result.folder:
        rel = f"{result.folder}/serial.log"
    return str(run.out_dir / rel) if rel else ""


def ci_path(path: Path, base: Path | None = None) -> str:
    """`path` as CI systems resolve it: relative to `base` (the working directory) when
    inside it, else absolute."""
    base = Path.cwd() if base is None else base
    if path.is_absolute():
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            return path.as_posix()
    return path.as_posix()


def attachments(run: RunResult, result: TestResult, attempt: Attempt | None) -> list[str]:
    """The files of one attempt that exist, serial.log first, as `ci_path`s."""
    rels: list[str] = []
    serial = ""
    if attempt is not None:
        serial = next((p for k, p in attempt.artifacts.items()
                       if k in ("serial.log", "serial") or Path(p).name == "serial.log"), "")
    folder = str(Path(serial).parent.as_posix()) if serial else result.folder
    if folder:
        rels += [f"{folder}/{name}" for name in ("serial.log", "vmm-stderr.log",
                                                 "vmm-command.txt")]
    if attempt is not None:
        rels += [p for p in attempt.artifacts.values() if p not in rels]
    out: list[str] = []
    for rel in rels:
        path = Path(rel) if Path(rel).is_absolute() else run.out_dir / rel
        if path.is_file():
            shown = ci_path(path)
            if shown not in out:
                out.append(shown)
    return out


def file_attributes_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether testcases carry GitLab's `file` attribute (see the module docstring)."""
    environ = os.environ if environ is None else environ
    forced = environ.get("HARNESS_JUNIT_FILE", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    return bool(environ.get("GITLAB_CI"))


def source_file(result: TestResult, environ: Mapping[str, str] | None = None) -> str:
    """The test's source relative to the repository (GitLab's CI_PROJECT_DIR, else the
    working directory); '' when it has none or it lies outside."""
    if not result.source:
        return ""
    environ = os.environ if environ is None else environ
    base = Path(environ.get("CI_PROJECT_DIR") or Path.cwd())
    path = Path(result.source)
    if not path.is_absolute():
        return path.as_posix()
    for b in (base, base.resolve()):
        try:
            return path.relative_to(b).as_posix()
        except ValueError:
            continue
    return ""


def _attempt_text(
    run: RunResult, result: TestResult, index: int, attempt: Attempt | None, limit: int
) -> str:
    """What a person needs to act on one attempt: result, log path, repro, metrics, console."""
    total = len(result.attempts)
    status = attempt.status if attempt is not None else result.status
    lines = [f"result: {status.value}"]
    if attempt is not None and index == total and result.flaky:
        lines[0] += " (flaky: failed before it passed)"
    lines.append(f"attempt: {index} of {total}" if total else "attempt: none ran")
    if attempt is not None and attempt.message.strip():
        lines.append(f"message: {defang_attachments(_message(attempt.message, ''))}")
    serial = _serial_log(run, result, attempt)
    lines.append(f"serial log: {serial or '(none recorded)'}")
    lines.append(f"repro: {result.repro or '(none recorded)'}")
    if attempt is not None:
        lines.extend(defang_attachments(f"property: {k}={v}")
                     for k, v in attempt.properties.items())
    lines.extend(f"[[ATTACHMENT|{path}]]" for path in attachments(run, result, attempt))
    header = xml_safe(normalize_newlines("\n".join(lines)))
    tail = attempt.serial_tail if attempt is not None else ""
    if not tail:
        return header + "\n"
    where = serial or "serial.log"
    banner = "\n--- serial console (head and tail; the whole log is in serial.log) ---\n"
    return header + banner + _clip(tail, limit, where=where)


def _rerun_element(
    run: RunResult, result: TestResult, index: int, attempt: Attempt, flaky: bool, limit: int
) -> ET.Element:
    """Surefire's record of one earlier failed attempt (junit-10.xsd rerunType)."""
    kind = "Error" if attempt.status in _ERRORS else "Failure"
    tag = ("flaky" if flaky else "rerun") + kind
    message = _message(attempt.message, attempt.status.value)
    if attempt.status in _ERRORS:
        message = f"{attempt.status.value}: {message}"
    element = ET.Element(tag, {"message": message, "type": attempt.status.value})
    if attempt.details:
        ET.SubElement(element, "stackTrace").text = _clip(attempt.details, limit)
    ET.SubElement(element, "system-out").text = _attempt_text(run, result, index, attempt, limit)
    return element


def _add_outcome(
    case: junit_xml.TestCase, status: Status, message: str, details: str, details_limit: int
) -> None:
    output = _clip(details, details_limit) or None
    if status == Status.FAIL:
        case.add_failure_info(_message(message, "FAIL"), output, "FAIL")
    elif status in _ERRORS:
        # Say which kind of error: INFRA_FAIL is the host's fault, ABORT a timeout or
        # an interruption; both look alike as <error> otherwise.
        case.add_error_info(f"{status.value}: {_message(message, 'no reason recorded')}",
                            output, status.value)
    elif status == Status.SKIP:
        case.add_skipped_info(_message(message, "skipped"), output)


class _Names:
    """Unique (classname, name) pairs: GitLab keys tests on them and drops duplicates."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def unique(self, classname: str, name: str) -> str:
        candidate, n = name, 1
        while (classname, candidate) in self._seen:
            n += 1
            candidate = f"{name} ({n})"
        self._seen.add((classname, candidate))
        return candidate


def _case_testcase(
    result: TestResult, case: Case, names: _Names, details_limit: int
) -> junit_xml.TestCase:
    classname = xml_safe(f"{result.environment}.{result.suite}.{result.test}")
    name = xml_safe(display_name(case))
    tc = junit_xml.TestCase(
        name=names.unique(classname, name), classname=classname,
        elapsed_sec=_seconds(case.duration_s),
    )
    first_line = next((ln for ln in case.message.splitlines() if ln.strip()), "")
    _add_outcome(tc, case.status, first_line, case.message, details_limit)
    return tc


def _suite_properties(run: RunResult, results: list[TestResult]) -> dict[str, str]:
    props: dict[str, str] = {}
    for field in ("environment", "engine", "arch", "accel", "kernel", "vmm_version",
                  "blocking"):
        values: list[str] = []
        for r in results:
            v = getattr(r, field)
            v = ("true" if v else "false") if isinstance(v, bool) else str(v)
            if v not in values:
                values.append(v)
        props[field] = ",".join(values)
    if run.interrupted:
        props["interrupted"] = "true"
    for r in results:
        if len(r.attempts) > 1:
            props[f"{r.test}.attempts"] = str(len(r.attempts))
        if r.flaky:
            props[f"{r.test}.flaky"] = "true"
        for i, a in enumerate(r.attempts, 1):
            prefix = r.test if i == len(r.attempts) else f"{r.test}.attempt{i}"
            for k, v in a.properties.items():
                props[f"{prefix}.{k}"] = v
    return {xml_safe(k): xml_safe(v) for k, v in props.items()}


def _first_limit(run: RunResult) -> int:
    """A per-test console budget that should keep the file within FILE_BUDGET.

    Markup, cases and metrics cannot be cut, so their estimated size comes off
    the budget first; the rest is shared by each test's system-out and its
    earlier attempts' (each a quarter of the size).
    """
    fixed = 0
    shares = 0.0
    for r in run.results:
        fixed += _FIXED_PER_TEST + sum(_FIXED_PER_CASE for a in r.attempts[-1:] for _ in a.cases)
        shares += 1 + sum(1 for a in r.attempts[:-1] if not a.status.ok) / 4
    per_test = (FILE_BUDGET - fixed) / shares if shares else SYSTEM_OUT_LIMIT
    return int(max(SYSTEM_OUT_MIN, min(SYSTEM_OUT_LIMIT, per_test)))


def junit_string(run: RunResult, *, file_attributes: bool | None = None) -> str:
    """The JUnit document for `run`, valid under junit-10.xsd and within FILE_BUDGET bytes.

    Console text is what gets cut to stay within the budget: if the estimate
    was short, the document is rendered again with half the console text, down
    to SYSTEM_OUT_MIN per test. Results themselves are never dropped, so a run
    with an extreme number of cases can still exceed the budget.
    """
    if file_attributes is None:
        file_attributes = file_attributes_wanted()
    limit = _first_limit(run)
    while True:
        text = _render(run, limit, file_attributes)
        if limit <= SYSTEM_OUT_MIN or len(text.encode("utf-8")) <= FILE_BUDGET:
            return text
        limit = max(SYSTEM_OUT_MIN, limit // 2)


def _render(run: RunResult, limit: int, file_attributes: bool = False) -> str:
    """The document with `limit` bytes of console text per test; the rest scales with it."""
    rerun_limit = min(RERUN_OUT_LIMIT, limit // 4)
    details_limit = min(DETAILS_LIMIT, limit // 2)
    case_details_limit = min(CASE_DETAILS_LIMIT, limit // 4)
    by_env: dict[str, list[TestResult]] = {}
    for r in run.results:
        by_env.setdefault(r.environment, []).append(r)

    suites: list[junit_xml.TestSuite] = []
    # Per testcase, in document order: its time and the elements junit-xml cannot make.
    patches: list[tuple[float, list[ET.Element], str]] = []
    suite_times: list[float] = []
    names = _Names()
    for env, results in by_env.items():
        cases: list[junit_xml.TestCase] = []
        for r in results:
            final = r.final if r.attempts else None
            classname = xml_safe(f"{r.environment}.{r.suite}")
            tc = junit_xml.TestCase(
                name=names.unique(classname, xml_safe(r.test)),
                classname=classname,
                elapsed_sec=_seconds(final.duration_s) if final else 0.0,
                stdout=_attempt_text(run, r, len(r.attempts), final, limit),
            )
            _add_outcome(
                tc,
                r.status,
                final.message if final else "no attempt ran",
                final.details if final else "",
                details_limit,
            )
            # Earlier failed attempts: flaky* under a final pass, rerun* under a final
            # failure. A final skip has no Surefire form for them; summary.json keeps them.
            extra = [
                _rerun_element(run, r, i, a, r.status == Status.PASS, rerun_limit)
                for i, a in enumerate(r.attempts[:-1], 1)
                if not a.status.ok and r.status != Status.SKIP
            ]
            source = xml_safe(source_file(r)) if file_attributes else ""
            cases.append(tc)
            patches.append((tc.elapsed_sec or 0.0, extra, source))
            for c in final.cases if final else []:
                ctc = _case_testcase(r, c, names, case_details_limit)
                cases.append(ctc)
                patches.append((ctc.elapsed_sec or 0.0, [], source))
        suites.append(
            junit_xml.TestSuite(
                name=xml_safe(env),
                test_cases=cases,
                timestamp=rfc3339(min(r.start_time for r in results)),
                properties=_suite_properties(run, results),
            )
        )
        # Cases run inside their test, so only tests count towards the suite's time.
        suite_times.append(sum(_seconds(r.final.duration_s) for r in results if r.attempts))

    root = ET.fromstring(junit_xml.to_xml_report_string(suites, prettyprint=False))
    root.attrib.pop("disabled", None)
    for key in ("tests", "failures", "errors"):
        root.set(key, root.get(key, "0"))
    root.set("time", _time(run.duration_s if run.duration_s > 0 else sum(suite_times)))
    testcases = iter(patches)
    for suite_el, suite_time in zip(root.iter("testsuite"), suite_times, strict=True):
        suite_el.attrib.pop("disabled", None)
        suite_el.set("time", _time(suite_time))
        for tc_el in suite_el.iter("testcase"):
            elapsed, extra, source = next(testcases)
            tc_el.set("time", _time(elapsed))
            if source:
                tc_el.set("file", source)
            # After failure/error/skipped, before system-out, as Surefire writes them.
            at = next(
                (i for i, child in enumerate(tc_el) if child.tag in ("system-out", "system-err")),
                len(tc_el),
            )
            tc_el[at:at] = extra
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(run: RunResult, path: Path) -> None:
    """Write junit.xml atomically (a killed job leaves the old file or the new one, never half)."""
    atomic_write(Path(path), junit_string(run).encode("utf-8"))
