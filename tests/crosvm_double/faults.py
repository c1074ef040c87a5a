"""Failures a real crosvm can have, made on request: only tests set CROSVM_DOUBLE_FAULT.

Each one does what crosvm's source does in that situation (commit f1e797a):

- `panic`: an internal panic while the VM runs. crosvm's panic hook
  (src/sys/linux/panic_hook.rs) logs the panic message line by line at error level and
  calls abort(), and release builds are `panic = 'abort'` anyway (Cargo.toml): the process
  dies of SIGABRT.
- `cleanup-sigkill`: after the run loop ended, sys::cleanup() (src/sys/linux/main.rs)
  waits 100 ms for child device processes, warns "not all child processes have exited;
  sending SIGKILL" and kill(0, SIGKILL)s its own process group, itself included: the exit
  status the VM had is lost.
- `kvm-internal-error`: KVM returns KVM_EXIT_INTERNAL_ERROR for every vCPU run (what a
  nested paravirtual KVM does to stock guests); crosvm's vcpu loop
  (src/crosvm/sys/linux/vcpu.rs) warns "unexpected vcpu exit: InternalError" and runs
  the vCPU again, forever: the guest never runs and stderr grows without end.
- `kvm-unknown-error`: KVM_RUN fails with an errno crosvm does not expect: "vcpu hit
  unknown error: ...", the vCPU thread ends with ExitState::Crash, the VM exits 33.
"""

from __future__ import annotations

import os
import signal
import time

from crosvm_double.base import Logger

ENV = "CROSVM_DOUBLE_FAULT"
FAULTS = ("panic", "cleanup-sigkill", "kvm-internal-error", "kvm-unknown-error")


def requested() -> str | None:
    fault = os.environ.get(ENV) or None
    if fault is not None and fault not in FAULTS:
        raise SystemExit(f"{ENV}={fault}: not one of {', '.join(FAULTS)}")
    return fault


def panic(log: Logger) -> None:
    """Log the panic the way crosvm's hook does, then abort (SIGABRT)."""
    log.log("error", "thread 'main' panicked at src/crosvm/sys/linux.rs:4418:29:")
    log.log("error", f"crosvm double: internal panic requested by {ENV}=panic")
    log.log("error", "note: run with `RUST_BACKTRACE=1` environment variable to display a "
                     "backtrace")
    os.abort()


def cleanup_sigkill(log: Logger) -> None:
    """crosvm's cleanup killing its own process group. Refused when this process does not
    lead its group: the group would be the caller's (a test runner), not crosvm's."""
    if os.getpgrp() != os.getpid():
        raise SystemExit(f"{ENV}=cleanup-sigkill needs the double to lead its own process "
                         f"group (start it in a new session, as the engine does)")
    log.log("warn", "not all child processes have exited; sending SIGKILL")
    os.killpg(0, signal.SIGKILL)


def kvm_internal_error(log: Logger) -> None:
    """The vCPU loop on a KVM that fails every run: the warning, again and again, until
    someone kills the process (about a thousand lines a second)."""
    while True:
        log.log("warn", "unexpected vcpu exit: InternalError")
        time.sleep(0.001)


def kvm_unknown_error(log: Logger) -> None:
    log.log("error", "vcpu hit unknown error: Bad address (os error 14)")
    log.log("info", "vcpu crashed")
