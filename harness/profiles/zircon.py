"""The Zircon (Fuchsia) guest: its console shell, its power commands, its crash lines.

The crash table is Fuchsia's own: every serial-log check of its crash scan
(harness.fuchsia.tefmocheck, from tools/testing/tefmocheck/check-configs.yaml),
in its order, with its except-blocks and except-strings. A check Fuchsia turns
into a flake (always_flake) is reported but does not end a test; checks that
only count when the task or a test failed (the skip_* flags) need outcomes a
console does not have, and are left to the scan of the finished test's logs
(which turns them into synthetic tests). After them come lines tefmocheck does
not scan for but syzkaller's Fuchsia reports show in real captures (recursion
in the interrupt handler, the x86 fault banner, the panic's "stopping other
cpus", a reboot nobody asked for, user-space crashes). User-space crashes (a
Go or Rust panic, crashsvc's "fatal exception" report) are not fatal, because
core tests crash processes on purpose and the test that owns the process
reports the failure itself.

The VMM's own failure lines (`kvm run failed`, QEMU's KVM internal error,
crosvm's vcpu errors) are not on the console: they are on the VMM's stderr,
which the crash scan reads as the host log.
"""

from __future__ import annotations

import dataclasses
import re

from harness.fuchsia.tefmocheck import StringInLogCheck, serial_checks
from harness.profiles.base import CrashSignature, Profile, signature_pattern

BOOT_TEST_SUCCESS = "***Boot-test-successful!-MDd7/O65SuVZ23yGAaQG4CedYQGH9E1/58r73pSAVK0=***"
# Matches zxtest's final `N FAILED TEST(S)` line, which is why Fuchsia uses it.
BOOT_TEST_FAILURE = "FAILED TEST"
BOOT_TEST_TIMEOUT_S = 600
BOOT_TEST_TIMEOUT_MESSAGE = 'timed out before success string "{success}" was read from serial'
# What seriallistener says when it reads the failure string (tools/testing/seriallistener).
BOOT_TEST_FAILURE_MESSAGE = 'failure string found: "{failure}"'

# botanist's DefaultEmulatorNodename (tools/botanist/targets/emulator.go): every emulator
# it starts is this node, a name of the form ffx gives an emulator from its MAC address.
EMULATOR_NODENAME = "fuchsia-5254-1234-1234"
ENTROPY_MIXIN_ARG = "kernel.entropy-mixin="
# botanist's minEntropyBytes: 32 bytes (256 bits), passed as lowercase hex.
ENTROPY_MIXIN_BYTES = 32

# platform_halt's arguments, as zircon/kernel numbers them.
HALT_ACTIONS = ("halt", "reboot", "reboot-bootloader", "reboot-recovery", "shutdown")
HALT_REASONS = (
    "invalid", "unknown", "no-crash", "oom", "panic", "software-watchdog",
    "userspace-root-job-termination",
)
_PLATFORM_HALT = re.compile(r"platform_halt suggested_action (\d+) reason (\d+)")

# A kernel log line's prefix: `[00012.345] 01234:01235> ` (older dumps: `01234.01235`).
KLOG_PREFIX = re.compile(r"^\[\d+\.\d+\] \d+[.:]\d+> ", re.MULTILINE)

# What Fuchsia's serial tester (tools/testing/testrunner/tester.go, FuchsiaSerialTester)
# reads on the console. NewFuchsiaSerialTester waits up to 30 s for the driver manager's
# bootup line before the first test, and goes on without it (the line may have passed).
BOOTUP_COMPLETED = "[driver_manager.cm] INFO: Bootup completed"
BOOTUP_WAIT_S = 30.0
# runtests (tools/testing/runtests: StartedSignature, SuccessSignature, FailureSignature),
# each followed by the test's name.
RUNTESTS_STARTED = "RUNNING TEST: "
RUNTESTS_PASSED = "[runtests][PASSED] "
RUNTESTS_FAILED = "[runtests][FAILED] "
# run-test-suite: `Running test 'URL'` when it starts, `URL completed with result: R` at
# the end, R one of these (tester.go lists all eight).
RUN_TEST_SUITE_RESULTS = ("PASSED", "FAILED", "INCONCLUSIVE", "TIMED_OUT", "ERROR", "SKIPPED",
                          "CANCELLED", "DID_NOT_FINISH")


