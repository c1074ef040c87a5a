"""The spine's proof: boot, run commands, check output and exit status, shut down cleanly."""

from __future__ import annotations

from harness.exits import ExitKind
from harness.suite import TestContext, guest_test

UNAME_M = {"x86_64": "x86_64", "arm64": "aarch64"}


@guest_test(timeout_s=180)
async def test_boot_and_command(t: TestContext) -> None:
    """The guest boots to a shell, runs commands with the right status and output, powers off."""
    g = t.guest
    machine = (await g.check("uname -m")).strip()
    assert machine == UNAME_M[t.env.arch], f"uname -m says {machine!r} on {t.env.arch}"
    t.prop("kernel_release", (await g.check("uname -r")).strip())

    result = await g.run("echo out-$((6 * 7)); echo err >&2; exit_with() { return $1; }; "
                         "exit_with 3")
    assert result.status == 3, f"status {result.status}, expected 3"
    assert "out-42" in result.output and "err" in result.output, result.output

    big = await g.run("seq 1 2000")
    lines = big.output.split()
    assert lines == [str(i) for i in range(1, 2001)], "output of `seq 1 2000` came back mangled"

    info = await g.shutdown(timeout=60)
    assert info.kind == ExitKind.STOP, f"guest power-off ended as {info.kind}: {info.explanation}"
