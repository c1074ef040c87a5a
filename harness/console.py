"""The serial console: pexpect over the VMM's pty, a complete log, commands with exit status.

Every wait includes the profile's crash signatures and EOF as extra patterns, so a
kernel panic fails the wait the moment its line arrives (LAVA's approach) and a
VMM that exits is noticed at once, never as a timeout. Matching is on bytes: a
guest may print anything, and a split UTF-8 sequence must not raise.

Work and memory stay bounded whatever the guest prints. Each read is searched
together with only the last `LOOKBACK` bytes before it (pexpect's lookback,
declared by the searcher), so the cost of a read is proportional to what it
brought, never to how much came before, and a read larger than any window can
not hide a match in its first part. pexpect's "before" buffer is capped
(`_BoundedBuffer`); the full text goes to the log file as it arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import secrets
import shlex
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import pexpect
import pexpect.fdpexpect
from pexpect._async import expect_async
from pexpect.expect import Expecter, searcher_re

from harness.errors import HarnessError, OutputError
from harness.logblocks import BlockTracker
from harness.profiles import Crash, Profile

# The longest text a console pattern matches, unless the caller says more: boot marker
# and prompt lines are under 100 bytes, command markers 20, crash signatures match the
# head of their first line.
LOOKBACK = 1024
MAX_READ = 65536
BEFORE_CAP = 4 << 20  # bytes of output kept for a command's result; the log has everything
TAIL_BYTES = 16384
_ANY_BYTES = re.compile(rb"(?s).+")
# pexpect's classes are generic in its stubs only (bytes here: the console is raw bytes).
if TYPE_CHECKING:
    _SearcherBase = searcher_re[bytes]
    _SpawnBase = pexpect.fdpexpect.fdspawn[bytes]
else:
    _SearcherBase = searcher_re
    _SpawnBase = pexpect.fdpexpect.fdspawn
_ANSI = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")


class Searchable(Protocol):
    """What pexpect's regex searcher needs of a pattern: a compiled regex, or the crash watch."""

    def search(self, buf: bytes, pos: int = ...) -> re.Match[bytes] | None: ...


class _Searcher(_SearcherBase):
    """pexpect's regex searcher with a declared longest match (`longest_string`).

    With that declared and no search window, pexpect's Expecter searches each new
    read together with the last `longest_string` bytes of what it already had.
    """

    def __init__(self, patterns: Sequence[Searchable | type[pexpect.EOF | pexpect.TIMEOUT]],
                 longest: int) -> None:
        # The crash watch is pattern-like (a `search` method, all pexpect's searcher calls),
        # not the re.Pattern pexpect's stub names.
        super().__init__(patterns)  # type: ignore[arg-type]
        self.longest_string = longest


class ConsoleError(HarnessError):
    """A console wait ended without its pattern; carries the serial tail for the report."""

    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


class ConsoleTimeout(ConsoleError):
    pass


class ConsoleEOF(ConsoleError):
    """The VMM closed the console: it exited (or was killed)."""


class GuestCrashed(ConsoleError):
    def __init__(self, crash: Crash, tail: str) -> None:
        super().__init__(f"guest crashed: {crash.signature}", tail)
        self.crash = crash


@dataclasses.dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == 0


class _BoundedBuffer(io.BytesIO):
    """pexpect's before/buffer store, trimmed to its newest BEFORE_CAP bytes.

    pexpect keeps everything since the last match in `_before`; a guest that
    floods the console without a match would otherwise grow it without limit.
    The position is always left at the end, which is all pexpect relies on.
    """

    def write(self, b: bytes) -> int:  # type: ignore[override]
        n = super().write(b)
        if self.tell() > 2 * BEFORE_CAP:
            keep = self.getvalue()[-BEFORE_CAP:]
            self.seek(0)
            self.truncate()
            super().write(keep)
        return n


class _Spawn(_SpawnBase):
    def __init__(self, fd: int, *, maxread: int) -> None:
        super().__init__(fd, maxread=maxread)
        # pexpect sets these per instance; bound them (see _BoundedBuffer). pexpect calls
        # buffer_type to make a buffer (spawnbase.py); its stub types it as a buffer.
        self.buffer_type = _BoundedBuffer  # type: ignore[assignment]
        self._buffer = _BoundedBuffer()
        self._before = _BoundedBuffer()


