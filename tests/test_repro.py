"""`harness repro`: find a test in a results directory and re-run exactly it.

The unit tests build results directories from hand-made RunResults (written by
`harness.report.write_reports`) and look at the chosen command with `--print`.
One integration test really fails a test in a QEMU guest and re-runs it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest

from harness import environments as envmod
from harness import plan as planmod
from harness.cli import main
from harness.engines.base import BinaryLookup
from harness.environments import Environment
from harness.errors import ConfigError, HarnessError
from harness.images.model import GuestImage
from harness.report import write_reports
from harness.repro import (
    exact_glob,
    harness_command,
    load_repro,
    run_arguments,
    write_repro_script,
)
from harness.results import Attempt, RunResult, Status
from harness.results import TestResult as TResult  # not "Test*": pytest would collect it
from harness.runner import Runner, RunOptions
from harness.spec import parse_specs

ROOT = Path(__file__).resolve().parent.parent
ENV = "qemu-x64-minimal"
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
HERE = [sys.executable, "-m", "harness"]  # what harness_command() gives in-process


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    tests = tmp_path / "inputs" / "tests.json"
    tests.parent.mkdir()
    tests.write_text("[]")
    envs = tmp_path / "inputs" / "environments.json"
    envs.write_text("{}")
    return tests, envs


def line(tests: Path, envs: Path, env: str, name: str, prog: Sequence[str] = ("harness",)) -> str:
    return shlex.join([*prog, "run", "--tests", str(tests), "--environments", str(envs),
                       "--env", env, "-k", exact_glob(name)])


def result(env: str, test: str, status: Status, repro: str) -> TResult:
    return TResult(test=test, suite="path", environment=env, engine="qemu", arch="x86_64",
                   blocking=True, repro=repro, folder=f"{env}/{test}",
                   attempts=[Attempt(status, message="" if status.ok else f"{test} failed",
                                     start_time=T0)])


@pytest.fixture
def run_dir(tmp_path: Path, inputs: tuple[Path, Path]) -> Path:
    """A run: `net.ping` fails on arm64 and passes on x64; `disk.read` fails on both."""
    tests, envs = inputs
    rows = [
        ("qemu-x64", "net.ping", Status.PASS),
        ("qemu-arm64", "net.ping", Status.FAIL),
        ("qemu-x64", "disk.read", Status.FAIL),
        ("qemu-arm64", "disk.read", Status.ABORT),
        ("qemu-x64", "disk.write", Status.PASS),
        ("qemu-x64", "odd[1]*name", Status.FAIL),
    ]
    out = tmp_path / "run"
    write_reports(RunResult(
        results=[result(e, t, s, line(tests, envs, e, t)) for e, t, s in rows],
        out_dir=out, started=T0))
    return out


def printed(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["repro", *args, "--print"]) == 0, capsys.readouterr().err
    return shlex.split(capsys.readouterr().out)


# -- the command chosen ----------------------------------------------------------------------


def test_print_gives_the_stored_run_with_this_harness(
        capsys: pytest.CaptureFixture[str], run_dir: Path, inputs: tuple[Path, Path]) -> None:
    tests, envs = inputs
    argv = printed(capsys, str(run_dir), "qemu-x64/disk.read")
    assert argv == [*HERE, "run", "--tests", str(tests), "--environments", str(envs),
                    "--env", "qemu-x64", "-k", "disk.read"]


def test_name_picks_the_one_failure(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    argv = printed(capsys, str(run_dir), "net.ping")
    assert argv[argv.index("--env") + 1] == "qemu-arm64"  # passed on x64, failed on arm64


def test_env_option_and_key_and_glob(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    argv = printed(capsys, str(run_dir), "disk.read", "--env", "qemu-arm64")
    assert argv[-4:] == ["--env", "qemu-arm64", "-k", "disk.read"]
    argv = printed(capsys, str(run_dir), "disk.w*")
    assert argv[-4:] == ["--env", "qemu-x64", "-k", "disk.write"]
    argv = printed(capsys, str(run_dir), "qemu-x64/odd*")
    assert argv[-1] == exact_glob("odd[1]*name")


def test_ambiguous_names_the_candidates(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    assert main(["repro", str(run_dir), "disk.read", "--print"]) == 2
    err = capsys.readouterr().err
    assert "is ambiguous" in err
    assert "qemu-x64/disk.read" in err and "qemu-arm64/disk.read" in err
    assert "--env" in err
    assert main(["repro", str(run_dir), "disk.*", "--env", "qemu-x64", "--print"]) == 0


def test_unknown_test_lists_near_matches(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    assert main(["repro", str(run_dir), "disk.raed", "--print"]) == 2
    err = capsys.readouterr().err
    assert str(run_dir / "summary.json") in err
    assert "no test 'disk.raed'" in err
    assert "did you mean: disk.read" in err
    # Nothing close: the tests that did not pass are listed instead.
    assert main(["repro", str(run_dir), "zzzz", "--print"]) == 2
    err = capsys.readouterr().err
    assert "the tests that did not pass: qemu-arm64/disk.read" in err
    assert main(["repro", str(run_dir), "disk.read", "--env", "fuchsia", "--print"]) == 2
    assert "no results for environment 'fuchsia'; the run has: qemu-arm64, qemu-x64" in \
        capsys.readouterr().err


def test_missing_or_bad_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["repro", str(tmp_path), "x", "--print"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "summary.json") in err and "cannot read" in err
    (tmp_path / "summary.json").write_text("[1,")
    assert main(["repro", str(tmp_path), "x", "--print"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_inputs_must_still_exist(capsys: pytest.CaptureFixture[str], run_dir: Path,
                                 inputs: tuple[Path, Path]) -> None:
    tests, _ = inputs
    tests.unlink()
    assert main(["repro", str(run_dir), "qemu-x64/disk.read", "--print"]) == 2
    err = capsys.readouterr().err
    assert f"--tests {tests} no longer exists" in err
    assert "qemu-x64/disk.read" in err


def test_builtin_suites_need_no_tests_file(tmp_path: Path) -> None:
    stored = shlex.join(["/somewhere/on/ci/.venv/bin/harness", "run", "--env", "qemu-x64",
                         "-k", "core.kernel_unittests"])
    write_reports(RunResult([result("qemu-x64", "core.kernel_unittests", Status.FAIL, stored)],
                            out_dir=tmp_path, started=T0))
    repro = load_repro(tmp_path, "core.kernel_unittests")
    # The CI bot's harness path is not used: this harness runs the stored arguments.
    assert repro.command() == [*HERE, "run", "--env", "qemu-x64", "-k", "core.kernel_unittests"]


def test_stored_lines_accepted_and_refused() -> None:
    assert run_arguments("/usr/bin/python3 -m harness run -k x", "f", "k") == ["run", "-k", "x"]
    assert run_arguments("harness run --env e", "f", "k") == ["run", "--env", "e"]
    for bad, problem in [("rm -rf /", "not a harness command"),
                         ("harness merge a --out b", "not a `harness run` command"),
                         ("harness run 'unclosed", "cannot parse"),
                         ("", "not a harness command")]:
        with pytest.raises(ConfigError, match=problem):
            run_arguments(bad, "f", "k")


def test_no_repro_stored(tmp_path: Path) -> None:
    write_reports(RunResult([result("e", "t", Status.FAIL, "")], out_dir=tmp_path, started=T0))
    with pytest.raises(ConfigError, match="no repro command stored"):
        load_repro(tmp_path, "t")


def test_exact_glob_matches_only_its_name() -> None:
    names = ["odd[1]*name", "odd1xname", "odd[1]Xname", "a?b", "axb", "plain.name"]
    for name in names:
        assert [n for n in names if fnmatch.fnmatchcase(n, exact_glob(name))] == [name]
    specs = parse_specs([{"test": {"name": n, "path": "/bin/true"},
                          "environments": [{"dimensions": {"device_type": "QEMU"}}]}
                         for n in names], "<test>")
    plan = planmod.make_plan(specs, envmod.load(None), planmod.Selection(
        env_names=(ENV,), globs=(exact_glob("odd[1]*name"),)))
    assert [r.spec.name for r in plan.runs] == ["odd[1]*name"]


# -- the harness's own path ------------------------------------------------------------------


def test_harness_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "venv" / "bin" / "harness"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert harness_command(str(script), "/x/python") == [str(script)]
    monkeypatch.chdir(tmp_path / "venv")
    assert harness_command("bin/harness", "/x/python") == [str(script)]  # made absolute
    # `python -m harness` (argv[0] is __main__.py) or in-process: this interpreter, not resolved.
    link = tmp_path / "venv" / "bin" / "python"
    link.symlink_to(sys.executable)
    assert harness_command("/src/harness/__main__.py", str(link)) == [str(link), "-m", "harness"]
    assert harness_command("/usr/bin/pytest", "bin/python") == [str(link), "-m", "harness"]
    assert harness_command("/nonexistent/harness", "") == ["harness"]


# -- repro.sh, written by the runner -----------------------------------------------------------


class _NoVmm:
    """An engine that is available but never asked to boot (the image fails first)."""

    name = "qemu"
    accelerators = ("tcg",)

    def locate(self, arch: str) -> BinaryLookup:
        return BinaryLookup("no-vmm", "/no-vmm", "test")

    async def version(self, binary: str) -> str:
        return ""


def test_runner_writes_repro_sh_for_failed_tests(tmp_path: Path) -> None:
    specs = parse_specs([{"test": {"name": n, "path": "/bin/true"},
                          "environments": [{"dimensions": {"device_type": "QEMU", "cpu": "x64",
                                                           "devices": "minimal"}}]}
                         for n in ("needs-image", "odd [name]")], "<test>")
    plan = planmod.make_plan(specs, envmod.load(None), planmod.Selection(env_names=(ENV,)))
    # Blocking, so that an image that cannot be had fails the test (an FYI one would skip).
    runs = [dataclasses.replace(r, environment=dataclasses.replace(r.environment, blocking=True))
            for r in plan.runs]

    def no_image(env: Environment) -> GuestImage:
        raise HarnessError("no image here")

    out = tmp_path / "out"
    base = [*HERE, "run", "--tests", "/abs/tests.json"]
    runner = Runner(runs, {}, {"qemu": _NoVmm()}, RunOptions(  # type: ignore[dict-item]
        out_dir=out, repro_base=base, progress=False), image_for=no_image)
    run = anyio.run(runner.run, backend="asyncio")
    assert [r.status for r in run.results] == [Status.INFRA_FAIL, Status.INFRA_FAIL]
    for r in run.results:
        script = out / r.folder / "repro.sh"
        assert script.read_text() == f"#!/bin/sh\nexec {r.repro}\n"
        assert os.access(script, os.X_OK)
        assert r.final.artifacts["repro.sh"] == f"{r.folder}/repro.sh"
        assert shlex.split(r.repro) == [*base, "--env", ENV, "-k", exact_glob(r.test)]
    write_reports(run)
    entry = json.loads((out / "summary.json").read_text())["tests"][0]
    assert entry["output_dir"] == f"{ENV}/needs-image" and "repro.sh" in entry["output_files"]


def test_write_repro_script_skips_passing_or_lineless(tmp_path: Path) -> None:
    assert write_repro_script(tmp_path, result("e", "t", Status.FAIL, "")) is None
    r = result("e", "t", Status.FAIL, "harness run -k t")
    assert write_repro_script(tmp_path, r) == "e/t/repro.sh"
    assert subprocess.run(["sh", "-n", str(tmp_path / "e/t/repro.sh")], check=False
                          ).returncode == 0


# -- end to end: fail for real, then repro ---------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private TMPDIR for the harness: its VMM sockets must fit a Unix socket path,
    and any VMM left behind can be found by it."""
    path = Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _harness(tmp: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("XDG_RUNTIME_DIR", None)
    for name in ("TEST_SHARD_INDEX", "TEST_TOTAL_SHARDS", "GTEST_SHARD_INDEX",
                 "GTEST_TOTAL_SHARDS"):
        env.pop(name, None)
    proc = subprocess.run([*HERE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    left = subprocess.run(["pgrep", "-f", f"qemu-system.*{tmp}"], capture_output=True,
                          text=True, check=False).stdout.split()
    assert not left, f"a VMM was left behind: {left}"
    return proc


@pytest.mark.integration
def test_repro_reruns_the_failing_test_and_fails_the_same_way(
        tmp_path: Path, short_tmp: Path) -> None:
    envs_doc = json.loads((ROOT / "environments.json").read_text())
    envs_doc["environments"][ENV]["blocking"] = True  # so its failure fails the run
    envs = tmp_path / "environments.json"
    envs.write_text(json.dumps(envs_doc))
    tests = tmp_path / "tests.json"
    where = [{"dimensions": {"device_type": "QEMU", "cpu": "x64", "devices": "minimal"}}]
    tests.write_text(json.dumps([
        {"test": {"name": "always-fails", "path": "/bin/false", "timeout_secs": 60},
         "environments": where},
        {"test": {"name": "passes", "path": "/bin/true", "timeout_secs": 60},
         "environments": where},
    ]))
    first = tmp_path / "first"
    proc = _harness(short_tmp, tmp_path, "run", "--tests", str(tests), "--environments",
                    str(envs), "--env", ENV, "--out", str(first), "--jobs", "1")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((first / "summary.json").read_text())
    by_name = {t["name"]: t for t in summary["tests"]}
    failed = by_name["always-fails"]
    assert failed["result"] == "FAIL" and by_name["passes"]["result"] == "PASS"
    message = failed["harness"]["attempts"][-1]["message"]
    assert message == "/bin/false exited 1"
    # The printed line, stored in summary.json and in the folder's repro.sh, is pasteable.
    repro = failed["harness"]["repro"]
    assert f"repro: {repro}" in proc.stderr
    assert shlex.split(repro) == [*HERE, "run", "--tests", str(tests), "--environments",
                                  str(envs), "--env", ENV, "-k", "always-fails"]
    script = first / failed["harness"]["folder"] / "repro.sh"
    assert script.read_text() == f"#!/bin/sh\nexec {repro}\n" and os.access(script, os.X_OK)
    assert failed["output_dir"] == f"{ENV}/always-fails" and "repro.sh" in failed["output_files"]

    second = tmp_path / "second"
    proc = _harness(short_tmp, tmp_path, "repro", str(first), "always-fails",
                    "--out", str(second))
    assert proc.returncode == 1, proc.stderr
    rerun = json.loads((second / "summary.json").read_text())["tests"]
    assert [(t["name"], t["result"]) for t in rerun] == [("always-fails", "FAIL")]
    assert rerun[0]["harness"]["environment"] == ENV
    assert rerun[0]["harness"]["attempts"][-1]["message"] == message
    assert rerun[0]["failure_reason"] == failed["failure_reason"]
