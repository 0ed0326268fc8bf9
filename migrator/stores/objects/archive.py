"""The objects archive format: object bytes in tar packs, each with a JSON sidecar, plus an
index per unit; incremental across sets.

A unit's folder in a set holds::

    index.jsonl                 one JSON line per object, in key order: key, size, md5,
                                etag, last_modified, content_type, metadata, headers, and
                                the pack that holds its bytes (maybe an earlier set's)
    packs/<set>-<n>.tar         POSIX (pax) tar: ``data/<key>`` (the bytes exactly as
                                stored, Content-Encoding not undone) and ``meta/<key>.json``
                                (the same fields as the index line), in key order

Why packs rather than one archive file per object: every archive file is an entry of the
manifest and, on a directory, a fsync and a rename (3.7 ms each on one thread here), on S3
one PUT. A million OpenIM objects would make each set's manifest hundreds of MB and the
first backup pay two files per object. Packs of ``pack_bytes`` keep both small, and
``tar -x`` still restores them with plain tools.

Incremental: an object whose key, size, ETag and Last-Modified equal the previous set's
index line is not read: its line is copied and its pack referenced
(``UnitWriter.reference``), so an unchanged bucket costs its listing. An object written
less than ``recent_seconds`` before the previous backup began gets a HEAD first, and its
type, metadata and headers must match too (see ``ObjectArchiveImporter._listed``). Packs
are never rewritten; a pack referenced by a later set may hold objects deleted or
replaced since, which that set's index leaves out.

Restore reads the packs one at a time, in name order, yielding the objects the index names
with bodies spooled (in memory up to ``spool_memory``, larger ones in an anonymous temp
file), so the objects store's importer streams them as from any source: each record's
``source`` is an ``ArchivedObject``. Bucket settings are kept as S3 returned them
(``store/buckets.json``); ``settings_source`` gives them to a restore.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, ClassVar, cast

from minio.commonconfig import Tags
from minio.lifecycleconfig import LifecycleConfig
from minio.objectlockconfig import ObjectLockConfig
from minio.sseconfig import SSEConfig
from minio.versioningconfig import VersioningConfig
from minio.xml import marshal, unmarshal

from migrator.archive.files import ArchiveFile
from migrator.archive.format import ArchiveFormat
from migrator.archive.manifest import FileEntry, parse_time
from migrator.archive.reader import StoreReader, UnitReader
from migrator.archive.writer import StoreWriter, UnitWriter
from migrator.errors import MigrateError, StoreError, TransientError
from migrator.stores.base import Batch, Chunk, ChunkDigest, Cursor, Importer, Store, Unit
from migrator.stores.objects import settings
from migrator.stores.objects.ranges import separator
from migrator.stores.objects.records import (
    MD5_ETAG,
    MiB,
    ObjectRecord,
    epoch,
    etag,
    split_headers,
)
from migrator.stores.objects.store import ObjectStore

INDEX = "index.jsonl"
BUCKETS = "buckets.json"  # store-level: each bucket's settings as S3 returned them
PACKS = "packs/"
DATA, META = "data/", "meta/"
READ = MiB  # one read of a body


@dataclass
class Entry:
    """One object as the set holds it: an index line and a pack's sidecar."""

    key: str
    size: int
    md5: str
    etag: str
    last_modified: int
    content_type: str | None
    metadata: dict[str, str]
    headers: dict[str, str]
    pack: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "md5": self.md5, "etag": self.etag,
                "last_modified": self.last_modified, "content_type": self.content_type,
                "metadata": self.metadata, "headers": self.headers, "pack": self.pack}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(key=str(data["key"]), size=int(data["size"]), md5=str(data["md5"]),
                   etag=str(data.get("etag") or ""),
                   last_modified=int(data.get("last_modified") or 0),
                   content_type=data.get("content_type"),
                   metadata=dict(data.get("metadata") or {}),
                   headers=dict(data.get("headers") or {}), pack=str(data.get("pack") or ""))

    def fingerprint(self) -> dict[str, Any]:
        """Exactly what ``ObjectStore.records()`` yields for the object."""
        return {"size": self.size, "md5": self.md5, "content_type": self.content_type,
                "metadata": dict(sorted(self.metadata.items())),
                "headers": dict(sorted(self.headers.items()))}

    def sidecar(self) -> bytes:
        data = self.to_dict()
        del data["pack"]
        return json.dumps(data, sort_keys=True, ensure_ascii=False,
                          separators=(",", ":")).encode() + b"\n"


