"""What the CLI's commands do, as functions of parsed arguments.

Kept apart from cli.py so that `harness --help` does not import anyio, pexpect
or the engines, and so that tests can call a command without a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio

from harness import environments as envmod
from harness import jsonfile, stoptoken
from harness import plan as planmod
from harness.engines.base import Engine, RunPaths
from harness.engines.qemu import QemuEngine
from harness.environments import Environment, EnvironmentSet
from harness.errors import EXIT_FAILED, EXIT_INFRA, EXIT_OK, ConfigError, HarnessError
from harness.folders import safe_name
from harness.images.model import GuestImage
from harness.outputs import Terminal, check_writable, prepare_out_dir
from harness.results import RunResult
from harness.signals import RunSignals
from harness.spec import TestSpec, load_specs, parse_specs
from harness.stoptoken import StopToken
from harness.suite import SuiteTest, default_specs, registry
from harness.textsafe import name_safe, terminal_safe
from harness.workdirs import sweep_stale

# A summary.json of a 3,000-test run is about 30 MiB; far beyond any real one.
MAX_SUMMARY = 1024 * jsonfile.MiB


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

    jsonfile.check_file(args.durations_from, MAX_SUMMARY, "summary.json")
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
    argvs: dict[str, list[str]] = {}

    def argv_for(run: planmod.PlannedRun) -> list[str] | None:
        """The VMM command of `run`'s environment: the same for each of its runs, so it is
        worked out once per environment (looking up the image reads files)."""
        env = run.environment
        argv = argvs.get(env.name)
        if argv is None:
            try:
                image = image_for(env, build=False)
            except HarnessError:
                image = _unbuilt_image(env)
            from harness.runner import make_disk_paths

            workdir = placeholder.with_name(f"harness-{env.name}")
            argv = argvs[env.name] = engines[env.engine].command(env, image, RunPaths(
                workdir=workdir, disks=tuple(make_disk_paths(env, workdir))))
        return argv

    sharding = shard_args(args)
    total = sharding[1] if sharding else 1
    if args.json:
        # Streamed: 50,000 runs are a few MB of text, never a few GB of objects.
        planmod.write_plan_json(plan, argv_for, sys.stdout, total_shards=total,
                                durations=durations(args))
    else:
        sys.stdout.write(planmod.plan_text(plan, total_shards=total, durations=durations(args)))
    sys.stdout.flush()
    return EXIT_OK


def _unbuilt_image(env: Environment) -> GuestImage:
    """Stand-in paths for `plan` before `harness images build` ran (the plan says so)."""
    from harness.images import cache_dir

    base = cache_dir() / "images" / f"{env.image.name}-{env.arch}-NOT-BUILT"
    return GuestImage(name=env.image.name, arch=env.arch, kernel=base / "kernel",
                      initrd=base / "initrd.cpio.gz", kernel_uncompressed=base / "kernel",
                      kernel_elf=base / "vmlinux" if env.arch == "x86_64" else None)


def run_command(args: argparse.Namespace) -> int:
    if args.interactive:
        plan, envs, _tests = build_plan(args)
        return interactive_command(args, plan, envs)
    # Handlers for the whole run, from before the inputs are read to the last line.
    with RunSignals() as signals:
        return _run(args, signals)


def _run(args: argparse.Namespace, signals: RunSignals) -> int:
    from harness.cli import default_out_dir, repro_base
    from harness.images import cache_dir, sweep_cache
    from harness.runner import Runner, RunOptions

    term = Terminal(enabled=not args.quiet)
    plan, _envs, tests = build_plan(args)
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
    )
    if not runs:
        term.say("harness: nothing selected to run", always=True)
    n_envs = len({r.environment.name for r in runs})
    term.say(f"harness: {_count(len(runs), 'test run')} on {_count(n_envs, 'environment')}, "
             f"{args.jobs} at a time; results in {out}")
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
            from harness.interactive import keep_serving

            try:
                await keep_serving(runner.kept, say=lambda line: term.say(line, always=True),
                                   until=signals.wait)
            finally:
                for guest in runner.kept:
                    await guest.close()
        return result

    result: RunResult = anyio.run(main, backend="asyncio")
    signals.detach()
    totals = result.totals()
    term.say("harness: " + ", ".join(f"{v} {k}" for k, v in totals.items() if v) +
             f" in {result.duration_s:.1f} s; junit: {out / 'junit.xml'}")
    status = signals.exit_status
    if status is not None:
        return status
    if runner.output_errors:
        for line in runner.output_errors:
            term.say(f"harness: infrastructure: {line}", always=True)
        return EXIT_INFRA
    return EXIT_FAILED if result.blocking_failed else EXIT_OK


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

        workdir = private_workdir(f"harness-{safe_name(env.name)[:24]}-")
        log = out / f"{safe_name(env.name)}-serial.log"
        guest = Guest(env, engine, image, log, workdir=workdir,
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
    check_writable(images.cache_dir(), "the cache directory")
    # A signal raises Interrupted where the build is; the build stops its child process
    # and removes its work directories on the way out (harness.images.build._run).
    with RunSignals():
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
            report["crosvm"] = await doctor(envs)

    anyio.run(gather, backend="asyncio")
    from harness import images

    report["images"] = images.list_images()
    print(json.dumps(report, indent=1, default=str))
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
