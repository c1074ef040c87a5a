"""The control subcommands' client side: `crosvm SUBCOMMAND [ARGS] SOCKET`.

One request per invocation, as crosvm's vm_control/src/client.rs does: connect to the
SOCK_SEQPACKET socket, send the VmRequest as JSON, read one VmResponse. Exit 0 on `Ok`
(or a BalloonStats reply for balloon_stats), else print "unexpected response: ..." and
exit 1; a socket that cannot be reached is exit 1 too.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from crosvm_double.base import EXIT_ERROR, EXIT_STOP, Logger, UsageError
from crosvm_double.cmdline import SNAPSHOT_TAKE_HELP


class HelpRequested(Exception):
    """`--help` on a subcommand: argh prints the usage and exits 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def control_request(command: str, args: list[str]) -> tuple[Any, str]:
    """Parse a control subcommand's arguments into (VmRequest JSON, socket path)."""
    if command == "snapshot":
        return snapshot_request(args)
    switches = {"suspend": {"--full"}, "resume": {"--full"}, "balloon": {"--wait"}}.get(
        command, set())
    seen: set[str] = set()
    positionals: list[str] = []
    for arg in args:
        if arg == "--help":
            raise UsageError(f"Usage: crosvm {command} [<args>] VM_SOCKET")
        if arg.startswith("--"):
            if arg not in switches:
                raise UsageError(f"Unrecognized argument: {arg}")
            seen.add(arg)
        else:
            positionals.append(arg)
    want = ["num_bytes", "socket_path"] if command == "balloon" else ["socket_path"]
    if len(positionals) < len(want):
        missing = "\n    ".join(want[len(positionals):])
        raise UsageError(f"Required positional arguments not provided:\n    {missing}")
    if len(positionals) > len(want):
        raise UsageError(f"Unrecognized argument: {positionals[len(want)]}")
    socket_path = positionals[-1]
    full = "--full" in seen
    if command == "stop":
        request: Any = "Exit"
    elif command == "powerbtn":
        request = "Powerbtn"
    elif command == "sleepbtn":
        request = "Sleepbtn"
    elif command == "suspend":
        request = "SuspendVm" if full else "SuspendVcpus"
    elif command == "resume":
        request = "ResumeVm" if full else "ResumeVcpus"
    elif command == "balloon":
        try:
            num_bytes = int(positionals[0])
            if num_bytes < 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"Error parsing positional argument 'num_bytes' with value "
                             f"'{positionals[0]}': invalid digit found in string") from None
        request = {"BalloonCommand": {"Adjust": {"num_bytes": num_bytes,
                                                 "wait_for_success": "--wait" in seen}}}
    else:  # balloon_stats
        request = {"BalloonCommand": {"Stats": {}}}
    return request, socket_path


def snapshot_request(args: list[str]) -> tuple[Any, str]:
    """`crosvm snapshot take SNAPSHOT_PATH VM_SOCKET [--compress-memory] [--encrypt]`
    (src/crosvm/cmdline.rs SnapshotCommand, SnapshotTakeCommand; src/main.rs snapshot_vm)."""
    if not args or args[0] in ("--help", "help"):
        raise HelpRequested("Usage: crosvm snapshot <command> [<args>]\n\nSnapshot commands\n\n"
                            "Options:\n  --help            display usage information\n\n"
                            "Commands:\n  take              Take a snapshot of the VM")
    if args[0] != "take":
        raise UsageError(f"Unrecognized argument: {args[0]}")
    switches = {"--compress-memory": False, "--encrypt": False}
    positionals: list[str] = []
    for arg in args[1:]:
        if arg == "--help":
            raise HelpRequested(SNAPSHOT_TAKE_HELP)
        if arg.startswith("--"):
            if arg not in switches:
                raise UsageError(f"Unrecognized argument: {arg}")
            switches[arg] = True
        else:
            positionals.append(arg)
    want = ["snapshot_path", "socket_path"]
    if len(positionals) < len(want):
        missing = "\n    ".join(want[len(positionals):])
        raise UsageError(f"Required positional arguments not provided:\n    {missing}")
    if len(positionals) > len(want):
        raise UsageError(f"Unrecognized argument: {positionals[len(want)]}")
    request = {"Snapshot": {"Take": {"snapshot_path": positionals[0],
                                     "compress_memory": switches["--compress-memory"],
                                     "encrypt": switches["--encrypt"]}}}
    return request, positionals[1]


def describe_response(response: Any) -> str:
    if isinstance(response, dict) and "Err" in response:
        code = response["Err"]
        return f"error: {os.strerror(code)} (os error {code})"
    return json.dumps(response)


def run_control(command: str, args: list[str], log: Logger) -> int:
    try:
        request, path = control_request(command, args)
    except HelpRequested as e:
        print(e.text)
        return EXIT_STOP
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            sock.connect(path)
        except OSError as e:
            log.log("error", f"failed to connect to socket at '{path}': "
                             f"{e.strerror} (os error {e.errno})")
            return EXIT_ERROR
        try:
            sock.send(json.dumps(request).encode())
            data = sock.recv(1 << 20)
        except OSError as e:
            log.log("error", f"failed to send request to socket at '{path}': {e}")
            return EXIT_ERROR
    finally:
        sock.close()
    if not data:
        log.log("error", "failed to recv response: the VM closed the socket")
        return EXIT_ERROR
    response = json.loads(data)
    if command == "balloon_stats":
        print(json.dumps(response, indent=2))
        ok = isinstance(response, dict) and "BalloonStats" in response
    else:
        ok = response == "Ok"
        if ok:
            log.log("info", "request response was Ok")
        else:
            print(f"unexpected response: {describe_response(response)}")
    return EXIT_STOP if ok else EXIT_ERROR
