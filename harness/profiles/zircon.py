"""The Zircon (Fuchsia) guest: its console shell, its power commands, its crash lines.

The crash table is the list Fuchsia's own infrastructure scans serial logs
for (tools/testing/tefmocheck), plus what syzkaller's Fuchsia reports show
in real captures (recursion in the interrupt handler, the x86 fault banner,
the panic's "stopping other cpus", a reboot nobody asked for, user-space
crashes). Fuchsia fails a task on every signature in its list, so they are
all fatal here; user-space crashes (a Go or Rust panic, crashsvc's
"fatal exception" report) are not, because core tests crash processes on
purpose and the test that owns the process reports the failure itself.
"""

from __future__ import annotations

import dataclasses
import re

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


def _sig(name: str, regex: bytes, *, fatal: bool = True, precursor: bool = False,
         boot_banner: bool = False, unless: bytes | None = None,
         hint: bytes | None = None) -> CrashSignature:
    """A signature; a pattern that is a plain literal is its own hint."""
    if hint is None and not re.search(rb"[\\^$.|?*+()\[\]{}]", regex):
        hint = regex
    return CrashSignature(name, signature_pattern(regex), fatal=fatal, precursor=precursor,
                          boot_banner=boot_banner, unless=unless, hint=hint)


CRASH_SIGNATURES: tuple[CrashSignature, ...] = (
    _sig("zircon-kernel-panic", rb"ZIRCON KERNEL PANIC"),
    _sig("zircon-kernel-oops", rb"ZIRCON KERNEL OOPS"),
    _sig("zircon-driver-oops", rb"DRIVER OOPS"),
    _sig("zircon-lockup", rb"lockup_detector: no heartbeat from"),
    _sig("zircon-double-fault", rb"double fault, halting"),
    _sig("zircon-kernel-fault", rb"exception, halting"),
    _sig("zircon-interrupt-recursion", rb"recursion in interrupt handler"),
    _sig("zircon-asan", rb"ERROR: AddressSanitizer"),
    _sig("zircon-lsan", rb"ERROR: LeakSanitizer"),
    _sig("zircon-tsan", rb"WARNING: ThreadSanitizer"),
    _sig("zircon-ubsan", rb"SUMMARY: UndefinedBehaviorSanitizer"),
    # Fuchsia matches " ASSERT FAILED" with its leading space (so that no identifier
    # ending in ASSERT counts); a kernel log prefix or "DEBUG" supplies the space.
    _sig("zircon-assert", rb"(?:^| )ASSERT FAILED", hint=b"ASSERT FAILED"),
    _sig("zircon-suspend-timeout", rb"DEVICE SUSPEND TIMED OUT"),
    # Two entries of one name, so that each has a literal hint for the live watch.
    _sig("host-kvm-error", rb"kvm run failed "),
    _sig("host-kvm-error", rb"KVM internal error\. Suberror", hint=b"KVM internal error"),
    _sig("zircon-panic-shell", rb"entering panic shell loop", unless=BOOT_TEST_SUCCESS.encode()),
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


def strip_klog_prefix(text: str) -> str:
    """Text with every kernel log prefix removed, leaving what the program printed."""
    return KLOG_PREFIX.sub("", text)


@dataclasses.dataclass(frozen=True)
class ZirconProfile(Profile):
    def kernel_args(self, *, arch: str, engine: str, nodename: str,
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
        del engine, nodename  # the same on QEMU and crosvm; botanist names every emulator alike
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
    alt_reboot_command="dm reboot",
    alt_shutdown_command="dm shutdown",
    reset_marker=RESET_MARKER,
)
