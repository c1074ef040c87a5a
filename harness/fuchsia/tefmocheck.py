"""Fuchsia's crash scan, tefmocheck's `string_in_log` checks, and the tests it adds to a run.

Reproduces tools/testing/tefmocheck from Fuchsia's source:

- string_in_log_check.go: `stringInLogCheck.Check` and `checkBytes` (a string
  counts unless an except-string is in the log or the occurrence lies in an
  except-block; the skip flags consult the task's and the tests' outcomes;
  always_flake and ignore_flakes make a finding a flake), `Name` and the
  failure reason (the line holding the string).
- check-configs.yaml: the checks, in order (the first failing check wins).
- run_checks.go: each finding becomes a test `testing_failure_mode/<check
  name>` with `is_testing_failure_mode`, FAIL (INFRA_FAIL for infra_failure),
  the line as its failure reason; a flake adds a passing run of the same
  test and the scan goes on; any other failure ends the scan.
- types.go: the log types and the names recipes give the log files.

How the harness's logs map onto tefmocheck's (it has no Swarming task, no
syslog stream and no per-test split of a shared task output):

- serial_log.txt: the test's serial console log (`serial.log` of each
  attempt). Only Fuchsia guests' serial logs are scanned: Fuchsia's strings on
  a Linux console mean nothing.
- infra_and_test_std_and_klog.txt (the Swarming task output, where botanist
  puts the emulator's stderr): the VMM's stderr (`vmm-stderr.log`). That is
  where `kvm run failed` appears; it is never looked for on the console.
- syslog.txt: only when given (`harness parse --syslog`); a serial run has none.

Every log the harness keeps belongs to one test, so every finding is
attributed to that test, as tefmocheck attributes findings in per-test logs:
the synthetic test is `testing_failure_mode/<check name>/<test>`.

Only checks whose log the harness can have are in CHECKS: all of Fuchsia's
target-log checks (check-configs.yaml category 2), the two emulator failures of
the host-tool category 3, and four VMM failure lines tefmocheck cannot know
(QEMU's KVM internal error, crosvm's vcpu failures: `source="harness"`). The
Swarming, CAS, botanist, ffx and SSH checks are about tools the harness does
not run and are left out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.logblocks import LogBlock, excusing_block
from harness.results import Attempt, Case, Status, TestResult

CHECK_TEST_PREFIX = "testing_failure_mode"  # run_checks.go checkTestNamePrefix
SYNTHETIC_SUITE = "tefmocheck"
DEBUG_FILE = "tefmocheck.txt"
DEBUG_HEADER = (
    "This is a synthetic test that was produced by the harness's reproduction of Fuchsia's "
    "tefmocheck tool (tools/testing/tefmocheck) during post-processing of test results.\n"
)


class LogType(enum.StrEnum):
    """tefmocheck's log types, named after the files recipes give them (types.go)."""

    SERIAL = "serial_log.txt"
    SWARMING = "infra_and_test_std_and_klog.txt"
    SYSLOG = "syslog.txt"


# What the harness scans for each log type (see the module docstring).
LOG_SOURCES = {
    LogType.SERIAL: "the serial console log (serial.log)",
    LogType.SWARMING: "the VMM's stderr (vmm-stderr.log)",
    LogType.SYSLOG: "a syslog given to `harness parse --syslog`",
}


@dataclasses.dataclass(frozen=True)
class TestDetails:
    """One entry of the task's test summary, as far as the checks read it."""

    __test__ = False

    name: str
    status: Status


@dataclasses.dataclass(frozen=True)
class TestLog:
    """One test's stretch of the task output (tefmocheck's TestLog)."""

    __test__ = False

    test_name: str
    data: bytes
    path: str
    index: int  # offset of `data` in the whole task output


