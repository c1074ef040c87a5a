"""Combine the result directories of shards into one run directory.

CI splits a job into shards on separate machines; each writes its own run
directory. Merging reads only their summary.json files (never the VMMs'
output), so it can run anywhere the directories are copied to. A directory may
also hold a summary.json written by Fuchsia's own tools (old or new format,
see harness.report.summary): its tests are merged from their Fuchsia fields.

An (environment, test) pair found in two shards is an error, not something to
pick a winner for: plan.py shards deterministically so each pair runs once,
and a duplicate means the shards were planned differently (a changed
tests.json, a mismatched shard count). Keeping either result silently would
report a run nobody made.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path, PurePosixPath

from harness.errors import ConfigError
from harness.report.junit import write_junit
from harness.report.summary import GO_ZERO_TIME, load_summary, run_relative, write_summary
from harness.results import RunResult, TestResult

SUMMARY = "summary.json"
JUNIT = "junit.xml"


def _paths_to_copy(shard: Path, result: TestResult) -> list[str]:
    """The test's folder and any artifact outside it, relative to the shard directory.

    The folder counts even when it was never made (a test skipped before it ran):
    another shard's test must not land in it. An artifact outside the folder counts
    only when it exists: a Fuchsia summary may name files that were not copied
    along with it (its testdata lists `path/to/output.txt` for every test), and
    there is nothing of them to copy or to collide.
    """
    summary = shard / SUMMARY
    rels: list[str] = []
    candidates = [(result.folder, True)] if result.folder else []
    candidates += [(p, False) for a in result.attempts for p in a.artifacts.values()]
    for path, is_folder in candidates:
        if PurePosixPath(path).is_absolute():
            continue  # outside any run directory: nothing of the shard's to copy
        rel = run_relative(shard, path)
        if rel is None or rel == ".":
            raise ConfigError(
                str(summary), result.key, "folder" if is_folder else "output_files",
                f"{path!r} is not a path inside the shard directory; refusing to copy it",
            )
        if not is_folder and not (shard / rel).exists():
            continue
        if not any(rel == r or rel.startswith(r + "/") for r in rels):
            rels.append(rel)
    return rels


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def merge_runs(dirs: list[Path], out: Path) -> RunResult:
    """Merge shard run directories into `out`: test folders, junit.xml, summary.json.

    `out` may be one of the shards (its folders are already in place). Raises
    ConfigError for a missing or bad summary.json, a duplicate (environment,
    test), or two shards whose test folders would land on the same path.
    """
    if not dirs:
        raise ConfigError("merge", None, None, "no shard directories given")
    out = Path(out)
    shards = [(Path(d), load_summary(Path(d) / SUMMARY)) for d in dirs]

    owner: dict[str, Path] = {}
    results: list[TestResult] = []
    copies: list[tuple[Path, str]] = []
    for shard, run in shards:
        for r in run.results:
            if r.key in owner:
                raise ConfigError(
                    str(shard / SUMMARY), r.key, None,
                    f"also in {owner[r.key] / SUMMARY}: each (environment, test) must come "
                    "from one shard only; the shards were planned differently",
                )
            owner[r.key] = shard
            results.append(r)
            for rel in _paths_to_copy(shard, r):
                for other_shard, other in copies:
                    if other_shard != shard and _overlaps(rel, other):
                        raise ConfigError(
                            str(shard / SUMMARY), r.key, "folder",
                            f"{rel!r} collides with {other!r} from {other_shard / SUMMARY}",
                        )
                copies.append((shard, rel))

    out.mkdir(parents=True, exist_ok=True)
    out_real = out.resolve()
    for shard, rel in copies:
        if shard.resolve() == out_real:
            continue
        src, dst = shard / rel, out / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)

    # A Fuchsia file whose tests all carry Go's zero time has no known start; it must not
    # drag the merged run's start back to year 1.
    runs = [run for _, run in shards]
    timed = [run for run in runs if run.started > GO_ZERO_TIME] or runs
    started = min(run.started for run in timed)
    # Shards run side by side, so the merged run lasts from the first start to the last end.
    end = max(run.started + dt.timedelta(seconds=max(run.duration_s, 0.0)) for run in timed)
    merged = RunResult(
        results=results,
        out_dir=out,
        interrupted=any(run.interrupted for run in runs),
        started=started,
        duration_s=(end - started).total_seconds(),
    )
    write_junit(merged, out / JUNIT)
    write_summary(merged, out / SUMMARY)
    return merged
