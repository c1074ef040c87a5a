"""Errors the command line turns into a clear message, and the exit statuses it returns.

`EXIT_STATUSES` is the one table of what an exit status means: `harness --help`
prints it, the README shows it, and tests/test_exit_status.py holds the two to it
and causes each status for real. The values follow pytest's where they mean the
same thing (3: an internal error, 5: nothing was collected), and a shell's for a
signal (128 + its number). 3 is distinct from 1 so that CI can tell a broken
product from a broken builder.
"""

from __future__ import annotations

import signal
import textwrap

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3
EXIT_NO_TESTS = 5


def exit_status_for(signum: int) -> int:
    """A run ended by a signal exits as a shell reports it: 128 + the signal's number."""
    return 128 + signum


EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "every blocking test passed (a flaky one counts as passed; an FYI "
              "environment's failures do not count)"),
    (EXIT_FAILED, "a blocking test did not pass: FAIL, ABORT, or INFRA_FAIL (a blocking "
                  "environment that cannot run here is one); `harness diff`: a verdict "
                  "differs; `harness run-boot-test`: the boot test did not pass"),
    (EXIT_USAGE, "bad usage or input (the message names the file, entry and field)"),
    (EXIT_INFRA, "infrastructure: the host failed the run (results, logs or the terminal "
                 "could not be written: a full disk, a read-only or unwritable directory, a "
                 "closed stdout or stderr), so what was recorded is incomplete whatever the "
                 "tests did"),
    (EXIT_NO_TESTS, "the selection runs nothing: no test matched (a `-k` typo, a device "
                    "type no environment has, an empty tests.json), as pytest's \"no tests "
                    "collected\"; `--allow-empty` makes it 0, for CI matrices that may be "
                    "empty (tests that matched and were skipped are a run: 0)"),
    (exit_status_for(signal.SIGHUP), "interrupted by SIGHUP: every guest torn down, the "
                                     "results written with the rest as ABORT"),
    (exit_status_for(signal.SIGINT), "interrupted by SIGINT (Ctrl-C): the same"),
    (exit_status_for(signal.SIGTERM), "interrupted by SIGTERM: the same"),
)


def exit_status_table(width: int = 79) -> str:
    """EXIT_STATUSES as `harness --help` prints it."""
    lines = ["exit status:"]
    for status, meaning in EXIT_STATUSES:
        lines += textwrap.wrap(meaning, width, initial_indent=f"  {status:<5}",
                               subsequent_indent=" " * 7)
    return "\n".join(lines)


class HarnessError(Exception):
    """An error a person can act on; the CLI prints it without a traceback."""

    exit_status = EXIT_FAILED


class ConfigError(HarnessError):
    """Bad input (tests.json, environments.json, arguments): exit 2, naming file, entry, field."""

    exit_status = EXIT_USAGE

    def __init__(self, file: str, entry: str | None, field: str | None, problem: str) -> None:
        self.file = file
        self.entry = entry
        self.field = field
        self.problem = problem
        where = file
        if entry is not None:
            where += f": {entry}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")


class OutputError(HarnessError):
    """The host would not take what the harness writes: a full disk, a read-only or
    unwritable directory, a closed terminal. Infrastructure, not a test result: exit 3."""

    exit_status = EXIT_INFRA


class Interrupted(Exception):
    """A signal arrived before the run started (see harness.signals); exit 128 + signal."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name} before the run started")
        self.signum = signum
        self.exit_status = 128 + signum


class Unsupported(HarnessError):
    """The engine has no such control (for example a power button where there is no ACPI)."""
