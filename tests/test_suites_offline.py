"""The reboot_shutdown and core suites without a VM: real Guest and Console, a transcript VMM.

No Zircon image boots here, and the Linux lifecycle paths that matter most
(crosvm exiting on a reset or a panic and being launched again) are slow or
rare on real guests. So these tests run the suites' own functions on a real
`Guest` whose engine is a transcript player: a pty peer that answers each line
the harness sends with scripted console bytes (kernel log prefixes, `\\r\\n`,
real captures from tests/fixtures), and exits with a chosen status where a VMM
would. Console.run's markers are answered as a shell would answer them.

Also here: a saved serial log of core.test_bpf re-parses offline (`harness
parse`) to the cases the live run reported.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import select
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from thread_vmm import ThreadVmm

from harness import environments
from harness import suite as suite_api
from harness.console import GuestCrashed
from harness.engines.base import BinaryLookup, Engine, RunPaths, Vmm, VmmSetup
from harness.engines.crosvm import CrosvmEngine
from harness.environments import Environment
from harness.exits import ExitInfo, ExitKind
from harness.guest import Guest, GuestExited
from harness.images.model import GuestImage
from harness.parse_log import parse_log
from harness.parsers import gtest, linux_module, zircon_ut
from harness.results import Status
from suites import core, reboot_shutdown

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent

# -- the transcript VMM -------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """One line the harness is expected to send, and what the console answers.

    `status` set: the line is a Console.run command (`sent` matches the command
    inside it) and the answer is framed with its markers and exit status, as
    the guest shell would; otherwise `sent` matches the raw line.
    """

    sent: str
    reply: bytes = b""
    status: int | None = None
    exit: int | None = None  # the VMM exits with this status after answering


@dataclasses.dataclass
class Launch:
    boot: bytes
    steps: list[Step]
    prompt: bytes = b"harness# "


_RUN_LINE = re.compile(r"^printf '%s\\n' (\w+)''B; command eval (.*); "
                       r"printf '%s:%d\\n' \1''E \$\?$")


class TranscriptVmm(ThreadVmm):
    """Plays one Launch on the pty slave from a thread; closes it to 'exit'."""

    def __init__(self, fd: int, launch: Launch, log: list[str]) -> None:
        super().__init__(fd)
        self.launch = launch
        self.sent = log
        self.unexpected: list[str] = []
        os.write(fd, launch.boot)
        self.start()

    def play(self) -> None:
        pending = b""
        steps = list(self.launch.steps)
        while not self._stop.is_set():
            try:  # kill() may close the fd under us: that is the end of the transcript
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if not ready:
                    continue
                pending += os.read(self.fd, 4096)
                pending = self._lines(pending, steps)
            except (OSError, ValueError):
                return

    def _lines(self, pending: bytes, steps: list[Step]) -> bytes:
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            line = raw.decode().rstrip("\r")
            os.write(self.fd, raw + b"\r\n")  # the terminal's echo
            self.sent.append(line)
            reply = self._answer(steps[0], line) if steps else None
            if reply is None:
                self.unexpected.append(line)
                continue
            step = steps.pop(0)
            os.write(self.fd, reply)
            if step.exit is not None:
                self._close(step.exit)
                return b""
        return pending

    def _answer(self, step: Step, line: str) -> bytes | None:
        if step.status is None:
            return step.reply if re.fullmatch(step.sent, line) else None
        m = _RUN_LINE.match(line)
        if m is None or not re.fullmatch(step.sent, shlex.split(m[2])[0]):
            return None
        token = m[1].encode()
        return (token + b"B\r\n" + step.reply + b"\r\n" + token + b"E:%d\r\n" % step.status
                + self.launch.prompt)



class TranscriptEngine(Engine):
    """An engine that launches Launches in turn; `name` picks whose reset rules Guest applies."""

    accelerators = ("tcg",)  # a transcript: nothing to probe

    def __init__(self, name: str, launches: list[Launch]) -> None:
        self.name = name
        self.launches = list(launches)
        self.vmms: list[TranscriptVmm] = []
        self.sent: list[str] = []
        self._classify = CrosvmEngine() if name == "crosvm" else None
        self.relaunches_on_reset = self._classify is not None and \
            self._classify.relaunches_on_reset

    def locate(self, arch: str) -> BinaryLookup:
        return BinaryLookup("transcript-vmm", "transcript-vmm", "test")

    def command(self, env: Environment, image: GuestImage, paths: RunPaths,
                setup: VmmSetup) -> list[str]:
        return ["transcript-vmm", env.name]

    async def launch(self, env: Environment, image: GuestImage, paths: RunPaths,
                     setup: VmmSetup, console_fd: int) -> Vmm:
        assert self.launches, "the guest was launched more often than the transcript has boots"
        vmm = TranscriptVmm(os.dup(console_fd), self.launches.pop(0), self.sent)
        self.vmms.append(vmm)
        return vmm

    def classify_exit(self, returncode: int) -> ExitInfo:
        if self._classify is not None:
            return self._classify.classify_exit(returncode)
        kind = ExitKind.STOP if returncode == 0 else ExitKind.ERROR
        return ExitInfo(kind, returncode, f"transcript VMM exited {returncode}")

    @property
    def unexpected(self) -> list[str]:
        return [line for vmm in self.vmms for line in vmm.unexpected]


def environment(name: str, **changes: Any) -> Environment:
    env = environments.load(REPO / "environments.json").get(name)
    return dataclasses.replace(env, boot_timeout_s=10.0, **changes)


@dataclasses.dataclass
class Rig:
    guest: Guest
    engine: TranscriptEngine
    env: Environment
    folder: Path

    def context(self, **params: Any) -> suite_api.TestContext:
        return suite_api.TestContext(guest=self.guest, env=self.env, spec=None, folder=self.folder,
                           params=dict(params))

    def serial(self) -> bytes:
        return self.guest.log.path.read_bytes()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Rig] = []

    async def make(env: Environment, launches: list[Launch], *,
                   capabilities: dict[str, Any] | None = None) -> Rig:
        engine = TranscriptEngine(env.engine, launches)
        image = GuestImage(name="transcript", arch=env.arch, kernel=Path("/nonexistent"),
                           initrd=None, capabilities=capabilities or {})
        folder = tmp_path / f"test{len(made)}"
        workdir = tmp_path / f"work{len(made)}"
        workdir.mkdir()
        guest = Guest(env, engine, image, folder / "serial.log", workdir=workdir,
                      own_workdir=False, setup=VmmSetup("transcript-vmm", "tcg"))
        made.append(Rig(guest, engine, env, folder))
        with anyio.fail_after(10):
            await guest.start()
        return made[-1]

    yield make
    for r in made:
        await r.guest.close()


# -- transcripts --------------------------------------------------------------------------------


def linux_boot(boot_id: str | None = None, uptime: float = 1.0) -> bytes:
    boot_id = boot_id or str(uuid.uuid4())
    return (b"[    0.000000] Linux version 6.1.0-56-amd64\r\r\n"
            b"HARNESS-BOOT-OK boot_id=%s uptime=%.2f\r\r\n\r\r\nharness# "
            % (boot_id.encode(), uptime))


UPTIME_CMD = re.escape("cut -d' ' -f1 /proc/uptime")
ZIRCON_PROMPT = b"$ "


def zircon_boot(t: float = 0.0) -> bytes:
    return (b"\x1bc\x1b[?7l\x1b[2J\x1b[0m[%09.3f] 00000:00000> welcome to Zircon\r\n"
            b"[%09.3f] 01029:01045> console.shell: enabled\r\n$ " % (t, t + 1.5))


def fixture(name: str) -> bytes:
    path = FIXTURES / name
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


# -- Linux lifecycle on the crosvm rules (exit 32 / 34, relaunch) ------------------------------


async def test_guest_reboot_cycles_through_crosvm_relaunches(rig: Any) -> None:
    launches = [
        Launch(linux_boot(), [Step(UPTIME_CMD, b"4.50", status=0),
                              Step("reboot -f", b"[    4.9] reboot: Restarting system\r\r\n",
                                   exit=32)]),
        Launch(linux_boot(), [Step(UPTIME_CMD, b"0.80", status=0),
                              Step(UPTIME_CMD, b"0.95", status=0),
                              Step("reboot -f", exit=32)]),
        Launch(linux_boot(), [Step(UPTIME_CMD, b"0.70", status=0)]),
    ]
    r = await rig(environment("crosvm-x64"), launches)
    t = r.context(reboot_cycles=2)
    await reboot_shutdown.test_guest_reboot(t)
    assert r.engine.unexpected == []
    assert [(c.name, c.status) for c in t.cases] == [
        ("reboot_1", Status.PASS), ("reboot_2", Status.PASS),
        ("serial_log_has_every_boot", Status.PASS)]
    assert {"boot_1_s", "boot_2_s", "boot_3_s"} <= t.properties.keys()
    assert t.properties["vmm_relaunches"] == "2"
    assert len({b.boot_id for b in r.guest.boots}) == 3
    assert r.serial().count(b"relaunching crosvm after the guest rebooted") == 2


async def test_guest_reboot_fails_when_uptime_did_not_restart(rig: Any) -> None:
    launches = [
        Launch(linux_boot(), [Step(UPTIME_CMD, b"500.00", status=0),
                              Step("reboot -f", exit=32)]),
        Launch(linux_boot(), [Step(UPTIME_CMD, b"503.00", status=0)]),
    ]
    r = await rig(environment("crosvm-x64"), launches)
    t = r.context(reboot_cycles=1)
    await reboot_shutdown.test_guest_reboot(t)
    first = t.cases[0]
    assert (first.name, first.status) == ("reboot_1", Status.FAIL)
    assert "did not restart" in first.message


async def test_crash_on_crosvm_relaunches_after_a_pvpanic_exit(rig: Any) -> None:
    """crosvm exits 34 on a pvpanic panic; under the reset policy the guest comes back."""
    panic = fixture("linux/panic-x64.log")
    launches = [
        Launch(linux_boot(), [Step(re.escape("echo c > /proc/sysrq-trigger"), panic, exit=34)]),
        Launch(linux_boot(), [Step("echo usable-2", b"usable-2", status=0)]),
    ]
    r = await rig(environment("crosvm-x64", panic_policy="reset"), launches)
    t = r.context()
    with anyio.fail_after(20):
        await reboot_shutdown.test_crash(t)
    assert r.engine.unexpected == []
    assert [(c.name, c.status) for c in t.cases] == [
        ("panic_detected", Status.PASS), ("usable_after_reset", Status.PASS)]
    assert float(t.properties["panic_detect_s"]) < reboot_shutdown.PANIC_DETECT_MAX_S
    assert r.guest.exits[0].kind == ExitKind.PANIC
    assert r.guest.boots[-1].index == 2 and r.guest.boots[-1].relaunch
    assert "sysrq triggered crash" in (t.folder / "crash-excerpt.txt").read_text()


async def test_crash_under_halt_policy_stays_down(rig: Any) -> None:
    panic = fixture("linux/panic-x64.log")
    launches = [Launch(linux_boot(), [Step(re.escape("echo c > /proc/sysrq-trigger"), panic,
                                           exit=34)])]
    r = await rig(environment("crosvm-x64", panic_policy="halt"), launches)
    t = r.context()
    await reboot_shutdown.test_crash(t)
    assert [(c.name, c.status) for c in t.cases] == [("panic_detected", Status.PASS)]
    with pytest.raises(GuestExited) as e:
        await r.guest.wait_reset(5)
    assert e.value.info.kind == ExitKind.PANIC
    assert len(r.engine.vmms) == 1  # never relaunched


async def test_guest_shutdown_needs_an_orderly_poweroff(rig: Any) -> None:
    orderly = (b"The system is going down NOW!\r\nSent SIGTERM to all processes\r\n"
               b"Requesting system poweroff\r\n[    6.3] reboot: Power down\r\r\n")
    r = await rig(environment("crosvm-x64"),
                  [Launch(linux_boot(), [Step("poweroff", orderly, exit=0)])])
    t = r.context()
    await reboot_shutdown.test_guest_shutdown(t)
    assert [(c.name, c.status) for c in t.cases] == [
        ("vmm_stopped", Status.PASS), ("orderly_shutdown", Status.PASS)]
    assert r.engine.sent[-1] == "poweroff"  # not the profile's `poweroff -f`

    # A guest that powers off without its init's shutdown sequence fails the orderly case.
    r = await rig(environment("crosvm-x64"),
                  [Launch(linux_boot(), [Step("poweroff", b"[ 6.3] reboot: Power down\r\n",
                                              exit=0)])])
    t = r.context()
    await reboot_shutdown.test_guest_shutdown(t)
    assert [(c.name, c.status) for c in t.cases] == [
        ("vmm_stopped", Status.PASS), ("orderly_shutdown", Status.FAIL)]


async def test_power_button_is_skipped_without_the_capability(rig: Any) -> None:
    r = await rig(environment("qemu-arm64"), [Launch(linux_boot(), [])],
                  capabilities={"power_button": False})
    with pytest.raises(suite_api.Skip, match="no power button driver"):
        await reboot_shutdown.test_power_button(r.context())


# -- Zircon core tests ---------------------------------------------------------------------------
# (Fuchsia's reboot and shutdown flows, on this transcript VMM, are in tests/test_zircon_flows.py.)


def zircon_env(engine: str = "qemu") -> Environment:
    return environment("crosvm-x64" if engine == "crosvm" else "qemu-x64", profile="zircon")



def triples(cases: list[Any]) -> list[tuple[str, str, Status]]:
    return [(c.suite, c.name, c.status) for c in cases]


async def test_zircon_ut_all_on_a_transcript(rig: Any) -> None:
    text = fixture("zircon/ut-all.log")
    r = await rig(zircon_env(), [Launch(zircon_boot(), [Step("k ut all", b"$ " + text)],
                                        prompt=ZIRCON_PROMPT)])
    run = await core.zircon_kernel_unittests(r.guest, timeout=5)
    assert run.crash is None
    expected = zircon_ut.parse(text.decode())
    assert triples(run.cases) == triples(expected)
    statuses = [c.status for c in run.cases]
    assert statuses.count(Status.PASS) == 5 and statuses.count(Status.FAIL) == 2
    # The group that could not run is known only from the list after the summary.
    assert ("vmm", "vmm", Status.FAIL) in triples(run.cases)


async def test_zircon_ut_all_cut_off_by_a_panic(rig: Any) -> None:
    text = fixture("zircon/ut-truncated.log")
    r = await rig(zircon_env(), [Launch(zircon_boot(), [Step("k ut all", b"$ " + text)],
                                        prompt=ZIRCON_PROMPT)])
    run = await core.zircon_kernel_unittests(r.guest, timeout=5)
    assert run.crash is not None and run.crash.crash.signature == "zircon-kernel-panic"
    assert ("vmo", "decommit_misaligned", Status.FAIL) in triples(run.cases)
    assert [c.status for c in run.cases].count(Status.PASS) == 2


async def test_zircon_core_tests_on_a_transcript(rig: Any) -> None:
    text = fixture("zircon/core-tests.log")
    r = await rig(zircon_env(), [Launch(zircon_boot(), [
        Step(re.escape(core.CORE_TESTS_PATH), text, status=1)], prompt=ZIRCON_PROMPT)])
    t = r.context()
    await core.test_zircon_core_tests(t)  # the failing case fails the test in the runner
    assert triples(t.cases) == triples(gtest.parse(text.decode()))
    statuses = [c.status for c in t.cases]
    assert (statuses.count(Status.PASS), statuses.count(Status.FAIL),
            statuses.count(Status.SKIP)) == (4, 1, 1)


async def test_zircon_core_tests_crash_keeps_the_cases_before_it(rig: Any) -> None:
    text = fixture("zircon/core-tests-crash.log")
    # A raw answer to the command line: the shell never prints the end marker, the
    # panic comes first.
    r = await rig(zircon_env(), [Launch(zircon_boot(), [Step(r".*core-tests.*", text)],
                                        prompt=ZIRCON_PROMPT)])
    run = await core.zircon_core_tests(r.guest, timeout=5)
    assert isinstance(run.crash, GuestCrashed)
    assert triples(run.cases) == [("FutexTest", "Wait", Status.PASS),
                                  ("FutexTest", "WakeRequeue", Status.FAIL)]


# -- Linux kernel test modules -------------------------------------------------------------------


def module_steps(name: str, slice_lines: list[str], status: int) -> list[Step]:
    """The guest side of one `load_test_module`: the kmsg slice is what the sed prints."""
    return [
        Step(re.escape(f"[ -d /sys/module/{name} ]"), b"", status=1),
        Step(r"\(cat /dev/kmsg > .*", b"", status=0),
        Step(rf"\(modprobe {name}; .*", b"", status=status),
        Step(r"\(i=0; until .*", "\r\n".join(slice_lines).encode(), status=0),
        Step(re.escape(f"if [ -d /sys/module/{name} ]; then modprobe -r {name}; fi"), b"",
             status=0),
    ]


async def test_kernel_module_results_come_from_the_kernel_log(rig: Any) -> None:
    good = ["[5.100000] harness-module-begin: x test_user_copy",
            "[5.200000] test_user_copy: tests passed.",
            "[5.210000] harness-module: test_user_copy exit=0"]
    bad = ["[6.100000] harness-module-begin: y test_static_keys",
           "[6.210000] harness-module: test_static_keys exit=22"]
    steps = [*module_steps("test_user_copy", good, 0), *module_steps("test_static_keys", bad, 22),
             Step(r"\[ -d /sys/module/test_user_copy \] && echo .*", b"", status=0)]
    r = await rig(environment("qemu-x64"), [Launch(linux_boot(), steps)],
                  capabilities={"kernel_test_modules": ["test_bpf", "test_user_copy",
                                                        "test_static_keys"]})
    t = r.context()
    await core.test_kernel_modules(t)
    assert r.engine.unexpected == []
    assert triples(t.cases) == [("test_user_copy", "module_init", Status.PASS),
                                ("test_static_keys", "module_init", Status.FAIL),
                                ("", "modules_unloaded", Status.PASS)]
    # The serial log alone gives the same module cases.
    offline = parse_log(r.serial())
    assert [(c["suite"], c["name"], c["status"]) for c in offline["cases"]] == [
        ("test_user_copy", "module_init", "PASS"), ("test_static_keys", "module_init", "FAIL")]


async def test_kernel_modules_skip_on_an_image_without_them(rig: Any) -> None:
    r = await rig(environment("qemu-x64-minimal"), [Launch(linux_boot(), [])],
                  capabilities={"kernel_test_modules": []})
    with pytest.raises(suite_api.Skip, match="no kernel test modules"):
        await core.test_kernel_modules(r.context())


def test_module_commands_never_echo_a_result_line() -> None:
    """The console echoes each command; the echo must not parse as a module result."""
    commands = core.module_commands("test_bpf", "abcd1234", "test_range=0,9")
    echoed = "\n".join(f"harness# {c}" for c in commands)
    assert linux_module.parse(echoed) == []
    assert "modprobe test_bpf test_range=0,9;" in commands[1]
    with pytest.raises(ValueError):
        core.module_commands("x; reboot", "t")


# -- a saved core.test_bpf serial log re-parses to the live run's cases --------------------------


def live_cases() -> dict[str, Any]:
    data = gzip.decompress((FIXTURES / "linux/core.test_bpf.live-cases.json.gz").read_bytes())
    return dict(json.loads(data))


@pytest.mark.parametrize("env", ["qemu-x64", "qemu-arm64"])
def test_saved_test_bpf_log_reparses_to_the_live_cases(env: str) -> None:
    live = live_cases()[env]
    module_cases = [(c["suite_name"], c["case_name"], c["status"]) for c in live["cases"]
                    if c["format"] == linux_module.FORMAT]
    assert len(module_cases) > 1000  # 1,026 tests + tail calls + skb segments
    offline = parse_log(fixture(f"linux/core.test_bpf-{env}.serial.log.gz"))
    assert offline["format"] == "linux-module"
    assert offline["crashes"] == []
    assert [(c["suite"], c["name"], c["status"]) for c in offline["cases"]] == module_cases


def test_harness_parse_cli_on_the_saved_test_bpf_log(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(fixture("linux/core.test_bpf-qemu-x64.serial.log.gz"))
    done = subprocess.run([sys.executable, "-m", "harness", "parse", str(log)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    totals = json.loads(done.stdout)["totals"]
    live = [c for c in live_cases()["qemu-x64"]["cases"] if c["format"] == linux_module.FORMAT]
    assert totals["PASS"] == sum(1 for c in live if c["status"] == "PASS")
    assert totals["FAIL"] == sum(1 for c in live if c["status"] == "FAIL")


# -- declarations ---------------------------------------------------------------------------------


def test_requirements_and_sharing() -> None:
    envs = environments.load(REPO / "environments.json")
    linux = envs.get("qemu-x64")
    zircon = dataclasses.replace(linux, profile="zircon")
    for module in ("reboot_shutdown", "core"):
        for test in suite_api.load_suite(module):
            zircon_only = test.name.startswith("zircon_")
            assert (test.requires.unmet(linux) is None) != zircon_only, test.full_name
            assert (test.requires.unmet(zircon) is None) == zircon_only, test.full_name
            reason = test.requires.unmet(zircon if not zircon_only else linux)
            assert reason and "guest" in reason
            # Lifecycle tests end their guest; loading test modules leaves it as found.
            assert test.shares_guest == (module == "core"), test.full_name
