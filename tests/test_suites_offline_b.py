"""device_enumeration and peripherals without a guest: parsers on real captures, suites on a fake.

tests/fixtures/linux/enumeration holds what the enumeration command really printed in each
environment (QEMU and the crosvm double); tests/fixtures/zircon/enumeration holds constructed
`lspci -n` / `driver list --loaded` transcripts (see its README). The suite tests drive the real
test functions against a scripted guest, so the judging logic (which case fails, when the
balloon is deflated, what the host server saw) is checked where a real guest cannot be made
to misbehave on demand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import ipaddress
import os
import re
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness import environments, inventory
from harness.app import requirement_check
from harness.console import CommandResult
from harness.disks import DISK_PATTERN_OFFSET, make_disks
from harness.engines import crosvm as crosvm_engine
from harness.engines.base import Engine, RunPaths
from harness.engines.crosvm import CrosvmEngine
from harness.engines.qemu import QemuEngine
from harness.environments import Environment
from harness.errors import HarnessError
from harness.exits import ExitInfo, ExitKind
from harness.hostcpu import session_cpu_seconds
from harness.hostnet import tap_address
from harness.results import Status
from harness.spec import parse_specs
from harness.suite import Skip, load_suite
from harness.suite import TestContext as Context  # not "Test*": pytest would collect it
from suites import device_enumeration as de
from suites import peripherals as pe

FIXTURES = Path(__file__).parent / "fixtures"
LINUX_ENUM = FIXTURES / "linux" / "enumeration"
ZIRCON_ENUM = FIXTURES / "zircon" / "enumeration"
ENVS = environments.load()
ENGINES: dict[str, Engine] = {"qemu": QemuEngine(), "crosvm": CrosvmEngine()}
FULL = {"pvpanic", "rtc", "serial", "virtio-balloon", "virtio-blk", "virtio-gpu", "virtio-net",
        "virtio-rng", "xhci"}

Handler = Callable[[str], Any]


class FakeGuest:
    """The part of harness.guest.Guest the two suites use, answering from a handler.

    The handler gets each command line and returns its output, or (status, output), or an
    awaitable of either (the network test's handler really connects to the host server).
    """

    def __init__(self, env: Environment, handler: Handler, *, disks: tuple[Path, ...] = (),
                 capabilities: dict[str, Any] | None = None, workdir: Path = Path("/nowhere")
                 ) -> None:
        self.env = env
        self.engine = ENGINES[env.engine]
        self.handler = handler
        self.paths = RunPaths(workdir=workdir, disks=disks)
        self.capabilities = capabilities if capabilities is not None else {}
        self.image = types.SimpleNamespace(name="fake", kernel_version="6.1.0-fake")
        self.vmm = None
        self.commands: list[str] = []
        self.balloon_calls: list[int] = []
        self.balloon_held = 0
        self.balloon_error: Exception | None = None
        self.shut_down = False

    async def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        self.commands.append(command)
        out = self.handler(command)
        if inspect.isawaitable(out):
            out = await out
        status, output = out if isinstance(out, tuple) else (0, out)
        return CommandResult(command, status, output, 0.0)

    async def check(self, command: str, timeout: float = 60.0) -> str:
        result = await self.run(command, timeout)
        assert result.status == 0, f"`{command}` exited {result.status}"
        return result.output

    def expected_devices(self) -> frozenset[str]:
        return frozenset(self.env.devices.devices) | self.implicit_devices()

    def implicit_devices(self) -> frozenset[str]:
        return self.engine.implicit_devices(self.env)

    async def balloon(self, size_bytes: int) -> None:
        self.balloon_calls.append(size_bytes)
        if self.balloon_error is not None and size_bytes:
            raise self.balloon_error
        self.balloon_held = size_bytes

    async def balloon_stats(self) -> dict[str, Any]:
        return {"balloon_actual": self.balloon_held}

    async def shutdown(self, timeout: float = 120.0) -> ExitInfo:
        self.shut_down = True
        return ExitInfo(ExitKind.STOP, 0, "guest powered off")


def ctx(guest: FakeGuest, folder: Path, **params: Any) -> Context:
    return Context(guest=guest, env=guest.env, spec=None, folder=folder, params=params)


def cases(t: Context) -> dict[str, Status]:
    return {f"{c.suite}.{c.name}": c.status for c in t.cases}


def failed(t: Context) -> set[str]:
    return {name for name, status in cases(t).items() if status == Status.FAIL}


def zircon_env(name: str) -> Environment:
    """A Zircon variant of an environments.json environment (none is defined: no image)."""
    return dataclasses.replace(ENVS.get(name), profile="zircon")


# -- device_enumeration: the Linux parser on real captures -----------------------------------


@pytest.mark.parametrize(("fixture", "kinds", "serial_ports"), [
    ("qemu-x64", FULL, 2),
    ("qemu-arm64", FULL, 1),  # QEMU 7.2 virt: a single PL011, whatever -serial says
    ("qemu-x64-minimal", {"pvpanic", "rtc", "serial"}, 1),
    ("crosvm-x64-double", FULL, 4),  # crosvm always has COM1..COM4
    ("crosvm-arm64-double", FULL, 1),
    ("crosvm-x64-minimal-double", {"pvpanic", "rtc", "serial"}, 4),
])
def test_parse_linux_captures(fixture: str, kinds: set[str], serial_ports: int) -> None:
    inv = inventory.parse_linux((LINUX_ENUM / f"{fixture}.txt").read_text())
    assert inv.kinds() == kinds
    assert inv.count("serial") == serial_ports
    # Chipset functions are seen but never count as peripherals.
    assert any(d.chipset for d in inv.devices)
    assert not {k for k in inv.kinds() if k.startswith("pci-")}
    # A virtio device is seen on PCI and on the virtio bus, and counted once.
    if "virtio-blk" in kinds:
        assert inv.count("virtio-blk") == 1
        assert {d.source for d in inv.devices if d.kind == "virtio-blk"} == {"pci", "virtio"}
        assert inv.connectors == (("card0-Virtual-1", "connected"),)


def test_parse_linux_names_the_evidence() -> None:
    x64 = inventory.parse_linux((LINUX_ENUM / "qemu-x64.txt").read_text())
    assert x64.evidence("pvpanic") == ["acpi QEMU0001:00 (ISA pvpanic)"]
    assert x64.evidence("rtc") == ["rtc rtc0 rtc_cmos 00:04"]
    assert "tty ttyS1 16550A at 000002F8" in x64.evidence("serial")
    arm = inventory.parse_linux((LINUX_ENUM / "qemu-arm64.txt").read_text())
    assert arm.evidence("pvpanic") == ["pci 0000:00:06.0 [1b36:0011] class 088000"]
    assert arm.evidence("serial") == ["tty ttyAMA0 PL011 at 0x09000000"]
    assert arm.evidence("rtc") == ["rtc rtc0 rtc-pl031 9010000.pl031"]


def test_parse_linux_ignores_console_noise_and_ports_without_hardware() -> None:
    text = ("[   12.5] virtio_blk virtio0: [vda] 131072 512-byte logical blocks\r\n"
            "/proc/tty/driver/serial:2: uart:unknown port:000003E8 irq:4\r\n"
            "/sys/bus/pci/devices/0000:00:09.0/vendor:0x1af4\r\n"  # no device id: not judged
            "/sys/bus/virtio/devices/virtio0/device:0x0002\r\n"
            "garbage /sys/bus/virtio/devices/virtio9/device:0x0001\n")
    inv = inventory.parse_linux(text)
    assert inv.kinds() == {"virtio-blk"}
    assert inv.count("serial") == 0


@pytest.mark.parametrize(("vendor", "device", "klass", "kind", "chipset"), [
    (0x1AF4, 0x1001, 0x010000, "virtio-blk", False),  # transitional
    (0x1AF4, 0x1042, 0x018000, "virtio-blk", False),  # modern: 0x1040 + type 2
    (0x1AF4, 0x1053, 0x078000, "virtio-vsock", False),
    (0x1AF4, 0x1052, 0x098000, "virtio-input", False),
    (0x1AF4, 0x1063, 0x00FF00, "virtio-type-35", False),
    (0x1B36, 0x0011, 0x088000, "pvpanic", False),
    (0x1B36, 0x000D, 0x0C0330, "xhci", False),
    (0x8086, 0x24CD, 0x0C0320, "pci-8086:24cd", False),  # an EHCI is not an xHCI
    (0x8086, 0x29C0, 0x060000, "bridge", True),
    (0x1B36, 0x0008, 0x060000, "bridge", True),
    (0x8086, 0x2922, 0x010601, "chipset", True),
    (0x1234, 0x1111, 0x030000, "pci-1234:1111", False),
])
def test_classify_pci(vendor: int, device: int, klass: int, kind: str, chipset: bool) -> None:
    assert inventory.classify_pci(vendor, device, klass) == (kind, chipset)


# -- device_enumeration: judging -----------------------------------------------------------


def expected_for(env_name: str) -> frozenset[str]:
    env = ENVS.get(env_name)
    return frozenset(env.devices.devices) | ENGINES[env.engine].implicit_devices(env)


@pytest.mark.parametrize(("env_name", "fixture"), [
    ("qemu-x64", "qemu-x64"), ("qemu-arm64", "qemu-arm64"),
    ("qemu-x64-minimal", "qemu-x64-minimal"), ("crosvm-x64", "crosvm-x64-double"),
    ("crosvm-arm64", "crosvm-arm64-double"), ("crosvm-x64-minimal", "crosvm-x64-minimal-double"),
])
def test_every_capture_satisfies_its_environment(env_name: str, fixture: str) -> None:
    inv = inventory.parse_linux((LINUX_ENUM / f"{fixture}.txt").read_text())
    env = ENVS.get(env_name)
    verdicts, unexpected = de.judge(inv, expected_for(env_name), env.devices.absent)
    assert [v.name for v in verdicts if not v.ok] == []
    assert unexpected == []
    names = {v.name for v in verdicts}
    assert {f"present.{k}" for k in expected_for(env_name)} <= names
    assert {f"absent.{k}" for k in env.devices.absent} <= names


def test_devices_the_minimal_config_forbids_fail() -> None:
    # What a crosvm run without --no-rng/--no-balloon/--no-usb would show.
    inv = inventory.parse_linux((LINUX_ENUM / "qemu-x64.txt").read_text())
    env = ENVS.get("crosvm-x64-minimal")
    verdicts, unexpected = de.judge(inv, expected_for("crosvm-x64-minimal"), env.devices.absent)
    bad = {v.name: v.message for v in verdicts if not v.ok}
    assert set(bad) == {f"absent.{k}" for k in env.devices.absent}
    assert "pci 0000:00:03.0 [1af4:1005]" in bad["absent.virtio-rng"]
    assert unexpected == []


def test_missing_devices_fail_with_what_was_seen() -> None:
    inv = inventory.parse_linux((LINUX_ENUM / "qemu-x64-minimal.txt").read_text())
    verdicts, _ = de.judge(inv, expected_for("qemu-x64"), ())
    bad = {v.name: v.message for v in verdicts if not v.ok}
    assert set(bad) == {f"present.{k}" for k in FULL - {"pvpanic", "rtc", "serial"}}
    assert "rtc (rtc rtc0 rtc_cmos 00:03)" in bad["present.virtio-blk"]


def test_unconfigured_devices_are_reported_not_failed() -> None:
    text = (LINUX_ENUM / "qemu-x64-minimal.txt").read_text() + (
        "/sys/bus/pci/devices/0000:00:05.0/vendor:0x1af4\n"
        "/sys/bus/pci/devices/0000:00:05.0/device:0x1053\n"
        "/sys/bus/pci/devices/0000:00:05.0/class:0x078000\n")
    inv = inventory.parse_linux(text)
    verdicts, unexpected = de.judge(inv, {"pvpanic", "rtc", "serial"}, ("virtio-rng",))
    assert all(v.ok for v in verdicts)
    assert unexpected == ["virtio-vsock"]


# -- device_enumeration: Zircon (constructed transcripts) --------------------------------------


def test_zircon_lspci_and_driver_list() -> None:
    x64 = inventory.parse_zircon_transcript((ZIRCON_ENUM / "qemu-x64-full.txt").read_text())
    # The ISA pvpanic is on no bus a Zircon tool lists.
    assert x64.kinds() == FULL - {"pvpanic"}
    assert "driver xhci" in x64.evidence("xhci") and "pci 00:06.0 [1b36:000d] class 0c03" in \
        x64.evidence("xhci")
    assert x64.evidence("rtc") == ["driver intel-rtc"]
    arm = inventory.parse_zircon_transcript((ZIRCON_ENUM / "qemu-arm64-full.txt").read_text())
    assert arm.kinds() == FULL
    assert arm.evidence("serial") == ["console the console these commands ran on"]
    assert "pl031-rtc" in arm.drivers and "virtio_rng" in arm.drivers
    assert len(arm.drivers) == 7  # the kernel log line naming virtio_rng is not a driver entry
    minimal = inventory.parse_zircon_transcript((ZIRCON_ENUM / "qemu-x64-minimal.txt").read_text())
    assert minimal.kinds() == {"rtc", "serial"}
    assert sum(d.chipset for d in minimal.devices) == 4


def test_zircon_without_console_evidence_has_no_serial_from_lspci_alone() -> None:
    sections = inventory.split_transcript((ZIRCON_ENUM / "qemu-arm64-full.txt").read_text())
    inv = inventory.parse_zircon(sections["lspci -n"], console=False)
    assert "serial" not in inv.kinds() and "rtc" not in inv.kinds()


async def test_devices_suite_passes_on_a_capture(tmp_path: Path) -> None:
    text = (LINUX_ENUM / "qemu-arm64.txt").read_text()
    g = FakeGuest(ENVS.get("qemu-arm64"), lambda cmd: (2, text))  # grep's status is ignored
    t = ctx(g, tmp_path)
    await de.test_devices(t)
    assert g.commands == [inventory.LINUX_COMMAND]
    assert cases(t) == {f"present.{k}": Status.PASS for k in FULL}
    assert (tmp_path / "enumeration.txt").read_text() == text
    assert t.properties["count.serial"] == "1/2"
    assert any("configured count 2, the guest shows 1" in n for n in t.notes)


async def test_devices_suite_fails_forbidden_devices(tmp_path: Path) -> None:
    text = (LINUX_ENUM / "crosvm-x64-double.txt").read_text()
    t = ctx(FakeGuest(ENVS.get("crosvm-x64-minimal"), lambda cmd: text), tmp_path)
    await de.test_devices(t)
    assert failed(t) == {f"absent.{k}" for k in ENVS.get("crosvm-x64-minimal").devices.absent}


async def test_devices_suite_on_zircon(tmp_path: Path) -> None:
    sections = inventory.split_transcript((ZIRCON_ENUM / "qemu-x64-full.txt").read_text())
    g = FakeGuest(zircon_env("qemu-x64"), lambda cmd: sections[cmd])
    t = ctx(g, tmp_path)
    await de.test_devices(t)
    assert g.commands == ["lspci -n", "driver list --loaded", "driver list-devices --verbose"]
    assert failed(t) == {"present.pvpanic"}
    saved = inventory.parse_zircon_transcript((tmp_path / "enumeration.txt").read_text())
    assert saved.kinds() == FULL - {"pvpanic"}


async def test_devices_suite_refuses_empty_output(tmp_path: Path) -> None:
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), lambda cmd: "sh: grep: not found"), tmp_path)
    with pytest.raises(AssertionError, match="printed nothing usable"):
        await de.test_devices(t)


# -- peripherals: pure pieces --------------------------------------------------------------


def test_clock_offset_accounts_for_the_round_trip_and_whole_seconds() -> None:
    # Read at some instant in [100.2, 100.6] and truncated: 100 means 100.0..101.0.
    lo, hi = pe.clock_offset(100, 100.2, 100.6)
    assert (lo, hi) == pytest.approx((-0.6, 0.8))
    assert pe.within((lo, hi), 2.0)
    assert pe.within(pe.clock_offset(102, 100.2, 100.6), 2.0)  # at most +1.8
    assert not pe.within(pe.clock_offset(103, 100.2, 100.6), 2.0)  # at least +2.4
    assert not pe.within(pe.clock_offset(97, 100.2, 100.6), 2.0)  # at most -2.2
    assert pe.within(pe.clock_offset(98, 100.2, 100.6), 2.0)


def test_meminfo_and_which_field_shows_the_balloon() -> None:
    info = pe.parse_meminfo("MemTotal:         723412 kB\nMemFree:          668548 kB\n"
                            "MemAvailable:     617612 kB\nBuffers:               0 kB\n")
    assert info == {"MemTotal": 723412 << 10, "MemFree": 668548 << 10,
                    "MemAvailable": 617612 << 10}
    size = 128 << 20
    total_drop = {**info, "MemTotal": info["MemTotal"] - size,
                  "MemAvailable": info["MemAvailable"] - size}
    assert pe.shrunk_by(info, total_drop, size) == "MemTotal"
    oom_mode = {**info, "MemAvailable": info["MemAvailable"] - size + (4 << 20)}
    assert pe.shrunk_by(info, oom_mode, size) == "MemAvailable"
    assert pe.shrunk_by(info, {**info, "MemTotal": info["MemTotal"] - (64 << 20)}, size) is None


def test_lease_and_static_addresses() -> None:
    assert pe.parse_lease("udhcpc: lease of 10.0.2.15 obtained\n"
                          "LEASE ip=10.0.2.15 mask=24 router=10.0.2.2 server=10.0.2.2") == \
        ("10.0.2.15", 24, "10.0.2.2")
    assert pe.parse_lease("LEASE ip=10.0.2.15 mask=24 router= server=") == ("10.0.2.15", 24, "")
    assert pe.parse_lease("udhcpc: no lease, failing") is None
    assert str(pe.static_peer(ipaddress.IPv4Interface("192.168.250.1/24"))) == "192.168.250.2/24"
    assert str(pe.static_peer(ipaddress.IPv4Interface("10.1.1.254/24"))) == "10.1.1.253/24"
    with pytest.raises(ValueError, match="no room"):
        pe.static_peer(ipaddress.IPv4Interface("10.9.9.9/32"))
    assert tap_address("lo") == ipaddress.IPv4Interface("127.0.0.1/8")
    assert tap_address("harness-no-such-if") is None


def test_block_output_parsers() -> None:
    reads = pe.parse_disk_reads(
        "DISK vda 0123456789abcdef0123456789abcdef HARNESS-HOST-PATTERN qemu-x64 disk0?...\n"
        "DISK vdb d41d8cd98f00b204e9800998ecf8427e\nnoise DISK vdc zz\n")
    assert reads == {"vda": ("0123456789abcdef0123456789abcdef",
                             "HARNESS-HOST-PATTERN qemu-x64 disk0?..."),
                     "vdb": ("d41d8cd98f00b204e9800998ecf8427e", "")}
    assert pe.parse_elapsed("32+0 records in\n32+0 records out\nELAPSED 6.84 7.10 0") == \
        pytest.approx((0.26, 0))
    with pytest.raises(ValueError, match="no ELAPSED"):
        pe.parse_elapsed("dd: can't open '/dev/vdz'")
    assert pe.mb_per_s(32 << 20, 0.5) == pytest.approx(67.108864)
    assert pe.mb_per_s(32 << 20, 0.0) == pytest.approx(3355.4432)  # one /proc/uptime tick
    pattern = pe.guest_pattern("abc", 1)
    assert len(pattern) == 512 and pattern.startswith(b"HARNESS-GUEST-PATTERN abc disk1\n\0")


def test_rng_and_gpu_parsers() -> None:
    od = " fd 69 8f 70 d5 c4 0b 6d f3 62 3b 8a 06 a7 c7 e5\n 27 c2\n"
    assert pe.parse_od_bytes(od) == bytes.fromhex("fd698f70d5c40b6df3623b8a06a7c7e527c2")
    gpus, conns = pe.parse_gpu(
        "VIRTIO virtio3 0x0005 ../../../../bus/virtio/drivers/virtio_balloon\n"
        "VIRTIO virtio4 0x0010 ../../../../bus/virtio/drivers/virtio_gpu\n"
        "VIRTIO virtio5 0x0010 \n"
        "/sys/class/drm/card0-Virtual-1/status:connected\n"
        "/sys/class/drm/card0-Virtual-1/modes:1280x800\n"
        "/sys/class/drm/card0-Virtual-1/modes:1024x768\n")
    assert gpus == [("virtio4", "virtio_gpu"), ("virtio5", "")]
    assert conns == {"card0-Virtual-1": {"status": ["connected"],
                                         "modes": ["1280x800", "1024x768"]}}


def test_session_cpu_seconds_sums_the_whole_session(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: int, comm: str, sid: int, times: tuple[int, int, int, int]) -> None:
        # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime cutime cstime ...
        fields = ["S", "1", str(sid), str(sid), "0", "-1", "0", "0", "0", "0", "0",
                  *map(str, times), "20", "0"]
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields))

    stat(100, "crosvm run (x)", 100, (tick, tick, 0, 0))  # a comm with spaces and parens
    stat(101, "qemu", 100, (3 * tick, tick, tick, 0))  # cutime: a reaped child
    stat(200, "other", 200, (50 * tick, 0, 0, 0))
    (tmp_path / "self").mkdir()
    assert session_cpu_seconds(100, tmp_path) == pytest.approx(7.0)
    assert session_cpu_seconds(999, tmp_path) == 0.0
    # This process's own session, on the real /proc: at least what it has used itself.
    spent = sum(os.times()[:2])
    assert session_cpu_seconds(os.getsid(0)) >= spent - 0.05


async def test_poll_returns_at_once_or_at_the_deadline() -> None:
    calls = []

    async def probe() -> int:
        calls.append(1)
        return len(calls)

    value, ok, _ = await pe.poll(probe, lambda n: n >= 3, deadline_s=5, interval_s=0)
    assert (value, ok) == (3, True)
    value, ok, took = await pe.poll(probe, lambda n: False, deadline_s=0.05, interval_s=0.01)
    assert not ok and took >= 0.05


# -- peripherals: the tests on a fake guest ------------------------------------------------


class FakeDisks:
    """The guest side of the block test over real image files made by the runner."""

    def __init__(self, disks: list[Path], *, persist: bool = True) -> None:
        self.disks = disks
        self.persist = persist

    def __call__(self, cmd: str) -> str:
        if cmd.startswith("for d in /sys/block/vd*"):
            lines = []
            for i, path in enumerate(self.disks):
                data = path.read_bytes()[DISK_PATTERN_OFFSET:DISK_PATTERN_OFFSET + 512]
                head = re.sub(rb"[^A-Za-z0-9 ._-]", b"?", data[:60]).decode()
                lines.append(f"DISK vd{'abcd'[i]} {hashlib.md5(data).hexdigest()} {head}")
            return "\n".join(lines)
        if "ELAPSED" in cmd:
            return "32+0 records in\n32+0 records out\nELAPSED 10.00 10.50 0"
        if "HARNESS-GUEST-PATTERN" in cmd:
            for token, index, dev in re.findall(
                    r"HARNESS-GUEST-PATTERN (\w+) disk(\d+)\\n' \| dd of=/dev/vd(\w)", cmd):
                if self.persist:
                    with open(self.disks["abcd".index(dev)], "r+b") as f:
                        f.seek(pe.GUEST_PATTERN_OFFSET)
                        f.write(pe.guest_pattern(token, int(index)))
            return ""
        raise AssertionError(f"unexpected command {cmd!r}")


async def test_block_reads_host_pattern_and_host_reads_guest_pattern(tmp_path: Path) -> None:
    env = ENVS.get("qemu-x64")
    disks = make_disks(env, tmp_path)
    g = FakeGuest(env, FakeDisks(disks), disks=tuple(disks))
    t = ctx(g, tmp_path)
    await pe.test_block(t)
    assert g.shut_down
    assert cases(t) == {"host-pattern.disk0": Status.PASS, "load.write": Status.PASS,
                        "load.read": Status.PASS, "guest-pattern.disk0": Status.PASS}
    assert t.properties["blk_write_mb_s"] == "67.1"  # 32 MiB in 0.5 s of guest uptime
    assert t.properties["blk_load_mib"] == "32"
    assert any("oflag=direct" in c for c in g.commands)
    assert any("iflag=direct" in c for c in g.commands)


async def test_block_fails_when_writes_do_not_reach_the_image(tmp_path: Path) -> None:
    env = ENVS.get("qemu-x64")
    disks = make_disks(env, tmp_path)
    t = ctx(FakeGuest(env, FakeDisks(disks, persist=False), disks=tuple(disks)), tmp_path)
    await pe.test_block(t)
    assert failed(t) == {"guest-pattern.disk0"}


async def test_block_fails_when_the_guest_sees_another_pattern(tmp_path: Path) -> None:
    env = ENVS.get("qemu-x64")
    disks = make_disks(env, tmp_path)
    with open(disks[0], "r+b") as f:
        f.seek(DISK_PATTERN_OFFSET)
        f.write(b"HARNESS-HOST-PATTERN some-other-env disk0")
    t = ctx(FakeGuest(env, FakeDisks(disks), disks=tuple(disks)), tmp_path, blk_load_mib=100)
    await pe.test_block(t)
    assert failed(t) == {"host-pattern.disk0"}
    assert "some-other-env" in t.cases[0].message
    # A load that does not fit the 64 MiB disk is cut to what fits, and said so.
    assert t.properties["blk_load_mib"] == "60"
    assert any("does not fit" in n for n in t.notes)


def network_guest(*, tamper: bool = False, lease: str | None = None) -> Handler:
    """A guest whose `nc` really talks to the test's server on 127.0.0.1."""

    async def nc(cmd: str) -> str:
        port = int(re.search(r"nc -w 10 \S+ (\d+)", cmd)[1])  # type: ignore[index]
        sent = os.urandom(pe.NET_BYTES)
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(sent[:-1] + b"X" if tamper else sent)
            got = bytearray()
            with anyio.move_on_after(5):
                while True:
                    try:
                        got.extend(await stream.receive())
                    except anyio.EndOfStream:
                        break
        return (f"NC 0\n{hashlib.md5(sent).hexdigest()}  /tmp/harness-net.out\n"
                f"{hashlib.md5(bytes(got)).hexdigest()}  /tmp/harness-net.in\n")

    def handler(cmd: str) -> Any:
        if cmd.startswith("for n in /sys/class/net"):
            return "IF eth0 virtio_net\n"
        if "udhcpc" in cmd:
            assert "printf" in cmd and "/tmp/harness-udhcpc" in cmd
            return lease if lease is not None else \
                "LEASE ip=10.0.2.15 mask=24 router=10.0.2.2 server=10.0.2.2\n"
        if "nc -w" in cmd:
            return nc(cmd)
        raise AssertionError(f"unexpected command {cmd!r}")

    return handler


async def test_network_exchanges_bytes_both_ways_with_the_host(tmp_path: Path) -> None:
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), network_guest()), tmp_path)
    await pe.test_network(t)
    assert cases(t) == {"net.address": Status.PASS, "net.guest-to-host": Status.PASS,
                        "net.host-to-guest": Status.PASS}
    assert t.properties["net_address"] == "10.0.2.15/24"


