"""The crosvm engine against the crosvm double, with real Debian guests under QEMU TCG.

Each test launches the double with the engine's own argv (CrosvmEngine.launch),
its console on a raw pty, and checks crosvm's process contract from the
outside: the exit status of `crosvm run`, what the control subcommands do,
and that no QEMU is ever left behind. Guests of one test boot concurrently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from crosvm_double.triple_fault import triple_fault_kernel

from harness.accel import CACHE_FILE, Accel
from harness.engines import crosvm as crosvm_mod
from harness.engines.base import EnvironmentUnavailable, RunPaths, VmmSetup
from harness.engines.crosvm import CrosvmEngine, CrosvmVmm
from harness.environments import DeviceConfig, Environment, ImageRef
from harness.errors import HarnessError, Unsupported
from harness.exits import ExitKind
from harness.images.model import GuestImage

pytestmark = pytest.mark.integration

DOUBLE = Path(__file__).resolve().parent / "crosvm_double" / "crosvm"
SETUP = VmmSetup(str(DOUBLE), "kvm")
BOOT_MARKER = re.compile(rb"HARNESS-BOOT-OK boot_id=[0-9a-f-]{36}")
PROMPT = b"harness# "
BOOT_TIMEOUT_S = 120.0  # TCG on a shared 2-core machine; a boot normally takes 2-6 s
CONTROL_DEADLINE_S = 8.0  # a refused control request comes back at once, not at a deadline
MIB = 1024 * 1024
POLL_S = 0.05  # how often `until` re-checks a state that announces nothing

# x86_64: the cloud kernel (fastest boot; ACPI button and pvpanic modules).
# arm64: the generic kernel (gpio-keys for the power button; Debian builds no pvpanic).
IMAGES = {"x86_64": "debian-cloud", "arm64": "debian-generic"}
DEVICES = {"serial": {"count": 1}, "virtio-rng": {}, "virtio-balloon": {}, "pvpanic": {}}

needs_qemu = pytest.mark.skipif(
    not all(shutil.which(q) for q in ("qemu-system-x86_64", "qemu-system-aarch64")),
    reason="the crosvm double needs qemu-system-x86_64 and qemu-system-aarch64",
)


@pytest.fixture(scope="module")
def images() -> dict[str, GuestImage]:
    from harness.images.build import ensure_image
    from harness.images.errors import ImageError

    try:
        return {arch: ensure_image(name, arch) for arch, name in IMAGES.items()}
    except ImageError as e:
        pytest.skip(f"guest images cannot be built here: {e}")


def make_env(arch: str, devices: dict[str, dict[str, Any]] | None = None) -> Environment:
    return Environment(
        name=f"crosvm-double-{arch}",
        dimensions={"device_type": "crosvm", "cpu": "x64" if arch == "x86_64" else "arm64"},
        tags=(),
        engine="crosvm",
        arch=arch,
        cpus=1,
        memory_mib=256,
        accel="auto",
        kernel_args=(),
        profile="linux",
        image=ImageRef(name=IMAGES[arch]),
        devices=DeviceConfig(name="double", devices=dict(DEVICES if devices is None else devices)),
        blocking=True,
    )


class Console:
    """The host end of the guest's serial pty: one task drains it, others search what came."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = bytearray()
        self.eof = False
        self.arrived = anyio.Event()
        os.set_blocking(master, False)

    def _read(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError as e:  # EIO: every holder of the slave has closed it
            if e.errno != errno.EIO:
                raise
            chunk = b""
        if chunk:
            self.data += chunk
        else:
            self.eof = True
        self.arrived.set()
        self.arrived = anyio.Event()

    async def pump(self) -> None:
        """Keep reading: a VMM whose console nobody drains blocks on a full pty."""
        while not self.eof:
            await anyio.wait_readable(self.master)
            self._read()

    async def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float,
                     start: int = 0) -> int:
        """The end offset of the first match after `start`; fails with the console's tail."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        with anyio.move_on_after(timeout):
            while True:
                match = regex.search(self.data, start)
                if match:
                    return match.end()
                if self.eof:
                    break
                await self.arrived.wait()
        tail = bytes(self.data[-1500:]).decode(errors="replace")
        pytest.fail(f"{regex.pattern!r} not seen on the console within {timeout:g} s "
                    f"(eof={self.eof}); console tail:\n{tail}")

    async def run(self, command: str, timeout: float = 30.0) -> str:
        start = len(self.data)
        os.write(self.master, command.encode() + b"\n")
        end = await self.expect(PROMPT, timeout, start)
        return bytes(self.data[start:end]).decode(errors="replace")


@dataclasses.dataclass
class Booted:
    env: Environment
    engine: CrosvmEngine
    paths: RunPaths
    vmm: CrosvmVmm
    console: Console

    def qemu_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.vmm.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    async def wait_exit(self, timeout: float = 60.0) -> int:
        with anyio.fail_after(timeout):
            return await self.vmm.wait()

    def stderr(self) -> str:
        return self.paths.stderr_log.read_text(errors="replace")

    async def controllable(self) -> bool:
        """The control socket is there and QEMU runs under the double (it must not have died)."""
        assert self.vmm.returncode is None, self.stderr()
        return self.paths.control_socket.exists() and bool(self.qemu_pids())


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def all_exited(pids: list[int], timeout: float) -> None:
    """Wait until every process in `pids` has exited: a pidfd becomes readable at the exit
    itself (a zombie counts), so no polling. Not our children, so they cannot be waited for."""
    with anyio.fail_after(timeout):
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                await anyio.wait_readable(fd)
            finally:
                os.close(fd)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Re-check a state that announces nothing (a control socket appearing, a log line, the
    balloon's report) until it holds; fails with `what` at the deadline."""
    with anyio.move_on_after(timeout):
        while not await check():
            await anyio.sleep(POLL_S)
        return
    pytest.fail(f"not within {timeout:g} s: {what}")


