"""The expected-device model for crosvm: what crosvm presents per arch, and per guest kernel.

Not tested on the double's boot where QEMU cannot imitate crosvm: QEMU's arm64 `virt` board
has a PL011 UART and a PL031 RTC where crosvm has 8250 UARTs on MMIO and a PL030
(tests/crosvm_double/README.md). So the model is tested on crosvm's command line and on an
enumeration constructed from crosvm's source (tests/fixtures/linux/enumeration/README.md),
and the double's real arm64 capture is shown to be judged *not* crosvm's machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_crosvm_engine import make_env, make_image, option_values, paths_for
from test_suites_offline_b import ENVS, FakeGuest, Status, cases, ctx, failed

from harness import inventory
from harness.engines.base import VmmSetup
from harness.engines.crosvm import CrosvmEngine
from harness.expected_devices import platform
from harness.suite import Skip
from suites import device_enumeration as de
from suites import peripherals as pe

LINUX_ENUM = Path(__file__).parent / "fixtures" / "linux" / "enumeration"
ENGINE = CrosvmEngine("crosvm")


def models(env_name: str) -> dict[str, object]:
    env = ENVS.get(env_name)
    return dict(platform(env.engine, env.arch))


def expected(env_name: str) -> frozenset[str]:
    env = ENVS.get(env_name)
    return frozenset(env.devices.devices) | ENGINE.implicit_devices(env)


def test_crosvm_presents_the_same_kinds_on_both_arches_but_other_models() -> None:
    x64, arm = platform("crosvm", "x86_64"), platform("crosvm", "arm64")
    assert set(x64) == set(arm) == {"serial", "rtc", "pvpanic"}
    assert ENGINE.implicit_devices(make_env("arm64")) == frozenset(arm)
    # pvpanic is PCI 1b36:0011 on both (src/crosvm/sys/linux.rs create_devices).
    for m in (x64["pvpanic"], arm["pvpanic"]):
        assert m.matches("pci 0000:00:04.0 [1b36:0011] class ff8000")
        assert not m.matches("acpi QEMU0001:00 (ISA pvpanic)")
    # arm64: 8250s (ttyS), never the PL011 (ttyAMA) QEMU's virt has; a PL030 RTC.
    assert arm["serial"].matches("tty ttyS0 16550A at 0x000003F8")
    assert not arm["serial"].matches("tty ttyAMA0 PL011 at 0x09000000")
    assert arm["rtc"].driver == "rtc-pl030"
    assert arm["rtc"].kernel_config == "CONFIG_RTC_DRV_PL030"
    assert arm["rtc"].matches("amba 2000.rtc PL030 (AMBA id 00041030, no driver)")
    assert not arm["rtc"].matches("rtc rtc0 rtc-pl031 9010000.pl031")


def test_arm64_console_is_crosvms_ttys0(tmp_path: Path) -> None:
    """The engine names COM1 the console and earlycon and leaves `console=` to crosvm, which
    adds console=ttyS0 and earlycon=uart8250,mmio,0x3f8 on arm64 (arch/src/serial.rs): a
    `console=ttyAMA0` of the harness's own would point the kernel at a UART crosvm has not."""
    argv = ENGINE.command(make_env("arm64"), make_image(tmp_path, "arm64"), paths_for(tmp_path),
                          VmmSetup("crosvm", "kvm"))
    consoles = [v for v in option_values(argv, "--serial") if "console" in v.split(",")]
    assert consoles == ["type=stdout,hardware=serial,num=1,console,earlycon,stdin"]
    [params] = option_values(argv, "--params")
    assert "ttyAMA" not in params and "console=" not in params


def test_parse_linux_reads_amba_devices_with_and_without_a_driver() -> None:
    inv = inventory.parse_linux((LINUX_ENUM / "crosvm-arm64-constructed.txt").read_text())
    assert inv.evidence("rtc") == ["amba 2000.rtc PL030 (AMBA id 00041030, no driver)"]
    assert inv.count("serial") == 4
    text = ("/sys/bus/amba/devices/9010000.pl031/uevent:DRIVER=rtc-pl031\n"
            "/sys/bus/amba/devices/9010000.pl031/uevent:AMBA_ID=00141031\n"
            "/sys/bus/amba/devices/9030000.pl061/uevent:AMBA_ID=00141061\n")
    inv = inventory.parse_linux(text)
    assert inv.evidence("rtc") == ["amba 9010000.pl031 PL031 (AMBA id 00141031, driver rtc-pl031)"]
    assert inv.kinds() == {"rtc"}  # QEMU virt's PL061 GPIO is the board's, not a peripheral


def test_real_crosvm_arm64_satisfies_the_model() -> None:
    """crosvm's arm64 machine (constructed from its source) passes every case, the PL030 RTC
    included although Debian's kernel cannot drive it: the hardware is there."""
    inv = inventory.parse_linux((LINUX_ENUM / "crosvm-arm64-constructed.txt").read_text())
    env = ENVS.get("crosvm-arm64")
    verdicts, unexpected = de.judge(inv, expected("crosvm-arm64"), env.devices.absent,
                                    models("crosvm-arm64"))
    assert [v.message for v in verdicts if not v.ok] == []
    assert unexpected == []


