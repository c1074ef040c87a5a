#!/usr/bin/env python3
"""Run the `harness` command line in this process and record its own peak memory.

`python harness_rss.py OUT.json -- run --tests ...` behaves like `harness run --tests ...`
(the console script does nothing more than call harness.cli.main) and then writes the
peak memory of this process alone: a wait4() of the harness from outside would report the
largest of it and its reaped children, and the children are QEMU.

The peak is VmHWM (the high-water RSS of this process's address space). ru_maxrss is
written too, but Linux carries into it the high-water mark of the address space replaced
at exec, so a child of a big parent (the benchmark driver) would report the parent's size.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> int:
    out, sep, *argv = sys.argv[1:]
    if sep != "--":
        print("usage: harness_rss.py OUT.json -- HARNESS-ARGS...", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    from harness.cli import main as harness_main

    rc = harness_main(argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm = usage.ru_maxrss
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    with open(out, "w") as f:
        json.dump({"returncode": rc, "maxrss_kib": hwm, "ru_maxrss_kib": usage.ru_maxrss,
                   "cpu_s": usage.ru_utime + usage.ru_stime,
                   "main_s": time.monotonic() - t0}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
