"""The crosvm engine's pure parts: argv, exit meanings, binary lookup, availability reasons.

The argv is checked two ways: against crosvm's option rules written down here
from crosvm's src/crosvm/cmdline.rs (global flags first, `--flag value`, no
deprecated flag, kernel last), and by feeding it to the crosvm double's own
argh-style parser, which validates every keyvalue field the way crosvm does.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from crosvm_double import cmdline as double
from crosvm_double.keyvalues import KeyValueError
from crosvm_double.triple_fault import triple_fault_kernel

from harness import environments
from harness.accel import Accel, Verdict
from harness.cache import cache_dir
from harness.engines import crosvm as crosvm_mod
from harness.engines.base import (
    BinaryLookup,
    EnvironmentUnavailable,
    RunPaths,
    VmmSetup,
    kvm_access_problem,
)
from harness.engines.crosvm import (
    DEPRECATED_RUN_OPTIONS,
    NO_BINARY,
    RUN_OPTIONS,
    CrosvmEngine,
    device_unavailable,
    find_binary,
    split_options,
)
from harness.environments import DeviceConfig, Environment, ImageRef
from harness.errors import HarnessError
from harness.exits import ExitKind
from harness.images.model import GuestImage
from harness.report.junit import _suite_properties
from harness.results import RunResult, TestResult

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = Path(__file__).resolve().parent / "crosvm_double" / "crosvm"

# crosvm's deprecated `run` flags (src/crosvm/cmdline.rs at f1e797a): the fields documented
# "(DEPRECATED)" and those whose use logs "... is deprecated". Still accepted, with a warning.
SPEC_DEPRECATED = {
    "--cid", "--cpu-cluster", "--disk", "--gpu-display", "--host-ip", "--kvm-device", "--mac",
    "--mte", "--net-vq-pairs", "--netmask", "--oem-strings", "--pmem-device", "--root",
    "--rw-pmem-device", "--rwdisk", "--rwroot", "--split-irqchip", "--syslog-tag", "--tap-fd",
    "--tap-name", "--vfio-platform", "--vhost-net", "--vhost-vsock-device", "--vhost-vsock-fd",
    # warned about when used, without the doc marker
    "--single-touch", "--multi-touch", "--trackpad", "--mouse", "--keyboard", "--switches",
    "--rotary", "--evdev", "--vhost-net-device", "--pci-start",
}
SPEC_GLOBAL_FLAGS = {"--extended-status", "--log-level", "--syslog-tag", "--no-syslog"}

FULL = {
    "serial": {"count": 2}, "rtc": {}, "virtio-blk": {"size_mib": 64},
    "virtio-net": {"tap": "crosvm_tap"}, "virtio-rng": {}, "virtio-balloon": {},
    "virtio-gpu": {}, "virtio-vsock": {"cid": 7}, "virtio-console": {}, "pvpanic": {},
    "xhci": {},
}
MINIMAL = {"serial": {"count": 1}, "rtc": {}, "pvpanic": {}}


def make_env(arch: str = "x86_64", devices: dict[str, dict[str, Any]] | None = None, *,
             profile: str = "linux", kernel_args: tuple[str, ...] = (), name: str = "crosvm-env",
             disable_sandbox: bool = True, cpus: int = 2, memory_mib: int = 768) -> Environment:
    return Environment(
        name=name,
        dimensions={"device_type": "crosvm", "cpu": "x64" if arch == "x86_64" else "arm64"},
        tags=(),
        engine="crosvm",
        arch=arch,
        cpus=cpus,
        memory_mib=memory_mib,
        accel="auto",
        kernel_args=kernel_args,
        profile=profile,
        image=ImageRef(name="debian-generic"),
        devices=DeviceConfig(name="cfg", devices=dict(FULL if devices is None else devices)),
        blocking=True,
        disable_sandbox=disable_sandbox,
    )


def write_kernel(path: Path, arch: str, *, gzipped: bool = False) -> Path:
    """A file with the header crosvm (and the double) identify kernels by."""
    head = bytearray(0x400)
    if arch == "x86_64":
        head[0x202:0x206] = b"HdrS"
        head[0x206:0x208] = struct.pack("<H", 0x020F)
    else:
        head[0x38:0x3C] = b"ARM\x64"
    data = gzip.compress(bytes(head)) if gzipped else bytes(head)
    path.write_bytes(data)
    return path


def make_image(tmp_path: Path, arch: str) -> GuestImage:
    initrd = tmp_path / "initrd.cpio.gz"
    initrd.write_bytes(gzip.compress(b""))
    if arch == "x86_64":
        kernel = write_kernel(tmp_path / "bzImage", arch)
        return GuestImage("debian-generic", arch, kernel, initrd, kernel_uncompressed=kernel)
    packed = write_kernel(tmp_path / "Image.gz", arch, gzipped=True)
    raw = write_kernel(tmp_path / "Image", arch)
    return GuestImage("debian-generic", arch, packed, initrd, kernel_uncompressed=raw)


def paths_for(tmp_path: Path, disks: int = 0) -> RunPaths:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    disk_paths = []
    for i in range(disks):
        disk = work / f"disk{i}.img"
        disk.write_bytes(b"\0" * 4096)
        disk_paths.append(disk)
    return RunPaths(workdir=work, disks=tuple(disk_paths))


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


ENGINE = CrosvmEngine(binary=str(DOUBLE))
SETUP = VmmSetup(str(DOUBLE), "kvm")


def command(env: Environment, image: GuestImage, paths: RunPaths) -> list[str]:
    """The engine's argv with the setup a run resolves for the double."""
    return ENGINE.command(env, image, paths, SETUP)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("devices", [FULL, MINIMAL], ids=["full", "minimal"])
