"""The snapshot cache on disk: keys, manifests, locks, a size cap, and the listing.

One directory per saved VM, under the harness cache (`HARNESS_SNAPSHOT_DIR`, else
`<cache_dir>/snapshots`), named `<environment>-<key digest>`. It holds the VMM's saved
state (`state`: QEMU's migration stream, or crosvm's snapshot directory), the raw disks the
guest had when it was saved (`disk<N>.img`, read-only: every restored guest writes to an
overlay of its own, harness.overlays), the console transcript of the boot that was saved
(`boot.log`), and `manifest.json`, which names everything that went into it. A snapshot is
used only if its key matches exactly: the environment, the image (its digest), the VMM's
cold-boot command line, the VMM (version and binary), the disks and this file's format.

Writers never show a half-made snapshot: a snapshot is built in `.build-*` next to the
others and appears by one rename, with its manifest (the mark of a complete one) written
last. Concurrent runs coordinate with flock(2) on `.locks/<name>.lock`: a run holds a
shared lock on every snapshot it restores from until it ends, a build holds the exclusive
one, and eviction takes it without waiting (a snapshot in use is never removed). The cap
(`HARNESS_SNAPSHOT_CAP_MIB`, 4096 by default) is enforced after every save: least
recently used first (the mtime of `last-used`, touched at each use).

This module knows nothing of guests or VMMs, so `harness images list` can read the cache
without starting anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from harness.cache import cache_dir
from harness.errors import ConfigError
from harness.workdirs import owner_alive, write_owner

SNAPSHOT_FORMAT = 1  # bump when the layout or what a key means changes
DIR_ENV = "HARNESS_SNAPSHOT_DIR"
CAP_ENV = "HARNESS_SNAPSHOT_CAP_MIB"
DEFAULT_CAP_MIB = 4096
MANIFEST = "manifest.json"
STATE = "state"
BOOT_LOG = "boot.log"
LAST_USED = "last-used"
LOCKS = ".locks"
BUILD_PREFIX = ".build-"
TRASH_PREFIX = ".trash-"
BUILD_OWNER = ".owner"  # who is building in a .build-* directory (harness.workdirs)
STALE_BUILD_S = 3600.0  # a build directory this old, whose owner is unknown, was abandoned
# flock(2) cannot be awaited: a run waiting for another run's build polls at this interval
# (only while that build lasts: a few seconds of boot and save).
LOCK_POLL_S = 0.05

# Which key field, when it differs, explains a stale snapshot (in this order).
_KEY_WORDS = (
    ("format", "the harness's snapshot format"),
    ("image", "the guest image"),
    ("vmm", "the VMM"),
    ("argv", "the VMM command line"),
    ("disks", "the disks"),
)


def snapshot_root() -> Path:
    explicit = os.environ.get(DIR_ENV)
    return Path(explicit).expanduser() if explicit else cache_dir() / "snapshots"


def cap_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The cache's cap in bytes; a malformed value is a configuration error (exit 2)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(CAP_ENV)
    if raw is None or raw == "":
        return DEFAULT_CAP_MIB << 20
    try:
        mib = int(raw)
        if mib < 0:
            raise ValueError
    except ValueError:
        raise ConfigError("environment", CAP_ENV, None,
                          f"must be a whole number of MiB (0 keeps nothing), got {raw!r}") from None
    return mib << 20


def safe_name(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return out[:60] or "_"


@dataclasses.dataclass(frozen=True)
class SnapshotKey:
    """Everything a saved VM depends on. Equal keys: the state loads into the same VM."""

    environment: str
    engine: str
    arch: str
    image: str  # the image's digest, or its files' identities
    argv: tuple[str, ...]  # the cold-boot command line, per-guest paths made placeholders
    vmm: str  # the VMM's version and binary
    disks: str  # the disks' layout and host contents
    format: int = SNAPSHOT_FORMAT

    def fields(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["argv"] = list(self.argv)
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        return f"{safe_name(self.environment)}-{self.digest[:16]}"

    def changes_from(self, other: Mapping[str, Any]) -> list[str]:
        """What differs from another snapshot's key (its manifest's `key`), in words."""
        mine = self.fields()
        out = []
        for field, words in _KEY_WORDS:
            if mine.get(field) != other.get(field):
                if field in ("image", "vmm"):
                    out.append(f"{words} changed ({other.get(field)!s:.80} -> "
                               f"{mine.get(field)!s:.80})")
                else:
                    out.append(f"{words} changed")
        return out or ["its key differs"]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A complete snapshot in the cache."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def disks(self) -> list[Path]:
        return [self.path / d for d in self.manifest.get("disks", [])]

    @property
    def boot_id(self) -> str:
        return str(self.manifest.get("boot_id", ""))

    @property
    def boot_s(self) -> float:
        return float(self.manifest.get("boot_s", 0.0))

    def transcript(self) -> bytes:
        try:
            return (self.path / BOOT_LOG).read_bytes()
        except OSError:
            return b""


@dataclasses.dataclass(frozen=True)
class Lookup:
    """What the cache holds for a key: the snapshot, or why there is none to use.

    `problem` is "missing", "stale: ..." (the environment's snapshot was saved from other
    inputs), "truncated: ..." or "incomplete: ..." (a damaged one, removed by the caller).
    """

    snapshot: Snapshot | None
    problem: str | None = None

    @property
    def damaged(self) -> bool:
        return self.problem is not None and self.problem.startswith(("truncated", "incomplete"))


def _file_sizes(root: Path) -> dict[str, int]:
    """Apparent size of every file under `root` (relative path -> bytes)."""
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = p.lstat().st_size
    return out


def disk_usage(root: Path) -> int:
    """Bytes `root` takes on disk (allocated blocks: the base disks are sparse)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / f).lstat().st_blocks * 512
    return total


