"""JUnit XML for CI (Jenkins, GitLab) and people, valid under junit-10.xsd.

junit-xml builds each test's elements; three things it cannot do are patched
on the element tree afterwards: Surefire's flakyFailure/rerunFailure elements
for retried tests, times that junit-10.xsd accepts (it allows at most three
decimals on suites, junit-xml writes Python's float repr), and leaving out the
`disabled` attribute the schema rejects. All guest text passes through
`xml_safe` first, because junit-xml either raises on an ESC or writes a
character reference XML 1.0 forbids, and one such byte makes the whole file
unreadable to every consumer.

The document is assembled from per-test fragments (JunitRenderer), which a run
rewriting junit.xml after every finished test keeps between writes, so each
test is rendered once rather than on every write (harness.recorder).

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

import dataclasses
import math
import os
import re
import time
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


def _per_test_properties(r: TestResult) -> list[tuple[str, str]]:
    """The suite properties one test contributes (junit-10.xsd has none on a testcase)."""
    props: list[tuple[str, str]] = []
    if len(r.attempts) > 1:
        props.append((f"{r.test}.attempts", str(len(r.attempts))))
    if r.flaky:
        props.append((f"{r.test}.flaky", "true"))
    for i, a in enumerate(r.attempts, 1):
        prefix = r.test if i == len(r.attempts) else f"{r.test}.attempt{i}"
        props.extend((f"{prefix}.{k}", v) for k, v in a.properties.items())
    return props


def _property_xml(name: str, value: str) -> str:
    element = ET.Element("property", {"name": xml_safe(name), "value": xml_safe(value)})
    return "      " + ET.tostring(element, encoding="unicode")


def _limits() -> list[int]:
    """The console budgets a test may get: SYSTEM_OUT_LIMIT down to SYSTEM_OUT_MIN in
    quarter-octave steps. Few distinct values, so a rendered test stays valid while the
    estimate drifts as results come in (see JunitRenderer)."""
    out: list[int] = []
    k = 0
    while True:
        value = int(SYSTEM_OUT_LIMIT * 2 ** (-k / 4))
        if value <= SYSTEM_OUT_MIN:
            return [*out, SYSTEM_OUT_MIN]
        out.append(value)
        k += 1


_LIMITS = _limits()


def _first_limit(run: RunResult) -> int:
    """A per-test console budget that should keep the file within FILE_BUDGET.

    Shared by each test's system-out and its earlier failed attempts' (each a quarter
    of the size), after an estimate of the markup that cannot be cut; rounded down to
    one of `_LIMITS`. Cases are not counted here, so the budget does not move while a
    run's cases come in (which would mean rendering every test again); a document they
    make too big is rendered again with less console text (JunitRenderer.document).
    """
    fixed = _FIXED_PER_TEST * len(run.results)
    shares = sum(1 + sum(1 for a in r.attempts[:-1] if not a.status.ok) / 4 for r in run.results)
    per_test = (FILE_BUDGET - fixed) / shares if shares else SYSTEM_OUT_LIMIT
    return next((v for v in _LIMITS if v <= per_test), SYSTEM_OUT_MIN)


@dataclasses.dataclass(frozen=True)
class _Fragment:
    """One test's part of the document: its <testcase> elements, its suite properties,
    and what it adds to its suite's counts."""

    xml: str
    pairs: frozenset[tuple[str, str]]  # (classname, name) of every testcase in it
    properties: tuple[tuple[str, str], ...]  # (name, rendered <property>) per suite property
    tests: int
    failures: int
    errors: int
    skipped: int
    time: float


