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
Zircon functions (`zircon_reboot`, `zircon_shutdown`) are Fuchsia's own reboot
and shutdown tests (src/tests/{reboot,shutdown}) step by step: every line they
wait for, in their order, the ACPI wait on x64, the exact platform_halt. No
Zircon image boots here, so they are exercised on transcripts built from those
lines and real captures, by tests/test_zircon_flows.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from harness.console import ConsoleEOF, ConsoleTimeout
from harness.errors import HarnessError, Unsupported
from harness.exits import ExitInfo, ExitKind
from harness.fuchsia.emulator import LogLines
from harness.profiles.zircon import parse_platform_halt, platform_halt_line
from harness.suite import Boot, Guest, Requirements, Skip, TestContext, guest_test

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


# -- Linux ----------------------------------------------------------------------------------------


async def _uptime(guest: Guest) -> float:
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

    markers = len(g.profile.boot_marker.findall(g.log.since(0)))
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
    orderly = LINUX_ORDERLY_POWEROFF.search(g.log.since(offset)) is not None
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
    offset = g.log.offset()
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
    offset = g.log.offset()
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


# -- Zircon: Fuchsia's own reboot and shutdown tests -----------------------------------------
#
# src/tests/reboot/reboottest/reboottest.go (RebootWithCommand) and
# src/tests/shutdown/shutdown_test.go, step by step. Both read the emulator's output line
# by line with tools/emulator's WaitForLogMessage(s): a line is read once, a wait goes on
# until a line contains its text, and a wait for several texts takes them in any order,
# one per line. The lines before a command were usually printed during the boot the
# harness already waited for, so they are read back from the serial log (LogLines).

# reboottest.go, before the command.
ZIRCON_PLATFORM_INIT = "initializing platform"
ZIRCON_SHELL_READY = "console.shell: enabled"
ZIRCON_FSHOST_STARTED = "fshost started"
# shutdown_test.go, before the command: the shell is ready and /dev is mounted.
ZIRCON_DEV_MOUNTED = "mounted '/dev'"
# reboottest.go, after the command of a clean reboot: the file system unmounted.
ZIRCON_FSHOST_DOWN = "fshost shutdown complete"
ZIRCON_WELCOME = "welcome to Zircon"
# On x64 both tests wait for the ACPI driver before a power operation, by this command.
ZIRCON_ACPI_READY = "ACPI_READY"
_ACPI_TOPO = "class=acpi topo=/dev/sys/platform/pt/acpi/_SB_/pt"
ZIRCON_REBOOT_ACPI_WAIT = f"waitfor {_ACPI_TOPO}; echo ACPI_READY"
ZIRCON_SHUTDOWN_ACPI_WAIT = f"waitfor verbose {_ACPI_TOPO} && echo ACPI_READY"
ZIRCON_SHUTDOWN_COMMAND = "power shutdown"

_PLATFORM_HALT = re.compile(r"platform_halt suggested_action \d+ reason \d+")


@dataclasses.dataclass(frozen=True)
class ZirconRebootFlow:
    """One of Fuchsia's reboot tests: RebootWithCommand's arguments.

    `clean`: CleanReboot, so the file system must report its shutdown first.
    `action`, `reason`: the names (HALT_ACTIONS, HALT_REASONS) of the numbers the
    test expects in `platform_halt suggested_action A reason R`.
    """

    command: str
    clean: bool
    action: str
    reason: str


# src/tests/reboot/power_reboot/power_reboot_test.go (also power_reboot_bringup_test) and
# power_reboot_bootloader/power_reboot_bootloader_test.go.
ZIRCON_REBOOT_FLOWS: dict[str, ZirconRebootFlow] = {
    "power_reboot": ZirconRebootFlow("power reboot", True, "reboot", "no-crash"),
    "power_reboot_bootloader": ZirconRebootFlow("power reboot-bootloader", True,
                                                "reboot-bootloader", "no-crash"),
}


async def _wait_step(lines: LogLines, messages: Sequence[str], timeout: float, step: str
                     ) -> list[str]:
    """One WaitForLogMessages; a line that never comes fails the flow, naming the step."""
    try:
        return await lines.wait_for(messages, timeout)
    except ConsoleTimeout:
        raise AssertionError(f"{step}: no line with " + " and ".join(repr(m) for m in messages)
                             + f" within {timeout:g} s") from None
    except ConsoleEOF:
        raise AssertionError(f"{step}: the VMM exited before a line with "
                             + " and ".join(repr(m) for m in messages)) from None