class SnapshotLock:
    """flock(2) on one snapshot's lock file: shared to use it, exclusive to build or remove it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.mode: str | None = None

    def _try(self, op: int) -> bool:
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, op | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise

    def try_exclusive(self) -> bool:
        if self._try(fcntl.LOCK_EX):
            self.mode = "exclusive"
            return True
        return False

    async def acquire(self, *, exclusive: bool, timeout: float) -> bool:
        """Take the lock, waiting for another process's build at most `timeout` seconds."""
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout
        while not self._try(op):
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(LOCK_POLL_S)
        self.mode = "exclusive" if exclusive else "shared"
        return True

    def downgrade(self) -> None:
        """Exclusive to shared, after a build: the run goes on using what it built."""
        assert self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        self.mode = "shared"

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.mode = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops any lock this descriptor held
            self.fd = None
            self.mode = None


class SnapshotStore:
    def __init__(self, root: Path | None = None, cap: int | None = None) -> None:
        self.root = root if root is not None else snapshot_root()
        self.cap = cap_bytes() if cap is None else cap

    # -- paths and locks ---------------------------------------------------------------------

    def path_for(self, key: SnapshotKey) -> Path:
        return self.root / key.name

    def lock_for(self, name: str) -> SnapshotLock:
        return SnapshotLock(self.root / LOCKS / f"{name}.lock")

    def new_build_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        build = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=self.root))
        write_owner(build / BUILD_OWNER)
        return build

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, key: SnapshotKey) -> Lookup:
        """The snapshot for `key`, checked complete (every file the size the manifest says)."""
        path = self.path_for(key)
        if not path.exists():
            stale = self._stale_for(key)
            return Lookup(None, stale or "missing")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            expected = dict(manifest["files"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            return Lookup(None, f"incomplete: {path.name} has no readable {MANIFEST} ({e})")
        if manifest.get("key") != key.fields():
            return Lookup(None, "stale: " + "; ".join(key.changes_from(manifest.get("key", {}))))
        actual = _file_sizes(path)
        for rel, size in sorted(expected.items()):
            got = actual.get(rel)
            if got is None:
                return Lookup(None, f"incomplete: {rel} is missing from {path.name}")
            if got != size:
                return Lookup(None, f"truncated: {rel} of {path.name} is {got} bytes, "
                                    f"{size} when saved")
        return Lookup(Snapshot(path, manifest))

    def _stale_for(self, key: SnapshotKey) -> str | None:
        """Why the environment's other snapshots (newest first) do not fit `key`, if any."""
        newest: tuple[float, Mapping[str, Any]] | None = None
        for path in self._complete_dirs():
            try:
                manifest = json.loads((path / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            other = manifest.get("key", {})
            if other.get("environment") != key.environment or other.get("engine") != key.engine:
                continue
            when = float(manifest.get("created", 0.0))
            if newest is None or when > newest[0]:
                newest = (when, other)
        if newest is None:
            return None
        return "stale: " + "; ".join(key.changes_from(newest[1]))

    def stale_names(self, key: SnapshotKey) -> list[str]:
        """The environment's snapshots saved from other inputs (candidates for removal)."""
        out = []
        for path in self._complete_dirs():
            with contextlib.suppress(OSError, ValueError):
                other = json.loads((path / MANIFEST).read_text()).get("key", {})
                if (other.get("environment") == key.environment
                        and other.get("engine") == key.engine and path.name != key.name):
                    out.append(path.name)
        return out

    def _complete_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            if not path.name.startswith(".") and path.is_dir():
                yield path

    def touch(self, snapshot: Snapshot) -> None:
        """Mark `snapshot` used now (the cap removes the least recently used first)."""
        with contextlib.suppress(OSError):
            (snapshot.path / LAST_USED).touch()

    # -- writing ------------------------------------------------------------------------------

    def publish(self, build: Path, key: SnapshotKey, manifest: dict[str, Any]) -> Snapshot:
        """Make the build directory `build` the snapshot for `key`, in one rename.

        Called with the key's exclusive lock held. The manifest records every file's size
        (a later truncation shows) and is written last; the directory is synced before it
        is renamed into place.
        """
        final = self.path_for(key)
        (build / BUILD_OWNER).unlink(missing_ok=True)
        (build / LAST_USED).touch()
        manifest = {**manifest, "key": key.fields(), "name": key.name, "created": time.time(),
                    "files": {}}
        manifest["files"] = {rel: size for rel, size in _file_sizes(build).items()
                             if rel != MANIFEST}
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        tmp = build / f".{MANIFEST}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, build / MANIFEST)
        build.chmod(0o755)  # mkdtemp's 0700; the rest of the cache is readable to all
        _fsync_dir(build)
        if final.exists():
            self._remove_dir(final)  # a damaged one, found by lookup under the same lock
        os.rename(build, final)
        _fsync_dir(self.root)
        return Snapshot(final, manifest)

    def remove(self, name: str) -> bool:
        """Remove snapshot `name` if no run uses it (its lock is free); True if removed."""
        lock = self.lock_for(name)
        try:
            if not lock.try_exclusive():
                return False
            self._remove_dir(self.root / name)
            return True
        finally:
            lock.close()

    def remove_locked(self, name: str) -> None:
        """Remove snapshot `name` whose exclusive lock the caller holds."""
        self._remove_dir(self.root / name)

    def _remove_dir(self, path: Path) -> None:
        """Out of sight in one rename, then deleted (a reader never sees half of it)."""
        if not path.exists():
            return
        trash = self.root / f"{TRASH_PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(path, trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Build directories of killed runs (their owner is gone), and trash a killed removal
        left."""
        cutoff = time.time() - STALE_BUILD_S
        for leftover in [*self.root.glob(f"{BUILD_PREFIX}*"), *self.root.glob(f"{TRASH_PREFIX}*")]:
            with contextlib.suppress(OSError):
                owner = leftover / BUILD_OWNER
                dead = (not owner_alive(owner) if owner.is_file()
                        else leftover.lstat().st_mtime < cutoff)
                if leftover.name.startswith(TRASH_PREFIX) or dead:
                    shutil.rmtree(leftover, ignore_errors=True)

    def evict(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Remove least recently used snapshots until the cache fits its cap.

        Never one named in `keep` or locked by a run (in use, or being built). Returns the
        names removed.
        """
        entries = []
        for path in self._complete_dirs():
            try:
                used = (path / LAST_USED).stat().st_mtime
            except OSError:
                used = 0.0
            entries.append((used, path.name, disk_usage(path)))
        total = sum(size for _, _, size in entries)
        removed = []
        for _used, name, size in sorted(entries):
            if total <= self.cap:
                break
            if name in keep:
                continue
            if self.remove(name):
                removed.append(name)
                total -= size
        return removed

    # -- listing ------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One row per complete snapshot, least recently used first, for `harness images list`."""
        rows = []
        for path in self._complete_dirs():
            try:
                manifest = json.loads((path / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            key = manifest.get("key", {})
            try:
                used = (path / LAST_USED).stat().st_mtime
            except OSError:
                used = 0.0
            rows.append({
                "snapshot": path.name,
                "environment": key.get("environment"),
                "engine": key.get("engine"),
                "arch": key.get("arch"),
                "path": str(path),
                "size": disk_usage(path),
                "vmm": key.get("vmm"),
                "image": key.get("image"),
                "boot_s": manifest.get("boot_s"),
                "save_s": manifest.get("save_s"),
                "created": _iso(manifest.get("created")),
                "last_used": _iso(used),
            })
        return sorted(rows, key=lambda r: r["last_used"] or "")


def _iso(when: Any) -> str | None:
    if not when:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(when)))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
