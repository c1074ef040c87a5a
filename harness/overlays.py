"""Disks of restored guests: qcow2 overlays on read-only base images, and reading them back.

A snapshot is saved together with the raw disks its guest had (harness.snapshot_store):
the saved memory holds the guest's page cache and the block driver's idea of those disks,
so the disks a restored guest sees must be exactly those bytes. Each restored guest
therefore writes to a qcow2 overlay of its own whose backing file is the snapshot's base
disk, never to the base: several guests restore from one snapshot at once, and none sees
another's writes.

The backing file is named by its absolute path with its format (`-F raw`): QEMU resolves a
relative one against the overlay's directory but crosvm against its working directory
(disk/src/qcow/mod.rs opens `backing_file_path` as given), and crosvm refuses an overlay
without the backing format extension (MissingBackingFileFormat).

`read_disk` reads what a guest left on a disk after it powered off, whatever the disk's
format: a raw file directly, a qcow2 overlay through `qemu-io` (which follows the
backing chain), so a suite that checks the guest's writes from the host works on booted
and restored guests alike.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import anyio

from harness.errors import HarnessError

QCOW_MAGIC = b"QFI\xfb"
QEMU_IMG_TIMEOUT_S = 60.0


def qemu_img() -> str:
    found = shutil.which("qemu-img")
    if found is None:
        raise HarnessError("qemu-img not found on PATH (Debian package qemu-utils)")
    return found


def is_qcow2(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == QCOW_MAGIC
    except OSError:
        return False


async def create_overlay(base: Path, dest: Path, *, base_format: str = "raw") -> Path:
    """A new, empty qcow2 overlay at `dest` whose reads fall through to `base`."""
    argv = [qemu_img(), "create", "-q", "-f", "qcow2", "-b", str(base.resolve()),
            "-F", base_format, str(dest)]
    try:
        with anyio.fail_after(QEMU_IMG_TIMEOUT_S):
            result = await anyio.run_process(argv, check=False)
    except TimeoutError:
        raise HarnessError(f"qemu-img create {dest.name} did not finish within "
                           f"{QEMU_IMG_TIMEOUT_S:g} s") from None
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip()
        raise HarnessError(f"cannot create the overlay {dest} on {base}: qemu-img exited "
                           f"{result.returncode}: {said}")
    return dest


async def create_overlays(bases: list[Path], workdir: Path) -> list[Path]:
    """One overlay per base disk, in `workdir` (the guest's private directory)."""
    return [await create_overlay(base, workdir / f"disk{i}.qcow2")
            for i, base in enumerate(bases)]


def read_disk(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of the disk the guest saw, raw or qcow2 (with its backing).

    A qcow2 overlay is read through `qemu-io -r -U` (`read -v`, a hex dump; `-U` shares
    the image with a VMM that may still hold it, as reading a raw file would): the overlay's
    own clusters where it has them, the backing file's everywhere else.
    """
    if not is_qcow2(path):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    qemu_io = shutil.which("qemu-io")
    if qemu_io is None:
        raise HarnessError("qemu-io not found on PATH (Debian package qemu-utils)")
    result = subprocess.run(
        [qemu_io, "-r", "-U", "-f", "qcow2", "-c", f"read -v {offset} {length}", str(path)],
        capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT_S, check=False)
    data = parse_qemu_io_dump(result.stdout)
    if result.returncode != 0 or len(data) != length:
        said = (result.stderr or result.stdout).strip()[-500:]
        raise HarnessError(f"cannot read {length} bytes of {path} at {offset}: qemu-io exited "
                           f"{result.returncode} with {len(data)} bytes: {said}")
    return data


_DUMP_LINE = re.compile(r"^[0-9a-f]{8}:  ((?:[0-9a-f]{2} )*[0-9a-f]{2})  ", re.MULTILINE)


def parse_qemu_io_dump(text: str) -> bytes:
    """The bytes of `qemu-io -c 'read -v'`'s dump: `OFFSET:  HEX HEX ...  ASCII` lines."""
    return b"".join(bytes.fromhex(m.group(1)) for m in _DUMP_LINE.finditer(text))


def allocated_bytes(path: Path) -> int:
    """The space a disk file takes on the host (its allocated blocks, not its apparent size)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
