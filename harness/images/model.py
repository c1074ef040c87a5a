"""What an engine needs to know about a built guest image."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A bootable kernel + initramfs pair for one arch.

    `kernel` is what QEMU boots (on x86_64 `kernel_elf`, when there is one).
    `kernel_uncompressed` is the raw arm64 `Image`
    crosvm needs (it rejects a gzip-compressed Image); on x86_64 it is the same
    bzImage, which crosvm boots through the 64-bit Linux boot protocol.
    """

    name: str
    arch: str
    kernel: Path
    initrd: Path | None
    kernel_uncompressed: Path | None = None
    # x86_64 only: the bzImage's ELF vmlinux, which QEMU boots through PVH straight into
    # the kernel, skipping the bzImage's decompressor (seconds of emulated CPU under TCG).
    # None when the image has none; crosvm always boots the bzImage.
    kernel_elf: Path | None = None
    kernel_version: str = ""
    digest: str = ""
    # What the guest kernel can do (power_button, pvpanic, virtio_gpu, usb_xhci,
    # kernel_test_modules): Debian's arm64 kernel has no pvpanic, the cloud one no GPU.
    # Empty for images given as plain files: nothing is assumed about them.
    capabilities: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def crosvm_kernel(self) -> Path:
        return self.kernel_uncompressed or self.kernel
