"""Boot tests without a VM: seriallistener's verdict on a real Guest and Console.

No Zircon image boots here, so these tests give a real `Guest` (real pty, real Console,
real SerialLog) a transcript VMM: a pty peer that writes Zircon-shaped serial output
(tests/fixtures/zircon, written to zxtest's and the kernel `ut`'s exact formats) and then
hangs or exits. Every verdict path is here (success, `FAILED TEST`, a crash, the timeout,
no output at all, a VMM that exits), plus the runner's side: INFRA_FAIL for a bundle that
cannot boot, the entropy mixin redacted from every file and report, the repro line.
tests/test_fuchsia_standin.py boots the same paths for real, on stand-in bundles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import time
from collections.abc import Sequence
from pathlib import Path

from thread_vmm import ThreadVmm

from harness import environments as envmod
from harness.console import SerialLog
from harness.engines.base import BinaryLookup, Engine, RunPaths, Vmm, VmmSetup
from harness.environments import Environment
from harness.exits import ExitInfo, ExitKind
from harness.fuchsia import boottest
from harness.fuchsia.build import ProductBundle
from harness.guest import Guest
from harness.images.model import GuestImage
from harness.parsers import gtest, zircon_ut
from harness.plan import PlannedRun, run_environment
from harness.profiles.zircon import BOOT_TEST_SUCCESS
from harness.report import write_reports
from harness.results import Status
from harness.runner import Runner, RunOptions
from harness.spec import parse_specs

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "zircon"
ENVS = envmod.load(ROOT / "environments.json")
SUCCESS = BOOT_TEST_SUCCESS.encode()
MIXIN = "5eed" * 16

PASSING_ZXTEST = (b"[==========] Running 2 tests from 1 test case.\r\n"
                  b"[----------] 2 tests from HandleTest\r\n"
                  b"[ RUN      ] HandleTest.Close\r\n"
                  b"[       OK ] HandleTest.Close (0 ms)\r\n"
                  b"[ RUN      ] HandleTest.Duplicate\r\n"
                  b"[       OK ] HandleTest.Duplicate (1 ms)\r\n"
                  b"[==========] 2 tests from 1 test case ran (1 ms total).\r\n"
                  b"[  PASSED  ] 2 tests\r\n")


# -- the transcript VMM ---------------------------------------------------------------------


@dataclasses.dataclass
class Script:
    """What the 'VMM' writes, chunk by chunk (a float is a pause), and how it ends."""

    chunks: Sequence[bytes | float]
    exit: int | None = None  # exit with this status after the chunks; None: hang


class ScriptVmm(ThreadVmm):
    def __init__(self, fd: int, script: Script, received: list[bytes]) -> None:
        super().__init__(fd)
        self.script, self.received = script, received
        self.start()

    def play(self) -> None:
        try:
            for chunk in self.script.chunks:
                if isinstance(chunk, float):
                    time.sleep(chunk)
                else:
                    os.write(self.fd, chunk)
            if self.script.exit is not None:
                self._close(self.script.exit)
                return
            while not self._stop.is_set():  # hang, keeping what the harness sends
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if ready:
                    self.received.append(os.read(self.fd, 4096))
        except (OSError, ValueError):
            return



SETUP = VmmSetup("script-vmm", "tcg")


class ScriptEngine(Engine):
    name = "qemu"
    accelerators = ("tcg",)  # a script: nothing to probe

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.received: list[bytes] = []
        self.launched: list[Environment] = []

    def locate(self, arch: str) -> BinaryLookup:
        return BinaryLookup("script-vmm", "script-vmm", "test")

    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        return ["script-vmm", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
                "-append", f"kernel.entropy-mixin={env.entropy_mixin} TERM=dumb"]

    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> Vmm:
        self.launched.append(env)
        script = self.scripts.pop(0)
        # Like a Linux stand-in, the 'kernel' prints its command line, secret and all.
        echo = f"Command line: kernel.entropy-mixin={env.entropy_mixin} TERM=dumb\r\n".encode()
        return ScriptVmm(os.dup(console_fd), Script([echo, *script.chunks], script.exit),
                         self.received)

    def classify_exit(self, returncode: int) -> ExitInfo:
        kind = ExitKind.STOP if returncode == 0 else ExitKind.ERROR
        return ExitInfo(kind, returncode, f"script VMM exited {returncode}")


def env_with_mixin(name: str = "fuchsia-qemu-x64") -> Environment:
    return dataclasses.replace(ENVS.get(name), entropy_mixin=MIXIN, no_reboot=True)


async def judge(tmp_path: Path, script: Script, *, timeout: float = 30.0,
                bootup: float | None = None) -> tuple[boottest.Verdict, Guest, ScriptEngine]:
    engine = ScriptEngine(script)
    image = GuestImage(name="b", arch="x86_64", kernel=tmp_path / "shim", initrd=tmp_path / "zbi")
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    guest = Guest(env_with_mixin(), engine, image, tmp_path / "serial.log", workdir=work,
                  own_workdir=False, setup=SETUP)
    try:
        verdict = await boottest.run_boot_test(guest, timeout=timeout, bootup_timeout=bootup)
    finally:
        await guest.close()
    return verdict, guest, engine


# -- seriallistener's verdict ---------------------------------------------------------------


async def test_the_success_string_passes_with_the_cases_printed_before(tmp_path: Path) -> None:
    verdict, _guest, engine = await judge(tmp_path, Script([PASSING_ZXTEST, SUCCESS + b"\r\n"]))
    assert (verdict.status, verdict.message, verdict.format) == (Status.PASS, "", "gtest")
    assert [(c.suite, c.name, c.status) for c in verdict.cases] == [
        ("HandleTest", "Close", Status.PASS), ("HandleTest", "Duplicate", Status.PASS)]
    assert engine.received == []  # nothing is ever typed into a boot test


async def test_a_success_string_split_across_reads_still_passes(tmp_path: Path) -> None:
    verdict, _, _ = await judge(tmp_path, Script([SUCCESS[:30], 0.3, SUCCESS[30:]]))
    assert verdict.status == Status.PASS


async def test_the_failure_string_fails_with_zxtests_summary(tmp_path: Path) -> None:
    log = (FIXTURES / "core-tests.log").read_bytes()
    verdict, _, _ = await judge(tmp_path, Script([log, 0.2, SUCCESS]))
    assert verdict.status == Status.FAIL
    assert verdict.message == 'failure string found: "FAILED TEST"'
    assert "1 FAILED TEST" in verdict.details and "[  FAILED  ] VmoTestCase.Resize" in \
        verdict.details
    assert [(c.name, c.status) for c in verdict.cases] == [
        (c.name, c.status) for c in gtest.parse(log.decode())]
    assert any(c.status == Status.FAIL for c in verdict.cases)


async def test_a_crash_fails_at_once_with_the_excerpt(tmp_path: Path) -> None:
    log = (FIXTURES / "core-tests-crash.log").read_bytes()
    started = time.monotonic()
    verdict, _, _ = await judge(tmp_path, Script([log]), timeout=60)
    assert time.monotonic() - started < 15  # the panic line, not the 60 s timeout
    assert (verdict.status, verdict.message) == (Status.FAIL, "guest crashed: zircon-kernel-panic")
    assert "ZIRCON KERNEL PANIC" in verdict.details and "DEBUG ASSERT FAILED" in verdict.details
    assert [(c.name, c.status) for c in verdict.cases] == [
        ("Wait", Status.PASS), ("WakeRequeue", Status.FAIL)]  # the case in flight fails


async def test_kernel_unit_tests_ut_output_is_parsed(tmp_path: Path) -> None:
    log = (FIXTURES / "ut-all.log").read_bytes()
    verdict, _, _ = await judge(tmp_path, Script([log, SUCCESS]))
    assert (verdict.status, verdict.format) == (Status.PASS, "ut")
    assert [(c.suite, c.name, c.status) for c in verdict.cases] == [
        (c.suite, c.name, c.status) for c in zircon_ut.parse(log.decode())]


async def test_no_verdict_before_the_timeout_fails_with_seriallisteners_message(
        tmp_path: Path) -> None:
    started = time.monotonic()
    verdict, _, _ = await judge(tmp_path, Script([PASSING_ZXTEST]), timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 8
    assert verdict.status == Status.FAIL
    assert verdict.message == (f'timed out before success string "{BOOT_TEST_SUCCESS}" was '
                               "read from serial")
    assert len(verdict.cases) == 2  # what it printed is still reported


async def test_bootup_timeout_bounds_the_time_to_the_first_serial_byte(tmp_path: Path) -> None:
    engine = ScriptEngine(Script([]))
    engine.launch = _silent_launch(engine)  # type: ignore[method-assign]
    image = GuestImage(name="b", arch="x86_64", kernel=tmp_path / "k", initrd=None)
    guest = Guest(env_with_mixin(), engine, image, tmp_path / "serial.log",
                  workdir=tmp_path, own_workdir=False, setup=SETUP)
    started = time.monotonic()
    try:
        verdict = await boottest.run_boot_test(guest, timeout=30, bootup_timeout=0.5)
    finally:
        await guest.close()
    assert time.monotonic() - started < 5
    assert verdict.status == Status.ABORT
    assert verdict.message == ("no serial output within bootup_timeout_secs (0.5 s) of the "
                               "launch")


def _silent_launch(engine: ScriptEngine):  # type: ignore[no-untyped-def]
    async def launch(env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> Vmm:
        return ScriptVmm(os.dup(console_fd), Script([]), engine.received)
    return launch


async def test_a_vmm_that_exits_first_fails_at_once_saying_how(tmp_path: Path) -> None:
    verdict, _, _ = await judge(tmp_path, Script([PASSING_ZXTEST], exit=3), timeout=60)
    assert verdict.status == Status.INFRA_FAIL  # a VMM error is the host's, not the guest's
    assert verdict.message == ("the VMM exited before the success string was read from "
                               "serial: script VMM exited 3")
    verdict, _, _ = await judge(tmp_path / "b", Script([PASSING_ZXTEST], exit=0), timeout=60)
    assert verdict.status == Status.FAIL


def test_timeouts_are_the_tests_else_600_s_doubled_without_acceleration() -> None:
    assert boottest.timeout_s(None) == 600
    assert boottest.timeout_s(30.0) == 30
    assert boottest.timeout_s(30.0, "none") == 60  # testsharder's -test-timeout-scale-factor 2
    assert boottest.timeout_s(30.0, "kvm") == 30


def test_a_saved_log_gives_the_same_verdict() -> None:
    assert boottest.verdict_from_log(PASSING_ZXTEST + SUCCESS).status == Status.PASS
    failed = boottest.verdict_from_log((FIXTURES / "core-tests.log").read_bytes() + SUCCESS)
    assert failed.message == 'failure string found: "FAILED TEST"'
    assert boottest.verdict_from_log(PASSING_ZXTEST).message.startswith("timed out before")


# -- the serial log keeps the secret out ----------------------------------------------------


def test_serial_log_redacts_a_secret_even_split_across_writes(tmp_path: Path) -> None:
    log = SerialLog(tmp_path / "serial.log")
    log.redact(MIXIN.encode())
    line = f"Command line: kernel.entropy-mixin={MIXIN} TERM=dumb\n".encode()
    cut = line.index(MIXIN.encode()) + 17
    log.write(line[:cut])
    log.write(line[cut:])
    log.write(b"ends like the secret begins: 5ee")  # held back: it could be the secret
    assert b"5ee" not in (tmp_path / "serial.log").read_bytes()
    log.close()  # nothing more is coming: released as it was
    data = (tmp_path / "serial.log").read_bytes()
    assert MIXIN.encode() not in data
    assert b"kernel.entropy-mixin=" + b"x" * 64 + b" TERM=dumb\n" in data
    assert data.endswith(b"ends like the secret begins: 5ee")


# -- the runner: a build's boot tests end to end, on a script VMM --------------------------


def bundle(tmp_path: Path, name: str = "standin") -> ProductBundle:
    d = tmp_path / "obj" / name
    d.mkdir(parents=True)
    (d / "shim").write_bytes(b"SHIM")
    (d / "zbi").write_bytes(b"ZBI")
    return ProductBundle(name=name, cpu="x64", label="", directory=d,
                         manifest=d / "product_bundle.json", kernel=d / "shim", zbi=d / "zbi")


def boot_run(tmp_path: Path, name: str, env: str = "fuchsia-crosvm-x64", **run: object
             ) -> PlannedRun:
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / (name + '.RAN')}\n")
    script.chmod(0o755)
    [spec] = parse_specs([{
        "test": {"name": name, "os": "linux", "cpu": "x64", "path": str(script),
                 "timeout_secs": 20, "isolated": True},
        "environments": [{"dimensions": {"device_type": "crosvm"}}],
        "is_boot_test": True, "product_bundle": name}], "tests.json")
    fields: dict[str, object] = {"bundle_name": name}
    fields.update(run)
    return PlannedRun(spec=spec, environment=ENVS.get(env),
                      spec_environment=spec.environments[0], **fields)  # type: ignore[arg-type]


async def test_runner_judges_boot_tests_and_keeps_the_mixin_out_of_everything(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    engine = ScriptEngine(Script([PASSING_ZXTEST, SUCCESS]),
                          Script([(FIXTURES / "core-tests.log").read_bytes()]))
    engine.name = "crosvm"
    runs = [boot_run(tmp_path, "passes", bundle=bundle(tmp_path, "passes")),
            boot_run(tmp_path, "fails", bundle=bundle(tmp_path, "fails")),
            boot_run(tmp_path, "unbuilt", bundle_problem="product_bundles.json: entry 2 "
                     "(\"unbuilt\"): field 'json': obj/unbuilt/product_bundle.json does not "
                     "exist: the bundle is not built")]
    options = RunOptions(out_dir=out, jobs=1, progress=False,
                         boot_test_repro_base=["harness", "run-boot-test", "--build-dir", "/b"],
                         bundle_base=tmp_path)
    runner = Runner(runs, {}, {"crosvm": engine}, options, image_for=_no_image)
    result = await runner.run()
    write_reports(result)
    by = {r.test: r for r in result.results}
    assert by["passes"].status == Status.PASS and len(by["passes"].final.cases) == 2
    assert by["fails"].status == Status.FAIL
    assert by["fails"].final.message.startswith('failure string found: "FAILED TEST"; 1 of 6 '
                                                "cases failed: Resize")
    assert by["unbuilt"].status == Status.INFRA_FAIL
    assert by["unbuilt"].final.message.startswith("product bundle unbuilt cannot be booted: "
                                                  "product_bundles.json: entry 2")
    assert len(engine.launched) == 2  # the unbuilt bundle was never launched
    # Each boot got its own fresh mixin: botanist's 32 bytes, as lowercase hex.
    mixins = [e.entropy_mixin for e in engine.launched]
    assert all(re.fullmatch(r"[0-9a-f]{64}", m) for m in mixins) and mixins[0] != mixins[1]
    assert all(e.no_reboot for e in engine.launched)
    # The host script (`path`) never ran, anywhere.
    assert not list(tmp_path.glob("*.RAN"))
    # Every file and report: no mixin, but the redacted form where the command line shows.
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert not any(m.encode() in text for m in mixins), path
    command = (out / "fuchsia-crosvm-x64" / "passes" / "vmm-command.txt").read_text()
    assert "kernel.entropy-mixin=" + "x" * 64 in command
    serial = (out / "fuchsia-crosvm-x64" / "passes" / "serial.log").read_text()
    assert "Command line: kernel.entropy-mixin=" + "x" * 64 in serial
    # JUnit and summary.json name the bundle; a failed boot test's repro is run-boot-test.
    summary = json.loads((out / "summary.json").read_text())
    tags = {t["name"]: {x["key"]: x["value"] for x in t["tags"]} for t in summary["tests"]}
    assert tags["passes"]["product_bundle"] == "passes"
    assert tags["passes"]["shim"] == "obj/passes/shim" and tags["passes"]["zbi"] == "obj/passes/zbi"
    assert tags["unbuilt"]["product_bundle"] == "unbuilt"
    assert 'name="passes.product_bundle" value="passes"' in (out / "junit.xml").read_text()
    assert by["fails"].repro == ("harness run-boot-test --build-dir /b fails --crosvm "
                                 "--arch x64")
    assert (out / "fuchsia-crosvm-x64" / "fails" / "repro.sh").read_text().endswith(
        f"exec {by['fails'].repro}\n")
    assert by["fails"].suite == "boot_test"


async def test_other_environments_repro_with_env(tmp_path: Path) -> None:
    env = dataclasses.replace(ENVS.get("fuchsia-qemu-arm64"), name="my-fuchsia-arm")
    assert boottest.repro_arguments(env) == ["--env", "my-fuchsia-arm"]
    assert boottest.repro_arguments(ENVS.get("fuchsia-qemu-arm64")) == ["--arch", "arm64"]
    assert run_environment(boot_run(tmp_path, "x", env="fuchsia-qemu-arm64")).no_reboot


def _no_image(env: Environment) -> GuestImage:
    raise AssertionError(f"a product-bundle environment's image is the run's ({env.name})")