def test_the_doubles_arm64_board_is_not_crosvms() -> None:
    """What QEMU cannot imitate: under the double, arm64 shows QEMU virt's PL011 and PL031.
    The suite says so rather than passing them off as crosvm's (README of the double)."""
    inv = inventory.parse_linux((LINUX_ENUM / "crosvm-arm64-double.txt").read_text())
    env = ENVS.get("crosvm-arm64")
    verdicts, _ = de.judge(inv, expected("crosvm-arm64"), env.devices.absent,
                           models("crosvm-arm64"))
    bad = {v.name: v.message for v in verdicts if not v.ok}
    assert set(bad) == {"present.serial", "present.rtc"}
    assert "tty ttyAMA0 PL011" in bad["present.serial"] and "8250" in bad["present.serial"]
    assert "rtc-pl031" in bad["present.rtc"] and "PL030" in bad["present.rtc"]


@pytest.mark.parametrize("fixture", ["qemu-x64-minimal", "qemu-x64"])
def test_an_isa_pvpanic_is_not_crosvms(fixture: str) -> None:
    """x86: crosvm's pvpanic is PCI 1b36:0011; QEMU's ISA one (ACPI QEMU0001) is not it."""
    inv = inventory.parse_linux((LINUX_ENUM / f"{fixture}.txt").read_text())
    verdicts, _ = de.judge(inv, {"pvpanic", "rtc", "serial"}, (), models("crosvm-x64"))
    bad = {v.name: v.message for v in verdicts if not v.ok}
    assert set(bad) == {"present.pvpanic"}
    assert "acpi QEMU0001:00 (ISA pvpanic)" in bad["present.pvpanic"]
    assert "PCI function 1b36:0011" in bad["present.pvpanic"]


@pytest.mark.parametrize(("env_name", "fixture"), [
    ("crosvm-x64", "crosvm-x64-double"), ("crosvm-x64-minimal", "crosvm-x64-minimal-double"),
])
def test_the_doubles_x86_machine_is_crosvms(env_name: str, fixture: str) -> None:
    """x86_64 the double does imitate: PCI pvpanic, four 8250s, a CMOS RTC (captured)."""
    inv = inventory.parse_linux((LINUX_ENUM / f"{fixture}.txt").read_text())
    env = ENVS.get(env_name)
    verdicts, _ = de.judge(inv, expected(env_name), env.devices.absent, models(env_name))
    assert [v.message for v in verdicts if not v.ok] == []
    assert inv.evidence("pvpanic")[0].startswith("pci ")


async def test_devices_suite_on_crosvm_arm64_uses_the_model(tmp_path: Path) -> None:
    text = (LINUX_ENUM / "crosvm-arm64-constructed.txt").read_text()
    t = ctx(FakeGuest(ENVS.get("crosvm-arm64"), lambda cmd: text), tmp_path)
    await de.test_devices(t)
    assert failed(t) == set()
    text = (LINUX_ENUM / "crosvm-arm64-double.txt").read_text()
    t = ctx(FakeGuest(ENVS.get("crosvm-arm64"), lambda cmd: text), tmp_path)
    await de.test_devices(t)
    assert failed(t) == {"present.serial", "present.rtc"}


def pl030_guest(*, rtc0: str | None, driver: bool) -> object:
    def handler(cmd: str) -> object:
        if cmd == "cat /sys/class/rtc/rtc0/name":
            return (0, rtc0 + "\n") if rtc0 else (1, "cat: can't open '/sys/class/rtc/rtc0/name'")
        if cmd == "ls -d /sys/bus/*/drivers/rtc-pl030":
            return (0, "/sys/bus/amba/drivers/rtc-pl030\n") if driver else (
                1, "ls: /sys/bus/*/drivers/rtc-pl030: No such file or directory")
        raise AssertionError(f"unexpected command {cmd!r}")
    return handler


async def test_rtc_on_crosvm_arm64_without_a_pl030_driver_is_skipped(tmp_path: Path) -> None:
    g = FakeGuest(ENVS.get("crosvm-arm64"), pl030_guest(rtc0=None, driver=False))
    with pytest.raises(Skip) as e:
        await pe.test_rtc(ctx(g, tmp_path))
    assert "PL030" in str(e.value) and "CONFIG_RTC_DRV_PL030 is not set" in str(e.value)
    assert "6.1.0-fake" in str(e.value)


async def test_rtc_on_crosvm_arm64_with_a_driver_but_no_rtc0_fails(tmp_path: Path) -> None:
    g = FakeGuest(ENVS.get("crosvm-arm64"), pl030_guest(rtc0=None, driver=True))
    with pytest.raises(AssertionError, match="no rtc0"):
        await pe.test_rtc(ctx(g, tmp_path))


async def test_rtc_on_the_doubles_arm64_is_not_crosvms(tmp_path: Path) -> None:
    """Under the double the guest's rtc0 is QEMU's PL031: the device case says it is not
    crosvm's PL030 (what QEMU cannot imitate), the clock cases still run."""
    def handler(cmd: str) -> object:
        if cmd == "cat /sys/class/rtc/rtc0/name":
            return "rtc-pl031 9010000.pl031\n"
        import time
        now = int(time.time())
        return f"{now}\n{now}\n"
    t = ctx(FakeGuest(ENVS.get("crosvm-arm64"), handler), tmp_path)
    await pe.test_rtc(t)
    assert cases(t)["rtc.device"] == Status.FAIL
    assert "expected rtc-pl030 (crosvm's PL030 RTC" in t.cases[0].message
    assert cases(t)["rtc.system-time"] == Status.PASS