def test_argv_follows_crosvm_rules(tmp_path: Path, arch: str, devices: dict[str, Any]) -> None:
    image = make_image(tmp_path, arch)
    paths = paths_for(tmp_path, disks=2 if "virtio-blk" in devices else 0)
    argv = command(make_env(arch, devices), image, paths)

    assert argv[0] == str(DOUBLE)
    run = argv.index("run")
    assert argv[1:run] == ["--extended-status", "--log-level", "info", "--no-syslog"]
    global_opts, run_opts = split_options(argv)
    assert set(global_opts) <= SPEC_GLOBAL_FLAGS
    assert set(run_opts) <= RUN_OPTIONS
    assert not set(run_opts) & SPEC_DEPRECATED
    # argh's form: `--flag value`, two argv items, never `--flag=value`.
    assert not [a for a in argv if a.startswith("--") and "=" in a]
    # The kernel is the one positional, last; on arm64 the uncompressed Image.
    assert argv[-1] == str(image.crosvm_kernel)
    if arch == "arm64":
        assert argv[-1] != str(image.kernel)
    assert option_values(argv, "--initrd") == [str(image.initrd)]
    assert option_values(argv, "--socket") == [str(paths.control_socket)]
    assert option_values(argv, "--cpus") == ["num-cores=2"]
    assert option_values(argv, "--mem") == ["size=768"]

    # The double parses it exactly as crosvm's argh would, keyvalue fields included.
    g, rest = double.parse_globals(double.prepare_args(argv[1:]))
    assert g.extended_status and g.no_syslog and rest[0] == "run"
    cfg = double.parse_run(rest[1:])
    assert cfg.kernel == str(image.crosvm_kernel)
    assert set(run_opts) <= set(double.RUN_OPTIONS)


def test_engine_and_double_agree_with_the_spec_on_deprecated_flags() -> None:
    assert set(DEPRECATED_RUN_OPTIONS) == SPEC_DEPRECATED
    assert set(double.DEPRECATED_RUN_OPTIONS) == SPEC_DEPRECATED
    assert not RUN_OPTIONS & SPEC_DEPRECATED


