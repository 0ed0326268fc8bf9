"""Backups and restores: ordinary runs whose target (backup) or source (restore) is an
archive, through the same Transfer, Session, journal rules and verify as `run`.

* ``backup``: lists each source's units, starts a set that records them (so a rerun after
  a kill finishes the same units), copies every unit not yet stored into the set, and
  writes the manifest last. The set is its own journal: a unit whose record is stored is
  done, so a backup resumes from the archive alone (a CronJob's pod keeps no state).
* ``restore``: a complete set into live targets, resumable through a journal on disk,
  refusing a non-empty target unless told, then a verify of every unit against the
  digests the manifest recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrator.archive import Manifest, Repository
from migrator.archive.endpoint import ArchiveStore
from migrator.archive.reader import SetReader
from migrator.archive.writer import SetWriter
from migrator.config import Endpoint
from migrator.engine.journal import COPIED, Journal
from migrator.engine.operations import select_units
from migrator.engine.session import Session, effective_selection, make_store
from migrator.engine.transfer import RunResult, Transfer
from migrator.engine.verify import VerifyReport, verify
from migrator.errors import PlanError, UsageError
from migrator.openim import cross_checks
from migrator.plan import Options, Plan, StorePair
from migrator.progress import NullProgress, Progress
from migrator.stores import registry
from migrator.stores.base import Selection, Store, StoreOptions, Unit


@dataclass
class Source:
    """One store to back up: where it is and what of it."""

    endpoint: Endpoint
    selection: Selection = field(default_factory=Selection)


def archive_as(archive: Endpoint, kind: str, *, role: str, set_id: str | None = None
               ) -> Endpoint:
    """The archive endpoint seen as one store kind (its format), e.g. for a restore."""
    options = dict(archive.options)
    if set_id is not None:
        options["set"] = set_id
    return dataclasses.replace(archive, kind=kind, name=f"archive ({kind} {role})",
                               options=options)


def sources_fingerprint(sources: dict[str, Source]) -> str:
    """What a resumed backup must match: the same stores and selections (not tunables)."""
    data = {kind: [s.endpoint.to_dict(), dataclasses.asdict(s.selection)]
            for kind, s in sorted(sources.items())}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def scratch_journal() -> Iterator[Path]:
    """A journal file for one process: where the archive holds the progress (backups) or
    nothing is to be resumed (drills)."""
    with tempfile.TemporaryDirectory(prefix="openim-migrate-") as folder:
        yield Path(folder) / "journal.sqlite"


# -- backup ------------------------------------------------------------------------------
@dataclass
class BackupOutcome:
    archive: str
    set_id: str
    resumed: bool
    copy: RunResult
    manifest: Manifest | None = None  # None: not complete (failed or interrupted)
    skipped_units: int = 0  # stored by the run that was interrupted

    def to_dict(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "archive": self.archive, "set": self.set_id, "resumed": self.resumed,
            "complete": manifest is not None, "seconds": round(self.copy.seconds, 3),
            "units_already_stored": self.skipped_units,
            "totals": manifest.totals() if manifest else None,
            "cuts": ({k: s.cut.to_dict() if s.cut else None
                      for k, s in manifest.stores.items()} if manifest else None),
            "units": [vars(o) for o in self.copy.outcomes],
        }


def _list_units(kind: str, source: Source, options: StoreOptions) -> list[Unit]:
    store = registry.make_store(source.endpoint, effective_selection(kind, source.selection),
                                options)
    store.open()
    try:
        return store.list_units()
    finally:
        store.close()


def backup(name: str, sources: dict[str, Source], archive: Endpoint, options: Options, *,
           progress: Progress | None = None, stop: threading.Event | None = None
           ) -> BackupOutcome:
    """One set of every source in ``archive`` (created if new); resumes an interrupted set
    of the same sources."""
    if not sources:
        raise UsageError("nothing to back up: give a plan or --source KIND=URL")
    fingerprint = sources_fingerprint(sources)
    with Repository.open(archive, create=True) as repo:
        resume = repo.resumable_set(fingerprint)
        writer = _begin(repo, name, fingerprint, sources, options, resume)
        units = {kind: [Unit.from_dict(u) for u in listed]
                 for kind, listed in writer.start.units.items()}

        def factory(endpoint: Endpoint, selection: Selection, opts: StoreOptions) -> Store:
            if endpoint.url == archive.url:
                return ArchiveStore(endpoint, selection, opts, writer=writer)
            return make_store(endpoint, selection, opts)

        pairs = {kind: StorePair(kind, s.endpoint, archive_as(archive, kind, role="target"),
                                 s.selection) for kind, s in sources.items()}
        plan = Plan(name=name, stores=pairs, options=options)
        with scratch_journal() as path, Journal(path).open() as journal, \
                Session(pairs, options, journal, factory=factory) as session:
            done = 0
            for kind in pairs:
                session.check_access(kind)
                source, target = session.pair(kind)
                adapted = target.adapt_units(units.get(kind, []), source)
                plan.inventory.extend(adapted)
                stored = writer.unit_records(kind)
                for unit in adapted:  # stored by an interrupted run: done
                    if unit.name in stored:
                        journal.set_state(unit.key, kind, unit.name, COPIED)
                        done += 1
            journal.bind_plan(plan.fingerprint(), restart=False)
            result = Transfer(plan, journal, session, progress=progress or NullProgress(),
                              stop=stop).run()
        outcome = BackupOutcome(repo.label, writer.set_id, resume is not None, result,
                                skipped_units=done)
        if not result.failed and not result.interrupted:
            outcome.manifest = writer.commit(plan.inventory)
        return outcome


def _begin(repo: Repository, name: str, fingerprint: str, sources: dict[str, Source],
           options: Options, resume: str | None) -> SetWriter:
    if resume is not None:
        writer = repo.begin_set(plan_name=name, plan_fingerprint=fingerprint,
                                stores=list(sources), resume=resume)
        if set(writer.start.units) == set(sources):
            return writer
    store_options = options.store_options()
    listed = {kind: [u.to_dict() for u in _list_units(kind, s, store_options)]
              for kind, s in sources.items()}
    return repo.begin_set(plan_name=name, plan_fingerprint=fingerprint, stores=list(sources),
                          units=listed)


# -- restore -----------------------------------------------------------------------------
@dataclass
class RestoreOutcome:
    archive: str
    set_id: str
    set_started: str  # when the set's backup began: its data is at least this old
    copy: RunResult
    verify: VerifyReport | None = None
    seconds: float = 0.0
    verify_seconds: float = 0.0
    stores: dict[str, dict[str, int]] = field(default_factory=dict)  # records/bytes by kind

    @property
    def ok(self) -> bool:
        return (not self.copy.failed and not self.copy.interrupted
                and self.verify is not None and self.verify.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "set": self.set_id, "set_started": self.set_started,
                "seconds": round(self.seconds, 3),
                "copy_seconds": round(self.copy.seconds, 3),
                "verify_seconds": round(self.verify_seconds, 3), "stores": self.stores,
                "units": [vars(o) for o in self.copy.outcomes],
                "verify": self.verify.to_dict() if self.verify else None}


def restore_journal_path(set_id: str, targets: dict[str, Endpoint]) -> Path:
    """Where a restore's journal lives by default: per set and targets, in the user's
    state folder, so rerunning the same command resumes it."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha256(json.dumps({k: e.to_dict() for k, e in sorted(targets.items())},
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    return base / "openim-migrate" / f"restore-{set_id}-{key}.sqlite"