class EditedEngine(CrosvmEngine):
    """The engine with its argv changed on purpose, to see how the double takes it."""

    def __init__(self, edit: Callable[[list[str]], list[str]]) -> None:
        super().__init__(binary=str(DOUBLE))
        self.edit = edit

    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        return self.edit(super().command(env, image, paths, setup))


@contextlib.asynccontextmanager
async def booted(env: Environment, image: GuestImage, workdir: Path, *,
                 engine: CrosvmEngine | None = None,
                 argv_edit: Callable[[list[str]], list[str]] | None = None,
                 wait_boot: bool = True) -> AsyncIterator[Booted]:
    """Launch the double through the engine, wait for the shell, and always kill and reap."""
    engine = engine or (EditedEngine(argv_edit) if argv_edit else CrosvmEngine(str(DOUBLE)))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(workdir=workdir)
    master, slave = os.openpty()
    tty.setraw(slave)
    vmm: CrosvmVmm | None = None
    try:
        vmm = await engine.launch(env, image, paths, SETUP, slave)
        os.close(slave)
        slave = -1
        console = Console(master)
        guest = Booted(env, engine, paths, vmm, console)
        async with anyio.create_task_group() as tg:
            tg.start_soon(console.pump)
            if wait_boot:
                at = await console.expect(BOOT_MARKER, BOOT_TIMEOUT_S)
                await console.expect(PROMPT, 30, at)
            try:
                yield guest
            finally:
                tg.cancel_scope.cancel()
    finally:
        if vmm is not None:
            pids = subprocess.run(["pgrep", "-P", str(vmm.pid)], capture_output=True,
                                  text=True).stdout.split()
            await vmm.kill()
            for pid in pids:  # the double's QEMU dies with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        if slave >= 0:
            os.close(slave)
        os.close(master)


