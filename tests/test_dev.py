"""`./dev` run by a user who is not root, for real (as `nobody`, through setpriv)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _state() -> dict[str, float]:
    """Modification times of what `./dev setup` would change first."""
    paths = [ROOT / ".venv", ROOT / ".venv" / "pyvenv.cfg", ROOT / ".venv" / ".installed", ROOT]
    return {str(p): p.stat().st_mtime for p in paths if p.exists()}


def test_dev_as_a_user_says_it_needs_root_or_sudo_before_doing_anything() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run ./dev as another user")
    if not (ROOT / ".venv").exists():
        pytest.skip("needs the root-owned .venv of `./dev setup`")
    before = _state()
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "./dev", "setup"],
        cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines and lines[0].startswith("[dev] ./dev needs root, or sudo"), proc.stderr
    assert any(".venv belongs to root" in line for line in lines), proc.stderr
    assert lines[-1].startswith("[dev] run it as root (sudo ./dev setup ...)"), proc.stderr
    assert "Permission denied" not in proc.stderr and "Traceback" not in proc.stderr
    assert _state() == before  # nothing was touched
