"""crosvm: the command line exactly as crosvm defines it, control through its own CLI.

Everything here follows crosvm's own contract, read from its source at commit
f1e797a6 (src/crosvm/cmdline.rs, src/main.rs): current options only, each as `--flag value`; global
flags before `run`; the kernel last. A VM's control is a separate `crosvm
SUBCOMMAND ... SOCKET` invocation per operation, and an exit status is the
only thing crosvm says about how the VM ended, so `--extended-status` is
always passed: without it a reboot, a crash and a panic would all read as 0.

crosvm exits on a guest reset instead of restarting the guest; the Guest
relaunches it (the engine only reports RESET). A guest panic reported through
pvpanic does not end the VM: crosvm records it and exits 34 at the guest's next
reset or power-off (src/crosvm/sys/linux.rs, the VmEventType::Panic arm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from harness.engines.base import (
    BinaryLookup,
    Engine,
    RestoreFrom,
    RunPaths,
    Vmm,
    VmmSetup,
    binary_key,
    kernel_args,
    kvm_access_problem,
)
from harness.engines.process import ProcessVmm, describe_returncode, kill_and_reap, start_vmm
from harness.environments import Environment
from harness.errors import HarnessError, Unsupported
from harness.exits import ExitInfo, ExitKind
from harness.expected_devices import platform
from harness.images.model import GuestImage
from harness.profiles.base import clean_text

BINARY_ENV = "HARNESS_CROSVM"
NO_BINARY = "no crosvm binary: set HARNESS_CROSVM or put crosvm on PATH"

# The `crosvm run` options this engine may emit: all current (crosvm f1e797a6), long form.
RUN_OPTIONS = frozenset({
    "--cpus", "--mem", "--serial", "--initrd", "--params", "--socket", "--disable-sandbox",
    "--block", "--net", "--no-balloon", "--no-rng", "--no-usb", "--gpu", "--vsock",
    "--restore",
})
# Still accepted by crosvm with a warning; never emitted (a warning today, an error tomorrow).
# Every `crosvm run` flag src/crosvm/cmdline.rs marks "(DEPRECATED)" or warns "is deprecated"
# about when used. (`--host_ip`, with an underscore, is rewritten to `--host-ip` by
# prepare_argh_args in src/main.rs; no other `_` is.)
DEPRECATED_RUN_OPTIONS = frozenset({
    "--cid", "--cpu-cluster", "--disk", "--evdev", "--gpu-display", "--host-ip", "--keyboard",
    "--kvm-device", "--mac", "--mouse", "--mte", "--multi-touch", "--net-vq-pairs",
    "--netmask", "--oem-strings", "--pci-start", "--pmem-device", "--root", "--rotary",
    "--rw-pmem-device", "--rwdisk", "--rwroot", "--single-touch", "--split-irqchip",
    "--switches", "--syslog-tag", "--tap-fd", "--tap-name", "--trackpad", "--vfio-platform",
    "--vhost-net", "--vhost-net-device", "--vhost-vsock-device", "--vhost-vsock-fd",
})

# COM1 is the console and reads stdin (crosvm reads input only from a serial marked `stdin`
# once the serial is named explicitly). `earlycon`: crosvm adds `earlycon=uart8250,...` so
# the kernel writes to the UART from its first instruction instead of from when the 8250
# driver registers; a crash in early boot then reaches the console and the panic watcher
# rather than ending in a silent boot timeout. Fuchsia's ffx passes it too, and it costs
# nothing measurable (boot to prompt under the double: 5.6 s with it, 5.7 s without).
CONSOLE_SERIAL = "type=stdout,hardware=serial,num=1,console,earlycon,stdin"

CONTROL_TIMEOUT_S = 10.0

_GZIP_MAGIC = b"\x1f\x8b"

# Exit statuses from crosvm's src/main.rs (CommandStatus; errors are 1 via
# src/sys/linux/main.rs error_to_exit_code), as the harness must read them. README's table of
# exit statuses says the same, and tests/test_crosvm_engine.py holds the two together.
_EXITS: dict[int, tuple[ExitKind, str]] = {
    0: (ExitKind.STOP, "crosvm stopped the VM (status 0): the guest powered off (ACPI S5 / "
                       "PSCI SYSTEM_OFF), `crosvm stop` was used, or an x86 guest "
                       "triple-faulted, which crosvm also reports as 0 (the harness passes "
                       "--extended-status; without it a reboot or a panic would read 0 too)"),
    32: (ExitKind.RESET, "the guest rebooted (status 32): crosvm exits on a reset and does "
                         "not restart the VM; the harness launches it again"),
    33: (ExitKind.CRASH, "the VM crashed (status 33): a vCPU or a virtual device failed "
                         "inside crosvm (on a KVM that cannot run the guest, the log says "
                         "`vcpu hit unknown error`)"),
    34: (ExitKind.PANIC, "the guest kernel panicked and said so through pvpanic (status 34): "
                         "crosvm records the pvpanic and exits at the guest's next reset or "
                         "power-off, so a guest that panics and halts keeps crosvm running"),
    35: (ExitKind.INVALID_ARGS, "crosvm could not parse its command line (status 35, argh's "
                                "parse failure: an unknown flag or a malformed key=value "
                                "value): a harness bug; the VMM stderr log says which"),
    36: (ExitKind.WATCHDOG, "crosvm's vCPU stall detector reset the VM (status 36, watchdog: "
                            "a vCPU stopped making progress)"),
    1: (ExitKind.ERROR, "crosvm failed after parsing its command line (status 1): the "
                        "configuration was refused (two `stdin` serials, two root disks, "
                        "earlycon on a virtio-console, a non-printable --params), or building "
                        "or running the VM failed (no KVM, a missing kernel or disk); the VMM "
                        "stderr log says why"),
}

# What crosvm logs before it kills itself: the panic hook's message (src/sys/linux/
# panic_hook.rs, then abort()), and sys::cleanup()'s warning before kill(0, SIGKILL)
# (src/sys/linux/main.rs).
# Rust's panic message: "thread 'NAME' panicked at FILE:LINE:COL:" and the message on the
# next line (each logged on its own, with crosvm's `[TIME LEVEL crosvm] ` prefix).
_PANIC_LINE = re.compile(rb"panicked at [^\n]*(?:\n(?:\[[^\]\n]*\] )?([^\n]*))?")
_CLEANUP_SIGKILL = b"not all child processes have exited; sending SIGKILL"
# The run loop's last event (src/crosvm/sys/linux.rs), which a cleanup SIGKILL hides: the
# status crosvm would have exited with. A pvpanic recorded before it makes it a panic.
_RUN_LOOP_ENDS: tuple[tuple[bytes, ExitKind], ...] = (
    (b"vcpu requested shutdown", ExitKind.STOP),
    (b"vcpu requested reset", ExitKind.RESET),
    (b"vcpu crashed", ExitKind.CRASH),
    (b"device crashed", ExitKind.CRASH),
    (b"guest panic event", ExitKind.PANIC),
    (b"vcpu stall detected", ExitKind.WATCHDOG),
)
_PVPANIC_LINE = b"Guest reported panic [Code: Guest panicked]"
STDERR_TAIL_BYTES = 64 * 1024

# The parser check: `crosvm run` with this right after `run` gets past argh and the
# configuration checks and fails at the first thing that needs the host, KVM (crosvm opens
# the kernel and initrd first, then the hypervisor: src/crosvm/sys/linux.rs run_config).
PARSE_CHECK_HYPERVISOR = "kvm[device=/nonexistent]"
PARSE_CHECK_EXPECTED = "failed to open KVM device /nonexistent"

# Snapshots: `crosvm suspend --full`, `crosvm snapshot take PATH SOCKET`, `crosvm run --restore
# PATH` (src/crosvm/cmdline.rs SnapshotTakeCommand, RunCommand::restore; vm_control/src/lib.rs
# do_snapshot, do_restore). crosvm calls the feature highly experimental
# (docs/book/src/architecture/snapshotting.md), and its own snapshot/restore test
# (e2e_tests/tests/suspend_resume.rs) runs on x86_64 only: tools/impl/test_config.py keeps
# e2e_tests off aarch64 (DO_NOT_RUN_AARCH64). The harness restores where crosvm tests it.
SNAPSHOT_ARCHES = ("x86_64",)
SNAPSHOT_ARCH_REASON = ("crosvm snapshots are experimental and exercised upstream on x86_64 "
                        "only (its e2e suspend/snapshot/restore test does not run on aarch64: "
                        "tools/impl/test_config.py DO_NOT_RUN_AARCH64)")

PROGRAM = "crosvm"


def _check_executable(path: str, source: str) -> BinaryLookup:
    where = f"{BINARY_ENV}={path}" if source == BINARY_ENV else path
    if not os.path.exists(path):
        return BinaryLookup(PROGRAM, path, source, f"{where}: no such file")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return BinaryLookup(PROGRAM, path, source, f"{where}: not an executable file")
    return BinaryLookup(PROGRAM, os.path.abspath(path), source)


def find_binary(explicit: str | None = None,
                environ: Mapping[str, str] | None = None) -> BinaryLookup:
    """The crosvm to run: the constructor's argument, then $HARNESS_CROSVM, then PATH."""
    environ = os.environ if environ is None else environ
    if explicit:
        return _check_executable(explicit, "argument")
    configured = environ.get(BINARY_ENV)
    if configured:
        return _check_executable(configured, BINARY_ENV)
    found = shutil.which(PROGRAM, path=environ.get("PATH"))
    if found:
        return BinaryLookup(PROGRAM, os.path.abspath(found), "PATH")
    return BinaryLookup(PROGRAM, None, "", NO_BINARY)


