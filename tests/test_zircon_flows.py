"""Fuchsia's serial tester and its own reboot, shutdown and device-enumeration flows, on Zircon.

No Zircon image boots here, so everything runs on a real Guest and Console driven by the
transcript VMM of tests/test_suites_offline.py (a pty peer answering each line the harness
sends), with transcripts made of the exact lines Fuchsia's tools print or wait for (cited)
and a real Zircon capture (tests/fixtures/zircon/flows/README.md). Where Fuchsia's own tests
give input/output pairs (tester_test.go's command lines and parseOutKernelReader cases), they
are reproduced as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_suites_offline import (
    FIXTURES,
    REPO,
    Launch,
    Step,
    TranscriptEngine,
    TranscriptVmm,
    environment,
)
from test_suites_offline_b import FakeGuest

from harness import inventory, parsers
from harness.app import make_engines, requirement_check
from harness.engines.base import RunPaths, VmmSetup
from harness.environments import Environment
from harness.errors import ConfigError
from harness.exits import ExitKind
from harness.fuchsia import serialtester
from harness.fuchsia.serialtester import SerialTester, command_for_test, parse_out_kernel
from harness.guest import Guest
from harness.images.model import GuestImage
from harness.plan import PlannedRun
from harness.profiles import zircon
from harness.results import Status
from harness.runner import Runner, RunOptions, spec_params
from harness.spec import parse_specs
from harness.suite import Skip
from harness.suite import TestContext as Context  # not "Test*": pytest would collect it
from suites import device_enumeration as de
from suites import reboot_shutdown as rs

FLOWS = FIXTURES / "zircon" / "flows"
ENUM = FIXTURES / "zircon" / "enumeration"
PROMPT = b"$ "

# -- a transcript VMM that can also speak later, as a guest does ---------------------------


@dataclasses.dataclass
class Later(Step):
    """A step whose answer goes on `delay` s after the command (a test that takes time)."""

    later: bytes = b""
    delay: float = 0.0


@dataclasses.dataclass
class LaunchLater(Launch):
    """A launch whose guest prints `later` `delay` s after its boot, unasked."""

    later: bytes = b""
    delay: float = 0.0


class DelayedVmm(TranscriptVmm):
    def __init__(self, fd: int, launch: Launch, log: list[str]) -> None:
        super().__init__(fd, launch, log)
        if isinstance(launch, LaunchLater) and launch.later:
            self._after(launch.delay, launch.later)

    def _answer(self, step: Step, line: str) -> bytes | None:
        reply = super()._answer(step, line)
        if reply is not None and isinstance(step, Later) and step.later:
            self._after(step.delay, step.later)
        return reply

    def _after(self, delay: float, data: bytes) -> None:
        def write() -> None:
            with contextlib.suppress(OSError):  # the VMM may be gone by then
                os.write(self.fd, data)

        timer = threading.Timer(delay, write)
        timer.daemon = True
        timer.start()


class DelayedEngine(TranscriptEngine):
    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> DelayedVmm:
        assert self.launches, "the guest was launched more often than the transcript has boots"
        vmm = DelayedVmm(os.dup(console_fd), self.launches.pop(0), self.sent)
        self.vmms.append(vmm)
        return vmm


def image(env: Environment) -> GuestImage:
    return GuestImage(name="transcript", arch=env.arch, kernel=Path("/nonexistent"), initrd=None)


@dataclasses.dataclass
class Zircon:
    guest: Guest
    engine: DelayedEngine
    env: Environment
    folder: Path


@pytest.fixture
async def zircon_guest(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Zircon] = []

    async def make(env: Environment, launches: list[Launch]) -> Zircon:
        engine = DelayedEngine(env.engine, launches)
        n = len(made)
        folder, workdir = tmp_path / f"test{n}", tmp_path / f"work{n}"
        workdir.mkdir()
        guest = Guest(env, engine, image(env), folder / "serial.log", workdir=workdir,
                      own_workdir=False, setup=VmmSetup("transcript-vmm", "tcg"))
        made.append(Zircon(guest, engine, env, folder))
        with anyio.fail_after(10):
            await guest.start()
        return made[-1]

    yield make
    for z in made:
        await z.guest.close()


def zenv(name: str = "qemu-x64", **changes: Any) -> Environment:
    return environment(name, profile="zircon", **changes)


# -- transcripts ---------------------------------------------------------------------------


def boot(*, drop: tuple[str, ...] = ()) -> bytes:
    """tests/fixtures/zircon/flows/boot-x64.log, less the lines containing `drop`."""
    lines = (FLOWS / "boot-x64.log").read_bytes().split(b"\n")
    kept = [ln for ln in lines if not any(d.encode() in ln for d in drop)]
    return b"\n".join(kept)


def klog(text: str, t: float = 40.0) -> bytes:
    return b"[%09.3f] 01102:01105> %s\r\n" % (t, text.encode())


def halt(action: int, reason: int) -> bytes:
    return b"[00041.002] 00000:01044> platform_halt suggested_action %d reason %d\r\n" % (
        action, reason)


def acpi(command: str, *, ready: bool = True) -> list[Step]:
    """The x64 ACPI wait: the shell echoes the command (with ACPI_READY in it), then the echo."""
    return [Step(re.escape(command), (b"ACPI_READY\r\n" if ready else b"") + PROMPT)]


# -- the serial tester: pure parts against Fuchsia's own test vectors ----------------------


def spec(test: dict[str, Any], **entry: Any) -> Any:
    envs = [{"dimensions": {"device_type": "QEMU", "cpu": "x64"}}]
    return parse_specs([{"test": {"name": test.get("package_url") or test.get("path") or "t",
                                  **test}, "environments": envs, **entry}])[0]


# tools/testing/testrunner/tester_test.go, TestCommandForTest (the serial cases, and the
# component cases, which take the same branch over serial). timeout_secs is its timeout.
@pytest.mark.parametrize(("test", "expected"), [
    ({"package_url": "fuchsia-pkg://example.com/test.cm"},
     ["run-test-suite", "--filter-ansi", "fuchsia-pkg://example.com/test.cm"]),
    ({"path": "/path/to/test"}, ["runtests", "/path/to/test"]),
    ({"path": "/path/to/test", "timeout_secs": 1}, ["runtests", "-i", "1", "/path/to/test"]),
    ({"path": "/path/to/test", "package_url": "fuchsia-pkg://example.com/test.cm"},
     ["run-test-suite", "--filter-ansi", "fuchsia-pkg://example.com/test.cm"]),
    ({"path": "/path/to/test", "package_url": "fuchsia-pkg://example.com/test.cm", "parallel": 2},
     ["run-test-suite", "--filter-ansi", "--parallel", "2", "fuchsia-pkg://example.com/test.cm"]),
    ({"path": "/path/to/test", "package_url": "fuchsia-pkg://example.com/test.cm",
      "timeout_secs": 1},
     ["run-test-suite", "--filter-ansi", "--timeout", "1", "fuchsia-pkg://example.com/test.cm"]),
    ({"path": "/path/to/test", "package_url": "fuchsia-pkg://example.com/test.cm",
      "realm": "/some/realm"},
     ["run-test-suite", "--filter-ansi", "--realm", "/some/realm",
      "fuchsia-pkg://example.com/test.cm"]),
    ({"path": "/path/to/test", "package_url": "fuchsia-pkg://example.com/test.cm", "realm": ""},
     ["run-test-suite", "--filter-ansi", "fuchsia-pkg://example.com/test.cm"]),
    # The rest of commandForTest's flags, in its order (tools/build/tests.go field names).
    ({"package_url": "fuchsia-pkg://f/t#meta/t.cm", "timeout_secs": 600, "parallel": 1,
      "log_settings": {"max_severity": "ERROR", "min_severity": "DEBUG"},
      "create_no_exception_channel": True},
     ["run-test-suite", "--filter-ansi", "--max-severity-logs", "ERROR", "--min-severity-logs",
      "DEBUG", "--parallel", "1", "--timeout", "600", "--no-exception-channel",
      "fuchsia-pkg://f/t#meta/t.cm"]),
])
def test_command_for_test_matches_tester_test_go(test: dict[str, Any], expected: list[str]
                                                 ) -> None:
    assert command_for_test(spec(test)) == expected


def test_command_for_test_refusals() -> None:
    with pytest.raises(serialtester.CannotRun, match="CFv1 tests are no longer supported"):
        command_for_test(spec({"package_url": "fuchsia-pkg://f/t#meta/t.cmx"}))
    with pytest.raises(serialtester.CannotRun, match='Path is not set for "x"'):
        command_for_test(spec({"name": "x"}))


# tester_test.go, TestParseOutKernelReader: input and expected output, verbatim.
@pytest.mark.parametrize(("output", "expected"), [
    ("line1\n[line2]output\nline3[output]\nline4[out",
     "line1\n[line2]output\nline3[output]\nline4[out"),
    ("line1\n[123.456]kernel line1\noutput[123.456]kernel line2\noutput continued [bracket] "
     "output [123.456] kernel [line3]\noutput continued[123]\n",
     "line1\noutputoutput continued [bracket] output output continued"),
    ("line1[123.456]" + "a" * 2000 + "\noutput continued\n", "line1output continued\n"),
    ("line1[" + "1" * 2000 + "\noutput continued[123",
     "line1[" + "1" * 2000 + "\noutput continued[123"),
])
def test_parse_out_kernel_matches_tester_test_go(output: str, expected: str) -> None:
    assert parse_out_kernel(output) == expected


# -- routing: which entries the tester takes, and the runner's hook ----------------------------


def test_requirement_check_routes_zircon_entries_to_the_serial_tester() -> None:
    check = requirement_check({}, make_engines())
    z, linux = zenv(), environment("qemu-x64")
    package = spec({"package_url": "fuchsia-pkg://f/t#meta/t.cm"})
    assert check(package, z) is None
    assert check(spec({"path": "/boot/test/core-tests"}), z) is None
    # Linux environments run `path` programs only; a component test there is ffx's.
    assert "runs through ffx over SSH" in (check(package, linux) or "")
    assert check(spec({"package_url": "fuchsia-pkg://f/t#meta/t.cm"}, expects_ssh=True), z) \
        == serialtester.SSH_REASON
    assert "host test (os 'linux')" in (check(spec({"path": "host_x64/t", "os": "linux"}), z)
                                        or "")
    assert "neither a `path` nor a `package_url`" in (check(spec({"name": "x"}), z) or "")
    # A CFv1 URL is not skipped: it fails when it runs, with commandForTest's message.
    assert check(spec({"package_url": "fuchsia-pkg://f/t#meta/t.cmx"}), z) is None
    assert serialtester.outer_timeout(spec({"path": "/p", "timeout_secs": 60})) == 90.0
    # Boot tests are not the tester's.
    assert not serialtester.handles(spec({"path": "b"}, is_boot_test=True), z)
    with pytest.raises(ConfigError, match=r"entry 0 .*field 'parallel': expected a whole"):
        check(spec({"package_url": "fuchsia-pkg://f/t#meta/t.cm", "parallel": "2"}), z)
    with pytest.raises(ConfigError, match=r"field 'expects_ssh': expected true or false"):
        check(spec({"package_url": "fuchsia-pkg://f/t#meta/t.cm"}, expects_ssh="yes"), z)


def zircon_environments(tmp: Path) -> Path:
    """environments.json with one Zircon environment booting plain files (never booted here)."""
    data = json.loads((REPO / "environments.json").read_text())
    kernel = tmp / "multiboot.bin"
    kernel.write_bytes(b"\0")
    zbi = tmp / "fuchsia.zbi"
    zbi.write_bytes(b"\0")
    base = data["environments"]["qemu-x64-minimal"]
    data["environments"] = {"zircon-x64": {**base, "profile": "zircon",
                                           "image": {"kernel": str(kernel), "initrd": str(zbi)}}}
    path = tmp / "environments.json"
    path.write_text(json.dumps(data))
    return path


def test_harness_plan_skips_ssh_entries_and_rejects_bad_fields(tmp_path: Path) -> None:
    envs = zircon_environments(tmp_path)
    dims = [{"dimensions": {"device_type": "QEMU", "cpu": "x64"}}]
    tests = tmp_path / "tests.json"
    tests.write_text(json.dumps([
        {"test": {"name": "fuchsia-pkg://f/a#meta/a.cm", "package_url": "fuchsia-pkg://f/a#meta/a.cm",
                  "os": "fuchsia"}, "environments": dims},
        {"test": {"name": "fuchsia-pkg://f/b#meta/b.cm", "package_url": "fuchsia-pkg://f/b#meta/b.cm",
                  "os": "fuchsia"}, "environments": dims, "expects_ssh": True},
    ]))
    cmd = [sys.executable, "-m", "harness", "plan", "--tests", str(tests), "--environments",
           str(envs), "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    runs = {r["test"]: r for r in json.loads(done.stdout)["runs"]}
    assert runs["fuchsia-pkg://f/a#meta/a.cm"]["skip_reason"] is None
    assert runs["fuchsia-pkg://f/b#meta/b.cm"]["skip_reason"] == serialtester.SSH_REASON

    tests.write_text(json.dumps([{"test": {"name": "u", "package_url": "fuchsia-pkg://f/u#meta/u.cm",
                                           "os": "fuchsia", "log_settings": {"max_severity": 3}},
                                  "environments": dims}]))
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "field 'log_settings.max_severity': expected a string, got 3" in done.stderr
    assert "Traceback" not in done.stderr


URL_OK = "fuchsia-pkg://fuchsia.com/slow-tests#meta/slow-tests.cm"
URL_SSH = "fuchsia-pkg://fuchsia.com/net-tests#meta/net-tests.cm"


async def test_runner_runs_zircon_entries_through_the_serial_tester(tmp_path: Path) -> None:
    """The hook end to end: tests.json entries on a Zircon environment, a real Runner.

    The package test completes 1.5 s after it starts, past its 1 s timeout_secs: it passes
    because the whole test may take its timeout + 30 s (lib.go), as on Fuchsia.
    """
    env = zenv("qemu-x64-minimal")
    entries = parse_specs([
        {"test": {"name": URL_OK, "package_url": URL_OK, "os": "fuchsia", "timeout_secs": 1},
         "environments": [{"dimensions": {"device_type": "QEMU", "cpu": "x64"}}]},
        {"test": {"name": "/boot/test/fs-tests", "path": "/boot/test/fs-tests",
                  "timeout_secs": 60}, "environments": [{"dimensions": {}}]},
        {"test": {"name": URL_SSH, "package_url": URL_SSH}, "expects_ssh": True,
         "environments": [{"dimensions": {}}]},
    ])
    check = requirement_check({}, make_engines())
    runs = [PlannedRun(s, env, skip_reason=check(s, env)) for s in entries]
    fs_tests = runtests_section("/boot/test/fs-tests")
    engine = DelayedEngine("qemu", [Launch(boot(), [
        Step("", PROMPT),
        Later(re.escape(f"run-test-suite --filter-ansi --timeout 1 {URL_OK}"),
              f"Running test '{URL_OK}'\r\n[RUNNING]\tSlow.Case\r\n".encode(),
              later=f"[PASSED]\tSlow.Case\r\n{URL_OK} completed with result: PASSED\r\n"
                    .encode() + PROMPT, delay=1.5),
        Step("", PROMPT),
        Step(re.escape("runtests -i 60 /boot/test/fs-tests"), fs_tests + PROMPT),
    ], prompt=PROMPT)])
    runner = Runner(runs, {}, {"qemu": engine},
                    RunOptions(out_dir=tmp_path / "out", jobs=1, progress=False),
                    image_for=image)
    with anyio.fail_after(60):
        result = await runner.run()
    by_name = {r.test: r for r in result.results}
    ok = by_name[URL_OK]
    assert ok.status == Status.PASS, ok.final.message
    assert ok.final.properties["serial_command"] == f"run-test-suite --filter-ansi --timeout 1 " \
                                                    f"{URL_OK}"
    assert ok.final.properties["bootup_completed"] == "during boot"
    fs = by_name["/boot/test/fs-tests"]
    assert fs.status == Status.FAIL
    assert fs.final.message == "test failed"
    assert [(c.suite, c.name, c.status) for c in fs.final.cases] == [
        ("MinfsTest", "Truncate", Status.FAIL)]
    ssh = by_name[URL_SSH]
    assert (ssh.status, ssh.final.message) == (Status.SKIP, serialtester.SSH_REASON)
    assert len(engine.vmms) == 1  # the two runnable entries shared one boot, as on Fuchsia
    assert engine.unexpected == []


# -- the serial tester on a guest --------------------------------------------------------------


def runtests_section(path: str) -> bytes:
    """One binary's section of tests/fixtures/zircon/runtests.log (runtests-utils' output)."""
    text = (FIXTURES / "zircon" / "runtests.log").read_bytes()
    begin = text.index(b"RUNNING TEST: " + path.encode())
    end = text.index(b"\n", text.index(b"[runtests][", begin)) + 1
    return text[begin:end]


def context(z: Zircon, entry: dict[str, Any], **fields: Any) -> Context:
    s = spec(entry, **fields)
    z.folder.mkdir(parents=True, exist_ok=True)
    return Context(guest=z.guest, env=z.env, spec=s, folder=z.folder, params=spec_params(s))


async def test_runtests_entry_passes_with_its_cases(zircon_guest: Any) -> None:
    section = runtests_section("/boot/test/core-tests")
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape("runtests -i 60 /boot/test/core-tests"),
                               section + PROMPT)], prompt=PROMPT)])
    t = context(z, {"path": "/boot/test/core-tests", "timeout_secs": 60})
    await SerialTester().test(t)
    # tester_test.go: the command goes out as "\r\n" + command + "\r\n".
    assert z.engine.sent == ["", "runtests -i 60 /boot/test/core-tests"]
    assert t.properties["serial_result"] == "[runtests][PASSED] /boot/test/core-tests"
    assert t.properties["start_attempts"] == "1"
    assert t.properties["format"] == "gtest"
    assert [(c.suite, c.name, c.status) for c in t.cases] == [
        ("HandleTest", "Close", Status.PASS), ("HandleTest", "Duplicate", Status.PASS)]


async def test_runtests_entry_fails_on_its_failure_signature(zircon_guest: Any) -> None:
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(r"runtests /boot/test/fs-tests",
                               runtests_section("/boot/test/fs-tests") + PROMPT)], prompt=PROMPT)])
    t = context(z, {"path": "/boot/test/fs-tests"})
    with pytest.raises(AssertionError, match=r"^test failed\n\[runtests\]\[FAILED\] "):
        await SerialTester().test(t)
    # The kernel line inside the binary's output is not part of any case message.
    assert [(c.name, c.status) for c in t.cases] == [("Truncate", Status.FAIL)]
    assert "crash_analyzer" not in t.cases[0].message


def ftf(url: str, result: str) -> bytes:
    return (f"Running test '{url}'\r\n[RUNNING]\tA.B\r\n[PASSED]\tA.B\r\n"
            f"{url} completed with result: {result}\r\n").encode()


URL = "fuchsia-boot:///myfoo#meta/bar.cm"  # tester_test.go's package test


@pytest.mark.parametrize(("result", "outcome"), [
    ("PASSED", None), ("FAILED", AssertionError), ("INCONCLUSIVE", AssertionError),
    ("ERROR", AssertionError), ("DID_NOT_FINISH", AssertionError), ("SKIPPED", Skip),
    ("TIMED_OUT", serialtester.SerialTestAborted), ("CANCELLED", serialtester.SerialTestAborted),
])
async def test_run_test_suite_results_map_as_tester_go_maps_them(
        zircon_guest: Any, result: str, outcome: type[BaseException] | None) -> None:
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape(f"run-test-suite --filter-ansi {URL}"),
                               ftf(URL, result) + PROMPT)], prompt=PROMPT)])
    t = context(z, {"package_url": URL})
    if outcome is None:
        await SerialTester().test(t)
    else:
        with pytest.raises(outcome) as e:
            await SerialTester().test(t)
        message = str(e.value)
        assert message.startswith({AssertionError: "test failed",
                                   Skip: f"{URL} completed with result: SKIPPED",
                                   serialtester.SerialTestAborted: "test timed out or canceled"}
                                  [outcome])
    assert t.properties["serial_result"] == f"{URL} completed with result: {result}"


async def test_run_test_suite_output_of_testparser_test_go(zircon_guest: Any) -> None:
    """testparser_test.go's run-test-suite output: FAILED, kernel-stamped log lines cut out,
    and the cases are what harness.parsers makes of the test's own lines."""
    f2fs_url = "fuchsia-pkg://fuchsia.com/f2fs-fs-tests#meta/f2fs-unittest.cm"
    output = (FLOWS / "run-test-suite-f2fs.log").read_bytes().replace(b"\n", b"\r\n")
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape(f"run-test-suite --filter-ansi --timeout 300 {f2fs_url}"),
                               output + PROMPT)], prompt=PROMPT)])
    t = context(z, {"package_url": f2fs_url, "timeout_secs": 300})
    with pytest.raises(AssertionError, match=r"^test failed"):
        await SerialTester().test(t)
    saved = (z.folder / "serial-output.txt").read_text()
    assert "[PASSED]\tBCacheTest.Trim" in saved
    assert "Invalid device size" not in saved  # a `[00371.417610]...` line: cut, as upstream
    begin = saved.index(f"Running test '{f2fs_url}'") + len(f"Running test '{f2fs_url}'")
    end = saved.index(f"{f2fs_url} completed with result: FAILED")
    fmt, cases = parsers.parse(saved[begin:end])
    assert t.cases == cases and t.properties.get("format") == fmt


