"""The Vulkan conformance test suite (dEQP), as Fuchsia's testparser reads it.

From tools/testing/testparser/vulkanctstest.go: after `dEQP Core ... starting..`,
each `Test case 'dEQP-VK.a.b.c'..` opens a case (suite: the name up to its
last dot) and the next result line closes it: Pass, QualityWarning and
CompatibilityWarning pass; Fail, Pending, ResourceError, InternalError and
Crash fail; NotSupported skips; Timeout aborts. A case left open at the end
(the binary died in it) fails. The format is "VulkanCtsTest".
"""

from __future__ import annotations

import re

from harness.parsers.common import console_lines
from harness.results import Case, Status

FORMAT = "VulkanCtsTest"

PREAMBLE = re.compile(r"^dEQP Core .* starting\.\.$")
_START = re.compile(r"^Test case '(.*)'\.\.$")
_RESULT = re.compile(
    r"^(Pass|Fail|QualityWarning|CompatibilityWarning|Pending|NotSupported|ResourceError"
    r"|InternalError|Crash|Timeout) \(.*\)$")
_STATUS = {
    "Pass": Status.PASS, "QualityWarning": Status.PASS, "CompatibilityWarning": Status.PASS,
    "Fail": Status.FAIL, "Pending": Status.FAIL, "ResourceError": Status.FAIL,
    "InternalError": Status.FAIL, "Crash": Status.FAIL,
    "NotSupported": Status.SKIP, "Timeout": Status.ABORT,
}


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    display = suite = case = ""
    for line in console_lines(text):
        if m := _START.match(line.text):
            display = m[1]
            suite, _, case = display.rpartition(".")
            continue
        if m := _RESULT.match(line.text):
            cases.append(Case(name=case, suite=suite, status=_STATUS[m[1]], format=FORMAT))
            display = ""
    if display:
        cases.append(Case(name=case, suite=suite, status=Status.FAIL, format=FORMAT))
    return cases
