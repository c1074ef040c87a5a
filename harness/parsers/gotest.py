"""Go's `go test -v` output, as Fuchsia's testparser reads it.

From tools/testing/testparser/gotest.go:

    === RUN   TestAdd
    === RUN   TestAdd/add_foo
    --- PASS: TestAdd (0.00s)
        --- PASS: TestAdd/add_foo (0.00s)
    panic: test timed out after 1s

Each `--- PASS|FAIL|SKIP: NAME (DURATION)` line (at any indentation) is a
case: a subtest `Parent/child` has the suite Parent and the case child, a
top-level test no suite; the duration is Go's duration syntax. A `panic: test
timed out after D` fails the test last started by `=== RUN` (its top-level
name), with D as its duration. The format is "Go".
"""

from __future__ import annotations

import re

from harness.parsers.common import console_lines
from harness.results import Case, Status

FORMAT = "Go"

PREAMBLE = re.compile(r"^=== RUN\s+(.[^/]*)(?:/?)(.*?)$")
_CASE = re.compile(r"^\s*--- (\w*?): (.[^/]*)(?:/?)(.*?) \((.*?)\)$")
_PANIC = re.compile(r"^panic: test timed out after (\S+)$")
_STATUS = {"PASS": Status.PASS, "FAIL": Status.FAIL, "SKIP": Status.SKIP}
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration(text: str) -> float:
    """Seconds in Go's duration syntax (`0.01s`, `1m30s`, `250ms`); 0 if it is not one.

    Go's time.ParseDuration, which testparser uses and whose errors it ignores.
    """
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos, ns = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            return 0.0
        ns += float(m[1]) * _UNIT_NS[m[2]]
        pos = m.end()
    return sign * ns / 1e9 if body else 0.0


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    running = ""
    for line in console_lines(text):
        s = line.text
        if m := PREAMBLE.match(s):
            running = m[1]
            continue
        if m := _PANIC.match(s):
            cases.append(Case(name=running, status=Status.FAIL, duration_s=go_duration(m[1]),
                              format=FORMAT))
        if m := _CASE.match(s):
            status = _STATUS.get(m[1])
            if status is None:
                continue
            suite, case = (m[2], m[3]) if m[3] else ("", m[2])
            cases.append(Case(name=case, suite=suite, status=status,
                              duration_s=go_duration(m[4]), format=FORMAT))
    return cases