async def zircon_acpi_ready(guest: Guest, lines: LogLines, command: str, timeout: float) -> None:
    """x64: run the test's `waitfor ... echo ACPI_READY` and wait for its ACPI_READY.

    Fuchsia's tests wait for any line containing ACPI_READY, which the shell's
    echo of the command line itself contains; here the line must be the echo
    command's output, so that the wait means the ACPI driver is up.
    """
    guest.console.sendline(command)
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = await lines.next_line(deadline, repr(ZIRCON_ACPI_READY))
        except (ConsoleTimeout, ConsoleEOF):
            raise AssertionError(f"the ACPI driver did not come up: no {ZIRCON_ACPI_READY} "
                                 f"after `{command}` within {timeout:g} s") from None
        if ZIRCON_ACPI_READY in line and f"echo {ZIRCON_ACPI_READY}" not in line:
            return


@dataclasses.dataclass(frozen=True)
class ZirconHalt:
    """What the kernel said it would do: `platform_halt suggested_action A reason R`."""

    command: str  # the command that got it there (`power reboot` or the older `dm reboot`)
    action: str
    reason: str
    line: str


def _not_found(word: str) -> re.Pattern[str]:
    """The shell's complaint about an unknown command (dash: `sh: 1: power: not found`)."""
    w = re.escape(word)
    return re.compile(r"\b" + w + r": (?:command )?not found|command not found: " + w)


async def zircon_command(guest: Guest, lines: LogLines, command: str, first: re.Pattern[str],
                         what: str, timeout: float) -> tuple[str, str]:
    """Send a power command and wait for the first line it must lead to (`what` names it).

    Images that predate `power` (its shell says `power: not found`) get the
    same verb from `dm`, their older tool. Returns the command the shell took
    and the line.
    """
    commands = [command]
    if command.startswith("power "):
        commands.append("dm " + command.removeprefix("power "))
    for sent in commands:
        guest.console.sendline(sent)
        missing = _not_found(sent.split()[0])
        try:
            index, line = await lines.wait_for_pattern([first, missing], timeout,
                                                       f"{what} after `{sent}`")
        except ConsoleTimeout:
            raise AssertionError(f"`{sent}`: no {what} line within {timeout:g} s") from None
        except ConsoleEOF:
            raise AssertionError(f"`{sent}`: the VMM exited before a {what} line") from None
        if index == 0:
            return sent, line
    raise AssertionError(f"the shell knows none of {', '.join(repr(c) for c in commands)}")


def _halt(command: str, line: str) -> ZirconHalt:
    action, reason = parse_platform_halt(line) or ("?", "?")
    return ZirconHalt(command, action, reason, line.strip())


async def zircon_reboot(guest: Guest, flow: ZirconRebootFlow = ZIRCON_REBOOT_FLOWS["power_reboot"],
                        *, lines: LogLines | None = None, timeout: float | None = None
                        ) -> tuple[ZirconHalt, Boot]:
    """RebootWithCommand: every line it waits for, in its order; the new Boot.

    initializing platform; console.shell: enabled and fshost started; (x64) the
    ACPI wait; the command; (clean) fshost shutdown complete; the exact
    platform_halt line; welcome to Zircon. Guest.wait_reset brings the next
    boot up (crosvm exits on the reset and is launched again).
    """
    step = timeout or guest.env.boot_timeout_s
    lines = lines if lines is not None else LogLines(guest.console, guest.log)
    await _wait_step(lines, [ZIRCON_PLATFORM_INIT], step, "boot")
    await _wait_step(lines, [ZIRCON_SHELL_READY, ZIRCON_FSHOST_STARTED], step, "boot")
    if guest.env.arch == "x86_64":
        await zircon_acpi_ready(guest, lines, ZIRCON_REBOOT_ACPI_WAIT, step)
    if flow.clean:
        first, what = re.compile(re.escape(ZIRCON_FSHOST_DOWN)), repr(ZIRCON_FSHOST_DOWN)
    else:
        first, what = _PLATFORM_HALT, "platform_halt"
    command, line = await zircon_command(guest, lines, flow.command, first, what, step)
    if flow.clean:  # the file system was told and unmounted; now the halt
        try:
            _, line = await lines.wait_for_pattern([_PLATFORM_HALT], step, "platform_halt")
        except (ConsoleTimeout, ConsoleEOF) as e:
            raise AssertionError(f"`{command}`: no platform_halt line after "
                                 f"'{ZIRCON_FSHOST_DOWN}' ({e})") from None
    halt = _halt(command, line)
    expected = platform_halt_line(flow.action, flow.reason)
    assert expected in line, (
        f"`{command}` halted with action {halt.action} reason {halt.reason} "
        f"({halt.line}); Fuchsia's test waits for '{expected}'")
    boot = await guest.wait_reset(timeout)
    await _wait_step(lines, [ZIRCON_WELCOME], step, f"after '{expected}'")
    return halt, boot