def test_console_serial_reads_stdin(tmp_path: Path) -> None:
    argv = command(make_env(), make_image(tmp_path, "x86_64"), paths_for(tmp_path))
    consoles = []
    for value in option_values(argv, "--serial"):
        params = double.parse_serial(value)
        if params.get("console"):
            consoles.append(params)
    assert len(consoles) == 1
    console = consoles[0]
    assert console["type"] == "stdout" and console["hardware"] == "serial"
    assert console["num"] == 1 and console["stdin"] is True
    assert console.get("earlycon") is True


def test_devices_map_to_crosvm_options(tmp_path: Path) -> None:
    image = make_image(tmp_path, "x86_64")
    full = command(make_env(devices=FULL), image, paths_for(tmp_path, disks=2))
    assert option_values(full, "--block") == [
        f"path={tmp_path / 'work' / 'disk0.img'}", f"path={tmp_path / 'work' / 'disk1.img'}"]
    assert option_values(full, "--net") == ["tap-name=crosvm_tap"]
    assert option_values(full, "--gpu") == ["backend=2d"]
    assert option_values(full, "--vsock") == ["cid=7"]
    assert "type=sink,hardware=virtio-console,num=1" in option_values(full, "--serial")
    assert not {"--no-balloon", "--no-rng", "--no-usb"} & set(full)
    assert "--disable-sandbox" in full

    minimal = command(make_env(devices=MINIMAL, disable_sandbox=False), image,
                             paths_for(tmp_path))
    assert {"--no-balloon", "--no-rng", "--no-usb"} <= set(minimal)
    assert not {"--net", "--gpu", "--vsock", "--block", "--disable-sandbox"} & set(minimal)

    # virtio-net without a TAP: nothing crosvm could run; the tests that need it are skipped.
    no_tap = command(make_env(devices={"virtio-net": {}}), image, paths_for(tmp_path))
    assert "--net" not in no_tap


@pytest.mark.parametrize("name", ['a,b=c"d\\e[f]', "it's", 'say "hi"', "plain=ok \\ back"])
def test_keyvalue_values_are_quoted_as_serde_keyvalue_needs(tmp_path: Path, name: str) -> None:
    """Every disk path comes back whole through serde_keyvalue's grammar (the double's port
    of serde_keyvalue/src/key_values.rs), apostrophes and double quotes included."""
    odd = tmp_path / name
    odd.mkdir()
    disk = odd / "disk.img"
    disk.write_bytes(b"\0" * 512)
    paths = RunPaths(workdir=tmp_path / "work", disks=(disk,))
    (tmp_path / "work").mkdir()
    argv = command(make_env(devices=MINIMAL), make_image(tmp_path, "x86_64"), paths)
    [value] = option_values(argv, "--block")
    assert double.keyvalues(value, double.BLOCK) == {"path": str(disk)}


@pytest.mark.parametrize(("value", "position"), [
    ("path=/tmp/it's/disk.img", 12),
    ('path=/tmp/say "hi"/disk.img', 14),
])
def test_serde_keyvalue_refuses_a_quote_in_an_unquoted_value(value: str, position: int) -> None:
    """What crosvm does with an unquoted `'` or `"`: a parse error (exit 35), at the quote."""
    with pytest.raises(KeyValueError) as e:
        double.keyvalues(value, double.BLOCK)
    assert str(e.value) == (f"\" and ' can only be used in quoted strings at position "
                            f"{position}")


def test_params_carry_profile_then_environment_args(tmp_path: Path) -> None:
    image = make_image(tmp_path, "x86_64")
    linux = command(make_env(kernel_args=("quiet", "harness.loglevel=7")), image,
                           paths_for(tmp_path))
    [params] = option_values(linux, "--params")
    words = params.split(" ")
    assert words[-2:] == ["quiet", "harness.loglevel=7"]
    # crosvm adds console=ttyS0 itself for the `console` serial: a second one would double it.
    assert not [w for w in words if w.startswith("console=")]

    zircon = command(make_env(profile="zircon", kernel_args=("kernel.foo=1",),
                                     name="fuchsia-crosvm"), image, paths_for(tmp_path))
    [params] = option_values(zircon, "--params")
    words = params.split(" ")
    # botanist's order (tools/botanist/targets/emulator.go): the node name comes first.
    assert words[:2] == ["zircon.nodename=fuchsia-5254-1234-1234", "kernel.halt-on-panic=true"]
    assert "kernel.serial=legacy" in words
    assert words[-1] == "kernel.foo=1"
    # A ZBI is crosvm's initrd.
    assert option_values(zircon, "--initrd") == [str(image.initrd)]


