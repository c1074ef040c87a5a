"""The static HTML report: one run, many runs, and the engine-vs-engine differential.

Who reads it: FYI bot dashboards and the people behind them, from a CI artifact
opened as it is (`file://`), so the page is one self-contained file per view:
its CSS and a little script are inlined (harness/data/report.css, report.js),
nothing is fetched (a Content-Security-Policy says so to the browser), plots are
inline SVG, and every fact is in the HTML itself, so with scripts off the page
loses only sorting, filtering and copy buttons.

Guest text is hostile by default (escape sequences, `<script>`, invalid UTF-8,
lone surrogates): every string passes through `esc`, which shows control and
bidirectional characters as visible escapes (harness.textsafe, the same as
JUnit and the terminal) and then HTML-escapes it, so the page stays inert and
well-formed; the Content-Security-Policy only allows the report's own script and
style (by hash), a second wall should anything slip through.

Links to a test's files (serial log, VMM command, stderr, repro.sh) are relative
to the page, so a results directory (with report.html inside) or a report
directory next to its runs can be moved or archived as a whole.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import html
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from harness.report.diff import EnvDiff, diff_runs, one_sided_reason
from harness.report.summary import atomic_write, rfc3339
from harness.report.terminal import shown_status, skip_groups
from harness.results import Attempt, Case, RunResult, Status, TestResult
from harness.stability import (
    DEFAULT_LAST,
    LoadedRun,
    StabilityReport,
    Trend,
    analyze,
    boot_samples,
    load_runs,
)
from harness.textsafe import head_tail, normalize_newlines, terminal_safe, xml_safe

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
SERIAL_EXCERPT_LINES = 40
SERIAL_EXCERPT_BYTES = 4096
DETAILS_BYTES = 8192
CASES_SHOWN = 200  # passing cases beyond this many go in a folded list
STANDARD_FILES = (("serial.log", "serial log"), ("vmm-command.txt", "VMM command"),
                  ("vmm-stderr.log", "VMM stderr"), ("repro.sh", "repro.sh"))
STATUS_ORDER = ("FAIL", "INFRA_FAIL", "ABORT", "FLAKY", "PASS", "SKIP")
# One letter per status for the per-run history strips (the colour says it too).
STATUS_LETTER = {"PASS": "P", "FAIL": "F", "INFRA_FAIL": "I", "ABORT": "A", "FLAKY": "~",
                 "SKIP": "S"}


def _asset(name: str) -> str:
    return resources.files("harness").joinpath("data", name).read_text(encoding="utf-8")


CSS = _asset("report.css")
JS = _asset("report.js")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (f"default-src 'none'; style-src {_csp_hash(CSS)}; script-src {_csp_hash(JS)}; "
       "img-src data:; base-uri 'none'; form-action 'none'")


# -- escaping --------------------------------------------------------------------------------


def esc(value: object) -> str:
    """Any text made inert for HTML: controls and bidi characters shown as escapes, then
    `<`, `&` and quotes escaped. Safe in text and in quoted attribute values."""
    return html.escape(xml_safe(terminal_safe(str(value))), quote=True)


def href(base: str, rel: str) -> str:
    """A relative link to `rel` (a run-relative POSIX path) from a page whose way to the
    run directory is `base` ('' or ending in '/'), percent-encoded and escaped."""
    return html.escape(quote(base + rel, safe="/._-~"), quote=True)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def view_status(result: TestResult) -> str:
    """What the page shows: PENDING for a test with no attempt yet (the page is rewritten
    while a run goes on), else the status, FLAKY for a flaky pass."""
    return shown_status(result) if result.attempts else "PENDING"


def _status(status: str) -> str:
    return f'<span class="status st-{esc(status)}">{esc(status)}</span>'


def excerpt(text: str, lines: int = SERIAL_EXCERPT_LINES,
            limit: int = SERIAL_EXCERPT_BYTES) -> str:
    """The last `lines` lines of `text`, at most about `limit` bytes."""
    # Console lines end in \r\n or \r\r\n: one newline, not blank lines in between.
    tail = "\n".join(normalize_newlines(text).rstrip("\n").split("\n")[-lines:])
    encoded = tail.encode("utf-8", errors="backslashreplace")
    if len(encoded) > limit:
        tail = "[...]" + encoded[-limit:].decode("utf-8", errors="ignore")
    return tail


# -- the page --------------------------------------------------------------------------------


def page(title: str, body: str, nav: Sequence[tuple[str, str]] = ()) -> str:
    """A whole HTML document; `body` is already-escaped HTML."""
    links = "".join(f'<li><a href="#{esc(anchor)}">{esc(label)}</a></li>' for anchor, label in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + (f'<nav aria-label="sections"><ul>{links}</ul></nav>\n' if links else "")
        + body
        + f"\n<script>{JS}</script>\n</body>\n</html>\n"
    )


def _table(headers: Sequence[str | tuple[str, str]], rows: Iterable[str], *,
           cls: str = "", table_id: str = "") -> str:
    """A table; headers are labels or (label, class); rows are `<tr>...</tr>` strings."""
    ths = "".join(f'<th class="{esc(h[1])}">{esc(h[0])}</th>' if isinstance(h, tuple)
                  else f"<th>{esc(h)}</th>" for h in headers)
    attrs = (f' class="{esc(cls)}"' if cls else "") + (f' id="{esc(table_id)}"' if table_id else "")
    return f"<table{attrs}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _td(value: object, *, num: bool = False, sort: object = None) -> str:
    attrs = ' class="num"' if num else ""
    if sort is not None:
        attrs += f' data-sort="{esc(sort)}"'
    return f"<td{attrs}>{esc(value)}</td>"


# -- one run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class RunView:
    """One run as a page shows it: `base` leads from the page to the run directory."""

    run: RunResult
    label: str
    base: str = ""

    def exists(self, rel: str) -> bool:
        return bool(rel) and (self.run.out_dir / rel).is_file()


def _attempt_folder(result: TestResult, attempt: Attempt | None) -> str:
    if attempt is not None:
        for key, path in attempt.artifacts.items():
            if key == "serial.log" or Path(path).name == "serial.log":
                return Path(path).parent.as_posix()
    return result.folder


def file_links(view: RunView, result: TestResult, attempt: Attempt | None) -> list[tuple[str, str]]:
    """(label, run-relative path) of each file of an attempt that exists."""
    folder = _attempt_folder(result, attempt)
    out: list[tuple[str, str]] = []
    for name, label in STANDARD_FILES:
        rel = f"{folder}/{name}" if folder else ""
        if name == "repro.sh" and attempt is not None and "repro.sh" in attempt.artifacts:
            rel = attempt.artifacts["repro.sh"]
        if view.exists(rel):
            out.append((label, rel))
    if attempt is not None:
        known = {rel for _, rel in out}
        for key, rel in attempt.artifacts.items():
            if rel not in known and not Path(rel).is_absolute() and view.exists(rel):
                out.append((key, rel))
    folder_enum = f"{folder}/enumeration.txt" if folder else ""
    if view.exists(folder_enum) and folder_enum not in {r for _, r in out}:
        out.append(("device enumeration", folder_enum))
    return out


def _links_html(view: RunView, links: list[tuple[str, str]]) -> str:
    if not links:
        return '<p class="muted">no files recorded</p>'
    items = "".join(f'<li><a href="{href(view.base, rel)}">{esc(label)}</a></li>'
                    for label, rel in links)
    return f'<ul class="links">{items}</ul>'


def _repro_html(result: TestResult) -> str:
    if not result.repro:
        return ""
    return ('<p>Reproduce it (the same test, environment and inputs):</p>'
            f'<pre class="repro"><code>{esc(result.repro)}</code></pre>')


def _serial_html(attempt: Attempt | None, title: str = "serial console, last lines") -> str:
    if attempt is None or not attempt.serial_tail:
        return ""
    return (f'<p class="muted">{esc(title)}:</p>'
            f'<pre class="serial">{esc(excerpt(attempt.serial_tail))}</pre>')


def _summary_html(view: RunView) -> str:
    run = view.run
    finished = [r for r in run.results if r.attempts]
    totals = RunResult(finished, run.out_dir).totals()
    pending = len(run.results) - len(finished)
    if pending:
        totals["PENDING"] = pending
    items = "".join(f'<li class="st-{esc(k)}">{esc(k)} <b>{v}</b></li>'
                    for k, v in totals.items() if v)
    verdict = ('<p class="verdict-bad">A blocking test failed.</p>' if run.blocking_failed
               else '<p class="verdict-good">Every blocking test passed.</p>')
    if pending:
        verdict += (f'<p class="muted">{pending} tests have not finished yet; this page is '
                    "rewritten as they do.</p>")
    if run.interrupted:
        verdict += '<p class="verdict-bad">The run was interrupted; unfinished tests are ABORT.</p>'
    return (
        f'<header id="summary"><h1>Run {esc(view.label)}</h1>'
        f'<p class="muted">started {esc(rfc3339(run.started))}, {run.duration_s:.1f} s, '
        f'{len(run.results)} test runs on {len({r.environment for r in run.results})} '
        f'environments</p><ul class="totals">{items or "<li>no tests</li>"}</ul>{verdict}</header>'
    )


def _problems(run: RunResult) -> list[TestResult]:
    bad = [r for r in run.results if r.attempts and not r.status.ok]
    flaky = [r for r in run.results if r.flaky]
    return bad + flaky


def _failures_html(view: RunView, ids: dict[str, str]) -> str:
    problems = _problems(view.run)
    if not problems:
        return '<section id="failures"><h2>Failures</h2><p>None.</p></section>'
    parts = ['<section id="failures"><h2>Failures and flakes</h2>']
    for r in problems:
        final = r.final if r.attempts else None
        status = shown_status(r)
        cls = "failure flaky" if r.flaky else "failure"
        kind = "blocking" if r.blocking else "FYI"
        shown_attempt: Attempt | None
        if r.flaky and final is not None:
            failed = next((a for a in r.attempts if not a.status.ok), final)
            message = f"failed, then passed on attempt {len(r.attempts)}: {failed.message}"
            shown_attempt = failed
        else:
            message = final.message if final else "no attempt ran"
            shown_attempt = final
        parts.append(
            f'<article class="{cls}"><h3>{_status(status)} {esc(r.environment)} / '
            f'<a href="#{ids[r.key]}">{esc(r.test)}</a> <span class="muted">({kind}, '
            f'{r.duration_s:.1f} s)</span></h3>'
            f'<p class="message">{esc(message)}</p>'
        )
        if shown_attempt is not None and shown_attempt.details.strip():
            details = head_tail(shown_attempt.details, DETAILS_BYTES, DETAILS_BYTES // 4)
            parts.append(f"<pre>{esc(details)}</pre>")
        parts.append(_serial_html(shown_attempt))
        parts.append(_links_html(view, file_links(view, r, shown_attempt)))
        if not r.flaky:
            parts.append(_repro_html(r))
        parts.append("</article>")
    parts.append("</section>")
    return "".join(parts)


def _environments_html(view: RunView) -> str:
    by_env: dict[str, list[TestResult]] = {}
    for r in view.run.results:
        by_env.setdefault(r.environment, []).append(r)
    rows = []
    for env, results in by_env.items():
        first = results[0]
        accel = next((r.accel for r in results if r.accel), "")
        kernel = next((r.kernel for r in results if r.kernel), "")
        counts = Counter(r.status for r in results)
        boots = [s for r in results for s in boot_samples(r)]
        boot = statistics.median(boots) if boots else None
        rows.append(
            "<tr>" + _td(env) + _td(first.engine) + _td(first.arch) + _td(accel or "-")
            + _td(kernel or "-") + _td("blocking" if first.blocking else "FYI")
            + _td(first.tags.get("devices", "-"))
            + _td(len(results), num=True) + _td(counts[Status.PASS], num=True)
            + _td(counts[Status.FAIL] + counts[Status.INFRA_FAIL] + counts[Status.ABORT],
                  num=True)
            + _td(counts[Status.SKIP], num=True)
            + _td(_num(boot), num=True, sort=boot if boot is not None else -1) + "</tr>")
    table = _table(["Environment", "Engine", "Arch", "Accel", "Kernel", "Kind", "Devices",
                    ("Tests", "num"), ("Passed", "num"), ("Failed", "num"), ("Skipped", "num"),
                    ("Boot s (median)", "num")], rows, cls="sortable")
    return f'<section id="environments"><h2>Environments</h2>{table}</section>'


def _cases_summary(cases: list[Case]) -> str:
    if not cases:
        return "-"
    passed = sum(1 for c in cases if c.status == Status.PASS)
    return f"{passed}/{len(cases)} passed"


def _tests_table_html(view: RunView, ids: dict[str, str]) -> str:
    rows = []
    for r in view.run.results:
        final = r.final if r.attempts else None
        status = view_status(r)
        problem = "1" if final is not None and (not r.status.ok or r.flaky) else "0"
        cases = final.cases if final else []
        message = final.message if final else ""
        rows.append(
            f'<tr data-status="{esc(status)}" data-problem="{problem}">'
            + _td(r.environment)
            + f'<td><a href="#{ids[r.key]}">{esc(r.test)}</a></td>'
            + f'<td data-sort="{STATUS_ORDER.index(status) if status in STATUS_ORDER else 9}">'
            + f"{_status(status)}</td>"
            + _td(f"{r.duration_s:.1f}", num=True, sort=f"{r.duration_s:.3f}")
            + _td(_cases_summary(cases), num=True, sort=len(cases))
            + _td(message.splitlines()[0][:300] if message.strip() else "")
            + "</tr>")
    options = "".join(f'<option value="{s}">{s}</option>'
                      for s in ("PASS", "FAIL", "INFRA_FAIL", "ABORT", "FLAKY", "SKIP",
                                "PENDING"))
    filters = (
        '<form class="filters" data-table="tests-table" hidden>'
        '<label>Filter <input type="search" name="q" placeholder="environment, test, message">'
        '</label><label>Status <select name="status"><option value="">any</option>'
        f'<option value="problem">failed or flaky</option>{options}</select></label>'
        '<span class="count muted"></span></form>'
    )
    table = _table(["Environment", "Test", "Status", ("Duration s", "num"), ("Cases", "num"),
                    "Message"], rows, cls="sortable", table_id="tests-table")
    return f'<section id="tests"><h2>Tests</h2>{filters}{table}</section>'


def _cases_html(cases: list[Case]) -> str:
    if not cases:
        return ""
    order = sorted(cases, key=lambda c: c.status == Status.PASS)
    counts = Counter(c.status.value for c in cases)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def rows(items: Iterable[Case]) -> list[str]:
        return ["<tr>" + _td(f"{c.suite}.{c.name}" if c.suite else c.name)
                + f"<td>{_status(c.status.value)}</td>"
                + _td(f"{c.duration_s:.3f}", num=True) + _td(c.message[:500]) + "</tr>"
                for c in items]

    head: list[str | tuple[str, str]] = ["Case", "Status", ("Duration s", "num"), "Message"]
    shown, rest = order[:CASES_SHOWN], order[CASES_SHOWN:]
    out = f"<h4>{len(cases)} cases: {esc(summary)}</h4>" + _table(head, rows(shown),
                                                                  cls="sortable")
    if rest:
        out += (f"<details><summary>{len(rest)} more passing cases</summary>"
                + _table(head, rows(rest)) + "</details>")
    return out


def _details_html(view: RunView, ids: dict[str, str]) -> str:
    parts = ['<section id="details"><h2>Every test</h2>']
    for r in view.run.results:
        final = r.final if r.attempts else None
        status = view_status(r)
        is_open = " open" if final is not None and (not r.status.ok or r.flaky) else ""
        parts.append(
            f'<details id="{ids[r.key]}"{is_open}><summary>{_status(status)} '
            f'{esc(r.environment)} / {esc(r.test)} <span class="muted">'
            f'({r.duration_s:.1f} s)</span></summary>')
        facts = [("suite", r.suite), ("engine", r.engine), ("arch", r.arch),
                 ("accel", r.accel), ("kernel", r.kernel),
                 ("blocking", "yes" if r.blocking else "no (FYI)"),
                 ("attempts", str(len(r.attempts))), ("label", r.label)]
        parts.append('<p class="muted">' + "; ".join(
            f"{esc(k)}: {esc(v)}" for k, v in facts if v) + "</p>")
        if final is not None and final.message:
            parts.append(f'<p class="message">{esc(final.message)}</p>')
        if len(r.attempts) > 1:
            rows = []
            for i, a in enumerate(r.attempts, 1):
                serial = next((rel for label, rel in file_links(view, r, a)
                               if label == "serial log"), "")
                link = (f'<a href="{href(view.base, serial)}">serial log</a>' if serial else "")
                rows.append("<tr>" + _td(i, num=True) + f"<td>{_status(a.status.value)}</td>"
                            + _td(f"{a.duration_s:.1f}", num=True) + _td(a.message[:300])
                            + f"<td>{link}</td></tr>")
            parts.append("<h4>Attempts</h4>" + _table(
                [("#", "num"), "Status", ("Duration s", "num"), "Message", "Log"], rows))
        if final is not None and final.details.strip() and final.status != Status.PASS:
            details = head_tail(final.details, DETAILS_BYTES, DETAILS_BYTES // 4)
            parts.append(f"<pre>{esc(details)}</pre>")
        if final is not None and final.properties:
            rows = ["<tr>" + _td(k) + _td(v) + "</tr>" for k, v in final.properties.items()]
            parts.append("<h4>Measurements and facts</h4>" + _table(["Property", "Value"], rows))
        parts.append(_cases_html(final.cases if final else []))
        parts.append(_serial_html(final))
        parts.append(_links_html(view, file_links(view, r, final)))
        parts.append(_repro_html(r))
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts)


def _skips_html(view: RunView, ids: dict[str, str]) -> str:
    groups = skip_groups(view.run)
    if not groups:
        return '<section id="skipped"><h2>Skipped</h2><p>Nothing was skipped.</p></section>'
    parts = ['<section id="skipped"><h2>Skipped, by reason</h2>']
    for reason, results in groups:
        items = "".join(f'<li><a href="#{ids[r.key]}">{esc(r.environment)} / {esc(r.test)}</a>'
                        f"</li>" for r in results)
        parts.append(f"<details><summary><b>{len(results)}</b> &times; {esc(reason)}</summary>"
                     f"<ul>{items}</ul></details>")
    parts.append("</section>")
    return "".join(parts)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def diff_html(diffs: Sequence[EnvDiff], *, heading: str = "Differential") -> str:
    """The differential section: one block per environment pair."""
    parts = [f'<section id="differential"><h2>{esc(heading)}</h2>']
    if not diffs:
        parts.append("<p>No pair of environments to compare (a crosvm environment and the "
                     "QEMU one of the same arch and device set).</p></section>")
        return "".join(parts)
    parts.append('<p class="muted">Left against right; a skip is not a verdict, so tests '
                 "skipped on one side are listed apart and do not count as a difference.</p>")
    for n, d in enumerate(diffs):
        ln, rn = d.left.environment, d.right.environment
        verdict = (f'<span class="verdict-bad">verdicts differ: {len(d.tests)} tests, '
                   f"{len(d.cases)} cases</span>" if d.differs
                   else '<span class="verdict-good">the same verdicts</span>')
        runs = (f"run {esc(d.left.label)}" if d.left.label == d.right.label
                else f"runs {esc(d.left.label)} and {esc(d.right.label)}")
        parts.append(
            f'<div class="diff-pair {"differs" if d.differs else "same"}" id="diff-{n}">'
            f"<h3>{esc(ln)} ({esc(d.left.engine)}) vs {esc(rn)} ({esc(d.right.engine)})</h3>"
            f'<p>{esc(d.left.arch)}; devices {esc(d.left.devices or "-")} / '
            f'{esc(d.right.devices or "-")}; {runs}; {d.compared} tests ran on both; '
            f"{verdict}</p>")
        if d.tests:
            rows = ["<tr>" + _td(t.test) + f"<td>{_status(t.left)}</td><td>{_status(t.right)}"
                    f"</td>" + _td(t.left_message[:300]) + _td(t.right_message[:300]) + "</tr>"
                    for t in d.tests]
            parts.append("<h4>Tests whose verdict differs</h4>" + _table(
                ["Test", ln, rn, f"{ln}: message", f"{rn}: message"], rows, cls="diff-tests"))
        if d.cases:
            rows = ["<tr>" + _td(c.test) + _td(c.case) + f"<td>{_status(c.left)}</td>"
                    f"<td>{_status(c.right)}</td>"
                    + _td((c.left_message or c.right_message)[:300]) + "</tr>" for c in d.cases]
            parts.append("<h4>Cases whose verdict differs</h4>" + _table(
                ["Test", "Case", ln, rn, "Message"], rows, cls="diff-cases"))
        if d.devices_compared:
            if d.devices:
                rows = []
                for dev in d.devices:
                    who = {"left": f"only {ln} presents it", "right": f"only {rn} presents it"
                           }.get(dev.only, "both, in different numbers")
                    rows.append("<tr>" + _td(dev.kind) + _td(dev.left, num=True)
                                + _td(dev.right, num=True) + _td(who) + "</tr>")
                parts.append("<h4>Devices the engines disagree on</h4>" + _table(
                    ["Device", (ln, "num"), (rn, "num"), "Difference"], rows,
                    cls="diff-devices"))
            else:
                parts.append("<p>Both enumerate the same devices.</p>")
        else:
            parts.append('<p class="muted">Devices not compared: device enumeration did not '
                         "run on both sides.</p>")
        if d.metrics:
            rows = ["<tr>" + _td(f"{m.label} ({m.unit}, {m.better} is better)")
                    + _td(_num(m.left), num=True) + _td(_num(m.right), num=True)
                    + _td(_ratio(m.ratio), num=True) + "</tr>" for m in d.metrics]
            parts.append("<h4>Measurements side by side</h4>" + _table(
                ["Metric", (ln, "num"), (rn, "num"), ("Ratio left/right", "num")], rows,
                cls="diff-metrics"))
        if d.one_sided:
            rows = ["<tr>" + _td(t.test) + f"<td>{_status(t.left or 'absent')}</td>"
                    f"<td>{_status(t.right or 'absent')}</td>"
                    + _td(one_sided_reason(t, ln, rn)[:300])
                    + "</tr>" for t in d.one_sided]
            parts.append("<details><summary>" + f"{len(d.one_sided)} tests compared on one "
                         "side only</summary>" + _table(["Test", ln, rn, "Why"], rows)
                         + "</details>")
        if d.cases_one_sided:
            names = "".join(f"<li>{esc(n)}</li>" for n in d.cases_one_sided_names)
            parts.append(f"<details><summary>{d.cases_one_sided} cases reported on one side "
                         f"only</summary><ul>{names}</ul></details>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _ids(run: RunResult) -> dict[str, str]:
    return {r.key: f"t{i}" for i, r in enumerate(run.results)}


def render_run(view: RunView, diffs: Sequence[EnvDiff], *, back: str = "") -> str:
    """The one-run page: summary, failures, environments, tests, skips, differential."""
    ids = _ids(view.run)
    body = (
        (f'<p><a href="{esc(back)}">&larr; all runs</a></p>' if back else "")
        + _summary_html(view)
        + "<main>"
        + _failures_html(view, ids)
        + _environments_html(view)
        + diff_html(diffs)
        + _tests_table_html(view, ids)
        + _skips_html(view, ids)
        + _details_html(view, ids)
        + "</main>"
    )
    nav = [("summary", "Summary"), ("failures", "Failures"), ("environments", "Environments"),
           ("differential", "Differential"), ("tests", "Tests"), ("skipped", "Skipped"),
           ("details", "Every test")]
    return page(f"harness run {view.label}", body, nav)


def write_run_report(run: RunResult) -> Path:
    """report.html in the run's directory (what `harness run` leaves for CI artifacts)."""
    label = run.out_dir.name or str(run.out_dir)
    diffs = diff_runs(run, run, left_label=label, right_label=label)
    path = run.out_dir / REPORT_FILE
    atomic_write(path, render_run(RunView(run, label), diffs).encode("utf-8"))
    return path


