"""environments.json: the defaults load, and every kind of mistake names file, entry and field."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import environments
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_default_file_has_the_required_environments() -> None:
    envs = environments.load()
    names = set(envs.environments)
    assert {"crosvm-x64", "crosvm-arm64", "qemu-x64", "qemu-arm64"} <= names
    assert len(envs.device_configs) >= 2
    assert {"minimal", "full"} <= set(envs.device_configs)
    x64 = envs.get("crosvm-x64")
    assert x64.dimensions == {"device_type": "crosvm", "cpu": "x64"}
    assert x64.matches({"device_type": "crosvm", "cpu": "x64"})
    assert not x64.matches({"device_type": "crosvm", "cpu": "arm64"})
    assert envs.get("qemu-arm64").arch == "arm64"
    # New crosvm builders start as FYI.
    assert not envs.get("crosvm-x64").blocking
    assert envs.get("qemu-x64").blocking


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "envs.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def good() -> dict:
    return json.loads((ROOT / "environments.json").read_text())


@pytest.mark.parametrize(
    ("mutate", "entry", "field", "problem"),
    [
        (lambda d: d["environments"]["qemu-x64"].update(cpus="two"),
         "environment 'qemu-x64'", "cpus", "expected int"),
        (lambda d: d["environments"]["qemu-x64"].update(cpus=0),
         "environment 'qemu-x64'", "cpus", "positive"),
        (lambda d: d["environments"]["qemu-x64"].update(cpus=True),
         "environment 'qemu-x64'", "cpus", "expected int"),
        (lambda d: d["environments"]["qemu-x64"].update(engine="firecracker"),
         "environment 'qemu-x64'", "engine", "must be one of qemu, crosvm"),
        (lambda d: d["environments"]["qemu-x64"].update(arch="riscv64"),
         "environment 'qemu-x64'", "arch", "must be one of"),
        (lambda d: d["environments"]["qemu-x64"].update(devices="huge"),
         "environment 'qemu-x64'", "devices", "no device config named 'huge'"),
        (lambda d: d["environments"]["qemu-x64"].pop("dimensions"),
         "environment 'qemu-x64'", "dimensions", "is required"),
        (lambda d: d["environments"]["qemu-x64"]["dimensions"].update(cpu="arm64"),
         "environment 'qemu-x64'", "dimensions.cpu", "arch x86_64 is cpu 'x64'"),
        (lambda d: d["environments"]["crosvm-x64"].update(accel="tcg"),
         "environment 'crosvm-x64'", "accel", "crosvm has no TCG"),
        (lambda d: d["environments"]["qemu-x64"].update(kernel_args="quiet"),
         "environment 'qemu-x64'", "kernel_args", "expected list"),
        (lambda d: d["environments"]["qemu-x64"].update(kernel_args=["quiet", 3]),
         "environment 'qemu-x64'", "kernel_args[1]", "expected str"),
        (lambda d: d["environments"]["qemu-x64"].update(image={"kernel": "nope/bzImage"}),
         "environment 'qemu-x64'", "image.kernel", "kernel file not found"),
        (lambda d: d["device_configs"]["full"]["devices"].update({"virtio-sound": {}}),
         "device config 'full'", "devices.virtio-sound", "unknown device type"),
        (lambda d: d["device_configs"]["full"]["devices"]["virtio-blk"].update(size_mib="big"),
         "device config 'full'", "devices.virtio-blk.size_mib", "expected int"),
        (lambda d: d["device_configs"]["minimal"].update(absent=["rtc"]),
         "device config 'minimal'", "absent[0]", "both configured and required absent"),
    ],
)
def test_mistakes_name_file_entry_and_field(tmp_path: Path, good: dict, mutate, entry: str,
                                           field: str, problem: str) -> None:
    data = copy.deepcopy(good)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        environments.load(path)
    e = err.value
    assert e.file == str(path)
    assert e.entry == entry
    assert e.field == field
    assert problem in str(e)


def test_not_json_says_where(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"environments": {,}}')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* line 1, column 19"):
        environments.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        environments.load(tmp_path / "absent.json")


def test_unknown_environment_name_lists_known(good: dict, tmp_path: Path) -> None:
    envs = environments.load(_write(tmp_path, good))
    with pytest.raises(ConfigError, match=r"no environment named 'qemu-riscv'.*qemu-x64"):
        envs.get("qemu-riscv")


def test_explicit_image_files_resolve_relative_to_the_file(tmp_path: Path, good: dict) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "bzImage").write_bytes(b"x")
    (tmp_path / "k" / "initrd").write_bytes(b"y")
    good["environments"]["qemu-x64"]["image"] = {"kernel": "k/bzImage", "initrd": "k/initrd"}
    env = environments.load(_write(tmp_path, good)).get("qemu-x64")
    assert not env.image.embedded
    assert env.image.kernel == tmp_path / "k" / "bzImage"


def test_cli_exits_2_with_the_location(tmp_path: Path, good: dict) -> None:
    good["environments"]["qemu-arm64"]["memory_mib"] = "lots"
    path = _write(tmp_path, good)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "plan", "--environments", str(path)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: environment 'qemu-arm64': field 'memory_mib': expected int" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_private_workdir_falls_back_when_sockets_would_not_fit(tmp_path: Path, monkeypatch) -> None:
    import os

    from harness.workdirs import SOCKET_PATH_MAX, private_workdir

    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    work = private_workdir("harness-qemu-x64-")
    try:
        assert len(str(work / "control.sock")) <= SOCKET_PATH_MAX
        assert str(work).startswith("/tmp/")
        assert os.stat(work).st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(work)
