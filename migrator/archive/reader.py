"""Reading a set: what a store's archive format uses to get its files back.

The mirror of ``writer.py``: ``StoreReader`` and ``UnitReader`` open files by the names the
format gave them, and every read is checked against the manifest (size and SHA-256 at
the end of the file, age's authentication and zstd's checksum on the way), so a damaged
file fails the restore naming that file instead of restoring wrong data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migrator.archive.files import ArchiveReader
from migrator.archive.manifest import Cut, FileEntry, Manifest, StoreRecord, UnitRecord
from migrator.errors import PlanError, StoreError
from migrator.stores.base import Chunk, ChunkDigest, Unit

if TYPE_CHECKING:
    from migrator.archive.repository import Repository


class _Files:
    def __init__(self, repo: Repository, entries: list[FileEntry], where: str) -> None:
        self._repo = repo
        self._entries = {e.name: e for e in entries}
        self._where = where

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> FileEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise StoreError(f"{self._where}: the set has no file {name!r}") from None

    def open(self, name: str) -> ArchiveReader:
        """Plain bytes of the file ``name`` (as the format named it when writing)."""
        return self._repo.read_file(self.entry(name))


class UnitReader(_Files):
    def __init__(self, repo: Repository, record: UnitRecord) -> None:
        super().__init__(repo, record.files, f"{record.store}:{record.name}")
        self.record = record
        self.unit = Unit.from_dict(record.unit)
        self.meta: dict[str, Any] = record.meta

    @property
    def records(self) -> int:
        return self.record.records

    @property
    def chunks(self) -> list[Chunk]:
        return [Chunk(str(c["id"]), c.get("bounds")) for c in self.record.chunks]

    @property
    def digests(self) -> dict[str, ChunkDigest]:
        return dict(self.record.digests)


class StoreReader(_Files):
    def __init__(self, repo: Repository, record: StoreRecord) -> None:
        super().__init__(repo, record.files, record.kind)
        self.record = record
        self.kind = record.kind
        self.meta: dict[str, Any] = record.meta

    @property
    def cut(self) -> Cut | None:
        return self.record.cut

    @property
    def unit_names(self) -> list[str]:
        return sorted(self.record.units)

    def unit(self, name: str) -> UnitReader:
        record = self.record.units.get(name)
        if record is None:
            raise PlanError(f"{self.kind}:{name}", "no such unit in the set")
        return UnitReader(self._repo, record)


class SetReader:
    """A complete set, for restores and drills."""

    def __init__(self, repo: Repository, manifest: Manifest) -> None:
        self.repo = repo
        self.manifest = manifest
        self.set_id = manifest.set_id

    @property
    def stores(self) -> list[str]:
        return sorted(self.manifest.stores)

    def store(self, kind: str) -> StoreReader:
        record = self.manifest.stores.get(kind)
        if record is None:
            raise PlanError(kind, f"set {self.set_id} holds no {kind} store",
                            hint=f"it holds: {', '.join(self.stores) or 'nothing'}")
        return StoreReader(self.repo, record)
