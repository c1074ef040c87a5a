"""Console against a real shell on a pty: the same wire a guest's serial console gives.

No VM is needed to test what the console itself must get right (markers robust to
echo, exit statuses, CR/LF and escape sequences, crash signatures, EOF, floods),
so these run in seconds; tests/test_suites_integration.py does it on real guests.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from harness.console import (
    Console,
    ConsoleEOF,
    ConsoleTimeout,
    GuestCrashed,
    SerialLog,
    clean_output,
    open_console_pty,
)
from harness.profiles import get_profile


class ShellPeer:
    """busybox sh on a pty, with the guest init's prompt: stands in for a guest console."""

    def __init__(self, tmp: Path) -> None:
        master, slave = open_console_pty()
        env = {"PS1": "harness# ", "PATH": "/usr/bin:/bin", "HOME": str(tmp), "ENV": ""}
        # Cooked mode with echo, as a guest's ttyS0 is; only the host side is raw.
        self.proc = subprocess.Popen(
            ["busybox", "sh", "-c", "stty sane; echo HARNESS-BOOT-OK "
             "boot_id=$(cat /proc/sys/kernel/random/boot_id) uptime=0; "
             "exec busybox sh -i"],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        )
        os.close(slave)
        self.log = SerialLog(tmp / "serial.log")
        self.console = Console(self.log, get_profile("linux"))
        self.console.attach(master)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.console.detach()
        self.log.close()


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[ShellPeer]:
    p = ShellPeer(tmp_path)
    try:
        await p.console.expect([p.console.profile.boot_marker], 10, what="boot marker")
        await p.console.expect([p.console.profile.prompt], 10, what="prompt")
        yield p
    finally:
        p.close()


async def test_run_returns_status_and_output(peer: ShellPeer) -> None:
    r = await peer.console.run("echo hello; echo world >&2; (exit 7)")
    assert r.status == 7
    assert r.output.splitlines() == ["hello", "world"]


async def test_run_keeps_shell_state_and_survives_syntax_errors(peer: ShellPeer) -> None:
    await peer.console.run("X=kept; cd /")
    r = await peer.console.run("echo $X $(pwd)")
    assert r.output.strip() == "kept /"
    bad = await peer.console.run("if then fi")
    assert bad.status != 0
    after = await peer.console.run("echo still-alive")
    assert (after.status, after.output.strip()) == (0, "still-alive")


async def test_output_with_quotes_markers_lookalikes_and_no_newline(peer: ShellPeer) -> None:
    r = await peer.console.run("""printf '%s' "it's \\"quoted\\" $((1+1))"; printf ':%d' 5""")
    assert r.status == 0
    assert r.output == 'it\'s "quoted" 2:5'


async def test_crlf_and_escape_sequences_are_cleaned(peer: ShellPeer) -> None:
    r = await peer.console.run(r"printf 'a\r\r\nb\033[6n\033[1;31mred\033[0m\n'")
    assert r.output == "a\nbred\n"


async def test_invalid_utf8_does_not_raise(peer: ShellPeer) -> None:
    r = await peer.console.run(r"printf '\377\376ok\n'")
    assert r.status == 0
    assert r.output.endswith("ok\n")
    assert "\ufffd" in r.output


async def test_many_lines_come_back_complete(peer: ShellPeer) -> None:
    r = await peer.console.run("seq 1 20000")
    assert r.output.split() == [str(i) for i in range(1, 20001)]


