"""Builds the embedded default guests: a Debian kernel and a busybox initramfs per arch.

Everything comes from Debian packages fetched with apt, so a developer's machine and a CI
builder that see the same apt index build byte-identical images, and the directory name
(a digest of every input) says which inputs an image came from. The build is synchronous
(async callers use anyio.to_thread) and safe when several processes build at once: work
happens in temporary directories inside the cache and is published by one rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import importlib.resources
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.images.model import GuestImage

# Bump whenever the build changes the bytes it produces for the same inputs (archive
# layout, cpio details, files added to the initramfs), so old cache entries stop matching.
# 2: x86_64 images also carry the ELF vmlinux for QEMU's PVH boot.
RECIPE_VERSION = 2

IMAGE_NAMES = ("debian-generic", "debian-cloud")
ARCHES = ("x86_64", "arm64")

_FLAVOURS = {"debian-generic": "generic", "debian-cloud": "cloud"}
_DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}
_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}

_DEPMOD = "/usr/sbin/depmod"
_APT_TIMEOUT_S = 900.0
_STALE_WORKDIR_S = 24 * 3600.0
_RETRY_HINT = "Retry with `harness images build` once the cause is fixed."


class _Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


class ImageError(HarnessError):
    """Building or finding a guest image failed in a way the user can act on."""


class AptListsMissing(ImageError):
    """apt does not know the packages: its lists are missing or do not cover the arch."""


class PackageDownloadError(ImageError):
    """`apt-get download` of one package failed or gave a file apt's index disagrees with."""


class MissingModuleError(ImageError):
    """The kernel lacks a driver the image's devices need."""


class ImageNotBuilt(ImageError):
    """The image is not in the cache and building it was not allowed."""


# --------------------------------------------------------------------------------------
# Module selection


@dataclasses.dataclass(frozen=True)
class ModuleWant:
    """One kernel module the image should carry, and where its absence is fatal.

    Required only for the (flavour, arch) pairs whose devices need it: the cloud kernels
    leave out GPU, USB, gpio-keys and the test modules on purpose, and Debian's arm64
    config has no pvpanic at all; those are recorded as skipped, not failures.
    """

    name: str
    purpose: str
    arches: frozenset[str] = frozenset(ARCHES)
    required_flavours: frozenset[str] = frozenset()
    required_arches: frozenset[str] = frozenset(ARCHES)
    load_at_boot: bool = True

    def wanted(self, arch: str) -> bool:
        return arch in self.arches

    def required(self, flavour: str, arch: str) -> bool:
        return flavour in self.required_flavours and arch in self.required_arches


_BOTH = frozenset({"generic", "cloud"})
_GENERIC = frozenset({"generic"})
_X86 = frozenset({"x86_64"})
_ARM = frozenset({"arm64"})

