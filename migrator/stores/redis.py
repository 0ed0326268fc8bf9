"""Redis store: standalone or Redis Cluster, copied as DUMP payloads with absolute expiries.

URLs: ``redis://[user:${VAR}@]host:port[/db]``, ``rediss://`` (or ``tls:``) for TLS, and
``redis+cluster://host:port`` for a cluster seed node (a ``redis://`` URL that reaches a
cluster node is treated as a cluster too). The URL's db only picks where the connection
starts: a source is read in every DB that holds keys (``dbs: [0]`` restricts it), and each
source DB lands in the same DB on the target unless the target's ``db_map`` says otherwise.
A cluster has only DB 0, so other DBs must be mapped there or left out, checked at plan time.

Units are (db, hash-slot range) with the slot computed client side (CRC16, hash tags
respected), so a unit means the same keys on a standalone server and on a cluster.
A batch holds the keys of whole SCAN calls and carries the SCAN cursor to continue from.
Batch records are ``(key, expire_at_ms or 0, payload)`` for RESTORE, or the typed form of
``redis_value`` when a target refuses the source's payloads or ``mode: typed`` is set.

Endpoint options: ``mode`` (auto | restore | typed), ``dbs`` (source DBs to read),
``db_map`` (target: source DB → DB here), ``scan_count`` (SCAN COUNT, 1000), ``timeout`` (s).

Verification: chunk digests come from string values and DUMP payloads, which are exact but
may differ for equal values (encodings, versions); a chunk that differs is then listed with
canonical, encoding-independent fingerprints, so only a real difference is reported.

Redis offers no snapshot: consistency comes from the write freeze and the re-verify.
"""

from __future__ import annotations