@dataclasses.dataclass
class TestingOutputs:
    """What one task left behind (tefmocheck's TestingOutputs)."""

    __test__ = False

    test_summary: list[TestDetails] | None = None
    task_state: str = "COMPLETED"  # the Swarming task state
    task_failed: bool = False
    task_id: str = ""
    serial_logs: list[bytes] = dataclasses.field(default_factory=list)
    swarming_output: bytes = b""
    swarming_output_per_test: list[TestLog] = dataclasses.field(default_factory=list)
    syslogs: list[bytes] = dataclasses.field(default_factory=list)

    def logs(self, log_type: LogType) -> list[bytes]:
        if log_type == LogType.SERIAL:
            return self.serial_logs
        if log_type == LogType.SWARMING:
            return [self.swarming_output]
        return self.syslogs


def go_path_join(*elems: str) -> str:
    """Go's path.Join: the non-empty elements joined with `/`, then cleaned."""
    joined = "/".join(e for e in elems if e)
    return posixpath.normpath(joined) if joined else ""


def line_at(data: bytes, index: int) -> bytes:
    """The line of `data` holding `index`, without its newline (tefmocheck's getLine)."""
    if index >= len(data):
        return b""
    start = data.rfind(b"\n", 0, index) + 1
    end = data.find(b"\n", index)
    return data[start:] if end < 0 else data[start:end]


@dataclasses.dataclass(frozen=True)
class Occurrence:
    """One occurrence of a check's string and whether it counts (for `harness parse`)."""

    offset: int
    line: bytes
    counted: bool
    excused_by: LogBlock | None = None


@dataclasses.dataclass(frozen=True)
class StringInLogCheck:
    """One `string_in_log` check for one log type (check-configs.yaml, after toChecks)."""

    string: str
    log_type: LogType
    only_on_states: tuple[str, ...] = ()
    except_strings: tuple[str, ...] = ()
    except_blocks: tuple[LogBlock, ...] = ()
    skip_passed_task: bool = False
    skip_all_passed_tests: bool = False
    skip_passed_test: bool = False
    ignore_flakes: bool = False
    always_flake: bool = False
    attribute_to_test: bool = False
    add_tag: bool = False
    infra_failure: bool = False
    emit_synthetic_test_case: bool = False
    source: str = "tefmocheck"  # "harness" for the VMM lines tefmocheck does not know

    @property
    def name(self) -> str:
        """tefmocheck's Name() before a test is attributed: string_in_log/<log>/<string>."""
        return go_path_join("string_in_log", self.log_type.value,
                            self.string.replace(" ", "_"))

    @property
    def needle(self) -> bytes:
        return self.string.encode()

    @property
    def depends_on_outcome(self) -> bool:
        """Whether the check needs the task's or the tests' outcome to decide."""
        return bool(self.skip_passed_task or self.skip_all_passed_tests
                    or self.skip_passed_test or self.only_on_states)

    # -- checkBytes -------------------------------------------------------------------------

    def check_bytes(self, data: bytes, start: int = 0, end: int | None = None
                    ) -> tuple[int, bytes] | None:
        """(offset, line) of the first occurrence in `data[start:end]` that counts, or None.

        tefmocheck's checkBytes, quirks included: the except-strings are looked
        for in the range only, while except-blocks consult the whole log
        before the occurrence (a block that started before a test's range still
        excuses an occurrence in it); without blocks the line is taken from the
        range, with blocks from the whole log.
        """
        end = len(data) if end is None else end
        block = data[start:end]
        if any(s.encode() in block for s in self.except_strings):
            return None
        needle = self.needle
        if not self.except_blocks:
            at = block.find(needle)
            return None if at < 0 else (start + at, line_at(block, at))
        index = block.find(needle)
        index = index + start if index >= 0 else -1
        while start <= index < end:
            excused = excusing_block(data, index, self.except_blocks)
            if excused is None:
                return index, line_at(data, index)
            if data.find(excused.end, index + len(needle)) < 0:
                # No end marker after it: the log was cut inside the block, and every
                # later occurrence is in the block too.
                return None
            index = data.find(needle, index + len(needle))
        return None

    def occurrences(self, data: bytes, limit: int = 20) -> list[Occurrence]:
        """Every occurrence (up to `limit`) with the decision checkBytes makes for it."""
        needle = self.needle
        counted = not any(s.encode() in data for s in self.except_strings)
        found: list[Occurrence] = []
        at = data.find(needle)
        while at >= 0 and len(found) < limit:
            block = excusing_block(data, at, self.except_blocks) if self.except_blocks else None
            found.append(Occurrence(at, line_at(data, at), counted and block is None, block))
            at = data.find(needle, at + len(needle))
        return found

    # -- Check ------------------------------------------------------------------------------

    def check(self, to: TestingOutputs) -> Finding | None:
        """A Finding if the failure mode is in `to` (tefmocheck's Check), else None."""
        tests = to.test_summary or []
        if not to.task_failed and to.task_state == "COMPLETED":
            if self.skip_passed_task:
                return None
            if self.skip_all_passed_tests:
                failed: dict[str, None] = {}
                for test in tests:
                    if test.status != Status.PASS:
                        failed[test.name] = None
                    elif self.ignore_flakes:
                        failed.pop(test.name, None)
                if not failed:
                    return None
        if self.only_on_states and to.task_state not in self.only_on_states:
            return None

        if self.log_type == LogType.SWARMING and (self.attribute_to_test or self.skip_passed_test):
            per_test = self._check_per_test(to)
            if per_test is not None or self.skip_passed_test:
                return per_test

        for data in to.logs(self.log_type):
            hit = self.check_bytes(data)
            if hit is not None:
                return Finding(self, hit[1], flake=self.always_flake, offset=hit[0])
        return None

    def _check_per_test(self, to: TestingOutputs) -> Finding | None:
        # name -> (index, output file, line, offset, flake), in first-seen order
        found: dict[str, tuple[int, str, bytes, int, bool]] = {}
        summary = to.test_summary
        for i, log in enumerate(to.swarming_output_per_test):
            status = summary[i].status if summary is not None and i < len(summary) else None
            if self.skip_passed_test and status == Status.PASS:
                if self.ignore_flakes and log.test_name in found:
                    index, path, line, offset, _ = found[log.test_name]
                    found[log.test_name] = (index, path, line, offset, True)
                continue
            hit = self.check_bytes(to.swarming_output, log.index, log.index + len(log.data))
            if hit is not None:
                found[log.test_name] = (i, log.path, hit[1], hit[0], self.always_flake)
        failures = sorted((v[0], name) for name, v in found.items() if not v[4])
        flakes = sorted((v[0], name) for name, v in found.items() if v[4])
        for group, flake in ((failures, False), (flakes, True)):
            if group:
                name = group[0][1]
                _, path, line, offset, _ = found[name]
                if self.attribute_to_test:
                    return Finding(self, line, flake=flake, test_name=name, output_file=path,
                                   offset=offset)
                return Finding(self, b"", flake=flake, offset=offset)
        return None


