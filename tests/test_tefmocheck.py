"""Fuchsia's crash scan (harness.fuchsia.tefmocheck) against tefmocheck's own tests and tables.

TestCheck below is tools/testing/tefmocheck/string_in_log_check_test.go's TestCheck, case for
case (each row names the Go case it reproduces); the rest checks run_checks.go's rules, the
check table against check-configs.yaml, the live block tracker against the whole-log rule,
and the synthetic tests a finished test gets, in JUnit and summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.fuchsia import tefmocheck as tc
from harness.fuchsia.tefmocheck import (
    CHECKS,
    Finding,
    LogType,
    StringInLogCheck,
    TestDetails,
    TestingOutputs,
    TestLog,
)
from harness.logblocks import BlockTracker, LogBlock, excusing_block
from harness.parse_log import parse_log
from harness.profiles import get_profile
from harness.report import junit_string, summary_dict
from harness.results import Attempt, RunResult, Status
from harness.results import TestResult as TResult  # not "Test*": pytest would collect it

KILLER = "KILLER STRING"
EXCEPT = "Don't die!"
LINE = "KILLER STRING: Something failed."
BLOCK = LogBlock(b"skip_test", b"end_test")
BLOCK2 = LogBlock(b"block_start", b"block_end")
S1, E1, S2, E2 = "skip_test", "end_test", "block_start", "block_end"
BASE = StringInLogCheck(KILLER, LogType.SWARMING, except_strings=(EXCEPT,),
                        except_blocks=(BLOCK, BLOCK2))
WANT_NAME = "string_in_log/infra_and_test_std_and_klog.txt/KILLER_STRING"
PASS, FAIL = Status.PASS, Status.FAIL


def summary(*tests: tuple[str, Status]) -> list[TestDetails]:
    return [TestDetails(n, s) for n, s in tests]


def log(name: str, data: str, index: int, path: str = "foo/log.txt") -> TestLog:
    return TestLog(name, data.encode(), path, index)


@dataclasses.dataclass
class Row:
    """One case of TestCheck: the check's switches, the outputs, what must come out."""

    name: str
    outputs: dict[str, Any]
    should_match: bool = False
    state: str = ""
    states: tuple[str, ...] = ()
    log_type: LogType | None = None
    flags: dict[str, bool] = dataclasses.field(default_factory=dict)
    want_name: str = ""
    want_flake: bool = False
    want_line: str = ""
    want_tags: dict[str, str] | None = None


