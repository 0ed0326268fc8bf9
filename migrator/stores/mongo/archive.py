"""MongoDB archive format: mongodump's directory layout, so ``mongorestore`` restores a set.

A unit's folder is a mongodump directory for the unit's collection::

    units/<unit>/<db>/<collection>.bson            the unit's documents: raw BSON, back to
                                                   back, in `_id` order, as the server sent
                                                   them (no decode, no re-encode)
    units/<unit>/<db>/<collection>.metadata.json   options and indexes, canonical Extended
                                                   JSON, as mongodump writes it
    store/<db>/<view>.metadata.json                a view (``type: view``, no .bson)

A collection split into `_id` ranges has one folder per range, each with the collection's
metadata; ``mongorestore`` run on each folder appends its documents to the collection
(indexes and options that already exist are left as they are). Collection names in file
names are escaped as mongodump escapes them (URL query escaping), and each metadata file
says the real name (``collectionName``).

Digests are the store's: the hash of each document's raw bytes, summed per chunk cut by
the store's own rule (``MongoStore.chunks``); so verify compares a live database with a set
chunk by chunk, and a changed document is named by its `_id`. Restoring with this tool
reads the .bson files back as the store's batches; the target creates collections, views
and indexes from the schema and definitions the set recorded.
"""

from __future__ import annotations

import bisect
import datetime
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import quote_plus

from bson import SON, json_util
from bson.raw_bson import RawBSONDocument

from migrator.archive.format import ArchiveFormat
from migrator.archive.manifest import Cut, now
from migrator.archive.reader import UnitReader
from migrator.archive.writer import StoreWriter, UnitWriter
from migrator.errors import StoreError, TransientError
from migrator.stores.base import (
    Batch,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    Store,
    StoreOptions,
    Unit,
    record_hash,
)
from migrator.stores.mongo import meta
from migrator.stores.mongo.store import MongoStore

READ_SIZE = 1 << 20  # bytes read from a stored file at a time
_DEFAULTS = StoreOptions()
_METADATA_JSON = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL,
                                       document_class=SON)


class _Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


def file_stem(db: str, collection: str) -> str:
    """``<db>/<escaped collection>``: mongodump's path of a collection in a dump folder."""
    return f"{db}/{quote_plus(collection, safe='')}"


def documents(reader: _Readable, name: str) -> Iterator[bytes]:
    """The raw documents of a .bson file (each starts with its int32 length, ends with 0),
    streamed; a file that ends inside a document or holds an impossible length is refused
    naming the file rather than restored in part silently."""
    buf = bytearray()
    offset = 0  # of buf[0] in the file
    while True:
        data = reader.read(READ_SIZE)
        if not data:
            break
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "little")
            if size < 5:
                raise StoreError(f"{name}: not BSON: a document at byte {offset + pos} "
                                 f"claims {size} bytes")
            if len(buf) - pos < size:
                break
            if buf[pos + size - 1] != 0:
                raise StoreError(f"{name}: not BSON: the document at byte {offset + pos} "
                                 "does not end with a 0 byte")
            yield bytes(buf[pos:pos + size])
            pos += size
        del buf[:pos]
        offset += pos
    if buf:
        raise StoreError(f"{name}: ends inside a document ({len(buf)} bytes after byte "
                         f"{offset})")


def metadata_json(name: str, kind: str, options: SON, indexes: list[SON],
                  uuid: str | None = None) -> bytes:
    """A ``.metadata.json`` as mongodump writes it (field order and canonical types)."""
    doc: SON[str, Any] = SON()
    if options:
        doc["options"] = options
    doc["indexes"] = indexes
    if uuid:
        doc["uuid"] = uuid
    doc["collectionName"] = name
    doc["type"] = kind
    return json_util.dumps(doc, json_options=_METADATA_JSON).encode()


def _source(source: Store) -> MongoStore:
    if not isinstance(source, MongoStore):
        raise StoreError(f"the mongo archive format backs up a mongo store, not {source.kind}")
    source.open()
    return source


def _chunk_of(starts: list[tuple[Any, ...]], ids: list[str], _id: Any) -> str:
    """The chunk a document belongs to, by the store's rule (``MongoStore.digest``)."""
    return ids[bisect.bisect_right(starts, meta.order_key(_id)) if starts else 0]


def _chunk_starts(chunks: list[Chunk]) -> list[tuple[Any, ...]]:
    return [meta.order_key(meta.from_ejson(c.bounds["lo"])) for c in chunks[1:]]