@dataclasses.dataclass(frozen=True)
class Finding:
    """A check that found its failure mode, with what tefmocheck reports about it."""

    check: StringInLogCheck
    line: bytes
    flake: bool = False
    test_name: str = ""
    output_file: str = ""
    offset: int = -1

    @property
    def name(self) -> str:
        """tefmocheck's Name(): the test it is attributed to appended, unless it is a tag."""
        name = self.check.name
        if self.test_name and not self.check.add_tag:
            name = f"{name}/{self.test_name}"
        return name

    @property
    def tags(self) -> dict[str, str]:
        if self.check.add_tag and self.test_name:
            return {"test_name": self.test_name}
        return {}

    @property
    def failure_reason(self) -> str:
        return self.line.decode("utf-8", errors="replace").rstrip("\r")

    def debug_text(self, task_id: str = "") -> str:
        """tefmocheck's DebugText: what was found where, and what did not excuse it."""
        c = self.check
        text = f'Found the string "{c.string}" in '
        if self.output_file and self.test_name:
            text += f"{posixpath.basename(self.output_file)} of test {self.test_name}."
        else:
            text += f"{c.log_type.value} for task {task_id}."
        text += f"\nThe harness reads that log from {LOG_SOURCES[c.log_type]}.\n"
        for s in c.except_strings:
            text += f'\nDid not find the exception string "{s}"'
        for block in c.except_blocks:
            text += ("\nDid not occur inside a block delimited by:\n"
                     f"START: {block.start.decode(errors='replace')}\n"
                     f"END: {block.end.decode(errors='replace')}")
        return text


