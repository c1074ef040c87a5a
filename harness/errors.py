"""Errors the command line turns into a clear message and an exit status."""

from __future__ import annotations


class HarnessError(Exception):
    """An error a person can act on; the CLI prints it without a traceback."""

    exit_status = 1


class ConfigError(HarnessError):
    """Bad input (tests.json, environments.json, arguments): exit 2, naming file, entry, field."""

    exit_status = 2

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


class Unsupported(HarnessError):
    """The engine has no such control (for example a power button where there is no ACPI)."""
