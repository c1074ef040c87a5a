"""googletest / zxtest output (Fuchsia's core-tests and most C++ tests).

zxtest prints the googletest format with two quirks: two spaces before a
SKIPPED case's duration, and single-line `file:line: Failure: ...` messages.
The lines a failing case prints between its RUN and FAILED lines are its
message. The summary at the end (`[  FAILED  ] Suite.Case` without a
duration) repeats results and is not counted again. A case whose RUN line has
no result line crashed or hung the binary: it fails, as in kunit.py.
"""

from __future__ import annotations

import re

from harness.parsers.common import console_lines, cut_off_message, message
from harness.results import Case, Status

FORMAT = "GoogleTest"

_RUN = re.compile(r"^\[ RUN      \] (?P<name>\S+)")
_END = re.compile(
    r"^\[(?P<word>       OK |  FAILED  |  SKIPPED )\] (?P<name>[^\s,]+)"
    r"(?:, where .*?)?(?: +\((?P<ms>\d+) ms\))?\s*$"
)
_STATUS = {"       OK ": Status.PASS, "  FAILED  ": Status.FAIL, "  SKIPPED ": Status.SKIP}


def _split(full: str) -> tuple[str, str]:
    """`Suite.Case` -> (suite, case); parameterised names keep their `/N` parts."""
    suite, dot, case = full.partition(".")
    return (suite, case) if dot else ("", full)


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    running: str | None = None
    output: list[str] = []

    def close(name: str, status: Status, ms: str | None, detail: str) -> None:
        suite, case = _split(name)
        cases.append(Case(name=case, suite=suite, status=status,
                          duration_s=int(ms) / 1000 if ms else 0.0,
                          message=detail, format=FORMAT))

    for line in console_lines(text):
        run = _RUN.match(line.text)
        if run:
            if running is not None:
                close(running, Status.FAIL, None, cut_off_message(output))
            running, output = run.group("name"), []
            continue
        end = _END.match(line.text)
        if end and running is not None and end.group("name") == running:
            status = _STATUS[end.group("word")]
            detail = message(output) if status != Status.PASS else ""
            close(running, status, end.group("ms"), detail)
            running, output = None, []
            continue
        if running is not None:
            output.append(line.text)
    if running is not None:
        close(running, Status.FAIL, None, cut_off_message(output))
    return cases
