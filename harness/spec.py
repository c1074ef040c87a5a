"""tests.json: the Fuchsia build's list of test specs, read into frozen records.

The reader is strict about the fields the harness acts on (a wrong type there
would silently select, time out or shard a test wrongly, so it is a ConfigError
naming the file, the entry and the field) and lenient about everything else:
the format grows with every Fuchsia release, so unknown fields are kept in
`TestSpec.extra` and otherwise ignored.

Decoding follows Go's encoding/json, which is what writes and reads the file in
Fuchsia: a JSON `null` or a missing optional field is the zero value, and a
missing `environments` list is an empty one (the test is disabled).

Duplicate test names are not an error here: two entries with the same name are
legitimate when their environments are disjoint (an x64 and an arm64 variant).
Only when both would run in the same environment do the results collide; the
plan detects that exactly (see `harness.plan.make_plan`), keeps the first entry
and reports the others.

The loader is on the hot path of every `harness` invocation and of CI sharding
over tens of thousands of entries, so it does one pass with exact type()
checks, keeps references into the decoded JSON rather than copying, and builds
error context (the entry label) only when it is about to raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from harness import jsonfile
from harness.errors import ConfigError

# Fields the loader reads; anything else in an entry or its "test" object goes to `extra`.
_ENTRY_FIELDS = frozenset(
    {"test", "environments", "is_boot_test", "product_bundle", "bootup_timeout_secs"}
)
_TEST_FIELDS = frozenset(
    {"name", "label", "os", "cpu", "path", "package_url", "timeout_secs"}
)

# Suite name given to tests that run a binary at `test.path` inside the guest.
PATH_SUITE = "path"
# Suite name of boot tests (`is_boot_test`): the booted system is the test; `path` is a host
# script (harness.fuchsia.boottest).
BOOT_TEST_SUITE = "boot_test"

# Fuchsia's largest tests.json is tens of MiB; this leaves room and still fits in memory.
MAX_TESTS_JSON = 256 * jsonfile.MiB


@dataclasses.dataclass(frozen=True)
class SpecEnvironment:
    """One environment a tests.json entry asks for: dimensions to match, plus tags."""

    dimensions: Mapping[str, str]
    tags: tuple[str, ...] = ()
    emulator: Mapping[str, Any] | None = None

    @property
    def device_type(self) -> str:
        return self.dimensions.get("device_type", "")

    @property
    def kernel_args(self) -> tuple[str, ...]:
        """`emulator.kernel_args`: appended to the guest's kernel command line, last
        (botanist's order: tools/botanist/targets/emulator.go)."""
        return tuple((self.emulator or {}).get("kernel_args") or ())

    @property
    def accel(self) -> str:
        """`emulator.accel`: "none" asks for TCG, which Fuchsia gives twice the time."""
        value = (self.emulator or {}).get("accel")
        return value if isinstance(value, str) else ""


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """One tests.json entry. `index` is its 0-based position in the file (as `jq .[N]`)."""

    name: str
    environments: tuple[SpecEnvironment, ...]
    index: int
    label: str = ""
    os: str = ""
    cpu: str = ""
    path: str = ""
    package_url: str = ""
    timeout_secs: float | None = None
    is_boot_test: bool = False
    product_bundle: str = ""
    bootup_timeout_secs: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # pytest would otherwise try to collect this class from test modules that import it.
    __test__ = False

    @property
    def disabled(self) -> bool:
        """Fuchsia's convention: a test listed with no environments is disabled, not missing."""
        return not self.environments

    @property
    def suite(self) -> str:
        """The harness suite that runs this entry.

        A boot test is suite "boot_test" (its `path` is a host script, never run). An
        entry with a `path` runs that binary in the guest (suite "path"). A
        built-in suite test is named "SUITE.TEST" where SUITE is a module name in
        suites/; the identifier check keeps names such as
        "fuchsia-pkg://fuchsia.com/x#meta/x.cm" from being split at a dot. Anything
        else has no suite ("") and is left to the runner to report.
        """
        if self.is_boot_test:
            return BOOT_TEST_SUITE
        if self.path:
            return PATH_SUITE
        suite, dot, test = self.name.partition(".")
        if dot and test and suite.isidentifier():
            return suite
        return ""

    @property
    def test(self) -> str:
        """The test within `suite`: the part after "SUITE." for built-ins, else the name."""
        if self.path or self.is_boot_test:
            return self.name
        suite, dot, test = self.name.partition(".")
        if dot and test and suite.isidentifier():
            return test
        return self.name


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off the cyclic garbage collector while building many acyclic objects.

    Each generation-2 pass walks every live object, and bulk-creating tens of
    thousands of records triggers many of them: on a 20,000-entry tests.json that
    is about 40% of the load time, for no garbage at all (JSON values and these
    records hold no cycles). Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Entry:
    """Error context for one entry; the label is built only when an error is raised."""

    __slots__ = ("file", "index", "name")

    def __init__(self, file: str, index: int) -> None:
        self.file = file
        self.index = index
        self.name: str | None = None

    def fail(self, field: str | None, problem: str) -> NoReturn:
        label = f"entry {self.index}"
        if self.name is not None:
            label += f" ({json.dumps(self.name, ensure_ascii=False)})"
        raise ConfigError(self.file, label, field, problem)

    def wrong(self, field: str, expected: str, value: Any) -> NoReturn:
        self.fail(field, f"expected {expected}, got {_show(value)}")


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _string(e: _Entry, obj: Mapping[str, Any], key: str, field: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        e.wrong(field, "a string", value)
    return value


def _seconds(e: _Entry, obj: Mapping[str, Any], key: str, field: str) -> float | None:
    """A timeout in seconds; 0 means "use the default", as in Fuchsia's Go structs."""
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):  # excludes bool, which is an int subclass
        e.wrong(field, "a number of seconds", value)
    if value < 0:
        e.fail(field, f"must not be negative, got {_show(value)}")
    return float(value) if value else None


def _environment(e: _Entry, i: int, obj: Any) -> SpecEnvironment:
    if type(obj) is not dict:
        e.wrong(f"environments[{i}]", "an object", obj)
    dimensions = obj.get("dimensions")
    if dimensions is None:
        dimensions = {}
    elif type(dimensions) is not dict:
        e.wrong(f"environments[{i}].dimensions", "an object of strings", dimensions)
    elif not all(type(value) is str for value in dimensions.values()):
        key, value = next((k, v) for k, v in dimensions.items() if type(v) is not str)
        e.wrong(f"environments[{i}].dimensions.{key}", "a string", value)
    tags = obj.get("tags")
    if not tags:  # None or []
        if tags is not None and type(tags) is not list:
            e.wrong(f"environments[{i}].tags", "a list of strings", tags)
        tags = ()
    elif type(tags) is not list:
        e.wrong(f"environments[{i}].tags", "a list of strings", tags)
    elif not all(type(tag) is str for tag in tags):
        n, tag = next((n, t) for n, t in enumerate(tags) if type(t) is not str)
        e.wrong(f"environments[{i}].tags[{n}]", "a string", tag)
    else:
        tags = tuple(tags)
    emulator = obj.get("emulator")
    if emulator is not None and type(emulator) is not dict:
        e.wrong(f"environments[{i}].emulator", "an object", emulator)
    if emulator:
        # Acted on (they reach the kernel command line), so checked like the fields above.
        args = emulator.get("kernel_args")
        if args is not None and type(args) is not list:
            e.wrong(f"environments[{i}].emulator.kernel_args", "a list of strings", args)
        for n, arg in enumerate(args or ()):
            if type(arg) is not str:
                e.wrong(f"environments[{i}].emulator.kernel_args[{n}]", "a string", arg)
    return SpecEnvironment(dimensions, tags, emulator)


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _int_in(lo: int, hi: int) -> tuple[str, Callable[[Any], bool]]:
    return f"an integer from {lo} to {hi}", lambda v: type(v) is int and lo <= v <= hi


def _positive(hi: float) -> tuple[str, Callable[[Any], bool]]:
    return f"a number of seconds above 0, at most {hi:g}", \
        lambda v: _is_number(v) and 0 < v <= hi


# Fields Fuchsia's format does not define but the harness reads (harness.runner.spec_params,
# then harness.programs and the suites), allowed on the entry or on its "test" object. Their
# types and ranges are checked here, so a mistake is an error naming the field when the file
# is loaded, never a test that runs wrongly: "args": "hello" would otherwise run `h e l l o`.
_PARAMS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "args": ("a list of strings (a program's arguments)",
             lambda v: type(v) is list and all(type(a) is str or _is_number(a) for a in v)),
    "format": ("a string", lambda v: type(v) is str),
    "isolated": ("true or false", lambda v: type(v) is bool),
    "reboot_cycles": _int_in(1, 1000),
    "blk_load_mib": _int_in(1, 65536),
    "balloon_mib": _int_in(1, 1 << 20),
    "balloon_deadline_s": _positive(86400),
    "rtc_tolerance_s": _positive(86400),
    "test_bpf_args": ("a string", lambda v: type(v) is str),
    "core_tests_path": ("a string", lambda v: type(v) is str),
}


