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

from harness.environments import Environment
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.engines.base import Engine

PROBE_TIMEOUT_S = 45.0


async def probe_boot(engine: Engine, env: Environment) -> tuple[bool, str]:
    """Boot `env`'s image with accel=kvm and no devices; (True, how long) or (False, why)."""
    from harness.app import image_for
    from harness.guest import Guest

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
        try:
            with anyio.fail_after(PROBE_TIMEOUT_S + 15):
                boot = await guest.start()
            return True, f"probe boot under KVM reached the shell in {boot.ready_s:.1f} s"
        except TimeoutError:
            return False, f"probe boot under KVM did not reach the shell in {PROBE_TIMEOUT_S:g} s"
        except HarnessError as e:
            stderr = guest.vmm_stderr(600).strip().splitlines()
            detail = f" ({stderr[-1]})" if stderr else ""
            return False, f"probe boot under KVM failed: {e}{detail}"
        finally:
            await guest.close()
