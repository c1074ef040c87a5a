"""The KVM probe on crosvm: it knows crosvm's own failure lines and reads a growing log in bounds.

On a KVM that cannot run stock guests crosvm neither boots nor exits: its vcpu loop
(src/crosvm/sys/linux/vcpu.rs, commit f1e797a) warns "unexpected vcpu exit: InternalError"
and runs the vCPU again, forever, so its stderr grows by the second; or KVM_RUN fails
outright, "vcpu hit unknown error", and crosvm exits 33. The probe must end on either at
once, never wait for its boot deadline, and never read the whole flood.
"""

from __future__ import annotations

import shutil
import time
import types
from pathlib import Path

import anyio
import pytest

from harness import kvmprobe
from harness.engines.crosvm import CrosvmEngine
from harness.environments import DeviceConfig, Environment, ImageRef
from harness.kvmprobe import STDERR_READ_MAX, StderrWatch, probe_boot, watch_vmm_stderr

DOUBLE = Path(__file__).resolve().parent / "crosvm_double" / "crosvm"
FLOOD_LINE = b"[2026-08-21T00:00:00.000000Z WARN  crosvm] unexpected vcpu exit: InternalError\n"


def test_a_flooded_log_is_read_from_its_end_in_bounded_steps(tmp_path: Path) -> None:
    log = tmp_path / "vmm-stderr.log"
    with open(log, "wb") as f:
        f.truncate(200 << 20)  # 200 MiB already there (no line in it)
    watch = StderrWatch(log)
    assert watch.poll() is None
    assert watch.bytes_read <= STDERR_READ_MAX
    with open(log, "ab") as f:
        f.write(FLOOD_LINE * 50_000)  # about 4 MiB more at once
    assert watch.poll() == FLOOD_LINE.decode().split("] ", 1)[1].strip()
    assert watch.bytes_read <= 2 * STDERR_READ_MAX


def test_a_line_is_judged_only_when_whole(tmp_path: Path) -> None:
    log = tmp_path / "vmm-stderr.log"
    log.write_bytes(b"[t ERROR crosvm] vcpu hit unknown error: Bad addr")
    watch = StderrWatch(log)
    assert watch.poll() is None
    with open(log, "ab") as f:
        f.write(b"ess (os error 14)\n")
    assert watch.poll() == "vcpu hit unknown error: Bad address (os error 14)"


async def test_the_watch_ends_the_probe_on_crosvms_line(tmp_path: Path) -> None:
    stderr = tmp_path / "vmm-stderr.log"
    guest = types.SimpleNamespace(paths=types.SimpleNamespace(stderr_log=stderr))
    verdict: list[tuple[bool, str]] = []

    async def crosvm_floods() -> None:
        with open(stderr, "ab") as f:
            while True:
                f.write(FLOOD_LINE * 100)
                f.flush()
                await anyio.sleep(0.01)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(crosvm_floods)
            tg.start_soon(watch_vmm_stderr, guest, tg.cancel_scope, verdict)
            await anyio.sleep_forever()
    assert verdict == [(False, "probe boot under KVM failed: the VMM said "
                               "'unexpected vcpu exit: InternalError'")]


def crosvm_env() -> Environment:
    return Environment(
        name="crosvm-probe", dimensions={"device_type": "crosvm", "cpu": "x64"}, tags=(),
        engine="crosvm", arch="x86_64", cpus=1, memory_mib=256, accel="kvm", kernel_args=(),
        profile="linux", image=ImageRef(name="debian-cloud"),
        devices=DeviceConfig(name="probe", devices={"serial": {"count": 1}}), blocking=False,
        disable_sandbox=True)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="the crosvm double needs qemu-system-x86_64")
@pytest.mark.parametrize(("fault", "line"), [
    ("kvm-internal-error", "unexpected vcpu exit: InternalError"),
    ("kvm-unknown-error", "vcpu hit unknown error: Bad address (os error 14)"),
])
async def test_probe_boot_ends_on_crosvms_kvm_failure(fault: str, line: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe itself, through the engine, against the double failing as crosvm does."""
    from harness.images.build import ensure_image
    from harness.images.errors import ImageError

    try:
        ensure_image("debian-cloud", "x86_64")
    except ImageError as e:
        pytest.skip(f"guest image cannot be built here: {e}")
    monkeypatch.setenv("CROSVM_DOUBLE_FAULT", fault)
    env = crosvm_env()
    started = time.monotonic()
    with anyio.fail_after(kvmprobe.PROBE_TIMEOUT_S + 20):
        ok, reason = await probe_boot(CrosvmEngine(str(DOUBLE)), env, str(DOUBLE))
    took = time.monotonic() - started
    assert not ok
    assert line in reason, reason
    # Ended by crosvm's words, not by the boot deadline.
    assert took < kvmprobe.PROBE_TIMEOUT_S, f"{took:.1f} s: {reason}"
