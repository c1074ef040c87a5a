"""The four suites, for real, on x86_64 and arm64: QEMU, and the crosvm engine via its double.

One `harness run` (two guests at a time) gives every test a guest of its own, restored
from its environment's snapshot (harness.snapshot; booted once per environment and
saved, unless the cache already had it), and the tests below read what it left: this
is what CI's builders run, checked the way their dashboards read it. The crosvm
environments run against tests/crosvm_double/crosvm, which honours crosvm's process
contract on QEMU; crosvm restores on x86_64 only, so crosvm-arm64's guests boot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema
from double_verdicts import cache_with_double_verdicts

from harness.parsers import linux_module
from harness.suite import default_specs, registry

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "crosvm_double" / "crosvm"
XSD = ROOT / "tests" / "schemas" / "junit-10.xsd"
SUITES = ("reboot_shutdown", "core", "device_enumeration", "peripherals")
QEMU_ENVS = ("qemu-x64", "qemu-arm64", "qemu-x64-minimal")
CROSVM_ENVS = ("crosvm-x64", "crosvm-arm64", "crosvm-x64-minimal")

pytestmark = pytest.mark.integration

# What the crosvm double cannot imitate (tests/crosvm_double/README.md): on arm64 QEMU's virt
# board has a PL011 UART and a PL031 RTC where crosvm has 8250 UARTs on MMIO and a PL030. The
# suites expect crosvm's machine and say so: exactly these cases fail there, and nothing else
# may. (tests/test_real_crosvm.py runs the same suites on a real crosvm, where none fails.)
DOUBLE_CANNOT_IMITATE = {
    ("crosvm-arm64", "device_enumeration.devices"): {"present.serial", "present.rtc"},
    ("crosvm-arm64", "peripherals.rtc"): {"rtc.device"},
}


class Run:
    def __init__(self, out: Path, proc: subprocess.CompletedProcess, tmp: Path) -> None:
        self.out = out
        self.proc = proc
        self.tmp = tmp  # the harness's TMPDIR: every VMM's workdir is inside
        data = json.loads((out / "summary.json").read_text())
        self.tests = data["tests"]
        self.by_key = {(t["harness"]["environment"], t["name"]): t for t in self.tests}

    def get(self, env: str, name: str) -> dict:
        return self.by_key[(env, name)]

    def message(self, t: dict) -> str:
        return t["harness"]["attempts"][-1]["message"]

    def where(self, env: str, suite: str) -> list[dict]:
        return [t for (e, n), t in self.by_key.items() if e == env and n.startswith(suite + ".")]


def ci_specs(path: Path) -> Path:
    """The built-in suites' own specs, with test_bpf narrowed on the crosvm double.

    Under the double test_bpf runs on the same QEMU/TCG the QEMU environments already
    cover in full (1,026 cases each arch); a tenth of it there still exercises the
    crosvm engine's path and keeps CI inside its time.
    """
    entries = []
    for entry in default_specs(registry()):
        if entry["test"]["name"] != "core.test_bpf":
            entries.append(entry)
            continue
        envs = entry["environments"]
        entries.append({**entry, "environments": [
            e for e in envs if e["dimensions"]["device_type"] != "crosvm"]})
        entries.append({**entry, "test_bpf_args": "test_range=0,99", "environments": [
            e for e in envs if e["dimensions"]["device_type"] == "crosvm"]})
    path.write_text(json.dumps(entries, indent=1))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("suites")
    out = base / "out"
    args = [sys.executable, "-m", "harness", "run", "--out", str(out), "--jobs", "2",
            "--tests", str(ci_specs(base / "tests.json"))]
    for suite in SUITES:
        args += ["--suite", suite]
    for env in QEMU_ENVS + CROSVM_ENVS:
        args += ["--env", env]
    tmp = Path(tempfile.mkdtemp(prefix="hs-", dir="/tmp"))
    try:
        cache = cache_with_double_verdicts(base, CROSVM_ENVS)
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=3000,
                              check=False, env={**os.environ, "HARNESS_CROSVM": str(DOUBLE),
                                                "TMPDIR": str(tmp),
                                                "HARNESS_CACHE_DIR": str(cache)})
        sys.stderr.write(proc.stderr[-20000:])
        yield Run(out, proc, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_blocking_environments_passed(run: Run) -> None:
    assert run.proc.returncode == 0, run.proc.stderr[-4000:]


def test_junit_validates(run: Run) -> None:
    xmlschema.XMLSchema(str(XSD)).validate(str(run.out / "junit.xml"))


@pytest.mark.parametrize("env", QEMU_ENVS + CROSVM_ENVS)
@pytest.mark.parametrize("suite", SUITES)
def test_suite_passes_or_skips_with_a_reason(run: Run, env: str, suite: str) -> None:
    results = run.where(env, suite)
    assert results, f"{suite} did not run on {env}"
    bad = []
    for t in results:
        known = DOUBLE_CANNOT_IMITATE.get((env, t["name"]))
        failed = {c["display_name"] for c in t.get("cases", []) if c["status"] == "FAIL"}
        if known is not None and t["result"] == "FAIL" and failed == known:
            continue
        if t["result"] not in ("PASS", "SKIP") or known is not None:
            bad.append(f"{t['name']}: {t['result']}: {run.message(t)} (failed cases: "
                       f"{sorted(failed)}, the double's known differences: {known})")
    assert not bad, "\n".join(bad)
    for t in results:
        if t["result"] == "SKIP":
            assert run.message(t).strip(), f"{t['name']} skipped without a reason"


@pytest.mark.parametrize("env", ("qemu-x64", "qemu-arm64", "crosvm-x64", "crosvm-arm64"))
@pytest.mark.parametrize("suite", SUITES)
def test_full_environments_really_run_each_suite(run: Run, env: str, suite: str) -> None:
    passed = [t for t in run.where(env, suite) if t["result"] == "PASS"
              or ((env, t["name"]) in DOUBLE_CANNOT_IMITATE and t["result"] == "FAIL")]
    assert passed, f"nothing of {suite} passed on {env}: all skipped"


@pytest.mark.parametrize("env", ("crosvm-x64", "crosvm-arm64"))
def test_crosvm_reboot_relaunches_on_exit_32(run: Run, env: str) -> None:
    t = run.get(env, "reboot_shutdown.guest_reboot")
    assert t["result"] == "PASS", run.message(t)
    serial = (run.out / t["harness"]["folder"] / "serial.log").read_text(errors="replace")
    assert "relaunching crosvm after" in serial, "crosvm's reset (exit 32) must relaunch"
    assert serial.count("HARNESS-BOOT-OK") >= 2


# Where guests start from a restore: every QEMU environment, and crosvm's x86_64 ones.
RESTORED_ENVS = (*QEMU_ENVS, "crosvm-x64", "crosvm-x64-minimal")


@pytest.mark.parametrize("env", QEMU_ENVS + CROSVM_ENVS)
def test_every_guest_is_restored_where_snapshots_work_and_junit_says(run: Run,
                                                                     env: str) -> None:
    """Each test that had a guest says how it started (JUnit property, summary tag): from a
    restore on QEMU (both arches) and crosvm x86_64, a boot with the reason on crosvm arm64."""
    started = [t for t in run.tests if t["harness"]["environment"] == env
               and "start" in t["harness"]["attempts"][-1]["properties"]]
    tags = [{tag["key"]: tag["value"] for tag in t["tags"]} for t in started]
    # Restored: every test that ran had a guest of its own (a minimal device set skips the
    # device tests: 9 run there). Booted: tests that may share do.
    least = 10 if env in RESTORED_ENVS and not env.endswith("-minimal") else 5
    assert len(started) >= least, f"{env}: {len(started)} tests had a guest of their own"
    if env in RESTORED_ENVS:
        assert {tag["start"] for tag in tags} == {"restore"}, env
        assert all(float(tag["restore_s"]) > 0 for tag in tags)
    else:
        assert {tag["start"] for tag in tags} == {"boot"}, env
        assert all("x86_64 only" in tag["start_reason"] for tag in tags)
    suite = next(s for s in ET.parse(run.out / "junit.xml").getroot().iter("testsuite")
                 if any(p.get("name") == "environment" and p.get("value") == env
                        for p in s.iter("property")))
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    for t in started:
        assert props[f"{t['name']}.start"] in ("restore", "boot")


def test_crosvm_network_needs_tap_and_says_so(run: Run) -> None:
    nets = [t for t in run.where("crosvm-x64", "peripherals") if "net" in t["name"]]
    assert nets
    for t in nets:
        assert t["result"] == "SKIP" and "TAP" in run.message(t), run.message(t)


@pytest.mark.parametrize("env", ("qemu-x64", "qemu-arm64"))
def test_kernel_test_modules_become_cases(run: Run, env: str) -> None:
    t = run.get(env, "core.test_bpf")
    assert t["result"] == "PASS", run.message(t)
    assert len(t["cases"]) >= 1026
    assert all(c["status"] == "PASS" for c in t["cases"])


def test_saved_serial_log_reparses_to_the_same_cases(run: Run) -> None:
    """`harness parse` on the saved log gives what the live run reported: study without booting.

    The live run adds checks of its own (`module_unloaded`) that no kernel line carries;
    every case the kernel reported must come back offline, identical, in the same order.
    """
    t = run.get("qemu-x64", "core.test_bpf")
    log = run.out / t["harness"]["folder"] / "serial.log"
    proc = subprocess.run([sys.executable, "-m", "harness", "parse", "--profile", "linux",
                           str(log)], cwd=ROOT, capture_output=True, text=True, check=True)
    parsed = json.loads(proc.stdout)
    assert parsed["crashes"] == []
    live = [(c["suite_name"], c["case_name"], c["status"]) for c in t["cases"]
            if c["format"] == linux_module.FORMAT]
    offline = [(c["suite"], c["name"], c["status"]) for c in parsed["cases"]]
    assert len(live) >= 1026
    assert offline == live
    assert {status for _, _, status in live} == {"PASS"}


def test_nothing_left_behind(run: Run) -> None:
    left = subprocess.run(["pgrep", "-af", f"qemu-system.*{run.tmp}"],
                          capture_output=True, text=True, check=False).stdout
    assert not left.strip(), left
    assert not list(run.tmp.iterdir()), "temporary files or sockets left behind"
