"""The initramfs: busybox, the init script and the selected modules, as a gzip'd cpio."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterable
from pathlib import Path

from harness.images.cpio import CpioEntry, write_cpio
from harness.images.modules import ModuleSelection, depmod
from harness.images.recipe import init_script


def stage_initramfs(
    staging: Path,
    *,
    busybox: Path,
    modules_src: Path,
    version: str,
    selection: ModuleSelection,
    identity: str,
) -> None:
    for d in ("bin", "dev", "etc/harness", "proc", "root", "run", "sys", "tmp", "var"):
        (staging / d).mkdir(parents=True, exist_ok=True)
    (staging / "init").write_bytes(init_script())
    (staging / "init").chmod(0o755)
    shutil.copyfile(busybox, staging / "bin/busybox")
    (staging / "bin/busybox").chmod(0o755)

    moddir = staging / "lib/modules" / version
    moddir.mkdir(parents=True)
    for rel in selection.files:
        target = moddir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(modules_src / rel, target)  # signed .ko as shipped: no stripping
    # modules.builtin lets busybox modprobe accept built-in names; depmod reads it and
    # modules.builtin.modinfo for the built-in aliases, and modules.order for the order.
    for name in ("modules.builtin", "modules.builtin.modinfo"):
        if (modules_src / name).exists():
            shutil.copyfile(modules_src / name, moddir / name)
    order_src = modules_src / "modules.order"
    if order_src.exists():
        kept = set(selection.files)
        lines = [ln for ln in order_src.read_text().splitlines() if ln.strip() in kept]
        (moddir / "modules.order").write_text("".join(f"{ln}\n" for ln in lines))
    depmod(staging, version)

    (staging / "etc/harness/modules-load").write_text(
        "# loaded by /init at boot, in this order\n" + "".join(f"{m}\n" for m in selection.load)
    )
    (staging / "etc/harness/image").write_text(identity)
    for path in staging.rglob("*"):
        # Permissions must not depend on the builder's umask.
        if path.is_symlink():
            continue
        if path.is_dir() or path.stat().st_mode & 0o100:
            path.chmod(0o755)
        else:
            path.chmod(0o644)


def write_initramfs(entries: Iterable[CpioEntry], dest: Path, *, mtime: int = 0) -> None:
    """gzip'd newc archive. The gzip header carries no name and mtime 0, like the cpio."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        write_cpio(entries, gz, mtime=mtime)
