"""tests.json programs: one deadline, the runner's, whether or not timeout_secs is given.

The runner ends a test at its deadline (ABORT, `test deadline of N s exceeded`); the
command in the guest waits a little longer, only as a backup. They once disagreed when
timeout_secs was unset (300 s for the runner, 610 s in the guest): a program that never
returned was cut at 300 s by one clock while the other still allowed it ten minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import environments
from harness.console import CommandResult
from harness.plan import PlannedRun
from harness.programs import DEFAULT_TIMEOUT_S, program_deadline, run_program
from harness.runner import Runner, RunOptions, spec_params
from harness.spec import parse_specs
from harness.suite import TestContext as Context  # not "Test*": pytest would collect it

ENV = environments.load(None).get("qemu-x64-minimal")


class _Guest:
    """Records the deadline the program's command was given."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    async def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        self.timeouts.append(timeout)
        return CommandResult(command, 0, "ok\n", 0.0)


@pytest.mark.parametrize("timeout_secs", [None, 42])
async def test_the_runner_and_the_program_share_one_deadline(timeout_secs: int | None,
                                                             tmp_path: Path) -> None:
    entry: dict[str, Any] = {"name": "prog", "path": "/bin/true"}
    if timeout_secs is not None:
        entry["timeout_secs"] = timeout_secs
    [spec] = parse_specs([{"test": entry, "environments": [{"dimensions": {}}]}])
    runner = Runner([PlannedRun(spec, ENV)], {}, {}, RunOptions(out_dir=tmp_path),
                    image_for=lambda env: pytest.fail("no image needed"))
    func, deadline = runner._test_of(PlannedRun(spec, ENV))
    assert func is run_program
    assert deadline == program_deadline(spec) == (timeout_secs or DEFAULT_TIMEOUT_S)
    guest = _Guest()
    await run_program(Context(guest=guest, env=ENV, spec=spec,  # type: ignore[arg-type]
                              folder=tmp_path, params=spec_params(spec)))
    [inner] = guest.timeouts
    assert deadline < inner <= deadline + 10  # the runner's fires first, the other backs it up
