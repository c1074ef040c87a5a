"""The types are checked: mypy, strict, on the harness, the suites and the crosvm double.

The configuration is pyproject.toml's [tool.mypy], so `./dev test` (this test) and a
person running `.venv/bin/mypy` see the same verdict.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_passes() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout
