"""STAND-IN Fuchsia builds: Fuchsia's exact build-directory layout, with Linux inside.

No Zircon image can be had on these machines, so the harness's tests build
stand-in build directories that Fuchsia's tools would read the same way
(tests.json, product_bundles.json, a version 2 product_bundle.json per bundle,
every path relative to the build directory or the bundle), and whose images
really boot:

- the bundle's `kernel` image (a real build's Linux boot shim) is the Debian
  kernel of the embedded guest images (`harness images build`): like the shim,
  it boots through the Linux boot protocol on crosvm and QEMU;
- its `zbi` (a real build's ZBI, the shim's initrd) is the embedded image's
  initramfs with a small gzipped cpio appended that replaces /init: Linux
  unpacks concatenated archives, and the later /init wins. That init runs a
  real workload, the kernel's own test modules (as the core suite does),
  reports them in zxtest's format and then, depending on the variant, prints
  Fuchsia's boot-test success string, fails (`1 FAILED TEST`), panics (Zircon's
  panic banner, then a real kernel panic), or hangs.

Everything is named as a stand-in (`standin-...`, `linux-boot-shim-STANDIN.bin`).
The entries are what build/testing/boot_tests/boot_test.gni writes: `os` the
host's, `cpu` the bundle's (the host-$target_cpu variant), `path` a host
script (it records that it ran, which it must never do: the harness is the
serial listener), `isolated`, `is_boot_test`, `product_bundle` the test's own
name, `expects_ssh: false`. Linux, unlike Zircon, needs a console argument on
QEMU; it is given as a Fuchsia builder would give one, through the test
environment's `emulator.kernel_args` (crosvm adds the console itself).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.environments import CPU_DIMENSION
from harness.images.build import ensure_image
from harness.images.cpio import CpioEntry, write_cpio
from harness.images.model import GuestImage
from harness.profiles.zircon import BOOT_TEST_SUCCESS

VARIANTS = ("pass", "fail", "crash", "hang")
IMAGE = "debian-generic"  # carries the kernel's test modules
SHIM = "linux-boot-shim-STANDIN.bin"
ZBI = "standin.zbi"
HOST_SCRIPT_RAN = "HOST-SCRIPT-RAN"
QEMU_CONSOLE = {"x86_64": "console=ttyS0", "arm64": "console=ttyAMA0"}
MODULES = ("test_user_copy", "test_static_key_base", "test_static_keys")
# The hanging stand-in's timeout_secs: short, yet long enough for a loaded 2-core machine to
# boot it under TCG (15-25 s) and show that it hangs after its workload, not before.
HANG_TIMEOUT_S = 45

INIT = r"""#!/bin/busybox sh
# STAND-IN for a Fuchsia boot test's ZBI: Linux runs the kernel's own test modules and says
# how they went the way a Zircon boot test does, on the serial console.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
variant=@VARIANT@
echo "standin-zbi: STAND-IN boot test, variant $variant, kernel $(uname -r) $(uname -m)"
# The entropy mixin is a secret the harness keeps out of every log: show that one came, and
# a digest that tells two boots' apart, never the value.
mixin=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^kernel.entropy-mixin=//p')
digest=$(printf %s "$mixin" | sha256sum | cut -c1-16)
echo "standin-zbi: entropy-mixin of ${#mixin} hex digits, sha256 $digest"

# Milliseconds since boot, with no leading zero: shell arithmetic reads "08" as bad octal.
ms() { read -r up _ </proc/uptime; t="${up%.*}${up#*.}0"; t="${t#"${t%%[1-9]*}"}"; echo "${t:-0}"; }
passed=0
failed=0
failures=""
case_begin() { echo "[ RUN      ] KernelModules.$1"; t0=$(ms); }
case_end() {
    if [ "$2" -eq 0 ]; then
        passed=$((passed + 1)); echo "[       OK ] KernelModules.$1 ($(( $(ms) - t0 )) ms)"
    else
        failed=$((failed + 1)); failures="$failures $1"
        echo "[  FAILED  ] KernelModules.$1 ($(( $(ms) - t0 )) ms)"
    fi
}

