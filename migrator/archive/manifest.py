"""What a set records about itself, as JSON: the manifest and the records it is built from.

The manifest is the set's table of contents and its commit mark: written last, it names
every file of the set (with where it is stored, its stored size, its SHA-256 and its size
before compression and encryption), per store the cut, and per unit the record count and
the verifier's chunk digests. It carries the SHA-256 of its own canonical JSON, so an edit
is found even in an archive that is not encrypted. It never holds a secret: endpoints
appear only as the plan's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from migrator.stores.base import ChunkDigest

FORMAT = "openim-migrate archive set"
VERSION = 1


def now() -> str:
    """UTC, ISO 8601 with microseconds: sortable and unambiguous."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class FileEntry:
    """One stored file. ``path`` is relative to the archive's root; for a file referenced
    from an earlier set (incremental backups) it lies in that set's folder."""

    name: str  # as the store's format named it, inside its unit's (or store's) folder
    path: str
    bytes: int  # as stored
    plain_bytes: int  # before compression and encryption
    sha256: str  # of the stored bytes
    meta: dict[str, Any] = field(default_factory=dict)  # the format's own facts

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "path": self.path, "bytes": self.bytes,
               "plain_bytes": self.plain_bytes, "sha256": self.sha256}
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        return cls(name=str(data["name"]), path=str(data["path"]), bytes=int(data["bytes"]),
                   plain_bytes=int(data["plain_bytes"]), sha256=str(data["sha256"]),
                   meta=dict(data.get("meta") or {}))


@dataclass
class Cut:
    """The moment a store's data was read, and whether it was one snapshot."""

    time: str
    snapshot: bool
    detail: str = ""  # e.g. "cluster time 7412…" or "keys as listed at the start"

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "snapshot": self.snapshot, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cut:
        return cls(time=str(data["time"]), snapshot=bool(data["snapshot"]),
                   detail=str(data.get("detail") or ""))


def digest_from_dict(data: dict[str, Any]) -> ChunkDigest:
    return ChunkDigest(count=int(data["count"]), hash=int(str(data["hash"]), 16))


@dataclass
class UnitRecord:
    """One unit's part of a set, written when the unit's copy is complete."""

    store: str
    name: str
    unit: dict[str, Any]  # Unit.to_dict(), so a restore needs no plan
    records: int = 0
    digests: dict[str, ChunkDigest] = field(default_factory=dict)
    files: list[FileEntry] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    # The source's chunks (id and store-specific bounds) the digests are keyed by, so a
    # verify against the archive cuts the same chunks.
    chunks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def plain_bytes(self) -> int:
        return sum(f.plain_bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "name": self.name, "unit": self.unit,
                "records": self.records, "bytes": self.bytes, "plain_bytes": self.plain_bytes,
                "chunks": self.chunks,
                "digests": {k: d.to_dict() for k, d in sorted(self.digests.items())},
                "files": [f.to_dict() for f in self.files], "meta": self.meta,
                "started": self.started, "finished": self.finished}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitRecord:
        return cls(store=str(data["store"]), name=str(data["name"]), unit=dict(data["unit"]),
                   records=int(data.get("records") or 0),
                   digests={k: digest_from_dict(v) for k, v in (data.get("digests") or {}).items()},
                   files=[FileEntry.from_dict(f) for f in data.get("files") or []],
                   meta=dict(data.get("meta") or {}), started=str(data.get("started") or ""),
                   finished=str(data.get("finished") or ""),
                   chunks=[dict(c) for c in data.get("chunks") or []])


@dataclass
class StoreRecord:
    """A store's part of a set outside its units: the cut and store-level files
    (e.g. MySQL views and routines, bucket settings)."""

    kind: str
    cut: Cut | None = None
    files: list[FileEntry] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # the format's finalize ran
    units: dict[str, UnitRecord] = field(default_factory=dict)  # filled in the manifest

    def to_dict(self, *, with_units: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind,
                               "cut": self.cut.to_dict() if self.cut else None,
                               "files": [f.to_dict() for f in self.files], "meta": self.meta,
                               "complete": self.complete}
        if with_units:
            out["units"] = {name: u.to_dict() for name, u in sorted(self.units.items())}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreRecord:
        return cls(kind=str(data["kind"]),
                   cut=Cut.from_dict(data["cut"]) if data.get("cut") else None,
                   files=[FileEntry.from_dict(f) for f in data.get("files") or []],
                   meta=dict(data.get("meta") or {}), complete=bool(data.get("complete")),
                   units={n: UnitRecord.from_dict(u)
                          for n, u in (data.get("units") or {}).items()})


@dataclass
class SetStart:
    """Written first: what a set is for, so even an incomplete set can be listed."""

    set_id: str
    started: str
    tool_version: str
    plan_name: str
    plan_fingerprint: str
    stores: list[str]
    # The units listed at the start, per store: a resumed backup finishes the same units.
    units: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "set": self.set_id,
                "started": self.started, "tool": {"name": "openim-migrate",
                                                  "version": self.tool_version},
                "plan": {"name": self.plan_name, "fingerprint": self.plan_fingerprint},
                "stores": self.stores, "units": self.units}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SetStart:
        return cls(set_id=str(data["set"]), started=str(data["started"]),
                   tool_version=str(data["tool"]["version"]),
                   plan_name=str(data["plan"]["name"]),
                   plan_fingerprint=str(data["plan"]["fingerprint"]),
                   stores=[str(s) for s in data["stores"]],
                   units=dict(data.get("units") or {}))


class ManifestError(ValueError):
    """The manifest's content is not what was written (edited or not a manifest)."""


@dataclass
class Manifest:
    start: SetStart
    finished: str
    compression: dict[str, Any]
    encryption: str
    stores: dict[str, StoreRecord]

    @property
    def set_id(self) -> str:
        return self.start.set_id

    def files(self) -> Iterator[FileEntry]:
        """Every file the set needs, its own and those it references."""
        for store in self.stores.values():
            yield from store.files
            for unit in store.units.values():
                yield from unit.files

    def totals(self) -> dict[str, int]:
        files = list(self.files())
        own = [f for f in files if f.path.startswith(f"sets/{self.set_id}/")]
        return {"files": len(files), "bytes": sum(f.bytes for f in files),
                "plain_bytes": sum(f.plain_bytes for f in files),
                "own_bytes": sum(f.bytes for f in own),
                "records": sum(u.records for s in self.stores.values()
                               for u in s.units.values()),
                "units": sum(len(s.units) for s in self.stores.values())}

    def to_dict(self) -> dict[str, Any]:
        body = {**self.start.to_dict(), "finished": self.finished,
                "compression": self.compression, "encryption": self.encryption,
                "stores": {k: s.to_dict() for k, s in sorted(self.stores.items())}}
        body["totals"] = self.totals()
        body["sha256"] = hashlib.sha256(canonical(body)).hexdigest()
        return body

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse, refusing a manifest whose content no longer matches its own digest."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError("not a set manifest")
        body = {k: v for k, v in data.items() if k != "sha256"}
        if hashlib.sha256(canonical(body)).hexdigest() != data.get("sha256"):
            raise ManifestError("its content does not match its SHA-256 (edited?)")
        if int(data.get("version", 0)) > VERSION:
            raise ManifestError(f"written by a newer format (version {data['version']})")
        try:
            return cls(start=SetStart.from_dict(data), finished=str(data["finished"]),
                       compression=dict(data["compression"]),
                       encryption=str(data["encryption"]),
                       stores={k: StoreRecord.from_dict(v) for k, v in data["stores"].items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed ({exc!r})") from exc