def test_command_is_pure(tmp_path: Path) -> None:
    env, image, paths = make_env(), make_image(tmp_path, "x86_64"), paths_for(tmp_path)
    before = sorted(os.listdir(paths.workdir))
    assert command(env, image, paths) == command(env, image, paths)
    assert sorted(os.listdir(paths.workdir)) == before


def test_gzip_arm64_image_is_refused(tmp_path: Path) -> None:
    packed = write_kernel(tmp_path / "Image.gz", "arm64", gzipped=True)
    image = GuestImage("debian-generic", "arm64", packed, None)  # no uncompressed Image
    with pytest.raises(HarnessError, match=r"gzip-compressed.*uncompressed Image"):
        ENGINE.check_image(make_env("arm64"), image)


@pytest.mark.parametrize(("rc", "kind", "words"), [
    (0, ExitKind.STOP, "triple-fault"),
    (32, ExitKind.RESET, "launches it again"),
    (33, ExitKind.CRASH, "vCPU"),
    (34, ExitKind.PANIC, "next reset or power-off"),
    (35, ExitKind.INVALID_ARGS, "could not parse its command line"),
    (36, ExitKind.WATCHDOG, "stall detector"),
    (1, ExitKind.ERROR, "after parsing its command line"),
    (-15, ExitKind.KILLED, "SIGTERM"),
    (-9, ExitKind.KILLED, "SIGKILL"),
    (-6, ExitKind.CRASH, "internal panic"),
    (-11, ExitKind.CRASH, "a fault in crosvm itself"),
    (7, ExitKind.ERROR, "does not define"),
])
def test_exit_classification(rc: int, kind: ExitKind, words: str) -> None:
    info = ENGINE.classify_exit(rc)
    assert info.kind is kind
    assert info.returncode == rc
    assert words in info.explanation
    assert "\n" not in info.explanation
    assert info.infra is (kind in (ExitKind.INVALID_ARGS, ExitKind.ERROR, ExitKind.KILLED,
                                   ExitKind.CRASH))


def test_configuration_errors_are_1_and_only_argh_failures_are_35() -> None:
    """src/main.rs: 35 is argh's parse failure alone; what crosvm refuses after parsing
    (cmdline.rs TryFrom, validate_config) is an error, status 1. The explanations say so."""
    assert "two `stdin` serials" in ENGINE.classify_exit(1).explanation
    assert "two root disks" in ENGINE.classify_exit(1).explanation
    assert "stdin" not in ENGINE.classify_exit(35).explanation
    assert "argh" in ENGINE.classify_exit(35).explanation


def test_signal_deaths_read_crosvms_own_words() -> None:
    """A SIGABRT is crosvm's panic (with its message); a SIGKILL its cleanup's when the log
    says so (the run loop's last event keeps its meaning: a reset still relaunches); any
    other SIGKILL came from outside."""
    log = (b"[t INFO  crosvm] vcpu requested reset\n"
           b"[t WARN  crosvm] not all child processes have exited; sending SIGKILL\n")
    info = crosvm_mod.classify(-9, log)
    assert info.kind is ExitKind.RESET and "its own process group" in info.explanation
    panicked = b"[t INFO  crosvm] Guest reported panic [Code: Guest panicked]\n" + log
    assert crosvm_mod.classify(-9, panicked).kind is ExitKind.PANIC
    stopped = b"[t WARN  crosvm] not all child processes have exited; sending SIGKILL\n"
    assert crosvm_mod.classify(-9, stopped).kind is ExitKind.ERROR
    assert crosvm_mod.classify(-9, b"[t INFO  crosvm] vcpu requested reset\n").kind is \
        ExitKind.KILLED
    abort = crosvm_mod.classify(-6, b"[t ERROR crosvm] thread 'main' panicked at src/a.rs:1:2:\n"
                                    b"[t ERROR crosvm] index out of bounds\n")
    assert abort.kind is ExitKind.CRASH
    assert "'panicked at src/a.rs:1:2: index out of bounds'" in abort.explanation


