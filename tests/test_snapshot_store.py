"""Snapshots without a guest: the cache's keys, checks, locks, cap and listing; overlays read
back for real with qemu-img/qemu-io; the engines' restore command lines; which runs restore.

Guests restored for real are in tests/test_snapshot.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from crosvm_double import cmdline as double
from crosvm_double import control as double_control
from test_crosvm_engine import DOUBLE, make_image, option_values, paths_for
from test_crosvm_engine import make_env as crosvm_env

from harness import app
from harness import environments as envmod
from harness import plan as planmod
from harness.cli import build_parser
from harness.engines.base import RestoreFrom, RunPaths, VmmSetup
from harness.engines.crosvm import RUN_OPTIONS, SNAPSHOT_ARCH_REASON, CrosvmEngine
from harness.engines.process import _group_running, kill_and_reap, start_vmm
from harness.engines.qemu import qemu_command
from harness.errors import ConfigError
from harness.overlays import create_overlay, is_qcow2, parse_qemu_io_dump, read_disk
from harness.results import Attempt, Status, TestResult
from harness.snapshot import GuestStarter, asks_to_share, image_identity, split_group
from harness.snapshot_store import (
    LAST_USED,
    MANIFEST,
    STATE,
    SnapshotKey,
    SnapshotLock,
    SnapshotStore,
    cap_bytes,
)
from harness.spec import parse_specs
from harness.stability import boot_samples
from harness.suite import registry

ROOT = Path(__file__).resolve().parent.parent
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None or
                                    shutil.which("qemu-io") is None,
                                    reason="qemu-img/qemu-io not installed (qemu-utils)")


def key(env: str = "qemu-x64", **changes: object) -> SnapshotKey:
    base = dict(environment=env, engine="qemu", arch="x86_64", image="img digest 1",
                argv=("qemu", "-m", "768"), vmm="QEMU 7.2 (/usr/bin/qemu|1|2)", disks="raw")
    base.update(changes)
    return SnapshotKey(**base)  # type: ignore[arg-type]


def publish(store: SnapshotStore, k: SnapshotKey, state: bytes = b"s" * 4096,
            *, used: float | None = None) -> Path:
    """A snapshot as a build leaves it: a state file, a base disk, a transcript."""
    build = store.new_build_dir()
    (build / STATE).write_bytes(state)
    (build / "disk0.img").write_bytes(b"d" * 1024)
    (build / "boot.log").write_bytes(b"HARNESS-BOOT-OK boot_id=x\n")
    snap = store.publish(build, k, {"boot_id": "b", "boot_s": 2.5, "save_s": 0.5,
                                    "disks": ["disk0.img"]})
    if used is not None:
        os.utime(snap.path / LAST_USED, (used, used))
    return snap.path


# -- the cache -------------------------------------------------------------------------------


def test_key_names_every_input_and_changes_with_each() -> None:
    k = key()
    assert k.name.startswith("qemu-x64-") and len(k.name) == len("qemu-x64-") + 16
    assert key().digest == k.digest  # deterministic
    for field, value in (("image", "img digest 2"), ("argv", ("qemu", "-m", "512")),
                         ("vmm", "QEMU 8.2"), ("disks", "raw, other"), ("format", 99)):
        other = key(**{field: value})
        assert other.digest != k.digest, field
    assert key(vmm="QEMU 8.2").changes_from(k.fields()) == [
        "the VMM changed (QEMU 7.2 (/usr/bin/qemu|1|2) -> QEMU 8.2)"]
    assert key(argv=("x",)).changes_from(k.fields()) == ["the VMM command line changed"]


def test_lookup_says_missing_stale_truncated_and_incomplete(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, cap=1 << 30)
    assert store.lookup(key()).problem == "missing"
    path = publish(store, key())
    found = store.lookup(key())
    assert found.snapshot is not None and found.snapshot.path == path
    assert found.snapshot.disks == [path / "disk0.img"] and found.snapshot.boot_s == 2.5
    assert found.snapshot.transcript().startswith(b"HARNESS-BOOT-OK")
    # Another image: the environment's snapshot is stale, and the lookup says what changed.
    stale = store.lookup(key(image="img digest 2"))
    assert stale.snapshot is None
    assert stale.problem == "stale: the guest image changed (img digest 1 -> img digest 2)"
    assert store.stale_names(key(image="img digest 2")) == [path.name]
    # A state file cut short (a full disk, a copy interrupted): damaged, not used.
    with open(path / STATE, "r+b") as f:
        f.truncate(100)
    cut = store.lookup(key())
    assert cut.snapshot is None and cut.damaged
    assert cut.problem == f"truncated: state of {path.name} is 100 bytes, 4096 when saved"
    (path / "disk0.img").unlink()
    assert store.lookup(key()).problem == f"incomplete: disk0.img is missing from {path.name}"
    (path / MANIFEST).unlink()
    assert store.lookup(key()).problem.startswith("incomplete: ")


def test_a_build_is_invisible_until_published_and_leftovers_go(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, cap=1 << 30)
    build = store.new_build_dir()
    (build / STATE).write_bytes(b"half a state")
    # A run killed mid-build: its directory is hidden and the key is still missing.
    assert build.name.startswith(".build-")
    assert store.lookup(key()).problem == "missing"
    assert store.rows() == []
    # A build in progress (its owner, this process, alive) is left alone, however old.
    old = time.time() - 7200
    os.utime(build, (old, old))
    store.new_build_dir()
    assert build.exists()
    # Its owner gone (the run was killed): the next build clears it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (build / ".owner").write_text(f"{dead.pid} 1 {boot_id}\n")
    store.new_build_dir()
    assert not build.exists()


def test_publish_replaces_a_damaged_snapshot_and_records_sizes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, cap=1 << 30)
    path = publish(store, key())
    (path / STATE).write_bytes(b"x")
    assert store.lookup(key()).damaged
    publish(store, key(), state=b"n" * 10)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["files"][STATE] == 10 and manifest["key"] == key().fields()
    assert store.lookup(key()).snapshot is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".build-", ".trash-"))]


async def test_locks_shared_exclusive_and_removal(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, cap=1 << 30)
    path = publish(store, key())
    # Two runs restoring: both hold it shared. A build (exclusive) must wait for them.
    a, b, c = (store.lock_for(path.name) for _ in range(3))
    try:
        assert await a.acquire(exclusive=False, timeout=1)
        assert await b.acquire(exclusive=False, timeout=1)
        started = time.monotonic()
        assert not await c.acquire(exclusive=True, timeout=0.3)
        assert time.monotonic() - started >= 0.3
        # In use: not removed.
        assert not store.remove(path.name)
        assert path.exists()
        a.release()
        b.release()
        assert await c.acquire(exclusive=True, timeout=1)
        assert not await a.acquire(exclusive=False, timeout=0.2)  # a build holds it
        c.downgrade()  # the builder goes on using what it built
        assert await a.acquire(exclusive=False, timeout=1)
    finally:
        for lock in (a, b, c):
            lock.close()
    assert store.remove(path.name)
    assert not path.exists()


def test_cap_removes_least_recently_used_never_one_in_use(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, cap=1 << 30)
    now = time.time()
    big = b"s" * (1 << 20)
    old = publish(store, key("env-old"), big, used=now - 300)
    busy = publish(store, key("env-busy"), big, used=now - 200)
    mid = publish(store, key("env-mid"), big, used=now - 100)
    new = publish(store, key("env-new"), big, used=now)
    # Oldest first in `harness images list`.
    assert [r["environment"] for r in store.rows()] == ["env-old", "env-busy", "env-mid",
                                                       "env-new"]
    lock = SnapshotLock(tmp_path / ".locks" / f"{busy.name}.lock")
    assert anyio.run(lambda: lock.acquire(exclusive=False, timeout=1))
    try:
        store.cap = 3 << 20  # room for two of the four (about 1 MiB each, plus a disk)
        removed = store.evict(keep=frozenset({new.name}))
    finally:
        lock.close()
    assert removed == [old.name, mid.name]  # env-busy is in use: skipped, not waited for
    assert busy.exists() and new.exists() and not old.exists() and not mid.exists()
    store.cap = 0
    assert store.evict(keep=frozenset({new.name})) == [busy.name]


def test_cap_from_the_environment() -> None:
    assert cap_bytes({}) == 4096 << 20
    assert cap_bytes({"HARNESS_SNAPSHOT_CAP_MIB": "10"}) == 10 << 20
    with pytest.raises(ConfigError, match=r"HARNESS_SNAPSHOT_CAP_MIB.*whole number of MiB"):
        cap_bytes({"HARNESS_SNAPSHOT_CAP_MIB": "ten"})


def test_images_list_shows_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = SnapshotStore(tmp_path, cap=1 << 30)
    path = publish(store, key())
    monkeypatch.setenv("HARNESS_SNAPSHOT_DIR", str(tmp_path))
    assert app.images_command(argparse.Namespace(images_command="list")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{") and "snapshot" in line]
    assert rows == [{
        "snapshot": path.name, "environment": "qemu-x64", "engine": "qemu", "arch": "x86_64",
        "path": str(path), "size": rows[0]["size"], "vmm": "QEMU 7.2 (/usr/bin/qemu|1|2)",
        "image": "img digest 1", "boot_s": 2.5, "save_s": 0.5,
        "created": rows[0]["created"], "last_used": rows[0]["last_used"]}]
    assert rows[0]["size"] >= 4096


# -- overlays --------------------------------------------------------------------------------


@needs_qemu_img
async def test_overlays_read_through_to_the_base_and_keep_their_writes(tmp_path: Path) -> None:
    base = tmp_path / "disk0.img"
    with open(base, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"HOST-PATTERN")
    base.chmod(0o444)
    one = await create_overlay(base, tmp_path / "one.qcow2")
    two = await create_overlay(base, tmp_path / "two.qcow2")
    assert is_qcow2(one) and not is_qcow2(base)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 2097152 512", str(one)],
                   check=True, capture_output=True)
    # Unaligned reads, through to the base, and each overlay's own writes only.
    assert read_disk(one, (1 << 20) + 5, 7) == b"PATTERN"
    assert read_disk(one, 2 << 20, 4) == b"AAAA"
    assert read_disk(two, 2 << 20, 4) == b"\0\0\0\0"
    assert read_disk(base, 2 << 20, 4) == b"\0\0\0\0"
    assert read_disk(base, 1 << 20, 4) == b"HOST"  # a raw image is read directly


def test_qemu_io_dump_parsing() -> None:
    text = ("00100003:  54 50 41 54 54 45 52 4e 00 00 00 00 00 00 00 00  TPATTERN........\n"
            "00100013:  20 20 41  ..A\nread 19/19 bytes at offset 1048579\n")
    assert parse_qemu_io_dump(text) == b"TPATTERN" + b"\0" * 8 + b"  A"


# -- the engines' restore command lines ------------------------------------------------------


def test_qemu_restores_with_incoming_defer_and_qcow2_overlays(tmp_path: Path) -> None:
    env = envmod.load(ROOT / "environments.json").get("qemu-x64")
    image = make_image(tmp_path, "x86_64")
    work = tmp_path / "w"
    disk = work / "disk0.qcow2"
    cold = qemu_command(env, image, RunPaths(workdir=work, disks=(work / "disk0.img",)),
                        accel="tcg")
    restored = qemu_command(env, image, RunPaths(
        workdir=work, disks=(disk,), disk_format="qcow2",
        restore=RestoreFrom(tmp_path / "state", "fd")), accel="tcg")
    assert "-incoming" not in cold
    assert option_values(restored, "-incoming") == ["defer"]
    assert f"file={disk},if=none,format=qcow2,id=blk0" in restored
    # Apart from those, the same machine: a state loads only into the VM it was saved from.
    strip = {"-incoming", "defer"}
    assert [a for a in restored if a not in strip and "disk0" not in a] == \
        [a for a in cold if "disk0" not in a]


def test_crosvm_restores_with_restore_before_the_kernel(tmp_path: Path) -> None:
    image = make_image(tmp_path, "x86_64")
    paths = paths_for(tmp_path, disks=1)
    restored = RunPaths(workdir=paths.workdir, disks=paths.disks,
                        restore=RestoreFrom(tmp_path / "snap" / "state"))
    argv = CrosvmEngine(binary=str(DOUBLE)).command(crosvm_env(), image, restored,
                                                    VmmSetup(str(DOUBLE), "kvm"))
    assert "--restore" in RUN_OPTIONS
    assert option_values(argv, "--restore") == [str(tmp_path / "snap" / "state")]
    assert argv[-1] == str(image.crosvm_kernel)
    cfg = double.parse_run(double.prepare_args(argv[argv.index("run") + 1:]))
    assert cfg.get("restore") == str(tmp_path / "snap" / "state")


def test_the_double_parses_snapshot_take_as_crosvm_does() -> None:
    request, socket_path = double_control.control_request(
        "snapshot", ["take", "/tmp/s", "/run/vm.sock", "--compress-memory"])
    assert socket_path == "/run/vm.sock"
    assert request == {"Snapshot": {"Take": {"snapshot_path": "/tmp/s",
                                             "compress_memory": True, "encrypt": False}}}
    with pytest.raises(double.UsageError, match="Required positional"):
        double_control.control_request("snapshot", ["take", "/tmp/s"])
    with pytest.raises(double.UsageError, match="Unrecognized argument: restore"):
        double_control.control_request("snapshot", ["restore", "/tmp/s", "/run/vm.sock"])
    out = subprocess.run([str(DOUBLE), "snapshot", "take", "--help"], capture_output=True,
                         text=True, check=False, timeout=30)
    assert out.returncode == 0 and "snapshot_path" in out.stdout


async def test_crosvm_snapshot_probe(tmp_path: Path) -> None:
    engine = CrosvmEngine(binary=str(DOUBLE))
    assert await engine.snapshot_unavailable(crosvm_env("x86_64")) is None
    assert await engine.snapshot_unavailable(crosvm_env("arm64")) == SNAPSHOT_ARCH_REASON
    # A crosvm built without it (its help knows no `snapshot`): said, not tried.
    old = tmp_path / "crosvm"
    old.write_text("#!/bin/sh\n[ \"$1\" = version ] && { echo crosvm 0.0.1; exit 0; }\n"
                   "echo \"Unrecognized argument: $1\" >&2; exit 35\n")
    old.chmod(0o755)
    reason = await CrosvmEngine(binary=str(old)).snapshot_unavailable(crosvm_env("x86_64"))
    assert reason is not None and "no `snapshot take`" in reason and "exited 35" in reason


# -- which runs restore ----------------------------------------------------------------------


def _plan(entries: list[dict[str, object]], env: str = "qemu-x64-minimal") -> list:
    specs = parse_specs([{"test": {"timeout_secs": 60, **e},
                          "environments": [{"dimensions": {"device_type": "QEMU", "cpu": "x64",
                                                           "devices": "minimal"}}]}
                         for e in entries], "<test>")
    envs = envmod.load(ROOT / "environments.json")
    return planmod.make_plan(specs, envs, planmod.Selection(env_names=(env,))).runs


def test_which_runs_restore_and_which_share() -> None:
    starter = GuestStarter(store=SnapshotStore(Path("/nonexistent"), cap=0), cold_guest=None,
                           make_disks=None, disk_paths=None)  # type: ignore[arg-type]
    runs = _plan([{"name": "a", "path": "/bin/true"},
                  {"name": "b", "path": "/bin/true", "share_guest": True},
                  {"name": "c", "path": "/bin/true", "share_guest": True},
                  {"name": "d", "path": "/bin/true"}])
    assert [starter.ineligible(r) for r in runs] == [None] * 4
    assert [[r.spec.name for r in g] for g in split_group(runs, {})] == [
        ["b", "c"], ["a"], ["d"]]
    assert [asks_to_share(r, {}) for r in runs] == [False, True, True, False]
    tests = registry()
    assert not any(t.prefers_sharing for t in tests.values())  # every built-in is isolated
    # The reasons a guest boots instead.
    no_store = GuestStarter(store=None, cold_guest=None, make_disks=None,  # type: ignore[arg-type]
                            disk_paths=None)  # type: ignore[arg-type]
    assert no_store.ineligible(runs[0]) == "--no-snapshot"
    run = runs[0]
    off = planmod.PlannedRun(spec=run.spec, environment=_replace_env(run.environment,
                                                                     snapshot=False))
    assert starter.ineligible(off) == 'environment qemu-x64-minimal says "snapshot": false'
    boot = planmod.PlannedRun(spec=_replace_spec(run.spec, is_boot_test=True),
                              environment=run.environment)
    assert starter.ineligible(boot) == "a boot test: the boot is what it tests"
    envs = envmod.load(ROOT / "environments.json")
    bundle = planmod.PlannedRun(spec=run.spec, environment=envs.get("fuchsia-qemu-x64"))
    assert "kernel.entropy-mixin" in (starter.ineligible(bundle) or "")


def test_environment_field_snapshot(tmp_path: Path) -> None:
    data = json.loads((ROOT / "environments.json").read_text())
    assert envmod.load(ROOT / "environments.json").get("qemu-x64").snapshot is True
    data["environments"]["qemu-x64"]["snapshot"] = False
    (tmp_path / "e.json").write_text(json.dumps(data))
    assert envmod.load(tmp_path / "e.json").get("qemu-x64").snapshot is False
    data["environments"]["qemu-x64"]["snapshot"] = "no"
    (tmp_path / "e.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"environment 'qemu-x64'.*field 'snapshot'.*bool"):
        envmod.load(tmp_path / "e.json")


def test_image_identity_prefers_the_digest(tmp_path: Path) -> None:
    image = make_image(tmp_path, "x86_64")
    assert "bzImage|" in image_identity(image)
    digested = type(image)(**{**image.__dict__, "digest": "abc"})
    assert image_identity(digested) == "debian-generic x86_64 digest abc"


def test_no_snapshot_option() -> None:
    assert build_parser().parse_args(["run"]).snapshots is True
    assert build_parser().parse_args(["run", "--no-snapshot"]).snapshots is False
    out = subprocess.run([sys.executable, "-m", "harness", "run", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert "--no-snapshot" in out


def _replace_env(env: envmod.Environment, **changes: object) -> envmod.Environment:
    return dataclasses.replace(env, **changes)  # type: ignore[arg-type]


def _replace_spec(spec: object, **changes: object) -> object:
    return dataclasses.replace(spec, **changes)  # type: ignore[type-var]


def test_dashboards_take_a_restored_guests_boot_from_its_snapshot() -> None:
    def result(*props: dict[str, str]) -> TestResult:
        return TestResult(test="t", suite="s", environment="e", engine="qemu", arch="x86_64",
                          blocking=True, attempts=[Attempt(Status.PASS, properties=p)
                                                   for p in props])

    assert boot_samples(result({"start": "restore", "snapshot_boot_s": "5.5"})) == [5.5]
    # The attempt that saved the snapshot booted it: its own boot counts.
    assert boot_samples(result({"boot_s": "4.0", "snapshot_boot_s": "4.0"})) == [4.0]
    assert boot_samples(result({"start": "restore"}, {})) == []


class _FakeEngine:
    """Enough of an engine for GuestStarter to key a snapshot; it never starts a VMM."""

    name = "qemu"

    async def snapshot_unavailable(self, env: object) -> None:
        return None

    def command(self, env: object, image: object, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        return ["fake-vmm", str(paths.workdir)]


async def test_a_cache_that_cannot_be_written_costs_restores_not_tests(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    said: list[str] = []
    booted: list[str] = []

    def cold_guest(env: object, engine: object, image: object, setup: VmmSetup,
                   folder: Path) -> object:
        booted.append(folder.name)
        return object()

    starter = GuestStarter(store=SnapshotStore(blocker / "snapshots", cap=1 << 30),
                           cold_guest=cold_guest, make_disks=lambda e, d: [],  # type: ignore
                           disk_paths=lambda e, d: [], say=said.append)  # type: ignore[arg-type]
    [run] = _plan([{"name": "a", "path": "/bin/true"}])
    image = make_image(tmp_path, "x86_64")
    for n in range(2):
        await starter.new_guest(run, run.environment, _FakeEngine(), image,  # type: ignore
                                VmmSetup("fake-vmm", "tcg", "fake 1.0"), tmp_path / f"t{n}")
    await starter.close()
    assert booted == ["t0", "t1"]
    [line] = said  # once, however many tests
    assert "guests boot for the rest of the run: the snapshot cache" in line
    assert "Not a directory" in line


async def test_a_killed_vmms_whole_group_is_gone_when_kill_returns(tmp_path: Path) -> None:
    """Isolation starts a guest per test: the next one of an environment with a TAP opens it
    as soon as the last one is killed, so nothing of the last may still hold it."""
    master, slave = os.openpty()
    try:
        process = await start_vmm(["sh", "-c", "sleep 60 & exec sleep 60"], console_fd=slave,
                                  stderr_path=tmp_path / "err")
        await anyio.sleep(0.2)
        assert _group_running(process.pid)
        await kill_and_reap(process)
        assert not _group_running(process.pid)
    finally:
        os.close(master)
        os.close(slave)
