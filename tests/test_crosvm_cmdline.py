"""crosvm's command line as crosvm treats it, checked on the double without booting anything.

What crosvm (commit f1e797a) does with a command line, and what the double must therefore do:
argh's parse failures exit 35 (src/main.rs), and only those; what crosvm refuses after
parsing exits 1 (src/crosvm/cmdline.rs `TryFrom<RunCommand> for Config`, config.rs
`validate_config`, then run_config). serde_keyvalue refuses a quote in an unquoted value.
`_` is rewritten to `-` for `--host_ip` alone. Every failure here happens before the double
starts QEMU, so these run in a second each.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
from crosvm_double import cmdline as double
from test_crosvm_engine import MINIMAL, make_env, make_image, option_values, write_kernel

from harness.engines.base import RunPaths, VmmSetup
from harness.engines.crosvm import (
    PARSE_CHECK_EXPECTED,
    CrosvmEngine,
    classify,
    parse_check_argv,
)

DOUBLE = Path(__file__).resolve().parent / "crosvm_double" / "crosvm"


def run_double(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DOUBLE), *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    return write_kernel(tmp_path / "bzImage", "x86_64")


@pytest.mark.parametrize(("extra", "message"), [
    (["--serial", "type=sink,num=2", "--serial", "type=sink,num=2"],
     "serial hardware serial num 2"),
    (["--serial", "type=stdout,num=1,stdin", "--serial", "type=sink,num=2,stdin"],
     "serial device 1 already connected to standard input"),
    (["--serial", "type=sink,hardware=virtio-console,earlycon"],
     "invalid value virtio-console: earlycon not supported for hardware"),
    (["--serial", "type=sink,num=1,earlycon", "--serial", "type=sink,num=2,earlycon"],
     "serial device 1 already set as earlycon"),
    (["--block", "path=/a.img,root", "--block", "path=/b.img,root"],
     "only one root disk can be specified"),
    (["--params", "console=ttyS0 caf\u00e9"], "non-printable ASCII character"),
    (["--hypervisor", "kvm[device=/nonexistent]"], "failed to open KVM device /nonexistent"),
], ids=["same-serial-twice", "two-stdin", "earlycon-virtio-console", "two-earlycon",
        "two-root-disks", "non-printable-params", "no-kvm-device"])
def test_configuration_errors_exit_1(kernel: Path, extra: list[str], message: str) -> None:
    result = run_double("--extended-status", "run", *extra, str(kernel))
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "exiting with error 1" in result.stderr and "arg parsing failed" not in result.stderr
    assert classify(result.returncode).kind.value == "error"


@pytest.mark.parametrize(("extra", "message"), [
    (["--serial", "type=file,path=/o,input=/i,stdin"], "Cannot specify both stdin and input"),
    (["--serial", "type=sink,num=5"], "Serial port num must be 4 or less"),
    (["--serial", "type=stdout,colour=blue"], "unknown field `colour`"),
    (["--no_balloon"], "Unrecognized argument: --no_balloon"),
    (["--block", "path=/tmp/it's.img"], "\" and ' can only be used in quoted strings"),
    (["--block", 'path=/tmp/"q".img'], "\" and ' can only be used in quoted strings"),
    (["--block", "path=/a]b"], "remaining characters in input at position 7"),
    (["--split-irqchip"], "use --irqchip split"),
    (["--mem", "size=lots"], "invalid characters for number"),
], ids=["stdin-and-input", "serial-num-5", "unknown-field", "underscore-flag",
        "unquoted-apostrophe", "unquoted-double-quote", "unquoted-bracket", "deprecated",
        "not-a-number"])
def test_parse_errors_exit_35(kernel: Path, extra: list[str], message: str) -> None:
    result = run_double("--extended-status", "run", *extra, str(kernel))
    assert result.returncode == 35, result.stderr
    assert "arg parsing failed" in result.stderr and message in result.stderr
    assert classify(result.returncode).kind.value == "invalid-args"


def test_only_host_ip_has_its_underscore_rewritten() -> None:
    """src/main.rs prepare_argh_args: `--host_ip` becomes `--host-ip`, nothing else changes;
    `--flag=value` is split at the first `=` (short flags too); `-h` is `--help`."""
    assert double.prepare_args(["--host_ip", "1.2.3.4"]) == ["--host-ip", "1.2.3.4"]
    assert double.prepare_args(["--no_balloon", "--log_level=debug"]) == [
        "--no_balloon", "--log_level", "debug"]
    assert double.prepare_args(["-p=init=/bin/sh", "-h", "k"]) == [
        "-p", "init=/bin/sh", "--help", "k"]
    assert double.prepare_args(["--host_ip=1.2.3.4"]) == ["--host_ip", "1.2.3.4"]


def test_run_help_names_irqchip_not_irq_chip() -> None:
    text = run_double("run", "--help").stdout
    assert "--irqchip" in text and "--irq-chip" not in text


async def test_parse_check_accepts_what_the_engine_writes(tmp_path: Path) -> None:
    """The parser check, on the double: the engine's command line for a disk whose path has
    an apostrophe gets to KVM; the same line with the value unquoted (as the engine once
    wrote it) is argh's parse failure, 35."""
    odd = tmp_path / "it's here"
    odd.mkdir()
    disk = odd / "disk.img"
    disk.write_bytes(b"\0" * 512)
    work = tmp_path / "work"
    work.mkdir()
    engine = CrosvmEngine(str(DOUBLE))
    argv = engine.command(make_env(devices=MINIMAL), make_image(tmp_path, "x86_64"),
                          RunPaths(workdir=work, disks=(disk,)), VmmSetup(str(DOUBLE), "kvm"))
    assert option_values(argv, "--block") == [f'path="{disk}"']
    with anyio.fail_after(60):
        good = await engine.parse_check(argv)
    assert good.ok, good.describe()
    assert good.status == 1 and PARSE_CHECK_EXPECTED in good.said
    assert good.argv == parse_check_argv(argv)
    assert good.argv[good.argv.index("run") + 1:][:2] == ["--hypervisor",
                                                           "kvm[device=/nonexistent]"]

    unquoted = [f"path={disk}" if a == f'path="{disk}"' else a for a in argv]
    with anyio.fail_after(60):
        bad = await engine.parse_check(unquoted)
    assert not bad.ok and bad.status == 35
    assert bad.describe().startswith("FAILED: crosvm could not parse it: arg parsing failed")
