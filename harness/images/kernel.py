"""Kernel formats: the bootable kernel each engine needs, from what Debian ships.

x86_64 ships a bzImage, which QEMU and crosvm both boot; QEMU boots faster from the ELF
vmlinux inside it (through PVH), unpacked here (XZ or LZ4). arm64 ships a gzip'd Image or
an EFI-stub PE, and crosvm needs an uncompressed Image.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
from pathlib import Path

from harness.images.errors import ImageError

_XZ_MAGIC = b"\xfd7zXZ\x00"
_LZ4_LEGACY_MAGIC = 0x184C2102
_PT_NOTE = 4
_SHT_NOBITS = 8
_EM_X86_64 = 62
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def check_kernel(path: Path, arch: str) -> None:
    head = read_head(path, 0x240)
    if arch == "x86_64" and head[0x202:0x206] != b"HdrS":
        raise ImageError(f"{path}: not a bzImage (no HdrS boot header)")
    if arch == "arm64" and head[0x38:0x3C] != b"ARM\x64":
        raise ImageError(f"{path}: not an arm64 Image (no ARM\\x64 magic)")


def read_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def install_kernel(vmlinuz: Path, arch: str, out: Path) -> str:
    """Put the bootable kernel at out/kernel; returns the format Debian shipped it in.

    x86_64 ships a bzImage, which QEMU and crosvm both boot. crosvm refuses a gzip'd arm64
    Image, so an Image.gz is decompressed (and kept as Image.gz); Debian's signed arm64
    kernels are EFI-stub PE files, already an uncompressed Image, used as they are.
    """
    kernel = out / "kernel"
    if arch == "arm64" and read_head(vmlinuz, 2) == b"\x1f\x8b":
        shutil.copyfile(vmlinuz, out / "Image.gz")
        with gzip.open(vmlinuz, "rb") as src, open(kernel, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        source_format = "Image.gz"
    else:
        shutil.copyfile(vmlinuz, kernel)
        source_format = "bzImage" if arch == "x86_64" else "Image"
    check_kernel(kernel, arch)
    return source_format


def bzimage_payload(bzimage: bytes) -> bytes:
    """The compressed kernel a bzImage carries, as its setup header locates it.

    payload_offset (0x248) counts from the protected-mode code, which follows the
    (setup_sects + 1) sectors of boot sector and real-mode setup; boot protocol 2.08+.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise ImageError("not a bzImage (no HdrS boot header)")
    (version,) = struct.unpack_from("<H", bzimage, 0x206)
    if version < 0x208:
        raise ImageError(f"boot protocol {version >> 8}.{version & 0xFF} has no payload fields")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length <= 4 or start + length > len(bzimage):
        raise ImageError(f"payload {start}+{length} lies outside the {len(bzimage)}-byte bzImage")
    return bzimage[start : start + length]


def lz4_legacy_decompress(data: bytes) -> bytes:
    """Decode an LZ4 legacy frame (`lz4 -l`, what Linux's KERNEL_LZ4 builds).

    The frame is the magic and then blocks, each a little-endian compressed size and an
    LZ4 block; a repeated magic starts another frame. Matches may reach into earlier
    blocks (the output is one buffer), which also covers independent blocks.
    """
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != _LZ4_LEGACY_MAGIC:
        raise ImageError("not an LZ4 legacy frame")
    out = bytearray()
    pos = 4
    while pos < len(data):
        if pos + 4 > len(data):
            raise ImageError("LZ4: truncated block size")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size == _LZ4_LEGACY_MAGIC:
            continue
        if pos + size > len(data):
            raise ImageError("LZ4: block runs past the end of the data")
        try:
            _lz4_block(data, pos, pos + size, out)
        except IndexError:
            raise ImageError("LZ4: truncated block") from None
        pos += size
    return bytes(out)


def _lz4_block(src: bytes, pos: int, end: int, out: bytearray) -> None:
    while True:
        token = src[pos]
        pos += 1
        literals = token >> 4
        if literals == 15:
            while True:
                extra = src[pos]
                pos += 1
                literals += extra
                if extra != 255:
                    break
        out += src[pos : pos + literals]
        pos += literals
        if pos >= end:  # the last sequence is literals only
            if pos > end:
                raise ImageError("LZ4: literals run past the end of the block")
            return
        offset = src[pos] | src[pos + 1] << 8
        pos += 2
        length = token & 15
        if length == 15:
            while True:
                extra = src[pos]
                pos += 1
                length += extra
                if extra != 255:
                    break
        length += 4
        if not 0 < offset <= len(out):
            raise ImageError(f"LZ4: match offset {offset} outside the {len(out)} bytes so far")
        start = len(out) - offset
        if length <= offset:
            out += out[start : start + length]
        else:  # overlapping: the last `offset` bytes repeat
            pattern = out[start:]
            repeats, rest = divmod(length, offset)
            out += pattern * repeats + pattern[:rest]


