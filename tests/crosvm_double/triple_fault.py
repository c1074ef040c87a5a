"""A tiny x86 "kernel" that triple-faults at once: crosvm reports that as a stop (0)."""

from __future__ import annotations

import struct
from pathlib import Path


def triple_fault_kernel(path: Path) -> Path:
    """A 1.5 KiB bzImage whose real-mode setup loads an empty IDT and traps.

    QEMU's Linux loader (and crosvm's) accept it by its `HdrS` header; the setup
    code runs in real mode, where `int3` through a zero-limit IDT faults, the
    fault faults again (double fault), and that fault is a triple fault.
    """
    img = bytearray(1024 + 512)
    img[0x1F1] = 1  # setup_sects: the header sector plus one
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x200:0x202] = b"\xeb\x3e"  # jmp 0x240, past the header
    img[0x202:0x206] = b"HdrS"
    img[0x206:0x208] = struct.pack("<H", 0x0206)  # boot protocol 2.06
    img[0x211] = 0x01  # loadflags: LOADED_HIGH
    img[0x22C:0x230] = struct.pack("<I", 0x37FFFFFF)  # initrd_addr_max
    img[0x238:0x23C] = struct.pack("<I", 2048)  # cmdline_size
    # cli; lidt cs:[0x4b]; int3; hlt; jmp $-1; then the 6-byte IDT pointer (limit 0, base 0).
    img[0x240:0x251] = bytes([0xFA, 0x2E, 0x0F, 0x01, 0x1E, 0x4B, 0x00, 0xCC, 0xF4, 0xEB, 0xFD,
                              0, 0, 0, 0, 0, 0])
    path.write_bytes(bytes(img))
    return path
