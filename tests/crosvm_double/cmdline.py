"""argh's parse of crosvm's command line: everything that can fail here exits 35.

From crosvm's src/main.rs (prepare_argh_args, crosvm_main) and src/crosvm/cmdline.rs
(CrosvmCmdlineArgs, RunCommand), commit f1e797a:

- prepare_argh_args: `--flag=value` becomes `--flag value` for every argument that starts
  with `-` (split at the first `=`), `-h` becomes `--help`, and `--host_ip` (that exact
  word) becomes `--host-ip` with a deprecation message. No other `_` is rewritten: argh
  knows `--no-balloon`, and `--no_balloon` is an unrecognized argument.
- Global flags come before the subcommand; `run`'s options after it; the kernel is the one
  positional.
- Option values are parsed inside argh (serde_keyvalue, parse_serial_options), so their
  errors exit 35 too. Checks that span options (two `stdin` serials, two root disks) are
  made later, on the configuration: see config.py (exit 1).

Deliberately stricter than crosvm: the deprecated `run` flags, which crosvm still accepts
with a warning, are refused with exit 35, so that an engine that emits one fails its tests.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from crosvm_double.base import LEVELS, UsageError
from crosvm_double.keyvalues import (
    BOOL,
    LIST,
    STR,
    U8,
    U16,
    U32,
    U64,
    KeyValueError,
    Spec,
    choice,
    enum_with_struct,
    from_key_values,
)

SERIAL = Spec({  # devices/src/serial_device.rs SerialParameters (declaration order)
    "type": choice("file", "stdout", "sink", "syslog", "unix", "unix-stream"),
    "hardware": choice("serial", "virtio-console", "debugcon"),
    "name": STR,
    "path": STR,
    "input": STR,
    "input-unix-stream": BOOL,
    "num": U8,
    "console": BOOL,
    "earlycon": BOOL,
    "stdin": BOOL,
    "out-timestamp": BOOL,
    "debugcon-port": U16,
    "pci-address": STR,
    "max-queue-sizes": LIST,
}, aliases={"legacy-virtio-console": "virtio-console", "out_timestamp": "out-timestamp",
            "debugcon_port": "debugcon-port"})
BLOCK = Spec({  # devices/src/virtio/block/mod.rs DiskOption
    "path": STR, "ro": BOOL, "root": BOOL, "sparse": BOOL, "direct": BOOL, "lock": BOOL,
    "block-size": U32, "id": STR, "io-concurrency": U32, "multiple-workers": BOOL,
    "async-executor": STR, "packed-queue": BOOL, "bootindex": U64, "pci-address": STR,
}, aliases={"o_direct": "direct", "block_size": "block-size",
            "async_executor": "async-executor"})
NET = Spec({  # devices/src/virtio/net.rs NetParameters: a flattened mode, no unnamed field
    "tap-name": STR, "tap-fd": U32, "host-ip": STR, "netmask": STR, "mac": STR,
    "vhost-net": BOOL, "vq-pairs": U16, "packed-queue": BOOL, "pci-address": STR,
    "mrg_rxbuf": BOOL,
}, first_field_implicit=False)
VSOCK = Spec({"cid": U64, "device": STR, "max-queue-sizes": LIST})
GPU = Spec({
    "backend": choice("2d", "2D", "virglrenderer", "3d", "3D", "gfxstream"),
    "width": U32, "height": U32, "egl": BOOL, "gles": BOOL, "glx": BOOL, "surfaceless": BOOL,
    "vulkan": BOOL, "udmabuf": BOOL, "context-types": STR, "pci-address": STR,
})
CPUS = Spec({"num-cores": U64, "clusters": STR, "core-types": STR, "boot-cpu": U64},
            aliases={"num_cores": "num-cores"})
MEM = Spec({"size": U64})
HYPERVISOR = {"kvm": Spec({"device": STR})}  # HypervisorKind on Linux, as built here

REQUIRED = {id(BLOCK): ("path",), id(VSOCK): ("cid",)}


def keyvalues(text: str, spec: Spec) -> dict[str, Any]:
    parsed = from_key_values(text, spec)
    for name in REQUIRED.get(id(spec), ()):
        if name not in parsed:
            raise KeyValueError(f"missing field `{name}`")
    return parsed


def parse_serial(text: str) -> dict[str, Any]:
    """crosvm's parse_serial_options: the keyvalues, then validate_serial_parameters."""
    params = keyvalues(text, SERIAL)
    params.setdefault("type", "sink")
    params.setdefault("hardware", "serial")
    params.setdefault("num", 1)
    if params.get("stdin") and "input" in params:
        raise UsageError("Cannot specify both stdin and input options")
    if params["num"] < 1:
        raise UsageError(f"invalid value {params['num']}: Serial port num must be at least 1")
    if params["hardware"] == "serial" and params["num"] > 4:
        raise UsageError(f"invalid value {params['num']}: Serial port num must be 4 or less")
    if "pci-address" in params and params["hardware"] != "virtio-console":
        raise UsageError(f"invalid value {params['pci-address']}: Providing serial PCI "
                         f"address is only supported for virtio-console hardware type")
    return params


