"""The embedded default guests: cpio writer, module selection, cache index, real boots.

The unit tests need no network and no VM. The integration tests build the generic images
into the real user cache (so later runs reuse them) and boot them under QEMU TCG
directly, without the harness's engine, to prove the image on its own terms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import lzma
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pexpect
import pytest
from qemu.qmp import QMPClient

from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.images import cpio as images_cpio
from harness.images import initramfs as images_initramfs
from harness.images import kernel as images_kernel
from harness.images import modules as images_modules
from harness.images import recipe as images_recipe
from harness.images.build import build_image, ensure_image
from harness.images.cpio import CpioEntry, read_cpio, write_cpio
from harness.images.errors import AptListsMissing, ImageNotBuilt, PackageDownloadError
from harness.images.model import GuestImage
from harness.images.modules import (
    MODULE_WANTS,
    ModuleWant,
    parse_modules_builtin,
    parse_modules_dep,
    resolve_modules,
)
from harness.images.recipe import IMAGE_NAMES, recipe_key
from harness.images.store import list_images

INIT_SH = Path(images_recipe.__file__).with_name("init.sh")

# --------------------------------------------------------------------------------------
# cpio


def _sample_entries() -> list[CpioEntry]:
    return [
        CpioEntry("usr/bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        CpioEntry("usr", stat.S_IFDIR | 0o755),
        CpioEntry("usr/bin", stat.S_IFDIR | 0o755),
        CpioEntry("bin", stat.S_IFDIR | 0o755),
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, bytes(range(256)) * 3 + b"x"),
        CpioEntry("empty", stat.S_IFREG | 0o644, b""),
        CpioEntry("a-b", stat.S_IFREG | 0o644, b"odd length!"),
    ]


def test_cpio_round_trip_keeps_content_and_normalises_metadata() -> None:
    entries = [dataclasses.replace(e, uid=1000, gid=1000, mtime=12345) for e in _sample_entries()]
    out = io.BytesIO()
    write_cpio(entries, out, mtime=7)
    parsed = read_cpio(out.getvalue())

    by_path = {e.path: e for e in parsed}
    assert set(by_path) == {e.path for e in entries}
    for original in entries:
        got = by_path[original.path]
        assert got.mode == original.mode, original.path
        assert got.data == (b"" if stat.S_ISDIR(original.mode) else original.data)
        assert (got.rdev_major, got.rdev_minor) == (original.rdev_major, original.rdev_minor)
        assert (got.uid, got.gid, got.mtime) == (0, 0, 7)
    # Parents before children, inode numbers 1..n in archive order.
    paths = [e.path for e in parsed]
    for i, path in enumerate(paths):
        parent = path.rpartition("/")[0]
        if parent:
            assert parent in paths[:i], f"{path} before its directory"
    assert [e.ino for e in parsed] == list(range(1, len(parsed) + 1))
    assert by_path["usr"].nlink == 2 and by_path["bin/busybox"].nlink == 1


def test_cpio_is_newc_aligned_and_has_a_trailer() -> None:
    out = io.BytesIO()
    write_cpio(_sample_entries(), out)
    data = out.getvalue()
    assert len(data) % 4 == 0
    assert data.startswith(b"070701")
    assert b"TRAILER!!!\0" in data[-128:]
    # Every header starts on a 4-byte boundary.
    assert all(m.start() % 4 == 0 for m in re.finditer(rb"070701[0-9A-F]{8}", data))


def test_cpio_same_entries_in_any_order_give_the_same_bytes() -> None:
    entries = _sample_entries()
    a, b = io.BytesIO(), io.BytesIO()
    write_cpio(entries, a)
    write_cpio([dataclasses.replace(e, mtime=999, uid=5) for e in reversed(entries)], b)
    assert a.getvalue() == b.getvalue()


def test_cpio_rejects_duplicate_paths() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        write_cpio(
            [CpioEntry("x", stat.S_IFREG | 0o644), CpioEntry("/x/", stat.S_IFREG)], io.BytesIO()
        )


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_the_archive(tmp_path: Path) -> None:
    """An independent reader: GNU cpio lists every member and extracts files and links."""
    entries = [e for e in _sample_entries() if not stat.S_ISCHR(e.mode)]
    archive = tmp_path / "a.cpio"
    with open(archive, "wb") as f:
        write_cpio(entries, f)
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=archive.read_bytes(), capture_output=True, check=True
    ).stdout.decode()
    assert listing.split() == [e.path for e in read_cpio(archive.read_bytes())]
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=archive.read_bytes(),
        cwd=dest,
        check=True,
    )
    assert (dest / "bin/busybox").read_bytes() == bytes(range(256)) * 3 + b"x"
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert (dest / "usr/bin/tool").stat().st_mode & 0o777 == 0o755


def _tree(root: Path, *, reverse: bool) -> None:
    files = {
        "init": (b"#!/bin/busybox sh\n", 0o755),
        "etc/harness/modules-load": (b"virtio_blk\n", 0o644),
        "lib/modules/v/kernel/a.ko": (b"\x7fELF" + b"a" * 1000, 0o644),
        "lib/modules/v/kernel/b.ko": (b"\x7fELF" + b"b" * 999, 0o644),
    }
    for rel, (data, mode) in sorted(files.items(), reverse=reverse):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (root / "bin").mkdir()
    (root / "bin/sh").symlink_to("busybox")


def test_initramfs_bytes_do_not_depend_on_when_or_in_which_order_files_were_made(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, reverse=False)
    _tree(b, reverse=True)
    # Made at other times: every file and directory of b gets mtimes a's do not have.
    for n, path in enumerate(sorted(b.rglob("*"), reverse=True), start=1):
        os.utime(path, (n, n), follow_symlinks=False)
    images_initramfs.write_initramfs(images_cpio.tree_entries(a), tmp_path / "a.gz")
    images_initramfs.write_initramfs(images_cpio.tree_entries(b), tmp_path / "b.gz")
    raw = (tmp_path / "a.gz").read_bytes()
    assert raw == (tmp_path / "b.gz").read_bytes()
    # gzip header: no file name (FLG.FNAME clear), MTIME zero.
    assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"
    members = {e.path: e for e in read_cpio(gzip.decompress(raw))}
    assert members["bin/sh"].data == b"busybox" and stat.S_ISLNK(members["bin/sh"].mode)
    assert members["init"].mode & 0o777 == 0o755


def _fake_arm64_image() -> bytes:
    head = bytearray(b"MZ" + b"\0" * 0x3E)
    head[0x38:0x3C] = b"ARM\x64"
    return bytes(head) + b"kernel text" * 100


def test_gzip_arm64_kernel_is_decompressed_and_the_original_kept(tmp_path: Path) -> None:
    """crosvm refuses a gzip'd arm64 Image; Debian shipped Image.gz before signed kernels."""
    image = _fake_arm64_image()
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(gzip.compress(image))
    out = tmp_path / "out"
    out.mkdir()
    assert images_kernel.install_kernel(vmlinuz, "arm64", out) == "Image.gz"
    assert (out / "kernel").read_bytes() == image
    assert (out / "Image.gz").read_bytes() == vmlinuz.read_bytes()


