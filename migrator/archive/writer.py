"""Writing a set: what a store's archive format uses to put its files into an archive.

``SetWriter`` (one per backup run) -> ``StoreWriter`` (one per store kind) -> ``UnitWriter``
(one per unit). A format opens named files in its unit's folder and writes plain bytes;
each ``ArchiveFile`` compresses, encrypts and hashes on the way. When a unit's copy is
complete the format (or the archive endpoint) calls ``UnitWriter.commit()``, which stores
the unit's record (files, record count, chunk digests) at once: a run killed later
resumes with that unit done, the same rule as the engine's journal. ``SetWriter.commit()``
gathers every record into the manifest and writes it last, which makes the set complete.

All writers are thread-safe: units run in parallel, and a format may write several files
of one unit at once (e.g. objects copied by a pool).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from migrator.archive.files import ArchiveFile, read_json, write_json
from migrator.archive.layout import set_of
from migrator.archive.manifest import (
    Cut,
    FileEntry,
    Manifest,
    SetStart,
    StoreRecord,
    UnitRecord,
    now,
)
from migrator.errors import StoreError
from migrator.stores.base import Chunk, ChunkDigest, Unit

if TYPE_CHECKING:
    from migrator.archive.repository import Repository


class UnitWriter:
    """One unit's folder in a set. Starting one forgets an earlier, unfinished attempt's
    record; files of the same name are replaced."""

    def __init__(self, store: StoreWriter, unit: Unit) -> None:
        self.store = store
        self.unit = unit
        self.meta: dict[str, Any] = {}  # the format's unit-level facts, kept in the manifest
        self._repo = store.repo
        self._files: dict[str, FileEntry] = {}
        self._digests: dict[str, ChunkDigest] = {}
        self._chunks: list[dict[str, Any]] = []
        self._records = 0
        self._started = now()
        self._lock = threading.Lock()
        self._committed = False

    # -- files -----------------------------------------------------------------------
    def open(self, name: str, meta: dict[str, Any] | None = None) -> ArchiveFile:
        """A new file ``name`` (may hold ``/`` for sub-folders) in this unit's folder;
        write plain bytes, then close it (or leave its ``with`` block) to keep it."""
        self._check_open()
        path = self._repo.layout.unit_file(self.store.set_id, self.store.kind, self.unit.name,
                                           name)
        return self._repo.new_file(path, name=name, meta=meta, on_close=self._add)

    def reference(self, entry: FileEntry, name: str | None = None) -> None:
        """Reuse a file stored by an earlier set of this archive instead of storing it
        again (incremental backups); prune keeps it while any kept set refers to it."""
        self._check_open()
        if set_of(entry.path) is None:
            raise StoreError(f"{entry.path}: only files inside a set can be referenced")
        self._add(FileEntry(name=name or entry.name, path=entry.path, bytes=entry.bytes,
                            plain_bytes=entry.plain_bytes, sha256=entry.sha256,
                            meta=dict(entry.meta)))

    def _add(self, entry: FileEntry) -> None:
        with self._lock:
            self._files[entry.name] = entry

    @property
    def files(self) -> list[FileEntry]:
        with self._lock:
            return list(self._files.values())

    # -- counts and digests ----------------------------------------------------------
    def set_chunks(self, chunks: Iterable[Chunk]) -> None:
        """The source's chunks (``Store.chunks(unit)``) the digests below are keyed by."""
        with self._lock:
            self._chunks = [{"id": c.id, "bounds": c.bounds} for c in chunks]
            for chunk in self._chunks:
                self._digests.setdefault(chunk["id"], ChunkDigest())

    def record(self, chunk_id: str, record_hash: int) -> None:
        """One record stored: counted, and added to its chunk's digest (the same
        per-record hash the store's ``digest()`` uses, so verify can compare)."""
        with self._lock:
            self._records += 1
            self._digests.setdefault(chunk_id, ChunkDigest()).add(record_hash)

    def add_digests(self, digests: dict[str, ChunkDigest]) -> None:
        """Merge digests computed elsewhere (e.g. per batch); their counts are records."""
        with self._lock:
            for chunk_id, digest in digests.items():
                self._digests.setdefault(chunk_id, ChunkDigest()).merge(digest)
                self._records += digest.count

    def count(self, records: int) -> None:
        """Records stored without a digest (a format that cannot hash them)."""
        with self._lock:
            self._records += records

    @property
    def records(self) -> int:
        return self._records

    # -- the end ---------------------------------------------------------------------
    def commit(self) -> UnitRecord:
        """The unit is complete: store its record. Idempotent."""
        with self._lock:
            record = UnitRecord(store=self.store.kind, name=self.unit.name,
                                unit=self.unit.to_dict(), records=self._records,
                                digests=dict(self._digests),
                                files=sorted(self._files.values(), key=lambda f: f.name),
                                meta=dict(self.meta), started=self._started, finished=now(),
                                chunks=list(self._chunks))
            self._committed = True
        self._repo.write_record(self._repo.layout.unit_record(self.store.set_id,
                                                              self.store.kind, self.unit.name),
                                record.to_dict())
        return record

    def _check_open(self) -> None:
        if self._committed:
            raise StoreError(f"unit {self.unit.key}: written to after its commit")


