"""Unpacking a .deb (dpkg-deb), whose sha256 was checked against apt's index first."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.images.errors import RETRY_HINT, ImageError
from harness.images.tools import run_step


def extract(deb: Path, dest: Path) -> None:
    """Unpack a .deb whose sha256 was just checked against apt's index (build._build_into),
    so a failure here is the host's (space, permissions), never a reason to delete it."""
    try:
        run_step(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600.0)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = (getattr(err, "stderr", "") or str(err)).strip()
        raise ImageError(f"dpkg-deb -x {deb.name} failed: {detail}. {RETRY_HINT}") from None
