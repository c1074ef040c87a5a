"""The harness against a real crosvm, wherever one exists (HARNESS_CROSVM, then PATH).

Two levels, each skipped with its reason where it cannot run:

- The parser check needs only the binary: every command line `harness plan --device-type
  crosvm --json` prints, run by the real crosvm with `--hypervisor kvm[device=/nonexistent]`
  right after `run`, must get past argh and every configuration check and stop at opening
  KVM: exit 1 with "failed to open KVM device /nonexistent" (crosvm f1e797a,
  src/crosvm/sys/linux.rs run_kvm). A 35, or a 1 with other words, is the harness writing
  something crosvm refuses. `harness doctor` runs the same check.
- The suites need a working KVM too (a probe boot with that crosvm reaching the shell).
  This is the test that tells whether crosvm is first-class on a given builder; it also
  catches what the test double cannot imitate (tests/crosvm_double/README.md): arm64's 8250
  console (`ttyS0`), its PL030 RTC, the absent arm64 power button.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from harness import app, environments
from harness.accel import Accel
from harness.engines.base import EnvironmentUnavailable, RestoreFrom, RunPaths, VmmSetup
from harness.engines.crosvm import (
    PARSE_CHECK_EXPECTED,
    SNAPSHOT_ARCH_REASON,
    CrosvmEngine,
    parse_check_argv,
)
from harness.overlays import create_overlay

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def real_crosvm_binary() -> str:
    """The binary, found as the engine finds it; pytest.skip with the reason where none is."""
    binary = os.environ.get("HARNESS_CROSVM") or shutil.which("crosvm")
    if not binary:
        pytest.skip("no crosvm binary: HARNESS_CROSVM is not set and crosvm is not on PATH")
    if not os.access(binary, os.X_OK) or os.path.isdir(binary):
        pytest.skip(f"HARNESS_CROSVM={binary} is not an executable file")
    version = subprocess.run([binary, "version"], capture_output=True, text=True,
                             check=False, timeout=30, stdin=subprocess.DEVNULL).stdout
    if "double" in version:
        pytest.skip(f"HARNESS_CROSVM={binary} is the test double ({version.strip()}), "
                    "not a real crosvm")
    return os.path.abspath(binary)


def real_crosvm_with_kvm() -> str:
    """The binary, where a probe boot with it under KVM also works; else pytest.skip."""
    binary = real_crosvm_binary()
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x64"
    env = environments.load().get(f"crosvm-{arch}")
    try:
        # The runner's own verdict: a probe boot with this binary under KVM, cached per binary.
        anyio.run(Accel().resolve, CrosvmEngine(binary), env, backend="asyncio")
    except EnvironmentUnavailable as e:
        pytest.skip(f"real crosvm cannot run here: {e}")
    return binary


def planned_command_lines(binary: str) -> dict[str, list[str]]:
    """{environment: argv} from `harness plan --device-type crosvm --json`, one per environment."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "plan", "--device-type", "crosvm", "--json"],
        cwd=ROOT, env={**os.environ, "HARNESS_CROSVM": binary}, capture_output=True, text=True,
        timeout=300, check=True)
    argvs: dict[str, list[str]] = {}
    for run in json.loads(proc.stdout)["runs"]:
        argvs.setdefault(run["environment"], run["argv"])
    return argvs


def test_every_planned_command_line_gets_past_the_real_parser() -> None:
    binary = real_crosvm_binary()
    argvs = planned_command_lines(binary)
    assert argvs, "harness plan printed no crosvm run"
    missing = sorted({p for argv in argvs.values() for p in argv[-1:] if not os.path.exists(p)})
    if missing:
        pytest.skip(f"guest images not built ({', '.join(missing)}): crosvm opens the kernel "
                    f"before KVM, so the check cannot reach KVM; run `harness images build`")
    refused = []
    for env, argv in argvs.items():
        assert argv[0] == binary
        checked = parse_check_argv(argv)
        result = subprocess.run(checked, capture_output=True, text=True, check=False,
                                timeout=60, stdin=subprocess.DEVNULL)
        if result.returncode != 1 or PARSE_CHECK_EXPECTED not in result.stderr:
            refused.append(f"{env}: exit {result.returncode}\n  {' '.join(checked)}\n"
                           f"{result.stderr.strip()[-2000:]}")
    assert not refused, "real crosvm refuses planned command lines:\n" + "\n".join(refused)


