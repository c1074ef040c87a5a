#!/usr/bin/env python3
"""In-process measurements of the harness's library, each run in a fresh process by run.py.

    probes.py console  boot a guest through harness.guest.Guest, then time commands through
                       harness.console.Console.run against a minimal pexpect loop on the same
                       guest
    probes.py capture  50 MB of console output through Console.run at host speed, from a
                       stand-in guest shell on a pty (a TCG guest's UART cannot go faster
                       than about 0.3 MB/s, which would measure QEMU, not the harness)
    probes.py guest-serial
                       a TCG guest writes to its UART, read by the console and by the
                       minimal loop
    probes.py plan     load a tests.json, select crosvm pairs, shard (harness.spec/plan)
    probes.py snapshot cold boot against restore from a snapshot (harness.snapshot), each to a
                       shell that answers, interleaved; each guest's peak VMM memory and
                       the restored guest's own disk

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import time
import tty
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

SERIAL_LINE = "0123456789abcdef" * 4


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _maxrss_mib() -> float:
    """Peak resident memory of this process since its exec, in MiB (see peak_rss_kib)."""
    return peak_rss_kib() / 1024


def peak_rss_kib() -> int:
    """VmHWM: the peak RSS of this process's own address space.

    Not ru_maxrss: Linux carries the high-water mark of the address space a process
    replaced at exec into ru_maxrss, and a child forked (or vforked) from a big parent
    would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------------- console


class MinimalLoop:
    """The labgrid-style marker loop with plain synchronous pexpect: one send, one expect.

    The marker is split by quotes when sent so the echo never holds it whole; the pattern
    takes the output, the status and the next prompt in one match. Like labgrid's, without
    its `sh -c` per command, so that both sides make the guest do the same work.
    """

    def __init__(self, fd: int, prompt: bytes) -> None:
        import pexpect.fdpexpect

        self.child = pexpect.fdpexpect.fdspawn(fd, timeout=30)
        self.child.delaybeforesend = None  # pexpect's default sleeps 50 ms before each send
        self.prompt = prompt

    def run(self, command: str) -> tuple[int, bytes]:
        marker = secrets.token_hex(4)
        split = f"{marker[:4]}''{marker[4:]}"
        self.child.sendline(f"echo {split}; {command}; echo {split} $?")
        m = marker.encode()
        self.child.expect(re.compile(m + rb"(.*)" + m + rb"\s+(\d+)\s+" + self.prompt, re.S))
        match = self.child.match
        return int(match.group(2)), match.group(1)


async def console_probe(args: argparse.Namespace) -> dict[str, Any]:
    from harness import environments as envmod
    from harness.accel import Accel
    from harness.engines.qemu import QemuEngine
    from harness.guest import Guest
    from harness.images.environment import image_for

    env = envmod.load(args.environments).get(args.env)
    image = image_for(env, build=False)
    out_dir = Path(args.workdir)
    engine = QemuEngine()
    guest = Guest(env, engine, image, out_dir / "serial.log",
                  setup=await Accel().resolve(engine, env))
    result: dict[str, Any] = {}
    try:
        cpu0, t0 = _cpu_s(), time.monotonic()
        boot = await guest.start()
        result["boot_to_shell_s"] = time.monotonic() - t0
        result["boot_ready_s"] = boot.ready_s
        result["boot_cpu_s"] = _cpu_s() - cpu0
        console = guest.console
        # The minimal loop reads the same pty through its own descriptor. pexpect pauses the
        # console's asyncio reader after every match, and the loop below runs without
        # yielding to the event loop, so the two never read at the same time.
        fd = os.dup(console._spawn.child_fd)
        minimal = MinimalLoop(fd, guest.profile.prompt.pattern)

        async def harness_run(cmd: str) -> int:
            return (await console.run(cmd, timeout=30)).status

        async def minimal_run(cmd: str) -> int:
            return minimal.run(cmd)[0]

        variants = {"harness": harness_run, "minimal": minimal_run}
        names = list(variants)

        async def measure(command: str, per_block: int) -> tuple[dict[str, list[float]],
                                                                  dict[str, float]]:
            """Blocks of `per_block` commands per variant, the order rotating per block."""
            samples: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
            for name, fn in variants.items():  # warm-up: caches, the guest's page cache
                assert await fn(command) == 0, f"{name}: {command!r} failed"
            for block in range(args.blocks):
                for name in names[block % len(names):] + names[:block % len(names)]:
                    fn = variants[name]
                    for _ in range(per_block):
                        c0, s0 = _cpu_s(), time.perf_counter()
                        status = await fn(command)
                        samples[name].append((time.perf_counter() - s0) * 1000)
                        cpu[name] += _cpu_s() - c0
                        assert status == 0
            return samples, {k: cpu[k] / max(1, len(samples[k])) * 1000 for k in cpu}

        result["command"] = args.command
        result["command_ms"], result["command_cpu_ms"] = await measure(args.command,
                                                                       args.per_block)
        result["output_command"] = args.output_command
        result["output_command_ms"], result["output_command_cpu_ms"] = await measure(
            args.output_command, args.output_per_block)
        info = await guest.shutdown(timeout=60)
        result["shutdown"] = str(info.kind)
        os.close(fd)
    finally:
        await guest.close()
    return result