# -- many runs -------------------------------------------------------------------------------


def svg_plot(trend: Trend | None, runs: Sequence[LoadedRun], *, title: str, unit: str) -> str:
    """A line plot of a per-run trend as inline SVG: a point per run that measured it."""
    if trend is None:
        return (f'<figure class="plot"><figcaption>{esc(title)}: not measured in these runs'
                "</figcaption></figure>")
    width, height, left, right, top, bottom = 480, 170, 48, 12, 12, 28
    xs = [x for x, _ in trend.points]
    top_value = max(v for _, v in trend.points) * 1.15 or 1.0
    n = max(len(runs) - 1, 1)

    def px(x: int) -> float:
        return left + (width - left - right) * (x / n if len(runs) > 1 else 0.5)

    def py(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / top_value)

    points = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in trend.points)
    circles = "".join(
        f'<circle class="pt" cx="{px(x):.1f}" cy="{py(v):.1f}" r="4" data-run="{x}" '
        f'data-value="{v:.3f}"><title>run {x} ({esc(runs[x].directory.name)}): '
        f"{v:.2f} {esc(unit)}</title></circle>" for x, v in trend.points)
    ticks = "".join(
        f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>'
        f'<line class="axis" x1="{left - 3}" x2="{left}" y1="{py(v):.1f}" y2="{py(v):.1f}"/>'
        for v in (0.0, top_value / 2, top_value))
    labels = "".join(f'<text x="{px(x):.1f}" y="{height - 10}" text-anchor="middle">#{x}</text>'
                     for x in sorted(set(xs)))
    slope = trend.slope_per_run
    caption = (f"{title}: {len(trend.points)} runs; first {trend.first:.2f}, last "
               f"{trend.last:.2f}, median {trend.median:.2f} {unit}"
               + (f", slope {slope:+.3f} {unit}/run" if slope is not None else ""))
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(caption)}">'
           f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}"/>'
           f'<line class="axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" '
           f'y2="{height - bottom}"/>{ticks}{labels}'
           f'<polyline class="line" points="{points}"/>{circles}</svg>')
    return f'<figure class="plot">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def _run_statuses(runs: Sequence[LoadedRun]) -> dict[tuple[str, str], dict[int, str]]:
    out: dict[tuple[str, str], dict[int, str]] = {}
    for i, loaded in enumerate(runs):
        for r in loaded.run.results:
            out.setdefault((r.environment, r.test), {})[i] = shown_status(r)
    return out