async def run_double(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(timeout):
        return await anyio.run_process([str(DOUBLE), *args], stdin=subprocess.DEVNULL,
                                       check=False)


# -- power button, both arches -----------------------------------------------------------------


@needs_qemu
async def test_powerbtn_powers_x86_off_and_arm64_has_none(images: dict[str, GuestImage],
                                                          tmp_path: Path) -> None:
    """x86_64: crosvm's ACPI power button; the guest powers itself off (0). arm64: crosvm's VM
    has no ACPI PM device, and `crosvm powerbtn` answers ENOTSUP, os error 95."""
    results: dict[str, tuple[int, bool, str, str]] = {}
    refused: dict[str, str] = {}

    async def one(arch: str) -> None:
        async with booted(make_env(arch), images[arch], tmp_path / arch) as g:
            if arch == "arm64":
                with pytest.raises(Unsupported, match="os error 95") as e:
                    await g.vmm.power_button()
                refused[arch] = str(e.value)
                assert g.vmm.returncode is None  # nothing happened to the VM
                return
            await g.vmm.power_button()
            rc = await g.wait_exit(60)
            results[arch] = (rc, g.paths.control_socket.exists(), g.stderr(),
                             bytes(g.console.data).decode(errors="replace"))

    async with anyio.create_task_group() as tg:
        for arch in ("x86_64", "arm64"):
            tg.start_soon(one, arch)
    rc, socket_left, stderr, console = results["x86_64"]
    assert rc == 0, stderr
    assert CrosvmEngine().classify_exit(rc).kind is ExitKind.STOP
    # The guest itself powered off (acpid ran poweroff), not the VMM on its own.
    assert "reboot: Power down" in console, console[-1500:]
    assert not socket_left, "crosvm removes its socket on an orderly exit"
    assert "Powerbtn" in refused["arm64"] or "not supported" in refused["arm64"].lower()


# -- guest-initiated exits ----------------------------------------------------------------------


@needs_qemu
async def test_guest_reboot_panic_and_plain_status(images: dict[str, GuestImage],
                                                   tmp_path: Path) -> None:
    """reboot -f → 32; pvpanic panic → 34; panic without pvpanic → panic=-1 reset → 32;
    and without --extended-status a reboot reads as 0, as crosvm's does."""
    results: dict[str, tuple[int, str]] = {}

    def no_extended_status(argv: list[str]) -> list[str]:
        return [a for a in argv if a != "--extended-status"]

    async def one(name: str, arch: str, command: str,
                  edit: Callable[[list[str]], list[str]] | None = None) -> None:
        async with booted(make_env(arch), images[arch], tmp_path / name, argv_edit=edit) as g:
            if "sysrq" in command:
                mods = await g.console.run("cat /proc/modules")
                if arch == "x86_64":
                    assert "pvpanic_mmio" in mods, mods
                else:
                    assert "pvpanic" not in mods, mods
            os.write(g.console.master, command.encode() + b"\n")
            results[name] = (await g.wait_exit(60), g.stderr())

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "x86-reboot", "x86_64", "reboot -f")
        tg.start_soon(one, "x86-panic", "x86_64", "echo c > /proc/sysrq-trigger")
        tg.start_soon(one, "arm64-panic", "arm64", "echo c > /proc/sysrq-trigger")
        tg.start_soon(one, "x86-reboot-plain", "x86_64", "reboot -f", no_extended_status)
    engine = CrosvmEngine()
    expected = {"x86-reboot": (32, ExitKind.RESET), "x86-panic": (34, ExitKind.PANIC),
                "arm64-panic": (32, ExitKind.RESET), "x86-reboot-plain": (0, ExitKind.STOP)}
    for name, (rc, stderr) in results.items():
        assert rc == expected[name][0], f"{name}: {stderr}"
        assert engine.classify_exit(rc).kind is expected[name][1]
    # 34 came from the reset the guest's panic=1 made, after the pvpanic was recorded.
    stderr = results["x86-panic"][1]
    recorded = stderr.index("Guest reported panic [Code: Guest panicked]")
    assert stderr.index("vcpu requested reset") > recorded
    assert stderr.rstrip().endswith("exiting with guest panic")


