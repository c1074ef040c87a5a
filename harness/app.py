"""What the CLI's commands do, as functions of parsed arguments.

Kept apart from cli.py so that `harness --help` does not import anyio, pexpect
or the engines, and so that tests can call a command without a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from harness import environments as envmod
from harness import plan as planmod
from harness.engines.base import Engine, RunPaths
from harness.engines.qemu import QemuEngine
from harness.environments import Environment, EnvironmentSet
from harness.errors import ConfigError, HarnessError
from harness.fuchsia import serialtester
from harness.images.model import GuestImage
from harness.results import RunResult
from harness.spec import TestSpec, load_specs, parse_specs
from harness.suite import SuiteTest, default_specs, registry

if TYPE_CHECKING:
    from harness.report.terminal import TerminalReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def make_engines() -> dict[str, Engine]:
    from harness.engines.crosvm import CrosvmEngine

    return {"qemu": QemuEngine(), "crosvm": CrosvmEngine()}


def image_for(env: Environment, *, build: bool = True) -> GuestImage:
    """The kernel and initramfs an environment boots (building the embedded one if needed)."""
    if not env.image.embedded:
        assert env.image.kernel is not None
        return GuestImage(name=env.image.name, arch=env.arch, kernel=env.image.kernel,
                          initrd=env.image.initrd, kernel_uncompressed=env.image.kernel)
    from harness.images import ensure_image

    return ensure_image(env.image.name, env.arch, build=build)


def load_inputs(args: argparse.Namespace) -> tuple[list[TestSpec], EnvironmentSet,
                                                     dict[str, SuiteTest]]:
    from harness.cli import suite_paths

    envs = envmod.load(args.environments)
    tests = registry(extra_paths=suite_paths(args))
    if args.tests:
        specs = load_specs(args.tests)
    else:
        specs = parse_specs(default_specs(tests), "<built-in suites>")
    return specs, envs, tests


def requirement_check(tests: Mapping[str, SuiteTest],
                      engines: Mapping[str, Engine]):  # type: ignore[no-untyped-def]
    def check(spec: TestSpec, env: Environment) -> str | None:
        test = tests.get(spec.name)
        if test is not None:
            unmet = test.requires.unmet(env)
            if unmet:
                return unmet
            # A device the configuration has but this engine cannot provide here (crosvm's
            # TAP-only network, for one): skipped per test, with the engine's reason.
            engine = engines.get(env.engine)
            per_device = getattr(engine, "device_unavailable", None)
            if per_device is not None:
                for device in test.requires.devices:
                    reason = per_device(env, device)
                    if reason:
                        return reason
            return None
        if serialtester.handles(spec, env):  # issue 11: Fuchsia's serial tester decides
            return serialtester.unrunnable(spec)
        if not spec.path:
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


def durations(args: argparse.Namespace) -> dict[str, float] | None:
    if not args.durations_from:
        return None
    from harness.report.summary import load_summary

    run = load_summary(Path(args.durations_from))
    return {r.key: r.duration_s for r in run.results}


def build_plan(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    specs, envs, tests = load_inputs(args)
    plan = planmod.make_plan(specs, envs, selection(args, envs),
                             check=requirement_check(tests, make_engines()))
    return plan, envs, tests


def plan_command(args: argparse.Namespace) -> int:
    plan, _envs, _tests = build_plan(args)
    engines = make_engines()
    placeholder = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "harness-ENV"

    def argv_for(run: planmod.PlannedRun) -> list[str] | None:
        env = run.environment
        try:
            image = image_for(env, build=False)
        except HarnessError:
            image = _unbuilt_image(env)
        from harness.runner import make_disk_paths

        workdir = placeholder.with_name(f"harness-{env.name}")
        return engines[env.engine].command(env, image, RunPaths(
            workdir=workdir, disks=tuple(make_disk_paths(env, workdir))))

    sharding = shard_args(args)
    total = sharding[1] if sharding else 1
    if args.json:
        print(json.dumps(planmod.plan_json(plan, argv_for, total_shards=total,
                                           durations=durations(args)), indent=1))
    else:
        print(planmod.plan_text(plan, total_shards=total, durations=durations(args)))
    return EXIT_OK


def _unbuilt_image(env: Environment) -> GuestImage:
    """Stand-in paths for `plan` before `harness images build` ran (the plan says so)."""
    from harness.images import cache_dir

    base = cache_dir() / "images" / f"{env.image.name}-{env.arch}-NOT-BUILT"
    return GuestImage(name=env.image.name, arch=env.arch, kernel=base / "kernel",
                      initrd=base / "initrd.cpio.gz", kernel_uncompressed=base / "kernel",
                      kernel_elf=base / "vmlinux" if env.arch == "x86_64" else None)


def run_command(args: argparse.Namespace) -> int:
    from harness.cli import default_out_dir, repro_base
    from harness.report.terminal import TerminalReport
    from harness.runner import Runner, RunOptions

    plan, envs, tests = build_plan(args)
    if args.interactive:
        return interactive_command(args, plan, envs)
    runs = plan.runs
    sharding = shard_args(args)
    if sharding:
        runs = planmod.shard(runs, sharding[0], sharding[1], durations=durations(args))
        planmod.acknowledge_sharding(os.environ)
    if args.jobs < 1:
        raise ConfigError("command line", None, "--jobs", "must be at least 1")
    out = Path(args.out) if args.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    if not args.out:
        latest = out.parent / "latest"
        if latest.is_symlink() or not latest.exists():
            tmp = out.parent / f".latest.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(out.name)
            os.replace(tmp, latest)
    terminal = TerminalReport.for_stream(sys.stderr, os.environ)
    options = RunOptions(
        out_dir=out, jobs=args.jobs, retries=args.retries,
        log_cap=(args.log_cap_mib << 20) or None,
        repro_base=repro_base(args), progress=not args.quiet, keep_failed=args.keep,
        progress_line=terminal.progress,
    )
    if not runs:
        print("harness: nothing selected to run", file=sys.stderr)
    n_envs = len({r.environment.name for r in runs})
    _say(args, f"harness: {_count(len(runs), 'test run')} on {_count(n_envs, 'environment')}, "
               f"{args.jobs} at a time; results in {out}")
    runner = Runner(runs, tests, make_engines(), options, image_for=image_for,
                    on_result=write_run_files)

    async def main() -> RunResult:
        result = await runner.run()
        write_run_files(result)
        if runner.kept:
            from harness.interactive import keep_serving

            try:
                await keep_serving(runner.kept, say=lambda line: print(line, file=sys.stderr))
            finally:
                for guest in runner.kept:
                    await guest.close()
        return result

    result: RunResult = anyio.run(main, backend="asyncio")
    report_run_end(args, result, terminal)
    if result.interrupted:
        return 130 if runner.interrupted and "SIGINT" in runner.interrupted else 143
    return EXIT_FAILED if result.blocking_failed else EXIT_OK


def write_run_files(run: RunResult) -> None:
    """junit.xml and summary.json, then report.html (a secondary view: a failure to render
    it is said, never allowed to stop the run or lose the results already written)."""
    from harness.report import write_reports
    from harness.report.html import write_run_report

    write_reports(run)
    try:
        write_run_report(run)
    except Exception as e:  # a bug in the HTML view must not cost the run
        print(f"harness: report.html not written: {type(e).__name__}: {e}", file=sys.stderr)


def report_run_end(args: argparse.Namespace, run: RunResult, terminal: TerminalReport) -> None:
    """The closing report on the terminal, and GitHub's annotations and step summary."""
    from harness.report.diff import diff_runs
    from harness.report.html import REPORT_FILE
    from harness.report.terminal import ci_outputs

    diffs = diff_runs(run, run, left_label=str(run.out_dir), right_label=str(run.out_dir))
    report = run.out_dir / REPORT_FILE
    files = [f"junit: {run.out_dir / 'junit.xml'}"]
    if report.exists():
        files.append(f"report: {report}")
    _say(args, terminal.closing(run, files=files, diffs=diffs))
    ci_outputs(run, diffs, environ=os.environ, stdout=sys.stdout,
               report=str(report) if report.exists() else "")


