"""A QMP client, by hand (stdlib only): a reader thread routes events and replies by id.

The double drives QEMU through it; QEMU's events (SHUTDOWN with its reason,
GUEST_PANICKED) are what the double turns into crosvm's run-loop events.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from typing import Any


class QmpError(Exception):
    pass


class Qmp:
    """One QMP connection: a reader thread routes events to a callback and replies by id."""

    def __init__(self, sock: socket.socket, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.on_event = on_event
        self.lock = threading.Lock()
        self.counter = 0
        self.pending: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._reader, name="qmp", daemon=True)

    def handshake(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        greeting = json.loads(self.rfile.readline() or b"null")
        if not isinstance(greeting, dict) or "QMP" not in greeting:
            raise QmpError("QEMU closed QMP before its greeting")
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        while True:
            line = self.rfile.readline()
            if not line:
                raise QmpError("QEMU closed QMP during the handshake")
            msg = json.loads(line)
            if "event" in msg:
                self.on_event(msg)
            elif "return" in msg:
                break
            elif "error" in msg:
                raise QmpError(msg["error"].get("desc", "qmp_capabilities failed"))
        self.sock.settimeout(None)
        self.thread.start()

    def _reader(self) -> None:
        try:
            for line in self.rfile:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "event" in msg:
                    self.on_event(msg)
                elif "id" in msg:
                    with self.lock:
                        slot = self.pending.pop(msg["id"], None)
                    if slot is not None:
                        slot[1].append(msg)
                        slot[0].set()
        except OSError:
            pass
        finally:
            self.closed.set()
            with self.lock:
                slots = list(self.pending.values())
                self.pending.clear()
            for done, _ in slots:
                done.set()

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 10.0, fds: tuple[int, ...] = ()) -> Any:
        """Run a QMP command; `fds` go along with it as SCM_RIGHTS (for `getfd`)."""
        with self.lock:
            if self.closed.is_set():
                raise QmpError("QEMU has exited")
            self.counter += 1
            ident = f"d{self.counter}"
            done: threading.Event = threading.Event()
            box: list[dict[str, Any]] = []
            self.pending[ident] = (done, box)
            msg: dict[str, Any] = {"execute": command, "id": ident}
            if arguments:
                msg["arguments"] = arguments
            try:
                data = json.dumps(msg).encode() + b"\n"
                if fds:
                    sent = socket.send_fds(self.sock, [data], list(fds))
                    data = data[sent:]
                if data:
                    self.sock.sendall(data)
            except OSError as e:
                self.pending.pop(ident, None)
                raise QmpError(f"QEMU has exited: {e}") from None
        if not done.wait(timeout):
            with self.lock:
                self.pending.pop(ident, None)
            raise QmpError(f"QMP {command} did not answer within {timeout:g} s")
        if not box:
            raise QmpError("QEMU has exited")
        reply = box[0]
        if "error" in reply:
            raise QmpError(reply["error"].get("desc", "QMP error"))
        return reply.get("return")
