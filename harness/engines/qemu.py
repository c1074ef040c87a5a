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
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from qemu.qmp import EventListener, QMPClient

from harness.engines.base import (
    BinaryLookup,
    Engine,
    RunPaths,
    Vmm,
    VmmSetup,
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
    argv += ["-rtc", "base=utc"]
    # A panic is the guest's to handle (panic=N in its command line resets it in
    # place); QEMU still reports GUEST_PANICKED over QMP when pvpanic is there.
    argv += ["-action", "panic=none" if env.panic_policy == "reset" else "panic=pause"]
    if env.no_reboot:
        # A boot test: exit on a guest reset rather than boot again (most boot tests cannot
        # shut down gracefully; tools/devshell/contrib/run-boot-test.py passes it too).
        argv.append("-no-reboot")
    for i, disk in enumerate(paths.disks):
        argv += ["-drive", f"file={disk},if=none,format=raw,id=blk{i}",
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

    def __init__(self, process: Process, qmp: QMPClient | None, memory_mib: int = 0) -> None:
        super().__init__(process)
        self.qmp = qmp
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
        vmm = QemuVmm(process, None, env.memory_mib)
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
