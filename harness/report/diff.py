"""The engine-vs-engine differential: the same tests on two environments, side by side.

RFC-0249 wants crosvm builders because "there are quirks in every implementation":
software that works on QEMU does not necessarily work on crosvm. A builder can
only gate on "crosvm behaves like QEMU" if something says, per test and per
case, where the two disagree. This module compares two environments' results
(from one run or from two) and reports:

- tests whose verdict differs (pass on one side, fail on the other); a skip is
  not a verdict, so a test skipped on one side is listed as compared on one
  side only and does not count as a difference;
- cases (zxtest cases, test_bpf tests, devices) whose verdict differs in tests
  that ran on both sides;
- devices one engine presents and the other does not, from device enumeration's
  `devices_seen` and `count.KIND` properties (suites/device_enumeration.py);
- boot time, block throughput and VMM CPU side by side, with the ratio left/right.

Only verdict differences (of tests or cases) make `differs` true, and so
`harness diff` exit 1: a device or a speed difference is evidence for a person,
while the device enumeration test itself already fails on a missing device.

Environments are paired by default as each crosvm environment against the QEMU
one of the same arch and device set. A device set is named by the
environment's device configuration; `NAME-BACKEND` is the same set with
another backend for one device (`full-tap` is `full` with a TAP network,
because crosvm has no user-mode networking), so `full-tap` pairs with `full`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from harness.errors import ConfigError
from harness.results import RunResult, Status, TestResult
from harness.stability import boot_samples
from harness.textsafe import name_safe, terminal_safe

DEVICES_PROPERTY = "devices_seen"
COUNT_PREFIX = "count."

# (property, label, unit, better): what is compared side by side. `better` says which
# way is good, for the reader; the ratio is always left / right.
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("boot_s", "boot to shell", "s", "lower"),
    ("blk_write_mb_s", "block write", "MB/s", "higher"),
    ("blk_read_mb_s", "block read", "MB/s", "higher"),
    ("vmm_cpu_s_write", "VMM CPU during block write", "s", "lower"),
    ("vmm_cpu_s_read", "VMM CPU during block read", "s", "lower"),
)
CASE_LIST_LIMIT = 50  # one-sided cases listed by name; the rest are counted


def verdict(status: Status) -> str:
    """pass, fail or skip: FAIL, INFRA_FAIL and ABORT are all a failure here."""
    if status == Status.PASS:
        return "pass"
    if status == Status.SKIP:
        return "skip"
    return "fail"


@dataclasses.dataclass(frozen=True)
class Side:
    """One environment of one run: the results the comparison reads."""

    run: RunResult
    environment: str
    label: str  # how the run is named to a person (its directory)

    @property
    def results(self) -> list[TestResult]:
        return [r for r in self.run.results if r.environment == self.environment]

    @property
    def engine(self) -> str:
        return next((r.engine for r in self.results), "")

    @property
    def arch(self) -> str:
        return next((r.arch for r in self.results), "")

    @property
    def devices(self) -> str:
        return next((r.tags.get("devices", "") for r in self.results), "")


@dataclasses.dataclass(frozen=True)
class TestDiff:
    """A test on both sides whose verdict differs, or one compared on one side only."""

    __test__ = False  # not a pytest class

    test: str
    left: str  # status, "FLAKY", or "" when the side has no such test
    right: str
    left_message: str = ""
    right_message: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CaseDiff:
    test: str
    case: str
    left: str
    right: str
    left_message: str = ""
    right_message: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DeviceDiff:
    """A device kind the two sides enumerate differently: present on one only, or a count."""

    kind: str
    left: int  # how many the guest showed (0: absent); 1 when no count was recorded
    right: int

    @property
    def only(self) -> str:
        """'left', 'right', or '' when both have it (in different numbers)."""
        if self.left and not self.right:
            return "left"
        if self.right and not self.left:
            return "right"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "left": self.left, "right": self.right, "only": self.only}


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    better: str
    left: float | None
    right: float | None

    @property
    def ratio(self) -> float | None:
        """left / right, when both were measured and right is not zero."""
        if self.left is None or self.right is None or self.right == 0:
            return None
        return self.left / self.right

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {"name": self.name, "label": self.label, "unit": self.unit,
                "better": self.better, "left": self.left, "right": self.right,
                "ratio": None if ratio is None else round(ratio, 4)}


@dataclasses.dataclass
class EnvDiff:
    """Everything that differs between two environments' results."""

    left: Side
    right: Side
    compared: int  # tests that ran (not skipped) on both sides
    tests: list[TestDiff]  # verdict differs
    one_sided: list[TestDiff]  # ran on one side only (missing or skipped on the other)
    cases: list[CaseDiff]  # verdict differs
    cases_one_sided: int  # cases of tests run on both sides that only one side reported
    cases_one_sided_names: list[str]
    devices: list[DeviceDiff]
    devices_compared: bool  # both sides enumerated their devices
    metrics: list[Metric]

    @property
    def differs(self) -> bool:
        return bool(self.tests or self.cases)

    @property
    def title(self) -> str:
        return f"{self.left.environment} vs {self.right.environment}"

    def to_json(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, str]:
            return {"run": s.label, "environment": s.environment, "engine": s.engine,
                    "arch": s.arch, "devices": s.devices}

        return {
            "left": side(self.left),
            "right": side(self.right),
            "differs": self.differs,
            "compared": self.compared,
            "tests": [t.to_json() for t in self.tests],
            "one_sided": [t.to_json() for t in self.one_sided],
            "cases": [c.to_json() for c in self.cases],
            "cases_one_sided": self.cases_one_sided,
            "cases_one_sided_names": self.cases_one_sided_names,
            "devices_compared": self.devices_compared,
            "devices": [d.to_json() for d in self.devices],
            "metrics": [m.to_json() for m in self.metrics],
        }