def test_raw_arm64_kernel_is_used_as_is_and_garbage_is_refused(tmp_path: Path) -> None:
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(_fake_arm64_image())
    out = tmp_path / "out"
    out.mkdir()
    assert images_kernel.install_kernel(vmlinuz, "arm64", out) == "Image"
    assert (out / "kernel").read_bytes() == vmlinuz.read_bytes()
    assert not (out / "Image.gz").exists()
    with pytest.raises(HarnessError, match="not a bzImage"):
        images_kernel.install_kernel(vmlinuz, "x86_64", out)


# --------------------------------------------------------------------------------------
# x86_64: the ELF vmlinux in the bzImage, for QEMU's PVH boot


def _note(name: bytes, note_type: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def _fake_elf(*, pvh: bool = True) -> bytes:
    """An x86_64 ELF64 with a PT_LOAD for its text and a PT_NOTE, like a stripped vmlinux."""
    notes = _note(b"Xen\0", 6, b"linux\0") + _note(b"GNU\0", 3, b"\x12" * 20)
    if pvh:  # XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point
        notes += _note(b"Xen\0", 18, struct.pack("<Q", 0x1000850))
    text = b"kernel text" * 50
    notes_off = 64 + 2 * 56
    text_off = notes_off + len(notes)
    header = (
        b"\x7fELF\x02\x01\x01" + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    )  # fmt: skip
    load = struct.pack("<IIQQQQQQ", 1, 5, text_off, 0, 0x1000000, len(text), len(text), 0x1000)
    note = struct.pack("<IIQQQQQQ", 4, 4, notes_off, 0, 0, len(notes), len(notes), 4)
    return header + load + note + notes + text


def _fake_bzimage(payload: bytes, *, setup_sects: int = 3, offset: int = 0x2C0) -> bytes:
    """Boot sector + setup with a 2.15 header whose payload fields point at `payload`."""
    head = bytearray(((setup_sects or 4) + 1) * 512 + offset)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x020F)
    struct.pack_into("<II", head, 0x248, offset, len(payload))
    return bytes(head) + payload + b"\xcc" * 100  # the decompressor's tail follows


