"""The Redis archive format: one real RDB file per unit (a DB, or a hash-slot range of
one), assembled from the DUMP payloads a backup reads, with absolute expiry times.

Why RDB: ``redis-server --dbfilename <file>`` loads it and ``redis-check-rdb`` checks it,
with no tool of ours. A unit's file is the magic ``REDIS00NN`` (NN: the highest payload
version in it), one DB section: SELECTDB + RESIZEDB with the unit's exact key and expiry
counts, AUX fields (``redis-ver`` of the source, ``redis-bits``, ``ctime``,
``openim-unit``, and ``openim-payload-ver`` before the keys: the RDB version of their
payloads, which a restore puts back into each payload's footer; Redis reads AUX fields
anywhere and ignores those it does not know), the keys, then EOF and the CRC-64. So a
DB split into several units joins into one file with ``head``/``tail`` (docs/backups.md).
Keys are spooled to a temporary file while the unit is read, so the header can carry
exact counts and that version.

Restore (``export``) reads the file back into the Redis store's batch form, ``(key,
expire_at_ms or 0, DUMP payload)``, each payload rebuilt with its version and CRC-64; the
store's importer RESTOREs it with its absolute TTL, and drops (DEL) a key whose expiry
has passed since the backup, reporting it as skipped.

Verify: the digest recorded per chunk is ``RedisStore.digest()``'s per-record hash of the
same key (string value, payload bytes, sorted elements or canonical fingerprint, exactly
as ``value.record_hashes`` picks), so a live Redis compares EQUAL with its set; ``records``
decodes each value into the canonical fingerprint ``value.fingerprints`` computes with
native commands. Keys whose expiry has passed are left out, as a live server would.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from redis.crc import key_slot

from migrator.archive.format import ArchiveFormat
from migrator.archive.reader import UnitReader
from migrator.archive.writer import UnitWriter
from migrator.errors import CapabilityMissing, StoreError
from migrator.stores.base import (
    Batch,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    Store,
    StoreOptions,
    packed_sum,
)
from migrator.stores.redis import rdb
from migrator.stores.redis import value as rv

SLOTS = 16384
BATCH_RECORDS = 1000  # keys per restored batch (the engine's default batch size)
BATCH_BYTES = 8 << 20
SPOOL_MEMORY = 16 << 20  # a unit's keys stay in memory up to this, then in a temp file
COPY = 1 << 20
CACHED_UNITS = 2  # units whose keys verify keeps parsed while it lists chunks


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def file_name(spec: dict[str, Any]) -> str:
    lo, hi = spec.get("slots", [0, SLOTS - 1])
    return f"db{int(spec.get('db', 0))}-slots-{lo:05d}-{hi:05d}.rdb"


def _bucket(expire_ms: int, tolerance: int) -> int:
    if not expire_ms:
        return -1
    return expire_ms // tolerance if tolerance > 0 else expire_ms


# -- fingerprints and digests from RDB values -------------------------------------------

def _pages(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Pages as a server returns them: full ones, then a short (maybe empty) last one."""
    for start in range(0, len(items) + 1, size):
        yield items[start:start + size]


def fingerprint(entry: rdb.Entry, value: Any) -> rv.Fingerprint:
    """The canonical fingerprint ``value.fingerprints`` computes for this key on a live
    server, from the decoded value: the same ``ValueDigest`` fed the pages its commands
    would have returned."""
    expire = entry.expire_ms or None
    kind = rdb.KINDS[entry.type]
    if kind == "module":
        digest = rv.ValueDigest(entry.key, value[0])
        digest.feed(rdb.make_payload(entry.type, entry.body, entry.version))
        return (value[0], digest.hexdigest(), expire)
    digest = rv.ValueDigest(entry.key, kind)
    if kind == "string":
        for page in _pages(value, rv.STRING_PAGE):
            digest.feed(page)
    elif kind == "list":
        for page in _pages(value, rv.PAGE):
            digest.feed(page)
    elif kind == "set":
        digest.feed((b"0", value))
    elif kind == "hash":
        digest.feed((b"0", [x for pair in value for x in pair]))
    elif kind == "zset":
        flat = [x for member, score in value for x in (member, repr(score).encode())]
        for page in _pages(flat, 2 * rv.PAGE):
            digest.feed(page)
    else:  # stream
        digest.feed([b"last-generated-id", value.last_id])
        digest.feed([[b"name", name, b"last-delivered-id", delivered, b"pending", pending]
                     for name, delivered, pending in value.groups])
        for page in _pages(value.entries, rv.PAGE):
            digest.feed(page)
    return (kind, digest.hexdigest(), expire)