def test_readme_exit_table_agrees_with_the_engine() -> None:
    """The README's crosvm exit-status table, the engine's meanings and the double's codes."""
    from crosvm_double import base as double_base

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## crosvm"):]
    rows = re.findall(r"^\| (-?\d+|< 0) \| ([a-z /-]+?) \| (.+?) \|$", section, re.MULTILINE)
    table = {code: kind for code, kind, _ in rows}
    engine = {str(code): kind.value for code, (kind, _) in crosvm_mod._EXITS.items()}
    assert {k: v for k, v in table.items() if k != "< 0"} == engine
    signals = {crosvm_mod.classify(-sig).kind.value for sig in (6, 9, 11, 15)}
    assert set(table["< 0"].split(" / ")) == signals
    assert {double_base.EXIT_STOP, double_base.EXIT_ERROR, double_base.EXIT_RESET,
            double_base.EXIT_CRASH, double_base.EXIT_PANIC, double_base.EXIT_INVALID_ARGS,
            double_base.EXIT_WATCHDOG} == set(crosvm_mod._EXITS)


# -- binary lookup and availability ------------------------------------------------------------


async def unavailable(engine: CrosvmEngine, env: Environment,
                      cache: Path | None = None) -> str | None:
    """Why `env` cannot run with `engine` here, as a run resolves it (None: it can)."""
    try:
        await Accel(cache).resolve(engine, env)
    except EnvironmentUnavailable as e:
        return str(e)
    return None


async def test_no_binary_is_a_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_CROSVM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no crosvm on PATH
    engine = CrosvmEngine()
    assert await unavailable(engine, make_env()) == NO_BINARY
    assert engine.locate("x86_64").shown == "crosvm"  # argv[0] still names what is missing


