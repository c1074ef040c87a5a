"""CPU seconds a process session used on the host: a VMM and everything it spawned.

The VMM is started as a session leader (harness.engines.process), so its session is
exactly the VMM and its children: crosvm's sandboxed device processes, or the QEMU
the crosvm double runs. Read from /proc, around a transfer, by the block test.
"""

from __future__ import annotations

import os
from pathlib import Path


def session_cpu_seconds(sid: int, proc: Path = Path("/proc")) -> float:
    """User + system CPU seconds of every process in session `sid`, reaped children included
    (cutime/cstime carry the time of children already reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] is stat field 3 (state): session is field 6, utime..cstime 14..17.
        if int(fields[3]) != sid:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / tick
