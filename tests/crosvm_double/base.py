"""What every part of the double shares: crosvm's exit statuses, its two error classes, its log.

Exit statuses and messages from crosvm's src/main.rs (CommandStatus): argh's parse failure
is 35 and only that; anything that fails after parsing (configuration checks in
src/crosvm/cmdline.rs `TryFrom<RunCommand> for Config`, src/crosvm/config.rs
`validate_config`, then building and running the VM) is an `Err` that main() turns into
`exiting with error 1: ...` and status 1 (src/sys/linux/main.rs error_to_exit_code).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys

EXIT_STOP = 0
EXIT_ERROR = 1
EXIT_RESET = 32
EXIT_CRASH = 33
EXIT_PANIC = 34
EXIT_INVALID_ARGS = 35
EXIT_WATCHDOG = 36

# CommandStatus::message(), logged at info level as the last line of a run.
STATUS_MESSAGE = {
    EXIT_STOP: "exiting with success",
    EXIT_RESET: "exiting with reset",
    EXIT_CRASH: "exiting with crash",
    EXIT_PANIC: "exiting with guest panic",
    EXIT_WATCHDOG: "exiting with watchdog reset",
}

LEVELS = {"off": -1, "error": 0, "warn": 1, "info": 2, "debug": 3, "trace": 4}


class UsageError(Exception):
    """A command-line problem argh reports: `arg parsing failed: ...`, exit 35."""


class RunError(Exception):
    """A failure after parsing (configuration, setup, run): `exiting with error 1: ...`."""


class ConfigRefused(RunError):
    """A configuration `TryFrom<RunCommand> for Config` refuses: crosvm's run_vm prints the
    bare message on stderr first, then main() logs it as any other error."""


@dataclasses.dataclass
class Logger:
    """crosvm's stderr log lines: `[TIMESTAMP LEVEL crosvm] message`."""

    level: int = LEVELS["info"]

    def log(self, level: str, message: str) -> None:
        if LEVELS[level] <= self.level:
            # timezone.utc, not datetime.UTC: the double runs under any python3, not only 3.11+.
            utc = datetime.timezone.utc  # noqa: UP017
            now = datetime.datetime.now(utc).isoformat(timespec="microseconds")
            sys.stderr.write(f"[{now} {level.upper():<5} crosvm] {message}\n")
            sys.stderr.flush()
