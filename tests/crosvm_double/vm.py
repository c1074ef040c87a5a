"""The VM: QEMU (TCG) underneath, crosvm's behaviour on top, and crosvm's control server.

How a run ends, from crosvm's run loop (src/crosvm/sys/linux.rs, the VmEventType arms)
and vcpu loop (src/crosvm/sys/linux/vcpu.rs), commit f1e797a:

- A pvpanic write does not end the VM: the `Panic` arm only records the code and logs
  "Guest reported panic [Code: Guest panicked]". The next run-loop event (the guest's
  reset, power-off, a vCPU crash) ends it, and because a panic was recorded the status
  is 34 (GuestPanic) whatever that event was. A guest that panics and halts keeps crosvm
  running; `crosvm stop` then ends it with 0 (the Exit request never looks at pvpanic).
  QEMU runs with `-action panic=none` so that it behaves the same: GUEST_PANICKED is an
  event, not an exit.
- A reset exits 32 and is never restarted; a power-off exits 0; an x86 triple fault is a
  vCPU Shutdown exit, 0 as well (QEMU calls it a reset: its `-d cpu_reset` log tells).
- Without `--extended-status` every status but 1 and 35 reads 0.

Devices (x86_64/src/lib.rs, aarch64/src/lib.rs, src/crosvm/sys/linux.rs create_devices):
virtio-PCI rng, balloon, xHCI unless `--no-*`; pvpanic is a PCI device (1b36:0011) on both
arches; x86 has COM1..COM4 on I/O ports. What QEMU cannot give on arm64 is in README.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from crosvm_double import config, faults
from crosvm_double.base import (
    EXIT_CRASH,
    EXIT_PANIC,
    EXIT_RESET,
    EXIT_STOP,
    Logger,
    RunError,
)
from crosvm_double.cmdline import Globals, RunConfig
from crosvm_double.qmp import Qmp, QmpError

BALLOON_QOM = "/machine/peripheral/balloon0"
STAT_NAMES = {  # crosvm BalloonStats field -> QEMU guest-stats key
    "swap_in": "stat-swap-in",
    "swap_out": "stat-swap-out",
    "major_faults": "stat-major-faults",
    "minor_faults": "stat-minor-faults",
    "free_memory": "stat-free-memory",
    "total_memory": "stat-total-memory",
    "available_memory": "stat-available-memory",
    "disk_caches": "stat-disk-caches",
    "hugetlb_allocations": "stat-htlb-pgalloc",
    "hugetlb_failures": "stat-htlb-pgfail",
    "shared_memory": None,
    "unevictable_memory": None,
}
PR_SET_PDEATHSIG = 1
QCOW_MAGIC = b"QFI\xfb"
# A snapshot of the double: a directory, as crosvm's (snapshot/src/lib.rs SnapshotWriter: the
# path must not exist, fragments are files in it), holding QEMU's migration stream and the
# VM's shape, which a restore checks as crosvm's do_restore does ("bad cpu count in
# snapshot").
SNAPSHOT_STREAM = "qemu-migration"
SNAPSHOT_SHAPE = "vm.json"
MIGRATION_TIMEOUT_S = 300.0


def kernel_arch(path: str) -> str:
    """Which QEMU to run, from the kernel's own format (crosvm loads only these)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x240)
    except OSError as e:
        raise RunError(f"failed to open kernel image {path}: {e.strerror}") from None
    if head[:2] == b"\x1f\x8b":
        raise RunError("the architecture failed to build the vm: failed to load kernel: "
                       "the kernel image is gzip-compressed (crosvm loads an ELF, a raw "
                       "arm64 Image or an LZ4-framed Image, never a gzip one)")
    if head[0x202:0x206] == b"HdrS":
        return "x86_64"
    if head[0x38:0x3C] == b"ARM\x64":
        return "arm64"
    if head[:4] == b"\x7fELF" and len(head) > 0x14:
        machine = int.from_bytes(head[0x12:0x14], "little")
        if machine == 183:
            return "arm64"
        raise RunError("this crosvm double cannot boot an x86 ELF vmlinux (QEMU needs a "
                       "bzImage); crosvm itself can")
    if head[:4] == b"\x04\x22\x4d\x18":
        raise RunError("this crosvm double cannot boot an LZ4-framed Image (QEMU cannot); "
                       "crosvm itself can")
    raise RunError("the architecture failed to build the vm: failed to load kernel: "
                   "unrecognised kernel image format")


