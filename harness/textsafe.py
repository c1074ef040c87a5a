"""Making guest text safe for the places the harness copies it to.

A guest's serial console is arbitrary bytes: escape sequences (busybox sends
`ESC[6n` after every prompt, Zircon clears the screen at boot), NULs from a
crashing UART, split UTF-8 sequences, bells. Each destination forbids a
different subset: XML 1.0 rejects most C0 controls outright (a JUnit file with
one of them is unreadable to every CI), and a person's terminal *executes*
them (a stray `ESC c` clears the screen, a hostile guest could retitle the
window or hide text). So the helpers here never drop a character silently:
they replace it with a visible Python-style escape (`\\x1b`, `\\ud800`), which
keeps the evidence readable in the report and lets a reader find it in
serial.log. Backslashes themselves are not doubled: guest text is full of
paths and regexes, and readability wins over perfect reversibility (the exact
bytes are always in serial.log).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType


def escape_char(ch: str) -> str:
    """The visible escape for one code point, in Python literal syntax."""
    cp = ord(ch)
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _escape_table(*ranges: tuple[int, int]) -> Mapping[int, str]:
    """A read-only `str.translate` table escaping every code point in the inclusive ranges.

    `str.translate` runs in C and is about 15 times faster than a regex
    substitution when a log is dense with controls (5 MB of NULs: 0.2 s
    against 3 s), which is exactly the garbage a crashing guest produces.
    """
    return MappingProxyType(
        {cp: escape_char(chr(cp)) for lo, hi in ranges for cp in range(lo, hi + 1)}
    )


_NONCHARACTERS = tuple((p * 0x10000 + 0xFFFE, p * 0x10000 + 0xFFFF) for p in range(17))
_C0_EXCEPT_TAB_LF_CR = ((0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F))
_DEL_AND_C1 = ((0x7F, 0x9F),)
_SURROGATES = ((0xD800, 0xDFFF),)

# XML 1.0 Char is #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
# Beyond the forbidden code points we also escape what the XML spec "discourages"
# (DEL, C1 controls, noncharacters): junit-xml 1.9 silently deletes those, and
# losing a character without trace is worse than showing its escape.
_XML_TABLE = _escape_table(
    *_C0_EXCEPT_TAB_LF_CR, *_DEL_AND_C1, *_SURROGATES, (0xFDD0, 0xFDEF), *_NONCHARACTERS
)

# For a terminal: every C0/C1 control except newline and tab (ESC, CSI 0x9b, CR,
# backspace all rewrite what is on screen), lone surrogates (printing one raises
# UnicodeEncodeError), and the bidirectional controls that can make text read
# differently from what it is ("Trojan Source").
_TERMINAL_TABLE = _escape_table(
    (0x00, 0x08),
    (0x0B, 0x1F),
    *_DEL_AND_C1,
    *_SURROGATES,
    (0x061C, 0x061C),
    (0x200E, 0x200F),
    (0x202A, 0x202E),
    (0x2066, 0x2069),
)

# For a name (of a test, an environment) on one line of a terminal: the same, plus
# newline and tab, which would split a progress line or shift its columns.
_NAME_TABLE = MappingProxyType({**_TERMINAL_TABLE, 0x09: "\\x09", 0x0A: "\\x0a"})

# Serial consoles end lines with "\r\n" and busybox with "\r\r\n"; both are one newline.
_CONSOLE_NEWLINE = re.compile(r"\r+\n")


def decode_console(data: bytes | bytearray | memoryview) -> str:
    """Decode console bytes as UTF-8 without ever raising.

    A guest can emit invalid UTF-8 (a garbled UART, a binary dumped to the
    console, a sequence cut at a read boundary); U+FFFD marks the spot, which
    is what LAVA does too.
    """
    return bytes(data).decode("utf-8", errors="replace")


def normalize_newlines(s: str) -> str:
    """Turn the console's `\\r\\n` and `\\r\\r\\n` line ends into `\\n`; lone `\\r` stays."""
    return _CONSOLE_NEWLINE.sub("\n", s)


def xml_safe(s: str) -> str:
    """`s` with every code point XML 1.0 forbids or discourages replaced by its escape.

    The result can go into any XML text node or attribute (the XML library
    still escapes `<`, `&` and quotes), and it encodes to UTF-8 without error
    because lone surrogates are escaped too.
    """
    return s.translate(_XML_TABLE)


def terminal_safe(s: str) -> str:
    """`s` made inert for a terminal: control characters and escape sequences shown, not run.

    Newlines and tabs are kept so the text still reads as lines; console line
    ends are normalised first so a `\\r` left over is a real carriage return
    (which would overwrite the line) and is shown as `\\x0d`.
    """
    return normalize_newlines(s).translate(_TERMINAL_TABLE)


def name_safe(s: str) -> str:
    """A name from tests.json or environments.json made inert for one terminal line.

    Names are data as much as guest output is: a test named with an escape sequence
    could retitle the window or clear the screen where its progress line is printed,
    and a newline in it could forge a line. Every control character is escaped.
    """
    # Most names hold nothing to escape; isprintable() says so without a copy.
    return s if s.isprintable() else s.translate(_NAME_TABLE)


def head_tail(s: str, limit_bytes: int, head_bytes: int, *, where: str = "") -> str:
    """`s` cut to at most about `limit_bytes` of UTF-8: its head and its tail, with a marker.

    Long console logs are cut in the middle because both ends matter: the head
    shows how the guest booted, the tail how it ended. The cut is measured in
    encoded bytes because that is what file-size caps (GitLab's 30 MB per JUnit
    file) count; a character split by the cut is dropped, not mangled. `where`
    names the file holding the whole text, for the marker. Lone surrogates are
    escaped first, since they cannot be measured in UTF-8.
    """
    encoded = s.encode("utf-8", errors="backslashreplace")
    if len(encoded) <= limit_bytes:
        return encoded.decode("utf-8")
    head_bytes = max(0, min(head_bytes, limit_bytes))
    tail_bytes = limit_bytes - head_bytes
    head = encoded[:head_bytes].decode("utf-8", errors="ignore")
    tail_raw = encoded[len(encoded) - tail_bytes :] if tail_bytes else b""
    tail = tail_raw.decode("utf-8", errors="ignore")
    omitted = len(encoded) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    marker = f"\n[... {omitted} bytes omitted"
    marker += f"; the whole log is in {where} ...]\n" if where else " ...]\n"
    return head + marker + tail