def parse_net(text: str) -> dict[str, Any]:
    params = keyvalues(text, NET)
    modes = [m for m in ("tap-name", "tap-fd", "host-ip") if m in params]
    if len(modes) != 1:
        raise UsageError("specify exactly one of `tap-name`, `tap-fd` or "
                         "`host-ip`+`netmask`+`mac`")
    if modes == ["host-ip"] and not {"netmask", "mac"} <= params.keys():
        raise UsageError("`host-ip` needs `netmask` and `mac`")
    return params


def parse_hypervisor(text: str) -> dict[str, Any]:
    kind, fields = enum_with_struct(text, HYPERVISOR)
    return {"kind": kind, **fields}


def parse_nonempty(text: str) -> str:
    if text == "":
        raise UsageError("empty value")
    return text


@dataclasses.dataclass(frozen=True)
class Option:
    dest: str
    help: str
    parse: Callable[[str], Any] | None = None  # None: a switch
    repeat: bool = False
    short: str | None = None


RUN_OPTIONS: dict[str, Option] = {
    "--block": Option("block", "parameters for setting up a block device: "
                      "path=PATH[,ro][,root][,sparse][,lock][,direct][,block-size=N][,id=ID]",
                      lambda s: keyvalues(s, BLOCK), repeat=True, short="-b"),
    "--balloon-control": Option("balloon_control", "path for balloon controller socket",
                                parse_nonempty),
    "--cpus": Option("cpus", "CPU configuration: num-cores=N (or just N)",
                     lambda s: keyvalues(s, CPUS), short="-c"),
    "--disable-sandbox": Option("disable_sandbox", "run all devices in one, non-sandboxed "
                                "process"),
    "--gpu": Option("gpu", "(EXPERIMENTAL) comma separated key=value pairs for setting up a "
                    "virtio-gpu device: backend=2d|virglrenderer|gfxstream,...",
                    lambda s: keyvalues(s, GPU)),
    "--hypervisor": Option("hypervisor", "hypervisor backend: kvm[device=PATH]",
                           parse_hypervisor),
    "--initrd": Option("initrd", "initial ramdisk to load", parse_nonempty, short="-i"),
    "--irqchip": Option("irqchip", "type of interrupt controller emulation: kernel, split, "
                        "userspace", lambda s: keyvalues(s, Spec({"mode": choice(
                            "kernel", "split", "userspace")}))),
    "--mem": Option("mem", "memory configuration: size=MIB (or just MIB; default 256)",
                    lambda s: keyvalues(s, MEM), short="-m"),
    "--net": Option("net", "virtio net device: tap-name=NAME[,mac=MAC] or "
                    "host-ip=IP,netmask=MASK,mac=MAC or tap-fd=FD", parse_net, repeat=True),
    "--no-balloon": Option("no_balloon", "don't use virtio-balloon device in the guest"),
    "--no-i8042": Option("no_i8042", "don't use legacy KBD devices emulation"),
    "--no-rng": Option("no_rng", "don't create RNG device in the guest"),
    "--no-rtc": Option("no_rtc", "don't use legacy RTC devices emulation"),
    "--no-usb": Option("no_usb", "don't use usb devices in the guest"),
    "--restore": Option("restore", "path of the snapshot that is used to restore the VM on "
                        "startup.", parse_nonempty),
    "--suspended": Option("suspended", "start a VM with vCPUs and devices suspended"),
    "--params": Option("params", "extra kernel command line arguments. Can be given more "
                       "than once", lambda s: s, repeat=True, short="-p"),
    "--serial": Option("serial", "comma separated key=value pairs for setting up serial "
                       "devices: type=file|stdout|sink|syslog|unix|unix-stream,"
                       "hardware=serial|virtio-console|debugcon,num=N,path=P,input=P,"
                       "console,earlycon,stdin", parse_serial, repeat=True),
    "--socket": Option("socket", "path to put the control socket", parse_nonempty,
                       short="-s"),
    "--vsock": Option("vsock", "add a vsock device: cid=CID[,device=VHOST_DEVICE]",
                      lambda s: keyvalues(s, VSOCK)),
}
SHORT_OPTIONS = {o.short: name for name, o in RUN_OPTIONS.items() if o.short}

