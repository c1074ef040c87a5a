"""Decide whether KVM really works by booting a guest under it.

/dev/kvm opening is not enough: on a nested paravirtual KVM it opens and every
real guest then dies with "KVM internal error ... emulation failure". Only a
boot to the marker proves it, so that is what the probe does (once; the engine
caches the verdict on disk).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from harness.environments import Environment, ImageRef
from harness.errors import HarnessError
from harness.profiles.base import clean_text

if TYPE_CHECKING:
    from harness.engines.base import Engine
    from harness.guest import Guest

# A working KVM boots the image to its shell in a second or two; one that takes
# longer than this is no better than TCG (here, a nested paravirtual KVM runs the
# guest for about 28 s of host kernel time before it reports an emulation failure).
PROBE_TIMEOUT_S = 20.0
STDERR_POLL_S = 0.2


# What proves KVM for an environment that boots a build's product bundle: its image is each
# test's, and has no shell to reach, so the embedded Linux guest of the arch boots instead.
PRODUCT_BUNDLE_PROBE_IMAGE = "debian-generic"


def probe_environment(env: Environment) -> Environment:
    """The environment whose boot proves KVM for `env`: itself, or for one that boots a
    product bundle, the same machine with the embedded Linux guest (whose verdict the
    Linux environments of that engine and arch share)."""
    if not env.image.product_bundle:
        return env
    return dataclasses.replace(env, profile="linux", kernel_args=(),
                               image=ImageRef(name=PRODUCT_BUNDLE_PROBE_IMAGE))


async def probe_boot(engine: Engine, env: Environment) -> tuple[bool, str]:
    """Boot `env`'s image with accel=kvm and no devices; (True, how long) or (False, why)."""
    from harness.app import image_for
    from harness.guest import Guest

    env = probe_environment(env)
    try:
        image = await anyio.to_thread.run_sync(image_for, env)
    except HarnessError as e:
        return False, f"probe boot impossible: {e}"
    probe_env = dataclasses.replace(env, accel="kvm", boot_timeout_s=PROBE_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="harness-kvm-probe-") as tmp:
        try:
            guest = Guest(probe_env, engine, image, Path(tmp) / "serial.log")
        except HarnessError as e:
            return False, f"probe boot impossible: {e}"
        verdict: list[tuple[bool, str]] = []
        try:
            with anyio.move_on_after(PROBE_TIMEOUT_S + 15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_vmm_stderr, guest, tg.cancel_scope, verdict)
                    try:
                        boot = await guest.start()
                        verdict.append((True, "probe boot under KVM reached the shell in "
                                              f"{boot.ready_s:.1f} s"))
                    except HarnessError as e:
                        stderr = guest.vmm_stderr(600).strip().splitlines()
                        detail = f" ({stderr[-1]})" if stderr else ""
                        verdict.append((False, f"probe boot under KVM failed: {e}{detail}"))
                    tg.cancel_scope.cancel()
        finally:
            await guest.close()
    if not verdict:
        return False, f"probe boot under KVM did not reach the shell in {PROBE_TIMEOUT_S:g} s"
    return verdict[0]


async def watch_vmm_stderr(guest: Guest, scope: anyio.CancelScope,
                            verdict: list[tuple[bool, str]]) -> None:
    """End the probe as soon as the VMM says on its stderr that KVM failed the guest.

    QEMU does not exit then: it prints the error and stops the vCPUs, so without
    this the probe would wait out its whole deadline on every new machine.
    """
    while True:
        await anyio.sleep(STDERR_POLL_S)
        try:
            data = guest.paths.stderr_log.read_bytes()
        except OSError:
            continue
        crash = guest.profile.find_crash(data)
        if crash is not None:
            end = data.find(b"\n", crash.offset)
            line = clean_text(data[crash.offset:end if end >= 0 else len(data)]).strip()
            verdict.append((False, f"probe boot under KVM failed: the VMM said {line!r}"))
            scope.cancel()
            return