def report_command(args: argparse.Namespace) -> int:
    """`harness report RESULTS_DIR... --out DIR`: the static HTML report of one or many runs."""
    from harness.report.html import write_report

    if args.last < 1:
        raise ConfigError("command line", None, "--last", f"must be at least 1, not {args.last}")
    index = write_report([Path(d) for d in args.dirs], Path(args.out), last=args.last)
    print(f"report: {index}")
    return EXIT_OK


def diff_command(args: argparse.Namespace) -> int:
    """`harness diff RUN_A [RUN_B] [--env A --env B] [--json]`: exit 1 when a verdict differs."""
    from harness.report.diff import diff_runs, diff_text
    from harness.report.summary import load_summary
    from harness.stability import find_summaries

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


def interactive_command(args: argparse.Namespace, plan: planmod.Plan, envs: EnvironmentSet) -> int:
    """Boot the one selected environment and give its console to the person at the terminal."""
    from harness.guest import Guest
    from harness.interactive import interact

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
        reason = await engine.unavailable(env)
        if reason:
            raise HarnessError(f"{env.name} cannot run here: {reason}")
        image = await anyio.to_thread.run_sync(image_for, env)
        from harness.guest import private_workdir
        from harness.runner import make_disks

        workdir = private_workdir(f"harness-{env.name[:24]}-")
        guest = Guest(env, engine, image, out / f"{env.name}-serial.log", workdir=workdir,
                      disks=make_disks(env, workdir), own_workdir=True)
        try:
            print(f"booting {env.name}: {' '.join(guest.command_line)}", file=sys.stderr)
            boot = await guest.start()
            print(f"\r\n[harness] {env.name} is up after {boot.ready_s:.1f} s; this is its "
                  f"serial console. Ctrl-] leaves and tears the guest down.\r", file=sys.stderr)
            guest.console.sendline("")
            await interact(guest.console)
        finally:
            await guest.close()
        print(f"\r\n[harness] {env.name} stopped; serial log: "
              f"{out / (env.name + '-serial.log')}", file=sys.stderr)
        return EXIT_OK

    return anyio.run(main, backend="asyncio")


