"""harness.accel: one KVM verdict for both engines, one lock per arch, and command lines that
are pure functions of what was resolved before them.

The probe boot itself is tested for real in tests/test_qemu_engine.py and
tests/test_crosvm_double.py; here a stand-in probe records when it runs, so the
scheduling (who waits for whom) can be watched event by event.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness import environments as envmod
from harness.accel import CACHE_FILE, Accel, Verdict, probe_environment
from harness.app import make_engines, planned_argv
from harness.disks import make_disk_paths
from harness.engines.base import BinaryLookup, Engine, EnvironmentUnavailable, RunPaths, VmmSetup
from harness.engines.crosvm import CrosvmEngine
from harness.engines.qemu import QemuEngine
from harness.environments import Environment
from harness.images.environment import unbuilt_image

ENVS = envmod.load(None)


class _Host:
    """What a stand-in engine needs of the host: a binary file whose identity keys verdicts,
    and a KVM that a probe (not a precheck) decides on."""

    def __init__(self, binary: Path) -> None:
        super().__init__()  # the engine's own per-binary caches
        self.binary = binary

    def locate(self, arch: str) -> BinaryLookup:
        return BinaryLookup(self.binary.name, str(self.binary), "test")

    def kvm_precheck(self, arch: str) -> str | None:
        return None


class StandInQemu(_Host, QemuEngine):
    pass


class StandInCrosvm(_Host, CrosvmEngine):
    async def version(self, binary: str) -> str:
        return "crosvm stand-in"


def binary(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


class Probes:
    """A stand-in probe boot: each call waits until the test lets it finish."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str]] = []
        self.release: dict[str, anyio.Event] = {}
        self.running = anyio.Event()

    async def __call__(self, engine: Engine, env: Environment, binary: str
                       ) -> tuple[bool, str]:
        call = (engine.name, env.arch)
        self.started.append(call)
        self.running.set()
        await self.release.setdefault(env.arch, anyio.Event()).wait()
        self.finished.append(call)
        return env.arch == "x86_64", f"stand-in probe of {engine.name} {env.arch}"


async def test_one_cache_file_for_both_engines(tmp_path: Path) -> None:
    qemu, crosvm = StandInQemu(binary(tmp_path, "qemu")), StandInCrosvm(binary(tmp_path, "cv"))
    accel = Accel(tmp_path)
    accel.store(qemu, ENVS.get("qemu-x64"), Verdict(True, "q"))
    accel.store(crosvm, ENVS.get("crosvm-x64"), Verdict(False, "c"))
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    assert sorted(key.split("|")[0] for key in data) == ["crosvm", "qemu"]
    assert not (tmp_path / "crosvm-kvm-verdict.json").exists()
    # A new run (a new Accel) reads both from the one file.
    assert Accel(tmp_path).cached(qemu, ENVS.get("qemu-x64")) == Verdict(True, "q")
    assert Accel(tmp_path).cached(crosvm, ENVS.get("crosvm-x64")) == Verdict(False, "c")


async def test_one_probe_per_arch_and_arches_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """Two engines' x86_64 environments starting together: one probe at a time (the lock is
    the arch's, whatever the engine), and each environment's verdict probed once; arm64's
    probe runs and finishes while x86_64's is still held."""
    qemu, crosvm = StandInQemu(binary(tmp_path, "qemu")), StandInCrosvm(binary(tmp_path, "cv"))
    probes = Probes()
    accel = Accel(tmp_path, probe=probes)
    setups: dict[str, VmmSetup | str] = {}

    async def resolve(engine: Engine, name: str) -> None:
        try:
            setups[name] = await accel.resolve(engine, ENVS.get(name))
        except EnvironmentUnavailable as e:
            setups[name] = str(e)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(resolve, qemu, "qemu-x64")
            await probes.running.wait()
            tg.start_soon(resolve, qemu, "qemu-x64")  # the same key: waits, then reads it
            tg.start_soon(resolve, crosvm, "crosvm-x64")  # another key of the same arch
            tg.start_soon(resolve, qemu, "qemu-arm64")
            await anyio.wait_all_tasks_blocked()
            assert probes.started == [("qemu", "x86_64"), ("qemu", "arm64")]
            probes.release.setdefault("arm64", anyio.Event()).set()
            await anyio.wait_all_tasks_blocked()
            assert probes.finished == [("qemu", "arm64")]  # x86_64's probe still holds its lock
            assert ("crosvm", "x86_64") not in probes.started
            probes.release["x86_64"].set()
    assert probes.started == [("qemu", "x86_64"), ("qemu", "arm64"), ("crosvm", "x86_64")]
    assert setups["qemu-x64"] == VmmSetup(str(qemu.binary), "kvm")
    assert setups["crosvm-x64"] == VmmSetup(str(crosvm.binary), "kvm", "crosvm stand-in")
    assert setups["qemu-arm64"] == VmmSetup(str(qemu.binary), "tcg")  # auto: TCG, not a skip