async def zircon_shutdown(guest: Guest, deadline: float = SHUTDOWN_DEADLINE_S, *,
                          lines: LogLines | None = None, timeout: float | None = None
                          ) -> tuple[ZirconHalt | None, ExitInfo]:
    """shutdown_test.go: console.shell: enabled and mounted '/dev'; (x64) the ACPI wait;
    `power shutdown`; the VMM exits within 120 s, with success (checked by the caller).

    Fuchsia's test reads nothing after the command (the emulator may be gone);
    a platform_halt line the kernel prints is reported, and one that does not
    shut down or halt fails at once instead of after the 120 s.
    """
    step = timeout or guest.env.boot_timeout_s
    lines = lines if lines is not None else LogLines(guest.console, guest.log)
    await _wait_step(lines, [ZIRCON_SHELL_READY, ZIRCON_DEV_MOUNTED], step, "boot")
    if guest.env.arch == "x86_64":
        await zircon_acpi_ready(guest, lines, ZIRCON_SHUTDOWN_ACPI_WAIT, step)
    halt: ZirconHalt | None = None
    try:
        command, line = await zircon_command(guest, lines, ZIRCON_SHUTDOWN_COMMAND,
                                             _PLATFORM_HALT, "platform_halt", deadline)
    except AssertionError:
        if not guest.console.eof_seen:
            raise
        # The VMM went away before the kernel said anything: its exit status decides.
    else:
        halt = _halt(command, line)
        assert halt.action in ("shutdown", "halt"), (
            f"`{command}` halted with action {halt.action}: {halt.line}")
    info: ExitInfo = await guest.wait_exit(deadline)
    return halt, info


@guest_test(requires=ZIRCON, timeout_s=300)
async def test_zircon_reboot(t: TestContext) -> None:
    """Zircon: Fuchsia's reboot test (`reboot_flow`, default power_reboot), N cycles."""
    g = t.guest
    cycles = int(t.params.get("reboot_cycles", 2))
    name = str(t.params.get("reboot_flow", "power_reboot"))
    flow = ZIRCON_REBOOT_FLOWS.get(name)
    assert flow is not None, (f"test parameter reboot_flow={name!r}: known flows are "
                              f"{', '.join(ZIRCON_REBOOT_FLOWS)}")
    lines = LogLines(g.console, g.log)
    for cycle in range(1, cycles + 1):
        case = f"reboot_{cycle}"
        try:
            halt, boot = await zircon_reboot(g, flow, lines=lines)
        except (AssertionError, HarnessError) as e:
            t.case(case, False, str(e))
            raise
        t.prop(f"boot_{boot.index}_s", f"{boot.ready_s:.3f}")
        t.prop(f"{case}_halt", f"{halt.action}/{halt.reason} via `{halt.command}`")
        t.case(case, True, duration_s=boot.ready_s)


@guest_test(requires=ZIRCON, timeout_s=SHUTDOWN_DEADLINE_S + 60)
async def test_zircon_shutdown(t: TestContext) -> None:
    """Zircon: Fuchsia's shutdown test; the VMM exits with success within 120 s."""
    asked = time.monotonic()
    halt, info = await zircon_shutdown(t.guest, _param_float(t, "shutdown_deadline_s",
                                                              SHUTDOWN_DEADLINE_S))
    took = time.monotonic() - asked
    t.prop("shutdown_s", f"{took:.3f}")
    if halt is not None:
        t.prop("halt", f"{halt.action}/{halt.reason} via `{halt.command}`")
    _stop_case(t, info, took)
    assert info.kind == ExitKind.STOP, (f"Failed to shutdown cleanly: the VMM exit was "
                                        f"{info.kind}: {info.explanation}")
