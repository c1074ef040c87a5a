"""environments.json: named environments (engine x arch x device configuration).

Each environment carries `dimensions` in the same vocabulary as tests.json
environment dimensions (`device_type`, `cpu`, ...), so selecting tests for an
environment is a plain dimension match. Validation is strict and precise: a
typo in a CI config must fail the run at once with the file, the environment
and the field, never boot a half-configured guest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from harness import jsonfile
from harness.errors import ConfigError

ENGINES = ("qemu", "crosvm")
ARCHES = ("x86_64", "arm64")
ACCELS = ("kvm", "tcg", "auto")
PROFILES = ("linux", "zircon")
PANIC_POLICIES = ("reset", "halt")
CPU_DIMENSION = {"x86_64": "x64", "arm64": "arm64"}
# `"image": "product-bundle"`: the guest is the Fuchsia product bundle the test names (its
# `kernel` image, the Linux boot shim, booted with its ZBI as the initrd); see harness.fuchsia.
PRODUCT_BUNDLE_IMAGE = "product-bundle"

# Device types a configuration may name, with the options each accepts.
DEVICE_OPTIONS: dict[str, dict[str, type]] = {
    "virtio-blk": {"size_mib": int, "count": int},
    "virtio-net": {"tap": str},
    "virtio-rng": {},
    "virtio-balloon": {},
    "virtio-gpu": {"backend": str},
    "virtio-console": {},
    "virtio-vsock": {"cid": int},
    "rtc": {},
    "serial": {"count": int},
    "pvpanic": {},
    "xhci": {},
}
# Inclusive ranges of the integer options: what the engines can give a guest (crosvm and
# QEMU's PC have 4 legacy UARTs; a vsock CID below 3 is the host's or reserved).
OPTION_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("virtio-blk", "size_mib"): (1, 1 << 20),
    ("virtio-blk", "count"): (1, 16),
    ("virtio-vsock", "cid"): (3, 0xFFFF_FFFE),
    ("serial", "count"): (1, 4),
}
MAX_FILE = 16 * jsonfile.MiB  # environments.json is a few KiB; anything this big is a mistake

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "environments.json"


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """A named set of virtual devices, plus the devices that must not appear."""

    name: str
    devices: Mapping[str, Mapping[str, Any]]
    absent: tuple[str, ...] = ()
    description: str = ""

    def has(self, device: str) -> bool:
        return device in self.devices

    def option(self, device: str, key: str, default: Any = None) -> Any:
        return self.devices.get(device, {}).get(key, default)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An embedded image name (built by `harness images build`), explicit files, or the
    product bundle of the test being run (`product_bundle`: chosen per run, not here)."""

    name: str = ""
    kernel: Path | None = None
    initrd: Path | None = None
    product_bundle: bool = False

    @property
    def embedded(self) -> bool:
        return self.kernel is None and not self.product_bundle


@dataclasses.dataclass(frozen=True)
class Environment:
    name: str
    dimensions: Mapping[str, str]
    tags: tuple[str, ...]
    engine: str
    arch: str
    cpus: int
    memory_mib: int
    accel: str
    kernel_args: tuple[str, ...]
    profile: str
    image: ImageRef
    devices: DeviceConfig
    blocking: bool
    panic_policy: str = "reset"
    boot_timeout_s: float = 120.0
    disable_sandbox: bool = True
    description: str = ""
    # Whether tests start from a restore of a saved guest (harness.snapshot): false boots
    # every guest, as `harness run --no-snapshot` does for a whole run.
    snapshot: bool = True
    # Per launch, never from environments.json: the runner derives a copy of the environment
    # for each guest it starts (harness.plan.run_environment). `entropy_mixin` is the fresh
    # `kernel.entropy-mixin` Fuchsia's botanist gives every Zircon boot (a secret: kept out of
    # repr, logs and reports); `no_reboot` makes the VMM exit on a guest reset instead of
    # resetting, as `fx run-boot-test` runs QEMU for boot tests (`-no-reboot`).
    entropy_mixin: str = dataclasses.field(default="", repr=False)
    no_reboot: bool = False

    @property
    def device_type(self) -> str:
        return self.dimensions.get("device_type", "")

    @property
    def tap(self) -> str | None:
        """The TAP device a virtio-net uses, `{arch}` filled in (one TAP per arch, so the
        x86_64 and arm64 guests of one configuration can run at the same time)."""
        if not self.devices.has("virtio-net"):
            return None
        template = self.devices.option("virtio-net", "tap")
        return str(template).format(arch=self.arch) if template else None

    def matches(self, dimensions: Mapping[str, str]) -> bool:
        """A tests.json environment matches when every dimension it names agrees with ours."""
        return all(self.dimensions.get(k) == v for k, v in dimensions.items())