# -- pairing ------------------------------------------------------------------------------------


def _environments(run: RunResult) -> dict[str, tuple[str, str, str]]:
    """name -> (engine, arch, device set), in the order the run lists them."""
    out: dict[str, tuple[str, str, str]] = {}
    for r in run.results:
        out.setdefault(r.environment, (r.engine, r.arch, r.tags.get("devices", "")))
    return out


def same_devices(a: str, b: str) -> int:
    """2: the same device configuration; 1: one is the other with another backend
    (`full-tap` and `full`); 0: different sets."""
    if a == b:
        return 2
    if a.startswith(b + "-") or b.startswith(a + "-"):
        return 1
    return 0


def default_pairs(left: RunResult, right: RunResult) -> list[tuple[str, str]]:
    """Each crosvm environment against the QEMU one of the same arch and device set.

    crosvm from the left run against QEMU from the right one first, then the other
    way round; two runs without such a pair (two QEMU runs, say) are compared
    environment by environment, by name.
    """
    lenvs, renvs = _environments(left), _environments(right)

    def cross(a: dict[str, tuple[str, str, str]], b: dict[str, tuple[str, str, str]]
              ) -> list[tuple[str, str]]:
        pairs = []
        for name, (engine, arch, devices) in a.items():
            if engine != "crosvm":
                continue
            candidates = [(same_devices(devices, d), other) for other, (e, ar, d) in b.items()
                          if e == "qemu" and ar == arch and same_devices(devices, d)]
            if candidates:
                best = max(candidates, key=lambda c: c[0])[0]
                pairs.append((name, next(o for s, o in candidates if s == best)))
        return pairs

    pairs = cross(lenvs, renvs)
    if not pairs:
        pairs = [(q, c) for c, q in cross(renvs, lenvs)]
    if not pairs and left is not right:
        pairs = [(name, name) for name in lenvs if name in renvs]
    return pairs


# -- comparing ----------------------------------------------------------------------------------


def _shown_status(r: TestResult) -> str:
    return "FLAKY" if r.flaky else r.status.value


def _message(r: TestResult) -> str:
    return r.final.message if r.attempts else ""


def _median_property(results: Iterable[TestResult], name: str) -> float | None:
    values = []
    for r in results:
        if not r.attempts:
            continue
        raw = r.final.properties.get(name)
        try:
            values.append(float(raw)) if raw is not None else None
        except ValueError:
            continue
    return statistics.median(values) if values else None


def _boot_median(results: Iterable[TestResult]) -> float | None:
    samples = [s for r in results for s in boot_samples(r)]
    return statistics.median(samples) if samples else None


