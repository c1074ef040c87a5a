"""What a run prints for people and for CI: a report, not a log.

The default run used to print one SKIP line per skipped test, 76 lines for
three reasons, two thirds of its output, burying the few lines that matter.
Now each finished test prints a progress line unless it was skipped; at the
end come the skips summarised per reason with counts (each skipped test stays
in JUnit, summary.json and report.html), flaky tests, the failures repeated
with their repro line, and the totals, so the last screenful is what to act on.

Colour only on a terminal, never when NO_COLOR is set to anything
(https://no-color.org) or TERM is `dumb`. Under GitHub Actions (GITHUB_ACTIONS
set), failures also become `::error` workflow commands (FYI ones `::warning`),
which GitHub shows as annotations, and a Markdown summary is appended to the
file $GITHUB_STEP_SUMMARY names. Guest text is made inert first
(harness.textsafe) and then escaped for each format: a guest cannot start a
workflow command of its own, since every newline in what it said is encoded.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from harness.report.diff import EnvDiff
from harness.report.junit import source_file
from harness.results import RunResult, Status, TestResult
from harness.textsafe import name_safe, terminal_safe

MESSAGE_LIMIT = 200
ANNOTATION_LIMIT = 50  # GitHub shows only so many per step; the summary lists the rest
SUMMARY_ROWS = 100

_COLOURS = {"PASS": "32", "FAIL": "31", "INFRA_FAIL": "33", "ABORT": "35", "FLAKY": "33",
            "SKIP": "2", "bold": "1", "dim": "2"}


def colour_wanted(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour on a TTY only, unless NO_COLOR is set (to anything but '') or TERM is dumb."""
    if environ.get("NO_COLOR", ""):
        return False
    if environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The first non-empty line of `text`, inert for a terminal, cut to `limit`."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = terminal_safe(line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def shown_status(result: TestResult) -> str:
    return "FLAKY" if result.flaky else result.status.value


def _message(result: TestResult) -> str:
    return result.final.message if result.attempts else "no attempt ran"


# The closing report repeats at most this many failures; the rest are counted (a run with
# thousands of failures has them all in its files, not in a terminal's scrollback).
FAILURES_SHOWN = 50
# How the runner words the ABORT of a test that never started (runner.Runner.run).
NOT_RUN = "not run"


@dataclasses.dataclass
class TerminalReport:
    """Progress lines and the closing report of one run, coloured or not."""

    colour: bool = False

    @classmethod
    def for_stream(cls, stream: TextIO, environ: Mapping[str, str]) -> TerminalReport:
        return cls(colour=colour_wanted(stream, environ))

    def paint(self, text: str, what: str) -> str:
        code = _COLOURS.get(what)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def progress(self, result: TestResult, done: int, total: int) -> str | None:
        """The line for one finished test; None for a skip (they are summarised at the end)."""
        if result.status == Status.SKIP:
            return None
        status = shown_status(result)
        width = len(str(total))
        line = (f"[{done:>{width}}/{total}] {self.paint(f'{status:<10}', status)} "
                f"{name_safe(result.environment):<16} {name_safe(result.test)} "
                f"({result.duration_s:.1f} s)")
        if result.status != Status.PASS and result.attempts and result.final.message:
            line += f": {one_line(result.final.message)}"
        return line

    def closing(self, run: RunResult, *, files: Sequence[str] = (),
                diffs: Sequence[EnvDiff] = ()) -> str:
        """Skips per reason, flakes, failures with their repro lines, differing pairs, totals."""
        lines: list[str] = []
        groups = skip_groups(run)
        if groups:
            n = sum(len(g) for _, g in groups)
            lines.append(self.paint(f"skipped {n}, by reason:", "bold"))
            for reason, results in groups:
                envs = sorted({r.environment for r in results})
                where = ", ".join(name_safe(e) for e in envs[:4]) + (
                    f" and {len(envs) - 4} more" if len(envs) > 4 else "")
                lines.append(f"  {len(results):>4}  {one_line(reason)} ({where})")
        flaky = [r for r in run.results if r.flaky]
        if flaky:
            lines.append(self.paint(f"flaky {len(flaky)} (failed, then passed on a retry):",
                                    "bold"))
            for r in flaky:
                first = next((a for a in r.attempts if not a.status.ok), r.final)
                lines.append(f"  {self.paint('FLAKY', 'FLAKY')} {name_safe(r.environment)} "
                             f"{name_safe(r.test)}: {one_line(first.message)}")
        failed = [r for r in run.results if not r.status.ok]
        # Tests an interrupt kept from starting say one thing between them: one line per
        # reason, as skips get, not thousands of identical ones.
        not_run: dict[str, list[TestResult]] = {}
        for r in failed:
            if r.status == Status.ABORT and _message(r).startswith(NOT_RUN):
                not_run.setdefault(_message(r), []).append(r)
        failed = [r for r in failed
                  if not (r.status == Status.ABORT and _message(r).startswith(NOT_RUN))]
        for reason, results in not_run.items():
            lines.append(self.paint(f"not run {len(results)}: {one_line(reason)}", "bold"))
        if failed:
            lines.append(self.paint(f"failed {len(failed)}:", "bold"))
            for r in failed[:FAILURES_SHOWN]:
                kind = "" if r.blocking else " (FYI)"
                lines.append(f"  {self.paint(r.status.value, r.status.value)} "
                             f"{name_safe(r.environment)} {name_safe(r.test)}{kind}: "
                             f"{one_line(_message(r))}")
                if r.repro:
                    lines.append(f"      repro: {terminal_safe(r.repro)}")
            if len(failed) > FAILURES_SHOWN:
                lines.append(f"  and {len(failed) - FAILURES_SHOWN} more failures: every one "
                             "is in junit.xml, summary.json and report.html, with its repro "
                             "line in its folder's repro.sh")
        for d in diffs:
            if d.differs:
                lines.append(f"differential {name_safe(d.title)}: verdicts differ on "
                             f"{len(d.tests)} tests and {len(d.cases)} cases "
                             f"(harness diff {terminal_safe(d.left.label)})")
        totals = run.totals()
        counts = ", ".join(self.paint(f"{v} {k}", k) for k, v in totals.items() if v)
        tail = "".join(f"; {f}" for f in files)
        lines.append(f"harness: {counts or 'nothing ran'} in {run.duration_s:.1f} s{tail}")
        return "\n".join(lines)


