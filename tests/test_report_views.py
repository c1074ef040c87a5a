"""The views of results, without guests: the differential, the HTML page, the terminal and
CI outputs, JUnit's attachments. Results are built in memory; their files are real files.

tests/test_dashboard.py checks the same views on real runs in a real browser.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import html5lib
import pytest
import xmlschema

from harness import cli
from harness.errors import ConfigError
from harness.report import junit_string, write_junit, write_summary
from harness.report.diff import Side as DiffSide
from harness.report.diff import compare, default_pairs, diff_runs, diff_text, same_devices
from harness.report.html import CSP, JS, esc, write_report, write_run_report
from harness.report.junit import file_attributes_wanted, source_file
from harness.report.terminal import (
    TerminalReport,
    ci_outputs,
    colour_wanted,
    github_annotations,
    step_summary,
)
from harness.results import Attempt, Case, RunResult, Status
from harness.results import TestResult as TResult
from harness.stability import analyze, load_runs, vmm_cpu_samples
from harness.textsafe import decode_console

SCHEMA = Path(__file__).parent / "schemas" / "junit-10.xsd"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
HOSTILE = ("\x1b[2J\x1b]0;pwned\x07<script>alert(1)</script> "
           + decode_console(b"\xff\xfe\xc0") + " \u202egnp.exe lone\ud800 \ufffe"
           + "\n[[ATTACHMENT|/etc/passwd]]\n::error::forged")


def result(env: str, test: str, statuses: list[Status], *, engine: str = "", devices: str = "full",
           message: str = "", props: dict[str, str] | None = None, cases: list[Case] | None = None,
           blocking: bool = True, serial: str = "") -> TResult:
    engine = engine or env.split("-")[0]
    attempts = [Attempt(status=s, message=message if s != Status.PASS else "",
                        details=message if s not in (Status.PASS, Status.SKIP) else "",
                        start_time=T0, duration_s=2.0 + i, properties=dict(props or {}),
                        cases=list(cases or []) if i == len(statuses) - 1 else [],
                        serial_tail=serial,
                        artifacts=({"serial.log": f"{env}/{test}/serial.log"} if i == 0 else
                                   {"serial.log": f"{env}/{test}/attempt-{i + 1}/serial.log"}))
                for i, s in enumerate(statuses)]
    return TResult(test=test, suite=test.split(".")[0], environment=env, engine=engine,
                   arch="x86_64", blocking=blocking, attempts=attempts, accel="tcg",
                   kernel="6.1.0", tags={"devices": devices}, folder=f"{env}/{test}",
                   repro=f"harness run --env {env} -k {test}",
                   source=str(Path(__file__).resolve().parent.parent / "suites" /
                              f"{test.split('.')[0]}.py"))


def make_files(run: RunResult) -> None:
    for r in run.results:
        for a in r.attempts:
            for rel in a.artifacts.values():
                path = run.out_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("serial log\n")
                (path.parent / "vmm-command.txt").write_text("qemu-system-x86_64 ...\n")


def sample_run(out: Path) -> RunResult:
    enum_cases = [Case("virtio-net", Status.PASS, suite="present"),
                  Case("rtc", Status.PASS, suite="present")]
    run = RunResult(results=[
        result("qemu-x64", "device_enumeration.devices", [Status.PASS],
               props={"devices_seen": "rtc,serial,virtio-net", "count.serial": "1/1",
                      "boot_s": "4.0"}, cases=enum_cases),
        result("crosvm-x64", "device_enumeration.devices", [Status.FAIL, Status.FAIL],
               devices="full-tap", blocking=False,
               message="1 of 2 cases failed: virtio-net",
               props={"devices_seen": "rtc,serial", "count.serial": "4/1", "boot_s": "6.0"},
               cases=[Case("virtio-net", Status.FAIL, suite="present",
                           message="virtio-net is expected but the guest does not show it"),
                      Case("rtc", Status.PASS, suite="present")]),
        result("qemu-x64", "peripherals.block", [Status.PASS],
               props={"blk_write_mb_s": "100.0", "vmm_cpu_s_write": "1.0",
                      "vmm_cpu_s_read": "0.5", "boot_s": "5.0"}),
        result("crosvm-x64", "peripherals.block", [Status.FAIL, Status.PASS], devices="full-tap",
               blocking=False, message="first try failed",
               props={"blk_write_mb_s": "50.0", "vmm_cpu_s_write": "2.0", "boot_s": "7.0"}),
        result("qemu-x64", "peripherals.network", [Status.PASS]),
        result("crosvm-x64", "peripherals.network", [Status.SKIP], devices="full-tap",
               blocking=False, message="virtio-net on crosvm needs a TAP device"),
        result("qemu-x64", "core.zircon", [Status.SKIP], message="needs the zircon profile"),
        result("crosvm-x64", "core.zircon", [Status.SKIP], devices="full-tap", blocking=False,
               message="needs the zircon profile"),
        result("qemu-x64", "nasty<script>", [Status.FAIL], message=HOSTILE, serial=HOSTILE),
    ], out_dir=out, started=T0, duration_s=30.0)
    make_files(run)
    return run


# -- the differential ---------------------------------------------------------------------------


def test_pairs_crosvm_with_the_qemu_environment_of_its_arch_and_device_set(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    assert default_pairs(run, run) == [("crosvm-x64", "qemu-x64")]
    assert same_devices("full-tap", "full") == 1 and same_devices("full", "full") == 2
    assert same_devices("minimal", "full") == 0
    other = RunResult([result("qemu-arm64", "smoke.x", [Status.PASS])], tmp_path)
    other.results[0].arch = "arm64"
    assert default_pairs(run, other) == [], "no crosvm pair; different names: nothing"
    again = RunResult([result("qemu-x64", "smoke.x", [Status.PASS])], tmp_path)
    assert default_pairs(RunResult([result("qemu-x64", "smoke.x", [Status.PASS])], tmp_path),
                         again) == [("qemu-x64", "qemu-x64")]


def test_differential_verdicts_cases_devices_and_metrics(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    [d] = diff_runs(run, run, left_label="r", right_label="r")
    assert d.differs
    assert [(t.test, t.left, t.right) for t in d.tests] == [
        ("device_enumeration.devices", "FAIL", "PASS")]
    # A flaky pass is a pass; a skip is not a verdict.
    assert "peripherals.block" not in {t.test for t in d.tests}
    assert [t.test for t in d.one_sided] == ["peripherals.network", "nasty<script>"]
    assert [(c.case, c.left, c.right) for c in d.cases] == [("present.virtio-net", "FAIL", "PASS")]
    assert [(x.kind, x.left, x.right, x.only) for x in d.devices] == [
        ("serial", 4, 1, ""), ("virtio-net", 0, 1, "right")]
    metrics = {m.name: m for m in d.metrics}
    assert metrics["blk_write_mb_s"].ratio == pytest.approx(0.5)
    assert metrics["boot_s"].left == pytest.approx(6.5) and metrics["boot_s"].right == 4.5
    assert metrics["vmm_cpu_s_read"].left is None and metrics["vmm_cpu_s_read"].ratio is None
    text = diff_text([d])
    assert "device virtio-net: only qemu-x64 presents it" in text
    assert text.rstrip().endswith("verdict: DIFFERS on crosvm-x64 vs qemu-x64")
    assert json.loads(json.dumps(d.to_json()))["differs"] is True


def test_the_same_verdicts_do_not_differ(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    left = DiffSide(run, "qemu-x64", "a")
    d = compare(left, left)
    assert not d.differs and not d.devices and d.compared == 4


def test_diff_rejects_unknown_environments(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    with pytest.raises(ConfigError, match="no environment 'nope'"):
        diff_runs(run, run, left_label="a", right_label="a", envs=("qemu-x64", "nope"))
    with pytest.raises(ConfigError, match="give two environments"):
        diff_runs(run, run, left_label="a", right_label="a", envs=("qemu-x64",))


def test_diff_command_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = sample_run(tmp_path / "run")
    write_summary(run, run.out_dir / "summary.json")
    assert cli.main(["diff", str(run.out_dir)]) == 1
    assert "DIFFERS" in capsys.readouterr().out
    assert cli.main(["diff", str(run.out_dir), "--env", "qemu-x64", "--env", "qemu-x64"]) == 0
    assert cli.main(["diff", str(run.out_dir), "--env", "qemu-x64", "--env", "x"]) == 2
    assert cli.main(["diff", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


# -- HTML ---------------------------------------------------------------------------------------


def test_escaping_is_inert_and_valid() -> None:
    shown = esc(HOSTILE)
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert "\x1b" not in shown and "\\x1b[2J" in shown
    assert "\u202e" not in shown and "\\u202e" in shown
    assert "\ud800" not in shown and "\ufffe" not in shown
    shown.encode("utf-8")  # no lone surrogate left


def test_run_page_validates_and_shows_everything(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    page = write_run_report(run).read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True).parse(page)
    assert len(re.findall(r"<script\b", page)) == 1
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "[[ATTACHMENT|/etc/passwd]]" in page, "shown, as text: HTML has no attachments"
    # CSP allows exactly the inlined script, by hash.
    assert "script-src 'sha256-" in CSP and JS in page and esc(CSP) in page
    # Failures and flakes first, with their message, files that exist and the repro line.
    failures = page[page.index('id="failures"'):page.index('id="environments"')]
    assert "1 of 2 cases failed: virtio-net" in failures
    assert "failed, then passed on attempt 2: first try failed" in failures
    assert 'href="crosvm-x64/device_enumeration.devices/attempt-2/serial.log"' in failures
    assert 'href="crosvm-x64/device_enumeration.devices/attempt-2/vmm-command.txt"' in failures
    assert "vmm-stderr.log" not in failures, "a file that does not exist is not linked"
    assert "harness run --env crosvm-x64 -k device_enumeration.devices" in failures
    skipped = page[page.index('id="skipped"'):page.index('id="details"')]
    assert "<b>2</b> &times; needs the zircon profile" in skipped
    diff = page[page.index('id="differential"'):page.index('id="tests"')]
    assert "only qemu-x64 presents it" in diff and "0.50x" in diff


def test_report_of_many_runs_plots_each_run(tmp_path: Path) -> None:
    dirs = []
    for i, boot in enumerate(("4.0", "5.0", "6.0")):
        out = tmp_path / f"run{i}"
        run = sample_run(out)
        run.started = T0 + dt.timedelta(hours=i)
        for r in run.results:
            for a in r.attempts:
                if "boot_s" in a.properties:
                    a.properties["boot_s"] = boot
        write_summary(run, out / "summary.json")
        dirs.append(out)
    index = write_report(dirs, tmp_path / "report")
    page = index.read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    for name in ("run-0.html", "run-1.html", "run-2.html"):
        sub = (tmp_path / "report" / name).read_text()
        html5lib.HTMLParser(strict=True).parse(sub)
        assert f'href="../run{name[4]}/crosvm-x64/' in sub, "links lead back to the run's files"
    plots = re.findall(r"<svg.*?</svg>", page)
    assert len(plots) == 4  # boot and VMM CPU for each of the two environments
    assert all(len(re.findall(r'<circle class="pt"', p)) == 3 for p in plots)
    assert 'data-value="6.000"' in plots[0]
    assert "seen in 3 of the 5 runs needed" in page


def test_report_command_errors_are_clear(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err


# -- the terminal and CI ------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert colour_wanted(_Tty(), {})
    assert not colour_wanted(io.StringIO(), {})
    assert not colour_wanted(_Tty(), {"NO_COLOR": "1"})
    assert colour_wanted(_Tty(), {"NO_COLOR": ""}), "an empty NO_COLOR does not count"
    assert not colour_wanted(_Tty(), {"TERM": "dumb"})


def test_progress_and_closing_report(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    plain = TerminalReport(colour=False)
    by = {r.key: r for r in run.results}
    assert plain.progress(by["crosvm-x64/peripherals.network"], 1, 9) is None
    line = plain.progress(by["crosvm-x64/peripherals.block"], 2, 9)
    assert line is not None and "FLAKY" in line and "\x1b" not in line
    hostile = plain.progress(by["qemu-x64/nasty<script>"], 3, 9)
    assert hostile is not None and "\x1b" not in hostile and "\n" not in hostile
    text = plain.closing(run, files=["junit: j.xml"])
    lines = text.splitlines()
    assert lines[0] == "skipped 3, by reason:"
    assert re.match(r"\s+2\s+needs the zircon profile \(crosvm-x64, qemu-x64\)", lines[1])
    assert lines[-1].startswith("harness: 4 PASS, 2 FAIL, 3 SKIP, 1 FLAKY in 30.0 s; junit:")
    at = lines.index("failed 2:")
    assert "repro: harness run --env crosvm-x64" in "\n".join(lines[at:])
    assert "\x1b" not in text
    coloured = TerminalReport(colour=True).progress(by["qemu-x64/peripherals.network"], 1, 9)
    assert coloured is not None and "\x1b[32mPASS" in coloured


def test_github_annotations_cannot_be_forged_by_guest_text(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    run = sample_run(tmp_path)
    root = str(Path(__file__).resolve().parent.parent)
    lines = github_annotations(run, {"GITHUB_WORKSPACE": root})
    assert len(lines) == 3  # two failures and a flake
    nasty = next(ln for ln in lines if "nasty" in ln)
    assert nasty.startswith("::error file=suites/nasty<script>.py,title=qemu-x64 nasty")
    assert "%0A" in nasty and "\n" not in nasty and "\x1b" not in nasty
    fyi = next(ln for ln in lines if "device_enumeration" in ln)
    assert fyi.startswith("::warning ") and "%3A FAIL::" in fyi
    summary_file = tmp_path / "summary.md"
    out = io.StringIO()
    ci_outputs(run, [], environ={"GITHUB_ACTIONS": "true",
                                 "GITHUB_STEP_SUMMARY": str(summary_file)}, stdout=out)
    assert out.getvalue().count("\n") == 3
    md = summary_file.read_text()
    assert "| 2 | needs the zircon profile |" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    nothing = io.StringIO()
    ci_outputs(run, [], environ={}, stdout=nothing)
    assert nothing.getvalue() == "", "nothing for GitHub outside GitHub Actions"
    assert step_summary(run).count("#### Failures") == 1


# -- JUnit: attachments and the `file` attribute ----------------------------------------------


def test_junit_attachment_lines_and_file_attribute(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = sample_run(Path("out"))
    make_files(run)
    monkeypatch.delenv("GITLAB_CI", raising=False)
    monkeypatch.delenv("HARNESS_JUNIT_FILE", raising=False)
    write_junit(run, run.out_dir / "junit.xml")
    text = (run.out_dir / "junit.xml").read_text()
    schema = xmlschema.XMLSchema(str(SCHEMA))
    schema.validate(str(run.out_dir / "junit.xml"))
    outs = "\n".join(e.text or "" for e in ET.fromstring(text.encode()).iter("system-out"))
    attached = re.findall(r"^\[\[ATTACHMENT\|(.+)\]\]$", outs, re.MULTILINE)
    assert "out/crosvm-x64/device_enumeration.devices/attempt-2/serial.log" in attached
    assert "out/crosvm-x64/device_enumeration.devices/serial.log" in attached  # the rerun
    assert all(Path(p).is_file() for p in attached), [p for p in attached if not Path(p).is_file()]
    assert "/etc/passwd" not in attached and "[[ATTACHMENT |/etc/passwd]]" in text
    assert " file=" not in text
    # GitLab: `file` relative to the project, which junit-10.xsd does not allow.
    monkeypatch.setenv("CI_PROJECT_DIR", str(Path(__file__).resolve().parent.parent))
    assert file_attributes_wanted({"GITLAB_CI": "true"})
    assert not file_attributes_wanted({"GITLAB_CI": "true", "HARNESS_JUNIT_FILE": "0"})
    assert file_attributes_wanted({"HARNESS_JUNIT_FILE": "1"})
    assert not file_attributes_wanted({})
    gitlab = junit_string(run, file_attributes=True)
    files = {tc.get("file") for tc in ET.fromstring(gitlab.encode()).iter("testcase")}
    assert files == {"suites/device_enumeration.py", "suites/peripherals.py",
                     "suites/core.py", "suites/nasty<script>.py"}
    assert not schema.is_valid(gitlab)
    assert source_file(TResult("t", "s", "e", "qemu", "x86_64", True)) == ""


def test_vmm_cpu_trend_across_runs(tmp_path: Path) -> None:
    dirs = []
    for i in range(2):
        run = sample_run(tmp_path / f"r{i}")
        run.started = T0 + dt.timedelta(hours=i)
        write_summary(run, run.out_dir / "summary.json")
        dirs.append(run.out_dir)
    report = analyze(load_runs(dirs), 2)
    env = {e.environment: e for e in report.environments}
    assert env["qemu-x64"].vmm_cpu is not None
    assert env["qemu-x64"].vmm_cpu.points == ((0, 1.5), (1, 1.5))
    assert env["crosvm-x64"].vmm_cpu is not None and env["crosvm-x64"].vmm_cpu.last == 2.0
    assert vmm_cpu_samples(result("q", "t", [Status.PASS], props={"x": "1"})) == []


def test_a_report_written_while_the_run_goes_on(tmp_path: Path) -> None:
    """The runner rewrites report.html after each test: tests not yet run are PENDING."""
    run = sample_run(tmp_path)
    for r in run.results:
        if r.environment == "crosvm-x64":
            r.attempts.clear()
    page = write_run_report(run).read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    assert "4 tests have not finished yet" in page
    assert page.count('data-status="PENDING"') == 4
    [d] = diff_runs(run, run, left_label="r", right_label="r")
    assert d.compared == 0 and not d.differs
    failures = page[page.index('id="failures"'):page.index('id="environments"')]
    assert "crosvm-x64" not in failures


def test_merge_writes_the_merged_report(tmp_path: Path) -> None:
    run = sample_run(tmp_path / "shard0")
    write_summary(run, run.out_dir / "summary.json")
    assert cli.main(["merge", str(run.out_dir), "--out", str(tmp_path / "merged")]) == 1
    page = (tmp_path / "merged" / "report.html").read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    assert 'href="crosvm-x64/device_enumeration.devices/attempt-2/serial.log"' in page
