"""The images in the cache: where each lives, published by one rename, found and listed.

Safe when several processes build at once: work happens in temporary directories
inside the cache, under a lock per image, and is published atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.cache import cache_dir
from harness.images.model import GuestImage
from harness.workdirs import owner_alive, write_owner

_STALE_WORKDIR_S = 24 * 3600.0
_WORK_PREFIXES = (".build-", ".work-", ".apt-")


def image_dir_name(name: str, arch: str, digest: str) -> str:
    return f"{name}-{arch}-{digest[:12]}"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock; the kernel drops it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the rest of the cache is 0644
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def work_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary directory in the cache, with an owner record beside it (`NAME.owner`,
    outside it so that it never ends up in a published image), removed on the way out."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    owner = path.with_name(path.name + ".owner")
    try:
        write_owner(owner)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            owner.unlink()


def remove_stale_workdirs(parent: Path) -> None:
    """Remove what killed builds left: work directories whose owner process is gone
    (harness.workdirs), and any older than a day (from before owners were recorded)."""
    cutoff = time.time() - _STALE_WORKDIR_S
    try:
        leftovers = [p for p in parent.iterdir() if p.name.startswith(_WORK_PREFIXES)]
    except OSError:
        return
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            if leftover.name.endswith(".owner"):
                if not leftover.with_name(leftover.name[: -len(".owner")]).exists():
                    leftover.unlink()
                continue
            owner = leftover.with_name(leftover.name + ".owner")
            stale = (not owner_alive(owner)) if owner.is_file() else \
                leftover.lstat().st_mtime < cutoff
            if stale:
                shutil.rmtree(leftover, ignore_errors=True)
                owner.unlink(missing_ok=True)


def sweep_cache(cache: Path | None = None) -> None:
    """Remove what killed builds left in the cache (called when a run starts)."""
    root = cache or cache_dir()
    for parent in (root, root / "images", root / "downloads"):
        if parent.is_dir():
            remove_stale_workdirs(parent)


def publish(tmp: Path, final: Path, *, force: bool) -> None:
    """Make `tmp` visible as `final` in one step; with force, replace an existing build.

    A replaced build is swapped file by file with os.replace, so a process that is reading
    the old kernel (a guest being started) sees either old or new bytes, never a mix; the
    manifest goes last, as the marker of a complete directory.
    """
    try:
        os.rename(tmp, final)
        return
    except OSError:
        if not (final / "manifest.json").exists():
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            return
    if not force:
        # Someone else finished the same build first: the same inputs, the same bytes.
        shutil.rmtree(tmp, ignore_errors=True)
        return
    names = sorted(p.name for p in tmp.iterdir())
    for fname in [n for n in names if n != "manifest.json"] + ["manifest.json"]:
        os.replace(tmp / fname, final / fname)
    for stale in final.iterdir():
        if stale.name not in names:
            stale.unlink()
    tmp.rmdir()


def image_from_dir(path: Path) -> GuestImage:
    manifest = json.loads((path / "manifest.json").read_text())
    kernel = path / "kernel"
    elf = path / "vmlinux"
    return GuestImage(
        name=manifest["name"],
        arch=manifest["arch"],
        kernel=kernel,
        initrd=path / "initrd.cpio.gz",
        kernel_uncompressed=kernel,
        kernel_elf=elf if elf.is_file() else None,
        kernel_version=manifest["kernel_version"],
        digest=manifest["digest"],
        capabilities=manifest.get("capabilities", {}),
    )


def current_file(images: Path, name: str, arch: str) -> Path:
    return images / f"{name}-{arch}.current"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_images(*, cache: Path | None = None) -> list[dict[str, object]]:
    """Every complete image in the cache, current or not, for `harness images list`."""
    images = (cache or cache_dir()) / "images"
    current: set[str] = set()
    for index_file in images.glob("*.current") if images.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            current.add(json.loads(index_file.read_text())["dir"])
    rows: list[dict[str, object]] = []
    for path in sorted(images.iterdir()) if images.is_dir() else []:
        if path.name.startswith(".") or not (path / "manifest.json").is_file():
            continue
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        rows.append(
            {
                "name": manifest.get("name"),
                "arch": manifest.get("arch"),
                "path": str(path),
                "kernel_version": manifest.get("kernel_version"),
                "size": dir_size(path),
                "digest": manifest.get("digest"),
                "current": path.name in current,
            }
        )
    return rows
