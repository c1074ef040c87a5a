"""Running the host tools an image build needs: apt-cache, apt-get, dpkg-deb, depmod."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness import stoptoken
from harness.images.errors import RETRY_HINT, ImageError

_POLL_S = 0.1  # how often a running build step looks at the run's StopToken


def run_step(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 120.0) -> str:
    """Run one build step (apt-get, dpkg-deb, depmod): its stdout, or CalledProcessError.

    The child gets a session of its own, so a Ctrl-C at the terminal reaches the
    harness alone: killed by that SIGINT, dpkg-deb would fail mid-archive and the
    build would blame a good .deb. The harness stops the child itself instead, when
    the run's StopToken asks (harness.stoptoken, polled every _POLL_S) or when the
    step is abandoned by an exception (a KeyboardInterrupt in `harness images build`):
    SIGTERM to its process group, SIGKILL after the token's grace period.
    """
    stoptoken.check()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                stoptoken.check()
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout) from None
    except BaseException:
        _stop_child(proc)
        raise
    if proc.returncode < 0:
        # Killed from outside (the OOM killer, a person): nothing says its input was bad.
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() \
            else f"signal {-proc.returncode}"
        raise ImageError(f"`{' '.join(argv[:2])}` was killed by {name}. {RETRY_HINT}")
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
    return stdout


def _stop_child(proc: subprocess.Popen[str]) -> None:
    """End a build step's process group: SIGTERM, the grace period, SIGKILL; reap it."""
    token = stoptoken.current()
    grace = token.grace_s if token is not None else 2.0
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader is gone; anything it left in its group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