@dataclasses.dataclass(frozen=True)
class CheckTest:
    """A synthetic test RunChecks adds to the summary."""

    __test__ = False

    name: str
    status: Status
    failure_reason: str
    tags: dict[str, str]
    finding: Finding


@dataclasses.dataclass(frozen=True)
class ChecksOutcome:
    """What RunChecks produces: the synthetic tests, and the cases it adds to failed tests."""

    tests: list[CheckTest]
    # (test the case goes to, "" for every failed test; the case)
    cases: list[tuple[str, Case]]


def run_checks(checks: Iterable[StringInLogCheck], to: TestingOutputs) -> ChecksOutcome:
    """tefmocheck's RunChecks: the first failing check ends the scan; flakes do not."""
    tests: list[CheckTest] = []
    cases: list[tuple[str, Case]] = []
    for check in checks:
        finding = check.check(to)
        if finding is None:
            continue
        name = go_path_join(CHECK_TEST_PREFIX, finding.name)
        if check.emit_synthetic_test_case:
            cases.append((finding.test_name, Case(
                name=finding.name, suite=SYNTHETIC_SUITE, status=Status.FAIL,
                message=finding.failure_reason)))
        status = Status.INFRA_FAIL if check.infra_failure else Status.FAIL
        tests.append(CheckTest(name, status, finding.failure_reason, finding.tags, finding))
        if finding.flake:
            tests.append(CheckTest(name, Status.PASS, "", {}, finding))
            continue
        break
    return ChecksOutcome(tests, cases)


# -- the checks (tools/testing/tefmocheck/check-configs.yaml) -----------------------------------

S, W, Y = LogType.SERIAL, LogType.SWARMING, LogType.SYSLOG
ALL_LOGS = (S, W, Y)


def _blocks(*pairs: tuple[str, str]) -> tuple[LogBlock, ...]:
    return tuple(LogBlock(a.encode(), b.encode()) for a, b in pairs)


def _checks(string: str, logs: Sequence[LogType], **flags: object) -> list[StringInLogCheck]:
    """One check per log type, in the order listed (toChecks in string_in_log_check.go)."""
    return [StringInLogCheck(string, t, **flags) for t in logs]  # type: ignore[arg-type]


