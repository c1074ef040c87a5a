"""Boot once, restore per test, for real: `harness run` as a user runs it, guests really
restored (QEMU/TCG, and the crosvm double on QEMU's migration), and every fault of the
snapshot cache caused for real.

Each test has a snapshot cache of its own (HARNESS_SNAPSHOT_DIR) and a TMPDIR of its own,
and checks that no VMM and no temporary file is left behind. The guest is qemu-x64-minimal
(the cloud kernel: the fastest to boot here); the crosvm test uses crosvm-x64-minimal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from test_faults import harness_env, junit_valid, vmm_pids

from harness.snapshot_store import MANIFEST, STATE

ROOT = Path(__file__).resolve().parent.parent
ENV = "qemu-x64-minimal"
DOUBLE = ROOT / "tests" / "crosvm_double" / "crosvm"
BOOT_MARKER = re.compile(rb"HARNESS-BOOT-OK boot_id=")

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _remove_short_tmp(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    link = tmp_path / "t"
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


def write_tests(tmp: Path, entries: list[dict[str, Any]], *, crosvm: bool = False) -> Path:
    """A tests.json for qemu-x64-minimal (crosvm: crosvm-x64-minimal): programs (`path`) and
    built-in suite tests (by name); other fields are the test's parameters."""
    device_type = "crosvm" if crosvm else "QEMU"
    specs = []
    for e in entries:
        test = {"name": e["name"], "timeout_secs": e.get("timeout", 120)}
        if "path" in e:
            test["path"] = e["path"]
        if "args" in e:
            test["args"] = e["args"]
        extra = {k: v for k, v in e.items() if k not in ("name", "path", "args", "timeout")}
        specs.append({"test": test, **extra, "environments": [{"dimensions": {
            "device_type": device_type, "cpu": "x64", "devices": "minimal"}}]})
    path = tmp / "tests.json"
    path.write_text(json.dumps(specs))
    return path


