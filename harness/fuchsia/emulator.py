"""tools/emulator's reading of an emulator's output: line by line, WaitForLogMessage(s).

Fuchsia's reboot and shutdown tests (src/tests/reboot, src/tests/shutdown) read the
emulator's output with tools/emulator's WaitForLogMessage(s): a line is read once, a
wait goes on until a line contains its text, and a wait for several texts takes them in
any order, one per line. The lines printed before a wait (during a boot the harness
already waited for) are read back from the serial log.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Sequence

from harness.console import Console, ConsoleEOF, ConsoleTimeout, SerialLog

_LINE_END = re.compile(rb"\n")


class LogLines:
    """The guest's serial log read line by line from an offset, as tools/emulator reads output.

    Lines already in the log are read from the file; when it has none left,
    the console is asked for the next line (with its crash watch, so a panic
    ends the wait at once). The console's log is written as it reads, so the
    file always holds at least what the console has seen.
    """

    def __init__(self, console: Console, log: SerialLog, offset: int = 0) -> None:
        self.console = console
        self.log = log
        self.offset = offset
        self._partial = b""
        self._lines: collections.deque[str] = collections.deque()

    def _fill(self) -> None:
        data = self._partial + self.log.since(self.offset)
        self.offset += len(data) - len(self._partial)
        *lines, self._partial = data.split(b"\n")
        self._lines.extend(ln.decode("utf-8", errors="replace").rstrip("\r") for ln in lines)

    async def next_line(self, deadline: float, what: str) -> str:
        """The next whole line; ConsoleTimeout at `deadline`, ConsoleEOF once the VMM is gone."""
        while True:
            if not self._lines:
                self._fill()
            if self._lines:
                return self._lines.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleTimeout(f"no {what} in time", self.log.tail())
            try:
                await self.console.expect([_LINE_END], remaining, what=what)
            except ConsoleEOF:
                # pexpect reports an EOF once: remember it, so that the Guest's next wait
                # (a relaunch, an exit) learns at once that the VMM is gone.
                self.console.eof_seen = True
                self._fill()
                if not self._lines:
                    raise

    async def wait_for(self, messages: Sequence[str], timeout: float) -> list[str]:
        """WaitForLogMessages: a line containing each message, in any order, one per line."""
        pending = list(messages)
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while pending:
            what = " and ".join(repr(m) for m in pending)
            line = await self.next_line(deadline, what)
            for i, message in enumerate(pending):
                if message in line:
                    del pending[i]
                    seen.append(line)
                    break
        return seen

    async def wait_for_pattern(self, patterns: Sequence[re.Pattern[str]], timeout: float,
                               what: str) -> tuple[int, str]:
        """The first line one of `patterns` matches: (which pattern, the line)."""
        deadline = time.monotonic() + timeout
        while True:
            line = await self.next_line(deadline, what)
            for i, pattern in enumerate(patterns):
                if pattern.search(line):
                    return i, line
