"""Reboot, shutdown, power button, host stop and crash: the guest's lifecycle on both engines.

Each test here ends its guest (reboots it, powers it off, stops it or panics
it), so none shares a guest. The engine differences stay inside Guest: QEMU
resets in place while crosvm exits (32 on a reset; 34 on the reset or power-off
that follows a pvpanic panic, since crosvm only records the pvpanic: a guest that
panics and halts keeps crosvm running, src/crosvm/sys/linux.rs) and Guest launches
it again on the same serial log, so a suite only ever asks for "the next boot".
crosvm's arm64 VM has no power button (no ACPI PM device: `crosvm powerbtn`
answers "not supported", os error 95), so the power-button test skips there.

The Linux tests run for real on the harness's Debian + busybox guests. The
Zircon functions (`zircon_power`, `zircon_reboot`, `zircon_shutdown`) follow
Fuchsia's own reboot and shutdown tests (src/tests/{reboot,shutdown}): they
cannot boot here (no Zircon image), so their logic is exercised on transcripts
by tests/test_suites_offline.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from harness.console import ConsoleEOF
from harness.engines.base import ExitInfo, ExitKind
from harness.errors import HarnessError, Unsupported
from harness.profiles.zircon import parse_platform_halt
from harness.suite import Requirements, Skip, TestContext, guest_test

LINUX = Requirements(profiles=("linux",))
ZIRCON = Requirements(profiles=("zircon",))

# Fuchsia's shutdown test allows the emulator 120 s to exit after `power shutdown`.
SHUTDOWN_DEADLINE_S = 120.0
# A crash must be reported as a crash, not found by a timeout: sysrq-c reaches the panic
# line well under a second after the command even under TCG on a busy host.
PANIC_DETECT_MAX_S = 10.0
# Slack for comparing the guest's uptime with host time (the two clocks are read a
# command round trip apart).
UPTIME_SLACK_S = 1.0
# `poweroff` without -f: it signals busybox init, which runs its shutdown sequence (the
# inittab's shutdown actions, SIGTERM then SIGKILL to every process) before asking the
# kernel to power off. The profile's `poweroff -f` skips all of that.
LINUX_POWEROFF = "poweroff"
# busybox init's last words before reboot(RB_POWER_OFF); `poweroff -f` never prints them.
LINUX_ORDERLY_POWEROFF = re.compile(rb"Requesting system poweroff")

_WELCOME_ZIRCON = re.compile(rb"welcome to Zircon")
_PLATFORM_HALT = re.compile(rb"platform_halt suggested_action \d+ reason \d+")


# -- serial log helpers (shared by Linux and Zircon logic) ----------------------------------------


def log_offset(guest: Any) -> int:
    """Where the serial log ends now: what a later `log_since` reads from.

    The log file is written unbuffered as bytes arrive, so its size is exact;
    it also survives a crosvm relaunch, which a console buffer does not.
    """
    path: Path = guest.log.path
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(guest: Any, offset: int) -> bytes:
    with open(guest.log.path, "rb") as f:
        f.seek(offset)
        return f.read()


# -- Linux ----------------------------------------------------------------------------------------


async def _uptime(guest: Any) -> float:
    out = await guest.check("cut -d' ' -f1 /proc/uptime")
    return float(out.strip().split()[-1])


def _param_float(t: TestContext, name: str, default: float) -> float:
    value = t.params.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AssertionError(f"test parameter {name}={value!r} is not a number") from None


@guest_test(requires=LINUX, timeout_s=300)
async def test_guest_reboot(t: TestContext) -> None:
    """Guest-initiated reboot, N times (`reboot_cycles`, default 2): each cycle a new boot.

    A new boot is a new boot_id and an uptime that restarted; each boot's time
    to the shell is a property (boot_1_s is the first boot, boot_2_s the first
    reboot, ...). Raising `reboot_cycles` needs a larger `timeout_secs` too.
    """
    g = t.guest
    cycles = int(t.params.get("reboot_cycles", 2))
    assert cycles >= 1, f"reboot_cycles must be at least 1, got {cycles}"
    first = g.boots[-1]
    t.prop(f"boot_{first.index}_s", f"{first.ready_s:.3f}")
    seen = {first.boot_id}
    for cycle in range(1, cycles + 1):
        name = f"reboot_{cycle}"
        before = await _uptime(g)
        asked = time.monotonic()
        try:
            boot = await g.reboot()
        except HarnessError as e:  # no new boot (timeout, VMM exit, same boot_id)
            t.case(name, False, f"no new boot after the reboot request: {e}")
            raise
        uptime = await _uptime(g)
        elapsed = time.monotonic() - asked
        problems = []
        if not boot.boot_id or boot.boot_id in seen:
            problems.append(f"boot_id {boot.boot_id or '(none)'} is not new")
        if uptime > elapsed + UPTIME_SLACK_S:
            problems.append(f"uptime {uptime:.2f} s exceeds the {elapsed:.2f} s since the reboot "
                            f"request (it was {before:.2f} s before): the kernel did not restart")
        seen.add(boot.boot_id)
        t.prop(f"boot_{boot.index}_s", f"{boot.ready_s:.3f}")
        t.case(name, not problems, "; ".join(problems), duration_s=boot.ready_s)

    markers = len(g.profile.boot_marker.findall(log_since(g, 0)))
    t.prop("vmm_relaunches", sum(1 for b in g.boots if b.relaunch))
    t.case("serial_log_has_every_boot", markers == cycles + 1,
           "" if markers == cycles + 1 else
           f"the serial log holds {markers} boot markers, expected {cycles + 1}")


def _stop_case(t: TestContext, info: ExitInfo, took: float) -> None:
    ok = info.kind == ExitKind.STOP
    t.case("vmm_stopped", ok, "" if ok else f"the VMM exit was {info.kind}: {info.explanation}",
           duration_s=took)


async def _expect_clean_stop(t: TestContext, offset: int, asked: float, deadline: float,
                             what: str) -> ExitInfo:
    """Wait for the VMM to exit after a power-off request; check it was a stop, and orderly."""
    g = t.guest
    info: ExitInfo = await g.wait_exit(deadline)  # kills and raises ConsoleTimeout at the deadline
    took = time.monotonic() - asked
    t.prop(f"{what}_s", f"{took:.3f}")
    _stop_case(t, info, took)
    orderly = LINUX_ORDERLY_POWEROFF.search(log_since(g, offset)) is not None
    t.case("orderly_shutdown", orderly,
           "" if orderly else "busybox init never said 'Requesting system poweroff': the "
                              "guest did not go through its shutdown sequence")
    assert info.kind == ExitKind.STOP, f"{what}: the VMM exit was {info.kind}: {info.explanation}"
    return info


@guest_test(requires=LINUX, timeout_s=SHUTDOWN_DEADLINE_S + 60)
async def test_guest_shutdown(t: TestContext) -> None:
    """`poweroff` in the guest: the VMM exits with the stop status within 120 s (Fuchsia's)."""
    g = t.guest
    deadline = _param_float(t, "shutdown_deadline_s", SHUTDOWN_DEADLINE_S)
    offset = log_offset(g)
    asked = time.monotonic()
    g.console.sendline(LINUX_POWEROFF)
    await _expect_clean_stop(t, offset, asked, deadline, "shutdown")


@guest_test(requires=LINUX, timeout_s=SHUTDOWN_DEADLINE_S + 60)
async def test_power_button(t: TestContext) -> None:
    """The host presses the power button; the guest shuts down cleanly within the deadline.

    x86_64: ACPI power button (QMP system_powerdown, `crosvm powerbtn`); arm64
    QEMU virt: a KEY_POWER from its gpio-keys device. busybox acpid turns either
    into `poweroff`. Skipped where the image's kernel has no driver for it, and on
    crosvm arm64, which has no power button (the engine's Unsupported, os error 95).
    """
    g = t.guest
    if not g.capabilities.get("power_button"):
        raise Skip(f"image {g.image.name} ({t.env.arch}) has no power button driver "
                   f"(the cloud arm64 kernel lacks gpio_keys)")
    deadline = _param_float(t, "shutdown_deadline_s", SHUTDOWN_DEADLINE_S)
    offset = log_offset(g)
    asked = time.monotonic()
    try:
        await g.power_button()
    except Unsupported as e:
        raise Skip(f"{t.env.engine} has no power button here: {e}") from None
    await _expect_clean_stop(t, offset, asked, deadline, "power_button")


def _sockets_in(directory: Path) -> list[str]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    found.append(entry.name)
    return sorted(found)


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the VMM's process group (it leads its own session)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # something, not ours, now holds that id
    return True


@guest_test(requires=LINUX, timeout_s=120)
async def test_host_stop(t: TestContext) -> None:
    """Host stop (`crosvm stop` / QMP quit): the VMM process is gone, no socket left behind."""
    g = t.guest
    vmm = g.vmm
    assert vmm is not None and g.running, "the VMM is not running"
    pid = vmm.pid
    asked = time.monotonic()
    info = await g.stop()
    took = time.monotonic() - asked
    t.prop("host_stop_s", f"{took:.3f}")
    _stop_case(t, info, took)
    reaped = vmm.returncode is not None
    t.case("process_reaped", reaped, "" if reaped else f"VMM pid {pid} has no exit status")
    alive = _group_alive(pid)
    t.case("no_process_left", not alive,
           f"processes are still running in the VMM's process group {pid}" if alive else "")
    sockets = _sockets_in(g.paths.workdir)
    t.case("no_socket_left", not sockets,
           f"sockets left in {g.paths.workdir}: {', '.join(sockets)}" if sockets else "")
    assert info.kind == ExitKind.STOP, f"host stop: the VMM exit was {info.kind}"
    assert reaped and not alive and not sockets, "the host stop left something behind"


@guest_test(requires=LINUX, timeout_s=240)
async def test_crash(t: TestContext) -> None:
    """A kernel panic (sysrq c) is reported fast with its excerpt; under the reset policy the
    guest then comes back and runs commands."""
    g = t.guest
    max_detect = _param_float(t, "panic_detect_max_s", PANIC_DETECT_MAX_S)
    old_id = g.boots[-1].boot_id
    asked = time.monotonic()
    crash = await g.panic(timeout=max_detect + 20)
    detect = time.monotonic() - asked
    t.prop("panic_detect_s", f"{detect:.3f}")
    (t.folder / "crash-excerpt.txt").write_text(crash.excerpt + "\n")
    problems = []
    if crash.signature != "linux-panic":
        problems.append(f"crash signature {crash.signature}, expected linux-panic")
    if "sysrq triggered crash" not in crash.excerpt:
        problems.append("the excerpt does not show the sysrq panic")
    if detect > max_detect:
        problems.append(f"took {detect:.1f} s to report, more than {max_detect:g} s")
    t.case("panic_detected", not problems,
           "; ".join(problems) + ("\n" + crash.excerpt if problems else ""), duration_s=detect)
    assert not problems, "; ".join(problems)

    if t.env.panic_policy != "reset":
        # A halted guest stays down; crosvm, with the pvpanic only recorded, keeps running
        # until the harness stops it (then it exits 0, not 34).
        t.note(f"panic policy {t.env.panic_policy}: the guest is not expected to come back")
        return
    boot = await g.wait_reset()
    t.prop("reset_boot_s", f"{boot.ready_s:.3f}")
    token = f"usable-{boot.index}"
    out = await g.check(f"echo {token}")
    usable = token in out and bool(boot.boot_id) and boot.boot_id != old_id
    t.case("usable_after_reset", usable,
           "" if usable else f"boot_id {boot.boot_id!r} (was {old_id!r}), output {out!r}",
           duration_s=boot.ready_s)
    t.prop("vmm_relaunches", sum(1 for b in g.boots if b.relaunch))
    assert usable, "the guest did not come back usable after the panic"


# -- Zircon ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ZirconHalt:
    """What the kernel said it would do: `platform_halt suggested_action A reason R`."""

    command: str  # the command that got it there (`power reboot` or the older `dm reboot`)
    action: str
    reason: str
    line: str


def _not_found(word: str) -> re.Pattern[bytes]:
    """The shell's complaint about an unknown command (dash: `sh: 1: power: not found`)."""
    w = re.escape(word.encode())
    return re.compile(rb"\b" + w + rb": (?:command )?not found|command not found: " + w)


async def zircon_power(guest: Any, verb: str, timeout: float = 30.0) -> ZirconHalt | None:
    """Send `power VERB`, or `dm VERB` on images that predate `power`; wait for platform_halt.

    Returns None when the VMM closed the console before the kernel said
    anything (a shutdown can be that quick); the caller then judges by the
    VMM's exit alone.
    """
    profile = guest.profile
    commands = {
        "reboot": (profile.reboot_command, profile.alt_reboot_command),
        "shutdown": (profile.shutdown_command, profile.alt_shutdown_command),
    }[verb]
    tried = []
    for command in (c for c in commands if c):
        tried.append(command)
        missing = _not_found(command.split()[0])
        guest.console.sendline(command)
        try:
            m = await guest.console.expect([_PLATFORM_HALT, missing], timeout,
                                           what=f"platform_halt after `{command}`")
        except ConsoleEOF:
            return None
        if m.re is missing:
            continue
        line = m.group(0).decode()
        action, reason = parse_platform_halt(line) or ("?", "?")
        return ZirconHalt(command, action, reason, line)
    raise AssertionError(f"the shell knows none of {', '.join(repr(c) for c in tried)}")


async def zircon_reboot(guest: Any, timeout: float | None = None) -> tuple[ZirconHalt, Any]:
    """Fuchsia's reboot test: `power reboot`, platform_halt (reboot), `welcome to Zircon`, shell.

    Returns the halt and the new Boot; Guest.wait_reset relaunches crosvm if it exited.
    """
    offset = log_offset(guest)  # before the command: the console may read ahead of a match
    halt = await zircon_power(guest, "reboot")
    assert halt is not None, "the VMM exited after `power reboot` without a platform_halt line"
    assert halt.action == "reboot", (
        f"`{halt.command}` halted with action {halt.action}: {halt.line}")
    boot = await guest.wait_reset(timeout)
    text = log_since(guest, offset)
    halted = _PLATFORM_HALT.search(text)
    assert halted and _WELCOME_ZIRCON.search(text, halted.end()), (
        "the guest reached its shell again without printing 'welcome to Zircon' after "
        "platform_halt")
    return halt, boot


async def zircon_shutdown(guest: Any, deadline: float = SHUTDOWN_DEADLINE_S
                          ) -> tuple[ZirconHalt | None, ExitInfo]:
    """Fuchsia's shutdown test: `power shutdown`, then the VMM exits with success within 120 s."""
    halt = await zircon_power(guest, "shutdown")
    if halt is not None:
        assert halt.action in ("shutdown", "halt"), (
            f"`{halt.command}` halted with action {halt.action}: {halt.line}")
    info: ExitInfo = await guest.wait_exit(deadline)
    return halt, info


@guest_test(requires=ZIRCON, timeout_s=300)
async def test_zircon_reboot(t: TestContext) -> None:
    """Zircon: `power reboot` (or `dm reboot`), platform_halt, `welcome to Zircon`, N cycles."""
    g = t.guest
    cycles = int(t.params.get("reboot_cycles", 2))
    for cycle in range(1, cycles + 1):
        name = f"reboot_{cycle}"
        try:
            halt, boot = await zircon_reboot(g)
        except (AssertionError, HarnessError) as e:
            t.case(name, False, str(e))
            raise
        t.prop(f"boot_{boot.index}_s", f"{boot.ready_s:.3f}")
        t.prop(f"{name}_halt", f"{halt.action}/{halt.reason} via `{halt.command}`")
        t.case(name, True, duration_s=boot.ready_s)


@guest_test(requires=ZIRCON, timeout_s=SHUTDOWN_DEADLINE_S + 60)
async def test_zircon_shutdown(t: TestContext) -> None:
    """Zircon: `power shutdown` (or `dm shutdown`); the VMM exits with success within 120 s."""
    asked = time.monotonic()
    halt, info = await zircon_shutdown(t.guest, _param_float(t, "shutdown_deadline_s",
                                                              SHUTDOWN_DEADLINE_S))
    took = time.monotonic() - asked
    t.prop("shutdown_s", f"{took:.3f}")
    if halt is not None:
        t.prop("halt", f"{halt.action}/{halt.reason} via `{halt.command}`")
    _stop_case(t, info, took)
    assert info.kind == ExitKind.STOP, f"the VMM exit was {info.kind}: {info.explanation}"
