"""What the CLI's commands do, as functions of parsed arguments: the application layer.

Below the command line (harness.cli, which only parses) and above everything that does
the work: the runner, the engines and the reports. Kept apart from cli.py so that
`harness --help` does not import anyio, pexpect or the engines, and so that tests can
call a command without a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import difflib
import json
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio

from harness import environments as envmod
from harness import jsonfile, repro, stoptoken
from harness import plan as planmod
from harness.accel import NOT_PROBED, Accel
from harness.cache import cache_dir
from harness.disks import make_disk_paths, make_disks
from harness.engines.base import Engine, EnvironmentUnavailable, RunPaths, VmmSetup
from harness.engines.crosvm import CrosvmEngine
from harness.engines.qemu import QemuEngine
from harness.environments import Environment, EnvironmentSet
from harness.errors import (
    EXIT_FAILED,
    EXIT_INFRA,
    EXIT_NO_TESTS,
    EXIT_OK,
    ConfigError,
    HarnessError,
)
from harness.folders import safe_name
from harness.fuchsia import boottest, serialtester
from harness.fuchsia.build import PRODUCT_BUNDLES_JSON, TESTS_JSON, BundleSet, boot_skip
from harness.guest import Guest
from harness.images.build import build_image
from harness.images.environment import image_for, planned_image
from harness.images.model import GuestImage
from harness.images.store import list_images, sweep_cache
from harness.interactive import attach, interact, keep_serving
from harness.outputs import Terminal, check_writable, prepare_out_dir
from harness.parse_log import parse_log
from harness.profiles.zircon import ENTROPY_MIXIN_BYTES
from harness.report.diff import diff_runs, diff_text
from harness.report.html import REPORT_FILE, write_report, write_run_report
from harness.report.merge import merge_runs
from harness.report.summary import load_summary
from harness.report.terminal import TerminalReport, ci_outputs
from harness.results import RunResult, Status
from harness.runner import Runner, RunOptions, redact
from harness.signals import RunSignals
from harness.snapshot_store import SnapshotStore
from harness.spec import SpecEnvironment, TestSpec, load_specs, parse_specs
from harness.stability import find_summaries, report_text, stability
from harness.stoptoken import StopToken
from harness.suite import SuiteTest, default_specs, registry
from harness.textsafe import name_safe, terminal_safe
from harness.workdirs import private_workdir, sweep_stale

# What `harness plan` shows for the entropy mixin: the value is made fresh at each boot,
# and is a secret (the kernel seeds its CPRNG with it), so no command line shows it.
REDACTED_ENTROPY = "x" * (2 * ENTROPY_MIXIN_BYTES)
# A summary.json of a 3,000-test run is about 30 MiB; far beyond any real one.
MAX_SUMMARY = 1024 * jsonfile.MiB


def make_engines() -> dict[str, Engine]:
    """Every engine environments.json may name, by that name."""
    engines: list[Engine] = [QemuEngine(), CrosvmEngine()]
    return {e.name: e for e in engines}


@dataclasses.dataclass
class Inputs:
    """What a run reads: specs, environments, suites, and a Fuchsia build's product bundles.

    `testsharder`: the specs come from a tests.json (the person's or a build's), so they
    are matched to environments as Fuchsia's testsharder does; the built-in suites are
    not (harness.plan).
    """

    specs: list[TestSpec]
    envs: EnvironmentSet
    tests: dict[str, SuiteTest]
    bundles: BundleSet | None = None
    testsharder: bool = False
    build_dir: Path | None = None


def tests_file(args: argparse.Namespace) -> Path | None:
    """--tests, else the build directory's tests.json."""
    if args.tests:
        return Path(args.tests)
    build_dir = getattr(args, "build_dir", None)
    return Path(build_dir) / TESTS_JSON if build_dir else None


def bundles_file(args: argparse.Namespace) -> Path | None:
    """--product-bundles, else the build directory's product_bundles.json."""
    if getattr(args, "product_bundles", None):
        return Path(args.product_bundles)
    build_dir = getattr(args, "build_dir", None)
    return Path(build_dir) / PRODUCT_BUNDLES_JSON if build_dir else None


def load_bundles(args: argparse.Namespace) -> BundleSet | None:
    build_dir = getattr(args, "build_dir", None)
    if build_dir and not Path(build_dir).is_dir():
        raise ConfigError("command line", None, "--build-dir",
                          f"{build_dir} is not a directory")
    file = bundles_file(args)
    default = getattr(args, "product_bundle", None) or ""
    if file is None:
        if default:
            raise ConfigError("command line", None, "--product-bundle",
                              "names a bundle of a build: give --build-dir or --product-bundles")
        return None
    return BundleSet.read(file, default=default)


