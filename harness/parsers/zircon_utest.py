"""Zircon's user-space unittest library: `CASE ... [STARTED]` blocks.

What Fuchsia's testparser makes of it (tools/testing/testparser/zircon_utest.go):

    CASE minfs_truncate_tests                               [STARTED]
        TestTruncateSmall                                   [RUNNING] [PASSED] (1 ms)
        (TestTruncateLarge<1 << 20, 500>)                   [RUNNING] [FAILED] (10973 ms)
        (TestTruncateLarge<1 << 25, 500>)                   [IGNORED]
    CASE minfs_truncate_tests                               [PASSED]

Each test line is a case of the suite its CASE line names, the name as
printed (templates and all), the duration its milliseconds, the format
"Zircon utest"; [IGNORED] is a skip. (The kernel's own `ut` command prints a
different format: parsers.zircon_ut.)
"""

from __future__ import annotations

import re

from harness.parsers.common import console_lines
from harness.results import Case, Status

FORMAT = "Zircon utest"

PREAMBLE = re.compile(r"^CASE\s*(.*?)\s*\[STARTED\]$")
_PASS = re.compile(r"^    (.*?)\s{1,51}\[RUNNING\] \[PASSED\] \((\d+) ms\)$")
_FAIL = re.compile(r"^    (.*?)\s{1,51}\[RUNNING\] \[FAILED\] \((\d+) ms\)$")
_SKIP = re.compile(r"^    (.*?)\s{1,51}\[IGNORED\]$")


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    suite = ""
    for line in console_lines(text):
        s = line.text
        if m := PREAMBLE.match(s):
            suite = m[1]
        elif m := _PASS.match(s):
            cases.append(Case(name=m[1], suite=suite, status=Status.PASS,
                              duration_s=int(m[2]) / 1000, format=FORMAT))
        elif m := _FAIL.match(s):
            cases.append(Case(name=m[1], suite=suite, status=Status.FAIL,
                              duration_s=int(m[2]) / 1000, format=FORMAT))
        elif m := _SKIP.match(s):
            cases.append(Case(name=m[1], suite=suite, status=Status.SKIP, format=FORMAT))
    return cases
