#!/usr/bin/env python3
"""The "raw" side of the benchmarks: QEMU driven by the least code that can drive it.

Stdlib only, no harness imports: what a person would write as a shell-script-grade wrapper.
It starts the exact argv the harness would (built by `harness.engines.qemu.QemuEngine.command`
and handed over as JSON), with the serial console on a pty like the harness, reads it with
select/os.read, and finds markers with plain byte searches. It prints one JSON line of timings.

Work modes:
  boot          wait for the boot marker, send `poweroff -f`, wait for QEMU to exit
  smoke         boot, then the same commands as `suites/smoke.py:test_boot_and_command`
                through a minimal marker loop, then `poweroff -f`
  serial:BYTES  boot, then have the guest write BYTES of text to its console, counted
                from the command's echo to its end marker, then `poweroff -f`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

BOOT_MARKER = b"HARNESS-BOOT-OK"
PROMPT = b"harness# "
# The commands of suites/smoke.py:test_boot_and_command, in order.
SMOKE_COMMANDS = (
    "uname -m",
    "uname -r",
    "echo out-$((6 * 7)); echo err >&2; exit_with() { return $1; }; exit_with 3",
    "seq 1 2000",
)
SMOKE_STATUSES = (0, 0, 3, 0)
# 64-byte lines: what a chatty test prints, rather than one endless line.
SERIAL_LINE = "0123456789abcdef" * 4


def serial_command(nbytes: int) -> str:
    return f"yes {SERIAL_LINE[:-1]} | head -c {nbytes}"


class Console:
    """A pty master read into a buffer, with a log file of everything read."""

    def __init__(self, fd: int, log: Path | None) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.log = open(log, "wb") if log else None  # noqa: SIM115 - closed in close()
        self.total = 0

    def read(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("raw console: deadline passed")
        ready, _, _ = select.select([self.fd], [], [], left)
        if not ready:
            raise TimeoutError("raw console: deadline passed")
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:  # EIO: QEMU closed the pty
            raise EOFError from e
        if not data:
            raise EOFError
        self.total += len(data)
        if self.log:
            self.log.write(data)
        self.buf += data

    def wait_for(self, pattern: bytes | re.Pattern[bytes], timeout: float
                 ) -> re.Match[bytes] | None:
        """Consume up to the end of `pattern` (bytes: a literal; Pattern: a regex)."""
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(pattern, bytes):
                at = self.buf.find(pattern)
                if at >= 0:
                    del self.buf[: at + len(pattern)]
                    return None
                del self.buf[: max(0, len(self.buf) - len(pattern))]
            else:
                # On bytes, not the bytearray: a match's groups read the buffer lazily.
                m = pattern.search(bytes(self.buf))
                if m:
                    del self.buf[: m.end()]
                    return m
            self.read(deadline)

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def drain_to_eof(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.read(deadline)
                self.buf.clear()
        except EOFError:
            pass

    def close(self) -> None:
        if self.log:
            self.log.close()


def run_command(con: Console, command: str, n: int) -> int:
    """labgrid's marker loop without its `sh -c`: the marker split by quotes in the echo."""
    marker = f"RAWM{n:04d}"
    split = f"{marker[:4]}''{marker[4:]}"
    con.send(f"echo {split}; {command}; echo {split} $?\n")
    m = con.wait_for(re.compile(re.escape(marker.encode()) + rb"(.*?)" + re.escape(marker.encode())
                                + rb" (\d+)\r*\n.*?" + re.escape(PROMPT), re.S), 60)
    assert m is not None
    return int(m.group(2))


def main() -> int:
    # The driver stops a child with SIGTERM: unwind, so `finally` stops the guest.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("argv_json", help="file holding the QEMU argv as a JSON list")
    ap.add_argument("--work", default="boot", help="boot | smoke | serial:BYTES")
    ap.add_argument("--log", help="write the serial console here")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    argv = json.loads(Path(args.argv_json).read_text())
    master, slave = os.openpty()
    tty.setraw(slave)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.close(slave)
    con = Console(master, Path(args.log) if args.log else None)
    out: dict[str, object] = {"work": args.work}
    try:
        con.wait_for(BOOT_MARKER, args.timeout)
        out["marker_s"] = time.monotonic() - t0
        if args.work != "boot":
            con.wait_for(PROMPT, args.timeout)
            out["prompt_s"] = time.monotonic() - t0
        if args.work == "smoke":
            t1 = time.monotonic()
            for i, (command, status) in enumerate(zip(SMOKE_COMMANDS, SMOKE_STATUSES,
                                                       strict=True)):
                got = run_command(con, command, i)
                if got != status:
                    raise RuntimeError(f"{command!r} exited {got}, expected {status}")
            out["commands_s"] = time.monotonic() - t1
        elif args.work.startswith("serial:"):
            nbytes = int(args.work.split(":", 1)[1])
            t1 = time.monotonic()
            before = con.total
            con.send(f"{serial_command(nbytes)}; echo RAW''END\n")
            con.wait_for(b"RAWEND", args.timeout * 10)
            out["serial_s"] = time.monotonic() - t1
            out["serial_bytes"] = con.total - before
            con.wait_for(PROMPT, args.timeout)
        t2 = time.monotonic()
        con.send("poweroff -f\n")
        con.drain_to_eof(args.timeout)
        proc.wait(timeout=args.timeout)
        out["poweroff_s"] = time.monotonic() - t2
        out["returncode"] = proc.returncode
        out["total_s"] = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        con.close()
        os.close(master)
    print(json.dumps(out))
    return 0 if out.get("returncode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
