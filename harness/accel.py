"""The one KVM verdict, and what a VMM launch needs from the host: its binary and accelerator.

Opening /dev/kvm proves nothing (a nested paravirtual KVM opens, then fails every
real guest), so whether KVM works is decided by a probe boot under it
(harness.kvmprobe), once, and kept in one cache file for both engines, keyed by
what the answer depends on: the engine and its binary (path, size, mtime: a
rebuilt VMM is probed again), the guest arch, the image the probe boots (an
image that cannot boot must not condemn the VMM for the others) and the host's
kernel. Probes of one arch wait for each other under one lock per arch: the
environments of an arch starting together get one probe, not one each, while
the other arch's verdict does not wait.

Everything else that decides a launch is resolved here too, before any command
line is built (`resolve`, `planned`): which binary (`Engine.locate`) and, from
the environment's accel policy and the verdict, "kvm" or "tcg". The result, a
`VmmSetup`, goes into `Engine.command()`, which reads nothing itself. `harness
plan` uses the cached verdict only (it never boots anything) and says when
there is none yet; `harness run` and `harness doctor` probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from harness.cache import cache_dir
from harness.engines.base import Engine, EnvironmentUnavailable, VmmSetup
from harness.environments import Environment, ImageRef
from harness.images.environment import EMBEDDED_PROFILE
from harness.kvmprobe import probe_boot

CACHE_FILE = "kvm-verdict.json"
# What proves KVM for an environment that boots a build's product bundle: its image is each
# test's, and has no shell to reach, so the embedded Linux guest of the arch boots instead.
PRODUCT_BUNDLE_PROBE_IMAGE = "debian-generic"
NOT_PROBED = "not probed yet"

Probe = Callable[[Engine, Environment, str], Awaitable[tuple[bool, str]]]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether KVM runs guests for one engine binary, arch and probe image; and why."""

    kvm: bool
    reason: str


def probe_environment(env: Environment) -> Environment:
    """The environment whose boot proves KVM for `env`: itself, or for one that boots a
    product bundle, the same machine with the embedded Linux guest (whose verdict the
    Linux environments of that engine and arch share)."""
    if not env.image.product_bundle:
        return env
    return dataclasses.replace(env, profile=EMBEDDED_PROFILE, kernel_args=(),
                               image=ImageRef(name=PRODUCT_BUNDLE_PROBE_IMAGE))