def decompress_kernel_payload(payload: bytes) -> tuple[bytes, str]:
    """(decompressed kernel, "xz" or "lz4").

    Linux appends the decompressed size (le32) to both, which checks the result here.
    """
    body = payload[:-4]
    (size,) = struct.unpack("<I", payload[-4:])
    if body.startswith(_XZ_MAGIC):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            data = decompressor.decompress(body, max_length=size + 1)
        except lzma.LZMAError as err:
            raise ImageError(f"XZ payload: {err}") from None
        if not decompressor.eof:
            raise ImageError("XZ payload is truncated or larger than its recorded size")
        compression = "xz"
    elif body[:4] == struct.pack("<I", _LZ4_LEGACY_MAGIC):
        data = lz4_legacy_decompress(body)
        compression = "lz4"
    else:
        raise ImageError(f"payload is neither XZ nor LZ4 legacy (starts {body[:6].hex()})")
    if len(data) != size:
        raise ImageError(f"{compression} payload gave {len(data)} bytes, its trailer says {size}")
    return data, compression


def pvh_elf_size(elf: bytes) -> int:
    """The length of the x86_64 ELF at the start of `elf`, if it has a Xen PVH entry note.

    QEMU boots an ELF kernel only through PVH: without XEN_ELFNOTE_PHYS32_ENTRY in a
    PT_NOTE segment it refuses it. The decompressed payload carries the relocations for
    KASLR after the ELF; the length returned leaves them out (PVH boots unrelocated).
    """
    if elf[:4] != b"\x7fELF" or elf[4:6] != b"\x02\x01" or len(elf) < 64:
        raise ImageError("decompressed kernel is not a little-endian ELF64")
    (machine,) = struct.unpack_from("<H", elf, 0x12)
    if machine != _EM_X86_64:
        raise ImageError(f"decompressed kernel is an ELF for machine {machine}, not x86_64")
    phoff, shoff = struct.unpack_from("<QQ", elf, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", elf, 0x36)
    ends: list[int] = [64, phoff + phnum * phentsize, shoff + shnum * shentsize]
    pvh = False
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        ends.append(p_offset + p_filesz)
        if p_type == _PT_NOTE:
            pvh = pvh or _has_pvh_note(elf[p_offset : p_offset + p_filesz])
    for i in range(shnum):
        _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        if sh_type != _SHT_NOBITS:
            ends.append(sh_offset + sh_size)
    if max(ends) > len(elf):
        raise ImageError(f"ELF kernel reaches byte {max(ends)} of {len(elf)}: truncated")
    if not pvh:
        raise ImageError("ELF kernel has no Xen PVH entry note (CONFIG_PVH off?)")
    return max(ends)


def _has_pvh_note(notes: bytes) -> bool:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, note_type = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12 : pos + 12 + namesz]
        if name == b"Xen\0" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_vmlinux(bzimage: bytes) -> tuple[bytes, str]:
    """(the ELF vmlinux a bzImage wraps, the compression it was stored with).

    Raises ImageError when it is not there in a form QEMU can boot through PVH.
    """
    data, compression = decompress_kernel_payload(bzimage_payload(bzimage))
    try:
        size = pvh_elf_size(data)
    except struct.error:  # a header or note pointing past the end
        raise ImageError("decompressed kernel is a truncated or malformed ELF") from None
    return data[:size], compression


def install_kernel_elf(bzimage: Path, out: Path) -> dict[str, object]:
    """Write out/vmlinux, the bzImage's ELF kernel, for QEMU to boot through PVH.

    PVH enters the decompressed kernel directly: under TCG, the bzImage's own
    decompressor (XZ for the generic flavour) costs seconds of emulated CPU per boot.
    The bzImage stays at out/kernel for crosvm. A kernel this cannot handle (another
    compressor, no PVH note) gets no vmlinux; the manifest says why, and it still boots.
    """
    try:
        elf, compression = extract_vmlinux(bzimage.read_bytes())
    except ImageError as err:
        return {"file": None, "reason": str(err)}
    (out / "vmlinux").write_bytes(elf)
    return {"file": "vmlinux", "payload_compression": compression, "boot": "pvh"}