def _kernel_xz(data: bytes) -> bytes:
    """As Linux's xz_wrap.sh compresses vmlinux.bin (x86 BCJ + LZMA2, CRC32), size appended."""
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    return packed + struct.pack("<I", len(data))


def test_vmlinux_is_extracted_from_an_xz_bzimage_and_the_relocs_left_out() -> None:
    elf = _fake_elf()
    relocs = b"\0\0\0\0" + b"\x10\x20\x30\x40" * 30  # what CONFIG_X86_NEED_RELOCS appends
    bzimage = _fake_bzimage(_kernel_xz(elf + relocs))
    assert images_kernel.bzimage_payload(bzimage) == _kernel_xz(elf + relocs)
    assert images_kernel.extract_vmlinux(bzimage) == (elf, "xz")
    # setup_sects 0 means 4, as in the oldest boot loaders' convention.
    bzimage = _fake_bzimage(_kernel_xz(elf), setup_sects=0)
    assert bzimage[0x1F1] == 0 and images_kernel.extract_vmlinux(bzimage) == (elf, "xz")


def test_vmlinux_without_pvh_note_or_in_another_form_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no Xen PVH entry note"):
        images_kernel.extract_vmlinux(_fake_bzimage(_kernel_xz(_fake_elf(pvh=False))))
    with pytest.raises(HarnessError, match="malformed ELF"):
        images_kernel.extract_vmlinux(_fake_bzimage(_kernel_xz(_fake_elf()[:100])))
    with pytest.raises(HarnessError, match="not a little-endian ELF64"):
        images_kernel.extract_vmlinux(_fake_bzimage(_kernel_xz(b"\0" * 200)))
    wrong_size = _kernel_xz(_fake_elf())[:-4] + struct.pack("<I", 12345)
    with pytest.raises(HarnessError, match="trailer says 12345"):
        images_kernel.extract_vmlinux(_fake_bzimage(wrong_size))
    gzipped = gzip.compress(_fake_elf(), mtime=0)
    with pytest.raises(HarnessError, match="neither XZ nor LZ4"):
        images_kernel.extract_vmlinux(_fake_bzimage(gzipped))
    with pytest.raises(HarnessError, match="outside"):
        images_kernel.bzimage_payload(_fake_bzimage(_kernel_xz(_fake_elf()))[:-150])
    with pytest.raises(HarnessError, match="not a bzImage"):
        images_kernel.bzimage_payload(_fake_arm64_image())
    # In the build: no vmlinux, the reason in the manifest; the bzImage still boots.
    (tmp_path / "kernel").write_bytes(_fake_bzimage(gzipped))
    info = images_kernel.install_kernel_elf(tmp_path / "kernel", tmp_path)
    assert info["file"] is None and "neither XZ nor LZ4" in str(info["reason"])
    assert not (tmp_path / "vmlinux").exists()
    (tmp_path / "kernel").write_bytes(_fake_bzimage(_kernel_xz(_fake_elf())))
    info = images_kernel.install_kernel_elf(tmp_path / "kernel", tmp_path)
    assert info["file"] == "vmlinux" and (tmp_path / "vmlinux").read_bytes() == _fake_elf()


