"""What goes wrong building or finding a guest image, in words a person can act on."""

from __future__ import annotations

from harness.errors import HarnessError

RETRY_HINT = "Retry with `harness images build` once the cause is fixed."


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
