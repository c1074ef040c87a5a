"""run-test-suite output: the Test Runner Framework ("FTF"), Fuchsia's component tests.

What Fuchsia's testparser makes of it (tools/testing/testparser/trftest.go):

    Running test 'fuchsia-pkg://fuchsia.com/f2fs-fs-tests#meta/f2fs-unittest.cm'
    [RUNNING]	BCacheTest.Trim
    [PASSED]	BCacheTest.Trim
    [stderr - NodeManagerTest.TruncateExceptionCase]
    Error reading test result: ...
    [FAILED]	NodeManagerTest.TruncateExceptionCase
    [TIMED_OUT]	virtualization::virtualization_netdevice::remove_network
    [01447.782299][expectation-comparer] INFO: ChrootTest.X failure is expected, so ...
    ... completed with result: FAILED

- every `[RESULT]<TAB>name` line is a case, named in full (no suite), the
  format "FTF": PASSED passes; FAILED, INCONCLUSIVE and ERROR fail;
  TIMED_OUT aborts; SKIPPED skips. A later result for the same name replaces
  the earlier one.
- a failing case's message is the first three lines after the first
  `[stderr - name]` header for it (run-test-suite repeats the header before
  each stderr line; repeated headers do not restart the count).
- an expectation-comparer line `INFO: <name> <expectation> is expected`
  becomes the case's tag `expectation` (success, failure, skip, ...).
- a `[RUNNING]<TAB>legacy_test` line means a v1 suite whose output run-test-suite
  does not structure: no cases at all.

Kernel log lines interleaved with a case's stderr are not part of it.
"""

from __future__ import annotations

import re

from harness.parsers.common import Line, console_lines, same_origin
from harness.results import Case, Status

FORMAT = "FTF"

PREAMBLE = re.compile(r"^Running test 'fuchsia-pkg:\/\/.*$")
_CASE = re.compile(r"\[(PASSED|FAILED|INCONCLUSIVE|TIMED_OUT|ERROR|SKIPPED)\]\t(.*)$")
_STDERR = re.compile(r"^\[stderr - (?P<name>.*?)\]$")
_LEGACY = re.compile(r"\[RUNNING\]\tlegacy_test")
_EXPECTATION = re.compile(r"(.*)INFO: (?P<name>.*?) (?P<expectation>.*?) is expected(.*)$")
_STATUS = {
    "PASSED": Status.PASS,
    "FAILED": Status.FAIL,
    "INCONCLUSIVE": Status.FAIL,
    "TIMED_OUT": Status.ABORT,
    "ERROR": Status.FAIL,
    "SKIPPED": Status.SKIP,
}
STDERR_LINES = 3  # trftest.go linesToCapture


def parse(text: str) -> list[Case]:
    cases: dict[str, Case] = {}
    errors: dict[str, list[str]] = {}
    expectations: dict[str, str] = {}
    current = ""
    header: Line | None = None
    capturing = False
    captured = 0
    for line in console_lines(text):
        s = line.text
        if _LEGACY.search(s):
            return []
        m = _CASE.search(s)
        if m:
            name = m[2]
            cases[name] = Case(name=name, status=_STATUS[m[1]], format=FORMAT)
            current = ""
            continue
        m = _EXPECTATION.match(s)
        if m:
            expectations[m["name"]] = m["expectation"]
            continue
        m = _STDERR.match(s)
        if m:
            current, header = m["name"], line
            if current not in errors:
                errors[current] = []
                capturing, captured = True, 0
            continue
        if capturing and current and same_origin(line, header):
            if captured < STDERR_LINES:
                errors[current].append(s)
                captured += 1
            else:
                capturing, current = False, ""
    for name, case in cases.items():
        if name in errors and case.status in (Status.FAIL, Status.ABORT):
            case.message = "\n".join(errors[name])
        if name in expectations:
            case.tags = {"expectation": expectations[name]}
    return list(cases.values())
