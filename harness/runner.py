"""The scheduler: anyio task group, a capacity limit, deadlines, retries, cancellation.

Tests that may share a guest run one after another on a single boot per
environment; the rest get a guest each. Every guest runs under the capacity
limiter, so `--jobs N` bounds the number of VMMs alive at once. A result is
on disk before its progress line is printed (harness.recorder), so an
interrupt or a crash of the harness itself never loses what already finished.
Signals are not handled here: whoever runs the Runner (harness.app) calls
`interrupt` and `hurry`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import inspect
import os
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from harness.accel import Accel
from harness.disks import make_disk_paths, make_disks
from harness.engines.base import Engine, VmmSetup
from harness.environments import Environment
from harness.errors import HarnessError, OutputError
from harness.folders import run_folders, safe_name
from harness.fuchsia import boottest, serialtester
from harness.fuchsia.build import describe as describe_bundle
from harness.fuchsia.tefmocheck import synthetic_results
from harness.guest import Guest
from harness.images.model import GuestImage
from harness.outputs import Terminal, describe, write_file
from harness.plan import PlannedRun, run_environment
from harness.profiles import get_profile
from harness.profiles.zircon import ENTROPY_MIXIN_BYTES
from harness.programs import program_deadline, run_program
from harness.recorder import Recorder
from harness.report.terminal import finished_lines, progress_line
from harness.repro import REPRO_SCRIPT, exact_glob, write_repro_script  # issue 5
from harness.results import Attempt, RunResult, Status, TestResult
from harness.snapshot import GuestStarter, split_group  # issue 13: boot once, restore per test
from harness.snapshot_store import SnapshotStore
from harness.spec import TestSpec
from harness.stoptoken import Stopped
from harness.suite import SuiteTest, TestContext, TestFunc
from harness.textsafe import name_safe
from harness.verdicts import ending
from harness.workdirs import private_workdir


@dataclasses.dataclass
class RunOptions:
    out_dir: Path
    jobs: int = os.cpu_count() or 1
    retries: int = 0
    log_cap: int | None = 256 << 20
    repro_base: Sequence[str] = ()  # argv that selects the same inputs, for repro lines
    progress: bool = True
    keep_failed: bool = False  # --keep: leave a failed test's guest running for a person
    # The line printed as each test finishes (None: print nothing for it); default
    # `progress_line`. harness.report.terminal's summarises skips instead of listing them.
    progress_line: Callable[[TestResult, int, int], str | None] | None = None
    # A build's boot tests: `harness run-boot-test` with the inputs (build dir or bundles
    # file, environments), to which the repro line adds the test and the environment.
    boot_test_repro_base: Sequence[str] = ()
    # What bundle image paths in reports are relative to (the build directory).
    bundle_base: Path | None = None
    terminal: Terminal | None = None  # where progress goes (default: stderr, if `progress`)
    # Start guests from snapshots (harness.snapshot); False: boot every guest (--no-snapshot).
    snapshots: bool = True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _EnvState:
    """Per-environment facts computed once per run: skip reason and image."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.checked = False
        self.unavailable: str | None = None
        self.setup: VmmSetup | None = None
        self.image: GuestImage | None = None
        self.image_error: str | None = None