async def test_network_notices_corrupted_bytes(tmp_path: Path) -> None:
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), network_guest(tamper=True)), tmp_path)
    await pe.test_network(t)
    assert failed(t) == {"net.guest-to-host"}


async def test_network_without_a_lease_fails_and_stops(tmp_path: Path) -> None:
    g = FakeGuest(ENVS.get("qemu-x64"), network_guest(lease="udhcpc: no lease, failing\n"))
    t = ctx(g, tmp_path)
    await pe.test_network(t)
    assert failed(t) == {"net.address"} and len(t.cases) == 1
    assert not any("nc -w" in c for c in g.commands)


async def test_network_on_an_unaddressed_tap_is_skipped_with_how_to_fix(tmp_path: Path) -> None:
    env = ENVS.get("crosvm-x64")
    tap = env.tap
    assert tap_address(tap) is None  # the TAP crosvm creates has no address
    t = ctx(FakeGuest(env, network_guest()), tmp_path)
    with pytest.raises(Skip, match=f"TAP '{tap}' has no IPv4 address.*ip addr add"):
        await pe.test_network(t)


def test_crosvm_network_test_is_planned_skip_when_no_tap_can_be_had(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan (not the test) skips crosvm's network test when the engine cannot give it a
    TAP: no `tap` in the device config, or a TAP this host cannot open."""
    tests = {t.full_name: t for t in load_suite("peripherals")}
    check = requirement_check(tests, ENGINES)
    spec = parse_specs([{"test": {"name": "peripherals.network", "label": "//x"},
                         "environments": [{"dimensions": {"device_type": "crosvm"}}]}], "t")[0]
    env = ENVS.get("crosvm-x64")
    no_tap = dataclasses.replace(env, devices=dataclasses.replace(
        env.devices, devices={**env.devices.devices, "virtio-net": {}}))
    assert "crosvm has no user-mode networking" in (check(spec, no_tap) or "")
    monkeypatch.setattr(crosvm_engine, "_tun_problem",
                        lambda tap: f"the TAP device '{tap}' cannot be opened here")
    assert check(spec, env) == "the TAP device 'crosvm_x86_64' cannot be opened here"
    assert check(spec, ENVS.get("qemu-x64")) is None  # QEMU's user networking needs none
    assert "has no virtio-net" in (check(spec, ENVS.get("crosvm-x64-minimal")) or "")


def clock_guest(offset_s: float, name: str = "rtc_cmos 00:04") -> Handler:
    def handler(cmd: str) -> str:
        if cmd == "cat /sys/class/rtc/rtc0/name":
            return name + "\n"
        now = int(time.time() + offset_s)
        return f"{now}\n{now}\n"
    return handler


async def test_rtc_agrees_with_the_host(tmp_path: Path) -> None:
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), clock_guest(0.0)), tmp_path)
    await pe.test_rtc(t)
    assert set(cases(t).values()) == {Status.PASS} and len(t.cases) == 3


async def test_rtc_five_seconds_off_fails_and_a_wrong_device_fails(tmp_path: Path) -> None:
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), clock_guest(5.0)), tmp_path)
    await pe.test_rtc(t)
    assert failed(t) == {"rtc.system-time", "rtc.hardware-clock"}
    t = ctx(FakeGuest(ENVS.get("qemu-arm64"), clock_guest(0.0)), tmp_path)
    await pe.test_rtc(t)
    assert failed(t) == {"rtc.device"}
    assert "expected rtc-pl031 (QEMU virt's PL031 RTC)" in t.cases[0].message


def balloon_guest(g_ref: list[FakeGuest], mode: str) -> Handler:
    """/proc/meminfo of a 768 MiB guest reacting to the fake balloon as `mode` says."""
    total, avail = 723412 << 10, 617612 << 10

    def handler(cmd: str) -> str:
        assert cmd == "cat /proc/meminfo"
        held = g_ref[0].balloon_held
        t, a = total, avail
        if mode == "total":
            t, a = total - held, avail - held
        elif mode == "available":  # deflate-on-oom: only available memory drops
            a = avail - held
        return f"MemTotal: {t >> 10} kB\nMemFree: {a >> 10} kB\nMemAvailable: {a >> 10} kB\n"

    return handler


@pytest.mark.parametrize(("mode", "field"), [("total", "MemTotal"),
                                             ("available", "MemAvailable")])
async def test_balloon_inflates_and_deflates(tmp_path: Path, mode: str, field: str) -> None:
    ref: list[FakeGuest] = []
    g = FakeGuest(ENVS.get("qemu-x64"), balloon_guest(ref, mode))
    ref.append(g)
    t = ctx(g, tmp_path, balloon_deadline_s=1)
    await pe.test_balloon(t)
    assert cases(t) == {"balloon.inflate": Status.PASS, "balloon.deflate": Status.PASS}
    assert g.balloon_calls == [128 << 20, 0]
    assert t.properties["balloon_field"] == field


async def test_balloon_that_does_nothing_fails_and_is_still_deflated(tmp_path: Path) -> None:
    ref: list[FakeGuest] = []
    g = FakeGuest(ENVS.get("qemu-x64"), balloon_guest(ref, "stuck"))
    ref.append(g)
    t = ctx(g, tmp_path, balloon_deadline_s=0.3, balloon_mib=64)
    await pe.test_balloon(t)
    assert failed(t) == {"balloon.inflate"}
    assert g.balloon_calls == [64 << 20, 0]


async def test_balloon_control_error_still_deflates(tmp_path: Path) -> None:
    ref: list[FakeGuest] = []
    g = FakeGuest(ENVS.get("qemu-x64"), balloon_guest(ref, "total"))
    ref.append(g)
    g.balloon_error = HarnessError("QMP balloon failed")
    with pytest.raises(HarnessError, match="QMP balloon failed"):
        await pe.test_balloon(ctx(g, tmp_path))
    assert g.balloon_calls == [128 << 20, 0]


async def test_rng(tmp_path: Path) -> None:
    od = " ".join(f"{b:02x}" for b in os.urandom(64))

    def good(cmd: str) -> str:
        return "virtio_rng.0\n" if "rng_current" in cmd else od

    t = ctx(FakeGuest(ENVS.get("qemu-x64"), good), tmp_path)
    await pe.test_rng(t)
    assert cases(t) == {"rng.current": Status.PASS, "rng.bytes": Status.PASS}

    def bad(cmd: str) -> Any:
        return "none\n" if "rng_current" in cmd else (0, " 00" * 64)

    t = ctx(FakeGuest(ENVS.get("qemu-x64"), bad), tmp_path)
    await pe.test_rng(t)
    assert failed(t) == {"rng.current", "rng.bytes"}


GPU_OUT = ("VIRTIO virtio4 0x0010 ../../../../bus/virtio/drivers/virtio_gpu\n"
           "/sys/class/drm/card0-Virtual-1/status:connected\n"
           "/sys/class/drm/card0-Virtual-1/modes:1280x800\n")


async def test_gpu(tmp_path: Path) -> None:
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), lambda cmd: GPU_OUT,
                      capabilities={"virtio_gpu": True}), tmp_path)
    await pe.test_gpu(t)
    assert cases(t) == {"gpu.driver": Status.PASS, "gpu.connector": Status.PASS}
    unbound = GPU_OUT.replace("virtio_gpu\n", "\n").replace(":connected", ":disconnected")
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), lambda cmd: unbound), tmp_path)
    await pe.test_gpu(t)
    assert failed(t) == {"gpu.driver", "gpu.connector"}
    t = ctx(FakeGuest(ENVS.get("qemu-x64"), lambda cmd: GPU_OUT,
                      capabilities={"virtio_gpu": False}), tmp_path)
    with pytest.raises(Skip, match="without virtio_gpu"):
        await pe.test_gpu(t)


# -- how the tests are declared ------------------------------------------------------------


def test_sharing_and_requirements() -> None:
    """Only block powers its guest off; everything else shares. Each needs its device."""
    enum = {t.name: t for t in load_suite("device_enumeration")}
    assert enum["devices"].shares_guest
    periph = {t.name: t for t in load_suite("peripherals")}
    assert not periph["block"].shares_guest
    assert all(t.shares_guest for n, t in periph.items() if n != "block")
    needs = {n: t.requires.devices for n, t in periph.items()}
    assert needs == {"block": ("virtio-blk",), "network": ("virtio-net",), "rtc": ("rtc",),
                     "balloon": ("virtio-balloon",), "rng": ("virtio-rng",),
                     "gpu": ("virtio-gpu",)}
    zircon = zircon_env("qemu-x64")
    assert enum["devices"].requires.unmet(zircon) is None
    assert all("needs a linux guest" in (t.requires.unmet(zircon) or "")
               for t in periph.values())
