"""What ended a test attempt, as a verdict: the status, the message and its details.

One place says which ending is whose fault: the test's (FAIL: an assertion, a crash
of the guest, a VMM the guest made exit), time's (ABORT: a deadline, a boot that
never came), the host's or the harness's (INFRA_FAIL: a VMM error, a file the host
would not write, a bug), or nobody's (SKIP: the test found it cannot run here).
"""

from __future__ import annotations

import dataclasses
import traceback

from harness.console import ConsoleEOF, ConsoleTimeout, GuestCrashed
from harness.errors import HarnessError, OutputError
from harness.guest import BootTimeout, GuestExited
from harness.outputs import describe
from harness.results import Status
from harness.suite import Skip


@dataclasses.dataclass(frozen=True)
class Ending:
    """How an attempt ended. `details` None: the attempt's own (the test's notes) stay;
    `host_error`: the host refused something the harness writes (a full disk, a
    read-only directory), which makes the run's exit status 3."""

    status: Status
    message: str
    details: str | None = None
    host_error: bool = False


def ending(error: Exception, *, deadline_s: float) -> Ending:
    """The verdict of an attempt that `error` ended; `deadline_s` is the test's deadline
    (a TimeoutError is that deadline passing)."""
    match error:
        case Skip():
            return Ending(Status.SKIP, str(error))
        case AssertionError():
            return Ending(Status.FAIL, _first_line(str(error)) or "assertion failed",
                          _assert_details(error))
        case GuestCrashed():
            return Ending(Status.FAIL, f"guest crashed: {error.crash.signature}",
                          error.crash.excerpt)
        case BootTimeout():
            return Ending(Status.ABORT, str(error), error.tail)
        case GuestExited():
            return Ending(Status.INFRA_FAIL if error.info.infra else Status.FAIL, str(error),
                          (error.stderr and f"VMM stderr:\n{error.stderr}\n") + error.tail)
        case ConsoleTimeout():
            return Ending(Status.ABORT, str(error), error.tail)
        case ConsoleEOF():
            return Ending(Status.FAIL, str(error), error.tail)
        case TimeoutError():
            return Ending(Status.ABORT, f"test deadline of {deadline_s:g} s exceeded")
        case OutputError():  # the serial log could not be written
            return Ending(Status.INFRA_FAIL, str(error), host_error=True)
        case HarnessError():
            return Ending(Status.INFRA_FAIL, str(error))
        case OSError():  # the host refused a file, a directory, a process: one line
            return Ending(Status.INFRA_FAIL, f"host error: {describe(error)}", host_error=True)
        case _:  # a bug in a suite or in the harness: say so, keep running
            return Ending(Status.INFRA_FAIL, f"harness error: {type(error).__name__}: {error}",
                          "".join(traceback.format_exception(error)))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _assert_details(e: AssertionError) -> str:
    """Where in a suite (or a test of the harness) the assertion failed, and its message."""
    tb = traceback.extract_tb(e.__traceback__)
    where = ""
    for frame in reversed(tb):
        if "/suites/" in frame.filename or "/tests/" in frame.filename:
            where = f"{frame.filename}:{frame.lineno}: {frame.line}"
            break
    return f"{where}\n{e}".strip()