class Runner:
    def __init__(
        self,
        runs: Sequence[PlannedRun],
        tests: Mapping[str, SuiteTest],
        engines: Mapping[str, Engine],
        options: RunOptions,
        *,
        image_for: Callable[[Environment], GuestImage],
        accel: Accel | None = None,
    ) -> None:
        self.runs = list(runs)
        self.tests = tests
        self.engines = engines
        self.opt = options
        self.image_for = image_for
        self.accel = accel or Accel()
        self.term = options.terminal or Terminal(enabled=options.progress)
        self.results: dict[str, TestResult] = {}
        # The crash scan's synthetic tests (tefmocheck), by the key of the test whose logs
        # they come from; reported right after it.
        self.synthetic: dict[str, list[TestResult]] = {}
        self.envs: dict[str, _EnvState] = {}
        self.limiter = anyio.CapacityLimiter(max(1, options.jobs))
        self.interrupted: str | None = None
        self.kept: list[Guest] = []  # --keep: failed tests' guests, still running
        self.serial_tester = serialtester.SerialTester()  # issue 11: Zircon entries over serial
        self.tap_locks: dict[str, anyio.Lock] = {}
        self.started = _now()
        self._t0 = time.monotonic()
        self._scope: anyio.CancelScope | None = None  # the tests' scope: `interrupt` cancels it
        self.folders = run_folders((r.environment.name, r.spec.name) for r in self.runs)
        self.output_errors: list[str] = []  # host failures (a full disk...): exit status 3
        self.recorder: Recorder | None = None
        self._finished_count = 0
        self.starter = GuestStarter(  # issue 13: how each test's guest starts
            store=SnapshotStore() if options.snapshots else None, cold_guest=self._new_guest,
            make_disks=make_disks, disk_paths=make_disk_paths, log_cap=options.log_cap,
            say=self._note)

    # -- public --------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Run every test; the results are on disk (or `output_errors` says why not)."""
        try:
            self.opt.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the results directory: {describe(e)}") from None
        for r in self.runs:
            self.results[r.key] = self._blank(r)
        recorder = self.recorder = Recorder([self.results[r.key] for r in self.runs],
                                            self.opt.out_dir, self.term, self.started)
        async with anyio.create_task_group() as outer:
            outer.start_soon(recorder.serve)
            self._scope = anyio.CancelScope()
            if self.interrupted is not None:
                self._scope.cancel()
            try:
                with self._scope:
                    async with anyio.create_task_group() as tg:
                        for group in self._groups():
                            tg.start_soon(self._run_group, group)
            finally:
                await self.starter.close()  # issue 13: the snapshots used are free again
            for r in self.runs:
                res = self.results[r.key]
                if not res.attempts:
                    why = f"not run: {self.interrupted}" if self.interrupted else "not run"
                    res.attempts.append(Attempt(Status.ABORT, message=why))
            result = self.snapshot()
            error = await recorder.close(result)
        if error is not None:
            self._output_error(error)
        if self.term.error is not None:
            self._output_error(self.term.error)
        return result

    def interrupt(self, reason: str) -> None:
        """Stop the run in order: cancel every test, tear every guest down, write results.

        Callable from the event loop at any time, before `run` too."""
        if self.interrupted is None:
            self.interrupted = reason
            self.term.say(f"\nharness: {reason}: stopping every guest and writing the results",
                          always=True)
        if self._scope is not None:
            self._scope.cancel()

    def hurry(self, reason: str) -> None:
        """A repeated interrupt: say so (the caller kills image builds' children at once)."""
        self.term.say(f"harness: {reason} again: hurrying; the results are still written and "
                      "the work directories removed", always=True)
        if self._scope is not None:
            self._scope.cancel()

    def _note(self, line: str) -> None:
        """A line about the run, not a result (the snapshot notes), in order with results."""
        if self.recorder is not None:
            self.recorder.say(line)
        else:
            self.term.say(line)

    def _output_error(self, line: str) -> None:
        if line not in self.output_errors:
            self.output_errors.append(line)

    def snapshot(self) -> RunResult:
        results: list[TestResult] = []
        for r in self.runs:
            results.append(self.results[r.key])
            results.extend(self.synthetic.get(r.key, ()))
        return RunResult(
            results=results,
            out_dir=self.opt.out_dir,
            interrupted=self.interrupted is not None,
            started=self.started,
            duration_s=time.monotonic() - self._t0,
        )

    # -- scheduling ----------------------------------------------------------------------------

    def _groups(self) -> list[list[PlannedRun]]:
        """Shareable tests of one environment form one group (one guest); others run alone.

        Runs share a guest only when they would boot the same one: the same environment,
        product bundle and test-environment kernel arguments.
        """
        shared: dict[tuple[str, str, tuple[str, ...]], list[PlannedRun]] = {}
        groups: list[list[PlannedRun]] = []
        for r in self.runs:
            if shares_guest(r, self.tests) and r.skip_reason is None:
                extra = r.spec_environment.kernel_args if r.spec_environment else ()
                shared.setdefault((r.environment.name, r.bundle_name, extra), []).append(r)
            else:
                groups.append([r])
        # Long groups first: they bound the run's wall time.
        return sorted(shared.values(), key=len, reverse=True) + groups

    async def _env_state(self, env: Environment) -> _EnvState:
        state = self.envs.setdefault(env.name, _EnvState())
        async with state.lock:
            if not state.checked:
                state.checked = True
                engine = self.engines.get(env.engine)
                if engine is None:
                    state.unavailable = f"no engine named {env.engine}"
                else:
                    try:
                        state.setup = await self.accel.resolve(engine, env)
                    except HarnessError as e:  # EnvironmentUnavailable, and a probe's error
                        state.unavailable = str(e)
                    except OSError as e:  # the KVM verdict's cache, for one
                        state.image_error = f"host error: {describe(e)}"
                        self._output_error(state.image_error)
                # A product bundle is each run's own (PlannedRun.bundle), not the environment's.
                if (state.unavailable is None and state.image_error is None
                        and not env.image.product_bundle):
                    try:
                        state.image = await anyio.to_thread.run_sync(self.image_for, env)
                    except Stopped:
                        # The run was interrupted mid-build: not the image's fault. The
                        # next checkpoint raises the cancellation that interrupted it.
                        state.checked = False
                        await anyio.lowlevel.checkpoint()
                        state.checked = True
                        state.image_error = "the image build was stopped"
                    except HarnessError as e:
                        state.image_error = str(e)
                    except OSError as e:
                        state.image_error = f"cannot build the image: {describe(e)}"
                        self._output_error(state.image_error)
        return state

    def _exclusive(self, env: Environment) -> contextlib.AbstractAsyncContextManager[None]:
        """A host resource only one guest can hold at a time: a named TAP device.

        Two crosvm guests cannot open the same TAP, so guests of environments naming
        one run one after another (taken before a capacity slot, so none idles waiting).
        """
        tap = env.tap
        if not tap:
            return contextlib.nullcontext()
        return self.tap_locks.setdefault(tap, anyio.Lock())

    async def _run_group(self, group: list[PlannedRun]) -> None:
        if len(group) > 1 and await self._isolated(group[0]):
            # issue 13: restored guests make isolation cheap: each test gets its own.
            async with anyio.create_task_group() as tg:
                for part in split_group(group, self.tests):
                    tg.start_soon(self._run_shared, part)
            return
        await self._run_shared(group)

    async def _isolated(self, run: PlannedRun) -> bool:
        # Under the TAP lock, as in an attempt: the first look at an environment may boot
        # its KVM probe, with the environment's devices.
        async with self._exclusive(run.environment):
            state = await self._env_state(run.environment)
        engine = self.engines.get(run.environment.engine)
        if state.unavailable or state.image_error or engine is None:
            return False  # its tests end at once, shared or not
        return await self.starter.isolates(run, engine)

    async def _run_shared(self, group: list[PlannedRun]) -> None:
        async with self._exclusive(group[0].environment), self.limiter:
            shared: Guest | None = None
            try:
                for run in group:
                    shared = await self._run_one(run, shared, sharing=len(group) > 1)
            finally:
                if shared is not None:
                    await shared.close()

    async def _run_one(self, run: PlannedRun, shared: Guest | None, *, sharing: bool
                       ) -> Guest | None:
        """Run every attempt of one test; returns the guest the next shared test may reuse."""
        result = self.results[run.key]
        for n in range(self.opt.retries + 1):
            attempt, shared = await self._attempt(run, n, shared if n == 0 else None,
                                                  sharing=sharing and n == 0)
            result.attempts.append(attempt)
            if attempt.status.ok or self.interrupted:
                break
            if n < self.opt.retries:
                assert self.recorder is not None
                self.recorder.say(f"        retrying {name_safe(run.key)} (attempt {n + 2} of "
                                  f"{self.opt.retries + 1})")
        # Fuchsia's crash scan over the finished test's logs (which can be large: off the
        # event loop): what it finds becomes synthetic tests next to this one.
        scan = functools.partial(synthetic_results, result, self.opt.out_dir,
                                 scan_serial=get_profile(run.environment.profile).crash_scan_serial)
        found = await anyio.to_thread.run_sync(scan)
        self._finished(result, found)
        return shared

    # -- one attempt ---------------------------------------------------------------------------

    def _folder(self, run: PlannedRun, n: int) -> Path:
        """The attempt's folder (made when something is written to it)."""
        folder = self.opt.out_dir / self.folders[(run.environment.name, run.spec.name)]
        return folder / f"attempt-{n + 1}" if n else folder

    async def _attempt(self, run: PlannedRun, n: int, shared: Guest | None, *, sharing: bool
                       ) -> tuple[Attempt, Guest | None]:
        """One attempt of `run`: what it needs from the host, a guest (booted for it, or the
        shared one), the test, and its verdict (harness.verdicts); returns the guest the
        next shared test may reuse."""
        env = run.environment
        folder = self._folder(run, n)
        attempt = Attempt(Status.PASS, start_time=_now())
        t0 = time.monotonic()
        if run.bundle_name:
            # Named on every attempt, so JUnit and summary.json say which bundle even of a
            # run that was skipped or could not boot it.
            attempt.properties["product_bundle"] = run.bundle_name
        needs = await self._needs(run, attempt)
        if needs is None:
            return attempt, shared
        image, setup = needs
        engine = self.engines[env.engine]
        result = self.results[run.key]
        result.accel, result.kernel = setup.accel, image.kernel_version
        result.vmm_version = setup.version
        func, timeout = self._test_of(run)
        guest = shared if (shared is not None and shared.running) else None
        keep: Guest | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if run.spec.is_boot_test:
                guest = self._new_guest(self._boot_environment(run), engine, image, setup,
                                        folder)
                self._write_command(folder, guest)
                await self._boot_test(run, guest, attempt, timeout)
                await self._wrap_up(attempt, guest, None, folder, t0)
                return attempt, None
            if guest is None:
                if shared is not None:
                    await shared.close()
                # issue 13: restored from the environment's snapshot, or booted.
                guest = await self.starter.new_guest(run, self._boot_environment(run), engine,
                                                     image, setup, folder)
                self._write_command(folder, guest)
                await self._boot(run, guest, attempt)
            else:
                guest.log.redirect(folder / "serial.log")
                guest.log.mark(f"test {run.spec.name}: guest shared, booted earlier")
                self._write_command(folder, guest)
            assert func is not None  # only a boot test has none
            await self._run_test(run, func, timeout, guest, folder, attempt)
            if sharing and guest.running and attempt.status == Status.PASS:
                keep = guest
        except anyio.get_cancelled_exc_class():
            attempt.status = Status.ABORT
            attempt.message = self.interrupted or "cancelled"
            with anyio.CancelScope(shield=True):
                await self._wrap_up(attempt, guest, None, folder, t0)
            self.results[run.key].attempts.append(attempt)
            raise
        except Exception as e:
            end = ending(e, deadline_s=timeout)
            attempt.status, attempt.message = end.status, end.message
            if end.details is not None:
                attempt.details = end.details
            if end.host_error:
                self._output_error(end.message)
            if end.status == Status.SKIP and sharing and guest is not None and guest.running:
                keep = guest  # a test that skips leaves the guest as it found it
        await self._wrap_up(attempt, guest, keep, folder, t0)
        if attempt.status in (Status.PASS, Status.FAIL) and guest is not None \
                and guest.log.error is not None:
            # The test passed or failed on what it saw, but its log is cut short where
            # the disk refused it: the result cannot be backed by its evidence.
            attempt.status, attempt.message = Status.INFRA_FAIL, guest.log.error
            self._output_error(guest.log.error)
            if keep is guest:
                await guest.close()
                keep = None
        return attempt, keep

    async def _needs(self, run: PlannedRun, attempt: Attempt
                     ) -> tuple[GuestImage, VmmSetup] | None:
        """The image `run` boots and the setup its VMM launches with; None, with the
        attempt's verdict set, when it cannot run (a planned skip, a bundle that cannot be
        booted, an environment or image this host cannot have)."""
        env = run.environment
        if run.skip_reason:
            attempt.status, attempt.message = Status.SKIP, run.skip_reason
            return None
        if run.bundle_problem is not None:
            # The build's fault, for the tests that need this bundle only.
            attempt.status = Status.INFRA_FAIL
            attempt.message = (f"product bundle {run.bundle_name} cannot be booted: "
                               f"{run.bundle_problem}")
            return None
        state = await self._env_state(env)
        if state.unavailable:
            attempt.status, attempt.message = cannot_run(env, state.unavailable)
            return None
        if env.image.product_bundle:
            if run.bundle is None:  # the plan skips these; only a hand-made plan gets here
                attempt.status = Status.INFRA_FAIL
                attempt.message = f"{env.name} boots a product bundle, and the run has none"
                return None
            attempt.properties.update(describe_bundle(run.bundle, self.opt.bundle_base
                                                      or run.bundle.directory))
            image = run.bundle.image(env.arch)
        elif state.image_error or state.image is None:
            attempt.status, attempt.message = cannot_run(
                env, f"guest image unavailable: {state.image_error}")
            return None
        else:
            image = state.image
        assert state.setup is not None  # resolved, or the environment is unavailable
        return image, state.setup

    def _test_of(self, run: PlannedRun) -> tuple[TestFunc | None, float]:
        """What runs in the guest for `run`, and its deadline: a suite's test (its
        timeout_secs, else the test's own), a tests.json program (its timeout_secs, else
        programs.DEFAULT_TIMEOUT_S), Fuchsia's serial tester on a Zircon guest (the timeout
        plus testrunner's grace); for a boot test nothing (it is judged from serial) and
        seriallistener's timeout."""
        test = self.tests.get(run.spec.name)
        env = run.environment
        if run.spec.is_boot_test:
            accel = run.spec_environment.accel if run.spec_environment else ""
            return None, boottest.timeout_s(run.spec.timeout_secs, accel)
        if test is not None:
            return test.func, float(run.spec.timeout_secs or test.timeout_s)
        if serialtester.handles(run.spec, env):  # issue 11: Fuchsia's tester
            return self.serial_tester.test, serialtester.outer_timeout(run.spec)
        return run_program, program_deadline(run.spec)

    async def _boot(self, run: PlannedRun, guest: Guest, attempt: Attempt) -> None:
        """Restore or launch `guest` and wait for its shell; how it started (restore or
        boot) and how long it took are properties."""
        # A test's own bootup_timeout_secs replaces the environment's boot deadline.
        boot_timeout = run.spec.bootup_timeout_secs or run.environment.boot_timeout_s
        with anyio.fail_after(boot_timeout + 30):
            # issue 13: restored from the environment's snapshot, or booted.
            _boot, started = await self.starter.start(guest, boot_timeout)
        attempt.properties.update(started)

    @staticmethod
    async def _run_test(run: PlannedRun, func: TestFunc, timeout: float, guest: Guest,
                        folder: Path, attempt: Attempt) -> None:
        """Run the test under its deadline; its cases, properties and notes go into the
        attempt whatever happens, and a failed case fails it."""
        ctx = TestContext(guest=guest, env=run.environment, spec=run.spec, folder=folder,
                          params=spec_params(run.spec))
        try:
            with anyio.fail_after(timeout):
                await func(ctx)
        finally:
            attempt.cases = ctx.cases
            attempt.properties.update(ctx.properties)
            if ctx.notes:
                attempt.details = "\n".join(ctx.notes)
        failed = [c for c in ctx.cases if c.status == Status.FAIL]
        if failed:
            attempt.status = Status.FAIL
            attempt.message = f"{len(failed)} of {len(ctx.cases)} cases failed: " + \
                ", ".join(c.name for c in failed[:5])

    def _new_guest(self, env: Environment, engine: Engine, image: GuestImage, setup: VmmSetup,
                   folder: Path) -> Guest:
        workdir = private_workdir(f"harness-{safe_name(env.name)[:24]}-")
        try:
            disks = make_disks(env, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        guest = Guest(env, engine, image, folder / "serial.log", setup=setup, workdir=workdir,
                      disks=disks, log_cap=self.opt.log_cap, own_workdir=True)
        if env.entropy_mixin:
            guest.log.redact(env.entropy_mixin.encode())
        return guest

    @staticmethod
    def _boot_environment(run: PlannedRun) -> Environment:
        """The run's environment for one boot: a Zircon guest's fresh entropy mixin
        (botanist makes one per emulator start), the test environment's kernel arguments,
        `-no-reboot` for a boot test."""
        fresh = secrets.token_hex(ENTROPY_MIXIN_BYTES)
        return run_environment(run, fresh)

    @staticmethod
    def _write_command(folder: Path, guest: Guest) -> None:
        write_file(folder / "vmm-command.txt",
                   redact(shlex.join(guest.command_line), guest.env.entropy_mixin) + "\n")

    async def _boot_test(self, run: PlannedRun, guest: Guest, attempt: Attempt,
                         timeout: float) -> None:
        """A boot test: the verdict comes from serial (harness.fuchsia.boottest)."""
        bootup = run.spec.bootup_timeout_secs
        # The verdict has its own deadlines; this one only backs them up.
        with anyio.fail_after(timeout + (bootup or 0) + 60):
            verdict = await boottest.run_boot_test(guest, timeout=timeout, bootup_timeout=bootup)
        attempt.status, attempt.message = verdict.status, verdict.message
        attempt.details = verdict.details
        attempt.cases = verdict.cases
        attempt.properties["boot_test_s"] = f"{verdict.elapsed_s:.3f}"
        attempt.properties["boot_test_timeout_s"] = f"{timeout:g}"
        if verdict.format:
            attempt.properties["format"] = verdict.format
        failed = [c for c in verdict.cases if c.status == Status.FAIL]
        if failed and verdict.status == Status.FAIL:
            attempt.message += (f"; {len(failed)} of {len(verdict.cases)} cases failed: "
                                + ", ".join(c.name for c in failed[:5]))

    async def _wrap_up(self, attempt: Attempt, guest: Guest | None, keep: Guest | None,
                       folder: Path, t0: float) -> None:
        attempt.duration_s = time.monotonic() - t0
        if guest is None:
            return
        attempt.serial_tail = guest.log.tail(8192)
        attempt.artifacts["serial.log"] = (folder / "serial.log").relative_to(
            self.opt.out_dir).as_posix()
        secret = guest.env.entropy_mixin
        if secret:
            # Crash excerpts and tails come from the console, which saw the guest's bytes.
            attempt.message = redact(attempt.message, secret)
            attempt.details = redact(attempt.details, secret)
            attempt.serial_tail = redact(attempt.serial_tail, secret)
            for case in attempt.cases:
                case.message = redact(case.message, secret)
        if guest is keep:
            return
        err = redact(guest.vmm_stderr(1 << 20), secret)  # before close() removes the workdir
        if err:
            try:
                write_file(folder / "vmm-stderr.log", err)
            except OSError as e:
                line = f"cannot write the VMM's stderr log: {describe(e)}"
                self._output_error(line)
                if attempt.status in (Status.PASS, Status.FAIL, Status.SKIP):
                    attempt.status, attempt.message = Status.INFRA_FAIL, line
        if (self.opt.keep_failed and guest.running and not self.interrupted
                and attempt.status not in (Status.PASS, Status.SKIP)):
            self.kept.append(guest)
            return
        await guest.close()

    def _finished(self, result: TestResult, found: list[TestResult]) -> None:
        """`result` is final: record it (with what the crash scan found in its logs), and
        print it once it is on disk."""
        if found:
            self.synthetic[result.key] = found
        self._finished_count += 1
        progress = (self.opt.progress_line or progress_line)(result, self._finished_count,
                                                              len(self.runs))
        lines = finished_lines(result, found, progress)
        if not result.status.ok and result.repro:
            problem = self._save_repro(result)
            if problem is not None:
                lines.append(f"        {problem}")
        assert self.recorder is not None
        self.recorder.finished(result, lines, found)

    def _save_repro(self, result: TestResult) -> str | None:
        """The repro line also goes in the test's folder, as repro.sh (issue 5); what went
        wrong writing it, if anything (the host's fault: the run's exit status is 3)."""
        try:
            script = write_repro_script(self.opt.out_dir, result)
        except OSError as e:
            problem = f"cannot write {self.opt.out_dir / result.folder / REPRO_SCRIPT}: " \
                f"{e.strerror or e}"
            self._output_error(problem)
            return problem
        if script and result.attempts:
            result.final.artifacts[REPRO_SCRIPT] = script
        return None

    def _blank(self, r: PlannedRun) -> TestResult:
        test = self.tests.get(r.spec.name)
        env = r.environment
        res = TestResult(
            test=r.spec.name,
            suite=test.suite if test else (r.spec.suite or "tests.json"),
            environment=env.name,
            engine=env.engine,
            arch=env.arch,
            blocking=env.blocking,
            label=r.spec.label,
            tags={"device_type": env.device_type, "devices": env.devices.name},
            folder=self.folders[(env.name, r.spec.name)],
            source=(inspect.getsourcefile(test.func) or "") if test else "",
        )
        if r.spec.is_boot_test and self.opt.boot_test_repro_base:
            # The developer's loop: `harness run-boot-test`, as `fx run-boot-test` does.
            res.repro = shlex.join([*self.opt.boot_test_repro_base, r.spec.name,
                                    *boottest.repro_arguments(env)])
        elif self.opt.repro_base:
            # A name starting with "-" would read as an option: `--env=NAME`, and the glob
            # starts with "[-]" (see exact_glob).
            env_arg = [f"--env={env.name}"] if env.name.startswith("-") else ["--env", env.name]
            res.repro = shlex.join([*self.opt.repro_base, *env_arg,
                                    "-k", exact_glob(r.spec.name)])  # issue 5: escaped
        return res


def cannot_run(env: Environment, reason: str) -> tuple[Status, str]:
    """The verdict of a test whose environment cannot run on this host (no engine binary,
    KVM that cannot run guests, an image that cannot be built).

    A blocking environment that was asked for and cannot run is the builder's failure,
    INFRA_FAIL: a blocking crosvm builder on a host without crosvm must not be green.
    An FYI environment is skipped with the reason: it reports, it does not gate.
    """
    if env.blocking:
        return Status.INFRA_FAIL, f"blocking environment {env.name} cannot run here: {reason}"
    return Status.SKIP, reason


def shares_guest(run: PlannedRun, tests: Mapping[str, SuiteTest]) -> bool:
    """Whether a test may run on a guest booted for an earlier one.

    Suite tests say so themselves. Programs from tests.json share, as on Fuchsia's
    emulators, unless the entry is `isolated` (Fuchsia's own field for that); a
    program that crashes or fails its guest gets it discarded all the same.
    """
    if run.spec.is_boot_test:
        return False  # the booted system is the test
    test = tests.get(run.spec.name)
    if test is not None:
        return test.shares_guest
    return not spec_params(run.spec).get("isolated", False)


def spec_params(spec: TestSpec) -> dict[str, Any]:
    """A test's parameters: the fields of its tests.json entry Fuchsia's format does not define
    (`test.args`, `test.format`, `reboot_cycles`, ...), reachable without the `test.` prefix.
    Any: JSON values, which each test checks for itself."""
    extra = dict(spec.extra)
    return {**extra, **{k.removeprefix("test."): v for k, v in extra.items()}}


def redact(text: str, secret: str) -> str:
    """`text` with `secret` written as x's (Zircon redacts its entropy mixin the same way)."""
    return text.replace(secret, "x" * len(secret)) if secret and text else text
