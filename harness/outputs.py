"""Where `harness run` writes: checked before the run starts, guarded while it runs.

A full disk, a read-only mount, a directory the user may not write, a terminal
that went away (`| head -1`, a dropped ssh session): none of these is a test
result, and none may turn into a traceback or a lost run. Each becomes one line
naming the path and the reason, the run goes on where it can, and the exit
status says "infrastructure" (3, see harness.errors).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from harness.errors import ConfigError, OutputError
from harness.workdirs import describe_owner, owner_alive, write_owner

# Marks a directory as a harness run's results (and records which process writes them),
# so a reused --out can be told apart from a directory that holds something else.
RUN_MARKER = ".harness-run"


def describe(e: BaseException, path: Path | str | None = None) -> str:
    """One line for an OSError: the path it concerns and the system's reason."""
    if isinstance(e, OSError):
        reason = e.strerror or str(e)
        where = e.filename if e.filename is not None else path
    else:
        reason, where = str(e), path
    return f"{where}: {reason}" if where is not None else reason


def write_file(path: Path, data: str | bytes) -> None:
    """Write a small result file. A failed write()'s OSError carries no file name; this
    one names `path`, so the line the user reads says which file the disk refused."""
    try:
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def check_writable(path: Path, what: str) -> None:
    """Create `path` if needed and prove a file can be written, synced and removed in it.

    Done before the run, so that a read-only or full `--out` or cache is one line
    naming it rather than a traceback an hour in. `what` says which setting names it
    ("--out", "the cache directory (HARNESS_CACHE_DIR)").
    """
    if path.exists() and not path.is_dir():
        raise ConfigError("command line", None, what if what.startswith("-") else None,
                          f"{path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path} cannot be created: {describe(e)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-probe-", dir=path)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {path} is not writable: {e.strerror or e}") from None


def prepare_out_dir(path: Path) -> str | None:
    """Make `path` an empty results directory owned by this process, or refuse.

    A directory holding an earlier harness run (its marker, or its junit.xml and
    summary.json) is emptied: results of two runs mixed in one folder (a serial.log
    with both runs' boots) would be worse than either. Anything else that is not
    empty is refused, since it is not the harness's to delete; so is a directory
    another live harness run is writing to. Returns the line to tell the user
    when an earlier run was removed.
    """
    check_writable(path, "--out")
    marker = path / RUN_MARKER
    entries = [p for p in path.iterdir() if not p.name.startswith(".harness-probe-")]
    removed = None
    if entries:
        if marker.exists() and owner_alive(marker) and not _is_me(marker):
            raise ConfigError("command line", None, "--out",
                              f"{path} is in use by another harness run "
                              f"({describe_owner(marker)}); choose another directory")
        earlier = marker.exists() or ((path / "junit.xml").exists()
                                      and (path / "summary.json").exists())
        if not earlier:
            shown = ", ".join(sorted(p.name for p in entries)[:3])
            raise ConfigError("command line", None, "--out",
                              f"{path} is not empty ({shown}...) and holds no earlier harness "
                              "run; refusing to write into it: name a new or empty directory")
        try:
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except OSError as e:
            raise OutputError(f"--out {path}: cannot remove the earlier run's results: "
                              f"{describe(e)}") from None
        removed = (f"harness: {path} held an earlier run; its results were removed, "
                   "this run starts clean")
    try:
        write_owner(marker)
    except OSError as e:
        raise OutputError(f"--out {path} is not writable: {describe(e)}") from None
    return removed


def _is_me(marker: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return int(marker.read_text().split()[0]) == os.getpid()
    return False


class Terminal:
    """Lines for the person running the harness; a closed stderr ends them, not the run.

    `harness run 2>&1 | head -1` closes the pipe after one line, a terminal that is
    closed (SIGHUP) answers EIO: the run keeps going and writes its results, and
    `error` remembers why the terminal stopped so the exit status can say so.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self._stream = stream
        self.enabled = enabled
        self.error: str | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def say(self, line: str, *, always: bool = False) -> None:
        """Print `line` (unless quiet; `always` for errors, which --quiet does not hide)."""
        if self.error is not None or not (self.enabled or always):
            return
        stream = self.stream
        try:
            print(line, file=stream, flush=True)
        except (OSError, ValueError) as e:  # ValueError: the stream object was closed
            self.error = f"the terminal (stderr) went away: {describe(e)}"
            silence(stream)


def silence(stream: TextIO) -> None:
    """Point a broken standard stream at /dev/null, so that nothing written to it later
    (Python flushes stdout and stderr at exit) raises or changes the exit status."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


def stream_broken(e: BaseException) -> bool:
    """A write to stdout/stderr failed because the reader went away."""
    return isinstance(e, BrokenPipeError) or (
        isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.EIO, errno.EBADF))
