"""What a suite author writes against: `@guest_test(...)` on `async def test(t: TestContext)`,
and the `Guest` a test drives.

A test states what it needs (arches, profiles, devices, engines) so the plan
skips it, with the reason, where an environment cannot run it. It states
whether it may share a booted guest with other tests of the same environment
(most read-only checks can; anything that reboots, panics or powers off cannot),
which is where most of a run's time is saved.

`Guest` is a protocol: what a test may ask of the guest, whatever engine runs it
(harness.guest.Guest is the real one; the harness's own tests give stand-ins that
replay transcripts). Suites see no engine: a reboot is `guest.reboot()` on QEMU and
on crosvm alike.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from harness.console import CommandResult, Console, SerialLog
from harness.engines.base import RunPaths
from harness.environments import Environment
from harness.errors import ConfigError
from harness.exits import ExitInfo
from harness.guest import Boot as Boot  # part of the suite API: what a boot was
from harness.images.model import GuestImage
from harness.profiles import Crash, Profile
from harness.results import Case, Status
from harness.spec import TestSpec

SUITE_MODULES = ("smoke", "reboot_shutdown", "core", "device_enumeration", "peripherals")


class Skip(Exception):
    """Raised by a test that finds at run time that it cannot run here."""


@dataclasses.dataclass(frozen=True)
class Requirements:
    arches: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    any_devices: tuple[str, ...] = ()

    def unmet(self, env: Environment) -> str | None:
        if self.arches and env.arch not in self.arches:
            return f"needs arch {' or '.join(self.arches)}; {env.name} is {env.arch}"
        if self.profiles and env.profile not in self.profiles:
            return f"needs a {' or '.join(self.profiles)} guest; {env.name} runs {env.profile}"
        if self.engines and env.engine not in self.engines:
            return f"needs engine {' or '.join(self.engines)}; {env.name} uses {env.engine}"
        missing = [d for d in self.devices if not env.devices.has(d)]
        if missing:
            return (f"device config '{env.devices.name}' of {env.name} has no "
                    f"{', '.join(missing)}")
        if self.any_devices and not any(env.devices.has(d) for d in self.any_devices):
            return (f"device config '{env.devices.name}' of {env.name} has none of "
                    f"{', '.join(self.any_devices)}")
        return None


class VmmProcess(Protocol):
    """The VMM process, as a test may look at it (its process group, whether it exited)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...


class Guest(Protocol):
    """A booted guest, as a suite test sees it (harness.guest.Guest implements it)."""

    @property
    def env(self) -> Environment: ...

    @property
    def image(self) -> GuestImage: ...

    @property
    def profile(self) -> Profile: ...

    @property
    def console(self) -> Console:
        """The serial console, for what `run` cannot do: a command that does not come back
        (a reboot, a kernel's own command like Zircon's `k`), or output read as it comes."""

    @property
    def log(self) -> SerialLog:
        """The serial log on disk: every boot of this test, as it arrived."""

    @property
    def boots(self) -> Sequence[Boot]:
        """Each boot so far (the first is the runner's), with its boot id and time to shell."""

    @property
    def vmm(self) -> VmmProcess | None: ...

    @property
    def paths(self) -> RunPaths:
        """The guest's private directory and its disk images (host side)."""

    @property
    def capabilities(self) -> Mapping[str, Any]:
        """What the guest kernel can do (harness.images.model.GuestImage.capabilities; Any:
        booleans, and lists such as the kernel's test modules)."""

    @property
    def running(self) -> bool: ...

    async def run(self, command: str, timeout: float = 60.0) -> CommandResult: ...

    async def check(self, command: str, timeout: float = 60.0) -> str:
        """Run `command`; a non-zero status fails the test with its output."""

    async def reboot(self, timeout: float | None = None) -> Boot: ...

    async def wait_reset(self, timeout: float | None = None) -> Boot: ...

    async def shutdown(self, timeout: float = 120.0) -> ExitInfo: ...

    async def wait_exit(self, timeout: float) -> ExitInfo: ...

    async def power_button(self) -> None: ...

    async def stop(self, timeout: float = 10.0) -> ExitInfo: ...

    async def panic(self, timeout: float = 30.0) -> Crash: ...

    async def balloon(self, size_bytes: int) -> None: ...

    async def balloon_stats(self) -> dict[str, Any]:
        """The VMM's balloon report: at least `balloon_actual` (Any: the VMM's own fields)."""

    def expected_devices(self) -> frozenset[str]:
        """The configured devices plus what the engine always adds."""

    def implicit_devices(self) -> frozenset[str]:
        """What the engine presents whatever the configuration says."""


TestFunc = Callable[["TestContext"], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class SuiteTest:
    suite: str
    name: str
    func: TestFunc
    requires: Requirements
    shares_guest: bool
    timeout_s: float
    description: str
    # Share a guest even where a snapshot makes a guest of its own cheap (harness.snapshot).
    prefers_sharing: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.suite}.{self.name}"


