"""The contract a store's archive format implements (mongodump layout, MySQL files, RDB
files, object bytes + sidecars). A format lives beside its store's wire code and knows
the store's batch wire form; ``ArchiveStore`` (``endpoint.py``) turns it into one more
``Store``, so backups and restores run through the same engine as every copy.

In words:

* Backup (the archive is the target). ``cut(source)`` says when and how consistently the
  source is read. ``prepare(store, units, source)`` writes store-level files needed
  before data. ``importer(unit, source)`` returns an ``Importer`` that writes the unit's
  batches (in the source's wire form) into files opened with ``unit.open(name)``, and
  for every record calls ``unit.record(chunk_id, record_hash)`` with the same per-record
  hash and the same chunks (``unit.set_chunks(source.chunks(...))``) as the store's own
  ``digest()``, so verify can compare the archive with a live store chunk by chunk. It may
  ``unit.reference(entry)`` a file of an earlier set instead of storing it again
  (``previous`` gives that set's unit). Writing the same batch twice must leave the same
  files; a unit always restarts from its start (archive units are not resumable), and
  the unit is committed by the endpoint after the importer's ``finalize``.
  ``finalize(store, units, source)`` writes store-level files needed after data.
* Restore (the archive is the source). ``export(unit, resume_from)`` yields ``Batch``es in
  the store's wire form, read from ``unit.open(name)``, each with a cursor to resume after.
* Verify against an archive. ``records(unit, chunk)`` yields ``(key, fingerprint)`` as the
  store's ``records()`` does; ``digest(unit, chunks)`` recomputes digests for chunks other
  than the recorded ones (a live side cut differently); ``same_record`` as the store's.

What the endpoint does for every format, so formats need not: it records the cut, each
unit's schema (``source.schema``) and the store's definitions (``source.definitions``),
returns them for verify, answers ``chunks``/``digest`` from the recorded chunks and
digests, and commits units and stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from migrator.archive.manifest import Cut, now
from migrator.archive.reader import StoreReader, UnitReader
from migrator.archive.writer import StoreWriter, UnitWriter
from migrator.errors import CapabilityMissing
from migrator.stores.base import Batch, Chunk, ChunkDigest, Cursor, Importer, Store, Unit


class ArchiveFormat(ABC):
    kind: ClassVar[str]  # the store kind it archives, e.g. "redis"
    version: ClassVar[int] = 1  # recorded per store; bump when the layout changes

    # -- backup --------------------------------------------------------------------------
    def cut(self, source: Store) -> Cut:
        """When, and how consistently, ``source`` is being read. The default says what
        the store's capabilities say; a format that pins a snapshot says which."""
        if source.capabilities.snapshot_reads:
            return Cut(now(), snapshot=True, detail="each unit read in one snapshot")
        return Cut(now(), snapshot=False, detail="no snapshot: records as listed when each "
                   "unit was read; writes during the backup may or may not be in it")

    def prepare(self, store: StoreWriter, units: list[Unit], source: Store) -> None:  # noqa: B027
        """Store-level files before any data (e.g. CREATE statements)."""

    @abstractmethod
    def importer(self, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> Importer:
        """Writes one unit's batches into files of ``unit``; ``previous`` is the same unit
        in the newest complete set of this archive (for incremental formats), or None."""

    def finalize(self, store: StoreWriter, units: list[Unit], source: Store) -> None:  # noqa: B027
        """Store-level files after the data (e.g. indexes)."""

    # -- restore -------------------------------------------------------------------------
    @abstractmethod
    def export(self, unit: UnitReader, resume_from: Cursor = None) -> Iterator[Batch]:
        """The unit's records as batches in the store's wire form, resumable by cursor."""

    # -- verify --------------------------------------------------------------------------
    @abstractmethod
    def records(self, unit: UnitReader, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """``(key, fingerprint)`` of one chunk's records, exactly as the store's own
        ``records()`` yields them."""

    def digest(self, unit: UnitReader, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Digests for chunks other than the recorded ones (by reading the files)."""
        raise CapabilityMissing(f"the {self.kind} archive format cannot digest chunks other "
                                "than those recorded at backup time")

    def same_record(self, source_fp: Any, target_fp: Any) -> bool:
        return source_fp == target_fp

    def schema(self, unit: UnitReader) -> dict[str, Any]:
        """The unit's schema as recorded at backup time (``source.schema(unit)``)."""
        return dict(unit.meta.get("schema") or {})

    def definitions(self, store: StoreReader) -> dict[str, Any]:
        """Store-level definitions as recorded at backup time."""
        return dict(store.meta.get("definitions") or {})

    def stand_in(self, store: StoreReader) -> Store | None:
        """During a restore: what a live target's prepare/finalize read instead of a live
        source (MySQL: the recorded CREATE TABLEs and objects); None when not needed."""
        return None