async def test_harness_crosvm_pointing_nowhere(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    missing = tmp_path / "no-such-crosvm"
    monkeypatch.setenv("HARNESS_CROSVM", str(missing))
    reason = await unavailable(CrosvmEngine(), make_env())
    assert reason == f"HARNESS_CROSVM={missing}: no such file"

    not_exec = tmp_path / "crosvm"
    not_exec.write_text("#!/bin/sh\n")
    not_exec.chmod(0o644)
    monkeypatch.setenv("HARNESS_CROSVM", str(not_exec))
    assert await unavailable(CrosvmEngine(), make_env()) == (
        f"HARNESS_CROSVM={not_exec}: not an executable file")


def test_binary_lookup_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_path = tmp_path / "bin" / "crosvm"
    on_path.parent.mkdir()
    shutil.copy(DOUBLE, on_path)
    on_path.chmod(0o755)
    environ = {"PATH": str(on_path.parent)}
    assert find_binary(environ=environ).source == "PATH"
    assert find_binary(environ=environ).path == str(on_path)
    environ["HARNESS_CROSVM"] = str(DOUBLE)
    assert find_binary(environ=environ) == BinaryLookup("crosvm", str(DOUBLE), "HARNESS_CROSVM")
    assert find_binary(str(on_path), environ=environ).source == "argument"
    monkeypatch.setenv("HARNESS_CROSVM", str(DOUBLE))
    assert CrosvmEngine().locate("arm64").path == str(DOUBLE)


def test_kvm_verdict_cache_is_keyed_by_binary(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    binary = tmp_path / "crosvm"
    shutil.copy(DOUBLE, binary)
    binary.chmod(0o755)
    env = make_env()
    engine = CrosvmEngine(binary=str(binary))
    assert Accel(cache).cached(engine, env) is None
    Accel(cache).store(engine, env, Verdict(False, "probe boot did not reach the shell in 45 s"))
    # Another run reads it from disk.
    assert Accel(cache).cached(engine, env) == Verdict(
        False, "probe boot did not reach the shell in 45 s")
    assert Accel(cache).cached(engine, make_env("arm64")) is None
    # A replaced binary (other size and mtime) is probed again.
    binary.write_bytes(binary.read_bytes() + b"\n# rebuilt\n")
    os.utime(binary, ns=(1, 1))
    assert Accel(cache).cached(engine, env) is None


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
async def test_unavailable_reports_the_cached_probe_verdict(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    engine = CrosvmEngine(binary=str(DOUBLE))
    Accel(cache).store(engine, make_env(),
                       Verdict(False, "probe boot under KVM failed: emulation failure"))
    assert await unavailable(engine, make_env(), cache) == (
        "crosvm cannot boot a guest here: probe boot under KVM failed: emulation failure")
    Accel(cache).store(engine, make_env(),
                       Verdict(True, "probe boot under KVM reached the shell in 1.0 s"))
    assert await unavailable(engine, make_env(), cache) is None


def test_device_unavailable_reasons(tmp_path: Path) -> None:
    no_net = make_env(devices=MINIMAL)
    assert "has no virtio-net" in (device_unavailable(no_net, "virtio-net") or "")
    no_tap = make_env(devices={"virtio-net": {}})
    assert "needs a TAP device" in (device_unavailable(no_tap, "virtio-net") or "")
    assert "devices.virtio-net.tap" in (device_unavailable(no_tap, "virtio-net") or "")
    # A name the kernel refuses can never be opened, whoever runs this.
    bad_tap = make_env(devices={"virtio-net": {"tap": "bad/tap"}})
    reason = device_unavailable(bad_tap, "virtio-net") or ""
    assert "bad/tap" in reason or "/dev/net/tun" in reason
    assert device_unavailable(make_env(), "virtio-rng") is None
    vsock = make_env(devices={"virtio-vsock": {"cid": 3}})
    if not os.path.exists("/dev/vhost-vsock"):
        assert "/dev/vhost-vsock" in (device_unavailable(vsock, "virtio-vsock") or "")


async def test_doctor_checks_options_against_help(tmp_path: Path) -> None:
    engine = CrosvmEngine(binary=str(DOUBLE))
    envs = [make_env("x86_64", FULL, name="a"), make_env("arm64", MINIMAL, name="b")]
    report = await engine.doctor(envs)
    assert report["binary"] == str(DOUBLE) and report["source"] == "argument"
    assert report["version"].startswith("crosvm ")
    assert report["missing_options"] == []
    assert {"--extended-status", "--serial", "--no-balloon", "--gpu"} <= set(report["options"])
    kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert (report["kvm"] == "ok") == kvm_ok


async def test_doctor_without_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_CROSVM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    report = await CrosvmEngine().doctor([make_env(name="a")], {"a": ["crosvm", "run", "k"]})
    assert report["binary"] is None and report["problem"] == NO_BINARY
    assert report["parse_check"] == {"a": f"not run: {NO_BINARY}"}


# -- launch -------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="the crosvm double needs qemu-system-x86_64")
async def test_launch_removes_a_stale_control_socket(tmp_path: Path) -> None:
    paths = paths_for(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(paths.control_socket))
    stale.close()  # what a killed crosvm leaves behind
    assert stat.S_ISSOCK(os.stat(paths.control_socket).st_mode)
    kernel = triple_fault_kernel(tmp_path / "triple.bzImage")
    image = GuestImage("triple", "x86_64", kernel, None)
    master, slave = os.openpty()
    try:
        vmm = await ENGINE.launch(make_env(devices=MINIMAL), image, paths, SETUP, slave)
        try:
            with anyio.fail_after(30):
                rc = await vmm.wait()
        finally:
            await vmm.kill()
    finally:
        os.close(master)
        os.close(slave)
    log = paths.stderr_log.read_text()
    assert "Address already in use" not in log
    # crosvm reports an x86 triple fault as a stop, and removes its socket on that exit.
    assert ENGINE.classify_exit(rc).kind is ExitKind.STOP, log
    assert not paths.control_socket.exists()


def test_harness_plan_json_prints_crosvm_command_lines_crosvm_accepts() -> None:
    """`harness plan --json --device-type crosvm`: x86_64 and arm64 argv, as crosvm parses them."""
    proc = subprocess.run([sys.executable, "-m", "harness", "plan", "--json", "--device-type",
                           "crosvm"], cwd=ROOT, capture_output=True, text=True, check=True)
    runs = json.loads(proc.stdout)["runs"]
    arches = set()
    for run in runs:
        assert run["engine"] == "crosvm" and run["device_type"] == "crosvm"
        argv = run["argv"]
        run_at = argv.index("run")
        assert argv[1:run_at] == ["--extended-status", "--log-level", "info", "--no-syslog"]
        _global_opts, run_opts = split_options(argv)
        assert not set(run_opts) & SPEC_DEPRECATED
        # No `_` in a flag: crosvm rewrites only `--host_ip`; argh knows only `-` spellings.
        assert not [a for a in argv if a.startswith("--") and "_" in a]
        _, rest = double.parse_globals(double.prepare_args(argv[1:]))
        cfg = double.parse_run(rest[1:])
        assert cfg is not None and cfg.kernel == argv[-1]
        arches.add(run["arch"])
    assert arches == {"x86_64", "arm64"}


# -- version and doctor --------------------------------------------------------------------------


async def test_vmm_version_is_recorded_once_known(tmp_path: Path) -> None:
    """The version crosvm reports is what results record (a JUnit testsuite property)."""
    engine = CrosvmEngine(binary=str(DOUBLE))
    version = await engine.version(str(DOUBLE))
    assert version == "crosvm 0.1.0-qemu-double"
    # What a run records is the setup's (a verdict on record: no probe boot here).
    accel = Accel(tmp_path / "cache")
    accel.store(engine, make_env(), Verdict(True, "recorded for this test"))
    if kvm_access_problem() is None:  # crosvm needs /dev/kvm to be usable at all
        assert (await accel.resolve(engine, make_env())).version == version
    result = TestResult(test="t", suite="s", environment="crosvm-env", engine="crosvm",
                        arch="x86_64", blocking=False, vmm_version=version)
    assert TestResult.from_json(result.to_json()).vmm_version == "crosvm 0.1.0-qemu-double"
    props = _suite_properties(RunResult(results=[result], out_dir=tmp_path), [result])
    assert props["vmm_version"] == "crosvm 0.1.0-qemu-double"


def test_harness_doctor_runs_the_parser_check(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness doctor` puts every crosvm environment's planned command line through the
    parser check and prints the version (here the double's; tests/test_real_crosvm.py does
    the same with a real crosvm). No probe boot: the verdicts are recorded beforehand."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "images").symlink_to(cache_dir() / "images")
    data = json.loads((ROOT / "environments.json").read_text())
    # Environments that boot a build's product bundle have no command line without a build.
    data["environments"] = {k: v for k, v in data["environments"].items()
                            if v["engine"] == "crosvm" and v["image"] != "product-bundle"}
    envfile = tmp_path / "environments.json"
    envfile.write_text(json.dumps(data))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    monkeypatch.setenv("HARNESS_CROSVM", str(DOUBLE))
    for env in environments.load(envfile):
        Accel(cache).store(CrosvmEngine(), env, Verdict(True, "recorded for this test"))
    proc = subprocess.run([sys.executable, "-m", "harness", "doctor", "--environments",
                           str(envfile)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["crosvm"]
    assert report["version"] == "crosvm 0.1.0-qemu-double"
    assert set(report["parse_check"]) == set(data["environments"])
    for name, said in report["parse_check"].items():
        assert said.startswith("ok: parsed and validated"), (name, said)
        assert "failed to open KVM device /nonexistent" in said
