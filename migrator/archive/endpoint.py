"""An archive as one more endpoint: a ``Store`` whose data lives in a set of an archive.

A backup is a run whose target is an ``ArchiveStore`` (bound to the run's ``SetWriter``);
a restore is a run whose source is one (bound to a complete set); verify and drills
compare a live store with one. The engine sees an ordinary store; each store kind's
``ArchiveFormat`` decides what the files look like. See ``format.py`` for the contract.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from migrator.archive.format import ArchiveFormat
from migrator.archive.location import parse
from migrator.archive.reader import SetReader, StoreReader, UnitReader
from migrator.archive.repository import Repository
from migrator.archive.writer import SetWriter, StoreWriter
from migrator.config import Endpoint
from migrator.errors import MigrateError, PlanError
from migrator.stores.base import (
    Batch,
    Capabilities,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    Role,
    Selection,
    Store,
    StoreOptions,
    Unit,
)

# store kind -> (module, class) of its archive format, beside the store's wire code.
FORMATS: dict[str, tuple[str, str]] = {
    "redis": ("migrator.stores.redis.archive", "RedisArchive"),
    "mysql": ("migrator.stores.mysql.archive", "MySQLArchive"),
    "mongo": ("migrator.stores.mongo.archive", "MongoArchive"),
    "objects": ("migrator.stores.objects.archive", "ObjectArchive"),
}


def format_for(kind: str) -> ArchiveFormat:
    try:
        module_name, class_name = FORMATS[kind]
    except KeyError:
        raise PlanError(f"store '{kind}'", "has no archive format yet",
                        hint=f"archives hold: {', '.join(FORMATS) or 'no store yet'}") from None
    return getattr(importlib.import_module(module_name), class_name)()


class _UnitImporter(Importer):
    """The format's importer, then the unit's commit: its record is the unit's checkpoint."""

    def __init__(self, inner: Importer, commit: Any) -> None:
        self.inner = inner
        self._commit = commit

    def prepare(self, resumed: bool) -> None:
        self.inner.prepare(resumed)

    def write_batch(self, batch: Batch) -> None:
        self.inner.write_batch(batch)

    def finalize(self) -> None:
        self.inner.finalize()
        self._commit()