class StoreWriter:
    """One store's part of a set: its cut, store-level files, and its units."""

    def __init__(self, set_writer: SetWriter, kind: str) -> None:
        self.set_writer = set_writer
        self.repo = set_writer.repo
        self.set_id = set_writer.set_id
        self.kind = kind
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        path = self.repo.layout.store_record(self.set_id, kind)
        earlier = self.repo.read_record(path) if self.repo.backend.size(path) is not None \
            else None
        self._record = StoreRecord.from_dict(earlier) if earlier else StoreRecord(kind=kind)
        self._record.complete = False  # a resumed run finalizes again

    @property
    def cut(self) -> Cut | None:
        return self._record.cut

    def set_cut(self, cut: Cut) -> None:
        """Record when this store was read. A run resumed later (after a kill) reads the
        rest at another time: the set then says it is no snapshot, and why."""
        with self._lock:
            earlier = self._record.cut
            if earlier is not None and earlier.time != cut.time:
                cut = Cut(time=earlier.time, snapshot=False,
                          detail=f"resumed: units read from {earlier.time} to {cut.time}; "
                          f"first cut: {earlier.detail or 'n/a'}")
            self._record.cut = cut
        self._save()

    def open(self, name: str, meta: dict[str, Any] | None = None) -> ArchiveFile:
        """A store-level file (not of any unit), e.g. MySQL views or bucket settings."""
        path = self.repo.layout.store_file(self.set_id, self.kind, name)
        return self.repo.new_file(path, name=name, meta=meta, on_close=self._add)

    def _add(self, entry: FileEntry) -> None:
        with self._lock:
            self._record.files = [f for f in self._record.files if f.name != entry.name]
            self._record.files.append(entry)
        self._save()

    def unit(self, unit: Unit) -> UnitWriter:
        """A fresh writer for ``unit`` (an earlier unfinished attempt is forgotten)."""
        if unit.store != self.kind:
            raise StoreError(f"unit {unit.key} is not of store {self.kind}")
        self.repo.backend.delete(self.repo.layout.unit_record(self.set_id, self.kind,
                                                              unit.name))
        return UnitWriter(self, unit)

    def done_units(self) -> dict[str, UnitRecord]:
        """Units whose record is stored (complete), by name: what a resumed run skips."""
        return self.set_writer.unit_records(self.kind)

    def commit(self, meta: dict[str, Any] | None = None) -> None:
        """Every unit of this store is in; the format's store-level work is done."""
        with self._lock:
            if meta:
                self._record.meta.update(meta)
            self._record.complete = True
        self._save()

    def _save(self) -> None:
        # One save at a time, so an older snapshot of the record never lands last.
        with self._save_lock:
            with self._lock:
                data = self._record.to_dict(with_units=False)
            self.repo.write_record(self.repo.layout.store_record(self.set_id, self.kind), data)


