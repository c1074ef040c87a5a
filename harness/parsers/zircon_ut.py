"""Zircon kernel unit tests: the kernel shell's `ut all` (or `k ut all` from user space).

zircon/kernel/lib/unittest prints, per group and per test:

    vm : Running 3 tests...
      alloc_test          : PASSED (1234 nSec)
      bad_test            :
            [FAILED] ... (what the test printed) ...
      bad_test            : FAILED (5678 nSec)
    vm : Not all tests passed (2/3) in 98765 nSec
    SUMMARY: Ran 12 test cases: 1 failed
    The following test cases failed:
    vm

The name is printed before the test runs and, for a failure, again with the
result, so the lines in between are the failure's message. A test that
prints while passing pushes its `PASSED (N nSec)` to a line of its own; the
name from the opening line still identifies it. A group named in the failed
list without a failing test (its thread could not be created) fails as a
whole, and a group cut off by a crash reports the test in flight.
"""

from __future__ import annotations

import re

from harness.parsers.common import (
    NO_RESULT,
    Line,
    console_lines,
    cut_off_message,
    message,
    owned,
)
from harness.results import Case, Status

# Not testparser's "Zircon utest" (the user-space library's CASE blocks, parsers.zircon_utest):
# the kernel's own unittest library, which testparser does not read.
FORMAT = "Zircon kernel unittest"

_GROUP = re.compile(r"^(?P<group>\S+) : Running (?P<count>\d+) tests?\.\.\.$")
_RESULT = re.compile(
    r"^(?:\s+(?P<name>\S+)\s+: )?(?P<status>PASSED|FAILED) \((?P<ns>-?\d+) nSec\)$"
)
_START = re.compile(r"^\s+(?P<name>\S+)\s+:(?: (?P<rest>.*))?$")
_GROUP_END = re.compile(
    r"^(?P<group>\S+) : (?:All|Not all) tests passed \((?P<passed>\d+)/(?P<count>\d+)\) "
    r"in -?\d+ nSec$"
)
_SUMMARY = re.compile(r"^SUMMARY: Ran \d+ test cases?: \d+ failed$")
_FAILED_LIST = "The following test cases failed:"
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    group: str | None = None
    expected = 0
    done = 0
    pending: str | None = None
    opener: Line | None = None
    output: list[Line] = []
    failed_groups: list[str] = []
    in_failed_list = False

    def add(name: str, status: Status, seconds: float, detail: str) -> None:
        cases.append(Case(name=name, suite=group or "", status=status, duration_s=seconds,
                          message=detail, format=FORMAT))

    def cut_off() -> None:
        """The group ended without its end line: report the test in flight (or the gap)."""
        if group is None:
            return
        if pending is not None:
            add(pending, Status.FAIL, 0.0, cut_off_message(owned(output, opener)))
        elif done < expected:
            add("(unfinished)", Status.FAIL, 0.0,
                f"{NO_RESULT}: {done} of {expected} tests reported")

    for line in console_lines(text):
        s = line.text
        if in_failed_list:
            if _GROUP_NAME.match(s.strip()):
                failed_groups.append(s.strip())
                continue
            in_failed_list = False
        m = _GROUP.match(s)
        if m:
            cut_off()
            group, expected, done, pending, output = m["group"], int(m["count"]), 0, None, []
            continue
        if group is None:
            if _SUMMARY.match(s):
                continue
            if s.strip() == _FAILED_LIST:
                in_failed_list = True
            continue
        m = _RESULT.match(s)
        if m:
            name = m["name"] or pending
            if name is not None:
                status = Status.PASS if m["status"] == "PASSED" else Status.FAIL
                detail = message(owned(output, opener)) if status == Status.FAIL else ""
                add(name, status, int(m["ns"]) / 1e9, detail)
                done += 1
            pending, output = None, []
            continue
        m = _GROUP_END.match(s)
        if m and m["group"] == group:
            if pending is not None:
                add(pending, Status.FAIL, 0.0, cut_off_message(owned(output, opener)))
            group, pending, output = None, None, []
            continue
        if pending is None:
            m = _START.match(s)
            if m:
                pending, opener = m["name"], line
                output = [Line(m["rest"], line.timestamp, line.origin)] if m["rest"] else []
                continue
        if pending is not None:
            output.append(Line(s.strip(), line.timestamp, line.origin))
    cut_off()

    failing = {c.suite for c in cases if c.status == Status.FAIL}
    for name in failed_groups:
        if name not in failing:
            cases.append(Case(name=name, suite=name, status=Status.FAIL,
                              message="the group failed without a failing test "
                                      "(it could not run)", format=FORMAT))
    return cases