def test_lz4_legacy_frame_decoder_on_hand_made_blocks() -> None:
    """Literal runs and matches of every length class, an overlapping match, two blocks."""
    magic = struct.pack("<I", 0x184C2102)
    block1 = (
        bytes([0x3F]) + b"abc" + b"\x03\x00" + b"\x05"  # "abc", then 24 bytes from 3 back
        + bytes([0xF0, 0xFF, 0x02]) + b"x" * 272  # 15 + 255 + 2 literals, last sequence
    )  # fmt: skip
    block2 = bytes([0x12]) + b"z" + b"\x01\x00" + bytes([0x10]) + b"!"  # "z" * 7 + "!"
    frame = magic
    for block in (block1, block2):
        frame += struct.pack("<I", len(block)) + block
    expected = b"abc" * 9 + b"x" * 272 + b"z" * 7 + b"!"
    assert images_kernel.lz4_legacy_decompress(frame) == expected
    # A repeated magic starts another frame (lz4 -l concatenated); the output continues.
    assert images_kernel.lz4_legacy_decompress(frame + frame) == expected * 2
    with pytest.raises(HarnessError, match="offset"):
        images_kernel.lz4_legacy_decompress(magic + struct.pack("<I", 4) + b"\x10a\x05\x00")
    with pytest.raises(HarnessError, match="past the end"):
        images_kernel.lz4_legacy_decompress(magic + struct.pack("<I", 99) + b"\x10a")


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 command not installed")
def test_lz4_legacy_decoder_reads_what_the_lz4_tool_writes(tmp_path: Path) -> None:
    """Against the reference encoder, as Linux builds KERNEL_LZ4 (legacy frame, high
    compression): two 8 MiB blocks, long matches and runs, then a bzImage around it."""
    rng = random.Random(1)
    words = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(300)]
    text = b"".join(rng.choice(words) for _ in range(600_000)) + b"\0" * 100_000
    data = _fake_elf() + text
    packed = subprocess.run(
        ["lz4", "-l", "-9", "-c", "-q"], input=data, capture_output=True, check=True
    ).stdout
    assert len(data) > 8 << 20 and packed.startswith(struct.pack("<I", 0x184C2102))
    assert images_kernel.lz4_legacy_decompress(packed) == data
    bzimage = _fake_bzimage(packed + struct.pack("<I", len(data)))
    assert images_kernel.extract_vmlinux(bzimage) == (data[: len(_fake_elf())], "lz4")


def test_qemu_boots_the_elf_vmlinux_on_x86_64_only(tmp_path: Path) -> None:
    from harness import environments
    from harness.engines.base import RunPaths
    from harness.engines.qemu import qemu_command

    envs = environments.load()
    paths = RunPaths(tmp_path)
    bz, elf, initrd = Path("/i/kernel"), Path("/i/vmlinux"), Path("/i/initrd.cpio.gz")

    def kernel_arg(env: str, image: GuestImage) -> str:
        argv = qemu_command(envs.get(env), image, paths, accel="tcg")
        return argv[argv.index("-kernel") + 1]

    x86 = GuestImage("debian-generic", "x86_64", bz, initrd, bz, kernel_elf=elf)
    assert kernel_arg("qemu-x64", x86) == str(elf)
    no_elf = dataclasses.replace(x86, kernel_elf=None)
    assert kernel_arg("qemu-x64", no_elf) == str(bz)
    assert x86.crosvm_kernel == bz  # crosvm keeps the bzImage
    arm = GuestImage("debian-generic", "arm64", bz, initrd, bz, kernel_elf=elf)
    assert kernel_arg("qemu-arm64", arm) == str(bz)


# --------------------------------------------------------------------------------------
# modules