K = KILLER
ROWS = [
    Row("should match simple", {"swarming": f"PREFIX {K} SUFFIX"}, should_match=True),
    Row("should match with failure reason", {"swarming": f"1\n2\n{LINE}\n4\n5\n"},
        should_match=True, want_line=LINE),
    Row("should match if string before except_block and return failure reason",
        {"swarming": f"{S1}\n{E1}\n{LINE}"}, should_match=True, want_line=LINE),
    Row("exceptSuccessfulSwarmingResult", {"swarming": f"PREFIX {K} SUFFIX"},
        flags={"skip_passed_task": True}, state="COMPLETED"),
    Row("should not match if string in other log",
        {"serial": [K], "swarming": "gentle string"}),
    Row("should not match if except_string in log", {"swarming": K + EXCEPT}),
    Row("should match if string before except_block",
        {"swarming": f"PREFIX {K} ... {S1} output {E1} SUFFIX"}, should_match=True),
    Row("should match if string after except_block",
        {"swarming": f"PREFIX {S1} output {E1} ... {K} SUFFIX"}, should_match=True),
    Row("should not match if string in except_block",
        {"swarming": f"PREFIX {S1} {K} output {E1} SUFFIX {S2} {K} {E2}"}),
    Row("should match if string in both except_block and outside except_block",
        {"swarming": f"PREFIX {K} ... {S1} {K} {E1} {S2} {K} {E2} SUFFIX"}, should_match=True),
    Row("should not match if string in except_block with missing end string",
        {"swarming": f"PREFIX ... {S1} {K} {E1} {S2} {K}"}),
    Row("should match if swarming task state is in expected states", {"swarming": K},
        states=("STATE_1", "STATE_2"), state="STATE_1", should_match=True),
    Row("should not match if swarming task state is not in expected states", {"swarming": K},
        states=("STATE_1", "STATE_2"), state="NO_STATE"),
    Row("should match per test swarming output",
        {"swarming": K, "per_test": [log("foo-test", K, 0)]},
        flags={"attribute_to_test": True}, should_match=True, want_name=WANT_NAME + "/foo-test"),
    Row("should add test name to tag",
        {"swarming": K, "per_test": [log("foo-test", K, 0)]},
        flags={"attribute_to_test": True, "add_tag": True}, should_match=True,
        want_name=WANT_NAME, want_tags={"test_name": "foo-test"}),
    Row("should respect except block even if split across tests",
        {"swarming": f"{S1} {K} {E1} {K}",
         "per_test": [log("foo-test", f"{S1} {K}", 0, "foo/log.txt"),
                      log("bar-test", f"{E1} {K}", len(S1) + len(K) + 2, "bar/log.txt")]},
        flags={"attribute_to_test": True}, should_match=True, want_name=WANT_NAME + "/bar-test"),
    Row("should check all syslogs", {"syslog": ["gentle string", K]},
        flags={"attribute_to_test": True}, should_match=True, log_type=LogType.SYSLOG,
        want_name="string_in_log/syslog.txt/KILLER_STRING"),
    Row("should skip if all tests passed",
        {"summary": summary(("test1", PASS)), "serial": ["gentle string", K]},
        flags={"skip_all_passed_tests": True}, state="COMPLETED", log_type=LogType.SERIAL),
    Row("should skip if ignore flakes",
        {"summary": summary(("test1", FAIL), ("test1", PASS)), "serial": ["gentle string", K]},
        flags={"skip_all_passed_tests": True, "ignore_flakes": True}, state="COMPLETED",
        log_type=LogType.SERIAL),
    Row("should not skip if a test failed",
        {"summary": summary(("test1", FAIL)), "serial": ["gentle string", K]},
        flags={"skip_all_passed_tests": True}, state="COMPLETED", log_type=LogType.SERIAL,
        should_match=True),
    Row("should not skip if not ignore flakes",
        {"summary": summary(("test1", FAIL), ("test1", PASS)), "serial": ["gentle string", K]},
        flags={"skip_all_passed_tests": True}, state="COMPLETED", log_type=LogType.SERIAL,
        should_match=True),
    Row("should skip if passed test",
        {"summary": summary(("test1", FAIL), ("test2", PASS)), "swarming": K,
         "per_test": [log("test1", "", 0), log("test2", K, 0)]},
        flags={"skip_passed_test": True}),
    Row("should report flake if ignore flakes",
        {"summary": summary(("test1", FAIL), ("test1", PASS), ("test2", FAIL)),
         "swarming": K + K,
         "per_test": [log("test1", K, 0), log("test1", K, len(K)), log("test2", "", 2 * len(K))]},
        flags={"skip_passed_test": True, "ignore_flakes": True}, should_match=True,
        want_flake=True),
    Row("should report failure over flake",
        {"summary": summary(("test1", FAIL), ("test1", PASS), ("test2", FAIL)),
         "swarming": K + K + K,
         "per_test": [log("test1", K, 0), log("test1", K, len(K)), log("test2", K, 2 * len(K))]},
        flags={"skip_passed_test": True, "ignore_flakes": True}, should_match=True),
    Row("should not skip if not ignore flakes and skipPassedTest",
        {"summary": summary(("test1", FAIL), ("test1", PASS)), "swarming": K + K,
         "per_test": [log("test1", K, 0), log("test1", K, len(K))]},
        flags={"skip_passed_test": True}, should_match=True),
    Row("should skip if skipPassedTask and a test failed",
        {"summary": summary(("test1", FAIL)), "serial": ["gentle string", K]},
        flags={"skip_passed_task": True}, state="COMPLETED", log_type=LogType.SERIAL),
    Row("should always flake if not attributed to test",
        {"summary": summary(("test1", FAIL), ("test2", PASS)), "swarming": K,
         "per_test": [log("test1", "", 0), log("test2", K, 0)]},
        flags={"always_flake": True}, should_match=True, want_flake=True),
    Row("should always flake if skip passed test and failed test",
        {"summary": summary(("test1", PASS), ("test2", FAIL)), "swarming": K,
         "per_test": [log("test1", "", 0), log("test2", K, 0)]},
        flags={"skip_passed_test": True, "always_flake": True}, should_match=True,
        want_flake=True),
    Row("should not flake if skip passed test",
        {"summary": summary(("test1", FAIL), ("test2", PASS)), "swarming": K,
         "per_test": [log("test1", "", 0), log("test2", K, 0)]},
        flags={"skip_passed_test": True, "always_flake": True}),
]


