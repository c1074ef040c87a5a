"""The reporters: JUnit validity under junit-10.xsd, summary.json round trips, merging shards."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from harness.errors import ConfigError
from harness.report import (
    atomic_write,
    junit_string,
    load_summary,
    merge_runs,
    summary_dict,
    write_junit,
    write_summary,
)
from harness.report import junit as junit_mod
from harness.report.summary import summary_string
from harness.results import Attempt, Case, RunResult, Status
from harness.results import TestResult as TResult  # not "Test*": pytest would collect it
from harness.textsafe import (
    decode_console,
    head_tail,
    normalize_newlines,
    terminal_safe,
    xml_safe,
)

SCHEMA_PATH = Path(__file__).parent / "schemas" / "junit-10.xsd"
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
NASTY = (
    "esc\x1b[6n nul\x00 bel\x07 "
    + decode_console(b"bad \xff\xfe utf8 \xe2\x82")
    + " lone\ud800"
)
BIG_HEAD = "BOOT-BANNER-AT-THE-START\n"
BIG_TAIL = "LAST-WORDS-BEFORE-THE-END\n"


@pytest.fixture(scope="session")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA_PATH))


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def result(
    test: str,
    statuses: list[Status],
    *,
    env: str = "qemu-x86_64",
    suite: str = "core",
    blocking: bool = True,
    **attempt_fields: object,
) -> TResult:
    attempts = [
        Attempt(
            status=s,
            message=f"{test} attempt {i} {s.value}" if s != Status.PASS else "",
            details=f"details of attempt {i}" if not s.ok else "",
            start_time=at(10 * i),
            duration_s=1.5 + i,
            properties={"boot_time_s": f"{1.25 + i}", "vmm_cpu_s": "0.5"},
            serial_tail=f"console of {test} attempt {i}\r\r\n$ ",
            artifacts={"serial.log": f"{env}/{test}/attempt-{i}/serial.log"},
            **attempt_fields,  # type: ignore[arg-type]
        )
        for i, s in enumerate(statuses, 1)
    ]
    engine, arch = env.split("-", 1)
    return TResult(
        test=test,
        suite=suite,
        environment=env,
        engine=engine,
        arch=arch,
        blocking=blocking,
        attempts=attempts,
        label=f"//src/tests:{test}",
        accel="tcg",
        kernel="debian-6.1",
        tags={"owner": "virt"},
        repro=f"harness run --env {env} --test {test}",
        folder=f"{env}/{test}",
    )


def every_kind(out_dir: Path) -> RunResult:
    """A run holding every status, retries, cases, metrics and hostile text."""
    with_cases = result("core-tests", [Status.FAIL])
    with_cases.final.cases = [
        Case("Create", Status.PASS, "VmoTestCase", 0.004, format="GoogleTest"),
        Case("Resize", Status.FAIL, "VmoTestCase", 0.002,
             "path/file.cc:123: Failure: Expected size\nmore lines", "GoogleTest"),
        Case("Skip", Status.SKIP, "VmoTestCase", 0.0, "not supported", "GoogleTest"),
        Case("timer", Status.ABORT, "", 0.5, "hung", "Zircon utest"),
        Case("Create", Status.PASS, "VmoTestCase", 0.001, format="GoogleTest"),  # duplicate
    ]
    nasty = result("nasty-output", [Status.FAIL], env="crosvm-x86_64")
    nasty.final.message = "guest said " + NASTY
    nasty.final.details = NASTY * 3
    nasty.final.serial_tail = NASTY
    nasty.final.properties["weird\x1bkey"] = "v\x00"
    big = result("big-log", [Status.PASS], env="crosvm-x86_64")
    big.final.serial_tail = BIG_HEAD + "x" * (5 * 1024 * 1024) + "\n" + BIG_TAIL
    never = result("never-ran", [], suite="rs")
    # What the crash scan adds: a synthetic test, named as tefmocheck names it.
    scan = result("string_in_log/serial.log/ZIRCON KERNEL PANIC", [Status.FAIL],
                  env="crosvm-x86_64")
    scan.testing_failure_mode = True
    scan.folder = "crosvm-x86_64/scan"
    scan.final.artifacts = {}
    scan.final.cases = [Case("panic", Status.FAIL, "scan", 0.0, "ZIRCON KERNEL PANIC at x",
                             "tefmocheck", tags={"z": "last", "expectation": "failure"})]
    # Only ever read from Fuchsia's own files, but a merged run can hold one.
    exonerated = result("exonerated", [Status.EXONERATED], env="crosvm-x86_64")
    return RunResult(
        results=[
            result("pass", [Status.PASS]),
            with_cases,
            result("infra", [Status.INFRA_FAIL]),
            result("abort", [Status.ABORT]),
            result("skip", [Status.SKIP], blocking=False),
            result("flaky", [Status.FAIL, Status.PASS]),
            result("flaky-infra", [Status.INFRA_FAIL, Status.PASS]),
            result("always-fails", [Status.FAIL, Status.FAIL, Status.FAIL]),
            result("pass-then-fail", [Status.PASS, Status.FAIL]),
            never,
            nasty,
            big,
            scan,
            exonerated,
        ],
        out_dir=out_dir,
        interrupted=True,
        started=T0,
        duration_s=42.125,
    )


def find_case(root: ET.Element, classname: str, name: str) -> ET.Element:
    found = [
        tc for tc in root.iter("testcase")
        if tc.get("classname") == classname and tc.get("name") == name
    ]
    assert len(found) == 1, f"{classname} {name}: {len(found)} testcases"
    return found[0]


# ---------------------------------------------------------------- textsafe


def xml_char(cp: int) -> bool:
    """XML 1.0's Char production, written independently of textsafe."""
    return (
        cp in (0x9, 0xA, 0xD)
        or 0x20 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def test_xml_safe_escapes_every_forbidden_code_point_and_nothing_printable() -> None:
    everything = "".join(chr(cp) for cp in range(0x110000))
    safe = xml_safe(everything)
    assert all(xml_char(ord(ch)) for ch in safe)
    safe.encode("utf-8")  # no lone surrogates left
    for cp in (0x00, 0x07, 0x1B, 0x0B, 0xD800, 0xDFFF, 0xFFFE, 0x10FFFF, 0x85):
        assert xml_safe(chr(cp)) != chr(cp)
    assert xml_safe("\x1b") == "\\x1b"
    assert xml_safe("\ud800") == "\\ud800"
    assert xml_safe("\U0010ffff") == "\\U0010ffff"
    plain = "tab\tnl\ncr\r é ü 漢字 🙂 <&> \\path"
    assert xml_safe(plain) == plain
    element = ET.Element("a")
    element.text = xml_safe(everything[:0x3000])
    assert ET.fromstring(ET.tostring(element)).text == element.text.replace("\r", "\n")


def test_terminal_safe_neutralises_controls_keeps_lines() -> None:
    text = "ok\tcol\r\r\nnext \x1b[2J\x1bc\x9b31m bell\x07 back\x08 cr\rover \u202eevil\ud800"
    safe = terminal_safe(text)
    assert safe.startswith("ok\tcol\nnext \\x1b[2J\\x1bc\\x9b31m bell\\x07 back\\x08 cr\\x0dover")
    assert "\\u202e" in safe and "\\ud800" in safe
    controls = [c for c in safe if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
    assert not controls
    safe.encode("utf-8")


def test_decode_console_never_raises() -> None:
    assert decode_console(b"caf\xc3\xa9 \xff split \xe2\x82") == "café \ufffd split \ufffd"
    assert decode_console(bytearray(b"\x1b[6n")) == "\x1b[6n"
    assert normalize_newlines("a\r\r\nb\r\nc\rd\n") == "a\nb\nc\rd\n"


def test_head_tail_bounds_bytes_keeps_both_ends() -> None:
    text = "HEAD" + "é" * 100_000 + "TAIL"
    cut = head_tail(text, 1000, 300, where="serial.log")
    assert cut.startswith("HEAD") and cut.endswith("TAIL")
    assert "bytes omitted; the whole log is in serial.log" in cut
    body = cut.encode("utf-8")
    assert len(body) <= 1000 + 100
    assert "\ufffd" not in cut  # no character split by the cut
    assert head_tail("short", 1000, 300) == "short"
    assert head_tail("a\ud800b", 1000, 300) == "a\\ud800b"


# ---------------------------------------------------------------- JUnit


def test_schema_rejects_what_junit_xml_writes_unpatched(schema: xmlschema.XMLSchema) -> None:
    """The validator is strict enough to catch both known junit-xml 1.9 problems."""
    import junit_xml

    raw = junit_xml.to_xml_report_string(
        [junit_xml.TestSuite("s", [junit_xml.TestCase("t", elapsed_sec=0.1),
                                   junit_xml.TestCase("u", elapsed_sec=0.2)])],
        prettyprint=False,
    )
    assert 'disabled="0"' in raw
    assert not schema.is_valid(raw)
    assert schema.is_valid(raw.replace(' disabled="0"', "").replace("0.30000000000000004", "0.3"))


def test_junit_validates_and_maps_every_status(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    run = every_kind(tmp_path)
    text = junit_string(run)
    schema.validate(text)
    assert "disabled" not in text
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["qemu-x86_64", "crosvm-x86_64"]

    props = {
        p.get("name"): p.get("value") for p in suites["qemu-x86_64"].iter("property")
    }
    assert props["environment"] == "qemu-x86_64"
    assert props["engine"] == "qemu"
    assert props["arch"] == "x86_64"
    assert props["accel"] == "tcg"
    assert props["kernel"] == "debian-6.1"
    assert props["blocking"] == "true,false"
    assert props["interrupted"] == "true"
    # Per-attempt metrics: the final attempt's under <test>., earlier ones numbered.
    assert props["pass.boot_time_s"] == "2.25"
    assert props["always-fails.attempt1.boot_time_s"] == "2.25"
    assert props["always-fails.attempt2.boot_time_s"] == "3.25"
    assert props["always-fails.boot_time_s"] == "4.25"
    assert props["flaky.flaky"] == "true"

    ok = find_case(root, "qemu-x86_64.core", "pass")
    assert [c.tag for c in ok] == ["system-out"]
    assert ok.get("time") == "2.500"
    out = ok.findtext("system-out") or ""
    assert f"serial log: {tmp_path}/qemu-x86_64/pass/attempt-1/serial.log" in out
    assert "repro: harness run --env qemu-x86_64 --test pass" in out
    assert "property: boot_time_s=2.25" in out
    assert "console of pass attempt 1\n$ " in out

    fail = find_case(root, "qemu-x86_64.core", "core-tests").find("failure")
    assert fail is not None and fail.get("type") == "FAIL"
    assert fail.get("message") == "core-tests attempt 1 FAIL"
    assert fail.text == "details of attempt 1"

    for name, status in (("infra", "INFRA_FAIL"), ("abort", "ABORT")):
        err = find_case(root, "qemu-x86_64.core", name).find("error")
        assert err is not None and err.get("type") == status
        assert err.get("message") == f"{status}: {name} attempt 1 {status}"
    never = find_case(root, "qemu-x86_64.rs", "never-ran").find("error")
    assert never is not None and never.get("message") == "ABORT: no attempt ran"

    skipped = find_case(root, "qemu-x86_64.core", "skip").find("skipped")
    assert skipped is not None and skipped.get("message") == "skip attempt 1 SKIP"

    counts = suites["qemu-x86_64"].attrib
    # 10 tests + 5 cases; failures: core-tests, always-fails, pass-then-fail, case Resize;
    # errors: infra, abort, never-ran, case timer; skipped: skip, case Skip.
    assert (counts["tests"], counts["failures"], counts["errors"], counts["skipped"]) == (
        "15", "4", "4", "2")


def test_junit_cases_are_testcases(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    root = ET.fromstring(junit_string(every_kind(tmp_path)))
    cls = "qemu-x86_64.core.core-tests"
    assert find_case(root, cls, "VmoTestCase.Create").get("time") == "0.004"
    resize = find_case(root, cls, "VmoTestCase.Resize").find("failure")
    assert resize is not None
    assert resize.get("message") == "path/file.cc:123: Failure: Expected size"
    assert resize.text == "path/file.cc:123: Failure: Expected size\nmore lines"
    skip = find_case(root, cls, "VmoTestCase.Skip").find("skipped")
    assert skip is not None and skip.get("message") == "not supported"
    timer = find_case(root, cls, "timer").find("error")
    assert timer is not None and timer.get("message") == "ABORT: hung"
    # A repeated case name stays visible instead of being dropped by GitLab.
    assert find_case(root, cls, "VmoTestCase.Create (2)").get("time") == "0.001"


def test_junit_flaky_and_reruns(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    root = ET.fromstring(junit_string(every_kind(tmp_path)))
    flaky = find_case(root, "qemu-x86_64.core", "flaky")
    assert [c.tag for c in flaky] == ["flakyFailure", "system-out"]
    ff = flaky.find("flakyFailure")
    assert ff is not None
    assert ff.get("type") == "FAIL" and ff.get("message") == "flaky attempt 1 FAIL"
    assert ff.findtext("stackTrace") == "details of attempt 1"
    rerun_out = ff.findtext("system-out") or ""
    assert "attempt: 1 of 2" in rerun_out and "property: boot_time_s=2.25" in rerun_out
    assert "flaky: failed before it passed" in (flaky.findtext("system-out") or "")

    infra_flaky = find_case(root, "qemu-x86_64.core", "flaky-infra")
    assert [c.tag for c in infra_flaky] == ["flakyError", "system-out"]

    always = find_case(root, "qemu-x86_64.core", "always-fails")
    assert [c.tag for c in always] == ["failure", "rerunFailure", "rerunFailure", "system-out"]
    assert always.find("failure").get("message") == "always-fails attempt 3 FAIL"  # type: ignore[union-attr]
    assert [r.get("message") for r in always.findall("rerunFailure")] == [
        "always-fails attempt 1 FAIL", "always-fails attempt 2 FAIL"]

    # An earlier pass is no rerun failure: only the final failure is reported.
    regressed = find_case(root, "qemu-x86_64.core", "pass-then-fail")
    assert [c.tag for c in regressed] == ["failure", "system-out"]


def test_junit_hostile_text_is_escaped_visibly(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    text = junit_string(every_kind(tmp_path))
    text.encode("utf-8")
    root = ET.fromstring(text)
    tc = find_case(root, "crosvm-x86_64.core", "nasty-output")
    out = tc.findtext("system-out") or ""
    expected = "esc\\x1b[6n nul\\x00 bel\\x07 bad \ufffd\ufffd utf8 \ufffd lone\\ud800"
    assert expected in out
    fail = tc.find("failure")
    assert fail is not None and fail.get("message") == "guest said " + expected
    assert fail.text == expected * 3
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["nasty-output.weird\\x1bkey"] == "v\\x00"
    assert not [ch for ch in text if not xml_char(ord(ch))]


def test_junit_bounds_a_huge_serial_log(tmp_path: Path) -> None:
    text = junit_string(every_kind(tmp_path))
    out = find_case(ET.fromstring(text), "crosvm-x86_64.core", "big-log").findtext("system-out")
    assert out is not None
    assert BIG_HEAD.strip() in out and BIG_TAIL.strip() in out
    assert re.search(r"\[\.\.\. \d+ bytes omitted; the whole log is in \S+serial\.log", out)
    assert len(out.encode()) <= junit_mod.SYSTEM_OUT_LIMIT + 1024
    assert len(text.encode()) < 200 * 1024


@pytest.mark.parametrize("estimate_overhead", [True, False])
def test_junit_stays_within_the_file_budget(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    schema: xmlschema.XMLSchema,
    estimate_overhead: bool,
) -> None:
    """Many tests with long logs, retries and cases: console text shrinks, results stay."""
    budget = 1024 * 1024
    monkeypatch.setattr(junit_mod, "FILE_BUDGET", budget)
    if not estimate_overhead:  # a wrong first estimate must be corrected by re-rendering
        monkeypatch.setattr(junit_mod, "_FIXED_PER_TEST", 0)
    results = []
    for i in range(60):
        r = result(f"t{i}", [Status.FAIL, Status.FAIL])
        for a in r.attempts:
            a.serial_tail = f"start {i}\n" + "y" * (200 * 1024) + f"\nend {i}"
            a.details = "d" * (64 * 1024)
            a.message = "m" * (8 * 1024)
        r.final.cases = [Case(f"c{j}", Status.PASS, "S", 0.001) for j in range(10)]
        results.append(r)
    text = junit_string(RunResult(results, tmp_path))
    assert len(text.encode()) <= budget
    root = ET.fromstring(text)
    assert len(list(root.iter("testcase"))) == 60 * 11
    assert len(list(root.iter("rerunFailure"))) == 60
    messages = [e.get("message") or "" for e in root.iter("failure")]
    assert all(len(m) <= junit_mod.MESSAGE_LIMIT + 100 for m in messages)
    out = find_case(root, "qemu-x86_64.core", "t59").findtext("system-out") or ""
    assert "start 59" in out and "end 59" in out
    schema.validate(text)


def test_empty_run_is_valid(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    text = junit_string(RunResult([], tmp_path))
    schema.validate(text)
    assert ET.fromstring(text).get("tests") == "0"


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_write_junit_is_atomic(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    run = every_kind(tmp_path)
    path = tmp_path / "reports" / "junit.xml"
    write_junit(run, path)
    assert path.read_text(encoding="utf-8") == junit_string(run)
    schema.validate(str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["junit.xml"]


def test_failed_write_keeps_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    atomic_write(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_summary(every_kind(tmp_path), path)
    assert path.read_bytes() == b"old"
    assert no_temp_files(tmp_path)


# ---------------------------------------------------------------- summary.json

# runtests.go's JSON names, in the order Go's encoder writes them (TestDetails embeds
# TestResult first). Optional: omitempty ones the harness may leave out.
TEST_FIELDS = ["output_files", "output_dir", "cases", "failure_reason", "name", "gn_label",
               "source_label", "result", "start_time", "duration_milliseconds",
               "is_testing_failure_mode", "affected", "tags", "metadata"]
TEST_OPTIONAL = {"failure_reason"}
CASE_FIELDS = ["display_name", "suite_name", "case_name", "status", "duration_nanos", "format",
               "failure_reason", "tags"]
CASE_OPTIONAL = {"failure_reason"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def by_name(doc: dict) -> dict[tuple[str, str], dict]:
    return {(t["name"], t["harness"]["environment"]): t for t in doc["tests"]}


def test_summary_entries_have_exactly_runtests_fields(tmp_path: Path) -> None:
    doc = summary_dict(every_kind(tmp_path))
    # TestSummary: `tests`, and `outputs` left out as omitempty does when empty.
    assert list(doc) == ["tests", "harness_run"]
    for t in doc["tests"]:
        keys = [k for k in t if k != "harness"]
        assert keys == [f for f in TEST_FIELDS if f in keys], keys
        assert set(TEST_FIELDS) - set(keys) <= TEST_OPTIONAL
        assert list(t)[-1] == "harness"
        for c in t["cases"]:
            ckeys = list(c)
            assert ckeys == [f for f in CASE_FIELDS if f in ckeys], ckeys
            assert set(CASE_FIELDS) - set(ckeys) <= CASE_OPTIONAL
    text = summary_string(every_kind(tmp_path))
    assert '"fail_reason"' not in text and '"outputs"' not in text


def test_summary_field_values(tmp_path: Path) -> None:
    run = every_kind(tmp_path)
    (tmp_path / "qemu-x86_64" / "pass").mkdir(parents=True)
    (tmp_path / "qemu-x86_64" / "pass" / "vmm-command.txt").write_text("qemu ...")
    doc = summary_dict(run)
    tests = by_name(doc)
    assert len(tests) == len(run.results)
    assert {t["result"] for t in doc["tests"]} == {s.value for s in Status}
    for t in doc["tests"]:
        assert RFC3339.match(t["start_time"]), t["start_time"]
        assert isinstance(t["duration_milliseconds"], int)
        assert t["source_label"] == "" and t["affected"] is False and t["metadata"] == {}
        assert all(not Path(f).is_absolute() for f in t["output_files"])
        for c in t["cases"]:
            assert isinstance(c["duration_nanos"], int)

    passed = tests[("pass", "qemu-x86_64")]
    assert passed["gn_label"] == "//src/tests:pass"
    assert passed["start_time"] == "2024-05-01T12:00:10.250000Z"
    assert passed["duration_milliseconds"] == 2500
    # testrunner's layout: output_dir is the test's folder, output_files relative to it.
    assert passed["output_dir"] == "qemu-x86_64/pass"
    assert passed["output_files"] == ["attempt-1/serial.log", "vmm-command.txt"]
    assert passed["tags"] == [{"key": k, "value": v} for k, v in [
        ("environment", "qemu-x86_64"), ("suite", "core"), ("engine", "qemu"),
        ("arch", "x86_64"), ("accel", "tcg"), ("kernel", "debian-6.1"), ("blocking", "true"),
        ("flaky", "false"), ("attempts", "1"), ("owner", "virt"), ("boot_time_s", "2.25"),
        ("vmm_cpu_s", "0.5")]]
    assert passed["is_testing_failure_mode"] is False
    assert "failure_reason" not in passed
    assert passed["cases"] == []

    flaky = tests[("flaky", "qemu-x86_64")]
    assert flaky["result"] == "PASS" and "failure_reason" not in flaky
    assert {g["key"]: g["value"] for g in flaky["tags"]}["flaky"] == "true"
    assert flaky["duration_milliseconds"] == 2500 + 3500
    assert flaky["output_files"] == ["attempt-1/serial.log", "attempt-2/serial.log"]
    assert len(flaky["harness"]["attempts"]) == 2

    # An infrastructure failure is a failure of the test, not tefmocheck's testing failure mode.
    infra = tests[("infra", "qemu-x86_64")]
    assert infra["is_testing_failure_mode"] is False
    assert infra["failure_reason"] == {"errors": [{"message": "infra attempt 1 INFRA_FAIL"}]}
    assert tests[("abort", "qemu-x86_64")]["failure_reason"] == {
        "errors": [{"message": "abort attempt 1 ABORT"}]}
    assert tests[("never-ran", "qemu-x86_64")]["failure_reason"] == {
        "errors": [{"message": "no attempt ran"}]}
    # The whole message, as runtests.FailureReasonFromMessage keeps it (trimmed, not cut).
    nasty = tests[("nasty-output", "crosvm-x86_64")]
    assert nasty["failure_reason"]["errors"][0]["message"] == ("guest said " + NASTY).strip()

    scan = tests[("string_in_log/serial.log/ZIRCON KERNEL PANIC", "crosvm-x86_64")]
    assert scan["is_testing_failure_mode"] is True
    assert (scan["output_dir"], scan["output_files"]) == ("crosvm-x86_64/scan", [])
    assert scan["cases"][0]["tags"] == [{"key": "expectation", "value": "failure"},
                                        {"key": "z", "value": "last"}]
    exonerated = tests[("exonerated", "crosvm-x86_64")]
    assert exonerated["result"] == "EXONERATED"
    assert exonerated["failure_reason"] == {
        "errors": [{"message": "exonerated attempt 1 EXONERATED"}]}

    cases = tests[("core-tests", "qemu-x86_64")]["cases"]
    assert cases[1] == {
        "display_name": "VmoTestCase.Resize", "suite_name": "VmoTestCase",
        "case_name": "Resize", "status": "FAIL", "duration_nanos": 2_000_000,
        "format": "GoogleTest",
        "failure_reason": {"errors": [
            {"message": "path/file.cc:123: Failure: Expected size\nmore lines"}]},
        "tags": [],
    }
    assert cases[0] == {
        "display_name": "VmoTestCase.Create", "suite_name": "VmoTestCase",
        "case_name": "Create", "status": "PASS", "duration_nanos": 4_000_000,
        "format": "GoogleTest", "tags": []}
    assert "failure_reason" not in cases[2]  # a skip, with a reason that is no failure
    assert cases[3]["display_name"] == "timer" and cases[3]["status"] == "ABORT"
    assert cases[3]["failure_reason"] == {"errors": [{"message": "hung"}]}

    meta = doc["harness_run"]
    assert meta["interrupted"] is True
    assert meta["started"] == "2024-05-01T12:00:00.250000Z"
    assert meta["duration_s"] == 42.125
    assert meta["totals"] == run.totals()
    assert meta["totals"]["FLAKY"] == 2


def test_summary_omits_what_go_omits(tmp_path: Path) -> None:
    """omitempty: no failure_reason without a message; output_dir empty without a folder."""
    silent = result("silent", [Status.FAIL])
    silent.final.message = "  \n "
    silent.final.cases = [Case("quiet", Status.FAIL, "S", 0.0, "", "GoogleTest")]
    loose = result("loose", [Status.PASS])
    loose.folder = ""
    loose.final.artifacts = {"serial.log": "elsewhere/serial.log",
                             "outside": "/somewhere/else.log"}
    inside = result("inside", [Status.PASS])
    inside.final.artifacts["shared"] = "qemu-x86_64/shared-guest/serial.log"
    doc = summary_dict(RunResult([silent, loose, inside], tmp_path, started=T0))
    tests = by_name(doc)
    entry = tests[("silent", "qemu-x86_64")]
    assert "failure_reason" not in entry and "failure_reason" not in entry["cases"][0]
    loose_entry = tests[("loose", "qemu-x86_64")]
    assert (loose_entry["output_dir"], loose_entry["output_files"]) == (
        "", ["elsewhere/serial.log"])  # the absolute path is not Fuchsia's to list
    inside_entry = tests[("inside", "qemu-x86_64")]
    # A file outside the test's folder: relative to output_dir, as filepath.Rel makes it.
    assert inside_entry["output_files"] == [
        "attempt-1/serial.log", "../shared-guest/serial.log"]


def test_summary_round_trips_exactly(tmp_path: Path) -> None:
    run = every_kind(tmp_path)
    path = tmp_path / "summary.json"
    write_summary(run, path)
    assert no_temp_files(tmp_path)
    path.read_bytes().decode("ascii")
    back = load_summary(path)
    assert back.out_dir == tmp_path
    assert back.results == run.results  # dataclass equality: every attempt, every field
    (nasty,) = [r for r in back.results if r.test == "nasty-output"]
    assert nasty.final.serial_tail == NASTY
    (scan,) = [r for r in back.results if r.testing_failure_mode]
    assert scan.final.cases[0].tags == {"z": "last", "expectation": "failure"}
    assert (back.interrupted, back.started, back.duration_s) == (True, T0, 42.125)
    assert [r.flaky for r in back.results] == [r.flaky for r in run.results]


def test_model_json_defaults_for_older_records() -> None:
    """Records written before testing_failure_mode and case tags existed still load."""
    case = Case.from_json({"name": "a", "status": "PASS"})
    assert case.tags == {}
    assert Case.from_json(Case("a", Status.FAIL, tags={"k": "v"}).to_json()).tags == {"k": "v"}
    old = result("t", [Status.PASS]).to_json()
    del old["testing_failure_mode"]
    assert TResult.from_json(old).testing_failure_mode is False


def test_exonerated_fails_no_run(tmp_path: Path) -> None:
    assert Status.EXONERATED.ok
    run = RunResult([result("e", [Status.EXONERATED])], tmp_path, started=T0)
    assert not run.blocking_failed
    assert run.totals()["EXONERATED"] == 1
    retried = result("r", [Status.EXONERATED, Status.PASS])
    assert not retried.flaky  # an exonerated attempt is not a failure to retry past


def test_junit_shows_exonerated_as_not_failed(tmp_path: Path,
                                               schema: xmlschema.XMLSchema) -> None:
    text = junit_string(every_kind(tmp_path))
    schema.validate(text)
    case = find_case(ET.fromstring(text), "crosvm-x86_64.core", "exonerated")
    assert [c.tag for c in case] == ["system-out"]
    out = case.findtext("system-out") or ""
    assert "result: EXONERATED" in out and "message: exonerated attempt 1 EXONERATED" in out
    scan = find_case(ET.fromstring(text), "crosvm-x86_64.core",
                     "string_in_log/serial.log/ZIRCON KERNEL PANIC")
    assert scan.find("failure") is not None


def test_load_plain_fuchsia_summary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"tests": [{
        "output_files": ["stdout-and-stderr.txt", "syslog.txt"], "output_dir": "core-tests/0",
        "cases": [{"display_name": "A.b", "suite_name": "A", "case_name": "b", "status": "FAIL",
                   "duration_nanos": 5_000_000, "format": "GoogleTest",
                   "failure_reason": {"errors": [{"message": "boom", "trace": "at x"}]},
                   "tags": [{"key": "expectation", "value": "failure"}]}],
        "failure_reason": {"errors": [{"message": "first"}, {"message": "second",
                                                             "trace": "stack"}],
                           "truncated_errors_count": 2},
        "name": "core-tests", "gn_label": "//zircon:core-tests", "source_label": "//zircon",
        "result": "FAIL", "data_sinks": {"llvm-profile": [{"name": "a", "file": "b"}]},
        "start_time": "2024-05-01T12:00:00.123456789Z", "duration_milliseconds": 1500,
        "is_testing_failure_mode": True, "affected": True,
        "tags": [{"key": "environment", "value": "crosvm-x64"}, {"key": "owner", "value": "z"}],
        "metadata": {"owners": ["a@b"], "component_id": 7},
    }], "outputs": {"x": "y"}}))
    run = load_summary(path)
    (r,) = run.results
    assert (r.test, r.environment, r.label, r.status, r.tags, r.testing_failure_mode) == (
        "core-tests", "crosvm-x64", "//zircon:core-tests", Status.FAIL, {"owner": "z"}, True)
    assert r.start_time == dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    assert run.started == r.start_time
    assert (r.final.duration_s, r.final.message, r.final.details) == (
        1.5, "first\nsecond", "stack")
    assert r.final.artifacts == {"stdout-and-stderr.txt": "core-tests/0/stdout-and-stderr.txt",
                                 "syslog.txt": "core-tests/0/syslog.txt"}
    assert r.final.cases == [Case("b", Status.FAIL, "A", 0.005, "boom\nat x", "GoogleTest",
                                  tags={"expectation": "failure"})]


def test_load_old_and_go_zero_fuchsia_summaries(tmp_path: Path) -> None:
    """Old spellings (`Pass`, `output_file`, a string failure_reason, case `fail_reason`),
    and what Go writes for empty values (`null` lists, the zero time, `"tests": null`)."""
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"tests": [
        {"name": "old", "result": "Fail", "output_file": "old/out.txt",
         "failure_reason": "it broke", "start_time": "2019-01-02T03:04:05Z",
         "cases": [{"display_name": "S.c", "status": "Fail", "fail_reason": "c broke"}]},
        {"name": "zero", "result": "SKIP", "output_files": None, "cases": None, "tags": None,
         "start_time": "0001-01-01T00:00:00Z", "duration_milliseconds": 0},
        {"name": "no-time", "result": "PASS"},
    ]}))
    old, zero, no_time = load_summary(path).results
    assert (old.status, old.final.message, old.final.artifacts) == (
        Status.FAIL, "it broke", {"old/out.txt": "old/out.txt"})
    assert old.final.cases == [Case("S.c", Status.FAIL, "", 0.0, "c broke")]
    assert (zero.status, zero.final.cases, zero.final.artifacts) == (Status.SKIP, [], {})
    assert zero.start_time == no_time.start_time == dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    # The run's start ignores Go's zero time; it is the earliest real one.
    assert load_summary(path).started == dt.datetime(2019, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    path.write_text('{"tests": null}')
    assert load_summary(path).results == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"outputs": {}}', "'tests'"),
        ('{"tests": {}}', "'tests'"),
        ('{"tests": [{"name": "x", "harness": {"test": "x"}}]}', r"tests\[0\] \(x\).*suite"),
        ('{"tests": [{"name": "y", "result": "MAYBE", "start_time": "2024-01-01T00:00:00Z"}]}',
         r"tests\[0\] \(y\): field 'result': malformed: unknown status 'MAYBE'"),
        ('{"tests": [{"result": "PASS"}]}', r"tests\[0\]: field 'name': missing"),
        ('{"tests": [{"name": "n"}]}', r"tests\[0\] \(n\): field 'result': missing"),
        ('{"tests": [{"name": "z", "result": "FAIL", "failure_reason": ["x"]}]}',
         r"\(z\): field '.failure_reason': malformed: expected an object"),
        ('{"tests": [{"name": "z", "result": "FAIL", '
         '"failure_reason": {"errors": [{"message": 3}]}}]}',
         r"field '.failure_reason.errors\[0\].message': malformed: expected str"),
        ('{"tests": [{"name": "d", "result": "PASS", "duration_milliseconds": "5"}]}',
         r"field 'duration_milliseconds': malformed: expected"),
        ('{"tests": [{"name": "t", "result": "PASS", "start_time": "yesterday"}]}',
         r"field 'start_time': malformed: not an RFC 3339 time"),
        ('{"tests": [{"name": "c", "result": "PASS", "cases": [{"status": "PASS", '
         '"duration_nanos": true}]}]}', r"field 'cases\[0\].duration_nanos': malformed"),
        ('{"tests": [{"name": "g", "result": "PASS", "tags": [{"value": "v"}]}]}',
         r"field 'tags\[0\].key': missing"),
        ('{"tests": [{"name": "f", "result": "PASS", "output_files": [1]}]}',
         r"field 'output_files\[0\]': malformed"),
    ],
)
def test_load_summary_rejects_bad_input_clearly(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_summary(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_summary(tmp_path / "missing" / "summary.json")


# ---------------------------------------------------------------- merge


def write_shard(directory: Path, results: list[TResult], started: dt.datetime,
                duration: float, interrupted: bool = False) -> RunResult:
    run = RunResult(results, directory, interrupted, started=started, duration_s=duration)
    for r in results:
        for a in r.attempts:
            for rel in a.artifacts.values():
                (directory / rel).parent.mkdir(parents=True, exist_ok=True)
                (directory / rel).write_text(f"log of {r.key}\n")
    write_summary(run, directory / "summary.json")
    return run


def test_merge_two_shards(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    a = write_shard(tmp_path / "a", [result("pass", [Status.PASS]),
                                     result("flaky", [Status.FAIL, Status.PASS])], T0, 10.0)
    b = write_shard(tmp_path / "b", [result("pass", [Status.PASS], env="crosvm-x86_64"),
                                     result("skip", [Status.SKIP])], at(5), 20.0, True)
    out = tmp_path / "merged"
    merged = merge_runs([tmp_path / "a", tmp_path / "b"], out)
    assert merged.results == a.results + b.results
    assert (merged.started, merged.duration_s, merged.out_dir) == (T0, 25.0, out)
    assert merged.interrupted  # one interrupted shard makes the whole run incomplete

    for r in merged.results:
        for rel in [p for att in r.attempts for p in att.artifacts.values()]:
            assert (out / rel).read_text() == f"log of {r.key}\n"
    schema.validate(str(out / "junit.xml"))
    root = ET.parse(out / "junit.xml").getroot()
    assert {(tc.get("classname"), tc.get("name")) for tc in root.iter("testcase")} == {
        ("qemu-x86_64.core", "pass"), ("qemu-x86_64.core", "flaky"),
        ("crosvm-x86_64.core", "pass"), ("qemu-x86_64.core", "skip")}
    back = load_summary(out / "summary.json")
    assert back.results == merged.results
    assert (back.interrupted, back.started, back.duration_s) == (True, T0, 25.0)
    assert summary_dict(back)["harness_run"]["totals"]["FLAKY"] == 1
    assert no_temp_files(out)


def test_merge_into_one_of_the_shards(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    write_shard(tmp_path / "a", [result("one", [Status.PASS])], T0, 1.0)
    write_shard(tmp_path / "b", [result("two", [Status.FAIL])], T0, 2.0)
    merged = merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "a")
    assert [r.test for r in load_summary(tmp_path / "a" / "summary.json").results] == [
        "one", "two"]
    assert (tmp_path / "a" / "qemu-x86_64/two/attempt-1/serial.log").is_file()
    assert merged.blocking_failed
    schema.validate(str(tmp_path / "a" / "junit.xml"))


def test_merge_rejects_duplicates(tmp_path: Path) -> None:
    write_shard(tmp_path / "a", [result("same", [Status.PASS])], T0, 1.0)
    write_shard(tmp_path / "b", [result("same", [Status.FAIL])], T0, 1.0)
    with pytest.raises(ConfigError, match=r"qemu-x86_64/same: also in .*a/summary\.json") as e:
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert str(tmp_path / "b" / "summary.json") in str(e.value)
    assert not (tmp_path / "out").exists()


def test_merge_rejects_colliding_folders_and_escaping_paths(tmp_path: Path) -> None:
    one = result("x", [Status.PASS])
    two = result("y", [Status.PASS])
    two.folder = one.folder  # different tests, same folder, different shards
    write_shard(tmp_path / "a", [one], T0, 1.0)
    write_shard(tmp_path / "b", [two], T0, 1.0)
    with pytest.raises(ConfigError, match="collides with"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out")

    evil = result("z", [Status.PASS])
    evil.folder = "../../etc"
    write_shard(tmp_path / "c", [evil], T0, 1.0)
    with pytest.raises(ConfigError, match="not a path inside the shard"):
        merge_runs([tmp_path / "c"], tmp_path / "out2")
    with pytest.raises(ConfigError, match="no shard"):
        merge_runs([], tmp_path / "out3")
