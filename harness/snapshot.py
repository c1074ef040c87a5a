"""Boot once, save, restore per test: how each test's guest starts.

Per environment (more exactly, per SnapshotKey: the environment, its image, the VMM's
cold-boot command line, the VMM itself and the disks) the first test that needs a guest
boots one cold, the VMM saves it paused at its shell (QEMU: a migration to a file; crosvm:
`suspend --full` and `snapshot take`), and the VMM is stopped. Every test then starts a
fresh VMM that restores that state (QEMU `-incoming`, crosvm `run --restore`) with disk
overlays of its own (harness.overlays), so several guests restore from one snapshot at
once and none sees another's writes. The cache outlives the run (harness.snapshot_store):
a later run restores at once.

Isolation is the default where snapshots work: tests that could share a guest get their
own (`split_group`), unless one prefers sharing (`prefers_sharing` on a suite test,
`"share_guest": true` in a tests.json entry). Where they do not work a guest boots, and
the run says why once per environment:

- `--no-snapshot`, or `"snapshot": false` in the environment;
- a boot test (the boot is what is tested) and a Fuchsia product bundle (botanist gives
  every Zircon start a fresh `kernel.entropy-mixin`; a restored guest would reuse one);
- a profile without `after_restore` (nothing to set its clock with);
- an engine that cannot (QemuEngine needs qemu-img; crosvm restores on x86_64 only, and
  only a binary whose help knows `snapshot take` and `run --restore`).

Faults, each one said once: a missing snapshot is built; a stale one (the key changed) is
replaced; a damaged one (a file shorter than the manifest says) is removed and rebuilt;
another run building the same snapshot is waited for (flock), and a build that fails to
save leaves the environment booting cold for the run. A restore that fails mid-way is an
INFRA_FAIL with the VMM's words (guest.RestoreFailed); the snapshot is then discarded and
built again, and a second failure turns the environment to cold boots.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from harness.engines.base import Engine, RunPaths, VmmSetup, binary_key
from harness.environments import Environment
from harness.errors import HarnessError
from harness.guest import Boot, Guest, RestoreFailed
from harness.images.model import GuestImage
from harness.overlays import create_overlays
from harness.plan import PlannedRun
from harness.profiles import get_profile
from harness.snapshot_store import (
    BOOT_LOG,
    STATE,
    Snapshot,
    SnapshotKey,
    SnapshotLock,
    SnapshotStore,
    safe_name,
)
from harness.suite import SuiteTest
from harness.workdirs import private_workdir

# Bumped when the host pattern make_disks writes changes: the base disks are part of a key.
DISK_RECIPE = "raw, host pattern at 1 MiB (v1)"
SAVE_TIMEOUT_S = 300.0
# How long to wait for another run's build of the same snapshot, beyond its boot deadline.
BUILD_WAIT_EXTRA_S = SAVE_TIMEOUT_S + 60.0
RESTORE_FAILURES_ALLOWED = 1  # one failed restore discards the snapshot; the second stops

NO_SNAPSHOT = "--no-snapshot"


def asks_to_share(run: PlannedRun, tests: Mapping[str, SuiteTest]) -> bool:
    """Whether a test wants to share its guest even where snapshots isolate for free."""
    test = tests.get(run.spec.name)
    if test is not None:
        return test.prefers_sharing
    # An entry's own field, or one inside its "test" object (harness.spec prefixes those).
    extra = run.spec.extra
    return bool(extra.get("share_guest", extra.get("test.share_guest", False)))


def split_group(group: Sequence[PlannedRun],
                tests: Mapping[str, SuiteTest]) -> list[list[PlannedRun]]:
    """A group of tests that would share one booted guest, as isolated runs: each alone,
    except those that prefer sharing, which keep one guest between them."""
    sharing = [r for r in group if asks_to_share(r, tests)]
    alone = [[r] for r in group if not asks_to_share(r, tests)]
    return ([sharing] if sharing else []) + alone


def image_identity(image: GuestImage) -> str:
    """The image as a key sees it: its digest, or its files' sizes and times."""
    if image.digest:
        return f"{image.name} {image.arch} digest {image.digest}"
    parts = []
    for path in (image.kernel, image.initrd, image.kernel_elf, image.kernel_uncompressed):
        if path is None:
            continue
        try:
            st = os.stat(path)
            parts.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}|missing")
    return f"{image.name} {image.arch} files " + ",".join(parts)


