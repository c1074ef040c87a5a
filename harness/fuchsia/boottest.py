"""Boot tests (`is_boot_test`): boot the bundle, judge it from serial as seriallistener does.

A boot test has no shell, no boot marker and nothing to run in the guest: the
booted system itself is the test, and it says how it went on the serial port.
Fuchsia's verdict comes from tools/testing/seriallistener (cmd/main.go), with
the arguments build/testing/boot_tests/boot_test.gni gives it:

- the success string `***Boot-test-successful!-...***` read: PASS;
- the failure string `FAILED TEST` read (it matches zxtest's `N FAILED TEST(S)`):
  FAIL, `failure string found: "FAILED TEST"`;
- neither within the test's timeout (`timeout_secs`, 600 s when unset; twice that
  when the test environment asks for TCG, `emulator.accel: none`, as testsharder
  then passes `-test-timeout-scale-factor 2`): FAIL, `timed out before success
  string "..." was read from serial`.

The entry's `path` is the host script that would run seriallistener on a
Fuchsia bot; the harness is that listener, so the script is never executed.

Where the harness goes further than seriallistener, each for a reason:

- a crash signature of the profile (Zircon's panic lines, tefmocheck's list)
  fails the test the moment it is read, with its excerpt, instead of at the
  timeout (the console watches for them in every wait);
- a VMM that exits before a verdict fails the test at once, saying how it
  exited (seriallistener would read a log that no longer grows until its
  timeout);
- `bootup_timeout_secs`, which Fuchsia spends waiting for SSH (a boot test never
  uses SSH), bounds the one boot phase a boot test has: the time from launch to
  the first byte on serial;
- the cases the system printed before its verdict (zxtest, the kernel's `ut`,
  anything harness.parsers recognises) are parsed into the result.

Not reproduced: seriallistener reads 1 KiB at a time and, when one read holds
both strings, success wins; here the string that comes first wins.
"""

from __future__ import annotations

import dataclasses
import re
import time

from harness.console import ConsoleEOF, ConsoleTimeout, GuestCrashed
from harness.environments import CPU_DIMENSION, Environment
from harness.guest import Guest
from harness.parsers import FORMATS, detect
from harness.profiles.base import clean_text, excerpt
from harness.profiles.zircon import (
    BOOT_TEST_FAILURE,
    BOOT_TEST_FAILURE_MESSAGE,
    BOOT_TEST_SUCCESS,
    BOOT_TEST_TIMEOUT_MESSAGE,
    BOOT_TEST_TIMEOUT_S,
)
from harness.results import Case, Status

SUCCESS = re.compile(re.escape(BOOT_TEST_SUCCESS.encode()))
FAILURE = re.compile(re.escape(BOOT_TEST_FAILURE.encode()))
TIMEOUT_MESSAGE = BOOT_TEST_TIMEOUT_MESSAGE.format(success=BOOT_TEST_SUCCESS)
FAILURE_MESSAGE = BOOT_TEST_FAILURE_MESSAGE.format(failure=BOOT_TEST_FAILURE)
# testsharder's -test-timeout-scale-factor for an emulator environment without acceleration.
TCG_TIMEOUT_SCALE = 2
_ANY_BYTE = re.compile(rb"[\s\S]")


@dataclasses.dataclass
class Verdict:
    """How a boot test ended, in the result model's terms."""

    status: Status
    message: str
    details: str = ""
    cases: list[Case] = dataclasses.field(default_factory=list)
    format: str | None = None
    elapsed_s: float = 0.0


def developer_environment(engine: str, cpu: str) -> str:
    """The environments.json environment `harness run-boot-test` boots: fuchsia-ENGINE-CPU."""
    return f"fuchsia-{engine}-{cpu}"


def repro_arguments(env: Environment) -> list[str]:
    """What `harness run-boot-test NAME` needs to boot `env` again, in its own words:
    `--crosvm --arch x64` (fx run-boot-test's), or `--env NAME` for another environment."""
    cpu = CPU_DIMENSION[env.arch]
    if env.name == developer_environment(env.engine, cpu):
        return [*(["--crosvm"] if env.engine == "crosvm" else []), "--arch", cpu]
    return ["--env", env.name]


