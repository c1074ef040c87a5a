"""tests.json entries that name a `path`: run the program in the guest and parse its output.

The format comes from the entry (an unknown field `format`, which Fuchsia's
readers ignore) or is sniffed from the output; with no recognisable format,
the exit status alone decides, as Fuchsia's runtests does for plain binaries.
"""

from __future__ import annotations

import shlex

from harness.outputs import write_file
from harness.parsers import FORMATS, detect
from harness.results import Status
from harness.spec import TestSpec
from harness.suite import TestContext

# Fuchsia sets no deadline on a test without timeout_secs; the harness gives a program this
# one, so that a hung guest cannot hold a run forever.
DEFAULT_TIMEOUT_S = 300.0
# The command in the guest waits this much longer than the test's deadline, so that the
# runner's deadline (ABORT, `test deadline of N s exceeded`) is always the one that fires.
_BACKUP_S = 10.0


def program_deadline(spec: TestSpec) -> float:
    """A program's deadline: its timeout_secs, else DEFAULT_TIMEOUT_S (the runner's and this
    module's alike)."""
    return float(spec.timeout_secs or DEFAULT_TIMEOUT_S)


async def run_program(t: TestContext) -> None:
    """A tests.json entry with a `path`: run it in the guest and parse its output."""
    spec = t.spec
    # The runner's deadline governs; this one only backs it up.
    timeout = program_deadline(spec) + _BACKUP_S
    args = t.params.get("args") or []
    command = shlex.join([spec.path, *[str(a) for a in args]])
    result = await t.guest.run(command, timeout=timeout)
    write_file(t.folder / "program-output.txt", result.output)
    fmt = t.params.get("format") or detect(result.output)
    t.prop("exit_status", result.status)
    if fmt:
        if fmt not in FORMATS:
            raise AssertionError(f"tests.json names format {fmt!r}; known: {', '.join(FORMATS)}")
        t.prop("format", fmt)
        for case in FORMATS[fmt](result.output):
            t.cases.append(case)
    failed = [c.name for c in t.cases if c.status == Status.FAIL]
    assert result.status == 0, (
        f"{spec.path} exited {result.status}"
        + (f"; failed cases: {', '.join(failed[:10])}" if failed else "")
        + f"\n{result.output[-2000:]}")