class SetWriter:
    """One backup run's set. New sets are named by their start time; a resumed one keeps
    its name, start record and the units it already holds."""

    def __init__(self, repo: Repository, start: SetStart) -> None:
        self.repo = repo
        self.start = start
        self.set_id = start.set_id
        self._stores: dict[str, StoreWriter] = {}
        self._lock = threading.Lock()

    def store(self, kind: str) -> StoreWriter:
        if kind not in self.start.stores:
            raise StoreError(f"set {self.set_id} was started for {', '.join(self.start.stores)}"
                             f", not {kind}")
        with self._lock:
            if kind not in self._stores:
                self._stores[kind] = StoreWriter(self, kind)
            return self._stores[kind]

    def unit_records(self, kind: str) -> dict[str, UnitRecord]:
        layout = self.repo.layout
        out = {}
        for path, _ in self.repo.backend.files(layout.unit_records_dir(self.set_id, kind)):
            record = UnitRecord.from_dict(self.repo.read_record(path))
            out[record.name] = record
        return out

    def commit(self, units: Iterable[Unit] | None = None) -> Manifest:
        """Write the manifest, last: from now on the set is complete. Refuses when a store
        was not finalized, an expected unit has no record, or a file is missing."""
        layout, backend = self.repo.layout, self.repo.backend
        stores: dict[str, StoreRecord] = {}
        for kind in self.start.stores:
            path = layout.store_record(self.set_id, kind)
            if backend.size(path) is None:
                raise StoreError(f"set {self.set_id}: store {kind} was never started")
            record = StoreRecord.from_dict(self.repo.read_record(path))
            if not record.complete:
                raise StoreError(f"set {self.set_id}: store {kind} was not finalized")
            record.units = self.unit_records(kind)
            stores[kind] = record
        have = {(kind, name) for kind, record in stores.items() for name in record.units}
        missing = [u.key for u in units or () if (u.store, u.name) not in have]
        if missing:
            raise StoreError(f"set {self.set_id}: {len(missing)} unit(s) have no record, "
                             f"e.g. {missing[0]}", hint="run the backup again to copy them")
        manifest = Manifest(start=self.start, finished="", stores=stores,
                            compression={"codec": "zstd", "level": self.repo.level},
                            encryption=self.repo.cipher.scheme)
        self._check_files(manifest)
        manifest.finished = now()
        backend.sync()
        write_json(backend, layout.manifest(self.set_id), self.repo.cipher, self.repo.level,
                   manifest.to_dict())
        backend.sync()
        # The manifest holds everything the records held; they are no longer needed.
        for path, _ in list(backend.files(layout.set_dir(self.set_id))):
            if layout.is_bookkeeping(self.set_id, path):
                backend.delete(path)
        return manifest

    def _check_files(self, manifest: Manifest) -> None:
        wanted: dict[str, FileEntry] = {f.path: f for f in manifest.files()}
        listed: dict[str, int] = {}
        for set_id in sorted({set_of(p) or "" for p in wanted}):
            listed.update(self.repo.backend.files(self.repo.layout.set_dir(set_id)))
        for path, entry in sorted(wanted.items()):
            if listed.get(path) != entry.bytes:
                state = "missing" if path not in listed else f"{listed[path]} bytes, " \
                    f"expected {entry.bytes}"
                raise StoreError(f"set {self.set_id}: {path} is {state}; the set is not "
                                 "committed", hint="run the backup again")


def read_start(repo: Repository, set_id: str) -> SetStart:
    return SetStart.from_dict(read_json(repo.backend, repo.layout.started(set_id), repo.cipher))