def test_doctor_runs_the_parser_check_and_reports_the_version() -> None:
    """The engine's doctor (what `harness doctor` prints under "crosvm"), on the real binary."""
    binary = real_crosvm_binary()
    argvs = planned_command_lines(binary)
    report = anyio.run(CrosvmEngine(binary).doctor, [], argvs, backend="asyncio")
    assert report["version"] and report["version"].startswith("crosvm "), report
    assert report["missing_options"] == []
    assert set(report["parse_check"]) == set(argvs)
    bad = {env: said for env, said in report["parse_check"].items() if not said.startswith("ok:")}
    assert not bad, bad


def test_restore_command_line_and_snapshot_commands_pass_the_real_parser(tmp_path: Path) -> None:
    """What a restored crosvm guest runs (`run --restore PATH` on qcow2 overlays) gets past the
    real parser, and the snapshot probe finds `snapshot take` and `--restore` in the real help
    (x86_64 only: crosvm's own restore test does not run on aarch64)."""
    binary = real_crosvm_binary()
    engine = CrosvmEngine(binary)
    envs = environments.load()
    x64, arm64 = envs.get("crosvm-x64"), envs.get("crosvm-arm64")
    assert anyio.run(engine.snapshot_unavailable, x64, backend="asyncio") is None
    assert anyio.run(engine.snapshot_unavailable, arm64, backend="asyncio") == \
        SNAPSHOT_ARCH_REASON
    image = app.image_for(x64, build=False)
    if not Path(image.crosvm_kernel).exists():
        pytest.skip("guest images not built: run `harness images build`")
    work = tmp_path / "w"
    work.mkdir()
    base = tmp_path / "disk0.img"
    base.write_bytes(b"\0" * (1 << 20))
    overlay = anyio.run(create_overlay, base, work / "disk0.qcow2", backend="asyncio")
    argv = engine.command(x64, image, RunPaths(
        workdir=work, disks=(overlay,), disk_format="qcow2",
        restore=RestoreFrom(tmp_path / "snapshot")), VmmSetup(binary, "kvm"))
    result = subprocess.run(parse_check_argv(argv), capture_output=True, text=True,
                            check=False, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and PARSE_CHECK_EXPECTED in result.stderr, result.stderr
    # `snapshot take` and `suspend --full` as the engine sends them: parsed, then refused only
    # for want of a VM at the socket (exit 1, not argh's 35).
    socket = str(tmp_path / "nothing.sock")
    for args in (["suspend", "--full", socket], ["snapshot", "take", str(tmp_path / "s"), socket],
                 ["resume", "--full", socket]):
        result = subprocess.run([binary, "--no-syslog", *args], capture_output=True, text=True,
                                check=False, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 1, (args, result.returncode, result.stderr)


def test_suites_pass_on_real_crosvm(tmp_path: Path) -> None:
    binary = real_crosvm_with_kvm()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--device-type", "crosvm", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "HARNESS_CROSVM": binary}, capture_output=True,
        text=True, timeout=3600, check=False,
    )
    tests = json.loads((out / "summary.json").read_text())["tests"]
    failed = [f"{t['name']}: {t['harness']['attempts'][-1]['message']}" for t in tests
              if t["result"] not in ("PASS", "SKIP")]
    assert not failed, "\n".join(failed) + "\n" + proc.stderr[-4000:]
    assert any(t["result"] == "PASS" for t in tests), "nothing ran on crosvm"


def test_a_builds_boot_test_command_lines_pass_the_real_parser(tmp_path: Path) -> None:
    """What `harness plan --build-dir` prints for a Fuchsia build's crosvm boot tests
    (`run ... --initrd ZBI SHIM`, botanist's kernel command line, both arches) gets past the
    real parser and stops at opening KVM, as the planned Linux guests' command lines do."""
    from fuchsia_standin import build_for_tests

    binary = real_crosvm_binary()
    build = build_for_tests(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "plan", "--build-dir", str(build), "--device-type",
         "crosvm", "--json"], cwd=ROOT, env={**os.environ, "HARNESS_CROSVM": binary},
        capture_output=True, text=True, timeout=300, check=True)
    runs = [r for r in json.loads(proc.stdout)["runs"] if r.get("argv")]
    assert {r["environment"] for r in runs} == {"fuchsia-crosvm-x64", "fuchsia-crosvm-arm64"}
    for r in runs:
        argv = r["argv"]
        assert "--initrd" in argv and argv[-1].endswith(".bin"), argv
        result = subprocess.run(parse_check_argv(argv), capture_output=True, text=True,
                                check=False, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 1 and PARSE_CHECK_EXPECTED in result.stderr, \
            (r["name"], result.returncode, result.stderr[-2000:])
