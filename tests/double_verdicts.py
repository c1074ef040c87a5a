"""A private harness cache in which the crosvm double's KVM verdicts are recorded by hand.

Whether crosvm can run an arch here is decided by a probe boot, whose verdict is kept
(harness.accel). The double runs its guests on QEMU/TCG, where a probe boot of the
generic kernel takes 5 s unloaded and more than the probe's 20 s deadline on a busy
2-core CI machine (the deadline is meant for KVM, which boots in a second or two). Tests
that use the double to exercise the rest of the crosvm path record the verdict instead,
in a cache of their own (the shared guest images linked in), so neither a slow probe
skips their environments nor their verdicts leak into anyone else's cache. The probe
itself is tested against the double in tests/test_crosvm_double.py and
tests/test_crosvm_probe.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from harness import environments as envmod
from harness.accel import CACHE_FILE, Accel, Verdict
from harness.cache import cache_dir
from harness.engines.crosvm import CrosvmEngine

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "crosvm_double" / "crosvm"


def cache_with_double_verdicts(base: Path, env_names: Iterable[str]) -> Path:
    """`base/cache`, holding the shared images, the verdicts already known about this
    machine's KVM and a recorded "boots" verdict of the double for each named crosvm
    environment."""
    shared = cache_dir()
    cache = base / "cache"
    cache.mkdir()
    (cache / "images").symlink_to(shared / "images")
    if (shared / CACHE_FILE).exists():
        shutil.copy(shared / CACHE_FILE, cache / CACHE_FILE)
    engine = CrosvmEngine(binary=str(DOUBLE))
    envs = envmod.load(ROOT / "environments.json")
    for name in env_names:
        Accel(cache).store(engine, envs.get(name), Verdict(
            True, "recorded by the test: the crosvm double runs on TCG"))
    return cache
