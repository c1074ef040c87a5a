"""lib/test_bpf.c: the BPF interpreter and JIT self-test module, read from the kernel log.

Per test (Linux 6.1):

    test_bpf: #12 LD_PKTTYPE jited:1 71 39 PASS
    test_bpf: #50 check: missing ret PASS                  (expected to be rejected)
    test_bpf: #7 NAME jited:1 ret 0 != 1 (0x0 != 0x1)FAIL (1 times)
    test_bpf: #9 NAME FAIL to prog_create err=-22 len=4

then one summary per suite: `test_bpf: Summary: 1026 PASSED, 0 FAILED,
[1014/1014 JIT'ed]`, `test_bpf: test_tail_calls: Summary: ...`,
`test_bpf: test_skb_segment: Summary: ...`. Test numbers restart in each
suite, so a test belongs to the suite whose summary follows it. The numbers
after `jited:` are average nanoseconds per run, not the test's time; the
time between two kernel timestamps is, so durations come from those.

The result is printed with pr_cont: when another CPU logs in between, the
continuation lands on a line of its own, without the `test_bpf: ` prefix;
it is joined back to the open test. A test with no result crashed the
kernel or hung, and fails.
"""

from __future__ import annotations

import re

from harness.parsers.common import NO_RESULT, Line, console_lines
from harness.results import Case, Status

FORMAT = "Linux test module"
SUITES = {
    "": "test_bpf",
    "test_tail_calls": "test_bpf.tail_calls",
    "test_skb_segment": "test_bpf.skb_segment",
}
_ORDER = ("", "test_tail_calls", "test_skb_segment")

_TEST = re.compile(r"^test_bpf: #(?P<num>\d+) (?P<rest>.*)$")
_SUMMARY = re.compile(
    r"^test_bpf: (?:(?P<suite>test_\w+): )?Summary: (?P<passed>\d+) PASSED, (?P<failed>\d+) FAILED"
)
_WITH_JIT = re.compile(r"^(?P<name>.+?) jited:(?P<jited>\d+) ?(?P<result>.*)$")
_OUTCOME = re.compile(r"(?:UNEXPECTED_)?(?:PASS|FAIL)\b.*|SKIP\b.*")
_NAME_OUTCOME = re.compile(r"^(?P<name>.+) (?P<result>(?:UNEXPECTED_)?(?:PASS|FAIL)\b.*|SKIP\b.*)$")
_JITED = re.compile(r"^jited:\d+ ?")
_CONTINUATION = re.compile(r"^(?:jited:\d+ ?)?(?:[-\d]+ )*(?:ret |UNEXPECTED_|PASS|FAIL|SKIP)")


def _outcome(result: str) -> tuple[Status, str]:
    """Status and message from what follows the name (and `jited:N`)."""
    m = _OUTCOME.search(result)
    if m is None:
        return Status.FAIL, NO_RESULT
    word = m.group(0)
    if word.startswith("PASS"):
        return Status.PASS, ""
    if word.startswith("SKIP"):
        return Status.SKIP, word
    return Status.FAIL, re.sub(r"^(?:[-\d]+ )+", "", result).strip()


def _split(rest: str) -> tuple[str, str]:
    """(name, result) from `NAME [jited:N ...]RESULT`; result is "" while still open."""
    m = _WITH_JIT.match(rest)
    if m:
        return m["name"], m["result"]
    m = _NAME_OUTCOME.match(rest)
    if m:
        return m["name"], m["result"]
    return rest.strip(), ""


def parse(text: str) -> list[Case]:
    return parse_lines(console_lines(text))


def parse_lines(lines: list[Line]) -> list[Case]:
    cases: list[Case] = []
    numbers: list[int] = []  # each case's test number, in the same order
    unassigned: list[Case] = []  # results waiting for their suite's summary
    last_suite = -1  # index in _ORDER of the last summary seen
    open_name: str | None = None
    open_result = ""
    open_at: float | None = None
    open_number = 0

    def finish(end: float | None) -> None:
        nonlocal open_name
        if open_name is None:
            return
        status, detail = _outcome(open_result) if open_result else (Status.FAIL, NO_RESULT)
        seconds = end - open_at if end is not None and open_at is not None else 0.0
        unassigned.append(Case(name=open_name, status=status, duration_s=max(0.0, seconds),
                               message=detail, format=FORMAT))
        numbers.append(open_number)
        open_name = None

    def assign(suite_key: str) -> None:
        for case in unassigned:
            case.suite = SUITES[suite_key]
        cases.extend(unassigned)
        unassigned.clear()

    for line in lines:
        s = line.text
        m = _TEST.match(s)
        if m:
            finish(line.timestamp)
            name, result = _split(m["rest"])
            open_name, open_result, open_at = name, result, line.timestamp
            open_number = int(m["num"])
            continue
        m = _SUMMARY.match(s)
        if m:
            finish(line.timestamp)
            key = m["suite"] or ""
            assign(key if key in SUITES else "")
            last_suite = _ORDER.index(key) if key in _ORDER else last_suite
            continue
        if open_name is not None and not _OUTCOME.search(open_result) and _CONTINUATION.match(s):
            # The open test's line may have stopped after `jited:1 75 ` (its timing) or
            # after its name: what arrives on the continuation line finishes it.
            open_result = f"{open_result} {_JITED.sub('', s)}".strip()
            continue
    finish(None)
    if unassigned:
        # Cut off before a summary: the suite after the last one summarised was running.
        assign(_ORDER[min(last_suite + 1, len(_ORDER) - 1)])
    _disambiguate(cases, numbers)
    return cases


def _disambiguate(cases: list[Case], numbers: list[int]) -> None:
    """Name a case by its description, adding its number only where descriptions repeat.

    Test numbers shift whenever a test is added upstream, so a name without
    them keeps a test's history across kernels; a few descriptions are used
    twice in one suite, and report consumers drop duplicate names.
    """
    numbered: dict[tuple[str, str], set[int]] = {}
    for case, number in zip(cases, numbers, strict=True):
        numbered.setdefault((case.suite, case.name), set()).add(number)
    for case, number in zip(cases, numbers, strict=True):
        # The same name under the same number is the same test run again (module reloaded).
        if len(numbered[case.suite, case.name]) > 1:
            case.name = f"{case.name} (#{number})"