# The order is the load order at boot: bus drivers first so the device drivers that follow
# bind at once, then evdev and the buttons, which acpid needs before it starts.
MODULE_WANTS: tuple[ModuleWant, ...] = (
    ModuleWant(
        "virtio_pci", "virtio devices on PCI (crosvm, QEMU q35/virt)", required_flavours=_BOTH
    ),
    ModuleWant("virtio_mmio", "virtio devices on MMIO (QEMU microvm)", required_flavours=_BOTH),
    ModuleWant("virtio_blk", "block devices", required_flavours=_BOTH),
    ModuleWant("virtio_net", "network", required_flavours=_BOTH),
    ModuleWant("virtio_rng", "entropy device", required_flavours=_BOTH),
    ModuleWant("virtio_balloon", "memory balloon", required_flavours=_BOTH),
    ModuleWant("virtio_console", "virtio serial consoles and ports", required_flavours=_BOTH),
    ModuleWant("vmw_vsock_virtio_transport", "vsock", required_flavours=_BOTH),
    ModuleWant("virtio_gpu", "GPU (and its DRM helpers)", required_flavours=_GENERIC),
    ModuleWant("virtio_input", "virtio keyboard/mouse/tablet"),
    ModuleWant("xhci_pci", "xHCI USB controller", required_flavours=_GENERIC),
    ModuleWant("xhci_hcd", "xHCI USB core", required_flavours=_GENERIC),
    ModuleWant("rtc_cmos", "CMOS RTC", arches=_X86, required_flavours=_BOTH),
    ModuleWant("rtc_pl031", "PL031 RTC", arches=_ARM, required_flavours=_BOTH),
    ModuleWant("pvpanic", "pvpanic core", required_flavours=_BOTH, required_arches=_X86),
    ModuleWant("pvpanic_pci", "pvpanic PCI device", required_flavours=_BOTH, required_arches=_X86),
    ModuleWant(
        "pvpanic_mmio", "pvpanic ISA/MMIO device", required_flavours=_BOTH, required_arches=_X86
    ),
    ModuleWant("af_packet", "packet sockets (udhcpc)"),
    ModuleWant("evdev", "input events for acpid", required_flavours=_BOTH),
    ModuleWant("button", "ACPI power button", arches=_X86, required_flavours=_BOTH),
    ModuleWant(
        "gpio_keys",
        "power button of QEMU virt (KEY_POWER)",
        arches=_ARM,
        required_flavours=_GENERIC,
    ),
    ModuleWant("test_bpf", "kernel self-test", load_at_boot=False),
    ModuleWant("test_user_copy", "kernel self-test", load_at_boot=False),
    ModuleWant("test_static_key_base", "kernel self-test", load_at_boot=False),
    ModuleWant("test_static_keys", "kernel self-test", load_at_boot=False),
    ModuleWant("test_printf", "kernel self-test", load_at_boot=False),
    ModuleWant("test_bitmap", "kernel self-test", load_at_boot=False),
    ModuleWant("test_hash", "kernel self-test", load_at_boot=False),
    ModuleWant("test_string", "kernel self-test", load_at_boot=False),
)


def module_name(path: str) -> str:
    """The name modprobe and lsmod use: file name without suffix, '-' spelled '_'."""
    base = PurePosixPath(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """modules.dep as {module path: paths of the modules it needs}."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"modules.dep: line without ':': {line!r}")
        deps[path.strip()] = tuple(rest.split())
    return deps


def parse_modules_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line) for line in text.split() if line)


@dataclasses.dataclass(frozen=True)
class ModuleSelection:
    """What of MODULE_WANTS one kernel provides, and the files to copy for it."""

    files: tuple[str, ...]
    load: tuple[str, ...]
    on_demand: tuple[str, ...]
    builtin: tuple[str, ...]
    skipped: tuple[ModuleWant, ...]
    missing_required: tuple[ModuleWant, ...]


def resolve_modules(
    wants: Sequence[ModuleWant],
    flavour: str,
    arch: str,
    deps: Mapping[str, Sequence[str]],
    builtin: frozenset[str],
) -> ModuleSelection:
    """Select the wanted modules and the dependency closure of the ones that are modular.

    Built-in ones need no file and no modprobe; absent ones are skipped or, when the
    image's devices need them, reported as missing so the caller can fail with all names.
    """
    by_name = {module_name(path): path for path in deps}
    files: set[str] = set()
    load: list[str] = []
    on_demand: list[str] = []
    builtin_hits: list[str] = []
    skipped: list[ModuleWant] = []
    missing: list[ModuleWant] = []
    for want in wants:
        if not want.wanted(arch):
            continue
        name = module_name(want.name)
        if name in builtin:
            builtin_hits.append(name)
            continue
        path = by_name.get(name)
        if path is None:
            (missing if want.required(flavour, arch) else skipped).append(want)
            continue
        files.update(_closure(path, deps))
        (load if want.load_at_boot else on_demand).append(name)
    return ModuleSelection(
        files=tuple(sorted(files)),
        load=tuple(load),
        on_demand=tuple(on_demand),
        builtin=tuple(builtin_hits),
        skipped=tuple(skipped),
        missing_required=tuple(missing),
    )


def _closure(start: str, deps: Mapping[str, Sequence[str]]) -> set[str]:
    # modules.dep already lists indirect dependencies, but following them costs nothing
    # and keeps a hand-written or older-style modules.dep correct too.
    seen: set[str] = set()
    stack = [start]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        if path not in deps:
            raise ImageError(f"modules.dep names {path}, which has no entry of its own")
        seen.add(path)
        stack.extend(deps[path])
    return seen


# --------------------------------------------------------------------------------------
# cpio (newc), written here so the archive is byte-for-byte reproducible


_NEWC_MAGIC = b"070701"
_NEWC_HEADER_LEN = 110
_TRAILER = "TRAILER!!!"


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


def write_initramfs(entries: Iterable[CpioEntry], dest: Path, *, mtime: int = 0) -> None:
    """gzip'd newc archive. The gzip header carries no name and mtime 0, like the cpio."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        write_cpio(entries, gz, mtime=mtime)


# --------------------------------------------------------------------------------------
# Cache layout


def _normalise(name: str, arch: str) -> tuple[str, str]:
    if name not in _FLAVOURS:
        raise ImageError(f"unknown image {name!r}: expected one of {', '.join(IMAGE_NAMES)}")
    canonical = _ARCH_ALIASES.get(arch)
    if canonical is None:
        raise ImageError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHES)}")
    return name, canonical


