"""What devices a guest shows: its own listings parsed into device kinds, an Inventory.

One command per guest OS prints every fact (Linux: sysfs and /proc in one grep;
Zircon: `lspci -n`, `driver list --loaded` and the driver manager's nodes), and a pure
parser turns the text into device kinds, so a saved listing (`enumeration.txt`) can
be judged again without booting anything. What is expected and how it is judged is
the device-enumeration suite's (suites/device_enumeration.py).

Linux: PCI functions (vendor, device, class from /sys/bus/pci/devices), virtio devices by
type (/sys/bus/virtio/devices/*/device), UARTs that the serial core found hardware behind
(/proc/tty/driver/*), RTCs (/sys/class/rtc/*/name), AMBA devices by their peripheral id
and bound driver (/sys/bus/amba/devices/*/uevent: an arm64 PL030 RTC shows there even
where the kernel has no driver for it), ACPI ids (QEMU0001 is the ISA pvpanic, which is
on no PCI bus) and DRM connectors. Zircon: `lspci -n` and `driver list --loaded`, the
same facts through Fuchsia's own tools; its serial port is the console the commands ran
on (Zircon drives the arm64 PL011 in the kernel, so no driver lists it).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

# -- what the kinds are -----------------------------------------------------------------------

# virtio device type ids (virtio spec 1.2, section 5) -> the environments.json device name.
# Types the configuration vocabulary has no name for keep a descriptive one, so a stray
# device is still reported by what it is.
VIRTIO_KINDS: dict[int, str] = {
    1: "virtio-net",
    2: "virtio-blk",
    3: "virtio-console",
    4: "virtio-rng",
    5: "virtio-balloon",
    8: "virtio-scsi",
    9: "virtio-9p",
    16: "virtio-gpu",
    18: "virtio-input",
    19: "virtio-vsock",
    20: "virtio-crypto",
    24: "virtio-mem",
    25: "virtio-sound",
    26: "virtio-fs",
    27: "virtio-pmem",
}

VIRTIO_VENDOR = 0x1AF4
# Transitional (legacy) virtio PCI device ids; modern ones are 0x1040 + type.
_LEGACY_VIRTIO_IDS: dict[int, int] = {
    0x1000: 1, 0x1001: 2, 0x1002: 5, 0x1003: 3, 0x1004: 8, 0x1005: 4, 0x1009: 9,
}
PVPANIC_PCI = (0x1B36, 0x0011)
PVPANIC_ACPI_HID = "QEMU0001"
XHCI_CLASS = 0x0C0330  # serial bus controller, USB, programming interface xHCI

# AMBA peripheral ids (the low 20 bits, as Linux matches them) -> (kind, model, chipset).
AMBA_KINDS: dict[int, tuple[str, str, bool]] = {
    0x00041011: ("serial", "PL011", False),
    0x00041030: ("rtc", "PL030", False),
    0x00041031: ("rtc", "PL031", False),
    0x00041061: ("gpio", "PL061", True),  # QEMU virt's GPIO controller: the board's
}
AMBA_ID_MASK = 0x000FFFFF

# The machine itself, not a peripheral: q35's ICH9 functions that -nodefaults keeps.
# (Bridges of every kind, class 0x06, are chipset too; see classify_pci.)
CHIPSET_PCI: dict[tuple[int, int], str] = {
    (0x8086, 0x2922): "ICH9 AHCI controller (q35)",
    (0x8086, 0x2930): "ICH9 SMBus controller (q35)",
}


def virtio_kind(vtype: int) -> str:
    return VIRTIO_KINDS.get(vtype, f"virtio-type-{vtype}")


def classify_pci(vendor: int, device: int, klass: int) -> tuple[str, bool]:
    """(kind, is_chipset) of one PCI function. `klass` is the 24-bit class code."""
    if vendor == VIRTIO_VENDOR and 0x1000 <= device <= 0x107F:
        vtype = device - 0x1040 if device >= 0x1040 else _LEGACY_VIRTIO_IDS.get(device)
        if vtype is not None:
            return virtio_kind(vtype), False
    if (vendor, device) == PVPANIC_PCI:
        return "pvpanic", False
    if klass == XHCI_CLASS:
        return "xhci", False
    if klass >> 16 == 0x06:
        return "bridge", True
    if (vendor, device) in CHIPSET_PCI:
        return "chipset", True
    return f"pci-{vendor:04x}:{device:04x}", False


# -- the inventory ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    """One device as the guest reported it: its kind and where the evidence came from."""

    kind: str
    source: str  # "pci", "virtio", "tty", "rtc", "acpi", "driver"
    detail: str
    chipset: bool = False


@dataclasses.dataclass(frozen=True)
class Inventory:
    devices: tuple[Seen, ...]
    connectors: tuple[tuple[str, str], ...] = ()  # (DRM connector, status)
    drivers: tuple[str, ...] = ()  # Zircon: loaded driver names

    def kinds(self) -> frozenset[str]:
        return frozenset(d.kind for d in self.devices if not d.chipset)

    def count(self, kind: str) -> int:
        """How many of `kind`: the largest count any one source gives.

        A virtio PCI device is seen twice (as a PCI function and as a virtio device);
        taking the per-source maximum counts it once and still counts a device whose
        driver did not bind (PCI only) or that sits on virtio-mmio (virtio only).
        """
        per_source = Counter(d.source for d in self.devices if d.kind == kind)
        return max(per_source.values(), default=0)

    def evidence(self, kind: str) -> list[str]:
        return [f"{d.source} {d.detail}" for d in self.devices if d.kind == kind]

    def describe(self) -> str:
        """Everything seen, one kind per entry: what a failure message shows."""
        kinds = sorted(self.kinds())
        return "; ".join(f"{k} ({', '.join(self.evidence(k))})" for k in kinds) or "nothing"


# -- Linux --------------------------------------------------------------------------------------

# One process, every fact as `path:value`: grep -H prints the file before each line. Globs
# that match nothing stay literal and grep complains on stderr, which is dropped; the exit
# status (2 when any glob matched nothing) is therefore meaningless and not checked.
LINUX_SOURCES = (
    "/sys/bus/pci/devices/*/vendor",
    "/sys/bus/pci/devices/*/device",
    "/sys/bus/pci/devices/*/class",
    "/sys/bus/virtio/devices/*/device",
    "/proc/tty/driver/*",
    "/sys/class/rtc/*/name",
    "/sys/bus/amba/devices/*/uevent",
    "/sys/bus/acpi/devices/*/hid",
    "/sys/class/drm/*/status",
)
LINUX_COMMAND = "grep -H . " + " ".join(LINUX_SOURCES) + " 2>/dev/null"

_PCI = re.compile(r"^/sys/bus/pci/devices/(?P<bdf>[^/\s]+)/(?P<attr>vendor|device|class)"
                  r":(?P<value>0x[0-9a-fA-F]+)\s*$")
_VIRTIO = re.compile(r"^/sys/bus/virtio/devices/(?P<dev>[^/\s]+)/device:(?P<value>0x[0-9a-fA-F]+)")
_TTY = re.compile(r"^/proc/tty/driver/(?P<driver>[^:/\s]+):(?P<line>\d+): uart:(?P<uart>\S+)"
                  r"(?P<rest>.*)$")
_RTC = re.compile(r"^/sys/class/rtc/(?P<rtc>rtc\d+)/name:(?P<name>.+?)\s*$")
_AMBA = re.compile(r"^/sys/bus/amba/devices/(?P<dev>[^/\s]+)/uevent:(?P<key>AMBA_ID|DRIVER)="
                   r"(?P<value>\S+)")
_ACPI = re.compile(r"^/sys/bus/acpi/devices/(?P<dev>[^/\s]+)/hid:(?P<hid>\S+)")
_DRM = re.compile(r"^/sys/class/drm/(?P<conn>card\d+-[^/\s]+)/status:(?P<status>\S+)")
_UART_WHERE = re.compile(r"\b(?:port|mmio):(\S+)")
# /proc/tty/driver/<name> -> the device node prefix of that driver's ports.
_TTY_PREFIX = {"serial": "ttyS", "ttyAMA": "ttyAMA"}


def parse_linux(text: str) -> Inventory:
    """The output of LINUX_COMMAND -> what the guest has. Lines it does not know are ignored
    (console noise cannot add a device; it can only fail to remove one)."""
    pci: dict[str, dict[str, int]] = {}
    amba: dict[str, dict[str, str]] = {}
    devices: list[Seen] = []
    connectors: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip("\r")
        if m := _PCI.match(line):
            pci.setdefault(m["bdf"], {})[m["attr"]] = int(m["value"], 16)
        elif m := _VIRTIO.match(line):
            vtype = int(m["value"], 16)
            devices.append(Seen(virtio_kind(vtype), "virtio", f"{m['dev']} type {vtype}"))
        elif m := _TTY.match(line):
            if m["uart"].lower() == "unknown":
                continue  # a port the driver reserves with no hardware behind it
            where = _UART_WHERE.search(m["rest"])
            name = _TTY_PREFIX.get(m["driver"], m["driver"]) + m["line"]
            detail = f"{name} {m['uart']}" + (f" at {where[1]}" if where else "")
            devices.append(Seen("serial", "tty", detail))
        elif m := _RTC.match(line):
            devices.append(Seen("rtc", "rtc", f"{m['rtc']} {m['name']}"))
        elif m := _AMBA.match(line):
            amba.setdefault(m["dev"], {})[m["key"]] = m["value"]
        elif m := _ACPI.match(line):
            if m["hid"] == PVPANIC_ACPI_HID:
                devices.append(Seen("pvpanic", "acpi", f"{m['dev']} (ISA pvpanic)"))
        elif m := _DRM.match(line):
            connectors.append((m["conn"], m["status"]))
    for bdf, attrs in sorted(pci.items()):
        if not {"vendor", "device"} <= attrs.keys():
            continue
        vendor, device, klass = attrs["vendor"], attrs["device"], attrs.get("class", 0)
        kind, chipset = classify_pci(vendor, device, klass)
        devices.append(Seen(kind, "pci", f"{bdf} [{vendor:04x}:{device:04x}] class {klass:06x}",
                            chipset=chipset))
    for dev, uevent in sorted(amba.items()):
        if "AMBA_ID" not in uevent:
            continue
        try:
            periphid = int(uevent["AMBA_ID"], 16)
        except ValueError:
            continue
        kind, model, chipset = AMBA_KINDS.get(periphid & AMBA_ID_MASK,
                                              (f"amba-{periphid:08x}", "unknown", False))
        driver = f"driver {uevent['DRIVER']}" if "DRIVER" in uevent else "no driver"
        devices.append(Seen(kind, "amba", f"{dev} {model} (AMBA id {periphid:08x}, {driver})",
                            chipset=chipset))
    return Inventory(tuple(devices), tuple(connectors))


# -- Zircon ---------------------------------------------------------------------------------

ZIRCON_LSPCI = "lspci -n"
ZIRCON_DRIVERS = "driver list --loaded"

# Fuchsia's lspci (src/devices/pci/bin/lspci) prints, with -n:
#   BB:DD.F <class name> [CCSS]: <vendor device name> [VVVV:DDDD] (rev RR)
# The class name (from pci.ids) ends in "(XHCI)" for an xHCI controller; it is the only
# place the programming interface shows, since the numeric class is base and sub only.
_LSPCI = re.compile(r"^(?P<bdf>[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) (?P<cname>[^\[]*?)\s*"
                    r"\[(?P<cls>[0-9a-f]{4})\]:.*?\[(?P<vid>[0-9a-f]{4}):(?P<did>[0-9a-f]{4})\]"
                    r"(?:\s+\(rev [0-9a-f]{2}\))?\s*$", re.IGNORECASE)
# A driver in `driver list`: a component URL's `#meta/NAME.cm`, or an old DFv1 `NAME.so`.
_DRIVER = re.compile(r"(?:#meta/|/driver/)(?P<name>[\w.-]+?)\.(?:cm|so)\b")
# Drivers that stand for a device lspci cannot show (no PCI function behind it), or that
# confirm a PCI one is driven. Names are the component names in Fuchsia's tree.
ZIRCON_DRIVER_KINDS: dict[str, str] = {
    "intel-rtc": "rtc",
    "pl031-rtc": "rtc",
    "uart16550": "serial",
    "virtio_block": "virtio-blk",
    "virtio_netdevice": "virtio-net",
    "virtio_ethernet": "virtio-net",
    "virtio_rng": "virtio-rng",
    "virtio_console": "virtio-console",
    "virtio_socket": "virtio-vsock",
    "virtio_input": "virtio-input",
    "xhci": "xhci",
}


def parse_zircon(lspci: str, drivers: str = "", *, console: bool = True) -> Inventory:
    """`lspci -n` and `driver list --loaded` output -> what the Zircon guest has.

    `console`: the output came over the guest's serial console, which is a UART (on
    arm64 Zircon drives its PL011 in the kernel, so no driver lists it); that is the
    evidence for `serial` unless a UART driver is listed too.
    """
    devices: list[Seen] = []
    if console:
        devices.append(Seen("serial", "console", "the console these commands ran on"))
    for raw in lspci.splitlines():
        line = _strip_klog(raw)
        m = _LSPCI.match(line)
        if m is None:
            continue
        klass = int(m["cls"], 16) << 8
        if "xhci" in m["cname"].lower():
            klass |= XHCI_CLASS & 0xFF
        vendor, device = int(m["vid"], 16), int(m["did"], 16)
        kind, chipset = classify_pci(vendor, device, klass)
        devices.append(Seen(kind, "pci", f"{m['bdf']} [{vendor:04x}:{device:04x}] "
                                         f"class {m['cls']}", chipset=chipset))
    names: list[str] = []
    for raw in drivers.splitlines():
        for m in _DRIVER.finditer(_strip_klog(raw)):
            name = m["name"]
            names.append(name)
            driven = ZIRCON_DRIVER_KINDS.get(name)
            if driven is not None:
                devices.append(Seen(driven, "driver", name))
    return Inventory(tuple(devices), drivers=tuple(names))


def split_transcript(text: str) -> dict[str, str]:
    """A saved transcript (`$ COMMAND` lines, each followed by its output) -> {command: output}."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("$ "):
            current = sections.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return {cmd: "\n".join(lines) for cmd, lines in sections.items()}