async def test_completion_split_by_a_kernel_line_still_counts(zircon_guest: Any) -> None:
    """parseOutKernelReader joins what a kernel line interrupted; a completion string inside
    a kernel line does not count."""
    reply = (f"Running test '{URL}'\r\n"
             f"[00012.345] 01234:01235> klog: {URL} completed with result: FAILED\r\n"
             f"{URL} complet[00012.400] 01234:01235> interrupting kernel line\r\n"
             f"ed with result: PASSED\r\n").encode()
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape(f"run-test-suite --filter-ansi {URL}"),
                               reply + PROMPT)], prompt=PROMPT)])
    t = context(z, {"package_url": URL})
    await SerialTester().test(t)
    assert t.properties["serial_result"].endswith("PASSED")


async def test_start_is_retried_and_gives_up_after_three_attempts(
        zircon_guest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialtester, "TEST_STARTED_TIMEOUT_S", 0.5)
    command = f"run-test-suite --filter-ansi {URL}"
    # The first command line is lost (no start line); the second starts the test.
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape(command), PROMPT),
        Step("", PROMPT), Step(re.escape(command), ftf(URL, "PASSED") + PROMPT)], prompt=PROMPT)])
    t = context(z, {"package_url": URL})
    await SerialTester().test(t)
    assert t.properties["start_attempts"] == "2"
    assert z.engine.sent == ["", command, "", command]
    assert any("attempt 1: test not started" in n for n in t.notes)

    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape(command), PROMPT)] * 3, prompt=PROMPT)])
    t = context(z, {"package_url": URL})
    with pytest.raises(serialtester.SerialTestNotStarted,
                       match="failed to start test over serial within 3 attempts"):
        await SerialTester().test(t)
    assert z.engine.sent == ["", command] * 3