def _check_params(e: _Entry, extra: Mapping[str, Any]) -> None:
    for field, value in extra.items():
        rule = _PARAMS.get(field.removeprefix("test."))
        if rule is not None and not rule[1](value):
            e.wrong(field, rule[0], value)
        if type(value) is dict or type(value) is list:
            # Kept without being looked into; a value nested hundreds deep would make
            # whatever later reads it recurse out of stack (entry, test, field: level 3).
            try:
                jsonfile.check_depth(value, e.file, start=3)
            except ConfigError as err:
                e.fail(field, err.problem)


def _entry(file: str, index: int, obj: Any) -> TestSpec:
    e = _Entry(file, index)
    if type(obj) is not dict:
        e.fail(None, f"expected an object, got {_show(obj)}")
    test = obj.get("test")
    if test is None:
        e.fail("test", "is required")
    if type(test) is not dict:
        e.wrong("test", "an object", test)
    name = test.get("name")
    if name is None:
        e.fail("test.name", "is required")
    if type(name) is not str:
        e.wrong("test.name", "a string", name)
    if not name:
        e.fail("test.name", "must not be empty")
    e.name = name

    envs_obj = obj.get("environments")
    if envs_obj is None:
        environments: tuple[SpecEnvironment, ...] = ()
    elif type(envs_obj) is not list:
        e.wrong("environments", "a list", envs_obj)
    else:
        environments = tuple([_environment(e, i, env) for i, env in enumerate(envs_obj)])

    is_boot_test = obj.get("is_boot_test")
    if is_boot_test is None:
        is_boot_test = False
    elif type(is_boot_test) is not bool:
        e.wrong("is_boot_test", "true or false", is_boot_test)

    # Unknown fields, flattened with the same dotted names errors use ("test.runtime_deps").
    extra: dict[str, Any] = {}
    if not _ENTRY_FIELDS.issuperset(obj):
        extra.update((k, v) for k, v in obj.items() if k not in _ENTRY_FIELDS)
    if not _TEST_FIELDS.issuperset(test):
        extra.update((f"test.{k}", v) for k, v in test.items() if k not in _TEST_FIELDS)
    if extra:
        _check_params(e, extra)

    return TestSpec(
        name=name,
        environments=environments,
        index=index,
        label=_string(e, test, "label", "test.label"),
        os=_string(e, test, "os", "test.os"),
        cpu=_string(e, test, "cpu", "test.cpu"),
        path=_string(e, test, "path", "test.path"),
        package_url=_string(e, test, "package_url", "test.package_url"),
        timeout_secs=_seconds(e, test, "timeout_secs", "test.timeout_secs"),
        is_boot_test=is_boot_test,
        product_bundle=_string(e, obj, "product_bundle", "product_bundle"),
        bootup_timeout_secs=_seconds(e, obj, "bootup_timeout_secs", "bootup_timeout_secs"),
        extra=extra,
    )


def parse_specs(data: Any, file: str = "<tests.json>") -> list[TestSpec]:
    """Build specs from already-decoded JSON; `file` names the source in errors."""
    if type(data) is not list:
        raise ConfigError(file, None, None,
                          f"expected a JSON list of test specs, got {_json_kind(data)}")
    return [_entry(file, i, obj) for i, obj in enumerate(data)]


def load_specs(path: Path | str) -> list[TestSpec]:
    """Read a tests.json file; every problem is a ConfigError (exit status 2)."""
    file = str(path)
    text = jsonfile.read_input(path, MAX_TESTS_JSON, "tests.json")
    with paused_gc():
        return parse_specs(jsonfile.parse(text, file), file)