def load_inputs(args: argparse.Namespace) -> Inputs:
    envs = envmod.load(args.environments)
    tests = registry(extra_paths=suite_paths(args))
    bundles = load_bundles(args)
    file = tests_file(args)
    if file is not None:
        specs = load_specs(file)
    else:
        specs = parse_specs(default_specs(tests), "<built-in suites>")
    build_dir = getattr(args, "build_dir", None)
    return Inputs(specs, envs, tests, bundles, testsharder=file is not None,
                  build_dir=Path(build_dir).resolve() if build_dir else None)


def requirement_check(tests: Mapping[str, SuiteTest],
                      engines: Mapping[str, Engine]) -> planmod.Check:
    """Why a test cannot run on an environment (a planned SKIP with that reason), or None."""

    def check(spec: TestSpec, env: Environment) -> str | None:
        if spec.is_boot_test:
            return None  # the booted system is the test; its `path` is a host script
        test = tests.get(spec.name)
        if test is not None:
            unmet = test.requires.unmet(env)
            if unmet:
                return unmet
            # A device the configuration has but this engine cannot provide here (crosvm's
            # TAP-only network, for one): skipped per test, with the engine's reason.
            engine = engines.get(env.engine)
            if engine is not None:
                for device in test.requires.devices:
                    reason = engine.device_unavailable(env, device)
                    if reason:
                        return reason
            return None
        if serialtester.handles(spec, env):  # issue 11: Fuchsia's serial tester decides
            return serialtester.unrunnable(spec)
        if not spec.path:
            if spec.package_url:
                return (f"a component test ({spec.package_url}) runs through ffx over SSH, "
                        "which the harness does not drive; it runs `path` programs and boot "
                        "tests")
            return f"no built-in test named {spec.name!r} and no `path` to run in the guest"
        return None

    return check


def selection(args: argparse.Namespace, envs: EnvironmentSet) -> planmod.Selection:
    for name in args.env:
        envs.get(name)  # unknown names are an error, not an empty run
    return planmod.Selection(
        device_types=tuple(args.device_type),
        env_names=tuple(args.env),
        tags=tuple(args.tag),
        suites=tuple(args.suite),
        globs=tuple(args.globs),
    )


def shard_args(args: argparse.Namespace) -> tuple[int, int] | None:
    if args.total_shards is not None or args.shard_index is not None:
        if args.total_shards is None or args.shard_index is None:
            raise ConfigError("command line", None, "--shard-index/--total-shards",
                              "give both, or neither")
        return args.shard_index, args.total_shards
    return planmod.shard_from_environment(os.environ)


def plan_shards(args: argparse.Namespace) -> tuple[int | None, int]:
    """`harness plan`'s (shard index, total): --total-shards alone shows every shard,
    --shard-index too (or the CI's shard variables) shows that shard only."""
    if args.total_shards is not None and args.shard_index is None:
        return None, args.total_shards
    sharding = shard_args(args)
    return sharding if sharding is not None else (None, 1)


def nothing_to_run(args: argparse.Namespace, inputs: Inputs, planned: int,
                   shard: tuple[int, int] | None = None) -> int:
    """Say that the selection runs nothing, and why as far as the inputs tell; the exit
    status: 5, as pytest's "no tests collected", unless --allow-empty accepts it."""
    given = [f"{flag} {shlex.quote(value)}" for flag, values in (
        ("--device-type", args.device_type), ("--env", args.env), ("--tag", args.tag),
        ("--suite", args.suite), ("-k", args.globs)) for value in values]
    source = tests_file(args)
    what = (f"{len(inputs.specs)} entries of {source}" if source is not None
            else f"{len(inputs.specs)} built-in suite tests")
    if shard is not None and planned:
        why = f"shard {shard[0]} of {shard[1]} holds none of the {planned} selected test runs"
    elif not inputs.specs:
        why = f"{source} has no test entries" if source is not None else "no tests"
    else:
        why = (f"no test run matches the selection ({'; '.join(given) or 'no filters'}) "
               f"among {what} on {len(list(inputs.envs))} environments")
    if args.allow_empty:
        print(f"harness: nothing to run: {why} (accepted: --allow-empty)", file=sys.stderr)
        return EXIT_OK
    print(f"harness: nothing to run: {why}; exit status {EXIT_NO_TESTS} (--allow-empty "
          f"accepts an empty selection)", file=sys.stderr)
    return EXIT_NO_TESTS


def durations(args: argparse.Namespace) -> dict[str, float] | None:
    if not args.durations_from:
        return None
    jsonfile.check_file(args.durations_from, MAX_SUMMARY, "summary.json")
    run = load_summary(Path(args.durations_from))
    return {r.key: r.duration_s for r in run.results}