@dataclasses.dataclass(frozen=True)
class EnvironmentSet:
    file: Path
    environments: Mapping[str, Environment]
    device_configs: Mapping[str, DeviceConfig]

    def get(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments))
            raise ConfigError(
                str(self.file), None, None, f"no environment named '{name}' (known: {known})"
            ) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.environments.values())


class _Checker:
    """Reads typed fields out of a JSON object, raising ConfigError with the exact location."""

    def __init__(self, file: str, entry: str, obj: Any, prefix: str = "") -> None:
        self.file, self.entry, self.prefix = file, entry, prefix
        if not isinstance(obj, dict):
            self.fail(None, f"expected an object, got {type(obj).__name__}")
        self.obj: dict[str, Any] = obj
        self.seen: set[str] = set()  # every field asked for: the ones this reader knows

    def done(self) -> None:
        """Fail on a field nobody asked for: a typo (`memroy_mib`) must not be ignored."""
        for field in self.obj:
            if field not in self.seen:
                self.fail(field, f"unknown field (known: {', '.join(sorted(self.seen))})")

    def fail(self, field: str | None, problem: str) -> NoReturn:
        where = self.prefix.rstrip(".") or None if field is None else self.prefix + field
        raise ConfigError(self.file, self.entry, where, problem)

    def get(self, field: str, kind: type | tuple[type, ...], default: Any = ..., *,
            choices: tuple[str, ...] | None = None) -> Any:
        self.seen.add(field)
        if field not in self.obj:
            if default is ...:
                self.fail(field, "is required")
            return default
        value = self.obj[field]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a JSON true is never a valid count.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(field, f"expected {names}, got {json.dumps(value)}")
        if choices is not None and value not in choices:
            self.fail(field, f"must be one of {', '.join(choices)}; got {json.dumps(value)}")
        return value

    def positive(self, field: str, default: Any = ...) -> int:
        value = self.get(field, int, default)
        if value <= 0:
            self.fail(field, f"must be a positive integer, got {value}")
        return int(value)

    def strings(self, field: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(field, list, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{field}[{i}]", f"expected str, got {json.dumps(item)}")
        return tuple(value)

    def string_map(self, field: str, default: Any = ...) -> dict[str, str]:
        value = self.get(field, dict, default)
        for k, v in value.items():
            if not isinstance(v, str):
                self.fail(f"{field}.{k}", f"expected str, got {json.dumps(v)}")
        return dict(value)


def _device_config(file: str, name: str, obj: Any) -> DeviceConfig:
    c = _Checker(file, f"device config '{name}'", obj)
    devices_obj = c.get("devices", dict)
    devices: dict[str, dict[str, Any]] = {}
    for dev, opts in devices_obj.items():
        if dev not in DEVICE_OPTIONS:
            c.fail(f"devices.{dev}", f"unknown device type (known: {', '.join(DEVICE_OPTIONS)})")
        if not isinstance(opts, dict):
            c.fail(f"devices.{dev}", f"expected an object of options, got {json.dumps(opts)}")
        for key, value in opts.items():
            want = DEVICE_OPTIONS[dev].get(key)
            if want is None:
                known = ", ".join(DEVICE_OPTIONS[dev]) or "none"
                c.fail(f"devices.{dev}.{key}", f"unknown option (known: {known})")
            if not isinstance(value, want) or isinstance(value, bool):
                c.fail(f"devices.{dev}.{key}", f"expected {want.__name__}, got {json.dumps(value)}")
            lo_hi = OPTION_RANGES.get((dev, key))
            if lo_hi is not None and isinstance(value, int) and not lo_hi[0] <= value <= lo_hi[1]:
                c.fail(f"devices.{dev}.{key}",
                       f"must be from {lo_hi[0]} to {lo_hi[1]}, got {json.dumps(value)}")
            if want is str and not value:
                c.fail(f"devices.{dev}.{key}", "must not be empty")
        devices[dev] = dict(opts)
    absent = c.strings("absent", [])
    for i, dev in enumerate(absent):
        if dev not in DEVICE_OPTIONS:
            c.fail(f"absent[{i}]", f"unknown device type '{dev}'")
        if dev in devices:
            c.fail(f"absent[{i}]", f"'{dev}' is both configured and required absent")
    config = DeviceConfig(
        name=name, devices=devices, absent=absent, description=c.get("description", str, "")
    )
    c.done()
    return config


def _image(c: _Checker, base: Path) -> ImageRef:
    value = c.get("image", (str, dict))
    if value == PRODUCT_BUNDLE_IMAGE:
        return ImageRef(name=value, product_bundle=True)
    if isinstance(value, str):
        return ImageRef(name=value)
    ic = _Checker(c.file, c.entry, value, prefix="image.")
    kernel = base / ic.get("kernel", str)
    initrd_name = ic.get("initrd", str, None)
    initrd = base / initrd_name if initrd_name else None
    problem = _not_a_file(kernel)
    if problem:
        c.fail("image.kernel", f"kernel {problem}")
    problem = _not_a_file(initrd) if initrd is not None else None
    if problem:
        c.fail("image.initrd", f"initrd {problem}")
    ref = ImageRef(name=ic.get("name", str, kernel.name), kernel=kernel, initrd=initrd)
    ic.done()
    return ref


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot be booted from, or None: a VMM given a directory or /dev/zero as a
    kernel fails in ways that do not name it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as e:
        return f"file cannot be read: {path}: {e.strerror}"
    if stat.S_ISDIR(mode):
        return f"is a directory, not a file: {path}"
    if not stat.S_ISREG(mode):
        kind = "a character device" if stat.S_ISCHR(mode) else \
            "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        return f"is {kind}, not a regular file: {path}"
    if not os.access(path, os.R_OK):
        return f"file cannot be read (permission denied): {path}"
    return None


def _environment(
    file: str, base: Path, name: str, obj: Any, configs: Mapping[str, DeviceConfig]
) -> Environment:
    c = _Checker(file, f"environment '{name}'", obj)
    arch = c.get("arch", str, choices=ARCHES)
    dimensions = c.string_map("dimensions")
    if "device_type" not in dimensions:
        c.fail("dimensions.device_type", "is required (for example \"crosvm\" or \"QEMU\")")
    cpu = dimensions.get("cpu")
    if cpu is not None and cpu != CPU_DIMENSION[arch]:
        c.fail("dimensions.cpu", f"is {cpu!r} but arch {arch} is cpu {CPU_DIMENSION[arch]!r}")
    devices_name = c.get("devices", str)
    if devices_name not in configs:
        c.fail("devices", f"no device config named '{devices_name}' (known: {', '.join(configs)})")
    engine = c.get("engine", str, choices=ENGINES)
    accel = c.get("accel", str, "auto", choices=ACCELS)
    if engine == "crosvm" and accel == "tcg":
        c.fail("accel", "crosvm has no TCG: use kvm or auto")
    boot_timeout = c.get("boot_timeout_s", (int, float), 120)
    if not 0 < boot_timeout <= 86400:
        c.fail("boot_timeout_s", f"must be above 0 and at most 86400 s, got {boot_timeout}")
    profile = c.get("profile", str, "linux", choices=PROFILES)
    image = _image(c, base)
    if image.product_bundle and profile != "zircon":
        c.fail("profile", f"image '{PRODUCT_BUNDLE_IMAGE}' boots a Fuchsia build, whose guest "
                          f"is Zircon: the profile must be zircon, got {json.dumps(profile)}")
    environment = Environment(
        name=name,
        dimensions=dimensions,
        tags=c.strings("tags", []),
        engine=engine,
        arch=arch,
        cpus=c.positive("cpus", 1),
        memory_mib=c.positive("memory_mib", 512),
        accel=accel,
        kernel_args=c.strings("kernel_args", []),
        profile=profile,
        image=image,
        devices=configs[devices_name],
        blocking=c.get("blocking", bool, True),
        panic_policy=c.get("panic_policy", str, "reset", choices=PANIC_POLICIES),
        boot_timeout_s=float(boot_timeout),
        disable_sandbox=c.get("disable_sandbox", bool, True),
        description=c.get("description", str, ""),
        snapshot=c.get("snapshot", bool, True),
    )
    c.done()
    return environment


def load(path: Path | str | None = None) -> EnvironmentSet:
    """Load and validate an environments file; every problem is a ConfigError (exit 2)."""
    file = Path(path) if path is not None else DEFAULT_FILE
    shown = str(file)
    data = jsonfile.load(file, MAX_FILE, "environments file", depth=True)
    top = _Checker(shown, "top level", data)
    configs_obj = top.get("device_configs", dict)
    configs = {n: _device_config(shown, n, o) for n, o in configs_obj.items()}
    envs_obj = top.get("environments", dict)
    if not envs_obj:
        top.fail("environments", "is empty: name at least one environment")
    base = file.resolve().parent
    envs = {n: _environment(shown, base, n, o, configs) for n, o in envs_obj.items()}
    top.done()
    return EnvironmentSet(file=file, environments=envs, device_configs=configs)