def _init_script() -> bytes:
    return importlib.resources.files("harness.images").joinpath("init.sh").read_bytes()


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return int(value)
    except ValueError:
        raise ImageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None


def recipe_key(name: str, arch: str) -> str:
    """Everything but the packages that decides an image's bytes, hashed.

    Cheap (no .deb is read), so ensure_image can tell whether the image it built last is
    still what this version of the harness would build.
    """
    name, arch = _normalise(name, arch)
    flavour = _FLAVOURS[name]
    recipe = {
        "recipe_version": RECIPE_VERSION,
        "name": name,
        "arch": arch,
        "init_sha256": hashlib.sha256(_init_script()).hexdigest(),
        "modules": [
            {
                "name": w.name,
                "required": w.required(flavour, arch),
                "load_at_boot": w.load_at_boot,
            }
            for w in MODULE_WANTS
            if w.wanted(arch)
        ],
        "mtime": _source_date_epoch(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------
# apt


@dataclasses.dataclass(frozen=True)
class DebPackage:
    """A concrete package version as apt's index describes it (the hash is apt's)."""

    name: str
    version: str
    arch: str
    sha256: str
    size: int

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arch}={self.version}"

    @property
    def file_name(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 120.0) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc.stdout


def _apt_fix(deb_arch: str) -> str:
    try:
        native = _run(["dpkg", "--print-architecture"]).strip()
        foreign = _run(["dpkg", "--print-foreign-architectures"]).split()
    except (OSError, subprocess.CalledProcessError):
        return "run `apt-get update`"
    if deb_arch != native and deb_arch not in foreign:
        return f"run `dpkg --add-architecture {deb_arch} && apt-get update` (as root)"
    return "run `apt-get update` (as root)"


def _apt_show(packages: Sequence[str], deb_arch: str, root: Path) -> dict[str, dict[str, str]]:
    """The candidate version's stanza of each package from `apt-cache show`, by name.

    Without a pkgcache.bin (Debian container images turn it off) each apt-cache call
    rebuilds apt's cache in memory, about 1.2 s, and `harness images build` makes six: so
    apt-cache keeps one in the harness's cache (apt rebuilds it when its lists change),
    and a call takes 0.25 s. apt-cache exits 0 when only some names are unknown, so every
    name is checked here.
    """
    pkgcache = root / "apt" / "pkgcache.bin"
    pkgcache.parent.mkdir(parents=True, exist_ok=True)
    argv = ["apt-cache", "-o", f"Dir::Cache::pkgcache={pkgcache}", "show", "--no-all-versions",
            *(f"{p}:{deb_arch}" for p in packages)]
    try:
        text = _run(argv)
    except FileNotFoundError:
        raise ImageError("apt-cache not found: building images needs a Debian-based host") from None
    except subprocess.CalledProcessError as err:
        text = ""
        detail = (err.stderr or "").strip()
    else:
        detail = ""
    stanzas: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Architecture") in (deb_arch, "all") and "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    missing = [p for p in packages if p not in stanzas]
    if missing:
        names = ", ".join(f"{p}:{deb_arch}" for p in missing)
        raise AptListsMissing(
            f"apt-cache finds no package {names}{f' ({detail})' if detail else ''}: "
            f"apt's package lists are missing or do not include {deb_arch}. "
            f"To fix it, {_apt_fix(deb_arch)}, then `harness images build`."
        )
    return stanzas


def _deb_package(f: Mapping[str, str]) -> DebPackage:
    try:
        return DebPackage(
            f["Package"], f["Version"], f["Architecture"], f["SHA256"], int(f["Size"])
        )
    except (KeyError, ValueError) as err:
        raise ImageError(f"apt-cache show {f.get('Package')}: unexpected output ({err})") from None


def _kernel_dependency(meta: Mapping[str, str]) -> str:
    """The concrete linux-image-6.1.0-NN-* package a linux-image meta package depends on."""
    depends = meta.get("Depends", "")
    for alternative in depends.split(","):
        candidate = alternative.split("|")[0].split("(")[0].strip().split(":")[0]
        if candidate.startswith("linux-image-"):
            return candidate
    raise ImageError(f"{meta.get('Package')} depends on no linux-image package ({depends!r})")


def _resolve_packages(meta: str, deb_arch: str, root: Path) -> tuple[DebPackage, DebPackage]:
    """(kernel, busybox-static) as apt would install them now, in two apt-cache calls."""
    first = _apt_show([meta, "busybox-static"], deb_arch, root)
    kernel_name = _kernel_dependency(first[meta])
    kernel = _apt_show([kernel_name], deb_arch, root)[kernel_name]
    return _deb_package(kernel), _deb_package(first["busybox-static"])


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(pkg: DebPackage, downloads: Path) -> Path:
    """The package's .deb in the cache, fetched with `apt-get download` if not there yet.

    apt-get writes into the current directory, so it runs in a fresh temporary one and the
    verified file is then renamed into place: a reader never sees a partial .deb, and two
    processes fetching the same package at once both end with the same file. As root, apt
    drops to user _apt, which cannot write into a private cache; it then downloads as root
    and prints an "unsandboxed" warning, which is expected here.
    """
    dest = downloads / pkg.file_name
    if dest.is_file() and dest.stat().st_size == pkg.size:
        return dest
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".apt-") as tmp:
        try:
            _run(["apt-get", "download", "-q", pkg.spec], cwd=Path(tmp), timeout=_APT_TIMEOUT_S)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            detail = getattr(err, "stderr", None) or str(err)
            detail = "\n".join(
                line for line in str(detail).splitlines() if "unsandboxed" not in line
            )
            raise PackageDownloadError(
                f"downloading {pkg.spec} failed: {detail.strip()}\n"
                f"Check the network and apt's sources (`apt-get update`). {_RETRY_HINT}"
            ) from None
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise PackageDownloadError(
                f"apt-get download {pkg.spec} left {len(debs)} .deb files. {_RETRY_HINT}"
            )
        digest = _sha256_file(debs[0])
        if digest != pkg.sha256:
            raise PackageDownloadError(
                f"{pkg.spec}: downloaded file has sha256 {digest}, apt's index says "
                f"{pkg.sha256}. Run `apt-get update`. {_RETRY_HINT}"
            )
        os.replace(debs[0], dest)
    return dest


