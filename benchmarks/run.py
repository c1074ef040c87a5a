#!/usr/bin/env python3
"""What the harness costs over the raw VMM, how it scales, and how it compares to labgrid.

Runs every measurement side by side in one run, prints a table of figures with
their ratios and PASS/MISS per target, and writes everything (samples included) as JSON.
See benchmarks/README.md. Run it with the project's venv:

    benchmarks/run.py [--rounds 4] [--json FILE]     (re-runs itself in .venv/bin/python)

Guests and their QEMU processes live under one scratch directory; every QEMU started here
names it in its argv, and any still running at the end is killed by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
DEFAULT_JSON = BENCH / "results" / "latest.json"
SECTIONS = ("boot", "latency", "parallel", "serial", "peer", "plan", "snapshot", "default-run")
# The default environments the snapshot figures are taken on (the crosvm one through the
# double: no crosvm runs here), and the double itself.
SNAPSHOT_ENVS = ("qemu-x64", "qemu-arm64", "qemu-x64-minimal", "crosvm-x64")
DOUBLE = ROOT / "tests" / "crosvm_double" / "crosvm"

TARGETS = {
    "boot_ratio": "<= 1.10",
    "latency_ratio": "<= 1.5",
    "parallel_ratio": ">= 1.7",
    "capture_mb_s": ">= 20",
    "peak_rss_mib": "< 150",
    "peer_boot": "< labgrid",
    "peer_command": "< labgrid",
    "plan_s": "< 2",
    "restore_fraction": "<= 0.10",
    "default_run_ratio": "<= 0.6",
}


def _reexec_in_venv() -> None:
    """`benchmarks/run.py` works from any python: the harness lives in the project's venv."""
    try:
        import harness  # noqa: F401
    except ImportError as e:
        # Compare prefixes, not binaries: the venv's python is a symlink to the base one.
        if VENV_PY.exists() and Path(sys.prefix).resolve() != VENV_PY.parent.parent.resolve():
            os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
        raise SystemExit("run with the project's venv: .venv/bin/python benchmarks/run.py") from e


# --------------------------------------------------------------------------- processes


