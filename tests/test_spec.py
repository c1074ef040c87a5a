"""tests.json reading: the fields the harness uses, strictness where it acts, leniency elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.spec import PATH_SUITE, TestSpec, load_specs, parse_specs

FIXTURE = Path(__file__).parent / "fixtures" / "specs" / "tests.json"

VALID = {"test": {"name": "core-tests"}, "environments": [{"dimensions": {"cpu": "x64"}}]}


def write(tmp_path: Path, data: Any, name: str = "tests.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def by_name(specs: list[TestSpec]) -> dict[str, TestSpec]:
    return {s.name: s for s in specs}


def test_fixture_fields_are_read() -> None:
    specs = load_specs(FIXTURE)
    assert [s.index for s in specs] == list(range(7))
    core = specs[0]
    assert core.name == "core-tests"
    assert core.label == "//zircon/system/utest/core:core-tests(//build/toolchain/fuchsia:x64)"
    assert (core.os, core.cpu, core.path) == ("fuchsia", "x64", "/boot/test/core-tests")
    assert core.timeout_secs == 600.0
    assert core.product_bundle == "core.x64"
    assert core.bootup_timeout_secs is None  # 0 means "the default", as in Fuchsia
    assert core.is_boot_test is False
    assert [dict(e.dimensions) for e in core.environments] == [
        {"device_type": "crosvm", "cpu": "x64"},
        {"device_type": "QEMU", "cpu": "x64"},
    ]
    assert core.environments[0].tags == ("kernel",)
    assert core.environments[1].tags == ()
    assert core.environments[0].device_type == "crosvm"
    assert not core.disabled

    boot = specs[6]
    assert boot.is_boot_test is True
    assert boot.bootup_timeout_secs == 900.0
    assert boot.label == ""  # JSON null is the zero value, as Go decodes it
    assert boot.environments[0].emulator == {
        "name": "crosvm", "accel": "kvm", "kernel_args": ["kernel.test.ram.reserve=0"],
    }
    assert core.environments[0].emulator is None

    pkg = specs[5]
    assert pkg.package_url == "fuchsia-pkg://fuchsia.com/foo-tests#meta/foo-tests.cm"
    assert pkg.path == ""


def test_unknown_fields_are_kept_in_extra_and_otherwise_ignored() -> None:
    specs = load_specs(FIXTURE)
    assert dict(specs[0].extra) == {
        "expects_ssh": False,
        "test.runtime_deps": "gen/zircon/system/utest/core/core-tests.deps.json",
        "test.parallel": 0,
        "test.isolated": False,
    }
    assert dict(specs[5].extra) == {"test.log_settings": {"max_severity": "WARN"}}
    assert dict(specs[1].extra) == {}


def test_unknown_fields_at_every_level_do_not_fail(tmp_path: Path) -> None:
    entry = {
        "test": {"name": "a.b", "future_field": [1, 2], "timeout_secs": 5},
        "environments": [{"dimensions": {"cpu": "x64"}, "tags": [], "gpu": {"x": 1}}],
        "shard_hint": 3,
        "is_boot_test": False,
    }
    (spec,) = load_specs(write(tmp_path, [entry]))
    assert spec.timeout_secs == 5.0
    assert spec.extra == {"test.future_field": [1, 2], "shard_hint": 3}
    assert dict(spec.environments[0].dimensions) == {"cpu": "x64"}


def test_empty_or_missing_environments_mean_disabled(tmp_path: Path) -> None:
    specs = load_specs(write(tmp_path, [
        {"test": {"name": "a"}, "environments": []},
        {"test": {"name": "b"}},
        {"test": {"name": "c"}, "environments": None},
        VALID,
    ]))
    assert [s.disabled for s in specs] == [True, True, True, False]
    assert by_name(load_specs(FIXTURE))["peripherals.balloon"].disabled


def test_an_empty_list_is_an_empty_spec_set(tmp_path: Path) -> None:
    assert load_specs(write(tmp_path, [])) == []


@pytest.mark.parametrize(
    ("name", "path", "suite", "test"),
    [
        ("reboot_shutdown.guest_reboot", "", "reboot_shutdown", "guest_reboot"),
        ("core.kernel_unittests", "", "core", "kernel_unittests"),
        ("a.b.c", "", "a", "b.c"),
        ("core-tests", "/boot/test/core-tests", PATH_SUITE, "core-tests"),
        ("reboot_shutdown.x", "/boot/test/x", PATH_SUITE, "reboot_shutdown.x"),
        ("fuchsia-pkg://fuchsia.com/f#meta/f.cm", "", "", "fuchsia-pkg://fuchsia.com/f#meta/f.cm"),
        ("plain", "", "", "plain"),
        ("trailing.", "", "", "trailing."),
        (".leading", "", "", ".leading"),
        ("host_x64/foo.bar", "", "", "host_x64/foo.bar"),
    ],
)
def test_suite_and_test_names(name: str, path: str, suite: str, test: str) -> None:
    spec = TestSpec(name=name, environments=(), index=0, path=path)
    assert (spec.suite, spec.test) == (suite, test)


def test_parse_specs_takes_decoded_json() -> None:
    (spec,) = parse_specs([VALID], "inline")
    assert spec.name == "core-tests"
    with pytest.raises(ConfigError) as info:
        parse_specs([{"test": {}}], "inline")
    err = info.value
    assert (err.file, err.entry, err.field) == ("inline", "entry 0", "test.name")


GOOD = {"test": {"name": "core-tests"}, "environments": []}


@pytest.mark.parametrize(
    ("data", "entry", "field", "problem"),
    [
        ({"tests": []}, None, None, "expected a JSON list of test specs, got an object"),
        ('"just text"', None, None, "expected a JSON list of test specs, got a string"),
        ([GOOD, 7], "entry 1", None, "expected an object, got 7"),
        ([{}], "entry 0", "test", "is required"),
        ([{"test": "core-tests"}], "entry 0", "test", 'expected an object, got "core-tests"'),
        ([{"test": {"label": "//x"}}], "entry 0", "test.name", "is required"),
        ([{"test": {"name": 5}}], "entry 0", "test.name", "expected a string, got 5"),
        ([{"test": {"name": ""}}], "entry 0", "test.name", "must not be empty"),
        (
            [GOOD, GOOD, GOOD, {"test": {"name": "core-tests", "timeout_secs": "600"}}],
            'entry 3 ("core-tests")', "test.timeout_secs",
            'expected a number of seconds, got "600"',
        ),
        ([{"test": {"name": "t", "timeout_secs": True}}], 'entry 0 ("t")', "test.timeout_secs",
         "expected a number of seconds, got true"),
        ([{"test": {"name": "t", "timeout_secs": -1}}], 'entry 0 ("t")', "test.timeout_secs",
         "must not be negative, got -1"),
        ([{"test": {"name": "t", "label": 3}}], 'entry 0 ("t")', "test.label",
         "expected a string, got 3"),
        ([{"test": {"name": "t", "path": ["/boot"]}}], 'entry 0 ("t")', "test.path",
         'expected a string, got ["/boot"]'),
        ([{"test": {"name": "t"}, "environments": {"dimensions": {}}}], 'entry 0 ("t")',
         "environments", 'expected a list, got {"dimensions": {}}'),
        ([{"test": {"name": "t"}, "environments": ["QEMU"]}], 'entry 0 ("t")',
         "environments[0]", 'expected an object, got "QEMU"'),
        (
            [{"test": {"name": "t"}, "environments": [
                {"dimensions": {"cpu": "x64"}}, {"dimensions": ["cpu", "x64"]}]}],
            'entry 0 ("t")', "environments[1].dimensions",
            'expected an object of strings, got ["cpu", "x64"]',
        ),
        (
            [{"test": {"name": "t"}, "environments": [
                {"dimensions": {"cpu": "x64"}},
                {"dimensions": {"device_type": "QEMU", "cpu": 64}}]}],
            'entry 0 ("t")', "environments[1].dimensions.cpu", "expected a string, got 64",
        ),
        ([{"test": {"name": "t"}, "environments": [{"tags": "crosvm"}]}], 'entry 0 ("t")',
         "environments[0].tags", 'expected a list of strings, got "crosvm"'),
        ([{"test": {"name": "t"}, "environments": [{"tags": {}}]}], 'entry 0 ("t")',
         "environments[0].tags", "expected a list of strings, got {}"),
        ([{"test": {"name": "t"}, "environments": [{"tags": ["a", 1]}]}], 'entry 0 ("t")',
         "environments[0].tags[1]", "expected a string, got 1"),
        ([{"test": {"name": "t"}, "environments": [{"emulator": "crosvm"}]}], 'entry 0 ("t")',
         "environments[0].emulator", 'expected an object, got "crosvm"'),
        ([{"test": {"name": "t"}, "is_boot_test": "yes"}], 'entry 0 ("t")', "is_boot_test",
         'expected true or false, got "yes"'),
        ([{"test": {"name": "t"}, "product_bundle": 1}], 'entry 0 ("t")', "product_bundle",
         "expected a string, got 1"),
        ([{"test": {"name": "t"}, "bootup_timeout_secs": "9"}], 'entry 0 ("t")',
         "bootup_timeout_secs", 'expected a number of seconds, got "9"'),
    ],
)
def test_malformed_files_name_file_entry_and_field(
    tmp_path: Path, data: Any, entry: str | None, field: str | None, problem: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_specs(path)
    err = info.value
    assert (err.file, err.entry, err.field, err.problem) == (str(path), entry, field, problem)
    assert err.exit_status == 2
    message = str(err)
    assert message.startswith(str(path))
    if entry is not None:
        assert entry in message
    if field is not None:
        assert f"field '{field}'" in message


def test_not_json(tmp_path: Path) -> None:
    path = write(tmp_path, '[{"test": {"name": "a"}},\n  oops]')
    with pytest.raises(ConfigError) as info:
        load_specs(path)
    assert info.value.file == str(path)
    assert info.value.problem.startswith("not valid JSON")
    assert "line 2" in info.value.problem


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tests.json"
    path.write_bytes(b'[{"test": {"name": "\xff"}}]')
    with pytest.raises(ConfigError) as info:
        load_specs(path)
    assert info.value.file == str(path)
    assert info.value.problem.startswith("not valid UTF-8")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_specs(path)
    assert (info.value.file, info.value.entry) == (str(path), None)
    assert info.value.problem.startswith("cannot read")


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    path = write(tmp_path, [{"test": {"name": "t", "label": ["x" * 500]}}])
    with pytest.raises(ConfigError) as info:
        load_specs(path)
    assert len(info.value.problem) < 100
    assert info.value.problem.endswith("...")


def test_load_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    import gc

    path = write(tmp_path, [VALID])
    assert gc.isenabled()
    load_specs(path)
    assert gc.isenabled()
    with pytest.raises(ConfigError):
        load_specs(write(tmp_path, [{"test": {}}], "bad.json"))
    assert gc.isenabled()
    gc.disable()
    try:
        load_specs(path)
        assert not gc.isenabled()
    finally:
        gc.enable()
