"""The Linux guest: a Debian kernel with the harness's busybox initramfs.

The crash table is LAVA's list of kernel-message starts. Every kernel line is
matched only where the kernel puts it: at a line start, or right after a
printk timestamp (a panic that interrupts the prompt lands mid-line, but
still behind its timestamp). A test that prints "Kernel panic" in the middle
of a line, or the console's echo of a command the harness typed (which
follows the prompt), can therefore never fail a run.

Which signatures are fatal, and why:

- `Kernel panic - not syncing`: the machine is dead.
- `Oops`, `BUG:`, `kernel BUG at`, `Unable to handle kernel`,
  `general protection fault`: the kernel killed a task in kernel context and
  is now tainted, often holding locks; later results cannot be trusted and
  the next command may hang, so waiting would only turn the crash into a
  timeout that blames the wrong step.
- KASAN and KFENCE reports: memory was already corrupted (use-after-free,
  out-of-bounds); same reasoning.
- KCSAN reports: not fatal. A data race report leaves the kernel state
  intact, KCSAN keeps running and rate-limits itself; it is reported.
- `WARNING:`, hung-task and RCU-stall reports: not fatal. The kernel goes on
  (under TCG on a loaded host an RCU stall is often just slowness); they are
  reported so a reader sees them next to the result.
- `Linux version` at 0.000000 after the guest was up: an unexpected reboot
  (a triple fault resets the machine without a word).

The VMM's own failure lines (QEMU's `KVM internal error`, `kvm run failed`,
crosvm's vcpu errors) go to the VMM's stderr, never to the console; the crash
scan of a finished test reads them there (harness.fuchsia.tefmocheck).
"""

from __future__ import annotations

import dataclasses

from harness.profiles.base import CrashSignature, Profile, signature_pattern

# Where a kernel message can start: a line start, or behind a printk timestamp
# (optionally with the caller id of CONFIG_PRINTK_CALLER).
_K = rb"(?:^|\[ *\d+\.\d+\](?:\[ *[CT]\d+\])? )"


def _sig(name: str, hint: bytes, regex: bytes, *, fatal: bool = True,
         boot_banner: bool = False, anchored: bool = True) -> CrashSignature:
    return CrashSignature(name, signature_pattern((_K if anchored else b"") + regex),
                          fatal=fatal, boot_banner=boot_banner, hint=hint or None)


CRASH_SIGNATURES: tuple[CrashSignature, ...] = (
    _sig("linux-panic", b"Kernel panic", rb"Kernel panic - not syncing"),
    _sig("linux-kasan", b"BUG: KASAN", rb"BUG: KASAN: "),
    _sig("linux-kfence", b"BUG: KFENCE", rb"BUG: KFENCE: "),
    _sig("linux-kcsan", b"BUG: KCSAN", rb"BUG: KCSAN: ", fatal=False),
    _sig("linux-bug", b"BUG", rb"(?:BUG: (?!KASAN: |KFENCE: |KCSAN: )|kernel BUG at )"),
    _sig("linux-oops", b"Oops", rb"(?:Internal error: )?Oops(?::| -) "),
    _sig("linux-unable-to-handle", b"Unable to handle", rb"Unable to handle kernel "),
    _sig("linux-general-protection-fault", b"general protection", rb"general protection fault"),
    _sig("linux-warning", b"WARNING: ", rb"WARNING: ", fatal=False),
    _sig("linux-hung-task", b"INFO: task ", rb"INFO: task \S+ blocked for more than \d+ seconds",
         fatal=False),
    _sig("linux-rcu-stall", b"detected stalls", rb"rcu: INFO: \S+ detected stalls", fatal=False),
    _sig("linux-unexpected-reboot", b"Linux version", rb"\[ *0\.000000\] Linux version ",
         boot_banner=True, anchored=False),
)

# The init prints `HARNESS-BOOT-OK boot_id=<uuid> uptime=<secs>`. The full uuid is
# part of the marker so that pexpect, which matches as bytes arrive, can never
# match a half-received id.
BOOT_MARKER = signature_pattern(
    rb"HARNESS-BOOT-OK boot_id=[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
)
PROMPT = signature_pattern(rb"harness# ")
# After a restore: the wall clock jumps to now first (it stood still from the save: under TCG
# the guest's clocksource follows QEMU's virtual clock, which a migration carries over; the
# RTC follows the host's and is right already), before anything slow runs: `date` is set to
# the second the host read, so every moment between that read and `date` running is error.
# Then every interface that is up goes down and up, so its driver renegotiates the link, and
# a running udhcpc renews its lease (SIGUSR1); at save time the harness's init has brought up
# `lo` only, so normally nothing moves. Only `date` is a program: which interface is up is
# read from sysfs (IFF_UP, bit 0 of `flags`) and which process is udhcpc from /proc/PID/comm,
# with the shell's own `read` and `kill` (no `ip link show | grep` per interface, no subshell,
# no `killall`). Measured on qemu-arm64 under TCG, the first command after a restore takes
# 0.4-0.7 s whatever it is (QEMU translates the guest's code anew), the next ones 50 ms: the
# fix-up is that first command, and adds little to it. The status is `date`'s; the
# variables, named `_h*`, are unset after.
AFTER_RESTORE = (
    "date -u -s @{epoch} >/dev/null && {{ for _hn in /sys/class/net/*; do "
    "read _hf 2>/dev/null < \"$_hn/flags\" || continue; _hi=${{_hn##*/}}; "
    "[ \"$_hi\" != lo ] && [ $((_hf & 1)) = 1 ] && "
    "{{ ip link set \"$_hi\" down; ip link set \"$_hi\" up; }}; done; "
    "for _hc in /proc/[0-9]*/comm; do read _hp 2>/dev/null < \"$_hc\" && "
    "[ \"$_hp\" = udhcpc ] && _hp=${{_hc#/proc/}} && kill -USR1 \"${{_hp%/comm}}\"; done; "
    "unset _hn _hf _hi _hc _hp; true; }}"
)
RESET_MARKER = signature_pattern(rb"reboot: Restarting system")


@dataclasses.dataclass(frozen=True)
class LinuxProfile(Profile):
    def kernel_args(self, *, arch: str, vmm_adds_console: bool, nodename: str,
                    entropy_mixin: str = "") -> list[str]:
        """Only the console: the panic policy is the environment's, the log level the init's.

        A VMM that adds the console argument itself (crosvm adds `console=ttyS0` for
        a serial port marked `console`) gets none: a second `console=` would make
        the kernel write everything twice.
        """
        del nodename, entropy_mixin  # the init sets no hostname; Linux seeds itself
        if vmm_adds_console:
            return []
        if arch in ("arm64", "aarch64"):
            return ["console=ttyAMA0"]
        return ["console=ttyS0"]

    def after_restore(self, epoch_s: int) -> str | None:
        return AFTER_RESTORE.format(epoch=int(epoch_s))

    def panic_args(self, policy: str) -> list[str]:
        """reset: a panic reboots the guest after 1 s, the harness reports the crash and goes
        on; halt: the guest stays down with the panic on screen until the harness stops it."""
        return ["panic=1" if policy == "reset" else "panic=0"]


PROFILE = LinuxProfile(
    name="linux",
    boot_marker=BOOT_MARKER,
    prompt=PROMPT,
    newline="\n",
    crash_signatures=CRASH_SIGNATURES,
    # The init is a plain script, not an init system that would handle `reboot`'s signal.
    reboot_command="reboot -f",
    shutdown_command="poweroff -f",
    os="linux",
    panic_command="echo c > /proc/sysrq-trigger",
    reset_marker=RESET_MARKER,
)
