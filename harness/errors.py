"""Errors the command line turns into a clear message and an exit status.

Exit statuses of `harness run` (pytest's where they mean the same thing):
0 every blocking test passed; 1 a blocking test failed; 2 bad usage or input;
3 infrastructure: the host failed the run (results, logs or the terminal could
not be written: a full disk, a read-only or unwritable directory, a closed
stdout/stderr), so what was recorded is incomplete whatever the tests did;
129/130/143 interrupted by SIGHUP/SIGINT/SIGTERM (128 + the signal, as a shell
reports it; results are still written). 3 is pytest's "internal error", the
closest meaning pytest has, and distinct from the others: 1 must stay "a test
failed" so that CI can tell a broken product from a broken builder, and 5 is
pytest's "nothing collected", kept for a run that selects nothing.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class HarnessError(Exception):
    """An error a person can act on; the CLI prints it without a traceback."""

    exit_status = 1


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
