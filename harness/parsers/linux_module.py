"""Linux kernel test modules: a module's init runs its tests and logs to the kernel log.

What each module prints (Debian 6.1, checked by loading them under QEMU):

- test_bpf: one line per test and a summary per suite (see test_bpf.py).
- test_user_copy: `test_user_copy: tests passed.` on success; each failed
  check logs `test_user_copy: [LINE] what failed` and init returns -EINVAL.
- test_static_keys (and test_static_key_base): nothing at all on success;
  a failed verification only makes init return -EINVAL.

So the exit status of insmod/modprobe carries the verdict as much as the log
does. The suite that loads a module reports it with a marker line after the
load, `harness-module: NAME exit=STATUS` (see `result_line`); the marker makes
the log self-describing, so a saved serial log re-parses offline to the same
cases. Without markers (a log from elsewhere), the modules are recognised by
their own lines and by insmod's error messages.
"""

from __future__ import annotations

import re

from harness.parsers import test_bpf
from harness.parsers.common import Line, console_lines, message
from harness.results import Case, Status

FORMAT = test_bpf.FORMAT
CASE = "module_init"

_MARKER = re.compile(r"^harness-module: (?P<name>[\w.-]+) exit=(?P<status>-?\d+)$")
# busybox: `insmod: can't insert 'x.ko': Invalid argument`; kmod: `insmod: ERROR: could not
# insert module x.ko: Invalid argument`, `modprobe: ERROR: could not insert 'x': ...`.
_LOAD_ERROR = re.compile(
    r"^(?:insmod|modprobe): (?:ERROR: )?(?:can't insert|could not insert)(?: module)? "
    r"'?(?P<path>[^':]+?)'?: (?P<reason>.+)$"
)
_FAILURE = re.compile(r"\bFAIL|\bfailed\b|\berror\b", re.IGNORECASE)


def result_line(module: str, exit_status: int) -> str:
    """The marker a suite prints after loading `module` (to the console or /dev/kmsg)."""
    return f"harness-module: {module} exit={exit_status}"


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def _own(lines: list[Line], module: str) -> list[str]:
    prefix = f"{module}: "
    return [ln.text.removeprefix(prefix) for ln in lines if ln.text.startswith(prefix)]


def _load_errors(lines: list[Line], module: str) -> list[str]:
    return [ln.text for ln in lines
            if (m := _LOAD_ERROR.match(ln.text)) and _module_name(m["path"]) == module]


def parse_module(text: str, module: str, exit_status: int | None = None) -> list[Case]:
    """Cases for one load of `module`, from the log of that load and insmod's exit status."""
    return _module_cases(console_lines(text), _module_name(module), exit_status)


def _module_cases(lines: list[Line], module: str, exit_status: int | None) -> list[Case]:
    errors = _load_errors(lines, module)
    failed_load = bool(errors) if exit_status is None else exit_status != 0
    why = [*errors, *([f"exit status {exit_status}"] if exit_status else [])]

    if module == "test_bpf":
        cases = test_bpf.parse_lines(lines)
        if failed_load and not any(c.status == Status.FAIL for c in cases):
            own = [s for s in _own(lines, module) if not s.startswith("#")]
            cases.append(_case(module, Status.FAIL, message([*own, *why])))
        elif not cases and not failed_load:
            cases.append(_case(module, Status.FAIL, "loaded, but printed no results "
                                                    "(is the console log level too low?)"))
        return cases

    own = _own(lines, module)
    if module == "test_user_copy":
        passed = any(s.startswith("tests passed") for s in own)
        if passed and not failed_load:
            return [_case(module, Status.PASS, "")]
        if not own and not failed_load:
            return [_case(module, Status.FAIL, "loaded, but printed no verdict "
                                               "(is the console log level too low?)")]
        return [_case(module, Status.FAIL, message([*own, *why]))]

    # Any other module (test_static_keys prints nothing): its init's return value decides,
    # unless it logged a failure of its own.
    failures = [s for s in own if _FAILURE.search(s)]
    if failed_load or failures:
        return [_case(module, Status.FAIL, message([*failures, *why]) or "failed")]
    return [_case(module, Status.PASS, "")]


def _case(module: str, status: Status, detail: str) -> Case:
    return Case(name=CASE, suite=module, status=status, message=detail, format=FORMAT)


def parse(text: str) -> list[Case]:
    """Every module load in a log: by marker where there are markers, else by recognition."""
    lines = console_lines(text)
    cases: list[Case] = []
    segment: list[Line] = []
    marked = False
    for line in lines:
        m = _MARKER.match(line.text)
        if m:
            marked = True
            cases += _module_cases(segment, _module_name(m["name"]), int(m["status"]))
            segment = []
        else:
            segment.append(line)
    if marked:
        return cases
    return _recognise(lines)


def _recognise(lines: list[Line]) -> list[Case]:
    """Modules found in a log without markers, in the order they first appear."""
    found: list[str] = []
    for line in lines:
        m = _LOAD_ERROR.match(line.text)
        name = _module_name(m["path"]) if m else None
        if name is None and (line.text.startswith("test_bpf: #")
                             or line.text.startswith("test_bpf: Summary")):
            name = "test_bpf"
        if name is None and line.text.startswith("test_user_copy: "):
            name = "test_user_copy"
        if name is not None and name not in found:
            found.append(name)
    cases: list[Case] = []
    for name in found:
        cases += _module_cases(lines, name, None)
    return cases
