"""TAP (kselftest) and KTAP (KUnit) results, nested subtests included.

KTAP nests a subtest by indenting its lines (4 spaces in KUnit, 2 in the
spec's examples) under an optional `KTAP version 1` / `# Subtest: NAME`
header and a `1..N` plan; the subtest's own result line follows at the outer
indentation. Every leaf test is a case, named by its result line, its suite
the dotted path of the subtests around it. Directives: `# SKIP` skips (an
`ok` or a `not ok` alike); `# TODO` marks a known failure, so a `not ok`
TODO is a skip, not a failure; kselftest's XFAIL/XPASS already say it with
`ok`/`not ok`. Other lines between two results are the second result's
diagnostics (KUnit prints EXPECTATION FAILED and the values there).

Truncated output fails loudly, as in kunit.py: a subtest that never got its
result line fails with "no result", and a plan that promised more results
than arrived adds a failing case that says how many are missing.
"""

from __future__ import annotations

import dataclasses
import re

from harness.parsers.common import NO_RESULT, Line, console_lines, message, same_origin
from harness.results import Case, Status

KTAP = "KTAP"
TAP = "TAP"

_VERSION = re.compile(r"^(?P<k>K?)TAP version \d+\s*$")
_SUBTEST = re.compile(r"^# Subtest: (?P<name>.+?)\s*$")
_PLAN = re.compile(r"^1\.\.(?P<n>\d+)(?:\s*#.*)?$")
_RESULT = re.compile(
    r"^(?P<not>not )?ok(?: (?P<num>\d+))?(?: -)?(?: (?P<name>[^#]*?))?\s*(?:#\s*(?P<comment>.*))?$"
)
_DIRECTIVES = ("SKIP", "TODO", "XFAIL", "XPASS")
MISSING = "(missing results)"


@dataclasses.dataclass
class _Frame:
    indent: int
    name: str = ""
    versioned: bool = False
    plan: int | None = None
    results: int = 0
    cases: list[Case] = dataclasses.field(default_factory=list)
    diagnostics: list[str] = dataclasses.field(default_factory=list)

    def missing(self, fmt: str) -> Case | None:
        """A failing case for results the plan promised but the output never gave."""
        missing = (self.plan or 0) - self.results
        if missing <= 0:
            return None
        return Case(name=MISSING, status=Status.FAIL, format=fmt,
                    message=f"{missing} of {self.plan} planned results missing: {NO_RESULT}")


def parse_ktap(text: str) -> list[Case]:
    return _Parser(KTAP).run(text)


def parse_tap(text: str) -> list[Case]:
    return _Parser(TAP).run(text)


def parse(text: str) -> list[Case]:
    """TAP or KTAP, named by the first version line (KTAP when there is none: KUnit's default)."""
    for line in console_lines(text):
        m = _VERSION.match(line.text.strip())
        if m:
            return _Parser(KTAP if m["k"] else TAP).run(text)
    return _Parser(KTAP).run(text)


def _outcome(failed: bool, comment: str) -> tuple[Status, str]:
    """Status and reason from `ok`/`not ok` and the `# ...` comment after the name."""
    word, _, rest = comment.strip().partition(" ")
    directive = word.upper()
    if directive not in _DIRECTIVES:
        return (Status.FAIL if failed else Status.PASS), comment.strip()
    if directive == "SKIP" or (directive == "TODO" and failed):
        return Status.SKIP, (rest.strip() if directive == "SKIP" else f"TODO {rest.strip()}")
    # XFAIL is reported as `ok` (an expected failure), XPASS as `not ok`: ok/not ok decides.
    return (Status.FAIL if failed else Status.PASS), rest.strip()


