"""Rust's libtest output (`cargo test`-style), as Fuchsia's testparser reads it.

From tools/testing/testparser/rusttest.go:

    running 3 tests
    test tests::ignored_test ... ignored
    test tests::test_add ... FAILED
    ---- tests::test_add stderr ----
    thread 'main' panicked at 'assertion failed: ...
    stack backtrace:
    ...
    test result: FAILED. 1 passed; 2 failed; 1 ignored; ...

Each `test NAME ... RESULT` line is a case: the suite is what comes before
the first `::` (none without one), the case the rest; ok passes, FAILED fails,
ignored skips (libtest's other words, such as a benchmark's, make no case). A
failing case's message is its `---- NAME stderr ----` section, up to
`stack backtrace:` or `failures:` (the backtrace would defeat grouping
failures by message). Lines run-test-suite adds for a v1 suite
(`[stdout - legacy_test]`) are skipped, and so are kernel log lines.
"""

from __future__ import annotations

import re

from harness.parsers.common import Line, console_lines, same_origin
from harness.results import Case, Status

FORMAT = "Rust"

PREAMBLE = re.compile(r"^running \d* tests?$")
_CASE = re.compile(r"^test (?:(?P<suite>.*?)::)?(?P<case>.*?) \.\.\. (?P<status>\w*)$")
_STDERR_START = re.compile(r"^-{4} (?P<name>.*?) stderr -{4}$")
_STDERR_END = re.compile(r"^(stack backtrace|failures):$")
_STATUS = {"ok": Status.PASS, "FAILED": Status.FAIL, "ignored": Status.SKIP}


def parse(text: str) -> list[Case]:
    cases: dict[str, Case] = {}
    errors: dict[str, list[str]] = {}
    current = ""
    header: Line | None = None
    for line in console_lines(text):
        s = line.text
        if s.startswith("[stdout - legacy_test]"):
            continue
        if m := _CASE.match(s):
            if m["status"] in _STATUS:
                suite = m["suite"] or ""
                display = f"{suite}::{m['case']}" if suite else m["case"]
                cases[display] = Case(name=m["case"], suite=suite, status=_STATUS[m["status"]],
                                      format=FORMAT)
            continue
        if m := _STDERR_START.match(s):
            current, header = m["name"], line
            errors[current] = []
            continue
        if _STDERR_END.match(s):
            current = ""
            continue
        if current and same_origin(line, header):
            errors[current].append(s)
    for display, case in cases.items():
        if case.status == Status.FAIL and display in errors:
            case.message = "\n".join(errors[display])
    return list(cases.values())
