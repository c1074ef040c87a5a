"""Guest test output -> cases, one module per format.

Every parser is `parse(text) -> list[Case]` over console text as it arrived
(kernel log prefixes, `\\r\\r\\n`, interleaved noise and all), so the same
function serves the live run and `harness parse` on a saved log.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping

from harness.parsers import gtest, linux_module, runtests, tap, test_bpf, zircon_ut
from harness.parsers.common import console_lines
from harness.results import Case

Parser = Callable[[str], list[Case]]

FORMATS: Mapping[str, Parser] = types.MappingProxyType({
    "gtest": gtest.parse,
    "zxtest": gtest.parse,
    "ut": zircon_ut.parse,
    "runtests": runtests.parse,
    "ktap": tap.parse_ktap,
    "tap": tap.parse_tap,
    "test_bpf": test_bpf.parse,
    "linux-module": linux_module.parse,
})

# Most specific first: runtests output contains gtest output, module logs contain test_bpf's.
_SNIFF: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("runtests", re.compile(r"^(?:RUNNING TEST: |.*\[runtests\]\[(?:PASSED|FAILED)\] )")),
    ("gtest", re.compile(r"^\[ RUN      \] \S")),
    ("ut", re.compile(r"^\S+ : Running \d+ tests?\.\.\.$|^SUMMARY: Ran \d+ test cases?: ")),
    ("linux-module", re.compile(r"^harness-module: \S+ exit=-?\d+$")),
    ("test_bpf", re.compile(r"^test_bpf: (?:#\d+ |(?:test_\w+: )?Summary: )")),
    ("ktap", re.compile(r"^\s*KTAP version \d+$|^\s*# Subtest: ")),
    ("tap", re.compile(r"^\s*TAP version \d+$")),
    ("linux-module", re.compile(
        r"^test_user_copy: |^(?:insmod|modprobe): (?:ERROR: )?(?:can't|could not) insert")),
)


def detect(text: str) -> str | None:
    """The format `text` is in, from its distinctive lines; None when nothing matches."""
    lines = [ln.text for ln in console_lines(text)]
    for name, pattern in _SNIFF:
        if any(pattern.search(ln) for ln in lines):
            return name
    return None


def parse(text: str, fmt: str | None = None) -> tuple[str | None, list[Case]]:
    """(format, cases): `fmt` if given (a KeyError names an unknown one), else detected."""
    name = fmt if fmt is not None else detect(text)
    if name is None:
        return None, []
    return name, FORMATS[name](text)


__all__ = ["FORMATS", "Parser", "detect", "parse"]