# --------------------------------------------------------------------------------------
# Building


def _image_dir_name(name: str, arch: str, digest: str) -> str:
    return f"{name}-{arch}-{digest[:12]}"


def _digest(recipe: str, packages: Sequence[DebPackage]) -> str:
    h = hashlib.sha256(recipe.encode())
    for pkg in packages:
        h.update(f"\n{pkg.name} {pkg.version} {pkg.arch} {pkg.sha256}".encode())
    return h.hexdigest()


def _kernel_metapackage(flavour: str, deb_arch: str) -> str:
    return f"linux-image-cloud-{deb_arch}" if flavour == "cloud" else f"linux-image-{deb_arch}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock; the kernel drops it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
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


def _remove_stale_workdirs(parent: Path) -> None:
    # Leftovers of builds that were killed; live builds are younger than this.
    cutoff = time.time() - _STALE_WORKDIR_S
    for leftover in [*parent.glob(".build-*"), *parent.glob(".work-*")]:
        with contextlib.suppress(OSError):
            if leftover.lstat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)


def _check_kernel(path: Path, arch: str) -> None:
    head = _read_head(path, 0x240)
    if arch == "x86_64" and head[0x202:0x206] != b"HdrS":
        raise ImageError(f"{path}: not a bzImage (no HdrS boot header)")
    if arch == "arm64" and head[0x38:0x3C] != b"ARM\x64":
        raise ImageError(f"{path}: not an arm64 Image (no ARM\\x64 magic)")


