"""The exit status a CI builder trusts: one table (harness.errors.EXIT_STATUSES), shown the
same in the README and `--help`, and each verdict caused for real through the command line.

No guest boots here: the cases are decided before one would (the selection, the inputs,
an environment that cannot run on this host). A run that boots guests and passes or is
interrupted (0, 130, 143) is caused in tests/test_faults.py and tests/test_workflow.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.accel import Accel, Verdict
from harness.cli import build_parser, main
from harness.engines.base import kvm_access_problem
from harness.engines.crosvm import CrosvmEngine
from harness.environments import load
from harness.errors import EXIT_NO_TESTS, EXIT_STATUSES, exit_status_table

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "crosvm_double" / "crosvm"


def test_readme_and_help_show_the_one_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit status"):]
    section = section[:section.index("\n## ")]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE)
    assert [(int(s), m) for s, m in rows] == [(s, m.replace("|", "/")) for s, m in
                                             EXIT_STATUSES]
    assert {0, 1, 2, 5, 130, 143} <= {s for s, _ in EXIT_STATUSES}
    parser = build_parser()
    for help_text in (parser.format_help(),
                      *(parser._subparsers._group_actions[0].choices[c].format_help()  # type: ignore[union-attr]
                        for c in ("run", "plan"))):
        assert exit_status_table() in help_text
    proc = subprocess.run([sys.executable, "-m", "harness", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    for status, _ in EXIT_STATUSES:
        assert re.search(rf"^  {status} ", proc.stdout, re.MULTILINE), status


# -- 5: a selection that runs nothing ------------------------------------------------------------


@pytest.mark.parametrize("selection", [
    ["-k", "smoke.bot_and_command"],  # a typo
    ["--device-type", "AEMU"],  # no environment has it
    ["--env", "qemu-x64", "--suite", "no-such-suite"],
])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_nothing_selected_exits_5_and_says_so(command: str, selection: list[str],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "out")] if command == "run" else []
    assert main([command, *selection, *out]) == EXIT_NO_TESTS
    err = capsys.readouterr().err
    assert "nothing to run: no test run matches the selection" in err
    assert selection[-1] in err and "--allow-empty" in err
    assert main([command, *selection, *out, "--allow-empty"]) == 0
    if command == "run":  # the (empty) results are written all the same
        data = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert data["tests"] == []


def test_an_empty_tests_json_exits_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = tmp_path / "tests.json"
    tests.write_text("[]")
    assert main(["run", "--tests", str(tests), "--out", str(tmp_path / "out")]) == EXIT_NO_TESTS
    assert f"nothing to run: {tests} has no test entries" in capsys.readouterr().err


def test_an_empty_shard_exits_5_unless_accepted(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """More shards than runs: the last shards hold nothing (a CI matrix may well do that)."""
    select = ["--env", "qemu-x64", "-k", "reboot_shutdown.zircon_*"]  # two planned skips
    assert main(["plan", *select, "--total-shards", "4"]) == 0  # the full table: not empty
    assert main(["plan", *select, "--total-shards", "4", "--shard-index", "3"]) == EXIT_NO_TESTS
    assert "shard 3 of 4 holds none of the 2 selected test runs" in capsys.readouterr().err
    assert main(["plan", *select, "--total-shards", "4", "--shard-index", "3",
                 "--allow-empty"]) == 0


# -- plan --shard-index: that shard only -------------------------------------------------------


def test_plan_shows_the_one_shard_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    select = ["--env", "qemu-x64", "--env", "qemu-arm64", "--suite", "peripherals"]
    assert main(["plan", *select, "--json", "--total-shards", "3"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert len(full["shards"]) == 3 and "shard_index" not in full
    for index in range(3):
        assert main(["plan", *select, "--json", "--total-shards", "3",
                     "--shard-index", str(index)]) == 0
        one = json.loads(capsys.readouterr().out)
        assert [r["key"] for r in one["runs"]] == [
            r["key"] for r in full["runs"] if r["shard"] == index] == full["shards"][index]
        assert (one["shard_index"], one["total_shards"]) == (index, 3)
        assert "shards" not in one
        assert main(["plan", *select, "--total-shards", "3", "--shard-index", str(index)]) == 0
        text = capsys.readouterr().out.splitlines()
        rows = [line.split()[0] for line in text[1:] if line[:1].isdigit() and "runs" not in line]
        assert set(rows) == {str(index)} and len(rows) == len(one["runs"])
        assert f"in shard {index} of 3 (of {len(full['runs'])} in all)" in "\n".join(text)


# -- 1 and 0: a blocking environment that cannot run fails, an FYI one is skipped ------------


def environments_file(tmp_path: Path, *, blocking: bool, **changes: object) -> Path:
    """environments.json with its qemu-x64 as asked (blocking or FYI, another image...)."""
    data = json.loads((ROOT / "environments.json").read_text())
    data["environments"]["qemu-x64"].update(blocking=blocking, **changes)
    path = tmp_path / f"envs-{'blocking' if blocking else 'fyi'}.json"
    path.write_text(json.dumps(data))
    return path


def run_results(tmp_path: Path, envs: Path, env: str, *extra: str) -> tuple[int, dict]:
    out = tmp_path / f"out-{envs.stem}"
    status = main(["run", "--quiet", "--environments", str(envs), "--env", env,
                   "-k", "smoke.boot_and_command", "--out", str(out), *extra])
    [test] = json.loads((out / "summary.json").read_text())["tests"]
    return status, test


@pytest.mark.parametrize("blocking", [True, False])
def test_no_vmm_binary(blocking: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 on it
    envs = environments_file(tmp_path, blocking=blocking)
    status, test = run_results(tmp_path, envs, "qemu-x64")
    reason = "qemu-system-x86_64 not found on PATH (Debian package qemu-system-x86)"
    message = test["harness"]["attempts"][-1]["message"]
    if blocking:
        assert (status, test["result"]) == (1, "INFRA_FAIL")
        assert message == f"blocking environment qemu-x64 cannot run here: {reason}"
    else:
        assert (status, test["result"]) == (0, "SKIP")
        assert message == reason


@pytest.mark.parametrize("blocking", [True, False])
def test_an_image_that_cannot_be_built(blocking: bool, tmp_path: Path) -> None:
    envs = environments_file(tmp_path, blocking=blocking, image="debian-nonesuch")
    status, test = run_results(tmp_path, envs, "qemu-x64")
    message = test["harness"]["attempts"][-1]["message"]
    assert "guest image unavailable: unknown image 'debian-nonesuch'" in message
    assert (status, test["result"]) == ((1, "INFRA_FAIL") if blocking else (0, "SKIP"))


@pytest.mark.parametrize("blocking", [True, False])
def test_kvm_that_cannot_run_guests(blocking: bool, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """crosvm has no TCG: where the KVM verdict (here recorded, as a probe boot leaves it)
    says KVM cannot run guests, a blocking crosvm builder is red, an FYI one skips."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    monkeypatch.setenv("HARNESS_CROSVM", str(DOUBLE))
    data = json.loads((ROOT / "environments.json").read_text())
    data["environments"]["crosvm-x64"]["blocking"] = blocking
    envs = tmp_path / "envs.json"
    envs.write_text(json.dumps(data))
    env = load(envs).get("crosvm-x64")
    said = "probe boot under KVM failed: the VMM said 'unexpected vcpu exit: InternalError'"
    Accel(cache).store(CrosvmEngine(), env, Verdict(False, said))
    status, test = run_results(tmp_path, envs, "crosvm-x64")
    reason = f"crosvm cannot boot a guest here: {kvm_access_problem() or said}"
    message = test["harness"]["attempts"][-1]["message"]
    if blocking:
        assert (status, test["result"]) == (1, "INFRA_FAIL")
        assert message == f"blocking environment crosvm-x64 cannot run here: {reason}"
    else:
        assert (status, test["result"]) == (0, "SKIP")
        assert message == reason


def test_unmet_requirements_are_skips_even_on_blocking_environments(tmp_path: Path) -> None:
    """A test whose requirements the environment does not meet is skipped with the reason,
    blocking or not: the builder is not broken, the test is not for it."""
    out = tmp_path / "out"
    assert main(["run", "--quiet", "--env", "qemu-x64", "-k", "reboot_shutdown.zircon_*",
                 "--out", str(out)]) == 0
    tests = json.loads((out / "summary.json").read_text())["tests"]
    assert {t["result"] for t in tests} == {"SKIP"} and len(tests) == 2
    for t in tests:
        assert "needs a zircon guest" in t["harness"]["attempts"][-1]["message"]


# -- 2: bad usage or input ----------------------------------------------------------------------


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--env", "qemu-riscv", "--out", str(tmp_path / "out")]) == 2
    assert "no environment named 'qemu-riscv'" in capsys.readouterr().err
    assert main(["plan", "--shard-index", "1"]) == 2