FAKE_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/gpu/drm/drm.ko:
kernel/drivers/gpu/drm/drm_kms_helper.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/virtio/virtio-gpu.ko: kernel/drivers/gpu/drm/drm_kms_helper.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/lib/test_static_key_base.ko:
kernel/lib/test_static_keys.ko: kernel/lib/test_static_key_base.ko
kernel/drivers/input/evdev.ko:
"""
FAKE_BUILTIN = "kernel/drivers/rtc/rtc-cmos.ko\nkernel/net/packet/af_packet.ko\n"

WANTS = (
    ModuleWant("virtio_blk", "disk", required_flavours=frozenset({"generic", "cloud"})),
    ModuleWant("virtio-gpu", "gpu", required_flavours=frozenset({"generic"})),
    ModuleWant(
        "rtc_cmos", "rtc", arches=frozenset({"x86_64"}), required_flavours=frozenset({"generic"})
    ),
    ModuleWant(
        "rtc_pl031", "rtc", arches=frozenset({"arm64"}), required_flavours=frozenset({"generic"})
    ),
    ModuleWant("af_packet", "sockets"),
    ModuleWant("evdev", "input", required_flavours=frozenset({"generic"})),
    ModuleWant("test_static_keys", "test", load_at_boot=False),
    ModuleWant("test_hash", "test", load_at_boot=False),
)


def test_modules_dep_parsing_and_name_normalisation() -> None:
    deps = parse_modules_dep(FAKE_DEP)
    assert deps["kernel/drivers/gpu/drm/virtio/virtio-gpu.ko"] == (
        "kernel/drivers/gpu/drm/drm_kms_helper.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
    )
    assert deps["kernel/drivers/virtio/virtio.ko"] == ()
    assert parse_modules_builtin(FAKE_BUILTIN) == {"rtc_cmos", "af_packet"}
    assert images_modules.module_name("kernel/x/virtio-rng.ko.xz") == "virtio_rng"
    with pytest.raises(ValueError):
        parse_modules_dep("no colon here\n")


def test_closure_follows_indirect_dependencies_and_skips_builtins() -> None:
    sel = resolve_modules(
        WANTS, "generic", "x86_64", parse_modules_dep(FAKE_DEP), parse_modules_builtin(FAKE_BUILTIN)
    )
    # drm.ko and virtio.ko are only reachable through other modules' entries.
    assert set(sel.files) == {
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/gpu/drm/drm.ko",
        "kernel/drivers/gpu/drm/drm_kms_helper.ko",
        "kernel/drivers/gpu/drm/virtio/virtio-gpu.ko",
        "kernel/drivers/input/evdev.ko",
        "kernel/lib/test_static_key_base.ko",
        "kernel/lib/test_static_keys.ko",
    }
    assert sel.load == ("virtio_blk", "virtio_gpu", "evdev")
    assert sel.on_demand == ("test_static_keys",)
    assert sel.builtin == ("rtc_cmos", "af_packet")
    assert [w.name for w in sel.skipped] == ["test_hash"]
    assert sel.missing_required == ()


def test_missing_module_is_fatal_only_where_the_flavour_needs_it() -> None:
    deps = {k: v for k, v in parse_modules_dep(FAKE_DEP).items() if "gpu" not in k}
    builtin = parse_modules_builtin(FAKE_BUILTIN)
    generic = resolve_modules(WANTS, "generic", "x86_64", deps, builtin)
    assert [w.name for w in generic.missing_required] == ["virtio-gpu"]
    cloud = resolve_modules(WANTS, "cloud", "x86_64", deps, builtin)
    assert cloud.missing_required == ()
    assert "virtio-gpu" in [w.name for w in cloud.skipped]
    # rtc_pl031 is only wanted on arm64, where this fake kernel lacks it.
    arm = resolve_modules(WANTS, "generic", "arm64", deps, builtin)
    assert [w.name for w in arm.missing_required] == ["virtio-gpu", "rtc_pl031"]
    assert "rtc_cmos" not in arm.builtin


def test_dangling_dependency_is_an_error() -> None:
    deps = {"kernel/a.ko": ("kernel/gone.ko",)}
    with pytest.raises(HarnessError, match=r"kernel/gone\.ko"):
        resolve_modules([ModuleWant("a", "x")], "generic", "x86_64", deps, frozenset())


def test_module_wants_cover_the_devices_of_both_arches() -> None:
    by_name = {w.name: w for w in MODULE_WANTS}
    assert by_name["button"].required("cloud", "x86_64")
    assert by_name["gpio_keys"].required("generic", "arm64")
    assert not by_name["gpio_keys"].required("cloud", "arm64")
    assert not by_name["pvpanic_pci"].required("generic", "arm64")
    assert not any(w.load_at_boot for w in MODULE_WANTS if w.name.startswith("test_"))


# --------------------------------------------------------------------------------------
# cache layout and index


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home/.cache/crosvm-harness"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg/crosvm-harness"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"


def _fake_built(cache: Path, name: str, arch: str, recipe: str) -> Path:
    images = cache / "images"
    d = images / f"{name}-{arch}-0123456789ab"
    d.mkdir(parents=True)
    (d / "kernel").write_bytes(b"k" * 10)
    (d / "initrd.cpio.gz").write_bytes(b"i" * 5)
    manifest = {
        "name": name,
        "arch": arch,
        "kernel_version": "6.1.0-99-test",
        "digest": "0123456789ab" * 5,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    (images / f"{name}-{arch}.current").write_text(json.dumps({"recipe": recipe, "dir": d.name}))
    return d


def test_ensure_image_uses_the_index_without_apt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _fake_built(tmp_path, "debian-generic", "arm64", recipe_key("debian-generic", "arm64"))
    monkeypatch.setenv("PATH", "")  # no apt-cache, dpkg-deb or depmod reachable
    image = ensure_image("debian-generic", "aarch64", build=False, cache=tmp_path)
    assert image == GuestImage(
        name="debian-generic",
        arch="arm64",
        kernel=d / "kernel",
        initrd=d / "initrd.cpio.gz",
        kernel_uncompressed=d / "kernel",
        kernel_version="6.1.0-99-test",
        digest="0123456789ab" * 5,
    )
    [row] = list_images(cache=tmp_path)
    assert row["path"] == str(d) and row["current"] is True
    assert row["size"] == sum(p.stat().st_size for p in d.iterdir())


def test_an_x86_64_image_with_a_vmlinux_offers_it_to_qemu(tmp_path: Path) -> None:
    d = _fake_built(tmp_path, "debian-cloud", "x86_64", recipe_key("debian-cloud", "x86_64"))
    image = ensure_image("debian-cloud", "x86_64", build=False, cache=tmp_path)
    assert image.kernel_elf is None and image.kernel == d / "kernel"
    (d / "vmlinux").write_bytes(_fake_elf())
    image = ensure_image("debian-cloud", "x86_64", build=False, cache=tmp_path)
    assert image.kernel_elf == d / "vmlinux" and image.crosvm_kernel == d / "kernel"


def test_a_changed_init_script_invalidates_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_built(tmp_path, "debian-cloud", "x86_64", recipe_key("debian-cloud", "x86_64"))
    assert ensure_image("debian-cloud", "x86_64", build=False, cache=tmp_path)
    original = images_recipe.init_script()
    monkeypatch.setattr(images_recipe, "init_script", lambda: original + b"\n# changed\n")
    with pytest.raises(ImageNotBuilt, match="harness images build"):
        ensure_image("debian-cloud", "x86_64", build=False, cache=tmp_path)


def test_recipe_key_differs_per_image_and_with_source_date_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = {recipe_key(n, a) for n in IMAGE_NAMES for a in ("x86_64", "arm64")}
    assert len(keys) == 4
    before = recipe_key("debian-generic", "x86_64")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert recipe_key("debian-generic", "x86_64") != before


def test_unknown_name_or_arch_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="debian-generic, debian-cloud"):
        ensure_image("ubuntu", "x86_64", cache=tmp_path)
    with pytest.raises(HarnessError, match="x86_64, arm64"):
        ensure_image("debian-generic", "riscv64", cache=tmp_path)


def test_missing_image_without_build_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ImageNotBuilt, match="`harness images build`"):
        ensure_image("debian-generic", "x86_64", build=False, cache=tmp_path)


# --------------------------------------------------------------------------------------
# apt failures (real apt, pointed at an empty or unreachable place through APT_CONFIG)

needs_apt = pytest.mark.skipif(
    shutil.which("apt-cache") is None or shutil.which("apt-get") is None, reason="no apt here"
)


@needs_apt
def test_missing_apt_lists_are_reported_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lists/partial").mkdir(parents=True)
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::State::Lists "{tmp_path}/lists";\nDir::Cache::pkgcache "";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    with pytest.raises(AptListsMissing) as err:
        build_image("debian-cloud", "x86_64", cache=tmp_path / "cache")
    message = str(err.value)
    assert "linux-image-cloud-amd64:amd64" in message
    assert "apt-get update" in message
    assert not (tmp_path / "cache/downloads").exists()


@needs_apt
def test_failed_download_names_the_package_and_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy nobody listens on: apt-get download fails at once, nothing else changes.
    conf = tmp_path / "apt.conf"
    conf.write_text('Acquire::http::Proxy "http://127.0.0.1:9";\nAcquire::Retries "0";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    with pytest.raises((PackageDownloadError, AptListsMissing)) as err:
        build_image("debian-cloud", "x86_64", cache=tmp_path / "cache")
    if isinstance(err.value, AptListsMissing):
        pytest.skip("apt's lists are missing here")
    assert "linux-image-6.1.0-" in str(err.value) and "harness images build" in str(err.value)
    # Nothing half-downloaded is left where a later build would pick it up.
    assert not list((tmp_path / "cache/downloads").glob("*.deb"))
    assert not list((tmp_path / "cache/downloads").glob(".apt-*"))


# --------------------------------------------------------------------------------------
# the init script


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_init_script_parses_under_busybox_sh() -> None:
    assert INIT_SH.read_text().startswith("#!/bin/busybox sh\n")
    subprocess.run(["busybox", "sh", "-n", str(INIT_SH)], check=True)


# --------------------------------------------------------------------------------------
# integration: real builds, real boots

QEMU = {
    "x86_64": (
        "qemu-system-x86_64",
        ["-M", "q35", "-accel", "tcg", "-m", "512", "-nographic"],
        "console=ttyS0 panic=-1",
    ),
    "arm64": (
        "qemu-system-aarch64",
        ["-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "512", "-nographic"],
        "console=ttyAMA0 panic=-1",
    ),
}
BOOT_MARKER = re.compile(r"HARNESS-BOOT-OK boot_id=[0-9a-f-]{36} uptime=(\d+\.\d+)")
PROMPT = "harness# "
BOOT_TIMEOUT_S = 180.0


def _needs_qemu(arch: str) -> None:
    if shutil.which(QEMU[arch][0]) is None:
        pytest.skip(f"{QEMU[arch][0]} not installed")


@pytest.fixture(scope="module")
def built_images() -> dict[tuple[str, str], GuestImage]:
    """The images, from the user's cache (built there on first use)."""
    return {}