class Accel:
    """The KVM verdicts of this host (one cache file, one lock per arch), and the setup of
    each launch resolved from them."""

    def __init__(self, cache: Path | None = None, *, probe: Probe = probe_boot) -> None:
        """`cache`: the directory of the verdict file (default: harness.cache.cache_dir(),
        read when first needed); `probe`: the probe boot (tests give a stand-in)."""
        self._cache = cache
        self._probe = probe
        self._known: dict[str, Verdict] = {}
        self._locks: dict[str, anyio.Lock] = {}

    @property
    def file(self) -> Path:
        return (self._cache or cache_dir()) / CACHE_FILE

    # -- the verdict -------------------------------------------------------------------------

    @staticmethod
    def key(engine: Engine, binary: str, env: Environment) -> str:
        """What a verdict depends on (see the module docstring), as the cache's key."""
        try:
            st = os.stat(binary)
            identity = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            identity = "missing"
        probe = probe_environment(env)
        image = probe.image.name if probe.image.embedded else str(probe.image.kernel)
        return (f"{engine.name}|{binary}|{identity}|{env.arch}|{image}|"
                f"{platform.release()}")

    def cached(self, engine: Engine, env: Environment,
               binary: str | None = None) -> Verdict | None:
        """The verdict on record for `env` (this run's, else the cache file's), or None.

        `binary`: the engine's, when the caller has looked it up already."""
        binary = binary or _usable(engine, env)
        if binary is None:
            return None
        key = self.key(engine, binary, env)
        if key in self._known:
            return self._known[key]
        try:
            entry = json.loads(self.file.read_text())[key]
            verdict = Verdict(bool(entry["kvm"]), str(entry["reason"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._known[key] = verdict
        return verdict

    def store(self, engine: Engine, env: Environment, verdict: Verdict,
              binary: str | None = None) -> None:
        """Record a verdict for `env` (a probe's; also how a person or a test overrides one).

        A cache that cannot be written costs a probe per run, no more."""
        binary = binary or _usable(engine, env)
        if binary is None:
            return
        key = self.key(engine, binary, env)
        self._known[key] = verdict
        path = self.file
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    data = {}
            except (OSError, ValueError):
                data = {}
            data[key] = {"kvm": verdict.kvm, "reason": verdict.reason, "when": time.time()}
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)

    def known(self, engine: Engine, env: Environment, binary: str) -> Verdict | None:
        """The verdict without a probe: the engine's cheap checks (never recorded: they
        change when a module is loaded or a permission given), else the record."""
        problem = engine.kvm_precheck(env.arch)
        if problem is not None:
            return Verdict(False, problem)
        return self.cached(engine, env, binary)

    async def verdict(self, engine: Engine, env: Environment, binary: str) -> Verdict:
        """Whether KVM runs `env`'s guests with `binary`: what is known, else a probe
        boot (recorded)."""
        lock = self._locks.setdefault(env.arch, anyio.Lock())
        async with lock:
            known = self.known(engine, env, binary)
            if known is not None:
                return known
            ok, reason = await self._probe(engine, probe_environment(env), binary)
            verdict = Verdict(ok, reason)
            self.store(engine, env, verdict, binary)
            return verdict

    # -- a launch's setup ----------------------------------------------------------------------

    async def resolve(self, engine: Engine, env: Environment) -> VmmSetup:
        """The binary and accelerator `env` launches with, probing KVM if it must; raises
        EnvironmentUnavailable saying why `env` cannot run on this host."""
        found = engine.locate(env.arch)
        if found.problem is not None or found.path is None:
            raise EnvironmentUnavailable(found.problem or f"no {found.name} binary")
        version = await engine.version(found.path)
        if not _uses_kvm(engine, env):
            return VmmSetup(found.path, _without_kvm(engine, env), version)
        verdict = await self.verdict(engine, env, found.path)
        return VmmSetup(found.path, _accel(engine, env, verdict), version)

    def planned(self, engine: Engine, env: Environment) -> tuple[VmmSetup, str | None]:
        """The setup a command line shows without probing, and a note when a run may launch
        something else or not at all (no binary, KVM not probed yet or not working)."""
        found = engine.locate(env.arch)
        note = found.problem
        if not _uses_kvm(engine, env):
            return VmmSetup(found.shown, _without_kvm(engine, env)), note
        verdict = self.known(engine, env, found.path) if found.problem is None and found.path \
            else None
        if verdict is None:
            accel = "tcg" if env.accel == "auto" and "tcg" in engine.accelerators else "kvm"
            note = note or (f"KVM not probed yet for {engine.name} on {env.arch}: the run "
                            f"probes it first and uses KVM where the probe boot works")
            return VmmSetup(found.shown, accel), note
        try:
            return VmmSetup(found.shown, _accel(engine, env, verdict)), note
        except EnvironmentUnavailable as e:
            return VmmSetup(found.shown, "kvm"), note or str(e)


def _usable(engine: Engine, env: Environment) -> str | None:
    """The engine's binary for `env`, if one is found that can run."""
    found = engine.locate(env.arch)
    return found.path if found.problem is None else None


def _uses_kvm(engine: Engine, env: Environment) -> bool:
    """Whether the verdict matters: the engine can use KVM and the policy allows it."""
    return "kvm" in engine.accelerators and env.accel != "tcg"


def _without_kvm(engine: Engine, env: Environment) -> str:
    """The accelerator of an engine that never uses KVM, or of a `tcg` environment."""
    if env.accel in engine.accelerators:
        return env.accel
    return engine.accelerators[0]


def _accel(engine: Engine, env: Environment, verdict: Verdict) -> str:
    """The environment's accel policy applied to the verdict."""
    if verdict.kvm:
        return "kvm"
    if "tcg" not in engine.accelerators:
        raise EnvironmentUnavailable(f"{engine.name} cannot boot a guest here: {verdict.reason}")
    if env.accel == "kvm":
        raise EnvironmentUnavailable(
            f"environment requires KVM, which does not work here: {verdict.reason}")
    return "tcg"
