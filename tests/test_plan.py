"""Planning: pairing specs with environments, selection, skips, sharding and plan output."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import environments
from harness.environments import Environment, EnvironmentSet
from harness.errors import ConfigError
from harness.plan import (
    Plan,
    PlannedRun,
    Selection,
    acknowledge_sharding,
    assign_shards,
    make_plan,
    plan_json,
    plan_text,
    shard,
    shard_from_environment,
)
from harness.spec import SpecEnvironment, TestSpec, load_specs

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "specs" / "tests.json"

ENVIRONMENTS: dict[str, Any] = {
    "device_configs": {
        "minimal": {"devices": {"serial": {}}},
        "net": {"devices": {"serial": {}, "virtio-net": {}}},
    },
    "environments": {
        # Deliberately not in name order: the plan must sort.
        "qemu-x64": {"engine": "qemu", "arch": "x86_64", "image": "debian",
                     "dimensions": {"device_type": "QEMU", "cpu": "x64"},
                     "tags": ["qemu"], "devices": "minimal"},
        "crosvm-x64": {"engine": "crosvm", "arch": "x86_64", "image": "debian",
                       "dimensions": {"device_type": "crosvm", "cpu": "x64"},
                       "tags": ["crosvm", "kvm"], "devices": "minimal", "blocking": False},
        "qemu-arm64": {"engine": "qemu", "arch": "arm64", "image": "debian",
                       "dimensions": {"device_type": "QEMU", "cpu": "arm64"},
                       "devices": "minimal"},
        "crosvm-arm64": {"engine": "crosvm", "arch": "arm64", "image": "debian",
                         "dimensions": {"device_type": "crosvm", "cpu": "arm64"},
                         "tags": ["crosvm"], "devices": "minimal", "blocking": False},
        "qemu-x64-net": {"engine": "qemu", "arch": "x86_64", "image": "debian",
                         "dimensions": {"device_type": "QEMU", "cpu": "x64", "testbed": "net"},
                         "devices": "net"},
    },
}

# What the fixture pairs into with no selection: spec order, then environment name.
ALL_KEYS = [
    "crosvm-x64/core-tests",
    "qemu-x64/core-tests",
    "qemu-x64-net/core-tests",
    "crosvm-arm64/reboot_shutdown.guest_reboot",
    "crosvm-x64/reboot_shutdown.guest_reboot",
    "qemu-arm64/reboot_shutdown.guest_reboot",
    "qemu-x64/reboot_shutdown.guest_reboot",
    "qemu-x64-net/reboot_shutdown.guest_reboot",
    "crosvm-x64/reboot_shutdown.guest_shutdown",
    "qemu-x64/device_enumeration.virtio_devices",
    "qemu-x64-net/device_enumeration.virtio_devices",
    "qemu-arm64/fuchsia-pkg://fuchsia.com/foo-tests#meta/foo-tests.cm",
]
# The fixture's boot test (core.kernel_unittests) boots a product bundle: no environment here
# boots one, so it is planned nowhere (tests/test_fuchsia_plan.py plans boot tests).
BOOT_TEST_UNMATCHED = ("core.kernel_unittests", {"device_type": "crosvm", "cpu": "x64"})


@pytest.fixture(scope="module")
def envs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("envs") / "environments.json"
    path.write_text(json.dumps(ENVIRONMENTS))
    return path


@pytest.fixture(scope="module")
def envs(envs_file: Path) -> EnvironmentSet:
    return environments.load(envs_file)


@pytest.fixture(scope="module")
def specs() -> list[TestSpec]:
    return load_specs(FIXTURE)


def keys(runs: list[PlannedRun]) -> list[str]:
    return [r.key for r in runs]


def spec(name: str, *envs: dict[str, str], tags: tuple[str, ...] = (), index: int = 0) -> TestSpec:
    return TestSpec(name=name, index=index,
                    environments=tuple(SpecEnvironment(dimensions=e, tags=tags) for e in envs))


# ------------------------------------------------------------------------------- pairing


def test_pairs_every_matching_environment_in_spec_then_name_order(
    specs: list[TestSpec], envs: EnvironmentSet
) -> None:
    plan = make_plan(specs, envs, Selection())
    assert keys(plan.runs) == ALL_KEYS
    assert all(r.skip_reason is None and r.shard == 0 for r in plan.runs)
    assert [s.name for s in plan.disabled] == ["peripherals.balloon"]
    assert [(s.name, dict(e.dimensions)) for s, e in plan.unmatched] == [
        ("device_enumeration.virtio_devices", {"device_type": "AEMU", "cpu": "x64"}),
        BOOT_TEST_UNMATCHED,
    ]
    assert plan.duplicates == []
    assert make_plan(specs, envs, None).runs == plan.runs


def test_two_spec_environments_matching_one_environment_give_one_run(
    specs: list[TestSpec], envs: EnvironmentSet
) -> None:
    plan = make_plan(specs, envs, Selection(suites=("reboot_shutdown",)))
    shutdown = [r for r in plan.runs if r.spec.name == "reboot_shutdown.guest_shutdown"]
    assert len(shutdown) == 1
    # The first spec environment that selected it is the one recorded.
    assert shutdown[0].spec_environment is not None
    assert shutdown[0].spec_environment.tags == ()


def test_pairing_uses_environment_matches(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection())
    for run in plan.runs:
        assert run.spec_environment is not None
        assert run.environment.matches(run.spec_environment.dimensions)
    # An extra dimension on the spec side narrows: only the environment that has it matches.
    narrow = make_plan([spec("x.y", {"device_type": "QEMU", "testbed": "net"})], envs, Selection())
    assert keys(narrow.runs) == ["qemu-x64-net/x.y"]
    # Dimensions are compared exactly: "qemu" is not "QEMU" for pairing.
    exact = make_plan([spec("x.y", {"device_type": "qemu"})], envs, Selection())
    assert exact.runs == []
    assert len(exact.unmatched) == 1


# ----------------------------------------------------------------------------- selection


@pytest.mark.parametrize("device_type", ["qemu", "QEMU", "Qemu"])
def test_select_device_type_case_insensitively(
    specs: list[TestSpec], envs: EnvironmentSet, device_type: str
) -> None:
    plan = make_plan(specs, envs, Selection(device_types=(device_type,)))
    assert keys(plan.runs) == [k for k in ALL_KEYS if k.startswith("qemu-")]
    assert {r.environment.device_type for r in plan.runs} == {"QEMU"}


def test_select_several_device_types(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(device_types=("CROSVM", "qemu")))
    assert keys(plan.runs) == ALL_KEYS


def test_device_type_falls_back_to_the_environment_when_the_spec_names_none(
    envs: EnvironmentSet,
) -> None:
    plan = make_plan([spec("x.y", {"cpu": "arm64"})], envs, Selection(device_types=("crosvm",)))
    assert keys(plan.runs) == ["crosvm-arm64/x.y"]


def test_select_tag_from_the_spec_environment(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(tags=("kernel",)))
    assert keys(plan.runs) == ["crosvm-x64/core-tests"]
    fyi = make_plan(specs, envs, Selection(tags=("fyi",)))
    assert keys(fyi.runs) == [
        "qemu-x64/device_enumeration.virtio_devices",
        "qemu-x64-net/device_enumeration.virtio_devices",
    ]


def test_select_tag_from_the_environment(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(tags=("kvm",)))
    assert keys(plan.runs) == [k for k in ALL_KEYS if k.startswith("crosvm-x64/")]
    both = make_plan(specs, envs, Selection(tags=("crosvm",)))
    assert keys(both.runs) == [k for k in ALL_KEYS if k.startswith("crosvm-")]


def test_a_tag_on_a_later_spec_environment_still_selects(
    specs: list[TestSpec], envs: EnvironmentSet
) -> None:
    # guest_shutdown's first crosvm-x64 spec environment has no tags; its second has "shutdown".
    plan = make_plan(specs, envs, Selection(tags=("shutdown",)))
    assert keys(plan.runs) == ["crosvm-x64/reboot_shutdown.guest_shutdown"]
    assert plan.runs[0].spec_environment is not None
    assert plan.runs[0].spec_environment.tags == ("shutdown",)


def test_select_environment_name(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(env_names=("qemu-arm64",)))
    assert keys(plan.runs) == [
        "qemu-arm64/reboot_shutdown.guest_reboot",
        "qemu-arm64/fuchsia-pkg://fuchsia.com/foo-tests#meta/foo-tests.cm",
    ]
    assert plan.unmatched == []  # the user named the environments; others are not news
    two = make_plan(specs, envs, Selection(env_names=("qemu-arm64", "crosvm-arm64")))
    assert {r.environment.name for r in two.runs} == {"qemu-arm64", "crosvm-arm64"}


def test_select_suite(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(suites=("reboot_shutdown",)))
    assert keys(plan.runs) == [k for k in ALL_KEYS if "/reboot_shutdown." in k]
    assert plan.disabled == [] and plan.unmatched == []
    path = make_plan(specs, envs, Selection(suites=("path",)))
    assert {r.spec.name for r in path.runs} == {"core-tests"}
    disabled = make_plan(specs, envs, Selection(suites=("peripherals",)))
    assert disabled.runs == []
    assert [s.name for s in disabled.disabled] == ["peripherals.balloon"]


@pytest.mark.parametrize(
    ("globs", "names"),
    [
        (("reboot_shutdown.*",),
         {"reboot_shutdown.guest_reboot", "reboot_shutdown.guest_shutdown"}),
        (("*reboot",), {"reboot_shutdown.guest_reboot"}),
        (("path.core-*",), {"core-tests"}),  # SUITE.TEST form of a path test
        (("core-tests",), {"core-tests"}),  # full name
        (("core*",), {"core-tests"}),
        (("fuchsia-pkg://*",), {"fuchsia-pkg://fuchsia.com/foo-tests#meta/foo-tests.cm"}),
        (("*guest_shutdown", "core.*"), {"reboot_shutdown.guest_shutdown"}),
        (("Core-Tests",), set()),  # case-sensitive, on every platform
        (("nothing",), set()),
    ],
)
def test_select_glob(
    specs: list[TestSpec], envs: EnvironmentSet, globs: tuple[str, ...], names: set[str]
) -> None:
    plan = make_plan(specs, envs, Selection(globs=globs))
    assert {r.spec.name for r in plan.runs} == names


def test_filters_of_different_kinds_combine(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(device_types=("qemu",), suites=("reboot_shutdown",),
                                            tags=("qemu",)))
    assert keys(plan.runs) == ["qemu-x64/reboot_shutdown.guest_reboot"]


def test_unmatched_respects_filters_it_can_judge(
    specs: list[TestSpec], envs: EnvironmentSet
) -> None:
    crosvm = make_plan(specs, envs, Selection(device_types=("crosvm",)))
    assert [s.name for s, _ in crosvm.unmatched] == [BOOT_TEST_UNMATCHED[0]]
    aemu = make_plan(specs, envs, Selection(device_types=("aemu",)))
    assert aemu.runs == []
    assert [s.name for s, _ in aemu.unmatched] == ["device_enumeration.virtio_devices"]
    assert make_plan(specs, envs, Selection(globs=("core-*",))).unmatched == []
    assert make_plan(specs, envs, Selection(device_types=("qemu",))).unmatched == []


def test_check_turns_pairs_into_skips_with_the_reason(
    specs: list[TestSpec], envs: EnvironmentSet
) -> None:
    calls: list[tuple[str, str]] = []

    def check(s: TestSpec, env: Environment) -> str | None:
        calls.append((env.name, s.name))
        return f"needs arch x86_64; {env.name} is arm64" if env.arch == "arm64" else None

    plan = make_plan(specs, envs, Selection(), check=check)
    assert keys(plan.runs) == ALL_KEYS  # skipped pairs are still planned
    assert sorted(calls) == sorted(tuple(k.split("/", 1)) for k in ALL_KEYS)
    for run in plan.runs:
        if run.environment.arch == "arm64":
            assert run.skip_reason == f"needs arch x86_64; {run.environment.name} is arm64"
        else:
            assert run.skip_reason is None


def test_duplicate_names_in_one_environment_keep_the_first(
    envs: EnvironmentSet, caplog: pytest.LogCaptureFixture
) -> None:
    first = spec("a.b", {"device_type": "crosvm"}, index=0)
    second = spec("a.b", {"device_type": "crosvm", "cpu": "x64"}, index=1)
    with caplog.at_level(logging.WARNING, logger="harness.plan"):
        plan = make_plan([first, second], envs, Selection())
    assert keys(plan.runs) == ["crosvm-arm64/a.b", "crosvm-x64/a.b"]
    assert all(r.spec is first for r in plan.runs)
    assert [(r.key, r.spec.index) for r in plan.duplicates] == [("crosvm-x64/a.b", 1)]
    assert "entry 1 duplicates test 'a.b' in environment crosvm-x64" in caplog.text


def test_duplicate_names_in_disjoint_environments_are_fine(
    envs: EnvironmentSet, caplog: pytest.LogCaptureFixture
) -> None:
    x64 = spec("a.b", {"device_type": "crosvm", "cpu": "x64"}, index=0)
    arm = spec("a.b", {"device_type": "crosvm", "cpu": "arm64"}, index=1)
    with caplog.at_level(logging.WARNING, logger="harness.plan"):
        plan = make_plan([x64, arm], envs, Selection())
    assert keys(plan.runs) == ["crosvm-x64/a.b", "crosvm-arm64/a.b"]
    assert plan.duplicates == [] and caplog.text == ""


# ------------------------------------------------------------------------------ sharding


def many_runs(envs: EnvironmentSet, n: int) -> list[PlannedRun]:
    specs = [spec(f"s.t{i:03d}", {"device_type": "crosvm"}, index=i) for i in range(n)]
    return make_plan(specs, envs, Selection()).runs


def assert_partition(runs: list[PlannedRun], shards: list[list[PlannedRun]]) -> None:
    flat = [r.key for s in shards for r in s]
    assert sorted(flat) == sorted(r.key for r in runs)
    assert len(flat) == len(set(flat))
    for i, s in enumerate(shards):
        assert all(r.shard == i for r in s)


@pytest.mark.parametrize("total", [1, 2, 3, 7, 40])
def test_count_sharding_is_round_robin_over_keys(envs: EnvironmentSet, total: int) -> None:
    runs = many_runs(envs, 13)  # 26 runs
    shards = assign_shards(runs, total)
    assert len(shards) == total
    assert_partition(runs, shards)
    ordered = sorted(r.key for r in runs)
    for i, s in enumerate(shards):
        assert sorted(r.key for r in s) == ordered[i::total]
        # Each shard keeps plan order.
        assert keys(s) == [r.key for r in runs if r.key in set(ordered[i::total])]
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_membership_does_not_depend_on_input_order(envs: EnvironmentSet) -> None:
    runs = many_runs(envs, 20)
    durations = {r.key: float((i * 37) % 11) for i, r in enumerate(runs)}
    shuffled = list(runs)
    random.Random(4).shuffle(shuffled)
    for d in (None, durations):
        a = [sorted(keys(s)) for s in assign_shards(runs, 4, d)]
        b = [sorted(keys(s)) for s in assign_shards(shuffled, 4, d)]
        assert a == b


def test_shard_returns_one_shard_of_assign_shards(envs: EnvironmentSet) -> None:
    runs = many_runs(envs, 10)
    durations = {r.key: float(i) for i, r in enumerate(runs)}
    for d in (None, durations):
        whole = assign_shards(runs, 3, d)
        assert [shard(runs, i, 3, durations=d) for i in range(3)] == whole


@pytest.mark.parametrize(("index", "total", "field"), [
    (-1, 3, "shard index"), (3, 3, "shard index"), (0, 0, "total shards"),
    (0, -2, "total shards"), (True, 3, "shard index"),
])
def test_shard_arguments_are_validated(
    envs: EnvironmentSet, index: int, total: int, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        shard(many_runs(envs, 2), index, total)
    assert info.value.field == field
    assert info.value.exit_status == 2
    with pytest.raises(ConfigError):
        assign_shards([], 0)


def makespan(shards: list[list[PlannedRun]], durations: dict[str, float]) -> float:
    return max(sum(durations[r.key] for r in s) for s in shards)


def test_duration_balancing_beats_count_balancing_on_skewed_input(envs: EnvironmentSet) -> None:
    runs = many_runs(envs, 4)  # crosvm-arm64 x4, crosvm-x64 x4
    ordered = sorted(r.key for r in runs)
    # Round-robin puts every second key on shard 0: make exactly those the slow ones.
    durations = {k: (100.0 if i % 2 == 0 else 1.0) for i, k in enumerate(ordered)}
    by_count = assign_shards(runs, 2)
    by_time = assign_shards(runs, 2, durations)
    assert_partition(runs, by_time)
    assert makespan(by_count, durations) == 400.0
    assert makespan(by_time, durations) == 202.0  # optimal here


def test_unknown_durations_get_the_median_of_known_ones(envs: EnvironmentSet) -> None:
    a, b, c, d = (spec(n, {"device_type": "crosvm", "cpu": "x64"}, index=i)
                  for i, n in enumerate("abcd"))
    runs = make_plan([a, b, c, d], envs, Selection()).runs
    known = {"crosvm-x64/a": 10.0, "crosvm-x64/b": 20.0, "crosvm-x64/c": 30.0}
    # d counts as 20 (the median): c→0, b→1, d→1 (tie with b broken by key), a→0.
    shards = assign_shards(runs, 2, known)
    assert [keys(s) for s in shards] == [
        ["crosvm-x64/a", "crosvm-x64/c"], ["crosvm-x64/b", "crosvm-x64/d"],
    ]
    # A corrupt duration counts as unknown, not as a value that breaks the ordering.
    for bad in (float("nan"), float("inf"), -3.0):
        assert assign_shards(runs, 2, {**known, "crosvm-x64/d": bad}) == shards
    # As a check that the median mattered: d as the cheapest (1.0) lands elsewhere.
    cheap = assign_shards(runs, 2, {**known, "crosvm-x64/d": 1.0})
    assert [keys(s) for s in cheap] == [
        ["crosvm-x64/c", "crosvm-x64/d"], ["crosvm-x64/a", "crosvm-x64/b"],
    ]


def test_skipped_runs_cost_nothing_when_balancing_by_duration(envs: EnvironmentSet) -> None:
    specs = [spec(n, {"device_type": "crosvm", "cpu": "x64"}, index=i)
             for i, n in enumerate(["a", "b", "skipped"])]

    def check(s: TestSpec, env: Environment) -> str | None:
        return "no" if s.name == "skipped" else None

    runs = make_plan(specs, envs, Selection(), check=check).runs
    # "skipped" took 20 s when it last ran; counted as such it would push a and b together.
    durations = {"crosvm-x64/a": 5.0, "crosvm-x64/b": 5.0, "crosvm-x64/skipped": 20.0}
    shards = assign_shards(runs, 2, durations)
    assert_partition(runs, shards)
    assert [keys(s) for s in shards] == [
        ["crosvm-x64/a", "crosvm-x64/skipped"], ["crosvm-x64/b"],
    ]


DETERMINISM_SCRIPT = """
import json, sys
from harness import environments
from harness.plan import Selection, assign_shards, make_plan
from harness.spec import load_specs
envs = environments.load(sys.argv[1])
runs = make_plan(load_specs(sys.argv[2]), envs, Selection()).runs
durations = {r.key: float(len(r.key) % 5) for r in runs}
print(json.dumps([[[r.key for r in s] for s in assign_shards(runs, n, d)]
                  for n in (2, 3) for d in (None, durations)]))
