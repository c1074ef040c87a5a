#!/usr/bin/env python3
"""The peer: labgrid's QEMUDriver + ShellDriver on the harness's guest, timed like the harness.

`peer_labgrid.py ARGV_JSON --workdir DIR` takes the harness's QEMU argv (from
`QemuEngine.command`), turns it into a labgrid environment YAML (labgrid builds its own argv
from driver fields; the fields and `extra_args` are chosen so that only the console and
monitor plumbing differ: labgrid adds `-S -qmp stdio` and a socket serial), then measures
boot-to-shell (QEMUDriver.on() until the ShellDriver is active) and `run("true")` round trips.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# argv options labgrid writes itself (from driver fields) or replaces with its own plumbing.
_OWN = {"-M": "machine", "-cpu": "cpu", "-m": "memory", "-kernel": "kernel", "-append": "boot_args"}
_REPLACED = {"-chardev", "-serial", "-qmp", "-display"}


def labgrid_config(argv: list[str]) -> dict[str, Any]:
    fields: dict[str, str] = {}
    extra: list[str] = []
    i = 1
    while i < len(argv):
        opt = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else None
        if opt in _OWN and value is not None:
            fields[_OWN[opt]] = value
            i += 2
        elif opt in _REPLACED:
            i += 2
        else:
            extra.append(opt)
            if value is not None:
                extra.append(value)
                i += 2
            else:
                i += 1
    import shlex

    return {
        "targets": {"main": {"drivers": {
            "QEMUDriver": {
                "qemu_bin": "qemu",
                "machine": fields["machine"],
                "cpu": fields["cpu"],
                "memory": f"{fields['memory']}M",
                "kernel": "kernel",
                "boot_args": fields.get("boot_args", ""),
                "extra_args": shlex.join(extra),
                "display": "fb-headless",  # `-display none`, as the harness passes
            },
            "ShellDriver": {
                "prompt": "harness# ",
                "login_prompt": "login: ",
                "username": "root",
            },
        }}},
        "tools": {"qemu": argv[0]},
        "images": {"kernel": fields["kernel"]},
    }


def main() -> int:
    # The driver stops a child with SIGTERM: unwind, so `finally` stops the guest.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("argv_json")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--commands", type=int, default=30)
    ap.add_argument("--command", default="true")
    args = ap.parse_args()

    import labgrid
    import yaml
    from labgrid import Environment

    argv = json.loads(Path(args.argv_json).read_text())
    config = Path(args.workdir) / "labgrid-env.yaml"
    config.write_text(yaml.safe_dump(labgrid_config(argv)))
    env = Environment(str(config))
    target = env.get_target("main")
    qemu = target.get_driver("QEMUDriver", activate=False)
    target.activate(qemu)
    result: dict[str, Any] = {"labgrid_version": getattr(labgrid, "__version__", "?"),
                              "argv": qemu._cmd}
    try:
        t0 = time.monotonic()
        qemu.on()
        shell = target.get_driver("ShellDriver", activate=False)
        target.activate(shell)
        result["boot_to_shell_s"] = time.monotonic() - t0
        for _ in range(3):  # warm-up, as on the harness side
            shell.run_check(args.command)
        samples = []
        for _ in range(args.commands):
            s0 = time.perf_counter()
            _, _, status = shell.run(args.command)
            samples.append((time.perf_counter() - s0) * 1000)
            assert status == 0
        result["command_ms"] = samples
        result["command_ms_median"] = statistics.median(samples)
        qemu.off()
    finally:
        child = getattr(qemu, "_child", None)
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