def _keyvalue(value: str) -> str:
    """A serde_keyvalue value: double-quoted when it would otherwise split, end early or fail.

    serde_keyvalue (serde_keyvalue/src/key_values.rs any_string) ends an unquoted value at
    `,`, `[` or `]`, refuses `"` and `'` in one ("\" and ' can only be used in quoted
    strings"), and refuses an empty one; inside double quotes only `\"` and `\\` are
    escapes.
    """
    if value == "" or any(c in value for c in ',"\'[]'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _tun_problem(tap: str) -> str | None:
    """Whether the TAP `tap` can be opened the way crosvm opens it (TUNSETIFF by name)."""
    tunsetiff, iff_tap, iff_no_pi, iff_vnet_hdr = 0x400454CA, 0x0002, 0x1000, 0x4000
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"virtio-net on crosvm needs a TAP device, and /dev/net/tun cannot be opened: " \
               f"{e.strerror}"
    try:
        ifr = struct.pack("16sH22x", tap.encode()[:15], iff_tap | iff_no_pi | iff_vnet_hdr)
        fcntl.ioctl(fd, tunsetiff, ifr)
    except OSError as e:
        return (f"virtio-net on crosvm needs the TAP device '{tap}', which cannot be opened "
                f"here ({e.strerror}): create it for this user (`ip tuntap add {tap} mode tap "
                f"user $USER vnet_hdr`) or run with CAP_NET_ADMIN")
    finally:
        os.close(fd)
    return None


def device_unavailable(env: Environment, device: str) -> str | None:
    """Why a test that needs `device` cannot run on crosvm environment `env` here (None: it
    can).

    A per-test reason rather than a whole-environment one: a missing TAP only
    costs the network tests, never the reboot or core tests of the same guest.
    """
    if device == "virtio-net":
        if not env.devices.has("virtio-net"):
            return f"device config '{env.devices.name}' has no virtio-net"
        tap = env.tap
        if not tap:
            return (f"virtio-net on crosvm needs a TAP device (crosvm has no user-mode "
                    f"networking): set devices.virtio-net.tap in device config "
                    f"'{env.devices.name}'")
        return _tun_problem(str(tap))
    if device == "virtio-vsock" and env.devices.has("virtio-vsock"):
        try:
            os.close(os.open("/dev/vhost-vsock", os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            return f"virtio-vsock on crosvm needs /dev/vhost-vsock: {e.strerror}"
    return None


class ControlTimeout(HarnessError):
    """A control subcommand that did not finish within its deadline."""


# vm_control/src/balloon_tube.rs: before the guest's driver has set the balloon up, crosvm
# answers every balloon command with ENOTCONN; after, a statistics request waits for the
# guest to return a report (devices/src/virtio/balloon.rs handle_stats_queue), as long as it
# takes, and holds every later balloon command behind it.
BALLOON_NOT_READY = ("the guest's virtio-balloon driver has not set the device up (no "
                     "driver, or not loaded yet), and crosvm refuses balloon commands "
                     "until it has")
BALLOON_STATS_WAITING = ("crosvm answers balloon_stats only with a report from the guest's "
                         "balloon driver, and the guest gave none (its vCPUs suspended, "
                         "halted or panicked, or a driver without a statistics queue); "
                         "crosvm keeps waiting and holds later balloon commands behind it")


def classify(returncode: int, stderr_tail: bytes = b"") -> ExitInfo:
    """What a `crosvm run` exit means, from its status and the end of its stderr log.

    A signal is not always someone else's doing: crosvm aborts (SIGABRT) on an internal
    panic, dies of a fault signal on a crash of its own, and its cleanup SIGKILLs its own
    process group when device processes do not exit (the log says so first).
    """
    if returncode >= 0:
        known = _EXITS.get(returncode)
        if known is not None:
            return ExitInfo(known[0], returncode, known[1])
        return ExitInfo(ExitKind.ERROR, returncode,
                        f"crosvm exited with status {returncode}, which crosvm does not "
                        f"define; the VMM stderr log may say why")
    sig = -returncode
    if sig == signal.SIGABRT:
        panic = _PANIC_LINE.search(stderr_tail)
        said = "; the VMM stderr log has the panic message"
        if panic:
            words = b" ".join(filter(None, (panic.group(0).split(b"\n", 1)[0], panic.group(1))))
            said = f": it said {clean_text(words).strip()!r}"
        return ExitInfo(ExitKind.CRASH, returncode,
                        f"crosvm aborted (SIGABRT) on an internal panic, a crosvm bug "
                        f"(release builds abort on panic, and its panic hook calls "
                        f"abort()){said}")
    if sig in _FAULT_SIGNALS:
        return ExitInfo(ExitKind.CRASH, returncode,
                        f"crosvm crashed ({describe_returncode(returncode)}): a fault in "
                        f"crosvm itself, not a signal from outside")
    if sig == signal.SIGKILL and _CLEANUP_SIGKILL in stderr_tail:
        kind, how = _run_loop_end(stderr_tail)
        return ExitInfo(kind, returncode,
                        f"crosvm killed its own process group during cleanup (SIGKILL): its "
                        f"device processes had not exited after the VM ended, so its exit "
                        f"status was lost; the VM had ended with {how}")
    return ExitInfo(ExitKind.KILLED, returncode,
                    f"crosvm was {describe_returncode(returncode)} (it did not exit by "
                    f"itself: the harness, a timeout or another process ended it"
                    + ("; crosvm's own cleanup would have logged that it was sending "
                       "SIGKILL" if sig == signal.SIGKILL else "") + ")")


_FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                            signal.SIGSYS, signal.SIGTRAP})


def _run_loop_end(stderr_tail: bytes) -> tuple[ExitKind, str]:
    """The run loop's last logged event (and a pvpanic before it), as crosvm would have
    turned them into its status; ERROR when the log does not say."""
    last: tuple[int, bytes, ExitKind] | None = None
    for line, kind in _RUN_LOOP_ENDS:
        at = stderr_tail.rfind(line)
        if at >= 0 and (last is None or at > last[0]):
            last = (at, line, kind)
    if last is None:
        return ExitKind.ERROR, "an event its log does not show (a `crosvm stop`, or an error)"
    at, line, kind = last
    panicked = stderr_tail.rfind(_PVPANIC_LINE, 0, at) >= 0
    if panicked:
        return ExitKind.PANIC, f"{line.decode()!r} after a pvpanic (crosvm's status 34)"
    return kind, repr(line.decode())


def stderr_tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> bytes:
    """The last `limit` bytes of a log that may be very large (crosvm can flood it)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            return f.read(limit)
    except OSError:
        return b""


class CrosvmVmm(ProcessVmm, Vmm):
    """A running `crosvm run`; each control operation is one `crosvm SUBCOMMAND ... SOCKET`."""

    def __init__(self, process: Process, *, binary: str, socket: Path,
                 control_timeout_s: float = CONTROL_TIMEOUT_S,
                 stderr_log: Path | None = None) -> None:
        super().__init__(process)
        self.binary = binary
        self.socket = socket
        self.control_timeout_s = control_timeout_s
        self.stderr_log = stderr_log

    async def exit_info(self, returncode: int) -> ExitInfo:
        """The exit's meaning, with what crosvm logged last (a panic, its cleanup's SIGKILL)."""
        tail = stderr_tail(self.stderr_log) if self.stderr_log and returncode < 0 else b""
        return classify(returncode, tail)

    async def control(self, *args: str, timeout: float | None = None) -> str:
        """Run `crosvm --no-syslog ARGS... SOCKET` and return its stdout; raise on failure.

        Waits (within the deadline) for crosvm to create its socket, so a control
        operation issued right after launch is not a spurious failure.
        """
        deadline = self.control_timeout_s if timeout is None else timeout
        argv = [self.binary, "--no-syslog", *args, str(self.socket)]
        shown = shlex.join(argv)
        if self.returncode is not None:
            raise HarnessError(f"`{shown}`: the VM has already exited "
                               f"({describe_returncode(self.returncode)})")
        try:
            with anyio.fail_after(deadline):
                while not self.socket.exists():
                    if self.returncode is not None:
                        raise HarnessError(f"`{shown}`: the VM exited "
                                           f"({describe_returncode(self.returncode)}) before "
                                           f"creating its control socket")
                    await anyio.sleep(0.02)
                result = await anyio.run_process(argv, stdin=subprocess.DEVNULL, check=False)
        except TimeoutError:
            raise ControlTimeout(f"`{shown}` did not complete within {deadline:g} s") from None
        stdout = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            said = "\n".join(s for s in (result.stderr.decode(errors="replace").strip(),
                                         stdout.strip()) if s) or "no output"
            message = (f"`{shown}` failed with {describe_returncode(result.returncode)}: "
                       f"{said}")
            if "os error 95" in said or "not supported" in said.lower():
                raise Unsupported(message)
            raise HarnessError(message)
        return stdout

    async def stop(self, timeout: float = 10.0) -> None:
        """`crosvm stop`, then wait; kill the process group if either misses the deadline."""
        if self.returncode is None:
            with anyio.move_on_after(timeout):
                with contextlib.suppress(HarnessError):
                    await self.control("stop", timeout=timeout)
                await self.wait()
        # Also reaps whatever crosvm left in its group (sandboxed device processes).
        await kill_and_reap(self.process)

    async def power_button(self) -> None:
        await self.control("powerbtn")

    async def balloon(self, size_bytes: int) -> None:
        """Inflate the balloon to `size_bytes`: crosvm's SIZE is what the balloon takes from
        the guest (0 gives everything back), not the guest's resulting memory size."""
        if size_bytes < 0:
            raise HarnessError(f"balloon size must be >= 0, got {size_bytes}")
        try:
            await self.control("balloon", str(int(size_bytes)))
        except HarnessError as e:
            if "os error 107" in str(e) or f'"Err": {errno.ENOTCONN}' in str(e):
                raise HarnessError(f"{e}: {BALLOON_NOT_READY}") from None
            raise

    async def balloon_stats(self) -> dict[str, Any]:
        """crosvm's `BalloonStats` body: `balloon_actual` (bytes held) and the guest's `stats`."""
        try:
            out = await self.control("balloon_stats")
        except ControlTimeout as e:
            raise ControlTimeout(f"{e}: {BALLOON_STATS_WAITING}") from None
        except HarnessError as e:
            if "os error 107" in str(e) or f'"Err": {errno.ENOTCONN}' in str(e):
                raise HarnessError(f"{e}: {BALLOON_NOT_READY}") from None
            raise
        try:
            reply = json.loads(out)
            body = reply["BalloonStats"]
            return {"balloon_actual": int(body["balloon_actual"]), "stats": dict(body["stats"])}
        except (ValueError, KeyError, TypeError) as e:
            raise HarnessError(f"crosvm balloon_stats printed something unexpected ({e}): "
                               f"{out.strip()[:500]}") from None

    async def suspend(self) -> None:
        await self.control("suspend")

    async def resume(self) -> None:
        await self.control("resume")

    async def save_state(self, dest: Path, timeout: float = 120.0) -> None:
        """`crosvm suspend --full`, then `crosvm snapshot take DEST SOCKET`, as crosvm's own
        e2e test saves a VM (vCPUs and devices asleep first: docs/book/src/architecture/
        snapshotting.md). DEST must not exist: crosvm creates it as a directory."""
        await self.control("suspend", "--full")
        await self.control("snapshot", "take", str(dest), timeout=timeout)

    async def finish_restore(self, source: RestoreFrom, timeout: float) -> None:
        """Wait for `crosvm run --restore` to finish restoring: crosvm answers control
        requests only once the restore is done, and `resume --full` is the side-effect-free
        one its help names for that (src/crosvm/cmdline.rs ResumeCommand)."""
        del source  # given on the command line (--restore)
        await self.control("resume", "--full", timeout=timeout)


