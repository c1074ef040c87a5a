"""Where the harness keeps what it builds and learns between runs: one directory.

The guest images (harness.images) and the KVM verdict (harness.accel) live under it,
so that one variable moves or isolates all of it (the tests give each their own).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$HARNESS_CACHE_DIR, else $XDG_CACHE_HOME/crosvm-harness, else ~/.cache/crosvm-harness."""
    explicit = os.environ.get("HARNESS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crosvm-harness"
