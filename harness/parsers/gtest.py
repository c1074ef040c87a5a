"""googletest / zxtest output (Fuchsia's core-tests and most C++ tests).

Cases are what Fuchsia's testparser makes of this output
(tools/testing/testparser/googletest.go): every result line
`[       OK ] Suite.Case (N ms)` (also `  FAILED  `, `  SKIPPED `) is a case,
the suite everything before the first dot, the case everything after it up to
the ` (N ms)`, the duration N ms, the format "GoogleTest". Names come out
exactly as testparser gives them, so that the harness's records line up with
Fuchsia's: a parameterised failure keeps its `, where GetParam() = ...`, and
zxtest's SKIPPED line (two spaces before its duration, reporter.cc) leaves a
trailing space on the case name.

What the harness adds, where testparser has nothing to say:

- a failing or skipped case's message: the lines it printed between its RUN
  line and its result line, without kernel log lines from elsewhere
  (parsers.common.owned);
- a case whose RUN line has no result line crashed or hung the binary: it
  fails, as in kunit.py;
- a result line without a duration (`--gtest_print_time=0`) still closes the
  case it names.

The summary at the end (`[  FAILED  ] Suite.Case` without a duration)
repeats results and is not counted again.
"""

from __future__ import annotations

import re

from harness.parsers.common import Line, console_lines, cut_off_message, message, owned
from harness.results import Case, Status

FORMAT = "GoogleTest"

# testparser's googleTestPreamblePattern and googleTestCasePattern.
PREAMBLE = re.compile(
    r"^\[==========\] Running \d* tests? from \d* test (?:(?:suites?)|(?:cases?))\.$")
_RESULT = re.compile(r"^\[(       OK |  FAILED  |  SKIPPED )\] (.*?)\.(.*?) \((\d+) ms\)$")
_RUN = re.compile(r"^\[ RUN      \] (?P<name>\S+)")
_END = re.compile(
    r"^\[(?P<word>       OK |  FAILED  |  SKIPPED )\] (?P<name>[^\s,]+)(?:, where .*?)?\s*$"
)
_STATUS = {"       OK ": Status.PASS, "  FAILED  ": Status.FAIL, "  SKIPPED ": Status.SKIP}


def _split(full: str) -> tuple[str, str]:
    """`Suite.Case` -> (suite, case), at the first dot as testparser splits it."""
    suite, dot, case = full.partition(".")
    return (suite, case) if dot else ("", full)


def _closes(full: str, running: str) -> bool:
    """Whether a result line naming `full` is the result of the case that ran as `running`."""
    full = full.rstrip()
    return full == running or full.startswith(running + ",")


def parse(text: str) -> list[Case]:
    cases: list[Case] = []
    running: Line | None = None
    running_name = ""
    output: list[Line] = []

    def detail(status: Status) -> str:
        return message(owned(output, running)) if status != Status.PASS else ""

    for line in console_lines(text):
        run = _RUN.match(line.text)
        if run:
            if running is not None:
                suite, case = _split(running_name)
                cases.append(Case(name=case, suite=suite, status=Status.FAIL, format=FORMAT,
                                  message=cut_off_message(owned(output, running))))
            running, running_name, output = line, run["name"], []
            continue
        result = _RESULT.match(line.text)
        if result:
            status = _STATUS[result[1]]
            full = f"{result[2]}.{result[3]}"
            closing = running is not None and _closes(full, running_name)
            cases.append(Case(name=result[3], suite=result[2], status=status,
                              duration_s=int(result[4]) / 1000,
                              message=detail(status) if closing else "", format=FORMAT))
            if closing:
                running, output = None, []
            continue
        end = _END.match(line.text)
        if end and running is not None and end["name"] == running_name:
            status = _STATUS[end["word"]]
            suite, case = _split(running_name)
            cases.append(Case(name=case, suite=suite, status=status, message=detail(status),
                              format=FORMAT))
            running, output = None, []
            continue
        if running is not None:
            output.append(line)
    if running is not None:
        suite, case = _split(running_name)
        cases.append(Case(name=case, suite=suite, status=Status.FAIL, format=FORMAT,
                          message=cut_off_message(owned(output, running))))
    return cases
