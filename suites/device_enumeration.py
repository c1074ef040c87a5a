"""Device enumeration: every virtual peripheral the environment promises shows up in the guest.

What is expected is `Guest.expected_devices()`: the environment's device configuration plus
what the engine always adds (crosvm's pvpanic, RTC and UARTs). What is seen comes from the
guest itself, in one command whose output a pure parser turns into device kinds, so a
failure can be re-judged from the saved text (`enumeration.txt` in the test's folder)
without booting anything. On Linux guests, the devices the VMM always adds must also be the
ones that VMM really presents (harness/expected_devices.py): crosvm's pvpanic is the PCI
function 1b36:0011, its arm64 UARTs are 8250s (ttyS) and its arm64 RTC a PL030, so a
PL011 or an ISA pvpanic is not crosvm's machine.

Linux: PCI functions (vendor, device, class from /sys/bus/pci/devices), virtio devices by
type (/sys/bus/virtio/devices/*/device), UARTs that the serial core found hardware behind
(/proc/tty/driver/*), RTCs (/sys/class/rtc/*/name), AMBA devices by their peripheral id
and bound driver (/sys/bus/amba/devices/*/uevent: an arm64 PL030 RTC shows there even
where the kernel has no driver for it), ACPI ids (QEMU0001 is the ISA pvpanic, which is
on no PCI bus) and DRM connectors. Zircon: `lspci -n` and
`driver list --loaded`, the same facts through Fuchsia's own tools; its serial port is
the console the commands ran on (Zircon drives the arm64 PL011 in the kernel, so no
driver lists it), and QEMU's ISA pvpanic on x86 is invisible to both tools, so it is
reported missing there rather than assumed. Zircon also gets Fuchsia's own
device-enumeration test: the driver manager's node monikers (`driver list-devices
--verbose`) against the board's list, one `node.MONIKER` case each (QEMU x64 and arm64
lists from Fuchsia; the crosvm x64 list is the project's own, from crosvm's device model).

Judgement, one JUnit case per device kind:

- `present.KIND` for every expected kind: missing fails, with what was seen instead; so
  does a device the VMM always adds seen only as some other model of that kind.
- `absent.KIND` for every kind the configuration lists under `absent`: seeing it fails
  (crosvm's `--no-rng`, `--no-balloon`, `--no-usb` must really remove the device).
- Anything else seen is reported in a note and the `unexpected_devices` property, not
  failed: the configuration did not forbid it. Chipset devices (host and ISA bridges,
  q35's AHCI and SMBus functions) are the machine, not peripherals, and are not listed.
- A configured `count` (two UARTs, two disks) that the guest does not reach is reported,
  not failed: QEMU 7.2's arm64 `virt` board has a single non-secure PL011 and silently
  drops a second `-serial`, so failing on it would fail every arm64 run for a limit of
  the board rather than of the guest (see the note and `count.KIND` properties).

The test only reads, so it shares the environment's guest with other read-only tests.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from harness.expected_devices import PlatformDevice, platform
from harness.suite import Requirements, TestContext, guest_test

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
    for dev, attrs in sorted(amba.items()):
        if "AMBA_ID" not in attrs:
            continue
        try:
            periphid = int(attrs["AMBA_ID"], 16)
        except ValueError:
            continue
        kind, model, chipset = AMBA_KINDS.get(periphid & AMBA_ID_MASK,
                                              (f"amba-{periphid:08x}", "unknown", False))
        driver = f"driver {attrs['DRIVER']}" if "DRIVER" in attrs else "no driver"
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
            kind = ZIRCON_DRIVER_KINDS.get(name)
            if kind is not None:
                devices.append(Seen(kind, "driver", name))
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


# -- Zircon: Fuchsia's device-enumeration test -------------------------------------------
#
# zircon/system/utest/device-enumeration (common.cc, boards/*.cc) asks the driver manager
# for every node (fuchsia.driver.development/Manager.GetNodeInfo, after WaitForBootup) and
# requires each moniker of its board's list to be among them, exactly (VerifyNodes: a
# missing node fails; nodes the list does not name are printed, not failed; a quarantined
# node "exists but has failed to start successfully" and does not count). The board comes
# from the board name there; here from the environment, which says what machine it is.
# `driver list-devices --verbose` (src/devices/bin/driver_tools, list_devices) prints the
# same GetNodeInfo nodes, with their moniker and whether they are quarantined.

ZIRCON_NODES = "driver list-devices --verbose"

ZIRCON_BOARD_NODES: dict[str, tuple[str, ...]] = {
    # boards/qemu_x64.cc at 9e8351f5a6bac87d9b82f1f36c21cee4caea34f0 (the i8042 nodes are
    # commented out there): QEMU's q35 board, "Standard PC (Q35 + ICH9, 2009)".
    "qemu-x64": ("acpi", "PCI0.bus.00_1f_2.00_1f_2.ahci"),
    # boards/qemu_arm64.cc at the same commit: QEMU's virt board, "qemu-arm64".
    "qemu-arm64": ("qemu-bus", "pl031.rtc", "pci.00_00_0_"),
    # The project's own list, not Fuchsia's (Fuchsia has no crosvm board in this test),
    # written from crosvm's device model at f1e797a: x86_64/src/lib.rs always builds ACPI
    # tables (create_acpi_tables), hence the board's "acpi" node as on QEMU; its DSDT names
    # the PCI root `_SB_.PC00` (setup_acpi_devices) where q35's is PCI0, so QEMU's
    # "PCI0.bus" ancestor of the AHCI node is "PC00.bus" here; crosvm has no ICH9, so no
    # AHCI node. Devices under the bus sit at slots that depend on the command line and
    # are judged by kind (present.*) instead.
    "crosvm-x64": ("acpi", "PC00", "PC00.bus"),
}
_ZIRCON_BOARDS = {("qemu", "x86_64"): "qemu-x64", ("qemu", "arm64"): "qemu-arm64",
                  ("crosvm", "x86_64"): "crosvm-x64"}

_MONIKER = re.compile(r"^Moniker\s*: (?P<moniker>\S+)\s*$")
_NODE_DRIVER = re.compile(r"^Driver\s*: .*\(quarantined\)\s*$")


def zircon_board(engine: str, arch: str) -> str | None:
    """The board list an environment's machine is judged by (None: there is none)."""
    return _ZIRCON_BOARDS.get((engine, arch))


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