def _ts_time(at: Any) -> str:
    when = datetime.datetime.fromtimestamp(int(at.time), datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DumpImporter(Importer):
    """Writes one unit as ``<db>/<coll>.bson`` (+ its metadata) in the unit's folder.

    The chunks are the ones ``MongoStore.chunks`` cuts (a start at every
    ``chunk_records``-th `_id` in the server's `_id` order), taken from the documents as
    they stream past instead of a second walk over the `_id` index: on FerretDB that walk
    cost as much as the export itself. This holds only where the server's order is
    MongoDB's (``meta.order_key``). A collection with a default collation (strings
    ordered by it) has its chunks walked as the store does; so has a unit whose stream
    turns out not to be in that order: the attempt fails as transient (its records are
    already counted by position) and the engine's retry writes the unit again, walked.
    """

    def __init__(self, unit: UnitWriter, source: MongoStore, walk: set[str]) -> None:
        self.unit = unit
        self.source = source
        self.walk = walk  # units to walk (shared by the format's importers)
        spec = unit.unit.spec
        self.db, self.collection = str(spec["db"]), str(spec["collection"])
        stem = file_stem(self.db, self.collection)
        self.bson_name, self.metadata_name = f"{stem}.bson", f"{stem}.metadata.json"
        self.file: Any = None
        self.every = max(1, source.options.chunk_records)
        self.walked: list[Chunk] | None = None  # chunks walked up front (collations)
        self.ids: list[str] = []
        self.starts: list[tuple[Any, ...]] = []
        self.points: list[Any] = []  # chunk starts seen in the stream
        self.seen = 0
        self.last: tuple[Any, ...] | None = None

    def prepare(self, resumed: bool) -> None:
        info = self._collection_info()
        if (info.get("options") or {}).get("collation") or self.unit.unit.name in self.walk:
            self.walked = self.source.chunks(self.unit.unit)
            self.ids, self.starts = [c.id for c in self.walked], _chunk_starts(self.walked)
        with self.unit.open(self.metadata_name) as f:
            f.write(self._metadata(info))
        self.unit.meta["files"] = {"bson": self.bson_name, "metadata": self.metadata_name}
        # documents in MongoDB's `_id` order (checked as they are written): a reader may
        # stop at a chunk's end
        self.unit.meta["id_ordered"] = self.walked is None
        self.file = self.unit.open(self.bson_name)

    def _collection_info(self) -> dict[str, Any]:
        with self.source._errors(f"reading options of {self.db}.{self.collection}"):
            return meta.collection_info(self.source.client[self.db], self.collection) or {}

    def _metadata(self, info: dict[str, Any]) -> bytes:
        """The collection's options and every index (``_id_`` too, as mongodump keeps it),
        read now; `ns` (servers before 4.4) is dropped as mongorestore would drop it."""
        db = self.source.client[self.db]
        with self.source._errors(f"reading indexes of {self.db}.{self.collection}"):
            indexes = [SON((k, v) for k, v in spec.items() if k != "ns")
                       for spec in db.get_collection(self.collection,
                                                     codec_options=meta.META).list_indexes()]
        uuid = (info.get("info") or {}).get("uuid")
        return metadata_json(self.collection, "collection", meta.creatable_options(info),
                             indexes, bytes(uuid).hex() if uuid is not None else None)

    def write_batch(self, batch: Batch) -> None:
        for doc in batch.records:
            raw = doc.raw if isinstance(doc.raw, bytes) else bytes(doc.raw)
            self.file.write(raw)
            _id = doc["_id"]
            if self.walked is not None:
                chunk = _chunk_of(self.starts, self.ids, _id)
            else:
                key = meta.order_key(_id)
                if self.last is not None and key <= self.last:
                    self.walk.add(self.unit.unit.name)
                    raise TransientError(
                        f"{self.source.endpoint.label}: {self.unit.unit.name}: the server "
                        f"returned _id {meta.id_label(_id)} after a greater one in MongoDB's "
                        "order; the unit is written again with its chunks walked as the "
                        "store cuts them")
                self.last = key
                if self.seen and self.seen % self.every == 0:
                    self.points.append(_id)
                chunk = f"{len(self.points):05d}"
                self.seen += 1
            self.unit.record(chunk, record_hash(raw))

    def _chunks(self) -> list[Chunk]:
        """The chunks the store's ``chunks()`` would cut over the documents written."""
        spec = self.unit.unit.spec
        edges = [spec.get("lo"), *(meta.to_ejson(p) for p in self.points), spec.get("hi")]
        return [Chunk(f"{i:05d}", {"lo": edges[i], "hi": edges[i + 1]})
                for i in range(len(edges) - 1)]

    def finalize(self) -> None:
        self.file.close()
        self.unit.set_chunks(self.walked if self.walked is not None else self._chunks())


class MongoArchive(ArchiveFormat):
    kind = "mongo"

    def __init__(self) -> None:
        self._walk: set[str] = set()  # units whose chunks are walked (see DumpImporter)

    # -- backup --------------------------------------------------------------------------
    def cut(self, source: Store) -> Cut:
        """A snapshot only where the store reads every unit at the cluster time it recorded
        when it opened and the server was probed to honour it (a replica set of MongoDB
        5.0 or later); otherwise says why not."""
        src = _source(source)
        info = src.server
        where = f"{info.flavor} {info.version} ({info.topology})"
        if not src.endpoint.options.get("snapshot", True):
            why = "the endpoint says snapshot: false"
        elif info.snapshot_reads:
            at = info.start_time
            return Cut(_ts_time(at), snapshot=True, detail=(
                f"every unit read with snapshot read concern at cluster time "
                f"Timestamp({at.time}, {at.inc}) on {where}; a unit the server could no "
                "longer read at that time (snapshot history expired) is read at a newer "
                "snapshot, and the log says which"))
        elif info.flavor == "ferretdb":
            why = "FerretDB has no snapshot reads"
        elif info.snapshot_candidate:
            why = "the server accepts atClusterTime but does not honour it (probed)"
        elif info.topology == "standalone":
            why = "a standalone server has no snapshot at a cluster time (needs a replica set)"
        else:
            why = "the server offers no snapshot reads at a cluster time"
        return Cut(now(), snapshot=False, detail=(
            f"no snapshot on {where}: {why}; each unit's documents are as read, so writes "
            "during the backup may or may not be in it"))

    def prepare(self, store: StoreWriter, units: list[Unit], source: Store) -> None:
        """Views of the units' databases, as ``store/<db>/<view>.metadata.json`` (the same
        views the store's ``definitions`` names, in creation order)."""
        src = _source(source)
        dbs = dict.fromkeys(str(u.spec["db"]) for u in units if u.spec.get("db"))
        for db in dbs:
            with src._errors(f"listing views of {db}"):
                infos = meta.collection_infos(src.client[db])
            for view in meta.views_in_creation_order(infos):
                name = str(view["name"])
                if not src._selected(db, name):
                    continue
                path = f"{file_stem(db, name)}.metadata.json"
                with store.open(path) as f:
                    f.write(metadata_json(name, "view", meta.creatable_options(view), []))

    def importer(self, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> Importer:
        return DumpImporter(unit, _source(source), self._walk)

    # -- restore -------------------------------------------------------------------------
    @staticmethod
    def _bson_name(unit: UnitReader) -> str:
        files = unit.meta.get("files") or {}
        if files.get("bson"):
            return str(files["bson"])
        spec = unit.unit.spec
        return f"{file_stem(str(spec['db']), str(spec['collection']))}.bson"

    def _raw(self, unit: UnitReader) -> Iterator[bytes]:
        name = self._bson_name(unit)
        with unit.open(name) as reader:
            yield from documents(reader, f"{unit.unit.key}: {name}")

    def export(self, unit: UnitReader, resume_from: Cursor = None) -> Iterator[Batch]:
        """The unit's documents as the store's batches (``RawBSONDocument``s, as read from
        a server); the cursor is the number of documents delivered so far."""
        skip = done = int(resume_from or 0)
        records: list[RawBSONDocument] = []
        nbytes = 0
        for raw in self._raw(unit):
            if skip:
                skip -= 1
                continue
            records.append(RawBSONDocument(raw, codec_options=meta.RAW))
            nbytes += len(raw)
            done += 1
            if len(records) >= _DEFAULTS.batch_records or nbytes >= _DEFAULTS.batch_bytes:
                yield Batch(records, done, nbytes)
                records, nbytes = [], 0
        if records:
            yield Batch(records, done, nbytes)

    # -- verify --------------------------------------------------------------------------
    def _documents(self, unit: UnitReader) -> Iterator[tuple[Any, bytes]]:
        for raw in self._raw(unit):
            yield RawBSONDocument(raw, codec_options=meta.RAW)["_id"], raw

    def records(self, unit: UnitReader, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """(`_id` label, hash of the raw bytes), as ``MongoStore.records`` names them."""
        bounds = chunk.bounds or {}
        lo, hi = meta.from_ejson(bounds.get("lo")), meta.from_ejson(bounds.get("hi"))
        lo_key = meta.order_key(lo) if lo is not None else None
        hi_key = meta.order_key(hi) if hi is not None else None
        ordered = bool(unit.meta.get("id_ordered"))
        for _id, raw in self._documents(unit):
            key = meta.order_key(_id)
            if hi_key is not None and key >= hi_key:
                if ordered:
                    break  # the rest lies above the chunk (the file is still closed)
                continue
            if lo_key is None or key >= lo_key:
                yield meta.id_label(_id), f"{record_hash(raw):032x}"

    def digest(self, unit: UnitReader, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """The store's digests over the stored documents, for chunks cut differently."""
        out = {c.id: ChunkDigest() for c in chunks}
        if not chunks:
            return out
        starts, ids = _chunk_starts(chunks), [c.id for c in chunks]
        for _id, raw in self._documents(unit):
            out[_chunk_of(starts, ids, _id)].add(record_hash(raw))
        return out
