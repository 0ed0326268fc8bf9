"""MongoDB store: collections (or `_id` ranges of big ones) copied as raw BSON documents.

URL: ``mongodb://[user:${VAR}@]host[:port][,host2...][/db][?authSource=…&replicaSet=…]`` or
``mongodb+srv://``. Databases: the URL's db, else ``databases: [...]``, else every database
but admin/config/local. A target's ``db_map: {openIM_v3: openim_v3}`` renames databases
(OpenIM ≤3.5 used ``openIM_v3``, ≥3.6 ``openim_v3``). Selection patterns match ``db.coll``.
Other endpoint options: ``server_selection_timeout_ms`` (5000), ``max_pool_size`` (32),
``snapshot: false`` to read without snapshot read concern.

Documents are read with ``RawBSONDocument`` and inserted as they are: no decode/re-encode,
so field order, number types and binary subtypes cannot drift. A unit is one collection or,
above ``unit_records`` documents, one `_id` range of it (boundaries found by walking `_id`
in order; ``splitVector`` where the server offers it and our user may run it). Ranges use
MongoDB's order across BSON types (``meta.id_range_filter``), so mixed `_id` types
are covered exactly once. Replays are harmless: in a first copy a duplicate `_id` is
accepted only if the document already there is byte-identical; after a checkpoint and in
``sync`` the importer replaces what differs (``MongoImporter``).

Consistency: on a replica set (MongoDB ≥5.0) every unit of a run is read with snapshot read
concern at the cluster time recorded when the store opened. Whether the server really
honours ``atClusterTime`` is probed when the store opens (a time in the future must be
refused): DocumentDB's gateway accepts it and reads the present, so it, standalone servers
and FerretDB get no snapshot. Writes during and after the copy are caught up by ``sync``:
``records()`` names each document by its exact `_id` (type included), ``fetch`` and
``delete`` find exactly those. Catch-up compares chunk digests, narrowing a differing chunk
by the hashes its digest kept; where the server has change streams (a replica set), passes
after the first follow them instead (``feed.py``). The write freeze is
``fsyncLock`` where the server and the account allow it (``freeze_check`` says why not).

Coverage (base.py): units of one collection must tile its whole `_id` space in MongoDB's
order (``uncovered``); ``unlisted`` lists the selection's collections live (one
``listCollections`` per database); ``definitions`` are the selection's views in the
databases the units name.
"""

from __future__ import annotations

import bisect
import dataclasses
import fnmatch
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import bson
from bson import SON, Timestamp
from bson import errors as bson_errors
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo import errors as mx
from pymongo.collection import Collection
from pymongo.read_concern import ReadConcern

from migrator.config import Endpoint
from migrator.errors import (
    CapabilityMissing,
    MigrateError,
    PlanError,
    StoreError,
    TransientError,
)
from migrator.stores.base import (
    Batch,
    Capabilities,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    RecordMemo,
    Role,
    Store,
    Unit,
    record_hash,
)
from migrator.stores.mongo import meta
from migrator.stores.mongo.feed import ChangeFeed

log = logging.getLogger(__name__)

SYSTEM_DBS = ("admin", "config", "local")
# Collections whose indexes are built concurrently (finalize). DocumentDB's gateway answers a
# build only at its next ~1 s poll, however small the collection: 17 OpenIM collections took
# 17 s one at a time, 3 s eight at a time, 1 s all at once. MongoDB itself runs at most
# maxNumActiveUserIndexBuilds (3) builds and queues the rest, so more only wait there.
INDEX_BUILDS_AT_ONCE = 32
MEASURE_AT_ONCE = 4  # collections counted / probed concurrently while planning
DEFAULT_TARGET_DB = "openim_v3"  # where check_access(TARGET) probes when nothing is named
_SNAPSHOT_GONE = {239, 246}  # SnapshotTooOld, SnapshotUnavailable
_DUPLICATE_KEY = 11000
_UNAUTHORIZED = {13, 8000}
_NOT_LOCKED = 20  # IllegalOperation: "fsyncUnlock called when not locked"
FETCH_SLICE = 1000  # `_id`s per `$in` query of fetch/delete
WRITE_ROUNDS = 3  # insert, then again after clearing a changed `_id`, then a unique key
MAX_UNLOCKS = 1000  # fsyncUnlock calls before giving up on a lock count that never drops


class _SnapshotAt(ReadConcern):
    """``readConcern: {level: snapshot, atClusterTime}``: every unit reads the same instant."""

    def __init__(self, at: Any) -> None:
        super().__init__("snapshot")
        self._at = at

    @property
    def document(self) -> dict[str, Any]:
        return {"level": "snapshot", "atClusterTime": self._at}


def _doc_id(doc: RawBSONDocument) -> Any:
    return doc["_id"]


def _raw(doc: RawBSONDocument) -> bytes:
    return bytes(doc.raw) if isinstance(doc.raw, memoryview) else doc.raw


def _bound(value: Any) -> Any:
    """A range bound from its JSON form; ``None`` is an open end."""
    return None if value is None else meta.from_ejson(value)


