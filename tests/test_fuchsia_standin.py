"""A Fuchsia build's boot tests, booted for real: stand-in bundles on QEMU and the crosvm double.

tests/fuchsia_standin.py writes a STAND-IN build directory in Fuchsia's exact layout
(tests.json, product_bundles.json, version 2 product_bundle.json) whose shim is the
Debian kernel and whose ZBI runs the kernel's own test modules, then says how it went
as a Zircon boot test does. One `harness run --build-dir` boots its five runs, two at a
time, through the Fuchsia environments of environments.json: every verdict path (pass,
`FAILED TEST`, a crash, the timeout) on QEMU and on the crosvm double, on x86_64 and
arm64. Then the driver developer's loop: a failed boot test's repro.sh, and
`harness run-boot-test --crosvm --interactive`.

The double runs on TCG, so its KVM verdict is recorded by hand in a private cache (the
images are the shared ones, linked in): no probe boot, and no verdict about this
machine's KVM left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuchsia_standin as standin
import pexpect
import pytest
import xmlschema
from double_verdicts import cache_with_double_verdicts

from harness.profiles.zircon import BOOT_TEST_SUCCESS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = Path(__file__).resolve().parent / "crosvm_double" / "crosvm"
XSD = Path(__file__).parent / "schemas" / "junit-10.xsd"
HARNESS = [sys.executable, "-m", "harness"]
TIMEOUT_MESSAGE = f'timed out before success string "{BOOT_TEST_SUCCESS}" was read from serial'

needs_qemu = pytest.mark.skipif(
    not all(shutil.which(q) for q in ("qemu-system-x86_64", "qemu-system-aarch64")),
    reason="the stand-in boots need qemu-system-x86_64 and qemu-system-aarch64",
)


@dataclasses.dataclass
class Run:
    build: Path
    out: Path
    proc: subprocess.CompletedProcess[str]
    env: dict[str, str]
    seconds: float
    base: Path

    @property
    def tests(self) -> dict[str, dict[str, Any]]:
        """The build's tests (the crash scan's own findings are `synthetic`)."""
        return {k: t for k, t in self._all().items() if not t["is_testing_failure_mode"]}

    @property
    def synthetic(self) -> dict[str, dict[str, Any]]:
        """The tests tefmocheck's scan added for what it found in a test's logs."""
        return {k: t for k, t in self._all().items() if t["is_testing_failure_mode"]}

    def _all(self) -> dict[str, dict[str, Any]]:
        doc = json.loads((self.out / "summary.json").read_text())
        return {f"{t['harness']['environment']}/{t['name']}": t for t in doc["tests"]}

    def folder(self, key: str) -> Path:
        return self.out / self.tests[key]["harness"]["folder"]

    def attempt(self, key: str) -> dict[str, Any]:
        return self.tests[key]["harness"]["attempts"][-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if not all(shutil.which(q) for q in ("qemu-system-x86_64", "qemu-system-aarch64")):
        pytest.skip("the stand-in boots need qemu-system-x86_64 and qemu-system-aarch64")
    from harness.images.errors import ImageError

    base = tmp_path_factory.mktemp("standin")
    try:
        build = standin.build_for_tests(base)
    except ImageError as e:
        pytest.skip(f"guest images cannot be built here: {e}")
    tmp = Path(tempfile.mkdtemp(prefix="harness-fuchsia-", dir="/tmp"))
    env = {**os.environ, "HARNESS_CROSVM": str(DOUBLE),
           "HARNESS_CACHE_DIR": str(cache_with_double_verdicts(
               base, ("fuchsia-crosvm-x64", "fuchsia-crosvm-arm64"))), "TMPDIR": str(tmp)}
    out = base / "results"
    try:
        t0 = time.monotonic()
        proc = subprocess.run([*HARNESS, "run", "--build-dir", str(build), "--jobs", "2",
                               "--out", str(out)], cwd=base, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        seconds = time.monotonic() - t0
        sys.stderr.write(proc.stderr[-6000:])
        yield Run(build, out, proc, env, seconds, base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# QEMU x64 passes, QEMU arm64 times out, crosvm x64 fails, crosvm arm64 passes and crashes.
PASSES = ("fuchsia-qemu-x64/standin-boot-pass-x64", "fuchsia-crosvm-arm64/standin-boot-pass-arm64")
FAIL = "fuchsia-crosvm-x64/standin-boot-fail-x64"
CRASH = "fuchsia-crosvm-arm64/standin-boot-crash-arm64"
HANG = "fuchsia-qemu-arm64/standin-boot-hang-arm64"


@needs_qemu
def test_every_run_of_the_build_was_planned_once(run: Run) -> None:
    assert sorted(run.tests) == sorted([*PASSES, FAIL, CRASH, HANG])
    # The crash's panic banner is in tefmocheck's serial-log checks: as on Fuchsia, the scan
    # adds its own failed test, attributed to the boot test it was found in.
    env, name = CRASH.split("/", 1)
    found = f"{env}/testing_failure_mode/string_in_log/serial_log.txt/ZIRCON_KERNEL_PANIC/{name}"
    assert sorted(run.synthetic) == [found]
    assert run.synthetic[found]["result"] == "FAIL"
    # The hang is on a blocking QEMU environment: the run fails.
    assert run.proc.returncode == 1, run.proc.stderr[-3000:]


@needs_qemu
@pytest.mark.parametrize("key", PASSES)
def test_the_success_string_passes_on_both_engines(run: Run, key: str) -> None:
    test = run.tests[key]
    assert test["result"] == "PASS", run.attempt(key)["message"]
    assert [(c["display_name"], c["status"]) for c in test["cases"]] == [
        (f"KernelModules.{m}", "PASS") for m in standin.MODULES]


@needs_qemu
def test_failed_test_fails_with_the_failing_case(run: Run) -> None:
    attempt = run.attempt(FAIL)
    assert run.tests[FAIL]["result"] == "FAIL"
    assert attempt["message"] == ('failure string found: "FAILED TEST"; 1 of 4 cases failed: '
                                  "load_without_dependency")
    assert "1 FAILED TEST" in attempt["details"]
    failed = [c for c in attempt["cases"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["load_without_dependency"]
    assert "Unknown symbol" in failed[0]["message"] or "insmod exited" in failed[0]["message"]


@needs_qemu
def test_a_crash_fails_at_once_with_the_excerpt(run: Run) -> None:
    attempt = run.attempt(CRASH)
    assert run.tests[CRASH]["result"] == "FAIL"
    assert attempt["message"] == ("guest crashed: zircon-kernel-panic; 1 of 4 cases failed: "
                                  "panic_in_flight")
    assert "ZIRCON KERNEL PANIC" in attempt["details"]
    assert attempt["duration_s"] < 300  # far from the 600 s timeout: at the panic line


@needs_qemu
def test_no_verdict_fails_at_the_tests_timeout_with_seriallisteners_message(run: Run) -> None:
    attempt = run.attempt(HANG)
    assert run.tests[HANG]["result"] == "FAIL"
    assert attempt["message"] == TIMEOUT_MESSAGE
    assert standin.HANG_TIMEOUT_S <= attempt["duration_s"] < standin.HANG_TIMEOUT_S + 30
    serial = (run.folder(HANG) / "serial.log").read_text(errors="replace")
    assert "standin-zbi: hanging without a verdict" in serial  # it hung, it was not slow
    assert len(attempt["cases"]) == len(standin.MODULES)


@needs_qemu
def test_the_host_script_is_never_run(run: Run) -> None:
    assert not standin.host_script_ran(run.build)


@needs_qemu
def test_junit_and_summary_name_the_bundle(run: Run) -> None:
    xmlschema.XMLSchema(str(XSD)).validate(str(run.out / "junit.xml"))
    junit = (run.out / "junit.xml").read_text()
    for key, test in run.tests.items():
        name = test["name"]
        tags = {t["key"]: t["value"] for t in test["tags"]}
        assert tags["product_bundle"] == name, key  # boot_test.gni: the bundle is the test's
        assert tags["shim"] == f"obj/tests/standin/{name}/product_bundle/system_a/{standin.SHIM}"
        assert tags["zbi"] == f"obj/tests/standin/{name}/product_bundle/system_a/{standin.ZBI}"
        assert f'name="{name}.product_bundle" value="{name}"' in junit


@needs_qemu
def test_each_boot_got_a_fresh_entropy_mixin_that_no_file_shows(run: Run) -> None:
    digests = []
    for key in run.tests:
        serial = (run.folder(key) / "serial.log").read_text(errors="replace")
        m = re.search(r"entropy-mixin of (\d+) hex digits, sha256 ([0-9a-f]{16})", serial)
        assert m is not None and m.group(1) == "64", key
        digests.append(m.group(2))
        # Linux prints its command line: the harness wrote x's in the mixin's place.
        assert "kernel.entropy-mixin=" + "x" * 64 in serial, key
    assert len(set(digests)) == len(digests)  # one per boot
    secret = re.compile(rb"entropy-mixin=[0-9a-f]{64}")
    for path in run.out.rglob("*"):
        if path.is_file():
            assert not secret.search(path.read_bytes()), path


@needs_qemu
def test_the_vmms_got_botanists_command_line_with_shim_and_zbi(run: Run) -> None:
    for key in run.tests:
        argv = shlex.split((run.folder(key) / "vmm-command.txt").read_text())
        name = key.split("/", 1)[1]
        bundle = run.build / "obj/tests/standin" / name / "product_bundle/system_a"
        if key.startswith("fuchsia-crosvm"):
            # `crosvm ... run ... --initrd ZBI SHIM`, as fx run-boot-test --crosvm; the double
            # takes only what crosvm takes, and it booted.
            assert argv[argv.index("--initrd") + 1] == str(bundle / standin.ZBI)
            assert argv[-1] == str(bundle / standin.SHIM)
            params = argv[argv.index("--params") + 1].split(" ")
        else:
            assert argv[argv.index("-kernel") + 1] == str(bundle / standin.SHIM)
            assert argv[argv.index("-initrd") + 1] == str(bundle / standin.ZBI)
            assert "-no-reboot" in argv
            params = argv[argv.index("-append") + 1].split(" ")
            assert params[-1].startswith("console=")  # the test environment's emulator args
        assert params[:2] == ["zircon.nodename=fuchsia-5254-1234-1234",
                              "kernel.halt-on-panic=true"]
        assert "kernel.entropy-mixin=" + "x" * 64 in params


@needs_qemu
def test_a_failed_boot_tests_repro_sh_reruns_it_with_run_boot_test(run: Run) -> None:
    # The crashing arm64 test: the cheapest failed boot to do again (x86_64 boots a bzImage,
    # whose decompression alone takes seconds under TCG).
    script = run.folder(CRASH) / "repro.sh"
    line = script.read_text().splitlines()[1]
    assert shlex.split(line)[len(HARNESS) + 1:] == [
        "run-boot-test", "--build-dir", str(run.build.resolve()), "standin-boot-crash-arm64",
        "--crosvm", "--arch", "arm64"]
    printed = subprocess.run([*HARNESS, "repro", str(run.out), "standin-boot-crash-arm64",
                              "--print"], cwd=run.base, env=run.env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert printed.stdout.strip() == line.removeprefix("exec ")
    again = run.base / "again"
    again.mkdir()
    proc = subprocess.run(["sh", str(script)], cwd=again, env=run.env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [summary] = list(again.glob("results/*/summary.json"))
    [test] = [t for t in json.loads(summary.read_text())["tests"]
              if not t["is_testing_failure_mode"]]
    assert test["harness"]["environment"] == "fuchsia-crosvm-arm64"
    assert test["harness"]["attempts"][-1]["message"] == run.attempt(CRASH)["message"]
    # And the x86_64 failure's repro.sh is the same command for its test and arch.
    assert (run.folder(FAIL) / "repro.sh").read_text().splitlines()[1].endswith(
        "run-boot-test --build-dir " + shlex.quote(str(run.build.resolve()))
        + " standin-boot-fail-x64 --crosvm --arch x64")


@needs_qemu
def test_run_boot_test_interactive_hands_over_the_serial_console(run: Run) -> None:
    child = pexpect.spawn(
        HARNESS[0], [*HARNESS[1:], "run-boot-test", "standin-boot-pass-arm64", "--build-dir",
                     str(run.build), "--crosvm", "--interactive", "--out",
                     str(run.base / "interactive")],
        cwd=str(run.base), env=run.env, timeout=300, encoding="utf-8", codec_errors="replace")
    try:
        child.expect(r"booting standin-boot-pass-arm64 on fuchsia-crosvm-arm64: \S*crosvm ")
        child.expect(r"this is its serial console")
        child.expect(re.escape("[ RUN      ] KernelModules.test_user_copy"))
        child.expect(re.escape(BOOT_TEST_SUCCESS))
        # The stand-in powers off after its verdict: the session ends by itself.
        child.expect(r"standin-boot-pass-arm64 on fuchsia-crosvm-arm64: PASS: the success "
                     r"string was read")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert BOOT_TEST_SUCCESS in (run.base / "interactive" / "serial.log").read_text()
