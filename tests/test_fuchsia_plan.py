"""A Fuchsia build as input, without booting anything: reading it, planning it, its errors.

Covers harness/fuchsia/build.py (product_bundles.json and version 2 product_bundle.json
read as run-boot-test.py reads them), Fuchsia's environment matching in harness/plan.py
(checked against testsharder's golden files), the Fuchsia environments of environments.json,
botanist's kernel command line in the argv `harness plan` prints, and the command line's
errors (file and field named, exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import environments as envmod
from harness.cli import main
from harness.environments import EnvironmentSet
from harness.errors import ConfigError
from harness.fuchsia.build import BundleSet
from harness.plan import PlannedRun, Selection, make_plan, run_environment
from harness.spec import parse_specs

ROOT = Path(__file__).resolve().parent.parent
ENVS = envmod.load(ROOT / "environments.json")
FUCHSIA_ENVS = ("fuchsia-crosvm-arm64", "fuchsia-crosvm-x64", "fuchsia-qemu-arm64",
                "fuchsia-qemu-x64")
MIXIN = "0123456789abcdef" * 4


# -- a small hand-made build directory (no bootable images: nothing boots here) -----------


def write_bundle(build: Path, name: str, cpu: str, *, kernel: bool = True, zbi: bool = True,
                 uefi: bool = False, version: Any = "2", built: bool = True) -> dict[str, Any]:
    """A bundle at obj/NAME/product_bundle, the way a build lays one out; its entry."""
    rel = Path("obj") / name / "product_bundle"
    bundle = build / rel
    images: list[dict[str, Any]] = []
    if built:
        (bundle / "system_a").mkdir(parents=True, exist_ok=True)
        if kernel:
            (bundle / "system_a" / "linux-x86-boot-shim.bin").write_bytes(b"SHIM")
            images.append({"type": "kernel", "name": "qemu-kernel",
                           "path": "system_a/linux-x86-boot-shim.bin"})
        if zbi:
            (bundle / "system_a" / "fuchsia.zbi").write_bytes(b"ZBI")
            images.append({"type": "zbi", "name": "zircon-a", "path": "system_a/fuchsia.zbi",
                           "signed": False})
        images.append({"type": "blk", "name": "fxfs", "path": "system_a/fxfs.blk"})
        loaders = [{"type": "efi-shell", "name": "efi", "image": "efi.blk"}] if uefi else []
        (bundle / "product_bundle.json").write_text(json.dumps({
            "version": version, "product_name": name,
            "partitions": {"hardware_revision": "", "bootstrap_partitions": [],
                           "bootloader_partitions": loaders, "partitions": [],
                           "unlock_credentials": []},
            "system_a": images, "system_b": None, "system_r": None}))
    return {"name": name, "path": rel.as_posix(), "json": f"{rel.as_posix()}/product_bundle.json",
            "cpu": cpu, "label": f"//build/images:{name}", "transfer_manifest_path": None}


def entry(name: str, *envs: dict[str, Any], os_: str = "fuchsia", cpu: str = "x64",
          **fields: Any) -> dict[str, Any]:
    test = {"name": name, "os": os_, "cpu": cpu, "label": f"//src:{name}"}
    test.update(fields.pop("test", {}))
    return {"test": test, "environments": list(envs), **fields}


def boot_entry(name: str, *envs: dict[str, Any], cpu: str = "x64", **fields: Any
               ) -> dict[str, Any]:
    """What build/testing/boot_tests/boot_test.gni writes for a boot test."""
    fields = {"product_bundle": name, **fields}
    return entry(name, *envs, os_="linux", cpu=cpu, is_boot_test=True, expects_ssh=False,
                 test={"path": f"host_x64/{name}.sh", "isolated": True}, **fields)


def write_build(build: Path, tests: list[dict[str, Any]], bundles: list[dict[str, Any]]
                ) -> Path:
    build.mkdir(parents=True, exist_ok=True)
    (build / "tests.json").write_text(json.dumps(tests))
    (build / "product_bundles.json").write_text(json.dumps(bundles))
    return build


@pytest.fixture
def build(tmp_path: Path) -> Path:
    out = tmp_path / "out" / "default"
    bundles = [write_bundle(out, "core.x64", "x64"), write_bundle(out, "core.arm64", "arm64"),
               write_bundle(out, "core-tests-boot", "x64")]
    tests = [
        # The example: a kernel test listing crosvm and QEMU.
        entry("core-tests", {"dimensions": {"device_type": "crosvm", "cpu": "x64"}},
              {"dimensions": {"device_type": "QEMU", "cpu": "x64"}},
              test={"path": "/boot/test/core-tests"}),
        boot_entry("core-tests-boot", {"dimensions": {"device_type": "crosvm"}},
                   {"dimensions": {"device_type": "QEMU"},
                    "emulator": {"kernel_args": ["kernel.test.x=1"]}}),
        # A Linux guest program from the same tests.json.
        entry("uname", {"dimensions": {"device_type": "QEMU", "cpu": "x64"}}, os_="linux",
              test={"path": "/bin/uname"}),
    ]
    return write_build(out, tests, bundles)


def plan_for(build: Path, selection: Selection | None = None, *, default: str = "",
             envs: EnvironmentSet = ENVS) -> Any:
    specs = parse_specs(json.loads((build / "tests.json").read_text()), "tests.json")
    bundles = BundleSet.read(build / "product_bundles.json", default=default)
    return make_plan(specs, envs, selection, testsharder=True, bundles=bundles)


def keys(runs: list[PlannedRun]) -> list[str]:
    return [r.key for r in runs]


# -- reading a build ----------------------------------------------------------------------


def test_bundle_paths_are_relative_to_the_build_dir_not_the_working_dir(
        build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    bundles = BundleSet.read(os.path.relpath(build / "product_bundles.json", elsewhere))
    core = bundles.load("core.x64")
    shim = build.resolve() / "obj/core.x64/product_bundle/system_a/linux-x86-boot-shim.bin"
    assert core.kernel == shim and core.kernel.read_bytes() == b"SHIM"
    assert core.zbi is not None and core.zbi.read_bytes() == b"ZBI"
    assert (core.cpu, core.uefi, core.label) == ("x64", False, "//build/images:core.x64")
    image = core.image("x86_64")
    # The shim is what both engines boot; the ZBI is the initrd.
    assert (image.kernel, image.crosvm_kernel, image.initrd, image.kernel_elf) == (
        shim, shim, core.zbi, None)


def test_uefi_bundle_ignores_system_a(tmp_path: Path) -> None:
    b = write_build(tmp_path, [], [write_bundle(tmp_path, "efi", "x64", uefi=True)])
    bundle = BundleSet.read(b / "product_bundles.json").load("efi")
    assert bundle.uefi and bundle.kernel is None
    assert bundle.efi_disk == tmp_path.resolve() / "obj/efi/product_bundle/efi.blk"


@pytest.mark.parametrize(("doc", "entry_label", "field", "problem"), [
    ({"name": "x"}, None, None, "expected a JSON list of product bundles"),
    ([{"path": "p", "json": "j", "cpu": "x64"}], "entry 0", "name", "is required"),
    ([{"name": "a", "path": "p", "json": 3, "cpu": "x64"}], 'entry 0 ("a")', "json",
     "expected a string, got 3"),
    ([{"name": "a", "path": "p", "json": "j"}], 'entry 0 ("a")', "cpu", "is required"),
    ([{"name": "a", "path": "p", "json": "j", "cpu": "x64"},
      {"name": "a", "path": "q", "json": "k", "cpu": "x64"}], 'entry 1 ("a")', "name",
     'also entry 0 ("a")'),
])
def test_a_malformed_product_bundles_json_names_file_entry_and_field(
        tmp_path: Path, doc: Any, entry_label: str | None, field: str | None,
        problem: str) -> None:
    file = tmp_path / "product_bundles.json"
    file.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        BundleSet.read(file)
    assert (e.value.file, e.value.entry, e.value.field) == (str(file), entry_label, field)
    assert problem in e.value.problem


@pytest.mark.parametrize(("change", "file_part", "field", "problem"), [
    ({"built": False}, "product_bundles.json", "json", "does not exist: the bundle is not "
     "built (fx build //build/images:b)"),
    ({"kernel": False}, "product_bundle.json", "system_a", 'no image of type "kernel"'),
    ({"version": "1"}, "product_bundle.json", "version", 'expected "2"'),
])
def test_a_bundle_that_cannot_boot_says_which_file_and_field(
        tmp_path: Path, change: dict[str, Any], file_part: str, field: str,
        problem: str) -> None:
    b = write_build(tmp_path, [], [write_bundle(tmp_path, "b", "x64", **change)])
    bundles = BundleSet.read(b / "product_bundles.json")
    with pytest.raises(ConfigError) as e:
        bundles.load("b")
    assert e.value.file.endswith(file_part) and e.value.field == field
    assert problem in e.value.problem
    # The same error, kept, for every test that names the bundle.
    _name, bundle, text = bundles.choose("b", ENVS.get("fuchsia-qemu-x64"))
    assert bundle is None and text == str(e.value)


def test_a_missing_image_file_names_its_system_a_entry(tmp_path: Path) -> None:
    b = write_build(tmp_path, [], [write_bundle(tmp_path, "b", "x64")])
    (tmp_path / "obj/b/product_bundle/system_a/fuchsia.zbi").unlink()
    with pytest.raises(ConfigError) as e:
        BundleSet.read(b / "product_bundles.json").load("b")
    assert e.value.field == "system_a[1].path" and "fuchsia.zbi does not exist" in e.value.problem


def test_a_bundle_for_the_other_cpu_fails_only_its_runs(build: Path) -> None:
    (build / "tests.json").write_text(json.dumps([
        boot_entry("wrong-cpu", {"dimensions": {"device_type": "QEMU"}}, cpu="arm64",
                   product_bundle="core.x64"),
        boot_entry("core-tests-boot", {"dimensions": {"device_type": "QEMU"}}),
    ]))
    plan = plan_for(build)
    wrong, right = plan.runs
    assert wrong.key == "fuchsia-qemu-arm64/wrong-cpu" and wrong.bundle is None
    assert wrong.bundle_problem == (
        f"{build / 'product_bundles.json'}: entry 0 (\"core.x64\"): field 'cpu': is \"x64\", "
        "but fuchsia-qemu-arm64 boots arm64 guests")
    assert right.bundle is not None and right.bundle_problem is None


# -- Fuchsia's environment matching ---------------------------------------------------------


def test_one_fuchsia_test_environment_is_one_run_on_a_fuchsia_environment(build: Path) -> None:
    plan = plan_for(build, default="core.x64")
    assert keys(plan.runs) == [
        "fuchsia-crosvm-x64/core-tests", "fuchsia-qemu-x64/core-tests",
        "fuchsia-crosvm-x64/core-tests-boot", "fuchsia-qemu-x64/core-tests-boot",
        "qemu-x64/uname",
    ]
    core = {r.environment.name: r for r in plan.runs if r.spec.name == "core-tests"}
    # The test names no bundle of its own: --product-bundle's boots.
    assert {r.bundle_name for r in core.values()} == {"core.x64"}
    boot = [r for r in plan.runs if r.spec.name == "core-tests-boot"]
    assert {r.bundle_name for r in boot} == {"core-tests-boot"}


def test_os_fuchsia_tests_are_never_planned_on_linux_guests(build: Path) -> None:
    for selection in (Selection(), Selection(device_types=("crosvm",)),
                      Selection(env_names=("crosvm-x64", "crosvm-x64-minimal", "qemu-x64"))):
        plan = plan_for(build, selection, default="core.x64")
        for run in plan.runs:
            if run.spec.os == "fuchsia" or run.spec.is_boot_test:
                assert run.environment.profile == "zircon", run.key
                assert run.environment.image.product_bundle, run.key
            else:
                assert run.environment.profile == "linux", run.key


def test_without_a_build_fuchsia_environments_are_not_planned_and_the_plan_says_so(
        build: Path) -> None:
    specs = parse_specs(json.loads((build / "tests.json").read_text()), "tests.json")
    plan = make_plan(specs, ENVS, testsharder=True)
    assert keys(plan.runs) == ["qemu-x64/uname"]  # never core-tests on crosvm-x64(-minimal)
    assert {s.name for s, _ in plan.unmatched} == {"core-tests", "core-tests-boot"}
    assert plan.notes == ["not planned (they boot a build's product bundle; give --build-dir "
                          "or --product-bundles): " + ", ".join(FUCHSIA_ENVS)]


def test_the_default_run_keeps_its_environments(tmp_path: Path) -> None:
    """The built-in suites match as before (every environment they fit); the Fuchsia
    environments, which need a build, are not planned at all."""
    from harness.suite import default_specs, registry

    specs = parse_specs(default_specs(registry()), "<built-in suites>")
    plan = make_plan(specs, ENVS)
    planned = {r.environment.name for r in plan.runs}
    assert planned == {n for n in ENVS.environments if n not in FUCHSIA_ENVS}
    smoke = {r.environment.name for r in plan.runs if r.spec.name == "smoke.boot_and_command"}
    assert {"qemu-x64", "qemu-x64-minimal", "crosvm-x64", "crosvm-x64-minimal"} <= smoke
    assert plan.notes and "fuchsia-crosvm-x64" in plan.notes[0]


def test_ties_go_to_the_plainest_environment_and_named_environments_override(
        build: Path) -> None:
    plan = plan_for(build, default="core.x64")
    assert [r.environment.name for r in plan.runs if r.spec.name == "uname"] == ["qemu-x64"]
    named = plan_for(build, Selection(env_names=("qemu-x64", "qemu-x64-minimal")))
    assert sorted(r.environment.name for r in named.runs if r.spec.name == "uname") == [
        "qemu-x64", "qemu-x64-minimal"]
    minimal = plan_for(build, Selection(env_names=("qemu-x64-minimal",)))
    assert keys(minimal.runs) == ["qemu-x64-minimal/uname"]


def test_cpu_defaults_to_the_tests_for_emulators_only(build: Path) -> None:
    (build / "tests.json").write_text(json.dumps([
        entry("arm", {"dimensions": {"device_type": "QEMU"}}, os_="linux", cpu="arm64",
              test={"path": "/bin/true"}),
        entry("nuc", {"dimensions": {"device_type": "Intel NUC Kit NUC11TNHv5"}}, os_="linux",
              test={"path": "/bin/true"}),
    ]))
    plan = plan_for(build)
    assert keys(plan.runs) == ["qemu-arm64/arm"]
    [(spec, env)] = plan.unmatched
    assert spec.name == "nuc" and dict(env.dimensions) == {
        "device_type": "Intel NUC Kit NUC11TNHv5"}


def test_tags_must_be_exactly_the_selected_ones(build: Path) -> None:
    tagged = entry("t", {"dimensions": {"device_type": "QEMU"}, "tags": ["kernel", "x"]},
                   os_="linux", test={"path": "/bin/true"})
    (build / "tests.json").write_text(json.dumps([tagged]))
    assert plan_for(build).runs == []
    assert "1 test environments not planned: their tags are not the selected tags (none)" \
        in plan_for(build).notes[-1]
    assert plan_for(build, Selection(tags=("kernel",))).runs == []
    assert keys(plan_for(build, Selection(tags=("x", "kernel"))).runs) == ["qemu-x64/t"]


def test_a_uefi_bundle_is_skipped_on_crosvm_with_the_reason(tmp_path: Path) -> None:
    b = write_build(tmp_path, [boot_entry("efi", {"dimensions": {"device_type": "crosvm"}},
                                          {"dimensions": {"device_type": "QEMU"}})],
                    [write_bundle(tmp_path, "efi", "x64", uefi=True)])
    runs = {r.environment.engine: r for r in plan_for(b).runs}
    assert runs["crosvm"].skip_reason == (
        "product bundle efi boots through UEFI (partitions.bootloader_partitions[0] is an "
        "efi-shell disk); crosvm boots a kernel (the Linux boot shim), not UEFI firmware")
    assert "the harness boots no UEFI firmware on qemu" in (runs["qemu"].skip_reason or "")


def test_a_test_without_a_bundle_is_skipped_saying_so(build: Path) -> None:
    plan = plan_for(build)  # no --product-bundle: core-tests names none
    core = [r for r in plan.runs if r.spec.name == "core-tests"]
    assert core and all(r.skip_reason == "no product bundle to boot: tests.json entry 0 names "
                        "none and no --product-bundle was given" for r in core)


# -- testsharder's golden files -------------------------------------------------------------
#
# tools/integration/testsharder/cmd/main_test.go (TestExecute) feeds testsharder these
# specs; cmd/testdata/<case>.golden.json holds the shards it makes. Transcribed below: each
# shard's environment dimensions (with testsharder's defaults), tests and product bundle.
# The harness must put every test environment on the one environment whose dimensions are
# the shard's. Host environments (no device_type) are host machines, not guests: the
# harness leaves them unmatched.

def _pkg(name: str) -> str:
    return f"fuchsia-pkg://fuchsia.com/{name}#meta/{name}.cm"


def _fuchsia(name: str, *device_types: str, **extra: Any) -> dict[str, Any]:  # fuchsiaTestSpec
    return {"test": {"name": _pkg(name), "package_url": _pkg(name), "os": "fuchsia",
                     "cpu": "x64", "label": f"//src/something:{name}"},
            "environments": [{"dimensions": {"device_type": d}}
                             for d in (device_types or ("AEMU",))],
            "expects_ssh": True, **extra}


def _isolated(doc: dict[str, Any]) -> dict[str, Any]:  # isolated()
    doc["test"]["isolated"] = True
    return doc


def _host(name: str) -> dict[str, Any]:  # hostTestSpec
    return {"test": {"name": f"host_x64/{name}", "path": f"host_x64/{name}", "os": "linux",
                     "cpu": "x64"},
            "environments": [{"dimensions": {"cpu": "x64", "os": "Linux"}}]}


def _boot(name: str) -> dict[str, Any]:  # bootTestSpec
    return {"test": {"name": _pkg(name), "package_url": _pkg(name), "os": "fuchsia",
                     "cpu": "x64"},
            "environments": [{"dimensions": {"device_type": "AEMU"}}],
            "product_bundle": "boot-test_product_bundle", "is_boot_test": True}


def _arbitrary(name: str, other: str, emulator: dict[str, str]) -> dict[str, Any]:
    return {"test": {"name": f"host_x64/{name}.sh", "path": f"host_x64/{name}.sh",
                     "os": "linux", "cpu": "x64"},
            "environments": [
                {"dimensions": {"cpu": "x64", "os": "Linux", "other_dimension": other}},
                {"dimensions": {"device_type": "AEMU"}, "emulator": emulator}]}


AEMU = {"cpu": "x64", "device_type": "AEMU"}
QEMU = {"cpu": "x64", "device_type": "QEMU"}
GOLDENS: dict[str, tuple[list[dict[str, Any]], Selection, set[tuple[str, str, str, bool]]]] = {
    # (test, shard dimensions as JSON, product bundle, boot test)
    "mixed_device_types": (
        [_fuchsia("foo"), _host("bar")], Selection(),
        {(_pkg("foo"), json.dumps(AEMU, sort_keys=True), "core.x64", False)}),
    "allowed_device_types": (  # -allowed-device-type QEMU -allowed-device-type NUC
        [_fuchsia("foo", "AEMU", "QEMU", "NUC"), _host("bar")],
        Selection(device_types=("QEMU", "NUC")),
        {(_pkg("foo"), json.dumps(QEMU, sort_keys=True), "core.x64", False)}),
    "arbitrary_dimensions": (
        [_arbitrary("foo", "foo", {"name": "emu-min", "device": "min"}),
         _arbitrary("bar", "bar", {"name": "emu-min-tcg", "device": "min", "accel": "none"})],
        Selection(),
        {("host_x64/foo.sh", json.dumps(AEMU, sort_keys=True), "", False),
         ("host_x64/bar.sh", json.dumps(AEMU, sort_keys=True), "", False)}),
    "boot_test_with_modifiers": (
        [_boot("boot-test"), _boot("another-boot-test")], Selection(),
        {(_pkg("boot-test"), json.dumps(AEMU, sort_keys=True), "boot-test_product_bundle",
          True),
         (_pkg("another-boot-test"), json.dumps(AEMU, sort_keys=True),
          "boot-test_product_bundle", True)}),
    "isolated_tests": (
        [_isolated(_fuchsia(n)) for n in ("foo", "bar", "baz")], Selection(),
        {(_pkg(n), json.dumps(AEMU, sort_keys=True), "core.x64", False)
         for n in ("foo", "bar", "baz")}),
}


@pytest.fixture(scope="module")
def golden_envs(tmp_path_factory: pytest.TempPathFactory) -> EnvironmentSet:
    """Environments shaped like the goldens' platforms, plus look-alikes the tie rule must
    pass over (an extra dimension the test did not ask for)."""
    def env(dims: dict[str, str], profile: str = "zircon", **extra: Any) -> dict[str, Any]:
        image = "product-bundle" if profile == "zircon" else "debian-generic"
        return {"dimensions": dims, "engine": "qemu", "arch": "x86_64", "profile": profile,
                "image": image, "devices": "one", **extra}

    doc = {"device_configs": {"one": {"devices": {"serial": {}}}},
           "environments": {
               "aemu-x64": env(AEMU),
               "aemu-x64-min": env({**AEMU, "devices": "min"}),
               "aemu-x64-linux": env(AEMU, "linux"),
               "qemu-x64": env(QEMU),
               "qemu-x64-big": env({**QEMU, "memory": "big"}),
           }}
    path = tmp_path_factory.mktemp("golden") / "environments.json"
    path.write_text(json.dumps(doc))
    return envmod.load(path)


@pytest.mark.parametrize("golden", sorted(GOLDENS))
def test_matching_agrees_with_testsharders_golden_files(
        golden: str, golden_envs: EnvironmentSet, tmp_path: Path) -> None:
    docs, selection, want = GOLDENS[golden]
    specs = parse_specs(docs, f"{golden} specs")
    # main_test.go: params.ProductBundleName = "core.x64", and fakeModules' two bundles.
    build = write_build(tmp_path, [], [write_bundle(tmp_path, "core.x64", "x64"),
                                       write_bundle(tmp_path, "boot-test_product_bundle", "x64")])
    bundles = BundleSet.read(build / "product_bundles.json", default="core.x64")
    plan = make_plan(specs, golden_envs, selection, testsharder=True, bundles=bundles)
    got = {(r.spec.name, json.dumps(dict(r.environment.dimensions), sort_keys=True),
            r.bundle_name, r.spec.is_boot_test) for r in plan.runs}
    assert got == want
    assert len(plan.runs) == len(want)  # one run per test environment
    # Host environments are machines, not guests: reported, never planned in a guest.
    hosts = [(s.name, dict(e.dimensions)) for s, e in plan.unmatched if not e.device_type]
    assert all(d.get("os") == "Linux" for _, d in hosts)
    if golden == "arbitrary_dimensions":
        emulators = {r.spec.name: dict(r.spec_environment.emulator or {}) for r in plan.runs
                     if r.spec_environment is not None}
        assert emulators["host_x64/foo.sh"]["name"] == "emu-min"
        assert emulators["host_x64/bar.sh"]["accel"] == "none"


# -- botanist's kernel command line in what `harness plan` prints ---------------------------


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_shows_bundle_shim_and_zbi_in_crosvms_argv(
        build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = plan_json(capsys, "--build-dir", str(build), "--device-type", "crosvm",
                    "--product-bundle", "core.x64")
    runs = {r["key"]: r for r in doc["runs"]}
    assert set(runs) == {"fuchsia-crosvm-x64/core-tests", "fuchsia-crosvm-x64/core-tests-boot"}
    run = runs["fuchsia-crosvm-x64/core-tests-boot"]
    assert run["product_bundle"] == "core-tests-boot" and run["suite"] == "boot_test"
    argv = run["argv"]
    bundle = build / "obj/core-tests-boot/product_bundle/system_a"
    at = argv.index("run")
    # crosvm [global args] run [args] --initrd ZBI KERNEL, as `fx run-boot-test --crosvm`.
    assert argv[at + 1:].count("--initrd") == 1
    assert argv[argv.index("--initrd") + 1] == str(bundle / "fuchsia.zbi")
    assert argv[-1] == str(bundle / "linux-x86-boot-shim.bin")
    params = argv[argv.index("--params") + 1].split(" ")
    assert params == [
        "zircon.nodename=fuchsia-5254-1234-1234", "kernel.halt-on-panic=true",
        "kernel.lockup-detector.critical-section-threshold-ms=0",
        "kernel.lockup-detector.critical-section-fatal-threshold-ms=0",
        "kernel.lockup-detector.heartbeat-period-ms=0",
        "kernel.lockup-detector.heartbeat-age-threshold-ms=0",
        "kernel.lockup-detector.heartbeat-age-fatal-threshold-ms=0",
        "kernel.entropy-mixin=" + "x" * 64,  # fresh per boot, so shown redacted
        "TERM=dumb", "kernel.serial=legacy",
    ]


def test_qemu_boot_tests_exit_on_reset_and_end_with_the_test_environments_args(
        build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = plan_json(capsys, "--build-dir", str(build), "--env", "fuchsia-qemu-x64",
                    "--product-bundle", "core.x64")
    runs = {r["test"]: r["argv"] for r in doc["runs"]}
    boot, core = runs["core-tests-boot"], runs["core-tests"]
    assert "-no-reboot" in boot and "-no-reboot" not in core
    bundle = build / "obj/core-tests-boot/product_bundle/system_a"
    assert boot[boot.index("-kernel") + 1] == str(bundle / "linux-x86-boot-shim.bin")
    assert boot[boot.index("-initrd") + 1] == str(bundle / "fuchsia.zbi")
    append = boot[boot.index("-append") + 1].split(" ")
    assert append[-3:] == ["TERM=dumb", "kernel.serial=legacy", "kernel.test.x=1"]


def test_run_environment_orders_builder_then_test_environment_args() -> None:
    specs = parse_specs([boot_entry("b", {"dimensions": {"device_type": "QEMU"},
                                          "emulator": {"kernel_args": ["from.test=1"]}})], "t")
    env = dataclasses.replace(ENVS.get("fuchsia-qemu-arm64"), kernel_args=("from.builder=1",))
    run = PlannedRun(spec=specs[0], environment=env, spec_environment=specs[0].environments[0])
    booted = run_environment(run, MIXIN)
    assert booted.kernel_args == ("from.builder=1", "from.test=1")
    assert booted.entropy_mixin == MIXIN and booted.no_reboot
    assert MIXIN not in repr(booted)  # a secret stays out of reprs (and so of tracebacks)
    linux = PlannedRun(spec=specs[0], environment=ENVS.get("qemu-x64"))
    assert run_environment(linux, MIXIN).entropy_mixin == ""  # only Zircon takes one


# -- the command line: errors name the file and field, exit 2 -------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().err


def test_cli_errors_for_a_build(build: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli(capsys, "plan", "--build-dir", str(tmp_path / "nope"))
    assert status == 2 and f"--build-dir': {tmp_path / 'nope'} is not a directory" in err
    status, err = run_cli(capsys, "plan", "--product-bundle", "core.x64")
    assert status == 2 and "--product-bundle': names a bundle of a build" in err
    status, err = run_cli(capsys, "plan", "--build-dir", str(build), "--product-bundle", "x")
    assert status == 2 and "'--product-bundle': \"x\" is not a product bundle of" in err
    assert "core-tests-boot, core.arm64, core.x64" in err
    (build / "product_bundles.json").write_text('[{"name": 1}]')
    status, err = run_cli(capsys, "run", "--build-dir", str(build))
    assert status == 2 and "product_bundles.json: entry 0: field 'name': expected a string" \
        in err and "Traceback" not in err
    (build / "product_bundles.json").unlink()
    status, err = run_cli(capsys, "plan", "--build-dir", str(build))
    assert status == 2 and "product_bundles.json: cannot read: no such file" in err


def test_a_broken_bundle_named_by_one_test_is_that_tests_infra_fail_in_the_plan(
        build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (build / "obj/core.arm64/product_bundle/product_bundle.json").unlink()
    specs = json.loads((build / "tests.json").read_text())
    specs.append(boot_entry("needs-arm", {"dimensions": {"device_type": "QEMU"}}, cpu="arm64",
                            product_bundle="core.arm64"))
    (build / "tests.json").write_text(json.dumps(specs))
    assert main(["plan", "--build-dir", str(build)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "needs-arm" in ln)
    assert "infra fail:" in line and "field 'json'" in line and "the bundle is not built" in line
    ok = next(ln for ln in out.splitlines() if "core-tests-boot" in ln)
    assert ok.rstrip().endswith("run")


def test_spec_emulator_kernel_args_are_checked() -> None:
    with pytest.raises(ConfigError) as e:
        parse_specs([{"test": {"name": "t"}, "environments": [
            {"dimensions": {}, "emulator": {"kernel_args": ["a", 3]}}]}], "tests.json")
    assert e.value.field == "environments[0].emulator.kernel_args[1]"


def test_product_bundle_image_needs_the_zircon_profile(tmp_path: Path) -> None:
    doc = json.loads((ROOT / "environments.json").read_text())
    doc["environments"]["fuchsia-qemu-x64"]["profile"] = "linux"
    path = tmp_path / "environments.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        envmod.load(path)
    assert (e.value.entry, e.value.field) == ("environment 'fuchsia-qemu-x64'", "profile")


def test_images_build_leaves_product_bundle_environments_alone() -> None:
    wanted = {(e.image.name, e.arch) for e in ENVS if e.image.embedded}
    assert all(name != "product-bundle" for name, _ in wanted)


# -- run-boot-test: choosing the test, as fx run-boot-test does ------------------------------


@pytest.fixture
def boot_build(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "out"
    bundles = [write_bundle(out, n, "x64") for n in ("core-tests", "kernel-unittests")]
    tests = [boot_entry(n, {"dimensions": {"device_type": "QEMU"}})
             for n in ("core-tests", "kernel-unittests")]
    yield write_build(out, tests, bundles)


def test_run_boot_test_lists_the_builds_boot_tests(
        boot_build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli(capsys, "run-boot-test", "--build-dir", str(boot_build))
    assert status == 0
    assert "* core-tests (product bundle core-tests)" in err
    assert f"    kernel: {boot_build / 'obj/kernel-unittests/product_bundle/system_a'}" in err
    status, err = run_cli(capsys, "run-boot-test", "--build-dir", str(boot_build),
                          "--arch", "arm64")
    assert status == 0 and "no boot tests" in err


@pytest.mark.parametrize(("name", "problem"), [
    ("nothing-like-it", "no boot test closely matches 'nothing-like-it'"),
    ("core-test", None),  # the one close match is taken, as run-boot-test does
])
def test_run_boot_test_matches_names_as_fx_does(
        boot_build: Path, capsys: pytest.CaptureFixture[str], name: str,
        problem: str | None, tmp_path: Path) -> None:
    # --env names a Linux environment: the choice is made, then refused, without booting.
    status, err = run_cli(capsys, "run-boot-test", name, "--build-dir", str(boot_build),
                          "--env", "qemu-x64", "--out", str(tmp_path / "r"))
    assert status == 2
    if problem:
        assert problem in err
    else:
        assert "qemu-x64 does not boot a product bundle" in err


def test_run_boot_test_takes_fuchsia_build_dir_from_the_environment_as_fx_does(
        boot_build: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUCHSIA_BUILD_DIR", raising=False)
    status, err = run_cli(capsys, "run-boot-test")
    assert status == 2 and "FUCHSIA_BUILD_DIR" in err
    monkeypatch.setenv("FUCHSIA_BUILD_DIR", str(boot_build))
    status, err = run_cli(capsys, "run-boot-test")
    assert status == 0 and "* kernel-unittests" in err


def test_repro_accepts_run_boot_test_lines() -> None:
    from harness.repro import run_arguments

    line = shlex.join(["/v/bin/harness", "run-boot-test", "--build-dir", "/b", "t",
                       "--crosvm", "--arch", "x64"])
    assert run_arguments(line, "summary.json", "k")[:2] == ["run-boot-test", "--build-dir"]
    with pytest.raises(ConfigError):
        run_arguments("/v/bin/harness doctor", "summary.json", "k")