def render_index(runs: Sequence[LoadedRun], report: StabilityReport, pages: Sequence[str],
                 diffs: Sequence[EnvDiff], title: str) -> str:
    """The many-runs page: runs, readiness, per-environment trends and pass rates, and the
    differential of the latest run."""
    rows = []
    for i, (loaded, page_name) in enumerate(zip(runs, pages, strict=True)):
        run = loaded.run
        totals = run.totals()
        rows.append(
            "<tr>" + _td(f"#{i}", sort=i) + _td(rfc3339(loaded.started))
            + f'<td><a href="{esc(quote(page_name))}">{esc(loaded.directory.name)}</a></td>'
            + _td(len(run.results), num=True) + _td(totals["PASS"], num=True)
            + _td(totals["FAIL"] + totals["INFRA_FAIL"] + totals["ABORT"], num=True)
            + _td(totals["SKIP"], num=True) + _td(totals["FLAKY"], num=True)
            + _td("a blocking test failed" if run.blocking_failed else "blocking tests passed")
            + "</tr>")
    runs_html = ('<section id="runs"><h2>Runs</h2>' + _table(
        ["Run", "Started", "Directory", ("Tests", "num"), ("Passed", "num"), ("Failed", "num"),
         ("Skipped", "num"), ("Flaky", "num"), "Blocking"], rows, cls="sortable",
        table_id="runs-table") + "</section>")

    ready_rows = []
    for env in report.environments:
        state = ("already blocking" if env.ready is None
                 else "READY to be made blocking" if env.ready else "not ready")
        ready_rows.append("<tr>" + _td(env.environment)
                          + _td("blocking" if env.blocking else "FYI")
                          + _td(env.runs_seen, num=True) + _td(state) + _td(env.reason) + "</tr>")
    ready = report.ready
    readiness = (
        f'<section id="readiness"><h2>FYI environments: ready to block?</h2>'
        f"<p>An FYI environment is ready after passing each of its last {report.last} runs. "
        f"Ready now: <b>{esc(', '.join(ready) if ready else 'none')}</b>.</p>"
        + _table(["Environment", "Kind", ("Runs", "num"), "Verdict", "Why"], ready_rows,
                 cls="sortable", table_id="readiness-table") + "</section>")

    statuses = _run_statuses(runs)
    env_parts = ['<section id="trends"><h2>Per environment: trends and pass rates</h2>']
    for n, env in enumerate(report.environments):
        env_parts.append(
            f'<div class="env-trend" id="env-{n}"><h3>{esc(env.environment)} '
            f'<span class="muted">({"blocking" if env.blocking else "FYI"}, seen in '
            f"{env.runs_seen} runs)</span></h3>"
            + svg_plot(env.boot, runs, title=f"{env.environment}: boot to shell", unit="s")
            + svg_plot(env.vmm_cpu, runs, title=f"{env.environment}: VMM CPU during the block "
                       "test", unit="s"))
        rows = []
        for t in env.tests:
            rate = t.pass_rate
            history = statuses.get((env.environment, t.test), {})
            strip = "".join(
                f'<span class="v-{esc(history[i]) if i in history else "none"}" '
                f'title="run {i}: {esc(history.get(i, "not run"))}">'
                f'{esc(STATUS_LETTER.get(history[i], "?")) if i in history else "&middot;"}</span>'
                for i in range(len(runs)))
            rows.append(
                "<tr>" + _td(t.test)
                + _td("-" if rate is None else f"{rate * 100:.0f}% ({t.passed}/"
                      f"{t.passed + t.failed})", num=True, sort=-1 if rate is None else rate)
                + _td(t.flaky, num=True) + _td(t.failed, num=True) + _td(t.skipped, num=True)
                + _td(t.runs_seen, num=True) + f"<td>{_status(t.last_status)}</td>"
                + f'<td class="strip">{strip}</td>' + _td(t.last_message[:200]) + "</tr>")
        env_parts.append(_table(
            ["Test", ("Pass rate", "num"), ("Flaky", "num"), ("Failed", "num"),
             ("Skipped", "num"), ("Runs", "num"), "Last", "Each run, oldest first",
             "Last message"], rows, cls="sortable") + "</div>")
    env_parts.append("</section>")

    latest = runs[-1].directory.name if runs else ""
    body = (
        f'<header id="summary"><h1>{esc(title)}</h1><p class="muted">{len(runs)} runs from '
        f"{esc(rfc3339(runs[0].started)) if runs else '-'} to "
        f"{esc(rfc3339(runs[-1].started)) if runs else '-'}; generated "
        f"{esc(rfc3339(dt.datetime.now(dt.UTC)))}</p></header><main>"
        + runs_html + readiness + "".join(env_parts)
        + diff_html(diffs, heading=f"Differential of the latest run ({latest})")
        + "</main>")
    nav = [("runs", "Runs"), ("readiness", "Ready to block?"), ("trends", "Trends"),
           ("differential", "Differential")]
    return page(title, body, nav)