# Every `crosvm run` flag that src/crosvm/cmdline.rs marks deprecated (a "(DEPRECATED)" doc
# comment, or a "... is deprecated" warning when used), with the replacement it names.
DEPRECATED_RUN_OPTIONS = {
    "--cid": "--vsock cid=CID",
    "--cpu-cluster": "--cpu clusters=[...]",
    "--disk": "--block path=PATH,ro",
    "--evdev": "--input evdev[path=PATH]",
    "--gpu-display": "--gpu displays=[...]",
    "--host-ip": "--net host-ip=IP,netmask=MASK,mac=MAC",
    "--keyboard": "--input keyboard[path=PATH]",
    "--kvm-device": "--hypervisor kvm[device=PATH]",
    "--mac": "--net ...,mac=MAC",
    "--mouse": "--input mouse[path=PATH]",
    "--mte": "--cpu mte=[...]",
    "--multi-touch": "--input multi-touch[path=PATH]",
    "--net-vq-pairs": "--net ...,vq-pairs=N",
    "--netmask": "--net host-ip=IP,netmask=MASK,mac=MAC",
    "--oem-strings": "--smbios oem-strings=[...]",
    "--pci-start": "--pci mem=[start=ADDR]",
    "--pmem-device": "--pmem path=PATH,ro",
    "--root": "--block path=PATH,root,ro",
    "--rotary": "--input rotary[path=PATH]",
    "--rw-pmem-device": "--pmem path=PATH",
    "--rwdisk": "--block path=PATH",
    "--rwroot": "--block path=PATH,root",
    "--single-touch": "--input single-touch[path=PATH]",
    "--split-irqchip": "--irqchip split",
    "--switches": "--input switches[path=PATH]",
    "--syslog-tag": "--syslog-tag TAG before `run`",
    "--tap-fd": "--net tap-fd=FD",
    "--tap-name": "--net tap-name=NAME",
    "--trackpad": "--input trackpad[path=PATH]",
    "--vfio-platform": "--vfio PATH",
    "--vhost-net": "--net ...,vhost-net",
    "--vhost-net-device": "--net ...,vhost-net=[device=PATH]",
    "--vhost-vsock-device": "--vsock cid=CID,device=PATH",
    "--vhost-vsock-fd": "--vsock cid=CID,device=PATH",
}

GLOBAL_SWITCHES = {"--extended-status": "extended_status", "--no-syslog": "no_syslog"}
GLOBAL_VALUES = {"--log-level": "log_level", "--syslog-tag": "syslog_tag"}

CONTROL_COMMANDS = {
    "stop": "stop the VM or a socket-less child process",
    "powerbtn": "triggers a power button event in the crosvm instance",
    "sleepbtn": "triggers a sleep button event in the crosvm instance",
    "suspend": "suspends the crosvm instance",
    "resume": "resumes the crosvm instance",
    "balloon": "set balloon size of the crosvm instance to `SIZE` bytes",
    "balloon_stats": "prints virtio balloon statistics for a `VM_SOCKET`",
    "snapshot": "Snapshot commands",
}

# `crosvm snapshot take` (src/crosvm/cmdline.rs SnapshotTakeCommand): what `--help` prints.
SNAPSHOT_TAKE_HELP = ("Usage: crosvm snapshot take <snapshot_path> <VM_SOCKET> "
                      "[--compress-memory] [--encrypt]\n") + """
Take a snapshot of the VM

Positional Arguments:
  snapshot_path     VM Image path
  VM_SOCKET         VM Socket path

Options:
  --compress-memory compress the ram snapshot.
  --encrypt         whether the snapshot should be encrypted
  --help            display usage information"""


def is_flag(arg: str) -> bool:
    return len(arg) > 1 and arg.startswith("-")


def prepare_args(args: list[str]) -> list[str]:
    """crosvm's prepare_argh_args, exactly: see the module docstring."""
    out: list[str] = []
    for arg in args:
        if arg == "--host_ip":
            sys.stderr.write("`--host_ip` option is deprecated!\nPlease use `--host-ip` "
                             "instead\n")
            out.append("--host-ip")
        elif arg == "-h":
            out.append("--help")
        elif is_flag(arg) and "=" in arg:
            key, value = arg.split("=", 1)
            out += [key, value]
        else:
            out.append(arg)
    return out


