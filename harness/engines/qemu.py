"""QEMU: argv built by a pure function, KVM only where a probe boot proved it, control over QMP.

The accelerator comes in decided (harness.accel owns the KVM verdict and its probe).

The console is QEMU's stdio chardev on a pty the harness created before the
process started, so the first byte of boot output is already captured (the
same effect as labgrid's `-S` + `cont`, with one mechanism for both engines).
QMP is used for control and for events: a SHUTDOWN reason and GUEST_PANICKED
tell apart a poweroff, a reset and a panic, which the exit status alone cannot.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from qemu.qmp import EventListener, QMPClient

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
from harness.errors import HarnessError
from harness.exits import ExitInfo, ExitKind
from harness.images.model import GuestImage

QMP_CONNECT_TIMEOUT_S = 10.0
TCG_X86_CPU = "max,-erms"
# qemu.qmp logs every failed connect at ERROR level, on the person's terminal when the
# harness configures no logging; the engine reports QMP failures itself, with context.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
BINARIES = {"x86_64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# The name a saved state's file descriptor gets in QEMU (QMP getfd), for the `fd:` URI.
STATE_FD_NAME = "harness-state"
# How a migration ends (QEMU's MigrationStatus): anything else is still under way.
MIGRATION_DONE = ("completed", "failed", "cancelled")


def qemu_command(
    env: Environment, image: GuestImage, paths: RunPaths, *, accel: str, binary: str | None = None
) -> list[str]:
    """The exact QEMU argv for `env`: a pure function, printed for repro.

    `-nodefaults` so that only the configured devices exist: device enumeration
    compares what the guest sees with the configuration, and a stray default NIC
    or VGA would make that comparison lie.
    """
    arch = env.arch
    dev = env.devices
    argv = [binary or BINARIES[arch]]
    if arch == "x86_64":
        # Under TCG, `rep movsb` is emulated a byte at a time: a CPU that advertises ERMS
        # makes the kernel's memcpy/memset use it, which made test_bpf 2.7x slower and
        # boots about 0.5 s longer. Everything else of `max` stays.
        argv += ["-M", "q35", "-cpu", "host" if accel == "kvm" else TCG_X86_CPU]
    else:
        argv += ["-M", "virt", "-cpu", "host" if accel == "kvm" else "cortex-a57"]
    argv += [
        "-accel", accel,
        "-smp", str(env.cpus),
        "-m", str(env.memory_mib),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-chardev", "stdio,id=con0,signal=off",
        "-serial", "chardev:con0",
    ]
    # Extra UARTs: present but unconnected, as crosvm's COM2..COM4.
    for i in range(1, int(dev.option("serial", "count", 1))):
        argv += ["-chardev", f"null,id=ser{i}", "-serial", f"chardev:ser{i}"]
    # On x86_64 the ELF vmlinux boots through PVH, skipping the bzImage's decompressor,
    # which under TCG takes seconds of emulated CPU (XZ in the generic kernel).
    argv += ["-kernel", str((arch == "x86_64" and image.kernel_elf) or image.kernel)]
    if image.initrd is not None:
        argv += ["-initrd", str(image.initrd)]
    argv += ["-append", " ".join(kernel_args(env))]
    argv += ["-qmp", f"unix:{paths.workdir / 'qmp.sock'},server=on,wait=off"]
    if paths.restore is not None:
        # The saved state comes in over QMP once the harness is connected
        # (QemuVmm.finish_restore): `defer` keeps the argv free of the transport, which
        # depends on the QEMU version, and lets the harness hand over an open file.
        argv += ["-incoming", "defer"]
    argv += ["-rtc", "base=utc"]
    # A panic is the guest's to handle (panic=N in its command line resets it in
    # place); QEMU still reports GUEST_PANICKED over QMP when pvpanic is there.
    argv += ["-action", "panic=none" if env.panic_policy == "reset" else "panic=pause"]
    if env.no_reboot:
        # A boot test: exit on a guest reset rather than boot again (most boot tests cannot
        # shut down gracefully; tools/devshell/contrib/run-boot-test.py passes it too).
        argv.append("-no-reboot")
    for i, disk in enumerate(paths.disks):
        argv += ["-drive", f"file={disk},if=none,format={paths.disk_format},id=blk{i}",
                 "-device", f"virtio-blk-pci,drive=blk{i}"]
    if dev.has("virtio-net"):
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    if dev.has("virtio-rng"):
        argv += ["-device", "virtio-rng-pci"]
    if dev.has("virtio-balloon"):
        argv += ["-device", "virtio-balloon-pci,id=balloon0"]
    if dev.has("virtio-gpu"):
        argv += ["-device", "virtio-gpu-pci"]
    if dev.has("virtio-console"):
        argv += ["-device", "virtio-serial-pci", "-chardev", "null,id=vcon0",
                 "-device", "virtconsole,chardev=vcon0"]
    if dev.has("virtio-vsock"):
        argv += ["-device", f"vhost-vsock-pci,guest-cid={dev.option('virtio-vsock', 'cid', 3)}"]
    if dev.has("pvpanic"):
        argv += ["-device", "pvpanic" if arch == "x86_64" else "pvpanic-pci"]
    if dev.has("xhci"):
        argv += ["-device", "qemu-xhci"]
    return argv


class QemuVmm(ProcessVmm, Vmm):
    """A running QEMU with its QMP connection and the events seen so far."""

    def __init__(self, process: Process, qmp: QMPClient | None, memory_mib: int = 0,
                 transport: Callable[[], Awaitable[str]] | None = None) -> None:
        super().__init__(process)
        self.qmp = qmp
        # How a saved state travels, asked when one is saved (QemuEngine.migration_transport).
        self.transport = transport
        self.memory_bytes = memory_mib << 20
        self.shutdown_reason: str | None = None
        self.panicked = False
        self.events: list[dict[str, Any]] = []
        self.listener = EventListener(("SHUTDOWN", "GUEST_PANICKED", "RESET"))
        if qmp is not None:
            qmp.register_listener(self.listener)

    def attach_qmp(self, qmp: QMPClient | None) -> None:
        self.qmp = qmp
        if qmp is not None:
            qmp.register_listener(self.listener)

    async def drain_events(self) -> list[dict[str, Any]]:
        """Take the events queued so far (SHUTDOWN reasons, GUEST_PANICKED, RESET)."""
        new: list[dict[str, Any]] = []
        while not self.listener.empty():
            event: dict[str, Any] = dict(await self.listener.get())
            new.append(event)
            if event["event"] == "SHUTDOWN":
                self.shutdown_reason = event.get("data", {}).get("reason")
            elif event["event"] == "GUEST_PANICKED":
                self.panicked = True
        self.events += new
        return new

    async def _execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0
                       ) -> Any:  # Any: QMP's reply, JSON shaped by the command
        if self.qmp is None:
            raise HarnessError("QMP is not connected")
        try:
            with anyio.fail_after(timeout):
                return await self.qmp.execute(cmd, args)
        except TimeoutError:
            raise HarnessError(f"QMP {cmd} did not answer within {timeout:g} s") from None
        except Exception as e:  # qemu.qmp raises its own hierarchy; keep the message.
            raise HarnessError(f"QMP {cmd} failed: {e}") from e

    async def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(HarnessError):
            await self._execute("quit", timeout=timeout)
        with anyio.move_on_after(timeout):
            await self.wait()
        await self.kill()

    async def power_button(self) -> None:
        await self._execute("system_powerdown")

    async def balloon(self, size_bytes: int) -> None:
        """Take `size_bytes` from the guest (QEMU's own value is the guest's target size)."""
        if not 0 <= size_bytes < self.memory_bytes:
            raise HarnessError(f"balloon size {size_bytes} outside 0..{self.memory_bytes}")
        await self._execute("balloon", {"value": self.memory_bytes - int(size_bytes)})

    async def balloon_stats(self) -> dict[str, Any]:
        info = await self._execute("query-balloon")
        guest = int(info["actual"])
        return {"balloon_actual": self.memory_bytes - guest, "guest_memory": guest}

    async def suspend(self) -> None:
        await self._execute("stop")

    async def resume(self) -> None:
        await self._execute("cont")

    # -- snapshots ---------------------------------------------------------------------------

    async def save_state(self, dest: Path, timeout: float = 120.0) -> None:
        """`stop`, then migrate the paused VM into `dest` (QEMU's migration to a file).

        Paused first, so the stream is one pass of memory and says the VM was paused:
        a QEMU loading it stays paused until the harness says `cont`, after it has
        restored the guest's console and clock. QEMU 7.2 has no `file:` URI: the file
        is opened here and handed over with SCM_RIGHTS (QMP getfd, then `fd:`).
        """
        await self._execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        await self._execute("stop")
        transport = await self.transport() if self.transport is not None else "fd"
        if transport == "file":
            await self._migrate("migrate", f"file:{dest}", timeout, what="save")
            with open(dest, "rb") as f:
                os.fsync(f.fileno())
            return
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            await self._hand_over(fd)
            await self._migrate("migrate", f"fd:{STATE_FD_NAME}", timeout, what="save")
            os.fsync(fd)
        finally:
            os.close(fd)

    async def finish_restore(self, source: RestoreFrom, timeout: float) -> None:
        """Load `source` into this QEMU (started with `-incoming defer`), then `cont`.

        A stream QEMU cannot load makes it exit (status 1, its reason on stderr);
        that, a failed migration and the deadline all end the wait at once.
        """
        await self._execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        if source.transport == "file":
            await self._migrate("migrate-incoming", f"file:{source.state}", timeout,
                                what="restore")
        else:
            fd = os.open(source.state, os.O_RDONLY | os.O_CLOEXEC)
            try:
                await self._hand_over(fd)
                await self._migrate("migrate-incoming", f"fd:{STATE_FD_NAME}", timeout,
                                    what="restore")
            finally:
                os.close(fd)
        await self._execute("cont")

    async def _hand_over(self, fd: int) -> None:
        if self.qmp is None:
            raise HarnessError("QMP is not connected")
        self.qmp.send_fd_scm(fd)
        await self._execute("getfd", {"fdname": STATE_FD_NAME})

    async def _migrate(self, command: str, uri: str, timeout: float, *, what: str) -> None:
        """Start a migration and wait for QEMU's MIGRATION event that ends it (or its exit)."""
        if self.qmp is None:
            raise HarnessError("QMP is not connected")
        listener = EventListener("MIGRATION")
        self.qmp.register_listener(listener)
        ended: list[str] = []
        try:
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:

                    async def event() -> None:
                        while True:
                            message: dict[str, Any] = dict(await listener.get())
                            status = message.get("data", {}).get("status", "")
                            if status in MIGRATION_DONE:
                                ended.append(status)
                                tg.cancel_scope.cancel()
                                return

                    async def exit_() -> None:
                        await self.wait()
                        ended.append("exited")
                        tg.cancel_scope.cancel()

                    tg.start_soon(event)
                    tg.start_soon(exit_)
                    await self._execute(command, {"uri": uri}, timeout=timeout)
        finally:
            self.qmp.remove_listener(listener)
        if not ended:
            raise HarnessError(f"the {what} ({command} {uri}) did not finish within {timeout:g} s")
        if ended[0] == "exited":
            raise HarnessError(f"QEMU exited during the {what} "
                               f"({describe_returncode(self.returncode or 0)})")
        if ended[0] != "completed":
            desc = ""
            with contextlib.suppress(HarnessError):
                desc = str((await self._execute("query-migrate")).get("error-desc", ""))
            raise HarnessError(f"the {what} {ended[0]}" + (f": {desc}" if desc else ""))

    async def kill(self) -> None:
        if self.qmp is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                with anyio.move_on_after(1):
                    await self.qmp.disconnect()
        await kill_and_reap(self.process)

    async def exit_info(self, returncode: int) -> ExitInfo:
        """QEMU exits 0 for a poweroff and for a host quit; QMP says which, and if it panicked."""
        rc = returncode
        await self.drain_events()
        if rc < 0:
            return ExitInfo(ExitKind.KILLED, rc, f"QEMU {describe_returncode(rc)}")
        if self.panicked:
            return ExitInfo(ExitKind.PANIC, rc, "guest panicked (QMP GUEST_PANICKED)")
        if rc == 0:
            if self.shutdown_reason in ("guest-reset", "host-qmp-system-reset"):
                return ExitInfo(ExitKind.RESET, rc, "guest reset (QEMU exited on reset)")
            why = self.shutdown_reason or "no SHUTDOWN event seen"
            return ExitInfo(ExitKind.STOP, rc, f"QEMU stopped ({why})")
        return ExitInfo(ExitKind.ERROR, rc, f"QEMU failed with {describe_returncode(rc)}")


class QemuEngine(Engine):
    name = "qemu"
    accelerators = ("kvm", "tcg")

    def __init__(self) -> None:
        # Per binary (path, size, mtime): `--version`'s line, and the migration transport.
        self._versions: dict[str, str] = {}
        self._transports: dict[str, str] = {}

    def locate(self, arch: str) -> BinaryLookup:
        """qemu-system-ARCH on PATH (Debian's qemu-system-x86 and qemu-system-arm)."""
        name = BINARIES[arch]
        found = shutil.which(name)
        if found is not None:
            return BinaryLookup(name, found, "PATH")
        pkg = "qemu-system-x86" if arch == "x86_64" else "qemu-system-arm"
        return BinaryLookup(name, None, "", f"{name} not found on PATH (Debian package {pkg})")

    def kvm_precheck(self, arch: str) -> str | None:
        """KVM runs only the host's own arch: an arm64 guest on an x86_64 host is TCG, no
        probe needed; nor is one where this process cannot open /dev/kvm."""
        host = HOST_ARCH.get(platform.machine(), platform.machine())
        if host != arch:
            return f"host is {host}: KVM cannot run {arch} guests"
        return kvm_access_problem()

    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        return qemu_command(env, image, paths, accel=setup.accel, binary=setup.binary)

    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> QemuVmm:
        argv = self.command(env, image, paths, setup)
        qmp_path = paths.workdir / "qmp.sock"
        with contextlib.suppress(FileNotFoundError):
            qmp_path.unlink()
        process = await start_vmm(argv, console_fd=console_fd, stderr_path=paths.stderr_log)
        vmm = QemuVmm(process, None, env.memory_mib,
                      functools.partial(self.migration_transport, setup.binary))
        try:
            vmm.attach_qmp(await self._connect_qmp(qmp_path, process))
        except BaseException:
            await kill_and_reap(process)
            raise
        return vmm

    async def _connect_qmp(self, path: Path, process: Process) -> QMPClient | None:
        """Connect to QMP once QEMU listens on its socket; None if QEMU died first.

        The socket file appears at bind(), a moment before listen(): a connection
        refused (or a file not there yet) in that window is retried, until the deadline.
        """
        deadline = time.monotonic() + QMP_CONNECT_TIMEOUT_S
        while True:
            if process.returncode is not None:
                return None
            if not path.exists() and time.monotonic() < deadline:
                await anyio.sleep(0.01)
                continue
            client = QMPClient("harness")
            try:
                with anyio.fail_after(max(0.1, deadline - time.monotonic())):
                    await client.connect(str(path))
                return client
            except Exception as e:
                if process.returncode is not None:
                    return None
                cause = getattr(e, "exc", e)
                not_yet = isinstance(cause, (ConnectionRefusedError, FileNotFoundError))
                if not not_yet or time.monotonic() > deadline:
                    raise HarnessError(f"cannot connect to QEMU's QMP socket {path} within "
                                       f"{QMP_CONNECT_TIMEOUT_S:g} s: {e}") from e
            await anyio.sleep(0.01)

    def classify_exit(self, returncode: int) -> ExitInfo:
        if returncode < 0:
            return ExitInfo(ExitKind.KILLED, returncode, f"QEMU {describe_returncode(returncode)}")
        if returncode == 0:
            return ExitInfo(ExitKind.STOP, 0, "QEMU exited normally")
        return ExitInfo(ExitKind.ERROR, returncode,
                        f"QEMU failed with {describe_returncode(returncode)}")

    async def version(self, binary: str) -> str:
        """`qemu-system-* --version`'s first line, asked once per binary (path, size, mtime)."""
        key = binary_key(binary)
        if key not in self._versions:
            try:
                with anyio.fail_after(30):
                    proc = await anyio.run_process([binary, "--version"], check=False)
                lines = proc.stdout.decode(errors="replace").splitlines()
                self._versions[key] = lines[0] if lines else ""
            except (OSError, TimeoutError):
                self._versions[key] = ""
        return self._versions[key]

    # -- snapshots ---------------------------------------------------------------------------

    async def snapshot_unavailable(self, env: Environment) -> str | None:
        del env
        if shutil.which("qemu-img") is None:
            return ("qemu-img not found on PATH (Debian package qemu-utils): a restored "
                    "guest writes to qcow2 overlays it creates")
        return None

    async def restore_from(self, env: Environment, state: Path, setup: VmmSetup) -> RestoreFrom:
        del env
        return RestoreFrom(state, await self.migration_transport(setup.binary))

    async def migration_transport(self, binary: str) -> str:
        """How this QEMU reads and writes a saved state: "file" where it knows the `file:`
        migration URI (QEMU >= 8.2), "fd" (a descriptor handed over QMP) where not.

        Probed, not guessed from the version: a QEMU without it refuses
        `-incoming file:...` at once ("unknown migration protocol"); one with it fails
        on the missing file instead. Either way nothing is started.
        """
        key = binary_key(binary)
        if key not in self._transports:
            transport = "fd"
            try:
                with anyio.fail_after(30):
                    proc = await anyio.run_process(
                        [binary, "-M", "none", "-display", "none", "-nodefaults",
                         "-no-user-config", "-incoming",
                         "file:/nonexistent/harness-transport-probe"], check=False)
                said = proc.stderr.decode(errors="replace")
                if proc.returncode != 0 and "unknown migration protocol" not in said:
                    transport = "file"
            except (OSError, TimeoutError):
                pass
            self._transports[key] = transport
        return self._transports[key]
