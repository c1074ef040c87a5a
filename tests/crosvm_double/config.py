"""The checks crosvm makes on a parsed `run` configuration, before any VM exists: exit 1.

In crosvm's order (commit f1e797a):

1. src/crosvm/cmdline.rs `TryFrom<RunCommand> for Config`: per serial, in command-line
   order, a repeated (hardware, num) ("serial hardware serial num 1"), `earlycon` on
   anything but an 8250 ("invalid value virtio-console: earlycon not supported for
   hardware"), a second `earlycon`, a second `stdin`; then at most one root disk ("only one
   root disk can be specified"), which becomes `root=/dev/vdX ro|rw` after the user's params.
2. src/crosvm/config.rs `validate_config`: "Executable is not specified".
3. src/crosvm/sys/linux.rs `run_config`: the initrd and the kernel are opened
   (setup_vm_components), then the hypervisor device ("failed to open KVM device PATH").
4. The arch builds the kernel command line: base `panic=-1`, the serial `console=` and
   `earlycon=`, then every `--params` item, each printable ASCII or "the given kernel
   command line was invalid: string contains non-printable ASCII character"
   (kernel_cmdline/src/kernel_cmdline.rs).

A `run` error is reported as crosvm's main() does: `exiting with error 1: ...`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any

from crosvm_double.base import ConfigRefused, RunError
from crosvm_double.cmdline import RunConfig

KVM_PATH = "/dev/kvm"
# arch/src/serial.rs SERIAL_ADDR: COM1..COM4, I/O ports on x86_64 and MMIO on aarch64.
SERIAL_ADDR = (0x3F8, 0x2F8, 0x3E8, 0x2E8)


@dataclasses.dataclass
class Validated:
    """What the later stages need: the serials in crosvm's (hardware, num) order, the
    kernel parameters after the serial ones, and the hypervisor device to open."""

    serials: list[dict[str, Any]]
    params: list[str]
    kvm_device: str | None


def check_serials(serials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for params in serials:
        key = (params["hardware"], params["num"])
        if key in seen:
            raise ConfigRefused(f"serial hardware {key[0]} num {key[1]}")
        if params.get("earlycon"):
            if params["hardware"] != "serial":
                raise ConfigRefused(f"invalid value {params['hardware']}: earlycon not supported "
                               f"for hardware")
            for other in seen.values():
                if other.get("earlycon"):
                    raise ConfigRefused(f"{other['hardware']} device {other['num']} already set "
                                   f"as earlycon")
        if params.get("stdin"):
            for other in seen.values():
                if other.get("stdin"):
                    raise ConfigRefused(f"{other['hardware']} device {other['num']} already "
                                   f"connected to standard input")
        seen[key] = params
    order = {"serial": 0, "virtio-console": 1, "debugcon": 2}  # SerialHardware's Ord
    return [seen[k] for k in sorted(seen, key=lambda k: (order[k[0]], k[1]))]


def root_param(blocks: list[dict[str, Any]]) -> list[str]:
    roots = [(i, b) for i, b in enumerate(blocks) if b.get("root")]
    if not roots:
        return []
    if len(roots) > 1:
        raise ConfigRefused("only one root disk can be specified")
    index, block = roots[0]
    return [f"root=/dev/vd{chr(ord('a') + index)} {'ro' if block.get('ro') else 'rw'}"]


def default_serials(serials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """arch/src/serial.rs set_default_serial_parameters: without a console, COM1 (unless
    named) becomes a stdout console reading stdin; COM1..COM4 always exist (sinks)."""
    have = {(s["hardware"], s["num"]): s for s in serials}
    if not any(s.get("console") for s in serials):
        have.setdefault(("serial", 1), {"type": "stdout", "hardware": "serial", "num": 1,
                                        "console": True, "stdin": True})
    for num in range(1, 5):
        have.setdefault(("serial", num), {"type": "sink", "hardware": "serial", "num": num})
    order = {"serial": 0, "virtio-console": 1, "debugcon": 2}
    return [have[k] for k in sorted(have, key=lambda k: (order[k[0]], k[1]))]


def validate(cfg: RunConfig) -> Validated:
    """Stages 1 and 2: the configuration itself."""
    serials = check_serials(list(cfg.get("serial", [])))
    params = list(cfg.get("params", [])) + root_param(cfg.get("block", []))
    if cfg.kernel is None:
        raise ConfigRefused("Executable is not specified")
    serials = default_serials(serials)
    hypervisor = cfg.get("hypervisor")
    device = hypervisor.get("device", KVM_PATH) if hypervisor else None
    return Validated(serials=serials, params=params, kvm_device=device)


def open_images(cfg: RunConfig) -> None:
    """Stage 3, first half: crosvm opens the initrd, then the kernel, before the hypervisor."""
    for what, path in (("initrd", cfg.get("initrd")), ("kernel image", cfg.kernel)):
        if path is None:
            continue
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as e:
            raise RunError(f"failed to open {what} {path}\n\nCaused by:\n    {e.strerror} "
                           f"(os error {e.errno})") from None


def open_hypervisor(validated: Validated) -> None:
    """Stage 3, second half. Only an explicit `--hypervisor kvm[device=...]` is opened: the
    double runs on TCG and needs no KVM (crosvm without the option opens /dev/kvm)."""
    device = validated.kvm_device
    if device is None:
        return
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        code = e.errno or errno.EIO
        raise RunError(f"failed to open KVM device {device}\n\nCaused by:\n    "
                       f"{os.strerror(code)} (os error {code})") from None


def kernel_cmdline(validated: Validated, *, console_tty: str, earlycon: str) -> str:
    """Stage 4. `console_tty` and `earlycon` are what this double's machine can honour (see
    vm.py: QEMU's arm64 board has a PL011 where crosvm has 8250 UARTs on MMIO)."""
    args = ["panic=-1"]
    for s in validated.serials:
        if s.get("console"):
            if s["hardware"] == "serial":
                args.append(f"console={console_tty}{s['num'] - 1}")
            elif s["hardware"] == "virtio-console":
                args.append(f"console=hvc{s['num'] - 1}")
    for s in validated.serials:
        if s.get("earlycon"):
            args.append(f"earlycon={earlycon.format(addr=SERIAL_ADDR[s['num'] - 1])}")
            break
    for param in validated.params:
        if not all(" " <= c <= "~" for c in param):
            raise RunError("the architecture failed to build the vm\n\nCaused by:\n    the "
                           "given kernel command line was invalid: string contains "
                           "non-printable ASCII character")
        args.append(param)
    return " ".join(args)
