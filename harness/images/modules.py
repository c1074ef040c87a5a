"""Which kernel modules an image carries: the wanted list, modules.dep, and depmod.

The wanted modules are the drivers of the devices the environments configure; their
dependency closure comes from the kernel's own modules.dep (written by depmod), so
nothing is guessed about which module needs which.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from harness.environments import ARCHES
from harness.images.errors import ImageError
from harness.images.tools import run_step

_DEPMOD = "/usr/sbin/depmod"


@dataclasses.dataclass(frozen=True)
class ModuleWant:
    """One kernel module the image should carry, and where its absence is fatal.

    Required only for the (flavour, arch) pairs whose devices need it: the cloud kernels
    leave out GPU, USB, gpio-keys and the test modules on purpose, and Debian's arm64
    config has no pvpanic at all; those are recorded as skipped, not failures.
    """

    name: str
    purpose: str
    arches: frozenset[str] = frozenset(ARCHES)
    required_flavours: frozenset[str] = frozenset()
    required_arches: frozenset[str] = frozenset(ARCHES)
    load_at_boot: bool = True

    def wanted(self, arch: str) -> bool:
        return arch in self.arches

    def required(self, flavour: str, arch: str) -> bool:
        return flavour in self.required_flavours and arch in self.required_arches


_BOTH = frozenset({"generic", "cloud"})
_GENERIC = frozenset({"generic"})
_X86 = frozenset({"x86_64"})
_ARM = frozenset({"arm64"})

# The order is the load order at boot: bus drivers first so the device drivers that follow
# bind at once, then evdev and the buttons, which acpid needs before it starts.
MODULE_WANTS: tuple[ModuleWant, ...] = (
    ModuleWant(
        "virtio_pci", "virtio devices on PCI (crosvm, QEMU q35/virt)", required_flavours=_BOTH
    ),
    ModuleWant("virtio_mmio", "virtio devices on MMIO (QEMU microvm)", required_flavours=_BOTH),
    ModuleWant("virtio_blk", "block devices", required_flavours=_BOTH),
    ModuleWant("virtio_net", "network", required_flavours=_BOTH),
    ModuleWant("virtio_rng", "entropy device", required_flavours=_BOTH),
    ModuleWant("virtio_balloon", "memory balloon", required_flavours=_BOTH),
    ModuleWant("virtio_console", "virtio serial consoles and ports", required_flavours=_BOTH),
    ModuleWant("vmw_vsock_virtio_transport", "vsock", required_flavours=_BOTH),
    ModuleWant("virtio_gpu", "GPU (and its DRM helpers)", required_flavours=_GENERIC),
    ModuleWant("virtio_input", "virtio keyboard/mouse/tablet"),
    ModuleWant("xhci_pci", "xHCI USB controller", required_flavours=_GENERIC),
    ModuleWant("xhci_hcd", "xHCI USB core", required_flavours=_GENERIC),
    ModuleWant("rtc_cmos", "CMOS RTC", arches=_X86, required_flavours=_BOTH),
    ModuleWant("rtc_pl031", "PL031 RTC", arches=_ARM, required_flavours=_BOTH),
    ModuleWant("pvpanic", "pvpanic core", required_flavours=_BOTH, required_arches=_X86),
    ModuleWant("pvpanic_pci", "pvpanic PCI device", required_flavours=_BOTH, required_arches=_X86),
    ModuleWant(
        "pvpanic_mmio", "pvpanic ISA/MMIO device", required_flavours=_BOTH, required_arches=_X86
    ),
    ModuleWant("af_packet", "packet sockets (udhcpc)"),
    ModuleWant("evdev", "input events for acpid", required_flavours=_BOTH),
    ModuleWant("button", "ACPI power button", arches=_X86, required_flavours=_BOTH),
    ModuleWant(
        "gpio_keys",
        "power button of QEMU virt (KEY_POWER)",
        arches=_ARM,
        required_flavours=_GENERIC,
    ),
    ModuleWant("test_bpf", "kernel self-test", load_at_boot=False),
    ModuleWant("test_user_copy", "kernel self-test", load_at_boot=False),
    ModuleWant("test_static_key_base", "kernel self-test", load_at_boot=False),
    ModuleWant("test_static_keys", "kernel self-test", load_at_boot=False),
    ModuleWant("test_printf", "kernel self-test", load_at_boot=False),
    ModuleWant("test_bitmap", "kernel self-test", load_at_boot=False),
    ModuleWant("test_hash", "kernel self-test", load_at_boot=False),
    ModuleWant("test_string", "kernel self-test", load_at_boot=False),
)


def module_name(path: str) -> str:
    """The name modprobe and lsmod use: file name without suffix, '-' spelled '_'."""
    base = PurePosixPath(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """modules.dep as {module path: paths of the modules it needs}."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"modules.dep: line without ':': {line!r}")
        deps[path.strip()] = tuple(rest.split())
    return deps


def parse_modules_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line) for line in text.split() if line)


@dataclasses.dataclass(frozen=True)
class ModuleSelection:
    """What of MODULE_WANTS one kernel provides, and the files to copy for it."""

    files: tuple[str, ...]
    load: tuple[str, ...]
    on_demand: tuple[str, ...]
    builtin: tuple[str, ...]
    skipped: tuple[ModuleWant, ...]
    missing_required: tuple[ModuleWant, ...]


def resolve_modules(
    wants: Sequence[ModuleWant],
    flavour: str,
    arch: str,
    deps: Mapping[str, Sequence[str]],
    builtin: frozenset[str],
) -> ModuleSelection:
    """Select the wanted modules and the dependency closure of the ones that are modular.

    Built-in ones need no file and no modprobe; absent ones are skipped or, when the
    image's devices need them, reported as missing so the caller can fail with all names.
    """
    by_name = {module_name(path): path for path in deps}
    files: set[str] = set()
    load: list[str] = []
    on_demand: list[str] = []
    builtin_hits: list[str] = []
    skipped: list[ModuleWant] = []
    missing: list[ModuleWant] = []
    for want in wants:
        if not want.wanted(arch):
            continue
        name = module_name(want.name)
        if name in builtin:
            builtin_hits.append(name)
            continue
        path = by_name.get(name)
        if path is None:
            (missing if want.required(flavour, arch) else skipped).append(want)
            continue
        files.update(_closure(path, deps))
        (load if want.load_at_boot else on_demand).append(name)
    return ModuleSelection(
        files=tuple(sorted(files)),
        load=tuple(load),
        on_demand=tuple(on_demand),
        builtin=tuple(builtin_hits),
        skipped=tuple(skipped),
        missing_required=tuple(missing),
    )


def _closure(start: str, deps: Mapping[str, Sequence[str]]) -> set[str]:
    # modules.dep already lists indirect dependencies, but following them costs nothing
    # and keeps a hand-written or older-style modules.dep correct too.
    seen: set[str] = set()
    stack = [start]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        if path not in deps:
            raise ImageError(f"modules.dep names {path}, which has no entry of its own")
        seen.add(path)
        stack.extend(deps[path])
    return seen


def depmod(root: Path, version: str) -> None:
    try:
        run_step([_DEPMOD, "-b", str(root), version], timeout=300.0)
    except FileNotFoundError:
        raise ImageError(f"{_DEPMOD} not found: install Debian's kmod package") from None
    except subprocess.CalledProcessError as err:
        raise ImageError(f"depmod -b {root} {version} failed: {err.stderr.strip()}") from None