def record_hash(entry: rdb.Entry, tolerance: int) -> bytes:
    """``RedisStore.digest()``'s hash of this key (see ``value.record_hashes``)."""
    key, kind = entry.key, entry.type
    bucket = _bucket(entry.expire_ms, tolerance)
    if kind == rdb.STRING:
        return rv._hashed(b"s", key, bucket, rdb.decode_body(kind, entry.body))
    if kind in rv._PAYLOAD_TYPES:
        return rv._hashed(b"p", key, bucket, bytes((kind,)) + entry.body)
    value = rdb.decode_body(kind, entry.body)
    if kind in rv._ELEMENT_TYPES:
        name = rv._ELEMENT_TYPES[kind]
        items = [x for pair in value for x in pair] if name == b"hash" else list(value)
        body = rv._sorted_elements(name, [b"0", items])
        if body is not None:
            return rv._hashed(b"e", key, bucket, body)
    type_name, hexdigest, _ = fingerprint(entry, value)
    return rv._hashed(b"c", key, bucket, f"{type_name}:{hexdigest}".encode())


def _slot(key: bytes) -> int:
    return int(key_slot(key))


# -- backup --------------------------------------------------------------------------------

class RdbImporter(Importer):
    """Spools a unit's keys as RDB key entries, then writes the RDB file at ``finalize``."""

    def __init__(self, unit: UnitWriter, source: Store) -> None:
        self.unit, self.source = unit, source

    def prepare(self, resumed: bool) -> None:
        spec = self.unit.unit.spec
        if "dbs" in spec:
            raise StoreError(f"unit {self.unit.unit.key} merges DBs {spec['dbs']}; an archive "
                             "keeps each source DB apart", hint="back up without db_map")
        self.db = int(spec.get("db", 0))
        chunks = self.source.chunks(self.unit.unit)
        self.unit.set_chunks(chunks)
        self.owner: list[str | None] = [None] * SLOTS
        for chunk in chunks:
            lo, hi = chunk.bounds
            self.owner[lo:hi + 1] = [chunk.id] * (hi - lo + 1)
        self.tolerance = self.source.options.ttl_tolerance_ms
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        self.seen: set[bytes] = set()
        self.keys = self.expires = 0
        self.versions: set[int] = set()
        self.version: int | None = None

    def write_batch(self, batch: Batch) -> None:
        for record in batch.records:
            if len(record) != 3:
                raise CapabilityMissing(
                    f"redis key {rv.key_text(record[0])!r} came as a typed value; the archive "
                    "stores DUMP payloads", hint="remove mode: typed from the source endpoint")
            key, expire, payload = record
            if key in self.seen:
                continue  # SCAN may list a key twice; an RDB must hold it once
            part = rdb.split_payload(payload)
            if part.type not in rdb.KINDS:
                raise CapabilityMissing(
                    f"redis key {rv.key_text(key)!r} has RDB type {part.type}, which the "
                    "archive format cannot read back (module data of Redis < 4.0, or a hash "
                    "with field expiries)")
            self.seen.add(key)
            if part.version != self.version:
                self.spool.write(rdb.aux(rdb.PAYLOAD_VERSION_AUX, str(part.version)))
                self.version = part.version
                self.versions.add(part.version)
            self.spool.write(rdb.key_entry(key, expire, part))
            entry = rdb.Entry(self.db, key, expire, part.type, bytes(part.body), part.version)
            chunk = self.owner[_slot(key)]
            if chunk is None:
                raise StoreError(f"redis key {rv.key_text(key)!r} is outside unit "
                                 f"{self.unit.unit.key}'s slots")
            self.unit.record(chunk, int.from_bytes(record_hash(entry, self.tolerance), "little"))
            self.keys += 1
            self.expires += bool(expire)

    def finalize(self) -> None:
        version = max([rdb.MIN_VERSION, *self.versions])
        fields = {"redis-ver": ".".join(map(str, getattr(self.source, "version", ()))) or "0",
                  "redis-bits": "64", "ctime": str(int(time.time())),
                  "openim-unit": self.unit.unit.name}
        # AUX fields after SELECTDB (Redis reads them anywhere): every file is then the
        # 9-byte magic, its DB section, and EOF + CRC, which a shell joins (docs/backups.md).
        head = (rdb.header(version, {}) + rdb.select_db(self.db, self.keys, self.expires)
                + b"".join(rdb.aux(k, v) for k, v in fields.items()))
        name = file_name(self.unit.unit.spec)
        meta = {"rdb_version": version, "db": self.db, "keys": self.keys,
                "expires": self.expires}
        self.spool.seek(0)
        with self.unit.open(name, meta) as out:
            out.write(head)
            crc = rdb.crc64(head)
            while True:
                block = self.spool.read(COPY)
                if not block:
                    break
                out.write(block)
                crc = rdb.crc64(block, crc)
            crc = rdb.crc64(b"\xff", crc)
            out.write(b"\xff" + crc.to_bytes(8, "little"))
        self.spool.close()
        self.unit.meta.update({"file": name, "rdb_version": version,
                               "payload_versions": sorted(self.versions), "db": self.db,
                               "ttl_tolerance_ms": self.tolerance})