def _image(built: dict[tuple[str, str], GuestImage], name: str, arch: str) -> GuestImage:
    if (name, arch) not in built:
        built[(name, arch)] = ensure_image(name, arch)
    return built[(name, arch)]


@contextlib.contextmanager
def _qemu(
    image: GuestImage, *extra: str, log: Path, kernel: Path | None = None
) -> Iterator[pexpect.spawn]:
    """QEMU on a pty; killed and reaped whatever happens in the test.

    Boots `kernel`, by default what the harness's QEMU engine boots: the ELF vmlinux
    through PVH on x86_64 when the image has one, else the image's kernel.
    """
    binary, machine, append = QEMU[image.arch]
    if kernel is None:
        kernel = (image.arch == "x86_64" and image.kernel_elf) or image.kernel
    argv = [
        *machine,
        "-nic",
        "none",  # q35's default e1000e and its option ROM cost a second here
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        append,
        *extra,
    ]
    child = pexpect.spawn(binary, argv, encoding="utf-8", codec_errors="replace", timeout=60)
    child.delaybeforesend = None
    child.logfile_read = open(log, "w")  # noqa: SIM115 - closed below
    try:
        yield child
    finally:
        if child.isalive():
            child.close(force=True)
        child.logfile_read.close()


def _run(child: pexpect.spawn, command: str, timeout: float = 60.0) -> str:
    """Run a shell command and return its output (echo and escape sequences removed)."""
    child.sendline(command)
    child.expect_exact(PROMPT, timeout=timeout)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before).replace("\r", "")
    return text.split("\n", 1)[1] if "\n" in text else ""