def open_set(archive: Endpoint) -> tuple[str, SetReader, str]:
    """The set a restore reads (``archive.options['set']`` or the newest complete one)."""
    with Repository.open(archive) as repo:
        reader = repo.reader(archive.options.get("set"))
        return repo.label, reader, reader.manifest.start.started


def restore(archive: Endpoint, targets: dict[str, Endpoint], options: Options, *,
            stores: tuple[str, ...] = (), unit_patterns: tuple[str, ...] = (),
            journal: Path | None = None, restart: bool = False,
            progress: Progress | None = None, stop: threading.Event | None = None
            ) -> RestoreOutcome:
    """A set into live ``targets`` (by store kind), then verify against the manifest."""
    started = time.monotonic()
    label, reader, started_at = open_set(archive)
    kinds = list(stores) or list(reader.stores)
    for kind in kinds:
        if kind not in reader.stores:
            raise UsageError(f"--store {kind}: set {reader.set_id} holds "
                             f"{', '.join(reader.stores) or 'no store'}")
        if kind not in targets:
            raise UsageError(f"set {reader.set_id} holds {kind}: give --target {kind}=URL "
                             f"(or --store to restore only some stores)")
    extra = sorted(set(targets) - set(kinds))
    if extra:
        raise UsageError(f"--target {extra[0]}: the restore does not include that store "
                         f"(set {reader.set_id} holds {', '.join(reader.stores)})")
    pairs = {kind: StorePair(kind, archive_as(archive, kind, role="source",
                                              set_id=reader.set_id), targets[kind])
             for kind in kinds}
    plan = Plan(name=f"restore-{reader.set_id}", stores=pairs, options=options)
    path = journal or restore_journal_path(reader.set_id, targets)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Journal(path).open() as jour, Session(pairs, options, jour) as session:
        for kind in kinds:
            session.check_access(kind)
            source, target = session.pair(kind)
            plan.inventory.extend(target.adapt_units(source.list_units(), source))
        plan.inventory = select_units(plan, unit_patterns)
        if restart and jour.has_progress():
            options.on_existing = "overwrite"  # what is there is our partial restore
        jour.bind_plan(plan.fingerprint(), restart=restart)
        if not jour.has_progress() and options.on_existing == "fail":
            for kind in kinds:
                _, target = session.pair(kind)
                plan.existing.extend(target.existing(plan.units_of(kind)))
            if plan.existing:
                refuse_non_empty(plan)
        result = Transfer(plan, jour, session, progress=progress or NullProgress(),
                          stop=stop).run()
        outcome = RestoreOutcome(label, reader.set_id, started_at, result)
        if not result.failed and not result.interrupted:
            began = time.monotonic()
            whole = None if unit_patterns else {k: plan.units_of(k) for k in kinds}
            outcome.verify = verify(plan.inventory, session, parallel=options.parallel,
                                    journal=jour, whole=whole,
                                    checks=None if unit_patterns else cross_checks(
                                        plan, restored=True))
            outcome.verify_seconds = time.monotonic() - began
    for o in result.outcomes:
        kind = o.key.split(":", 1)[0]
        totals = outcome.stores.setdefault(kind, {"records": 0, "bytes": 0})
        totals["records"] += o.records
        totals["bytes"] += o.bytes
    outcome.seconds = time.monotonic() - started
    return outcome


def refuse_non_empty(plan: Plan) -> None:
    from migrator.errors import TargetNotEmpty

    shown = ", ".join(plan.existing[:5]) + (" …" if len(plan.existing) > 5 else "")
    raise TargetNotEmpty(f"the target already holds data for {len(plan.existing)} unit(s): "
                         f"{shown}", hint="restore into empty stores, or pass --on-existing "
                         "overwrite (replace what is there) or skip")


def check_targets(targets: dict[str, Endpoint]) -> None:
    """A restore's targets are live stores: an archive URL there is a mistake."""
    for kind, endpoint in targets.items():
        if endpoint.url.startswith("archive+"):
            raise PlanError(endpoint.name or f"--target {kind}",
                            "a restore writes into live stores, not into an archive",
                            hint="use `openim-migrate backup` to write an archive")