def skip_groups(run: RunResult) -> list[tuple[str, list[TestResult]]]:
    """Skipped tests grouped by reason, the largest group first.

    A reason that names its own environment ("device config 'full' of qemu-x64 has no
    ...") is grouped with the same reason of other environments, the name shown as <env>.
    """
    groups: dict[str, list[TestResult]] = {}
    for r in run.results:
        if r.status == Status.SKIP:
            reason = _message(r) or "no reason recorded"
            if r.environment:
                reason = reason.replace(r.environment, "<env>")
            groups.setdefault(reason, []).append(r)
    return sorted(groups.items(), key=lambda item: -len(item[1]))


# -- GitHub Actions ------------------------------------------------------------------------------


def _gh_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (escapeData)."""
    return terminal_safe(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    """A workflow command's property value (escapeProperty): also ':' and ','."""
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(run: RunResult, environ: Mapping[str, str]) -> list[str]:
    """`::error` for each failed blocking test, `::warning` for FYI failures and flakes."""
    out: list[str] = []
    workspace = {"CI_PROJECT_DIR": environ.get("GITHUB_WORKSPACE", "")}
    items = [r for r in run.results if not r.status.ok] + [r for r in run.results if r.flaky]
    for r in items[:ANNOTATION_LIMIT]:
        if r.flaky:
            level = "warning"
            first = next((a for a in r.attempts if not a.status.ok), r.final)
            message = f"flaky: failed, then passed on a retry: {first.message}"
        else:
            level = "error" if r.blocking else "warning"
            message = _message(r) + ("" if r.blocking else "\n(FYI environment: not blocking)")
        if r.repro and not r.flaky:
            message += f"\nrepro: {r.repro}"
        props = [f"title={_gh_property(f'{r.environment} {r.test}: {shown_status(r)}')}"]
        source = source_file(r, workspace) if workspace["CI_PROJECT_DIR"] else ""
        if source:
            props.insert(0, f"file={_gh_property(source)}")
        out.append(f"::{level} {','.join(props)}::{_gh_data(message)}")
    if len(items) > ANNOTATION_LIMIT:
        out.append(f"::notice::{len(items) - ANNOTATION_LIMIT} more failures and flakes: see "
                   "the job summary or report.html")
    return out