def run_test_suite_started(url: str) -> str:
    """The line run-test-suite prints as it starts `url`, as tester.go waits for it."""
    return f"Running test '{url}'"


def run_test_suite_completed(url: str, result: str) -> str:
    """run-test-suite's last line for `url`; tester.go maps `result` to the test's status."""
    return f"{url} completed with result: {result}"


def _sig(name: str, regex: bytes, *, fatal: bool = True, precursor: bool = False,
         boot_banner: bool = False, hint: bytes | None = None) -> CrashSignature:
    """A signature; a pattern that is a plain literal is its own hint."""
    if hint is None and not re.search(rb"[\\^$.|?*+()\[\]{}]", regex):
        hint = regex
    return CrashSignature(name, signature_pattern(regex), fatal=fatal, precursor=precursor,
                          boot_banner=boot_banner, hint=hint)


# Names the harness has long reported for Fuchsia's strings; the rest are derived.
_NAMES = {
    "ZIRCON KERNEL PANIC": "zircon-kernel-panic",
    "ZIRCON KERNEL OOPS": "zircon-kernel-oops",
    "DRIVER OOPS": "zircon-driver-oops",
    "lockup_detector: no heartbeat from": "zircon-lockup",
    "double fault, halting": "zircon-double-fault",
    "ERROR: AddressSanitizer": "zircon-asan",
    "ERROR: LeakSanitizer": "zircon-lsan",
    "WARNING: ThreadSanitizer": "zircon-tsan",
    "SUMMARY: UndefinedBehaviorSanitizer": "zircon-ubsan",
    " ASSERT FAILED": "zircon-assert",
    "DEVICE SUSPEND TIMED OUT": "zircon-suspend-timeout",
    "entering panic shell loop": "zircon-panic-shell",
    "received kernel OOM signal": "zircon-oom",
    "Timed out loading dynamic linker from fuchsia.ldsvc.Loader": "zircon-ldsvc-timeout",
    "failed to write blob": "zircon-blob-write-failure",
}


def signature_name(check: StringInLogCheck) -> str:
    """The harness's name for a check's signature: `zircon-` and the string's words."""
    if check.string in _NAMES:
        return _NAMES[check.string]
    words = re.findall(r"[a-z0-9]+", check.string.lower())
    return "zircon-" + "-".join(words)[:48].rstrip("-")


def check_signature(check: StringInLogCheck) -> CrashSignature:
    """A serial-log check of Fuchsia's crash scan as a console crash signature."""
    needle = check.string.encode()
    return CrashSignature(
        signature_name(check), signature_pattern(re.escape(needle)),
        fatal=not check.always_flake, hint=needle,
        except_strings=tuple(s.encode() for s in check.except_strings),
        except_blocks=check.except_blocks,
    )


def fuchsia_signatures() -> tuple[CrashSignature, ...]:
    """The serial-log checks a console can decide on its own, in tefmocheck's order."""
    return tuple(check_signature(c) for c in serial_checks() if not c.depends_on_outcome)


CRASH_SIGNATURES: tuple[CrashSignature, ...] = (
    *fuchsia_signatures(),
    # Lines tefmocheck does not look for, seen in syzkaller's Fuchsia captures.
    _sig("zircon-kernel-fault", rb"exception, halting"),
    _sig("zircon-interrupt-recursion", rb"recursion in interrupt handler"),
    # Printed only by halt_other_cpus(), which runs when a panic starts; usually
    # followed by the line that says what the panic is, which then names it.
    _sig("zircon-panic-start", rb"stopping other cpus", precursor=True),
    _sig("zircon-process-crash", rb"<== fatal exception", fatal=False),
    _sig("zircon-userspace-panic", rb"(?:^|> )(?:panic: |thread '[^'\n]*' panicked at )",
         fatal=False, hint=b"panic"),
    _sig("zircon-unexpected-reboot", rb"welcome to Zircon", boot_banner=True),
)