def test_check_name() -> None:
    """TestCheck's first assertion: c.Name() before anything is attributed."""
    assert BASE.name == WANT_NAME


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_check(row: Row) -> None:
    """string_in_log_check_test.go TestCheck, the case named by the id."""
    check = dataclasses.replace(BASE, only_on_states=row.states, **row.flags)
    if row.log_type is not None:
        check = dataclasses.replace(check, log_type=row.log_type)
    o = row.outputs
    outputs = TestingOutputs(
        test_summary=o.get("summary"), task_state=row.state, task_id="abc",
        serial_logs=[s.encode() for s in o.get("serial", [])],
        swarming_output=o.get("swarming", "").encode(),
        swarming_output_per_test=o.get("per_test", []),
        syslogs=[s.encode() for s in o.get("syslog", [])],
    )
    finding = check.check(outputs)
    assert (finding is not None) == row.should_match
    if finding is None:
        return
    if row.want_name:
        assert finding.name == row.want_name
    if row.want_tags is not None:
        assert finding.tags == row.want_tags
    per_test = o.get("per_test", [])
    if not per_test:
        assert finding.output_file == ""
    if len(per_test) == 1:
        assert finding.output_file == per_test[0].path
    assert finding.flake == row.want_flake
    if row.want_line:
        assert finding.failure_reason == row.want_line
    assert "Found the string" in finding.debug_text("abc")  # DebugText must not fail


# -- RunChecks (run_checks.go) -----------------------------------------------------------------


def outputs(serial: str = "", stderr: str = "", *, failed: bool = False) -> TestingOutputs:
    return TestingOutputs(test_summary=[TestDetails("t", FAIL if failed else PASS)],
                          task_failed=failed, serial_logs=[serial.encode()],
                          swarming_output=stderr.encode())


def test_first_failure_ends_the_scan_and_is_prefixed() -> None:
    out = tc.run_checks(CHECKS, outputs("a\nZIRCON KERNEL PANIC\nb\ndouble fault, halting\n"))
    assert [(t.name, t.status) for t in out.tests] == [
        ("testing_failure_mode/string_in_log/serial_log.txt/ZIRCON_KERNEL_PANIC", FAIL)]
    assert out.tests[0].failure_reason == "ZIRCON KERNEL PANIC"


def test_a_flake_is_a_failure_and_a_pass_and_the_scan_goes_on() -> None:
    order = [c.string for c in CHECKS]
    # check-configs.yaml lists the always_flake driver assert before the ldsvc time-out.
    assert order.index("cc != ((void*)0)") < order.index(
        "Timed out loading dynamic linker from fuchsia.ldsvc.Loader")
    out = tc.run_checks(CHECKS, outputs(
        "assert cc != ((void*)0) failed\nTimed out loading dynamic linker from "
        "fuchsia.ldsvc.Loader\nZIRCON KERNEL PANIC\n"))
    prefix = "testing_failure_mode/string_in_log/serial_log.txt/"
    assert [(t.name.removeprefix(prefix), t.status) for t in out.tests] == [
        ("cc_!=_((void*)0)", FAIL), ("cc_!=_((void*)0)", PASS),
        ("Timed_out_loading_dynamic_linker_from_fuchsia.ldsvc.Loader", FAIL),
    ]
    # A failure ends the scan before a later flake.
    blob = tc.run_checks(CHECKS, outputs("failed to write blob\nPackage node removal hanging\n"))
    assert [t.status for t in blob.tests] == [FAIL]


