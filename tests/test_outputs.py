"""Where the harness writes, caused for real without a guest: read-only and unwritable
directories (mounts and an unprivileged user, since root ignores permissions), a reused
--out, work directories left by a killed run, a closed stdout, a signal before the run.

Runs here select tests that never boot a guest (a pattern matching nothing, or an
environment whose engine is missing), so each takes a second or two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.folders import RUN_FILES, name_hash, run_folders, unique_folders
from harness.outputs import RUN_MARKER
from harness.repro import exact_glob
from harness.workdirs import owner_record, sweep_stale

ROOT = Path(__file__).resolve().parent.parent
HARNESS = [sys.executable, "-m", "harness"]
ENV = "qemu-x64-minimal"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ho-", dir="/tmp"))
    yield path
    subprocess.run(["umount", "-q", *[str(p) for p in path.glob("mnt*")]], check=False,
                   capture_output=True)
    subprocess.run(["rm", "-rf", str(path)], check=False)


def spec_file(tmp: Path) -> Path:
    path = tmp / "tests.json"
    path.write_text(json.dumps([{"test": {"name": "t", "path": "/bin/true"}, "environments": [
        {"dimensions": {"device_type": "QEMU", "cpu": "x64", "devices": "minimal"}}]}]))
    return path


def run(tmp: Path, *args: str, env: dict[str, str] | None = None, user: int | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`harness run` selecting nothing that boots (unless args say otherwise)."""
    environ = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
    environ.pop("XDG_RUNTIME_DIR", None)
    environ.pop("HARNESS_CROSVM", None)
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run([*prefix, *HARNESS, "run", "--tests", str(spec_file(tmp)),
                           "--env", ENV, *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=timeout, check=False)


def mount_tmpfs(where: Path, *options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=1m", *options]),
                           "tmpfs", str(where)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root")
    return where


def infra(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def test_read_only_out_is_one_line_and_exit_3(short_tmp: Path) -> None:
    ro = mount_tmpfs(short_tmp / "mnt-ro", "ro")
    proc = run(short_tmp, "--out", str(ro / "out"))
    infra(proc, f"--out {ro / 'out'} cannot be created: {ro / 'out'}: Read-only file system")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_full_out_at_start_is_one_line_and_exit_3(short_tmp: Path) -> None:
    full = mount_tmpfs(short_tmp / "mnt-full")
    (full / "out").mkdir()
    with open(full / "ballast", "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * (2 << 20))  # until the disk is full
    proc = run(short_tmp, "--out", str(full / "out"))
    infra(proc, f"--out {full / 'out'} is not writable: No space left on device")


def test_read_only_cache_is_named(short_tmp: Path) -> None:
    ro = mount_tmpfs(short_tmp / "mnt-cache", "ro")
    proc = run(short_tmp, "--out", str(short_tmp / "out"), env={"HARNESS_CACHE_DIR": str(ro)})
    infra(proc, f"the cache directory (HARNESS_CACHE_DIR) {ro} is not writable: "
                "Read-only file system")
    assert not (short_tmp / "out").exists()  # nothing started


def test_out_naming_a_file_exits_2(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("x")
    proc = run(short_tmp, "--out", str(short_tmp / "file"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"field '--out': {short_tmp / 'file'} is a file, not a directory" in proc.stderr


def test_unwritable_out_as_an_unprivileged_user(short_tmp: Path) -> None:
    """EACCES for real: root ignores permissions, so the harness runs as nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    locked = short_tmp / "locked"
    locked.mkdir(mode=0o755)
    cache = short_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o777)  # mkdir applies the umask
    short_tmp.chmod(0o755)
    proc = run(short_tmp, "--out", str(locked / "out"), user=65534,
               env={"HARNESS_CACHE_DIR": str(cache), "HOME": str(cache)})
    infra(proc, f"--out {locked / 'out'} cannot be created: {locked / 'out'}: Permission denied")


def test_reused_out_starts_clean_or_refuses(short_tmp: Path) -> None:
    out = short_tmp / "out"
    first = run(short_tmp, "--out", str(out), "-k", "nothing", "--allow-empty")
    assert first.returncode == 0, first.stderr
    assert (out / RUN_MARKER).is_file() and (out / "summary.json").is_file()
    (out / "qemu-x64-minimal").mkdir()
    (out / "qemu-x64-minimal" / "serial.log").write_text("an earlier run's boot\n")
    second = run(short_tmp, "--out", str(out), "-k", "nothing", "--allow-empty")
    assert second.returncode == 0, second.stderr
    assert f"{out} held an earlier run; its results were removed" in second.stderr
    assert not (out / "qemu-x64-minimal").exists()
    # Not a harness run: not the harness's to delete.
    other = short_tmp / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    proc = run(short_tmp, "--out", str(other), "-k", "nothing", "--allow-empty")
    assert proc.returncode == 2 and "holds no earlier harness run; refusing" in proc.stderr
    assert (other / "notes.txt").read_text() == "keep me"
    # A live run's directory (this process stands in for it): refused, untouched.
    (out / RUN_MARKER).write_text(owner_record())
    proc = run(short_tmp, "--out", str(out), "-k", "nothing", "--allow-empty")
    assert proc.returncode == 2
    assert f"is in use by another harness run (pid {os.getpid()})" in proc.stderr
    assert (out / "summary.json").exists()


def _dead_owner() -> str:
    child = subprocess.Popen(["sleep", "0"])
    record = owner_record(child.pid)
    child.wait()
    return record


def test_work_dirs_of_dead_runs_are_swept_at_the_next_start(short_tmp: Path) -> None:
    dead = short_tmp / "harness-qemu-x64-dead1234"
    live = short_tmp / "harness-qemu-x64-live5678"
    legacy = short_tmp / "harness-qemu-x64-nowner90"
    for d in (dead, live, legacy):
        d.mkdir()
        (d / "disk0.img").write_bytes(b"\0" * 4096)
    (dead / "owner").write_text(_dead_owner())
    (live / "owner").write_text(owner_record())  # this pytest process: alive
    cache = short_tmp / "cache"
    (cache / "images").mkdir(parents=True)
    build = cache / "images" / ".build-abc"
    build.mkdir()
    (cache / "images" / ".build-abc.owner").write_text(_dead_owner())
    proc = run(short_tmp, "--out", str(short_tmp / "out"), "-k", "nothing", "--allow-empty",
               env={"HARNESS_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 work directory left by runs that were killed" in proc.stderr
    assert not dead.exists() and live.exists() and legacy.exists()
    assert not build.exists() and not (cache / "images" / ".build-abc.owner").exists()
    assert sweep_stale([short_tmp]) == []


def test_closed_stdout_of_plan_is_no_traceback(short_tmp: Path) -> None:
    """`harness plan | true`: the reader is gone before the plan is printed (`| head -1`
    is the same once the output outgrows what the pipe takes at once)."""
    command = f"{shlex.join(HARNESS)} plan | true; echo \"rc=${{PIPESTATUS[0]}}\""
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.stdout.splitlines()[-1] == "rc=3", proc.stdout
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def wait_for_open(pid: int, path: Path, timeout: float) -> None:
    """Until process `pid` has `path` open (one of its /proc/PID/fd links names it)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return
        assert time.monotonic() < deadline, f"pid {pid} never opened {path}"
        time.sleep(0.01)


def test_a_signal_while_reading_inputs_ends_the_run_at_once(short_tmp: Path) -> None:
    """Blocked reading a pipe whose writer sends nothing: SIGTERM ends it with 143."""
    fifo = short_tmp / "fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # keeps a writer on the pipe, never writes
    try:
        proc = subprocess.Popen([*HARNESS, "run", "--tests", str(fifo), "--out",
                                 str(short_tmp / "out")], cwd=ROOT, stderr=subprocess.PIPE,
                                text=True)
        # The harness has the pipe open (its signal handlers are in place before it reads
        # any input) and is blocked reading it.
        wait_for_open(proc.pid, fifo, 30)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(writer)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM before the run started" in err and "Traceback" not in err


# -- names ---------------------------------------------------------------------------------


def test_folders_are_unique_whatever_the_names() -> None:
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    names = ["a/b", "a_b", "a b", long_a, long_b, "plain"]
    folders = unique_folders(names)
    assert len(set(folders.values())) == len(names)
    assert folders["a_b"] == "a_b" and folders["plain"] == "plain"  # no change: no hash
    assert folders["a/b"] == f"a_b-{name_hash('a/b')}"
    assert all(len(f) <= 120 for f in folders.values())
    assert folders == unique_folders(reversed(names))  # order does not matter
    assert unique_folders(["a/b"]) == {"a/b": "a_b"}  # no collision: readable as before
    top = run_folders([("junit.xml", "t"), ("e", "t")])
    assert top[("junit.xml", "t")].split("/")[0] not in RUN_FILES


@pytest.mark.parametrize("name", ["--help", "-k", "-", "a*b[c]", "esc\x1b[2J", "new\nline"])
def test_repro_glob_selects_exactly_the_name_and_parses(name: str) -> None:
    import fnmatch

    pattern = exact_glob(name)
    assert fnmatch.fnmatchcase(name, pattern)
    assert not fnmatch.fnmatchcase(name + "x", pattern)
    assert all(c.isprintable() for c in pattern)
    args = build_parser().parse_args(["run", "--env=-odd", "-k", pattern])
    assert isinstance(args, argparse.Namespace)
    assert args.globs == [pattern] and args.env == ["-odd"]