BOOT_MARKER = signature_pattern(rb"console\.shell: enabled")
# `$ ` only at a line start: command lines and output are full of "$ " mid-line.
PROMPT = signature_pattern(rb"^\$ ")
RESET_MARKER = signature_pattern(rb"platform_halt suggested_action \d+ reason \d+")


def parse_platform_halt(line: str) -> tuple[str, str] | None:
    """(action, reason) named from a `platform_halt suggested_action A reason R` line.

    Numbers outside the known tables (older kernels numbered reasons
    differently) come back as `action-N` / `reason-N` rather than a wrong name.
    """
    m = _PLATFORM_HALT.search(line)
    if m is None:
        return None
    action, reason = int(m.group(1)), int(m.group(2))
    return (
        HALT_ACTIONS[action] if action < len(HALT_ACTIONS) else f"action-{action}",
        HALT_REASONS[reason] if reason < len(HALT_REASONS) else f"reason-{reason}",
    )


def platform_halt_line(action: str, reason: str) -> str:
    """The exact text Fuchsia's reboot test waits for, from names in HALT_ACTIONS/HALT_REASONS.

    src/tests/reboot/reboottest/reboottest.go formats
    `platform_halt suggested_action %d reason %d` with the numbers of
    zircon/kernel/include/platform.h and zircon/boot/crash-reason.h (the same
    order as the two tables above).
    """
    return (f"platform_halt suggested_action {HALT_ACTIONS.index(action)} "
            f"reason {HALT_REASONS.index(reason)}")


def strip_klog_prefix(text: str) -> str:
    """Text with every kernel log prefix removed, leaving what the program printed."""
    return KLOG_PREFIX.sub("", text)


@dataclasses.dataclass(frozen=True)
class ZirconProfile(Profile):
    def kernel_args(self, *, arch: str, vmm_adds_console: bool, nodename: str,
                    entropy_mixin: str = "") -> list[str]:
        """Exactly what Fuchsia's botanist passes to every emulator, in its order.

        tools/botanist/targets/emulator.go (Emulator.Start): the node name, a
        panic halts (so the crash stays on the console for the harness to
        read), the lockup detector off (an emulator on a busy host misses
        heartbeats without anything being wrong), the entropy mixin that
        stands in for a bootloader's, `TERM=dumb`, and on x64 the legacy UART
        as the serial console. The builder's and the test environment's
        arguments follow (harness.engines.base.kernel_args).

        The node name is botanist's for every emulator (`DefaultEmulatorNodename`,
        the `fuchsia-MMMM-MMMM-MMMM` form ffx derives from the emulator's MAC),
        whatever the environment is called. `entropy_mixin` is the fresh
        per-boot value (harness.fuchsia.entropy_mixin); without one (a plan
        with nothing booted) the argument is left out, as botanist does when
        its random source fails.
        """
        # The same on QEMU and crosvm (Zircon's console is `kernel.serial`, which a
        # Linux console= does not touch); botanist names every emulator alike.
        del vmm_adds_console, nodename
        args = [
            f"zircon.nodename={EMULATOR_NODENAME}",
            "kernel.halt-on-panic=true",
            "kernel.lockup-detector.critical-section-threshold-ms=0",
            "kernel.lockup-detector.critical-section-fatal-threshold-ms=0",
            "kernel.lockup-detector.heartbeat-period-ms=0",
            "kernel.lockup-detector.heartbeat-age-threshold-ms=0",
            "kernel.lockup-detector.heartbeat-age-fatal-threshold-ms=0",
        ]
        if entropy_mixin:
            args.append(f"{ENTROPY_MIXIN_ARG}{entropy_mixin}")
        args.append("TERM=dumb")
        if arch in ("x86_64", "x64"):
            args.append("kernel.serial=legacy")
        return args


PROFILE = ZirconProfile(
    name="zircon",
    boot_marker=BOOT_MARKER,
    prompt=PROMPT,
    newline="\r\n",
    crash_signatures=CRASH_SIGNATURES,
    reboot_command="power reboot",
    shutdown_command="power shutdown",
    os="fuchsia",
    alt_reboot_command="dm reboot",
    alt_shutdown_command="dm shutdown",
    reset_marker=RESET_MARKER,
    takes_entropy_mixin=True,
    crash_scan_serial=True,
)