def judge_zircon_nodes(nodes: ZirconNodes, required: Iterable[str]
                       ) -> tuple[list[Verdict], list[str]]:
    """VerifyNodes: a case per required moniker; the nodes the list does not name."""
    required = list(required)
    verdicts = []
    for moniker in required:
        if moniker in nodes.monikers:
            verdicts.append(Verdict("node", moniker, True, "found"))
        elif moniker in nodes.quarantined:
            verdicts.append(Verdict("node", moniker, False, f"node '{moniker}' not found: "
                                    f"{moniker} exists but has failed to start successfully"))
        else:
            verdicts.append(Verdict("node", moniker, False, f"node '{moniker}' not found"))
    return verdicts, sorted(nodes.monikers - set(required))


def _verify_zircon_nodes(t: TestContext, output: str, status: int) -> None:
    """Fuchsia's device-enumeration test on this environment's board list, as cases."""
    board = zircon_board(t.env.engine, t.env.arch)
    t.prop("zircon_board", board or "none")
    if status != 0:
        t.case("list-devices", False, f"`{ZIRCON_NODES}` exited {status}:\n{output[-2000:]}",
               suite="node")
        return
    nodes = parse_zircon_nodes(output)
    t.prop("zircon_nodes", len(nodes.monikers))
    if nodes.quarantined:
        t.note("nodes that exist but have failed to start successfully: "
               + ", ".join(sorted(nodes.quarantined)))
    if board is None:
        t.note(f"no node list for {t.env.engine} on {t.env.arch}: Fuchsia's test has none "
               f"for this machine and the harness has written none")
        return
    verdicts, unexpected = judge_zircon_nodes(nodes, ZIRCON_BOARD_NODES[board])
    for v in verdicts:
        t.case(v.kind, v.ok, v.message, suite=v.group)
    if unexpected:
        t.prop("zircon_unexpected_nodes", len(unexpected))
        t.note(f"Found {len(unexpected)} unexpected node(s) (reported, not failed, as "
               f"Fuchsia's test does): " + ", ".join(unexpected))


_KLOG = re.compile(r"^\[\d+\.\d+\] \d+[.:]\d+> ")


def _strip_klog(line: str) -> str:
    return _KLOG.sub("", line.strip("\r"))


# -- judgement ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One case: `group` (present or absent), the device kind, whether it passed, and the
    message a reader needs. JUnit shows it as `group.kind` under the test's classname."""

    group: str
    kind: str
    ok: bool
    message: str

    @property
    def name(self) -> str:
        return f"{self.group}.{self.kind}"


