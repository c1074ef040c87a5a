"""The result model: one record per (test, environment), with every attempt kept.

Reporters (JUnit, summary.json, the terminal) read only these records, so a run
can be re-reported, merged across shards, or re-parsed without touching a VMM.
Statuses follow Fuchsia's summary.json vocabulary (tools/testing/runtests/runtests.go),
because its dashboards are the strictest consumer: FAIL is the guest's fault,
INFRA_FAIL the harness's or the host's, ABORT a test that ran out of time or was
interrupted. EXONERATED is only ever read, from Fuchsia's own summary files: a
failure someone declared not critical, which Fuchsia's ResultDB uploader
(tools/testing/resultdb/lib.go) reports as failed *and* exonerated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from pathlib import Path
from typing import Any


class Status(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INFRA_FAIL = "INFRA_FAIL"
    ABORT = "ABORT"
    SKIP = "SKIP"
    EXONERATED = "EXONERATED"

    @property
    def ok(self) -> bool:
        """True when the status does not fail a run.

        A skip is not a pass, but not a failure; an exonerated test failed, but its
        failure was declared not to count, which is what exoneration means to
        ResultDB, so it fails no run either.
        """
        return self in (Status.PASS, Status.SKIP, Status.EXONERATED)


@dataclasses.dataclass
class Case:
    """One individual result inside a test: a zxtest case, a test_bpf test, a device."""

    name: str
    status: Status
    suite: str = ""
    duration_s: float = 0.0
    message: str = ""
    format: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "suite": self.suite,
            "status": self.status.value,
            "duration_s": round(self.duration_s, 6),
            "message": self.message,
            "format": self.format,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Case:
        return cls(
            name=d["name"],
            status=Status(d["status"]),
            suite=d.get("suite", ""),
            duration_s=float(d.get("duration_s", 0.0)),
            message=d.get("message", ""),
            format=d.get("format", ""),
            tags={str(k): str(v) for k, v in d.get("tags", {}).items()},
        )


@dataclasses.dataclass
class Attempt:
    """One execution of a test; retries add attempts, the last one decides."""

    status: Status
    message: str = ""
    details: str = ""
    start_time: dt.datetime = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.UTC)
    )
    duration_s: float = 0.0
    cases: list[Case] = dataclasses.field(default_factory=list)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    serial_tail: str = ""
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "message": self.message,
            "details": self.details,
            "start_time": self.start_time.isoformat(),
            "duration_s": round(self.duration_s, 6),
            "cases": [c.to_json() for c in self.cases],
            "properties": dict(self.properties),
            "serial_tail": self.serial_tail,
            "artifacts": dict(self.artifacts),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attempt:
        return cls(
            status=Status(d["status"]),
            message=d.get("message", ""),
            details=d.get("details", ""),
            start_time=dt.datetime.fromisoformat(d["start_time"]),
            duration_s=float(d.get("duration_s", 0.0)),
            cases=[Case.from_json(c) for c in d.get("cases", [])],
            properties={str(k): str(v) for k, v in d.get("properties", {}).items()},
            serial_tail=d.get("serial_tail", ""),
            artifacts={str(k): str(v) for k, v in d.get("artifacts", {}).items()},
        )


@dataclasses.dataclass
class TestResult:
    """A (test, environment) pair and everything that happened to it."""

    __test__ = False  # not a pytest test class, whatever its name

    test: str
    suite: str
    environment: str
    engine: str
    arch: str
    blocking: bool
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    label: str = ""
    accel: str = ""
    kernel: str = ""
    vmm_version: str = ""  # what the VMM binary says its version is ("" where unknown)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    repro: str = ""
    folder: str = ""
    # A test the crash scan made up (tefmocheck's synthetic tests), not one from tests.json;
    # summary.json's is_testing_failure_mode.
    testing_failure_mode: bool = False
    # The file that defines the test (a suite module), for CI systems that link a test
    # to its source (GitLab's `file` attribute); empty when there is none (tests.json).
    source: str = ""

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def status(self) -> Status:
        return self.final.status if self.attempts else Status.ABORT

    @property
    def flaky(self) -> bool:
        """Failed at least once, then passed."""
        return (
            len(self.attempts) > 1
            and self.status == Status.PASS
            and any(not a.status.ok for a in self.attempts[:-1])
        )

    @property
    def key(self) -> str:
        return f"{self.environment}/{self.test}"

    @property
    def start_time(self) -> dt.datetime:
        return self.attempts[0].start_time if self.attempts else dt.datetime.now(dt.UTC)

    @property
    def duration_s(self) -> float:
        return sum(a.duration_s for a in self.attempts)

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "suite": self.suite,
            "environment": self.environment,
            "engine": self.engine,
            "arch": self.arch,
            "blocking": self.blocking,
            "label": self.label,
            "accel": self.accel,
            "kernel": self.kernel,
            "vmm_version": self.vmm_version,
            "tags": dict(self.tags),
            "repro": self.repro,
            "folder": self.folder,
            "testing_failure_mode": self.testing_failure_mode,
            "source": self.source,
            "attempts": [a.to_json() for a in self.attempts],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TestResult:
        return cls(
            test=d["test"],
            suite=d["suite"],
            environment=d["environment"],
            engine=d["engine"],
            arch=d["arch"],
            blocking=bool(d["blocking"]),
            label=d.get("label", ""),
            accel=d.get("accel", ""),
            kernel=d.get("kernel", ""),
            vmm_version=d.get("vmm_version", ""),
            tags={str(k): str(v) for k, v in d.get("tags", {}).items()},
            repro=d.get("repro", ""),
            folder=d.get("folder", ""),
            testing_failure_mode=bool(d.get("testing_failure_mode", False)),
            source=d.get("source", ""),
            attempts=[Attempt.from_json(a) for a in d.get("attempts", [])],
        )


@dataclasses.dataclass
class RunResult:
    """A whole run: what the reporters write and what `merge` combines."""

    results: list[TestResult]
    out_dir: Path
    interrupted: bool = False
    started: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    duration_s: float = 0.0

    @property
    def blocking_failed(self) -> bool:
        return any(r.blocking and not r.status.ok for r in self.results)

    def totals(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for r in self.results:
            counts[r.status.value] += 1
        counts["FLAKY"] = sum(1 for r in self.results if r.flaky)
        return counts
