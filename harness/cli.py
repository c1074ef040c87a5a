"""The command line. Thin: parses arguments, hands them to a command (harness.app), and maps
errors to exit statuses (the table is harness.errors.EXIT_STATUSES, shown by `--help`).

Nothing here knows how a command works; it only knows the words of the command line.
The commands' module is imported when one runs, not for `harness --help`, which then
starts without anyio, pexpect or the engines (an import that points down the layers).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from harness import environments as envmod
from harness.errors import (
    EXIT_INFRA,
    EXIT_NO_TESTS,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    HarnessError,
    Interrupted,
    exit_status_for,
    exit_status_table,
)
from harness.outputs import describe, silence, stream_broken
from harness.textsafe import terminal_safe


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from `lo` to `hi`, or exit 2 naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


# Ranges of the numeric options. Upper bounds are far above any real use; they keep a
# typo (a missing unit, an extra digit) from meaning a million guests or a 1 EiB log.
JOBS = _int_in(1, 1024)
RETRIES = _int_in(0, 100)
LOG_CAP_MIB = _int_in(0, 1 << 20)
SHARD_INDEX = _int_in(0, 1_000_000 - 1)
TOTAL_SHARDS = _int_in(1, 1_000_000)


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build-dir", metavar="DIR",
                   help="a Fuchsia build directory: its tests.json and product_bundles.json "
                        "(their paths are relative to it)")
    p.add_argument("--product-bundles", metavar="FILE",
                   help="product_bundles.json (default: the build directory's)")
    p.add_argument("--product-bundle", metavar="NAME",
                   help="the product bundle to boot for tests that name none")


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tests", metavar="FILE", help="tests.json (Fuchsia test-spec format); "
                   "default: the build directory's, else the built-in suites")
    _build_args(p)
    p.add_argument("--environments", metavar="FILE",
                   help=f"environments file (default: {envmod.DEFAULT_FILE})")
    p.add_argument("--device-type", action="append", default=[], metavar="T",
                   help="only environments of this device_type (crosvm, QEMU, ...)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="only this environment (repeatable)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="only environments carrying this tag")
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="only this suite (repeatable)")
    p.add_argument("--suite-path", action="append", default=[], metavar="PATH",
                   help="also load suites from these .py files or directories (a suite is a "
                        "module of @guest_test functions; also HARNESS_SUITE_PATH, ':'-separated)")
    p.add_argument("-k", action="append", default=[], dest="globs", metavar="GLOB",
                   help="only tests whose name matches (fnmatch; repeatable)")
    p.add_argument("--shard-index", type=SHARD_INDEX, metavar="I",
                   help="run shard I of --total-shards (also TEST_SHARD_INDEX, "
                        "GTEST_SHARD_INDEX); `plan` shows that shard only")
    p.add_argument("--total-shards", type=TOTAL_SHARDS, metavar="N",
                   help="the number of shards; `plan` with this alone shows every shard")
    p.add_argument("--durations-from", metavar="SUMMARY",
                   help="balance shards by the durations in an earlier summary.json")
    p.add_argument("--allow-empty", action="store_true",
                   help=f"exit {EXIT_NO_TESTS}, not 0, is what a selection that runs nothing "
                        "gets (a -k typo, a device type no environment has); with this, 0 "
                        "(for CI matrices whose shards or filters may select nothing)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Boot crosvm and QEMU guests, run suites on their serial consoles, "
                    "write JUnit and summary.json.",
        epilog=exit_status_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run tests and write results", epilog=exit_status_table(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _selection_args(run)
    run.add_argument("--jobs", type=JOBS, default=min(1024, os.cpu_count() or 1),
                     help="guests running at once, 1 to 1024 (default: number of cores)")
    run.add_argument("--retries", type=RETRIES, default=0,
                     help="re-run failed tests N times, 0 to 100")
    run.add_argument("--out", metavar="DIR", help="results directory (default: "
                     "results/<UTC time>, with results/latest pointing at it)")
    run.add_argument("--log-cap-mib", type=LOG_CAP_MIB, default=256,
                     help="cap each serial log at this size (default 256 MiB; 0: no cap)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--keep", action="store_true",
                     help="leave a failed test's guest running and print how to attach and stop")
    run.add_argument("--no-snapshot", dest="snapshots", action="store_false",
                     help="boot every guest instead of restoring it from a saved one (and "
                          "share guests between tests that allow it, as without snapshots)")
    run.add_argument("--interactive", action="store_true",
                     help="boot the one selected environment and hand its serial console to you "
                          "(Ctrl-] leaves; the guest is then torn down)")

    plan = sub.add_parser("plan", help="show what would run, with each VMM command line",
                          epilog=exit_status_table(),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _selection_args(plan)
    plan.add_argument("--json", action="store_true")

    boot = sub.add_parser(
        "run-boot-test", help="run one boot test of a Fuchsia build, as `fx run-boot-test`",
        description="Boot one boot test's product bundle on crosvm (--crosvm) or QEMU and "
                    "judge it from serial; without NAME, list the build's boot tests.")
    boot.add_argument("name", nargs="?", metavar="NAME",
                      help="the boot test (the closest name matches, as fx run-boot-test)")
    boot.add_argument("--tests", metavar="FILE", help="tests.json (default: the build's)")
    _build_args(boot)
    boot.add_argument("--environments", metavar="FILE",
                      help=f"environments file (default: {envmod.DEFAULT_FILE})")
    boot.add_argument("--crosvm", action="store_true",
                      help="boot on crosvm (environment fuchsia-crosvm-ARCH); default: QEMU")
    boot.add_argument("--arch", choices=sorted(envmod.CPU_DIMENSION.values()),
                      help="the boot test's cpu (default: FUCHSIA_ARCH, else its bundle's)")
    boot.add_argument("--env", metavar="NAME", help="boot on this environment instead")
    boot.add_argument("-c", "--cmdline", action="append", default=[], metavar="KERNEL-ARG",
                      help="add a kernel command-line argument (repeatable)")
    boot.add_argument("--test-filter", action="append", default=[], metavar="TEST-NAMES",
                      help="shorthand for -c --gtest_filter=TEST-NAMES")
    boot.add_argument("--count", action="append", default=[], metavar="COUNT",
                      help="shorthand for -c --gtest_repeat=COUNT")
    boot.add_argument("--interactive", action="store_true",
                      help="hand the serial console to you (Ctrl-] leaves); the verdict after")
    boot.add_argument("--out", metavar="DIR", help="results directory (default: "
                      "results/<UTC time>)")
    boot.add_argument("--quiet", action="store_true", help="no progress lines")

    images = sub.add_parser("images", help="build or list the embedded default guests")
    isub = images.add_subparsers(dest="images_command", required=True)
    b = isub.add_parser("build", help="build guest images (cached by content)")
    b.add_argument("--arch", action="append", choices=envmod.ARCHES)
    b.add_argument("--name", action="append")
    b.add_argument("--force", action="store_true")
    b.add_argument("--environments", metavar="FILE",
                   help="build the images these environments use (default: all defaults)")
    isub.add_parser("list", help="list built images")

    doctor = sub.add_parser("doctor", help="engines found, versions, KVM verdict, images")
    doctor.add_argument("--environments", metavar="FILE")

    parse = sub.add_parser("parse", help="re-parse a saved serial log offline")
    parse.add_argument("--profile", default="linux", choices=envmod.PROFILES)
    parse.add_argument("--format", dest="fmt", help="output format (default: detect)")
    parse.add_argument("--booted", action="store_true",
                       help="the log starts after boot: a boot banner in it means a reset")
    parse.add_argument("--host-log", metavar="FILE",
                       help="the VMM's stderr of the same run (vmm-stderr.log), for the crash scan")
    parse.add_argument("--syslog", metavar="FILE", help="a Fuchsia syslog, for the crash scan")
    parse.add_argument("--outcome", choices=("pass", "fail"),
                       help="whether the test passed, for the crash scan's checks that depend "
                            "on it (default: failed if a case failed or a fatal crash is found)")
    parse.add_argument("log", help="serial log file")

    attach = sub.add_parser("attach", help="attach to a guest kept by `run --keep`")
    attach.add_argument("socket", help="the console socket `run --keep` printed")

    merge = sub.add_parser("merge", help="combine shard results into one junit.xml/summary.json")
    merge.add_argument("dirs", nargs="+")
    merge.add_argument("--out", required=True)

    stab = sub.add_parser("stability", help="pass rates, flakes and boot-time trends across "
                          "runs; which FYI environments are ready to be made blocking")
    stab.add_argument("dirs", nargs="+", metavar="RESULTS_DIR",
                      help="a run directory, or a folder of run directories")
    stab.add_argument("--last", type=int, default=5, metavar="K",
                      help="an FYI environment is ready after passing its last K runs "
                           "(default 5)")
    stab.add_argument("--json", action="store_true", help="machine-readable, for dashboards")

    repro = sub.add_parser("repro", help="re-run one test of a results directory, exactly")
    repro.add_argument("results_dir", metavar="RESULTS_DIR")
    repro.add_argument("test", metavar="TEST", help="test name, ENV/NAME, or an unambiguous glob")
    repro.add_argument("--env", metavar="ENV", help="the environment, if TEST ran on several")
    repro.add_argument("--print", dest="print_only", action="store_true",
                       help="print the command instead of running it")
    repro.add_argument("--out", metavar="DIR", help="results directory of the re-run")

    report = sub.add_parser("report", help="static HTML report of one or many runs "
                            "(opens from file://, nothing fetched)")
    report.add_argument("dirs", nargs="+", metavar="RESULTS_DIR",
                        help="a run directory, or a folder of run directories")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="where index.html (and run-N.html per run) go")
    report.add_argument("--last", type=int, default=5, metavar="K",
                        help="readiness of FYI environments over their last K runs (default 5)")

    diff = sub.add_parser("diff", help="the same tests on two environments side by side; "
                          "exit 1 when a verdict differs")
    diff.add_argument("runs", nargs="+", metavar="RUN",
                      help="RUN_A [RUN_B]: one run (its environments against each other) or two")
    diff.add_argument("--env", action="append", default=[], metavar="ENV",
                      help="--env LEFT --env RIGHT (default: each crosvm environment against "
                           "the QEMU one of the same arch and device set)")
    diff.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        _error(f"harness: {e}")
        return EXIT_USAGE
    except HarnessError as e:
        _error(f"harness: {e}")
        return e.exit_status
    except Interrupted as e:
        _error(f"harness: {e}")
        return e.exit_status
    except KeyboardInterrupt:
        _error("harness: interrupted")
        return exit_status_for(signal.SIGINT)
    except OSError as e:
        if stream_broken(e):  # `harness plan | head -1`: the reader went away
            silence(sys.stdout)
        else:  # the host refused a write (a full disk, a read-only cache): one line
            _error(f"harness: infrastructure: {describe(e)}")
        return EXIT_INFRA


def _error(line: str) -> None:
    """An error line: names from the inputs in it are escaped, a closed stderr is no crash."""
    try:
        print(terminal_safe(line), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        silence(sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    from harness import app  # the commands, below the command line (see the module docstring)

    if args.command == "repro":
        # `harness repro` re-runs a stored `harness run` line: its words are parsed here,
        # by the same parser, and run in this process.
        again = app.repro_command(args)
        return EXIT_OK if again is None else main(again)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": app.run_command,
        "plan": app.plan_command,
        "run-boot-test": app.run_boot_test_command,
        "images": app.images_command,
        "doctor": app.doctor_command,
        "parse": app.parse_command,
        "attach": app.attach_command,
        "merge": app.merge_command,
        "stability": app.stability_command,
        "report": app.report_command,
        "diff": app.diff_command,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
