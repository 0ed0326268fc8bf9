"""``prune``: forget sets by a retention policy and delete what no kept set needs.

The policy follows ``restic forget``: sets are taken newest first; ``last`` keeps the N
newest; ``daily``/``weekly``/``monthly`` keep the newest set of each of the N most recent
days/ISO weeks/months *that have a set*. A set any rule keeps is kept, with every rule
that kept it as the reason. Times are UTC.

What is deleted: every file of a forgotten set that no kept set names (sets may reference
files of earlier sets), files in kept sets' folders that no manifest names (left by an
interrupted write), and incomplete sets older than the newest complete one (a rerun never
resumes those). Incomplete sets newer than that may belong to a running or resumable
backup: they and everything their finished units reference are left alone. A forgotten
set whose files are still referenced keeps those files and a ``forgotten.json`` mark; the
mark goes with its last file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrator.archive.backends import FileBackend
from migrator.archive.layout import set_of
from migrator.archive.manifest import UnitRecord, now
from migrator.archive.repository import (
    COMPLETE,
    FORGOTTEN,
    INCOMPLETE,
    Repository,
    SetInfo,
)
from migrator.errors import PlanError


@dataclass(frozen=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def rules(self) -> list[tuple[str, int]]:
        return [(name, n) for name, n in (("last", self.last), ("daily", self.daily),
                                          ("weekly", self.weekly), ("monthly", self.monthly))
                if n > 0]

    def check(self) -> None:
        for name in ("last", "daily", "weekly", "monthly"):
            if getattr(self, name) < 0:
                raise PlanError(f"--keep-{name}", "must be 0 or more")
        if not self.rules():
            raise PlanError("--keep-last/--keep-daily/--keep-weekly/--keep-monthly",
                            "no retention rule given; prune would forget every set",
                            hint="e.g. --keep-last 3 --keep-daily 7")


def _bucket(rule: str, when: datetime, set_id: str) -> str:
    if rule == "last":
        return set_id
    if rule == "daily":
        return when.strftime("%Y-%m-%d")
    if rule == "weekly":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    return when.strftime("%Y-%m")


def select(sets: list[tuple[str, datetime]], policy: Policy) -> dict[str, list[str]]:
    """Which of ``(set_id, time)`` the policy keeps, each with the rules that keep it."""
    kept: dict[str, list[str]] = {}
    remaining = dict(policy.rules())
    last_bucket: dict[str, str] = {}
    for set_id, when in sorted(sets, key=lambda s: (s[1], s[0]), reverse=True):
        for rule in list(remaining):
            bucket = _bucket(rule, when, set_id)
            if remaining[rule] > 0 and bucket != last_bucket.get(rule):
                last_bucket[rule] = bucket
                remaining[rule] -= 1
                kept.setdefault(set_id, []).append(rule)
    return kept


@dataclass
class PruneReport:
    archive: str
    dry_run: bool
    kept: dict[str, list[str]] = field(default_factory=dict)  # set -> reasons
    forgotten: list[str] = field(default_factory=list)  # complete sets forgotten now
    abandoned: list[str] = field(default_factory=list)  # old incomplete sets removed
    left_alone: list[str] = field(default_factory=list)  # incomplete (recent) or damaged
    deleted_files: int = 0
    deleted_bytes: int = 0
    referenced_files: int = 0  # files of forgotten sets kept because a kept set needs them

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "dry_run": self.dry_run,
                "kept": [{"set": s, "reasons": r} for s, r in sorted(self.kept.items())],
                "forgotten": self.forgotten, "abandoned": self.abandoned,
                "left_alone": self.left_alone, "deleted_files": self.deleted_files,
                "deleted_bytes": self.deleted_bytes,
                "referenced_files_kept": self.referenced_files}


def prune(repo: Repository, policy: Policy, *, dry_run: bool = False) -> PruneReport:
    policy.check()
    report = PruneReport(repo.label, dry_run)
    infos = repo.sets()
    complete = [i for i in infos if i.state == COMPLETE]
    report.kept = select([(i.set_id, i.time) for i in complete], policy)
    newest = max((i.time for i in complete), default=None)
    protected: set[str] = set()  # paths that must stay
    sweep: list[SetInfo] = []  # set folders to delete unprotected files from
    for info in infos:
        if info.state == COMPLETE and info.set_id in report.kept:
            assert info.manifest is not None
            protected.update(f.path for f in info.manifest.files())
            protected.add(repo.layout.manifest(info.set_id))
            sweep.append(info)
        elif info.state == COMPLETE:
            report.forgotten.append(info.set_id)
            sweep.append(info)
        elif info.state == INCOMPLETE and newest is not None and info.time < newest:
            report.abandoned.append(info.set_id)
            sweep.append(info)
        elif info.state == FORGOTTEN:
            sweep.append(info)
        else:  # a recent incomplete set, or a damaged one: leave everything it may need
            report.left_alone.append(info.set_id)
            protected.update(info.stored)
            if info.state == INCOMPLETE:
                protected.update(_referenced_by_records(repo, info))
    for info in sweep:
        _sweep(repo, info, protected, report, forget=info.set_id in report.forgotten
               or info.set_id in report.abandoned)
    return report


def _referenced_by_records(repo: Repository, info: SetInfo) -> set[str]:
    """Files in other sets that the finished units of an incomplete set reference."""
    out: set[str] = set()
    for path in info.stored:
        if "/records/" in path:
            record = UnitRecord.from_dict(repo.read_record(path))
            out.update(f.path for f in record.files if set_of(f.path) != info.set_id)
    return out


def _sweep(repo: Repository, info: SetInfo, protected: set[str], report: PruneReport, *,
           forget: bool) -> None:
    backend, layout = repo.backend, repo.layout
    marker = layout.forgotten(info.set_id)
    going = forget or info.state == FORGOTTEN
    doomed = sorted(p for p in info.stored if p not in protected and p != marker)
    kept_here = [p for p in info.stored if p in protected and p != marker]
    if isinstance(backend, FileBackend):
        doomed += backend.list_tmp(layout.set_dir(info.set_id))
    if going:
        report.referenced_files += len(kept_here)
    report.deleted_files += len(doomed)
    report.deleted_bytes += sum(info.stored.get(p, 0) for p in doomed)
    if report.dry_run:
        return
    if forget and marker not in info.stored:
        # Marked first: from here on, a crash leaves a set that lists as forgotten.
        backend.write_bytes(marker, f'{{"forgotten": "{now()}"}}\n'.encode())
    for path in doomed:
        backend.delete(path)
    if going and not kept_here:
        backend.delete(marker)
