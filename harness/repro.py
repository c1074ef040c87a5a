"""Repro lines: how one test of a run is re-run exactly (`harness repro RESULTS_DIR TEST`).

The runner stores, with each result, the `harness run` line that selects the
same inputs (tests.json, environments.json, suite paths, all absolute) and
narrows them to that one test (`-k`) on that one environment (`--env`), and
writes it as the test folder's repro.sh. This module makes those lines, and
finds a result in a run's summary.json with the arguments that re-run it
(`harness repro` runs them: harness.app.repro_command, then the command line).

Only the arguments after `run` are taken from the file; the program is always
the harness now running, called in-process. Two reasons: a results directory
copied from a CI bot names the bot's harness path, which does not exist on the
developer's machine; and a summary.json from elsewhere can then never make
`harness repro` start anything but a harness run.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import glob
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ConfigError
from harness.report.summary import load_summary
from harness.results import TestResult
from harness.textsafe import name_safe

SUMMARY = "summary.json"
REPRO_SCRIPT = "repro.sh"
# Options of `harness run` whose value is an input file or directory the repro needs.
INPUT_OPTIONS = ("--tests", "--environments", "--suite-path", "--durations-from", "--build-dir",
                 "--product-bundles")
# The commands a stored repro line may run: a test of a run, or (a build's boot tests) the
# driver developer's `harness run-boot-test`, which re-runs a boot test as `fx run-boot-test`.
REPRO_COMMANDS = ("run", "run-boot-test")
_GLOB_CHARS = frozenset("*?[")


def harness_command(argv0: str | None = None, executable: str | None = None) -> list[str]:
    """The argv prefix that starts this harness again, pasteable from any directory.

    A bare `harness` only works in a shell where the right venv is active, and
    can start a different install there. So: the console script by its absolute
    path when that is how the harness was started (its shebang names the venv's
    Python, no activation needed); otherwise (`python -m harness`, or called
    in-process as the tests do) the absolute path of this interpreter with
    `-m harness`. Neither path is resolved through symlinks: a venv's
    `bin/python` is a symlink to the system Python, which has no harness.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    script = Path(argv0)
    if script.name == "harness" and script.is_file() and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    if executable:
        return [os.path.abspath(executable), "-m", "harness"]
    return ["harness"]


def exact_glob(name: str) -> str:
    """A `-k` pattern that matches `name` only, even when it holds `*`, `?` or `[`.

    Two more things make it safe on a command line a person reads and pastes: a
    control character (an escape sequence, a newline) becomes `?`, which matches it
    and is inert on a terminal; and a leading `-` becomes `[-]`, which matches a
    dash but is not taken by argparse for an option (a test named `--help` or `-k`).
    """
    pattern = "".join("?" if name_safe(c) != c else c for c in glob.escape(name))
    return "[-]" + pattern[1:] if pattern.startswith("-") else pattern


def write_repro_script(out_dir: Path, result: TestResult) -> str | None:
    """Write the test folder's repro.sh (`exec` of the repro line); its run-relative path.

    A file in the folder, because the folder is what a CI system uploads and a
    person browses: `sh FOLDER/repro.sh` (or running it) re-runs that test.
    """
    if not result.folder or not result.repro:
        return None
    rel = f"{result.folder}/{REPRO_SCRIPT}"
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec {result.repro}\n")
    path.chmod(0o755)
    return rel


def run_arguments(line: str, where: str, key: str) -> list[str]:
    """The arguments of a stored repro line from `run` (or `run-boot-test`) on, without the
    program that ran it."""
    try:
        tokens = shlex.split(line)
    except ValueError as e:
        raise ConfigError(where, key, "repro", f"cannot parse {line!r}: {e}") from None
    if tokens and Path(tokens[0]).name == "harness":
        start = 1
    elif tokens[1:3] == ["-m", "harness"]:
        start = 3
    else:
        raise ConfigError(where, key, "repro", f"not a harness command: {line!r}")
    if len(tokens) <= start or tokens[start] not in REPRO_COMMANDS:
        raise ConfigError(where, key, "repro", f"not a `harness run` command: {line!r}")
    return tokens[start:]


def input_paths(args: Sequence[str]) -> list[tuple[str, str]]:
    """(option, path) for each input file or directory named in `harness run` arguments."""
    out: list[tuple[str, str]] = []
    it = iter(args)
    for arg in it:
        for option in INPUT_OPTIONS:
            if arg == option:
                value = next(it, None)
                if value is not None:
                    out.append((option, value))
            elif arg.startswith(option + "="):
                out.append((option, arg.split("=", 1)[1]))
    return out


@dataclasses.dataclass(frozen=True)
class Repro:
    """A result found in a run, and the `harness run` arguments that re-run it."""

    result: TestResult
    summary: Path
    args: tuple[str, ...]  # from "run" on

    def command(self, prefix: Sequence[str] | None = None) -> list[str]:
        return [*(harness_command() if prefix is None else prefix), *self.args]


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def find_result(results: Sequence[TestResult], test: str, env: str | None, where: str
                ) -> TestResult:
    """The one result `test` names: a test name, an ENV/NAME key, or an unambiguous glob.

    When several environments ran the test, the one that failed is meant; if
    that still leaves more than one, the caller must say which (--env or the key).
    """
    pool = [r for r in results if env is None or r.environment == env]
    if env is not None and not pool:
        envs = sorted({r.environment for r in results})
        raise ConfigError(where, None, "--env",
                          f"no results for environment {env!r}; the run has: "
                          f"{', '.join(envs) or 'no results at all'}")
    found = [r for r in pool if test in (r.test, r.key)]
    if not found and _is_glob(test):
        found = [r for r in pool
                 if fnmatch.fnmatchcase(r.test, test) or fnmatch.fnmatchcase(r.key, test)]
    if not found:
        raise ConfigError(where, None, None, f"no test {test!r}"
                          + (f" on {env}" if env else "") + _suggestions(test, pool))
    if len(found) > 1:
        failed = [r for r in found if not r.status.ok]
        if len(failed) == 1:
            return failed[0]
        if failed:
            found = failed
        raise ConfigError(where, None, None,
                          f"{test!r} is ambiguous: it names {_listing([r.key for r in found])}; "
                          "give ENV/NAME or --env")
    return found[0]


def _listing(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _suggestions(test: str, pool: Sequence[TestResult]) -> str:
    names = sorted({r.test for r in pool} | {r.key for r in pool})
    near = difflib.get_close_matches(test, names, n=5, cutoff=0.6)
    lowered = test.lower()
    near += [n for n in names if lowered in n.lower() and n not in near][: 5 - len(near)]
    if near:
        return f"; did you mean: {', '.join(near)}?"
    failed = sorted(r.key for r in pool if not r.status.ok)
    if failed:
        return f"; the tests that did not pass: {_listing(failed)}"
    return f"; the run has {len(pool)} results, none that did not pass"


def load_repro(results_dir: Path, test: str, env: str | None = None) -> Repro:
    """Find `test` in RESULTS_DIR/summary.json and check its repro line can still run."""
    summary = Path(results_dir) / SUMMARY
    run = load_summary(summary)
    where = str(summary)
    result = find_result(run.results, test, env, where)
    if not result.repro:
        raise ConfigError(where, result.key, "repro",
                          "no repro command stored (the run was not made by `harness run`)")
    args = run_arguments(result.repro, where, result.key)
    for option, path in input_paths(args):
        if not Path(path).exists():
            raise ConfigError(where, result.key, "repro",
                              f"{option} {path} no longer exists; the run's inputs must still "
                              "be there to re-run it with the same inputs")
    return Repro(result, summary, tuple(args))
