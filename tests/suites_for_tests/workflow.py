"""Suite used only by the harness's own tests (loaded with --suite-path): controlled outcomes.

`fails_once` keeps its attempt count in a host file named by HARNESS_TEST_COUNTER, so it
fails on its first attempt and passes on the next: a flaky test made to order.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.suite import TestContext, guest_test


@guest_test(timeout_s=120)
async def test_fails_once(t: TestContext) -> None:
    """Fails on the first attempt, passes on the second (state kept on the host)."""
    counter = Path(os.environ["HARNESS_TEST_COUNTER"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    out = (await t.guest.check("echo attempt-$((1 + " + str(n) + "))")).strip()
    assert out == f"attempt-{n + 1}"
    assert n >= 1, "first attempt fails on purpose"


@guest_test(timeout_s=120)
async def test_always_fails(t: TestContext) -> None:
    """A failure the guest reports: exit status 3 from a real command."""
    result = await t.guest.run("exit_with() { return 3; }; exit_with")
    assert result.status == 0, f"command exited {result.status}"


def _make_echo(i: int):  # type: ignore[no-untyped-def]
    @guest_test(shares_guest=True, timeout_s=60)
    async def echo(t: TestContext) -> None:
        assert (await t.guest.check(f"echo {i}")).strip() == str(i)

    echo.__doc__ = f"Echo {i} through a shared guest."
    return echo


test_echo_1 = _make_echo(1)
test_echo_2 = _make_echo(2)
test_echo_3 = _make_echo(3)
test_echo_4 = _make_echo(4)
test_echo_5 = _make_echo(5)
test_echo_6 = _make_echo(6)
