"""The raw disk images a guest's virtio-blk devices are backed by, each carrying a host pattern.

The pattern, written at a fixed offset before boot, lets the block test check that
the guest reads exactly what the host wrote (suites/peripherals.py). Paths are a
pure function of the environment and the guest's private directory, so `harness
plan` prints the same `--block`/`-drive` arguments a run launches with.
"""

from __future__ import annotations

from pathlib import Path

from harness.environments import Environment

DISK_PATTERN_OFFSET = 1 << 20  # where the host writes its pattern before boot


def make_disk_paths(env: Environment, workdir: Path) -> list[Path]:
    """Where the configured virtio-blk disks live (pure: `plan` prints them)."""
    if not env.devices.has("virtio-blk"):
        return []
    count = int(env.devices.option("virtio-blk", "count", 1))
    return [workdir / f"disk{i}.img" for i in range(count)]


def make_disks(env: Environment, workdir: Path) -> list[Path]:
    """Raw disk images for the configured virtio-blk devices, each carrying a host pattern."""
    size = int(env.devices.option("virtio-blk", "size_mib", 64)) << 20
    disks = make_disk_paths(env, workdir)
    for i, path in enumerate(disks):
        with open(path, "wb") as f:
            f.truncate(size)
            f.seek(DISK_PATTERN_OFFSET)
            f.write(host_pattern(env.name, i))
    return disks


def host_pattern(env_name: str, index: int) -> bytes:
    """What the host writes on disk `index` of an environment's guest: one 512-byte sector."""
    return f"HARNESS-HOST-PATTERN {env_name} disk{index}\n".encode().ljust(512, b".")
