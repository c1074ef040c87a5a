"""The crash scan in a whole run: runner, console, live watch, synthetic tests, JUnit, summary.

No Zircon image boots here, so the guest is a stand-in with Zircon's console behaviour: a
real busybox shell on a real pty, started as a VMM process is (its own session, its stderr to
the VMM stderr log), printing Zircon's readiness line and prompt. The tests.json programs it
runs print what Fuchsia's tests print. Everything from the runner down is the harness's own
code path: the console's live watch with the Zircon profile's table, the runner's crash scan
of each finished test's logs, and the reports.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio

from harness import environments as envmod
from harness import plan as planmod
from harness.engines.base import BinaryLookup, Engine, RunPaths, Vmm, VmmSetup
from harness.engines.process import ProcessVmm, start_vmm
from harness.environments import Environment, EnvironmentSet
from harness.exits import ExitInfo, ExitKind
from harness.images.model import GuestImage
from harness.report import write_reports
from harness.results import RunResult, Status
from harness.runner import Runner, RunOptions
from harness.spec import parse_specs

ENV = "zircon-shell"
# Zircon's readiness line and `$ ` prompt; fd 3 keeps the VMM's stderr for the programs.
# Fuchsia's serial tester (harness/fuchsia/serialtester.py) waits for the driver manager's
# bootup line and sends `runtests [-i N] PATH`; the stand-in's `runtests` prints what Fuchsia's
# runtests prints around a test (its start line, then `[runtests][PASSED|FAILED] NAME`), NAME
# being the program's file name, which the tests give the test's own name.
RUNTESTS = ('while [ "${1#-}" != "$1" ]; do shift 2; done; n=${1##*/}\n'
            'echo "RUNNING TEST: $n"\n'
            'if "$1"; then echo "[runtests][PASSED] $n"; else echo "[runtests][FAILED] $n"; fi\n')
GUEST = ("stty sane; echo '[00004.500] 01031:01038> console.shell: enabled'; "
         "echo '[00005.100] 01031:01038> [driver_manager.cm] INFO: Bootup completed'; "
         "exec 3>&2; PS1='$ ' exec busybox sh -i 2>&1")


class _ShellVmm(ProcessVmm, Vmm):
    async def stop(self, timeout: float = 10.0) -> None:
        await self.kill()


class ShellEngine(Engine):
    """A stand-in VMM: a shell on the console pty, stderr to the VMM stderr log."""

    name = "qemu"
    accelerators = ("tcg",)  # a shell: nothing to probe

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir  # holds the stand-in's `runtests`

    def locate(self, arch: str) -> BinaryLookup:
        return BinaryLookup("busybox", "busybox", "test")

    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        return ["env", f"PATH={self.bin_dir}:/usr/bin:/bin", "busybox", "sh", "-c", GUEST]

    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> Vmm:
        process = await start_vmm(self.command(env, image, paths, setup), console_fd=console_fd,
                                  stderr_path=paths.stderr_log)
        return _ShellVmm(process)

    def classify_exit(self, returncode: int) -> ExitInfo:
        kind = ExitKind.STOP if returncode == 0 else ExitKind.KILLED
        return ExitInfo(kind, returncode, f"exit status {returncode}")


def program(tmp: Path, name: str, body: str) -> str:
    path = tmp / "programs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def run_programs(tmp_path: Path, entries: list[dict]) -> RunResult:
    base = envmod.load(None).get("qemu-x64-minimal")
    env = dataclasses.replace(base, name=ENV, profile="zircon", boot_timeout_s=30.0)
    envs = EnvironmentSet(Path("<test>"), {ENV: env}, {})
    specs = parse_specs([{"test": e, "environments": [{"dimensions": dict(env.dimensions)}]}
                         for e in entries], "<test>")
    plan = planmod.make_plan(specs, envs, planmod.Selection(env_names=(ENV,)))
    image = GuestImage(name="none", arch="x86_64", kernel=tmp_path / "none", initrd=None)
    out = tmp_path / "out"
    program(tmp_path, "runtests", RUNTESTS)
    runner = Runner(plan.runs, {}, {"qemu": ShellEngine(tmp_path / "programs")},
                    RunOptions(out_dir=out, jobs=1, progress=False),
                    image_for=lambda _env: image)
    with anyio.fail_after(120):
        result = await runner.run()
    write_reports(result)
    return result


DEATH = ("printf '[==========] Running 1 test from 1 test suite.\\n'\n"
         "printf '[ RUN      ] ZxAssertCppTest.ZxAssertInvalidPredicateFails\\n'\n"
         "printf '[00012.100] 01100:01101> ASSERT FAILED at (zxtest.cc:41): predicate\\n'\n"
         "printf '[       OK ] ZxAssertCppTest.ZxAssertInvalidPredicateFails (3 ms)\\n'\n")


async def test_crash_scan_in_a_run(tmp_path: Path) -> None:
    result = await run_programs(tmp_path, [
        {"name": "death-test", "path": program(tmp_path, "death-test", DEATH)},
        {"name": "assert-outside", "path": program(
            tmp_path, "assert-outside", DEATH + "printf '> ASSERT FAILED at (vmo.cc:7): size\\n'\n"
            "sleep 30\n")},
        {"name": "driver-hang", "path": program(
            tmp_path, "driver-hang", "echo 'driver_manager: Package node removal hanging'\n")},
        {"name": "kvm-on-host", "isolated": True, "path": program(
            tmp_path, "kvm-on-host", "echo 'error: kvm run failed Bad address' >&3\n")},
    ])
    by_name = {r.test: r for r in result.results}
    prefix = "testing_failure_mode/string_in_log/"

    # The assert inside its death test's block: expected, the test and its case pass.
    death = by_name["death-test"]
    assert death.status == Status.PASS, death.final.message
    assert [(c.name, c.status) for c in death.final.cases] == [
        ("ZxAssertInvalidPredicateFails", Status.PASS)]

    # Outside: the live watch fails the test at once (not after its 30 s sleep), and the scan
    # of its log adds tefmocheck's test, attributed to it.
    outside = by_name["assert-outside"]
    assert outside.status == Status.FAIL
    assert outside.final.message == "guest crashed: zircon-assert"
    assert outside.final.duration_s < 20
    synthetic = by_name[prefix + "serial_log.txt/_ASSERT_FAILED/assert-outside"]
    assert (synthetic.status, synthetic.testing_failure_mode) == (Status.FAIL, True)
    assert synthetic.final.message == "> ASSERT FAILED at (vmo.cc:7): size"

    # always_flake: the test passes, tefmocheck's test is a flake (fails, then passes).
    assert by_name["driver-hang"].status == Status.PASS
    hang = by_name[prefix + "serial_log.txt/Package_node_removal_hanging/driver-hang"]
    assert hang.flaky and [a.status for a in hang.attempts] == [Status.FAIL, Status.PASS]

    # The VMM's stderr is the host log: its line makes a test of its own; on the console it
    # would mean nothing.
    kvm = by_name[prefix + "infra_and_test_std_and_klog.txt/kvm_run_failed_Bad_address/kvm-on-host"]
    assert kvm.status == Status.FAIL
    assert kvm.final.message == "error: kvm run failed Bad address"
    assert not any(n.startswith(prefix) and n.endswith("/death-test") for n in by_name)

    # Each synthetic test comes right after the test whose logs it was found in.
    names = [r.test for r in result.results]
    assert names.index(synthetic.test) == names.index("assert-outside") + 1

    # JUnit: a failing testcase with the matched line as its message; the flake as flaky.
    root = ET.parse(result.out_dir / "junit.xml").getroot()
    cases = {e.get("name"): e for e in root.iter("testcase")}
    assert cases[synthetic.test].find("failure").get("message") == (
        "> ASSERT FAILED at (vmo.cc:7): size")
    assert cases[hang.test].find("flakyFailure") is not None
    assert cases[hang.test].find("failure") is None
    # summary.json: the synthetic tests, marked as crash-scan findings.
    summary = json.loads((result.out_dir / "summary.json").read_text())
    entries = {t["name"]: t for t in summary["tests"]}
    assert entries[kvm.test]["result"] == "FAIL"
    assert entries[kvm.test]["is_testing_failure_mode"] is True
    assert entries["death-test"]["is_testing_failure_mode"] is False
    assert (result.out_dir / "zircon-shell/assert-outside/tefmocheck.txt").is_file()