def _md(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """One line of guest or user text for a Markdown table cell: inert and escaped."""
    line = html.escape(one_line(text, limit), quote=False)
    for ch in "\\`*_[]|#":
        line = line.replace(ch, "\\" + ch)
    return line


def step_summary(run: RunResult, diffs: Sequence[EnvDiff] = (), *, report: str = "") -> str:
    """The run as Markdown for $GITHUB_STEP_SUMMARY."""
    totals = run.totals()
    lines = [f"### harness run {_md(run.out_dir.as_posix())}", ""]
    lines.append("**A blocking test failed.**" if run.blocking_failed
                 else "**Every blocking test passed.**")
    lines += ["", "| status | tests |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in totals.items() if v]
    failed = [r for r in run.results if not r.status.ok]
    if failed:
        lines += ["", "#### Failures", "", "| environment | test | status | blocking | message |",
                  "|---|---|---|---|---|"]
        for r in failed[:SUMMARY_ROWS]:
            lines.append(f"| {_md(r.environment)} | {_md(r.test)} | {r.status.value} | "
                         f"{'yes' if r.blocking else 'FYI'} | {_md(_message(r))} |")
        if len(failed) > SUMMARY_ROWS:
            lines.append(f"\n{len(failed) - SUMMARY_ROWS} more in report.html")
        repros = [r.repro for r in failed if r.repro][:SUMMARY_ROWS]
        if repros:
            body = html.escape("\n".join(terminal_safe(c) for c in repros))
            lines += ["", "<details><summary>repro commands</summary>", "",
                      f"<pre>{body}</pre>", "", "</details>"]
    flaky = [r for r in run.results if r.flaky]
    if flaky:
        lines += ["", "#### Flaky (failed, then passed)", ""]
        lines += [f"- {_md(r.environment)} {_md(r.test)}" for r in flaky[:SUMMARY_ROWS]]
    groups = skip_groups(run)
    if groups:
        lines += ["", "#### Skipped, by reason", "", "| tests | reason |", "|---:|---|"]
        lines += [f"| {len(rs)} | {_md(reason, 300)} |" for reason, rs in groups]
    if diffs:
        lines += ["", "#### Differential", "", "| left | right | verdict | devices differing |",
                  "|---|---|---|---|"]
        for d in diffs:
            verdict = (f"differs: {len(d.tests)} tests, {len(d.cases)} cases" if d.differs
                       else "same")
            devices = ", ".join(dev.kind for dev in d.devices) or "-"
            lines.append(f"| {_md(d.left.environment)} | {_md(d.right.environment)} | "
                         f"{verdict} | {_md(devices)} |")
    if report:
        lines += ["", f"HTML report: `{_md(report)}` (in the job's artifacts)"]
    return "\n".join(lines) + "\n"


def ci_outputs(run: RunResult, diffs: Sequence[EnvDiff], *, environ: Mapping[str, str],
               stdout: TextIO, report: str = "") -> None:
    """Under GitHub Actions: annotations on stdout, the step summary appended to its file."""
    if not environ.get("GITHUB_ACTIONS"):
        return
    for line in github_annotations(run, environ):
        print(line, file=stdout)
    stdout.flush()
    target = environ.get("GITHUB_STEP_SUMMARY")
    if target:
        try:
            with open(Path(target), "a", encoding="utf-8") as f:
                f.write(step_summary(run, diffs, report=report))
        except OSError as e:
            print(f"harness: cannot append to GITHUB_STEP_SUMMARY {target}: {e}",
                  file=stdout)


def progress_line(result: TestResult, done: int, total: int) -> str:
    """The plain line for one finished test: a Runner's when its options name no other
    (`harness run` uses TerminalReport.progress)."""
    status = "FLAKY" if result.flaky else result.status.value
    width = len(str(total))
    line = (f"[{done:>{width}}/{total}] {status:<10} {name_safe(result.environment):<16} "
            f"{name_safe(result.test)} ({result.duration_s:.1f} s)")
    if result.status != Status.PASS and result.final.message:
        line += f": {terminal_safe(result.final.message)[:200]}"
    return line


def finished_lines(result: TestResult, found: Sequence[TestResult], progress: str | None
                   ) -> list[str]:
    """What the terminal says when a test is final: its progress line (None: nothing, a
    skip summarised at the end), each test the crash scan added from its logs, and, for a
    test that did not pass, the line that re-runs it (escaped: repro.sh holds it exactly)."""
    lines = [progress] if progress else []
    for s in found:
        lines.append(f"        {'FLAKY' if s.flaky else s.status.value}: "
                     f"{name_safe(s.test)}: {terminal_safe(s.attempts[0].message)[:200]}")
    if not result.status.ok and result.repro:
        lines.append(f"        repro: {terminal_safe(result.repro)}")
    return lines
