"""cpio (newc), written here so the archive is byte-for-byte reproducible."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Protocol

from harness.images.errors import ImageError

_NEWC_MAGIC = b"070701"
_NEWC_HEADER_LEN = 110
_TRAILER = "TRAILER!!!"


class _Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    """One archive member. `data` is the file's contents or, for a symlink, its target."""

    path: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    ino: int = 0
    nlink: int = 1


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _sort_key(path: str) -> tuple[str, ...]:
    # By components, so a directory comes right before its contents (the kernel creates
    # parents on demand, but GNU cpio and people reading `cpio -t` expect this order).
    return PurePosixPath(path).parts


def write_cpio(entries: Iterable[CpioEntry], out: _Writer, *, mtime: int = 0) -> None:
    """Write a newc archive with normalised metadata: same entries, same bytes.

    Entries are sorted by path; owner is root, every mtime is `mtime`, and inode numbers
    count up in archive order, so neither the build machine nor the order files were
    found in leaks into the output. No hard links are written (nlink 1 for files).
    """
    ordered = sorted(entries, key=lambda e: _sort_key(e.path))
    seen: set[str] = set()
    for ino, entry in enumerate(ordered, start=1):
        path = entry.path.strip("/")
        if not path or path in seen:
            raise ValueError(f"cpio: empty or duplicate path {entry.path!r}")
        seen.add(path)
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        _write_member(
            out,
            dataclasses.replace(entry, path=path, uid=0, gid=0, mtime=mtime, ino=ino, nlink=nlink),
        )
    _write_member(out, CpioEntry(path=_TRAILER, mode=0, nlink=1))


def _write_member(out: _Writer, entry: CpioEntry) -> None:
    name = entry.path.encode() + b"\0"
    data = b"" if stat.S_ISDIR(entry.mode) else entry.data
    fields = (
        entry.ino,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.nlink,
        entry.mtime,
        len(data),
        0,  # dev major/minor of the archive's "filesystem": meaningless here
        0,
        entry.rdev_major,
        entry.rdev_minor,
        len(name),
        0,  # checksum: only for the 070702 format
    )
    header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    out.write(header + name + _pad4(_NEWC_HEADER_LEN + len(name)))
    out.write(data + _pad4(len(data)))


def read_cpio(data: bytes) -> list[CpioEntry]:
    """Parse a newc archive (without the trailer): the inverse of write_cpio."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        header = data[pos : pos + _NEWC_HEADER_LEN]
        if len(header) < _NEWC_HEADER_LEN or header[:6] != _NEWC_MAGIC:
            raise ValueError(f"cpio: no newc header at offset {pos}")
        f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = f
        pos += _NEWC_HEADER_LEN
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + len(_pad4(_NEWC_HEADER_LEN + namesize))
        body = data[pos : pos + size]
        pos += size + len(_pad4(size))
        if name == _TRAILER:
            return entries
        entries.append(
            CpioEntry(
                name, mode, body, rmaj, rmin, uid=uid, gid=gid, mtime=mtime, ino=ino, nlink=nlink
            )
        )


def tree_entries(root: Path) -> list[CpioEntry]:
    """The entries for a staged directory tree: type and permission bits kept, rest dropped."""
    entries: list[CpioEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                entries.append(CpioEntry(rel, stat.S_IFDIR | perm))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(CpioEntry(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode()))
            elif stat.S_ISREG(st.st_mode):
                entries.append(CpioEntry(rel, stat.S_IFREG | perm, path.read_bytes()))
            else:
                raise ImageError(f"unexpected file type in initramfs staging tree: {rel}")
    return entries