def timeout_s(timeout_secs: float | None, accel: str = "") -> float:
    """The test's timeout as seriallistener gets it: timeout_secs, else 600 s; doubled
    when the test environment runs without acceleration (`emulator.accel: none`)."""
    base = float(timeout_secs or BOOT_TEST_TIMEOUT_S)
    return base * TCG_TIMEOUT_SCALE if accel == "none" else base


def parse_cases(log: bytes) -> tuple[str | None, list[Case]]:
    """The cases a boot test printed: its serial log through any parser that recognises it."""
    text = clean_text(log)
    fmt = detect(text)
    return fmt, (FORMATS[fmt](text) if fmt else [])


def verdict_from_log(log: bytes) -> Verdict:
    """The verdict a whole saved serial log gives (the interactive run, `harness parse`).

    The first of the two strings decides; neither means the run ended undecided,
    which is seriallistener's timeout.
    """
    success, failure = SUCCESS.search(log), FAILURE.search(log)
    fmt, cases = parse_cases(log)
    if success and (failure is None or success.start() < failure.start()):
        return Verdict(Status.PASS, "", cases=cases, format=fmt)
    if failure:
        return Verdict(Status.FAIL, FAILURE_MESSAGE, cases=cases, format=fmt)
    return Verdict(Status.FAIL, TIMEOUT_MESSAGE, cases=cases, format=fmt)


async def run_boot_test(guest: Guest, *, timeout: float, bootup_timeout: float | None = None
                        ) -> Verdict:
    """Launch `guest` and read its serial port until a verdict, a crash or the timeout.

    The timeout runs from the launch, as seriallistener's runs from when botanist
    started the emulator. Nothing is ever sent to the guest.
    """
    started = time.monotonic()
    await guest.launch()
    console = guest.console
    verdict: Verdict
    try:
        if bootup_timeout:
            try:
                await console.expect([_ANY_BYTE], min(bootup_timeout, timeout),
                                     what="first serial output")
            except ConsoleTimeout as e:
                if bootup_timeout >= timeout:
                    raise
                raise _BootupTimeout(bootup_timeout, e.tail) from None
        remaining = max(0.1, timeout - (time.monotonic() - started))
        match = await console.expect([SUCCESS, FAILURE], remaining,
                                     what="the boot test's success or failure string",
                                     longest=len(BOOT_TEST_SUCCESS))
        if match.re is SUCCESS:
            verdict = Verdict(Status.PASS, "")
        else:
            verdict = Verdict(Status.FAIL, FAILURE_MESSAGE, details=_around(guest, FAILURE))
    except GuestCrashed as e:
        verdict = Verdict(Status.FAIL, f"guest crashed: {e.crash.signature}",
                          details=e.crash.excerpt)
    except _BootupTimeout as e:
        verdict = Verdict(Status.ABORT, str(e), details=e.tail)
    except ConsoleTimeout as e:
        verdict = Verdict(Status.FAIL, TIMEOUT_MESSAGE, details=e.tail)
    except ConsoleEOF:
        info = await guest.reap()
        verdict = Verdict(Status.INFRA_FAIL if info.infra else Status.FAIL,
                          f"the VMM exited before the success string was read from serial: "
                          f"{info.explanation}",
                          details=(f"VMM stderr:\n{err}\n" if (err := guest.vmm_stderr()) else "")
                          + guest.log.tail())
    verdict.elapsed_s = time.monotonic() - started
    verdict.format, verdict.cases = parse_cases(_log_bytes(guest))
    return verdict


class _BootupTimeout(Exception):
    def __init__(self, seconds: float, tail: str) -> None:
        super().__init__(f"no serial output within bootup_timeout_secs ({seconds:g} s) of "
                         "the launch")
        self.tail = tail


def _around(guest: Guest, pattern: re.Pattern[bytes]) -> str:
    """The lines before and after the first `pattern` in the log (the test's own report)."""
    data = _log_bytes(guest)
    m = pattern.search(data)
    return excerpt(data, m.start()) if m else guest.log.tail()


def _log_bytes(guest: Guest) -> bytes:
    try:
        return guest.log.path.read_bytes()
    except OSError:
        return b""
