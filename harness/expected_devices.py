"""The expected-device model: what each VMM presents by itself, per arch, and how Linux shows it.

An environment's expected devices are its configuration plus these (`Engine.
implicit_devices`). Device enumeration also checks that each of these is the device that
VMM really presents, not merely one of the same kind (crosvm's pvpanic is a PCI function,
not QEMU's ISA port; its arm64 UARTs are 8250s, not a PL011), and the RTC test learns from
it which driver the guest kernel needs before the RTC can be used at all: crosvm's arm64
RTC is a PL030, which Debian's arm64 kernel has no driver for (CONFIG_RTC_DRV_PL030 is
not set), so there the hardware is there but no /sys/class/rtc device is.

crosvm, from its source at commit f1e797a: x86_64/src/lib.rs (COM1..COM4 on I/O ports, a
CMOS RTC), aarch64/src/lib.rs (the same four 8250s on MMIO at 0x3f8.., console `ttyS0`,
earlycon `uart8250,mmio,0x3f8`; a PL030 RTC at 0x2000, AMBA id 0x00041030; vmwdt; no ACPI
power button), src/crosvm/sys/linux.rs create_devices and devices/src/pci/pvpanic.rs
(pvpanic as PCI 1b36:0011 on both arches). QEMU: the q35 and virt machines the QEMU
engine builds (16550s and a CMOS RTC; a PL011 and a PL031).

`evidence` is matched against the Linux inventory's evidence strings, `SOURCE DETAIL` as
suites/device_enumeration.py writes them ("pci 0000:00:04.0 [1b36:0011] class ...",
"tty ttyS0 16550A at 0x000003F8", "amba 2000.rtc PL030 (AMBA id 00041030, no driver)").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class PlatformDevice:
    """One device a VMM always presents on an arch."""

    kind: str  # the environments.json device name
    model: str  # what the VMM emulates, as a failure message names it
    evidence: str  # a regex any one of the guest's evidence strings for `kind` must match
    driver: str | None = None  # the Linux driver that makes it the class device tests use
    kernel_config: str | None = None  # the kernel option that builds `driver`

    def matches(self, evidence: str) -> bool:
        return re.search(self.evidence, evidence) is not None


_PVPANIC_PCI = PlatformDevice(
    "pvpanic", "crosvm's pvpanic, a PCI function 1b36:0011 (not an ISA port)",
    r"^pci \S+ \[1b36:0011\]", driver="pvpanic-pci", kernel_config="CONFIG_PVPANIC_PCI")

PLATFORMS: dict[tuple[str, str], tuple[PlatformDevice, ...]] = {
    ("crosvm", "x86_64"): (
        PlatformDevice("serial", "crosvm's 8250 UARTs COM1..COM4 on I/O ports 0x3f8, 0x2f8, "
                                 "0x3e8, 0x2e8 (ttyS0..ttyS3)", r"^tty ttyS\d+ ",
                       driver="serial8250", kernel_config="CONFIG_SERIAL_8250"),
        PlatformDevice("rtc", "crosvm's CMOS RTC (rtc_cmos)", r"^rtc rtc\d+ rtc_cmos\b",
                       driver="rtc_cmos", kernel_config="CONFIG_RTC_DRV_CMOS"),
        _PVPANIC_PCI,
    ),
    ("crosvm", "arm64"): (
        PlatformDevice("serial", "crosvm's 8250 UARTs on MMIO at 0x3f8, 0x2f8, 0x3e8, 0x2e8 "
                                 "(console ttyS0, earlycon uart8250,mmio,0x3f8; not a PL011 "
                                 "ttyAMA0)", r"^tty ttyS\d+ ",
                       driver="of_serial", kernel_config="CONFIG_SERIAL_OF_PLATFORM"),
        PlatformDevice("rtc", "crosvm's PL030 RTC (AMBA id 0x00041030 at 0x2000; not a PL031)",
                       r"^amba \S+ PL030 |^rtc rtc\d+ rtc-pl030\b",
                       driver="rtc-pl030", kernel_config="CONFIG_RTC_DRV_PL030"),
        _PVPANIC_PCI,
    ),
    ("qemu", "x86_64"): (
        PlatformDevice("serial", "QEMU q35's 16550 UARTs on I/O ports (ttyS)", r"^tty ttyS\d+ ",
                       driver="serial8250", kernel_config="CONFIG_SERIAL_8250"),
        PlatformDevice("rtc", "QEMU q35's CMOS RTC (rtc_cmos)", r"^rtc rtc\d+ rtc_cmos\b",
                       driver="rtc_cmos", kernel_config="CONFIG_RTC_DRV_CMOS"),
    ),
    ("qemu", "arm64"): (
        PlatformDevice("serial", "QEMU virt's PL011 UART (ttyAMA0)",
                       r"^tty ttyAMA\d+ |^amba \S+ PL011 ",
                       driver="uart-pl011", kernel_config="CONFIG_SERIAL_AMBA_PL011"),
        PlatformDevice("rtc", "QEMU virt's PL031 RTC", r"^rtc rtc\d+ rtc-pl031\b|^amba \S+ PL031 ",
                       driver="rtc-pl031", kernel_config="CONFIG_RTC_DRV_PL031"),
    ),
}


def platform(engine: str, arch: str) -> Mapping[str, PlatformDevice]:
    """{kind: device} that `engine` always presents on `arch` (empty where not modelled)."""
    return {d.kind: d for d in PLATFORMS.get((engine, arch), ())}
