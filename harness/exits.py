"""How a VMM exited, in the harness's terms: what suites and reports read, from either engine.

Kept apart from the engines so that a suite can ask "did the guest power off?"
(`ExitKind.STOP`) without knowing which VMM ran it: each engine maps its own exit
statuses onto these kinds (harness.engines.qemu, harness.engines.crosvm).
"""

from __future__ import annotations

import dataclasses
import enum


class ExitKind(enum.StrEnum):
    STOP = "stop"  # guest powered off, or the host stopped it
    RESET = "reset"  # guest rebooted; the VMM exited so the caller can launch it again
    CRASH = "crash"  # VMM-side failure of a vCPU or device
    PANIC = "panic"  # guest kernel panic reported through pvpanic
    WATCHDOG = "watchdog"  # vCPU stall detector reset
    INVALID_ARGS = "invalid-args"  # the VMM rejected its command line: the harness's fault
    ERROR = "error"  # the VMM failed to configure or run
    KILLED = "killed"  # ended by a signal


@dataclasses.dataclass(frozen=True)
class ExitInfo:
    kind: ExitKind
    returncode: int
    explanation: str

    @property
    def infra(self) -> bool:
        """Whether this exit is the host's or harness's fault rather than the guest's."""
        return self.kind in (ExitKind.INVALID_ARGS, ExitKind.ERROR, ExitKind.KILLED,
                             ExitKind.CRASH)
