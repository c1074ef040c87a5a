"""CI workflows with real guests: FYI vs blocking, retries and flakes, shards merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xmlschema

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "tests" / "suites_for_tests"
XSD = ROOT / "tests" / "schemas" / "junit-10.xsd"

pytestmark = pytest.mark.integration


def envs_file(tmp: Path) -> Path:
    """Two copies of the minimal x64 environment: one FYI, one blocking."""
    data = json.loads((ROOT / "environments.json").read_text())
    base = data["environments"]["qemu-x64-minimal"]
    data["environments"] = {
        "fyi": {**base, "blocking": False,
                "dimensions": {"device_type": "QEMU", "cpu": "x64", "pool": "fyi"}},
        "blocking": {**base, "blocking": True,
                     "dimensions": {"device_type": "QEMU", "cpu": "x64", "pool": "blocking"}},
    }
    path = tmp / "environments.json"
    path.write_text(json.dumps(data))
    return path


def harness(tmp: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False, env={**os.environ, **(env or {})},
    )


def results(out: Path) -> dict[str, dict]:
    data = json.loads((out / "summary.json").read_text())
    return {t["harness"]["environment"] + "/" + t["name"]: t for t in data["tests"]}


def test_fyi_failure_exits_0_and_blocking_failure_exits_1(tmp_path: Path) -> None:
    envs = envs_file(tmp_path)
    common = ["run", "--quiet", "--environments", str(envs), "--suite-path", str(SUITES),
              "-k", "workflow.always_fails"]
    fyi = harness(tmp_path, *common, "--env", "fyi", "--out", str(tmp_path / "fyi"))
    assert fyi.returncode == 0, fyi.stderr
    assert results(tmp_path / "fyi")["fyi/workflow.always_fails"]["result"] == "FAIL"
    blocking = harness(tmp_path, *common, "--env", "blocking", "--out", str(tmp_path / "blk"))
    assert blocking.returncode == 1, blocking.stderr
    r = results(tmp_path / "blk")["blocking/workflow.always_fails"]
    assert r["result"] == "FAIL"
    assert "command exited 3" in r["harness"]["attempts"][-1]["message"]
    tags = {t["key"]: t["value"] for t in r["tags"]}
    assert tags["blocking"] == "true"
    junit = (tmp_path / "blk" / "junit.xml").read_text()
    assert '<property name="blocking" value="true"' in junit


def test_fails_once_with_a_retry_is_flaky_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = harness(tmp_path, "run", "--quiet", "--environments", str(envs_file(tmp_path)),
                   "--env", "blocking", "--suite-path", str(SUITES), "-k",
                   "workflow.fails_once", "--retries", "1", "--out", str(out),
                   env={"HARNESS_TEST_COUNTER": str(tmp_path / "counter")})
    assert proc.returncode == 0, proc.stderr
    r = results(out)["blocking/workflow.fails_once"]
    assert r["result"] == "PASS"
    attempts = r["harness"]["attempts"]
    assert [a["status"] for a in attempts] == ["FAIL", "PASS"]
    assert {t["key"]: t["value"] for t in r["tags"]}["flaky"] == "true"
    junit = (out / "junit.xml").read_text()
    assert "<flakyFailure" in junit
    xmlschema.XMLSchema(str(XSD)).validate(str(out / "junit.xml"))


def test_three_shards_merged_equal_one_unsharded_run(tmp_path: Path) -> None:
    envs = envs_file(tmp_path)
    common = ["run", "--quiet", "--environments", str(envs), "--suite-path", str(SUITES),
              "--env", "fyi", "--env", "blocking", "-k", "workflow.echo_*"]
    whole = harness(tmp_path, *common, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    shard_dirs = []
    for i in range(3):
        d = tmp_path / f"shard{i}"
        # The shard index comes from Bazel's variables here, the CLI flags elsewhere.
        proc = harness(tmp_path, *common, "--out", str(d),
                       env={"TEST_SHARD_INDEX": str(i), "TEST_TOTAL_SHARDS": "3"})
        assert proc.returncode == 0, proc.stderr
        shard_dirs.append(d)
    sizes = [len(results(d)) for d in shard_dirs]
    assert sorted(sizes) == [4, 4, 4], sizes
    merged = harness(tmp_path, "merge", *map(str, shard_dirs), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    want = {k: v["result"] for k, v in results(tmp_path / "whole").items()}
    got = {k: v["result"] for k, v in results(tmp_path / "merged").items()}
    assert got == want
    assert len(got) == 12 and set(got.values()) == {"PASS"}
    xmlschema.XMLSchema(str(XSD)).validate(str(tmp_path / "merged" / "junit.xml"))