@dataclasses.dataclass(frozen=True)
class _Marks:
    """What `@guest_test` records on a function, for the registry to find."""

    requires: Requirements
    shares_guest: bool
    timeout_s: float
    prefers_sharing: bool = False


_MARK = "__harness_test__"


def guest_test(
    *,
    requires: Requirements | None = None,
    shares_guest: bool = False,
    timeout_s: float = 120.0,
    prefers_sharing: bool = False,
) -> Callable[[TestFunc], TestFunc]:
    """Mark an async function as a suite test; the registry finds it by this attribute.

    `shares_guest`: the test may run on a guest an earlier test used, which saves a boot
    where guests boot. Where they are restored from a snapshot (harness.snapshot) every
    test gets a guest of its own anyway, unless it also says `prefers_sharing` (it wants
    the state earlier tests left, or measures a guest that has been running).
    """

    def mark(func: TestFunc) -> TestFunc:
        setattr(func, _MARK, _Marks(requires or Requirements(), shares_guest, timeout_s,
                                    prefers_sharing and shares_guest))
        return func

    return mark


def load_suite(module_name: str, module: ModuleType | None = None) -> list[SuiteTest]:
    if module is None:
        module = importlib.import_module(f"suites.{module_name}")
    tests = []
    for attr, func in vars(module).items():
        marks = getattr(func, _MARK, None)
        if not isinstance(marks, _Marks) or not inspect.iscoroutinefunction(func):
            continue
        name = attr.removeprefix("test_")
        doc = inspect.getdoc(func) or ""
        tests.append(SuiteTest(suite=module_name, name=name, func=func,
                               description=doc.splitlines()[0] if doc else "",
                               requires=marks.requires, shares_guest=marks.shares_guest,
                               timeout_s=marks.timeout_s,
                               prefers_sharing=marks.prefers_sharing))
    return tests


def load_suite_file(path: Path) -> list[SuiteTest]:
    """A suite kept outside the harness (a driver developer's own): SUITE is the file's stem."""
    name = path.stem
    spec = importlib.util.spec_from_file_location(f"harness_user_suites.{name}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(str(path), None, None, "cannot load as a Python suite module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(str(path), None, None,
                          f"suite module failed to import: {type(e).__name__}: {e}") from e
    return load_suite(name, module)


def registry(modules: tuple[str, ...] = SUITE_MODULES,
             extra_paths: Sequence[Path] = ()) -> dict[str, SuiteTest]:
    """Every test by full name ("SUITE.TEST"): the built-in suites, then any suite files
    from `extra_paths` (directories of *.py, or files)."""
    found: dict[str, SuiteTest] = {}
    for path in extra_paths:
        if not path.exists():
            raise ConfigError(str(path), None, None, "suite path does not exist")
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.name.startswith("_"):
                continue
            for t in load_suite_file(file):
                found[t.full_name] = t
    for module in modules:
        try:
            tests = load_suite(module)
        except ModuleNotFoundError as e:
            if e.name != f"suites.{module}":
                raise
            continue
        for t in tests:
            found[t.full_name] = t
    return found


def default_specs(tests: Mapping[str, SuiteTest]) -> list[dict[str, Any]]:
    """The built-in suites as tests.json entries, so `harness run` without --tests runs them.

    Each test lists every emulator environment; the plan then skips, with the
    reason, what an environment's arch, profile or devices cannot run.
    """
    envs = [{"dimensions": {"device_type": dt, "cpu": cpu}}
            for dt in ("crosvm", "QEMU") for cpu in ("x64", "arm64")]
    return [
        {
            "test": {
                "name": t.full_name,
                "label": f"//suites/{t.suite}.py:{t.name}",
                "os": "linux",
                "timeout_secs": t.timeout_s,
            },
            "environments": envs,
        }
        for t in tests.values()
    ]


@dataclasses.dataclass
class TestContext:
    """What a running test gets: its guest, its environment, and places to record results."""

    guest: Guest
    env: Environment
    spec: TestSpec
    folder: Path
    # The tests.json entry's own fields (harness.runner.spec_params; Any: JSON values, which
    # each test checks for itself).
    params: dict[str, Any]
    cases: list[Case] = dataclasses.field(default_factory=list)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def case(self, name: str, ok: bool | Status, message: str = "", *, suite: str = "",
             duration_s: float = 0.0, fmt: str = "") -> None:
        status = ok if isinstance(ok, Status) else (Status.PASS if ok else Status.FAIL)
        self.cases.append(Case(name=name, status=status, suite=suite, duration_s=duration_s,
                               message=message, format=fmt))

    def prop(self, name: str, value: object) -> None:
        self.properties[name] = str(value)

    def note(self, text: str) -> None:
        self.notes.append(text)
