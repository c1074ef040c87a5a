"""A Fuchsia build directory: tests.json, product_bundles.json, product_bundle.json (version 2).

Read exactly as Fuchsia's own tools read them (tools/devshell/contrib/run-boot-test.py,
tools/build's ProductBundle, botanist's GetPbPathByName):

- `DIR/product_bundles.json` is a list of `{"name", "path", "json", "cpu", "label", ...}`.
  `path` (the bundle's directory) and `json` (its product_bundle.json) are relative to the
  build directory, which is where Fuchsia's tools run.
- A bundle's `product_bundle.json` (`"version": "2"`) lists its images in `system_a`:
  `{"type", "name", "path"}`, paths relative to the bundle's directory. `type: "kernel"` is
  what the VMM boots (the Linux boot shim on crosvm, QEMU's `-kernel`), `type: "zbi"` the
  ZBI, given as the initrd. A single `partitions.bootloader_partitions` entry of type
  `efi-shell` makes it a UEFI boot, and `system_a` is then ignored (run-boot-test.py's
  BootTest._set_images_if_built).

Errors are precise and land where they belong. product_bundles.json itself being
unreadable or malformed is every test's problem: a ConfigError, exit 2. A bundle that
cannot be booted (a name the file does not list, a bundle not built yet, one without a
kernel image, a malformed product_bundle.json, one for the other cpu) is the problem of
the tests that name it: `BundleSet.choose` returns it as text, and the runner fails those
tests alone, as INFRA_FAIL, while the rest of the run goes on. Only the bundle named with
`--product-bundle`, which every test without a bundle of its own falls back to, is loaded
up front, so a mistake there stops the run at once (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.environments import CPU_DIMENSION, Environment
from harness.errors import ConfigError
from harness.images.model import GuestImage

TESTS_JSON = "tests.json"
PRODUCT_BUNDLES_JSON = "product_bundles.json"
PRODUCT_BUNDLE_VERSION = "2"
UEFI_PARTITION_TYPE = "efi-shell"


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    """One entry of product_bundles.json; `index` is its position in the file."""

    index: int
    name: str
    path: str
    json: str
    cpu: str
    label: str = ""

    @property
    def where(self) -> str:
        """The entry as errors name it."""
        return f"entry {self.index} ({json.dumps(self.name)})"


@dataclasses.dataclass(frozen=True)
class ProductBundle:
    """A built bundle: what its product_bundle.json says the VMM boots.

    Paths are absolute. `kernel` is the Linux boot shim (or any image the VMM
    boots as its kernel), `zbi` the initrd; `efi_disk` is set for a UEFI bundle.
    """

    name: str
    cpu: str
    label: str
    directory: Path
    manifest: Path
    kernel: Path | None
    zbi: Path | None
    efi_disk: Path | None = None

    @property
    def uefi(self) -> bool:
        return self.efi_disk is not None

    def image(self, arch: str) -> GuestImage:
        """What an engine boots: the shim as the kernel, the ZBI as the initrd.

        The shim is used as is by both engines (no ELF fast path on QEMU, no
        uncompressed variant on crosvm): it is the file the build made for them.
        """
        if self.kernel is None:
            raise ConfigError(str(self.manifest), None, "system_a",
                              'has no image of type "kernel"')
        return GuestImage(name=self.name, arch=arch, kernel=self.kernel, initrd=self.zbi,
                          kernel_uncompressed=self.kernel)


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), None, None, f"cannot read: no such file ({what})") from None
    except OSError as e:
        raise ConfigError(str(path), None, None, f"cannot read: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), None, None, f"not valid JSON: {e.msg} at line {e.lineno}, "
                                                 f"column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), None, None, f"not valid UTF-8 text: {e.reason}") from None


def _string(file: str, entry: str | None, obj: Mapping[str, Any], key: str, *,
            required: bool = True, field: str | None = None) -> str:
    value = obj.get(key)
    field = field or key
    if value is None:
        if required:
            raise ConfigError(file, entry, field, "is required")
        return ""
    if type(value) is not str:
        raise ConfigError(file, entry, field, f"expected a string, got {_show(value)}")
    if required and not value:
        raise ConfigError(file, entry, field, "must not be empty")
    return value


def parse_bundle_entries(data: Any, file: str) -> dict[str, BundleEntry]:
    """product_bundles.json's entries by name; every problem is a ConfigError (exit 2).

    Unknown fields are ignored (the file grows with Fuchsia). A name listed
    twice is an error: run-boot-test would take the last, botanist the first.
    """
    if type(data) is not list:
        raise ConfigError(file, None, None, "expected a JSON list of product bundles, got "
                                            f"{_show(data)}")
    entries: dict[str, BundleEntry] = {}
    for index, obj in enumerate(data):
        where = f"entry {index}"
        if type(obj) is not dict:
            raise ConfigError(file, where, None, f"expected an object, got {_show(obj)}")
        name = _string(file, where, obj, "name")
        where = f"entry {index} ({json.dumps(name)})"
        entry = BundleEntry(
            index=index,
            name=name,
            path=_string(file, where, obj, "path"),
            json=_string(file, where, obj, "json"),
            cpu=_string(file, where, obj, "cpu"),
            label=_string(file, where, obj, "label", required=False),
        )
        if name in entries:
            raise ConfigError(file, where, "name",
                              f"{json.dumps(name)} is also {entries[name].where}")
        entries[name] = entry
    return entries


def parse_product_bundle(data: Any, manifest: Path, entry: BundleEntry,
                         directory: Path) -> ProductBundle:
    """A product_bundle.json (version 2) into the images to boot; ConfigError on any problem."""
    file = str(manifest)
    if type(data) is not dict:
        raise ConfigError(file, None, None, f"expected a JSON object, got {_show(data)}")
    version = data.get("version")
    if version != PRODUCT_BUNDLE_VERSION:
        raise ConfigError(file, None, "version",
                          f'expected "{PRODUCT_BUNDLE_VERSION}" (a version 2 product bundle), '
                          f"got {_show(version)}")
    partitions = data.get("partitions")
    if partitions is not None and type(partitions) is not dict:
        raise ConfigError(file, None, "partitions", f"expected an object, got {_show(partitions)}")
    loaders = (partitions or {}).get("bootloader_partitions")
    if loaders is not None and type(loaders) is not list:
        raise ConfigError(file, None, "partitions.bootloader_partitions",
                          f"expected a list, got {_show(loaders)}")

    def bundle(kernel: Path | None, zbi: Path | None, efi_disk: Path | None = None
               ) -> ProductBundle:
        return ProductBundle(name=entry.name, cpu=entry.cpu, label=entry.label,
                             directory=directory, manifest=manifest, kernel=kernel, zbi=zbi,
                             efi_disk=efi_disk)

    if loaders and len(loaders) == 1 and type(loaders[0]) is dict \
            and loaders[0].get("type") == UEFI_PARTITION_TYPE:
        # A UEFI disk: system_a is not what boots (run-boot-test.py's rule).
        field = "partitions.bootloader_partitions[0].image"
        image = _string(file, None, loaders[0], "image", field=field)
        return bundle(None, None, directory / image)
    system_a = data.get("system_a")
    if system_a is None:
        system_a = []
    elif type(system_a) is not list:
        raise ConfigError(file, None, "system_a", f"expected a list of images, got "
                                                  f"{_show(system_a)}")
    found: dict[str, Path] = {}
    for i, image in enumerate(system_a):
        if type(image) is not dict:
            raise ConfigError(file, None, f"system_a[{i}]", f"expected an object, got "
                                                            f"{_show(image)}")
        kind = _string(file, None, image, "type", field=f"system_a[{i}].type")
        if kind not in ("kernel", "zbi") or kind in found:
            continue  # other images (blk, fvm, vbmeta, ...) are not booted by the VMM
        rel = _string(file, None, image, "path", field=f"system_a[{i}].path")
        path = directory / rel
        if not path.is_file():
            raise ConfigError(file, None, f"system_a[{i}].path",
                              f"{path} does not exist: the bundle is not completely built"
                              + (f" (fx build {entry.label})" if entry.label else ""))
        found[kind] = path
    if "kernel" not in found:
        raise ConfigError(file, None, "system_a",
                          'has no image of type "kernel": nothing for the VMM to boot (crosvm '
                          "and QEMU boot the bundle's Linux boot shim, with its ZBI as the "
                          "initrd)")
    return bundle(found["kernel"], found.get("zbi"))


class BundleSet:
    """The product bundles of a build, and the one tests without a bundle of their own boot.

    Each bundle's product_bundle.json is read once, on first use; a bundle
    that cannot be booted keeps its error, which `choose` hands out as text.
    """

    def __init__(self, file: Path, entries: Mapping[str, BundleEntry], *,
                 base: Path | None = None, default: str = "") -> None:
        self.file = Path(file)
        self.base = Path(base) if base is not None else self.file.resolve().parent
        self.entries = dict(entries)
        self.default = default
        self._loaded: dict[str, ProductBundle | ConfigError] = {}
        if default:
            # Every test without a bundle of its own needs this one: a mistake is exit 2.
            self.load(default, field="--product-bundle")

    @classmethod
    def read(cls, file: Path | str, *, default: str = "") -> BundleSet:
        """Read product_bundles.json; paths in it are relative to its directory (the build dir)."""
        path = Path(file)
        entries = parse_bundle_entries(_read_json(path, "a Fuchsia build writes it at the "
                                                        "root of its build directory"),
                                       str(path))
        return cls(path, entries, default=default)

    def _resolve(self, rel: str) -> Path:
        return self.base / rel

    def load(self, name: str, *, field: str | None = None) -> ProductBundle:
        """The bundle called `name`; a ConfigError naming the file and field if it cannot boot.

        `field` set: the name came from the command line, which then names the error.
        """
        cached = self._loaded.get(name)
        if isinstance(cached, ProductBundle):
            return cached
        if cached is not None:
            raise cached
        try:
            bundle = self._load(name, field)
        except ConfigError as e:
            self._loaded[name] = e
            raise
        self._loaded[name] = bundle
        return bundle

    def _load(self, name: str, field: str | None) -> ProductBundle:
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none"
            if field is not None:
                raise ConfigError("command line", None, field,
                                  f"{json.dumps(name)} is not a product bundle of {self.file} "
                                  f"(it lists: {known})")
            raise ConfigError(str(self.file), None, None,
                              f"lists no product bundle named {json.dumps(name)} (it lists: "
                              f"{known})")
        manifest = self._resolve(entry.json)
        if not manifest.is_file():
            raise ConfigError(str(self.file), entry.where, "json",
                              f"{manifest} does not exist: the bundle is not built"
                              + (f" (fx build {entry.label})" if entry.label else ""))
        data = _read_json(manifest, "the bundle's product_bundle.json")
        return parse_product_bundle(data, manifest, entry, self._resolve(entry.path))

    def choose(self, spec_bundle: str, env: Environment
               ) -> tuple[str, ProductBundle | None, str | None]:
        """(name, bundle, problem) for a test naming `spec_bundle` ("" for none) on `env`.

        The name is "" when neither the test nor --product-bundle names one.
        A problem is the INFRA_FAIL message of every test that needs this bundle.
        """
        name = spec_bundle or self.default
        if not name:
            return "", None, None
        try:
            bundle = self.load(name)
        except ConfigError as e:
            return name, None, str(e)
        want = CPU_DIMENSION[env.arch]
        if bundle.cpu != want:
            entry = self.entries[name]
            return name, None, str(ConfigError(
                str(self.file), entry.where, "cpu",
                f"is {json.dumps(bundle.cpu)}, but {env.name} boots {want} guests"))
        return name, bundle, None


def boot_skip(bundle: ProductBundle, env: Environment) -> str | None:
    """Why `env` cannot boot `bundle` at all (a planned SKIP), or None."""
    if bundle.uefi:
        where = "partitions.bootloader_partitions[0] is an efi-shell disk"
        if env.engine == "crosvm":
            # run-boot-test.py: "cannot use --crosvm with no-kernel test".
            return (f"product bundle {bundle.name} boots through UEFI ({where}); crosvm boots "
                    "a kernel (the Linux boot shim), not UEFI firmware")
        return (f"product bundle {bundle.name} boots through UEFI ({where}); the harness "
                f"boots no UEFI firmware on {env.engine}")
    return None


def describe(bundle: ProductBundle, base: Path) -> dict[str, str]:
    """The bundle's images as reports show them (its name is the run's), relative to the
    build directory."""

    def rel(path: Path | None) -> str:
        if path is None:
            return ""
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            return str(path)

    out = {"product_bundle_cpu": bundle.cpu}
    if bundle.kernel is not None:
        out["shim"] = rel(bundle.kernel)
    if bundle.zbi is not None:
        out["zbi"] = rel(bundle.zbi)
    if bundle.efi_disk is not None:
        out["efi_disk"] = rel(bundle.efi_disk)
    return out