async def guest_serial_probe(args: argparse.Namespace) -> dict[str, Any]:
    """A TCG guest writes to its UART: the console, then the minimal loop.

    Both on one guest, so the guest and QEMU are the same for each; what differs is
    how fast, and at what CPU cost, the reading side keeps up.
    """
    from harness import environments as envmod
    from harness.accel import Accel
    from harness.engines.qemu import QemuEngine
    from harness.guest import Guest
    from harness.images.environment import image_for

    env = envmod.load(args.environments).get(args.env)
    engine = QemuEngine()
    guest = Guest(env, engine, image_for(env, build=False), Path(args.workdir) / "serial.log",
                  setup=await Accel().resolve(engine, env))
    command = _yes_command(int(args.mb * 1_000_000))
    result: dict[str, Any] = {"bytes_requested": int(args.mb * 1_000_000)}
    try:
        await guest.start()
        console = guest.console
        minimal = MinimalLoop(os.dup(console._spawn.child_fd), guest.profile.prompt.pattern)
        for variant in ("harness", "minimal"):
            log0, c0, t0 = guest.log.written, _cpu_s(), time.monotonic()
            if variant == "minimal":
                status, out = minimal.run(command)
                nbytes = len(out)
            else:
                status = (await console.run(command, timeout=args.timeout)).status
                nbytes = guest.log.written - log0
            seconds = time.monotonic() - t0
            assert status == 0, f"{variant}: exit status {status}"
            result[variant] = {"seconds": seconds, "bytes": nbytes, "cpu_s": _cpu_s() - c0,
                               "mb_per_s": nbytes / 1e6 / seconds}
        await guest.shutdown(timeout=60)
    finally:
        await guest.close()
    result["maxrss_mib"] = _maxrss_mib()
    return result


# ----------------------------------------------------------------------------------- capture