@needs_qemu
async def test_pvpanic_under_the_halt_policy_keeps_crosvm_running(
        images: dict[str, GuestImage], tmp_path: Path) -> None:
    """crosvm only records a pvpanic: a guest that panics and halts (panic=0) keeps the VM
    running and answering control, and `crosvm stop` then exits 0, not 34."""
    env = dataclasses.replace(make_env("x86_64"), panic_policy="halt")
    async with booted(env, images["x86_64"], tmp_path / "g") as g:
        # The guest's pvpanic is crosvm's PCI device (1b36:0011), driven by pvpanic-pci.
        pci = await g.console.run("cat /sys/bus/pci/drivers/pvpanic-pci/*/vendor "
                                  "/sys/bus/pci/drivers/pvpanic-pci/*/device")
        assert "0x1b36" in pci and "0x0011" in pci, pci
        os.write(g.console.master, b"echo c > /proc/sysrq-trigger\n")
        await g.console.expect(b"Kernel panic - not syncing", 30)
        async def recorded() -> bool:
            assert g.vmm.returncode is None, g.stderr()
            return "Guest reported panic [Code: Guest panicked]" in g.stderr()

        await until(recorded, 30, "crosvm records the guest's pvpanic")
        # Still running, and still answering control requests.
        await g.vmm.suspend()
        await g.vmm.resume()
        assert g.vmm.returncode is None
        with anyio.fail_after(30):
            await g.vmm.stop(timeout=20)
        assert g.vmm.returncode == 0, g.stderr()
        assert (await g.vmm.exit_info(0)).kind is ExitKind.STOP
        assert "exiting with guest panic" not in g.stderr()


# -- host control -------------------------------------------------------------------------------


@needs_qemu
async def test_stop_and_balloon_round_trip(images: dict[str, GuestImage], tmp_path: Path) -> None:
    async with booted(make_env("x86_64"), images["x86_64"], tmp_path / "g") as g:
        qemu = g.qemu_pids()
        assert len(qemu) == 1 and alive(qemu[0])

        before = await g.vmm.balloon_stats()
        assert before["balloon_actual"] == 0
        total_before = before["stats"]["total_memory"]
        assert 100 * MIB < total_before <= 256 * MIB

        await g.vmm.balloon(64 * MIB + 123)  # crosvm rounds down to 4096
        now: dict[str, Any] = {}

        async def inflated() -> bool:
            now.update(await g.vmm.balloon_stats())
            return bool(now["balloon_actual"] == 64 * MIB)

        async def handed_over() -> bool:
            now.update(await g.vmm.balloon_stats())
            return bool(total_before - now["stats"]["total_memory"] >= 60 * MIB)

        await until(inflated, 30, "the balloon reaches 64 MiB")
        # The guest's own view follows once it has handed the pages over.
        await until(handed_over, 30, "the guest hands 60 MiB over to the balloon")
        meminfo = await g.console.run("grep MemTotal /proc/meminfo")
        kib = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1))  # type: ignore[union-attr]
        assert abs(kib * 1024 - now["stats"]["total_memory"]) < 4 * MIB

        await g.vmm.balloon(0)

        async def deflated() -> bool:
            return bool((await g.vmm.balloon_stats())["balloon_actual"] == 0)

        await until(deflated, 30, "the balloon deflates")

        # Suspended vCPUs run nothing the console asked for until resumed, and give no
        # balloon report: crosvm's balloon_stats waits for one, past the caller's deadline.
        await g.vmm.suspend()
        start = len(g.console.data)
        os.write(g.console.master, b"echo RESUMED-$((6*7))\n")
        g.vmm.control_timeout_s = 3.0
        with pytest.raises(crosvm_mod.ControlTimeout, match="gave none"):
            await g.vmm.balloon_stats()
        g.vmm.control_timeout_s = crosvm_mod.CONTROL_TIMEOUT_S
        assert b"RESUMED-42" not in g.console.data[start:]
        await g.vmm.resume()
        await g.console.expect(b"RESUMED-42", 20, start)
        assert (await g.vmm.balloon_stats())["balloon_actual"] == 0

        with anyio.fail_after(30):
            await g.vmm.stop(timeout=20)
        assert g.vmm.returncode == 0, g.stderr()
        assert "exiting with success" in g.stderr()
        assert not alive(qemu[0]), "crosvm stop must not leave QEMU behind"
        assert not g.paths.control_socket.exists()
        # The VM is gone: a control command now fails with crosvm's exit 1, as a HarnessError.
        with pytest.raises(HarnessError, match="already exited"):
            await g.vmm.power_button()
    gone = await run_double("balloon_stats", str(g.paths.control_socket))
    assert gone.returncode == 1
    assert b"failed to connect to socket" in gone.stderr


