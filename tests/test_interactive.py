"""A person at the console: `run --interactive`, and `run --keep` + `attach` after a failure.

Driven through a real pty with pexpect, as a person's terminal would be.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "tests" / "suites_for_tests"

pytestmark = pytest.mark.integration


@pytest.fixture
def short_tmp():  # type: ignore[no-untyped-def]
    path = Path(tempfile.mkdtemp(prefix="hi-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def vmms(marker: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"qemu-system.*{marker}"], capture_output=True,
                          text=True, check=False).stdout.split()


def spawn(args: list[str], tmp: Path) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "harness", *args], cwd=str(ROOT),
                         env={"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                              "HOME": str(Path.home())},
                         timeout=120, encoding="utf-8", codec_errors="replace")


def test_interactive_hands_over_the_console_and_cleans_up(short_tmp: Path) -> None:
    child = spawn(["run", "--interactive", "--env", "qemu-x64-minimal",
                   "--out", str(short_tmp / "out")], short_tmp)
    try:
        child.expect("this is its serial console")
        child.send("uname -m; echo typed-$((40 + 2))\r")
        child.expect("typed-42")
        assert "x86_64" in child.before
        assert vmms(short_tmp), "the guest should be running while the person is attached"
        child.sendcontrol("]")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert not vmms(short_tmp)
    log = (short_tmp / "out" / "qemu-x64-minimal-serial.log").read_bytes()
    assert b"typed-42" in log, "what happened interactively is in the serial log"


def test_keep_leaves_the_failed_guest_running_to_attach(short_tmp: Path) -> None:
    child = spawn(["run", "--keep", "--suite-path", str(SUITES), "--env", "qemu-x64-minimal",
                   "-k", "workflow.always_fails", "--out", str(short_tmp / "out")], short_tmp)
    try:
        child.expect(r"attach: harness attach (\S+)", timeout=180)
        sock = child.match.group(1)
        child.expect("stop:")
        assert vmms(short_tmp), "the failed test's guest is kept running"
        person = spawn(["attach", sock], short_tmp)
        try:
            person.expect("Ctrl-] detaches")
            person.send("echo from-the-person-$((2 * 21))\r")
            person.expect("from-the-person-42")
            person.sendcontrol("]")
            person.expect(pexpect.EOF)
        finally:
            person.close(force=True)
        child.kill(signal.SIGINT)
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert not vmms(short_tmp), "stopping the harness stops the kept guest"
    serial = next((short_tmp / "out").glob("*/workflow.always_fails/serial.log")).read_text(
        errors="replace")
    assert re.search(r"from-the-person-42", serial)