class Scratch:
    """The run's scratch directory, the environment children get, and the QEMU sweep."""

    def __init__(self, keep: bool) -> None:
        # Short: QEMU's QMP socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))
        self.keep = keep
        self.env = dict(os.environ)
        # The harness puts guest workdirs (QMP sockets, disks) under XDG_RUNTIME_DIR or
        # TMPDIR, labgrid under TMPDIR: both here, so every QEMU's argv names self.root.
        self.env["TMPDIR"] = str(self.root)
        self.env["XDG_RUNTIME_DIR"] = str(self.root)
        # An installed harness runs from .pyc files; so do the measured processes, with the
        # cache kept here rather than in the project tree.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(self.root / "pycache")
        # Snapshots in a cache of the benchmark's own: the user's cache is neither used nor
        # filled, and "a cold cache" means empty.
        self.env["HARNESS_SNAPSHOT_DIR"] = str(self.root / "snapshots")
        self.harness = shutil.which("harness", path=str(Path(sys.executable).parent))
        self._n = 0

    def dir(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{self._n:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def harness_argv(self, *args: str) -> list[str]:
        base = [self.harness] if self.harness else [sys.executable, "-m", "harness"]
        return [*base, *args]

    def run(self, argv: Sequence[str], *, timeout: float, label: str,
            stdout: int | None = subprocess.PIPE) -> tuple[float, str]:
        """Run a child in its own session; returns (wall seconds, stdout). Raises on failure."""
        err_path = self.root / f"stderr-{self._n:03d}-{label}.txt"
        with open(err_path, "wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(list(argv), stdout=stdout, stderr=err, env=self.env,
                                    cwd=ROOT, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except BaseException:
                _terminate(proc)
                raise
            wall = time.monotonic() - t0
        if proc.returncode != 0:
            tail = err_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{label}: exit status {proc.returncode}\n{tail}")
        return wall, (out or b"").decode(errors="replace")

    def sweep(self) -> list[int]:
        """Kill (by pid) any QEMU whose argv names this run's scratch directory."""
        killed = []
        marker = str(self.root).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)
                    killed.append(int(entry))
        return killed

    def close(self) -> None:
        self.sweep()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: the harness then stops its guests itself; SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _json_line(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ helpers


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Median of a[i]/b[i]: samples i of both sides ran back to back in round i, so the
    ratio cancels the load other users put on the machine during that round."""
    pairs = [x / y for x, y in zip(a, b, strict=False) if y]
    return median(pairs)


def verdict(value: float | None, target: str) -> str:
    if value is None:
        return "n/a"
    op, _, bound = target.partition(" ")
    limit = float(bound)
    ok = {"<=": value <= limit, "<": value < limit, ">=": value >= limit, ">": value > limit}[op]
    return "PASS" if ok else "MISS"


def _summary_attempt(out_dir: Path, index: int = 0) -> dict[str, Any]:
    summary = json.loads((out_dir / "summary.json").read_text())
    test = summary["tests"][index]
    attempt = test["harness"]["attempts"][-1]
    return {"result": test["result"], "start": dt.datetime.fromisoformat(
        test["start_time"].replace("Z", "+00:00")).timestamp(), **attempt}


def _machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=False).stdout.splitlines()
    try:
        from importlib.metadata import version

        labgrid = version("labgrid")
    except Exception:
        labgrid = None
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "qemu": qemu[0] if qemu else None,
        "labgrid": labgrid,
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------- benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Scratch) -> None:
        from harness import environments as envmod
        from harness.images.environment import image_for

        self.args = args
        self.s = scratch
        self.envs = envmod.load(args.environments)
        self.env = self.envs.get(args.env)
        self.image = image_for(self.env, build=False)
        self.samples: dict[str, Any] = {}
        self.notes: list[str] = []

    def sample(self, key: str, value: Any) -> None:
        self.samples.setdefault(key, []).append(value)

    def env_args(self) -> list[str]:
        return ["--environments", self.args.environments] if self.args.environments else []

    # -- inputs ---------------------------------------------------------------------------

    def qemu_argv(self, workdir: Path) -> Path:
        """The harness's own argv for the environment, for a guest living in `workdir`."""
        from harness.accel import Accel
        from harness.disks import make_disk_paths
        from harness.engines.base import RunPaths
        from harness.engines.qemu import QemuEngine

        engine = QemuEngine()
        setup, _note = Accel().planned(engine, self.env)  # what `harness plan` shows
        argv = engine.command(self.env, self.image, RunPaths(
            workdir=workdir, disks=tuple(make_disk_paths(self.env, workdir))), setup)
        path = workdir / "argv.json"
        path.write_text(json.dumps(argv))
        return path

    def check_argv_matches_plan(self) -> bool:
        """`harness plan --json` prints the same argv (up to the per-guest workdir)."""
        _, out = self.s.run(self.s.harness_argv(
            "plan", *self.env_args(), "--env", self.env.name, "-k", "smoke.boot_and_command",
            "--json"), timeout=60, label="plan-json")
        planned = json.loads(out)["runs"][0]["argv"]
        mine = json.loads(self.qemu_argv(self.s.dir("argv-check")).read_text())
        return _without_qmp(planned) == _without_qmp(mine)

    def path_tests(self, name: str, entries: list[tuple[str, str, list[str]]]) -> Path:
        """A tests.json of `path` entries (run a program in the guest) for this environment."""
        dims = dict(self.env.dimensions)
        # `isolated`: Fuchsia's field for "a guest of its own"; programs share one otherwise.
        specs = [{"test": {"name": n, "label": f"//benchmarks:{n}", "os": "linux", "path": p,
                           "args": a, "timeout_secs": 600, "isolated": True},
                  "environments": [{"dimensions": dims}]} for n, p, a in entries]
        path = self.s.root / f"{name}.tests.json"
        path.write_text(json.dumps(specs, indent=1))
        return path

    # -- round tasks: each runs once per round, in a rotating order ------------------------

    def raw(self, work: str) -> dict[str, Any]:
        d = self.s.dir(f"raw-{work.replace(':', '-')}")
        argv = [sys.executable, str(BENCH / "raw_vmm.py"), str(self.qemu_argv(d)),
                "--work", work, "--log", str(d / "serial.log")]
        wall, out = self.s.run(argv, timeout=300, label="raw")
        result = _json_line(out)
        result["wall_s"] = wall
        return result

    def harness_run(self, label: str, *args: str, rss: bool = False) -> dict[str, Any]:
        d = self.s.dir(label)
        out = d / "out"
        argv = [*args, "--out", str(out), "--quiet"]
        if rss:
            rss_file = d / "rss.json"
            cmd = [sys.executable, str(BENCH / "harness_rss.py"), str(rss_file), "--", *argv]
        else:
            cmd = self.s.harness_argv(*argv)
        t_start = time.time()
        wall, _ = self.s.run(cmd, timeout=900, label=label)
        result: dict[str, Any] = {"wall_s": wall, "out": str(out), "t_start": t_start}
        if rss:
            result.update(json.loads(rss_file.read_text()))
        return result

    def task_raw_boot(self) -> None:
        self.sample("raw_boot", self.raw("boot"))

    def task_raw_smoke(self) -> None:
        self.sample("raw_smoke", self.raw("smoke"))

    def task_harness_smoke(self) -> None:
        # --no-snapshot: this figure is a boot, as the raw script's (snapshot: its own section).
        r = self.harness_run("harness-smoke", "run", *self.env_args(), "--env", self.env.name,
                             "-k", "smoke.boot_and_command", "--jobs", "1", "--no-snapshot")
        a = _summary_attempt(Path(r["out"]))
        if a["result"] != "PASS":
            raise RuntimeError(f"smoke.boot_and_command: {a['result']}: {a.get('message')}")
        # Where the whole-process time went: before the test started, the test (boot
        # included), and after it (teardown, reports, interpreter exit).
        r["before_test_s"] = a["start"] - r["t_start"]
        r["test_s"] = a["duration_s"]
        r["after_test_s"] = r["wall_s"] - r["before_test_s"] - r["test_s"]
        r["boot_s"] = float(a["properties"].get("boot_s", "nan"))
        self.check_same_image(Path(r["out"]))
        self.sample("harness_smoke", r)

    def check_same_image(self, out: Path) -> None:
        """The harness ran the argv the raw side runs (an image rebuilt mid-run, by someone
        else, would make the comparison meaningless)."""
        import shlex

        used = shlex.split(next(out.rglob("vmm-command.txt")).read_text())
        mine = json.loads(self.qemu_argv(self.s.dir("argv-compare")).read_text())
        if _without_qmp(used) != _without_qmp(mine):
            raise RuntimeError("the harness ran another QEMU argv than the raw side: was the "
                               f"guest image rebuilt during the benchmark? Run again.\n"
                               f"harness: {shlex.join(used)}\nraw:     {shlex.join(mine)}")

    def task_harness_empty(self) -> None:
        r = self.harness_run("harness-empty", "run", *self.env_args(), "--env", self.env.name,
                             "-k", "no-such-test", "--allow-empty", "--no-snapshot")
        self.sample("harness_empty", r)

    def task_console(self) -> None:
        d = self.s.dir("console")
        argv = [sys.executable, str(BENCH / "probes.py"), "console", "--env", self.env.name,
                "--workdir", str(d), "--blocks", str(self.args.blocks),
                "--per-block", str(self.args.per_block), *self.env_args()]
        _, out = self.s.run(argv, timeout=300, label="console")
        self.sample("console", _json_line(out))

    def task_labgrid(self) -> None:
        d = self.s.dir("labgrid")
        argv = [sys.executable, str(BENCH / "peer_labgrid.py"), str(self.qemu_argv(d)),
                "--workdir", str(d), "--commands", str(self.args.blocks * self.args.per_block)]
        _, out = self.s.run(argv, timeout=300, label="labgrid")
        self.sample("labgrid", _json_line(out))

    def rounds(self, sections: set[str]) -> None:
        tasks: list[tuple[str, Callable[[], None]]] = []
        if "boot" in sections:
            tasks += [("raw boot", self.task_raw_boot), ("raw smoke", self.task_raw_smoke),
                      ("harness run smoke", self.task_harness_smoke),
                      ("harness run, nothing selected", self.task_harness_empty)]
        if sections & {"latency", "peer"}:
            tasks.append(("console probe", self.task_console))
        if "peer" in sections:
            if _has_labgrid():
                tasks.append(("labgrid", self.task_labgrid))
            else:
                self.notes.append("labgrid is not installed: pip install labgrid")
        if not tasks:
            return
        # Warm-up (not recorded): page cache, .pyc files, the KVM verdict cache.
        self.s.run(self.s.harness_argv("run", *self.env_args(), "--env", self.env.name, "-k",
                                       "no-such-test", "--allow-empty",
                                       "--out", str(self.s.dir("warm")),
                                       "--quiet"), timeout=120, label="warm-up")
        self.raw("boot")
        for r in range(self.args.rounds):
            order = tasks[r % len(tasks):] + tasks[:r % len(tasks)]
            for name, task in order:
                self.say(f"round {r + 1}/{self.args.rounds}: {name}")
                task()

    # -- one-off sections -----------------------------------------------------------------

    def parallel(self) -> None:
        """8 isolated boot-and-command tests: --jobs 1 and --jobs 2 booting each guest (the
        harness's scaling), and --jobs 2 restoring each (issue 13: restore vs boot)."""
        n = 8
        tests = self.path_tests("parallel", [(f"bench.boot_and_command_{i}", "/bin/uname",
                                              ["-m"]) for i in range(n)])
        # The restore side's snapshot is saved beforehand: this is its steady state.
        self.say("parallel: saving the snapshot the restore side starts from")
        self.harness_run("parallel-warm", "run", *self.env_args(), "--tests", str(tests),
                         "--env", self.env.name, "-k", "bench.boot_and_command_0")
        variants = (("j1", "1", True), ("j2", "2", True), ("j2_restore", "2", False))
        for r in range(self.args.parallel_rounds):
            order = variants[r % 3:] + variants[:r % 3]
            for name, jobs, boot in order:
                how = "booting" if boot else "restoring"
                self.say(f"parallel: {n} tests, --jobs {jobs}, {how} each guest")
                res = self.harness_run(f"parallel-{name}", "run", *self.env_args(),
                                       "--tests", str(tests), "--env", self.env.name,
                                       "--jobs", jobs, *(["--no-snapshot"] if boot else []),
                                       rss=True)
                summary = json.loads((Path(res["out"]) / "summary.json").read_text())
                res["passed"] = sum(t["result"] == "PASS" for t in summary["tests"])
                res["failures"] = [
                    {"test": t["name"], "result": t["result"],
                     "message": t["harness"]["attempts"][-1].get("message", "")}
                    for t in summary["tests"] if t["result"] != "PASS"]
                res["tests"] = n
                props = [t["harness"]["attempts"][-1]["properties"] for t in summary["tests"]]
                res["boot_s"] = [float(p.get("boot_s", "nan")) for p in props]
                res["restore_s"] = [float(p.get("restore_s", "nan")) for p in props]
                res["started"] = sorted({p.get("start", "") for p in props})
                res["throughput_per_min"] = res["passed"] / res["wall_s"] * 60
                self.sample(f"parallel_{name}", res)

    def snapshot(self) -> None:
        """Restore against cold boot per default environment (probes.py snapshot)."""
        for env in self.args.snapshot_env:
            extra = {"HARNESS_CROSVM": str(DOUBLE)} if env.startswith("crosvm") else {}
            self.say(f"snapshot: {env}: cold boot against restore, {self.args.snapshot_rounds} "
                     f"rounds" + (" (crosvm through its double)" if extra else ""))
            d = self.s.dir(f"snapshot-{env}")
            argv = [sys.executable, str(BENCH / "probes.py"), "snapshot", "--env", env,
                    "--workdir", str(d), "--rounds", str(self.args.snapshot_rounds),
                    *self.env_args()]
            saved = dict(self.s.env)
            self.s.env.update(extra)
            try:
                _, out = self.s.run(argv, timeout=1800, label=f"snapshot-{env}")
            finally:
                self.s.env = saved
            self.sample("snapshot", _json_line(out))

    def default_run(self) -> None:
        """`./dev run`'s run (the built-in suites on the default environments): today's
        (shared guests, cold boots: --no-snapshot) against every test isolated by restore,
        from an empty snapshot cache and from the cache that run left."""
        args = [*self.env_args(), *(a for e in self.args.default_run_env for a in ("--env", e))]
        cache = self.s.root / "default-run-snapshots"
        variants = (("boot", ["--no-snapshot"]), ("restore_cold_cache", []),
                    ("restore_warm_cache", []))
        for r in range(self.args.default_run_rounds):
            shutil.rmtree(cache, ignore_errors=True)
            for name, extra in variants:
                self.say(f"default run ({r + 1}/{self.args.default_run_rounds}): {name}")
                saved = dict(self.s.env)
                self.s.env["HARNESS_SNAPSHOT_DIR"] = str(cache)
                try:
                    res = self.harness_run(f"default-{name}", "run", *args, *extra)
                finally:
                    self.s.env = saved
                summary = json.loads((Path(res["out"]) / "summary.json").read_text())
                res["results"] = {}
                for t in summary["tests"]:
                    res["results"][t["result"]] = res["results"].get(t["result"], 0) + 1
                props = [t["harness"]["attempts"][-1]["properties"] for t in summary["tests"]]
                res["guests"] = {k: sum(p.get("start") == k for p in props)
                                 for k in ("boot", "restore")}
                res["booted"] = sum("boot_s" in p for p in props)
                res["test_s"] = sum(t["duration_milliseconds"] for t in summary["tests"]) / 1000
                self.sample(f"default_{name}", res)

    def serial(self) -> None:
        nbytes = int(self.args.guest_serial_mb * 1_000_000)
        from raw_vmm import serial_command

        tests = self.path_tests("serial", [("bench.serial", "/bin/sh",
                                            ["-c", serial_command(nbytes)])])
        for r in range(self.args.serial_rounds):
            for side in (("raw", "harness") if r % 2 == 0 else ("harness", "raw")):
                self.say(f"serial: a TCG guest writes {nbytes / 1e6:g} MB ({side})")
                if side == "raw":
                    res = self.raw(f"serial:{nbytes}")
                    res["mb_per_s"] = res["serial_bytes"] / 1e6 / res["serial_s"]
                    self.sample("serial_guest_raw", res)
                    continue
                res = self.harness_run("serial", "run", *self.env_args(), "--tests",
                                       str(tests), "--env", self.env.name, "--no-snapshot",
                                       rss=True)
                a = _summary_attempt(Path(res["out"]))
                if a["result"] != "PASS":
                    raise RuntimeError(f"serial test: {a['result']}: {a.get('message')}")
                log = next(Path(res["out"]).rglob("serial.log")).read_bytes()
                start = log.find(b"command eval")
                res["serial_bytes"] = len(log) - start
                # The attempt minus the boot: the command, then the guest's teardown (ms).
                res["serial_s"] = a["duration_s"] - float(a["properties"]["boot_s"])
                res["mb_per_s"] = res["serial_bytes"] / 1e6 / res["serial_s"]
                self.sample("serial_guest_harness", res)
        self.say(f"serial: a TCG guest writes {self.args.guest_serial_mb:g} MB per reader, "
                 "one guest (the console, then the minimal loop)")
        d = self.s.dir("guest-serial")
        _, out = self.s.run([sys.executable, str(BENCH / "probes.py"), "guest-serial",
                             "--env", self.env.name, "--workdir", str(d), "--mb",
                             str(self.args.guest_serial_mb), *self.env_args()], timeout=900,
                            label="guest-serial")
        self.sample("guest_serial", _json_line(out))
        for variant in ("raw", "harness"):
            self.say(f"serial: {self.args.capture_mb:g} MB at host speed through "
                     f"the console ({variant})")
            d = self.s.dir(f"capture-{variant}")
            _, out = self.s.run([sys.executable, str(BENCH / "probes.py"), "capture", "--mb",
                                 str(self.args.capture_mb), "--variant", variant,
                                 "--workdir", str(d)], timeout=900, label="capture")
            self.sample(f"capture_{variant}", _json_line(out))

    def plan(self) -> None:
        build = self.s.root / "fuchsia-scale"
        write_fuchsia_scale_build(build, self.args.plan_entries)
        for _ in range(self.args.plan_rounds):
            self.say(f"plan: {self.args.plan_entries} entries, library")
            _, out = self.s.run([sys.executable, str(BENCH / "probes.py"), "plan", str(build),
                                 "--shards", "20", *self.env_args()], timeout=300,
                                label="plan")
            self.sample("plan_library", _json_line(out))
            self.say(f"plan: {self.args.plan_entries} entries, `harness plan`")
            d = self.s.dir("plan-cli")
            rss = d / "rss.json"
            wall, _ = self.s.run([sys.executable, str(BENCH / "harness_rss.py"), str(rss), "--",
                                  "plan", *self.env_args(), "--build-dir", str(build),
                                  "--device-type", "crosvm", "--shard-index", "0",
                                  "--total-shards", "20"],
                                 timeout=300, label="plan-cli", stdout=subprocess.DEVNULL)
            self.sample("plan_cli", {"wall_s": wall, **json.loads(rss.read_text())})

    def say(self, line: str) -> None:
        if not self.args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _without_qmp(argv: Sequence[str]) -> list[str]:
    """argv with the per-guest QMP socket path (the only per-guest part) blanked out."""
    return ["QMP" if "qmp.sock" in a else a for a in argv]


def _has_labgrid() -> bool:
    import importlib.util

    return importlib.util.find_spec("labgrid") is not None


def write_fuchsia_scale_build(build: Path, n: int) -> None:
    """A Fuchsia build directory at scale: `n` tests.json entries (write_fuchsia_scale_tests)
    and product_bundles.json naming a core bundle per cpu, as version 2 product_bundle.json
    files whose images exist (placeholders: a plan reads no image's bytes). Fuchsia tests are
    planned only on the environments that boot a build's bundle (harness.plan), so a plan
    without the bundles selects nothing."""
    bundles = []
    for cpu in ("x64", "arm64"):
        rel = Path("obj/build/images/fuchsia") / cpu / "product_bundle"
        system_a = build / rel / "system_a"
        system_a.mkdir(parents=True, exist_ok=True)
        for image in ("fuchsia.zbi", "linux-x86-boot-shim.bin"):
            (system_a / image).write_bytes(b"\0" * 4096)
        (build / rel / "product_bundle.json").write_text(json.dumps({
            "version": "2", "product_name": f"core.{cpu}", "product_version": "bench",
            "sdk_version": "bench",
            "partitions": {"hardware_revision": "", "bootstrap_partitions": [],
                           "bootloader_partitions": [], "partitions": [],
                           "unlock_credentials": []},
            "system_a": [
                {"type": "zbi", "name": "zircon-a", "path": "system_a/fuchsia.zbi",
                 "signed": False},
                {"type": "kernel", "name": "qemu-kernel",
                 "path": "system_a/linux-x86-boot-shim.bin"},
            ],
            "system_b": None, "system_r": None, "repositories": [],
        }))
        bundles.append({"name": f"core.{cpu}", "path": rel.as_posix(),
                        "json": (rel / "product_bundle.json").as_posix(), "cpu": cpu,
                        "label": f"//products:core.{cpu}.product_bundle",
                        "transfer_manifest_path": None})
    (build / "product_bundles.json").write_text(json.dumps(bundles))
    write_fuchsia_scale_tests(build / "tests.json", n)


def write_fuchsia_scale_tests(path: Path, n: int) -> None:
    """A tests.json shaped like Fuchsia's: package URLs, labels, a few dimension sets,
    unknown fields the loader must keep, and about 40% of entries on crosvm; each names
    the core bundle of its cpu."""
    rng = random.Random(7)
    pools = [
        [{"dimensions": {"device_type": "crosvm", "cpu": "x64"}}],
        [{"dimensions": {"device_type": "crosvm", "cpu": "x64"}},
         {"dimensions": {"device_type": "QEMU", "cpu": "x64"}}],
        [{"dimensions": {"device_type": "crosvm", "cpu": "arm64"}, "tags": ["fyi"]}],
        [{"dimensions": {"device_type": "QEMU", "cpu": "x64"}}],
        [{"dimensions": {"device_type": "AEMU", "cpu": "x64"}}],
        [{"dimensions": {"device_type": "NUC11", "cpu": "x64", "pool": "fuchsia.tests"}}],
        [{"dimensions": {"device_type": "QEMU", "cpu": "arm64"}},
         {"dimensions": {"device_type": "Vim3", "cpu": "arm64"}}],
    ]
    weights = [25, 10, 5, 25, 15, 10, 10]
    entries = []
    for i in range(n):
        pkg = f"pkg_{i // 7}"
        name = f"fuchsia-pkg://fuchsia.com/{pkg}#meta/test_{i}.cm"
        environments = rng.choices(pools, weights)[0]
        # The test's cpu is its environments' (testsharder plans a test only where they agree).
        cpu = environments[0]["dimensions"]["cpu"]
        entries.append({
            "test": {
                "name": name,
                "label": f"//src/area_{i % 97}/{pkg}:test_{i}(//build/toolchain/fuchsia:{cpu})",
                "os": "fuchsia",
                "cpu": cpu,
                "package_url": name,
                "package_label": f"//src/area_{i % 97}/{pkg}:{pkg}",
                "log_settings": {"max_severity": "WARN"},
                "build_rule": "fuchsia_test_package",
                "has_generated_manifest": bool(i % 2),
                "timeout_secs": rng.choice([0, 60, 300, 600]),
            },
            "environments": environments,
            "product_bundle": f"core.{cpu}",
            "is_boot_test": False,
        })
    path.write_text(json.dumps(entries))


# ------------------------------------------------------------------------------ figures


def figures(b: Bench) -> list[dict[str, Any]]:
    """Rows of the table: figure, harness value, reference, ratio, target, verdict."""
    s = b.samples
    rows: list[dict[str, Any]] = []

    def row(section: str, name: str, value: float | None, unit: str, *,
            ref: float | None = None, ref_name: str = "", ratio_v: float | None = None,
            target: str = "", check: float | None = None, ahead: bool | None = None,
            note: str = "") -> None:
        if ahead is not None:
            judged = "PASS" if ahead else "MISS"
        elif target:
            judged = verdict(check, target)
        else:
            judged = ""
        rows.append({"section": section, "figure": name, "value": value, "unit": unit,
                     "reference": ref, "reference_name": ref_name, "ratio": ratio_v,
                     "target": target, "verdict": judged, "note": note})

    def col(key: str, field: str) -> list[float]:
        return [x[field] for x in s.get(key, []) if x.get(field) is not None]

    if "harness_smoke" in s:
        h = median(col("harness_smoke", "wall_s"))
        raw = median(col("raw_smoke", "wall_s"))
        rb = median(col("raw_boot", "wall_s"))
        r = paired_ratio(col("harness_smoke", "wall_s"), col("raw_smoke", "wall_s"))
        fastest = ratio(min(col("harness_smoke", "wall_s"), default=None),
                        min(col("raw_smoke", "wall_s"), default=None))
        row("boot", "`harness run` smoke.boot_and_command, whole process", h, "s", ref=raw,
            ref_name="raw script, same argv, same commands", ratio_v=r,
            target=TARGETS["boot_ratio"], check=r,
            note="ratio: median of the per-round ratios (rounds interleave both sides); "
                 f"ratio of the fastest runs: {_fmt(fastest)}")
        row("boot", "raw script: boot marker, poweroff -f (no commands)", rb, "s",
            note="the guest alone; the smoke commands add the rest")
        row("boot", "`harness run`, nothing selected (fixed cost)",
            median(col("harness_empty", "wall_s")), "s")
        row("boot", "harness: before the test (start-up, plan, checks)",
            median(col("harness_smoke", "before_test_s")), "s")
        hb, rp = col("harness_smoke", "boot_s"), col("raw_smoke", "prompt_s")
        row("boot", "harness: boot to shell (launch to prompt)", median(hb), "s",
            ref=median(rp), ref_name="raw: start to prompt", ratio_v=paired_ratio(hb, rp))
        row("boot", "harness: test minus boot (commands, poweroff)",
            median([x["test_s"] - x["boot_s"] for x in s["harness_smoke"]]), "s",
            ref=median([x["commands_s"] + x["poweroff_s"] for x in s["raw_smoke"]]),
            ref_name="raw: commands + poweroff")
        row("boot", "harness: after the test (teardown, reports, exit)",
            median(col("harness_smoke", "after_test_s")), "s")
    if "console" in s:
        for key, label, targeted in (("command", "Console.run('true')", True),
                                     ("output_command", "Console.run('seq 1 2000')", False)):
            per = {k: [v for x in s["console"] for v in x[f"{key}_ms"][k]]
                   for k in s["console"][0][f"{key}_ms"]}
            cpu = {k: median([x[f"{key}_cpu_ms"][k] for x in s["console"]])
                   for k in s["console"][0][f"{key}_cpu_ms"]}
            h, m = median(per["harness"]), median(per["minimal"])
            r = ratio(h, m)
            row("latency", f"{label} round trip", h, "ms", ref=m,
                ref_name="minimal pexpect marker loop", ratio_v=r,
                target=TARGETS["latency_ratio"] if targeted else "", check=r,
                note=f"CPU per command: harness {cpu['harness']:.1f} ms, "
                     f"minimal loop {cpu['minimal']:.1f} ms")
    if "parallel_j1" in s and "parallel_j2" in s:
        t1 = median(col("parallel_j1", "throughput_per_min"))
        t2 = median(col("parallel_j2", "throughput_per_min"))
        r = ratio(t2, t1)
        boots = {j: median([b for x in s[f"parallel_j{j}"] for b in x["boot_s"] if b == b])
                 for j in (1, 2)}  # b == b: NaN (no boot recorded) left out
        cpu = median([x["cpu_s"] / x["tests"] for k in ("parallel_j1", "parallel_j2")
                      for x in s[k]])
        row("parallel", "8 boot-and-command tests, --jobs 2", t2, "tests/min", ref=t1,
            ref_name="--jobs 1", ratio_v=r, target=TARGETS["parallel_ratio"], check=r,
            note=f"median boot {_fmt(boots[1], 's')} alone, {_fmt(boots[2], 's')} two at a time; "
                 f"harness CPU {cpu:.2f} s per test")
        for k in ("parallel_j1", "parallel_j2", "parallel_j2_restore"):
            for x in s.get(k, []):
                for f in x.get("failures", []):
                    b.notes.append(f"{k}: {f['test']} {f['result']}: {f['message'][:200]}")
    if "parallel_j2_restore" in s and "parallel_j2" in s:
        tr = median(col("parallel_j2_restore", "throughput_per_min"))
        t2 = median(col("parallel_j2", "throughput_per_min"))
        restores = median([v for x in s["parallel_j2_restore"] for v in x["restore_s"] if v == v])
        row("snapshot", "8 isolated tests, --jobs 2, each guest restored", tr, "tests/min",
            ref=t2, ref_name="--jobs 2, each guest booted", ratio_v=ratio(tr, t2),
            note=f"median restore {_fmt(restores, 's')} two at a time; the snapshot saved "
                 "beforehand (a cache that outlives runs)")
    for x in s.get("snapshot", []):
        cold, rest = median(x["cold_s"]), median(x["restore_s"])
        fraction = paired_ratio(x["restore_s"], x["cold_s"])
        label = x["env"] + (" (crosvm double)" if x["engine"] == "crosvm" else "")
        row("snapshot", f"{label}: restore to an answering shell", rest, "s", ref=cold,
            ref_name="cold boot to an answering shell", ratio_v=fraction,
            target=TARGETS["restore_fraction"], check=fraction,
            note=f"{len(x['restore_s'])} rounds, interleaved; the save took "
                 f"{_fmt(x.get('save_s'), 's')} after a {_fmt(x.get('build_boot_s'), 's')} boot; "
                 f"snapshot {_fmt(x.get('snapshot_mib'), 'MiB')} on disk")
        row("snapshot", f"  {label}: peak VMM memory per guest",
            median(x["restore_hwm_mib"]), "MiB", ref=median(x["cold_hwm_mib"]),
            ref_name="booted guest", ratio_v=ratio(median(x["restore_hwm_mib"]),
                                                   median(x["cold_hwm_mib"])),
            note="VmHWM summed over the VMM's session (the double: itself and its QEMU)")
        row("snapshot", f"  {label}: disk per restored guest", median(x["restore_disk_kib"]),
            "KiB", ref=median(x["cold_disk_kib"]), ref_name="booted guest's raw disks",
            note="allocated blocks of its private directory (qcow2 overlays) after a `sync`; "
                 "the snapshot is shared by every guest")
    if "default_boot" in s and "default_restore_warm_cache" in s:
        boot = median(col("default_boot", "wall_s"))
        warm = median(col("default_restore_warm_cache", "wall_s"))
        cold = median(col("default_restore_cold_cache", "wall_s"))
        r = paired_ratio(col("default_restore_warm_cache", "wall_s"), col("default_boot",
                                                                          "wall_s"))
        x, y = s["default_restore_warm_cache"][-1], s["default_boot"][-1]
        row("snapshot", "default run, every test isolated by restore", warm, "s", ref=boot,
            ref_name="shared guests, cold boots (--no-snapshot)", ratio_v=r,
            target=TARGETS["default_run_ratio"], check=r,
            note=f"{x['guests']['restore']} guests restored, {x['booted']} booted (reboots "
                 f"are not starts); --no-snapshot booted {y['booted']}; results "
                 f"{x['results']} vs {y['results']}; test time {x['test_s']:.0f} s vs "
                 f"{y['test_s']:.0f} s")
        row("snapshot", "  the same from an empty snapshot cache", cold, "s", ref=boot,
            ref_name="shared guests, cold boots", ratio_v=paired_ratio(
                col("default_restore_cold_cache", "wall_s"), col("default_boot", "wall_s")),
            note="each environment boots once and saves before its tests restore")
    if "capture_harness" in s:
        cap = median(col("capture_harness", "mb_per_s"))
        raw_cap = median(col("capture_raw", "mb_per_s"))
        row("serial", f"capture {b.args.capture_mb:g} MB via Console.run (host-speed source)",
            cap, "MB/s", ref=raw_cap, ref_name="raw pty drain", ratio_v=ratio(cap, raw_cap),
            target=TARGETS["capture_mb_s"], check=cap)
        rss = [x["maxrss_mib"] for x in s.get("capture_harness", [])]
        rss += [x["maxrss_kib"] / 1024 for k in ("serial_guest_harness", "parallel_j1",
                                                  "parallel_j2") for x in s.get(k, [])]
        peak = max(rss) if rss else None
        row("serial", "peak harness memory (peak RSS)", peak, "MiB",
            target=TARGETS["peak_rss_mib"], check=peak,
            note="VmHWM; the max of `harness run` (serial test, 8-test runs) and the "
                 "capture process")
    if "serial_guest_harness" in s:
        g = median(col("serial_guest_harness", "mb_per_s"))
        gr = median(col("serial_guest_raw", "mb_per_s"))
        row("serial", f"TCG guest writes {b.args.guest_serial_mb:g} MB: `harness run`", g,
            "MB/s", ref=gr, ref_name="raw script", ratio_v=ratio(g, gr),
            note="bound by QEMU's emulated 16550 UART, for any tool")
    if "guest_serial" in s:
        per = {v: median([x[v]["mb_per_s"] for x in s["guest_serial"]])
               for v in ("harness", "minimal")}
        cpu = {v: median([x[v]["cpu_s"] / x[v]["seconds"] for x in s["guest_serial"]])
               for v in ("harness", "minimal")}
        row("serial", "  same guest, in process: Console.run", per["harness"], "MB/s",
            ref=per["minimal"], ref_name="minimal pexpect loop",
            ratio_v=ratio(per["harness"], per["minimal"]),
            note=f"reader CPU per second of output: harness {cpu['harness']:.2f} s, "
                 f"minimal {cpu['minimal']:.2f} s")
    if "labgrid" in s and "console" in s:
        hb = median(col("console", "boot_to_shell_s"))
        lb = median(col("labgrid", "boot_to_shell_s"))
        pr = paired_ratio(col("console", "boot_to_shell_s"), col("labgrid", "boot_to_shell_s"))
        row("peer", "boot to shell: harness Guest.start()", hb, "s", ref=lb,
            ref_name="labgrid QEMUDriver.on + ShellDriver", ratio_v=pr,
            target=TARGETS["peer_boot"], ahead=None if pr is None else pr < 1,
            note="harness CPU during the boot: "
                 f"{_fmt(median(col('console', 'boot_cpu_s')), 's')}")
        raw_p = median(col("raw_smoke", "prompt_s"))
        row("peer", "  labgrid boot to shell vs raw start-to-prompt", lb, "s", ref=raw_p,
            ref_name="raw", ratio_v=paired_ratio(col("labgrid", "boot_to_shell_s"),
                                                 col("raw_smoke", "prompt_s")))
        hc = median([v for x in s["console"] for v in x["command_ms"]["harness"]])
        lc = median([v for x in s["labgrid"] for v in x["command_ms"]])
        row("peer", "command round trip: harness Console.run", hc, "ms", ref=lc,
            ref_name="labgrid ShellDriver.run", ratio_v=ratio(hc, lc),
            target=TARGETS["peer_command"],
            ahead=None if hc is None or lc is None else hc < lc)
    if "plan_library" in s:
        t = median(col("plan_library", "total_s"))
        row("plan", f"{b.args.plan_entries} entries: load + select crosvm + 20 shards", t, "s",
            target=TARGETS["plan_s"], check=t,
            note="harness.spec.load_specs, plan.make_plan, plan.assign_shards")
        row("plan", "  peak memory of that process", median(col("plan_library", "maxrss_mib")),
            "MiB", ref=median(col("plan_library", "maxrss_interpreter_mib")),
            ref_name="interpreter alone")
        c = median(col("plan_cli", "wall_s"))
        row("plan", "  `harness plan --device-type crosvm --total-shards 20`, whole process",
            c, "s", target=TARGETS["plan_s"], check=c,
            note=f"peak {median([x['maxrss_kib'] / 1024 for x in s['plan_cli']]) or 0:.0f} MiB")
    return rows


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit in ("ms", "MB/s", "MiB", "tests/min") or abs(v) >= 100:
        text = f"{v:.1f}"
    else:
        text = f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return f"{text} {unit}".strip()


def table(rows: list[dict[str, Any]]) -> str:
    header = ("section", "figure", "value", "reference", "ratio", "target", "")
    lines = [header]
    for r in rows:
        ref = _fmt(r["reference"], r["unit"]) + (f" ({r['reference_name']})"
                                                 if r["reference_name"] else "")
        lines.append((r["section"], r["figure"], _fmt(r["value"], r["unit"]),
                      ref if r["reference"] is not None else "-",
                      f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                      r["target"] or "", r["verdict"]))
    widths = [min(70, max(len(str(line[i])) for line in lines)) for i in range(len(header))]
    out = []
    for line in lines:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    notes = [f"  note ({r['figure'].strip()}): {r['note']}" for r in rows if r["note"]]
    return "\n".join(out + notes)


# --------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON,
                    help=f"write figures and samples here (default: {DEFAULT_JSON})")
    ap.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                    help=f"run only these sections (repeatable): {', '.join(SECTIONS)}")
    ap.add_argument("--env", default="qemu-x64-minimal", help="environment to boot")
    ap.add_argument("--environments", help="environments file (default: the harness's)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="interleaved repetitions of the boot, latency and peer measurements")
    ap.add_argument("--blocks", type=int, default=3, help="latency: alternating blocks")
    ap.add_argument("--per-block", type=int, default=10, help="latency: commands per block")
    ap.add_argument("--parallel-rounds", type=int, default=3,
                    help="interleaved --jobs 1 / --jobs 2 pairs (TCG boots vary run to run)")
    ap.add_argument("--serial-rounds", type=int, default=1)
    ap.add_argument("--guest-serial-mb", type=float, default=0.5,
                    help="MB a TCG guest writes to its UART (about 0.3 MB/s: keep it small)")
    ap.add_argument("--capture-mb", type=float, default=50.0,
                    help="MB pushed through Console.run from a host-speed source")
    ap.add_argument("--snapshot-env", action="append", metavar="ENV",
                    help=f"environments of the restore-vs-boot figures (repeatable; default: "
                         f"{', '.join(SNAPSHOT_ENVS)}; crosvm ones run the double)")
    ap.add_argument("--snapshot-rounds", type=int, default=3)
    ap.add_argument("--default-run-env", action="append", default=[], metavar="ENV",
                    help="narrow the default-run figure to these environments (default: all, "
                         "as `./dev run`)")
    ap.add_argument("--default-run-rounds", type=int, default=1,
                    help="each round: --no-snapshot, restore from an empty cache, restore from "
                         "the cache it left (three default runs, about 2-3 min each)")
    ap.add_argument("--plan-entries", type=int, default=20_000)
    ap.add_argument("--plan-rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="a fast check that everything runs: 2 rounds, smaller volumes")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    if args.quick:
        args.snapshot_rounds = 1
        args.snapshot_env = args.snapshot_env or ["qemu-x64-minimal"]
        args.default_run_env = args.default_run_env or ["qemu-x64-minimal"]
        args.rounds, args.blocks, args.per_block = 2, 2, 5
        args.guest_serial_mb, args.capture_mb, args.plan_rounds = 0.3, 10.0, 1
        args.parallel_rounds = 1
    if args.snapshot_env is None:
        args.snapshot_env = list(SNAPSHOT_ENVS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    _reexec_in_venv()
    sys.path.insert(0, str(BENCH))
    args = parse_args(argv)
    sections = set(args.only or SECTIONS)
    scratch = Scratch(args.keep)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_term)
    bench: Bench | None = None
    error: str | None = None
    machine: dict[str, Any] = {}
    argv_ok: bool | None = None
    try:
        bench = Bench(args, scratch)
        machine = _machine()
        argv_ok = bench.check_argv_matches_plan()
        if not argv_ok:
            bench.notes.append("the builder's argv differs from `harness plan --json`")
        bench.rounds(sections)
        if "parallel" in sections:
            bench.parallel()
        if "serial" in sections:
            bench.serial()
        if "plan" in sections:
            bench.plan()
        if "snapshot" in sections:
            bench.snapshot()
        if "default-run" in sections:
            bench.default_run()
    except KeyboardInterrupt:
        error = "interrupted"
        print("\ninterrupted: stopping guests, reporting what was measured", file=sys.stderr)
    except Exception as e:  # report what was measured so far, then fail
        error = f"{type(e).__name__}: {e}"
        print(f"benchmark failed: {error}", file=sys.stderr)
    finally:
        killed = scratch.sweep()
        if args.keep:
            print(f"scratch kept in {scratch.root}", file=sys.stderr)
        scratch.close()
    if bench is None:
        return 1
    if killed:
        bench.notes.append(f"killed {len(killed)} stray QEMU processes at the end")
    rows = figures(bench)
    print()
    print(table(rows))
    for note in bench.notes:
        print(f"note: {note}")
    machine["loadavg_end"] = os.getloadavg()
    doc = {
        "issue": 7,
        "started": started.isoformat(),
        "duration_s": round(time.monotonic() - t0, 1),
        "error": error,
        "machine": machine,
        "environment": args.env,
        "argv_matches_harness_plan": argv_ok,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "figures": rows,
        "notes": bench.notes,
        "samples": bench.samples,
    }
    # A failed or interrupted run never replaces the last complete figures.
    out = args.json if error is None else args.json.with_name(args.json.stem + ".partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {out} ({doc['duration_s']:.0f} s)")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
