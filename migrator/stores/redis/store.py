"""Redis store: standalone or Redis Cluster, copied as DUMP payloads with absolute expiries.

URLs: ``redis://[user:${VAR}@]host[:port][/db]``, ``rediss://`` (or ``tls:``) for TLS, and
``redis+cluster://host:port`` for a cluster seed node (a ``redis://`` URL that reaches a
cluster node is treated as a cluster too). The host is required and the port defaults to
6379; port 0, a query string, or a path other than a DB number are refused, because
they would be ignored.

Which databases (``check_endpoint``, then ``list_units``/``adapt_units`` on the server):

* Source: every DB that holds keys, plus DB 0. ``dbs: [...]`` or the URL's ``/N`` names
  the DBs instead ("only these"); each named DB gets its units even while empty, and a DB
  the server does not have is refused, naming its database count.
* Target: each source DB lands in the DB ``db_map`` names, else in the URL's ``/N``, else
  in the DB of the same number. A cluster has only DB 0.
* Merge: source DBs that land in one target DB (the usual case for a cluster) are planned
  as union units, ``{"dbs": [0, 1], "target_db": 0, "slots": [lo, hi]}``, which every side
  reads whole: the source reads all listed DBs, the target its one DB, so verify compares
  the union with the DB. A key present in two merged DBs is refused at plan time, and a
  merge must be asked for with ``db_map`` (DBs moved together by the URL's ``/N`` alone
  are refused).

Units are (db, hash-slot range) with the slot computed client side (CRC16, hash tags
respected), so a unit means the same keys on a standalone server and on a cluster.
A batch holds the keys of whole SCAN calls and carries the SCAN cursor to continue from.
Batch records are ``(key, expire_at_ms or 0, payload)`` for RESTORE, or the typed form of
``value`` when a target refuses the source's payloads or ``mode: typed`` is set.

Endpoint options (``OPTION_SCHEMA``): ``mode`` (auto | restore | typed), ``dbs`` (source
DBs to read), ``db_map`` (target: source DB → DB here), ``scan_count`` (SCAN COUNT, 1000),
``timeout`` (seconds). Selection patterns follow Redis' own MATCH (``value.Glob``).

Verification: chunk digests come from string values and DUMP payloads, which are exact but
may differ for equal values (encodings, versions); a chunk that differs is then listed with
canonical, encoding-independent fingerprints, so only a real difference is reported.

Catch-up (``sync``): ``fetch`` reads the keys ``records`` named (in any DB of a union) in
the batch form above, ``delete`` UNLINKs keys per master; importers never clear a DB.
Write freeze (``cutover``): ``CLIENT PAUSE <ms> WRITE`` on every master, which lapses by
itself; ``freeze_check`` proves the right with ACL DRYRUN or a discarded MULTI.

Redis offers no snapshot: consistency comes from the write freeze and the re-verify.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from binascii import crc_hqx
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import jsonschema
import redis
from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from migrator import presets
from migrator.config import Endpoint
from migrator.errors import (
    CapabilityMissing,
    MigrateError,
    PlanError,
    StoreError,
    TransientError,
)
from migrator.stores.base import (
    HASH_MASK,
    Batch,
    Capabilities,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    RecordMemo,
    Role,
    Selection,
    Store,
    StoreOptions,
    Unit,
    packed_sum,
)
from migrator.stores.redis import value as rv
from migrator.stores.redis import wire as rw
from migrator.stores.redis.feed import ChangeFeed

SLOTS = 16384
CHUNK_SLOTS = 64  # widest verification chunk, in hash slots
CHUNK_KEYS = 64  # narrower chunks while the plan's estimate puts more keys than this in one
MAX_UNIT_PARTS = 64
SCAN_COUNT = 1000
FOLD_KEYS = 200_000  # a digest too big for the memo sums its packed hashes this often
_REFUSED = "payload version or checksum are wrong"
_SCHEMES = {"redis": False, "rediss": False, "redis+cluster": True, "rediss+cluster": True}
_NOTE = "Redis offers no snapshot: consistency relies on the write freeze + re-verify"
MAX_DB = 2**31 - 2  # Redis' `databases` may be up to INT_MAX
_EXISTS = rw.key_command("EXISTS")
_SHOWN = 5  # keys named in a refusal
PAUSE_WRITE = (6, 2)  # CLIENT PAUSE ... WRITE and CLIENT UNPAUSE
TRACKING = (6, 0)  # CLIENT TRACKING ... BCAST
# The freeze's commands as the ACL checks see them (never executed by a check).
_FREEZE: list[tuple[str, ...]] = [("CLIENT", "PAUSE", "1000", "WRITE"), ("CLIENT", "UNPAUSE")]
_FREEZE_NAMES = ["CLIENT PAUSE", "CLIENT UNPAUSE"]

_DB = {"type": "integer", "minimum": 0, "maximum": MAX_DB}
_SLOT = {"type": "integer", "minimum": 0, "maximum": SLOTS - 1}


@dataclass(frozen=True)
class RedisURL:
    """What an endpoint URL says, read without resolving a secret."""

    scheme: str
    host: str
    port: int
    db: int | None  # the URL's /N: "only DB N" on a source, "into DB N" on a target
    cluster: bool  # the scheme names a cluster


def parse_url(endpoint: Endpoint) -> RedisURL:
    """The URL's parts, or a PlanError naming ``<endpoint>.url`` for what would be ignored."""
    where = f"{endpoint.name or 'redis'}.url"
    try:
        parts = urlsplit(endpoint.url)
        port = parts.port
    except ValueError as exc:
        raise PlanError(where, f"not a valid URL ({exc})") from None
    if parts.scheme not in _SCHEMES:
        raise PlanError(where, f"unsupported scheme '{parts.scheme}'",
                        hint="redis://, rediss://, redis+cluster:// or rediss+cluster://")
    if not parts.hostname:
        raise PlanError(where, "names no host", hint="write e.g. redis://host:6379")
    if port == 0:
        raise PlanError(where, "port 0 is not a port",
                        hint="name the server's port, or leave it out for 6379")
    if parts.query or parts.fragment:
        shown = f"?{parts.query}" if parts.query else f"#{parts.fragment}"
        raise PlanError(where, f"'{shown}' would be ignored",
                        hint="TLS goes in tls:, the DB in the path (/N), the rest in endpoint "
                        "options")
    path = parts.path
    db: int | None = None
    if path not in ("", "/"):
        if not re.fullmatch(r"/[0-9]{1,10}", path) or int(path[1:]) > MAX_DB:
            raise PlanError(where, f"'{path}' is not a database number",
                            hint="write /N for DB N, or nothing")
        db = int(path[1:])
    cluster = _SCHEMES[parts.scheme]
    if cluster and db not in (None, 0):
        raise PlanError(where, f"names DB {db}, but a Redis Cluster has only DB 0")
    return RedisURL(parts.scheme, parts.hostname, port or 6379, db, cluster)