# -- the format ----------------------------------------------------------------------------

class RedisArchive(ArchiveFormat):
    kind = "redis"
    version = 1

    def __init__(self) -> None:
        self._cache: OrderedDict[str, dict[int, list[rdb.Entry]]] = OrderedDict()
        self._lock = threading.Lock()
        self.tolerance = StoreOptions().ttl_tolerance_ms

    def importer(self, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> Importer:
        return RdbImporter(unit, source)

    # -- reading -------------------------------------------------------------------------
    def _name(self, unit: UnitReader) -> str:
        name = unit.meta.get("file") or file_name(unit.unit.spec)
        if name not in unit.names:
            raise StoreError(f"{unit.unit.key}: the set holds no RDB file {name!r}")
        return str(name)

    def entries(self, unit: UnitReader) -> Iterator[rdb.Entry]:
        """Every key of the unit's RDB file; the file's CRC-64 and the archive's SHA-256
        are checked when the end is reached."""
        with unit.open(self._name(unit)) as stream:
            yield from rdb.read_file(stream)
            if stream.read(1):
                raise rdb.RdbError(f"{unit.unit.key}: data after the RDB file's checksum")

    def export(self, unit: UnitReader, resume_from: Cursor = None) -> Iterator[Batch]:
        done = int(resume_from or 0)
        records: list[Any] = []
        nbytes = 0
        position = 0
        for position, entry in enumerate(self.entries(unit), 1):
            if position <= done:
                continue
            payload = rdb.make_payload(entry.type, entry.body, entry.version)
            records.append((entry.key, entry.expire_ms, payload))
            nbytes += len(entry.key) + len(payload)
            if len(records) >= BATCH_RECORDS or nbytes >= BATCH_BYTES:
                yield Batch(records, position, nbytes)
                records, nbytes = [], 0
        if records:
            yield Batch(records, position, nbytes)

    def _by_slot(self, unit: UnitReader) -> dict[int, list[rdb.Entry]]:
        """The unit's keys by hash slot, kept for the next chunks verify lists."""
        sha = unit.entry(self._name(unit)).sha256
        with self._lock:
            if sha in self._cache:
                self._cache.move_to_end(sha)
                return self._cache[sha]
        found: dict[int, list[rdb.Entry]] = {}
        for entry in self.entries(unit):
            found.setdefault(_slot(entry.key), []).append(entry)
        with self._lock:
            self._cache[sha] = found
            while len(self._cache) > CACHED_UNITS:
                self._cache.popitem(last=False)
        return found

    def _live(self, unit: UnitReader, lo: int, hi: int) -> Iterator[rdb.Entry]:
        """The keys in slots lo..hi whose expiry has not passed (a live server's view)."""
        now = _now_ms()
        by_slot = self._by_slot(unit)
        for slot in range(lo, hi + 1):
            for entry in by_slot.get(slot, ()):
                if not entry.expire_ms or entry.expire_ms > now:
                    yield entry

    def records(self, unit: UnitReader, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        lo, hi = chunk.bounds
        for entry in self._live(unit, lo, hi):
            value = rdb.decode_body(entry.type, entry.body)
            yield rv.key_text(entry.key), fingerprint(entry, value)

    def digest(self, unit: UnitReader, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        tolerance = int(unit.meta.get("ttl_tolerance_ms", self.tolerance))
        out = {}
        for chunk in chunks:
            lo, hi = chunk.bounds
            hashes = [record_hash(entry, tolerance) for entry in self._live(unit, lo, hi)]
            out[chunk.id] = ChunkDigest(len(hashes), packed_sum(b"".join(hashes)))
        return out

    def same_record(self, source_fp: Any, target_fp: Any) -> bool:
        """As ``RedisStore.same_record``: equal type and value, expiries within tolerance."""
        if source_fp is None or target_fp is None:
            return source_fp is target_fp
        (kind_a, hash_a, exp_a), (kind_b, hash_b, exp_b) = source_fp, target_fp
        if kind_a != kind_b or hash_a != hash_b:
            return False
        if exp_a is None or exp_b is None:
            return exp_a is None and exp_b is None
        return bool(abs(exp_a - exp_b) <= self.tolerance)

