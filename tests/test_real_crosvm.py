"""The suites against a real crosvm, wherever one exists and KVM works.

Runs where a crosvm binary is found (HARNESS_CROSVM, then PATH, as the engine looks;
not the test double) and a probe boot with it under KVM reaches the shell; skipped
with that reason otherwise.
This is the test that tells whether crosvm is first-class on a given builder.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from harness import environments
from harness.engines.crosvm import CrosvmEngine

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def real_crosvm() -> str:
    """The binary, or pytest.skip with the reason it cannot run here."""
    binary = os.environ.get("HARNESS_CROSVM") or shutil.which("crosvm")
    if not binary:
        pytest.skip("no crosvm binary: HARNESS_CROSVM is not set and crosvm is not on PATH")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"HARNESS_CROSVM={binary} is not an executable file")
    version = subprocess.run([binary, "version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    if "double" in version:
        pytest.skip(f"HARNESS_CROSVM={binary} is the test double ({version.strip()}), "
                    "not a real crosvm")
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x64"
    env = environments.load().get(f"crosvm-{arch}")
    reason = anyio.run(CrosvmEngine(binary).unavailable, env, backend="asyncio")
    if reason:
        pytest.skip(f"real crosvm cannot run here: {reason}")
    return binary


def test_suites_pass_on_real_crosvm(tmp_path: Path) -> None:
    binary = real_crosvm()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--device-type", "crosvm", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "HARNESS_CROSVM": binary}, capture_output=True,
        text=True, timeout=3600, check=False,
    )
    tests = json.loads((out / "summary.json").read_text())["tests"]
    failed = [f"{t['name']}: {t['harness']['attempts'][-1]['message']}" for t in tests
              if t["result"] not in ("PASS", "SKIP")]
    assert not failed, "\n".join(failed) + "\n" + proc.stderr[-4000:]
    assert any(t["result"] == "PASS" for t in tests), "nothing ran on crosvm"
