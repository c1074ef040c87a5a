"""testparser_test.go's inputs give its expected cases, through `harness parse`.

The inputs and expectations are Fuchsia's own (tests/fixtures/testparser/README.md). Each is
run through the real command line (`harness.cli.main`, and once as a subprocess), and the
cases it prints are compared field by field with testparser's, as testCaseCmp compares them:
sorted by display name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import parsers
from harness.cli import main
from harness.parse_log import parse_log
from harness.parsers import gtest
from harness.parsers.gotest import go_duration
from harness.results import Case, Status

FIXTURES = Path(__file__).parent / "fixtures" / "testparser"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.txt"))


def as_testparser(case: dict) -> dict:
    """A case from `harness parse` in runtests.go's TestCaseResult shape."""
    c = Case.from_json(case)
    out = {
        "display_name": parsers.display_name(c),
        "suite_name": c.suite,
        "case_name": c.name,
        "status": c.status.value,
        "duration_nanos": round(c.duration_s * 1e9),
        "format": c.format,
    }
    if c.message:
        out["fail_reason"] = c.message
    if c.tags:
        out["tags"] = [{"key": k, "value": v} for k, v in c.tags.items()]
    return out


def parse_cli(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["parse", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_upstream_case_has_its_expectation() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == NAMES
    assert len(NAMES) == 14


@pytest.mark.parametrize("name", NAMES)
def test_upstream_input_gives_upstream_cases(name: str, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    want = json.loads((FIXTURES / f"{name}.json").read_text())
    got = [as_testparser(c) for c in parse_cli(FIXTURES / f"{name}.txt", capsys)["cases"]]
    key = lambda c: c["display_name"]  # noqa: E731 - testCaseCmp's sort
    assert sorted(got, key=key) == sorted(want, key=key)


def test_harness_parse_as_a_subprocess_names_the_format() -> None:
    """The installed command, end to end: FTF detected, TIMED_OUT an ABORT, tags kept."""
    out = subprocess.run([sys.executable, "-m", "harness", "parse",
                          str(FIXTURES / "TestParseTrfTestWithExpectations.txt")],
                         capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["format"] == "ftf"
    assert {c["name"]: c["tags"] for c in result["cases"]} == {
        "ChrootTest.ProcMemSelfMapsNoEscapeProcOpen": {"expectation": "skip"},
        "ChrootTest.Success": {"expectation": "success"},
        "ChrootTest.ProcMemSelfFdsNoEscapeProcOpen": {"expectation": "failure"},
    }
    trf = parse_log((FIXTURES / "TestParseTrfTest.txt").read_bytes())
    assert trf["totals"]["ABORT"] == 1


@pytest.mark.parametrize(("name", "fmt"), [
    ("TestParseTrfTest", "ftf"), ("TestParseTrfTestWithExpectations", "ftf"),
    ("TestTRFLegacyTest", "ftf"), ("TestParseGoogleTest", "gtest"), ("TestFxb51327", "gtest"),
    ("TestParseZircon", "zircon-utest"), ("TestParseVulkanCts", "vulkan-cts"),
    ("TestParseGo", "go"), ("TestParseGoPanic", "go"), ("TestParseRust", "rust"),
    ("TestFxb52363", "rust"), ("TestParseInvalid", None), ("TestParseEmpty", None),
])
def test_detection_follows_testparsers_preambles(name: str, fmt: str | None) -> None:
    assert parsers.detect((FIXTURES / f"{name}.txt").read_text()) == fmt


def test_format_option_still_chooses_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """The FTF input holds GoogleTest output: `--format gtest` reads that instead."""
    assert main(["parse", "--format", "gtest",
                 str(FIXTURES / "TestParseTrfTestWithExpectations.txt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "gtest"
    assert [(c["suite"], c["name"], c["status"]) for c in result["cases"]] == [
        ("ChrootTest", "Success", "PASS"),
        ("ChrootTest", "ProcMemSelfFdsNoEscapeProcOpen", "FAIL"),
    ]


def test_go_durations() -> None:
    assert go_duration("0.01s") == pytest.approx(0.01)
    assert go_duration("1m30s") == 90
    assert go_duration("250ms") == pytest.approx(0.25)
    assert go_duration("4.378744489s") == pytest.approx(4.378744489)
    assert go_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert go_duration("0") == 0
    assert go_duration("nonsense") == 0


# -- kernel log lines stay out of case messages ------------------------------------------------


def test_kernel_log_lines_are_not_a_case_message() -> None:
    """On a Zircon console a driver's klog line can land inside a failing case: not its failure.
    Lines from the test's own process (same pid) are."""
    text = ("[00010.000] 01100:01101> [ RUN      ] VmoTest.Grow\r\n"
            "[00010.001] 01100:01101> vmo.cc:12: Failure: Expected size == 8.\r\n"
            "[00010.002] 01044:01201> devmgr: /dev/sys/pci/00:1f.2 bound\r\n"
            "[00010.003] 01100:01105> helper thread saw 7\r\n"
            "[00010.004] 00000:01027> ZIRCON KERNEL OOPS nearby\r\n"
            "[00010.005] 01100:01101> [  FAILED  ] VmoTest.Grow (5 ms)\r\n"
            "[ RUN      ] VmoTest.Plain\r\n"
            "plain.cc:3: Failure\r\n"
            "[00011.000] 01044:01201> devmgr: something else\r\n"
            "[  FAILED  ] VmoTest.Plain (1 ms)\r\n")
    cases = gtest.parse(text)
    assert [(c.name, c.status) for c in cases] == [("Grow", Status.FAIL), ("Plain", Status.FAIL)]
    assert cases[0].message == "vmo.cc:12: Failure: Expected size == 8.\nhelper thread saw 7"
    assert cases[1].message == "plain.cc:3: Failure"


def test_kernel_unittests_keep_their_own_threads_lines() -> None:
    """The kernel's `ut` prints from the kernel (pid 0): only the test thread's lines count."""
    from harness.parsers import zircon_ut

    text = ("[00005.100] 00000:01027> timer : Running 1 test...\r\n"
            "[00005.103] 00000:01027>   deadline_slack         : \r\n"
            "[00005.103] 00000:01027>         [FAILED] \r\n"
            "[00005.103] 00000:00999> lockup_detector: something from another cpu\r\n"
            "[00005.103] 00000:01027>         kernel/tests/timer_tests.cc:211:\r\n"
            "[00005.103] 00000:01027>   deadline_slack         : FAILED (1000 nSec)\r\n"
            "[00005.105] 00000:01027> timer : Not all tests passed (0/1) in 4262750 nSec\r\n")
    (case,) = zircon_ut.parse(text)
    assert case.message == "[FAILED]\nkernel/tests/timer_tests.cc:211:"


def test_ftf_and_rust_failure_reasons_skip_kernel_lines() -> None:
    from harness.parsers import ftf, rust

    trf = ("Running test 'fuchsia-pkg://fuchsia.com/x#meta/x.cm'\n"
           "[RUNNING]\tA.B\n[stderr - A.B]\nfirst\n"
           "[00012.000] 01044:01201> devmgr: noise\n"
           "[stderr - A.B]\nsecond\n[FAILED]\tA.B\n")
    assert ftf.parse(trf)[0].message == "first\nsecond"
    rs = ("running 1 test\ntest a::b ... FAILED\n---- a::b stderr ----\n"
          "thread 'main' panicked\n[00012.000] 00000:00001> klog\nfailures:\n")
    assert rust.parse(rs)[0].message == "thread 'main' panicked"