"""


def test_sharding_is_the_same_under_any_hash_seed(envs_file: Path, specs: list[TestSpec]) -> None:
    def run(seed: str) -> Any:
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT, str(envs_file), str(FIXTURE)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )
        return json.loads(out.stdout)

    runs = make_plan(specs, environments.load(envs_file), Selection()).runs
    durations = {r.key: float(len(r.key) % 5) for r in runs}
    here = [[[r.key for r in s] for s in assign_shards(runs, n, d)]
            for n in (2, 3) for d in (None, durations)]
    assert run("1") == here
    assert run("4242") == here


# ----------------------------------------------------------------- sharding from the env


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"PATH": "/bin"}, None),
    ({"TEST_SHARD_INDEX": "1", "TEST_TOTAL_SHARDS": "4"}, (1, 4)),
    ({"GTEST_SHARD_INDEX": "0", "GTEST_TOTAL_SHARDS": "2"}, (0, 2)),
    ({"TEST_SHARD_INDEX": "2", "TEST_TOTAL_SHARDS": "3",
      "GTEST_SHARD_INDEX": "0", "GTEST_TOTAL_SHARDS": "9"}, (2, 3)),  # Bazel first
    ({"TEST_SHARD_INDEX": " 0 ", "TEST_TOTAL_SHARDS": "1"}, (0, 1)),
])
def test_shard_from_environment(environ: dict[str, str], expected: tuple[int, int] | None) -> None:
    assert shard_from_environment(environ) == expected


@pytest.mark.parametrize(("environ", "variable"), [
    ({"TEST_SHARD_INDEX": "one", "TEST_TOTAL_SHARDS": "4"}, "TEST_SHARD_INDEX"),
    ({"TEST_SHARD_INDEX": "1", "TEST_TOTAL_SHARDS": ""}, "TEST_TOTAL_SHARDS"),
    ({"TEST_SHARD_INDEX": "4", "TEST_TOTAL_SHARDS": "4"}, "TEST_SHARD_INDEX"),
    ({"TEST_SHARD_INDEX": "-1", "TEST_TOTAL_SHARDS": "4"}, "TEST_SHARD_INDEX"),
    ({"TEST_SHARD_INDEX": "0", "TEST_TOTAL_SHARDS": "0"}, "TEST_TOTAL_SHARDS"),
    ({"TEST_SHARD_INDEX": "0"}, "TEST_TOTAL_SHARDS"),
    ({"GTEST_TOTAL_SHARDS": "3"}, "GTEST_SHARD_INDEX"),
    ({"GTEST_SHARD_INDEX": "1.5", "GTEST_TOTAL_SHARDS": "3"}, "GTEST_SHARD_INDEX"),
])
def test_malformed_shard_variables_are_named(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        shard_from_environment(environ)
    assert info.value.field == variable
    assert variable in str(info.value)
    assert info.value.exit_status == 2


def test_acknowledge_sharding_touches_bazels_status_file(tmp_path: Path) -> None:
    status = tmp_path / "shard_status"
    assert acknowledge_sharding({}) is None
    assert not status.exists()
    assert acknowledge_sharding({"TEST_SHARD_STATUS_FILE": str(status)}) == status
    assert status.is_file()
    with pytest.raises(ConfigError) as info:
        acknowledge_sharding({"TEST_SHARD_STATUS_FILE": str(tmp_path / "no" / "such" / "dir")})
    assert info.value.field == "TEST_SHARD_STATUS_FILE"


# -------------------------------------------------------------------------------- output


def test_plan_json(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    def check(s: TestSpec, env: Environment) -> str | None:
        return "arm64 pending" if env.arch == "arm64" else None

    plan = make_plan(specs, envs, Selection(), check=check)
    argv_calls: list[str] = []

    def argv_for(run: PlannedRun) -> list[str] | None:
        argv_calls.append(run.key)
        return None if run.skip_reason else [run.environment.engine, "run", run.spec.name]

    out = plan_json(plan, argv_for, total_shards=3)
    json.dumps(out)  # must be serialisable as is
    assert [r["key"] for r in out["runs"]] == ALL_KEYS
    assert argv_calls == ALL_KEYS
    first = out["runs"][0]
    assert first == {
        "key": "crosvm-x64/core-tests", "test": "core-tests", "suite": "path",
        "environment": "crosvm-x64", "engine": "crosvm", "arch": "x86_64",
        "device_type": "crosvm", "blocking": False, "skip_reason": None,
        "shard": first["shard"], "product_bundle": None, "bundle_problem": None,
        "argv": ["crosvm", "run", "core-tests"],
    }
    arm = next(r for r in out["runs"] if r["environment"] == "qemu-arm64")
    assert arm["skip_reason"] == "arm64 pending" and arm["argv"] is None
    assert len(out["shards"]) == 3
    assert sorted(k for s in out["shards"] for k in s) == sorted(ALL_KEYS)
    for r in out["runs"]:
        assert r["key"] in out["shards"][r["shard"]]
    assert out["disabled"] == ["peripherals.balloon"]
    assert out["unmatched"] == [{"test": "device_enumeration.virtio_devices", "index": 3,
                                 "dimensions": {"device_type": "AEMU", "cpu": "x64"},
                                 "tags": []},
                                {"test": "core.kernel_unittests", "index": 6,
                                 "dimensions": {"device_type": "crosvm", "cpu": "x64"},
                                 "tags": []}]
    assert out["duplicates"] == []
    # Durations change shard assignment the same way assign_shards does.
    durations = {k: float(i) for i, k in enumerate(ALL_KEYS)}
    timed = plan_json(plan, argv_for, total_shards=2, durations=durations)
    assert timed["shards"] == [keys(s) for s in assign_shards(plan.runs, 2, durations)]


def test_plan_text(specs: list[TestSpec], envs: EnvironmentSet) -> None:
    plan = make_plan(specs, envs, Selection(),
                     check=lambda s, e: "arm64 pending" if e.arch == "arm64" else None)
    text = plan_text(plan)
    lines = text.splitlines()
    assert lines[0].split() == ["ENVIRONMENT", "TEST", "SUITE", "ENGINE", "ARCH", "BLOCKING",
                                "STATUS"]
    for key in ALL_KEYS:
        env, name = key.split("/", 1)
        assert any(line.split()[:2] == [env, name] for line in lines[1:]), key
    assert "skip: arm64 pending" in text
    assert f"{len(ALL_KEYS)} runs ({len(ALL_KEYS) - 3} to run, 3 skipped)" in text
    assert "disabled (no environments): peripherals.balloon" in text
    assert "no environment matches device_enumeration.virtio_devices [cpu=x64, device_type=AEMU]" \
        in text
    sharded = plan_text(plan, total_shards=2).splitlines()
    assert sharded[0].split()[0] == "SHARD"
    assert {line.split()[0] for line in sharded[1:len(ALL_KEYS) + 1]} == {"0", "1"}


def test_plan_text_of_an_empty_plan() -> None:
    text = plan_text(Plan(runs=[], disabled=[], unmatched=[]))
    assert "0 runs (0 to run, 0 skipped)" in text


# --------------------------------------------------------------------------- performance


def test_twenty_thousand_entries_load_select_and_shard(
    tmp_path: Path, envs: EnvironmentSet
) -> None:
    entries = []
    for i in range(20_000):
        cpu = "arm64" if i % 3 == 0 else "x64"
        entries.append({
            "test": {"name": f"suite{i % 40}.case{i}", "label": f"//src:t{i}", "os": "fuchsia",
                     "cpu": cpu, "path": f"/boot/test/t{i}" if i % 2 else None,
                     "runtime_deps": "deps.json", "timeout_secs": i % 600},
            "environments": [{"dimensions": {"device_type": "crosvm", "cpu": cpu}, "tags": []},
                             {"dimensions": {"device_type": "QEMU", "cpu": cpu}}],
            "product_bundle": "core.x64", "expects_ssh": True,
        })
    path = tmp_path / "tests.json"
    path.write_text(json.dumps(entries))
    loaded = load_specs(path)
    plan = make_plan(loaded, envs, Selection(device_types=("crosvm", "qemu")),
                     check=lambda s, e: None)
    durations = {r.key: float(i % 97) for i, r in enumerate(plan.runs) if i % 4}
    mine = shard(plan.runs, 2, 5, durations=durations)
    assert len(loaded) == 20_000
    # x64 entries also match qemu-x64-net: 2 + 1 extra for two thirds of them.
    assert len(plan.runs) == 20_000 * 2 + (20_000 - len(range(0, 20_000, 3)))
    assert 0 < len(mine) < len(plan.runs)
