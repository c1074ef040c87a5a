"""Fuchsia's `runtests`: one result per test binary.

runtests-utils prints, per binary:

    ------------------------------------------------
    RUNNING TEST: /boot/test/core-tests

    ... the binary's own output ...
    [runtests][PASSED] /boot/test/core-tests (1.234 sec)

and at the end `SUMMARY: Ran N tests: M failed (S.mmm sec)`. Fuchsia's
testrunner keys on the signature followed by the name; the duration after it
is "just for humans", so it is optional here. A binary whose RUNNING TEST has
no signature crashed or hung runtests. The binaries' own nested `SUMMARY:`
lines are ignored: only signatures make results.
"""

from __future__ import annotations

import re

from harness.parsers.common import Line, console_lines, cut_off_message, message, owned
from harness.results import Case, Status

FORMAT = "runtests"
SUITE = "runtests"
SUCCESS_SIGNATURE = "[runtests][PASSED]"
FAILURE_SIGNATURE = "[runtests][FAILED]"

_START = re.compile(r"^RUNNING TEST: (?P<name>.+)$")
_RESULT = re.compile(
    r"\[runtests\]\[(?P<status>PASSED|FAILED)\] (?P<name>.+?)"
    r"(?: \((?P<sec>\d+)\.(?P<ms>\d{3}) sec\))?$"
)
# A failing binary's message: its last lines, where test frameworks put their verdict.
TAIL_LINES = 20


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    running: str | None = None
    opener: Line | None = None
    output: list[Line] = []
    for line in console_lines(text):
        m = _START.match(line.text)
        if m:
            if running is not None:
                cases.append(_case(running, Status.FAIL, 0.0,
                                   cut_off_message(owned(output, opener))))
            running, opener, output = m["name"].strip(), line, []
            continue
        m = _RESULT.search(line.text)
        if m:
            status = Status.PASS if m["status"] == "PASSED" else Status.FAIL
            seconds = int(m["sec"]) + int(m["ms"]) / 1000 if m["sec"] else 0.0
            detail = message(owned(output, opener)[-TAIL_LINES:]) if status == Status.FAIL else ""
            cases.append(_case(m["name"], status, seconds, detail))
            running, output = None, []
            continue
        if running is not None:
            output.append(line)
    if running is not None:
        cases.append(_case(running, Status.FAIL, 0.0, cut_off_message(owned(output, opener))))
    return cases


def _case(name: str, status: Status, seconds: float, detail: str) -> Case:
    return Case(name=name, suite=SUITE, status=status, duration_s=seconds,
                message=detail, format=FORMAT)