class SerialLog:
    """The serial log on disk: every byte as it arrives, plus harness markers between boots.

    Writes are unbuffered so that the log is complete even if the harness is killed.
    A cap (bytes) can stop a flooding guest from filling the disk; the cut is noted.
    A write the host refuses (a full disk, a read-only mount) never raises here, in
    the middle of pexpect's reading: the log stops at that point, `error` says why in
    one line, and the console's next wait raises OutputError with it (the test is an
    infrastructure failure; the guest's output is still read, so the VMM never
    blocks, and its tail is still kept for the report).
    """

    def __init__(self, path: Path, cap: int | None = None) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self.truncated = False
        self.error: str | None = None
        self._tail = bytearray()
        self._secrets: list[bytes] = []
        self._held = b""
        self._file: IO[bytes] | None = self._open(path)

    def _open(self, path: Path) -> IO[bytes]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "ab", buffering=0)
        except OSError as e:
            raise OutputError(self._describe(e)) from None

    def _describe(self, e: OSError) -> str:
        return f"cannot write {self.path}: {e.strerror or e}"

    def _put(self, data: bytes) -> None:
        if self._file is None or self.error is not None:
            return
        try:
            self._file.write(data)
        except (OSError, ValueError) as e:
            self.error = self._describe(e) if isinstance(e, OSError) else \
                f"cannot write {self.path}: {e}"

    def redact(self, secret: bytes) -> None:
        """Never let `secret` reach the log: each occurrence is written as x's of its length.

        For a secret the guest may echo (Zircon's `kernel.entropy-mixin` on a kernel
        command line a stand-in prints). The end of a read that could be the start of
        a secret is held back until the next read says, so a secret split across
        two reads is caught too.
        """
        if secret:
            self._secrets.append(secret)

    def _scrub(self, data: bytes) -> bytes:
        data = self._held + data
        self._held = b""
        for secret in self._secrets:
            data = data.replace(secret, b"x" * len(secret))
        for secret in self._secrets:
            for k in range(min(len(secret) - 1, len(data)), 0, -1):
                if secret.startswith(data[-k:]):
                    self._held, data = data[-k:], data[:-k]
                    return data
        return data

    def _release(self) -> None:
        """Write what was held back as a possible secret start: no more data is coming."""
        held, self._held = self._held, b""
        if held:
            self._append(held)

    def write(self, data: bytes) -> int:
        n = len(data)
        if self._secrets:
            data = self._scrub(data)
        self._append(data)
        return n

    def _append(self, data: bytes) -> int:
        self._tail += data
        if len(self._tail) > 2 * TAIL_BYTES:
            del self._tail[:-TAIL_BYTES]
        if self.cap is not None and self.written + len(data) > self.cap:
            room = max(0, self.cap - self.written)
            if room:
                self._put(data[:room])
                self.written += room
            if not self.truncated:
                self.truncated = True
                self._put(b"\n[harness: serial log capped at %d bytes; the rest was "
                          b"read and discarded]\n" % self.cap)
            return len(data)
        self._put(data)
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def redirect(self, path: Path) -> None:
        """Continue the log in another file (the next test on a shared guest)."""
        self.close()
        self.path = path
        self.error = None
        self._tail.clear()
        self._file = self._open(path)

    def mark(self, text: str) -> None:
        """A visible harness line in the log (boot separators, test boundaries)."""
        self._release()
        line = f"\n===== harness: {text} =====\n".encode()
        self._put(line)
        self._tail += line

    def tail(self, n: int = 4096) -> str:
        return bytes(self._tail[-n:]).decode("utf-8", errors="replace")

    def offset(self) -> int:
        """Where the log file ends now: what a later `since` reads from.

        The file is written unbuffered as bytes arrive, so its size is exact; it also
        survives a crosvm relaunch, which a console buffer does not.
        """
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, offset: int) -> bytes:
        """What the log file holds from `offset` on (an `offset()` taken earlier)."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read()

    def close(self) -> None:
        if self._file is not None:
            self._release()
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


class _LogFailureWatch:
    """A console pattern that never matches, but ends the wait once the serial log
    could not be written: pexpect turns the exception raised from a search into the
    wait's outcome, so a test does not run on (perhaps for its whole deadline) with a
    log that no longer records anything."""

    def __init__(self, log: SerialLog) -> None:
        self.log = log

    def search(self, buf: bytes, pos: int = 0) -> re.Match[bytes] | None:
        if self.log.error is not None:
            raise OutputError(self.log.error)
        return None


class _LogTee:
    """What pexpect logs each read to: the serial log, and the except-block tracker.

    pexpect logs a read before it searches it, so the tracker has seen every
    byte of the buffer the crash watch is then asked about.
    """

    def __init__(self, log: SerialLog, blocks: BlockTracker) -> None:
        self.log = log
        self.blocks = blocks

    def write(self, data: bytes) -> int:
        self.blocks.feed(data)
        return self.log.write(data)

    def flush(self) -> None:
        self.log.flush()


def _bytes(value: object) -> bytes:
    """pexpect's `before`/`after` as bytes: empty where it holds none (None, or the EOF and
    TIMEOUT markers after those patterns matched)."""
    return bytes(value) if isinstance(value, bytes | bytearray) else b""


def clean_output(data: bytes) -> str:
    """Command output as text: escape sequences dropped, CR/LF normalised, bad bytes replaced."""
    data = _ANSI.sub(b"", data)
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"")
    return data.decode("utf-8", errors="replace")


def open_console_pty() -> tuple[int, int]:
    """A pty pair with the slave in raw mode: no echo or newline mangling by the host side."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


