"""The image an environment boots: an embedded guest (built when missing), or its own files.

A product bundle is not an environment's image but each run's (harness.fuchsia.build
gives it), so asking for one here is a mistake the message explains.
"""

from __future__ import annotations

from harness.cache import cache_dir
from harness.environments import Environment
from harness.errors import HarnessError
from harness.images.build import ensure_image
from harness.images.model import GuestImage

# Every embedded image is a Linux guest: a Debian kernel with busybox and the harness's init.
EMBEDDED_PROFILE = "linux"


def image_for(env: Environment, *, build: bool = True) -> GuestImage:
    """The kernel and initramfs `env` boots (building the embedded one if needed and `build`;
    otherwise ImageNotBuilt says how to build it)."""
    if env.image.product_bundle:
        raise HarnessError(f"{env.name} boots the product bundle of each test it runs, "
                           "not an image of its own (to boot a boot test's bundle by hand: "
                           "`harness run-boot-test NAME --build-dir DIR --interactive`)")
    if not env.image.embedded:
        assert env.image.kernel is not None
        return GuestImage(name=env.image.name, arch=env.arch, kernel=env.image.kernel,
                          initrd=env.image.initrd, kernel_uncompressed=env.image.kernel)
    return ensure_image(env.image.name, env.arch, build=build)


def unbuilt_image(env: Environment) -> GuestImage:
    """Stand-in paths for what `plan` and `doctor` print before `harness images build` ran
    (the paths say NOT-BUILT)."""
    base = cache_dir() / "images" / f"{env.image.name}-{env.arch}-NOT-BUILT"
    return GuestImage(name=env.image.name, arch=env.arch, kernel=base / "kernel",
                      initrd=base / "initrd.cpio.gz", kernel_uncompressed=base / "kernel",
                      kernel_elf=base / "vmlinux" if env.arch == "x86_64" else None)


def planned_image(env: Environment) -> GuestImage:
    """The image a command line shows for `env` without building anything."""
    try:
        return image_for(env, build=False)
    except HarnessError:
        return unbuilt_image(env)