class ArchiveStore(Store):
    kind: ClassVar[str] = "archive"
    # A set never changes: one snapshot. Units restart from their start after a kill (a
    # half-written file cannot be continued); see adapt_units.
    capabilities: ClassVar[Capabilities] = Capabilities(
        snapshot_reads=True, resumable_units=False,
        wire_format="the store's own, through its archive format")

    def __init__(self, endpoint: Endpoint, selection: Selection | None = None,
                 options: StoreOptions | None = None, *, format: ArchiveFormat | None = None,
                 writer: SetWriter | None = None, reader: SetReader | None = None) -> None:
        super().__init__(endpoint, selection, options)
        parse(endpoint)  # a malformed archive URL is refused before anything connects
        self.format = format or format_for(endpoint.kind)
        self._writer = writer
        self._reader = reader
        self._repo: Repository | None = None  # opened here (not bound): closed here
        self._source: Store | None = None
        self._previous: SetReader | None | bool = False  # False: not looked up yet
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        if self._writer is None and self._reader is None:
            self._repo = Repository.open(self.endpoint)
            self._reader = self._repo.reader(self.endpoint.options.get("set"))

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def check_access(self, role: Role) -> None:
        if role == Role.TARGET and self._writer is None:
            raise PlanError(self.endpoint.name or "archive", "an archive is written by "
                            "`openim-migrate backup`, not as a plan's target")
        if role == Role.SOURCE:
            self._set().store(self.format.kind)  # the set must hold this store

    def describe(self) -> dict[str, Any]:
        if self._reader is None:
            return {"notes": ["a new set of the archive"]}
        store = self._reader.store(self.format.kind)
        cut = store.cut
        return {"set": self._reader.set_id, "cut": cut.to_dict() if cut else None}

    # -- which set ---------------------------------------------------------------------
    def _set(self) -> SetReader:
        """The set to read: the bound one, or (after a backup's commit) the one written."""
        with self._lock:
            if self._reader is None and self._writer is not None:
                self._reader = self._writer.repo.reader(self._writer.set_id)
            if self._reader is None:
                raise PlanError(self.endpoint.name or "archive", "no set to read")
            return self._reader

    def _store(self) -> StoreReader:
        return self._set().store(self.format.kind)

    def _unit(self, unit: Unit) -> UnitReader:
        return self._store().unit(unit.name)

    def _store_writer(self) -> StoreWriter:
        if self._writer is None:
            raise PlanError(self.endpoint.name or "archive", "this archive endpoint only "
                            "reads; backups write through `openim-migrate backup`")
        return self._writer.store(self.format.kind)

    def _previous_unit(self, name: str) -> UnitReader | None:
        """The same unit in the newest complete set, for incremental formats."""
        with self._lock:
            if self._previous is False:
                try:
                    assert self._writer is not None
                    self._previous = self._writer.repo.reader()
                except MigrateError:
                    self._previous = None
            previous = self._previous
        if not isinstance(previous, SetReader) or self.format.kind not in previous.stores:
            return None
        store = previous.store(self.format.kind)
        return store.unit(name) if name in store.unit_names else None

    # -- source side (restore) -----------------------------------------------------------
    def list_units(self) -> list[Unit]:
        store = self._store()
        units = []
        for name in store.unit_names:
            reader = store.unit(name)
            unit = reader.unit
            units.append(Unit(unit.store, unit.name, dict(unit.spec), reader.records,
                              reader.record.plain_bytes))
        return units

    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]:
        return self.format.export(self._unit(unit), resume_from)

    # -- target side (backup) ------------------------------------------------------------
    def adapt_units(self, units: list[Unit], source: Store) -> list[Unit]:
        """Archive units restart from their start: the engine then never resumes one."""
        return [Unit(u.store, u.name, {**u.spec, "resumable": False}, u.records, u.bytes)
                for u in units]

    def existing(self, units: list[Unit]) -> list[str]:
        if self._writer is None:
            return []
        done = self._store_writer().done_units()
        return [u.key for u in units if u.name in done]

    def prepare_target(self, units: list[Unit], source: Store) -> None:
        store = self._store_writer()
        self._source = source
        store.set_cut(self.format.cut(source))
        self.format.prepare(store, units, source)

    def importer(self, unit: Unit) -> Importer:
        source = self._source
        if source is None:
            raise PlanError(self.endpoint.name or "archive", "prepare_target must run first")
        writer = self._store_writer().unit(unit)
        writer.meta["schema"] = source.schema(unit)
        inner = self.format.importer(writer, source, self._previous_unit(unit.name))
        return _UnitImporter(inner, writer.commit)

    def finalize_target(self, units: list[Unit], source: Store) -> None:
        store = self._store_writer()
        self.format.finalize(store, units, source)
        store.commit({"format_version": self.format.version,
                      "definitions": source.definitions(units)})

    # -- verification --------------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        return self._unit(unit).chunks or [Chunk("all", None)]

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        reader = self._unit(unit)
        recorded = {c.id: c.bounds for c in reader.chunks}
        if not recorded and [c.id for c in chunks] == ["all"]:
            return {"all": ChunkDigest(count=reader.records,
                                       hash=sum(d.hash for d in reader.digests.values())
                                       & ((1 << 128) - 1))}
        if all(c.id in recorded and recorded[c.id] == c.bounds for c in chunks):
            digests = reader.digests
            return {c.id: digests.get(c.id, ChunkDigest()) for c in chunks}
        return self.format.digest(reader, chunks)

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        return self.format.records(self._unit(unit), chunk)

    def same_record(self, source_fp: Any, target_fp: Any) -> bool:
        return self.format.same_record(source_fp, target_fp)

    def schema(self, unit: Unit) -> dict[str, Any]:
        return self.format.schema(self._unit(unit))

    def definitions(self, units: list[Unit]) -> dict[str, Any]:
        return self.format.definitions(self._store())

    def stand_in(self) -> Store | None:
        """The format's stand-in for a live source, for a restore's target."""
        return self.format.stand_in(self._store())


def archive_store(endpoint: Endpoint, selection: Selection | None = None,
                  options: StoreOptions | None = None) -> ArchiveStore:
    """What the store registry makes of an ``archive+…`` URL (a reading endpoint)."""
    return ArchiveStore(endpoint, selection, options)