def _slices(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


class MongoStore(Store):
    kind = "mongo"
    capabilities = Capabilities(snapshot_reads=True, server_side_checksum=False, ttls=True,
                                resumable_units=True, wire_format="raw BSON documents")
    SPEC_SCHEMA = meta.SPEC_SCHEMA
    OPTION_SCHEMA = meta.OPTION_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: MongoClient | None = None
        self._server: meta.ServerInfo | None = None
        self._lock = threading.Lock()
        self._url_db: str | None = None
        self._change_streams: str | None = None  # "" = available, else why not (probed once)
        self._lapse: threading.Timer | None = None  # releases our fsyncLock at its limit
        self._memo = RecordMemo()  # the last digests' per-document hashes

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            if self._server is None:
                try:
                    self._server = self._probe()
                except MigrateError:
                    self._client.close()  # no monitor threads left behind a failed open
                    self._client = None
                    raise

    def close(self) -> None:
        with self._lock:
            client, self._client, self._server = self._client, None, None
        if client is not None:
            client.close()

    def _connect(self) -> MongoClient:
        uri, kwargs, self._url_db = meta.client_args(self.endpoint)
        try:
            return MongoClient(uri, **kwargs)
        except mx.PyMongoError as exc:  # bad options in the URL, SRV lookup failure
            raise self.endpoint.fail(f"cannot configure the client: {exc}") from exc

    def _probe(self) -> meta.ServerInfo:
        with self._errors("connecting"):
            hello = self.client.admin.command("hello")
            build = self.client.admin.command("buildInfo")
        info = meta.ServerInfo.from_replies(hello, build)
        if info.snapshot_candidate:
            info = dataclasses.replace(info, snapshot_verified=self._snapshot_honoured(info))
        return info

    def _snapshot_honoured(self, info: meta.ServerInfo) -> bool:
        """Does the server read at the ``atClusterTime`` asked for? Read-only probe: the
        current time must be accepted and a time a year ahead refused (MongoDB refuses a
        time past its cluster time). A server that accepts both reads the present."""
        names = self.endpoint.options.get("databases") or []
        db = self.client[self._url_db or (str(names[0]) if names else "admin")]
        ahead = Timestamp(int(time.time()) + 365 * 86400, 1)

        def read_at(at: Any) -> bool:
            try:
                db.command("find", "_openim_migrate_snapshot_probe", filter={}, limit=1,
                           readConcern={"level": "snapshot", "atClusterTime": at})
                return True
            except mx.OperationFailure:
                return False

        try:
            honoured = read_at(info.start_time) and not read_at(ahead)
        except mx.PyMongoError:  # cannot tell: never claim a snapshot we did not see
            honoured = False
        if not honoured:
            log.info("%s: snapshot reads at a cluster time are not honoured; no snapshot",
                     self.endpoint.label)
        return honoured

    @property
    def client(self) -> MongoClient:
        if self._client is None:
            raise StoreError(f"{self.endpoint.label}: store used before open()")
        return self._client

    @property
    def server(self) -> meta.ServerInfo:
        if self._server is None:
            self.open()
        assert self._server is not None
        return self._server

    @property
    def url_db(self) -> str | None:
        """The database named in the URL path, if any (known after ``open``)."""
        return self._url_db

    @property
    def is_ferretdb(self) -> bool:
        return self.server.flavor == "ferretdb"

    # -- errors --------------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate driver exceptions at the boundary; ``what`` says what we were doing."""
        try:
            yield
        except MigrateError:
            raise
        except mx.PyMongoError as exc:
            raise meta.translate(self.endpoint, exc, what) from exc

    # -- selection and names -------------------------------------------------------------
    def _databases(self) -> list[str]:
        """The source databases taking part (URL db, ``databases`` option, or all)."""
        self.open()
        if self._url_db:
            return [self._url_db]
        named = self.endpoint.options.get("databases")
        if named:
            return [str(d) for d in named]
        with self._errors("listing databases"):
            names = self.client.list_database_names()
        return sorted(n for n in names if n not in SYSTEM_DBS)

    def _selected(self, db: str, coll: str) -> bool:
        name = f"{db}.{coll}"
        sel = self.selection
        if sel.include and not any(fnmatch.fnmatchcase(name, p) for p in sel.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in sel.exclude)

    def target_db(self, source_db: str) -> str:
        """The database a source database lands in on this (target) endpoint."""
        db_map = self.endpoint.options.get("db_map") or {}
        if source_db in db_map:
            return str(db_map[source_db])
        self.open()
        if self._url_db and self._url_db != source_db:
            raise PlanError(f"{self.endpoint.name or 'mongo'}.db_map",
                            f"the target URL names database {self._url_db!r} but data comes "
                            f"from {source_db!r}",
                            hint=f"add db_map: {{{source_db}: {self._url_db}}} to the target")
        return source_db

    def _db_for(self, unit: Unit, *, mapped: bool) -> str:
        """The unit's database here: as listed (export) or through db_map (target side).

        Verification runs on both sides with the source's unit; mapping is right there too,
        because a source endpoint has no db_map and its URL db is the unit's db.
        """
        db = str(unit.spec["db"])
        return self.target_db(db) if mapped else db

    def _coll(self, unit: Unit, *, mapped: bool) -> Collection:
        self.open()
        return self.client[self._db_for(unit, mapped=mapped)].get_collection(
            str(unit.spec["collection"]), codec_options=meta.RAW)

    def _unit_filter(self, unit: Unit) -> dict[str, Any]:
        return meta.id_range_filter(_bound(unit.spec.get("lo")), _bound(unit.spec.get("hi")),
                                    ferretdb=self.is_ferretdb)

    # -- access --------------------------------------------------------------------------
    def check_access(self, role: Role) -> None:
        self.open()
        if role is Role.SOURCE:
            for db in self._databases():
                with self._errors(f"reading database {db}"):
                    names = self.client[db].list_collection_names()
                    for name in [n for n in names if not n.startswith("system.")][:1]:
                        self.client[db][name].find_one({}, {"_id": 1})
            return
        for db in self._probe_databases():
            self._probe_write(db)

    def _probe_databases(self) -> list[str]:
        dbs = [self._url_db] if self._url_db else []
        dbs += [str(d) for d in self.endpoint.options.get("databases") or []]
        dbs += [str(d) for d in (self.endpoint.options.get("db_map") or {}).values()]
        return list(dict.fromkeys(dbs)) or [DEFAULT_TARGET_DB]

    def _probe_write(self, db_name: str) -> None:
        """Create, write, index and drop a scratch collection: proves rights, leaves nothing."""
        name = f"_openim_migrate_probe_{uuid.uuid4().hex[:12]}"
        db = self.client[db_name]
        with self._errors(f"checking write rights in database {db_name}"):
            try:
                existed = db_name in self.client.list_database_names()
            except mx.OperationFailure:
                existed = True  # cannot see it: never drop what we cannot prove is ours
            try:
                # createIndexes on a new name creates the collection with its index at once
                # (on DocumentDB an index on an existing collection is a ~1-2 s background
                # build); proves createCollection, createIndex and insert rights
                db.command("createIndexes", name, indexes=[{"key": {"probe": 1},
                                                           "name": "probe_1"}])
                db[name].insert_one({"probe": 1})
                db[name].delete_many({})
            finally:
                db.drop_collection(name)
                if not existed and not db.list_collection_names():
                    self.client.drop_database(db_name)

    def describe(self) -> dict[str, Any]:
        """Server facts for the plan; a snapshot or a change stream is named only when a
        probe against this server confirmed it."""
        info = self.server
        out: dict[str, Any] = {"flavor": info.flavor, "version": info.version,
                               "topology": info.topology, "tls": meta.tls_state(self.endpoint)}
        if info.set_name:
            out["replica_set"] = info.set_name
        after = ("writes after it are caught up by `sync` passes, the last one inside the "
                 "write freeze")
        use_snapshot = self.endpoint.options.get("snapshot", True)
        if info.snapshot_reads and use_snapshot:
            out["snapshot_time"] = meta.to_ejson(info.start_time)
            out["consistency"] = ("every unit is read with snapshot read concern at "
                                  f"snapshot_time; {after}")
        elif info.snapshot_reads:
            out["consistency"] = ("snapshot: false: units are read without a snapshot; "
                                  "consistency relies on `sync` and the write freeze")
        elif info.flavor == "ferretdb":
            out["consistency"] = ("FerretDB has no snapshot reads: consistency relies on "
                                  "`sync` and the write freeze")
        elif info.snapshot_candidate:
            out["consistency"] = (f"{info.flavor} {info.version} accepts snapshot reads at a "
                                  "cluster time but does not honour them (probed when "
                                  "connecting): no snapshot; consistency relies on `sync` "
                                  "and the write freeze")
        elif info.flavor == "documentdb":
            out["consistency"] = ("DocumentDB has no snapshot reads at a cluster time: "
                                  "consistency relies on `sync` and the write freeze")
        else:
            out["consistency"] = (f"a {info.topology} MongoDB has no snapshot across units "
                                  "(needs a replica set, MongoDB ≥5.0): consistency relies on "
                                  "`sync` and the write freeze")
        missing = self.change_streams_missing()
        out["change_streams"] = "available" if missing is None else f"none ({missing})"
        return out

    def change_streams_missing(self) -> str | None:
        """None when the server opened a change stream for us, else why not, in the
        server's words. Probed once (opens a stream on a database we read, closes it)."""
        if self._change_streams is None:
            self._change_streams = self._probe_change_stream()
        return self._change_streams or None

    def _probe_change_stream(self) -> str:
        info = self.server
        names = [*([self._url_db] if self._url_db else []),
                 *(str(d) for d in self.endpoint.options.get("databases") or []),
                 *(str(d) for d in (self.endpoint.options.get("db_map") or {}).values())]
        try:
            watched = self.client[names[0]] if names else self.client
            with watched.watch(max_await_time_ms=1):
                return ""
        except mx.OperationFailure as exc:
            message = str((exc.details or {}).get("errmsg") or exc).splitlines()[0][:160]
            return f"{info.flavor} {info.version} refuses $changeStream: error {exc.code}, " \
                   f"{message}"
        except mx.PyMongoError as exc:  # never claim what we could not see
            return f"could not be probed: {type(exc).__name__}: {str(exc)[:160]}"

    # -- coverage ------------------------------------------------------------------------
    @classmethod
    def check_endpoint(cls, endpoint: Endpoint, role: Role) -> None:
        meta.check_endpoint(endpoint, str(role))

    @classmethod
    def container_of(cls, unit: Unit) -> str:
        spec = unit.spec
        if isinstance(spec.get("db"), str) and isinstance(spec.get("collection"), str):
            return f"{spec['db']}.{spec['collection']}"
        return unit.name.partition("#")[0]

    @classmethod
    def uncovered(cls, units: list[Unit]) -> list[str]:
        """Gaps and overlaps of each collection's `_id` ranges (MongoDB's order)."""
        parts: dict[str, list[tuple[str, Any, Any]]] = {}
        out: list[str] = []
        for unit in units:
            try:
                lo, hi = _bound(unit.spec.get("lo")), _bound(unit.spec.get("hi"))
                for bound in (lo, hi):
                    if bound is not None:
                        meta.order_key(bound)
            except (TypeError, ValueError, KeyError, bson_errors.BSONError) as exc:
                out.append(f"{unit.name}: lo/hi is not an _id value in Extended JSON ({exc})")
                continue
            parts.setdefault(cls.container_of(unit), []).append((unit.name, lo, hi))
        for container, ranges in sorted(parts.items()):
            out += meta.range_gaps(container, ranges)
        return out

    def unlisted(self, units: list[Unit]) -> list[str]:
        """The selection's collections now (views excluded: they are definitions), minus
        those the plan has units for; one ``listCollections`` per database."""
        planned = {self.container_of(u) for u in units}
        found = []
        for db_name in self._databases():
            with self._errors(f"listing collections of {db_name}"):
                infos = meta.collection_infos(self.client[db_name])
            for info in infos:
                name = str(info["name"])
                if info.get("type", "collection") == "view" or not self._selected(db_name, name):
                    continue
                if name.startswith("system.") and name != "system.js":
                    continue
                found.append(f"{db_name}.{name}")
        return sorted(set(found) - planned)

    def definitions(self, units: list[Unit]) -> dict[str, Any]:
        """The selection's views (``viewOn`` + pipeline + collation) in the databases of
        the plan's units, keyed ``db.view`` by the source's database names; on a target the
        database is found through ``db_map``, as for the units themselves."""
        out: dict[str, Any] = {}
        dbs = dict.fromkeys(str(u.spec.get("db")) for u in units if u.spec.get("db"))
        for source_db in dbs:
            here = self.target_db(source_db)
            with self._errors(f"listing views of {here}"):
                infos = meta.collection_infos(self.client[here])
            for info in infos:
                if info.get("type") == "view" and self._selected(source_db, str(info["name"])):
                    out[f"{source_db}.{info['name']}"] = {
                        "type": "view", "options": meta.json_like(meta.creatable_options(info))}
        return out

    # -- units ---------------------------------------------------------------------------
    def list_units(self) -> list[Unit]:
        """One unit per collection, or `_id` ranges above ``unit_records`` documents.

        Collections are measured a few at a time (a count and ``collStats`` each): planning
        is round trips, not work, and OpenIM has ~20 collections per database.
        """
        wanted: list[tuple[str, str, dict[str, Any]]] = []
        for db_name in self._databases():
            db = self.client[db_name]
            with self._errors(f"listing collections of {db_name}"):
                infos = meta.collection_infos(db)
            for info in sorted(infos, key=lambda i: i["name"]):
                name, kind = info["name"], info.get("type", "collection")
                if kind == "view" or not self._selected(db_name, name):
                    continue
                if name.startswith("system.") and name != "system.js":
                    continue
                if kind != "collection":
                    raise CapabilityMissing(
                        f"{self.endpoint.label}: {db_name}.{name} is a {kind} collection, "
                        "which this tool cannot copy yet",
                        hint=f"exclude it ({db_name}.{name}) and copy it with mongodump")
                wanted.append((db_name, name, info))
        with ThreadPoolExecutor(max_workers=max(1, min(MEASURE_AT_ONCE, len(wanted))),
                                thread_name_prefix="mongo-plan") as pool:
            return [u for part in pool.map(lambda w: self._collection_units(*w), wanted)
                    for u in part]

    def _collection_units(self, db_name: str, name: str, info: dict[str, Any]) -> list[Unit]:
        coll = self.client[db_name].get_collection(name, codec_options=meta.RAW)
        with self._errors(f"measuring {db_name}.{name}"):
            count = coll.estimated_document_count()
            try:
                size = int(self.client[db_name].command("collStats", name).get("size") or 0)
            except mx.OperationFailure:  # collStats not allowed, or gone in a new server
                size = 0
        spec = {"db": db_name, "collection": name, "lo": None, "hi": None,
                "bypass_validation": bool((info.get("options") or {}).get("validator"))}
        per = max(1, self.options.split_records)
        bounds = self._split_points(coll, per) if count > per else []
        if not bounds:
            return [Unit("mongo", f"{db_name}.{name}", spec, records=count, bytes=size)]
        edges = [None, *(meta.to_ejson(b) for b in bounds), None]
        parts = len(edges) - 1
        units = []
        for i in range(parts):
            records = per if i < parts - 1 else max(0, count - per * (parts - 1))
            part_spec = dict(spec, lo=edges[i], hi=edges[i + 1])
            units.append(Unit("mongo", f"{db_name}.{name}#{i:04d}", part_spec, records=records,
                              bytes=size * records // max(count, 1)))
        return units

    def _split_points(self, coll: Collection, every: int,
                      flt: dict[str, Any] | None = None) -> list[Any]:
        """`_id` values that start each following range of ~``every`` documents, in order."""
        if not flt and not self.is_ferretdb:
            points = self._split_vector(coll, every)
            if points is not None:
                return points
        return self._walk_ids(coll, every, flt or {})

    def _split_vector(self, coll: Collection, every: int) -> list[Any] | None:
        """The server's own split points (reads the `_id` index only), when allowed."""
        with self._errors(f"splitting {coll.full_name}"):
            try:
                reply = coll.database.command(
                    "splitVector", coll.full_name, keyPattern={"_id": 1},
                    maxChunkSizeBytes=1 << 40, maxChunkObjects=every, codec_options=meta.META)
            except mx.OperationFailure as exc:  # FerretDB, or a user with the read role only
                log.debug("splitVector unavailable (%s); walking _id instead", exc.code)
                return None
        split_keys: list[Any] = list(reply.get("splitKeys") or []) if reply else []
        keys = [k["_id"] for k in split_keys if "_id" in k]
        return keys or None

    def _walk_ids(self, coll: Collection, every: int, flt: dict[str, Any]) -> list[Any]:
        """Walk `_id` in order (projection `_id` only) and keep every ``every``-th one."""
        points = []
        with self._errors(f"walking _id of {coll.full_name}"):
            cursor = coll.find(flt, {"_id": 1}, sort=[("_id", 1)], batch_size=10_000)
            with cursor:
                for n, doc in enumerate(cursor):
                    if n and n % every == 0:
                        points.append(_doc_id(doc))
        return points

    # -- export --------------------------------------------------------------------------
    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]:
        lo = _bound(unit.spec.get("lo") if resume_from is None else resume_from)
        flt = meta.id_range_filter(lo, _bound(unit.spec.get("hi")),
                                   lo_inclusive=resume_from is None, ferretdb=self.is_ferretdb)
        coll = self._coll(unit, mapped=False)
        snapshot = (self.server.snapshot_reads and self.server.start_time is not None
                    and self.endpoint.options.get("snapshot", True))
        if snapshot:
            coll = coll.with_options(read_concern=_SnapshotAt(self.server.start_time))
        with self._errors(f"reading {unit.name}"):
            started = False
            try:
                for batch in self._batches(coll, flt):
                    started = True
                    yield batch
            except mx.OperationFailure as exc:
                if started or not snapshot or exc.code not in _SNAPSHOT_GONE:
                    raise
                # the run outlived the server's snapshot history: read this unit at a
                # newer snapshot (still one instant for the whole unit)
                log.warning("%s: %s is read at a newer snapshot than the run's start",
                            self.endpoint.label, unit.name)
                fresh = coll.with_options(read_concern=ReadConcern("snapshot"))
                yield from self._batches(fresh, flt)

    def _batches(self, coll: Collection, flt: dict[str, Any]) -> Iterator[Batch]:
        """Raw documents sorted by `_id`, cut by count and bytes; cursor = last `_id`."""
        limit_n, limit_b = max(1, self.options.batch_records), max(1, self.options.batch_bytes)
        with coll.find(flt, sort=[("_id", 1)], batch_size=limit_n) as cursor:
            records: list[RawBSONDocument] = []
            nbytes = 0
            for doc in cursor:
                records.append(doc)
                nbytes += len(doc.raw)
                if len(records) >= limit_n or nbytes >= limit_b:
                    yield Batch(records, meta.to_ejson(_doc_id(records[-1])), nbytes)
                    records, nbytes = [], 0
            if records:
                yield Batch(records, meta.to_ejson(_doc_id(records[-1])), nbytes)

    # -- target side ---------------------------------------------------------------------
    def existing(self, units: list[Unit]) -> list[str]:
        def holds_data(unit: Unit) -> bool:
            with self._errors(f"looking for data of {unit.name}"):
                return self._coll(unit, mapped=True).find_one(
                    self._unit_filter(unit), {"_id": 1}) is not None

        with ThreadPoolExecutor(max_workers=max(1, min(MEASURE_AT_ONCE, len(units))),
                                thread_name_prefix="mongo-plan") as pool:
            return [u.name for u, full in zip(units, pool.map(holds_data, units), strict=True)
                    if full]

    def importer(self, unit: Unit) -> Importer:
        self.open()
        return MongoImporter(self, unit)

    def _collections(self, units: list[Unit]) -> list[tuple[str, str]]:
        return list(dict.fromkeys((str(u.spec["db"]), str(u.spec["collection"]))
                                  for u in units))

    def prepare_target(self, units: list[Unit], source: Store) -> None:
        """Collections with their options (capped, validator, collation...), then views."""
        if not isinstance(source, MongoStore):
            self._prepare_from_recorded(units, source)
            return
        src = _mongo_source(source)
        self.open()
        for db_name, name in self._collections(units):
            with src._errors(f"reading options of {db_name}.{name}"):
                info = meta.collection_info(src.client[db_name], name)
            options = meta.creatable_options(info or {})
            self.create_collection(self.target_db(db_name), name, options)
        # views of every selected database, also one that holds only views
        dbs = [db for db, _ in self._collections(units)] + src._databases()
        for db_name in dict.fromkeys(dbs):
            with src._errors(f"listing views of {db_name}"):
                infos = meta.collection_infos(src.client[db_name])
            for view in meta.views_in_creation_order(infos):
                if src._selected(db_name, view["name"]):
                    self.create_collection(self.target_db(db_name), view["name"],
                                           meta.creatable_options(view))

    def _prepare_from_recorded(self, units: list[Unit], source: Store) -> None:
        """A restore from a set: collections and views as the source recorded them at
        backup time (``schema`` per unit, ``definitions`` for the views)."""
        self.open()
        for db_name, name in self._collections(units):
            unit = next(u for u in units if (u.spec["db"], u.spec["collection"])
                        == (db_name, name))
            options = meta.from_json_like(source.schema(unit).get("options") or {})
            self.create_collection(self.target_db(db_name), name, options)
        by_db: dict[str, list[dict[str, Any]]] = {}
        for key, view in source.definitions(units).items():
            db_name, _, name = str(key).partition(".")
            by_db.setdefault(db_name, []).append(
                {"name": name, "type": "view",
                 "options": meta.from_json_like((view or {}).get("options") or {})})
        for db_name, infos in by_db.items():
            for info in meta.views_in_creation_order(infos):
                self.create_collection(self.target_db(db_name), info["name"],
                                       meta.creatable_options(info))

    def create_collection(self, db_name: str, name: str, options: SON) -> None:
        """Create a collection or view with ``create``'s options; idempotent."""
        try:
            with self._errors(f"creating {db_name}.{name}"):
                meta.create_collection(self.client[db_name], name, options)
        except meta.CollectionConflict as exc:
            raise StoreError(f"{self.endpoint.label}: {exc}",
                             hint="drop or rename the target collection, then run again") from exc
        except CapabilityMissing as exc:
            cause = exc.__cause__
            what = (meta.unsupported_option(options, cause)
                    if isinstance(cause, mx.OperationFailure) else None)
            raise CapabilityMissing(
                f"{self.endpoint.label}: cannot create {db_name}.{name}: the server does not "
                f"support {what or 'its options'} ({self.server.flavor} {self.server.version})",
                hint="exclude the collection, or use a MongoDB target") from exc

    def finalize_target(self, units: list[Unit], source: Store) -> None:
        """Secondary indexes, built once over the copied data; lists every refusal. From a
        set (a restore), the indexes its units' schemas recorded at backup time."""
        self.open()
        if not isinstance(source, MongoStore):
            recorded = []
            for db_name, name in self._collections(units):
                unit = next(u for u in units if (u.spec["db"], u.spec["collection"])
                            == (db_name, name))
                specs = [meta.index_from_normalised(i)
                         for i in source.schema(unit).get("indexes") or []
                         if i.get("name") != "_id_"]
                recorded.append((self.target_db(db_name), name, specs))
            self.create_indexes(recorded)
            return
        src = _mongo_source(source)
        wanted = []
        for db_name, name in self._collections(units):
            with src._errors(f"reading indexes of {db_name}.{name}"):
                wanted.append((self.target_db(db_name), name,
                               meta.index_specs(src.client[db_name], name)))
        self.create_indexes(wanted)

    def create_indexes(self, wanted: list[tuple[str, str, list[SON]]]) -> None:
        """Build (db, collection, specs) indexes; every refusal is named in one error.

        Collections are built a few at a time: a server may queue each build and poll for
        it (DocumentDB's gateway answers after a background build, ~1-2 s even when the
        collection is tiny), so building them one after another would add up the waits.
        """
        refused: list[str] = []
        failed: list[str] = []

        def build(item: tuple[str, str, list[SON]]) -> list[tuple[str, Any, bool]]:
            target, name, specs = item
            with self._errors(f"building indexes of {target}.{name}"):
                return meta.create_indexes(self.client[target], name, specs)

        todo = [w for w in wanted if w[2]]
        with ThreadPoolExecutor(max_workers=max(1, min(INDEX_BUILDS_AT_ONCE, len(todo))),
                                thread_name_prefix="mongo-index") as pool:
            results = list(pool.map(build, todo))
        for (target, name, _), failures in zip(todo, results, strict=True):
            for index, exc, unsupported in failures:
                text = str((exc.details or {}).get("errmsg") or exc)[:200]
                (refused if unsupported else failed).append(f"{target}.{name} {index}: {text}")
        if failed:
            raise StoreError(f"{self.endpoint.label}: indexes could not be built: "
                             + "; ".join(failed), hint="fix the conflict, then run again")
        if refused:
            raise CapabilityMissing(
                f"{self.endpoint.label}: {self.server.flavor} {self.server.version} does not "
                "support these indexes: " + "; ".join(refused),
                hint="use a MongoDB target, or accept the schema difference verify reports")

    # -- verification --------------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        """`_id` sub-ranges of ~chunk_records documents, open where the unit is open."""
        coll = self._coll(unit, mapped=True)
        points = self._walk_ids(coll, max(1, self.options.chunk_records),
                                self._unit_filter(unit))
        # ordered by our own key, which is what digest() assigns by (differs from the
        # server's order only for strings under a collation)
        points = sorted({meta.order_key(p): p for p in points}.items())
        edges = [unit.spec.get("lo"), *(meta.to_ejson(p) for _, p in points),
                 unit.spec.get("hi")]
        return [Chunk(f"{i:05d}", {"lo": edges[i], "hi": edges[i + 1]})
                for i in range(len(edges) - 1)]

    @property
    def scan_order(self) -> list[tuple[str, int]] | None:
        """How a scan that spans batches must be ordered to be exact on this server.

        DocumentDB's gateway (0.106) loses its place between the batches of an unsorted
        cursor once documents of the collection were updated: it returns some twice, or
        loops (400 documents came back as 130,000 in a test); sorted by `_id` it walks the
        index and is exact, and no slower. MongoDB's collection scans are exact unsorted.
        """
        return [("_id", 1)] if self.server.flavor == "documentdb" else None

    def _scan(self, unit: Unit, flt: dict[str, Any]) -> Iterator[RawBSONDocument]:
        coll = self._coll(unit, mapped=True)
        with self._errors(f"reading {unit.name} for verification"):
            with coll.find(flt, sort=self.scan_order,
                           batch_size=max(100, self.options.batch_records)) as cursor:
                yield from cursor

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Count + sum of hashes of raw BSON bytes per chunk, in one pass (unsorted where
        the server's scans are exact unsorted, see ``scan_order``). The per-document
        hashes are kept (``_memo``) for ``record_hashes`` of the chunks that differ, so a
        sync pass does not read those chunks again."""
        out = {c.id: ChunkDigest() for c in chunks}
        self._memo.forget(unit.key)
        if not chunks:
            return out
        started = time.monotonic()
        starts = [meta.order_key(_bound(c.bounds["lo"])) for c in chunks[1:]]
        ids = [c.id for c in chunks]
        kept: dict[str, dict[str, str]] | None = \
            {c.id: {} for c in chunks} if unit.records <= self._memo.limit else None
        size = 0
        for doc in self._scan(unit, self._unit_filter(unit)):
            _id = _doc_id(doc)
            i = bisect.bisect_right(starts, meta.order_key(_id)) if starts else 0
            h = record_hash(_raw(doc))
            out[ids[i]].add(h)
            if kept is not None:
                kept[ids[i]][meta.id_label(_id)] = f"{h:032x}"
                size += 1
                if size > self._memo.limit:
                    kept = None  # more than the plan said: record_hashes reads again
        if kept is not None:
            self._memo.put(unit.key, started, kept, size)
        return out

    def record_hashes(self, unit: Unit, chunk: Chunk) -> dict[str, Any] | None:
        """The digest's own (`_id` label → hash) of one chunk, when it kept them; else None
        and the engine lists the chunk with ``records``. Same hashes as ``records``, so
        equal ones mean byte-identical documents."""
        return self._memo.take(unit.key, chunk.id)

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """(`_id` label, hash of the raw bytes) of the chunk's documents, by digest's rule."""
        lo, hi = _bound((chunk.bounds or {}).get("lo")), _bound((chunk.bounds or {}).get("hi"))
        lo_key = meta.order_key(lo) if lo is not None else None
        hi_key = meta.order_key(hi) if hi is not None else None
        # a chunk lies inside its unit; let the server narrow the scan where its order and
        # ours cannot disagree, and decide membership by our order in every case
        if meta.orders_like_server(lo) and meta.orders_like_server(hi):
            flt = meta.id_range_filter(lo, hi, ferretdb=self.is_ferretdb)
        else:
            flt = self._unit_filter(unit)
        for doc in self._scan(unit, flt):
            _id = _doc_id(doc)
            key = meta.order_key(_id)
            if (lo_key is None or key >= lo_key) and (hi_key is None or key < hi_key):
                yield meta.id_label(_id), f"{record_hash(_raw(doc)):032x}"

    def field_values(self, unit: Unit, field: str) -> Iterator[Any]:
        """One top-level field of each document of the unit, streamed (cross-store checks)."""
        coll: Collection[dict[str, Any]] = self._coll(unit, mapped=True).with_options(
            codec_options=CodecOptions())
        with self._errors(f"reading {unit.name}.{field}"):
            with coll.find(self._unit_filter(unit), {field: 1, "_id": 0},
                           sort=self.scan_order,
                           batch_size=max(1000, self.options.batch_records)) as cursor:
                for doc in cursor:
                    if doc.get(field) is not None:
                        yield doc[field]

    def schema(self, unit: Unit) -> dict[str, Any]:
        db_name = self._db_for(unit, mapped=True)
        with self._errors(f"reading the definition of {unit.name}"):
            return meta.schema(self.client[db_name], str(unit.spec["collection"]))

    # -- catch-up ------------------------------------------------------------------------
    def _ids(self, unit: Unit, keys: list[str]) -> dict[str, Any]:
        """label -> exact `_id` value for ``records()``' keys; anything else is refused."""
        out: dict[str, Any] = {}
        for key in dict.fromkeys(keys):
            try:
                out[key] = meta.id_from_label(key)
            except ValueError as exc:
                raise StoreError(f"{self.endpoint.label}: {unit.name}: {exc}") from exc
        return out

    def _exact(self, coll: Collection, wanted: dict[str, Any], what: str,
               projection: dict[str, Any] | None = None) -> Iterator[RawBSONDocument]:
        """The documents whose `_id` is one of ``wanted`` with the same BSON type: ``$in``
        matches 1, 1.0 and NumberLong(1) alike, a key names exactly one of them."""
        for part in _slices(list(wanted.values()), FETCH_SLICE):
            with self._errors(what):
                for doc in coll.find({"_id": {"$in": part}}, projection,
                                     sort=[("_id", 1)], batch_size=len(part)):
                    if meta.id_label(_doc_id(doc)) in wanted:
                        yield doc

    def records_of(self, unit: Unit, keys: list[str]) -> Iterator[tuple[str, Any]]:
        """``records`` of the named documents (`_id` labels), present ones only."""
        coll = self._coll(unit, mapped=True)
        for doc in self._exact(coll, self._ids(unit, keys),
                               f"reading {unit.name} for verification"):
            yield meta.id_label(_doc_id(doc)), f"{record_hash(_raw(doc)):032x}"

    # -- following changes ---------------------------------------------------------------
    def follow(self) -> ChangeFeed:
        """A change stream on every source database (see ``feed``): from now on the server
        names each document written or deleted."""
        self.open()
        missing = self.change_streams_missing()
        if missing is not None:
            raise CapabilityMissing(f"{self.endpoint.label}: no change streams ({missing}): "
                                    "catch-up digests every chunk")
        with self._errors("following changes"):
            try:
                return ChangeFeed(self.client, self._databases()).start()
            except mx.OperationFailure as exc:
                if exc.code != 13:  # Unauthorized
                    raise
                raise CapabilityMissing(
                    f"{self.endpoint.label}: the account may not open change streams "
                    f"({exc}; grant the read role on the databases): catch-up digests "
                    "every chunk") from None

    def changed_in(self, unit: Unit, changes: Any) -> list[str]:
        """The `_id` labels of ``changes`` in this unit's collection and `_id` range."""
        here = (str(unit.spec["db"]), str(unit.spec["collection"]))
        lo, hi = _bound(unit.spec.get("lo")), _bound(unit.spec.get("hi"))
        lo_key = meta.order_key(lo) if lo is not None else None
        hi_key = meta.order_key(hi) if hi is not None else None
        out = []
        for db, coll, label in changes:
            if (db, coll) != here:
                continue
            if lo_key is not None or hi_key is not None:
                key = meta.order_key(meta.id_from_label(label))
                if (lo_key is not None and key < lo_key) or (hi_key is not None
                                                             and key >= hi_key):
                    continue
            out.append(label)
        return out

    def fetch(self, unit: Unit, keys: list[str]) -> Batch:
        """Source side: the raw documents ``records()`` named, read now (no snapshot), one
        ``$in`` query per slice; a document gone meanwhile, or whose `_id` changed type, is
        absent (the next pass sees it under its new name)."""
        wanted = self._ids(unit, keys)
        coll = self._coll(unit, mapped=False)
        records = list(self._exact(coll, wanted, f"fetching documents of {unit.name}"))
        return Batch(records, None, sum(len(d.raw) for d in records))

    def delete(self, unit: Unit, keys: list[str]) -> None:
        """Target side: delete the named documents (through ``db_map``), type-exact: a key
        ``NumberLong(1)`` leaves a document with ``_id: 1`` alone."""
        wanted = self._ids(unit, keys)
        coll = self._coll(unit, mapped=True)
        found = [_doc_id(d) for d in self._exact(coll, wanted, f"finding {unit.name} "
                                                 "documents to delete", {"_id": 1})]
        for part in _slices(found, FETCH_SLICE):
            with self._errors(f"deleting documents of {unit.name}"):
                coll.delete_many({"_id": {"$in": part}})

    # -- write freeze --------------------------------------------------------------------
    def _no_fsync_lock(self) -> str | None:
        """Why this server has no fsyncLock at all (None: it has one)."""
        info = self.server
        with self._errors("checking whether fsyncLock is possible"):
            try:
                commands = self.client.admin.command("listCommands").get("commands") or {}
            except mx.OperationFailure as exc:
                return (f"{info.flavor} {info.version} does not list its commands (error "
                        f"{exc.code}), so fsyncLock cannot be checked; stop the writers")
        missing = [c for c in ("fsync", "fsyncUnlock") if c not in commands]
        if missing:
            return (f"{info.flavor} {info.version} has no {' or '.join(missing)} command "
                    "(not in listCommands), so no fsyncLock; stop the writers")
        if info.topology == "sharded" and _version(info.version) < (7, 1):
            return (f"fsyncLock through a mongos needs MongoDB 7.1 or later (this is "
                    f"{info.version}); stop the writers")
        return None

    def has_freeze_guard(self) -> bool:
        return self._no_fsync_lock() is None

    def freeze_check(self) -> str | None:
        """None when this account may ``fsyncLock`` this server, else why not. Reads only:
        ``listCommands`` (does the server have fsync at all), the version (a mongos locks
        only from 7.1 on) and ``connectionStatus`` (our privileges: fsync and unlock on the
        cluster). A server without access control lets everyone lock."""
        missing = self._no_fsync_lock()
        if missing:
            return missing
        with self._errors("checking whether fsyncLock is possible"):
            status = self.client.admin.command("connectionStatus", showPrivileges=True)
        auth = status.get("authInfo") or {}
        users = [f"{u.get('user')}@{u.get('db')}" for u in auth.get("authenticatedUsers") or []]
        if not users:
            return None  # no access control: the store could read without logging in
        actions: set[str] = set()
        for privilege in auth.get("authenticatedUserPrivileges") or []:
            if (privilege.get("resource") or {}).get("cluster"):
                actions.update(privilege.get("actions") or [])
        lacking = [a for a in ("fsync", "unlock") if a not in actions]
        if lacking:
            roles = ", ".join(f"{r.get('role')}@{r.get('db')}"
                              for r in auth.get("authenticatedUserRoles") or []) or "none"
            return (f"user {', '.join(users)} lacks the {' and '.join(lacking)} action(s) on "
                    f"the cluster that fsyncLock needs (roles: {roles}); grant hostManager, "
                    "or stop the writers")
        return None

    def freeze(self, seconds: float) -> str:
        """``fsyncLock``: every write on this server waits (reads go on) until ``unfreeze``.
        The server never lifts it by itself; this process lifts it after ``seconds``, but a
        tool that dies leaves it held until ``unfreeze`` (``cutover --rollback``)."""
        reason = self.freeze_check()
        if reason is not None:
            raise CapabilityMissing(f"{self.endpoint.label}: {reason}")
        with self._errors("locking writes with fsyncLock"):
            try:
                reply = self.client.admin.command("fsync", lock=True)
            except mx.OperationFailure as exc:
                if exc.code in _UNAUTHORIZED or exc.code in meta.UNSUPPORTED_CODES:
                    raise CapabilityMissing(f"{self.endpoint.label}: fsyncLock refused: "
                                            f"{(exc.details or {}).get('errmsg') or exc}") from exc
                raise
        self._arm_lapse(seconds)
        count = reply.get("lockCount")
        return (f"fsyncLock on {self.endpoint.label} (lock count {count}): writes wait until "
                f"unfreeze; the server does not lift it by itself, so this process lifts it "
                f"after {seconds:g} s, and if the tool dies it stays held until "
                "`cutover --rollback` (or db.fsyncUnlock())")

    def _arm_lapse(self, seconds: float) -> None:
        if self._lapse is not None:
            self._lapse.cancel()

        def lapse() -> None:
            closed = self._client is None  # the store was closed with the lock held
            try:
                self.open()
                self._unlock(self.client)
                log.warning("%s: the fsyncLock reached its limit (%g s) and was lifted",
                            self.endpoint.label, seconds)
            except MigrateError as exc:
                log.warning("%s: could not lift the fsyncLock at its limit: %s",
                            self.endpoint.label, exc)
            finally:
                if closed:
                    self.close()

        self._lapse = threading.Timer(max(0.0, seconds), lapse)
        self._lapse.daemon = True
        self._lapse.start()

    def unfreeze(self) -> None:
        """``fsyncUnlock`` until the server's lock count is 0; harmless when nothing is held,
        on a server without fsync, and for an account that could not have locked."""
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None
        self.open()
        self._unlock(self.client)

    def _unlock(self, client: MongoClient) -> None:
        for _ in range(MAX_UNLOCKS):
            with self._errors("lifting the fsyncLock"):
                try:
                    reply = client.admin.command("fsyncUnlock")
                except mx.OperationFailure as exc:
                    if (exc.code == _NOT_LOCKED or exc.code in _UNAUTHORIZED
                            or exc.code in meta.UNSUPPORTED_CODES
                            or "not locked" in str(exc)):
                        return
                    raise
            if int(reply.get("lockCount") or 0) <= 0:
                return
        raise StoreError(f"{self.endpoint.label}: still fsync-locked after {MAX_UNLOCKS} "
                         "fsyncUnlock calls", hint="run db.fsyncUnlock() on the server")


def _mongo_source(source: Store) -> MongoStore:
    if not isinstance(source, MongoStore):
        raise StoreError(f"a mongo target needs a mongo source, got {source.kind}")
    source.open()
    return source


class MongoImporter(Importer):
    """Inserts raw documents unordered; a replayed batch finds identical documents.

    Prepared as resumed (a run after a checkpoint, or ``sync``), the importer replaces:
    a document whose `_id` is there with other bytes (or another type of the same number)
    is deleted and inserted again, and so is a target document that holds this one's key
    of a unique index under another `_id` (a group member who left and joined again).
    Delete-and-insert rather than ``replaceOne``: a replacement keeps the stored `_id`'s
    type and refuses top-level ``$`` fields, an insert stores the source's bytes as they are.
    """

    def __init__(self, store: MongoStore, unit: Unit) -> None:
        self.store = store
        self.unit = unit
        self.coll = store._coll(unit, mapped=True)
        self.bypass = bool(unit.spec.get("bypass_validation"))
        self.replace = False
        self._unique: list[dict[str, Any]] | None = None

    def prepare(self, resumed: bool) -> None:
        self.replace = resumed
        if self.store.options.on_existing == "overwrite" and not resumed:
            with self.store._errors(f"clearing {self.unit.name} on the target"):
                self.coll.delete_many(self.store._unit_filter(self.unit))

    def write_batch(self, batch: Batch) -> None:
        if not batch.records:
            return
        where = f"writing {self.unit.name}"
        try:
            with self.store._errors(where):
                docs: list[RawBSONDocument] = list(batch.records)
                for _ in range(WRITE_ROUNDS):
                    try:
                        self.coll.insert_many(docs, ordered=False,
                                              bypass_document_validation=self.bypass or None)
                        return
                    except mx.BulkWriteError as exc:
                        docs = self._settle(exc)
                    if not docs:
                        return
                raise StoreError(
                    f"{self.store.endpoint.label}: {self.unit.name}: document "
                    f"{meta.id_label(_doc_id(docs[0]))} still collides after "
                    f"{WRITE_ROUNDS} attempts to make room for it",
                    hint="another writer is changing the target; stop it and run sync again")
        except TransientError:
            self._explain_dropped_connection(batch)
            raise

    def _settle(self, exc: mx.BulkWriteError) -> list[RawBSONDocument]:
        """Accept duplicates that are byte-identical replays; when replacing, clear the way
        for the others and return them to insert again; otherwise name the `_id`."""
        details = exc.details or {}
        errors = details.get("writeErrors") or []
        others = [e for e in errors if e.get("code") != _DUPLICATE_KEY]
        if others:
            first = others[0]
            raise StoreError(
                f"{self.store.endpoint.label}: {self.unit.name}: document "
                f"{meta.id_label(_doc_id(first['op']))} was refused: {first.get('errmsg')}"
                + (f" (and {len(others) - 1} more)" if len(others) > 1 else ""))
        if details.get("writeConcernErrors"):
            raise TransientError(f"{self.store.endpoint.label}: {self.unit.name}: write "
                                 f"concern not met: {details['writeConcernErrors'][0]}")
        if not errors:
            return []
        # `_id` equality is numeric across int32/int64/double, as the server's
        ids = [_doc_id(e["op"]) for e in errors]
        found = {meta.order_key(_doc_id(d)): d.raw
                 for d in self.coll.find({"_id": {"$in": ids}}, sort=[("_id", 1)])}
        again: list[RawBSONDocument] = []
        stale_ids: list[Any] = []  # documents of ours to delete before inserting again
        for error in errors:
            doc = error["op"]
            label = meta.id_label(_doc_id(doc))
            held = found.get(meta.order_key(_doc_id(doc)))
            if held is None:  # the `_id` is free: another unique index is in the way
                if not self.replace:
                    raise StoreError(
                        f"{self.store.endpoint.label}: {self.unit.name}: document {label} "
                        f"collides with a unique index on the target: {error.get('errmsg')}",
                        hint="the target holds other data; use an empty target")
                stale_ids += self._unique_conflicts(doc, str(error.get("errmsg") or ""))
                again.append(doc)
            elif held == doc.raw:
                continue  # a replay: already there, byte for byte
            elif self.replace:
                stale_ids.append(_doc_id(doc))
                again.append(doc)
            else:
                raise StoreError(
                    f"{self.store.endpoint.label}: {self.unit.name}: the target already "
                    f"holds a different document with _id {label}",
                    hint="use on_existing: overwrite to replace the unit's range")
        for part in _slices(stale_ids, FETCH_SLICE):
            self.coll.delete_many({"_id": {"$in": part}})
        return again

    def _unique_conflicts(self, doc: RawBSONDocument, message: str) -> list[Any]:
        """`_id`s of target documents that hold ``doc``'s key of a unique index. They are
        stale: the source's own index says no other document has that key now, and
        ``sync`` re-copies whichever of them the source still holds."""
        if self._unique is None:
            self._unique = [dict(s) for s in self.coll.with_options(
                codec_options=meta.META).list_indexes() if s.get("unique")]
        named = meta.duplicate_index_name(message)
        specs = [s for s in self._unique if s.get("name") == named] or self._unique
        plain = bson.decode(doc.raw, codec_options=meta.META)
        ids: list[Any] = []
        for spec in specs:
            flt = meta.unique_conflict_filter(spec, plain)
            if flt is None:
                continue
            found = self.coll.find(flt, {"_id": 1}, sort=[("_id", 1)],
                                   collation=spec.get("collation"))
            ids += [_doc_id(d) for d in found]
        if not ids:
            raise StoreError(
                f"{self.store.endpoint.label}: {self.unit.name}: document "
                f"{meta.id_label(_doc_id(doc))} collides with a unique index on the target "
                f"and the document in its way cannot be found: {message}",
                hint="compare the collection's unique indexes on both sides")
        return ids

    def _explain_dropped_connection(self, batch: Batch) -> None:
        """FerretDB drops the connection over values it cannot store; name the document."""
        if not self.store.is_ferretdb:
            return
        for doc in batch.records:
            reason = meta.ferretdb_refusal(doc.raw)
            if reason:
                raise CapabilityMissing(
                    f"{self.store.endpoint.label}: {self.unit.name}: document "
                    f"{meta.id_label(_doc_id(doc))} cannot be stored by FerretDB "
                    f"{self.store.server.version}: {reason}",
                    hint="use a MongoDB target, or exclude the collection")
