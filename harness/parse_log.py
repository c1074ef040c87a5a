"""`harness parse`: re-read a saved serial log into crashes, the crash scan and cases, without a VM.

As with kunit.py's parser, a result can then be reproduced (or a parser fix
checked) from the log alone. Three things come out:

- `crashes`: the profile's console crash table, applied to the raw bytes as
  the live console applies it (except-blocks included);
- `tefmocheck`: Fuchsia's crash scan as it runs after a test (harness.fuchsia.
  tefmocheck): every check whose string occurs, each occurrence with its
  decision (counted, or excused by which except-block or except-string), and
  the synthetic tests the scan would add. The serial log is scanned for Fuchsia
  guests; a VMM stderr (`host_log`) and a syslog can be given too. Some checks
  depend on whether the test failed: that is `outcome` if given, otherwise
  taken from the log (a failing case or a fatal crash means it failed);
- `cases`: the test output parsed in its format (given, or detected).
"""

from __future__ import annotations

from typing import Any

from harness import parsers
from harness.errors import ConfigError
from harness.fuchsia import tefmocheck
from harness.profiles import PROFILE_NAMES, get_profile
from harness.profiles.base import clean_text
from harness.results import Status

OUTCOMES = ("pass", "fail")


def parse_log(data: bytes, *, profile: str = "linux", fmt: str | None = None,
              booted: bool = False, host_log: bytes | None = None,
              syslog: bytes | None = None, outcome: str | None = None) -> dict[str, Any]:
    """Crashes, the crash scan and cases in `data`.

    `fmt` names the test output format (one of `parsers.FORMATS`); without
    it the format is detected. `booted=True` says the log starts after the
    guest booted (a mid-run capture), so a boot banner in it counts as an
    unexpected reboot. `host_log` is the VMM's stderr and `syslog` a Fuchsia
    syslog of the same run; `outcome` ("pass" or "fail") is the test's result
    for the checks that depend on it.
    """
    if profile not in PROFILE_NAMES:
        raise ConfigError("arguments", None, "profile",
                          f"unknown profile {profile!r} (known: {', '.join(PROFILE_NAMES)})")
    if fmt is not None and fmt not in parsers.FORMATS:
        raise ConfigError("arguments", None, "format",
                          f"unknown format {fmt!r} (known: {', '.join(parsers.FORMATS)})")
    if outcome is not None and outcome not in OUTCOMES:
        raise ConfigError("arguments", None, "outcome",
                          f"unknown outcome {outcome!r} (known: {', '.join(OUTCOMES)})")
    guest = get_profile(profile)
    crashes = guest.find_crashes(data, booted=booted)
    name, cases = parsers.parse(clean_text(data), fmt)
    totals = {s.value: 0 for s in Status}
    for case in cases:
        totals[case.status.value] += 1
    if outcome is None:
        failed = (any(not c.status.ok for c in cases)
                  or guest.find_crash(data, booted=booted) is not None)
    else:
        failed = outcome == "fail"
    return {
        "profile": profile,
        "crashes": [
            {"signature": c.signature, "excerpt": c.excerpt, "offset": c.offset} for c in crashes
        ],
        "tefmocheck": _crash_scan(data, guest.crash_scan_serial, host_log, syslog, failed),
        "format": name,
        "cases": [c.to_json() for c in cases],
        "totals": totals,
    }


def _crash_scan(serial: bytes, scan_serial: bool, host_log: bytes | None,
                syslog: bytes | None, failed: bool) -> dict[str, Any]:
    status = Status.FAIL if failed else Status.PASS
    outputs = tefmocheck.TestingOutputs(
        test_summary=[tefmocheck.TestDetails("log", status)], task_failed=failed,
        task_id="log")
    scanned = []
    if scan_serial:
        outputs.serial_logs.append(serial)
        scanned.append(tefmocheck.LogType.SERIAL.value)
    if host_log is not None:
        outputs.swarming_output = host_log
        scanned.append(tefmocheck.LogType.SWARMING.value)
    if syslog is not None:
        outputs.syslogs.append(syslog)
        scanned.append(tefmocheck.LogType.SYSLOG.value)
    outcome = tefmocheck.run_checks(tefmocheck.CHECKS, outputs)
    return {
        "logs": scanned,
        "test_failed": failed,
        "checks": tefmocheck.explain(outputs),
        "synthetic_tests": [
            {"name": t.name, "result": t.status.value, "failure_reason": t.failure_reason,
             "is_testing_failure_mode": True, "tags": t.tags}
            for t in outcome.tests
        ],
        "synthetic_cases": [
            {"display_name": parsers.display_name(c), "status": c.status.value,
             "failure_reason": c.message}
            for _, c in outcome.cases
        ],
    }
