"""The host's side of a guest's network test: a one-connection TCP exchange, a TAP's address.

What the guest sends must arrive on the host and what the host sends must reach the
guest, so the server here reads a known amount, answers with its own bytes, and keeps
what it saw for the test to compare with what the guest reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc


@dataclasses.dataclass
class Exchange:
    """What the host's server saw of its one connection."""

    port: int = 0
    received: bytearray = dataclasses.field(default_factory=bytearray)
    peer: str = ""
    error: str = ""


@contextlib.asynccontextmanager
async def tcp_exchange(bind: str, reply: bytes, expect: int) -> AsyncIterator[Exchange]:
    """A TCP server on `bind`, on a free port (`Exchange.port`), for the duration: from the
    first connection it reads `expect` bytes, sends `reply` and closes; later connections
    are closed at once. The listener closes after the server has stopped."""
    seen = Exchange()
    listener = await anyio.create_tcp_listener(local_host=bind, local_port=0)
    seen.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(_serve_once, listener, reply, expect, seen)
        try:
            yield seen
        finally:
            tg.cancel_scope.cancel()


async def _serve_once(listener: anyio.abc.Listener[Any], reply: bytes, expect: int,
                      seen: Exchange) -> None:
    # Any: anyio's TCP listener hands out SocketStreams; only the ByteStream part is used.

    async def handle(stream: anyio.abc.ByteStream) -> None:
        if seen.peer:
            await stream.aclose()
            return
        seen.peer = str(stream.extra(anyio.abc.SocketAttribute.remote_address, "?"))
        try:
            async with stream:
                while len(seen.received) < expect:
                    seen.received.extend(await stream.receive())
                await stream.send(reply)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as e:
            seen.error = f"{type(e).__name__}: {e}"

    await listener.serve(handle)


def tap_address(name: str) -> ipaddress.IPv4Interface | None:
    """The IPv4 address and netmask the host gave interface `name`, or None."""
    siocgifaddr, siocgifnetmask = 0x8915, 0x891B
    req = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            addr = fcntl.ioctl(s.fileno(), siocgifaddr, req)[20:24]
            mask = fcntl.ioctl(s.fileno(), siocgifnetmask, req)[20:24]
        except OSError:
            return None
    return ipaddress.IPv4Interface(f"{socket.inet_ntoa(addr)}/{socket.inet_ntoa(mask)}")