def write_report(dirs: Sequence[Path], out: Path, *, last: int = DEFAULT_LAST) -> Path:
    """`harness report`: index.html in `out`, plus run-N.html per run when there are several.

    One run: index.html is its page. Several: index.html is the many-runs view and each
    run has its own page. Links to the runs' files are relative to `out`.
    """
    runs = load_runs(dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def view(loaded: LoadedRun) -> RunView:
        rel = Path(os.path.relpath(loaded.directory.resolve(), out.resolve())).as_posix()
        return RunView(loaded.run, loaded.directory.name, "" if rel == "." else rel + "/")

    def run_diffs(loaded: LoadedRun) -> list[EnvDiff]:
        label = loaded.directory.name
        return diff_runs(loaded.run, loaded.run, left_label=label, right_label=label)

    index = out / INDEX_FILE
    if len(runs) == 1:
        atomic_write(index, render_run(view(runs[0]), run_diffs(runs[0])).encode("utf-8"))
        return index
    pages = [f"run-{i}.html" for i in range(len(runs))]
    for loaded, name in zip(runs, pages, strict=True):
        atomic_write(out / name, render_run(view(loaded), run_diffs(loaded),
                                            back=INDEX_FILE).encode("utf-8"))
    report = analyze(runs, last)
    html_text = render_index(runs, report, pages, run_diffs(runs[-1]),
                             f"harness: {len(runs)} runs")
    atomic_write(index, html_text.encode("utf-8"))
    return index
