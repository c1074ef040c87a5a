"""Guest test output -> cases, one module per format.

Every parser is `parse(text) -> list[Case]` over console text as it arrived
(kernel log prefixes, `\\r\\r\\n`, interleaved noise and all), so the same
function serves the live run and `harness parse` on a saved log.

The formats Fuchsia's testparser reads (tools/testing/testparser) give the
cases testparser gives: GoogleTest/zxtest, FTF (run-test-suite), Zircon
utest, Rust, Go and the Vulkan CTS. The rest are the harness's own: runtests
(one case per binary), the kernel's `ut`, KTAP/TAP and Linux's test modules.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping

from harness.fuchsia.tefmocheck import SYNTHETIC_SUITE
from harness.parsers import (
    ftf,
    gotest,
    gtest,
    linux_module,
    runtests,
    rust,
    tap,
    test_bpf,
    vulkan_cts,
    zircon_ut,
    zircon_utest,
)
from harness.parsers.common import console_lines
from harness.results import Case

Parser = Callable[[str], list[Case]]

FORMATS: Mapping[str, Parser] = types.MappingProxyType({
    "gtest": gtest.parse,
    "zxtest": gtest.parse,
    "ftf": ftf.parse,
    "zircon-utest": zircon_utest.parse,
    "rust": rust.parse,
    "go": gotest.parse,
    "vulkan-cts": vulkan_cts.parse,
    "ut": zircon_ut.parse,
    "runtests": runtests.parse,
    "ktap": tap.parse_ktap,
    "tap": tap.parse_tap,
    "test_bpf": test_bpf.parse,
    "linux-module": linux_module.parse,
})

# runtests wraps other programs' output (gtest among them): its results are per binary.
_CONTAINERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("runtests", re.compile(r"^(?:RUNNING TEST: |.*\[runtests\]\[(?:PASSED|FAILED)\] )")),
)
# testparser's preambles, in the order its Parse tries them on each line (the formats a
# serial run can print; Go and Rust from the versions of testparser that still read them).
_TESTPARSER: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("vulkan-cts", vulkan_cts.PREAMBLE),
    ("ftf", ftf.PREAMBLE),
    ("gtest", gtest.PREAMBLE),
    ("go", gotest.PREAMBLE),
    ("rust", rust.PREAMBLE),
    ("zircon-utest", zircon_utest.PREAMBLE),
)
# The harness's own, most specific first: module logs contain test_bpf's.
_SNIFF: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gtest", re.compile(r"^\[ RUN      \] \S")),  # gtest output without its preamble
    ("ut", re.compile(r"^\S+ : Running \d+ tests?\.\.\.$|^SUMMARY: Ran \d+ test cases?: ")),
    ("linux-module", re.compile(r"^harness-module: \S+ exit=-?\d+$")),
    ("test_bpf", re.compile(r"^test_bpf: (?:#\d+ |(?:test_\w+: )?Summary: )")),
    ("ktap", re.compile(r"^\s*KTAP version \d+$|^\s*# Subtest: ")),
    ("tap", re.compile(r"^\s*TAP version \d+$")),
    ("linux-module", re.compile(
        r"^test_user_copy: |^(?:insmod|modprobe): (?:ERROR: )?(?:can't|could not) insert")),
)


def detect(text: str) -> str | None:
    """The format `text` is in, from its distinctive lines; None when nothing matches.

    runtests first (it wraps other formats); then testparser's rule: the
    first line that matches one of its preambles names the format; then the
    harness's own formats.
    """
    lines = [ln.text for ln in console_lines(text)]
    for name, pattern in _CONTAINERS:
        if any(pattern.search(ln) for ln in lines):
            return name
    for line in lines:
        for name, pattern in _TESTPARSER:
            if pattern.match(line):
                return name
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


_JOINERS = {rust.FORMAT: "::", gotest.FORMAT: "/"}


def display_name(case: Case) -> str:
    """A case's full name as Fuchsia's testparser writes it (its DisplayName).

    Suite and case joined by a dot, by `::` for Rust and by `/` for Go; a case
    without a suite (FTF) is its name alone; tefmocheck's cases read
    `tefmocheck: <check>`.
    """
    if case.suite == SYNTHETIC_SUITE:
        return f"{SYNTHETIC_SUITE}: {case.name}"
    if not case.suite:
        return case.name
    return f"{case.suite}{_JOINERS.get(case.format, '.')}{case.name}"


__all__ = ["FORMATS", "Parser", "detect", "display_name", "parse"]