def parse_zircon_transcript(text: str) -> Inventory:
    """Re-judge a saved Zircon `enumeration.txt` without the guest."""
    sections = split_transcript(text)
    return parse_zircon(sections.get(ZIRCON_LSPCI, ""), sections.get(ZIRCON_DRIVERS, ""))


ZIRCON_NODES = "driver list-devices --verbose"
_MONIKER = re.compile(r"^Moniker\s*: (?P<moniker>\S+)\s*$")
_NODE_DRIVER = re.compile(r"^Driver\s*: .*\(quarantined\)\s*$")


@dataclasses.dataclass(frozen=True)
class ZirconNodes:
    """The driver manager's nodes: the ones that count, and the quarantined ones."""

    monikers: frozenset[str]
    quarantined: frozenset[str] = frozenset()


def parse_zircon_nodes(text: str) -> ZirconNodes:
    """`driver list-devices --verbose` output -> its node monikers (kernel lines ignored)."""
    monikers: set[str] = set()
    quarantined: set[str] = set()
    current: str | None = None
    for raw in text.splitlines():
        line = _strip_klog(raw)
        if m := _MONIKER.match(line):
            current = m["moniker"]
            monikers.add(current)
        elif current is not None and _NODE_DRIVER.match(line):
            quarantined.add(current)
    return ZirconNodes(frozenset(monikers - quarantined), frozenset(quarantined))


_KLOG = re.compile(r"^\[\d+\.\d+\] \d+[.:]\d+> ")


def _strip_klog(line: str) -> str:
    return _KLOG.sub("", line.strip("\r"))
