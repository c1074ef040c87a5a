"""Faults caused for real, through `harness run` as a user runs it (issue: reliability).

Each test starts the harness as a subprocess with its own TMPDIR, so every VMM it
launches can be found by its workdir path, and checks that none is left behind.
Guests are real (QEMU/TCG, the cloud x86_64 image: the fastest to boot here).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from harness.images.build import ensure_image
from harness.images.cpio import CpioEntry, write_cpio

ROOT = Path(__file__).resolve().parent.parent
XSD = ROOT / "tests" / "schemas" / "junit-10.xsd"
ENV = "qemu-x64-minimal"

pytestmark = pytest.mark.integration


def vmm_pids(marker: Path) -> list[int]:
    """QEMU processes whose command line mentions `marker` (a test's private TMPDIR)."""
    marker = marker.resolve()
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{marker}"], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def harness_env(tmp: Path) -> dict[str, str]:
    """The harness's TMPDIR: `tmp/t`, a link to a short private directory.

    Short, because pytest's own temporary paths are deep enough to overflow a Unix
    socket path (the harness then falls back to /tmp, which this test could not watch).
    """
    link = tmp / "t"
    if not link.exists():
        short = Path(tempfile.mkdtemp(prefix="hf-", dir="/tmp"))
        link.symlink_to(short)
    env = dict(os.environ)
    env["TMPDIR"] = str(link.resolve())
    env.pop("XDG_RUNTIME_DIR", None)
    return env


@pytest.fixture(autouse=True)
def _remove_short_tmp(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    link = tmp_path / "t"
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


def run_harness(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--quiet", "--out", str(tmp / "out"), *args],
        cwd=ROOT, env=harness_env(tmp), capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    assert not vmm_pids(tmp / "t"), "a VMM was left behind"
    assert not list((tmp / "t").iterdir()), "temporary files were left behind"
    return proc


def write_tests(tmp: Path, entries: list[dict]) -> Path:
    path = tmp / "tests.json"
    path.write_text(json.dumps([
        {"test": {"name": e["name"], "path": e["path"], "timeout_secs": e.get("timeout", 60),
                  **({"args": e["args"]} if "args" in e else {}),
                  **({"isolated": e["isolated"]} if "isolated" in e else {})},
         "environments": [{"dimensions": {"device_type": "QEMU", "cpu": "x64",
                                          "devices": "minimal"}}]}
        for e in entries
    ]))
    return path


def summary(tmp: Path) -> dict[str, dict]:
    data = json.loads((tmp / "out" / "summary.json").read_text())
    return {t["name"]: t for t in data["tests"]}


def junit_valid(tmp: Path) -> None:
    xmlschema.XMLSchema(str(XSD)).validate(str(tmp / "out" / "junit.xml"))


def test_hang_panic_and_next_tests_still_run(tmp_path: Path) -> None:
    """A hang hits the test deadline, a panic fails within a second, later tests still run."""
    tests = write_tests(tmp_path, [
        {"name": "hangs", "path": "/bin/sleep", "args": ["600"], "timeout": 8},
        {"name": "panics", "path": "/bin/sh",
         "args": ["-c", "echo c > /proc/sysrq-trigger; sleep 600"], "timeout": 120},
        {"name": "passes", "path": "/bin/true"},
    ])
    proc = run_harness(tmp_path, "--tests", str(tests), "--env", ENV, "--jobs", "2")
    results = summary(tmp_path)
    hang = results["hangs"]
    assert hang["result"] == "ABORT", hang
    assert "deadline of 8 s" in hang["harness"]["attempts"][-1]["message"]
    panic = results["panics"]
    assert panic["result"] == "FAIL"
    attempt = panic["harness"]["attempts"][-1]
    assert "guest crashed: linux-panic" in attempt["message"]
    assert "Kernel panic - not syncing: sysrq triggered crash" in attempt["details"]
    # Detected at once, not at the 120 s deadline.
    assert panic["duration_milliseconds"] < 60_000
    assert results["passes"]["result"] == "PASS"
    # The environment is FYI (blocking false): its failures do not fail the run.
    assert proc.returncode == 0, proc.stderr
    junit_valid(tmp_path)


def test_vmm_killed_from_outside_is_an_infra_failure(tmp_path: Path) -> None:
    tests = write_tests(tmp_path, [
        {"name": "victim", "path": "/bin/sleep", "args": ["600"], "timeout": 300},
        {"name": "after", "path": "/bin/true"},
    ])
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--quiet", "--out", str(tmp_path / "out"),
         "--tests", str(tests), "--env", ENV, "--jobs", "1"],
        cwd=ROOT, env=harness_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        # Wait until the guest is running the test (its serial log shows the sleep).
        log = tmp_path / "out" / ENV / "victim" / "serial.log"
        while time.monotonic() < deadline:
            if log.exists() and b"sleep 600" in log.read_bytes():
                break
            time.sleep(0.2)
        pids = vmm_pids(tmp_path / "t")
        assert pids, "no VMM found to kill"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not vmm_pids(tmp_path / "t")
    results = summary(tmp_path)
    victim = results["victim"]
    assert victim["result"] == "INFRA_FAIL", victim
    assert "SIGKILL" in victim["harness"]["attempts"][-1]["message"]
    assert results["after"]["result"] == "PASS"
    junit_valid(tmp_path)


def hanging_init_env(tmp: Path) -> Path:
    """An environments file whose guest never prints its boot marker (init just sleeps)."""
    image = ensure_image("debian-cloud", "x86_64")
    busybox = Path("/bin/busybox").read_bytes()
    buf = io.BytesIO()
    write_cpio([
        CpioEntry("bin", 0o40755), CpioEntry("bin/busybox", 0o100755, busybox),
        CpioEntry("init", 0o100755, b"#!/bin/busybox sh\n/bin/busybox sleep 100000\n"),
        CpioEntry("dev", 0o40755),
    ], buf)
    initrd = tmp / "hang-initrd.gz"
    initrd.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    shutil.copy(image.kernel, tmp / "bzImage")
    envs = json.loads((ROOT / "environments.json").read_text())
    hang = dict(envs["environments"][ENV])
    hang["image"] = {"kernel": "bzImage", "initrd": "hang-initrd.gz"}
    hang["boot_timeout_s"] = 10
    hang["dimensions"] = {"device_type": "QEMU", "cpu": "x64", "devices": "minimal"}
    envs["environments"] = {"never-boots": hang}
    path = tmp / "environments.json"
    path.write_text(json.dumps(envs))
    return path


def test_guest_that_never_boots(tmp_path: Path) -> None:
    envs = hanging_init_env(tmp_path)
    tests = write_tests(tmp_path, [{"name": "first", "path": "/bin/true"},
                                   {"name": "second", "path": "/bin/true"}])
    t0 = time.monotonic()
    proc = run_harness(tmp_path, "--tests", str(tests), "--environments", str(envs), "--jobs", "2")
    assert time.monotonic() - t0 < 90
    results = summary(tmp_path)
    for name in ("first", "second"):
        r = results[name]
        assert r["result"] == "ABORT", r
        attempt = r["harness"]["attempts"][-1]
        assert attempt["message"] == "no boot marker within 10 s"
        assert "Linux version" in attempt["details"] or "Run /init" in attempt["details"], \
            "the serial tail should come with the error"
    assert proc.returncode == 0  # FYI environment
    junit_valid(tmp_path)


def start_long_guests(tmp_path: Path, n: int,
                      extra: list[dict[str, Any]] | None = None) -> subprocess.Popen[bytes]:
    """`harness run --jobs 2` of `n` isolated ten-minute tests (and `extra`), returned once
    its two guests are running."""
    tests = write_tests(tmp_path, [
        {"name": f"long{i}", "path": "/bin/sleep", "args": ["600"], "timeout": 900,
         "isolated": True} for i in range(n)] + (extra or []))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--quiet", "--out", str(tmp_path / "out"),
         "--tests", str(tests), "--env", ENV, "--jobs", "2"],
        cwd=ROOT, env=harness_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(vmm_pids(tmp_path / "t")) < 2:
        time.sleep(0.2)
    if len(vmm_pids(tmp_path / "t")) != 2:
        proc.kill()
        proc.wait()
        raise AssertionError("two guests should be running")
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_tears_everything_down_and_writes_results(tmp_path: Path, sig: int) -> None:
    proc = start_long_guests(tmp_path, 3, extra=[{"name": "quick", "path": "/bin/true"}])
    try:
        time.sleep(3)
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 10, f"teardown took {took:.1f} s"
    assert proc.returncode == (130 if sig == signal.SIGINT else 143)
    assert not vmm_pids(tmp_path / "t")
    results = summary(tmp_path)
    assert len(results) == 4
    name = signal.Signals(sig).name
    aborted = [r for r in results.values() if r["result"] == "ABORT"]
    assert len(aborted) >= 3
    for r in aborted:
        assert name in r["harness"]["attempts"][-1]["message"]
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["harness_run"]["interrupted"] is True
    junit_valid(tmp_path)


def test_two_runs_at_once_do_not_collide(tmp_path: Path) -> None:
    procs = []
    for i in range(2):
        sub = tmp_path / f"run{i}"
        sub.mkdir()
        tests = write_tests(sub, [{"name": "hello", "path": "/bin/echo", "args": ["hi"]}])
        procs.append((sub, subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--quiet", "--out", str(sub / "out"),
             "--tests", str(tests), "--env", ENV],
            cwd=ROOT, env=harness_env(sub), stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for sub, p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert summary(sub)["hello"]["result"] == "PASS"
        assert not vmm_pids(sub / "t")


def test_malformed_tests_json_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "tests.json"
    bad.write_text(json.dumps([{"test": {"name": "x", "timeout_secs": "soon"},
                                "environments": []}]))
    proc = run_harness(tmp_path, "--tests", str(bad))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "test.timeout_secs" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad.write_text("[{")
    proc = run_harness(tmp_path, "--tests", str(bad))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr.replace("JSON:", "JSON")


def test_unknown_environment_and_missing_kernel_exit_2(tmp_path: Path) -> None:
    proc = run_harness(tmp_path, "--env", "qemu-riscv")
    assert proc.returncode == 2 and "no environment named 'qemu-riscv'" in proc.stderr
    envs = json.loads((ROOT / "environments.json").read_text())
    envs["environments"]["qemu-x64"]["image"] = {"kernel": "missing/bzImage"}
    path = tmp_path / "envs.json"
    path.write_text(json.dumps(envs))
    proc = run_harness(tmp_path, "--environments", str(path))
    assert proc.returncode == 2
    assert "environment 'qemu-x64': field 'image.kernel': kernel file not found" in proc.stderr


def test_harness_killed_with_sigkill_takes_its_vmms_along(tmp_path: Path) -> None:
    """No teardown can run after SIGKILL: the VMMs die with their parent (PDEATHSIG)."""
    proc = start_long_guests(tmp_path, 2)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while vmm_pids(tmp_path / "t") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vmm_pids(tmp_path / "t"), "VMMs outlived a SIGKILLed harness"
