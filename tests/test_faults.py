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
import shlex
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
    for link in [tmp_path / "t", *tmp_path.glob("*/t")]:  # two-run tests make one each
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
        # Wait until the guest is running the test (its serial log shows the sleep).
        log = tmp_path / "out" / ENV / "victim" / "serial.log"
        wait_for(lambda: log.exists() and b"sleep 600" in log.read_bytes(), 120,
                 "the victim test to run")
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
    its two guests are running their tests (their serial logs show the sleep)."""
    tests = write_tests(tmp_path, [
        {"name": f"long{i}", "path": "/bin/sleep", "args": ["600"], "timeout": 900,
         "isolated": True} for i in range(n)] + (extra or []))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--quiet", "--out", str(tmp_path / "out"),
         "--tests", str(tests), "--env", ENV, "--jobs", "2"],
        cwd=ROOT, env=harness_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

    def running() -> int:
        logs = (tmp_path / "out" / ENV).glob("long*/serial.log")
        return sum(b"sleep 600" in log.read_bytes() for log in logs)

    try:
        wait_for(lambda: running() == 2, 180, "two guests running their tests")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    assert len(vmm_pids(tmp_path / "t")) == 2
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_tears_everything_down_and_writes_results(tmp_path: Path, sig: int) -> None:
    proc = start_long_guests(tmp_path, 3, extra=[{"name": "quick", "path": "/bin/true"}])
    try:
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
    wait_for(lambda: not vmm_pids(tmp_path / "t"), 10, "the VMMs to die with the harness")


# -- durable results, signals, output errors, names (issue 16) -------------------------------


def start_harness(tmp: Path, tests: Path, *args: str, out: str = "out",
                  quiet: bool = True, **popen: Any) -> subprocess.Popen[str]:
    env = harness_env(tmp)
    env.pop("HARNESS_CROSVM", None)
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *(["--quiet"] if quiet else []),
         "--out", str(tmp / out), "--tests", str(tests), "--env", ENV, *args],
        cwd=ROOT, env=env, text=True, **{"stdout": subprocess.PIPE,
                                         "stderr": subprocess.PIPE, **popen})


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def leftovers(tmp: Path) -> list[str]:
    return [p.name for p in (tmp / "t").iterdir()]


def test_sigkill_right_after_a_pass_keeps_every_reported_result(tmp_path: Path) -> None:
    """Killed the moment the third PASS is printed: the files say PASS for all three (they
    were written before the lines), the fourth test says it did not finish. The work
    directory SIGKILL left behind is removed when the next run starts."""
    tests = write_tests(tmp_path, [
        *({"name": f"echo{i}", "path": "/bin/echo", "args": [f"token{i}"]} for i in range(3)),
        {"name": "sleeper", "path": "/bin/sleep", "args": ["600"], "timeout": 900}])
    proc = start_harness(tmp_path, tests, "--jobs", "1", quiet=False)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("[3/4] PASS"):
                proc.kill()
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(line.startswith("[3/4] PASS") for line in seen), seen
    wait_for(lambda: not vmm_pids(tmp_path / "t"), 10, "the VMM to die with the harness")
    results = summary(tmp_path)
    for i in range(3):
        assert results[f"echo{i}"]["result"] == "PASS", results[f"echo{i}"]
    sleeper = results["sleeper"]
    assert sleeper["result"] == "ABORT"
    assert sleeper["harness"]["attempts"][-1]["message"].startswith("did not finish")
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["harness_run"]["interrupted"] is True
    junit_valid(tmp_path)
    assert leftovers(tmp_path), "SIGKILL leaves the guest's work directory"
    nothing = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--out", str(tmp_path / "next"),
         "--tests", str(tests), "--env", ENV, "-k", "nothing", "--allow-empty"],
        cwd=ROOT, env=harness_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 0, nothing.stderr
    assert "removed 1 work directory left by runs that were killed" in nothing.stderr
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("signals", [
    (signal.SIGINT, signal.SIGINT, signal.SIGINT),
    (signal.SIGTERM, signal.SIGTERM),
    (signal.SIGHUP,),
], ids=["int-int-int", "term-term", "hup-terminal-gone"])
def test_repeated_signals_and_sighup_still_write_results(
        tmp_path: Path, signals: tuple[signal.Signals, ...]) -> None:
    """A guest running and 3,000 tests pending; the signals 0.3 s apart (SIGHUP after the
    terminal's reader went away, as when a terminal is closed): every result is written,
    each pending test says what stopped it, nothing is left behind, exit 128 + signal."""
    tests = write_tests(tmp_path, [
        {"name": "long", "path": "/bin/sleep", "args": ["600"], "timeout": 900,
         "isolated": True},
        *({"name": f"pending{i}", "path": "/bin/true", "isolated": True}
          for i in range(3000))])
    hangup = signals == (signal.SIGHUP,)
    # The 3,001 lines the interrupted tests print go to a file, not to a pipe nobody reads
    # (it would fill and stop the harness mid-line); for SIGHUP the pipe's reader closes.
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = start_harness(tmp_path, tests, "--jobs", "1", quiet=False,
                             **({} if hangup else {"stdout": subprocess.DEVNULL, "stderr": err}))
    try:
        log = tmp_path / "out" / ENV / "long" / "serial.log"
        wait_for(lambda: log.exists() and b"sleep 600" in log.read_bytes(), 180,
                 "the long test to run")
        if hangup:
            assert proc.stderr is not None
            proc.stderr.close()  # the terminal is gone: later lines get EPIPE
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.3)  # the scenario, not a synchronisation: repeats 0.3 s apart
            proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signals[0], proc.returncode
    assert not vmm_pids(tmp_path / "t")
    assert not leftovers(tmp_path), leftovers(tmp_path)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["harness_run"]["interrupted"] is True
    assert len(data["tests"]) == 3001
    reason = f"interrupted by {signals[0].name}"
    for t in data["tests"]:
        assert t["result"] == "ABORT", t["name"]
        assert reason in t["harness"]["attempts"][-1]["message"], t["harness"]["attempts"]
    junit_valid(tmp_path)


def test_closed_stderr_does_not_end_the_run(tmp_path: Path) -> None:
    """`harness run ... 2>&1 | head -1`: the run goes on, the passing test is recorded,
    nothing is left, and the exit status says the terminal was lost (3)."""
    tests = write_tests(tmp_path, [{"name": "hello", "path": "/bin/echo", "args": ["hi"]}])
    command = (f"{sys.executable} -m harness run --out {tmp_path / 'out'} --tests {tests} "
               f"--env {ENV} 2>&1 | head -1; echo \"rc=${{PIPESTATUS[0]}}\"")
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=harness_env(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("harness: 1 test run on 1 environment"), lines
    assert lines[-1] == "rc=3", lines
    assert summary(tmp_path)["hello"]["result"] == "PASS"
    junit_valid(tmp_path)
    assert not vmm_pids(tmp_path / "t") and not leftovers(tmp_path)


def test_full_disk_mid_run_is_an_infrastructure_failure(tmp_path: Path) -> None:
    """A 1 MiB tmpfs as --out and a test printing 1.2 MB: that test is INFRA_FAIL with one
    line naming its serial.log (which stops growing at the error), the test before keeps
    its PASS on disk, the next one is still tried, exit 3, a few lines on stderr."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        tests = write_tests(tmp_path, [
            {"name": "first", "path": "/bin/echo", "args": ["hi"]},
            {"name": "big", "path": "/bin/sh", "timeout": 300,
             "args": ["-c", "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 1200000"]},
            {"name": "after", "path": "/bin/echo", "args": ["hi"]}])
        proc = start_harness(tmp_path, tests, "--jobs", "1", out="mnt/out", quiet=False)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 3, err
        assert "Traceback" not in err and len(err) < 4000, err
        log = mnt / "out" / ENV / "big" / "serial.log"
        assert "INFRA_FAIL qemu-x64-minimal big" in err
        assert f"cannot write {log}: No space left on device" in err
        assert "harness: infrastructure:" in err
        data = json.loads((mnt / "out" / "summary.json").read_text())
        results = {t["name"]: t for t in data["tests"]}
        assert results["first"]["result"] == "PASS"
        # Nothing is left that could write to the log any more: the run has ended and
        # took its VMMs along.
        assert not vmm_pids(tmp_path / "t") and not leftovers(tmp_path)
        xmlschema.XMLSchema(str(XSD)).validate(str(mnt / "out" / "junit.xml"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


HOSTILE = {
    "slash": "a/b", "under": "a_b", "space": "a b",
    "long1": "L" * 300 + "1", "long2": "L" * 300 + "2",
    "esc": "esc\x1b[2J\x1b]0;pwned\x07", "nl": "new\nline",
}


def test_result_folders_names_and_repro_lines(tmp_path: Path) -> None:
    """Colliding, long and hostile names each get a folder of their own with only their
    own output in it; names reach the terminal escaped; repro.sh of a test named `--help`
    or `-k` re-selects exactly that test; a reused --out starts clean."""
    entries = [{"name": name, "path": "/bin/echo", "args": [f"TOKEN-{key}"]}
               for key, name in HOSTILE.items()]
    entries += [{"name": "--help", "path": "/bin/false"}, {"name": "-k", "path": "/bin/false"}]
    tests = write_tests(tmp_path, entries)
    proc = start_harness(tmp_path, tests, "--jobs", "1", quiet=False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err  # FYI environment
    for bad in ("\x1b", "\x07", "\x00"):
        assert bad not in err
    assert "esc\\x1b[2J\\x1b]0;pwned\\x07" in err and "new\\x0aline" in err
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    results = {t["name"]: t for t in data["tests"]}
    folders = {name: results[name]["harness"]["folder"] for name in results}
    assert len(set(folders.values())) == len(folders)
    for key, name in HOSTILE.items():
        assert results[name]["result"] == "PASS", (name, results[name]["result"])
        output = (tmp_path / "out" / folders[name] / "program-output.txt").read_text()
        assert output.strip() == f"TOKEN-{key}"
        log = (tmp_path / "out" / folders[name] / "serial.log").read_bytes()
        others = [k for k in HOSTILE if k != key and f"TOKEN-{k}\r".encode() in log]
        assert not others, (name, others)
    junit_valid(tmp_path)
    for name in ("--help", "-k"):
        assert results[name]["result"] == "FAIL"
        script = (tmp_path / "out" / folders[name] / "repro.sh").read_text()
        argv = shlex.split(script.split("exec ", 1)[1])
        at = argv.index("run")
        plan = subprocess.run([*argv[:at], "plan", "--json", *argv[at + 1:]], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
        assert plan.returncode == 0, plan.stderr
        assert [r["test"] for r in json.loads(plan.stdout)["runs"]] == [name]
    # The same --out again (selecting nothing, so no boot): nothing of the first run is left.
    again = start_harness(tmp_path, tests, "-k", "nothing", "--allow-empty")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "held an earlier run; its results were removed" in err
    assert not (tmp_path / "out" / ENV).exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tests"] == []
    assert not vmm_pids(tmp_path / "t") and not leftovers(tmp_path)


def seeded_cache(tmp: Path) -> Path:
    """A fresh image cache holding only the downloaded packages (no network needed) and
    the KVM verdict (no probe boot): a run must build the cloud image first."""
    home = Path(os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache/crosvm-harness")
    debs = sorted((home / "downloads").glob("*cloud-amd64*.deb")) + \
        sorted((home / "downloads").glob("busybox-static_*_amd64.deb"))
    if len(debs) < 2:
        pytest.skip("the x86_64 cloud image's packages are not in the cache")
    cache = tmp / "cache"
    (cache / "downloads").mkdir(parents=True)
    for deb in debs:
        shutil.copy(deb, cache / "downloads" / deb.name)
    if (home / "kvm-verdict.json").exists():
        shutil.copy(home / "kvm-verdict.json", cache / "kvm-verdict.json")
    return cache


@pytest.mark.parametrize("whole_group", [False, True], ids=["harness-alone", "terminal-ctrl-c"])
def test_ctrl_c_during_the_first_image_build(tmp_path: Path, whole_group: bool) -> None:
    """SIGINT while dpkg-deb unpacks the kernel, to the harness alone or (Ctrl-C at a
    terminal) to its whole process group: the build's child processes and partial
    files go, the good .deb stays and is not blamed, the run says it was interrupted."""
    cache = seeded_cache(tmp_path)
    deb = next((cache / "downloads").glob("linux-image*.deb"))
    before = deb.read_bytes()
    tests = write_tests(tmp_path, [{"name": "hello", "path": "/bin/echo", "args": ["hi"]}])
    env = harness_env(tmp_path)
    env["HARNESS_CACHE_DIR"] = str(cache)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--out", str(tmp_path / "out"),
         "--tests", str(tests), "--env", ENV], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def dpkg() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"dpkg-deb.*{cache}"], capture_output=True,
                              text=True, check=False).stdout.split()

    try:
        wait_for(dpkg, 180, "dpkg-deb to unpack the kernel")
        t0 = time.monotonic()
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    # The build was stopped, not run to its end first (nothing published, and quickly).
    assert not [p for p in (cache / "images").iterdir() if not p.name.startswith(".")]
    assert took < 20, f"stopping took {took:.1f} s"
    assert "Traceback" not in err and "Delete" not in err and "INFRA_FAIL" not in err, err
    assert not dpkg()
    left = [p.name for p in cache.rglob(".*") if p.name.startswith((".work-", ".build-", ".apt-"))]
    assert not left, left
    assert deb.read_bytes() == before
    result = summary(tmp_path)["hello"]
    assert result["result"] == "ABORT"
    assert result["harness"]["attempts"][-1]["message"] == "not run: interrupted by SIGINT"
    junit_valid(tmp_path)
    assert not leftovers(tmp_path)
