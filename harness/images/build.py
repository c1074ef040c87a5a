"""Builds the embedded default guests: a Debian kernel and a busybox initramfs per arch.

The steps, each in a module of its own: resolve and fetch the packages (apt), unpack
them (deb), select the kernel modules (modules), put the kernel in the forms the engines
boot (kernel), stage and pack the initramfs (initramfs, cpio), publish the result in the
cache (store). The directory name (a digest of every input and of the recipe) says which
inputs an image came from. The build is synchronous (async callers use anyio.to_thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import stat
from collections.abc import Sequence
from pathlib import Path

from harness import stoptoken
from harness.cache import cache_dir
from harness.images.apt import (
    DEBIAN_ARCH,
    DebPackage,
    download,
    kernel_metapackage,
    resolve_packages,
    sha256_file,
)
from harness.images.cpio import CpioEntry, tree_entries
from harness.images.deb import extract
from harness.images.errors import (
    RETRY_HINT,
    ImageError,
    ImageNotBuilt,
    MissingModuleError,
    PackageDownloadError,
)
from harness.images.initramfs import stage_initramfs, write_initramfs
from harness.images.kernel import install_kernel, install_kernel_elf
from harness.images.model import GuestImage
from harness.images.modules import (
    MODULE_WANTS,
    depmod,
    parse_modules_builtin,
    parse_modules_dep,
    resolve_modules,
)
from harness.images.recipe import (
    FLAVOURS,
    RECIPE_VERSION,
    init_script,
    normalise,
    recipe_key,
    source_date_epoch,
)
from harness.images.store import (
    current_file,
    image_dir_name,
    image_from_dir,
    locked,
    publish,
    sweep_cache,
    work_dir,
    write_atomic,
)


def image_digest(recipe: str, packages: Sequence[DebPackage]) -> str:
    h = hashlib.sha256(recipe.encode())
    for pkg in packages:
        h.update(f"\n{pkg.name} {pkg.version} {pkg.arch} {pkg.sha256}".encode())
    return h.hexdigest()


def _only_dir(parent: Path, what: str) -> Path:
    found = sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    if len(found) != 1:
        raise ImageError(f"expected one {what} in {parent}, found {[p.name for p in found]}")
    return found[0]


def _build_into(
    out: Path,
    work: Path,
    *,
    name: str,
    arch: str,
    digest: str,
    kernel_deb: Path,
    kernel_pkg: DebPackage,
    busybox_deb: Path,
    busybox_pkg: DebPackage,
) -> dict[str, object]:
    """Build the image's files into `out` and return its manifest."""
    flavour = FLAVOURS[name]
    for deb, pkg in ((kernel_deb, kernel_pkg), (busybox_deb, busybox_pkg)):
        # A cached file was only size-checked; check what is about to be built from.
        if sha256_file(deb) != pkg.sha256:
            deb.unlink()
            raise PackageDownloadError(
                f"{deb} does not match apt's sha256 for {pkg.spec}; removed it. {RETRY_HINT}"
            )

    kroot = work / "kernel"
    extract(kernel_deb, kroot)
    modules_root = _only_dir(kroot / "lib/modules", "kernel version under lib/modules")
    version = modules_root.name
    vmlinuz = kroot / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise ImageError(f"{kernel_deb.name} has no boot/vmlinuz-{version}")
    depmod(kroot, version)  # the .deb ships no modules.dep
    deps = parse_modules_dep((modules_root / "modules.dep").read_text())
    builtin_file = modules_root / "modules.builtin"
    builtin = parse_modules_builtin(builtin_file.read_text() if builtin_file.exists() else "")
    selection = resolve_modules(MODULE_WANTS, flavour, arch, deps, builtin)
    if selection.missing_required:
        names = ", ".join(w.name for w in selection.missing_required)
        raise MissingModuleError(
            f"{name} {arch}: kernel {kernel_pkg.name} {kernel_pkg.version} lacks modules the "
            f"image's devices need: {names} (neither in modules.dep nor in modules.builtin)"
        )

    bbroot = work / "busybox"
    extract(busybox_deb, bbroot)
    busybox = bbroot / "bin/busybox"
    if not busybox.is_file():
        raise ImageError(f"{busybox_deb.name} has no bin/busybox")

    stoptoken.check()
    source_format = install_kernel(vmlinuz, arch, out)
    kernel_elf = install_kernel_elf(out / "kernel", out) if arch == "x86_64" else None
    staging = work / "initramfs"
    identity = (
        f"name={name}\narch={arch}\nkernel={version}\ndigest={digest}\n"
        f"recipe_version={RECIPE_VERSION}\n"
    )
    stage_initramfs(
        staging,
        busybox=busybox,
        modules_src=modules_root,
        version=version,
        selection=selection,
        identity=identity,
    )
    stoptoken.check()
    entries = [*tree_entries(staging), CpioEntry("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1)]
    mtime = source_date_epoch()
    write_initramfs(entries, out / "initrd.cpio.gz", mtime=mtime)

    wants = {w.name: w for w in MODULE_WANTS}
    caps = set(selection.load) | set(selection.builtin)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return {
        "name": name,
        "flavour": flavour,
        "arch": arch,
        "kernel_version": version,
        "kernel_source_format": source_format,
        "kernel_elf": kernel_elf,
        "digest": digest,
        "recipe_version": RECIPE_VERSION,
        "source_date_epoch": mtime,
        "init_sha256": hashlib.sha256(init_script()).hexdigest(),
        "packages": [dataclasses.asdict(p) for p in (kernel_pkg, busybox_pkg)],
        "modules": {
            "loaded_at_boot": list(selection.load),
            "on_demand": list(selection.on_demand),
            "builtin": list(selection.builtin),
            "files": list(selection.files),
            "skipped": [
                {"name": w.name, "purpose": w.purpose, "reason": "not built for this kernel"}
                for w in selection.skipped
            ],
        },
        "capabilities": {
            "power_button": ("button" in caps) if arch == "x86_64" else ("gpio_keys" in caps),
            "pvpanic": "pvpanic_pci" in caps,
            "virtio_gpu": "virtio_gpu" in caps,
            "usb_xhci": "xhci_pci" in caps,
            "kernel_test_modules": [m for m in selection.on_demand if m in wants],
        },
        "files": {
            f: {"size": (out / f).stat().st_size, "sha256": sha256_file(out / f)} for f in files
        },
    }


def build_image(
    name: str, arch: str, *, force: bool = False, cache: Path | None = None
) -> GuestImage:
    """Build (or reuse) the image from the packages apt offers now.

    Asks apt for the current package versions, so this picks up a new Debian kernel;
    ensure_image does not, which keeps repeated runs fast and stable.
    """
    name, arch = normalise(name, arch)
    root = cache or cache_dir()
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    deb_arch = DEBIAN_ARCH[arch]
    flavour = FLAVOURS[name]
    kernel_pkg, busybox_pkg = resolve_packages(kernel_metapackage(flavour, deb_arch), deb_arch,
                                                root)
    recipe = recipe_key(name, arch)
    digest = image_digest(recipe, (kernel_pkg, busybox_pkg))
    final = images / image_dir_name(name, arch, digest)

    with locked(images / f".{name}-{arch}.lock"):
        if force or not (final / "manifest.json").exists():
            downloads = root / "downloads"
            kernel_deb = download(kernel_pkg, downloads)
            busybox_deb = download(busybox_pkg, downloads)
            sweep_cache(root)
            with work_dir(images, ".build-") as tmp:
                with work_dir(root, ".work-") as work:
                    manifest = _build_into(
                        tmp,
                        work,
                        name=name,
                        arch=arch,
                        digest=digest,
                        kernel_deb=kernel_deb,
                        kernel_pkg=kernel_pkg,
                        busybox_deb=busybox_deb,
                        busybox_pkg=busybox_pkg,
                    )
                stoptoken.check()  # a stop during the last step: publish nothing
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
                tmp.chmod(0o755)
                publish(tmp, final, force=force)
        index = {"recipe": recipe, "dir": final.name, "digest": digest}
        write_atomic(current_file(images, name, arch), json.dumps(index).encode())
    return image_from_dir(final)


def ensure_image(
    name: str, arch: str, *, build: bool = True, cache: Path | None = None
) -> GuestImage:
    """The image last built for (name, arch), if this harness's recipe would still build it.

    Reads one small index file and one manifest: no apt, no hashing of packages. A changed
    init script, module list or recipe version changes the recipe key and so counts as
    "not built".
    """
    name, arch = normalise(name, arch)
    images = (cache or cache_dir()) / "images"
    with contextlib.suppress(OSError, ValueError, KeyError):
        index = json.loads(current_file(images, name, arch).read_text())
        path = images / index["dir"]
        if index["recipe"] == recipe_key(name, arch) and (path / "manifest.json").is_file():
            return image_from_dir(path)
    if not build:
        raise ImageNotBuilt(
            f"guest image {name} for {arch} is not built (or was built by another version "
            f"of the harness): run `harness images build`"
        )
    return build_image(name, arch, cache=cache)
