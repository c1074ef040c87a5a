"""What decides an image's bytes besides its packages: the recipe, and its key.

The key is cheap (no .deb is read), so ensure_image can tell whether the image it
built last is still what this version of the harness would build.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os

from harness.environments import ARCHES
from harness.images.errors import ImageError
from harness.images.modules import MODULE_WANTS

# Bump whenever the build changes the bytes it produces for the same inputs (archive
# layout, cpio details, files added to the initramfs), so old cache entries stop matching.
# 2: x86_64 images also carry the ELF vmlinux for QEMU's PVH boot.
RECIPE_VERSION = 2

IMAGE_NAMES = ("debian-generic", "debian-cloud")

FLAVOURS = {"debian-generic": "generic", "debian-cloud": "cloud"}
_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}


def normalise(name: str, arch: str) -> tuple[str, str]:
    if name not in FLAVOURS:
        raise ImageError(f"unknown image {name!r}: expected one of {', '.join(IMAGE_NAMES)}")
    canonical = _ARCH_ALIASES.get(arch)
    if canonical is None:
        raise ImageError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHES)}")
    return name, canonical


def init_script() -> bytes:
    return importlib.resources.files("harness.images").joinpath("init.sh").read_bytes()


def source_date_epoch() -> int:
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
    name, arch = normalise(name, arch)
    flavour = FLAVOURS[name]
    recipe = {
        "recipe_version": RECIPE_VERSION,
        "name": name,
        "arch": arch,
        "init_sha256": hashlib.sha256(init_script()).hexdigest(),
        "modules": [
            {
                "name": w.name,
                "required": w.required(flavour, arch),
                "load_at_boot": w.load_at_boot,
            }
            for w in MODULE_WANTS
            if w.wanted(arch)
        ],
        "mtime": source_date_epoch(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