@pytest.mark.integration
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_x86_64_image_carries_the_elf_vmlinux_with_a_pvh_note(
    name: str, built_images: dict[tuple[str, str], GuestImage]
) -> None:
    image = _image(built_images, name, "x86_64")
    assert image.kernel_elf == image.kernel.parent / "vmlinux"
    elf = image.kernel_elf.read_bytes()
    assert elf[:4] == b"\x7fELF"
    assert images_kernel.pvh_elf_size(elf) == len(elf)  # has the PVH note, nothing after
    manifest = json.loads((image.kernel.parent / "manifest.json").read_text())
    # Debian builds the generic kernel with XZ, the cloud one with LZ4.
    compression = {"debian-generic": "xz", "debian-cloud": "lz4"}[name]
    assert manifest["kernel_elf"] == {
        "file": "vmlinux",
        "payload_compression": compression,
        "boot": "pvh",
    }
    bzimage = image.kernel.read_bytes()
    assert bzimage[0x202:0x206] == b"HdrS"  # the bzImage is kept, for crosvm
    assert images_kernel.extract_vmlinux(bzimage) == (elf, compression)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("arch", "boot"), [("x86_64", "pvh"), ("x86_64", "bzImage"), ("arm64", "Image")]
)
def test_generic_image_boots_and_powers_off(
    arch: str, boot: str, built_images: dict[tuple[str, str], GuestImage], tmp_path: Path
) -> None:
    """x86_64 both ways: the ELF vmlinux through PVH (QEMU's) and the bzImage (crosvm's)."""
    _needs_qemu(arch)
    image = _image(built_images, "debian-generic", arch)
    kernel = image.kernel_elf if boot == "pvh" else image.kernel
    assert kernel is not None
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (4 << 20))
    with _qemu(
        image,
        "-drive",
        f"file={disk},if=none,format=raw,id=d0",
        "-device",
        "virtio-blk-pci,drive=d0",
        log=tmp_path / "console.log",
        kernel=kernel,
    ) as child:
        child.expect(BOOT_MARKER, timeout=BOOT_TIMEOUT_S)
        child.expect_exact(PROMPT, timeout=60)
        assert _run(child, "uname -r").strip() == image.kernel_version
        lsmod = _run(child, "lsmod")
        assert re.search(r"^virtio_blk\s", lsmod, re.M), lsmod
        assert "vda" in _run(child, "ls /sys/block").split()
        assert _run(child, "cat /run/modprobe.log").strip() == ""
        assert _run(child, "echo $TERM; tty").split() == [
            "dumb",
            "/dev/ttyS0" if arch == "x86_64" else "/dev/ttyAMA0",
        ]
        child.sendline("poweroff -f")
        child.expect(pexpect.EOF, timeout=60)
        child.close()
        assert child.exitstatus == 0, child.signalstatus