def enumerated_devices(results: Iterable[TestResult]) -> dict[str, int] | None:
    """kind -> how many the guest showed, from device enumeration; None if it never ran.

    A kind seen without a recorded count counts as one.
    """
    seen: dict[str, int] | None = None
    for r in results:
        if not r.attempts or r.status == Status.SKIP:
            continue
        props = r.final.properties
        if DEVICES_PROPERTY not in props:
            continue
        seen = seen or {}
        for kind in filter(None, props[DEVICES_PROPERTY].split(",")):
            seen[kind] = max(seen.get(kind, 0), 1)
        for key, value in props.items():
            if key.startswith(COUNT_PREFIX):
                kind = key[len(COUNT_PREFIX):]
                try:
                    have = int(value.split("/", 1)[0])
                except ValueError:
                    continue
                if kind in seen or have:
                    seen[kind] = max(seen.get(kind, 0), have)
    return seen


def compare(left: Side, right: Side) -> EnvDiff:
    """The differential of two environments' results."""
    lres = {r.test: r for r in left.results}
    rres = {r.test: r for r in right.results}
    tests: list[TestDiff] = []
    one_sided: list[TestDiff] = []
    cases: list[CaseDiff] = []
    one_sided_cases: list[str] = []
    compared = 0
    for name in list(lres) + [n for n in rres if n not in lres]:
        lr, rr = lres.get(name), rres.get(name)
        # A test with no attempt yet (a report written while the run goes on) is not compared.
        lr = lr if lr is not None and lr.attempts else None
        rr = rr if rr is not None and rr.attempts else None
        if lr is None and rr is None:
            continue
        lv = verdict(lr.status) if lr else "missing"
        rv = verdict(rr.status) if rr else "missing"
        entry = TestDiff(name, _shown_status(lr) if lr else "", _shown_status(rr) if rr else "",
                         _message(lr) if lr else "", _message(rr) if rr else "")
        if lv in ("skip", "missing") or rv in ("skip", "missing"):
            if not (lv in ("skip", "missing") and rv in ("skip", "missing")):
                one_sided.append(entry)
            continue
        assert lr is not None and rr is not None
        compared += 1
        if lv != rv:
            tests.append(entry)
        lcases = {(c.suite, c.name): c for c in lr.final.cases}
        rcases = {(c.suite, c.name): c for c in rr.final.cases}
        for key in list(lcases) + [k for k in rcases if k not in lcases]:
            lc, rc = lcases.get(key), rcases.get(key)
            label = f"{key[0]}.{key[1]}" if key[0] else key[1]
            if lc is None or rc is None:
                one_sided_cases.append(f"{name}: {label}")
                continue
            if verdict(lc.status) != verdict(rc.status) and "skip" not in (
                    verdict(lc.status), verdict(rc.status)):
                cases.append(CaseDiff(name, label, lc.status.value, rc.status.value,
                                      lc.message, rc.message))
    ldev, rdev = enumerated_devices(left.results), enumerated_devices(right.results)
    devices: list[DeviceDiff] = []
    if ldev is not None and rdev is not None:
        for kind in sorted(set(ldev) | set(rdev)):
            lcount, rcount = ldev.get(kind, 0), rdev.get(kind, 0)
            if lcount != rcount:
                devices.append(DeviceDiff(kind, lcount, rcount))
    metrics = []
    for name, label, unit, better in METRICS:
        if name == "boot_s":
            lv_, rv_ = _boot_median(left.results), _boot_median(right.results)
        else:
            lv_, rv_ = _median_property(left.results, name), _median_property(right.results, name)
        if lv_ is not None or rv_ is not None:
            metrics.append(Metric(name, label, unit, better, lv_, rv_))
    return EnvDiff(left, right, compared, tests, one_sided, cases, len(one_sided_cases),
                   one_sided_cases[:CASE_LIST_LIMIT], devices,
                   ldev is not None and rdev is not None, metrics)


