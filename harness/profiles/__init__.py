"""Guest profiles: what the console and the suites need to know about a guest OS.

Profiles know nothing of engines: the same Zircon profile serves QEMU and
crosvm; only the kernel command line may differ, and it is a pure function of
(arch, engine, nodename).
"""

from __future__ import annotations

from harness.profiles import linux, zircon
from harness.profiles.base import Crash, CrashSignature, Profile

PROFILE_NAMES = ("linux", "zircon")


def get_profile(name: str) -> Profile:
    """The profile called `name`; a ValueError naming the known ones otherwise."""
    if name == "linux":
        return linux.PROFILE
    if name == "zircon":
        return zircon.PROFILE
    raise ValueError(f"unknown guest profile {name!r} (known: {', '.join(PROFILE_NAMES)})")


__all__ = ["PROFILE_NAMES", "Crash", "CrashSignature", "Profile", "get_profile"]