def _say(args: argparse.Namespace, line: str) -> None:
    if not getattr(args, "quiet", False):
        print(line, file=sys.stderr, flush=True)


def images_command(args: argparse.Namespace) -> int:
    from harness import images

    if args.images_command == "list":
        rows = images.list_images()
        if not rows:
            print("no images built yet: run `harness images build`")
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    envs = envmod.load(args.environments)
    wanted = sorted({(e.image.name, e.arch) for e in envs if e.image.embedded})
    if args.arch:
        wanted = [w for w in wanted if w[1] in args.arch]
    if args.name:
        wanted = [w for w in wanted if w[0] in args.name]
    for name, arch in wanted:
        image = images.build_image(name, arch, force=args.force)
        print(f"{name} {arch}: {image.kernel.parent} (kernel {image.kernel_version})")
    return EXIT_OK


def doctor_command(args: argparse.Namespace) -> int:
    envs = envmod.load(args.environments)
    engines = make_engines()
    report: dict[str, object] = {}

    async def gather() -> None:
        qemu = engines["qemu"]
        assert isinstance(qemu, QemuEngine)
        for arch in envmod.ARCHES:
            binary = qemu.binary(arch)
            version = ""
            if binary:
                proc = await anyio.run_process([binary, "--version"], check=False)
                version = proc.stdout.decode(errors="replace").splitlines()[0]
            report[f"qemu {arch}"] = {"binary": binary, "version": version}
        for env in envs:
            engine = engines[env.engine]
            try:
                reason = await engine.unavailable(env)
            except HarnessError as e:
                reason = str(e)
            entry: dict[str, object] = {"engine": env.engine, "runs_here": reason is None,
                                        "reason": reason, "accel": engine.accel(env)}
            if env.engine == "qemu" and isinstance(engine, QemuEngine):
                entry["kvm_verdict"] = engine.accel_reasons.get(env.arch) or \
                    engine._cached_verdict(env.arch)[1]
            report[f"environment {env.name}"] = entry
        crosvm = engines["crosvm"]
        doctor = getattr(crosvm, "doctor", None)
        if doctor is not None:
            # The parser check: each crosvm environment's command line as `harness plan`
            # prints it, through the real parser (CrosvmEngine.parse_check).
            argvs = {env.name: _planned_argv(crosvm, env) for env in envs
                     if env.engine == "crosvm"}
            report["crosvm"] = await doctor(envs, argvs)

    anyio.run(gather, backend="asyncio")
    from harness import images

    report["images"] = images.list_images()
    print(json.dumps(report, indent=1, default=str))
    return EXIT_OK


def _planned_argv(engine: Engine, env: Environment) -> list[str]:
    """`env`'s VMM command line as plan_command's `argv_for` builds it (image paths as built,
    the workdir a placeholder)."""
    from harness.runner import make_disk_paths

    try:
        image = image_for(env, build=False)
    except HarnessError:
        image = _unbuilt_image(env)
    workdir = (Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"harness-{env.name}")
    return engine.command(env, image, RunPaths(
        workdir=workdir, disks=tuple(make_disk_paths(env, workdir))))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