def test_infra_failure_and_skip_all_passed_tests() -> None:
    text = "***Boot-test-successful!-MDd7/O65SuVZ23yGAaQG4CedYQGH9E1/58r73pSAVK0=***\n"
    assert tc.run_checks(CHECKS, outputs(text)).tests == []  # every test passed
    out = tc.run_checks(CHECKS, outputs(text, failed=True))
    assert [(t.name.rsplit("/", 1)[-1], t.status) for t in out.tests] == [
        ("Boot-test-successful!", Status.INFRA_FAIL), ("Boot-test-successful!", PASS)]


def test_emitted_synthetic_case() -> None:
    out = tc.run_checks(CHECKS, outputs("==1==ERROR: AddressSanitizer: heap-use-after-free\n",
                                        failed=True))
    assert [(c.suite, c.name, c.status) for _, c in out.cases] == [
        ("tefmocheck", "string_in_log/serial_log.txt/ERROR:_AddressSanitizer", FAIL)]


def test_the_missing_strings_are_scanned_for() -> None:
    for text, name in [
        ("[00100.1] 01000:01001> pwrbtn-monitor: received kernel OOM signal\n",
         "received_kernel_OOM_signal"),
        ("ld.so: Timed out loading dynamic linker from fuchsia.ldsvc.Loader\n",
         "Timed_out_loading_dynamic_linker_from_fuchsia.ldsvc.Loader"),
        ("[fxblob] failed to write blob abc: IO\n", "failed_to_write_blob"),
    ]:
        out = tc.run_checks(CHECKS, outputs(text))
        assert [t.name for t in out.tests] == [
            f"testing_failure_mode/string_in_log/serial_log.txt/{name}"]


def test_vmm_lines_are_host_log_checks_not_console_ones() -> None:
    host = tc.run_checks(CHECKS, outputs(stderr="error: kvm run failed Bad address\n"))
    assert [t.name for t in host.tests] == [
        "testing_failure_mode/string_in_log/infra_and_test_std_and_klog.txt/"
        "kvm_run_failed_Bad_address"]
    assert tc.run_checks(CHECKS, outputs(serial="kvm run failed Bad address\n")).tests == []
    crosvm = "[2026-01-01T00:00:00Z ERROR crosvm] vcpu hit unknown error: Bad address (os error 14)"
    assert tc.vmm_failure(f"noise\n{crosvm}\n".encode()) == (
        6 + crosvm.index("vcpu hit"), crosvm)
    assert tc.vmm_failure(b"qemu: warning: host lacks a feature\n") is None


# -- the check table (check-configs.yaml) ------------------------------------------------------


def test_target_checks_mention_no_infra_tool() -> None:
    """TestStringInLogsChecks: checks of the target's logs do not name botanist or testrunner."""
    for check in CHECKS:
        if check.source == "tefmocheck" and check.log_type != LogType.SWARMING:
            assert "botanist" not in check.name and "testrunner" not in check.name


def test_table_spot_checks_against_check_configs_yaml() -> None:
    by_key = {(c.string, c.log_type): c for c in CHECKS}
    panic = by_key["ZIRCON KERNEL PANIC", LogType.SERIAL]
    assert panic.attribute_to_test and len(panic.except_blocks) == 11
    assert panic.except_blocks[0] == LogBlock(b"RUN   TestBasicCrash", b"PASS: TestBasicCrash")
    assert len(by_key["DRIVER OOPS", LogType.SYSLOG].except_blocks) == 10
    assert by_key["entering panic shell loop", LogType.SWARMING].except_strings == (
        "Boot-test-successful!",)
    assert (" ASSERT FAILED", LogType.SWARMING) not in by_key  # test output may hold it
    assert len(by_key[" ASSERT FAILED", LogType.SERIAL].except_blocks) == 9
    assert by_key["cc != ((void*)0)", LogType.SERIAL].always_flake
    boot = by_key["Boot-test-successful!", LogType.SERIAL]
    assert boot.infra_failure and boot.skip_all_passed_tests and boot.always_flake
    assert by_key["kvm run failed Bad address", LogType.SWARMING].source == "tefmocheck"
    assert by_key["vcpu hit unknown error", LogType.SWARMING].source == "harness"
    # Ordered as upstream: the sanitizers, then the OOPS kinds, then the panic.
    order = [c.string for c in CHECKS]
    assert (order.index("ERROR: AddressSanitizer") < order.index("DRIVER OOPS")
            < order.index("ZIRCON KERNEL OOPS") < order.index("ZIRCON KERNEL PANIC")
            < order.index(" ASSERT FAILED"))


