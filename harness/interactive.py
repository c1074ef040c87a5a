"""Hand a guest's serial console to a person: `run --interactive`, `run --keep`, `attach`.

The console keeps going through the same pexpect spawn (so serial.log stays
complete); a relay forwards whatever arrives to the person and what they type
to the guest. `Ctrl-]` leaves, as with telnet and pexpect's own interact().
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import anyio
import anyio.abc

from harness.console import Console
from harness.guest import Guest
from harness.textsafe import name_safe

ESCAPE = b"\x1d"  # Ctrl-]


async def pump_console(console: Console, write: Callable[[bytes], Awaitable[None]]) -> None:
    """Forward console output as it arrives until the VMM closes it."""
    while (data := await console.relay()) is not None:
        await write(data)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on the person's terminal for the session; restored whatever happens."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _read_fd(fd: int) -> bytes:
    while True:
        await anyio.wait_readable(fd)
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            continue


async def interact(console: Console, *, stdin: int = 0, stdout: int = 1) -> None:
    """The person's terminal <-> the guest console, until Ctrl-] or the VMM exits."""

    async def write(data: bytes) -> None:
        os.write(stdout, data)

    with raw_terminal(stdin):
        async with anyio.create_task_group() as tg:
            async def keys() -> None:
                while True:
                    data = await _read_fd(stdin)
                    if not data or ESCAPE in data:
                        head = data.split(ESCAPE, 1)[0]
                        if head:
                            console.send(head.decode("latin-1"))
                        tg.cancel_scope.cancel()
                        return
                    console.send(data.decode("latin-1"))

            async def output() -> None:
                await pump_console(console, write)
                tg.cancel_scope.cancel()

            tg.start_soon(keys)
            tg.start_soon(output)


async def serve(console: Console, socket_path: Path) -> None:
    """Serve the console on a Unix socket, one person at a time (`harness attach SOCKET`)."""
    listener = await anyio.create_unix_listener(socket_path)
    os.chmod(socket_path, 0o600)
    async with listener:
        while True:
            client = await listener.accept()
            async with client, anyio.create_task_group() as tg:
                async def write(data: bytes, client: anyio.abc.ByteStream = client) -> None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await client.send(data)

                async def keys(client: anyio.abc.ByteStream = client) -> None:
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            console.send((await client.receive()).decode("latin-1"))
                    tg.cancel_scope.cancel()

                tg.start_soon(keys)
                await pump_console(console, write)
                tg.cancel_scope.cancel()
                return


async def keep_serving(guests: Sequence[Guest], *, say: Callable[[str], None],
                       until: Callable[[], Awaitable[object]] | None = None) -> None:
    """Keep failed tests' guests running, each console on a socket, until SIGINT/SIGTERM
    (or until `until` returns: the run's own signal handling, harness.signals)."""
    async with anyio.create_task_group() as tg:
        for guest in guests:
            sock = guest.workdir / "console.sock"
            tg.start_soon(serve, guest.console, sock)
            pid = guest.vmm.pid if guest.vmm else "?"
            say(f"kept {name_safe(guest.env.name)} (VMM pid {pid}) after its failure:\n"
                f"  attach: harness attach {sock}    (Ctrl-] detaches)\n"
                f"  stop:   Ctrl-C here, or kill -TERM {os.getpid()}")
        if until is not None:
            await until()
        else:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
        tg.cancel_scope.cancel()


async def attach(socket_path: Path) -> int:
    """Client side of `serve`: this terminal <-> the kept guest's console."""
    try:
        stream = await anyio.connect_unix(socket_path)
    except OSError as e:
        print(f"harness: cannot attach to {socket_path}: {e.strerror}", file=sys.stderr)
        return 2
    print("attached; Ctrl-] detaches", file=sys.stderr)
    async with stream:
        with raw_terminal(0):
            async with anyio.create_task_group() as tg:
                async def keys() -> None:
                    while True:
                        data = await _read_fd(0)
                        if not data or ESCAPE in data:
                            tg.cancel_scope.cancel()
                            return
                        await stream.send(data)

                async def output() -> None:
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            os.write(1, await stream.receive())
                    tg.cancel_scope.cancel()

                tg.start_soon(keys)
                tg.start_soon(output)
    return 0