class Console:
    """One guest's serial console across VMM launches (a crosvm reset relaunches the VMM)."""

    def __init__(self, log: SerialLog, profile: Profile) -> None:
        self.log = log
        self.profile = profile
        self._spawn: _Spawn | None = None
        # Markers of the blocks where a crash string is expected (a death test's assert):
        # tracked across VMM launches, as Fuchsia's scan reads one serial log.
        markers = profile.except_markers()
        self._blocks = BlockTracker(markers) if markers else None
        self._crash_watch = profile.crash_watch(self._blocks)
        self.crash_allowed = False
        self.eof_seen = False
        self.before = b""  # what came before the last match of `expect`

    def attach(self, master_fd: int) -> None:
        self.detach()
        self.eof_seen = False
        self._spawn = _Spawn(master_fd, maxread=MAX_READ)
        self._spawn.logfile_read = (self.log if self._blocks is None
                                    else _LogTee(self.log, self._blocks))
        self._spawn.delaybeforesend = None

    def detach(self) -> None:
        spawn, self._spawn = self._spawn, None
        if spawn is None:
            return
        transport = getattr(spawn, "async_pw_transport", None)
        if transport is not None:
            transport[1].close()
        else:
            with contextlib.suppress(OSError):
                spawn.close()

    @property
    def attached(self) -> bool:
        return self._spawn is not None

    def send(self, text: str) -> None:
        if self._spawn is None:
            raise ConsoleEOF("console is not attached (the VMM is not running)", self.log.tail())
        self._spawn.send(text.encode())

    def sendline(self, text: str) -> None:
        self.send(text + self.profile.newline)

    async def expect(
        self, patterns: Sequence[bytes | Searchable], timeout: float,
        *, what: str = "pattern", longest: int = LOOKBACK,
    ) -> re.Match[bytes]:
        """Wait for one of `patterns`; raise GuestCrashed, ConsoleEOF or ConsoleTimeout.

        Returns the match; `self.before` holds what came before it. A pattern that
        can match more than `longest` bytes must say so (`longest=`), or a match
        that straddles reads could be missed.
        """
        spawn = self._spawn
        if self.log.error is not None:
            raise OutputError(self.log.error)
        if spawn is None or self.eof_seen:
            raise ConsoleEOF(f"console closed while waiting for {what}", self.log.tail())
        compiled = [re.compile(p) if isinstance(p, bytes) else p for p in patterns]
        n = len(compiled)
        watch = [] if self.crash_allowed else [self._crash_watch]
        started = time.monotonic()
        searcher = _Searcher([*compiled, *watch, _LogFailureWatch(self.log), pexpect.EOF,
                              pexpect.TIMEOUT], longest)
        try:
            index = await expect_async(Expecter(spawn, searcher, None), timeout)
        except BaseException:
            # Cancelled (deadline, interrupt): stop reading so nothing piles up unread.
            transport = getattr(spawn, "async_pw_transport", None)
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport[1].pause_reading()
            raise
        if index < n:
            self.before = _bytes(spawn.before)
            match = spawn.match
            assert isinstance(match, re.Match)
            return match
        if watch and index == n:
            await self._raise_crash(spawn, time.monotonic() - started)
        if index == n + len(watch) + 1:
            raise ConsoleEOF(f"the VMM closed the console while waiting for {what}",
                             self.log.tail())
        raise ConsoleTimeout(f"no {what} within {timeout:g} s", self.log.tail())

    async def _raise_crash(self, spawn: _Spawn, _elapsed: float) -> None:
        before = _bytes(spawn.before)
        head = before[max(0, len(before) - 4096):]
        crash = await self._finish_crash(spawn, head + _bytes(spawn.after), len(head))
        raise GuestCrashed(crash, self.log.tail())

    async def _finish_crash(self, spawn: _Spawn, data: bytes, at: int) -> Crash:
        """Read up to half a second more (the backtrace); the crash found in all of it.

        The scan starts at `at`, where the watch matched: what comes before it
        was already searched, and may hold a crash string the watch excused
        (inside its except-block) that a scan of this excerpt alone could not.
        """
        with contextlib.suppress(Exception):
            index = await spawn.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=0.5, async_=True)
            data += _bytes(spawn.before)
            if index == 0:
                # The VMM exited meanwhile (crosvm does on a pvpanic panic). pexpect reports
                # an EOF only once: remember it, so the next wait says so at once.
                self.eof_seen = True
        crash = self.profile.find_crash(data, start=at)
        if crash is None:  # the watch regex matched but the profile's finer scan did not
            crash = Crash(signature="crash", excerpt=clean_output(data[-4096:]), offset=0)
        return crash

    async def relay(self) -> bytes | None:
        """The next output as it arrives, for a person's terminal (harness.interactive); the
        serial log gets it too. None once the VMM has closed the console. No crash watch:
        the person reads what the guest says."""
        spawn = self._spawn
        if spawn is None:
            return None
        index = await spawn.expect([_ANY_BYTES, pexpect.EOF], timeout=None, async_=True)
        return None if index == 1 else _bytes(spawn.after)

    async def wait_crash(self, timeout: float) -> Crash:
        """Wait for a crash signature (a test that panics the guest on purpose)."""
        self.crash_allowed = True
        try:
            await self.expect([self._crash_watch], timeout, what="crash signature")
        finally:
            self.crash_allowed = False
        spawn = self._spawn
        assert spawn is not None
        head = self.before[max(0, len(self.before) - 4096):]
        return await self._finish_crash(spawn, head + _bytes(spawn.after), len(head))

    async def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run `command` in the guest shell and return its exit status and output.

        The markers are split by quotes when sent, so the terminal's echo of the
        command line never contains them whole (labgrid); the status is printed
        by a format string, so the echo holds `%d`, never digits (LAVA). `command
        eval` keeps the shell's state, and `command` stops a syntax error in the
        command from abandoning the rest of the line (the end marker).
        """
        token = secrets.token_hex(6)
        begin, end = f"{token}B", f"{token}E"
        line = (f"printf '%s\\n' {token}''B; command eval {shlex.quote(command)}; "
                f"printf '%s:%d\\n' {token}''E $?")
        started = time.monotonic()
        self.sendline(line)
        await self.expect([re.compile(re.escape(begin.encode()) + rb"\r*\n")], timeout,
                          what=f"start of command {command!r}")
        remaining = max(0.1, timeout - (time.monotonic() - started))
        m = await self.expect([re.compile(re.escape(end.encode()) + rb":(\d+)")], remaining,
                              what=f"end of command {command!r}")
        output = clean_output(self.before)
        status = int(m.group(1))
        # Let the prompt arrive so the next command starts from a quiet shell.
        with contextlib.suppress(ConsoleTimeout):
            await self.expect([self.profile.prompt], 5.0, what="prompt")
        return CommandResult(command, status, output, time.monotonic() - started)