@needs_qemu
async def test_killed_vmm_takes_qemu_along_and_leaves_its_socket(
        images: dict[str, GuestImage], tmp_path: Path) -> None:
    """SIGKILL to the double alone (no group kill): QEMU still dies (PDEATHSIG), and the
    stale socket it leaves, as crosvm does, does not stop the engine's next launch."""
    env = make_env("arm64")
    async with booted(env, images["arm64"], tmp_path / "g", wait_boot=False) as g:
        await until(g.controllable, 30, "the control socket and QEMU are up")
        qemu = g.qemu_pids()
        os.kill(g.vmm.pid, signal.SIGKILL)
        rc = await g.wait_exit(10)
        assert rc == -signal.SIGKILL
        assert CrosvmEngine().classify_exit(rc).kind is ExitKind.KILLED
        assert (await g.vmm.exit_info(rc)).kind is ExitKind.KILLED  # its log says nothing
        await all_exited(qemu, 10)
        assert g.paths.control_socket.exists()
    # Relaunch in the same workdir; this time without a balloon, which crosvm then refuses.
    no_balloon = make_env("arm64", {"serial": {"count": 1}})
    async with booted(no_balloon, images["arm64"], tmp_path / "g") as g2:
        assert "Address already in use" not in g2.stderr()
        assert "--no-balloon" in g2.engine.command(no_balloon, images["arm64"], g2.paths, SETUP)
        with pytest.raises(Unsupported, match="os error 95"):
            await g2.vmm.balloon(4096)
        with anyio.fail_after(30):
            await g2.vmm.stop(timeout=20)
        assert g2.vmm.returncode == 0


@needs_qemu
async def test_balloon_before_the_guest_driver_is_refused(images: dict[str, GuestImage],
                                                         tmp_path: Path) -> None:
    """A guest whose kernel never loads virtio_balloon: crosvm answers ENOTCONN at once."""
    env = dataclasses.replace(make_env("x86_64"), kernel_args=("module_blacklist=virtio_balloon",))
    async with booted(env, images["x86_64"], tmp_path / "g") as g:
        mods = await g.console.run("cat /proc/modules")
        assert "virtio_balloon" not in mods
        with anyio.fail_after(CONTROL_DEADLINE_S):
            with pytest.raises(HarnessError, match="has not set the device up") as e:
                await g.vmm.balloon_stats()
        assert '"Err": 107' in str(e.value)  # ENOTCONN, as balloon_stats prints the reply
        assert not isinstance(e.value, crosvm_mod.ControlTimeout)