@dataclasses.dataclass
class _Slot:
    """One snapshot key's state in this run."""

    key: SnapshotKey
    lock: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)
    snapshot: Snapshot | None = None
    disk_lock: SnapshotLock | None = None
    unusable: str | None = None  # why this run boots this key's guests instead
    restore_failures: int = 0


@dataclasses.dataclass
class _Start:
    """What `start()` does with a guest `new_guest()` made."""

    slot: _Slot | None = None
    snapshot: Snapshot | None = None
    replay: bool = True  # put the saved boot's console into the log first
    failed: BaseException | None = None  # a build whose boot failed: the test's failure
    properties: dict[str, str] = dataclasses.field(default_factory=dict)


class GuestStarter:
    """Starts every test's guest, restored where it can be, booted where not.

    `cold_guest` makes a guest that boots (the runner's, with raw disks in its workdir);
    `make_disks` writes the raw disks of an environment into a directory (the runner's
    host-pattern disks: a snapshot keeps them as its base); `disk_paths` names them
    without writing anything (for the key).
    """

    def __init__(self, *, store: SnapshotStore | None,
                 cold_guest: Callable[[Environment, Engine, GuestImage, VmmSetup, Path], Guest],
                 make_disks: Callable[[Environment, Path], list[Path]],
                 disk_paths: Callable[[Environment, Path], list[Path]],
                 log_cap: int | None = None,
                 say: Callable[[str], None] = lambda line: None) -> None:
        self.store = store
        self.cold_guest = cold_guest
        self.make_disks = make_disks
        self.disk_paths = disk_paths
        self.log_cap = log_cap
        self.say = say
        self._slots: dict[str, _Slot] = {}
        self._engine_reasons: dict[str, str | None] = {}
        self._starts: dict[int, _Start] = {}
        self._said: set[str] = set()

    # -- which runs restore --------------------------------------------------------------------

    def ineligible(self, run: PlannedRun) -> str | None:
        """Why `run`'s guest cannot be restored, whatever the engine (None: it can)."""
        if self.store is None:
            return NO_SNAPSHOT
        env = run.environment
        if not env.snapshot:
            return f"environment {env.name} says \"snapshot\": false"
        if run.spec.is_boot_test:
            return "a boot test: the boot is what it tests"
        if env.image.product_bundle:
            return ("a Fuchsia product bundle: botanist gives every Zircon start a fresh "
                    "kernel.entropy-mixin, which a restored guest would reuse")
        if get_profile(env.profile).after_restore(0) is None:
            return f"the {env.profile} profile has no way to set a restored guest's clock"
        return None

    async def _engine_reason(self, env: Environment, engine: Engine) -> str | None:
        if env.name not in self._engine_reasons:
            try:
                reason = await engine.snapshot_unavailable(env)
            except HarnessError as e:
                reason = str(e)
            self._engine_reasons[env.name] = reason
            if reason:
                self._say_once(f"{env.name}: guests boot, no snapshot: {reason}")
        return self._engine_reasons[env.name]

    async def isolates(self, run: PlannedRun, engine: Engine) -> bool:
        """Whether `run`'s tests get restored guests of their own (runner: split groups)."""
        if self.ineligible(run) is not None:
            return False
        return await self._engine_reason(run.environment, engine) is None

    # -- making and starting guests ------------------------------------------------------------

    async def new_guest(self, run: PlannedRun, env: Environment, engine: Engine,
                        image: GuestImage, setup: VmmSetup, folder: Path) -> Guest:
        """The guest `run` starts with `start()`: one to restore, or one to boot. Building a
        missing snapshot happens here (a cold boot and a save)."""
        why = self.ineligible(run) or await self._engine_reason(env, engine)
        if why is not None:
            guest = self.cold_guest(env, engine, image, setup, folder)
            self._starts[id(guest)] = _Start(properties=self._cold_properties(why))
            return guest
        key = self._key(env, engine, image, setup)
        slot = self._slots.setdefault(key.digest, _Slot(key))
        async with slot.lock:
            built: dict[str, str] = {}
            if slot.unusable is None and slot.snapshot is None:
                try:
                    outcome = await self._find_or_build(slot, env, engine, image, setup, folder)
                except OSError as e:  # a cache that cannot be written costs restores, no more
                    assert self.store is not None
                    self._give_up(slot, env, f"the snapshot cache {self.store.root} cannot be "
                                             f"used: {e}")
                    outcome = {}
                if isinstance(outcome, Guest):
                    return outcome  # its boot failed: the test reports that boot
                built = outcome
            snapshot, unusable = slot.snapshot, slot.unusable
        if snapshot is None:
            guest = self.cold_guest(env, engine, image, setup, folder)
            self._starts[id(guest)] = _Start(properties=self._cold_properties(
                unusable or "no snapshot"))
            return guest
        assert self.store is not None
        self.store.touch(snapshot)
        workdir = private_workdir(f"harness-{safe_name(env.name)[:24]}-")
        try:
            disks = await create_overlays(snapshot.disks, workdir)
            source = await engine.restore_from(env, snapshot.state, setup)
            guest = Guest(env, engine, image, folder / "serial.log", setup=setup, workdir=workdir,
                          disks=disks, log_cap=self.log_cap, own_workdir=True,
                          disk_format="qcow2", restore=source)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self._starts[id(guest)] = _Start(slot=slot, snapshot=snapshot, replay=not built,
                                         properties=built)
        return guest

    async def start(self, guest: Guest, timeout: float) -> tuple[Boot, dict[str, str]]:
        """Restore or boot `guest`; its boot and the properties a result records about it
        (`start`: restore or boot, `restore_s`, the snapshot)."""
        plan = self._starts.pop(id(guest), _Start())
        if plan.failed is not None:
            raise plan.failed
        props = dict(plan.properties)
        snapshot = plan.snapshot
        if snapshot is None:
            if not guest.boots:
                await guest.launch()
            boot = await guest.wait_boot(timeout)
            props.update(start="boot", boot_s=f"{boot.ready_s:.3f}")
            return boot, props
        try:
            boot = await guest.restore(
                label=snapshot.name, boot_id=snapshot.boot_id, timeout=timeout,
                transcript=snapshot.transcript() if plan.replay else None)
        except RestoreFailed as e:
            if plan.slot is not None:
                await self._discard(plan.slot, str(e))
            raise
        props.update(start="restore", restore_s=f"{boot.ready_s:.3f}", snapshot=snapshot.name,
                     snapshot_boot_s=f"{snapshot.boot_s:.3f}")
        return boot, props

    async def close(self) -> None:
        """The end of the run: the snapshots it used are free for others to remove."""
        for slot in self._slots.values():
            if slot.disk_lock is not None:
                slot.disk_lock.close()
                slot.disk_lock = None

    # -- the cache -----------------------------------------------------------------------------

    def _key(self, env: Environment, engine: Engine, image: GuestImage,
             setup: VmmSetup) -> SnapshotKey:
        placeholder = Path("/HARNESS-WORKDIR")
        argv = engine.command(env, image, RunPaths(
            workdir=placeholder, disks=tuple(self.disk_paths(env, placeholder))), setup)
        blk = env.devices.devices.get("virtio-blk")
        disks = f"{DISK_RECIPE}; virtio-blk {sorted(blk.items()) if blk is not None else 'none'}"
        return SnapshotKey(environment=env.name, engine=env.engine, arch=env.arch,
                           image=image_identity(image), argv=tuple(argv),
                           vmm=vmm_identity(setup), disks=disks)

    async def _find_or_build(self, slot: _Slot, env: Environment, engine: Engine,
                             image: GuestImage, setup: VmmSetup,
                             folder: Path) -> dict[str, str] | Guest:
        """Under the slot's lock: find the snapshot, or build it. Returns the properties of
        a build ({} when none), or the guest of a build whose boot failed."""
        store = self.store
        assert store is not None
        key = slot.key
        if slot.disk_lock is None:
            slot.disk_lock = store.lock_for(key.name)
        lock = slot.disk_lock
        wait = env.boot_timeout_s + BUILD_WAIT_EXTRA_S
        if not await lock.acquire(exclusive=False, timeout=wait):
            self._give_up(slot, env, f"another run has been saving this snapshot for {wait:g} s")
            return {}
        found = store.lookup(key)
        if found.snapshot is not None:
            slot.snapshot = found.snapshot
            return {}
        lock.release()
        if not await lock.acquire(exclusive=True, timeout=wait):
            self._give_up(slot, env, f"another run has been saving this snapshot for {wait:g} s")
            return {}
        found = store.lookup(key)  # another run may have saved it meanwhile
        if found.snapshot is not None:
            lock.downgrade()
            slot.snapshot = found.snapshot
            return {}
        problem = found.problem or "missing"
        if found.damaged:
            store.remove_locked(key.name)
        removed = [name for name in store.stale_names(key) if store.remove(name)]
        self._say_once(f"{env.name}: {_describe(problem, env)}"
                       + (f" (removed {', '.join(removed)})" if removed else "")
                       + "; booting once to save one")
        try:
            return await self._build(slot, env, engine, image, setup, folder, problem)
        finally:
            if lock.mode == "exclusive":
                lock.release()  # the build failed; a later test may try again

    async def _build(self, slot: _Slot, env: Environment, engine: Engine, image: GuestImage,
                     setup: VmmSetup, folder: Path, problem: str) -> dict[str, str] | Guest:
        """Boot a guest on fresh base disks, save it at its shell, stop it, publish it."""
        store = self.store
        assert store is not None and slot.disk_lock is not None
        build = store.new_build_dir()
        disks = self.make_disks(env, build)
        workdir = private_workdir(f"harness-{safe_name(env.name)[:24]}-")
        guest = Guest(env, engine, image, folder / "serial.log", setup=setup, workdir=workdir,
                      disks=disks, log_cap=self.log_cap, own_workdir=True)
        try:
            try:
                with anyio.fail_after(env.boot_timeout_s + 30):
                    await guest.launch()
                    start = _log_size(guest)
                    boot = await guest.wait_boot(env.boot_timeout_s)
            except (HarnessError, TimeoutError) as e:
                # The boot failed as any cold boot would have: the test reports it with this
                # guest (its log, its VMM's stderr), and the next test tries again.
                shutil.rmtree(build, ignore_errors=True)
                self._starts[id(guest)] = _Start(failed=e)
                return guest
            vmm = guest.vmm
            assert vmm is not None
            saved_at = time.monotonic()
            try:
                await vmm.save_state(build / STATE, SAVE_TIMEOUT_S)
            except HarnessError as e:
                reason = f"saving {env.name} failed: {e}"
                self._give_up(slot, env, reason)
                await guest.close()
                shutil.rmtree(build, ignore_errors=True)
                return self._cold_properties(reason)
            save_s = time.monotonic() - saved_at
            transcript = _log_bytes(guest, start)
            guest.log.mark(f"saved as snapshot {slot.key.name} in {save_s:.2f} s; this test's "
                           f"guest is restored from it")
        except BaseException:
            await guest.close()
            shutil.rmtree(build, ignore_errors=True)
            raise
        await guest.close()
        try:
            (build / BOOT_LOG).write_bytes(transcript)
            for disk in disks:
                disk.chmod(0o444)
            snapshot = store.publish(build, slot.key, {
                "boot_id": boot.boot_id, "boot_s": round(boot.ready_s, 3),
                "save_s": round(save_s, 3), "disks": [d.name for d in disks],
                "replaced": problem,
            })
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        slot.disk_lock.downgrade()
        slot.snapshot = snapshot
        keep = frozenset(s.snapshot.name for s in self._slots.values() if s.snapshot)
        for name in store.evict(keep):
            self._say_once(f"snapshot cache over its cap: removed {name}")
        return {"snapshot_built": "true", "boot_s": f"{boot.ready_s:.3f}",
                "snapshot_save_s": f"{save_s:.3f}"}

    async def _discard(self, slot: _Slot, why: str) -> None:
        """A restore failed: this snapshot is not used again; the next test builds another,
        unless restores have failed before (then guests boot for the rest of the run)."""
        async with slot.lock:
            failed = slot.snapshot
            if failed is None:
                return  # another test already discarded it
            slot.snapshot = None
            slot.restore_failures += 1
            store = self.store
            if store is not None and slot.disk_lock is not None:
                slot.disk_lock.release()
                if slot.disk_lock.try_exclusive():
                    store.remove_locked(failed.name)
                    slot.disk_lock.release()
            env = slot.key.environment
            if slot.restore_failures > RESTORE_FAILURES_ALLOWED:
                self._give_up(slot, None, f"restores from its snapshots failed "
                                          f"{slot.restore_failures} times; the last: {why}",
                              name=env)
            else:
                self._say_once(f"{env}: a restore from {failed.name} failed; the snapshot is "
                               f"discarded and the next test saves a new one")

    def _give_up(self, slot: _Slot, env: Environment | None, reason: str, *,
                 name: str = "") -> None:
        slot.unusable = reason
        self._say_once(f"{env.name if env else name}: guests boot for the rest of the run: "
                       f"{reason}")

    def _cold_properties(self, why: str) -> dict[str, str]:
        """What a booted guest's result says about snapshots (nothing under --no-snapshot)."""
        return {} if why == NO_SNAPSHOT else {"start_reason": why}

    def _say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.say(f"        {line}")


