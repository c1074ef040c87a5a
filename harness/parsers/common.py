"""Turning console text into the lines a test program printed.

Test output reaches the harness through a serial console: lines end in
`\\r\\n` or `\\r\\r\\n`, kernel log prefixes are glued on (Zircon's
`[00012.345] 01234:01235> `, Linux's `[   12.345678] `), escape sequences and
kernel messages are interleaved. Every parser reads the same cleaned lines,
so each one only has to know its own format. The kernel timestamp is kept:
for output that carries no durations of its own (test_bpf), the time between
two lines is the best measure there is.

Where a line came from is kept too (`Line.origin`): a kernel log line names
the process and thread that logged it (`[00012.345] 01234:01235> `), or is a
Linux printk; a plain line is what the program wrote to the console. A case's
message holds only lines from where the case's own output comes from
(`owned`): a driver's kernel log line that lands in the middle of a failing
case is not the case's failure.
"""

from __future__ import annotations

import dataclasses
import re

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ZIRCON_PREFIX = re.compile(r"\[(\d+\.\d+)\] (\d+)[.:](\d+)> ")
_LINUX_PREFIX = re.compile(r"\[ *(\d+\.\d+)\](?:\[ *[CT]\d+\])? ")

NO_RESULT = "no result (crashed or timed out)"
# A failure message is for a person skimming a report; the full output is in the log.
MESSAGE_LINES = 40
MESSAGE_CHARS = 4000
# What a cut-off case shows after NO_RESULT: the first lines it printed (the crash itself
# is reported separately, by the profile's crash scan).
CUT_OFF_LINES = 10


LINUX_KERNEL = ("linux", 0, 0)


@dataclasses.dataclass(frozen=True)
class Line:
    text: str
    timestamp: float | None = None
    # ("zircon", pid, tid) for a Zircon kernel log line, LINUX_KERNEL for a printk,
    # None for a line the program wrote to the console itself.
    origin: tuple[str, int, int] | None = None


def console_lines(text: str) -> list[Line]:
    """`text` split into lines, each without its kernel log prefix, escapes or line-end junk."""
    text = _ANSI.sub("", text)
    lines: list[Line] = []
    for raw in re.split(r"\r*\n|\r", text):
        line = _CONTROL.sub("", raw).rstrip()
        timestamp: float | None = None
        origin: tuple[str, int, int] | None = None
        m = _ZIRCON_PREFIX.match(line)
        if m:
            origin = ("zircon", int(m.group(2)), int(m.group(3)))
        else:
            m = _LINUX_PREFIX.match(line)
            origin = LINUX_KERNEL if m else None
        if m:
            timestamp = float(m.group(1))
            line = line[m.end():].rstrip()
        lines.append(Line(line, timestamp, origin))
    return lines


def same_origin(line: Line, owner: Line | None) -> bool:
    """Whether `line` comes from where the output that began at `owner` comes from.

    A plain line always does (the program's own console output). A kernel log
    line does only when `owner` is one too, from the same process: a test
    process logs from several threads, but the Zircon kernel (pid 0) logs for
    everything, so there only the same thread counts.
    """
    if line.origin is None:
        return True
    if owner is None or owner.origin is None:
        return False
    kind, pid, tid = line.origin
    okind, opid, otid = owner.origin
    return kind == okind and pid == opid and (pid != 0 or tid == otid)


def owned(lines: list[Line], owner: Line | None) -> list[str]:
    """The texts of `lines` that belong with `owner`'s output (see same_origin)."""
    return [ln.text for ln in lines if same_origin(ln, owner)]


def message(lines: list[str]) -> str:
    """Failure lines joined into a case message, cut to what a report can show."""
    kept = [ln for ln in lines if ln.strip()]
    if len(kept) > MESSAGE_LINES:
        kept = [*kept[: MESSAGE_LINES // 2], "...", *kept[-MESSAGE_LINES // 2 :]]
    text = "\n".join(kept)
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 4] + " ..."
    return text


def cut_off_message(output: list[str]) -> str:
    """The message of a case whose result never came."""
    return message([NO_RESULT, *output[:CUT_OFF_LINES]])
