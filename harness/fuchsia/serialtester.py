"""Fuchsia's serial tester: tests.json entries run over a Zircon guest's serial console.

This mirrors FuchsiaSerialTester (tools/testing/testrunner/tester.go), which
Fuchsia's testrunner uses for every `os: fuchsia` test when it has no SSH key
to reach the target (tools/testing/testrunner/lib.go, `execute`):

- Before the first test of a boot it waits up to 30 s for the driver manager's
  `[driver_manager.cm] INFO: Bootup completed`, and goes on without it (the
  line may have gone by already). Here the serial log of the boot is read
  first, since the harness's console has been reading since power-on.
- The command is `commandForTest(test, useSerial=true)`: `runtests [-i SECS]
  PATH` for an entry without a package URL; `run-test-suite --filter-ansi
  [--realm R] [--max-severity-logs S] [--min-severity-logs S] [--parallel N]
  [--timeout SECS] [--no-exception-channel] URL` for a `.cm` package URL;
  anything else fails with commandForTest's message.
- It is written as `\\r\\n` + command + `\\r\\n` (the bytes tester_test.go
  expects), up to 3 times, each time waiting 15 s for the start line
  (`RUNNING TEST: NAME` from runtests, `Running test 'URL'` from
  run-test-suite). A test that never starts is an infrastructure failure:
  Fuchsia gives up on the device then, and the harness does not reuse the guest.
- The result is the first completion line in the output with kernel log lines
  cut out as parseOutKernelReader cuts them: `[runtests][PASSED] NAME` /
  `[runtests][FAILED] NAME`, or `URL completed with result: R`, where PASSED
  is a pass, TIMED_OUT and CANCELLED an ABORT ("test timed out or canceled"),
  SKIPPED a skip and anything else a failure ("test failed"). No output for the
  test's timeout + 30 s (the socket's I/O timeout) fails the test with "unable
  to derive test result from ... output".
- The whole test may take its timeout + 30 s (lib.go's grace period, so that
  the on-target timeout reports first); past that the runner aborts it.
- The output is parsed into cases by harness.parsers, where testrunner calls
  testparser.

Entries that expect SSH (`expects_ssh: true`) are run by Fuchsia with `ffx
test` over the target's network; the harness has neither ffx nor a network
path to a Zircon guest, so they are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
import weakref
from collections.abc import Sequence
from typing import Any

from harness import parsers
from harness.console import Console, ConsoleEOF, ConsoleTimeout
from harness.environments import Environment
from harness.errors import ConfigError, HarnessError
from harness.profiles import get_profile, zircon
from harness.programs import DEFAULT_TIMEOUT_S
from harness.spec import TestSpec
from harness.suite import Guest, Skip, TestContext

# tester.go's constants.
START_ATTEMPTS = 3  # startSerialCommandMaxAttempts
TEST_STARTED_TIMEOUT_S = 15.0  # testStartedTimeout
# lib.go's testTimeoutGracePeriod: the tester's own deadline is the test's timeout plus this.
TIMEOUT_GRACE_S = 30.0
# tools/testing/testrunner/constants: what tefmocheck looks for when the device stops answering.
FAILED_TO_START = "failed to start test over serial"
SSH_REASON = ("expects SSH (expects_ssh): Fuchsia runs it with ffx over the target's network; "
              "this harness has no ffx and no network path to a Zircon guest")

_LINE_END = re.compile(rb"\n")
# parseOutKernelReader's kernel log timestamp: a bracketed number, anywhere in a line.
_KERNEL_TIMESTAMP = re.compile(r"\[[0-9]+\.?[0-9]+\]")


class CannotRun(Exception):
    """commandForTest's refusal; the test fails with this message, as on Fuchsia."""


class SerialTestNotStarted(HarnessError):
    """The guest never acknowledged the command: Fuchsia stops using the device then."""


class SerialTestAborted(ConsoleTimeout):
    """run-test-suite reported TIMED_OUT or CANCELLED: an ABORT, as tester.go maps it."""


# -- what runs ----------------------------------------------------------------------------------


def handles(spec: TestSpec, env: Environment) -> bool:
    """Whether a tests.json entry without a built-in test is this tester's on `env`.

    Fuchsia's serial tester is for Fuchsia targets: a guest whose profile runs
    `os: fuchsia` programs (testrunner's rule). Boot tests boot an image and are
    judged from serial alone; they are not run by a tester, so they are left to
    whatever runs boot tests.
    """
    return get_profile(env.profile).os == "fuchsia" and not spec.is_boot_test