async def test_timeout_names_the_command_and_carries_the_tail(peer: ShellPeer) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConsoleTimeout) as err:
        await peer.console.run("echo before-sleep; sleep 30", timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert "sleep 30" in str(err.value)
    assert "before-sleep" in err.value.tail


async def test_panic_line_fails_at_once_with_the_excerpt(peer: ShellPeer) -> None:
    t0 = time.monotonic()
    with pytest.raises(GuestCrashed) as err:
        await peer.console.run(
            "printf '[   12.345678] Kernel panic - not syncing: sysrq triggered crash\\n"
            "[   12.345900] CPU: 0 PID: 94 Comm: sh\\n'; sleep 30", timeout=60)
    assert time.monotonic() - t0 < 3, "a panic must not wait for the command's timeout"
    assert "Kernel panic - not syncing: sysrq triggered crash" in err.value.crash.excerpt


async def test_echoed_command_text_is_not_a_panic(peer: ShellPeer) -> None:
    # The command line (echoed by the tty) contains the words, but not as a kernel log line.
    r = await peer.console.run("echo 'not a Kernel panic - not syncing line' > /dev/null")
    assert r.status == 0


async def test_eof_when_the_peer_exits(peer: ShellPeer) -> None:
    peer.console.sendline("exit")
    with pytest.raises(ConsoleEOF):
        await peer.console.expect([rb"never-printed"], 10, what="nothing")


async def test_log_has_everything_in_order(peer: ShellPeer) -> None:
    await peer.console.run("echo first-line")
    await peer.console.run("echo second-line")
    data = peer.log.path.read_bytes()
    assert data.index(b"HARNESS-BOOT-OK") < data.index(b"first-line") < data.index(b"second-line")


async def test_flood_is_logged_and_memory_stays_bounded(peer: ShellPeer) -> None:
    """100 MB through the console: the whole log on disk, the harness's memory bounded."""
    size = 100 * 1000 * 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await peer.console.run(f"head -c {size} /dev/zero | tr '\\0' 'x'; echo", timeout=300)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status == 0
    assert peer.log.path.stat().st_size > size
    # pexpect's buffers are capped (BEFORE_CAP, 4 MiB); everything else went to disk.
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB during a 100 MB flood"


def test_log_cap_notes_the_cut(tmp_path: Path) -> None:
    log = SerialLog(tmp_path / "serial.log", cap=1000)
    for _ in range(10):
        log.write(b"y" * 300)
    log.close()
    data = (tmp_path / "serial.log").read_bytes()
    assert data.startswith(b"y" * 1000)
    assert b"serial log capped at 1000 bytes" in data
    assert len(data) < 1200


def test_clean_output() -> None:
    assert clean_output(b"a\r\r\nb\x1b[?7l\x1b]0;t\x07c\r\n") == "a\nbc\n"


async def test_a_marker_early_in_one_large_read_is_found(tmp_path: Path) -> None:
    """A 64 KiB read with the marker at its start: searched whole, not only its last bytes."""
    master, slave = os.pipe()
    log = SerialLog(tmp_path / "serial.log")
    console = Console(log, get_profile("linux"))
    console.attach(master)
    try:
        os.write(slave, b"noise\nREADY-7\n" + b"y" * 60000 + b"\n")
        m = await console.expect([rb"READY-(\d)"], 5, what="ready")
        assert m.group(1) == b"7"
        # A panic line early in a large read fails the wait, however much follows it.
        os.write(slave, b"[ 9.1] Kernel panic - not syncing: boom\n" + b"z" * 60000)
        with pytest.raises(GuestCrashed) as e:
            await console.expect([rb"NEVER"], 5, what="never")
        assert "boom" in e.value.crash.excerpt
    finally:
        os.close(slave)
        console.detach()
        log.close()


async def test_a_match_split_across_reads_is_found(tmp_path: Path) -> None:
    """The lookback joins a pattern that arrives a few bytes per read, as a UART delivers it."""
    master, slave = os.pipe()
    log = SerialLog(tmp_path / "serial.log")
    console = Console(log, get_profile("linux"))
    console.attach(master)

    async def dribble() -> None:
        for i in range(0, len(text), 3):
            os.write(slave, text[i:i + 3])
            await anyio.sleep(0.001)

    text = b"x" * 3000 + b"\nHARNESS-BOOT-OK boot_id=0f0e0d0c-0b0a-0908-0706-050403020100 up\n"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dribble)
            m = await console.expect([console.profile.boot_marker], 10, what="boot marker")
        assert m.group(0).endswith(b"050403020100")
        logged = log.path.read_bytes()  # as far as it was read when the marker matched
        assert text.startswith(logged) and m.group(0) in logged
    finally:
        os.close(slave)
        console.detach()
        log.close()


# -- Zircon: a crash string inside its except-block (tefmocheck's rule, live) -----------------

DEATH_TEST = (b"[ RUN      ] ZxAssertCppTest.ZxAssertInvalidPredicateFails\r\n"
              b"[00012.100] 01100:01101> ASSERT FAILED at (zxtest.cc:41): predicate\r\n"
              b"[       OK ] ZxAssertCppTest.ZxAssertInvalidPredicateFails (3 ms)\r\n")


def _zircon_console(tmp_path: Path) -> tuple[Console, SerialLog, int]:
    """A Zircon-profile console reading a pipe; returns it, its log and the pipe's write end."""
    master, slave = os.pipe()
    log = SerialLog(tmp_path / "serial.log")
    console = Console(log, get_profile("zircon"))
    console.attach(master)
    return console, log, slave


@pytest.mark.parametrize("step", [3, 4096])
async def test_assert_inside_its_except_block_passes(tmp_path: Path, step: int) -> None:
    """An assert death test's ASSERT FAILED is expected between its RUN and OK lines: the wait
    goes on to READY. Fed a few bytes per read, so markers and the assert straddle reads."""
    console, log, slave = _zircon_console(tmp_path)
    text = b"$ /boot/test/zxtest-smoke\r\n" + DEATH_TEST + b"READY\r\n"

    async def dribble() -> None:
        for i in range(0, len(text), step):
            os.write(slave, text[i:i + step])
            await anyio.sleep(0.001)  # pacing only: small reads, not a synchronisation

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dribble)
            await console.expect([rb"READY"], 10, what="ready")
    finally:
        os.close(slave)
        console.detach()
        log.close()


async def test_assert_outside_its_except_block_fails_at_once(tmp_path: Path) -> None:
    console, log, slave = _zircon_console(tmp_path)
    try:
        os.write(slave, DEATH_TEST + b"[ RUN      ] VmoTest.Grow\r\n"
                 b"[00013.000] 01100:01101> ASSERT FAILED at (vmo.cc:7): size\r\n")
        t0 = time.monotonic()
        with pytest.raises(GuestCrashed) as err:
            await console.expect([rb"NEVER"], 30, what="never")
        assert time.monotonic() - t0 < 5
        assert err.value.crash.signature == "zircon-assert"
        # The excerpt is of the assert that counted, not the excused one before it.
        assert err.value.crash.excerpt.splitlines()[-1].endswith("(vmo.cc:7): size")
    finally:
        os.close(slave)
        console.detach()
        log.close()


async def test_unterminated_block_excuses_what_follows(tmp_path: Path) -> None:
    """tefmocheck: a start marker without its end excuses everything after it (a cut log)."""
    console, log, slave = _zircon_console(tmp_path)
    try:
        os.write(slave, b"[===ASAN EXCEPT BLOCK START===]\r\n==1==ERROR: AddressSanitizer: "
                        b"heap-use-after-free\r\nREADY\r\n")
        await console.expect([rb"READY"], 10, what="ready")
        os.write(slave, b"[===ASAN EXCEPT BLOCK END===]\r\n==2==ERROR: AddressSanitizer: x\r\n")
        with pytest.raises(GuestCrashed) as err:
            await console.expect([rb"NEVER"], 10, what="never")
        assert err.value.crash.signature == "zircon-asan"
    finally:
        os.close(slave)
        console.detach()
        log.close()
