"""Test-output parsers and the offline re-parse, on real captures and format-exact transcripts.

tests/fixtures/linux holds real serial captures of a Debian 6.1 x86_64 kernel under QEMU/TCG
loading the kernel test modules (modules-x64.log.gz in full, test_bpf.log trimmed to the boot
tail, the first 200 tests and the summaries). tests/fixtures/zircon holds transcripts written to
the exact formats of zxtest, the kernel's `ut` and runtests (reference/fuchsia.md and their
sources), with console line ends, kernel log prefixes, a failure and a truncated run each.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from harness import parsers
from harness.errors import ConfigError
from harness.parse_log import parse_log
from harness.parsers import gtest, linux_module, runtests, tap, test_bpf, zircon_ut
from harness.parsers.common import NO_RESULT, console_lines
from harness.results import Case, Status

FIXTURES = Path(__file__).parent / "fixtures"
ZIRCON_SERIAL = Path(__file__).parent / "fixtures" / "zircon-serial"

PASS, FAIL, SKIP = Status.PASS, Status.FAIL, Status.SKIP


def read(name: str) -> str:
    path = FIXTURES / name
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def summary(cases: list[Case]) -> list[tuple[str, str, Status]]:
    return [(c.suite, c.name, c.status) for c in cases]


# -- common line handling ----------------------------------------------------------------------


def test_console_lines_strip_prefixes_and_line_ends() -> None:
    text = ("\x1bc\x1b[2J[00012.345] 01234:01235> hello\r\r\n"
            "[00012.346] 01234.01235>   indented\r\n"
            "[   12.345678] linux line\r\n"
            "plain\x07 text\rsecond\n")
    lines = console_lines(text)
    assert [ln.text for ln in lines] == ["hello", "  indented", "linux line", "plain text",
                                         "second", ""]
    assert [ln.timestamp for ln in lines[:4]] == [12.345, 12.346, 12.345678, None]


# -- zxtest / gtest ----------------------------------------------------------------------------


def test_zxtest_transcript() -> None:
    cases = gtest.parse(read("zircon/core-tests.log"))
    assert summary(cases) == [
        ("VmoTestCase", "Create", PASS),
        ("VmoTestCase", "Resize", FAIL),
        # zxtest prints two spaces before a SKIPPED duration; testparser's pattern keeps one
        # of them in the case name, and the harness names cases as testparser does.
        ("VmoTestCase", "Skip ", SKIP),
        ("VmoTestCase", "ReadWrite", PASS),
        ("HandleTest", "Close", PASS),
        ("HandleTest", "Duplicate", PASS),
    ]
    assert [c.duration_s for c in cases] == [0.004, 0.002, 0.0, 0.017, 0.0, 0.001]
    assert cases[1].message == ("../../zircon/system/utest/core/vmo/vmo.cc:123: Failure: "
                                "Expected status == ZX_OK.\n"
                                "    Expected: ZX_ERR_OUT_OF_RANGE (-14)\n"
                                "    Which is: ZX_OK (0)")
    assert all(c.format == "GoogleTest" for c in cases)
    assert cases[0].message == cases[3].message == ""  # interleaved kernel line not kept


def test_zxtest_cut_off_by_a_panic() -> None:
    cases = gtest.parse(read("zircon/core-tests-crash.log"))
    assert summary(cases) == [("FutexTest", "Wait", PASS), ("FutexTest", "WakeRequeue", FAIL)]
    assert cases[1].message.startswith(NO_RESULT)


def test_gtest_upstream_variants() -> None:
    text = "\n".join([
        "[ RUN      ] Params/ParamTest.Works/0",
        "[       OK ] Params/ParamTest.Works/0 (1 ms)",
        "[ RUN      ] Params/ParamTest.Works/1",
        "x.cc:3: Failure",
        "Value of: f(1)",
        "[  FAILED  ] Params/ParamTest.Works/1, where GetParam() = 1 (2 ms)",
        "[ RUN      ] Suite.Skipped",
        "x.cc:9: Skipped",
        "needs hardware",
        "[  SKIPPED ] Suite.Skipped (0 ms)",
        "[ RUN      ] Suite.Hangs",
        "[ RUN      ] Suite.After",
        "[       OK ] Suite.After (5 ms)",
        "[  FAILED  ] Params/ParamTest.Works/1, where GetParam() = 1",
    ])
    cases = gtest.parse(text)
    assert summary(cases) == [
        ("Params/ParamTest", "Works/0", PASS),
        ("Params/ParamTest", "Works/1, where GetParam() = 1", FAIL),  # as testparser names it
        ("Suite", "Skipped", SKIP),
        ("Suite", "Hangs", FAIL),
        ("Suite", "After", PASS),
    ]
    assert cases[1].message == "x.cc:3: Failure\nValue of: f(1)"
    assert cases[2].message == "x.cc:9: Skipped\nneeds hardware"
    assert cases[3].message == NO_RESULT


# -- Zircon kernel `ut` ------------------------------------------------------------------------


def test_ut_transcript() -> None:
    cases = zircon_ut.parse(read("zircon/ut-all.log"))
    assert summary(cases) == [
        ("timer", "cancel_before_deadline", PASS),
        ("timer", "cancel_after_deadline", PASS),
        ("timer", "deadline_slack", FAIL),
        ("timer", "mono_ticks", PASS),
        ("pi", "inherit_basic", PASS),
        ("pi", "inherit_chain", PASS),
        ("vmm", "vmm", FAIL),  # named in the failed list, could not run
    ]
    assert cases[0].duration_s == pytest.approx(61250e-9)
    assert cases[2].message == ("[FAILED]\nkernel/tests/timer_tests.cc:211:\n"
                                "expected deadline to have passed")
    assert cases[3].message == ""
    assert all(c.format == "Zircon kernel unittest" for c in cases)


def test_ut_cut_off_by_a_panic() -> None:
    cases = zircon_ut.parse(read("zircon/ut-truncated.log"))
    assert summary(cases) == [("vmo", "create", PASS), ("vmo", "commit", PASS),
                              ("vmo", "decommit_misaligned", FAIL)]
    assert cases[2].message.startswith(NO_RESULT)


def test_ut_cut_off_between_tests() -> None:
    text = "vmo : Running 3 tests...\n  create : PASSED (1 nSec)\n"
    cases = zircon_ut.parse(text)
    assert summary(cases) == [("vmo", "create", PASS), ("vmo", "(unfinished)", FAIL)]
    assert cases[1].message == f"{NO_RESULT}: 1 of 3 tests reported"


# -- runtests ----------------------------------------------------------------------------------


def test_runtests_transcript() -> None:
    cases = runtests.parse(read("zircon/runtests.log"))
    assert summary(cases) == [
        ("runtests", "/boot/test/core-tests", PASS),
        ("runtests", "/boot/test/fs-tests", FAIL),
        ("runtests", "/boot/test/crasher-test", FAIL),
    ]
    assert [c.duration_s for c in cases] == [0.512, 1.02, 0.0]
    assert "truncate.cc:88: Failure: Expected size == 0." in cases[1].message
    assert cases[2].message.startswith(NO_RESULT)
    assert "[ RUN      ] CrasherTest.Hang" in cases[2].message


def test_runtests_signature_without_duration() -> None:
    cases = runtests.parse("[runtests][FAILED] /boot/test/sys/x-test\n")
    assert summary(cases) == [("runtests", "/boot/test/sys/x-test", FAIL)]


# -- KTAP / TAP --------------------------------------------------------------------------------

# KUnit's output shape on Linux 6.1 (lib/kunit/test.c), as it reaches a serial console.
KUNIT = """\
[    0.512345] KTAP version 1
[    0.512350] 1..2
[    0.512400]     KTAP version 1
[    0.512401]     # Subtest: example
[    0.512402]     1..4
[    0.512410]     # example_simple_test: initializing
[    0.512420]     ok 1 example_simple_test
[    0.512430]     # example_skip_test: initializing
[    0.512440]     ok 2 example_skip_test # SKIP this test should be skipped
[    0.512450]     # example_failing_test: initializing
[    0.512460]     # example_failing_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:29
[    0.512461]     Expected 1 + 1 == 3, but
[    0.512462]         1 + 1 == 2 (0x2)
[    0.512470]     not ok 3 example_failing_test
[    0.512480]         KTAP version 1
[    0.512481]         # Subtest: example_params_test
[    0.512490]         ok 1 example value 2 # SKIP unsupported param value
[    0.512491]         ok 2 example value 1
[    0.512492]         ok 3 example value 0 # SKIP unsupported param value
[    0.512500]     # example_params_test: pass:1 fail:0 skip:2 total:3
[    0.512501]     ok 4 example_params_test
[    0.512510] # example: pass:2 fail:1 skip:1 total:4
[    0.512511] # Totals: pass:3 fail:1 skip:3 total:7
[    0.512520] not ok 1 example
[    0.512600]     KTAP version 1
[    0.512601]     # Subtest: list-kunit-test
[    0.512602]     1..2
[    0.512603] random: crng init done
[    0.512610]     ok 1 list_test_list_init
[    0.512620]     ok 2 list_test_list_add
[    0.512630] ok 2 list-kunit-test
"""


def test_ktap_kunit_nested() -> None:
    cases = tap.parse(KUNIT.replace("\n", "\r\r\n"))
    assert summary(cases) == [
        ("example", "example_simple_test", PASS),
        ("example", "example_skip_test", SKIP),
        ("example", "example_failing_test", FAIL),
        ("example.example_params_test", "example value 2", SKIP),
        ("example.example_params_test", "example value 1", PASS),
        ("example.example_params_test", "example value 0", SKIP),
        ("list-kunit-test", "list_test_list_init", PASS),
        ("list-kunit-test", "list_test_list_add", PASS),
    ]
    assert cases[1].message == "this test should be skipped"
    assert "EXPECTATION FAILED at lib/kunit/kunit-example-test.c:29" in cases[2].message
    assert "Expected 1 + 1 == 3, but" in cases[2].message
    assert {c.format for c in cases} == {"KTAP"}


def test_ktap_cut_off_inside_a_suite() -> None:
    lines = [*KUNIT.splitlines()[:7], "[    0.6] BUG: kernel NULL pointer dereference"]
    cases = tap.parse("\n".join(lines))
    assert summary(cases) == [
        ("example", "example_simple_test", PASS),
        ("example", tap.MISSING, FAIL),
        ("", tap.MISSING, FAIL),
    ]
    assert cases[1].message == f"3 of 4 planned results missing: {NO_RESULT}"
    assert cases[2].message == f"1 of 2 planned results missing: {NO_RESULT}"


def test_ktap_two_space_nesting_from_the_spec() -> None:
    text = "\n".join([
        "KTAP version 1", "1..1",
        "  KTAP version 1", "  1..2",
        "    KTAP version 1", "    1..1", "    # test_1: initializing test_1",
        "    ok 1 test_1",
        "  ok 1 example_test_1",
        "    KTAP version 1", "    1..2",
        "    not ok 1 test_1",
        "    ok 2 test_2 # SKIP test_2 skipped",
        "  not ok 2 example_test_2",
        "not ok 1 main_test",
    ])
    assert summary(tap.parse(text)) == [
        ("main_test.example_test_1", "test_1", PASS),
        ("main_test.example_test_2", "test_1", FAIL),
        ("main_test.example_test_2", "test_2", SKIP),
    ]


def test_ktap_suite_failing_without_a_failing_case() -> None:
    text = "KTAP version 1\n1..1\n    # Subtest: s\n    1..1\n    ok 1 a\nnot ok 1 s\n"
    assert summary(tap.parse(text)) == [("s", "a", PASS), ("", "s", FAIL)]


def test_tap_kselftest() -> None:
    text = "\n".join([
        "TAP version 13", "1..4",
        "# selftests: net: reuseport_bpf", "# ---- IPv4 UDP ----",
        "ok 1 selftests: net: reuseport_bpf",
        "# selftests: net: tls", "# TAP version 13", "# 1..2",
        "# ok 1 tls.sendfile", "# not ok 2 tls.splice",
        "not ok 2 selftests: net: tls # exit=1",
        "ok 3 selftests: net: udpgso # SKIP",
        "not ok 4 - selftests: net: fcnal-test # TODO flaky on slow hosts",
    ])
    cases = tap.parse(text)
    assert summary(cases) == [
        ("", "selftests: net: reuseport_bpf", PASS),
        ("", "selftests: net: tls", FAIL),
        ("", "selftests: net: udpgso", SKIP),
        ("", "selftests: net: fcnal-test", SKIP),
    ]
    assert cases[1].message.endswith("not ok 2 tls.splice\nexit=1")
    assert cases[3].message == "TODO flaky on slow hosts"
    assert {c.format for c in cases} == {"TAP"}


def test_tap_missing_results_at_top_level() -> None:
    cases = tap.parse_tap("TAP version 13\n1..3\nok 1 a\n")
    assert summary(cases) == [("", "a", PASS), ("", tap.MISSING, FAIL)]


# -- test_bpf and kernel test modules ----------------------------------------------------------

_SUMMARY = re.compile(r"test_bpf: (?:(test_\w+): )?Summary: (\d+) PASSED, (\d+) FAILED")


def test_test_bpf_full_capture_matches_its_summaries() -> None:
    text = read("linux/modules-x64.log.gz")
    first_run = text[: text.index("harness-module: test_bpf exit=0")]
    cases = test_bpf.parse(first_run)
    counts = Counter((c.suite, c.status) for c in cases)
    # The module's own summary lines are the reference: every test counted, none invented.
    expected: Counter[tuple[str, Status]] = Counter()
    for suite, passed, failed in _SUMMARY.findall(first_run):
        name = test_bpf.SUITES[suite]
        expected[name, PASS] += int(passed)
        expected[name, FAIL] += int(failed)
    assert +counts == +expected
    assert counts["test_bpf", PASS] == 1026  # 6.1's numbered tests, all passing under TCG
    assert len(cases) == 1026 + 10 + 2
    assert len({(c.suite, c.name) for c in cases}) == len(cases)  # names unique in a run
    first = cases[0]
    assert (first.name, first.suite) == ("TAX", "test_bpf")
    # Durations are the gaps between kernel timestamps of consecutive tests.
    stamps = {ln.text.split(" jited")[0]: ln.timestamp for ln in console_lines(first_run)
              if ln.text.startswith(("test_bpf: #0 TAX", "test_bpf: #1 TXA", "test_bpf: Sum"))}
    tax, txa = stamps["test_bpf: #0 TAX"], stamps["test_bpf: #1 TXA"]
    assert tax is not None and txa is not None
    assert first.duration_s == pytest.approx(txa - tax, abs=1e-9)
    total = sum(c.duration_s for c in cases if c.suite == "test_bpf")
    end = next(v for k, v in stamps.items() if k.startswith("test_bpf: Summary"))
    assert end is not None
    assert total == pytest.approx(end - tax, abs=1e-6)


def test_test_bpf_trimmed_capture() -> None:
    text = read("linux/test_bpf.log")
    cases = test_bpf.parse(text)
    test_lines = [ln for ln in text.splitlines() if "test_bpf: #" in ln]
    assert len(cases) == len(test_lines)
    assert all(c.status == PASS for c in cases)
    assert Counter(c.suite for c in cases) == {
        "test_bpf": len(test_lines) - 14, "test_bpf.tail_calls": 10, "test_bpf.skb_segment": 4}


def test_test_bpf_failures_in_the_module_formats() -> None:
    """The failure forms lib/test_bpf.c prints (run_one, generate_filter, pr_cont splits)."""
    text = "\n".join([
        "[    2.1] test_bpf: #0 TAX jited:1 143 152 59 PASS",
        "[    2.2] test_bpf: #1 LD_ABS jited:1 45 ret 0 != 1 (0x0 != 0x1)FAIL (1 times)",
        "[    2.3] test_bpf: #2 check: missing ret PASS",
        "[    2.4] test_bpf: #3 LD_IND FAIL to prog_create err=-22 len=4",
        "[    2.5] test_bpf: #4 JMP_JA: Jump, gap, jump jited:1 UNEXPECTED_PASS",
        "[    2.6] test_bpf: #5 ALU_MOV_X ",
        "[    2.6] clocksource: Switched to clocksource tsc",
        "[    2.7] jited:1 96 PASS",
        # Seen on a qemu-arm64 run: the split after the timings, the result alone.
        "[7.170788] test_bpf: #6 ALU_OR_K: 1 | 2 = 3 jited:1 75 ",
        "[7.201870] hrtimer: interrupt took 20172448 ns",
        "[7.201973] PASS",
        "[7.202195] test_bpf: #7 ALU_OR_K: 0 & 0xffffffff = 0xffffffff jited:1 81 ",
        "[7.202198] ret 0 != 1 (0x0 != 0x1)FAIL (1 times)",
        "[    2.8] test_bpf: Summary: 5 PASSED, 4 FAILED, [6/6 JIT'ed]",
        "[    2.9] test_bpf: #0 Tail call leaf jited:1 ",
    ])
    cases = test_bpf.parse(text)
    assert summary(cases) == [
        ("test_bpf", "TAX", PASS),
        ("test_bpf", "LD_ABS", FAIL),
        ("test_bpf", "check: missing ret", PASS),
        ("test_bpf", "LD_IND", FAIL),
        ("test_bpf", "JMP_JA: Jump, gap, jump", FAIL),
        ("test_bpf", "ALU_MOV_X", PASS),
        ("test_bpf", "ALU_OR_K: 1 | 2 = 3", PASS),
        ("test_bpf", "ALU_OR_K: 0 & 0xffffffff = 0xffffffff", FAIL),
        ("test_bpf.tail_calls", "Tail call leaf", FAIL),  # cut off: the next suite ran
    ]
    assert cases[1].message == "ret 0 != 1 (0x0 != 0x1)FAIL (1 times)"
    assert cases[3].message == "FAIL to prog_create err=-22 len=4"
    assert cases[4].message == "UNEXPECTED_PASS"
    assert cases[7].message == "ret 0 != 1 (0x0 != 0x1)FAIL (1 times)"
    assert cases[8].message == NO_RESULT
    assert cases[0].duration_s == pytest.approx(0.1)


def test_modules_by_marker() -> None:
    cases = linux_module.parse(read("linux/modules-x64.log.gz"))
    modules = [(c.suite, c.status) for c in cases if c.name == linux_module.CASE]
    assert modules == [
        ("test_static_key_base", PASS),
        ("test_static_keys", PASS),
        ("test_user_copy", PASS),
        ("test_bpf", FAIL),  # test_id=100000: init refused it
        ("test_no_such_module", FAIL),
    ]
    bad_id = next(c for c in cases if c.suite == "test_bpf" and c.name == linux_module.CASE)
    assert "invalid test_id specified for 'test_bpf' suite." in bad_id.message
    assert "insmod: can't insert '/mods/test_bpf.ko': Invalid argument" in bad_id.message
    bpf = Counter(c.suite for c in cases if c.name != linux_module.CASE)
    # The full run, then a second load with test_suite=test_skb_segment.
    assert bpf == {"test_bpf": 1026, "test_bpf.tail_calls": 10, "test_bpf.skb_segment": 4}


def test_module_verdicts_without_markers() -> None:
    text = "\n".join([
        "[    3.0] test_user_copy: [123] legitimate copy_from_user failed",
        "insmod: can't insert '/mods/test_user_copy.ko': Invalid argument",
        "insmod: ERROR: could not insert module /lib/modules/test_static_keys.ko: "
        "Invalid parameters",
    ])
    cases = linux_module.parse(text)
    assert summary(cases) == [("test_user_copy", "module_init", FAIL),
                              ("test_static_keys", "module_init", FAIL)]
    assert cases[0].message.startswith("[123] legitimate copy_from_user failed")


def test_parse_module_uses_the_exit_status() -> None:
    assert linux_module.parse_module("", "test_static_keys", 0)[0].status == PASS
    failed = linux_module.parse_module("", "test_static_keys", 22)
    assert (failed[0].status, failed[0].message) == (FAIL, "exit status 22")
    quiet = linux_module.parse_module("", "test_user_copy", 0)
    assert quiet[0].status == FAIL
    assert "log level" in quiet[0].message
    assert linux_module.result_line("test_bpf", 0) == "harness-module: test_bpf exit=0"


# -- registry and detection --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fmt"), [
    (read("zircon/core-tests.log"), "gtest"),
    (read("zircon/ut-all.log"), "ut"),
    (read("zircon/runtests.log"), "runtests"),
    (read("linux/modules-x64.log.gz"), "linux-module"),
    (read("linux/test_bpf.log").replace("harness-module:", "x"), "test_bpf"),
    (KUNIT, "ktap"),
    ("TAP version 13\n1..1\nok 1 a\n", "tap"),
    ("[    1.0] test_user_copy: tests passed.\n", "linux-module"),
    ("just a boot log\n$ ", None),
])
def test_detect(text: str, fmt: str | None) -> None:
    assert parsers.detect(text) == fmt


def test_registry_is_read_only_and_complete() -> None:
    assert set(parsers.FORMATS) == {"gtest", "zxtest", "ftf", "zircon-utest", "rust", "go",
                                    "vulkan-cts", "ut", "runtests", "ktap", "tap", "test_bpf",
                                    "linux-module"}
    with pytest.raises(TypeError):
        parsers.FORMATS["x"] = gtest.parse  # type: ignore[index]


# -- parse_log ---------------------------------------------------------------------------------

SERIAL_FILES = sorted(ZIRCON_SERIAL.glob("syzkaller-report-*.txt"))


@pytest.mark.parametrize("path", SERIAL_FILES, ids=lambda p: p.name)
def test_parse_log_finds_a_crash_in_every_zircon_capture(path: Path) -> None:
    result = parse_log(path.read_bytes(), profile="zircon", booted=True)
    assert result["crashes"], path.name
    data = path.read_bytes()
    for crash in result["crashes"]:
        line_end = data.find(b"\n", crash["offset"])
        line = data[crash["offset"]:line_end].decode(errors="replace").strip()
        assert line in crash["excerpt"]


def test_parse_log_zircon_crash_and_cut_off_case() -> None:
    data = (FIXTURES / "zircon" / "core-tests-crash.log").read_bytes()
    result = parse_log(data, profile="zircon")
    assert result["format"] == "gtest"
    assert [c["signature"] for c in result["crashes"]] == ["zircon-kernel-panic"]
    assert result["totals"] == {"PASS": 1, "FAIL": 1, "INFRA_FAIL": 0, "ABORT": 0, "SKIP": 0,
                                "EXONERATED": 0}
    cases = [Case.from_json(c) for c in result["cases"]]
    assert summary(cases) == [("FutexTest", "Wait", PASS), ("FutexTest", "WakeRequeue", FAIL)]
    json.dumps(result)  # what `harness parse` prints


def test_parse_log_linux_with_explicit_format() -> None:
    data = (FIXTURES / "linux" / "test_bpf.log").read_bytes()
    detected = parse_log(data)
    assert detected["format"] == "linux-module"
    only_bpf = parse_log(data, fmt="test_bpf")
    assert only_bpf["format"] == "test_bpf"
    assert only_bpf["totals"]["PASS"] == detected["totals"]["PASS"] - 3  # the other modules
    assert only_bpf["crashes"] == []


def test_parse_log_linux_panic() -> None:
    result = parse_log((FIXTURES / "linux" / "panic-x64.log").read_bytes())
    assert [c["signature"] for c in result["crashes"]] == ["linux-panic"]
    assert result["format"] is None
    assert result["cases"] == []


def test_parse_log_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="format"):
        parse_log(b"", fmt="junit")
    with pytest.raises(ConfigError, match="profile"):
        parse_log(b"", profile="windows")