def unrunnable(spec: TestSpec) -> str | None:
    """Why an entry this tester handles is skipped, or None to run it.

    Malformed fields raise ConfigError (exit 2) here, at plan time. Entries
    commandForTest refuses (a CFv1 URL) are not skipped: they fail when run,
    with its message, as they do on Fuchsia.
    """
    if _flag(spec, "expects_ssh"):
        return SSH_REASON
    if spec.os not in ("", "fuchsia"):
        return (f"a host test (os {spec.os!r}): Fuchsia's testrunner runs it on the host, "
                f"which this harness does not")
    if not spec.path and not spec.package_url:
        return (f"no built-in test named {spec.name!r} and neither a `path` nor a "
                f"`package_url` to run over serial")
    with contextlib.suppress(CannotRun):  # it fails when it runs, as on Fuchsia
        command_for_test(spec)
    return None


def outer_timeout(spec: TestSpec) -> float:
    """The whole test's deadline: its timeout plus lib.go's grace period."""
    if spec.timeout_secs:
        return float(spec.timeout_secs) + TIMEOUT_GRACE_S
    # Fuchsia sets none without timeout_secs; the harness keeps its deadline for programs.
    return DEFAULT_TIMEOUT_S


def command_for_test(spec: TestSpec) -> list[str]:
    """tester.go's commandForTest with useSerial: the command line, as a list of words."""
    timeout = int(spec.timeout_secs or 0)  # int64(timeout.Seconds())
    if not spec.package_url:
        if not spec.path:
            raise CannotRun(f"Path is not set for {json.dumps(spec.name)}")
        return ["runtests", *(["-i", str(timeout)] if timeout > 0 else []), spec.path]
    if not spec.package_url.endswith(".cm"):  # build.Test.IsComponentV2
        raise CannotRun(f"CFv1 tests are no longer supported: {json.dumps(spec.package_url)}")
    command = ["run-test-suite", "--filter-ansi"]
    realm = _string(spec, "realm")
    if realm:
        command += ["--realm", realm]
    log_settings = _log_settings(spec)
    if log_settings.get("max_severity"):
        command += ["--max-severity-logs", log_settings["max_severity"]]
    if log_settings.get("min_severity"):
        command += ["--min-severity-logs", log_settings["min_severity"]]
    parallel = _count(spec, "parallel")
    if parallel:
        command += ["--parallel", str(parallel)]
    if timeout > 0:
        command += ["--timeout", str(timeout)]
    if _flag(spec, "create_no_exception_channel"):
        command.append("--no-exception-channel")
    command.append(spec.package_url)
    return command


# -- entry fields the spec model keeps in `extra` ---------------------------------------------


def _field(spec: TestSpec, name: str) -> Any:
    """A field by its tests.json name: an attribute of the spec if the model has one, else
    the unknown-field store (`expects_ssh` at entry level, `test.parallel` inside `test`).
    Any: a JSON value, which the callers check."""
    value = getattr(spec, name, None)
    if value is None:
        extra = getattr(spec, "extra", None) or {}
        value = extra.get(name, extra.get(f"test.{name}"))
    return value


def _bad(spec: TestSpec, name: str, expected: str, value: object) -> ConfigError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ConfigError("tests.json", f"entry {spec.index} ({json.dumps(spec.name)})", name,
                       f"expected {expected}, got {shown}")


def _flag(spec: TestSpec, name: str) -> bool:
    value = _field(spec, name)
    if value is None:
        return False
    if type(value) is not bool:
        raise _bad(spec, name, "true or false", value)
    return value


def _string(spec: TestSpec, name: str) -> str:
    value = _field(spec, name)
    if value is None:
        return ""
    if type(value) is not str:
        raise _bad(spec, name, "a string", value)
    return value


def _count(spec: TestSpec, name: str) -> int:
    value = _field(spec, name)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= 0xFFFF:  # a uint16 in tools/build/tests.go
        raise _bad(spec, name, "a whole number from 0 to 65535", value)
    return value