_REBOOT_HANG = _blocks(
    ("Started executing 'test_reboot_to_bootloader_on_hang'", "Shutting down debuglog"),
    ("Started executing 'test_reboot_to_bootloader_on_hang'",
     "Finished executing 'test_reboot_to_bootloader_on_hang'"),
)
# Tests that make the kernel OOPS or miss heartbeats on purpose (DRIVER OOPS, lockup_detector,
# ZIRCON KERNEL OOPS share them).
_OOPS_TESTS = _blocks(
    ("Started executing 'test_driver_host_restart'",
     "Finished executing 'test_driver_host_restart'"),
    (" lock_dep_dynamic_analysis_tests ", " lock_dep_static_analysis_tests "),
    ("RUN   TestKillCriticalProcess", ": TestKillCriticalProcess"),
    ("RUN   TestKernelLockupDetectorCriticalSection", ": TestKernelLockupDetectorCriticalSection"),
    ("RUN   TestKernelLockupDetectorHeartbeat", ": TestKernelLockupDetectorHeartbeat"),
    ("RUN   TestPmmCheckerOops", ": TestPmmCheckerOops"),
    ("RUN   TestKernelLockupDetectorFatalCriticalSection",
     ": TestKernelLockupDetectorFatalCriticalSection"),
    ("RUN   TestKernelLockupDetectorFatalHeartbeat", ": TestKernelLockupDetectorFatalHeartbeat"),
    ("RUN   TestOOMHard", ": TestOOMHard"),
    ("Restore GNVS pointer", "platform_halt suggested_action 1 reason 6"),
)
_PANIC_TESTS = _blocks(
    ("RUN   TestBasicCrash", "PASS: TestBasicCrash"),
    ("RUN   TestReadUserMemoryViolation", "PASS: TestReadUserMemoryViolation"),
    ("RUN   TestExecuteUserMemoryViolation", "PASS: TestExecuteUserMemoryViolation"),
    ("RUN   TestPmmCheckerPanic", "PASS: TestPmmCheckerPanic"),
    ("RUN   TestCrashAssert", "PASS: TestCrashAssert"),
    ("RUN   TestKernelLockupDetectorFatalCriticalSection",
     ": TestKernelLockupDetectorFatalCriticalSection"),
    ("RUN   TestKernelLockupDetectorFatalHeartbeat", ": TestKernelLockupDetectorFatalHeartbeat"),
    ("RUN   TestMissingCmdlineEntropyPanics", "PASS: TestMissingCmdlineEntropyPanics"),
    ("RUN   TestIncompleteCmdlineEntropyPanics", "PASS: TestIncompleteCmdlineEntropyPanics"),
    ("RUN   TestDisabledJitterEntropyAndRequiredDoesntBoot",
     "PASS: TestDisabledJitterEntropyAndRequiredDoesntBoot"),
    ("RUN   TestDisabledJitterEntropyAndRequiredForReseedDoesntReachUserspace",
     "PASS: TestDisabledJitterEntropyAndRequiredForReseedDoesntReachUserspace"),
)
# zxtest death tests that assert on purpose.
_ASSERT_TESTS = _blocks(*(
    (f"[ RUN      ] {t}", f"[       OK ] {t}") for t in (
        "ZxAssertCppTest.ZxAssertMsgInvalidPredicateFails",
        "ZxAssertCppTest.ZxDebugAssertMsgInvalidPredicateFails",
        "ZxAssertCppTest.ZxAssertInvalidPredicateFails",
        "ZxAssertCppTest.ZxDebugAssertInvalidPredicateFails",
        "ZxAssertCTest.ZxAssertMsgInvalidPredicateFails",
        "ZxAssertCTest.ZxDebugAssertMsgInvalidPredicateFails",
        "ZxAssertCTest.ZxAssertInvalidPredicateFails",
        "ZxAssertCTest.ZxDebugAssertInvalidPredicateFails",
        "ZxTestSmokeTest.DeathStatementCrash",
    )
))