async def test_the_accel_policy(tmp_path: Path) -> None:
    qemu, crosvm = StandInQemu(binary(tmp_path, "qemu")), StandInCrosvm(binary(tmp_path, "cv"))
    accel = Accel(tmp_path)
    no = Verdict(False, "probe boot under KVM failed: emulation failure")
    for engine, name in ((qemu, "qemu-x64"), (crosvm, "crosvm-x64")):
        accel.store(engine, ENVS.get(name), no)
    assert (await accel.resolve(qemu, ENVS.get("qemu-x64"))).accel == "tcg"
    with pytest.raises(EnvironmentUnavailable, match="environment requires KVM, which does "
                                                     "not work here: probe boot under KVM"):
        await accel.resolve(qemu, _with(ENVS.get("qemu-x64"), accel="kvm"))
    with pytest.raises(EnvironmentUnavailable, match="crosvm cannot boot a guest here: probe"):
        await accel.resolve(crosvm, ENVS.get("crosvm-x64"))
    # tcg asked for: no verdict needed, no probe.
    tcg = await Accel(tmp_path / "other", probe=_never).resolve(
        qemu, _with(ENVS.get("qemu-x64"), accel="tcg"))
    assert tcg.accel == "tcg"


async def test_plan_shows_the_accel_the_run_launches_with(tmp_path: Path) -> None:
    """The bug this fixes: `plan` read one cache and `run` probed another, so the accel a
    plan printed was not always the one launched. Now both come from one verdict."""
    qemu = StandInQemu(binary(tmp_path, "qemu"))
    env = ENVS.get("qemu-x64")
    image = unbuilt_image(env)
    accel = Accel(tmp_path, probe=_never)
    planned, note = accel.planned(qemu, env)
    assert planned.accel == "tcg" and note is not None and "not probed yet" in note
    for kvm in (True, False):
        accel.store(qemu, env, Verdict(kvm, "recorded"))
        planned, note = Accel(tmp_path, probe=_never).planned(qemu, env)
        launched = await Accel(tmp_path, probe=_never).resolve(qemu, env)
        assert note is None
        assert planned == VmmSetup(launched.binary, launched.accel)
        argv = planned_argv(qemu, env, image, planned)
        assert argv[argv.index("-accel") + 1] == ("kvm" if kvm else "tcg")


def test_product_bundle_environments_are_proved_by_the_linux_guest() -> None:
    env = ENVS.get("fuchsia-crosvm-x64")
    probe = probe_environment(env)
    assert probe.image.name == "debian-generic" and probe.profile == "linux"
    assert probe_environment(ENVS.get("crosvm-x64")) == ENVS.get("crosvm-x64")


@pytest.mark.parametrize("name", [e.name for e in ENVS if not e.image.product_bundle])
def test_command_reads_nothing(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                               ) -> None:
    """`command()` is a pure function of its inputs: with every way of reading the host
    (files, PATH, the environment's variables, the verdict cache) made to fail, it
    returns the same argv, and it depends on nothing but its arguments."""
    env = ENVS.get(name)
    engine = make_engines()[env.engine]
    image = unbuilt_image(env)
    setup = VmmSetup(f"/opt/{env.engine}/bin/vmm", "tcg" if env.engine == "qemu" else "kvm")
    before = planned_argv(engine, env, image, setup)
    paths = _paths(env)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"command() read the host: {args!r}")

    for target, attr in ((builtins, "open"), (os, "open"), (os, "stat"), (os, "access"),
                         (os, "listdir"), (os, "scandir"), (shutil, "which"),
                         (os.path, "exists"), (os.environ, "get")):
        monkeypatch.setattr(target, attr, forbidden)
    try:
        after = engine.command(env, image, paths, setup)
    finally:
        monkeypatch.undo()
    assert after == planned_argv(engine, env, image, setup) == before
    assert after[0] == setup.binary


def _paths(env: Environment) -> RunPaths:
    """The placeholder paths `planned_argv` uses, computed before the host is closed off."""
    workdir = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"harness-{env.name}"
    return RunPaths(workdir=workdir, disks=tuple(make_disk_paths(env, workdir)))


async def _never(*args: object) -> tuple[bool, str]:
    raise AssertionError("a probe boot was started")


def _with(env: Environment, **changes: Any) -> Environment:
    return dataclasses.replace(env, **changes)