def _log_settings(spec: TestSpec) -> dict[str, str]:
    value = _field(spec, "log_settings")
    if value is None:
        return {}
    if type(value) is not dict:
        raise _bad(spec, "log_settings", "an object", value)
    for key in ("max_severity", "min_severity"):
        if value.get(key) is not None and type(value[key]) is not str:
            raise _bad(spec, f"log_settings.{key}", "a string", value[key])
    return {k: v for k, v in value.items() if k in ("max_severity", "min_severity") and v}


# -- reading the console as the tester reads its serial socket ---------------------------------


def parse_out_kernel(text: str) -> str:
    """`text` without kernel log lines, exactly as tester.go's parseOutKernelReader reads it.

    A line holding a bracketed timestamp (`[123.456]`, `[12]`) is cut at the
    bracket and loses its line end, so that what a program printed before a
    kernel line interrupted it joins what it printed after. An unterminated
    last line comes through whole (the reader hands it back unprocessed at EOF).
    """
    lines = text.split("\n")
    out: list[str] = []
    for line in lines[:-1]:
        m = _KERNEL_TIMESTAMP.search(line)
        out.append(line[: m.start()] if m else line + "\n")
    out.append(lines[-1])
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Found:
    """A needle found in a stream: which one, and where (offsets into the whole stream)."""

    needle: str
    start: int
    end: int


class _Stream:
    """Append-only text searched as it grows, the way iomisc.ReadUntilMatchString reads.

    Only a window is searched: what follows the last match, less what can no
    longer hold the start of a needle. The first needle whose match ends first
    wins, as in a reader that stops at the first complete match.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.window = ""
        self.base = 0  # offset of window[0] in the whole stream

    def append(self, text: str) -> None:
        self.parts.append(text)
        self.window += text

    def find(self, needles: Sequence[str]) -> Found | None:
        best: Found | None = None
        for needle in needles:
            i = self.window.find(needle)
            if i >= 0 and (best is None or i + len(needle) < best.end - self.base):
                best = Found(needle, self.base + i, self.base + i + len(needle))
        if best is not None:
            self.window = self.window[best.end - self.base:]
            self.base = best.end
            return best
        keep = max(len(n) for n in needles) - 1
        cut = max(0, len(self.window) - keep)
        self.window = self.window[cut:]
        self.base += cut
        return None

    def text(self) -> str:
        return "".join(self.parts)


class SerialOutput:
    """What the console brings from now on: as read (`raw`) and without kernel lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.raw = _Stream()
        self.filtered = _Stream()

    async def _more(self, timeout: float, what: str) -> None:
        # One line at a time, so that the console's crash watch still sees every line first.
        m = await self.console.expect([_LINE_END], timeout, what=what)
        chunk = (bytes(self.console.before) + m.group(0)).decode("utf-8", errors="replace")
        self.raw.append(chunk)
        self.filtered.append(parse_out_kernel(chunk))  # chunks end at a line end

    async def read_until(self, stream: _Stream, needles: Sequence[str], *, idle: float,
                         deadline: float | None = None, what: str) -> Found:
        """Read until one of `needles` is in `stream`; ConsoleTimeout after `idle` s without
        a line, or at `deadline` (time.monotonic())."""
        while True:
            found = stream.find(needles)
            if found is not None:
                return found
            wait = idle if deadline is None else min(idle, deadline - time.monotonic())
            if wait <= 0:
                raise ConsoleTimeout(f"no {what} in time", self.console.log.tail())
            await self._more(wait, what)


# -- the tester ---------------------------------------------------------------------------------


