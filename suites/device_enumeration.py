"""Device enumeration: every virtual peripheral the environment promises shows up in the guest.

What is expected is `Guest.expected_devices()`: the environment's device configuration plus
what the engine always adds (crosvm's pvpanic, RTC and UARTs). What is seen comes from the
guest itself, in one command whose output a pure parser turns into device kinds, so a
failure can be re-judged from the saved text (`enumeration.txt` in the test's folder)
without booting anything. On Linux guests, the devices the VMM always adds must also be the
ones that VMM really presents (harness/expected_devices.py): crosvm's pvpanic is the PCI
function 1b36:0011, its arm64 UARTs are 8250s (ttyS) and its arm64 RTC a PL030, so a
PL011 or an ISA pvpanic is not crosvm's machine.

How each guest OS lists its devices, and the parsers, are harness/inventory.py's. QEMU's
ISA pvpanic on x86 is invisible to Zircon's tools, so it is reported missing there rather
than assumed. Zircon also gets Fuchsia's own device-enumeration test: the driver manager's
node monikers (`driver list-devices --verbose`) against the board's list, one
`node.MONIKER` case each (QEMU x64 and arm64 lists from Fuchsia; the crosvm x64 list is the
project's own, from crosvm's device model).

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
from collections.abc import Iterable, Mapping

from harness.expected_devices import PlatformDevice, platform
from harness.inventory import (
    LINUX_COMMAND,
    ZIRCON_DRIVERS,
    ZIRCON_LSPCI,
    ZIRCON_NODES,
    Inventory,
    ZirconNodes,
    parse_linux,
    parse_zircon,
    parse_zircon_nodes,
)
from harness.suite import Requirements, TestContext, guest_test

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


def zircon_board(engine: str, arch: str) -> str | None:
    """The board list an environment's machine is judged by (None: there is none)."""
    return _ZIRCON_BOARDS.get((engine, arch))


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
    models = {k: m for k, m in models.items() if k in g.implicit_devices()}
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