def build_plan(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    inputs = load_inputs(args)
    plan = planmod.make_plan(inputs.specs, inputs.envs, selection(args, inputs.envs),
                             check=requirement_check(inputs.tests, make_engines()),
                             testsharder=inputs.testsharder, bundles=inputs.bundles)
    return plan, inputs


def plan_image(run: planmod.PlannedRun) -> GuestImage:
    """The image a run boots, as `plan` shows it (nothing is built for a plan)."""
    env = run.environment
    if run.bundle is not None:
        return run.bundle.image(env.arch)
    if env.image.product_bundle:
        missing = Path(f"PRODUCT-BUNDLE-{run.bundle_name or 'NONE'}")
        return GuestImage(name=run.bundle_name, arch=env.arch, kernel=missing / "kernel",
                          initrd=missing / "zbi")
    return planned_image(env)


def planned_setups(plan: planmod.Plan, engines: Mapping[str, Engine]) -> dict[str, VmmSetup]:
    """Each planned environment's setup as a run would resolve it, without probing (the
    KVM verdict on record); what may differ in a run goes into the plan's notes."""
    accel = Accel()
    setups: dict[str, VmmSetup] = {}
    for run in plan.runs:
        env = run.environment
        if env.name in setups:
            continue
        setups[env.name], note = accel.planned(engines[env.engine], env)
        if note:
            plan.notes.append(f"{env.name}: {note}")
    return setups


def plan_command(args: argparse.Namespace) -> int:
    plan, inputs = build_plan(args)
    engines = make_engines()
    setups = planned_setups(plan, engines) if args.json else {}
    argvs: dict[tuple[str, str, tuple[str, ...], bool], list[str]] = {}

    def argv_for(run: planmod.PlannedRun) -> list[str] | None:
        """The VMM command of `run`: the same for every run of one environment that boots
        the same image with the same kernel arguments, so it is worked out once per such
        run (looking up the image reads files)."""
        extra = run.spec_environment.kernel_args if run.spec_environment is not None else ()
        key = (run.environment.name, run.bundle_name, tuple(extra), run.spec.is_boot_test)
        argv = argvs.get(key)
        if argv is None:
            env = planmod.run_environment(run, REDACTED_ENTROPY)
            argv = argvs[key] = planned_argv(engines[env.engine], env, plan_image(run),
                                             setups[env.name])
        return argv

    index, total = plan_shards(args)
    if args.json:
        # Streamed: 50,000 runs are a few MB of text, never a few GB of objects.
        count = planmod.write_plan_json(plan, argv_for, sys.stdout, total_shards=total,
                                        durations=durations(args), shard_index=index)
    else:
        sys.stdout.write(planmod.plan_text(plan, total_shards=total, durations=durations(args),
                                           shard_index=index))
        count = len(plan.runs) if index is None else \
            len(planmod.shard(plan.runs, index, total, durations=durations(args)))
    sys.stdout.flush()
    if not count:
        return nothing_to_run(args, inputs, len(plan.runs),
                              (index, total) if index is not None else None)
    return EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    if args.interactive:
        plan, inputs = build_plan(args)
        return interactive_command(args, plan, inputs.envs)
    # Handlers for the whole run, from before the inputs are read to the last line.
    with RunSignals() as signals:
        return _run(args, signals)


def _run(args: argparse.Namespace, signals: RunSignals) -> int:
    term = Terminal(enabled=not args.quiet)
    plan, inputs = build_plan(args)
    runs = plan.runs
    sharding = shard_args(args)
    if sharding:
        runs = planmod.shard(runs, sharding[0], sharding[1], durations=durations(args))
        planmod.acknowledge_sharding(os.environ)
    out = Path(args.out) if args.out else default_out_dir()
    # Before anything runs: a results directory or cache the host will not let us write
    # is one line naming it now, not a traceback an hour in.
    cache = cache_dir()
    check_writable(cache, "the cache directory" + (" (HARNESS_CACHE_DIR)"
                                                   if os.environ.get("HARNESS_CACHE_DIR") else ""))
    cleaned = prepare_out_dir(out)
    if cleaned:
        term.say(cleaned, always=True)
    if not args.out:
        _point_latest(out)
    # What killed runs left behind (their owners are gone): guests' work directories with
    # their disk images, and image builds' work directories in the cache.
    stale = sweep_stale()
    sweep_cache(cache)
    if stale:
        term.say(f"harness: removed {_count(len(stale), 'work directory')} left by runs that "
                 "were killed", always=True)
    options = RunOptions(
        out_dir=out, jobs=args.jobs, retries=args.retries,
        log_cap=(args.log_cap_mib << 20) or None,
        repro_base=repro_base(args), progress=not args.quiet, keep_failed=args.keep,
        terminal=term,
        boot_test_repro_base=boot_test_repro_base(args),
        bundle_base=_bundle_base(inputs),
        snapshots=getattr(args, "snapshots", True),
    )
    n_envs = len({r.environment.name for r in runs})
    term.say(f"harness: {_count(len(runs), 'test run')} on {_count(n_envs, 'environment')}, "
             f"{args.jobs} at a time; results in {out}")
    status = _execute(args, runs, inputs.tests, options, signals)
    if not runs and status == EXIT_OK:  # the (empty) results are written all the same
        return nothing_to_run(args, inputs, len(plan.runs), sharding)
    return status


def _bundle_base(inputs: Inputs) -> Path | None:
    if inputs.build_dir is not None:
        return inputs.build_dir
    return inputs.bundles.base if inputs.bundles is not None else None


def boot_test_repro_base(args: argparse.Namespace) -> list[str]:
    """`harness run-boot-test` with the same inputs; the runner adds the test and environment."""
    base = [*repro.harness_command(), "run-boot-test"]
    for arg in getattr(args, "cmdline", None) or ():
        base += ["-c", arg]
    for name in getattr(args, "test_filter", None) or ():
        base += ["--test-filter", name]
    for count in getattr(args, "count", None) or ():
        base += ["--count", count]
    return base + input_args(args)


def _execute(args: argparse.Namespace, runs: list[planmod.PlannedRun],
             tests: Mapping[str, SuiteTest], options: RunOptions, signals: RunSignals) -> int:
    """Run `runs` (each finished test on disk before the terminal says so), print the closing
    report; the exit status."""
    term = options.terminal or Terminal(enabled=options.progress)
    report = TerminalReport.for_stream(sys.stderr, os.environ)
    options = dataclasses.replace(options, terminal=term, progress_line=report.progress)
    runner = Runner(runs, tests, make_engines(), options, image_for=image_for)
    stop = StopToken()
    signals.record_only()

    async def main() -> RunResult:
        stoptoken.CURRENT.set(stop)  # image builds in worker threads find it (stoptoken.py)

        def deliver(sig: signal.Signals, count: int) -> None:
            if count == 1:
                stop.stop(f"interrupted by {sig.name}")
                runner.interrupt(f"interrupted by {sig.name}")
            else:
                stop.hurry()
                runner.hurry(sig.name)

        signals.attach(deliver)
        result = await runner.run()
        signals.results_final()
        if runner.kept:
            try:
                await keep_serving(runner.kept, say=lambda line: term.say(line, always=True),
                                   until=signals.wait)
            finally:
                for guest in runner.kept:
                    await guest.close()
        return result

    result: RunResult = anyio.run(main, backend="asyncio")
    signals.detach()
    report_run_end(term, result, report)
    status = signals.exit_status
    if status is not None:
        return status
    if runner.output_errors:
        for line in runner.output_errors:
            term.say(f"harness: infrastructure: {line}", always=True)
        return EXIT_INFRA
    if getattr(args, "command", "") == "run-boot-test":
        # The developer asked for this one test: anything but a pass is a failure.
        return EXIT_OK if all(r.status == Status.PASS for r in result.results) else EXIT_FAILED
    return EXIT_FAILED if result.blocking_failed else EXIT_OK


def report_run_end(term: Terminal, run: RunResult, terminal: TerminalReport) -> None:
    """The closing report on the terminal, and GitHub's annotations and step summary."""
    diffs = diff_runs(run, run, left_label=str(run.out_dir), right_label=str(run.out_dir))
    report = run.out_dir / REPORT_FILE
    files = [f"junit: {run.out_dir / 'junit.xml'}"]
    if report.exists():
        files.append(f"report: {report}")
    term.say(terminal.closing(run, files=files, diffs=diffs))
    ci_outputs(run, diffs, environ=os.environ, stdout=sys.stdout,
               report=str(report) if report.exists() else "")


def report_command(args: argparse.Namespace) -> int:
    """`harness report RESULTS_DIR... --out DIR`: the static HTML report of one or many runs."""
    if args.last < 1:
        raise ConfigError("command line", None, "--last", f"must be at least 1, not {args.last}")
    index = write_report([Path(d) for d in args.dirs], Path(args.out), last=args.last)
    print(f"report: {index}")
    return EXIT_OK


def diff_command(args: argparse.Namespace) -> int:
    """`harness diff RUN_A [RUN_B] [--env A --env B] [--json]`: exit 1 when a verdict differs."""
    if len(args.runs) > 2:
        raise ConfigError("command line", None, "RUN", f"give one or two runs, not "
                          f"{len(args.runs)}")
    loaded = []
    for d in args.runs:
        summaries = find_summaries([Path(d)])
        if len(summaries) != 1:
            raise ConfigError(d, None, None, f"holds {len(summaries)} runs; name one run "
                              "directory")
        loaded.append((d, load_summary(summaries[0])))
    left_label, left = loaded[0]
    right_label, right = loaded[-1]
    diffs = diff_runs(left, right, left_label=left_label, right_label=right_label,
                      envs=tuple(args.env))
    if not diffs:
        raise ConfigError("command line", None, "--env",
                          "no pair of environments to compare (no crosvm environment with a "
                          "QEMU one of the same arch and device set); name them with "
                          "--env LEFT --env RIGHT")
    if args.json:
        print(json.dumps({"differs": any(d.differs for d in diffs),
                          "pairs": [d.to_json() for d in diffs]}, indent=1))
    else:
        print(diff_text(diffs), end="")
    return EXIT_FAILED if any(d.differs for d in diffs) else EXIT_OK


def _point_latest(out: Path) -> None:
    """results/latest -> the newest run (a convenience: failing to update it is no error)."""
    latest = out.parent / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() or not latest.exists():
            tmp = out.parent / f".latest.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(out.name)
            os.replace(tmp, latest)


def interactive_command(args: argparse.Namespace, plan: planmod.Plan, envs: EnvironmentSet) -> int:
    """Boot the one selected environment and give its console to the person at the terminal."""
    names = sorted({r.environment.name for r in plan.runs}) or list(args.env)
    if len(names) != 1:
        raise ConfigError("command line", None, "--interactive",
                          f"select exactly one environment with --env (selected: "
                          f"{', '.join(names) or 'none'})")
    env = envs.get(names[0])
    engine = make_engines()[env.engine]
    out = Path(args.out) if args.out else Path("results") / "interactive"
    out.mkdir(parents=True, exist_ok=True)

    async def main() -> int:
        setup = await resolve_or_say(engine, env)
        image = await anyio.to_thread.run_sync(image_for, env)
        workdir = private_workdir(f"harness-{safe_name(env.name)[:24]}-")
        log = out / f"{safe_name(env.name)}-serial.log"
        guest = Guest(env, engine, image, log, setup=setup, workdir=workdir,
                      disks=make_disks(env, workdir), own_workdir=True)
        try:
            print(f"booting {name_safe(env.name)}: {terminal_safe(' '.join(guest.command_line))}",
                  file=sys.stderr)
            boot = await guest.start()
            print(f"\r\n[harness] {name_safe(env.name)} is up after {boot.ready_s:.1f} s; this "
                  "is its serial console. Ctrl-] leaves and tears the guest down.\r",
                  file=sys.stderr)
            guest.console.sendline("")
            await interact(guest.console)
        finally:
            await guest.close()
        print(f"\r\n[harness] {name_safe(env.name)} stopped; serial log: {log}", file=sys.stderr)
        return EXIT_OK

    return anyio.run(main, backend="asyncio")


# -- the driver developer's loop: `harness run-boot-test` -----------------------------------


def run_boot_test_command(args: argparse.Namespace) -> int:
    """One boot test of a build on crosvm or QEMU, as `fx run-boot-test` runs it.

    tools/devshell/contrib/run-boot-test.py: the build directory comes from the
    command line or FUCHSIA_BUILD_DIR, the arch from --arch or FUCHSIA_ARCH; the boot
    tests are tests.json's `is_boot_test` entries whose product bundle is for that
    arch; a name picks one by the same fuzzy match (difflib, cutoff 0.8, an exact name
    wins); without a name they are listed. The test's own environments do not matter:
    `--crosvm` boots it on crosvm, otherwise on QEMU (environments fuchsia-crosvm-ARCH
    and fuchsia-qemu-ARCH, or --env). `-c ARG` adds kernel arguments, `--test-filter`
    and `--count` are the `--gtest_filter=` and `--gtest_repeat=` shorthands. The verdict
    is the harness's (harness.fuchsia.boottest), and the results are written as a
    run's; `--interactive` hands the serial console to the person instead.
    """
    if not args.build_dir and not (args.tests and args.product_bundles):
        args.build_dir = os.environ.get("FUCHSIA_BUILD_DIR") or None
        if not args.build_dir:
            raise ConfigError("command line", None, "--build-dir",
                              "give the Fuchsia build directory (or set FUCHSIA_BUILD_DIR, as "
                              "fx does), or --tests and --product-bundles")
    envs = envmod.load(args.environments)
    bundles = load_bundles(args)
    file = tests_file(args)
    assert bundles is not None and file is not None
    arch = args.arch or os.environ.get("FUCHSIA_ARCH") or ""

    def cpu_of(spec: TestSpec) -> str:
        entry = bundles.entries.get(spec.product_bundle or bundles.default)
        return entry.cpu if entry is not None else ""

    boot_tests = [s for s in load_specs(file) if s.is_boot_test
                  and (not arch or cpu_of(s) == arch)]
    if not boot_tests:
        print(f"harness: no boot tests in {file}" + (f" for {arch}" if arch else ""),
              file=sys.stderr)
        return EXIT_OK
    if not args.name:
        for spec in sorted(boot_tests, key=lambda s: s.name):
            _print_boot_test(spec, bundles, cpu_of(spec))
        return EXIT_OK
    spec = _pick_boot_test(args.name, boot_tests, cpu_of)
    bundle = bundles.load(spec.product_bundle or bundles.default) if (
        spec.product_bundle or bundles.default) else None
    if bundle is None:
        raise ConfigError(str(file), f"entry {spec.index} ({json.dumps(spec.name)})",
                          "product_bundle", "names no product bundle; give --product-bundle")
    vmm = "crosvm" if args.crosvm else "qemu"  # fx run-boot-test's --crosvm, or its default
    env = envs.get(args.env or boottest.developer_environment(vmm, bundle.cpu))
    if not env.image.product_bundle:
        raise ConfigError("command line", None, "--env",
                          f"{env.name} does not boot a product bundle (its image is "
                          f"{json.dumps(env.image.name)})")
    _name, chosen, problem = bundles.choose(spec.product_bundle, env)
    if problem is not None or chosen is None:
        raise ConfigError("command line", None, "--env" if args.env else "--arch", problem or "")
    why_not = boot_skip(chosen, env)
    if why_not:
        raise HarnessError(f"cannot run {spec.name} on {env.name}: {why_not}")
    run = planmod.PlannedRun(spec=spec, environment=env,
                             spec_environment=_developer_spec_env(spec, env, args),
                             bundle_name=chosen.name, bundle=chosen)
    engine = make_engines()[env.engine]
    argv = engine.command(planmod.run_environment(run, REDACTED_ENTROPY), chosen.image(env.arch),
                          RunPaths(workdir=Path("/tmp/harness-WORKDIR")),
                          Accel().planned(engine, env)[0])
    _print_boot_test(spec, bundles, chosen.cpu, command=argv)
    out = Path(args.out) if args.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    if args.interactive:
        return _interactive_boot_test(run, out)
    options = RunOptions(out_dir=out, jobs=1, progress=not args.quiet,
                         boot_test_repro_base=boot_test_repro_base(args),
                         bundle_base=Path(args.build_dir).resolve() if args.build_dir
                         else bundles.base)
    with RunSignals() as signals:
        return _execute(args, [run], {}, options, signals)


def _pick_boot_test(name: str, boot_tests: list[TestSpec],
                    cpu_of: Callable[[TestSpec], str]) -> TestSpec:
    """run-boot-test.py's choice: an exact name, else the one close match (cutoff 0.8)."""
    names = sorted({s.name for s in boot_tests})
    if name in names:
        chosen = name
    else:
        close = difflib.get_close_matches(name, names, cutoff=0.8)
        if not close:
            raise ConfigError("command line", None, "NAME",
                              f"no boot test closely matches {name!r} (boot tests: "
                              f"{', '.join(names)})")
        if len(close) > 1:
            raise ConfigError("command line", None, "NAME",
                              f"{name!r} is not a boot test; the closest: {', '.join(close)}")
        chosen = close[0]
    found = [s for s in boot_tests if s.name == chosen]
    if len(found) > 1:
        cpus = ", ".join(sorted({cpu_of(s) for s in found}))
        raise ConfigError("command line", None, "--arch",
                          f"{chosen} is a boot test for several cpus ({cpus}): say which")
    return found[0]


def _developer_spec_env(spec: TestSpec, env: Environment,
                        args: argparse.Namespace) -> SpecEnvironment:
    """The test's own environment for this engine (for its emulator settings), plus the
    person's kernel arguments, which come last."""
    own = next((e for e in spec.environments if e.device_type == env.device_type), None)
    base = own or SpecEnvironment(dimensions=dict(env.dimensions))
    extra = [*args.cmdline, *(f"--gtest_filter={t}" for t in args.test_filter),
             *(f"--gtest_repeat={n}" for n in args.count)]
    if not extra:
        return base
    emulator = {**(base.emulator or {}), "kernel_args": [*base.kernel_args, *extra]}
    return dataclasses.replace(base, emulator=emulator)


def _print_boot_test(spec: TestSpec, bundles: BundleSet, cpu: str,
                     command: list[str] | None = None) -> None:
    """A boot test as run-boot-test.py prints one."""
    name = spec.product_bundle or bundles.default
    lines = [f"* {spec.name} (product bundle {name or 'none'})"]
    if spec.label:
        lines.append(f"    label: {spec.label}")
    lines.append(f"    cpu: {cpu or 'Unknown!'}")
    try:
        bundle = bundles.load(name) if name else None
    except ConfigError as e:
        lines.append(f"    cannot boot: {e}")
        bundle = None
    if bundle is not None:
        for key, value in (("kernel", bundle.kernel), ("zbi", bundle.zbi),
                           ("efi disk", bundle.efi_disk)):
            if value is not None:
                lines.append(f"    {key}: {value}")
    if command:
        lines.append(f"    command: {shlex.join(command)}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _interactive_boot_test(run: planmod.PlannedRun, out: Path) -> int:
    """Boot the bundle and give its serial console to the person; the verdict afterwards."""
    bundle = run.bundle
    assert bundle is not None
    env = planmod.run_environment(run, secrets.token_hex(ENTROPY_MIXIN_BYTES))
    engine = make_engines()[env.engine]
    log = out / "serial.log"

    async def main() -> None:
        setup = await resolve_or_say(engine, env)
        guest = Guest(env, engine, bundle.image(env.arch), log, setup=setup,
                      workdir=private_workdir(f"harness-{env.name[:24]}-"), own_workdir=True)
        guest.log.redact(env.entropy_mixin.encode())
        try:
            print(f"booting {run.spec.name} on {env.name}: "
                  f"{redact(shlex.join(guest.command_line), env.entropy_mixin)}",
                  file=sys.stderr)
            await guest.launch()
            print(f"[harness] {run.spec.name} is booting; this is its serial console. Ctrl-] "
                  f"leaves and tears the guest down.\r", file=sys.stderr)
            await interact(guest.console)
        finally:
            await guest.close()

    anyio.run(main, backend="asyncio")
    verdict = boottest.verdict_from_log(log.read_bytes() if log.exists() else b"")
    said = "PASS: the success string was read" if verdict.status == Status.PASS \
        else f"{verdict.status.value}: {verdict.message}"
    print(f"\r\n[harness] {run.spec.name} on {env.name}: {said} (serial log: {log})",
          file=sys.stderr)
    return EXIT_OK if verdict.status == Status.PASS else EXIT_FAILED


def images_command(args: argparse.Namespace) -> int:
    if args.images_command == "list":
        rows = list_images()
        if not rows:
            print("no images built yet: run `harness images build`")
        for row in rows:
            print(json.dumps(row))
        # issue 13: the saved guests tests restore from, least recently used first (the
        # first to go when the cache passes its cap).
        for row in SnapshotStore().rows():
            print(json.dumps(row))
        return EXIT_OK
    envs = envmod.load(args.environments)
    wanted = sorted({(e.image.name, e.arch) for e in envs if e.image.embedded})
    if args.arch:
        wanted = [w for w in wanted if w[1] in args.arch]
    if args.name:
        wanted = [w for w in wanted if w[0] in args.name]
    check_writable(cache_dir(), "the cache directory")
    # A signal raises Interrupted where the build is; the build stops its child process
    # and removes its work directories on the way out (harness.images.tools.run_step).
    with RunSignals():
        for name, arch in wanted:
            image = build_image(name, arch, force=args.force)
            print(f"{name} {arch}: {image.kernel.parent} (kernel {image.kernel_version})")
    return EXIT_OK


def doctor_command(args: argparse.Namespace) -> int:
    envs = envmod.load(args.environments)
    engines = make_engines()
    report: dict[str, object] = {}

    async def gather() -> None:
        qemu = engines["qemu"]
        for arch in envmod.ARCHES:
            binary = qemu.locate(arch).path
            version = ""
            if binary:
                proc = await anyio.run_process([binary, "--version"], check=False)
                version = proc.stdout.decode(errors="replace").splitlines()[0]
            report[f"qemu {arch}"] = {"binary": binary, "version": version}
        accel = Accel()
        for env in envs:
            engine = engines[env.engine]
            setup: VmmSetup | None = None
            try:
                setup = await accel.resolve(engine, env)
            except HarnessError as e:  # EnvironmentUnavailable, and a probe's error
                reason: str | None = str(e)
            else:
                reason = None
            found = engine.locate(env.arch)
            verdict = accel.known(engine, env, found.path) if found.path else None
            report[f"environment {env.name}"] = {
                "engine": env.engine, "runs_here": reason is None, "reason": reason,
                "accel": setup.accel if setup is not None else None,
                "kvm_verdict": verdict.reason if verdict is not None else NOT_PROBED,
                # issue 13: whether its tests start from a restore, and if not why.
                "snapshot": ("off: \"snapshot\": false" if not env.snapshot else
                             "off: a product bundle boots" if env.image.product_bundle else
                             await engine.snapshot_unavailable(env) or "ok")}
        crosvm = engines["crosvm"]
        if isinstance(crosvm, CrosvmEngine):
            # The parser check: each crosvm environment's command line as `harness plan`
            # prints it, through the real parser (CrosvmEngine.parse_check).
            # Environments booting a build's product bundle have no command line without
            # a build (`plan` does not plan them either).
            argvs = {env.name: planned_argv(crosvm, env, planned_image(env),
                                            accel.planned(crosvm, env)[0])
                     for env in envs if env.engine == crosvm.name and not env.image.product_bundle}
            report["crosvm"] = await crosvm.doctor(envs, argvs)

    anyio.run(gather, backend="asyncio")
    report["images"] = list_images()
    print(json.dumps(report, indent=1, default=str))
    return EXIT_OK


def planned_argv(engine: Engine, env: Environment, image: GuestImage,
                 setup: VmmSetup) -> list[str]:
    """`env`'s VMM command line as `harness plan` prints it: the image as built (or where it
    will be), the setup as resolved without probing, the workdir a placeholder."""
    workdir = (Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"harness-{env.name}")
    return engine.command(env, image, RunPaths(
        workdir=workdir, disks=tuple(make_disk_paths(env, workdir))), setup)


async def resolve_or_say(engine: Engine, env: Environment) -> VmmSetup:
    """The setup `env` launches with, or a HarnessError saying why it cannot run here."""
    try:
        return await Accel().resolve(engine, env)
    except EnvironmentUnavailable as e:
        raise HarnessError(f"{env.name} cannot run here: {e}") from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- the smaller commands ---------------------------------------------------------------------


def parse_command(args: argparse.Namespace) -> int:
    """`harness parse LOG`: a saved serial log re-read offline, as JSON on stdout."""

    def read(name: str | None) -> bytes | None:
        if name is None:
            return None
        path = Path(name)
        try:
            return path.read_bytes()
        except OSError as e:
            raise ConfigError(str(path), None, None, f"cannot read: {e.strerror}") from None

    data = read(args.log) or b""
    print(json.dumps(parse_log(data, profile=args.profile, fmt=args.fmt, booted=args.booted,
                               host_log=read(args.host_log), syslog=read(args.syslog),
                               outcome=args.outcome), indent=1))
    return EXIT_OK


def attach_command(args: argparse.Namespace) -> int:
    """`harness attach SOCKET`: the console of a guest `run --keep` left running."""
    return anyio.run(attach, Path(args.socket), backend="asyncio")


def merge_command(args: argparse.Namespace) -> int:
    """`harness merge DIR... --out DIR`: shards' results as one run."""
    run = merge_runs([Path(d) for d in args.dirs], Path(args.out))
    write_run_report(run)
    print(f"merged {len(run.results)} results into {args.out}")
    return EXIT_FAILED if run.blocking_failed else EXIT_OK


def stability_command(args: argparse.Namespace) -> int:
    """`harness stability RESULTS_DIR...`: pass rates, flakes, trends, FYI readiness."""
    report = stability([Path(d) for d in args.dirs], args.last)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report_text(report), end="")
    return EXIT_OK


def repro_command(args: argparse.Namespace) -> list[str] | None:
    """`harness repro RESULTS_DIR TEST`: the `harness` arguments that re-run the test, for
    the command line to run in this process; None when they were only to be printed."""
    found = repro.load_repro(Path(args.results_dir), args.test, args.env)
    again = list(found.args)
    if args.out:
        again += ["--out", args.out]
    command = shlex.join([*repro.harness_command(), *again])
    if args.print_only:
        print(command)  # exact, for a pipe or a script (the terminal lines below are escaped)
        return None
    result = found.result
    if result.status.ok:
        print(f"harness repro: note: {name_safe(result.key)} was {result.status.value} in that "
              "run", file=sys.stderr)
    print(f"harness repro: {name_safe(result.key)}: {terminal_safe(command)}", file=sys.stderr,
          flush=True)
    return again


# -- what several commands share ----------------------------------------------------------------


def default_out_dir() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{stamp}-{os.getpid()}"


def repro_base(args: argparse.Namespace) -> list[str]:
    """The argv that selects the same inputs again (the repro line adds --env and -k)."""
    # issue 5: the harness by absolute path (venv script or `python -m harness`), so the
    # line pastes as is in a shell without the venv active; see harness.repro.harness_command.
    base = [*repro.harness_command(), "run"]
    for path in suite_paths(args):
        base += ["--suite-path", str(path.resolve())]
    return base + input_args(args)


def input_args(args: argparse.Namespace) -> list[str]:
    """The options naming the run's inputs (tests.json, build, bundles, environments), with
    absolute paths: what a repro line or repro.sh passes again to select the same tests."""
    out: list[str] = []
    if args.tests:
        out += ["--tests", str(Path(args.tests).resolve())]
    if getattr(args, "build_dir", None):
        out += ["--build-dir", str(Path(args.build_dir).resolve())]
    if getattr(args, "product_bundles", None):
        out += ["--product-bundles", str(Path(args.product_bundles).resolve())]
    if getattr(args, "product_bundle", None):
        out += ["--product-bundle", args.product_bundle]
    if args.environments:
        out += ["--environments", str(Path(args.environments).resolve())]
    return out


def suite_paths(args: argparse.Namespace) -> list[Path]:
    """--suite-path, then HARNESS_SUITE_PATH (':'-separated)."""
    paths = [Path(p) for p in getattr(args, "suite_path", [])]
    env = os.environ.get("HARNESS_SUITE_PATH", "")
    paths += [Path(p) for p in env.split(":") if p]
    return paths