@needs_qemu
async def test_crosvms_own_signal_deaths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crosvm's panic aborts it (SIGABRT); its cleanup can SIGKILL its own group after the VM
    ended. Each is classified from its log, not as someone else's kill."""
    kernel = triple_fault_kernel(tmp_path / "triple.bzImage")
    image = GuestImage("triple", "x86_64", kernel, None)
    env = make_env("x86_64", {"serial": {"count": 1}})
    infos = {}
    for fault in ("panic", "cleanup-sigkill"):
        monkeypatch.setenv("CROSVM_DOUBLE_FAULT", fault)
        async with booted(env, image, tmp_path / fault, wait_boot=False) as g:
            rc = await g.wait_exit(60)
            infos[fault] = (rc, await g.vmm.exit_info(rc), g.stderr())
    rc, info, stderr = infos["panic"]
    assert rc == -signal.SIGABRT, stderr
    assert info.kind is ExitKind.CRASH and info.infra
    assert "internal panic" in info.explanation and "panicked at" in info.explanation
    rc, info, stderr = infos["cleanup-sigkill"]
    assert rc == -signal.SIGKILL, stderr
    # The triple fault had ended the VM (a stop); crosvm's cleanup then killed its group.
    assert info.kind is ExitKind.STOP, info
    assert "its own process group" in info.explanation
    assert "vcpu requested shutdown" in info.explanation


@needs_qemu
async def test_vmm_side_failure_is_a_crash(images: dict[str, GuestImage],
                                           tmp_path: Path) -> None:
    """QEMU dying under the double is crosvm's VM crash (33): a vCPU or device failed."""
    async with booted(make_env("arm64"), images["arm64"], tmp_path / "g") as g:
        [qemu] = g.qemu_pids()
        os.kill(qemu, signal.SIGKILL)
        rc = await g.wait_exit(30)
        assert rc == 33, g.stderr()
        assert CrosvmEngine().classify_exit(rc).kind is ExitKind.CRASH
        assert "the VM crashed" in g.stderr()


@needs_qemu
async def test_stop_falls_back_to_killing_a_vmm_that_does_not_answer(
        images: dict[str, GuestImage], tmp_path: Path) -> None:
    engine = CrosvmEngine(str(DOUBLE), control_timeout_s=1.0)
    async with booted(make_env("arm64"), images["arm64"], tmp_path / "g", engine=engine,
                      wait_boot=False) as g:
        await until(g.controllable, 30, "the control socket and QEMU are up")
        qemu = g.qemu_pids()
        os.kill(g.vmm.pid, signal.SIGSTOP)  # alive, but its control server never answers
        with pytest.raises(HarnessError, match="did not complete within 1 s"):
            await g.vmm.power_button()
        with anyio.fail_after(10):
            await g.vmm.stop(timeout=1.0)
        assert g.vmm.returncode == -signal.SIGKILL
        await all_exited(qemu, 10)


# -- the double's command line ------------------------------------------------------------------


@needs_qemu
async def test_invalid_arguments_exit_35(images: dict[str, GuestImage], tmp_path: Path) -> None:
    engine = CrosvmEngine(binary=str(DOUBLE))
    argv = engine.command(make_env("x86_64"), images["x86_64"], RunPaths(workdir=tmp_path),
                          SETUP)
    at = argv.index("run") + 1
    cases: dict[str, tuple[list[str], bytes]] = {
        "unknown option": (["--bogus-option"], b"Unrecognized argument: --bogus-option"),
        "deprecated flag": (["--disk", "/tmp/disk.img"], b"deprecated option '--disk'"),
        "unknown keyvalue field": (["--serial", "type=stdout,colour=blue"],
                                   b"unknown field `colour`"),
    }
    for name, (extra, message) in cases.items():
        args = argv[1:at] + extra + argv[at:]
        result = await run_double(*args)
        assert result.returncode == 35, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert b"arg parsing failed" in result.stderr
    # An option whose value is missing (here the last one, so nothing follows it).
    truncated = argv[1:argv.index("--socket") + 1]
    result = await run_double(*truncated)
    assert result.returncode == 35
    assert b"No value provided for option '--socket'." in result.stderr
    # `crosvm run --help` lists every option the engine emits; `version` prints a version.
    help_text = (await run_double("run", "--help")).stdout.decode()
    for option in {a for a in argv if a.startswith("--")} - {"--extended-status", "--log-level",
                                                           "--no-syslog"}:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), option
    version = await run_double("version")
    assert version.returncode == 0 and version.stdout.startswith(b"crosvm ")


