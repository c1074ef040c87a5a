"""Guest profiles: markers, prompts, kernel arguments and crash detection on real captures."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pexpect
import pexpect.fdpexpect
import pytest

from harness.app import make_engines
from harness.fuchsia.tefmocheck import serial_checks
from harness.profiles import PROFILE_NAMES, Profile, get_profile
from harness.profiles.base import EXCERPT_AFTER, EXCERPT_BEFORE, clean_text
from harness.profiles.zircon import (
    BOOT_TEST_SUCCESS,
    parse_platform_halt,
    strip_klog_prefix,
)

FIXTURES = Path(__file__).parent / "fixtures"
ZIRCON_SERIAL = Path(__file__).parent / "fixtures" / "zircon-serial"
LINUX = get_profile("linux")
ZIRCON = get_profile("zircon")


def syzkaller_console(path: Path) -> bytes:
    """The raw console part of a syzkaller report: its `TITLE:`-style header dropped."""
    data = path.read_bytes()
    if re.match(rb"[A-Z]+: ", data):
        data = data[data.index(b"\n\n") + 2:]
    return data


def line_at(data: bytes, offset: int) -> str:
    end = data.find(b"\n", offset)
    return clean_text(data[offset:end if end >= 0 else len(data)]).strip()


# -- lookup and simple fields ------------------------------------------------------------------


def test_get_profile_by_name_and_unknown_name() -> None:
    assert [get_profile(n).name for n in PROFILE_NAMES] == ["linux", "zircon"]
    with pytest.raises(ValueError, match=r"unknown guest profile 'fuchsia'.*linux, zircon"):
        get_profile("fuchsia")


def test_linux_commands_and_newline() -> None:
    assert (LINUX.newline, LINUX.reboot_command, LINUX.shutdown_command) == (
        "\n", "reboot -f", "poweroff -f")
    assert LINUX.panic_command == "echo c > /proc/sysrq-trigger"
    assert LINUX.reset_marker is not None
    assert LINUX.reset_marker.search(b"[   12.000000] reboot: Restarting system\r\n")


def test_zircon_commands_and_newline() -> None:
    assert ZIRCON.newline == "\r\n"
    assert (ZIRCON.reboot_command, ZIRCON.alt_reboot_command) == ("power reboot", "dm reboot")
    assert (ZIRCON.shutdown_command, ZIRCON.alt_shutdown_command) == (
        "power shutdown", "dm shutdown")
    assert ZIRCON.panic_command is None
    assert ZIRCON.reset_marker is not None
    assert ZIRCON.reset_marker.search(b"[00042.000] 00000:00000> platform_halt suggested_action "
                                      b"1 reason 2\r\n")


def test_linux_boot_marker_needs_the_whole_boot_id() -> None:
    """pexpect matches as bytes arrive: a marker cut inside the uuid must not match yet."""
    capture = (FIXTURES / "linux" / "panic-x64.log").read_bytes()
    m = LINUX.boot_marker.search(capture)
    assert m is not None
    assert m.group(0) == b"HARNESS-BOOT-OK boot_id=4a3ef222-a32b-4eb2-b600-a7eee65b93b2"
    assert LINUX.boot_marker.search(capture[: m.end() - 1]) is None


def test_prompts() -> None:
    assert LINUX.prompt.search(b"\r\nharness# \x1b[6n")
    assert ZIRCON.prompt.search(b"[runtests][PASSED] /boot/test/x\r\n$ ")
    # "$ " inside a line (an echoed command, a shell variable) is not the prompt.
    assert ZIRCON.prompt.search(b"echo $ HOME costs $ 5\r\n") is None


def test_zircon_boot_marker() -> None:
    assert ZIRCON.boot_marker.search(
        b"[00004.512] 01234:01240> console-launcher: console.shell: enabled\r\n")


# -- kernel arguments --------------------------------------------------------------------------

ENGINES = make_engines()


@pytest.mark.parametrize(("arch", "engine", "expected"), [
    ("x86_64", "qemu", ["console=ttyS0"]),
    ("arm64", "qemu", ["console=ttyAMA0"]),
    ("x86_64", "crosvm", []),
    ("arm64", "crosvm", []),
])
def test_linux_kernel_args(arch: str, engine: str, expected: list[str]) -> None:
    """crosvm adds console=ttyS0 itself (the engine says so: `adds_console_argument`)."""
    adds = ENGINES[engine].adds_console_argument
    assert LINUX.kernel_args(arch=arch, vmm_adds_console=adds, nodename="env-1") == expected


@pytest.mark.parametrize("engine", ["qemu", "crosvm"])
def test_zircon_kernel_args_x64_are_botanists_in_its_order(engine: str) -> None:
    """tools/botanist/targets/emulator.go, Emulator.Start: every emulator is node
    fuchsia-5254-1234-1234 whatever the environment is called, and the entropy mixin
    sits between the lockup-detector zeros and TERM=dumb."""
    mixin = "0123456789abcdef" * 4
    adds = ENGINES[engine].adds_console_argument
    assert ZIRCON.kernel_args(arch="x86_64", vmm_adds_console=adds, nodename="crosvm-x64-0",
                              entropy_mixin=mixin) == [
        "zircon.nodename=fuchsia-5254-1234-1234",
        "kernel.halt-on-panic=true",
        "kernel.lockup-detector.critical-section-threshold-ms=0",
        "kernel.lockup-detector.critical-section-fatal-threshold-ms=0",
        "kernel.lockup-detector.heartbeat-period-ms=0",
        "kernel.lockup-detector.heartbeat-age-threshold-ms=0",
        "kernel.lockup-detector.heartbeat-age-fatal-threshold-ms=0",
        f"kernel.entropy-mixin={mixin}",
        "TERM=dumb",
        "kernel.serial=legacy",
    ]


def test_zircon_kernel_args_arm64_has_no_legacy_serial_and_no_mixin_unless_given() -> None:
    args = ZIRCON.kernel_args(arch="arm64", vmm_adds_console=False, nodename="n")
    assert "kernel.serial=legacy" not in args
    assert not [a for a in args if a.startswith("kernel.entropy-mixin=")]
    assert args[-1] == "TERM=dumb"


# -- Zircon helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("[00042.1] 00000:00000> platform_halt suggested_action 1 reason 2", ("reboot", "no-crash")),
    ("platform_halt suggested_action 4 reason 2", ("shutdown", "no-crash")),
    ("platform_halt suggested_action 0 reason 4", ("halt", "panic")),
    ("platform_halt suggested_action 3 reason 6",
     ("reboot-recovery", "userspace-root-job-termination")),
    ("platform_halt suggested_action 0 reason 9", ("halt", "reason-9")),
    ("platform_halt suggested_action 7 reason 0", ("action-7", "invalid")),
    ("Halting...", None),
])
def test_parse_platform_halt(line: str, expected: tuple[str, str] | None) -> None:
    assert parse_platform_halt(line) == expected


def test_strip_klog_prefix_both_separators() -> None:
    text = "[00012.345] 01234:01235> hello\n[00012.346] 01234.01235>  indented\nplain\n"
    assert strip_klog_prefix(text) == "hello\n indented\nplain\n"


# -- Zircon crash detection on real captures ---------------------------------------------------

# The crash each syzkaller capture must be reported as (its first crash). syzkaller's own
# title is in the file's first line; the names differ because these are the harness's.
EXPECTED_FIRST = {
    "syzkaller-report-0.txt": "zircon-kernel-panic",
    "syzkaller-report-2.txt": "zircon-kernel-panic",
    "syzkaller-report-4.txt": "zircon-interrupt-recursion",  # named past "stopping other cpus"
    "syzkaller-report-6.txt": "zircon-kernel-panic",
    "syzkaller-report-8.txt": "zircon-assert",
    "syzkaller-report-10.txt": "zircon-unexpected-reboot",
    "syzkaller-report-12.txt": "zircon-kernel-panic",  # "stopping other cpus" comes first
    "syzkaller-report-14.txt": "zircon-kernel-panic",
    "syzkaller-report-16.txt": "zircon-kernel-panic",
    "syzkaller-report-18.txt": "zircon-kernel-panic",
    "syzkaller-report-20.txt": "zircon-kernel-panic",
    "syzkaller-report-22.txt": "zircon-panic-start",  # cut off right after the precursor
    "syzkaller-report-26.txt": "zircon-kernel-panic",
    "syzkaller-report-28.txt": "zircon-userspace-panic",  # netstack's Go panic: not fatal
    "syzkaller-report-30.txt": "zircon-unexpected-reboot",
}
SERIAL_FILES = sorted(ZIRCON_SERIAL.glob("syzkaller-report-*.txt"))


def test_every_capture_has_an_expectation() -> None:
    assert {p.name for p in SERIAL_FILES} == set(EXPECTED_FIRST)


@pytest.mark.parametrize("path", SERIAL_FILES, ids=lambda p: p.name)
def test_zircon_capture_yields_a_crash(path: Path) -> None:
    data = syzkaller_console(path)
    # syzkaller captures start after the guest booted: a boot banner in them is a reboot.
    crashes = ZIRCON.find_crashes(data, booted=True)
    assert crashes, f"no crash found in {path.name}"
    first = crashes[0]
    assert first.signature == EXPECTED_FIRST[path.name]
    signature = next(s for s in ZIRCON.crash_signatures if s.name == first.signature)
    assert signature.pattern.match(data, first.offset)
    # The excerpt holds the line the signature matched, cleaned the same way.
    assert line_at(data, first.offset) in first.excerpt
    fatal = ZIRCON.find_crash(data, booted=True)
    if signature.fatal:
        assert fatal == first
    else:
        assert fatal is None or fatal.offset > first.offset


@pytest.mark.parametrize("name", ["syzkaller-report-10.txt", "syzkaller-report-30.txt"])
def test_boot_banner_is_only_a_crash_after_boot(name: str) -> None:
    """The same capture read as a log from power-on is a normal boot, not a crash."""
    data = syzkaller_console(ZIRCON_SERIAL / name)
    assert ZIRCON.find_crashes(data) == []
    assert ZIRCON.find_crash(data, booted=True) is not None


def test_requested_reboot_is_not_a_crash() -> None:
    boot = (b"[00000.000] 00000.00000> welcome to Zircon\r\n"
            b"[00004.500] 01031:01038> console.shell: enabled\r\n$ power reboot\r\n")
    halt = b"[00009.100] 00000:00000> platform_halt suggested_action 1 reason 2\r\n"
    again = b"[00000.000] 00000.00000> welcome to Zircon\r\n"
    assert ZIRCON.find_crashes(boot + halt + again) == []
    unexpected = ZIRCON.find_crashes(boot + again)
    assert [c.signature for c in unexpected] == ["zircon-unexpected-reboot"]
    assert unexpected[0].offset == len(boot) + len(b"[00000.000] 00000.00000> ")


def test_panic_shell_is_ignored_after_boot_test_success() -> None:
    tail = b"Halted\r\nentering panic shell loop\r\n! "
    assert ZIRCON.find_crash(tail).signature == "zircon-panic-shell"  # type: ignore[union-attr]
    passed = b"\r\n" + BOOT_TEST_SUCCESS.encode() + b"\r\n" + tail
    assert ZIRCON.find_crash(passed) is None
    assert ZIRCON.crash_regex().search(b"entering panic shell loop") is None


def test_precursor_alone_and_followed() -> None:
    assert ZIRCON.find_crash(b"stopping other cpus\n").signature == (  # type: ignore[union-attr]
        "zircon-panic-start")
    data = b"stopping other cpus\nvector 8\ndouble fault, halting\n"
    crash = ZIRCON.find_crash(data)
    assert crash is not None
    assert crash.signature == "zircon-double-fault"
    assert crash.offset == data.index(b"double fault")


def test_assert_needs_its_leading_space() -> None:
    assert ZIRCON.find_crash(b"[00040.896] 01127.01246> ASSERT FAILED at (a.cc:1): x\n")
    assert ZIRCON.find_crash(b"STATIC_ASSERT FAILED to compile\n") is None


# -- Linux crash detection ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "line"), [
    ("panic-x64.log", b"[    2.862500] Kernel panic - not syncing: sysrq triggered crash"),
    ("panic-arm64.log", b"[    2.728017] Kernel panic - not syncing: sysrq triggered crash"),
])
def test_linux_real_sysrq_panic(name: str, line: bytes) -> None:
    data = (FIXTURES / "linux" / name).read_bytes()
    assert [c.signature for c in LINUX.find_crashes(data)] == ["linux-panic"]
    crash = LINUX.find_crash(data)
    assert crash is not None
    assert crash.signature == "linux-panic"
    assert data[crash.offset:].startswith(line)
    assert "Kernel panic - not syncing: sysrq triggered crash" in crash.excerpt
    assert "sysrq: Trigger a crash" in crash.excerpt  # the line before it
    assert "\r" not in crash.excerpt


@pytest.mark.parametrize("text", [
    b"harness# echo 'Kernel panic - not syncing: fake'\r\r\n",
    b"harness# echo c > /proc/sysrq-trigger\r\r\n",
    b"printf '%s\\n' 1a2bB; eval 'echo BUG: not really'; printf 1a2bE:%d $?\r\r\n",
    b"the test said: Oops: nothing happened\r\n",
    b"[    3.100000] RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable\r\n",
    b"[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r\n",
])
def test_linux_text_that_is_not_a_crash(text: bytes) -> None:
    assert LINUX.find_crashes(text) == []
    assert LINUX.crash_regex().search(text) is None


@pytest.mark.parametrize(("text", "name", "fatal"), [
    (b"[   12.345678] Kernel panic - not syncing: Fatal exception\r\n", "linux-panic", True),
    (b"Kernel panic - not syncing: VFS: Unable to mount root fs\r\n", "linux-panic", True),
    (b"harness# [   12.3] Kernel panic - not syncing: hung_task\r\n", "linux-panic", True),
    (b"[    5.1] BUG: kernel NULL pointer dereference, address: 0000000000000000\r\n",
     "linux-bug", True),
    (b"[    5.1] kernel BUG at mm/slub.c:431!\r\n", "linux-bug", True),
    (b"[    5.1] BUG: KASAN: use-after-free in foo+0x1/0x2\r\n", "linux-kasan", True),
    (b"[    5.1] BUG: KFENCE: out-of-bounds read in bar+0x1/0x2\r\n", "linux-kfence", True),
    (b"[    5.1] BUG: KCSAN: data-race in baz / qux\r\n", "linux-kcsan", False),
    (b"[    5.1] Oops: 0002 [#1] PREEMPT SMP NOPTI\r\n", "linux-oops", True),
    (b"[    5.1] Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP\r\n",
     "linux-oops", True),
    (b"[    5.1] Unable to handle kernel paging request at virtual address dead\r\n",
     "linux-unable-to-handle", True),
    (b"[    5.1] general protection fault, probably for non-canonical address 0xdead: 0000\r\n",
     "linux-general-protection-fault", True),
    (b"[    5.1] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 foo+0x1/0x2\r\n",
     "linux-warning", False),
    (b"[  245.1] INFO: task kworker/0:1:12 blocked for more than 120 seconds.\r\n",
     "linux-hung-task", False),
    (b"[   30.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\r\n",
     "linux-rcu-stall", False),
])
def test_linux_signatures(text: bytes, name: str, fatal: bool) -> None:
    crashes = LINUX.find_crashes(text)
    assert [c.signature for c in crashes] == [name]
    assert (LINUX.find_crash(text) is not None) == fatal
    assert (LINUX.crash_regex().search(text) is not None) == fatal


@pytest.mark.parametrize("profile", [LINUX, ZIRCON], ids=lambda p: p.name)
@pytest.mark.parametrize("text", [
    b"KVM internal error. Suberror: 1\r\nemulation failure\r\n",
    b"kvm run failed Bad address\r\n",
    b"[ERROR:src/crosvm/sys/linux/vcpu.rs:491] vcpu hit unknown error: Bad address\r\n",
])
def test_vmm_lines_are_not_console_crashes(profile: Profile, text: bytes) -> None:
    """The VMM writes these to its stderr: the crash scan reads them there (tefmocheck's host
    log), so a guest that prints them on its console has not crashed."""
    assert profile.find_crashes(text) == []
    assert profile.crash_watch().search(text) is None


def test_warning_before_panic_does_not_hide_it() -> None:
    data = (b"[    5.0] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 foo+0x1/0x2\r\n"
            b"[    5.0] Call Trace:\r\n"
            b"[    5.1] Kernel panic - not syncing: panic_on_warn set ...\r\n")
    assert [c.signature for c in LINUX.find_crashes(data)] == ["linux-warning", "linux-panic"]
    crash = LINUX.find_crash(data)
    assert crash is not None
    assert crash.signature == "linux-panic"


def test_one_oops_is_one_crash_named_by_its_first_line() -> None:
    data = (b"[    5.0] Unable to handle kernel NULL pointer dereference at virtual address 0\r\n"
            + b"[    5.0] Mem abort info:\r\n" * 5
            + b"[    5.0] Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP\r\n"
            + b"[    5.0] Kernel panic - not syncing: Oops: Fatal exception\r\n")
    crashes = LINUX.find_crashes(data)
    assert [c.signature for c in crashes] == ["linux-unable-to-handle"]
    # Far enough apart, the same lines are separate crashes.
    spaced = data.replace(b"[    5.0] Mem abort info:\r\n" * 5,
                          b"[    5.0] Mem abort info:\r\n" * 40)
    assert len(LINUX.find_crashes(spaced)) == 2


def test_find_crash_from_start_offset() -> None:
    first = b"[    1.0] BUG: soft lockup - CPU#0 stuck for 22s!\r\n"
    filler = b"[    2.0] something\r\n" * 50
    second = b"[    3.0] Kernel panic - not syncing: second\r\n"
    data = first + filler + second
    assert LINUX.find_crash(data).offset == 0  # type: ignore[union-attr]
    later = LINUX.find_crash(data, start=len(first))
    assert later is not None
    assert later.offset == len(first) + len(filler)
    assert later.signature == "linux-panic"
    # A start in the middle of a line does not make `^` match there.
    assert LINUX.find_crash(b"xx Kernel panic - not syncing", start=3) is None


def test_unexpected_linux_reboot() -> None:
    boot = (b"[    0.000000] Linux version 6.1.0-56-amd64\r\n"
            b"HARNESS-BOOT-OK boot_id=4a3ef222-a32b-4eb2-b600-a7eee65b93b2 uptime=2.85\r\n"
            b"harness# ")
    again = b"[    0.000000] Linux version 6.1.0-56-amd64\r\n"
    crashes = LINUX.find_crashes(boot + again)
    assert [c.signature for c in crashes] == ["linux-unexpected-reboot"]
    assert LINUX.find_crashes(boot + b"reboot -f\r\r\n[    9.0] reboot: Restarting system\r\n"
                              + again) == []
    # A panic that resets the guest (panic=1) is reported as the panic, not also as a reboot.
    panic = b"[    9.0] Kernel panic - not syncing: x\r\n[    9.0] Rebooting in 1 seconds..\r\n"
    assert [c.signature for c in LINUX.find_crashes(boot + panic + again)] == ["linux-panic"]


def test_excerpt_is_about_40_clean_lines_around_the_match() -> None:
    noisy = b"[  1.%06d] line %d \x1b[1mbold\x1b[0m\x07\r\r\n"
    before = b"".join(noisy % (i, i) for i in range(50))
    panic = b"[  2.000000] Kernel panic - not syncing: x\r\n"
    after = b"".join(b"[  3.%06d] trace %d\r\n" % (i, i) for i in range(50))
    crash = LINUX.find_crash(before + panic + after)
    assert crash is not None
    lines = crash.excerpt.split("\n")
    assert len(lines) == EXCERPT_BEFORE + EXCERPT_AFTER
    assert lines[EXCERPT_BEFORE] == "[  2.000000] Kernel panic - not syncing: x"
    assert lines[0] == "[  1.000040] line 40 bold"
    assert lines[-1] == f"[  3.{EXCERPT_AFTER - 2:06d}] trace {EXCERPT_AFTER - 2}"
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", crash.excerpt)


def test_excerpt_survives_invalid_utf8() -> None:
    crash = LINUX.find_crash(b"\xff\xfe\xc3\r\n[ 1.0] Kernel panic - not syncing: \xe2\x82\r\n")
    assert crash is not None
    assert "\ufffd" in crash.excerpt


# -- the live watch ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [LINUX, ZIRCON], ids=lambda p: p.name)
def test_crash_regex_holds_exactly_the_unconditional_fatal_signatures(profile: Profile) -> None:
    watch = profile.crash_regex()
    for sig in profile.crash_signatures:
        sample = _sample(sig.pattern)
        assert sig.pattern.search(sample), sig.name
        expected = sig.fatal and sig.unconditional
        assert (watch.search(sample) is not None) == expected, sig.name


def _sample(pattern: re.Pattern[bytes]) -> bytes:
    """A line each signature matches, built from the examples above."""
    samples = [
        b"ZIRCON KERNEL PANIC", b"ZIRCON KERNEL OOPS", b"DRIVER OOPS",
        b"lockup_detector: no heartbeat from cpu 1", b"double fault, halting",
        b"Supervisor Page Fault exception, halting", b"recursion in interrupt handler",
        b"==1==ERROR: AddressSanitizer: heap-use-after-free", b"==1==ERROR: LeakSanitizer: x",
        b"WARNING: ThreadSanitizer: data race", b"SUMMARY: UndefinedBehaviorSanitizer: x",
        b"> ASSERT FAILED at (x.cc:1)", b"DEVICE SUSPEND TIMED OUT",
        *(c.string.encode() for c in serial_checks()),
        b"entering panic shell loop", b"stopping other cpus", b"<== fatal exception: process x",
        b"> panic: runtime error", b"welcome to Zircon",
        b"[ 1.0] Kernel panic - not syncing", b"[ 1.0] BUG: KASAN: x", b"[ 1.0] BUG: KFENCE: x",
        b"[ 1.0] BUG: KCSAN: x", b"[ 1.0] BUG: unable to handle", b"[ 1.0] Oops: 0002",
        b"[ 1.0] Unable to handle kernel x", b"[ 1.0] general protection fault",
        b"[ 1.0] WARNING: CPU: 0", b"[ 1.0] INFO: task a:1 blocked for more than 9 seconds",
        b"[ 1.0] rcu: INFO: rcu_sched detected stalls", b"KVM internal error. Suberror: 1",
        b"[    0.000000] Linux version 6.1",
    ]
    for s in samples:
        if pattern.search(s):
            return s
    raise AssertionError(f"no sample for {pattern.pattern!r}")


def test_crash_regex_as_a_pexpect_pattern() -> None:
    """The console adds crash_regex to every expect: a panic ends the wait for the prompt."""
    read_fd, write_fd = os.pipe()
    try:
        child = pexpect.fdpexpect.fdspawn(read_fd, timeout=5)
        os.write(write_fd, b"harness# echo c > /proc/sysrq-trigger\r\r\n"
                           b"[    2.862201] sysrq: Trigger a crash\r\n"
                           b"[    2.862500] Kernel panic - not syncing: sysrq triggered crash\r\n")
        index = child.expect([re.compile(rb"\nharness# "), LINUX.crash_regex(), pexpect.EOF])
        assert index == 1
        assert child.after.endswith(b"Kernel panic - not syncing")
    finally:
        os.close(write_fd)
        os.close(read_fd)


@pytest.mark.parametrize("profile", [LINUX, ZIRCON], ids=lambda p: p.name)
def test_crash_watch_finds_what_the_alternation_finds(profile: Profile) -> None:
    """The console's hinted watch and the one-regex alternation agree, match for match,
    on every sample line and on real logs, from every line start."""
    watch, regex = profile.crash_watch(), profile.crash_regex()
    logs = [p.read_bytes() for p in sorted((FIXTURES / "zircon").glob("*.log"))]
    logs += [p.read_bytes() for p in sorted((FIXTURES / "linux").glob("*.log"))]
    logs += [p.read_bytes() for p in sorted(ZIRCON_SERIAL.glob("*.txt"))]
    logs.append(b"\n".join(_sample(s.pattern) for s in profile.crash_signatures))
    found = 0
    for data in logs:
        for pos in [0, *(m.end() for m in re.finditer(rb"\n", data))][::7]:
            a, b = watch.search(data, pos), regex.search(data, pos)
            assert (a and a.span()) == (b and b.span()), (profile.name, pos)
            found += a is not None
    assert found > 10


# -- what a restored Linux guest runs first (harness.snapshot) --------------------------------

AFTER_RESTORE_SCENARIO = """
set -u
mount -t tmpfs none /sys/class/net
for i in lo:0x9 eth0:0x1003 eth1:0x1002 wlan0:0x1043; do
    mkdir /sys/class/net/${i%%:*}; echo ${i#*:} > /sys/class/net/${i%%:*}/flags
done
mkdir /sys/class/net/noflags
cp /bin/sleep "$T/udhcpc"; "$T/udhcpc" 30 & dhcp=$!
"$T/sleepy" 30 & other=$!
# Until the forked shell has become udhcpc (its comm says so), as a running udhcpc would be.
until read c < /proc/$dhcp/comm && [ "$c" = udhcpc ]; do sleep 0.01; done
date() { echo "date $*" >> "$T/log"; return $DATE_STATUS; }
ip() { echo "ip $*" >> "$T/log"; }
@FIXUP@
echo "status $?" >> "$T/log"
if kill -0 $dhcp 2>/dev/null && [ "$DATE_STATUS" != 0 ]; then
    echo "udhcpc untouched" >> "$T/log"; kill $dhcp
else
    wait $dhcp; echo "udhcpc $?" >> "$T/log"
fi
kill -0 $other && echo "other alive" >> "$T/log"; kill $other
echo "vars ${_hn-unset} ${_hp-unset}" >> "$T/log"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount and PID namespace")
@pytest.mark.parametrize("shell", [["busybox", "sh"], ["dash"]])
@pytest.mark.parametrize("date_status", [0, 1])
def test_after_restore_sets_the_clock_renews_up_links_and_signals_udhcpc_only(
        tmp_path: Path, shell: list[str], date_status: int) -> None:
    """The fix-up a restored guest runs, in busybox's shell as in the guest (and dash): in a
    private mount and PID namespace, over a sysfs of four interfaces (and one without flags)
    and a /proc with a process named udhcpc and another one, `date` and `ip` recorded by
    shell functions (which come before busybox's applets)."""
    import shutil
    import subprocess

    for tool in (shell[0], "unshare"):
        assert shutil.which(tool), f"{tool} is missing (Debian: busybox-static, util-linux, dash)"
    shutil.copy("/bin/sleep", tmp_path / "sleepy")
    script = AFTER_RESTORE_SCENARIO.replace("@FIXUP@", LINUX.after_restore(1_700_000_000) or "")
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", *shell, "-c", script],
        env={**os.environ, "T": str(tmp_path), "DATE_STATUS": str(date_status)},
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # Nothing from the fix-up itself (the shell reports the stand-in udhcpc's end: a sleep,
    # unlike udhcpc, dies of SIGUSR1).
    assert proc.stderr.replace("User defined signal 1\n", "") == "", proc.stderr
    log = (tmp_path / "log").read_text().splitlines()
    if date_status:  # the clock could not be set: that is the status, and nothing else runs
        assert log == ["date -u -s @1700000000", "status 1", "udhcpc untouched",
                       "other alive", "vars unset unset"]
        return
    # eth0 and wlan0 are up (IFF_UP, bit 0), lo is skipped, eth1 is down, `noflags` unreadable.
    assert log == ["date -u -s @1700000000",
                   "ip link set eth0 down", "ip link set eth0 up",
                   "ip link set wlan0 down", "ip link set wlan0 up",
                   "status 0",
                   "udhcpc 138",  # 128 + SIGUSR1: the renew signal reached udhcpc
                   "other alive",
                   "vars unset unset"]