def _read_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _install_kernel(vmlinuz: Path, arch: str, out: Path) -> str:
    """Put the bootable kernel at out/kernel; returns the format Debian shipped it in.

    x86_64 ships a bzImage, which QEMU and crosvm both boot. crosvm refuses a gzip'd arm64
    Image, so an Image.gz is decompressed (and kept as Image.gz); Debian's signed arm64
    kernels are EFI-stub PE files, already an uncompressed Image, used as they are.
    """
    kernel = out / "kernel"
    if arch == "arm64" and _read_head(vmlinuz, 2) == b"\x1f\x8b":
        shutil.copyfile(vmlinuz, out / "Image.gz")
        with gzip.open(vmlinuz, "rb") as src, open(kernel, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        source_format = "Image.gz"
    else:
        shutil.copyfile(vmlinuz, kernel)
        source_format = "bzImage" if arch == "x86_64" else "Image"
    _check_kernel(kernel, arch)
    return source_format


# --------------------------------------------------------------------------------------
# x86_64: the ELF vmlinux inside the bzImage, which QEMU boots through PVH


_XZ_MAGIC = b"\xfd7zXZ\x00"
_LZ4_LEGACY_MAGIC = 0x184C2102
_PT_NOTE = 4
_SHT_NOBITS = 8
_EM_X86_64 = 62
_XEN_ELFNOTE_PHYS32_ENTRY = 18


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
    ends = [64, phoff + phnum * phentsize, shoff + shnum * shentsize]
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


def _install_kernel_elf(bzimage: Path, out: Path) -> dict[str, object]:
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


def _extract(deb: Path, dest: Path) -> None:
    try:
        _run(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600.0)
    except (OSError, subprocess.CalledProcessError) as err:
        raise ImageError(
            f"dpkg-deb -x {deb.name} failed: {getattr(err, 'stderr', '') or err}. "
            f"Delete {deb} and run `harness images build` to fetch it again."
        ) from None


def _depmod(root: Path, version: str) -> None:
    try:
        _run([_DEPMOD, "-b", str(root), version], timeout=300.0)
    except FileNotFoundError:
        raise ImageError(f"{_DEPMOD} not found: install Debian's kmod package") from None
    except subprocess.CalledProcessError as err:
        raise ImageError(f"depmod -b {root} {version} failed: {err.stderr.strip()}") from None


def _only_dir(parent: Path, what: str) -> Path:
    found = sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    if len(found) != 1:
        raise ImageError(f"expected one {what} in {parent}, found {[p.name for p in found]}")
    return found[0]


def _stage_initramfs(
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
    (staging / "init").write_bytes(_init_script())
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
    _depmod(staging, version)

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


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
    flavour = _FLAVOURS[name]
    for deb, pkg in ((kernel_deb, kernel_pkg), (busybox_deb, busybox_pkg)):
        # A cached file was only size-checked; check what is about to be built from.
        if _sha256_file(deb) != pkg.sha256:
            deb.unlink()
            raise PackageDownloadError(
                f"{deb} does not match apt's sha256 for {pkg.spec}; removed it. {_RETRY_HINT}"
            )

    kroot = work / "kernel"
    _extract(kernel_deb, kroot)
    modules_root = _only_dir(kroot / "lib/modules", "kernel version under lib/modules")
    version = modules_root.name
    vmlinuz = kroot / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise ImageError(f"{kernel_deb.name} has no boot/vmlinuz-{version}")
    _depmod(kroot, version)  # the .deb ships no modules.dep
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
    _extract(busybox_deb, bbroot)
    busybox = bbroot / "bin/busybox"
    if not busybox.is_file():
        raise ImageError(f"{busybox_deb.name} has no bin/busybox")

    source_format = _install_kernel(vmlinuz, arch, out)
    kernel_elf = _install_kernel_elf(out / "kernel", out) if arch == "x86_64" else None
    staging = work / "initramfs"
    identity = (
        f"name={name}\narch={arch}\nkernel={version}\ndigest={digest}\n"
        f"recipe_version={RECIPE_VERSION}\n"
    )
    _stage_initramfs(
        staging,
        busybox=busybox,
        modules_src=modules_root,
        version=version,
        selection=selection,
        identity=identity,
    )
    entries = [*tree_entries(staging), CpioEntry("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1)]
    mtime = _source_date_epoch()
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
        "init_sha256": hashlib.sha256(_init_script()).hexdigest(),
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
            f: {"size": (out / f).stat().st_size, "sha256": _sha256_file(out / f)} for f in files
        },
    }


def _publish(tmp: Path, final: Path, *, force: bool) -> None:
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


def _image_from_dir(path: Path) -> GuestImage:
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


def _current_file(images: Path, name: str, arch: str) -> Path:
    return images / f"{name}-{arch}.current"


def build_image(
    name: str, arch: str, *, force: bool = False, cache: Path | None = None
) -> GuestImage:
    """Build (or reuse) the image from the packages apt offers now.

    Asks apt for the current package versions, so this picks up a new Debian kernel;
    ensure_image does not, which keeps repeated runs fast and stable.
    """
    name, arch = _normalise(name, arch)
    root = cache or cache_dir()
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    deb_arch = _DEBIAN_ARCH[arch]
    flavour = _FLAVOURS[name]
    kernel_pkg, busybox_pkg = _resolve_packages(_kernel_metapackage(flavour, deb_arch), deb_arch,
                                                root)
    recipe = recipe_key(name, arch)
    digest = _digest(recipe, (kernel_pkg, busybox_pkg))
    final = images / _image_dir_name(name, arch, digest)

    with _locked(images / f".{name}-{arch}.lock"):
        if force or not (final / "manifest.json").exists():
            downloads = root / "downloads"
            kernel_deb = _download(kernel_pkg, downloads)
            busybox_deb = _download(busybox_pkg, downloads)
            _remove_stale_workdirs(images)
            _remove_stale_workdirs(root)
            tmp = Path(tempfile.mkdtemp(dir=images, prefix=".build-"))
            try:
                with tempfile.TemporaryDirectory(dir=root, prefix=".work-") as work:
                    manifest = _build_into(
                        tmp,
                        Path(work),
                        name=name,
                        arch=arch,
                        digest=digest,
                        kernel_deb=kernel_deb,
                        kernel_pkg=kernel_pkg,
                        busybox_deb=busybox_deb,
                        busybox_pkg=busybox_pkg,
                    )
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
                tmp.chmod(0o755)
                _publish(tmp, final, force=force)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        index = {"recipe": recipe, "dir": final.name, "digest": digest}
        _write_atomic(_current_file(images, name, arch), json.dumps(index).encode())
    return _image_from_dir(final)


def ensure_image(
    name: str, arch: str, *, build: bool = True, cache: Path | None = None
) -> GuestImage:
    """The image last built for (name, arch), if this harness's recipe would still build it.

    Reads one small index file and one manifest: no apt, no hashing of packages. A changed
    init script, module list or recipe version changes the recipe key and so counts as
    "not built".
    """
    name, arch = _normalise(name, arch)
    images = (cache or cache_dir()) / "images"
    with contextlib.suppress(OSError, ValueError, KeyError):
        index = json.loads(_current_file(images, name, arch).read_text())
        path = images / index["dir"]
        if index["recipe"] == recipe_key(name, arch) and (path / "manifest.json").is_file():
            return _image_from_dir(path)
    if not build:
        raise ImageNotBuilt(
            f"guest image {name} for {arch} is not built (or was built by another version "
            f"of the harness): run `harness images build`"
        )
    return build_image(name, arch, cache=cache)


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
                "size": _dir_size(path),
                "digest": manifest.get("digest"),
                "current": path.name in current,
            }
        )
    return rows