def _schema_problem(error: jsonschema.ValidationError) -> str:
    wanted_value: Any = error.validator_value
    schema: Any = error.schema
    shown = repr(error.instance)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if "propertyNames" in error.absolute_schema_path:
        return f"key {shown} is not a DB number"
    if error.validator == "type":
        wanted = {"integer": "a whole number", "number": "a number", "array": "a list",
                  "object": "a mapping", "string": "a string"}.get(str(wanted_value),
                                                                  str(wanted_value))
        return f"must be {wanted}, got {shown}"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(str, wanted_value))}, got {shown}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum"):
        word = {"minimum": "at least", "maximum": "at most",
                "exclusiveMinimum": "more than"}[str(error.validator)]
        return f"must be {word} {wanted_value}, got {shown}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        return f"unknown option (known: {', '.join(sorted(schema.get('properties', {})))})"
    return error.message


def check_options(endpoint: Endpoint) -> None:
    """Endpoint options against ``RedisStore.OPTION_SCHEMA``; the error names the option."""
    validator = jsonschema.Draft202012Validator(RedisStore.OPTION_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(endpoint.options))
    if error is None:
        return
    where = endpoint.name or "redis"
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        path += sorted((k for k in error.instance if k not in known), key=str)[:1]
    value: Any = endpoint.options
    for part in path:  # a list index as [i], a mapping key (db_map's may be ints) as .key
        where += f"[{part}]" if isinstance(value, list) else f".{part}"
        value = value[part] if isinstance(value, list | dict) and part in (
            range(len(value)) if isinstance(value, list) else value) else None
    raise PlanError(where, _schema_problem(error))


def source_dbs(unit: Unit) -> list[int]:
    """The source DBs a unit reads: ``dbs`` of a union unit, else its ``db``."""
    if "dbs" in unit.spec:
        return [int(d) for d in unit.spec["dbs"]]
    return [int(unit.spec.get("db", 0))]


def _listing(unit: Unit, db: int) -> str:
    return f"{unit.key}@{db}"


def _dbs_text(dbs: list[int]) -> str:
    return ", ".join(map(str, dbs[:-1])) + f" and {dbs[-1]}" if len(dbs) > 1 else str(dbs[0])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


Hashes = list[tuple[bytes, bytes]]  # (key, 16-byte per-record hash of the chunk digest)


@dataclass
class _Kept:
    index: dict[str, int]  # chunk id -> position, until handed out
    keys: dict[int, list[list[bytes]]]  # DB -> per chunk: keys
    hashes: dict[int, list[bytearray]]  # DB -> per chunk: their hashes, 16 bytes each


class HashMemo(RecordMemo):
    """``RecordMemo`` for Redis: kept by chunk and DB, keys and packed hashes in about 80
    bytes a key (a tuple of key and int would take 160), up to 1M keys."""

    def __init__(self, limit: int = 1_000_000, max_age: float = 600.0) -> None:
        super().__init__(limit, max_age)

    def keep(self, unit: str, started: float, chunks: list[Chunk],
             keys: dict[int, list[list[bytes]]], hashes: dict[int, list[bytearray]],
             size: int) -> None:
        self.put(unit, started, _Kept({c.id: i for i, c in enumerate(chunks)}, keys, hashes),
                 size)

    def _split(self, payload: Any, chunk: str) -> tuple[dict[int, Hashes] | None, int]:
        """The hashes of one chunk by DB."""
        i = payload.index.pop(chunk, None)
        if i is None:
            return None, 0
        out = {}
        for db, per_chunk in payload.keys.items():
            packed = payload.hashes[db][i]
            out[db] = [(key, bytes(packed[16 * j:16 * j + 16]))
                       for j, key in enumerate(per_chunk[i])]
            per_chunk[i], payload.hashes[db][i] = [], bytearray()
        return out, sum(map(len, out.values()))