class SerialTester:
    """Runs tests.json entries over a Zircon guest's serial console (one per harness run).

    It remembers, per guest, the boot it already waited for the bootup line
    on, as Fuchsia's tester waits once, when it is created for a booted device.
    """

    def __init__(self) -> None:
        self._bootup_waited: weakref.WeakKeyDictionary[Guest, int] = weakref.WeakKeyDictionary()

    async def test(self, t: TestContext) -> None:
        """One entry: bootup wait, start (retried), completion line, cases."""
        spec, console = t.spec, t.guest.console
        await self._wait_for_bootup(t)
        try:
            command = command_for_test(spec)
        except CannotRun as e:
            raise AssertionError(str(e)) from None
        line = " ".join(command)
        t.prop("serial_command", line)
        package = bool(spec.package_url)
        started = (zircon.run_test_suite_started(spec.package_url) if package
                   else zircon.RUNTESTS_STARTED + spec.name)
        out = SerialOutput(console)
        found: Found | None = None
        try:
            await self._start(t, out, line, started)
            tool = "run-test-suite" if package else "runtests"
            needles = ([zircon.run_test_suite_completed(spec.package_url, r)
                        for r in zircon.RUN_TEST_SUITE_RESULTS] if package
                       else [zircon.RUNTESTS_PASSED + spec.name,
                             zircon.RUNTESTS_FAILED + spec.name])
            idle = float(spec.timeout_secs or 0) + TIMEOUT_GRACE_S  # SetIOTimeout
            try:
                found = await out.read_until(out.filtered, needles, idle=idle,
                                             what=f"completion line of {spec.name}")
            except (ConsoleTimeout, ConsoleEOF) as e:
                raise AssertionError(
                    f"unable to derive test result from {tool} output: {e}") from None
        finally:
            _record(t, out, started, found)
        result = found.needle
        t.prop("serial_result", result)
        if package:
            if result.endswith(": PASSED"):
                return
            if result.endswith((": TIMED_OUT", ": CANCELLED")):
                raise SerialTestAborted("test timed out or canceled", console.log.tail())
            if result.endswith(": SKIPPED"):
                raise Skip(result)
            raise AssertionError(f"test failed\n{result}")
        if result.startswith(zircon.RUNTESTS_FAILED):
            raise AssertionError(f"test failed\n{result}")

    async def _start(self, t: TestContext, out: SerialOutput, line: str, started: str) -> None:
        """Send the command until the test says it started (3 tries, 15 s each)."""
        error = ""
        for attempt in range(1, START_ATTEMPTS + 1):
            t.guest.console.send(f"\r\n{line}\r\n")  # serial.RunCommands
            deadline = time.monotonic() + TEST_STARTED_TIMEOUT_S
            try:
                await out.read_until(out.raw, [started], idle=TEST_STARTED_TIMEOUT_S,
                                     deadline=deadline, what=f"{started!r}")
            except ConsoleTimeout as e:
                error = str(e)
                t.note(f"attempt {attempt}: test not started after "
                       f"{TEST_STARTED_TIMEOUT_S:g} s")
                continue
            t.prop("start_attempts", attempt)
            return
        raise SerialTestNotStarted(f"{FAILED_TO_START} within {START_ATTEMPTS} attempts: {error}")

    async def _wait_for_bootup(self, t: TestContext) -> None:
        """NewFuchsiaSerialTester's wait for the bootup line, once per boot of the guest."""
        guest = t.guest
        boot = guest.boots[-1].index if guest.boots else 0
        if self._bootup_waited.get(guest) == boot:
            return
        self._bootup_waited[guest] = boot
        try:
            seen = zircon.BOOTUP_COMPLETED.encode() in guest.log.path.read_bytes()
        except OSError:
            seen = False
        if seen:
            t.prop("bootup_completed", "during boot")
            return
        began = time.monotonic()
        out = SerialOutput(guest.console)
        try:
            await out.read_until(out.raw, [zircon.BOOTUP_COMPLETED], idle=zircon.BOOTUP_WAIT_S,
                                 deadline=began + zircon.BOOTUP_WAIT_S, what="bootup line")
        except ConsoleTimeout:
            t.note(f"{zircon.BOOTUP_COMPLETED!r} not seen within {zircon.BOOTUP_WAIT_S:g} s; "
                   f"going on, as Fuchsia's serial tester does")
            return
        t.prop("bootup_completed", f"after {time.monotonic() - began:.1f} s")


def _record(t: TestContext, out: SerialOutput, started: str, found: Found | None) -> None:
    """Keep the test's output (kernel lines cut out) and its cases, however the test ended.

    The cases come from the output between the start line and the completion
    line: what the program printed, without the tool's own framing (testparser
    knows no runtests framing; harness.parsers would take it for runtests' own
    one-case-per-binary format).
    """
    text = out.filtered.text()
    (t.folder / "serial-output.txt").write_text(text)
    begin = text.find(started)
    begin = begin + len(started) if begin >= 0 else 0
    fmt, cases = parsers.parse(text[begin: found.start if found is not None else len(text)])
    if fmt:
        t.prop("format", fmt)
    t.cases.extend(cases)