def judge(inventory: Inventory, expected: Iterable[str], absent: Iterable[str],
          models: Mapping[str, PlatformDevice] | None = None
          ) -> tuple[list[Verdict], list[str]]:
    """Cases for expected and forbidden kinds, plus the unexpected kinds (reported only).

    `models`: for the kinds the VMM always adds, the device it really presents; then one
    piece of the guest's evidence must be that device (Linux inventories only).
    """
    expected = sorted(set(expected))
    absent = sorted(set(absent))
    models = models or {}
    seen = inventory.kinds()
    verdicts = []
    for kind in expected:
        evidence = inventory.evidence(kind)
        model = models.get(kind)
        if kind in seen and (model is None or any(model.matches(e) for e in evidence)):
            verdicts.append(Verdict("present", kind, True, "; ".join(evidence)))
        elif kind in seen:
            assert model is not None
            verdicts.append(Verdict("present", kind, False,
                                    f"{kind} is seen only as {'; '.join(evidence)}, which is "
                                    f"not {model.model}"))
        else:
            wanted = f" ({model.model})" if model is not None else ""
            verdicts.append(Verdict("present", kind, False,
                                    f"{kind}{wanted} is expected but the guest does not show "
                                    f"it; it shows: {inventory.describe()}"))
    for kind in absent:
        if kind in seen:
            verdicts.append(Verdict("absent", kind, False,
                                    f"{kind} must be absent but the guest shows it: "
                                    f"{'; '.join(inventory.evidence(kind))}"))
        else:
            verdicts.append(Verdict("absent", kind, True, f"{kind} is not there, as required"))
    unexpected = sorted(seen - set(expected) - set(absent))
    return verdicts, unexpected


@guest_test(requires=Requirements(profiles=("linux", "zircon")), shares_guest=True,
            timeout_s=120)
async def test_devices(t: TestContext) -> None:
    """Every expected device is enumerated by the guest; forbidden ones are not."""
    g = t.guest
    if t.env.profile == "zircon":
        lspci = await g.run(ZIRCON_LSPCI, timeout=30)
        drivers = await g.run(ZIRCON_DRIVERS, timeout=30)
        nodes = await g.run(ZIRCON_NODES, timeout=60)
        raw = (f"$ {ZIRCON_LSPCI}\n{lspci.output}\n$ {ZIRCON_DRIVERS}\n{drivers.output}\n"
               f"$ {ZIRCON_NODES}\n{nodes.output}\n")
        _verify_zircon_nodes(t, nodes.output, nodes.status)
        assert lspci.status == 0, f"`{ZIRCON_LSPCI}` exited {lspci.status}:\n{lspci.output}"
        if drivers.status != 0:
            t.note(f"`{ZIRCON_DRIVERS}` exited {drivers.status}; only PCI devices are judged")
        inventory = parse_zircon(lspci.output, drivers.output if drivers.status == 0 else "")
    else:
        result = await g.run(LINUX_COMMAND, timeout=30)
        raw = result.output
        inventory = parse_linux(raw)
    (t.folder / "enumeration.txt").write_text(raw)
    assert inventory.devices, f"the enumeration printed nothing usable:\n{raw[-2000:]}"

    expected = g.expected_devices()
    # The evidence strings the models match are the Linux parser's; Zircon's tools name
    # drivers, not models, so there only the kinds are judged.
    models = platform(t.env.engine, t.env.arch) if t.env.profile != "zircon" else {}
    models = {k: m for k, m in models.items() if k in g.engine.implicit_devices(t.env)}
    verdicts, unexpected = judge(inventory, expected, t.env.devices.absent, models)
    for v in verdicts:
        t.case(v.kind, v.ok, v.message, suite=v.group)

    t.prop("devices_seen", ",".join(sorted(inventory.kinds())))
    if unexpected:
        t.prop("unexpected_devices", ",".join(unexpected))
        t.note("seen but not configured (reported, not failed): " + "; ".join(
            f"{k} ({', '.join(inventory.evidence(k))})" for k in unexpected))
    for kind in sorted(expected):
        want = t.env.devices.option(kind, "count")
        if want is None:
            continue
        have = inventory.count(kind)
        t.prop(f"count.{kind}", f"{have}/{want}")
        if have < int(want):
            t.note(f"{kind}: configured count {want}, the guest shows {have} "
                   f"({'; '.join(inventory.evidence(kind)) or 'none'})")
    if inventory.connectors:
        t.prop("drm_connectors", ",".join(f"{c}={s}" for c, s in inventory.connectors))
    failed = [v for v in verdicts if not v.ok]
    if failed:
        t.note("what the guest enumerated: " + inventory.describe())