class CrosvmEngine(Engine):
    name = "crosvm"
    accelerators = ("kvm",)  # crosvm has no TCG
    relaunches_on_reset = True  # it exits 32 on a guest reset (src/main.rs)
    adds_console_argument = True  # console=ttyS0 for the serial marked `console`

    def __init__(self, binary: str | None = None, *, log_level: str = "info",
                 control_timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        """`binary` None: $HARNESS_CROSVM, then PATH, looked up when asked (`locate`).

        `log_level` is crosvm's; its log goes to the VMM stderr log, never the console.
        """
        self._explicit = binary
        self.log_level = log_level
        self.control_timeout_s = control_timeout_s
        self._versions: dict[str, str] = {}
        self._snapshot_support: dict[str, str | None] = {}

    # -- binary ------------------------------------------------------------------------------

    def locate(self, arch: str) -> BinaryLookup:
        """The constructor's binary, then $HARNESS_CROSVM, then PATH (one for every arch)."""
        del arch
        return find_binary(self._explicit)

    # -- argv ------------------------------------------------------------------------------

    def check_image(self, env: Environment, image: GuestImage) -> None:
        """crosvm loads an ELF, a raw arm64 Image or an LZ4-framed one, never a gzip Image."""
        _refuse_gzip(image.crosvm_kernel, env.arch)

    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        """`crosvm GLOBAL... run OPTIONS... KERNEL`, a pure function of its inputs."""
        kernel = image.crosvm_kernel
        dev = env.devices
        argv = [setup.binary, "--extended-status", "--log-level", self.log_level, "--no-syslog",
                "run",
                "--cpus", f"num-cores={env.cpus}",
                "--mem", f"size={env.memory_mib}",
                "--serial", CONSOLE_SERIAL]
        if image.initrd is not None:  # for Zircon this is the ZBI
            argv += ["--initrd", str(image.initrd)]
        params = kernel_args(env, vmm_adds_console=self.adds_console_argument)
        if params:
            argv += ["--params", " ".join(params)]
        argv += ["--socket", str(paths.control_socket)]
        if paths.restore is not None:
            argv += ["--restore", str(paths.restore.state)]
        if env.disable_sandbox:
            argv.append("--disable-sandbox")
        for disk in paths.disks:
            argv += ["--block", f"path={_keyvalue(str(disk))}"]
        tap = env.tap
        if tap:
            argv += ["--net", f"tap-name={_keyvalue(str(tap))}"]
        if dev.has("virtio-console"):
            argv += ["--serial", "type=sink,hardware=virtio-console,num=1"]
        if not dev.has("virtio-balloon"):
            argv.append("--no-balloon")
        if not dev.has("virtio-rng"):
            argv.append("--no-rng")
        if not dev.has("xhci"):
            argv.append("--no-usb")
        if dev.has("virtio-gpu"):
            backend = str(dev.option("virtio-gpu", "backend", "2d"))
            argv += ["--gpu", f"backend={_keyvalue(backend)}"]
        if dev.has("virtio-vsock"):
            argv += ["--vsock", f"cid={int(dev.option('virtio-vsock', 'cid', 3))}"]
        argv.append(str(kernel))
        return argv

    # -- exit ------------------------------------------------------------------------------

    def implicit_devices(self, env: Environment) -> frozenset[str]:
        """What crosvm presents on `env`'s arch whatever the configuration says (its UARTs, an
        RTC, pvpanic; rng, balloon, xHCI go by --no-*): harness/expected_devices.py."""
        return frozenset(platform("crosvm", env.arch))

    def classify_exit(self, returncode: int) -> ExitInfo:
        """The meaning of a status alone; a launched VM's `exit_info` adds its stderr log."""
        return classify(returncode)

    # -- launch ----------------------------------------------------------------------------

    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> CrosvmVmm:
        argv = self.command(env, image, paths, setup)
        # crosvm removes its socket only on an orderly exit; a stale one (from a crosvm
        # that was killed) makes the next start fail with "Address already in use".
        with contextlib.suppress(FileNotFoundError):
            paths.control_socket.unlink()
        process = await start_vmm(argv, console_fd=console_fd, stderr_path=paths.stderr_log)
        return CrosvmVmm(process, binary=argv[0], socket=paths.control_socket,
                         control_timeout_s=self.control_timeout_s, stderr_log=paths.stderr_log)

    def device_unavailable(self, env: Environment, device: str) -> str | None:
        return device_unavailable(env, device)

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot_unavailable(self, env: Environment) -> str | None:
        """None where this crosvm can save and restore `env`'s guest, else why not: the arch
        (SNAPSHOT_ARCHES), then the binary's own help, which must know `snapshot take`
        and `run --restore` (a probe of the binary, once per binary)."""
        if env.arch not in SNAPSHOT_ARCHES:
            return SNAPSHOT_ARCH_REASON
        found = self.locate(env.arch)
        if found.path is None:
            return found.problem or NO_BINARY
        key = binary_key(found.path)
        if key not in self._snapshot_support:
            rc, out, err = await _run_quiet([found.path, "snapshot", "take", "--help"])
            problem: str | None = None
            if rc != 0 or "snapshot_path" not in out + err:
                problem = (f"this crosvm has no `snapshot take` (`crosvm snapshot take --help` "
                           f"exited {rc}: {(err or out).strip()[:200]})")
            else:
                rc, out, err = await _run_quiet([found.path, "run", "--help"])
                if not _mentions(out + err, "--restore"):
                    problem = "this crosvm's `run` has no --restore option (`crosvm run --help`)"
            self._snapshot_support[key] = problem
        return self._snapshot_support[key]

    # -- version and the parser check ------------------------------------------------------

    async def version(self, binary: str) -> str:
        """`crosvm version`'s answer for `binary`, asked once per binary (path, size, mtime)."""
        key = binary_key(binary)
        if key not in self._versions:
            rc, out, err = await _run_quiet([binary, "version"])
            self._versions[key] = (out.strip() or err.strip()) if rc == 0 else ""
        return self._versions[key]

    async def parse_check(self, argv: list[str], timeout: float = 30.0) -> ParseCheck:
        """Run `argv` with a hypervisor device that does not exist: a command line crosvm
        accepts gets past argh and every configuration check and fails opening KVM (exit 1,
        "failed to open KVM device /nonexistent"); one it refuses exits 35, or 1 with
        another message. Needs no working KVM, and starts no VM."""
        checked = parse_check_argv(argv)
        rc, out, err = await _run_quiet(checked, timeout=timeout)
        ok = rc == 1 and PARSE_CHECK_EXPECTED in err
        said = _deciding_line(err, PARSE_CHECK_EXPECTED if ok else None) or out.strip()
        return ParseCheck(ok=ok, status=rc, said=said, argv=checked)

    # -- doctor ----------------------------------------------------------------------------

    async def doctor(self, env_set: Iterable[Environment],
                     argvs: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        """What a person needs to see to know why crosvm environments run or are skipped:
        the binary, its version, whether it knows every option the harness passes, and
        whether /dev/kvm opens (each environment's verdict is harness doctor's, from
        harness.accel). (Any: a JSON report.)

        `argvs`: each environment's command line as `harness plan` prints it; each is put
        through `parse_check` by the binary found (the parser check).
        """
        found = self.locate("")
        report: dict[str, Any] = {
            "binary": found.path, "source": found.source or None, "problem": found.problem,
            "version": None, "options": {}, "missing_options": [],
            "kvm": kvm_access_problem() or "ok",
        }
        envs = [e for e in env_set if e.engine == self.name]
        if found.problem is not None:
            if argvs:
                report["parse_check"] = {name: f"not run: {found.problem}" for name in argvs}
            return report
        assert found.path is not None
        report["version"] = await self.version(found.path) or None
        helps = {}
        for where, args in (("global", ["--help"]), ("run", ["run", "--help"])):
            rc, out, err = await _run_quiet([found.path, *args])
            helps[where] = out + err
            if rc != 0:
                report.setdefault("help_problems", []).append(
                    f"`crosvm {' '.join(args)}` failed with status {rc}")
        options: dict[str, bool] = {}
        for env in envs:
            argv = self.command(env, _placeholder_image(env), RunPaths(Path("/x")),
                                VmmSetup(found.path, "kvm"))
            global_opts, run_opts = split_options(argv)
            options |= {o: _mentions(helps["global"], o) for o in global_opts}
            options |= {o: _mentions(helps["run"], o) for o in run_opts}
        report["options"] = dict(sorted(options.items()))
        report["missing_options"] = [o for o, ok in report["options"].items() if not ok]
        if argvs:
            checks: dict[str, str] = {}
            for name, argv in argvs.items():
                result = await self.parse_check([found.path, *argv[1:]])
                checks[name] = result.describe()
            report["parse_check"] = checks
        return report


@dataclasses.dataclass(frozen=True)
class ParseCheck:
    """One command line through the real parser: whether crosvm accepted it, and its words."""

    ok: bool
    status: int
    said: str
    argv: list[str]

    def describe(self) -> str:
        if self.ok:
            return f"ok: parsed and validated (stopped at KVM: {self.said})"
        why = ("crosvm could not parse it" if self.status == 35 else
               f"crosvm refused it with status {self.status}")
        return f"FAILED: {why}: {self.said or 'no output'}"


def parse_check_argv(argv: list[str]) -> list[str]:
    """`argv` with `--hypervisor kvm[device=/nonexistent]` right after `run`."""
    at = argv.index("run") + 1
    return [*argv[:at], "--hypervisor", PARSE_CHECK_HYPERVISOR, *argv[at:]]


_LOG_PREFIX = re.compile(r"^\[[^\]]*\] ")


def _deciding_line(stderr: str, wanted: str | None) -> str:
    """The line of crosvm's stderr that says what happened: the one holding `wanted`, or the
    last error (argh's `arg parsing failed`, main's `exiting with error 1`)."""
    lines = [_LOG_PREFIX.sub("", ln).strip() for ln in stderr.splitlines() if ln.strip()]
    if wanted is not None:
        return next((ln for ln in lines if wanted in ln), "")
    errors = [ln for ln in lines if "arg parsing failed" in ln or "exiting with error" in ln]
    return (errors or lines or [""])[-1]


def split_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """The global `--flags` (before `run`) and the `run` options of a crosvm argv.

    Values never start with `--` here (they are keyvalue strings, paths and numbers),
    so every `--` item is an option.
    """
    at = argv.index("run")
    global_opts = [a for a in argv[1:at] if a.startswith("--")]
    run_opts = [a for a in argv[at + 1:-1] if a.startswith("--")]
    return global_opts, run_opts


def _mentions(help_text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def _placeholder_image(env: Environment) -> GuestImage:
    return GuestImage(name=env.image.name or "image", arch=env.arch, kernel=Path("/KERNEL"),
                      initrd=Path("/INITRD"))


async def _run_quiet(argv: list[str], timeout: float = 10.0) -> tuple[int, str, str]:
    try:
        with anyio.fail_after(timeout):
            r = await anyio.run_process(argv, stdin=subprocess.DEVNULL, check=False)
    except (OSError, TimeoutError) as e:
        return -1, "", str(e) or "timed out"
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def _refuse_gzip(kernel: Path, arch: str) -> None:
    """crosvm loads an ELF, a raw arm64 Image or an LZ4-framed one, never a gzip Image."""
    try:
        with open(kernel, "rb") as f:
            magic = f.read(2)
    except OSError:
        return  # a missing kernel is for crosvm to report, with its own words
    if magic == _GZIP_MAGIC:
        hint = (" (use the uncompressed Image: gunzip it, or GuestImage.kernel_uncompressed)"
                if arch == "arm64" else "")
        raise HarnessError(f"{kernel} is gzip-compressed, and crosvm does not load a "
                           f"gzip-compressed kernel{hint}")