@dataclasses.dataclass
class Globals:
    extended_status: bool = False
    no_syslog: bool = False
    log_level: str = "info"
    syslog_tag: str | None = None


@dataclasses.dataclass
class RunConfig:
    kernel: str | None
    options: dict[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


def log_level(text: str) -> int:
    level = text.split(",")[0].split("=")[-1].lower()
    if level not in LEVELS:
        raise UsageError(f"Error parsing option '--log-level' with value '{text}': "
                         f"unknown log level")
    return LEVELS[level]


def parse_globals(args: list[str]) -> tuple[Globals, list[str]]:
    g = Globals()
    i = 0
    while i < len(args) and is_flag(args[i]):
        arg = args[i]
        if arg in GLOBAL_SWITCHES:
            setattr(g, GLOBAL_SWITCHES[arg], True)
        elif arg in GLOBAL_VALUES:
            if i + 1 >= len(args):
                raise UsageError(f"No value provided for option '{arg}'.")
            i += 1
            setattr(g, GLOBAL_VALUES[arg], args[i])
        elif arg == "--help":
            return g, ["--help"]
        else:
            raise UsageError(f"Unrecognized argument: {arg}")
        i += 1
    log_level(g.log_level)
    return g, args[i:]


def parse_run(args: list[str]) -> RunConfig | None:
    """argh's parse of `crosvm run`; None means --help was asked for."""
    options: dict[str, Any] = {}
    positionals: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--help":
            return None
        if arg == "--":
            positionals += args[i + 1:]
            break
        if is_flag(arg):
            name = SHORT_OPTIONS.get(arg, arg)
            if name in DEPRECATED_RUN_OPTIONS:
                raise UsageError(
                    f"deprecated option '{name}' is refused by this crosvm double (crosvm "
                    f"itself accepts it with a warning); use {DEPRECATED_RUN_OPTIONS[name]}")
            option = RUN_OPTIONS.get(name)
            if option is None:
                raise UsageError(f"Unrecognized argument: {arg}")
            if option.parse is None:
                if option.dest in options:
                    raise UsageError(f"Duplicate value for non-repeating option '{name}'.")
                options[option.dest] = True
                i += 1
                continue
            if i + 1 >= len(args):
                raise UsageError(f"No value provided for option '{name}'.")
            raw = args[i + 1]
            try:
                value = option.parse(raw)
            except UsageError as e:
                raise UsageError(
                    f"Error parsing option '{name}' with value '{raw}': {e}") from None
            if option.repeat:
                options.setdefault(option.dest, []).append(value)
            elif option.dest in options:
                raise UsageError(f"Duplicate value for non-repeating option '{name}'.")
            else:
                options[option.dest] = value
            i += 2
            continue
        positionals.append(arg)
        i += 1
    if len(positionals) > 1:
        raise UsageError(f"Unrecognized argument: {positionals[1]}")
    return RunConfig(kernel=positionals[0] if positionals else None, options=options)


def run_help() -> str:
    lines = ["Usage: crosvm run <options> KERNEL", "", "Start a new crosvm instance", "",
             "Positional Arguments:", "  kernel            bzImage of kernel to run", "",
             "Options:"]
    for name, option in sorted(RUN_OPTIONS.items()):
        flag = f"{option.short}, {name}" if option.short else name
        lines.append(f"  {flag:<20} {option.help}")
    lines.append(f"  {'--help, help':<20} display usage information")
    return "\n".join(lines)


def top_help() -> str:
    lines = ["Usage: crosvm [--extended-status] [--log-level <log_level>] [--no-syslog] "
             "[--syslog-tag <syslog_tag>] <command> [<args>]", "",
             "Cross-platform Chrome OS Virtual Machine Monitor (test double on QEMU)", "",
             "Options:",
             "  --extended-status use extended exit status",
             "  --log-level       log level",
             "  --no-syslog       disable output to syslog",
             "  --syslog-tag      configure log prefix",
             "  --help, help      display usage information", "", "Commands:",
             "  run               Start a new crosvm instance",
             "  version           Show package version."]
    lines += [f"  {name:<17} {text}" for name, text in CONTROL_COMMANDS.items()]
    return "\n".join(lines)