def _index_lines(unit: UnitReader) -> Iterator[bytes]:
    if INDEX not in unit.names:
        return
    with unit.open(INDEX) as reader:
        rest = b""
        while block := reader.read(READ):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            yield from (line for line in lines if line.strip())
        if rest.strip():
            yield rest


def read_index(unit: UnitReader, pack: str | None = None) -> Iterator[Entry]:
    """The unit's index lines, in key order, streamed; with ``pack``, only the objects
    whose bytes that pack holds (lines of other packs are not even parsed)."""
    mark = json.dumps(pack, ensure_ascii=False).encode() if pack is not None else b""
    for line in _index_lines(unit):
        if mark in line:
            entry = Entry.from_dict(json.loads(line))
            if pack is None or entry.pack == pack:
                yield entry


def _chunk_of(chunks: list[Chunk], starts: list[str], key: str) -> Chunk:
    return chunks[max(0, bisect_right(starts, key) - 1)]


def _in_chunk(chunk: Chunk, key: str) -> bool:
    bounds = chunk.bounds or {}
    start, end = bounds.get("start"), bounds.get("end")
    return (start is None or key >= start) and (end is None or key < end)


class _Body:
    """A GET read whole into memory (small objects, fetched in parallel)."""

    def __init__(self, headers: dict[str, str], data: bytes, md5: str) -> None:
        self.headers, self.data, self.md5 = headers, data, md5


class _HashingBody:
    """A streaming GET as a file for ``tarfile``: raw bytes, hashed as they pass."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.nbytes = 0

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes unless the body ends first (tarfile takes a short read for the
        end of the body)."""
        want = size if size and size > 0 else READ
        parts, got = [], 0
        while got < want:
            part: bytes = self.resp.read(want - got, decode_content=False)
            if not part:
                break
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        self.md5.update(data)
        self.nbytes += len(data)
        return data


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two units' key ranges ([start, end), None: open) share any key."""
    a_start, a_end, b_start, b_end = a.get("start"), a.get("end"), b.get("start"), b.get("end")
    return (a_end is None or b_start is None or b_start < a_end) and \
        (b_end is None or a_start is None or a_start < b_end)


class _Buffered:
    """Gathers tarfile's many small writes into 1 MiB ones for the archive file (zstd and
    the hashes then run once per MiB, without the GIL); ``tell`` for tarfile."""

    def __init__(self, file: ArchiveFile) -> None:
        self.file = file
        self.buffer = bytearray()
        self.written = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.written += len(data)
        if len(self.buffer) >= READ:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.file.write(bytes(self.buffer))
            self.buffer.clear()

    def tell(self) -> int:
        return self.written


class _Previous:
    """The previous set's index lines for a unit's range, walked in step with this
    backup's keys (both in key order), so looking an object up costs nothing and memory
    stays flat. Usually the same unit; when the bucket was split differently (it grew past
    unit_records or unit_bytes), every earlier unit whose range overlaps this one's."""

    def __init__(self, units: list[UnitReader]) -> None:
        self.units = sorted(units, key=lambda u: u.unit.spec.get("start") or "")
        self.unit = self.units[0] if self.units else None
        self._lines = (entry for u in self.units for entry in read_index(u))
        self._head: Entry | None = next(self._lines, None)

    def lookup(self, keys: list[str]) -> dict[str, Entry]:
        """The lines of ``keys`` (ascending, and above every key asked before)."""
        found: dict[str, Entry] = {}
        if not keys:
            return found
        wanted, last = set(keys), keys[-1]
        while self._head is not None and self._head.key <= last:
            if self._head.key in wanted:
                found[self._head.key] = self._head
            self._head = next(self._lines, None)
        return found

    def pack(self, name: str) -> FileEntry:
        for unit in self.units:
            if name in unit.names:
                return unit.entry(name)
        raise StoreError(f"the previous set has no pack {name!r}")