def run(tmp: Path, cache: Path, *args: str, out: str = "out", environ: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**harness_env(tmp), "HARNESS_SNAPSHOT_DIR": str(cache), **(environ or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--out", str(tmp / out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert not vmm_pids(tmp / "t"), "a VMM was left behind"
    assert not list((tmp / "t").iterdir()), "temporary files were left behind"
    return proc


def results(tmp: Path, out: str = "out") -> dict[str, dict[str, Any]]:
    data = json.loads((tmp / out / "summary.json").read_text())
    return {t["name"]: t for t in data["tests"]}


def props(test: dict[str, Any]) -> dict[str, str]:
    return test["harness"]["attempts"][-1]["properties"]


def tags(test: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in test["tags"]}


def snapshots(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def isolation_tests(tmp: Path) -> Path:
    """Programs that would share one guest without snapshots; `reads` passes only on a
    guest `writes` never touched."""
    return write_tests(tmp, [
        {"name": "writes", "path": "/bin/sh",
         "args": ["-c", "echo leaked > /root/leak; cat /proc/sys/kernel/random/boot_id"]},
        {"name": "reads", "path": "/bin/sh", "args": ["-c", "! test -e /root/leak"]},
        {"name": "peripherals.rtc"},
    ])


def test_each_test_restores_a_guest_of_its_own_and_results_say_how(tmp_path: Path) -> None:
    cache = tmp_path / "snapshots"
    tests = isolation_tests(tmp_path)
    proc = run(tmp_path, cache, "--tests", str(tests), "--env", ENV, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    # The missing snapshot is said once, however many tests wanted it.
    said = f"no snapshot of {ENV} yet; booting once to save one"
    assert proc.stderr.count(said) == 1, proc.stderr
    got = results(tmp_path)
    assert {n: t["result"] for n, t in got.items()} == {
        "writes": "PASS", "reads": "PASS", "peripherals.rtc": "PASS"}
    [snap] = snapshots(cache)
    built = [n for n, t in got.items() if props(t).get("snapshot_built") == "true"]
    assert len(built) == 1
    for name, t in got.items():
        p = props(t)
        assert p["start"] == "restore" and p["snapshot"] == snap.name, (name, p)
        assert 0 < float(p["restore_s"]) < 30
        assert tags(t)["start"] == "restore"  # summary.json's tag
        folder = tmp_path / "out" / t["output_dir"]
        # Each guest its own VMM, restored; its log reads as a booted guest's: one boot.
        assert "-incoming defer" in (folder / "vmm-command.txt").read_text()
        log = (folder / "serial.log").read_bytes()
        assert len(BOOT_MARKER.findall(log)) == 1, name
        assert f"restored from snapshot {snap.name}".encode() in log
    # JUnit: how each guest started, and the restore time, as properties.
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    junit = {p.get("name"): p.get("value") for p in suite.iter("property")}
    for name in got:
        assert junit[f"{name}.start"] == "restore"
        assert float(junit[f"{name}.restore_s"]) > 0
    junit_valid(tmp_path)

    # A later run restores at once. Its guests' clocks are set: the snapshot is old by now
    # (time must pass for the RTC test to mean something: a restored clock stands still).
    manifest = json.loads((snap / MANIFEST).read_text())
    age = time.time() - manifest["created"]
    if age < 6:
        time.sleep(6 - age)
    proc = run(tmp_path, cache, "--tests", str(tests), "--env", ENV, "--jobs", "2", out="out2")
    assert proc.returncode == 0, proc.stderr
    assert "booting once" not in proc.stderr
    again = results(tmp_path, "out2")
    assert all(t["result"] == "PASS" for t in again.values()), again
    assert all(props(t)["start"] == "restore" and "snapshot_built" not in props(t)
               for t in again.values())
    rtc = props(again["peripherals.rtc"])
    assert abs(float(rtc["rtc_system_time_offset_s"])) <= 1.5, rtc
    assert snapshots(cache) == [snap]

    # `harness images list` shows it.
    listed = subprocess.run([sys.executable, "-m", "harness", "images", "list"], cwd=ROOT,
                            env={**os.environ, "HARNESS_SNAPSHOT_DIR": str(cache)},
                            capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [json.loads(line) for line in listed.splitlines() if '"snapshot"' in line]
    assert [(r["snapshot"], r["environment"]) for r in rows] == [(snap.name, ENV)]


def test_no_snapshot_boots_and_shares_as_before(tmp_path: Path) -> None:
    cache = tmp_path / "snapshots"
    tests = write_tests(tmp_path, [{"name": "one", "path": "/bin/true"},
                                   {"name": "two", "path": "/bin/true"}])
    proc = run(tmp_path, cache, "--tests", str(tests), "--env", ENV, "--no-snapshot")
    assert proc.returncode == 0, proc.stderr
    got = results(tmp_path)
    # The second test ran on the first one's guest: it neither booted nor restored.
    assert [props(t).get("start") for t in got.values()] == ["boot", None]
    assert [("boot_s" in props(t)) for t in got.values()] == [True, False]
    assert not cache.exists() or not snapshots(cache)


def test_damaged_and_stale_snapshots_are_replaced_and_said_once(tmp_path: Path) -> None:
    cache = tmp_path / "snapshots"
    tests = write_tests(tmp_path, [{"name": "a", "path": "/bin/true"},
                                   {"name": "b", "path": "/bin/true"}])
    assert run(tmp_path, cache, "--tests", str(tests), "--env", ENV).returncode == 0
    [snap] = snapshots(cache)
    size = (snap / STATE).stat().st_size

    # Truncated (a full disk, an interrupted copy): found, removed, saved again.
    with open(snap / STATE, "r+b") as f:
        f.truncate(size // 2)
    proc = run(tmp_path, cache, "--tests", str(tests), "--env", ENV, out="out2")
    assert proc.returncode == 0, proc.stderr
    said = (f"the snapshot of {ENV} is damaged (truncated: state of {snap.name} is "
            f"{size // 2} bytes, {size} when saved): removed; booting once to save one")
    assert proc.stderr.count(said) == 1, proc.stderr
    got = results(tmp_path, "out2")
    assert all(t["result"] == "PASS" and props(t)["start"] == "restore" for t in got.values())
    assert snapshots(cache) == [snap]  # the same key, saved again, whole
    manifest = json.loads((snap / MANIFEST).read_text())
    assert (snap / STATE).stat().st_size == manifest["files"][STATE] > size // 2

    # Stale: the environment changed (another kernel argument), so its VMM command line.
    data = json.loads((ROOT / "environments.json").read_text())
    data["environments"][ENV]["kernel_args"] = ["harness.loglevel=1"]
    envs = tmp_path / "environments.json"
    envs.write_text(json.dumps(data))
    proc = run(tmp_path, cache, "--tests", str(tests), "--env", ENV, "--environments",
               str(envs), out="out3")
    assert proc.returncode == 0, proc.stderr
    said = (f"the snapshot of {ENV} is stale (the VMM command line changed) (removed "
            f"{snap.name}); booting once to save one")
    assert proc.stderr.count(said) == 1, proc.stderr
    [new] = snapshots(cache)
    assert new != snap
    got = results(tmp_path, "out3")
    assert all(t["result"] == "PASS" and props(t)["snapshot"] == new.name for t in got.values())


def test_a_restore_failing_midway_is_an_infra_failure_with_the_vmms_words(
        tmp_path: Path) -> None:
    cache = tmp_path / "snapshots"
    one = write_tests(tmp_path, [{"name": "a", "path": "/bin/true"}])
    assert run(tmp_path, cache, "--tests", str(one), "--env", ENV).returncode == 0
    [snap] = snapshots(cache)
    # Damage QEMU cannot tell from the size: bytes in the middle of its memory stream.
    with open(snap / STATE, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 3)
        f.write(b"\x5a" * 4096)
    two = write_tests(tmp_path, [{"name": "first", "path": "/bin/true"},
                                 {"name": "second", "path": "/bin/true"}])
    proc = run(tmp_path, cache, "--tests", str(two), "--env", ENV, "--jobs", "1", out="out2")
    got = results(tmp_path, "out2")
    failed = [t for t in got.values() if t["result"] == "INFRA_FAIL"]
    passed = [t for t in got.values() if t["result"] == "PASS"]
    assert len(failed) == 1 and len(passed) == 1, {n: t["result"] for n, t in got.items()}
    message = failed[0]["harness"]["attempts"][-1]["message"]
    assert message.startswith(f"restore from snapshot {snap.name} failed"), message
    assert "load of migration failed" in message or "error while loading state" in message
    # At once, not at a deadline; and the next test saved a good snapshot and restored it.
    assert failed[0]["duration_milliseconds"] < 60_000
    assert props(passed[0])["start"] == "restore" and props(passed[0])["snapshot_built"]
    assert f"a restore from {snap.name} failed; the snapshot is discarded" in proc.stderr


def test_two_runs_saving_one_snapshot_at_once_share_it(tmp_path: Path) -> None:
    cache = tmp_path / "snapshots"
    procs = []
    for i in range(2):
        sub = tmp_path / f"run{i}"
        sub.mkdir()
        tests = write_tests(sub, [{"name": f"hello{i}", "path": "/bin/echo", "args": ["hi"]}])
        env = {**harness_env(sub), "HARNESS_SNAPSHOT_DIR": str(cache)}
        procs.append((sub, subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--quiet", "--out", str(sub / "out"),
             "--tests", str(tests), "--env", ENV],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    built = 0
    for i, (sub, p) in enumerate(procs):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        t = results(sub)[f"hello{i}"]
        assert t["result"] == "PASS" and props(t)["start"] == "restore"
        built += props(t).get("snapshot_built") == "true"
        assert not vmm_pids(sub / "t")
    # One saved it while the other waited for its lock; one snapshot, whole, nothing left over.
    assert built == 1
    [snap] = snapshots(cache)
    assert not [p for p in cache.iterdir() if p.name.startswith((".build-", ".trash-"))]
    manifest = json.loads((snap / MANIFEST).read_text())
    for rel, size in manifest["files"].items():
        assert (snap / rel).stat().st_size == size, rel


def test_crosvm_double_restores_and_a_reset_boots_cold(tmp_path: Path) -> None:
    """crosvm's path through the double: `snapshot take`, `run --restore`, `resume --full`;
    after a guest reset crosvm exits and the relaunch must boot, not restore again (the
    reboot test fails on a boot_id that did not change)."""
    cache = tmp_path / "snapshots"
    tests = write_tests(tmp_path, [
        {"name": "smoke.boot_and_command"},
        {"name": "reboot_shutdown.guest_reboot", "reboot_cycles": 1, "timeout": 300},
    ], crosvm=True)
    environ = {"HARNESS_CROSVM": str(DOUBLE)}
    proc = run(tmp_path, cache, "--tests", str(tests), "--env", "crosvm-x64-minimal",
               environ=environ)
    got = results(tmp_path)
    assert {n: t["result"] for n, t in got.items()} == {
        "smoke.boot_and_command": "PASS", "reboot_shutdown.guest_reboot": "PASS"}, proc.stderr
    [snap] = snapshots(cache)
    assert (snap / STATE).is_dir()  # crosvm's snapshot is a directory
    for t in got.values():
        assert props(t)["start"] == "restore"
        folder = tmp_path / "out" / t["output_dir"]
        assert f"--restore {snap / STATE}" in (folder / "vmm-command.txt").read_text()
    reboot = props(got["reboot_shutdown.guest_reboot"])
    assert reboot["vmm_relaunches"] == "1"

    # crosvm refusing the state: an INFRA_FAIL with crosvm's words, at once.
    stream = snap / STATE / "qemu-migration"
    with open(stream, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 3)
        f.write(b"\x5a" * 4096)
    one = write_tests(tmp_path, [{"name": "smoke.boot_and_command"}], crosvm=True)
    run(tmp_path, cache, "--tests", str(one), "--env", "crosvm-x64-minimal", out="out2",
        environ=environ)
    t = results(tmp_path, "out2")["smoke.boot_and_command"]
    message = t["harness"]["attempts"][-1]["message"]
    assert t["result"] == "INFRA_FAIL", message
    assert message.startswith(f"restore from snapshot {snap.name} failed"), message
    assert "failed to restore the VM" in message, message
    assert t["duration_milliseconds"] < 60_000