def diff_runs(left: RunResult, right: RunResult, *, left_label: str, right_label: str,
              envs: Sequence[str] = ()) -> list[EnvDiff]:
    """Compare `envs` (left environment, right environment) or the default pairs.

    An environment named but not in its run is a ConfigError naming the run.
    """
    if envs:
        if len(envs) != 2:
            raise ConfigError("command line", None, "--env",
                              f"give two environments (left, right), not {len(envs)}")
        for run, label, env in ((left, left_label, envs[0]), (right, right_label, envs[1])):
            known = _environments(run)
            if env not in known:
                raise ConfigError(label, None, "--env",
                                  f"no environment {env!r} in this run (it has: "
                                  f"{', '.join(known) or 'no results'})")
        pairs = [(envs[0], envs[1])]
    else:
        pairs = default_pairs(left, right)
    return [compare(Side(left, a, left_label), Side(right, b, right_label)) for a, b in pairs]


# -- text ---------------------------------------------------------------------------------------


def one_sided_reason(t: TestDiff, left: str, right: str) -> str:
    """Why a test was compared on one side only: the skip's reason, or where it is absent."""
    if not t.left:
        return f"not in {left}'s results"
    if not t.right:
        return f"not in {right}'s results"
    return t.left_message if t.left == "SKIP" else t.right_message


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _one_line(text: str, limit: int = 120) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = terminal_safe(line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def diff_text(diffs: Sequence[EnvDiff]) -> str:
    """The differential for a terminal: one block per pair, then the verdict."""
    if not diffs:
        return "no environments to compare\n"
    lines: list[str] = []
    for d in diffs:
        ln, rn = name_safe(d.left.environment), name_safe(d.right.environment)
        where = (f" (runs {terminal_safe(d.left.label)} and {terminal_safe(d.right.label)})"
                 if d.left.label != d.right.label else f" (run {terminal_safe(d.left.label)})")
        lines.append(f"{ln} ({d.left.engine}) vs {rn} ({d.right.engine}), {d.left.arch}, "
                     f"devices {d.left.devices or '-'}/{d.right.devices or '-'}{where}")
        n = len(d.tests)
        lines.append(f"  {d.compared} tests ran on both; "
                     f"{n} verdict{'s differ' if n != 1 else ' differs'}")
        width = max([len("test"), *(len(name_safe(t.test)) for t in d.tests + d.one_sided)])
        for t in d.tests:
            why = _one_line(t.left_message or t.right_message)
            lines.append(f"  DIFFERS  {name_safe(t.test):<{width}}  {t.left:<10} "
                         f"{t.right:<10} {why}")
        for c in d.cases:
            why = _one_line(c.left_message or c.right_message)
            lines.append(f"  DIFFERS  {name_safe(c.test)} case {name_safe(c.case)}: "
                         f"{c.left} vs {c.right} {why}")
        if d.cases_one_sided:
            lines.append(f"  {d.cases_one_sided} case{'s' * (d.cases_one_sided != 1)} "
                         f"reported on one side only")
        for t in d.one_sided:
            status = f"{t.left or 'absent'} vs {t.right or 'absent'}"
            why = _one_line(one_sided_reason(t, ln, rn))
            lines.append(f"  one side {name_safe(t.test):<{width}}  {status}: {why}")
        if d.devices_compared:
            if not d.devices:
                lines.append("  devices: both enumerate the same")
            for dev in d.devices:
                if dev.only:
                    who = ln if dev.only == "left" else rn
                    lines.append(f"  device {name_safe(dev.kind)}: only {who} presents it")
                else:
                    lines.append(f"  device {name_safe(dev.kind)}: {dev.left} on {ln}, "
                                 f"{dev.right} on {rn}")
        else:
            lines.append("  devices: not compared (device enumeration did not run on both)")
        if d.metrics:
            mw = max(len(f"{m.label} ({m.unit})") for m in d.metrics)
            cw = max(len(ln), len(rn), 8)
            lines.append(f"  {'metric':<{mw}}  {ln:>{cw}} {rn:>{cw}}  ratio")
            for m in d.metrics:
                ratio = f"{m.ratio:.2f}x" if m.ratio is not None else "-"
                lines.append(f"  {m.label + ' (' + m.unit + ')':<{mw}}  {_num(m.left):>{cw}} "
                             f"{_num(m.right):>{cw}}  {ratio}")
        lines.append("")
    differing = [d for d in diffs if d.differs]
    lines.append("verdict: " + (
        "DIFFERS on " + ", ".join(name_safe(d.title) for d in differing) if differing
        else "the same on every pair compared"))
    return "\n".join(lines) + "\n"
