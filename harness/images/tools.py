"""Running the host tools an image build needs: apt-cache, apt-get, dpkg-deb, depmod."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_step(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 120.0) -> str:
    """Run one build step: its stdout, or CalledProcessError with what it said."""
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc.stdout
