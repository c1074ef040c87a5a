"""Reading a JSON input (tests.json, environments.json, summary.json) within limits.

An input is whatever path the user gives, so it may be `/dev/zero` (reading it
never ends and exhausts memory), a FIFO nobody writes to (opening it blocks
forever), a directory, or JSON nested a thousand levels deep (Python's decoder
raises RecursionError). Each of these is a ConfigError (exit 2) naming the file
and saying what it is. A pipe with a writer (`--tests <(generate)`) is read as
usual; a FIFO with no writer reads as empty and says so.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

MiB = 1 << 20
# Deeper than any real tests.json, environments.json or summary.json (about 8 levels),
# and far from where Python's decoder and the code reading the values would recurse
# out of stack. Checked in full where a document is small (environments.json) and on
# the values a reader keeps without looking into them (tests.json's unknown fields);
# a whole 20,000-entry tests.json would take as long to walk as to decode, so beyond
# that Python's decoder's own limit (RecursionError, near 1,000) is turned into the
# same clear error.
MAX_DEPTH = 64
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_input(path: Path | str, limit: int, what: str = "file") -> bytes:
    """The bytes of `path`, which must be a file or a pipe of at most `limit` bytes."""
    file = str(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(file, None, None, f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        for test, kind in _KINDS:
            if test(st.st_mode):
                raise ConfigError(file, None, None, f"is {kind}, not a {what}")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise ConfigError(file, None, None, f"is {_size(st.st_size)}, more than the "
                              f"{_size(limit)} a {what} may be")
        fifo = stat.S_ISFIFO(st.st_mode)
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError as e:
                raise ConfigError(file, None, None, f"cannot read: {e.strerror}") from None
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ConfigError(file, None, None, f"holds more than the {_size(limit)} a "
                                  f"{what} may be")
            chunks.append(chunk)
        data = b"".join(chunks)
        if fifo and not data:
            raise ConfigError(file, None, None, "is an empty pipe (a FIFO with nothing "
                              "writing to it?)")
        return data
    finally:
        os.close(fd)


def check_file(path: Path | str, limit: int, what: str = "file") -> None:
    """Refuse, before a reader opens it, a `path` that is not a regular file of at most
    `limit` bytes (for readers that open the file themselves)."""
    file = str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(file, None, None, f"cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "a FIFO" if stat.S_ISFIFO(
            st.st_mode) else "not a regular file")
        raise ConfigError(file, None, None, f"is {kind}, not a {what}")
    if st.st_size > limit:
        raise ConfigError(file, None, None, f"is {_size(st.st_size)}, more than the "
                          f"{_size(limit)} a {what} may be")


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def parse(data: bytes | str, file: str) -> Any:
    """Decode JSON text; malformed, non-UTF-8 or too deeply nested input is a ConfigError."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as e:
        raise ConfigError(file, None, None, f"not valid JSON: {e.msg} at line {e.lineno}, "
                          f"column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(file, None, None, f"not valid UTF-8 text: {e.reason}") from None
    except RecursionError:
        raise ConfigError(file, None, None, "nested too deeply for the JSON decoder "
                          f"(the limit is {MAX_DEPTH} levels)") from None
    return value


def check_depth(value: Any, file: str, limit: int = MAX_DEPTH, *, entry: str | None = None,
                field: str | None = None, start: int = 1) -> None:
    """Refuse a value nested deeper than `limit`, counting it as level `start` (iteratively:
    the check itself cannot overflow)."""
    stack = [(value, start)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ConfigError(file, entry, field, f"nested more than {limit} levels deep")
        if type(item) is dict:
            stack.extend((v, depth + 1) for v in item.values()
                         if type(v) is dict or type(v) is list)
        elif type(item) is list:
            stack.extend((v, depth + 1) for v in item if type(v) is dict or type(v) is list)


def load(path: Path | str, limit: int, what: str = "file", *, depth: bool = False) -> Any:
    """Read and decode a JSON input (see read_input and parse); with `depth`, check the
    whole document against MAX_DEPTH (for small ones)."""
    value = parse(read_input(path, limit, what), str(path))
    if depth:
        check_depth(value, str(path))
    return value
