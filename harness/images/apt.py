"""The packages an image is built from, as apt knows them: resolved, fetched and verified.

Everything comes from Debian packages fetched with apt, so a developer's machine and a
CI builder that see the same apt index build byte-identical images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.images.errors import RETRY_HINT, AptListsMissing, ImageError, PackageDownloadError
from harness.images.store import work_dir
from harness.images.tools import run_step

DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}
_APT_TIMEOUT_S = 900.0


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


def kernel_metapackage(flavour: str, deb_arch: str) -> str:
    return f"linux-image-cloud-{deb_arch}" if flavour == "cloud" else f"linux-image-{deb_arch}"


def _apt_fix(deb_arch: str) -> str:
    try:
        native = run_step(["dpkg", "--print-architecture"]).strip()
        foreign = run_step(["dpkg", "--print-foreign-architectures"]).split()
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
        text = run_step(argv)
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


def resolve_packages(meta: str, deb_arch: str, root: Path) -> tuple[DebPackage, DebPackage]:
    """(kernel, busybox-static) as apt would install them now, in two apt-cache calls."""
    first = _apt_show([meta, "busybox-static"], deb_arch, root)
    kernel_name = _kernel_dependency(first[meta])
    kernel = _apt_show([kernel_name], deb_arch, root)[kernel_name]
    return _deb_package(kernel), _deb_package(first["busybox-static"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(pkg: DebPackage, downloads: Path) -> Path:
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
    with work_dir(downloads, ".apt-") as tmp:
        try:
            run_step(["apt-get", "download", "-q", pkg.spec], cwd=Path(tmp), timeout=_APT_TIMEOUT_S)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            detail = getattr(err, "stderr", None) or str(err)
            detail = "\n".join(
                line for line in str(detail).splitlines() if "unsandboxed" not in line
            )
            raise PackageDownloadError(
                f"downloading {pkg.spec} failed: {detail.strip()}\n"
                f"Check the network and apt's sources (`apt-get update`). {RETRY_HINT}"
            ) from None
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise PackageDownloadError(
                f"apt-get download {pkg.spec} left {len(debs)} .deb files. {RETRY_HINT}"
            )
        digest = sha256_file(debs[0])
        if digest != pkg.sha256:
            raise PackageDownloadError(
                f"{pkg.spec}: downloaded file has sha256 {digest}, apt's index says "
                f"{pkg.sha256}. Run `apt-get update`. {RETRY_HINT}"
            )
        os.replace(debs[0], dest)
    return dest