async def test_no_result_within_the_io_timeout_fails(
        zircon_guest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialtester, "TIMEOUT_GRACE_S", 0.5)
    z = await zircon_guest(zenv(), [Launch(boot(), [
        Step("", PROMPT), Step(re.escape(f"run-test-suite --filter-ansi {URL}"),
                               f"Running test '{URL}'\r\n[RUNNING]\tA.B\r\n".encode())],
                                  prompt=PROMPT)])
    t = context(z, {"package_url": URL})
    with pytest.raises(AssertionError,
                       match=r"^unable to derive test result from run-test-suite output"):
        await SerialTester().test(t)


async def test_bootup_line_is_awaited_once_per_boot(
        zircon_guest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in the boot: waited for (it comes 0.5 s later); then never again on that boot.
    Never: the tester goes on after the wait, as Fuchsia's does."""
    late = klog(zircon.BOOTUP_COMPLETED + ".")
    steps = [Step("", PROMPT), Step(re.escape(f"run-test-suite --filter-ansi {URL}"),
                                    ftf(URL, "PASSED") + PROMPT)]
    z = await zircon_guest(zenv(), [LaunchLater(boot(drop=("Bootup completed",)), steps * 2,
                                                prompt=PROMPT, later=late, delay=0.5)])
    tester = SerialTester()
    t = context(z, {"package_url": URL})
    await tester.test(t)
    assert t.properties["bootup_completed"].startswith("after ")
    t = context(z, {"package_url": URL})
    started = time.monotonic()
    await tester.test(t)
    assert "bootup_completed" not in t.properties and time.monotonic() - started < 2

    monkeypatch.setattr(zircon, "BOOTUP_WAIT_S", 0.5)
    z = await zircon_guest(zenv(), [Launch(boot(drop=("Bootup completed",)), steps,
                                           prompt=PROMPT)])
    t = context(z, {"package_url": URL})
    await SerialTester().test(t)
    assert any("not seen within 0.5 s; going on" in n for n in t.notes)


# -- Fuchsia's reboot test ----------------------------------------------------------------------


def reboot_steps(command: str = "power reboot", *, after: bytes | None = None,
                 x64: bool = True) -> list[Step]:
    """The x64 ACPI wait, then the command, answered as reboottest.go expects: the file
    system's shutdown, platform_halt 1 (reboot) 2 (no crash), and the next boot."""
    if after is None:
        after = klog(rs.ZIRCON_FSHOST_DOWN) + halt(1, 2) + boot()
    return [*(acpi(rs.ZIRCON_REBOOT_ACPI_WAIT) if x64 else []), Step(re.escape(command), after)]


async def test_reboot_flow_in_order_on_qemu(zircon_guest: Any) -> None:
    z = await zircon_guest(zenv(), [Launch(boot(), reboot_steps(), prompt=PROMPT)])
    h, b = await rs.zircon_reboot(z.guest, timeout=5)
    assert (h.command, h.action, h.reason) == ("power reboot", "reboot", "no-crash")
    assert z.engine.sent == [rs.ZIRCON_REBOOT_ACPI_WAIT, "power reboot"]
    assert b.index == 2 and not b.relaunch


async def test_reboot_flow_on_arm64_has_no_acpi_wait(zircon_guest: Any) -> None:
    z = await zircon_guest(zenv("qemu-arm64"), [Launch(boot(), reboot_steps(x64=False),
                                                       prompt=PROMPT)])
    await rs.zircon_reboot(z.guest, timeout=5)
    assert z.engine.sent == ["power reboot"]


async def test_reboot_flow_on_crosvm_relaunches_for_welcome(zircon_guest: Any) -> None:
    after = klog(rs.ZIRCON_FSHOST_DOWN) + halt(1, 2)
    launches = [Launch(boot(), [*acpi(rs.ZIRCON_REBOOT_ACPI_WAIT),
                                Step("power reboot", after, exit=32)], prompt=PROMPT),
                Launch(boot(), [], prompt=PROMPT)]
    z = await zircon_guest(zenv("crosvm-x64"), launches)
    await rs.zircon_reboot(z.guest, timeout=5)
    assert z.guest.boots[-1].relaunch and z.guest.exits[0].kind == ExitKind.RESET


async def test_reboot_suite_test_cycles_and_bootloader_flow(zircon_guest: Any) -> None:
    second = klog(rs.ZIRCON_FSHOST_DOWN) + halt(2, 2) + boot()
    z = await zircon_guest(zenv(), [Launch(boot(), [
        *reboot_steps("power reboot-bootloader", after=second),
        *reboot_steps("power reboot-bootloader", after=second)], prompt=PROMPT)])
    t = Context(guest=z.guest, env=z.env, spec=None, folder=z.folder,
                    params={"reboot_cycles": 2, "reboot_flow": "power_reboot_bootloader"})
    await rs.test_zircon_reboot(t)
    assert [(c.name, c.status) for c in t.cases] == [("reboot_1", Status.PASS),
                                                      ("reboot_2", Status.PASS)]
    assert t.properties["reboot_2_halt"] == \
        "reboot-bootloader/no-crash via `power reboot-bootloader`"


async def test_reboot_falls_back_to_dm_on_older_images(zircon_guest: Any) -> None:
    steps = [*acpi(rs.ZIRCON_REBOOT_ACPI_WAIT),
             Step("power reboot", b"sh: 1: power: not found\r\n$ "),
             Step("dm reboot", klog(rs.ZIRCON_FSHOST_DOWN) + halt(1, 2) + boot())]
    z = await zircon_guest(zenv(), [Launch(boot(), steps, prompt=PROMPT)])
    h, _ = await rs.zircon_reboot(z.guest, timeout=5)
    assert h.command == "dm reboot"


@pytest.mark.parametrize(("launch_boot", "after", "error"), [
    # A boot line the test waits for before its command never came: nothing is sent.
    (boot(drop=("initializing platform",)), None, r"boot: no line with 'initializing platform'"),
    (boot(drop=("fshost started",)), None, r"'console.shell: enabled' and 'fshost started'"),
    # A clean reboot must say the file system shut down.
    (boot(), halt(1, 2) + boot(), r"`power reboot`: no 'fshost shutdown complete' line"),
    # The exact halt: action 1 (reboot), reason 2 (no crash).
    (boot(), klog(rs.ZIRCON_FSHOST_DOWN) + halt(1, 4) + boot(),
     r"halted with action reboot reason panic .*'platform_halt suggested_action 1 reason 2'"),
    # The next boot must say welcome.
    (boot(), klog(rs.ZIRCON_FSHOST_DOWN) + halt(1, 2) + boot(drop=("welcome to Zircon",)),
     r"after 'platform_halt suggested_action 1 reason 2': no line with 'welcome to Zircon'"),
])
async def test_reboot_flow_fails_on_a_missing_line_or_a_wrong_halt(
        zircon_guest: Any, launch_boot: bytes, after: bytes | None, error: str) -> None:
    z = await zircon_guest(zenv(), [Launch(launch_boot, reboot_steps(after=after),
                                           prompt=PROMPT)])
    with pytest.raises(AssertionError, match=error):
        await rs.zircon_reboot(z.guest, timeout=2)
    if "boot:" in error:
        assert z.engine.sent == []


async def test_acpi_ready_echo_alone_is_not_acpi_ready(zircon_guest: Any) -> None:
    """The shell's echo of `...; echo ACPI_READY` holds the text too; it does not count."""
    z = await zircon_guest(zenv(), [Launch(boot(), [
        *acpi(rs.ZIRCON_REBOOT_ACPI_WAIT, ready=False)], prompt=PROMPT)])
    with pytest.raises(AssertionError, match="the ACPI driver did not come up"):
        await rs.zircon_reboot(z.guest, timeout=1)
    assert z.engine.sent == [rs.ZIRCON_REBOOT_ACPI_WAIT]


# -- Fuchsia's shutdown test --------------------------------------------------------------------


def shutdown_steps(after: bytes = halt(4, 2), exit: int | None = 0) -> list[Step]:
    return [*acpi(rs.ZIRCON_SHUTDOWN_ACPI_WAIT), Step("power shutdown", after, exit=exit)]


async def test_shutdown_suite_test_passes_on_a_clean_exit(zircon_guest: Any) -> None:
    z = await zircon_guest(zenv("crosvm-x64"), [Launch(boot(), shutdown_steps(), prompt=PROMPT)])
    t = Context(guest=z.guest, env=z.env, spec=None, folder=z.folder, params={})
    await rs.test_zircon_shutdown(t)
    assert z.engine.sent == [rs.ZIRCON_SHUTDOWN_ACPI_WAIT, "power shutdown"]
    assert t.properties["halt"] == "shutdown/no-crash via `power shutdown`"
    assert [(c.name, c.status) for c in t.cases] == [("vmm_stopped", Status.PASS)]


async def test_shutdown_without_a_halt_line_is_judged_by_the_exit(zircon_guest: Any) -> None:
    """Fuchsia's test reads nothing after the command; a VMM gone at once is fine, and the
    wait for its exit does not sit out the 120 s."""
    z = await zircon_guest(zenv(), [Launch(boot(), shutdown_steps(after=b""), prompt=PROMPT)])
    started = time.monotonic()
    h, info = await rs.zircon_shutdown(z.guest, deadline=30, timeout=5)
    assert h is None and info.kind == ExitKind.STOP
    assert time.monotonic() - started < 10


async def test_shutdown_failures(zircon_guest: Any) -> None:
    # /dev never mounted: shutdown_test.go waits for it before the command.
    z = await zircon_guest(zenv(), [Launch(boot(drop=("mounted '/dev'",)), [], prompt=PROMPT)])
    missing = re.escape("'console.shell: enabled' and \"mounted '/dev'\"")
    with pytest.raises(AssertionError, match=missing):
        await rs.zircon_shutdown(z.guest, deadline=5, timeout=1)
    assert z.engine.sent == []
    # The kernel reboots instead.
    z = await zircon_guest(zenv(), [Launch(boot(), shutdown_steps(after=halt(1, 2), exit=None),
                                           prompt=PROMPT)])
    with pytest.raises(AssertionError, match="halted with action reboot"):
        await rs.zircon_shutdown(z.guest, deadline=5, timeout=5)
    # crosvm exits with the reset status: not "Success()".
    z = await zircon_guest(zenv("crosvm-x64"), [Launch(boot(), shutdown_steps(exit=32),
                                                       prompt=PROMPT)])
    t = Context(guest=z.guest, env=z.env, spec=None, folder=z.folder, params={})
    with pytest.raises(AssertionError, match="Failed to shutdown cleanly"):
        await rs.test_zircon_shutdown(t)


# -- Fuchsia's device-enumeration test -------------------------------------------------------


def nodes_of(name: str) -> str:
    return inventory.split_transcript((ENUM / name).read_text())[inventory.ZIRCON_NODES]


def test_boards_come_from_the_machine() -> None:
    assert de.zircon_board("qemu", "x86_64") == "qemu-x64"
    assert de.zircon_board("qemu", "arm64") == "qemu-arm64"
    assert de.zircon_board("crosvm", "x86_64") == "crosvm-x64"
    assert de.zircon_board("crosvm", "arm64") is None


@pytest.mark.parametrize(("transcript", "board"), [
    ("qemu-x64-full.txt", "qemu-x64"), ("qemu-x64-minimal.txt", "qemu-x64"),
    ("qemu-arm64-full.txt", "qemu-arm64"), ("crosvm-x64-nodes.txt", "crosvm-x64"),
])
def test_node_lists_hold_on_their_transcripts(transcript: str, board: str) -> None:
    nodes = inventory.parse_zircon_nodes(nodes_of(transcript))
    verdicts, unexpected = de.judge_zircon_nodes(nodes, de.ZIRCON_BOARD_NODES[board])
    assert all(v.ok for v in verdicts), verdicts
    assert unexpected and not set(unexpected) & set(de.ZIRCON_BOARD_NODES[board])


def test_node_parser_reads_list_devices_verbose() -> None:
    nodes = inventory.parse_zircon_nodes(nodes_of("qemu-arm64-full.txt"))
    assert nodes.monikers == {"qemu-bus", "pl031", "pl031.rtc", "pci", "pci.00_00_0_",
                              "pci.00_01_0_", "pci.00_07_0_"}


async def test_devices_suite_on_zircon_checks_the_board_nodes(tmp_path: Path) -> None:
    sections = inventory.split_transcript((ENUM / "qemu-x64-full.txt").read_text())
    t = Context(guest=FakeGuest(zenv(), lambda cmd: sections[cmd]), env=zenv(), spec=None,
                    folder=tmp_path, params={})
    await de.test_devices(t)
    nodes = {c.name: c.status for c in t.cases if c.suite == "node"}
    assert nodes == {"acpi": Status.PASS, "PCI0.bus.00_1f_2.00_1f_2.ahci": Status.PASS}
    assert t.properties["zircon_board"] == "qemu-x64"
    assert any("unexpected node(s)" in n and "sysmem" in n for n in t.notes)
    saved = inventory.split_transcript((tmp_path / "enumeration.txt").read_text())
    assert inventory.parse_zircon_nodes(saved[inventory.ZIRCON_NODES]).monikers == \
        inventory.parse_zircon_nodes(sections[inventory.ZIRCON_NODES]).monikers


async def test_devices_suite_fails_a_missing_or_quarantined_node(tmp_path: Path) -> None:
    sections = inventory.split_transcript((ENUM / "qemu-x64-full.txt").read_text())
    ahci = "Moniker  : PCI0.bus.00_1f_2.00_1f_2.ahci\nDriver   : None\n"
    nodes = sections[inventory.ZIRCON_NODES]
    assert "Moniker  : acpi\n" in nodes and ahci in nodes
    nodes = nodes.replace("Moniker  : acpi\n", "Moniker  : acpi-renamed\n").replace(
        ahci, ahci.replace("None", "fuchsia-boot:///ahci#meta/ahci.cm (quarantined)"))
    answers = {**sections, inventory.ZIRCON_NODES: nodes}
    t = Context(guest=FakeGuest(zenv(), lambda cmd: answers[cmd]), env=zenv(), spec=None,
                    folder=tmp_path, params={})
    await de.test_devices(t)
    failed = {c.name: c.message for c in t.cases if c.suite == "node" and c.status == Status.FAIL}
    assert failed == {
        "acpi": "node 'acpi' not found",
        "PCI0.bus.00_1f_2.00_1f_2.ahci": "node 'PCI0.bus.00_1f_2.00_1f_2.ahci' not found: "
                                         "PCI0.bus.00_1f_2.00_1f_2.ahci exists but has failed "
                                         "to start successfully",
    }


async def test_devices_suite_on_crosvm_arm64_has_no_node_list(tmp_path: Path) -> None:
    sections = inventory.split_transcript((ENUM / "qemu-arm64-full.txt").read_text())
    env = zenv("crosvm-arm64")
    t = Context(guest=FakeGuest(env, lambda cmd: sections[cmd]), env=env, spec=None,
                    folder=tmp_path, params={})
    await de.test_devices(t)
    assert not [c for c in t.cases if c.suite == "node"]
    assert any("no node list for crosvm on arm64" in n for n in t.notes)