def image_format(path: str) -> str:
    """crosvm's disk::detect_image_type: a qcow2 header says qcow2, anything else is raw."""
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == QCOW_MAGIC else "raw"
    except OSError:
        return "raw"


def set_pdeathsig() -> None:
    """In QEMU's child, before exec: die with the double, even if the double is SIGKILLed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def qemu_opt(value: str) -> str:
    """A value inside a QEMU `-drive`/`-chardev` option list: a comma is written twice."""
    return value.replace(",", ",,")


def chardev_for(params: dict[str, Any], ident: str) -> str:
    kind = params["type"]
    if kind == "stdout":
        if params.get("stdin"):
            return f"stdio,id={ident},signal=off"
        # Output only, as crosvm without `stdin`: the pty is never read.
        return f"file,id={ident},path=/dev/stdout,append=on"
    if kind in ("file", "unix-stream") and "path" not in params:
        raise RunError(f"serial device type {kind} passed without required path argument")
    if kind == "file":
        spec = f"file,id={ident},path={qemu_opt(params['path'])}"
        if "input" in params:
            spec += f",input-path={qemu_opt(params['input'])}"
        return spec
    if kind in ("sink", "syslog"):
        return f"null,id={ident}"
    if kind == "unix-stream":
        return f"socket,id={ident},path={qemu_opt(params['path'])}"
    raise RunError(f"this crosvm double does not support serial type `{kind}`")


class Vm:
    def __init__(self, g: Globals, cfg: RunConfig, validated: config.Validated,
                 log: Logger) -> None:
        self.g, self.cfg, self.validated, self.log = g, cfg, validated, log
        assert cfg.kernel is not None
        self.arch = kernel_arch(cfg.kernel)
        self.mem_mib = int(cfg.get("mem", {}).get("size", 256))
        self.cpus = int(cfg.get("cpus", {}).get("num-cores", 1))
        self.fault = faults.requested()
        # QMP on a socketpair and QEMU's debug log in a memfd: nothing on disk that a
        # SIGKILLed double could leave behind.
        self.qmp_ours, self.qmp_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.debug_log = os.memfd_create("qemu-debug", 0)
        self.qemu: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.control: socket.socket | None = None
        self.control_path: str | None = cfg.get("socket")
        self.host_stop = False
        self.shutdown_reason: str | None = None
        self.panicked = False
        self.vcpu_crashed = False
        self.handlers: list[threading.Thread] = []
        # QEMU's MIGRATION events (status changes) while a snapshot is taken or restored.
        self.migration: queue.Queue[str] = queue.Queue()
        # crosvm's BalloonTube handles one balloon command at a time: a statistics request
        # the guest does not answer holds up every balloon command after it.
        self.balloon_lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------------

    def kernel_cmdline(self) -> str:
        if self.arch == "x86_64":
            return config.kernel_cmdline(self.validated, console_tty="ttyS",
                                         earlycon="uart8250,io,{addr:#x}")
        # crosvm: console=ttyS0 and earlycon=uart8250,mmio,0x3f8 (8250s on MMIO). QEMU's
        # virt board has one PL011 instead, so the kernel must be told that one.
        return config.kernel_cmdline(self.validated, console_tty="ttyAMA",
                                     earlycon="pl011,0x9000000")

    def qemu_argv(self) -> list[str]:
        binary = "qemu-system-x86_64" if self.arch == "x86_64" else "qemu-system-aarch64"
        found = shutil.which(binary)
        if found is None:
            raise RunError(f"this crosvm double needs {binary} on PATH")
        cfg = self.cfg
        serials = self.validated.serials
        if self.arch == "x86_64":
            machine = "q35,i8042=off" if cfg.get("no_i8042") else "q35"
            # As the QEMU engine (see TCG_X86_CPU there): ERMS makes TCG guests slow.
            argv = [found, "-M", machine, "-cpu", "max,-erms"]
            # crosvm's triple fault is a stop, QEMU's a reset: its reset log tells them apart.
            argv += ["-d", "cpu_reset", "-D", f"/dev/fd/{self.debug_log}"]
        else:
            argv = [found, "-M", "virt", "-cpu", "cortex-a57"]
        argv += ["-accel", "tcg", "-smp", str(self.cpus), "-m", str(self.mem_mib),
                 "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                 "-action", "panic=none", "-S",
                 "-chardev", f"socket,id=qmp,fd={self.qmp_theirs.fileno()}",
                 "-mon", "chardev=qmp,mode=control"]
        uarts = {s["num"]: s for s in serials if s["hardware"] == "serial"}
        count = 4 if self.arch == "x86_64" else 1
        for num in range(1, count + 1):
            params = uarts.get(num, {"type": "sink"})
            argv += ["-chardev", chardev_for(params, f"com{num}"), "-serial", f"chardev:com{num}"]
        if self.arch == "arm64":
            for num, params in uarts.items():
                if num > 1 and (params.get("console") or params["type"] != "sink"):
                    raise RunError(f"this crosvm double has one UART on arm64 (QEMU virt's "
                                   f"PL011); serial num={num} cannot be modelled")
        vcons = [s for s in serials if s["hardware"] == "virtio-console"]
        if vcons:
            argv += ["-device", "virtio-serial-pci,id=vser0"]
            for s in sorted(vcons, key=lambda s: s["num"]):
                ident = f"hvc{s['num'] - 1}"
                argv += ["-chardev", chardev_for(s, ident),
                         "-device", f"virtconsole,chardev={ident},nr={s['num'] - 1}"]
        for s in serials:
            if s["hardware"] == "debugcon":
                if self.arch != "x86_64":
                    raise RunError("debugcon is x86_64 only")
                port = s.get("debugcon-port", 0x402)
                argv += ["-chardev", chardev_for(s, "dbgcon"),
                         "-device", f"isa-debugcon,chardev=dbgcon,iobase={port:#x}"]
        argv += ["-kernel", cfg.kernel or "", "-append", self.kernel_cmdline()]
        if cfg.get("initrd"):
            argv += ["-initrd", cfg.get("initrd")]
        if not cfg.get("no_rng"):
            argv += ["-device", "virtio-rng-pci"]
        if not cfg.get("no_balloon"):
            argv += ["-device", "virtio-balloon-pci,id=balloon0"]
        if not cfg.get("no_usb"):
            argv += ["-device", "qemu-xhci"]
        # crosvm's pvpanic is PCI (PvPanicPciDevice) on both arches.
        argv += ["-device", "pvpanic-pci"]
        for i, block in enumerate(cfg.get("block", [])):
            path = block["path"]
            if not os.path.exists(path):
                raise RunError(f"failed to load disk image {path}: "
                               "No such file or directory (os error 2)")
            ro = ",readonly=on" if block.get("ro") else ""
            fmt = image_format(path)
            argv += ["-drive", f"file={qemu_opt(path)},if=none,id=blk{i},format={fmt}{ro}",
                     "-device", f"virtio-blk-pci,drive=blk{i}"]
        if "gpu" in cfg.options:
            backend = cfg.get("gpu").get("backend", "2d").lower()
            if backend != "2d":
                raise RunError(f"this crosvm double supports only the 2d gpu backend, "
                               f"not {backend}")
            argv += ["-device", "virtio-gpu-pci"]
        for i, net in enumerate(cfg.get("net", [])):
            if "tap-name" not in net:
                raise RunError("this crosvm double supports only --net tap-name=NAME")
            dev = f"virtio-net-pci,netdev=net{i}"
            if "mac" in net:
                dev += f",mac={net['mac']}"
            argv += ["-netdev", f"tap,id=net{i},ifname={qemu_opt(net['tap-name'])},script=no,"
                                f"downscript=no", "-device", dev]
        if "vsock" in cfg.options:
            vsock = cfg.get("vsock")
            device = vsock.get("device", "/dev/vhost-vsock")
            try:
                os.close(os.open(device, os.O_RDWR))
            except OSError as e:
                raise RunError(f"failed to set up virtual socket device: failed to open "
                               f"{device}: {e.strerror} (os error {e.errno})") from None
            argv += ["-device", f"vhost-vsock-pci,guest-cid={vsock['cid']}"]
        if cfg.get("balloon_control"):
            raise RunError("this crosvm double does not support --balloon-control")
        if cfg.get("restore"):
            argv += ["-incoming", "defer"]  # the stream comes over QMP (restore_snapshot)
        return argv

    # -- lifecycle -------------------------------------------------------------------------

    def on_event(self, msg: dict[str, Any]) -> None:
        name = msg.get("event")
        data = msg.get("data", {})
        self.log.log("debug", f"QMP event {name} {json.dumps(data)}")
        if name == "SHUTDOWN":
            self.shutdown_reason = data.get("reason")
        elif name == "GUEST_PANICKED":
            # The run loop's Panic arm: recorded, logged, and the VM carries on.
            self.panicked = True
            self.log.log("info", "Guest reported panic [Code: Guest panicked]")
        elif name == "MIGRATION":
            self.migration.put(str(data.get("status", "")))

    def open_control(self) -> None:
        path = self.control_path
        if path is None:
            return
        if os.path.lexists(path):
            raise RunError(f"failed to create control server: Address already in use "
                           f"(os error {errno.EADDRINUSE})")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(path)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise RunError(f"failed to create control server: {e.strerror} "
                           f"(os error {e.errno})") from None
        self.control = sock

    def start(self) -> None:
        argv = self.qemu_argv()
        self.open_control()
        self.log.log("debug", "starting " + " ".join(argv))
        self.qemu = subprocess.Popen(argv, preexec_fn=set_pdeathsig, close_fds=True,
                                     pass_fds=(self.qmp_theirs.fileno(), self.debug_log))
        self.qmp_theirs.close()
        self.qmp = Qmp(self.qmp_ours, self.on_event)
        try:
            self.qmp.handshake(30)
            if self.cfg.get("restore"):
                # vm_control::do_restore runs before crosvm serves its control socket.
                self.restore_snapshot(self.cfg.get("restore"))
            if not self.cfg.get("no_balloon"):
                self.qmp.execute("qom-set", {"path": BALLOON_QOM,
                                             "property": "guest-stats-polling-interval",
                                             "value": 1})
            if self.fault == "kvm-internal-error":
                # The vCPUs never run: every KVM_RUN comes back with an internal error.
                self.serve()
                faults.kvm_internal_error(self.log)
            if self.fault == "kvm-unknown-error":
                faults.kvm_unknown_error(self.log)
                self.vcpu_crashed = True
                self.qmp.execute("quit")
                return
            if not self.cfg.get("suspended"):
                self.qmp.execute("cont")
        except (QmpError, OSError, ValueError) as e:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(5)  # QEMU has said why on stderr; let it finish saying so
            status = self.qemu.returncode
            self.kill_qemu()
            raise RunError(f"failed to create the VM: {e} (QEMU exited with status "
                           f"{status})") from None
        self.serve()
        if self.fault == "panic":
            self.kill_qemu()
            faults.panic(self.log)

    # -- snapshots -------------------------------------------------------------------------

    def shape(self) -> dict[str, Any]:
        return {"arch": self.arch, "cpus": self.cpus, "mem_mib": self.mem_mib}

    def migrate(self, command: str, fd: int) -> str:
        """One migration over `fd` (handed to QEMU with getfd): QEMU's final status."""
        assert self.qmp is not None
        while not self.migration.empty():
            self.migration.get_nowait()
        self.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        self.qmp.execute("getfd", {"fdname": "snapshot"}, fds=(fd,))
        self.qmp.execute(command, {"uri": "fd:snapshot"})
        deadline = time.monotonic() + MIGRATION_TIMEOUT_S
        while True:
            if self.qmp.closed.is_set():
                return "QEMU exited"
            try:
                status = self.migration.get(timeout=max(0.0, min(
                    1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return "timed out"
                continue
            if status in ("completed", "failed", "cancelled"):
                return status

    def take_snapshot(self, path: str) -> Any:
        """VmRequest::Snapshot: vm_control::do_snapshot, on QEMU's migration. The vCPUs are
        suspended for it and left as they were (VcpuSuspendGuard); a failure is EIO."""
        assert self.qmp is not None
        self.log.log("info", "Starting crosvm snapshot")
        try:
            os.mkdir(path)
        except OSError as e:
            self.log.log("error", f"failed to handle snapshot: failed to create snapshot root "
                                  f"dir: {path}: {e.strerror}")
            return {"Err": errno.EIO}
        running = bool(self.qmp.execute("query-status").get("running"))
        if running:
            self.qmp.execute("stop")
        try:
            fd = os.open(os.path.join(path, SNAPSHOT_STREAM),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                status = self.migrate("migrate", fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            with open(os.path.join(path, SNAPSHOT_SHAPE), "w") as f:
                json.dump(self.shape(), f)
        finally:
            if running:
                self.qmp.execute("cont")
        if status != "completed":
            self.log.log("error", f"failed to handle snapshot: migration {status}")
            return {"Err": errno.EIO}
        self.log.log("info", "Finished crosvm snapshot successfully")
        return "Ok"

    def restore_snapshot(self, path: str) -> None:
        """`run --restore PATH`: vm_control::do_restore before the VM runs; an error ends the
        run (exit 1), as crosvm's run_config returns it."""
        assert self.qmp is not None
        shape_file = os.path.join(path, SNAPSHOT_SHAPE)
        stream = os.path.join(path, SNAPSHOT_STREAM)
        for name, file in (("vm", shape_file), (SNAPSHOT_STREAM, stream)):
            if not os.path.isfile(file):
                raise RunError(f"failed to open snapshot fragment {name!r} at {file}: No such "
                               f"file or directory (os error 2)")
        with open(shape_file) as f:
            saved = json.load(f)
        if saved.get("cpus") != self.cpus:
            raise RunError(f"bad cpu count in snapshot: expected={self.cpus} "
                           f"got={saved.get('cpus')}")
        if saved.get("arch") != self.arch or saved.get("mem_mib") != self.mem_mib:
            raise RunError(f"snapshot of a {saved.get('arch')} VM with {saved.get('mem_mib')} "
                           f"MiB cannot be restored on a {self.arch} VM with {self.mem_mib} MiB")
        started = time.monotonic()
        fd = os.open(stream, os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = self.migrate("migrate-incoming", fd)
        finally:
            os.close(fd)
        if status != "completed":
            raise RunError(f"failed to restore the VM from {path}: QEMU's migration {status} "
                           f"(its message is above)")
        self.log.log("info", f"snapshot: memory restored {self.mem_mib}MB in "
                             f"{(time.monotonic() - started) * 1000:.0f}ms")

    def serve(self) -> None:
        if self.control is not None and not any(t.name == "control" for t in self.handlers):
            thread = threading.Thread(target=self.serve_control, name="control", daemon=True)
            self.handlers.append(thread)
            thread.start()

    def exit_status(self, returncode: int) -> int:
        """crosvm's ExitState from what QEMU reported, logging the run-loop event crosvm logs."""
        if self.qmp is not None:
            self.qmp.closed.wait(5)  # every event QEMU sent before it exited is in
        if self.host_stop:
            return EXIT_STOP  # the control Exit request: pvpanic is not consulted
        reason = self.shutdown_reason
        if self.vcpu_crashed:
            status = EXIT_CRASH
        elif reason == "guest-reset" and not self.triple_faulted():
            self.log.log("info", "vcpu requested reset")
            status = EXIT_RESET
        elif reason in ("guest-reset", "guest-shutdown") and returncode == 0:
            self.log.log("info", "vcpu requested shutdown")
            status = EXIT_STOP
        elif returncode == 0 and reason in ("host-qmp-quit", None):
            return EXIT_STOP
        else:
            # QEMU itself died: crosvm's counterpart is a device process dying (the run
            # loop's ChildSignal arm), a crash whatever the guest had reported.
            self.log.log("error", f"the VM crashed: QEMU exited with status {returncode} "
                                  f"(shutdown reason {reason})")
            return EXIT_CRASH
        return EXIT_PANIC if self.panicked else status

    def triple_faulted(self) -> bool:
        size = os.fstat(self.debug_log).st_size
        return b"Triple fault" in os.pread(self.debug_log, size, 0)

    def cleanup(self, *, orderly: bool) -> None:
        if self.control is not None:
            with contextlib.suppress(OSError):
                self.control.shutdown(socket.SHUT_RDWR)
            self.control.close()
            if orderly and self.control_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.control_path)
        if orderly:
            for handler in self.handlers:
                if handler.name != "control":
                    handler.join(2)
        self.qmp_ours.close()
        with contextlib.suppress(OSError):
            os.close(self.debug_log)

    def kill_qemu(self) -> None:
        """Kill and reap QEMU without Popen's lock (this may run inside a signal handler)."""
        if self.qemu is None or self.qemu.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.qemu.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.qemu.pid, 0)

    # -- control server --------------------------------------------------------------------

    def serve_control(self) -> None:
        assert self.control is not None
        while True:
            try:
                conn, _ = self.control.accept()
            except OSError:
                return
            thread = threading.Thread(target=self.handle_connection, args=(conn,), daemon=True)
            self.handlers.append(thread)
            thread.start()

    def handle_connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = conn.recv(1 << 16)
                if not data:
                    return
                request = json.loads(data)
            except (OSError, ValueError):
                return
            after: Callable[[], None] | None = None
            try:
                response, after = self.execute(request)
            except QmpError as e:
                self.log.log("error", f"control request {json.dumps(request)} failed: {e}")
                response = {"Err": errno.EIO}
            with contextlib.suppress(OSError):
                conn.send(json.dumps(response).encode())
            if after is not None:
                after()

    def execute(self, request: Any) -> tuple[Any, Callable[[], None] | None]:
        qmp = self.qmp
        assert qmp is not None
        if request == "Exit":
            # crosvm answers Ok, then leaves its run loop: the guest is not told.
            self.host_stop = True

            def quit_qemu() -> None:
                with contextlib.suppress(QmpError):
                    qmp.execute("quit")

            return "Ok", quit_qemu
        if request == "Powerbtn":
            # Only x86 has an ACPI PM device; aarch64's VM has none (pm: None), and
            # vm_control answers ENOTSUP, "os error 95".
            if self.arch != "x86_64":
                self.log.log("error", "Powerbtn not supported")
                return {"Err": errno.ENOTSUP}, None
            qmp.execute("system_powerdown")
            return "Ok", None
        if request == "Sleepbtn":
            return {"Err": errno.ENOTSUP}, None
        if request in ("SuspendVcpus", "SuspendVm"):
            qmp.execute("stop")
            return "Ok", None
        if request in ("ResumeVcpus", "ResumeVm"):
            qmp.execute("cont")
            return "Ok", None
        if isinstance(request, dict) and "Snapshot" in request:
            return self.take_snapshot(request["Snapshot"]["Take"]["snapshot_path"]), None
        if isinstance(request, dict) and "BalloonCommand" in request:
            if self.cfg.get("no_balloon"):
                return {"Err": errno.ENOTSUP}, None
            command = request["BalloonCommand"]
            with self.balloon_lock:
                if not self.balloon_activated():
                    # BalloonTube::send_cmd before the device reported Ready.
                    return {"Err": errno.ENOTCONN}, None
                if isinstance(command, dict) and "Adjust" in command:
                    return self.balloon_adjust(command["Adjust"]), None
                if command == "Stats" or (isinstance(command, dict) and "Stats" in command):
                    return self.balloon_stats(), None
        return {"Err": errno.EINVAL}, None

    def balloon_activated(self) -> bool:
        """Whether the guest's driver set the balloon up (DRIVER_OK): crosvm's balloon
        worker starts, and tells the control loop it is Ready, only then."""
        assert self.qmp is not None
        status = self.qmp.execute("x-query-virtio-status",
                                  {"path": f"{BALLOON_QOM}/virtio-backend"})
        return any("DRIVER_OK" in s for s in status.get("status", {}).get("statuses", []))

    def balloon_actual(self) -> int:
        """crosvm's balloon_actual (bytes the balloon holds); QEMU reports the guest's size."""
        info = self.qmp.execute("query-balloon") if self.qmp else {}
        return self.mem_mib * 1024 * 1024 - int(info["actual"])

    def balloon_adjust(self, adjust: dict[str, Any]) -> Any:
        num_bytes = int(adjust.get("num_bytes", 0)) & ~4095
        target = self.mem_mib * 1024 * 1024 - num_bytes
        if target <= 0:
            return {"Err": errno.EINVAL}
        assert self.qmp is not None
        self.qmp.execute("balloon", {"value": target})
        if adjust.get("wait_for_success"):
            while self.balloon_actual() != num_bytes:
                time.sleep(0.1)
        return "Ok"

    def balloon_stats(self) -> Any:
        """A fresh report from the guest, as crosvm asks for one (the stats queue) and
        answers only when the guest returns it: a guest that does not (its vCPUs
        suspended, halted, or no stats queue) leaves the request, and its caller, waiting.
        QEMU asks the guest every second; the next answer after the request is used."""
        assert self.qmp is not None

        def stats() -> dict[str, Any]:
            assert self.qmp is not None
            reply: dict[str, Any] = self.qmp.execute(
                "qom-get", {"path": BALLOON_QOM, "property": "guest-stats"})
            return reply

        asked = stats().get("last-update", 0)
        while (got := stats()).get("last-update", 0) == asked:
            time.sleep(0.1)
        raw = got.get("stats", {})
        result = {}
        for name, key in STAT_NAMES.items():
            value = raw.get(key, -1) if key else -1
            result[name] = None if value is None or value < 0 else int(value)
        return {"BalloonStats": {"stats": result, "balloon_actual": self.balloon_actual()}}


def run_vm(g: Globals, cfg: RunConfig, log: Logger) -> int:
    """crosvm's run_vm and run_config, in their order (config.py says which)."""
    validated = config.validate(cfg)
    config.open_images(cfg)
    config.open_hypervisor(validated)
    vm = Vm(g, cfg, validated, log)
    vm.kernel_cmdline()  # the arch's command-line checks come before any device

    def on_signal(signum: int, _frame: Any) -> None:
        # Die the way a VMM dies on this signal (negative status for the caller), but
        # never leave QEMU behind. The control socket stays, as crosvm's would.
        vm.kill_qemu()
        vm.cleanup(orderly=False)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        vm.start()
        assert vm.qemu is not None
        returncode = vm.qemu.wait()
        status = vm.exit_status(returncode)
    except RunError:
        vm.kill_qemu()
        vm.cleanup(orderly=True)
        raise
    except BaseException:
        vm.kill_qemu()
        vm.cleanup(orderly=False)
        raise
    vm.cleanup(orderly=True)
    if vm.fault == "cleanup-sigkill":
        faults.cleanup_sigkill(log)
    return status
