"""The QEMU engine's KVM verdict, decided by a real probe boot on this host's /dev/kvm.

Opening /dev/kvm proves nothing (a nested paravirtual KVM opens and then fails every
real guest), so the verdict comes from booting the environment's own image under
KVM. Where KVM fails the guest, QEMU prints the error on its stderr and stops the
vCPUs without exiting: the probe must end on those words, not wait out its deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness import environments
from harness.accel import CACHE_FILE, Accel
from harness.engines.qemu import QemuEngine
from harness.kvmprobe import watch_vmm_stderr
from harness.profiles import get_profile

ROOT = Path(__file__).resolve().parent.parent

_PROBE_MARKS = (
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed"),
    pytest.mark.skipif(os.uname().machine != "x86_64",
                       reason="the probe boots the host's own arch; these images are x86_64"),
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                       reason="no usable /dev/kvm: the engine decides TCG without a probe"),
)


def needs_kvm_probe(test: Callable[..., Any]) -> Callable[..., Any]:
    for mark in _PROBE_MARKS:
        test = mark(test)
    return test


@needs_kvm_probe
async def test_kvm_verdict_comes_from_a_real_probe_boot_and_is_cached(tmp_path: Path) -> None:
    env = environments.load(ROOT / "environments.json").get("qemu-x64-minimal")
    engine = QemuEngine()
    binary = engine.locate("x86_64").path
    assert binary is not None
    verdict = await Accel(tmp_path).verdict(engine, env, binary)
    if verdict.kvm:
        assert "reached the shell" in verdict.reason, verdict.reason
    else:
        assert verdict.reason.startswith("probe boot under KVM"), verdict.reason
    [entry] = json.loads((tmp_path / CACHE_FILE).read_text()).values()
    assert (entry["kvm"], entry["reason"]) == (verdict.kvm, verdict.reason)
    # Another run trusts the cache: same verdict, no probe boot.

    async def no_probe(*_args: object) -> tuple[bool, str]:
        raise AssertionError("probed again despite the cached verdict")

    assert await Accel(tmp_path, probe=no_probe).verdict(engine, env, binary) == verdict


class _SlowQmpServer:
    """A QMP peer that binds its socket, and only listens a moment later, as QEMU does."""

    def __init__(self, path: Path, listen_after_s: float) -> None:
        self.path = path
        self.listen_after_s = listen_after_s
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))

    async def serve(self) -> None:
        await anyio.sleep(self.listen_after_s)
        self.sock.listen(1)
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        await loop.sock_sendall(conn, json.dumps(
            {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                 "package": ""}, "capabilities": []}}).encode() + b"\r\n")
        request = json.loads(await loop.sock_recv(conn, 4096))
        assert request["execute"] == "qmp_capabilities"
        reply = {"return": {}}
        if "id" in request:
            reply["id"] = request["id"]
        await loop.sock_sendall(conn, json.dumps(reply).encode() + b"\r\n")
        self.conn = conn


async def test_qmp_connect_waits_out_the_gap_between_bind_and_listen(tmp_path: Path) -> None:
    """Seen in CI: the socket file existed, the connection was refused (listen not yet)."""
    server = _SlowQmpServer(tmp_path / "qmp.sock", listen_after_s=0.3)
    running = types.SimpleNamespace(returncode=None)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            client = await QemuEngine()._connect_qmp(server.path, running)
        assert client is not None
        await client.disconnect()
    finally:
        server.sock.close()


async def test_qmp_connect_gives_up_when_qemu_exits(tmp_path: Path) -> None:
    exited = types.SimpleNamespace(returncode=1)
    assert await QemuEngine()._connect_qmp(tmp_path / "never.sock", exited) is None


async def test_probe_ends_on_the_vmms_words_about_kvm(tmp_path: Path) -> None:
    """QEMU does not exit when KVM fails a guest; its stderr line ends the probe."""
    stderr = tmp_path / "vmm-stderr.log"
    guest = types.SimpleNamespace(paths=types.SimpleNamespace(stderr_log=stderr),
                                  profile=get_profile("linux"))
    verdict: list[tuple[bool, str]] = []

    async def qemu_fails_later() -> None:
        stderr.write_bytes(b"qemu-system-x86_64: warning: host doesn't support requested feature\n")
        await anyio.sleep(0.5)
        stderr.write_bytes(stderr.read_bytes() + b"KVM internal error. Suberror: 1\n"
                                                  b"extra data[0]: 0x0000000000000001\n")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(qemu_fails_later)
            tg.start_soon(watch_vmm_stderr, guest, tg.cancel_scope, verdict)
            await anyio.sleep_forever()
    assert verdict == [(False, "probe boot under KVM failed: the VMM said "
                               "'KVM internal error. Suberror: 1'")]