async def _power_button(image: GuestImage, tmp_path: Path) -> float:
    sock_dir = Path(tempfile.mkdtemp(prefix="qmp-"))  # short path: AF_UNIX limit
    try:
        sock = sock_dir / "qmp.sock"
        with _qemu(
            image, "-qmp", f"unix:{sock},server=on,wait=off", log=tmp_path / "c.log"
        ) as child:
            await anyio.to_thread.run_sync(
                lambda: child.expect_exact(PROMPT, timeout=BOOT_TIMEOUT_S)
            )
            qmp = QMPClient("test-images")
            await qmp.connect(str(sock))
            try:
                start = time.monotonic()
                await qmp.execute("system_powerdown")
                await anyio.to_thread.run_sync(lambda: child.expect(pexpect.EOF, timeout=60))
                elapsed = time.monotonic() - start
            finally:
                with contextlib.suppress(EOFError, ConnectionError):
                    await qmp.disconnect()  # raises EOFError once QEMU is gone
            child.close()
            assert child.exitstatus == 0, child.signalstatus
            return elapsed
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
async def test_power_button_shuts_the_guest_down(
    arch: str, built_images: dict[tuple[str, str], GuestImage], tmp_path: Path
) -> None:
    _needs_qemu(arch)
    image = await anyio.to_thread.run_sync(_image, built_images, "debian-generic", arch)
    elapsed = await _power_button(image, tmp_path)
    assert elapsed < 30


_BUILD_IN_SUBPROCESS = """
import json, sys
from pathlib import Path
from harness.images.build import build_image
image = build_image(sys.argv[1], sys.argv[2], cache=Path(sys.argv[3]))
print(json.dumps({"digest": image.digest, "initrd": str(image.initrd),
                  "kernel_elf": str(image.kernel_elf)}))
"""


@pytest.mark.integration
def test_full_build_is_reproducible_and_safe_to_run_twice_at_once(
    built_images: dict[tuple[str, str], GuestImage], tmp_path: Path
) -> None:
    """Two processes build the same image into a fresh cache at the same time; both
    must return the one directory, byte-identical to the user's cache's build."""
    reference = _image(built_images, "debian-generic", "x86_64")
    cache = tmp_path / "cache"
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    for deb in (cache_dir() / "downloads").glob("*.deb"):  # reuse, not re-fetch, the .debs
        with contextlib.suppress(OSError):
            os.link(deb, downloads / deb.name)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_IN_SUBPROCESS, "debian-generic", "x86_64", str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert results[0] == results[1]
    assert results[0]["digest"] == reference.digest
    assert reference.initrd is not None
    assert Path(results[0]["initrd"]).read_bytes() == reference.initrd.read_bytes()
    assert reference.kernel_elf is not None
    assert Path(results[0]["kernel_elf"]).read_bytes() == reference.kernel_elf.read_bytes()
    built = [
        p.name for p in (cache / "images").iterdir() if not p.name.endswith((".current", ".lock"))
    ]
    assert built == [reference.kernel.parent.name], built  # no leftovers
    assert not list(cache.glob(".work-*"))