CHECKS: tuple[StringInLogCheck, ...] = tuple([
    # Category 2: logs from the Fuchsia target, in check-configs.yaml's order.
    *_checks("Trace size: streamed 400 MB", [Y], skip_all_passed_tests=True),
    *_checks("too large for partition", [S]),
    *_checks("reboot_mode=watchdog_reboot", [S]),
    *_checks("reboot_mode:watchdog_reboot", [S]),
    *_checks(" in fx_logger::GetSeverity() ", [W]),
    *_checks("Failed to decode log from Archivist.", [S]),
    *_checks("Failed to decode log from Archivist", [Y]),
    *_checks("intel-display: No displays detected.", [S]),
    *_checks("intel-display: No displays detected.", [Y]),
    *_checks('Failed to parse edid (0 bytes) "Failed to validate base edid"', [S]),
    *_checks('Failed to parse edid (0 bytes) "Failed to validate base edid"', [Y]),
    *_checks("diepint.timeout", [S], skip_all_passed_tests=True),
    *_checks("sys_config: ERROR failed to read any copy", [S], skip_passed_task=True),
    *_checks("Please re-lock the device", [S]),
    *_checks("Mic is muted!  (This would cause all subsequent queries to fail!)", [W]),
    *_checks("received kernel OOM signal", [S]),
    *_checks("timed out waiting for http response header while downloading blob", [Y],
             skip_all_passed_tests=True),
    *_checks("Got no package for fuchsia-pkg://", [W]),
    *_checks("Exceeded safe temperature range", [Y]),
    *_checks("STARNIX KERNEL PANIC", [Y]),
    *_checks("Restricted mode exception caused core dump", [Y], skip_all_passed_tests=True,
             emit_synthetic_test_case=True),
    *_checks("honeydew.errors.HealthCheckError: health check failed on", [W]),
    *_checks("failed to write blob", [S]),
    *_checks("critical to root job killed with", [W], except_blocks=_blocks(
        ("======== Mobly config content ========", "[=====MOBLY RESULTS=====]"),
        ("=== RUN   TestKillCriticalProcess", "--- PASS: TestKillCriticalProcess"),
        ("=== RUN   TestOOMHard", "--- PASS: TestOOMHard"),
    )),
    *_checks("has not completed after 30s", [W], skip_passed_test=True, ignore_flakes=True,
             attribute_to_test=True, add_tag=True),
    *_checks("wait_signaled_sync: not signaled yet.", [Y], skip_all_passed_tests=True),
    *_checks("QBG-D: Exit QBG", [Y]),
    *_checks("CRASH: process driver-host-#battery", [Y], skip_all_passed_tests=True,
             emit_synthetic_test_case=True),
    *_checks("failed to probe irremovable device", [S]),
    *_checks("No response to AfterResume  from SuspendBlocker 'schg-wake'", [S],
             skip_all_passed_tests=True, emit_synthetic_test_case=True),
    *_checks("No response to AfterResume", [S], skip_all_passed_tests=True,
             emit_synthetic_test_case=True),
    *_checks("No response to BeforeSuspend", [S], skip_all_passed_tests=True,
             emit_synthetic_test_case=True),
    *_checks("<== BACKTRACE REQUEST: process system_server", [Y], skip_all_passed_tests=True),
    *_checks("cc != ((void*)0)", [S], always_flake=True),
    *_checks("Failed to reload the firmware", [Y]),
    *_checks("Full node removal hanging", [S], always_flake=True, except_blocks=_REBOOT_HANG),
    *_checks("Package node removal hanging", [S], always_flake=True),
    *_checks("waiting for driver's Stop() function and destructor finish running", [S],
             always_flake=True, except_blocks=_REBOOT_HANG),
    *_checks("Deadline exceeded in the bootup tracker with:", [S], always_flake=True),
    *_checks("waiting for driver to finish binding", [S], always_flake=True),
    *_checks("Boot-test-successful!", [S], infra_failure=True, skip_all_passed_tests=True,
             always_flake=True),
    *_checks("BACKTRACE REQUEST: process android.hardware.contexthub-ser", [Y],
             skip_all_passed_tests=True, emit_synthetic_test_case=True),
    *_checks("Could not find 'aidl/android.hardware.thermal.IThermal/default' for "
             "ctl.interface_start", [Y], skip_all_passed_tests=True),
    *_checks("Detected threads locked up for more than 2 minutes", [S],
             skip_all_passed_tests=True),
    *_checks("Timed out loading dynamic linker from fuchsia.ldsvc.Loader", ALL_LOGS),
    *_checks("ERROR: AddressSanitizer", ALL_LOGS, attribute_to_test=True,
             emit_synthetic_test_case=True, except_blocks=_blocks(
                 ("[===ASAN EXCEPT BLOCK START===]", "[===ASAN EXCEPT BLOCK END===]"))),
    *_checks("ERROR: LeakSanitizer", ALL_LOGS, attribute_to_test=True, except_blocks=_blocks(
        ("[===LSAN EXCEPT BLOCK START===]", "[===LSAN EXCEPT BLOCK END===]"),
        ("RUN   TestOOMHard", "PASS: TestOOMHard"),
        ("RUNNING TEST: /boot/test/lsan-test", "[runtests][PASSED] /boot/test/lsan-test"),
        ("RUNNING TEST: /boot/test/lsan-test", "[runtests][FAILED] /boot/test/lsan-test"),
    )),
    *_checks("WARNING: ThreadSanitizer", ALL_LOGS, attribute_to_test=True),
    *_checks("SUMMARY: UndefinedBehaviorSanitizer", ALL_LOGS, attribute_to_test=True,
             except_blocks=_blocks(
                 ("[===UBSAN EXCEPT BLOCK START===]", "[===UBSAN EXCEPT BLOCK END===]"))),
    # Specific OOPS kinds before the generic one.
    *_checks("DRIVER OOPS", ALL_LOGS, attribute_to_test=True, except_blocks=_OOPS_TESTS),
    *_checks("lockup_detector: no heartbeat from", ALL_LOGS, attribute_to_test=True,
             except_blocks=_OOPS_TESTS),
    *_checks("ZIRCON KERNEL OOPS", ALL_LOGS, attribute_to_test=True, except_blocks=_OOPS_TESTS),
    *_checks("state->start_time() < state->finish_time()", ALL_LOGS, attribute_to_test=True),
    *_checks("ZIRCON KERNEL PANIC", ALL_LOGS, attribute_to_test=True,
             except_blocks=_PANIC_TESTS),
    *_checks("double fault, halting", ALL_LOGS),
    *_checks("entering panic shell loop", ALL_LOGS, except_strings=("Boot-test-successful!",)),
    *_checks("seriallistener FATAL: timed out before success string", ALL_LOGS,
             skip_all_passed_tests=True, always_flake=True),
    # " ASSERT FAILED" with its space: `ASSERT FAILED` also shows up in crash hexdumps.
    *_checks(" ASSERT FAILED", [S, Y], except_blocks=_ASSERT_TESTS),
    *_checks("DEVICE SUSPEND TIMED OUT", [S, Y]),
    *_checks("PURE_BLACK_SCREENSHOT_DETECTED: detected a pure black screenshot.", [W],
             skip_passed_test=True, ignore_flakes=True, attribute_to_test=True, add_tag=True,
             emit_synthetic_test_case=True),
    # Category 3, host tools: only the emulator's own failures (its stderr is the host log).
    *_checks("kvm run failed Bad address", [W]),
    *_checks("/dev/net/tun (qemu): Device or resource busy", [W]),
    # The harness's own: how QEMU and crosvm say on stderr that KVM failed the guest
    # (QEMU accel/kvm; crosvm src/crosvm/sys/linux/vcpu.rs run_vcpu).
    *_checks("KVM internal error. Suberror", [W], source="harness"),
    *_checks("unexpected vcpu exit: InternalError", [W], source="harness"),
    *_checks("vcpu hit unknown error", [W], source="harness"),
    *_checks("vcpu hw run failure", [W], source="harness"),
])


