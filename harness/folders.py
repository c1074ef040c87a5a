"""Result folder names: readable, safe as file names, and one per test whatever the names.

Folders are named after the test and environment (never after guest output),
with every character outside `[A-Za-z0-9._-]` replaced by `_` and the length
cut to 120. That alone would put `a/b`, `a_b` and `a b` in one folder (three
tests' boots in one serial.log, one repro.sh for three), and two long names
that differ only after 120 characters too. So a name whose safe form was cut,
or is shared with another name of the same run, gets `-` and a short hash of
the whole name appended: stable (the same name gets the same hash in every run
and shard) and still readable. A name that needed no change keeps its plain
folder even when an altered name collides with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

MAX_NAME = 120
HASH_CHARS = 8
# Files the harness writes at the top of a run directory, which an environment's
# folder must not take.
RUN_FILES = frozenset({"junit.xml", "summary.json"})


def safe_name(name: str, limit: int = MAX_NAME) -> str:
    """A file-name-safe form of a test or environment name (cut to `limit`)."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return out[:limit] or "_"


def name_hash(name: str, chars: int = HASH_CHARS) -> str:
    """A short hash of the whole name (lone surrogates from JSON escapes included)."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:chars]


def unique_folders(names: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """A distinct folder name for each distinct name, in a deterministic way.

    Which names get a hash depends only on the set of names, never on their order.
    """
    distinct = sorted(set(names))
    taken_reserved = frozenset(reserved)
    plain: dict[str, list[str]] = {}
    for name in distinct:
        plain.setdefault(safe_name(name, 10 * MAX_NAME), []).append(name)
    out: dict[str, str] = {}
    for full, group in plain.items():
        for name in group:
            if len(full) <= MAX_NAME and full not in taken_reserved and (
                    len(group) == 1 or full == name):
                out[name] = full
    used = set(out.values())
    chars = HASH_CHARS
    pending = [n for n in distinct if n not in out]
    while pending:
        tried = {n: f"{safe_name(n, MAX_NAME - chars - 1)}-{name_hash(n, chars)}" for n in pending}
        counts: dict[str, int] = {}
        for folder in tried.values():
            counts[folder] = counts.get(folder, 0) + 1
        retry = []
        for name, folder in tried.items():
            if folder in used or folder in taken_reserved or counts[folder] > 1:
                retry.append(name)
            else:
                out[name] = folder
        used.update(out[n] for n in pending if n in out)
        pending = retry
        chars *= 2
        if chars > 64:  # a sha256 collision: cannot happen in practice
            raise ValueError(f"no unique folder for {pending[:3]!r}")
    return out


def run_folders(pairs: Iterable[tuple[str, str]]) -> Mapping[tuple[str, str], str]:
    """`ENV/TEST` folder (relative to the run directory) for each (environment, test) pair."""
    pairs = list(pairs)
    envs = unique_folders((env for env, _ in pairs), reserved=RUN_FILES)
    tests_by_env: dict[str, list[str]] = {}
    for env, test in pairs:
        tests_by_env.setdefault(env, []).append(test)
    tests = {env: unique_folders(names) for env, names in tests_by_env.items()}
    return {(env, test): f"{envs[env]}/{tests[env][test]}" for env, test in pairs}