class RedisStore(Store):
    kind = "redis"
    capabilities = Capabilities(snapshot_reads=False, server_side_checksum=False, ttls=True,
                                resumable_units=True,
                                wire_format="redis DUMP payloads + absolute expiry (ms)")

    OPTION_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "mode": {"enum": ["auto", "restore", "typed"]},
            "dbs": {"type": "array", "items": _DB, "minItems": 1, "uniqueItems": True},
            "db_map": {"type": "object",
                       "propertyNames": {"anyOf": [
                           {"type": "integer", "minimum": 0, "maximum": MAX_DB},
                           {"type": "string", "pattern": "^[0-9]{1,10}$"}]},
                       "additionalProperties": _DB},
            "scan_count": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86_400},
        },
    }
    SPEC_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["slots"],
        "additionalProperties": False,
        "properties": {
            "db": _DB,
            "dbs": {"type": "array", "items": _DB, "minItems": 2, "uniqueItems": True},
            "target_db": _DB,
            "slots": {"type": "array", "prefixItems": [_SLOT, _SLOT], "items": False,
                      "minItems": 2},
            "resumable": {"type": "boolean"},
        },
        # A plain unit names its db; a union unit its source dbs and the DB they land in.
        "if": {"not": {"required": ["dbs"]}},
        "then": {"required": ["db"]},
        "else": {"required": ["target_db"], "not": {"required": ["db"]}},
        "dependentRequired": {"target_db": ["dbs"]},
    }

    def __init__(self, endpoint: Endpoint, selection: Selection | None = None,
                 options: StoreOptions | None = None) -> None:
        super().__init__(endpoint, selection, options)
        self._url = parse_url(endpoint)
        check_options(endpoint)
        preset = presets.get(self.kind, self.selection.preset) if self.selection.preset \
            else None
        rv.check_patterns(self.selection, f"stores.{self.kind}.selection", preset)
        self.filter = rv.KeyFilter(presets.merged(self.kind, self.selection))
        self.mode = str(endpoint.options.get("mode", "auto"))
        self.scan_count = int(endpoint.options.get("scan_count", SCAN_COUNT))
        self._map = {int(k): int(v) for k, v in (endpoint.options.get("db_map") or {}).items()}
        self.role: Role | None = None  # learnt from the first call only one side makes
        self._page_cache = rw.PageCache()
        self._listings = rw.KeyListings()
        self._hashes = HashMemo()
        self._lock = threading.RLock()
        self._clients: dict[int, redis.Redis] = {}
        self._cluster: RedisCluster | None = None
        self._nodes: list[tuple[str, redis.Redis]] = []  # cluster masters, by first slot
        self._slot_node: list[int] = []
        self._kwargs: dict[str, Any] = {}
        self._opened = False
        self._dbcount: int | None = None
        self.version: tuple[int, ...] = ()
        self._source: RedisStore | None = None
        self._typed_export = self.mode == "typed"
        self._restore_refused = False

    @property
    def _name(self) -> str:
        return self.endpoint.name or "redis"

    # -- checks without a server -----------------------------------------------------
    @classmethod
    def check_endpoint(cls, endpoint: Endpoint, role: Role) -> None:
        url = parse_url(endpoint)
        check_options(endpoint)
        name, options = endpoint.name or "redis", endpoint.options
        dbs = options.get("dbs")
        if role is Role.SOURCE:
            if "db_map" in options:
                raise PlanError(f"{name}.db_map", "is a target option (where source DBs land)",
                                hint="put db_map on the target endpoint; name the source's "
                                "DBs with dbs: [...]")
            if dbs is not None and url.db is not None and sorted(dbs) != [url.db]:
                raise PlanError(f"{name}.dbs", f"{dbs} disagrees with the URL's /{url.db}",
                                hint="name the source's DBs in one place")
            if url.cluster and dbs is not None and sorted(dbs) != [0]:
                raise PlanError(f"{name}.dbs", f"{dbs}: a Redis Cluster has only DB 0")
        else:
            if dbs is not None:
                raise PlanError(f"{name}.dbs", "is a source option (which DBs are read)",
                                hint="say where source DBs land with db_map on the target")
            moved = [v for v in (options.get("db_map") or {}).values() if v != 0]
            if url.cluster and moved:
                raise PlanError(f"{name}.db_map", f"maps to DB {moved[0]}, but a Redis Cluster "
                                "has only DB 0")

    def _bind(self, role: Role) -> None:
        """Remember which side this store is, checking the endpoint for that side once."""
        if self.role is role:
            return
        if self.role is not None:
            raise StoreError(f"{self.endpoint.label}: used as {self.role.value} and as "
                             f"{role.value}")
        type(self).check_endpoint(self.endpoint, role)
        self.role = role

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            if not self._opened:
                self._open()

    def _open(self) -> None:
        conn = self.endpoint.connection()
        tls = self.endpoint.tls
        timeout = float(self.endpoint.options.get("timeout", 60))
        self._kwargs = dict(host=self._url.host, port=self._url.port,
                            username=conn.username, password=conn.password,
                            socket_timeout=timeout, socket_connect_timeout=min(10.0, timeout),
                            client_name="openim-migrate",
                            # RESP2: raw replies on every server version
                            protocol=2,
                            # One immediate retry heals a stale pooled connection; waiting
                            # and retrying longer is the engine's retry policy, not ours.
                            retry=Retry(NoBackoff(), 1))
        if tls.enabled or self._url.scheme.startswith("rediss"):
            self._kwargs.update(ssl=True, ssl_ca_certs=tls.ca_file, ssl_certfile=tls.cert_file,
                                ssl_keyfile=tls.key_file,
                                ssl_cert_reqs="required" if tls.verify else "none",
                                ssl_check_hostname=tls.verify)
        with self._errors("connecting"):
            is_cluster = self._url.cluster
            if not is_cluster:
                server = rv.info(self._client(0), "server")
                is_cluster = rv.info(self._client(0), "cluster").get("cluster_enabled") == "1"
            if is_cluster:
                self._open_cluster()
                server = rv.info(self._nodes[0][1], "server")
            self.version = rv.server_version(server.get("redis_version", "0"))
        if self._cluster is not None and self._url.db not in (None, 0):
            raise PlanError(f"{self._name}.url", f"names DB {self._url.db}, but "
                            f"{self.endpoint.label} is a Redis Cluster, which has only DB 0")
        self._opened = True

    def _raw(self, **extra: Any) -> redis.Redis:
        client = redis.Redis(**{**self._kwargs, **extra})
        client.response_callbacks.clear()  # raw RESP replies: bytes in, bytes out
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
            self._hashes = HashMemo()
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

    def _databases(self) -> int | None:
        """How many DBs the server has: CONFIG GET, else found with SELECT (a read-only
        user may not run CONFIG); None when neither is allowed."""
        self.open()
        if self._cluster is not None:
            return 1
        if self._dbcount is None:
            with self._errors("counting databases"):
                try:
                    reply = self._client(0).execute_command("CONFIG", "GET", "databases")
                    self._dbcount = int(reply[1])
                except (rx.ResponseError, IndexError, ValueError):
                    self._dbcount = self._count_by_select()
        return self._dbcount or None

    def _count_by_select(self) -> int:
        probe = redis.Redis(**self._kwargs, single_connection_client=True)
        try:
            lo, hi = 1, MAX_DB + 1  # DB lo - 1 exists; DB hi does not
            while lo < hi:
                mid = (lo + hi) // 2
                try:
                    probe.execute_command("SELECT", mid)
                    lo = mid + 1
                except rx.NoPermissionError:
                    return 0
                except rx.ResponseError:
                    hi = mid
            return lo
        finally:
            probe.close()

    def _explicit_dbs(self) -> tuple[list[int], str] | None:
        """A source's named DBs and the field that names them, or None for "every DB"."""
        if self.endpoint.options.get("dbs") is not None:
            return sorted(int(d) for d in self.endpoint.options["dbs"]), "dbs"
        if self._url.db is not None:
            return [self._url.db], "url"
        return None

    def _check_db(self, db: int, field: str, doing: str) -> None:
        """Refuse a DB this server does not have (a cluster has DB 0 only)."""
        self.open()
        if self._cluster is not None and db != 0:
            raise PlanError(f"{self._name}.{field}",
                            f"{doing} DB {db}, but {self.endpoint.label} is a Redis Cluster, "
                            "which has only DB 0",
                            hint="map it with db_map: {N: 0} on the target endpoint, or leave "
                            "it out with dbs: [...] on the source endpoint")
        count = self._databases()
        if count is not None and db >= count:
            raise PlanError(f"{self._name}.{field}",
                            f"{doing} DB {db}, but the server has {count} databases "
                            f"(0-{count - 1})")

    def _landing(self, db: int) -> tuple[int, str]:
        """Where source DB ``db`` is on this endpoint, and what says so (db_map, url, same)."""
        if self.role is Role.SOURCE:
            return db, "same"
        if db in self._map:
            return self._map[db], "db_map"
        if self._url.db is not None and self._url.db != db:
            return self._url.db, "url"
        return db, "same"

    def _unit_dbs(self, unit: Unit) -> list[int]:
        """The DBs of this endpoint that hold ``unit``: on a source the unit's DBs, on a
        target the one DB they land in."""
        dbs = source_dbs(unit)
        if self.role is Role.SOURCE:
            named = self._explicit_dbs()
            if named is not None and not set(dbs) <= set(named[0]):
                raise PlanError(f"{self._name}.{named[1]}",
                                f"unit {unit.name} reads DB {_dbs_text(dbs)}, which this "
                                f"endpoint leaves out (it reads DB {_dbs_text(named[0])})")
            return dbs
        here = sorted({self._landing(db)[0] for db in dbs})
        planned = unit.spec.get("target_db")
        if planned is not None and here != dbs and here != [int(planned)]:
            raise PlanError(f"{self._name}.db_map",
                            f"unit {unit.name} merges source DBs {_dbs_text(dbs)} into DB "
                            f"{planned}, but this endpoint now puts them in DB "
                            f"{_dbs_text(here)}", hint="re-run plan")
        for db in here:
            field = "db_map" if self._landing(dbs[0])[1] != "url" else "url"
            self._check_db(db, field, f"unit {unit.name} lands in")
        return here

    def _target_db(self, unit: Unit) -> int:
        """The one DB a target writes ``unit`` into."""
        dbs = self._unit_dbs(unit)
        if len(dbs) != 1:
            raise PlanError(f"{self._name}.db_map",
                            f"unit {unit.name} would be spread over DBs {_dbs_text(dbs)}",
                            hint="re-run plan")
        return dbs[0]

    def _check_merges(self, units: list[Unit]) -> None:
        """Units that land in one target DB must be one union, or verify would compare each
        with the whole DB (a plan made before merges were planned as unions)."""
        landing: dict[int, set[str]] = {}
        for unit in units:
            landing.setdefault(self._target_db(unit), set()).add(self.container_of(unit))
        for db, groups in sorted(landing.items()):
            if len(groups) > 1:
                raise PlanError(f"{self._name}.db_map",
                                f"{' and '.join(sorted(groups))} all land in DB {db} but are "
                                "planned apart, so each would be checked against the whole DB",
                                hint="re-run plan: it plans a merge as one union")

    # -- access and facts ------------------------------------------------------------
    def check_access(self, role: Role) -> None:
        if self.role is None:
            self._bind(role)
        else:
            type(self).check_endpoint(self.endpoint, role)
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

    # -- write freeze ----------------------------------------------------------------
    def _masters(self) -> list[tuple[str, redis.Redis]]:
        """Every server that takes writes: a cluster's masters, else the one server."""
        self.open()
        if self._cluster is not None:
            return list(self._nodes)
        return [(f"{self._url.host}:{self._url.port}", self._client(0))]

    def freeze_check(self) -> str | None:
        """None when this account may run ``CLIENT PAUSE ... WRITE`` and ``CLIENT UNPAUSE``
        on every master, else one line naming what is missing. Asks ``ACL DRYRUN`` where
        the account may, else queues both commands in a MULTI it then discards: the ACL
        answers at queueing time, so nothing is ever paused by the check."""
        self._bind(Role.SOURCE)
        self.open()
        if self.version < PAUSE_WRITE:
            return (f"{self.endpoint.label}: Redis {'.'.join(map(str, self.version))} has no "
                    "CLIENT PAUSE ... WRITE (Redis 6.2+); stop the writers instead")
        denied: set[str] = set()
        unknown: list[str] = []
        with self._errors("checking the rights for a write freeze"):
            for name, client in self._masters():
                found = self._pause_denied(client)
                if found is None:
                    unknown.append(name)
                else:
                    denied |= found
        user = self.endpoint.connection().username or "default"
        if denied:
            rules = " ".join(f"+{c.lower().replace(' ', '|')}" for c in sorted(denied))
            return (f"{self.endpoint.label}: the account '{user}' may not run "
                    f"{' and '.join(sorted(denied))}, which the write freeze needs "
                    f"(grant {rules})")
        if unknown:
            return (f"{self.endpoint.label}: cannot tell whether the account '{user}' may run "
                    f"CLIENT PAUSE on {', '.join(unknown)}: it may run neither ACL DRYRUN nor "
                    "MULTI (grant +multi +discard, or +client|pause +client|unpause with them)")
        return None

    def _pause_denied(self, client: redis.Redis) -> set[str] | None:
        """Which of the freeze's commands the account may not run on this server (None:
        the server would not say without running them)."""
        whoami = rw.run_commands(client, [("ACL", "WHOAMI")])[0]
        user = whoami.decode() if isinstance(whoami, bytes) else \
            self.endpoint.connection().username or "default"
        replies = rw.run_commands(client, [("ACL", "DRYRUN", user, *c) for c in _FREEZE])
        if not any(isinstance(r, Exception) for r in replies):
            return {_FREEZE_NAMES[i] for i, r in enumerate(replies) if r != b"OK"}
        # No ACL DRYRUN (Redis < 7, or not granted): queue them, and never execute them.
        conn = client.connection_pool.get_connection()
        try:
            conn.send_command("MULTI")
            try:
                conn.read_response()
            except rx.ResponseError:
                return None
            denied = set()
            for i, command in enumerate(_FREEZE):
                conn.send_command(*command)
                try:
                    conn.read_response()
                except rx.NoPermissionError:
                    denied.add(_FREEZE_NAMES[i])
                except rx.ResponseError:
                    pass  # e.g. unknown to this server: not a right the account lacks
            conn.send_command("DISCARD")
            conn.read_response()
            return denied
        except BaseException:
            conn.disconnect()  # never hand back a connection inside a MULTI
            raise
        finally:
            client.connection_pool.release(conn)

    def freeze(self, seconds: float) -> str:
        """``CLIENT PAUSE <ms> WRITE`` on every master: writes wait, reads go on, and the
        pause lapses by itself after ``seconds`` even if this process dies."""
        problem = self.freeze_check()
        if problem:
            raise CapabilityMissing(problem)
        ms = max(1, round(seconds * 1000))
        paused: list[str] = []
        with self._errors("pausing writes"):
            try:
                for name, client in self._masters():
                    client.execute_command("CLIENT", "PAUSE", ms, "WRITE")
                    paused.append(name)
            except BaseException:
                self.unfreeze()  # all masters or none
                raise
        return (f"{self.endpoint.label}: CLIENT PAUSE {ms} WRITE on {', '.join(paused)}: "
                f"writes wait and reads go on, until unfreeze or for {seconds:g} s at most")

    def unfreeze(self) -> None:
        """``CLIENT UNPAUSE`` on every master; harmless when nothing is paused (also after
        a crash: the pause of a process that died is lifted too)."""
        self.open()
        if self.version < PAUSE_WRITE:
            return
        with self._errors("lifting the write pause"):
            for _, client in self._masters():
                client.execute_command("CLIENT", "UNPAUSE")

    # -- following changes -----------------------------------------------------------
    def follow(self) -> ChangeFeed:
        """CLIENT TRACKING in broadcast mode on every master (see ``feed``): from now on
        the servers name each key written, deleted or expired."""
        self._bind(Role.SOURCE)
        self.open()
        if self.version < TRACKING:
            raise CapabilityMissing(f"{self.endpoint.label}: Redis "
                                    f"{'.'.join(map(str, self.version))} has no CLIENT "
                                    "TRACKING (Redis 6+): catch-up digests every chunk")

        def connector(client: redis.Redis) -> Callable[[], redis.Connection]:
            pool = client.connection_pool
            # No read timeout: the subscriber waits for messages as long as the feed lives.
            return lambda: pool.connection_class(**{**pool.connection_kwargs,
                                                    "socket_timeout": None})

        feed = ChangeFeed([(name, connector(client)) for name, client in self._masters()])
        with self._errors("following changes"):
            try:
                return feed.start()
            except rx.NoPermissionError as exc:
                user = self.endpoint.connection().username or "default"
                raise CapabilityMissing(
                    f"{self.endpoint.label}: the account '{user}' may not follow changes "
                    f"({exc}; grant +client|tracking +subscribe &__redis__:invalidate): "
                    "catch-up digests every chunk") from None

    def changed_in(self, unit: Unit, changes: Any) -> list[str]:
        lo, hi = unit.spec.get("slots", [0, SLOTS - 1])
        return [rv.key_text(key) for key in changes
                if lo <= key_slot(key) <= hi and self.filter(key)]

    # -- source side -----------------------------------------------------------------
    def list_units(self) -> list[Unit]:
        self._bind(Role.SOURCE)
        self.open()
        with self._errors("listing units"):
            counts = self._keyspace()
            clients = [c for _, c in self._nodes] if self._cluster else [self._client(0)]
            dataset = sum(int(rv.info(c, "memory").get("used_memory_dataset", 0))
                          for c in clients)
        named = self._explicit_dbs()
        if named is None:
            dbs = sorted(set(counts) | {0})
        else:
            dbs = named[0]
            for db in dbs:
                self._check_db(db, named[1], "reads")
        total = max(1, sum(counts.values()))
        units = []
        for db in dbs:
            keys = counts.get(db, 0)
            if keys and not self._holds_selected(db):
                keys = 0  # nothing here matches the selection: estimate it so
            parts = self._parts(keys)
            width = SLOTS // parts
            for i in range(parts):
                lo, hi = i * width, (i + 1) * width - 1
                units.append(Unit(store=self.kind, name=f"db{db}/slots-{lo:05d}-{hi:05d}",
                                  spec={"db": db, "slots": [lo, hi]}, records=keys // parts,
                                  bytes=dataset * keys // total // parts))
        return units

    def _parts(self, keys: int) -> int:
        """Slot-range slices of one DB. A standalone server is one thread that one unit
        with its read-ahead already keeps busy (measured: 4 slices of 1M keys copied
        1.2-1.5x slower than one unit, each filtering the shared SCAN pages), and the unit's
        SCAN cursor is its checkpoint, so it is cut only when the plan names
        ``unit_records``. A cluster's slices are cut by the default too, but into no more
        than run at once (``parallel``): slices share SCAN pages only while they run
        together, so more would scan the DB once per wave."""
        if self._cluster is None and self.options.unit_records is None:
            return 1
        wave = 1
        while wave * 2 <= max(1, self.options.parallel):
            wave *= 2
        parts = 1
        while (keys > parts * self.options.split_records and parts < MAX_UNIT_PARTS
               and (parts < wave or self.options.unit_records is not None)):
            parts *= 2
        return parts

    # -- coverage --------------------------------------------------------------------
    @classmethod
    def container_of(cls, unit: Unit) -> str:
        return "db " + "+".join(map(str, source_dbs(unit)))

    @classmethod
    def uncovered(cls, units: list[Unit]) -> list[str]:
        """Per group of source DBs, the slot ranges that no unit covers (one line a gap),
        units whose range runs backwards, and a DB that is in two groups."""
        lines: list[str] = []
        ranges: dict[str, list[tuple[int, int]]] = {}
        groups: dict[int, set[str]] = {}
        for unit in units:
            if unit.store != cls.kind:
                continue
            slots = unit.spec.get("slots")
            if not (isinstance(slots, list) and len(slots) == 2
                    and all(isinstance(s, int) and not isinstance(s, bool) for s in slots)):
                lines.append(f"{unit.name}: slots {slots!r} is not [first, last]")
                continue
            lo, hi = slots
            if lo > hi:
                lines.append(f"{unit.name}: slots [{lo}, {hi}] run backwards (covers nothing)")
                continue
            container = cls.container_of(unit)
            ranges.setdefault(container, []).append((lo, hi))
            for db in source_dbs(unit):
                groups.setdefault(db, set()).add(container)
        for container, spans in sorted(ranges.items()):
            at = 0
            for lo, hi in sorted(spans):
                if lo > at:
                    lines.append(f"{container}: slots {at}-{lo - 1} are in no unit")
                at = max(at, hi + 1)
            if at < SLOTS:
                lines.append(f"{container}: slots {at}-{SLOTS - 1} are in no unit")
        for db, containers in sorted(groups.items()):
            if len(containers) > 1:
                lines.append(f"db {db} is in more than one group of units: "
                             f"{', '.join(sorted(containers))}")
        return lines

    def unlisted(self, units: list[Unit]) -> list[str]:
        """Source DBs in the selection that hold selected keys now and are in no unit
        (e.g. a DB that got keys after plan)."""
        self._bind(Role.SOURCE)
        self.open()
        covered = {db for unit in units if unit.store == self.kind for db in source_dbs(unit)}
        with self._errors("listing databases"):
            counts = self._keyspace()
        named = self._explicit_dbs()
        out = []
        for db in sorted(counts):
            if counts[db] and db not in covered and (named is None or db in named[0]) \
                    and self._holds_selected(db):
                out.append(f"db {db}")
        return out

    def _holds_selected(self, db: int) -> bool:
        """Whether DB ``db`` holds a key the selection takes (SCAN up to the first one)."""
        if self.filter.include is None and self.filter.exclude is None:
            return True
        with self._errors(f"scanning DB {db}"):
            return any(keys for _, keys, _ in self._pages(self._scan_nodes(db), 0, 0, 0,
                                                          SLOTS - 1))

    def adapt_units(self, units: list[Unit], source: Store) -> list[Unit]:
        """Source DBs that land in one DB here become union units over all of them; a key
        in two of them is refused, and so is a merge that only the URL's ``/N`` makes."""
        self._bind(Role.TARGET)
        if not isinstance(source, RedisStore):
            return units
        source._bind(Role.SOURCE)
        self.open()
        members: dict[int, list[Unit]] = {}
        for unit in units:
            if "dbs" not in unit.spec:
                members.setdefault(int(unit.spec.get("db", 0)), []).append(unit)
        groups: dict[int, list[int]] = {}
        for db, group in members.items():
            here, why = self._landing(db)
            self._check_db(here, "url" if why == "url" else "db_map",
                           f"source DB {db} (unit {group[0].name}) lands in")
            groups.setdefault(here, []).append(db)
        out: list[Unit] = []
        merged: set[int] = set()
        for unit in units:
            if "dbs" in unit.spec:
                out.append(unit)
                continue
            here = self._landing(int(unit.spec.get("db", 0)))[0]
            if len(groups[here]) == 1:
                out.append(unit)
            elif here not in merged:
                merged.add(here)
                dbs = sorted(groups[here])
                out += self._union(dbs, here, [u for db in dbs for u in members[db]], source)
        return out

    def _union(self, dbs: list[int], here: int, members: list[Unit],
               source: RedisStore) -> list[Unit]:
        moved = [db for db in dbs if self._landing(db)[1] == "url"]
        if moved:
            wanted = ", ".join(f"{db}: {here}" for db in dbs)
            raise PlanError(f"{self._name}.url",
                            f"source DBs {_dbs_text(dbs)} would all land in DB {here} through "
                            f"the URL's /{here} alone; a merge must be asked for",
                            hint=f"write db_map: {{{wanted}}} on the target, or name one "
                            "source DB with dbs: [N] or its URL's /N")
        shown, total = source.collisions(dbs)
        if total:
            keys = ", ".join(f"{key!r} (DBs {_dbs_text(where)})" for key, where in shown)
            raise PlanError(f"{self._name}.db_map",
                            f"merging source DBs {_dbs_text(dbs)} into DB {here} would lose "
                            f"data: {total} key(s) exist in more than one of them, e.g. {keys}",
                            hint="rename or delete the duplicates on the source, or map those "
                            "DBs to different target DBs")
        records, size = sum(u.records for u in members), sum(u.bytes for u in members)
        parts = self._parts(records)
        width = SLOTS // parts
        label = "db" + "+".join(map(str, dbs))
        return [Unit(store=self.kind, name=f"{label}/slots-{lo:05d}-{lo + width - 1:05d}",
                     spec={"dbs": dbs, "target_db": here, "slots": [lo, lo + width - 1]},
                     records=records // parts, bytes=size // parts)
                for lo in range(0, SLOTS, width)]

    def collisions(self, dbs: list[int]) -> tuple[list[tuple[str, list[int]]], int]:
        """Selected keys present in more than one of the source DBs ``dbs``: a few of them
        with their DBs, and how many there are. Every DB but the biggest is scanned once,
        each key checked with EXISTS in the DBs after it."""
        self._bind(Role.SOURCE)
        self.open()
        if self._cluster is not None or len(dbs) < 2:
            return [], 0
        with self._errors("looking for keys in more than one merged DB"):
            counts = self._keyspace()
            order = sorted(dbs, key=lambda db: (counts.get(db, 0), db))
            found: dict[bytes, set[int]] = {}
            for i, db in enumerate(order[:-1]):
                for _, keys, _ in self._pages([self._client(db)], 0, 0, 0, SLOTS - 1):
                    if not keys:
                        continue
                    packed = b"".join([_EXISTS % (len(k), k) for k in keys])
                    for other in order[i + 1:]:
                        replies = rw.run_packed(self._client(other), packed, len(keys))
                        for key, reply in zip(keys, replies, strict=True):
                            if isinstance(reply, Exception):
                                raise reply
                            if reply:
                                found.setdefault(key, {db}).add(other)
        shown = sorted(found.items())[:_SHOWN]
        return [(rv.key_text(k), sorted(where)) for k, where in shown], len(found)

    def use_typed_export(self) -> None:
        """Export native values from now on: the target cannot read our DUMP payloads."""
        self._typed_export = True

    def read_typed(self, dbs: list[int], keys: list[bytes]
                   ) -> tuple[list[tuple[Any, ...]], list[bytes]]:
        """Typed records of ``keys``, looked for in the source DBs ``dbs`` in turn (used by a
        target that refuses payloads); the keys found in none of them come back apart."""
        records: list[tuple[Any, ...]] = []
        missing = keys
        for db in dbs:
            if not missing:
                break
            got, missing = self._read_typed(db, missing)
            records += got
        return records, missing

    def _read_typed(self, db: int, keys: list[bytes]
                    ) -> tuple[list[tuple[Any, ...]], list[bytes]]:
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

    def _unit_pages(self, dbs: list[int], lo: int, hi: int, state: dict[str, Any] | None = None
                    ) -> Iterator[tuple[redis.Redis, list[bytes], dict[str, Any]]]:
        """``_pages`` over the DBs of a unit in turn; the cursor of a union unit says which
        DB (``dbi``) it is in, a one-DB unit's cursor is the plain SCAN position."""
        state = state or {}
        first = int(state.get("dbi", 0))
        for i in range(first, len(dbs)):
            nodes = self._scan_nodes(dbs[i])
            start = cursor = 0
            if i == first:
                start, cursor = int(state.get("node", 0)), int(state.get("scan", 0))
                if state.get("nodes", len(nodes)) != len(nodes):
                    # The cluster was resharded since the checkpoint: start over, which is
                    # harmless because RESTORE ... REPLACE of the same key converges.
                    start, cursor = 0, 0
            for client, keys, at in self._pages(nodes, start, cursor, lo, hi):
                if len(dbs) > 1:
                    if not at.get("done"):
                        at = {**at, "dbi": i}
                    elif i + 1 < len(dbs):
                        at = {"dbi": i + 1}
                yield client, keys, at

    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]:
        self._bind(Role.SOURCE)
        self.open()
        lo, hi = unit.spec["slots"]
        dbs = self._unit_dbs(unit)
        state = resume_from or {}
        if state.get("done"):
            return
        pages = self._unit_pages(dbs, lo, hi, state)
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

    def fetch(self, unit: Unit, keys: list[str]) -> Batch:
        """The keys ``records`` named, as one batch in ``export``'s form (DUMP payload and
        absolute expiry, or typed), one pipeline per server and DB. A key gone meanwhile is
        left out. A union reads every DB it merges, so each key comes from the DB that
        holds it; a key held by two of them is refused, as the copy would lose one value."""
        self._bind(Role.SOURCE)
        self.open()
        wanted = list(dict.fromkeys(rv.key_bytes(k) for k in keys))
        found: dict[bytes, tuple[int, tuple[Any, ...]]] = {}
        nbytes = 0
        with self._errors(f"reading changed keys of {unit.name}"):
            for db in self._unit_dbs(unit):
                for client, part in self._by_node(db, wanted):
                    records, _, size = self._read(client, part)
                    nbytes += size
                    for record in records:
                        if record[0] in found:
                            raise StoreError(
                                f"{self.endpoint.label}: key {rv.key_text(record[0])!r} of "
                                f"{unit.name} is in source DBs {found[record[0]][0]} and {db}, "
                                "which merge into one target DB: one value would be lost",
                                hint="rename or delete one of them on the source")
                        found[record[0]] = (db, record)
        return Batch([found[k][1] for k in wanted if k in found], None, nbytes)

    def _by_node(self, db: int, keys: list[bytes]) -> list[tuple[redis.Redis, list[bytes]]]:
        """``keys`` grouped by the server of DB ``db`` that holds them (a cluster's masters)."""
        groups: dict[int, tuple[redis.Redis, list[bytes]]] = {}
        for key in keys:
            client = self._node_for(db, key)
            groups.setdefault(id(client), (client, []))[1].append(key)
        return list(groups.values())

    # -- target side -----------------------------------------------------------------
    def existing(self, units: list[Unit]) -> list[str]:
        self._bind(Role.TARGET)
        self._check_merges(units)
        by_db: dict[int, list[Unit]] = {}
        for unit in units:
            by_db.setdefault(self._target_db(unit), []).append(unit)
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
        self._bind(Role.TARGET)
        self.open()
        self._check_merges(units)  # also refuses unmapped DBs on a cluster before any write
        if isinstance(source, RedisStore):
            source._bind(Role.SOURCE)
            self._source = source
            if self.mode == "typed":
                source.use_typed_export()

    def importer(self, unit: Unit) -> Importer:
        self._bind(Role.TARGET)
        return RedisImporter(self, unit, self._target_db(unit))

    def delete(self, unit: Unit, keys: list[str]) -> None:
        """Remove the keys ``records`` named from the unit's DB here: one pipeline per
        server (UNLINK frees big values off the main thread), each key sent to the master
        that owns its slot. An absent key is no error."""
        self._bind(Role.TARGET)
        self.open()
        db = self._target_db(unit)
        command = "UNLINK" if self.version >= (4,) else "DEL"
        keyed = [(k, (command, k)) for k in dict.fromkeys(rv.key_bytes(k) for k in keys)]
        with self._errors(f"deleting keys of {unit.name}"):
            replies = rw.run_routed(lambda key: self._node_for(db, key), keyed)
            for (key, _), reply in zip(keyed, replies, strict=True):
                if isinstance(reply, Exception):
                    self._reply_failed(key, reply, f"deleting from {unit.name}")

    def _reply_failed(self, key: bytes, reply: Exception, doing: str) -> None:
        """Raise for an error reply of a routed write: a slot that moved (resharding) is
        transient, after re-reading the slot map; anything else is terminal."""
        if isinstance(reply, rx.MovedError | rx.AskError):
            self._refresh_topology()
            raise TransientError(f"{self.endpoint.label}: the cluster moved hash slots while "
                                 f"{doing}; it will be done again") from reply
        raise StoreError(f"{self.endpoint.label}: {doing}: {rv.key_text(key)!r}: {reply}"
                         ) from reply

    def _refresh_topology(self) -> None:
        """Re-read the slot map after a MOVED reply (the cluster was resharded)."""
        with self._lock:
            if self._cluster is not None:
                self._cluster.nodes_manager.initialize()
                self._open_cluster(self._cluster)

    # -- verification ----------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        """Aligned slot ranges of up to 64 slots, narrower (down to one slot) for a unit the
        plan estimates at more than ``CHUNK_KEYS`` keys a chunk: a chunk whose digests
        differ is listed key by key on both sides, so a few changes spread over a big DB
        (a ``sync`` pass) list few keys; narrower still would cost more round trips than
        keys saved."""
        lo, hi = unit.spec.get("slots", [0, SLOTS - 1])
        per_slot = unit.records / max(1, hi - lo + 1)
        width = CHUNK_SLOTS
        while width > 1 and width * per_slot > CHUNK_KEYS:
            width //= 2
        out = []
        for start in range(lo - lo % width, hi + 1, width):
            a, b = max(lo, start), min(hi, start + width - 1)
            out.append(Chunk(id=f"slots-{a:05d}-{b:05d}", bounds=[a, b]))
        return out

    def _chunk_keys(self, unit: Unit, lo: int, hi: int) -> list[tuple[int, list[bytes]]]:
        """(DB, selected keys of the unit in slots lo..hi) per DB of the unit here; the first
        call of a verify pass scans the whole unit and keeps the other slots' keys for the
        chunks listed next."""
        out = []
        ulo, uhi = unit.spec.get("slots", [0, SLOTS - 1])
        for db in self._unit_dbs(unit):
            keys = self._listings.take(_listing(unit, db), lo, hi)
            if keys is None:
                started = time.monotonic()
                by_slot: dict[int, list[bytes]] = {}
                with self._errors(f"listing {unit.name}"):
                    for _, found, _ in self._pages(self._scan_nodes(db), 0, 0, ulo, uhi):
                        for key in found:
                            by_slot.setdefault(key_slot(key), []).append(key)
                keys = [k for slot in range(lo, hi + 1) for k in by_slot.pop(slot, ())]
                self._listings.put(_listing(unit, db), started, by_slot, (lo, hi))
            out.append((db, keys))
        return out

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Count and hash sum per chunk, from string values and DUMP payloads (the reads a
        copy makes, see ``rv.record_hashes``); ``records`` stays canonical. A union unit
        sums over all its DBs, so a merged target DB compares with the union. The per-key
        hashes are kept (``HashMemo``) for ``record_hashes`` of the chunks that differ."""
        dbs = self._unit_dbs(unit)
        for db in dbs:
            self._listings.forget(_listing(unit, db))  # a new verify pass: list afresh
        self._hashes.forget(unit.key)
        started = time.monotonic()
        owner = [-1] * SLOTS  # slot → index of its chunk
        for i, chunk in enumerate(chunks):
            lo, hi = chunk.bounds
            owner[lo:hi + 1] = [i] * (hi - lo + 1)
        wanted = [slot for slot, i in enumerate(owner) if i >= 0]
        counts, sums = [0] * len(chunks), [0] * len(chunks)
        # DB -> per chunk: keys and their packed hashes, kept for the drill-down until more
        # keys than the memo holds (then None); the hashes are summed per chunk at the end,
        # or whenever FOLD_KEYS more have come in once nothing is kept
        kept: dict[int, list[list[bytes]]] | None = {db: [[] for _ in chunks] for db in dbs}
        packed = {db: [bytearray() for _ in chunks] for db in dbs}

        def fold() -> None:
            """Sums the packed hashes into ``counts`` and ``sums`` and lets go of them (new
            lists: the memo may hold the old ones)."""
            nonlocal packed
            for per_chunk in packed.values():
                for i, hashes in enumerate(per_chunk):
                    if hashes:
                        counts[i] += len(hashes) // 16
                        sums[i] += packed_sum(hashes)
            packed = {db: [bytearray() for _ in chunks] for db in dbs}

        size = unfolded = 0
        if wanted:
            self.open()
            ulo, uhi = unit.spec.get("slots", [0, SLOTS - 1])
            pages = self._unit_pages(dbs, max(wanted[0], ulo), min(wanted[-1], uhi))
            tolerance = self.options.ttl_tolerance_ms
            one_mget = self._cluster is None  # a cluster refuses MGET across hash slots
            # Which DB a page came from: each DB has its own client on a single server; a
            # cluster has DB 0 only.
            db_of = {} if self._cluster is not None else {id(self._client(db)): db
                                                           for db in dbs}

            def read(client: redis.Redis, keys: list[bytes]
                     ) -> tuple[int, list[tuple[bytes, bytes]]]:
                return db_of.get(id(client), dbs[0]), rv.record_hashes(
                    client, keys, now_ms=_now_ms(), tolerance=tolerance,
                    pexpiretime=self._pexpiretime, one_mget=one_mget)

            with self._errors(f"checksumming {unit.name}"):
                for (db, found), _ in rw.read_ahead(pages, read):
                    if not found:
                        continue
                    # Runs once per page: the per-key work stays in comprehensions and
                    # zip, the sums in ``packed_sum``.
                    keys, hashes = zip(*found, strict=True)
                    if b"{" in b"".join(keys):
                        at = [owner[key_slot(k)] for k in keys]
                    else:
                        at = [owner[crc_hqx(k, 0) & 0x3FFF] for k in keys]
                    rows, into = (kept[db] if kept is not None else None), packed[db]
                    if rows is not None:
                        for i, key, h in zip(at, keys, hashes, strict=True):
                            if i >= 0:
                                rows[i].append(key)
                                into[i] += h
                    else:
                        for i, h in zip(at, hashes, strict=True):
                            if i >= 0:
                                into[i] += h
                    size += len(found)
                    unfolded += len(found)
                    if kept is not None and size > self._hashes.limit:
                        kept = None  # too big to keep: record_hashes reads again
                    if kept is None and unfolded > FOLD_KEYS:
                        fold()
                        unfolded = 0
        if kept is not None:
            self._hashes.keep(unit.key, started, chunks, kept, packed, size)
        fold()
        return {chunk.id: ChunkDigest(counts[i], sums[i] & HASH_MASK)
                for i, chunk in enumerate(chunks)}

    def record_hashes(self, unit: Unit, chunk: Chunk) -> dict[str, Any] | None:
        """The digest's own per-key hashes of one chunk (key + value + expiry bucket:
        equal ones mean an equal value and expiries within the TTL tolerance), kept by the
        digest, else read again. A key in two DBs of a union gets None: compared
        canonically, ``records_of`` names the collision."""
        by_db = self._hashes.take(unit.key, chunk.id)
        if by_db is None:
            by_db = self._read_hashes(unit, chunk)
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for db, pairs in by_db.items():
            for key, value in pairs:
                text = rv.key_text(key)
                if text in seen and (seen[text] != db or out[text] != value):
                    out[text] = None  # in two DBs, or hashed twice (SCAN repeats) unequal
                else:
                    seen[text] = db
                    out[text] = value
        return out

    def _read_hashes(self, unit: Unit, chunk: Chunk) -> dict[int, Hashes]:
        """``record_hashes`` read live, when the digest kept none for this chunk."""
        self.open()
        tolerance = self.options.ttl_tolerance_ms
        out: dict[int, Hashes] = {}
        for db, keys in self._chunk_keys(unit, *chunk.bounds):
            rows = out.setdefault(db, [])
            with self._errors(f"checksumming {unit.name}"):
                for client, part in self._by_node(db, keys):
                    for i in range(0, len(part), self.scan_count):
                        rows += rv.record_hashes(
                            client, part[i:i + self.scan_count], now_ms=_now_ms(),
                            tolerance=tolerance, pexpiretime=self._pexpiretime,
                            one_mget=self._cluster is None)
        return out

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """Canonical fingerprints of the chunk's keys. A key found in two DBs of a union
        (merged DBs that collide since plan) gets a fingerprint no target key can equal."""
        return self._fingerprints(unit, self._chunk_keys(unit, *chunk.bounds))

    def records_of(self, unit: Unit, keys: list[str]) -> Iterator[tuple[str, Any]]:
        """``records`` of the named keys, looked for in every DB of the unit here."""
        self.open()
        wanted = list(dict.fromkeys(rv.key_bytes(k) for k in keys))
        return self._fingerprints(unit, [(db, wanted) for db in self._unit_dbs(unit)])

    def _fingerprints(self, unit: Unit, keys_by_db: list[tuple[int, list[bytes]]]
                      ) -> Iterator[tuple[str, Any]]:
        found: dict[bytes, dict[int, Any]] = {}
        for db, keys in keys_by_db:
            with self._errors(f"checksumming {unit.name}"):
                for client, part in self._by_node(db, list(dict.fromkeys(keys))):
                    for i in range(0, len(part), self.scan_count):
                        for key, fp in rv.fingerprints(client, part[i:i + self.scan_count],
                                                       now_ms=_now_ms(),
                                                       pexpiretime=self._pexpiretime):
                            found.setdefault(key, {})[db] = fp
        for key, seen in found.items():
            if len(seen) == 1:
                yield rv.key_text(key), next(iter(seen.values()))
            else:
                yield rv.key_text(key), (f"in DBs {_dbs_text(sorted(seen))}", "", None)

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

    def prepare(self, resumed: bool) -> None:
        """Nothing is cleared, ever: RESTORE ... REPLACE (or the typed path's DEL first)
        makes each written key converge, so a resumed copy or a ``sync`` touches only the
        keys of its batches, and what else the target DB holds stays."""

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
        records, gone = source.read_typed(source_dbs(self.unit), keys)
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
            else:
                store._reply_failed(key, reply, f"writing {self.unit.name}")
        return refused

