"""Private work directories (sockets, disks) that say who owns them, and the sweep of
those whose owner died.

Teardown removes a guest's directory, but nothing runs after a SIGKILL (an OOM
kill, a CI runner's hard timeout): the VMMs die with the harness (PDEATHSIG), their
directories, with disk images of 64 MiB and more, do not. So each directory holds
an `owner` file (pid, the process's start time, the boot id), and the next
`harness run` removes the ones whose owner is gone. The start time and boot id
make a reused pid, or a pid from before a reboot, count as gone; a directory whose
owner cannot be read is left alone, since it is then not known to be stale.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

OWNER_FILE = "owner"
PREFIX = "harness-"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks after boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses; it ends at the last ")".
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def owner_record(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid} {process_start(pid) or '-'} {_boot_id()}\n"


def write_owner(path: Path) -> None:
    """Record this process as the owner, in the file `path`."""
    path.write_text(owner_record())


def owner_alive(path: Path) -> bool:
    """Whether the process recorded in `path` still runs (True when it cannot be told)."""
    try:
        pid_s, start, boot = path.read_text().split()[:3]
        pid = int(pid_s)
    except (OSError, ValueError):
        return True
    if boot != _boot_id() and boot != "-":
        return False
    now = process_start(pid)
    if now is None:
        return False
    return start in ("-", now)


def describe_owner(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return f"pid {int(path.read_text().split()[0])}"
    return "owner unknown"


def private_workdir(prefix: str = PREFIX) -> Path:
    """A fresh 0700 directory for sockets and disks in flight; unique per guest and run.

    Control sockets live in it, and a Unix socket path must fit in 108 bytes: when
    TMPDIR (or XDG_RUNTIME_DIR) is too deep for that, /tmp is used instead.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    # mkdtemp adds 8 characters; the longest name placed inside is "control.sock".
    if len(os.path.join(base, prefix)) + 8 + len("/control.sock") > SOCKET_PATH_MAX:
        base = "/tmp"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        write_owner(path / OWNER_FILE)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def workdir_bases() -> list[Path]:
    """Every directory `private_workdir` may have used, each once."""
    seen: list[Path] = []
    for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
        if base and Path(base).is_dir() and Path(base) not in seen:
            seen.append(Path(base))
    return seen


def sweep_stale(bases: Iterable[Path] | None = None) -> list[Path]:
    """Remove work directories of harness processes that are gone; return what was removed.

    Only this user's directories named `harness-*` with an owner record are looked at,
    so another user's run, an older harness's directory and a live run are never touched.
    """
    removed: list[Path] = []
    uid = os.geteuid()
    for base in workdir_bases() if bases is None else bases:
        with contextlib.suppress(OSError):
            for path in base.glob(f"{PREFIX}*"):
                try:
                    st = path.lstat()
                except OSError:
                    continue
                owner = path / OWNER_FILE
                if (not path.is_dir() or path.is_symlink() or st.st_uid != uid
                        or not owner.is_file() or owner_alive(owner)):
                    continue
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(path)
    return removed
