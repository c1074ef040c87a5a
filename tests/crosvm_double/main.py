"""The double's entry point: crosvm's main() (src/main.rs) over the other modules.

Parse (exit 35 on any argh error), then run the subcommand; a `run` that fails after
parsing logs `exiting with error 1: ...` and exits 1; a finished `run` exits with its
ExitState's status, or 0 for all of them without `--extended-status`, logging the status
message last as crosvm does.
"""

from __future__ import annotations

import sys

from crosvm_double import cmdline
from crosvm_double.base import (
    EXIT_ERROR,
    EXIT_INVALID_ARGS,
    EXIT_STOP,
    STATUS_MESSAGE,
    ConfigRefused,
    Logger,
    RunError,
    UsageError,
)
from crosvm_double.control import run_control
from crosvm_double.vm import run_vm

VERSION = "0.1.0"
PKG_VERSION = "qemu-double"


def main(argv: list[str]) -> int:
    log = Logger()
    args = cmdline.prepare_args(argv[1:])
    try:
        g, rest = cmdline.parse_globals(args)
        log.level = cmdline.log_level(g.log_level)
        if not rest:
            raise UsageError("One of the following subcommands must be present:\n    help\n"
                             "    run\n    version\n    " +
                             "\n    ".join(cmdline.CONTROL_COMMANDS))
        if rest[0] in ("--help", "help"):
            print(cmdline.top_help())
            return EXIT_STOP
        command, sub = rest[0], rest[1:]
        if command == "version":
            if sub:
                raise UsageError(f"Unrecognized argument: {sub[0]}")
            print(f"crosvm {VERSION}-{PKG_VERSION}")
            return EXIT_STOP
        if command == "run":
            cfg = cmdline.parse_run(sub)
            if cfg is None:
                print(cmdline.run_help())
                return EXIT_STOP
            status = run_vm(g, cfg, log)
            if not g.extended_status:
                status = EXIT_STOP
            log.log("info", STATUS_MESSAGE[status])
            return status
        if command in cmdline.CONTROL_COMMANDS:
            return run_control(command, sub, log)
        raise UsageError(f"Unrecognized argument: {command}")
    except UsageError as e:
        log.log("error", f"arg parsing failed: {e}\n")
        log.log("info", "invalid argument")  # CommandStatus::InvalidArgs's message
        return EXIT_INVALID_ARGS
    except RunError as e:
        if isinstance(e, ConfigRefused):
            sys.stderr.write(f"{e}\n")
        log.log("error", f"exiting with error 1: {e}")
        return EXIT_ERROR
