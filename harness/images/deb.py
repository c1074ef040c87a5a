"""Unpacking a .deb (dpkg-deb), whose sha256 was checked against apt's index first."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.images.errors import ImageError
from harness.images.tools import run_step


def extract(deb: Path, dest: Path) -> None:
    try:
        run_step(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600.0)
    except (OSError, subprocess.CalledProcessError) as err:
        raise ImageError(
            f"dpkg-deb -x {deb.name} failed: {getattr(err, 'stderr', '') or err}. "
            f"Delete {deb} and run `harness images build` to fetch it again."
        ) from None