class _Parser:
    """A stack of open (sub)tests, one per indentation level."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.out: list[Case] = []
        self.stack: list[_Frame] = []
        # The first line of TAP structure: diagnostics come from where it came from (a
        # kernel log line amid a program's TAP output is not a diagnostic).
        self.first: Line | None = None

    def run(self, text: str) -> list[Case]:
        for line in console_lines(text):
            content = line.text.lstrip(" ")
            if content:
                self.line(len(line.text) - len(content), content, line)
        while len(self.stack) > 1:
            self.close(self.stack.pop(), Status.FAIL, "", NO_RESULT)
        if self.stack:
            self.finish_root(self.stack.pop())
        return self.out

    def line(self, indent: int, content: str, source: Line) -> None:
        version, subtest = _VERSION.match(content), _SUBTEST.match(content)
        plan, result = _PLAN.match(content), _RESULT.match(content)
        if self.first is None and (version or subtest or plan or result):
            self.first = source
        if version or subtest:
            frame = self.header_frame(indent, bool(version), subtest["name"] if subtest else "")
            frame.versioned = frame.versioned or bool(version)
            if subtest:
                frame.name = subtest["name"]
            return
        if plan:
            if not self.stack or indent > self.stack[-1].indent:
                self.unwind(indent)
                self.stack.append(_Frame(indent))
            self.stack[-1].plan = int(plan["n"])
            return
        if result and (result["num"] is not None or result["name"]):
            self.result(indent, result)
            return
        top = self.stack[-1] if self.stack else None
        if top is not None and indent >= top.indent and same_origin(source, self.first):
            top.diagnostics = [*top.diagnostics[-200:], content.removeprefix("#").strip()]

    def header_frame(self, indent: int, version: bool, name: str) -> _Frame:
        """The frame a `KTAP version` or `# Subtest:` line at `indent` belongs to."""
        self.unwind(indent)
        top = self.stack[-1] if self.stack else None
        if top is None or indent > top.indent:
            self.stack.append(_Frame(indent))
            return self.stack[-1]
        started = top.results > 0 or (top.versioned if version else bool(top.name) and bool(name))
        if not started:
            return top
        # A new document or subtest at this level while the old one is unfinished.
        old = self.stack.pop()
        if self.stack:
            self.close(old, Status.FAIL, "", NO_RESULT)
        else:
            self.finish_root(old)
        self.stack.append(_Frame(indent))
        return self.stack[-1]

    def unwind(self, indent: int) -> None:
        """Close the frames deeper than `indent`: output went back out without their results."""
        while len(self.stack) > 1 and self.stack[-1].indent > indent:
            self.close(self.stack.pop(), Status.FAIL, "", NO_RESULT)
        if len(self.stack) == 1 and self.stack[0].indent > indent:
            # The first lines were a nested subtest with no top-level header (older KUnit):
            # an outer level appears now; keep the old root as its child.
            self.stack.insert(0, _Frame(indent))

    def result(self, indent: int, m: re.Match[str]) -> None:
        status, reason = _outcome(m["not"] is not None, m["comment"] or "")
        name = (m["name"] or "").strip() or f"#{m['num']}"
        if not self.stack:
            self.stack.append(_Frame(indent))
        # Frames more than one level deeper never got their result line (a crash inside them).
        while (len(self.stack) > 1 and self.stack[-1].indent > indent
               and self.stack[-2].indent > indent):
            self.close(self.stack.pop(), Status.FAIL, "", NO_RESULT)
        if self.stack[-1].indent > indent:
            if len(self.stack) == 1:
                self.stack.insert(0, _Frame(indent))
            self.close(self.stack.pop(), status, name, reason)
            return
        if self.stack[-1].indent < indent:
            self.stack.append(_Frame(indent))
        owner = self.stack[-1]
        detail = ""
        if status == Status.FAIL:
            detail = message([*owner.diagnostics, reason])
        elif status == Status.SKIP:
            detail = reason
        owner.cases.append(Case(name=name, status=status, message=detail, format=self.fmt))
        owner.results += 1
        owner.diagnostics = []

    def close(self, frame: _Frame, status: Status, name: str, reason: str) -> None:
        """`frame`'s own result arrived (or never will): its cases move to the parent."""
        parent = self.stack[-1]
        name = name or frame.name or f"#{parent.results + 1}"
        missing = frame.missing(self.fmt)
        if missing is not None and frame.cases:
            frame.cases.append(missing)
        if not frame.cases:
            detail = ""
            if status == Status.FAIL:
                detail = message([*frame.diagnostics, reason])
            elif status == Status.SKIP:
                detail = reason
            parent.cases.append(Case(name=name, status=status, message=detail, format=self.fmt))
        else:
            for case in frame.cases:
                case.suite = f"{name}.{case.suite}" if case.suite else name
            parent.cases.extend(frame.cases)
            if status == Status.FAIL and not any(c.status == Status.FAIL for c in frame.cases):
                parent.cases.append(Case(name=name, status=Status.FAIL, format=self.fmt,
                                         message=reason or "failed without a failing subtest"))
        parent.results += 1
        parent.diagnostics = []

    def finish_root(self, frame: _Frame) -> None:
        self.out.extend(frame.cases)
        missing = frame.missing(self.fmt)
        if missing is not None:
            self.out.append(missing)