echo "[==========] Running @COUNT@ tests from 1 test suite."
echo "[----------] @COUNT@ tests from KernelModules"
for m in @MODULES@; do
    case_begin "$m"
    modprobe "$m" 2>/tmp/err
    rc=$?
    if [ $rc -ne 0 ]; then cat /tmp/err; echo "standin/init: modprobe $m exited $rc: Failure"; fi
    case_end "$m" $rc
done
for m in @MODULES_REVERSED@; do modprobe -r "$m"; done

case "$variant" in
fail)
    # A real failure: the kernel refuses a module whose dependency is not loaded.
    case_begin load_without_dependency
    insmod "/lib/modules/$(uname -r)/kernel/lib/test_static_keys.ko" 2>/tmp/err
    rc=$?
    if [ $rc -ne 0 ]; then cat /tmp/err; echo "standin/init: insmod exited $rc: Failure"; fi
    case_end load_without_dependency $rc
    ;;
crash)
    case_begin panic_in_flight
    # What Zircon prints when its kernel panics, then a real panic of this kernel.
    echo "ZIRCON KERNEL PANIC"
    echo "standin-zbi: panicking the kernel for real"
    echo c >/proc/sysrq-trigger
    ;;
hang)
    echo "standin-zbi: hanging without a verdict"
    while :; do sleep 3600; done
    ;;
esac

total=$((passed + failed))
echo "[----------] $total tests from KernelModules"
echo "[==========] $total tests from 1 test suite ran."
echo "[  PASSED  ] $passed tests."
if [ $failed -ne 0 ]; then
    echo "[  FAILED  ] $failed test, listed below:"
    for f in $failures; do echo "[  FAILED  ] KernelModules.$f"; done
    echo "$failed FAILED TEST"
else
    echo "@SUCCESS@"
