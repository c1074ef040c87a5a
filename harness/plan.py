"""The plan: which (test, environment) pairs run, which are skipped, and on which shard.

Pairing matches each tests.json environment's dimensions against each
environments.json environment (`Environment.matches`), in one of two ways:

- Fuchsia's (`testsharder=True`, for a tests.json the person gives or a build's),
  reproduced from tools/integration/testsharder (MakeShards, populateEnvDefaults):
  a test environment without a `cpu` takes the test's (for emulator and host
  environments only); its `tags` must equal the selected tags exactly (testsharder's
  environment tags: none selected, only untagged environments run); and each test
  environment is exactly one run, on one environment. Of the environments it
  matches, `os: fuchsia` tests take only Zircon-profile ones and other tests only
  the rest, boot tests only those that boot a product bundle; ties go to the
  environment with the fewest dimensions the test environment did not ask for
  (the plainest machine of its kind: `{device_type: QEMU, cpu: x64}` is qemu-x64,
  not qemu-x64-minimal), then to the first name in sort order. Environments named
  with --env are the person's choice instead of the tie rule: the test environment
  runs on each named one it matches.
- the harness's own (the built-in suites): every environment whose dimensions
  match, since the suites are written to run wherever they fit and say themselves
  what they need.

Environments that boot a product bundle are planned only when product bundles are
given (a build directory); without them they are not planned, and the plan says so.
Selection narrows the candidates before a tie is decided; a suite's requirements
(checked through `check`) and a product bundle that cannot boot on an environment
turn a pair into a planned SKIP with a reason rather than dropping it, so reports
say why a test did not run in an environment.

Selection semantics: filters of different kinds combine with AND, values of one
kind with OR, an empty tuple is no filter. Suite and glob filters apply to the
entry; device type, tag and environment-name filters to each pair.

Sharding must give every CI shard the same answer without talking to the
others, so it depends only on the runs' keys (never on dict, set or hash
order) and on the optional durations of an earlier run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import heapq
import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from harness.environments import Environment, EnvironmentSet
from harness.errors import ConfigError
from harness.fuchsia.build import BundleSet, ProductBundle, boot_skip
from harness.profiles import get_profile
from harness.spec import SpecEnvironment, TestSpec, paused_gc
from harness.textsafe import name_safe

log = logging.getLogger(__name__)

Check = Callable[[TestSpec, Environment], str | None]

# Device types Fuchsia's infra treats as emulators (build.Environment.TargetsEmulator):
# testsharder gives their environments, and host ones, the default cpu.
EMULATOR_DEVICE_TYPES = frozenset({"QEMU", "AEMU", "crosvm"})


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the user asked for; every field empty selects everything."""

    device_types: tuple[str, ...] = ()
    env_names: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One test in one environment. `spec_environment` is the tests.json environment
    that matched (its `emulator` settings may matter to the engine)."""

    spec: TestSpec
    environment: Environment
    skip_reason: str | None = None
    shard: int = 0
    spec_environment: SpecEnvironment | None = None
    # On an environment that boots a product bundle: the bundle the run boots (the test's
    # own, else --product-bundle's), loaded; or why it cannot be (an INFRA_FAIL of this run).
    bundle_name: str = ""
    bundle: ProductBundle | None = None
    bundle_problem: str | None = None

    @property
    def key(self) -> str:
        """Same as `TestResult.key`, so durations from an earlier run line up."""
        return f"{self.environment.name}/{self.spec.name}"


@dataclasses.dataclass(frozen=True)
class Plan:
    runs: list[PlannedRun]
    disabled: list[TestSpec]
    unmatched: list[tuple[TestSpec, SpecEnvironment]]
    # Later entries whose key an earlier entry already planned (same name, same environment).
    duplicates: list[PlannedRun] = dataclasses.field(default_factory=list)
    # What a person should know about what was not planned and why (printed under the plan).
    notes: list[str] = dataclasses.field(default_factory=list)


class _Selector:
    """A Selection prepared once (lower-cased sets, one compiled regex for all globs)."""

    def __init__(self, selection: Selection) -> None:
        self.device_types = frozenset(d.lower() for d in selection.device_types)
        self.env_names = frozenset(selection.env_names)
        self.tags = frozenset(selection.tags)
        self.suites = frozenset(selection.suites)
        self.glob: re.Pattern[str] | None = None
        if selection.globs:
            self.glob = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in selection.globs))

    def spec(self, spec: TestSpec) -> bool:
        suite = spec.suite
        if self.suites and suite not in self.suites:
            return False
        if self.glob is not None:
            dotted = f"{suite}.{spec.test}" if suite else spec.name
            if not (self.glob.match(dotted) or self.glob.match(spec.name)):
                return False
        return True

    def pair(self, spec_env: SpecEnvironment, env: Environment, *, tags: bool = True) -> bool:
        if self.env_names and env.name not in self.env_names:
            return False
        if self.device_types:
            # The spec's dimension, or the environment's when the spec names none (they agree
            # whenever both exist, since the pair matched).
            device_type = spec_env.dimensions.get("device_type") or env.device_type
            if device_type.lower() not in self.device_types:
                return False
        return not tags or not self.tags or not (
            self.tags.isdisjoint(spec_env.tags) and self.tags.isdisjoint(env.tags)
        )

    def tags_equal(self, spec_env: SpecEnvironment) -> bool:
        """testsharder's rule: a test environment runs only when its tags are the selected
        ones, exactly (order aside; no tags selected: only untagged environments run)."""
        return self.tags == frozenset(spec_env.tags)

    def unmatched(self, spec_env: SpecEnvironment) -> bool:
        """Whether a spec environment with no environment to run in is worth reporting:
        only if the filters that can be judged without an environment let it through."""
        if self.env_names:
            return False
        if self.device_types and spec_env.device_type.lower() not in self.device_types:
            return False
        return not self.tags or not self.tags.isdisjoint(spec_env.tags)


def make_plan(
    specs: Iterable[TestSpec],
    envs: EnvironmentSet,
    selection: Selection | None = None,
    *,
    check: Check | None = None,
    testsharder: bool = False,
    bundles: BundleSet | None = None,
) -> Plan:
    """Pair specs with environments, in spec order and then environment name.

    `testsharder`: Fuchsia's matching (see the module docstring), else every
    matching environment. `bundles`: the build's product bundles; without them,
    environments that boot a product bundle are not planned.

    Disabled specs (no environments) are listed when the suite/glob filters select
    them; they never pair. A later entry whose (name, environment) an earlier entry
    already planned is left out and listed in `duplicates` with a warning: results
    are keyed by it, so two runs could not both be reported.
    """
    with paused_gc():
        return _make_plan(specs, envs, selection if selection is not None else Selection(),
                          check, testsharder, bundles)


def default_cpu(dimensions: Mapping[str, str], cpu: str) -> Mapping[str, str]:
    """testsharder's populateEnvDefaults: an emulator or host environment without a `cpu`
    takes the default one (Fuchsia's target_cpu, which is the test's own `cpu` for every
    test a build makes for its target; here the test's)."""
    device_type = dimensions.get("device_type", "")
    if "cpu" in dimensions or not cpu:
        return dimensions
    if device_type and device_type not in EMULATOR_DEVICE_TYPES:
        return dimensions  # hardware: its cpu is the device's, not the build's
    return {**dimensions, "cpu": cpu}


def eligible(spec: TestSpec, env: Environment, *, testsharder: bool) -> bool:
    """Whether `spec` may run on `env` at all, whatever the dimensions say.

    A boot test boots a product bundle, so only an environment that boots one can
    run it. Under Fuchsia's matching, an `os: fuchsia` test needs a guest whose
    profile runs Fuchsia's programs (Zircon) and any other test a guest that does
    not (a Linux guest runs its `path`).
    """
    if spec.is_boot_test:
        return env.image.product_bundle
    if not testsharder:
        return True
    return (get_profile(env.profile).os == "fuchsia") == (spec.os == "fuchsia")


def _tie_key(env: Environment, dims: Mapping[str, str]) -> tuple[int, str]:
    """The plainest environment first: fewest dimensions the test environment did not ask
    for, then the first name in sort order."""
    return (sum(1 for k in env.dimensions if k not in dims), env.name)


def _make_plan(
    specs: Iterable[TestSpec], envs: EnvironmentSet, selection: Selection, check: Check | None,
    testsharder: bool, bundles: BundleSet | None,
) -> Plan:
    sel = _Selector(selection)
    ordered = sorted(envs, key=lambda env: env.name)
    notes: list[str] = []
    if bundles is None:
        skipped = [e.name for e in ordered if e.image.product_bundle]
        if skipped:
            ordered = [e for e in ordered if not e.image.product_bundle]
            notes.append(f"not planned (they boot a build's product bundle; give --build-dir "
                         f"or --product-bundles): {', '.join(skipped)}")
    # Real tests.json files repeat a handful of dimension sets thousands of times.
    matches_for: dict[tuple[tuple[str, str], ...], list[Environment]] = {}
    runs: list[PlannedRun] = []
    disabled: list[TestSpec] = []
    unmatched: list[tuple[TestSpec, SpecEnvironment]] = []
    duplicates: list[PlannedRun] = []
    planned: set[str] = set()
    other_tags = 0
    for spec in specs:
        if not sel.spec(spec):
            continue
        if not spec.environments:
            disabled.append(spec)
            continue
        chosen: dict[str, tuple[Environment, SpecEnvironment]] = {}
        for spec_env in spec.environments:
            if testsharder and not sel.tags_equal(spec_env):
                other_tags += 1
                continue
            dims = default_cpu(spec_env.dimensions, spec.cpu) if testsharder \
                else spec_env.dimensions
            cache_key = tuple(sorted(dims.items()))
            matching = matches_for.get(cache_key)
            if matching is None:
                matching = matches_for[cache_key] = [e for e in ordered if e.matches(dims)]
            candidates = [e for e in matching if eligible(spec, e, testsharder=testsharder)]
            if not candidates:
                if sel.unmatched(spec_env):
                    unmatched.append((spec, spec_env))
                continue
            if testsharder:
                picked = [e for e in candidates if sel.pair(spec_env, e, tags=False)]
                if picked and not sel.env_names:
                    picked = [min(picked, key=lambda e: _tie_key(e, dims))]
                for env in picked:  # environments named with --env: each one the person named
                    chosen.setdefault(env.name, (env, spec_env))
                continue
            for env in candidates:
                if env.name not in chosen and sel.pair(spec_env, env):
                    chosen[env.name] = (env, spec_env)
        for env_name in sorted(chosen):
            env, spec_env = chosen[env_name]
            key = f"{env_name}/{spec.name}"
            if key in planned:
                log.warning("tests.json entry %d duplicates test %r in environment %s; "
                            "keeping the earlier entry", spec.index, spec.name, env_name)
                duplicates.append(PlannedRun(spec=spec, environment=env,
                                             spec_environment=spec_env))
                continue
            planned.add(key)
            skip = check(spec, env) if check is not None else None
            bundle_name, bundle, problem = "", None, None
            if env.image.product_bundle and bundles is not None:
                bundle_name, bundle, problem = bundles.choose(spec.product_bundle, env)
                if not bundle_name:
                    skip = skip or (f"no product bundle to boot: tests.json entry {spec.index} "
                                    "names none and no --product-bundle was given")
                elif bundle is not None:
                    skip = skip or boot_skip(bundle, env)
            runs.append(PlannedRun(spec=spec, environment=env, spec_environment=spec_env,
                                   skip_reason=skip, bundle_name=bundle_name, bundle=bundle,
                                   bundle_problem=problem))
    if other_tags:
        wanted = ", ".join(sorted(sel.tags)) or "none"
        notes.append(f"{other_tags} test environments not planned: their tags are not the "
                     f"selected tags ({wanted}), which testsharder requires exactly")
    return Plan(runs=runs, disabled=disabled, unmatched=unmatched, duplicates=duplicates,
                notes=notes)


def run_environment(run: PlannedRun, entropy_mixin: str = "") -> Environment:
    """The environment one run boots: its environment plus what this run adds.

    The test environment's `emulator.kernel_args` go after the environment's own
    arguments (botanist: the builder's arguments, then the shard environment's); a
    Zircon guest gets `entropy_mixin` (the runner makes a fresh one per boot; a plan
    shows a redacted one); a boot test makes the VMM exit on a guest reset (QEMU
    `-no-reboot`, as run-boot-test.py runs boot tests). A pure function, so that
    `harness plan` prints exactly the argv a run launches.
    """
    env = run.environment
    changes: dict[str, Any] = {}
    extra = run.spec_environment.kernel_args if run.spec_environment is not None else ()
    if extra:
        changes["kernel_args"] = (*env.kernel_args, *extra)
    if entropy_mixin and get_profile(env.profile).takes_entropy_mixin:
        changes["entropy_mixin"] = entropy_mixin
    if run.spec.is_boot_test:
        changes["no_reboot"] = True
    return dataclasses.replace(env, **changes) if changes else env



# ---------------------------------------------------------------------------- sharding


def _validate(index: int | None, total: int, source: str) -> None:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(source, None, "total shards",
                          f"must be a positive integer, got {total!r}")
    if index is not None and (
        isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < total
    ):
        raise ConfigError(source, None, "shard index",
                          f"must be an integer from 0 to {total - 1}, got {index!r}")


def _weights(runs: Sequence[PlannedRun], durations: Mapping[str, float]) -> list[float]:
    """Duration per run; a skipped run costs nothing, an unknown one the median of the known."""
    # A NaN, infinite or negative duration (a hand-edited or corrupt summary) would
    # break the ordering LPT relies on; it counts as unknown.
    usable = {k: float(v) for k, v in durations.items()
              if isinstance(v, int | float) and math.isfinite(v) and v >= 0}
    known = [usable[r.key] for r in runs if r.key in usable]
    if not known:
        known = list(usable.values())
    fallback = statistics.median(known) if known else 1.0
    return [0.0 if r.skip_reason is not None else usable.get(r.key, fallback) for r in runs]


def assign_shards(
    runs: Sequence[PlannedRun],
    total: int,
    durations: Mapping[str, float] | None = None,
    *,
    source: str = "arguments",
) -> list[list[PlannedRun]]:
    """Split runs into `total` shards, each run in exactly one, with `shard` set on it.

    Without durations: round-robin over the runs sorted by key, so shard sizes
    differ by at most one. With durations (seconds by `PlannedRun.key`, from an
    earlier summary.json): longest first onto the least-loaded shard, ties broken
    by key and then by shard number, which is the classic LPT bound (within 4/3 of
    optimal). Each shard keeps the runs in their input (plan) order.
    """
    _validate(None, total, source)
    with paused_gc():
        return _assign_shards(runs, total, durations)


def _assign_shards(
    runs: Sequence[PlannedRun], total: int, durations: Mapping[str, float] | None
) -> list[list[PlannedRun]]:
    order = sorted(range(len(runs)), key=lambda i: runs[i].key)
    shard_of = [0] * len(runs)
    if not durations:
        for position, i in enumerate(order):
            shard_of[i] = position % total
    else:
        weights = _weights(runs, durations)
        order.sort(key=lambda i: -weights[i])  # stable: equal weights stay in key order
        loads = [(0.0, s) for s in range(total)]  # already a heap
        for i in order:
            load, s = heapq.heappop(loads)
            shard_of[i] = s
            heapq.heappush(loads, (load + weights[i], s))
    shards: list[list[PlannedRun]] = [[] for _ in range(total)]
    for run, s in zip(runs, shard_of, strict=True):
        if run.shard != s:
            # dataclasses.replace is several times slower, and this runs per test.
            run = PlannedRun(run.spec, run.environment, run.skip_reason, s, run.spec_environment,
                             run.bundle_name, run.bundle, run.bundle_problem)
        shards[s].append(run)
    return shards


def shard(
    runs: Sequence[PlannedRun],
    index: int,
    total: int,
    *,
    durations: Mapping[str, float] | None = None,
    source: str = "arguments",
) -> list[PlannedRun]:
    """The runs of shard `index` of `total` (0-based, as Bazel and GoogleTest count)."""
    _validate(index, total, source)
    return assign_shards(runs, total, durations, source=source)[index]


_SHARD_VARIABLES = (
    ("TEST_SHARD_INDEX", "TEST_TOTAL_SHARDS"),  # Bazel
    ("GTEST_SHARD_INDEX", "GTEST_TOTAL_SHARDS"),  # GoogleTest
)


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise ConfigError("environment", None, name,
                          f"expected a non-negative integer, got {value!r}") from None
    if number < 0:
        raise ConfigError("environment", None, name,
                          f"expected a non-negative integer, got {value!r}")
    return number


def shard_from_environment(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(index, total) from Bazel's variables, else GoogleTest's, else None.

    A pair is taken as a whole: one variable of a pair without the other is an
    error, since silently running every test on every shard multiplies CI cost.
    """
    for index_name, total_name in _SHARD_VARIABLES:
        has_index, has_total = index_name in environ, total_name in environ
        if not (has_index or has_total):
            continue
        if not has_total:
            raise ConfigError("environment", None, total_name, f"is not set but {index_name} is")
        if not has_index:
            raise ConfigError("environment", None, index_name, f"is not set but {total_name} is")
        total = _int_variable(environ, total_name)
        if total < 1:
            raise ConfigError("environment", None, total_name, f"must be at least 1, got {total}")
        index = _int_variable(environ, index_name)
        if index >= total:
            raise ConfigError("environment", None, index_name,
                              f"must be less than {total_name}={total}, got {index}")
        return index, total
    return None


def acknowledge_sharding(environ: Mapping[str, str]) -> Path | None:
    """Touch Bazel's TEST_SHARD_STATUS_FILE, which tells Bazel this runner shards.

    Without it Bazel assumes every shard ran every test and warns (or fails with
    --incompatible_check_sharding_support). Returns the file touched, if any.
    """
    name = environ.get("TEST_SHARD_STATUS_FILE")
    if not name:
        return None
    path = Path(name)
    try:
        path.touch()
    except OSError as e:
        raise ConfigError("environment", None, "TEST_SHARD_STATUS_FILE",
                          f"cannot touch {name}: {e.strerror}") from None
    return path


# ---------------------------------------------------------------------------- output


def _sharded(plan: Plan, total_shards: int, durations: Mapping[str, float] | None,
             shard_index: int | None = None
             ) -> tuple[list[PlannedRun], list[list[PlannedRun]]]:
    """The plan's runs in plan order with their shards set (only shard `shard_index`'s when
    one is given), and every shard."""
    _validate(shard_index, total_shards, "arguments")
    if total_shards == 1 and all(run.shard == 0 for run in plan.runs):
        runs, shards = plan.runs, [plan.runs]  # one shard: nothing to sort or assign
    else:
        shards = assign_shards(plan.runs, total_shards, durations)
        by_key = {run.key: run for s in shards for run in s}
        runs = [by_key[run.key] for run in plan.runs]
    if shard_index is not None:
        runs = [run for run in runs if run.shard == shard_index]
    return runs, shards


def _run_json(run: PlannedRun, argv: list[str] | None) -> dict[str, Any]:
    return {
        "key": run.key,
        "test": run.spec.name,
        "suite": run.spec.suite,
        "environment": run.environment.name,
        "engine": run.environment.engine,
        "arch": run.environment.arch,
        "device_type": run.environment.device_type,
        "blocking": run.environment.blocking,
        "skip_reason": run.skip_reason,
        "shard": run.shard,
        "product_bundle": run.bundle_name or None,
        "bundle_problem": run.bundle_problem,
        "argv": argv,
    }


def _tail_json(plan: Plan, shards: list[list[PlannedRun]], shard_index: int | None
               ) -> dict[str, Any]:
    """What follows the runs: without a shard index, each shard's keys (a CI matrix); with
    one, which shard the runs are."""
    shard: dict[str, Any] = (
        {"shards": [[run.key for run in s] for s in shards]} if shard_index is None
        else {"shard_index": shard_index, "total_shards": len(shards)})
    return {
        **shard,
        "disabled": [spec.name for spec in plan.disabled],
        "unmatched": [
            {"test": spec.name, "index": spec.index, "dimensions": dict(env.dimensions),
             "tags": list(env.tags)}
            for spec, env in plan.unmatched
        ],
        "duplicates": [{"key": run.key, "index": run.spec.index} for run in plan.duplicates],
        "notes": list(plan.notes),
    }


def plan_json(
    plan: Plan,
    argv_for: Callable[[PlannedRun], list[str] | None],
    total_shards: int = 1,
    durations: Mapping[str, float] | None = None,
    shard_index: int | None = None,
) -> dict[str, Any]:
    """The plan as `harness plan --json` prints it; `argv` is the VMM command, or null.

    With `shard_index`, the runs are that shard's only (what `harness run` with the same
    shard runs); without, every run, and `shards` lists each shard's keys.
    """
    runs, shards = _sharded(plan, total_shards, durations, shard_index)
    return {"runs": [_run_json(run, argv_for(run)) for run in runs],
            **_tail_json(plan, shards, shard_index)}


def write_plan_json(
    plan: Plan,
    argv_for: Callable[[PlannedRun], list[str] | None],
    out: TextIO,
    total_shards: int = 1,
    durations: Mapping[str, float] | None = None,
    shard_index: int | None = None,
) -> int:
    """`plan_json`'s document written to `out` one run at a time; how many runs it holds.

    Building the whole document first costs memory and time in proportion to
    every run's argv (50,000 runs: 1.6 GB and a minute); written run by run, the
    runs the plan already holds are the only large thing in memory.
    """
    runs, shards = _sharded(plan, total_shards, durations, shard_index)
    out.write('{\n "runs": [')
    for i, run in enumerate(runs):
        out.write((",\n  " if i else "\n  ") + json.dumps(_run_json(run, argv_for(run))))
    out.write("\n ]" if runs else "]")
    for key, value in _tail_json(plan, shards, shard_index).items():
        out.write(f",\n {json.dumps(key)}: {json.dumps(value)}")
    out.write("\n}\n")
    return len(runs)


def plan_text(
    plan: Plan,
    total_shards: int = 1,
    durations: Mapping[str, float] | None = None,
    shard_index: int | None = None,
) -> str:
    """A table for people: one line per run (of shard `shard_index` only, when given: what
    `harness run` with that shard runs), then what was disabled, unmatched or duplicated."""
    runs, _ = _sharded(plan, total_shards, durations, shard_index)
    header: tuple[str, ...] = ("SHARD", "ENVIRONMENT", "TEST", "SUITE", "ENGINE", "ARCH",
                               "BLOCKING", "STATUS")
    rows: list[tuple[str, ...]] = [
        (
            str(run.shard),
            name_safe(run.environment.name),
            name_safe(run.spec.name),
            name_safe(run.spec.suite) or "-",
            run.environment.engine,
            run.environment.arch,
            "yes" if run.environment.blocking else "no (FYI)",
            f"skip: {name_safe(run.skip_reason)}" if run.skip_reason is not None
            else f"infra fail: {name_safe(run.bundle_problem)}" if run.bundle_problem is not None
            else "run",
        )
        for run in runs
    ]
    if any(run.bundle_name for run in runs):
        header = (*header[:6], "BUNDLE", *header[6:])
        rows = [(*row[:6], run.bundle_name or "-", *row[6:])
                for row, run in zip(rows, runs, strict=True)]
    if total_shards == 1:
        header, rows = header[1:], [row[1:] for row in rows]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    skipped = sum(run.skip_reason is not None for run in runs)
    where = (f" in shard {shard_index} of {total_shards} (of {len(plan.runs)} in all)"
             if shard_index is not None else
             f" on {total_shards} shards" if total_shards > 1 else "")
    lines.append(f"{len(runs)} runs ({len(runs) - skipped} to run, {skipped} skipped){where}")
    if plan.disabled:
        lines.append("disabled (no environments): "
                     + ", ".join(name_safe(s.name) for s in plan.disabled))
    for spec, env in plan.unmatched:
        dims = ", ".join(f"{k}={v}" for k, v in sorted(env.dimensions.items()))
        lines.append(f"no environment matches {name_safe(spec.name)} [{name_safe(dims)}]")
    for run in plan.duplicates:
        lines.append(f"duplicate ignored: entry {run.spec.index} {name_safe(run.key)}")
    lines.extend(name_safe(note) for note in plan.notes)
    return "\n".join(lines) + "\n"
