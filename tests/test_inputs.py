"""Hostile inputs, as a new user would give them, through `harness` as a process.

Every one must end in exit status 2 and one line naming the file (or option),
the entry and the field, never a traceback, a hang or a run that does something
other than what was written. No guest boots here: each mistake is refused
before anything runs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import jsonfile
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
HARNESS = [sys.executable, "-m", "harness"]
MINIMAL = [{"dimensions": {"device_type": "QEMU", "cpu": "x64", "devices": "minimal"}}]


def harness(*args: str, timeout: float = 120, cwd: Path = ROOT, **kw: object
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)  # type: ignore[call-overload]


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])


@pytest.mark.parametrize(("option", "value", "problem"), [
    ("--retries", "-1", "must be from 0 to 100, got -1"),
    ("--log-cap-mib", "-1", "must be from 0 to 1048576, got -1"),
    ("--jobs", "0", "must be from 1 to 1024, got 0"),
    ("--jobs", "many", "expected an integer, got 'many'"),
    ("--total-shards", "0", "must be from 1 to 1000000, got 0"),
    ("--shard-index", "-3", "must be from 0 to 999999, got -3"),
])
def test_numeric_options_are_range_checked(tmp_path: Path, option: str, value: str,
                                           problem: str) -> None:
    proc = harness("run", "--out", str(tmp_path / "out"), option, value)
    refused(proc, f"argument {option}: {problem}")
    assert not (tmp_path / "out").exists()


def write_tests(tmp: Path, entries: list[dict[str, object]] | str) -> Path:
    path = tmp / "tests.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


@pytest.mark.parametrize(("test", "field", "problem"), [
    ({"name": "t", "path": "/bin/echo", "args": "hello"}, "test.args",
     'expected a list of strings (a program\'s arguments), got "hello"'),
    ({"name": "t", "path": "/bin/echo", "args": [["x"]]}, "test.args", "expected a list"),
    ({"name": "t", "path": "/bin/true", "isolated": "yes"}, "test.isolated",
     "expected true or false"),
    ({"name": "reboot_shutdown.guest_reboot", "reboot_cycles": 0}, "test.reboot_cycles",
     "expected an integer from 1 to 1000, got 0"),
])
def test_harness_fields_of_tests_json_are_checked(tmp_path: Path, test: dict[str, object],
                                                  field: str, problem: str) -> None:
    path = write_tests(tmp_path, [{"test": test, "environments": MINIMAL}])
    proc = harness("plan", "--tests", str(path))
    refused(proc, f"{path}: entry 0 (\"{test['name']}\"): field '{field}': {problem}")


def test_json_nested_a_thousand_deep_is_refused_clearly(tmp_path: Path) -> None:
    path = write_tests(tmp_path, "[" * 1000 + "]" * 1000)
    refused(harness("plan", "--tests", str(path)), str(path), "nested too deeply")
    deep = {"name": "t", "path": "/bin/true", "extra": json.loads("[" * 100 + "]" * 100)}
    path = write_tests(tmp_path, [{"test": deep, "environments": MINIMAL}])
    refused(harness("plan", "--tests", str(path)), "field 'test.extra'",
            "nested more than 64 levels deep")
    envs = tmp_path / "envs.json"
    envs.write_text('{"environments": ' + "[" * 200 + "]" * 200 + "}")
    refused(harness("plan", "--environments", str(envs)), str(envs),
            "nested more than 64 levels deep")


def test_devices_directories_and_fifos_are_not_read_as_tests_json(tmp_path: Path) -> None:
    refused(harness("plan", "--tests", "/dev/zero", timeout=60),
            "/dev/zero: is a character device, not a tests.json")
    refused(harness("plan", "--tests", str(tmp_path)), "is a directory, not a tests.json")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    refused(harness("plan", "--tests", str(fifo), timeout=60), str(fifo), "empty pipe")
    assert time.monotonic() - t0 < 30  # no waiting for a writer that never comes
    # A pipe with a writer is read as usual (`--tests <(generate)`).
    proc = subprocess.run(
        ["bash", "-c", f'exec {" ".join(HARNESS)} plan --tests <(echo \'[{{"test": '
                       '{"name": "piped", "path": "/bin/true"}, "environments": '
                       '[{"dimensions": {"device_type": "QEMU", "cpu": "x64", '
                       '"devices": "minimal"}}]}]\')'],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "piped" in proc.stdout


def test_an_input_over_its_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 4096)
    with pytest.raises(ConfigError, match=r"is 4096 bytes, more than the 1000 bytes a tests.json"):
        jsonfile.read_input(big, 1000, "tests.json")
    # A pipe has no size to look at beforehand: the read stops at the limit.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer that does not block on opening
    try:
        os.write(writer, b" " * 4096)
        with pytest.raises(ConfigError, match="holds more than the 1000 bytes"):
            jsonfile.read_input(fifo, 1000, "tests.json")
    finally:
        os.close(writer)


@pytest.fixture
def envs_doc() -> dict[str, object]:
    return json.loads((ROOT / "environments.json").read_text())


@pytest.mark.parametrize(("mutate", "field", "problem"), [
    (lambda d: d["environments"]["qemu-x64"].update(memroy_mib=512),
     "environment 'qemu-x64': field 'memroy_mib'", "unknown field (known: accel, arch"),
    (lambda d: d.update(enviroments={}), "top level: field 'enviroments'", "unknown field"),
    (lambda d: d["device_configs"]["minimal"].update(absnet=[]),
     "device config 'minimal': field 'absnet'", "unknown field"),
    (lambda d: d["device_configs"]["full"]["devices"]["serial"].update(count=-1),
     "device config 'full': field 'devices.serial.count'", "must be from 1 to 4, got -1"),
    (lambda d: d["device_configs"]["full"]["devices"]["virtio-blk"].update(count=0),
     "device config 'full': field 'devices.virtio-blk.count'", "must be from 1 to 16, got 0"),
    (lambda d: d["environments"]["qemu-x64"].update(image={"kernel": "/dev/zero"}),
     "environment 'qemu-x64': field 'image.kernel'",
     "kernel is a character device, not a regular file: /dev/zero"),
    (lambda d: d["environments"]["qemu-x64"].update(image={"kernel": "/tmp"}),
     "environment 'qemu-x64': field 'image.kernel'", "kernel is a directory, not a file: /tmp"),
    (lambda d: d["environments"]["qemu-x64"].update(
        image={"kernel": str(ROOT / "environments.json"), "intrd": "x"}),
     "environment 'qemu-x64': field 'image.intrd'", "unknown field (known: initrd, kernel, name)"),
])
def test_environments_json_mistakes_exit_2(tmp_path: Path, envs_doc: dict[str, object],
                                           mutate, field: str, problem: str) -> None:
    mutate(envs_doc)
    path = tmp_path / "envs.json"
    path.write_text(json.dumps(envs_doc))
    refused(harness("plan", "--environments", str(path)), f"{path}: {field}", problem)


HOSTILE = ["esc\x1b[2Jclear", "title\x1b]0;pwned\x07", "nul\x00byte", "new\nline",
           "bidi\u202eevil", "--help", "-k"]


def test_names_are_escaped_in_plan_output(tmp_path: Path) -> None:
    path = write_tests(tmp_path, [{"test": {"name": n, "path": "/bin/true"},
                                   "environments": MINIMAL} for n in HOSTILE])
    proc = harness("plan", "--tests", str(path))
    assert proc.returncode == 0, proc.stderr
    for bad in ("\x1b", "\x00", "\x07", "\u202e"):
        assert bad not in proc.stdout
    assert "esc\\x1b[2Jclear" in proc.stdout and "new\\x0aline" in proc.stdout
    # A header, a row per name (no name's newline breaks its row), the total, and the note
    # that the environments booting a Fuchsia build's bundles are not planned without one.
    assert len(proc.stdout.splitlines()) == len(HOSTILE) + 3
    data = json.loads(harness("plan", "--tests", str(path), "--json").stdout)
    assert {r["test"] for r in data["runs"]} == set(HOSTILE)  # JSON keeps the exact names


def test_errors_naming_inputs_are_escaped(tmp_path: Path, envs_doc: dict[str, object]) -> None:
    envs = envs_doc["environments"]
    assert isinstance(envs, dict)
    envs["evil\x1b]0;x\x07"] = dict(envs["qemu-x64"], cpus=0)
    path = tmp_path / "envs.json"
    path.write_text(json.dumps(envs_doc))
    proc = harness("plan", "--environments", str(path))
    refused(proc, "environment 'evil\\x1b]0;x\\x07'")
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr


def test_plan_json_of_50000_entries_streams(tmp_path: Path) -> None:
    """`harness plan --json` of 50,000 entries: no slower than the text plan by much, and
    memory bounded by the plan itself, not by the output (before: 63 s and 1.6 GB against
    the text plan's 2.6 s). Measured in a wrapper process, so ru_maxrss is the plan's."""
    path = write_tests(tmp_path, [
        {"test": {"name": f"suite-{i}", "path": "/bin/true", "label": f"//x:{i}"},
         "environments": [{"dimensions": {"device_type": "QEMU", "cpu": "x64"}}]}
        for i in range(50_000)])
    measure = ("import resource, subprocess, sys, time; t = time.monotonic(); "
               "p = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], 'w')); "
               "print(p.returncode, time.monotonic() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    figures = {}
    for mode in ("text", "json"):
        out = tmp_path / f"plan.{mode}"
        args = [*HARNESS, "plan", "--tests", str(path)] + (["--json"] if mode == "json" else [])
        proc = subprocess.run([sys.executable, "-c", measure, str(out), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600, check=True)
        rc, seconds, rss_kib = proc.stdout.split()
        assert rc == "0", proc.stderr
        figures[mode] = (float(seconds), int(rss_kib) / 1024)
    data = json.loads((tmp_path / "plan.json").read_text())
    # Two x64 QEMU environments match each entry; as Fuchsia's testsharder, each test
    # environment is one run, on one of them (the tie rule picks qemu-x64).
    assert len(data["runs"]) == 50_000
    assert {r["environment"] for r in data["runs"]} == {"qemu-x64"}
    assert data["runs"][0]["argv"][0].endswith("qemu-system-x86_64")
    (json_s, json_mib), (text_s, text_mib) = figures["json"], figures["text"]
    print(f"\nplan of 50,000 entries: json {json_s:.1f} s {json_mib:.0f} MiB, "
          f"text {text_s:.1f} s {text_mib:.0f} MiB")
    assert json_s < 2 * text_s + 5, figures
    assert json_mib < 500 and json_mib < 1.5 * text_mib, figures
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