def test_zircon_console_table_is_built_from_the_checks() -> None:
    zircon = get_profile("zircon")
    fuchsia = [s for s in zircon.crash_signatures if s.hint in
               {c.string.encode() for c in tc.serial_checks()}]
    expected = [c for c in tc.serial_checks() if not c.depends_on_outcome]
    assert [s.hint for s in fuchsia] == [c.string.encode() for c in expected]
    for sig, check in zip(fuchsia, expected, strict=True):
        assert sig.fatal == (not check.always_flake)
        assert sig.except_blocks == check.except_blocks
    # Outcome-dependent checks (the boot-test success string!) are never console crashes.
    assert zircon.find_crashes(b"Boot-test-successful!\r\n") == []


# -- except-blocks: the whole-log rule and the live tracker agree ------------------------------


def test_tracker_agrees_with_the_whole_log_rule_read_by_read() -> None:
    blocks = (LogBlock(b"<S>", b"<E>"), LogBlock(b"[ RUN ] A", b"[ OK ] A"))
    rng = random.Random(7)
    pieces = [b"<S>", b"<E>", b"[ RUN ] A", b"[ OK ] A", b"X", b"noise ", b"\n"]
    for _ in range(200):
        data = b"".join(rng.choice(pieces) for _ in range(40))
        tracker = BlockTracker([m for b in blocks for m in (b.start, b.end)])
        pos = 0
        while pos < len(data):  # reads of 1 to 7 bytes split markers across reads
            n = rng.randint(1, 7)
            tracker.feed(data[pos:pos + n])
            pos += n
        for at in [i for i in range(len(data)) if data.startswith(b"X", i)]:
            assert tracker.excused(at, blocks) == excusing_block(data, at, blocks), (data, at)


# -- a finished test's synthetic tests, in JUnit and summary.json ------------------------------


def finished(tmp_path: Path, serial: str, stderr: str = "", status: Status = FAIL,
             name: str = "core-tests") -> TResult:
    folder = tmp_path / "zircon-x64" / name
    folder.mkdir(parents=True)
    (folder / "serial.log").write_bytes(serial.encode())
    if stderr:
        (folder / "vmm-stderr.log").write_bytes(stderr.encode())
    attempt = Attempt(status, message="guest crashed" if status == FAIL else "",
                      artifacts={"serial.log": f"zircon-x64/{name}/serial.log"})
    return TResult(test=name, suite="tests.json", environment="zircon-x64", engine="qemu",
                   arch="x86_64", blocking=True, attempts=[attempt], folder=f"zircon-x64/{name}",
                   tags={"device_type": "QEMU"})


def test_synthetic_test_in_junit_and_summary(tmp_path: Path) -> None:
    owner = finished(tmp_path, "[00010.0] 00000:00000> ZIRCON KERNEL PANIC\r\n"
                               "==1==ERROR: AddressSanitizer: x\r\n")
    found = tc.synthetic_results(owner, tmp_path, scan_serial=True)
    assert len(found) == 1
    s = found[0]
    assert s.test == ("testing_failure_mode/string_in_log/serial_log.txt/ERROR:_AddressSanitizer/"
                      "core-tests")
    assert (s.status, s.testing_failure_mode, s.environment, s.blocking) == (
        FAIL, True, "zircon-x64", True)
    assert s.final.message == "==1==ERROR: AddressSanitizer: x"
    assert "tefmocheck" in (tmp_path / "zircon-x64/core-tests/tefmocheck.txt").read_text()
    # emit_synthetic_test_case: the failed owner gets tefmocheck's case.
    assert owner.final.cases[-1].name == "string_in_log/serial_log.txt/ERROR:_AddressSanitizer"

    run = RunResult(results=[owner, *found], out_dir=tmp_path)
    root = ET.fromstring(junit_string(run))
    tc_el = next(e for e in root.iter("testcase") if e.get("name") == s.test)
    assert tc_el.find("failure").get("message") == "==1==ERROR: AddressSanitizer: x"
    assert any(e.get("name") == "tefmocheck: string_in_log/serial_log.txt/ERROR:_AddressSanitizer"
               for e in root.iter("testcase"))
    doc = json.loads(json.dumps(summary_dict(run)))
    entry = next(t for t in doc["tests"] if t["name"] == s.test)
    assert entry["result"] == "FAIL"
    assert entry["is_testing_failure_mode"] is True
    assert entry["output_dir"] == "zircon-x64/core-tests"
    assert "serial.log" in entry["output_files"]
    assert TResult.from_json(entry["harness"]).testing_failure_mode