def serial_checks(checks: Iterable[StringInLogCheck] = CHECKS) -> list[StringInLogCheck]:
    """The checks that read the serial log, in order (what a profile's crash table holds)."""
    return [c for c in checks if c.log_type == LogType.SERIAL]


def vmm_failure(stderr: bytes) -> tuple[int, str] | None:
    """(offset, line) of the first line of a VMM's stderr that a host-log check counts.

    For watching a VMM while it runs (the KVM probe): QEMU does not exit when
    KVM fails the guest, it says so on stderr and stops the vCPUs.
    """
    hits = [hit for c in CHECKS if c.log_type == LogType.SWARMING
            if (hit := c.check_bytes(stderr)) is not None]
    if not hits:
        return None
    offset, line = min(hits)
    return offset, line.decode("utf-8", errors="replace").rstrip("\r")


# -- the harness's tasks ------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def task_outputs(result: TestResult, out_dir: Path, *, scan_serial: bool) -> TestingOutputs:
    """A finished test as tefmocheck's task: its attempts' serial logs and VMM stderr.

    `scan_serial`: the guest's serial log carries Fuchsia's strings (its profile's
    `crash_scan_serial`); a Linux guest's is not Fuchsia's to judge.

    Each attempt is a run of the test in the test summary (a retry that
    passed after a failure is a flake, as ignore_flakes sees it), and each
    attempt's VMM stderr its stretch of the task output.
    """
    outputs = TestingOutputs(
        test_summary=[TestDetails(result.test, a.status) for a in result.attempts],
        task_failed=not result.status.ok,
        task_id=result.key,
    )
    stderr = bytearray()
    for attempt in result.attempts:
        serial_rel = attempt.artifacts.get("serial.log")
        if not serial_rel:
            continue
        serial = out_dir / serial_rel
        if scan_serial:
            outputs.serial_logs.append(_read(serial))
        err_path = serial.parent / "vmm-stderr.log"
        err = _read(err_path)
        outputs.swarming_output_per_test.append(TestLog(
            result.test, err, (Path(serial_rel).parent / "vmm-stderr.log").as_posix(),
            len(stderr)))
        stderr += err
    outputs.swarming_output = bytes(stderr)
    return outputs