def _render_test(run: RunResult, r: TestResult, limit: int, names: _Names,
                 file_attributes: bool = False) -> _Fragment:
    """The fragment of one test with `limit` bytes of console text; the rest scales with it.

    junit-xml builds the elements; its document-wide pass that drops characters XML
    forbids is not needed (and on a large run is most of the time), because every
    string given to it went through `xml_safe` first.
    """
    rerun_limit = min(RERUN_OUT_LIMIT, limit // 4)
    details_limit = min(DETAILS_LIMIT, limit // 2)
    case_details_limit = min(CASE_DETAILS_LIMIT, limit // 4)
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
    cases = [tc]
    patches: list[tuple[float, list[ET.Element]]] = [(tc.elapsed_sec or 0.0, extra)]
    for c in final.cases if final else []:
        ctc = _case_testcase(r, c, names, case_details_limit)
        cases.append(ctc)
        patches.append((ctc.elapsed_sec or 0.0, []))
    suite_el = junit_xml.TestSuite("", test_cases=cases).build_xml_doc()
    testcases = list(suite_el.iter("testcase"))
    source = xml_safe(source_file(r)) if file_attributes else ""
    for tc_el, (elapsed, more) in zip(testcases, patches, strict=True):
        tc_el.set("time", _time(elapsed))
        if source:
            tc_el.set("file", source)
        # After failure/error/skipped, before system-out, as Surefire writes them.
        at = next(
            (i for i, child in enumerate(tc_el) if child.tag in ("system-out", "system-err")),
            len(tc_el),
        )
        tc_el[at:at] = more
    ET.indent(suite_el, space="  ", level=1)
    parts = []
    for tc_el in testcases:
        tc_el.tail = None
        parts.append("    " + ET.tostring(tc_el, encoding="unicode"))
    return _Fragment(
        xml="\n".join(parts),
        pairs=frozenset((c.classname or "", c.name) for c in cases),
        properties=tuple((k, _property_xml(k, v)) for k, v in _per_test_properties(r)),
        tests=len(cases),
        failures=sum(1 for c in cases if c.is_failure()),
        errors=sum(1 for c in cases if c.is_error()),
        skipped=sum(1 for c in cases if c.is_skipped()),
        # Cases run inside their test, so only tests count towards the suite's time.
        time=_seconds(final.duration_s) if final else 0.0,
    )


def _fingerprint(run: RunResult, r: TestResult, limit: int) -> tuple[object, ...]:
    """What a cached fragment depends on that may change while the run goes on."""
    last = r.attempts[-1] if r.attempts else None
    return (limit, str(run.out_dir), len(r.attempts), id(last), r.status, r.folder, r.repro,
            len(last.cases) if last else 0, r.accel, r.kernel)


class JunitRenderer:
    """Renders junit.xml from per-test fragments it keeps between calls.

    Re-rendering a whole 3,000-test document takes seconds; re-rendering it after
    every finished test (so that what the terminal reports is on disk first) would
    make a long run quadratic. A fragment is rendered again only when its test's
    record changed (or the per-test console budget moved to another of `_LIMITS`),
    so a call costs the new tests plus joining strings. A fragment is only reused
    for the very same TestResult object, which must not change in place in ways
    `_fingerprint` cannot see (the runner hands over records only once final).
    """

    def __init__(self, *, file_attributes: bool | None = None) -> None:
        # GitLab's `file` attribute on testcases, which junit-10.xsd does not allow: only
        # where it is read (file_attributes_wanted).
        self.file_attributes = (file_attributes_wanted() if file_attributes is None
                                else file_attributes)
        self._cache: dict[int, tuple[TestResult, tuple[object, ...], _Fragment]] = {}
        self._index = 0  # into _LIMITS; only ever grows, so the budget never oscillates
        self.render_s = 0.0  # time spent rendering tests (the rest is joining strings)

    def _fragment(self, run: RunResult, r: TestResult, limit: int) -> _Fragment:
        key = _fingerprint(run, r, limit)
        hit = self._cache.get(id(r))
        if hit is not None and hit[0] is r and hit[1] == key:
            return hit[2]
        t0 = time.perf_counter()
        fragment = _render_test(run, r, limit, _Names(), self.file_attributes)
        self.render_s += time.perf_counter() - t0
        self._cache[id(r)] = (r, key, fragment)
        return fragment

    def document(self, run: RunResult) -> str:
        """The JUnit document for `run`, valid under junit-10.xsd and within FILE_BUDGET bytes.

        Console text is what gets cut to stay within the budget: if the estimate
        was short, the document is rendered again with half the console text, down
        to SYSTEM_OUT_MIN per test. Results themselves are never dropped, so a run
        with an extreme number of cases can still exceed the budget.
        """
        live = {id(r) for r in run.results}
        for key in [k for k in self._cache if k not in live]:
            del self._cache[key]
        self._index = max(self._index, _LIMITS.index(_first_limit(run)))
        while True:
            text = self._assemble(run, _LIMITS[self._index])
            if self._index == len(_LIMITS) - 1 or len(text.encode("utf-8")) <= FILE_BUDGET:
                return text
            self._index = min(len(_LIMITS) - 1, self._index + 4)  # half the console text

    def _assemble(self, run: RunResult, limit: int) -> str:
        by_env: dict[str, list[TestResult]] = {}
        for r in run.results:
            by_env.setdefault(r.environment, []).append(r)
        seen: set[tuple[str, str]] = set()
        suites: list[str] = []
        totals = [0, 0, 0]
        suite_times: list[float] = []
        for env, results in by_env.items():
            fragments = []
            for r in results:
                fragment = self._fragment(run, r, limit)
                if not seen.isdisjoint(fragment.pairs):
                    # Two tests whose testcases share a (classname, name): GitLab would
                    # drop one, so this one is renamed ("name (2)"), uncached.
                    names = _Names()
                    names._seen.update(seen)
                    fragment = _render_test(run, r, limit, names, self.file_attributes)
                seen.update(fragment.pairs)
                fragments.append(fragment)
            counts = [sum(getattr(f, k) for f in fragments)
                      for k in ("tests", "failures", "errors", "skipped")]
            suite_time = sum(f.time for f in fragments)
            suite_times.append(suite_time)
            for i in range(3):
                totals[i] += counts[i]
            head = ET.Element("testsuite", {
                "errors": str(counts[2]),
                "failures": str(counts[1]),
                "name": xml_safe(env),
                "skipped": str(counts[3]),
                "tests": str(counts[0]),
                "time": _time(suite_time),
                "timestamp": rfc3339(min(r.start_time for r in results)),
            })
            head.text = "x"
            open_tag = ET.tostring(head, encoding="unicode").split(">x<", 1)[0] + ">"
            # By name, the later test's value winning, as in a dict of all of them.
            by_name = {k: _property_xml(k, v) for k, v in _suite_properties(run, results).items()}
            for f in fragments:
                by_name.update(f.properties)
            props = "".join(line + "\n" for line in by_name.values())
            body = "\n".join(f.xml for f in fragments)
            suites.append(f"  {open_tag}\n    <properties>\n{props}    </properties>\n"
                          f"{body}\n  </testsuite>\n")
        root = ET.Element("testsuites", {
            "errors": str(totals[2]),
            "failures": str(totals[1]),
            "tests": str(totals[0]),
            "time": _time(run.duration_s if run.duration_s > 0 else sum(suite_times)),
        })
        if not suites:
            root = ET.Element("testsuites", {"tests": "0", "failures": "0", "errors": "0",
                                             "time": root.get("time", "0.000")})
            return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                    + ET.tostring(root, encoding="unicode") + "\n")
        root.text = "x"
        open_root = ET.tostring(root, encoding="unicode").split(">x<", 1)[0] + ">"
        return ('<?xml version="1.0" encoding="UTF-8"?>\n' + open_root + "\n"
                + "".join(suites) + "</testsuites>\n")


def _suite_properties(run: RunResult, results: list[TestResult]) -> dict[str, str]:
    """The properties of one environment's suite, before the per-test ones."""
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
    return props


def junit_string(run: RunResult, *, file_attributes: bool | None = None) -> str:
    """The JUnit document for `run` (see JunitRenderer.document); `file_attributes` None:
    as `file_attributes_wanted` decides from the environment."""
    return JunitRenderer(file_attributes=file_attributes).document(run)


def write_junit(run: RunResult, path: Path) -> None:
    """Write junit.xml atomically (a killed job leaves the old file or the new one, never half)."""
    atomic_write(Path(path), junit_string(run).encode("utf-8"))