def test_excused_assert_and_flake_and_linux(tmp_path: Path) -> None:
    death = ("[ RUN      ] ZxAssertCppTest.ZxAssertInvalidPredicateFails\r\n"
             "[00012.1] 01100:01101> ASSERT FAILED at (x.cc:3): false\r\n"
             "[       OK ] ZxAssertCppTest.ZxAssertInvalidPredicateFails (3 ms)\r\n")
    assert tc.synthetic_results(finished(tmp_path / "a", death, status=PASS), tmp_path / "a",
                                scan_serial=True) == []
    flaky = tc.synthetic_results(finished(tmp_path / "b", "Package node removal hanging\n",
                                          status=PASS), tmp_path / "b",
                                 scan_serial=True)
    assert [(r.flaky, [a.status for a in r.attempts]) for r in flaky] == [(True, [FAIL, PASS])]
    assert RunResult(results=flaky, out_dir=tmp_path).blocking_failed is False
    # A Linux guest: Fuchsia's strings on its console mean nothing; its VMM's stderr counts.
    linux = finished(tmp_path / "c", "ZIRCON KERNEL PANIC\n",
                     stderr="KVM internal error. Suberror: 1\n")
    (found,) = tc.synthetic_results(linux, tmp_path / "c", scan_serial=False)
    assert found.test == ("testing_failure_mode/string_in_log/infra_and_test_std_and_klog.txt/"
                          "KVM_internal_error._Suberror/core-tests")
    assert found.final.message == "KVM internal error. Suberror: 1"


def test_parse_shows_checks_and_decisions(tmp_path: Path) -> None:
    data = (b"[ RUN      ] ZxTestSmokeTest.DeathStatementCrash\r\n"
            b"> ASSERT FAILED at (a.cc:1): expected\r\n"
            b"[       OK ] ZxTestSmokeTest.DeathStatementCrash (1 ms)\r\n"
            b"> ASSERT FAILED at (b.cc:2): not expected\r\n")
    result = parse_log(data, profile="zircon", host_log=b"kvm run failed Bad address\n")
    scan = result["tefmocheck"]
    assert scan["logs"] == ["serial_log.txt", "infra_and_test_std_and_klog.txt"]
    (check,) = [c for c in scan["checks"] if c["string"] == " ASSERT FAILED"]
    first, second = check["occurrences"]
    assert (first["counted"], first["excused_by"]["start"]) == (
        False, "[ RUN      ] ZxTestSmokeTest.DeathStatementCrash")
    assert (second["counted"], second["excused_by"]) == (True, None)
    assert [t["name"] for t in scan["synthetic_tests"]] == [
        "testing_failure_mode/string_in_log/serial_log.txt/_ASSERT_FAILED"]
    assert scan["synthetic_tests"][0]["failure_reason"] == (
        "> ASSERT FAILED at (b.cc:2): not expected")
    assert [c["signature"] for c in result["crashes"]] == ["zircon-assert"]
    assert result["crashes"][0]["offset"] == data.index(b" ASSERT FAILED at (b.cc")


def test_finding_name_attributes_tests_as_tefmocheck_does() -> None:
    check = StringInLogCheck("X Y", LogType.SWARMING, attribute_to_test=True)
    assert Finding(check, b"", test_name="t/1").name == "string_in_log/" \
        "infra_and_test_std_and_klog.txt/X_Y/t/1"
    assert tc.go_path_join("testing_failure_mode", "string_in_log/a//b/") == (
        "testing_failure_mode/string_in_log/a/b")