import threading
import time
import uuid
from binascii import crc_hqx
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from migrator import presets
from migrator.errors import MigrateError, PlanError, StoreError, TransientError
from migrator.stores import redis_value as rv
from migrator.stores import redis_wire as rw
from migrator.stores.base import (
    HASH_MASK,
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

SLOTS = 16384
CHUNK_SLOTS = 64  # verification chunk = 64 hash slots
MAX_UNIT_PARTS = 64
SCAN_COUNT = 1000
_REFUSED = "payload version or checksum are wrong"
_SCHEMES = {"redis": False, "rediss": False, "redis+cluster": True, "rediss+cluster": True}
_NOTE = "Redis offers no snapshot: consistency relies on the write freeze + re-verify"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RedisStore(Store):
    kind = "redis"
    capabilities = Capabilities(snapshot_reads=False, server_side_checksum=False, ttls=True,
                                resumable_units=True,
                                wire_format="redis DUMP payloads + absolute expiry (ms)")

    def __init__(self, endpoint: Any, selection: Selection | None = None,
                 options: StoreOptions | None = None) -> None:
        super().__init__(endpoint, selection, options)
        self.filter = rv.KeyFilter(presets.merged(self.kind, self.selection))
        self.mode = str(endpoint.options.get("mode", "auto"))
        if self.mode not in ("auto", "restore", "typed"):
            raise PlanError(f"{endpoint.name or 'redis'}.mode", f"unknown mode '{self.mode}'",
                            hint="auto, restore or typed")
        self.scan_count = int(endpoint.options.get("scan_count", SCAN_COUNT))
        self._page_cache = rw.PageCache()
        self._listings = rw.KeyListings()
        self._lock = threading.RLock()
        self._clients: dict[int, redis.Redis] = {}
        self._cluster: RedisCluster | None = None
        self._nodes: list[tuple[str, redis.Redis]] = []  # cluster masters, by first slot
        self._slot_node: list[int] = []
        self._kwargs: dict[str, Any] = {}
        self._opened = False
        self.version: tuple[int, ...] = ()
        self._source: RedisStore | None = None
        self._typed_export = self.mode == "typed"
        self._restore_refused = False

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            if not self._opened:
                self._open()

    def _open(self) -> None:
        conn = self.endpoint.connection()
        name = self.endpoint.name or "redis"
        if conn.scheme not in _SCHEMES:
            raise PlanError(f"{name}.url", f"unsupported scheme '{conn.scheme}'",
                            hint="redis://, rediss://, redis+cluster:// or rediss+cluster://")
        tls = self.endpoint.tls
        timeout = float(self.endpoint.options.get("timeout", 60))
        self._kwargs = dict(host=conn.host or "127.0.0.1", port=conn.port or 6379,
                            username=conn.username, password=conn.password,
                            socket_timeout=timeout, socket_connect_timeout=10,
                            client_name="openim-migrate",
                            # RESP2: raw replies on every server version
                            protocol=2,
                            # One immediate retry heals a stale pooled connection; waiting
                            # and retrying longer is the engine's retry policy, not ours.
                            retry=Retry(NoBackoff(), 1))
        if tls.enabled or conn.scheme.startswith("rediss"):
            self._kwargs.update(ssl=True, ssl_ca_certs=tls.ca_file, ssl_certfile=tls.cert_file,
                                ssl_keyfile=tls.key_file,
                                ssl_cert_reqs="required" if tls.verify else "none",
                                ssl_check_hostname=tls.verify)
        with self._errors("connecting"):
            is_cluster = _SCHEMES[conn.scheme]
            if not is_cluster:
                server = rv.info(self._client(0), "server")
                is_cluster = rv.info(self._client(0), "cluster").get("cluster_enabled") == "1"
            if is_cluster:
                self._open_cluster()
                server = rv.info(self._nodes[0][1], "server")
            self.version = rv.server_version(server.get("redis_version", "0"))
        self._opened = True

    def _raw(self, **extra: Any) -> redis.Redis:
        client = redis.Redis(**{**self._kwargs, **extra})
        client.response_callbacks = {}  # raw RESP replies: bytes in, bytes out
        return client

    def _client(self, db: int) -> redis.Redis:
        with self._lock:
            if db not in self._clients:
                self._clients[db] = self._raw(db=db)
            return self._clients[db]

    def _open_cluster(self, cluster: RedisCluster | None = None) -> None:
        """Learn the masters and the slot map; reads and writes then go to masters directly.

        RedisCluster is used for discovery only: its pipelines parse replies through
        callbacks, and our batches already know each key's slot.
        """
        kwargs = {k: v for k, v in self._kwargs.items() if k != "client_name"}
        self._cluster = cluster or RedisCluster(**kwargs)
        primaries = {n.name: n for n in self._cluster.get_primaries()}
        first: dict[str, int] = {}
        owner = [""] * SLOTS
        for slot, nodes in self._cluster.nodes_manager.slots_cache.items():
            owner[slot] = nodes[0].name
            first[nodes[0].name] = min(first.get(nodes[0].name, SLOTS), slot)
        names = sorted(primaries, key=lambda n: first.get(n, SLOTS))
        index = {n: i for i, n in enumerate(names)}
        self._nodes = [(n, self._raw(host=primaries[n].host, port=primaries[n].port))
                       for n in names]
        self._slot_node = [index.get(n, 0) for n in owner]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            for _, client in self._nodes:
                client.close()
            if self._cluster is not None:
                self._cluster.close()
            self._clients, self._nodes, self._cluster = {}, [], None
            self._listings = rw.KeyListings()
            self._opened = False

    @property
    def is_cluster(self) -> bool:
        return self._cluster is not None

    @property
    def _pexpiretime(self) -> bool:
        return self.version >= (7,)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Translate redis-py exceptions into ours, naming the endpoint, never a secret."""
        try:
            yield
        except MigrateError:
            raise
        except (redis.AuthenticationError, rx.RedisClusterException, rx.ResponseError) as exc:
            text = str(exc)
            if isinstance(exc, redis.AuthenticationError) or any(
                    s in text for s in ("NOAUTH", "WRONGPASS", "username-password",
                                        "Authentication required")):
                raise self.endpoint.fail(f"authentication failed while {doing}: {exc}",
                                         hint="check the user name and the password variable"
                                         ) from exc
            if isinstance(exc, rx.NoPermissionError):
                raise self.endpoint.fail(f"permission denied while {doing}: {exc}") from exc
            if isinstance(exc, rx.RedisClusterException):
                raise self.endpoint.fail(f"cluster unreachable while {doing}: {exc}",
                                         transient=True) from exc
            if not isinstance(exc, rx.MovedError | rx.AskError | rx.TryAgainError |
                              rx.ClusterDownError | rx.BusyLoadingError):
                raise StoreError(f"{self.endpoint.label}: {doing}: {exc}") from exc
            raise self.endpoint.fail(f"cluster busy while {doing}: {exc}",
                                     transient=True) from exc
        except rx.InvalidResponse as exc:
            raise self.endpoint.fail(f"the server does not answer like Redis ({exc})",
                                     hint="check the host and port") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self.endpoint.fail(f"connection problem while {doing}: {exc}",
                                     transient=True) from exc
        except redis.RedisError as exc:
            raise StoreError(f"{self.endpoint.label}: {doing}: {exc}") from exc

    # -- topology --------------------------------------------------------------------
    def _scan_nodes(self, db: int) -> list[redis.Redis]:
        """The servers whose keyspaces together hold DB ``db``."""
        self.open()
        if self._cluster is None:
            return [self._client(db)]
        if db != 0:
            raise StoreError(f"{self.endpoint.label}: a Redis Cluster has only DB 0, "
                             f"DB {db} was asked for")
        return [client for _, client in self._nodes]

    def _node_for(self, db: int, key: bytes) -> redis.Redis:
        if self._cluster is None:
            return self._client(db)
        return self._nodes[self._slot_node[key_slot(key)]][1]

    def _scan(self, client: redis.Redis, cursor: int, since: float | None = None
              ) -> rw.ScanPage:
        """One SCAN call; ``since`` (a scan's start) lets sibling units share the page."""
        match = ("MATCH", self.filter.match) if self.filter.match else ()

        def fetch() -> rw.ScanPage:
            reply = client.execute_command("SCAN", cursor, *match, "COUNT", self.scan_count)
            return rw.ScanPage(int(reply[0]), reply[1])

        return fetch() if since is None else self._page_cache.page(id(client), cursor, since,
                                                                   fetch)

    def _keyspace(self) -> dict[int, int]:
        """Keys per DB, from INFO keyspace (summed over the masters of a cluster)."""
        counts: dict[int, int] = {}
        clients = [c for _, c in self._nodes] if self._cluster else [self._client(0)]
        for client in clients:
            for name, value in rv.info(client, "keyspace").items():
                if name.startswith("db"):
                    keys = dict(p.split("=") for p in value.split(","))["keys"]
                    counts[int(name[2:])] = counts.get(int(name[2:]), 0) + int(keys)
        return counts

    def local_db(self, unit: Unit) -> int:
        """The DB that holds ``unit`` on this endpoint: the source's DB through ``db_map``.

        A cluster has only DB 0, so an unmapped other DB is refused (a PlanError at plan
        time, from ``existing``) before anything is written.
        """
        source_db = int(unit.spec.get("db", 0))
        mapping = {int(k): int(v) for k, v in (self.endpoint.options.get("db_map") or {}).items()}
        db = mapping.get(source_db, source_db)
        self.open()
        if self._cluster is not None and db != 0:
            name = self.endpoint.name or "redis"
            raise PlanError(f"{name}.db_map",
                            f"source DB {source_db} holds keys (unit {unit.name}) but "
                            f"{self.endpoint.label} is a Redis Cluster, which has only DB 0",
                            hint=f"map it with db_map: {{{source_db}: 0}} on the target "
                            "endpoint, or leave it out with dbs: [0] on the source endpoint")
        return db

    # -- access and facts ------------------------------------------------------------
    def check_access(self, role: Role) -> None:
        self.open()
        with self._errors(f"checking {role.value} rights"):
            counts = self._keyspace()
            dbs = sorted(set(counts) | {0}) if self._cluster is None else [0]
            for db in dbs:
                for index, client in enumerate(self._scan_nodes(db)):
                    self._probe(client, index, role)

    def _probe_key(self, index: int) -> bytes:
        """A fresh key name that a cluster routes to master ``index``."""
        base = f"openim-migrate:access-probe:{uuid.uuid4().hex}"
        if self._cluster is None:
            return base.encode()
        for tag in range(100_000):
            key = f"{base}:{{{tag}}}".encode()
            if self._slot_node[key_slot(key)] == index:
                return key
        raise StoreError(f"{self.endpoint.label}: master {index} owns no hash slot")

    def _probe(self, client: redis.Redis, index: int, role: Role) -> None:
        """Run what the role needs on an absent key: the ACL answers without data moving."""
        commands = rv.access_commands(self._probe_key(index), target=role is Role.TARGET,
                                      typed=self.mode == "typed",
                                      pexpiretime=self._pexpiretime)
        replies = rw.run_commands(client, commands)
        denied = sorted({str(c[0]) if c[0] != "XINFO" else "XINFO STREAM"
                         for c, r in zip(commands, replies, strict=True)
                         if isinstance(r, rx.NoPermissionError)})
        if denied:
            need = "read" if role is Role.SOURCE else "write"
            raise self.endpoint.fail(f"the user lacks the rights a {role.value} needs "
                                     f"(denied: {', '.join(denied)})",
                                     hint=f"grant {need} access (e.g. ACL +@{need} ~*)")

    def describe(self) -> dict[str, Any]:
        self.open()
        with self._errors("describing the server"):
            counts = self._keyspace()
        out: dict[str, Any] = {
            "version": ".".join(map(str, self.version)),
            "mode": "cluster" if self._cluster else "standalone",
            "dbs": {str(db): n for db, n in sorted(counts.items())},
            "expiry": "PEXPIRETIME" if self._pexpiretime else "now + PTTL",
            "copy": self.mode,
            "notes": [_NOTE],
        }
        if self._cluster is not None:
            out["masters"] = [name for name, _ in self._nodes]
        return out

    # -- source side -----------------------------------------------------------------
    def list_units(self) -> list[Unit]:
        self.open()
        with self._errors("listing units"):
            counts = self._keyspace()
            clients = [c for _, c in self._nodes] if self._cluster else [self._client(0)]
            dataset = sum(int(rv.info(c, "memory").get("used_memory_dataset", 0))
                          for c in clients)
        only = self.endpoint.options.get("dbs")
        dbs = sorted(set(counts) | {0})
        if only is not None:
            dbs = [db for db in dbs if db in {int(x) for x in only}]
        total = max(1, sum(counts.values()))
        units = []
        for db in dbs:
            keys = counts.get(db, 0)
            parts = 1
            while keys > parts * self.options.unit_records and parts < MAX_UNIT_PARTS:
                parts *= 2
            width = SLOTS // parts
            for i in range(parts):
                lo, hi = i * width, (i + 1) * width - 1
                units.append(Unit(store=self.kind, name=f"db{db}/slots-{lo:05d}-{hi:05d}",
                                  spec={"db": db, "slots": [lo, hi]}, records=keys // parts,
                                  bytes=dataset * keys // total // parts))
        return units

    def use_typed_export(self) -> None:
        """Export native values from now on: the target cannot read our DUMP payloads."""
        self._typed_export = True

    def read_typed(self, db: int, keys: list[bytes]) -> tuple[list[tuple[Any, ...]],
                                                               list[bytes]]:
        """Typed records of ``keys`` in DB ``db`` (used by a target that refuses payloads)."""
        groups: dict[int, list[bytes]] = {}
        clients: dict[int, redis.Redis] = {}
        for key in keys:
            client = self._node_for(db, key)
            groups.setdefault(id(client), []).append(key)
            clients[id(client)] = client
        records, skipped = [], []
        with self._errors("reading values"):
            for cid, part in groups.items():
                got, gone = rv.read_typed(clients[cid], part, now_ms=_now_ms(),
                                          pexpiretime=self._pexpiretime)
                records += got
                skipped += gone
        return records, skipped

    def _read(self, client: redis.Redis, keys: list[bytes]
              ) -> tuple[list[tuple[Any, ...]], list[bytes], int]:
        """Records for one SCAN page: DUMP + expiry, or native values in typed mode."""
        now = _now_ms()
        if self._typed_export:
            got, gone = rv.read_typed(client, keys, pexpiretime=self._pexpiretime, now_ms=now)
            return got, gone, sum(rv.typed_size(r) for r in got)
        expiry = rv.expiry_command(self._pexpiretime)
        replies = rw.run_commands(client, [c for k in keys for c in (("DUMP", k), (expiry, k))])
        records, skipped = [], []
        relative = 0 if self._pexpiretime else now
        for key, payload, reply in zip(keys, replies[0::2], replies[1::2], strict=True):
            # This loop runs once per key copied: plain type checks, no helper calls.
            if payload.__class__ is not bytes or reply.__class__ is not int:
                for value in (payload, reply):
                    if isinstance(value, Exception):
                        raise value
            if payload is None or reply == -2:  # expired or deleted since SCAN
                skipped.append(key)
            else:
                records.append((key, 0 if reply == -1 else reply + relative, payload))
        return records, skipped, sum(len(r[0]) + len(r[2]) for r in records)

    def _pages(self, nodes: list[redis.Redis], start: int, cursor: int, lo: int, hi: int
               ) -> Iterator[tuple[redis.Redis, list[bytes], dict[str, Any]]]:
        """(server, selected keys, cursor to resume after them) per run of SCAN calls."""
        # Only a slice of the DB's slots is wanted: siblings slicing it too share pages.
        since = time.monotonic() if (lo, hi) != (0, SLOTS - 1) else None
        return rw.scan_runs(nodes, start, cursor, lambda node, at: self._scan(node, at, since),
                            rv.slot_filter(lo, hi, self.filter), self.scan_count)

    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]:
        self.open()
        lo, hi = unit.spec.get("slots", [0, SLOTS - 1])
        nodes = self._scan_nodes(self.local_db(unit))
        state = resume_from or {}
        if state.get("done"):
            return
        start, cursor = int(state.get("node", 0)), int(state.get("scan", 0))
        if state.get("nodes", len(nodes)) != len(nodes):
            # The cluster was resharded since the checkpoint: start over, which is harmless
            # because RESTORE ... REPLACE of the same key converges.
            start, cursor = 0, 0
        pages = self._pages(nodes, start, cursor, lo, hi)
        records: list[Any] = []
        skipped: list[bytes] = []
        nbytes = 0
        with self._errors(f"exporting {unit.name}"):
            for (got, gone, size), at in rw.read_ahead(pages, self._read):
                records += got
                skipped += gone
                nbytes += size
                if len(records) >= self.options.batch_records or \
                        nbytes >= self.options.batch_bytes or at.get("done"):
                    yield Batch(records, at, nbytes, [rv.key_text(k) for k in skipped])
                    records, skipped, nbytes = [], [], 0

    # -- target side -----------------------------------------------------------------
    def existing(self, units: list[Unit]) -> list[str]:
        by_db: dict[int, list[Unit]] = {}
        for unit in units:
            by_db.setdefault(self.local_db(unit), []).append(unit)
        found: set[str] = set()
        with self._errors("looking for existing keys"):
            for db, group in by_db.items():
                nodes = [c for c in self._scan_nodes(db) if int(c.execute_command("DBSIZE"))]
                for _, keys, _ in self._pages(nodes, 0, 0, 0, SLOTS - 1):
                    for slot in {key_slot(k) for k in keys}:
                        found.update(u.name for u in group
                                     if u.spec["slots"][0] <= slot <= u.spec["slots"][1])
                    if all(u.name in found for u in group):
                        break
        return [u.name for u in units if u.name in found]

    def prepare_target(self, units: list[Unit], source: Store) -> None:
        self.open()
        for unit in units:
            self.local_db(unit)  # refuses unmapped DBs on a cluster before any write
        if isinstance(source, RedisStore):
            self._source = source
            if self.mode == "typed":
                source.use_typed_export()

    def importer(self, unit: Unit) -> Importer:
        return RedisImporter(self, unit, self.local_db(unit))

    def _refresh_topology(self) -> None:
        """Re-read the slot map after a MOVED reply (the cluster was resharded)."""
        with self._lock:
            if self._cluster is not None:
                self._cluster.nodes_manager.initialize()
                self._open_cluster(self._cluster)

    # -- verification ----------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        lo, hi = unit.spec.get("slots", [0, SLOTS - 1])
        out = []
        for start in range(lo - lo % CHUNK_SLOTS, hi + 1, CHUNK_SLOTS):
            a, b = max(lo, start), min(hi, start + CHUNK_SLOTS - 1)
            out.append(Chunk(id=f"slots-{a:05d}-{b:05d}", bounds=[a, b]))
        return out

    def _chunk_keys(self, unit: Unit, lo: int, hi: int) -> list[bytes]:
        """The selected keys of the unit in slots lo..hi; the first call of a verify pass
        scans the whole unit and keeps the other slots' keys for the chunks listed next."""
        keys = self._listings.take(unit.key, lo, hi)
        if keys is not None:
            return keys
        ulo, uhi = unit.spec.get("slots", [0, SLOTS - 1])
        started = time.monotonic()
        by_slot: dict[int, list[bytes]] = {}
        with self._errors(f"listing {unit.name}"):
            for _, found, _ in self._pages(self._scan_nodes(self.local_db(unit)), 0, 0,
                                           ulo, uhi):
                for key in found:
                    by_slot.setdefault(key_slot(key), []).append(key)
        keys = [k for slot in range(lo, hi + 1) for k in by_slot.pop(slot, ())]
        self._listings.put(unit.key, started, by_slot, (lo, hi))
        return keys

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Count and hash sum per chunk, from string values and DUMP payloads (the reads a
        copy makes, see ``rv.record_hashes``); ``records`` stays canonical."""
        self._listings.forget(unit.key)  # a new verify pass: list the unit afresh
        owner = [-1] * SLOTS  # slot → index of its chunk
        for i, chunk in enumerate(chunks):
            lo, hi = chunk.bounds
            owner[lo:hi + 1] = [i] * (hi - lo + 1)
        wanted = [slot for slot, i in enumerate(owner) if i >= 0]
        counts, sums = [0] * len(chunks), [0] * len(chunks)
        if wanted:
            self.open()
            ulo, uhi = unit.spec.get("slots", [0, SLOTS - 1])
            pages = self._pages(self._scan_nodes(self.local_db(unit)), 0, 0,
                                max(wanted[0], ulo), min(wanted[-1], uhi))
            tolerance = self.options.ttl_tolerance_ms
            one_mget = self._cluster is None  # a cluster refuses MGET across hash slots

            def read(client: redis.Redis, keys: list[bytes]) -> list[tuple[bytes, int]]:
                return rv.record_hashes(client, keys, now_ms=_now_ms(), tolerance=tolerance,
                                        pexpiretime=self._pexpiretime, one_mget=one_mget)

            with self._errors(f"checksumming {unit.name}"):
                for found, _ in rw.read_ahead(pages, read):
                    for key, value in found:
                        i = owner[key_slot(key) if b"{" in key else crc_hqx(key, 0) & 0x3FFF]
                        if i >= 0:
                            counts[i] += 1
                            sums[i] += value
        return {chunk.id: ChunkDigest(counts[i], sums[i] & HASH_MASK)
                for i, chunk in enumerate(chunks)}

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        keys, db = self._chunk_keys(unit, *chunk.bounds), self.local_db(unit)
        groups: dict[int, tuple[redis.Redis, list[bytes]]] = {}
        for key in keys:
            client = self._node_for(db, key)
            groups.setdefault(id(client), (client, []))[1].append(key)
        with self._errors(f"checksumming {unit.name}"):
            for client, part in groups.values():
                for i in range(0, len(part), self.scan_count):
                    for key, fp in rv.fingerprints(client, part[i:i + self.scan_count],
                                                   now_ms=_now_ms(),
                                                   pexpiretime=self._pexpiretime):
                        yield rv.key_text(key), fp

    def same_record(self, source_fp: Any, target_fp: Any) -> bool:
        if source_fp is None or target_fp is None:
            return source_fp is target_fp
        (kind_a, hash_a, exp_a), (kind_b, hash_b, exp_b) = source_fp, target_fp
        if kind_a != kind_b or hash_a != hash_b:
            return False
        if exp_a is None or exp_b is None:
            return exp_a is None and exp_b is None
        return abs(exp_a - exp_b) <= self.options.ttl_tolerance_ms


class RedisImporter(Importer):
    """Writes batches with pipelined RESTORE ... REPLACE ABSTTL, or typed commands."""

    def __init__(self, store: RedisStore, unit: Unit, db: int) -> None:
        self.store, self.unit, self.db = store, unit, db

    def write_batch(self, batch: Batch) -> None:
        store = self.store
        now = _now_ms()
        expired = [r[0] for r in batch.records if r[1] and r[1] <= now]
        live = [r for r in batch.records if not (r[1] and r[1] <= now)]
        dumps = [r for r in live if len(r) == 3]
        typed = [r for r in live if len(r) == 4]
        if dumps and (store._restore_refused or store.mode == "typed"):
            typed += self._refetch([r[0] for r in dumps], batch)
            dumps = []
        with store._errors(f"writing {self.unit.name}"):
            refused = self._send(expired, dumps, typed)
            if refused and store.mode == "restore":
                raise StoreError(f"{store.endpoint.label}: the target refuses the source's "
                                 f"DUMP payloads ({rv.key_text(refused[0])!r}: RDB version "
                                 "newer than the target's)", hint="use mode: auto or typed")
            if refused:
                # The target's RDB version is older than the source's: from now on the
                # source sends native values, and this batch's refused keys are re-read.
                store._restore_refused = True
                if store._source is not None:
                    store._source.use_typed_export()
                self._send([], [], self._refetch(refused, batch))
        batch.skipped.extend(rv.key_text(k) for k in expired)

    def _refetch(self, keys: list[bytes], batch: Batch) -> list[tuple[Any, ...]]:
        source = self.store._source
        if source is None:
            raise StoreError(f"{self.store.endpoint.label}: the target refuses the source's "
                             "DUMP payloads and no source store is attached to re-read them",
                             hint="set mode: typed on the source endpoint")
        records, gone = source.read_typed(int(self.unit.spec.get("db", 0)), keys)
        batch.skipped.extend(rv.key_text(k) for k in gone)
        now = _now_ms()
        batch.skipped.extend(rv.key_text(r[0]) for r in records if r[1] and r[1] <= now)
        return [r for r in records if not (r[1] and r[1] <= now)]

    def _send(self, expired: list[bytes], dumps: list[tuple[Any, ...]],
              typed: list[tuple[Any, ...]]) -> list[bytes]:
        """One pipeline for the batch; returns the keys whose payload the target refused."""
        store = self.store
        # DEL first: a key gone on the source by now must not stay on the target.
        keyed: list[tuple[bytes, tuple[Any, ...]]] = [(k, ("DEL", k)) for k in expired]
        if store.version >= (5,):
            keyed += [(k, ("RESTORE", k, exp, p, "REPLACE", "ABSTTL")) for k, exp, p in dumps]
        else:  # Redis < 5: relative TTLs only
            now = _now_ms()
            keyed += [(k, ("RESTORE", k, max(1, exp - now) if exp else 0, p, "REPLACE"))
                      for k, exp, p in dumps]
        keyed += [(r[0], c) for r in typed for c in rv.typed_commands(r, store.version)]
        if store.is_cluster:
            replies = rw.run_routed(lambda key: store._node_for(self.db, key), keyed)
        else:
            replies = rw.run_commands(store._client(self.db), [c for _, c in keyed])
        refused = []
        for (key, _), reply in zip(keyed, replies, strict=True):
            if not isinstance(reply, Exception):
                continue
            if _REFUSED in str(reply):
                refused.append(key)
            elif isinstance(reply, (rx.MovedError, rx.AskError)):
                store._refresh_topology()
                raise TransientError(f"{store.endpoint.label}: the cluster moved hash slots "
                                     f"while writing {self.unit.name}; the batch will be "
                                     "written again") from reply
            else:
                raise StoreError(f"{store.endpoint.label}: writing {rv.key_text(key)!r} "
                                 f"in {self.unit.name}: {reply}") from reply
        return refused