@needs_qemu
async def test_setup_errors_exit_1(images: dict[str, GuestImage], tmp_path: Path) -> None:
    image = images["arm64"]
    gz = tmp_path / "Image.gz"
    with open(image.crosvm_kernel, "rb") as src, open(gz, "wb") as dst:
        proc = subprocess.run(["gzip", "-1", "-c"], stdin=src, stdout=dst, check=False)
        assert proc.returncode == 0
    busy = tmp_path / "busy.sock"
    busy.write_text("")
    cases = [
        (["run", str(gz)], b"failed to load kernel"),
        (["run", "--socket", str(busy), str(image.crosvm_kernel)], b"Address already in use"),
        (["stop", str(tmp_path / "no-such.sock")], b"failed to connect to socket"),
    ]
    if not os.path.exists("/dev/vhost-vsock"):
        cases.append((["run", "--vsock", "cid=3", str(image.crosvm_kernel)],
                      b"/dev/vhost-vsock"))
    for args, message in cases:
        result = await run_double("--extended-status", *args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert busy.read_text() == ""  # never removed what it did not create


@needs_qemu
async def test_x86_triple_fault_is_a_stop(tmp_path: Path) -> None:
    """crosvm reports an x86 triple fault as 0 (QEMU calls it a reset; the double tells)."""
    kernel = triple_fault_kernel(tmp_path / "triple.bzImage")
    result = await run_double("--extended-status", "--log-level", "debug", "run", "--serial",
                              "type=sink,hardware=serial,num=1,console", str(kernel))
    assert result.returncode == 0, result.stderr
    assert b'"reason": "guest-reset"' in result.stderr  # QEMU's view
    assert b"exiting with success" in result.stderr  # crosvm's


@needs_qemu
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                    reason="crosvm (and so the engine) requires /dev/kvm before any probe")
async def test_unavailable_decides_by_a_probe_boot(images: dict[str, GuestImage],
                                                   tmp_path: Path) -> None:
    """A real boot with crosvm (here the double) decides, once; the verdict is cached on disk."""
    cache = tmp_path / "cache"
    env = make_env("arm64")
    engine = CrosvmEngine(str(DOUBLE))
    setup = await Accel(cache).resolve(engine, env)
    assert setup == VmmSetup(str(DOUBLE), "kvm", "crosvm 0.1.0-qemu-double")
    verdicts = json.loads((cache / CACHE_FILE).read_text())
    [(key, verdict)] = verdicts.items()
    assert key.startswith(f"crosvm|{DOUBLE}|") and "|arm64|debian-generic|" in key
    assert verdict["kvm"] is True and "reached the shell" in verdict["reason"]
    # A later run trusts the cache (a changed verdict there is what it reports).
    (cache / CACHE_FILE).write_text(
        json.dumps({key: {"kvm": False, "reason": "KVM internal error (recorded)"}}))
    with pytest.raises(EnvironmentUnavailable) as unavailable:
        await Accel(cache).resolve(engine, env)
    assert str(unavailable.value) == (
        "crosvm cannot boot a guest here: KVM internal error (recorded)")

    # A guest that never reaches its shell is a failed probe, with crosvm's words in it.
    kernel = triple_fault_kernel(tmp_path / "triple.bzImage")
    broken = dataclasses.replace(make_env("x86_64"), image=ImageRef(name="triple", kernel=kernel))
    with pytest.raises(EnvironmentUnavailable) as unavailable:
        await Accel(cache).resolve(engine, broken)
    reason = str(unavailable.value)
    assert reason.startswith("crosvm cannot boot a guest here: probe boot"), reason
    assert "exiting with success" in reason