def _stand_in_shell(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """An interactive /bin/sh on a raw pty, printing the Linux profile's prompt."""
    master, slave = os.openpty()
    tty.setraw(slave)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": "harness# ", "TERM": "dumb",
           "HOME": str(workdir)}
    proc = subprocess.Popen(["/bin/sh", "-i"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=workdir, start_new_session=True)
    os.close(slave)
    return proc, master


def _yes_command(nbytes: int) -> str:
    return f"yes {SERIAL_LINE[:-1]} | head -c {nbytes}"


async def capture_probe(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from harness.console import Console, SerialLog
    from harness.profiles import get_profile

    workdir = Path(args.workdir)
    nbytes = int(args.mb * 1_000_000)
    proc, master = _stand_in_shell(workdir)
    log_path = workdir / f"capture-{args.variant}.log"
    result: dict[str, Any] = {"variant": args.variant, "bytes_requested": nbytes}
    try:
        if args.variant == "raw":
            # The floor: read the pty into a file as fast as Python can, nothing else.
            with open(log_path, "wb", buffering=0) as log:
                os.write(master, f"{_yes_command(nbytes)}; echo RAW''END\n".encode())
                t0, cpu0 = time.monotonic(), _cpu_s()
                tail = b""
                import select

                while b"RAWEND" not in tail:
                    select.select([master], [], [], 30)
                    data = os.read(master, 65536)
                    log.write(data)
                    tail = (tail + data)[-64:]
                result["seconds"] = time.monotonic() - t0
                result["cpu_s"] = _cpu_s() - cpu0
        else:
            log = SerialLog(log_path)
            console = Console(log, get_profile("linux"))
            console.attach(master)
            await console.expect([console.profile.prompt], 10, what="prompt")
            result["maxrss_before_mib"] = _maxrss_mib()
            start = log.written
            t0, cpu0 = time.monotonic(), _cpu_s()
            with anyio.fail_after(args.timeout):
                res = await console.run(_yes_command(nbytes), timeout=args.timeout)
            result["seconds"] = time.monotonic() - t0
            result["cpu_s"] = _cpu_s() - cpu0
            result["status"] = res.status
            result["output_chars_kept"] = len(res.output)
            result["log_bytes"] = log.written - start
            console.detach()
            log.close()
            master = -1
        result["log_file_bytes"] = log_path.stat().st_size
        result["maxrss_mib"] = _maxrss_mib()
    finally:
        proc.kill()
        proc.wait()
        if master >= 0:
            os.close(master)
        log_path.unlink(missing_ok=True)
    result["mb_per_s"] = result["log_file_bytes"] / 1e6 / result["seconds"]
    return result


# -------------------------------------------------------------------------------------- plan


def plan_probe(args: argparse.Namespace) -> dict[str, Any]:
    base_rss = _maxrss_mib()
    t0 = time.perf_counter()
    from harness import environments as envmod
    from harness import plan as planmod
    from harness.fuchsia.build import PRODUCT_BUNDLES_JSON, TESTS_JSON, BundleSet
    from harness.spec import load_specs

    t_import = time.perf_counter()
    rss_import = _maxrss_mib()
    build = Path(args.build_dir)
    specs = load_specs(build / TESTS_JSON)
    bundles = BundleSet.read(build / PRODUCT_BUNDLES_JSON)
    t_load = time.perf_counter()
    envs = envmod.load(args.environments)
    # As `harness plan --build-dir`: Fuchsia's matching, the build's bundles.
    plan = planmod.make_plan(specs, envs, planmod.Selection(device_types=("crosvm",)),
                             testsharder=True, bundles=bundles)
    if not plan.runs:
        raise SystemExit("the plan selected nothing: the benchmark would time no planning")
    t_plan = time.perf_counter()
    shards = planmod.assign_shards(plan.runs, args.shards)
    t_shard = time.perf_counter()
    return {
        "entries": len(specs),
        "runs": len(plan.runs),
        "shards": args.shards,
        "largest_shard": max(len(s) for s in shards),
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "select_s": t_plan - t_load,
        "shard_s": t_shard - t_plan,
        "total_s": t_shard - t_import,
        "maxrss_mib": _maxrss_mib(),
        "maxrss_interpreter_mib": base_rss,
        "maxrss_after_import_mib": rss_import,
    }


# ---------------------------------------------------------------------------------- snapshot


def session_hwm_kib(sid: int) -> int:
    """Peak RSS (VmHWM) summed over the VMM's session: crosvm's device processes, or the QEMU
    the crosvm double runs, count with it."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != sid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


async def snapshot_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Per round, in alternating order: a cold boot to a shell that answered `true`, and a
    restore to a shell that answered (its first command, the clock and network fix-up), the
    way the runner starts each (GuestStarter), through a snapshot cache of its own."""
    from harness import environments as envmod
    from harness import plan as planmod
    from harness.accel import Accel
    from harness.app import make_engines
    from harness.disks import make_disk_paths, make_disks
    from harness.engines.base import EnvironmentUnavailable
    from harness.guest import Guest
    from harness.images.environment import image_for
    from harness.snapshot import GuestStarter
    from harness.snapshot_store import SnapshotStore, disk_usage
    from harness.spec import parse_specs
    from harness.workdirs import private_workdir

    env = envmod.load(args.environments).get(args.env)
    engine = make_engines()[env.engine]
    try:
        setup = await Accel().resolve(engine, env)
    except EnvironmentUnavailable as e:
        raise SystemExit(f"{env.name} cannot run here: {e}") from None
    image = image_for(env, build=False)
    out = Path(args.workdir)
    specs = parse_specs([{"test": {"name": "bench.start", "path": "/bin/true"},
                          "environments": [{"dimensions": dict(env.dimensions)}]}], "<bench>")
    [run] = planmod.make_plan(specs, envmod.load(args.environments),
                              planmod.Selection(env_names=(env.name,))).runs

    def cold_guest(e: Any, eng: Any, img: Any, setup: Any, folder: Path) -> Guest:
        workdir = private_workdir(f"harness-{e.name[:24]}-")
        return Guest(e, eng, img, folder / "serial.log", setup=setup, workdir=workdir,
                     disks=make_disks(e, workdir), own_workdir=True)

    starter = GuestStarter(store=SnapshotStore(out / "snapshots", cap=1 << 40),
                           cold_guest=cold_guest, make_disks=make_disks,
                           disk_paths=make_disk_paths, say=lambda line: None)
    result: dict[str, Any] = {"env": env.name, "engine": env.engine, "cold_s": [],
                              "restore_s": [], "cold_hwm_mib": [], "restore_hwm_mib": [],
                              "restore_disk_kib": [], "cold_disk_kib": []}
    n = 0

    async def cold() -> None:
        nonlocal n
        n += 1
        t0 = time.monotonic()
        guest = cold_guest(env, engine, image, setup, out / f"cold-{n}")
        try:
            await guest.launch()
            await guest.wait_boot(env.boot_timeout_s)
            assert (await guest.console.run("true", timeout=60)).ok
            result["cold_s"].append(time.monotonic() - t0)
            assert guest.vmm is not None
            result["cold_hwm_mib"].append(session_hwm_kib(guest.vmm.pid) / 1024)
            result["cold_disk_kib"].append(disk_usage(guest.workdir) // 1024)
        finally:
            await guest.close()

    async def restore() -> None:
        nonlocal n
        n += 1
        t0 = time.monotonic()
        guest = await starter.new_guest(run, env, engine, image, setup, out / f"restore-{n}")
        try:
            boot, props = await starter.start(guest, env.boot_timeout_s)
            if props.get("snapshot_built"):  # the first: a boot and a save, not a restore
                result["build_boot_s"] = float(props["boot_s"])
                result["save_s"] = float(props["snapshot_save_s"])
                result["snapshot_mib"] = disk_usage(Path(starter.store.root)  # type: ignore
                                                    / props["snapshot"]) / (1 << 20)
                return
            result["restore_s"].append(time.monotonic() - t0)
            result.setdefault("restore_ready_s", []).append(boot.ready_s)
            assert guest.vmm is not None
            # What a test does to its disks lands in its overlay: the smoke test's writes.
            await guest.console.run("sync", timeout=60)
            result["restore_hwm_mib"].append(session_hwm_kib(guest.vmm.pid) / 1024)
            result["restore_disk_kib"].append(disk_usage(guest.workdir) // 1024)
        finally:
            await guest.close()

    try:
        await restore()  # builds the snapshot
        for r in range(args.rounds):
            for step in ((cold, restore) if r % 2 == 0 else (restore, cold)):
                await step()
    finally:
        await starter.close()
    return result


def main() -> int:
    # The driver stops a child with SIGTERM: unwind, so `finally` stops the guest.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="probe", required=True)
    guest = argparse.ArgumentParser(add_help=False)  # what every probe that boots needs
    guest.add_argument("--env", required=True)
    guest.add_argument("--environments")
    guest.add_argument("--workdir", required=True)
    c = sub.add_parser("console", parents=[guest])
    c.add_argument("--blocks", type=int, default=3)
    c.add_argument("--per-block", type=int, default=10)
    c.add_argument("--command", default="true")
    c.add_argument("--output-command", default="seq 1 2000",
                   help="a command with output (the smoke test's biggest)")
    c.add_argument("--output-per-block", type=int, default=3)
    k = sub.add_parser("capture")
    k.add_argument("--mb", type=float, default=50)
    k.add_argument("--variant", default="harness", choices=("raw", "harness"),
                   help="raw: a bare pty drain; harness: Console.run")
    k.add_argument("--workdir", required=True)
    k.add_argument("--timeout", type=float, default=600)
    g = sub.add_parser("guest-serial", parents=[guest])
    g.add_argument("--mb", type=float, default=1)
    g.add_argument("--timeout", type=float, default=600)
    s = sub.add_parser("snapshot", parents=[guest])
    s.add_argument("--rounds", type=int, default=3)
    p = sub.add_parser("plan")
    p.add_argument("build_dir")
    p.add_argument("--environments")
    p.add_argument("--shards", type=int, default=20)
    args = ap.parse_args()

    if args.probe == "plan":
        result = plan_probe(args)
    else:
        import anyio

        probe = {"console": console_probe, "capture": capture_probe,
                 "guest-serial": guest_serial_probe, "snapshot": snapshot_probe}[args.probe]
        result = anyio.run(probe, args, backend="asyncio")
    if args.probe == "console":
        for key in ("command_ms", "output_command_ms"):
            result[f"{key}_median"] = {k: statistics.median(v) for k, v in result[key].items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