def synthetic_results(result: TestResult, out_dir: Path, *, scan_serial: bool,
                      checks: Iterable[StringInLogCheck] = CHECKS) -> list[TestResult]:
    """The tests tefmocheck would add for `result`'s logs; adds its synthetic cases to it.

    Each synthetic test carries the owner's environment and tags, is marked
    `testing_failure_mode`, fails (INFRA_FAIL for infra failures) with the
    matched line as its message and tefmocheck's debug text as its details,
    and has a second, passing attempt when the finding is a flake (so it
    counts as flaky, not failed). Its folder is the owner's, whose logs it
    points at; the debug text is also written there.
    """
    if not result.attempts:
        return []
    outputs = task_outputs(result, out_dir, scan_serial=scan_serial)
    if not (outputs.serial_logs or outputs.swarming_output or outputs.syslogs):
        return []
    outcome = run_checks(checks, outputs)
    if not outcome.tests:
        return []
    if not result.status.ok:
        for target, case in outcome.cases:
            if target in ("", result.test):
                result.final.cases.append(case)
    now = dt.datetime.now(dt.UTC)
    debug_rel = f"{result.folder}/{DEBUG_FILE}" if result.folder else ""
    debug: list[str] = []
    synthetic: dict[str, TestResult] = {}
    for test in outcome.tests:
        name = test.name
        if not test.finding.test_name:
            name = go_path_join(name, result.test)
        text = DEBUG_HEADER + test.finding.debug_text(result.key)
        attempt = Attempt(test.status, message=test.failure_reason, start_time=now,
                          details=text if test.status != Status.PASS else "")
        if debug_rel:
            attempt.artifacts[DEBUG_FILE] = debug_rel
        if name in synthetic:
            synthetic[name].attempts.append(attempt)
            continue
        debug.append(f"{name}: {test.status.value}\n{text}\n")
        synthetic[name] = TestResult(
            test=name, suite=SYNTHETIC_SUITE, environment=result.environment,
            engine=result.engine, arch=result.arch, blocking=result.blocking,
            label=result.label, accel=result.accel, kernel=result.kernel,
            tags={**result.tags, **test.tags}, repro=result.repro, folder=result.folder,
            testing_failure_mode=True, attempts=[attempt])
    if debug_rel:
        path = out_dir / debug_rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(debug))
        except OSError:
            for r in synthetic.values():
                for a in r.attempts:
                    a.artifacts.pop(DEBUG_FILE, None)
    return list(synthetic.values())


def explain(outputs: TestingOutputs, checks: Iterable[StringInLogCheck] = CHECKS
            ) -> list[dict[str, object]]:
    """For `harness parse`: every check whose string occurs, each occurrence's decision."""
    report: list[dict[str, object]] = []
    for check in checks:
        for n, data in enumerate(outputs.logs(check.log_type)):
            if not data or check.needle not in data:
                continue
            present = [s for s in check.except_strings if s.encode() in data]
            report.append({
                "check": check.name,
                "string": check.string,
                "log": check.log_type.value,
                "log_index": n,
                "source": check.source,
                "except_strings_present": present,
                "flags": {k: v for k, v in dataclasses.asdict(check).items()
                          if isinstance(v, bool) and v},
                "occurrences": [
                    {
                        "offset": o.offset,
                        "line": o.line.decode("utf-8", errors="replace").rstrip("\r"),
                        "counted": o.counted,
                        "excused_by": None if o.excused_by is None else {
                            "start": o.excused_by.start.decode(errors="replace"),
                            "end": o.excused_by.end.decode(errors="replace"),
                        },
                    }
                    for o in check.occurrences(data)
                ],
            })
    return report