def vmm_identity(setup: VmmSetup) -> str:
    """What identifies the VMM a snapshot is saved by: what it says its version is, and the
    binary itself (path, size, mtime). Neither QEMU's migration stream nor crosvm's snapshot
    format (docs/book/src/architecture/snapshotting.md: not stable) is promised to load
    in another build, so a rebuilt binary with the same version string is another VMM."""
    return f"{setup.version} ({binary_key(setup.binary)})"


def _describe(problem: str, env: Environment) -> str:
    if problem == "missing":
        return f"no snapshot of {env.name} yet"
    kind, _, what = problem.partition(": ")
    if kind == "stale":
        return f"the snapshot of {env.name} is stale ({what})"
    return f"the snapshot of {env.name} is damaged ({problem}): removed"


def _log_size(guest: Guest) -> int:
    try:
        return guest.log.path.stat().st_size
    except OSError:
        return 0


def _log_bytes(guest: Guest, start: int) -> bytes:
    with open(guest.log.path, "rb") as f:
        f.seek(start)
        return f.read()


def describe_properties(props: Mapping[str, Any]) -> str:
    """`restore 0.41 s` or `boot 2.38 s`, for a progress line."""
    if props.get("start") == "restore":
        return f"restore {float(props.get('restore_s', 0)):.2f} s"
    if props.get("start") == "boot":
        return f"boot {float(props.get('boot_s', 0)):.2f} s"
    return ""
