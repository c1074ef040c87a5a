"""Kernel core tests: the Linux kernel's own test modules, Zircon's `k ut all` and core-tests.

Linux: the image ships some of the kernel's self-test modules
(capabilities["kernel_test_modules"]). Loading one runs its tests in its init,
which reports to the kernel log; each individual result becomes a case. The
kernel log is read from /dev/kmsg by a reader started before the load, not from
`dmesg` afterwards: the ring buffer is 128 KiB, and test_bpf's 1,041 lines on
top of the boot log fill it (115 KiB measured on x86_64), so the start of its
output would be lost on a guest that had logged a little more. The console's
log level is left alone (the harness keeps it at 1 so that kernel lines never
break its command markers); the slice of the log that belongs to the load is
printed as command output instead, with printk-style timestamps, followed by
the `harness-module: NAME exit=N` line written through /dev/kmsg. The serial
log is therefore self-describing: `harness parse` re-reads it offline into the
same cases (harness/parsers/linux_module.py).

Loading and unloading a test module leaves nothing behind, so these tests
share their environment's guest; each checks the modules are gone afterwards.

Zircon: `k ut all` (kernel unit tests, results in the kernel log, parsed by
parsers.zircon_ut) and the core-tests binary (zxtest, parsers.gtest), written
against the Guest API; no Zircon image boots here, so tests/test_suites_offline.py
drives them over transcripts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import shlex
import time
from collections.abc import Callable

from harness.console import ConsoleTimeout, GuestCrashed
from harness.parsers import gtest, linux_module, zircon_ut
from harness.profiles.base import clean_text
from harness.results import Case, Status
from harness.suite import Guest, Requirements, Skip, TestContext, guest_test

LINUX = Requirements(profiles=("linux",))
ZIRCON = Requirements(profiles=("zircon",))

# test_bpf runs ~1,040 tests; under TCG it took 55 s on an idle host and 165 s on a
# busy one (the "all operand magnitudes" and "staggered jumps" groups dominate).
TEST_BPF_TIMEOUT_S = 600.0
QUICK_MODULE_TIMEOUT_S = 60.0
# How long the reader may lag behind the load before the slice is printed anyway.
KMSG_DRAIN_POLLS = 100  # x 0.05 s
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass
class ParsedRun:
    """Cases from one run of a test program, and how the run ended."""

    cases: list[Case]
    status: int | None = None  # exit status, where the program has one
    crash: GuestCrashed | None = None  # the guest crashed while it ran
    duration_s: float = 0.0


def _partial(guest: Guest, offset: int, parse: Callable[[str], list[Case]]) -> list[Case]:
    """Cases from what reached the serial log before a crash (the case in flight fails)."""
    return list(parse(clean_text(guest.log.since(offset))))


# -- Linux ------------------------------------------------------------------------------------


def kmsg_slice_command(path: str, begin: str) -> str:
    """Print the records of `path` (a copy of /dev/kmsg) from the one holding `begin` on.

    /dev/kmsg records are `PRIO,SEQ,USEC,FLAGS;TEXT` (continuation lines start
    with a space and are dropped); they come out as `[SEC.USEC] TEXT`, the
    shape of a printk line, which is what the parsers strip and time by.
    """
    script = (rf"/;{begin}$/,${{s/^[0-9]*,[0-9]*,\([0-9]*\)\([0-9]\{{6\}}\),[^;]*;/[\1.\2] /p}}")
    return f"sed -n {shlex.quote(script)} {path}"


def module_commands(name: str, token: str, args: str = "") -> tuple[str, str, str, str]:
    """The four guest commands of one load: start the reader, load, print the log, unload.

    Each is a whole command with no shell state carried between them; the
    load's exit status reaches the kernel log as `linux_module.result_line`,
    written with the status variable (never a literal number, so the console's
    echo of the command can never be mistaken for the result).
    """
    if not _MODULE_NAME.match(name):
        raise ValueError(f"not a module name: {name!r}")
    path = f"/tmp/harness-kmsg-{token}"
    begin = f"harness-module-begin: {token} {name}"
    result_prefix = linux_module.result_line(name, 0).rsplit("=", 1)[0] + "="
    load_args = " ".join(shlex.quote(a) for a in shlex.split(args))
    start = (f"(cat /dev/kmsg > {path} & echo $! > {path}.pid); "
             f"echo {shlex.quote(begin)} > /dev/kmsg")
    load = (f"(modprobe {name}{' ' + load_args if load_args else ''}; s=$?; "
            f"echo \"{result_prefix}$s\" > /dev/kmsg; exit $s)")
    seen = (f"sed -n {shlex.quote(f'/;{begin}$/,$p')} {path} | "
            f"grep -q {shlex.quote(';' + result_prefix)}")
    collect = (f"(i=0; until {seen}; do [ $i -ge {KMSG_DRAIN_POLLS} ] && break; sleep 0.05; "
               f"i=$((i+1)); done; kill $(cat {path}.pid); {kmsg_slice_command(path, begin)}; "
               f"rm -f {path} {path}.pid)")
    unload = f"if [ -d /sys/module/{name} ]; then modprobe -r {name}; fi"
    return start, load, collect, unload


async def load_test_module(guest: Guest, name: str, *, args: str = "",
                           timeout: float = QUICK_MODULE_TIMEOUT_S) -> ParsedRun:
    """Load one kernel test module, parse its results from the kernel log, unload it.

    A crash during the load ends the run with the cases seen so far (the one
    in flight failing); the crash is returned for the caller to report.
    """
    token = secrets.token_hex(4)
    start, load, collect, unload = module_commands(name, token, args)
    offset = guest.log.offset()
    started = time.monotonic()
    try:
        if (await guest.run(f"[ -d /sys/module/{name} ]")).status == 0:
            await guest.check(unload)  # left loaded by someone: its init would not run again
        await guest.check(start)
        status = (await guest.run(load, timeout)).status
        duration = time.monotonic() - started
        await guest.check(collect, 30.0)
    except GuestCrashed as e:
        return ParsedRun(_partial(guest, offset, linux_module.parse), None, e,
                         time.monotonic() - started)
    # The serial log since `offset` is exactly what `harness parse` reads later.
    cases = linux_module.parse(clean_text(guest.log.since(offset)))
    if not any(c.suite.split(".")[0] == name for c in cases):
        cases.append(Case(name=linux_module.CASE, suite=name, status=Status.FAIL,
                          format=linux_module.FORMAT,
                          message=f"no `{linux_module.result_line(name, status)}` line came "
                                  f"back from the kernel log"))
    unloaded = await guest.run(unload)
    if unloaded.status != 0:
        cases.append(Case(name="unload", suite=name, status=Status.FAIL,
                          format=linux_module.FORMAT,
                          message=f"`modprobe -r {name}` exited {unloaded.status}: "
                                  f"{unloaded.output.strip()[-500:]}"))
    return ParsedRun(cases, status, None, duration)


def _record(t: TestContext, run: ParsedRun) -> None:
    t.cases.extend(run.cases)


def _test_modules(t: TestContext) -> list[str]:
    modules = list(t.guest.capabilities.get("kernel_test_modules") or [])
    if not modules:
        raise Skip(f"image {t.guest.image.name} ({t.env.arch}) ships no kernel test modules "
                   f"(the cloud kernels leave them out)")
    return modules


async def _leftovers(guest: Guest, names: list[str]) -> list[str]:
    out = await guest.check("; ".join(f"[ -d /sys/module/{n} ] && echo {n}" for n in names)
                            + "; true")
    return out.split()


@guest_test(requires=LINUX, shares_guest=True, timeout_s=180)
async def test_kernel_modules(t: TestContext) -> None:
    """The image's quick kernel self-test modules (all but test_bpf): load, one case per
    result, unload."""
    modules = [m for m in _test_modules(t) if m != "test_bpf"]
    if not modules:
        raise Skip("the image ships no kernel test module besides test_bpf")
    for name in modules:
        run = await load_test_module(t.guest, name)
        _record(t, run)
        t.prop(f"{name}_s", f"{run.duration_s:.3f}")
        if run.crash is not None:
            raise run.crash
    left = await _leftovers(t.guest, modules)
    t.case("modules_unloaded", not left, f"still loaded: {', '.join(left)}" if left else "")


@guest_test(requires=LINUX, shares_guest=True, timeout_s=TEST_BPF_TIMEOUT_S + 60)
async def test_test_bpf(t: TestContext) -> None:
    """test_bpf: ~1,040 BPF interpreter/JIT tests, tail calls and skb segments, one case each.

    `test_bpf_args` (module parameters, e.g. "test_range=0,99") narrows the run
    for a quick local check; CI runs it whole.
    """
    if "test_bpf" not in _test_modules(t):
        raise Skip(f"image {t.guest.image.name} does not ship test_bpf")
    run = await load_test_module(t.guest, "test_bpf", args=str(t.params.get("test_bpf_args", "")),
                                 timeout=TEST_BPF_TIMEOUT_S)
    _record(t, run)
    t.prop("test_bpf_s", f"{run.duration_s:.3f}")
    for status in (Status.PASS, Status.FAIL, Status.SKIP):
        t.prop(f"test_bpf_{status.value.lower()}",
               sum(1 for c in run.cases if c.status == status))
    if run.crash is not None:
        raise run.crash
    left = await _leftovers(t.guest, ["test_bpf"])
    t.case("module_unloaded", not left, "test_bpf is still loaded" if left else "",
           suite="test_bpf")


# -- Zircon -----------------------------------------------------------------------------------

ZIRCON_UT_COMMAND = "k ut all"
CORE_TESTS_PATH = "/boot/test/core-tests"
_UT_SUMMARY = re.compile(rb"SUMMARY: Ran (\d+) test cases?: (\d+) failed")


def _failed_list(count: int) -> re.Pattern[bytes]:
    """`The following test cases failed:` and the `count` group names after it."""
    return re.compile(rb"The following test cases failed:[^\n]*\n(?:[^\n]*\n){%d}" % count)


async def zircon_kernel_unittests(guest: Guest, timeout: float = 600.0) -> ParsedRun:
    """`k ut all`: the kernel runs its unit tests and logs them; wait for the summary.

    `k` hands the command to the kernel and returns at once, so the results
    arrive after the shell's prompt: the end is the `SUMMARY:` line (and, when
    groups failed, the list of their names that follows it).
    """
    offset = guest.log.offset()
    started = time.monotonic()
    crash = None
    guest.console.sendline(ZIRCON_UT_COMMAND)
    try:
        m = await guest.console.expect([_UT_SUMMARY], timeout,
                                       what=f"the SUMMARY line of `{ZIRCON_UT_COMMAND}`")
        failed = int(m.group(2))
        if failed:
            # On a timeout the failing cases themselves are still in the log.
            with contextlib.suppress(ConsoleTimeout):
                await guest.console.expect([_failed_list(failed)], 10.0,
                                           what="the list of failed test cases",
                                           longest=1 << 20)
    except GuestCrashed as e:
        crash = e
    cases = _partial(guest, offset, zircon_ut.parse)
    return ParsedRun(cases, None, crash, time.monotonic() - started)


async def zircon_core_tests(guest: Guest, path: str = CORE_TESTS_PATH,
                            timeout: float = 900.0) -> ParsedRun:
    """Run the core-tests binary (zxtest) over the console and parse its cases."""
    offset = guest.log.offset()
    started = time.monotonic()
    try:
        result = await guest.run(shlex.quote(path), timeout)
    except GuestCrashed as e:
        return ParsedRun(_partial(guest, offset, gtest.parse), None, e,
                         time.monotonic() - started)
    return ParsedRun(gtest.parse(result.output), result.status, None, result.duration_s)


@guest_test(requires=ZIRCON, shares_guest=True, timeout_s=660)
async def test_zircon_kernel_unittests(t: TestContext) -> None:
    """Zircon: `k ut all`, one case per kernel unit test."""
    run = await zircon_kernel_unittests(t.guest)
    _record(t, run)
    t.prop("ut_all_s", f"{run.duration_s:.3f}")
    if run.crash is not None:
        raise run.crash
    assert run.cases, f"`{ZIRCON_UT_COMMAND}` reported no test cases"


@guest_test(requires=ZIRCON, shares_guest=True, timeout_s=960)
async def test_zircon_core_tests(t: TestContext) -> None:
    """Zircon: the core-tests binary (zxtest), one case per test."""
    path = str(t.params.get("core_tests_path", CORE_TESTS_PATH))
    run = await zircon_core_tests(t.guest, path)
    _record(t, run)
    t.prop("core_tests_s", f"{run.duration_s:.3f}")
    if run.crash is not None:
        raise run.crash
    failed = [c.name for c in run.cases if c.status == Status.FAIL]
    assert run.status == 0 or failed, f"{path} exited {run.status} without a failing case"
    assert run.cases, f"{path} reported no test cases"