class ObjectArchiveImporter(Importer):
    """Writes one unit's objects into packs and its index; unchanged objects are
    referenced from the previous set instead of read."""

    def __init__(self, fmt: ObjectArchive, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> None:
        if not isinstance(source, ObjectStore):
            raise StoreError(f"unit {unit.unit.key}: the objects archive format reads "
                             "object stores only")
        self.fmt, self.unit, self.source = fmt, unit, source
        self.previous_reader = previous
        self.spec = unit.unit.spec
        self.here = source.here_bucket(self.spec["bucket"])
        self.packs = 0
        self.referenced: set[str] = set()
        self.stats = {"stored": 0, "referenced": 0, "stored_bytes": 0, "checked": 0}
        self._pack_file: ArchiveFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._pack_name = ""

    # -- the importer contract ---------------------------------------------------------
    def prepare(self, resumed: bool) -> None:
        # Chunks are cut as the objects pass, the way ObjectStore.chunks() cuts a listing
        # (every chunk_records keys, at a separator), which spares a listing of the unit.
        self.per_chunk = self.source.options.chunk_records
        if self.unit.unit.records <= self.per_chunk // 2:
            self.per_chunk = 0  # one chunk, as ObjectStore.chunks() says without listing
        self.bounds: list[str | None] = [self.spec.get("start")]
        self.count, self.last_key = 0, ""
        earlier = [self.previous_reader] if self.previous_reader is not None else \
            self.fmt.overlapping(self.unit)
        self.previous = _Previous(earlier)
        began = min((u.record.started for u in earlier), default="")
        self.recent_from = (int(parse_time(began).timestamp()) - self.fmt.recent_seconds
                            if began else 0)
        self.index = self.unit.open(INDEX)
        self._lines: list[bytes] = []
        self._lines_bytes = 0

    def write_batch(self, batch: Batch) -> None:
        olds = self.previous.lookup([r.key for r in batch.records])
        listed = self._listed(batch.records, olds)
        window: deque[tuple[ObjectRecord, Future[_Body | None]]] = deque()
        window_bytes = 0
        try:
            for rec in batch.records:
                now = listed.get(rec.key, rec)
                old = olds.get(rec.key)
                if old is not None and rec.key in listed and self._unchanged(old, now):
                    while window:  # keep the index in key order
                        window_bytes -= self._write_fetched(batch, *window.popleft())
                    self._reuse(old)
                    continue
                if now.size > self.fmt.memory_body:
                    while window:
                        window_bytes -= self._write_fetched(batch, *window.popleft())
                    self._stream(batch, now)
                    continue
                while window and (window_bytes + now.size > self.fmt.window_bytes
                                  or len(window) >= 4 * self.source.transfers):
                    window_bytes -= self._write_fetched(batch, *window.popleft())
                window.append((now, self.source.copy_pool().submit(self._fetch, now)))
                window_bytes += now.size
            while window:
                window_bytes -= self._write_fetched(batch, *window.popleft())
        except BaseException:
            for _, future in window:
                future.cancel()
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the files being written: the engine starts a failed unit over with a
        new importer, and an unfinished S3 upload must not keep its thread waiting."""
        for file in (self._pack_file, getattr(self, "index", None)):
            if file is not None:
                file.abort()
        self._tar = self._pack_file = None

    def __del__(self) -> None:
        # An attempt that ended outside write_batch (the export failed, a stop) drops its
        # importer without a word: its unfinished files go with it.
        try:
            self.abort()
        except Exception:  # noqa: BLE001, S110 - nothing to report to at this point
            pass

    def _flush_index(self) -> None:
        if self._lines:
            self.index.write(b"\n".join(self._lines) + b"\n")
        self._lines, self._lines_bytes = [], 0

    def finalize(self) -> None:
        self._close_pack()
        self._flush_index()
        self.index.close()
        bounds = [*self.bounds, self.spec.get("end")]
        self.unit.set_chunks(Chunk(str(i), {"start": bounds[i], "end": bounds[i + 1]})
                             for i in range(len(bounds) - 1))
        self.unit.meta["objects"] = dict(self.stats, packs=self.packs,
                                         referenced_packs=len(self.referenced))

    # -- which objects changed -----------------------------------------------------------
    def _listed(self, records: list[ObjectRecord], olds: dict[str, Entry]
                ) -> dict[str, ObjectRecord]:
        """Objects that may be reused, with their type, metadata and headers where the
        listing cannot vouch for them.

        S3 changes an object's metadata only by writing it anew, which gives it a new
        Last-Modified (whole seconds). So when key, size, ETag and Last-Modified equal the
        previous set's line, and the object was last written well before the previous
        backup began (``recent_seconds``, room for clock skew), nothing changed. Objects
        written shortly before it could have been replaced in the same second after it
        read them: those get a HEAD each, and their metadata is compared too."""
        found: dict[str, ObjectRecord] = {}
        recent = []
        for rec in records:
            old = olds.get(rec.key)
            if old is None or (old.size, old.etag, old.last_modified) != (
                    rec.size, rec.etag, rec.last_modified):
                continue
            if rec.last_modified >= self.recent_from:
                recent.append(rec)
            else:
                found[rec.key] = rec
        if recent:
            heads = self.source.map_checks(lambda r: self.source.stat(
                self.here, self.source.here_key(self.unit.unit, r.key)), recent)
            for rec, head in zip(recent, heads, strict=True):
                if head is not None:
                    found[rec.key] = ObjectRecord(
                        rec.bucket, rec.key, head.size, head.etag, head.last_modified,
                        head.content_type or "binary/octet-stream", head.metadata or {},
                        head.headers or {})
            self.stats["checked"] += len(recent)
        return found

    @staticmethod
    def _unchanged(old: Entry, now: ObjectRecord) -> bool:
        if (old.size, old.etag, old.last_modified) != (now.size, now.etag, now.last_modified):
            return False
        if now.metadata is None:  # a listing without metadata: S3 rewrites an object
            return True            # (new Last-Modified) to change its metadata
        return (old.content_type, old.metadata, old.headers) == (
            now.content_type, now.metadata, now.headers)

    def _reuse(self, old: Entry) -> None:
        if old.pack not in self.referenced:
            self.unit.reference(self.previous.pack(old.pack))
            self.referenced.add(old.pack)
        self._index(old)
        self.stats["referenced"] += 1

    # -- reading bodies ------------------------------------------------------------------
    def _open(self, rec: ObjectRecord) -> Any:
        return self.source.open_object(self.spec["bucket"], self.source.here_key(
            self.unit.unit, rec.key))

    def _fetch(self, rec: ObjectRecord) -> _Body | None:
        """A small object's bytes and headers (a pool thread); None if it is gone."""
        resp = self._open(rec)
        if resp is None:
            return None
        try:
            with self.source._errors(f"get {self.here}/{rec.key}"):
                data = resp.read(decode_content=False)
            headers = dict(resp.headers.items())
        finally:
            resp.close()
            resp.release_conn()
        return _Body(headers, data, hashlib.md5(data, usedforsecurity=False).hexdigest())

    def _write_fetched(self, batch: Batch, rec: ObjectRecord,
                       future: Future[_Body | None]) -> int:
        body = future.result()
        if body is None:
            batch.skipped.append(f"{rec.bucket}/{rec.key} (deleted on the source)")
            return rec.size
        entry = self._entry(rec, body.headers, len(body.data), body.md5)
        self._add(entry, io.BytesIO(body.data))
        return rec.size

    def _stream(self, batch: Batch, rec: ObjectRecord) -> None:
        """A large object straight from its GET into the pack, hashed on the way."""
        resp = self._open(rec)
        if resp is None:
            batch.skipped.append(f"{rec.bucket}/{rec.key} (deleted on the source)")
            return
        try:
            headers = dict(resp.headers.items())
            size = int(headers.get("Content-Length", rec.size))
            reader = _HashingBody(resp)
            entry = self._entry(rec, headers, size, "")
            with self.source._errors(f"get {self.here}/{rec.key}"):
                try:
                    self._add(entry, reader, body_first=True)
                except OSError as exc:  # tarfile: the body ended before its length
                    raise TransientError(f"{self.source.endpoint.label}: get {self.here}/"
                                         f"{rec.key}: {exc}") from exc
        finally:
            resp.close()
            resp.release_conn()

    def _entry(self, rec: ObjectRecord, headers: dict[str, str], size: int,
               md5: str) -> Entry:
        content_type, metadata, copied = split_headers(headers)
        return Entry(key=rec.key, size=size, md5=md5, etag=etag(headers.get("ETag")),
                     last_modified=epoch(headers.get("Last-Modified")) or rec.last_modified,
                     content_type=content_type, metadata=metadata, headers=copied)

    def _check_md5(self, entry: Entry, headers_sse: bool) -> None:
        """A corrupted read fails here, not at verify: a single-part ETag is the MD5."""
        if (self.source.etag_is_md5 and not headers_sse and MD5_ETAG.fullmatch(entry.etag)
                and entry.etag.lower() != entry.md5):
            raise TransientError(f"{self.source.endpoint.label}: get {self.here}/{entry.key}:"
                                 f" read bytes with MD5 {entry.md5}, ETag says {entry.etag}")

    # -- writing packs -------------------------------------------------------------------
    def _pack(self) -> tarfile.TarFile:
        if self._tar is None:
            self.packs += 1
            self._pack_name = f"{PACKS}{self.unit.store.set_id}-{self.packs:06d}.tar"
            self._pack_file = self.unit.open(self._pack_name, meta={"format": "tar (pax)"})
            self._tar = tarfile.open(fileobj=cast(IO[bytes], _Buffered(self._pack_file)),
                                     mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8")
        return self._tar

    def _close_pack(self) -> None:
        if self._tar is not None and self._pack_file is not None:
            self._tar.close()
            cast(_Buffered, self._tar.fileobj).flush()
            self._pack_file.close()
        self._tar = self._pack_file = None

    def _member(self, name: str, size: int, mtime: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o644
        return info

    def _add(self, entry: Entry, body: Any, body_first: bool = False) -> None:
        """Sidecar and bytes into the current pack (bytes first when the MD5 is only known
        after reading them), then the index line and the record's digest."""
        tar = self._pack()
        entry.pack = self._pack_name
        sse = any(h.lower().startswith("x-amz-server-side-encryption") for h in entry.headers)
        if body_first:
            tar.addfile(self._member(DATA + entry.key, entry.size, entry.last_modified), body)
            entry.md5 = body.md5.hexdigest()
            self._check_md5(entry, sse)
        else:
            self._check_md5(entry, sse)
        sidecar = entry.sidecar()
        tar.addfile(self._member(f"{META}{entry.key}.json", len(sidecar), entry.last_modified),
                    io.BytesIO(sidecar))
        if not body_first:
            tar.addfile(self._member(DATA + entry.key, entry.size, entry.last_modified), body)
        self._index(entry)
        self.stats["stored"] += 1
        self.stats["stored_bytes"] += entry.size
        if tar.offset >= self.fmt.pack_bytes:
            self._close_pack()

    def _index(self, entry: Entry) -> None:
        self._lines.append(json.dumps(entry.to_dict(), sort_keys=True, ensure_ascii=False,
                                      separators=(",", ":")).encode())
        self._lines_bytes += len(self._lines[-1]) + 1
        if self._lines_bytes >= READ:
            self._flush_index()
        if self.per_chunk and self.count and self.count % self.per_chunk == 0:
            self.bounds.append(separator(self.last_key, entry.key))
        self.count, self.last_key = self.count + 1, entry.key
        self.unit.record(str(len(self.bounds) - 1),
                         ObjectStore.fingerprint_hash(entry.key, entry.fingerprint()))


class _Endpoint:
    """Enough of an endpoint for the copy path's messages."""

    def __init__(self, label: str) -> None:
        self.label = label


class ArchivedObject:
    """The source side of one object during a restore: what ``ObjectRecord.open`` and the
    objects importer call on ``ObjectRecord.source``, answered from a spooled body."""

    etag_is_md5 = True  # the ETag we present is the MD5 of the archived bytes

    def __init__(self, entry: Entry, body: IO[bytes], label: str) -> None:
        self.entry, self.body = entry, body
        self.endpoint = _Endpoint(label)

    def here_bucket(self, bucket: str) -> str:
        return bucket

    def headers(self) -> dict[str, str]:
        e = self.entry
        out = {"Content-Length": str(e.size), "ETag": f'"{e.md5}"',
               "Content-Type": e.content_type or "binary/octet-stream"}
        out.update({f"x-amz-meta-{k}": v for k, v in e.metadata.items()})
        out.update(e.headers)
        return out

    def open_object(self, bucket: str, key: str, mapped: bool = False,
                    etag: str | None = None) -> Any:
        self.body.seek(0)
        return _SpooledResponse(self.body, self.headers())

    def stat(self, bucket: str, key: str) -> ObjectRecord:
        e = self.entry
        return ObjectRecord(bucket, key, e.size, e.md5, e.last_modified, e.content_type,
                            dict(e.metadata), dict(e.headers))


class _SpooledResponse:
    """Reads like minio's HTTP response (``read(n, decode_content=False)``)."""

    def __init__(self, body: IO[bytes], headers: dict[str, str]) -> None:
        self.body, self.headers = body, headers

    def read(self, size: int = -1, decode_content: bool = False) -> bytes:
        return self.body.read(size if size is not None else -1)

    def stream(self, amt: int = READ, decode_content: bool = False) -> Iterator[bytes]:
        while data := self.body.read(amt):
            yield data

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


_CONFIG_TYPES: dict[str, type] = {"versioning": VersioningConfig,
                                   "object_lock": ObjectLockConfig, "encryption": SSEConfig,
                                   "lifecycle": LifecycleConfig}


def _setting_to_json(name: str, raw: Any) -> Any:
    """A bucket setting as the client returned it, as JSON that gives it back exactly."""
    if raw is None:
        return None
    if name == "policy":
        return {"policy": raw}
    if name == "tags":
        return {"tags": dict(raw)}
    return {"xml": marshal(raw).decode()}


def _setting_from_json(name: str, data: Any) -> Any:
    if data is None:
        return None
    if name == "policy":
        return data["policy"]
    if name == "tags":
        tags = Tags.new_bucket_tags()
        tags.update(data["tags"])
        return tags
    return unmarshal(_CONFIG_TYPES[name], data["xml"])


class _RecordedClient:
    """The bucket-settings reads of a minio client, answered from a set's
    ``buckets.json`` (what ``settings.read`` calls)."""

    def __init__(self, buckets: dict[str, Any]) -> None:
        self._buckets = buckets

    def _get(self, name: str, bucket: str) -> Any:
        recorded = (self._buckets.get(bucket) or {}).get("settings") or {}
        return _setting_from_json(name, recorded.get(name))

    def __getattr__(self, method: str) -> Any:
        names = {"get_bucket_policy": "policy", "get_bucket_versioning": "versioning",
                 "get_object_lock_config": "object_lock",
                 "get_bucket_encryption": "encryption", "get_bucket_tags": "tags",
                 "get_bucket_lifecycle": "lifecycle"}
        if method not in names:
            raise AttributeError(method)
        return lambda bucket: self._get(names[method], bucket)


class RecordedSettings:
    """A set's bucket settings as the source of ``settings.copy``: what an objects
    target's ``prepare_target``/``finalize_target`` read from a live source during a
    copy, they read from here during a restore (see ``ObjectArchive.settings_source``)."""

    def __init__(self, buckets: dict[str, Any], label: str) -> None:
        self.client = _RecordedClient(buckets)
        self.prefix = next((str(b.get("prefix") or "") for b in buckets.values()), "")
        self.endpoint = _Endpoint(label)

    def here_bucket(self, bucket: str) -> str:
        return bucket

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        yield


class ObjectArchive(ArchiveFormat):
    kind: ClassVar[str] = "objects"
    version: ClassVar[int] = 1
    pack_bytes: ClassVar[int] = 64 * MiB  # a pack is closed once it holds this much
    memory_body: ClassVar[int] = 4 * MiB  # larger bodies stream from their GET in order
    window_bytes: ClassVar[int] = 16 * MiB  # small bodies fetched ahead, per unit
    # Objects written less than this before the previous backup began are HEADed before
    # being reused (see ObjectArchiveImporter._listed): room for the clocks' skew.
    recent_seconds: ClassVar[int] = 300
    spool_memory: ClassVar[int] = MiB  # restore: larger bodies wait in a temp file
    batch_bytes: ClassVar[int] = 8 * MiB  # restore: a batch's bodies, at most (as --batch-bytes)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: StoreReader | None | bool = False  # False: not looked up yet

    # -- backup --------------------------------------------------------------------------
    def prepare(self, store: StoreWriter, units: list[Unit], source: Store) -> None:
        """Each bucket's settings as the client returns them (policy text, the XML of
        versioning, object lock, encryption and lifecycle, tags), so a restore can set
        them again; the endpoint keeps the comparable form for verify."""
        if not isinstance(source, ObjectStore):
            raise StoreError("the objects archive format reads object stores only")
        buckets = {}
        for bucket in sorted({u.spec["bucket"] for u in units if u.store == self.kind}):
            here = source.here_bucket(bucket)
            buckets[bucket] = {"prefix": source.prefix, "settings": {
                name: _setting_to_json(name, settings.read(source, here, name))
                for name in source.setting_names}}
        with store.open(BUCKETS) as file:
            file.write(json.dumps(buckets, indent=1, sort_keys=True,
                                  ensure_ascii=False).encode())

    def stand_in(self, store: StoreReader) -> Store | None:
        """A restore's target sets bucket settings from the set, as from a live source."""
        return cast(Store, self.settings_source(store))

    def settings_source(self, store: StoreReader) -> RecordedSettings:
        """The set's bucket settings, readable by ``settings.copy`` like a live source."""
        buckets: dict[str, Any] = {}
        if BUCKETS in store.names:
            with store.open(BUCKETS) as reader:
                buckets = json.loads(reader.read())
        return RecordedSettings(buckets, f"archive {store.kind} bucket settings")

    def importer(self, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> Importer:
        return ObjectArchiveImporter(self, unit, source, previous)

    def overlapping(self, unit: UnitWriter) -> list[UnitReader]:
        """The units of the newest complete set that cover part of ``unit``'s range (same
        bucket and prefix), for a unit that has no namesake there."""
        with self._lock:
            if self._newest is False:
                try:
                    newest = unit.store.repo.reader()
                    self._newest = newest.store(self.kind) if self.kind in newest.stores \
                        else None
                except MigrateError:
                    self._newest = None
            store = self._newest
        if not isinstance(store, StoreReader):
            return []
        spec = unit.unit.spec
        found = []
        for name in store.unit_names:
            earlier = store.unit(name)
            other = earlier.unit.spec
            if (other.get("bucket"), other.get("prefix")) == (spec.get("bucket"),
                                                              spec.get("prefix")) \
                    and _overlaps(spec, other):
                found.append(earlier)
        return found

    # -- restore -------------------------------------------------------------------------
    def export(self, unit: UnitReader, resume_from: Cursor = None) -> Iterator[Batch]:
        """The objects, pack by pack (cursor: ``[pack, key]``), bodies spooled. Memory
        holds one pack's index lines at a time, whatever the unit's size."""
        packs = sorted({entry.pack for entry in read_index(unit)})
        after_pack, after_key = (resume_from or [None, None])
        bucket = unit.unit.spec["bucket"]
        label = f"archive {unit.record.store}:{unit.record.name}"
        for pack in packs:
            if after_pack is not None and pack < after_pack:
                continue
            wanted = {entry.key: entry for entry in read_index(unit, pack)}
            skip_to = after_key if pack == after_pack else None
            records: list[ObjectRecord] = []
            nbytes = 0
            for entry, body in self._bodies(unit, pack, wanted, skip_to):
                source = cast(ObjectStore, ArchivedObject(entry, body, label))
                records.append(ObjectRecord(bucket, entry.key, entry.size, entry.md5,
                                            entry.last_modified, entry.content_type,
                                            dict(entry.metadata), dict(entry.headers),
                                            source=source))
                nbytes += entry.size
                if nbytes >= self.batch_bytes or len(records) >= 1000:
                    yield Batch(records, [pack, records[-1].key], nbytes)
                    records, nbytes = [], 0
            if records:
                yield Batch(records, [pack, records[-1].key], nbytes)

    def _bodies(self, unit: UnitReader, pack: str, wanted: dict[str, Entry],
                skip_to: str | None) -> Iterator[tuple[Entry, IO[bytes]]]:
        found = 0
        todo = {k for k in wanted if skip_to is None or k > skip_to}
        with unit.open(pack) as reader, tarfile.open(fileobj=cast(IO[bytes], reader),
                                                      mode="r|", encoding="utf-8") as tar:
            for member in tar:
                if not member.name.startswith(DATA):
                    continue
                key = member.name[len(DATA):]
                entry = wanted.get(key)
                if entry is None or key not in todo or member.size != entry.size:
                    continue  # replaced or deleted since the pack was written
                source = tar.extractfile(member)
                assert source is not None
                spool = tempfile.SpooledTemporaryFile(self.spool_memory)  # noqa: SIM115
                md5 = hashlib.md5(usedforsecurity=False)
                while data := source.read(READ):
                    md5.update(data)
                    spool.write(data)
                if md5.hexdigest() != entry.md5:
                    raise StoreError(f"{unit.record.store}:{unit.record.name}: {pack}: "
                                     f"{key}: MD5 {md5.hexdigest()}, the index says "
                                     f"{entry.md5}")
                found += 1
                spool.seek(0)
                yield entry, cast(IO[bytes], spool)
        if found != len(todo):
            missing = sorted(todo)[:3]
            raise StoreError(f"{unit.record.store}:{unit.record.name}: {pack} lacks "
                             f"{len(todo) - found} object(s) its index names, e.g. {missing}")

    def open_body(self, unit: UnitReader, key: str) -> tuple[Entry, IO[bytes]]:
        """One object's sidecar and bytes (reads its pack up to it)."""
        entry = next((e for e in read_index(unit) if e.key == key), None)
        if entry is None:
            raise StoreError(f"{unit.record.store}:{unit.record.name}: no object {key!r}")
        for found, body in self._bodies(unit, entry.pack, {key: entry}, None):
            return found, body
        raise StoreError(f"{unit.record.store}:{unit.record.name}: {key!r} not in its pack")

    # -- verify --------------------------------------------------------------------------
    def records(self, unit: UnitReader, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        for entry in read_index(unit):
            if _in_chunk(chunk, entry.key):
                yield entry.key, entry.fingerprint()

    def digest(self, unit: UnitReader, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        digests = {c.id: ChunkDigest() for c in chunks}
        starts = [(c.bounds or {}).get("start") or "" for c in chunks]
        for entry in read_index(unit):
            chunk = _chunk_of(chunks, starts, entry.key)
            digests[chunk.id].add(ObjectStore.fingerprint_hash(entry.key, entry.fingerprint()))
        return digests


__all__ = ["ArchivedObject", "Entry", "ObjectArchive", "ObjectArchiveImporter", "read_index"]
