"""``check``: is every set whole? Modelled on ``restic check``.

Without ``read_data`` it checks the structure: each complete set's manifest decrypts and
matches its own SHA-256, every file it names (its own and those it references in earlier
sets) exists with the stored size, and each unit's chunk digests add up to its record
count. With ``read_data`` it also reads every stored file (or a random ``subset`` percent
of them) and compares its SHA-256, which finds a changed byte without needing to decrypt.

Every problem is collected, each naming the file; nothing stops at the first. Damage
fails the check; an incomplete set (a backup that was interrupted or is running) and
files no manifest names (left by an interrupted write) are warnings.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from migrator.archive.backends import FileBackend
from migrator.archive.manifest import FileEntry
from migrator.archive.repository import COMPLETE, DAMAGED, INCOMPLETE, Repository
from migrator.archive.streams import CHUNK
from migrator.errors import StoreError

DAMAGE, WARNING = "damage", "warning"


@dataclass
class Problem:
    path: str
    problem: str
    severity: str = DAMAGE

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem, "severity": self.severity}


@dataclass
class CheckReport:
    archive: str
    sets: int = 0
    complete: int = 0
    files: int = 0  # distinct files named by the complete sets
    files_read: int = 0
    bytes_read: int = 0
    read_data: bool = False
    subset: float = 100.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def damage(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == DAMAGE]

    @property
    def ok(self) -> bool:
        return not self.damage

    def add(self, path: str, problem: str, severity: str = DAMAGE) -> None:
        self.problems.append(Problem(path, problem, severity))

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "ok": self.ok, "sets": self.sets,
                "complete_sets": self.complete, "files": self.files,
                "files_read": self.files_read, "bytes_read": self.bytes_read,
                "read_data": self.read_data, "subset_percent": self.subset,
                "problems": [p.to_dict() for p in self.problems]}


def check(repo: Repository, *, read_data: bool = False, subset: float = 100.0,
          rng: random.Random | None = None) -> CheckReport:
    report = CheckReport(repo.label, read_data=read_data, subset=subset)
    for name in repo.config.get("encryption", {}).get("key_files") or []:
        if repo.backend.size(name) is None:
            report.add(name, "missing (a key file that config.json names)")
    infos = repo.sets()
    report.sets = len(infos)
    everything: dict[str, int] = {}
    for info in infos:
        everything.update(info.stored)
    named: dict[str, FileEntry] = {}
    for info in infos:
        if info.state == DAMAGED:
            report.add(info.problem_path or info.set_id, f"damaged: {info.problem}; the "
                       f"files of set {info.set_id} were not checked")
        elif info.state == INCOMPLETE:
            report.add(repo.layout.set_dir(info.set_id).rstrip("/"),
                       "incomplete set (no manifest): a backup was interrupted or is still "
                       "running", WARNING)
        if info.state != COMPLETE or info.manifest is None:
            continue
        report.complete += 1
        for entry in info.manifest.files():
            named.setdefault(entry.path, entry)
        for kind, store in info.manifest.stores.items():
            for unit in store.units.values():
                counted = sum(d.count for d in unit.digests.values())
                if unit.digests and counted != unit.records:
                    report.add(repo.layout.manifest(info.set_id),
                               f"{kind}:{unit.name}: chunk digests count {counted} records, "
                               f"the unit {unit.records}")
                unknown = set(unit.digests) - {str(c.get("id")) for c in unit.chunks}
                if unit.chunks and unknown:
                    report.add(repo.layout.manifest(info.set_id),
                               f"{kind}:{unit.name}: digests for chunks it does not list: "
                               f"{', '.join(sorted(unknown))}")
    report.files = len(named)
    for path, entry in sorted(named.items()):
        size = everything.get(path)
        if size is None:
            size = repo.backend.size(path)  # e.g. in a forgotten set's folder
        if size is None:
            report.add(path, "missing")
        elif size != entry.bytes:
            report.add(path, f"{size} bytes stored, the manifest says {entry.bytes} "
                       "(truncated or replaced)")
    _unnamed(repo, infos, named, report)
    if read_data:
        _read_data(repo, named, report, subset, rng or random.Random())
    return report


def _unnamed(repo: Repository, infos: list[Any], named: dict[str, FileEntry],
             report: CheckReport) -> None:
    """Files in a complete set's folder that no manifest names: harmless leftovers."""
    for info in infos:
        if info.state != COMPLETE:
            continue
        manifest = repo.layout.manifest(info.set_id)
        for path in info.stored:
            if path != manifest and path not in named:
                report.add(path, "in no manifest (left by an interrupted write; prune "
                           "removes it)", WARNING)
        if isinstance(repo.backend, FileBackend):
            for path in repo.backend.list_tmp(repo.layout.set_dir(info.set_id)):
                report.add(path, "an unfinished write (prune removes it)", WARNING)


def _read_data(repo: Repository, named: dict[str, FileEntry], report: CheckReport,
               subset: float, rng: random.Random) -> None:
    damaged = {p.path for p in report.damage}
    candidates = sorted(p for p in named if p not in damaged)
    if subset < 100.0:
        count = max(1, round(len(candidates) * subset / 100.0)) if candidates else 0
        candidates = sorted(rng.sample(candidates, count))
    for path in candidates:
        entry = named[path]
        sha, size = hashlib.sha256(), 0
        try:
            stream = repo.backend.open(path)
            try:
                while True:
                    data = stream.read(CHUNK)
                    if not data:
                        break
                    sha.update(data)
                    size += len(data)
            finally:
                getattr(stream, "close", lambda: None)()
        except StoreError as exc:  # unreachable or refused (EndpointError): stop, exit 4
            report.add(path, f"cannot be read ({exc})")
            continue
        report.files_read += 1
        report.bytes_read += size
        if size != entry.bytes:
            report.add(path, f"{size} bytes read, the manifest says {entry.bytes}")
        elif sha.hexdigest() != entry.sha256:
            report.add(path, "its SHA-256 differs from the manifest's (changed bytes)")