fi
# A standalone Zircon boot test shuts down once it has said how it went.
sync
poweroff -f
"""

HOST_SCRIPT = """#!/bin/sh
# The host side of a boot test: on a Fuchsia bot it runs seriallistener. The harness is the
# listener itself and must never run this.
touch "$(dirname "$0")/../{ran}"
exit 1
"""


@dataclasses.dataclass(frozen=True)
class BootTest:
    """One stand-in boot test: a variant for one arch, on the device types it lists."""

    variant: str
    arch: str
    device_types: tuple[str, ...] = ("QEMU", "crosvm")
    timeout_secs: float | None = None
    bootup_timeout_secs: float | None = None

    @property
    def cpu(self) -> str:
        return CPU_DIMENSION[self.arch]

    @property
    def name(self) -> str:
        return f"standin-boot-{self.variant}-{self.cpu}"


def init_script(variant: str) -> bytes:
    if variant not in VARIANTS:
        raise ValueError(f"unknown stand-in variant {variant!r}")
    return (INIT.replace("@VARIANT@", variant)
            .replace("@COUNT@", str(len(MODULES) + (variant in ("fail", "crash"))))
            .replace("@MODULES@", " ".join(MODULES))
            .replace("@MODULES_REVERSED@", " ".join(reversed(MODULES)))
            .replace("@SUCCESS@", BOOT_TEST_SUCCESS)).encode()


def standin_zbi(base_initrd: Path, variant: str) -> bytes:
    """The embedded initramfs, then a gzipped cpio whose /init replaces its init."""
    extra = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=extra, mtime=0) as gz:
        write_cpio([CpioEntry("init", stat.S_IFREG | 0o755, init_script(variant))], gz)
    return base_initrd.read_bytes() + extra.getvalue()


def images(arches: Iterable[str]) -> dict[str, GuestImage]:
    return {arch: ensure_image(IMAGE, arch) for arch in sorted(set(arches))}


def write_build(build_dir: Path, tests: Sequence[BootTest], *,
                extra_bundles: Sequence[dict[str, Any]] = ()) -> Path:
    """Write a stand-in build directory with `tests` and their bundles; returns it."""
    build_dir.mkdir(parents=True, exist_ok=True)
    guests = images(t.arch for t in tests)
    specs: list[dict[str, Any]] = []
    bundles: list[dict[str, Any]] = []
    for test in tests:
        rel = Path("obj/tests/standin") / test.name / "product_bundle"
        bundle_dir = build_dir / rel
        system_a = bundle_dir / "system_a"
        system_a.mkdir(parents=True, exist_ok=True)
        shim = system_a / SHIM
        if shim.is_symlink() or shim.exists():
            shim.unlink()
        shim.symlink_to(guests[test.arch].crosvm_kernel)
        initrd = guests[test.arch].initrd
        assert initrd is not None
        (system_a / ZBI).write_bytes(standin_zbi(initrd, test.variant))
        (bundle_dir / "product_bundle.json").write_text(json.dumps({
            "version": "2",
            "product_name": test.name,
            "product_version": "standin",
            "sdk_version": "standin",
            "partitions": {"hardware_revision": "", "bootstrap_partitions": [],
                           "bootloader_partitions": [], "partitions": [],
                           "unlock_credentials": []},
            "system_a": [
                {"type": "zbi", "name": "zircon-a", "path": f"system_a/{ZBI}", "signed": False},
                {"type": "kernel", "name": "qemu-kernel", "path": f"system_a/{SHIM}"},
            ],
            "system_b": None,
            "system_r": None,
            "repositories": [],
        }, indent=1))
        label = f"//tests/standin:{test.name}"
        bundles.append({"name": test.name, "path": rel.as_posix(),
                        "json": (rel / "product_bundle.json").as_posix(), "cpu": test.cpu,
                        "label": f"{label}.product_bundle(//build/toolchain/fuchsia:{test.cpu})",
                        "transfer_manifest_path": None})
        script = Path("host_x64") / f"{test.name}.sh"
        (build_dir / script).parent.mkdir(exist_ok=True)
        (build_dir / script).write_text(HOST_SCRIPT.format(ran=HOST_SCRIPT_RAN))
        (build_dir / script).chmod(0o755)
        environments = []
        for device_type in test.device_types:
            env: dict[str, Any] = {"dimensions": {"device_type": device_type}}
            if device_type == "QEMU":
                env["emulator"] = {"kernel_args": [QEMU_CONSOLE[test.arch]]}
            environments.append(env)
        entry: dict[str, Any] = {
            "test": {"name": test.name, "label": f"{label}(//build/toolchain:host_x64)",
                     "os": "linux", "cpu": test.cpu, "path": script.as_posix(),
                     "runtime_deps": f"gen/tests/standin/{test.name}.deps.json",
                     "isolated": True},
            "environments": environments,
            "is_boot_test": True,
            "product_bundle": test.name,
            "expects_ssh": False,
        }
        if test.timeout_secs is not None:
            entry["test"]["timeout_secs"] = test.timeout_secs
        if test.bootup_timeout_secs is not None:
            entry["bootup_timeout_secs"] = test.bootup_timeout_secs
        specs.append(entry)
    bundles.extend(extra_bundles)
    (build_dir / "tests.json").write_text(json.dumps(specs, indent=1))
    (build_dir / "product_bundles.json").write_text(json.dumps(bundles, indent=1))
    return build_dir


def host_script_ran(build_dir: Path) -> bool:
    """Whether any test's host script ran (each records it in the build directory)."""
    return (build_dir / HOST_SCRIPT_RAN).exists()


def build_for_tests(tmp: Path) -> Path:
    """The stand-in build the integration tests boot: each engine on each arch, every
    verdict, in five boots (each one costs 15-40 s of TCG on a loaded 2-core machine)."""
    return write_build(tmp / "out" / "default", [
        BootTest("pass", "x86_64", device_types=("QEMU",)),
        BootTest("pass", "arm64", device_types=("crosvm",)),
        BootTest("fail", "x86_64", device_types=("crosvm",)),
        BootTest("crash", "arm64", device_types=("crosvm",)),
        BootTest("hang", "arm64", device_types=("QEMU",), timeout_secs=HANG_TIMEOUT_S),
    ])


