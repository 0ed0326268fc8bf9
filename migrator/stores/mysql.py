"""MySQL / MariaDB store (PyMySQL).

Units are tables, or primary-key ranges of big tables; rows travel as the raw bytes the
server sends (no decoding: DECIMAL, DATETIME(6), latin1 and utf8mb4 text keep their exact
bytes) and are loaded with ``LOAD DATA LOCAL INFILE … CHARACTER SET binary``, or multi-row
``REPLACE`` where the target forbids local files. Verification is pt-table-checksum's
idea: the server sums per-row MD5s per key chunk; no row travels to compare.

Every connection is owned by one thread: exports and importers open their own, the
metadata calls borrow one from a small pool.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import pymysql.converters
import pymysql.cursors

from migrator.config import Endpoint
from migrator.errors import CapabilityMissing, MigrateError, PlanError, StoreError, TransientError
from migrator.stores import base
from migrator.stores import mysql_schema as ms
from migrator.stores.base import Batch, Chunk, ChunkDigest, Importer, Store, Unit
from migrator.stores.mysql_schema import Column, Table, qualified, quote_ident, range_predicate

log = logging.getLogger(__name__)

# Raw mode: PyMySQL's encoders (for query arguments) but no decoders, so results stay bytes.
_ENCODERS = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
# One session set-up for every connection, so both sides render values the same way:
# UTC for TIMESTAMP text, backtick quoting and full options in SHOW CREATE, strict writes
# that still accept whatever dates the source holds, and patience with a slow consumer.
_SESSION = ("SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,"
            "ALLOW_INVALID_DATES,NO_ENGINE_SUBSTITUTION', net_read_timeout = 3600,"
            " net_write_timeout = 3600")
_DENIED = {1044, 1045, 1142, 1143, 1227, 1370, 1698}
_UNKNOWN_DB = 1049
_CONNECTION = {2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1927, 4031}
_RETRY = {1205, 1213, 1317}  # lock wait timeout, deadlock, query interrupted
_LOCAL_INFILE_OFF = {1148, 3948, 2068, 4166}  # MySQL 5.7, MySQL 8, client, MariaDB
_LOAD_RESULT = re.compile(rb"Records: (\d+)\s+Deleted: (\d+)\s+Skipped: (\d+)\s+Warnings: (\d+)")
_POOL_SIZE = 8
_DELETE_SLICE = 10_000
Row = tuple[bytes | None, ...]


class MySQLStore(Store):
    kind = "mysql"
    capabilities = base.Capabilities(
        snapshot_reads=True, server_side_checksum=True, ttls=False, resumable_units=True,
        wire_format="rows of the server's raw column bytes (text protocol, not decoded)")

    def __init__(self, endpoint: Endpoint, selection: base.Selection | None = None,
                 options: base.StoreOptions | None = None) -> None:
        super().__init__(endpoint, selection, options)
        db_map = endpoint.options.get("db_map") or {}
        if not isinstance(db_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in db_map.items()):
            raise PlanError(f"{endpoint.name or 'mysql'}.db_map",
                            "must map source database names to target database names")
        self.db_map: dict[str, str] = dict(db_map)
        self._lock = threading.Lock()
        self._idle: dict[bool, list[pymysql.Connection]] = {False: [], True: []}
        self._tables: dict[tuple[str, str], Table] = {}
        self._facts: dict[str, Any] = {}
        self._local_infile: bool | None = None
        self._said_fallback = False

    # -- connections -----------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        """Verified TLS by default (system CAs when no CA file is named); PyMySQL alone
        would skip verification when no CA is given."""
        tls = self.endpoint.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        ctx.check_hostname = tls.verify
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        return ctx

    def _connect(self, *, raw: bool = False, local_infile: bool = False) -> pymysql.Connection:
        """A new connection set up for this store (raw: results stay the server's bytes)."""
        info = self.endpoint.connection()
        init = _SESSION + (", character_set_results = binary" if raw else "")
        extra: dict[str, Any] = {"conv": _ENCODERS, "use_unicode": False} if raw else {}
        try:
            context = self._ssl()
        except (OSError, ssl.SSLError) as exc:
            raise self.endpoint.fail(f"cannot use the TLS files: {exc}") from exc
        try:
            return pymysql.connect(
                host=info.host or "127.0.0.1", port=info.port or 3306, user=info.username,
                password=info.password or "", database=info.path or None, charset="utf8mb4",
                autocommit=True, connect_timeout=15, local_infile=local_infile,
                ssl=context, init_command=init, max_allowed_packet=256 << 20, **extra)
        except pymysql.MySQLError as exc:
            raise self._error(exc, "cannot connect") from exc

    @contextmanager
    def _session(self, raw: bool = False) -> Iterator[pymysql.Connection]:
        """Borrow a pooled connection for the current thread; a connection that saw an
        error, or was abandoned mid-result, is closed rather than returned."""
        conn = None
        with self._lock:
            if self._idle[raw]:
                conn = self._idle[raw].pop()
        if conn is not None:
            try:
                conn.ping(reconnect=False)
            except pymysql.MySQLError:
                _close_quietly(conn)
                conn = None
        conn = conn or self._connect(raw=raw)
        healthy = False
        try:
            yield conn
            healthy = True
        except pymysql.MySQLError as exc:
            raise self._error(exc, "query failed") from exc
        finally:
            if healthy and conn.open:
                with self._lock:
                    if len(self._idle[raw]) < _POOL_SIZE:
                        self._idle[raw].append(conn)
                        conn = None
            if conn is not None:
                _close_quietly(conn)

    def _error(self, exc: BaseException, doing: str) -> MigrateError:
        """A driver exception as the project's error: access problems are terminal
        endpoint errors, dropped connections transient, lock timeouts retryable."""
        if isinstance(exc, MigrateError):
            return exc
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        password = self.endpoint.connection().password
        if password and len(password) >= 3:
            text = text.replace(password, "***")
        problem = f"{doing}: ({code}) {text}" if code else f"{doing}: {text}"
        if code in _DENIED:
            return self.endpoint.fail(problem, hint="check the user, password and grants"
                                      " (a source needs SELECT and SHOW VIEW)")
        if code == _UNKNOWN_DB:
            return self.endpoint.fail(problem, hint="check the database named in the URL")
        if code in _CONNECTION or isinstance(exc, pymysql.InterfaceError):
            return self.endpoint.fail(problem, transient=True)
        if code in _RETRY:
            return TransientError(f"{self.endpoint.label}: {problem}")
        return StoreError(f"{self.endpoint.label}: {problem}")

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        with self._session() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@version_comment, @@local_infile,"
                        " @@max_allowed_packet")
            version, comment, local_infile, packet = cur.fetchone()
        flavour = "mariadb" if "mariadb" in f"{version} {comment}".lower() else "mysql"
        self._facts = {"version": version, "flavour": flavour, "max_allowed_packet": int(packet)}
        self._local_infile = bool(int(local_infile))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle[False] + self._idle[True], {False: [], True: []}
        for conn in idle:
            _close_quietly(conn)

    def describe(self) -> dict[str, Any]:
        if not self._facts:
            self.open()
        return {
            **self._facts,
            "consistency": "each unit is read in its own REPEATABLE READ transaction started"
            " WITH CONSISTENT SNAPSHOT; units (and tables) are not consistent with each"
            " other: that relies on the write freeze at cutover (one global snapshot would"
            " need FLUSH TABLES WITH READ LOCK, i.e. the RELOAD privilege)",
            "import": "LOAD DATA LOCAL INFILE (REPLACE)" if self._local_infile else
            "multi-row REPLACE statements (the server has local_infile=OFF)",
            "checksum": "per key chunk: COUNT(*) and the sum of per-row MD5s, by the server",
        }

    def check_access(self, role: base.Role) -> None:
        if role == base.Role.SOURCE:
            self._check_source()
            return
        # probe with a scratch table: grants (roles, wildcards, partial revokes) are too
        # varied to read reliably from SHOW GRANTS
        path = self.endpoint.connection().path
        scratch = f"oim_migrate_probe_{os.getpid()}_{threading.get_ident() % 100000}"
        databases = sorted({path, *self.db_map.values()} - {""}) or [scratch]
        with self._session() as conn, conn.cursor() as cur:
            for db in databases:
                try:
                    ms.probe_writes(cur, db, scratch)
                except pymysql.MySQLError as exc:
                    if exc.args and exc.args[0] in _DENIED:
                        raise self.endpoint.fail(
                            f"cannot create and fill tables in database {db}: {exc.args[1]}",
                            hint="the target user needs CREATE, INSERT, DELETE, ALTER, INDEX,"
                            " DROP (and CREATE VIEW for views)") from exc
                    raise

    def _check_source(self) -> None:
        with self._session() as conn, conn.cursor() as cur:
            refused = ms.unreadable_tables(cur, self._selected_tables(cur), _DENIED)
        if refused:
            raise self.endpoint.fail(
                f"cannot read {len(refused)} table(s): {', '.join(refused[:5])}",
                hint="grant SELECT (and SHOW VIEW for views) on them")

    # -- metadata --------------------------------------------------------------------
    def _db(self, spec: dict[str, Any]) -> str:
        """The database a unit lives in on this side (db_map is set on the target)."""
        return self.db_map.get(spec["db"], spec["db"])

    def _table(self, db: str, table: str, *, required: bool = True) -> Table | None:
        with self._lock:
            known = self._tables.get((db, table))
        if known is not None:
            return known
        with self._session() as conn, conn.cursor() as cur:
            meta = ms.load_table(cur, db, table)
        if meta is None:
            if required:
                raise StoreError(f"{self.endpoint.label}: table {db}.{table} does not exist")
            return None
        with self._lock:
            self._tables[(db, table)] = meta
        return meta

    def _key(self, meta: Table, spec: dict[str, Any]) -> list[Column]:
        return [meta.column(name) for name in spec.get("key") or []]

    def _one(self, sql: str, args: Any = None) -> Any:
        with self._session() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def show_create_table(self, db: str, table: str) -> str:
        return self._one(f"SHOW CREATE TABLE {qualified(db, table)}")[1]

    def referenced(self, db: str, table: str) -> bool:
        """Whether a foreign key points at this table (its indexes are then left alone)."""
        return bool(self._one("SELECT COUNT(*) FROM information_schema.KEY_COLUMN_USAGE"
                              " WHERE REFERENCED_TABLE_SCHEMA = %s AND"
                              " REFERENCED_TABLE_NAME = %s", (db, table))[0])

    def database_charset(self, db: str) -> tuple[str, str]:
        row = self._one("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
                        " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,))
        if row is None:
            raise StoreError(f"{self.endpoint.label}: database {db} does not exist")
        return row[0], row[1]

    def views(self, db: str) -> list[tuple[str, str, str]]:
        """(db, name, SHOW CREATE VIEW text) of the selected views of one database."""
        with self._session() as conn, conn.cursor() as cur:
            return [v for v in ms.list_views(cur, db) if self._selected(db, v[1])]

    def _selected(self, db: str, table: str) -> bool:
        name, sel = f"{db}.{table}", self.selection
        if sel.include and not any(fnmatch.fnmatchcase(name, p) for p in sel.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in sel.exclude)

    def _selected_tables(self, cur: Any) -> list[tuple[str, str, int, int]]:
        """The URL's database or every non-system one, filtered by include/exclude
        patterns on ``db.table``."""
        tables = ms.list_tables(cur, self.endpoint.connection().path)
        return [t for t in tables if self._selected(t[0], t[1])]

    # -- source side -----------------------------------------------------------------
    def list_units(self) -> list[Unit]:
        if self.db_map:
            raise PlanError(f"{self.endpoint.name or 'mysql'}.db_map",
                            "db_map renames databases on the target; set it there",
                            hint="move db_map to the target endpoint")
        with self._session() as conn, conn.cursor() as cur:
            tables = self._selected_tables(cur)
        return [unit for db, table, rows, size in tables
                for unit in self._units_of(db, table, rows, size)]

    def _units_of(self, db: str, table: str, est_rows: int, size: int) -> list[Unit]:
        """One unit per ``unit_records`` rows of key range; counts are exact (every range
        but the last holds exactly that many rows at plan time)."""
        meta = self._table(db, table)
        index, key_names = meta.range_key()
        spec: dict[str, Any] = {"db": db, "table": table, "columns": meta.copy_columns(),
                                "key": key_names}

        def estimate(count: int) -> int:
            return int(size / est_rows * count) if est_rows else size

        if not key_names:
            count = self._count(meta, [], None, None)
            spec.update(lo=None, hi=None, resumable=False, note=ms.NO_KEY_NOTE)
            return [Unit(self.kind, f"{db}.{table}", spec, count, estimate(count))]
        key = self._key(meta, spec)
        step = max(1, self.options.unit_records)
        edges = [None, *self._boundaries(meta, index, key, None, None, step), None]
        units = []
        for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False)):
            count = step if hi is not None else self._count(meta, key, lo, None)
            name = f"{db}.{table}" if len(edges) == 2 else f"{db}.{table}#{i:04d}"
            units.append(Unit(self.kind, name, {**spec, "index": index, "lo": lo, "hi": hi},
                              count, estimate(count)))
        return units

    def _boundaries(self, meta: Table, index: str | None, key: list[Column],
                    lo: list[Any] | None, hi: list[Any] | None, step: int) -> list[list[Any]]:
        """Every ``step``-th key inside ``[lo, hi)``, pt-table-checksum style: each query
        starts at the previous boundary and skips ``step`` entries of the key index on the
        server, so the walk costs one pass over the index and sends one key per step."""
        hint = f" FORCE INDEX ({quote_ident(index)})" if index else ""
        cols = ms.order_by(key)
        out: list[list[Any]] = []
        start = lo
        with self._session(raw=True) as conn, conn.cursor() as cur:
            while True:
                cur.execute(f"SELECT {cols} FROM {meta.ident}{hint}"
                            f" WHERE {range_predicate(key, start, hi)}"
                            f" ORDER BY {cols} LIMIT 1 OFFSET {step}")
                row = cur.fetchone()
                if row is None:
                    return out
                start = [ms.encode_value(v, c.kind) for v, c in zip(row, key, strict=True)]
                out.append(start)

    def _count(self, meta: Table, key: list[Column], lo: Any, hi: Any) -> int:
        pred = range_predicate(key, lo, hi) if key else "TRUE"
        return int(self._one(f"SELECT COUNT(*) FROM {meta.ident} WHERE {pred}")[0])

    def export(self, unit: Unit, resume_from: base.Cursor = None) -> Iterator[Batch]:
        """Stream the unit's rows in key order from a consistent snapshot; each batch's
        cursor is the last key in it. A keyless unit always starts from the top."""
        spec = unit.spec
        meta = self._table(self._db(spec), spec["table"])
        key = self._key(meta, spec)
        columns = list(spec["columns"])
        positions = [columns.index(c.name) for c in key]
        after = resume_from if key and resume_from is not None else None
        pred = range_predicate(key, spec.get("lo"), spec.get("hi"), after) if key else "TRUE"
        sql = (f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {meta.ident}"
               f" WHERE {pred}" + (f" ORDER BY {ms.order_by(key)}" if key else ""))
        max_records = max(1, self.options.batch_records)
        max_bytes = max(1, self.options.batch_bytes)

        def cursor(row: Row, seen: int) -> base.Cursor:
            if not key:
                return {"rows": seen}  # informative only: a keyless unit restarts
            return [ms.encode_value(row[p], c.kind) for p, c in zip(positions, key, strict=True)]

        conn = self._connect(raw=True)
        try:
            # no cursor context manager: closing an SSCursor would first read the rest of
            # the result, and an abandoned export must stop at once
            cur = conn.cursor(pymysql.cursors.SSCursor)
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute(sql)
            rows: list[Row] = []
            nbytes = seen = 0
            while fetched := cur.fetchmany(1000):
                for row in fetched:
                    rows.append(row)
                    nbytes += sum(map(len, filter(None, row)))
                    if len(rows) >= max_records or nbytes >= max_bytes:
                        seen += len(rows)
                        yield Batch(rows, cursor(row, seen), nbytes)
                        rows, nbytes = [], 0
            if rows:
                seen += len(rows)
                yield Batch(rows, cursor(rows[-1], seen), nbytes)
        except pymysql.MySQLError as exc:
            raise self._error(exc, f"exporting {unit.name}") from exc
        finally:
            _close_quietly(conn)  # ends the read-only snapshot transaction too

    # -- target side -----------------------------------------------------------------
    def existing(self, units: list[Unit]) -> list[str]:
        found = []
        for unit in units:
            meta = self._table(self._db(unit.spec), unit.spec["table"], required=False)
            if meta is None:
                continue
            key, spec = self._key(meta, unit.spec), unit.spec
            pred = range_predicate(key, spec.get("lo"), spec.get("hi")) if key else "TRUE"
            if self._one(f"SELECT 1 FROM {meta.ident} WHERE {pred} LIMIT 1"):
                found.append(unit.key)
        return found

    def _source_of(self, source: Store, units: list[Unit]) -> tuple[MySQLStore, list[Any]]:
        if not isinstance(source, MySQLStore):
            raise CapabilityMissing(f"{self.endpoint.label}: can only create tables from a"
                                    f" MySQL source, not {source.kind}")
        return source, list(dict.fromkeys((u.spec["db"], u.spec["table"]) for u in units))

    def prepare_target(self, units: list[Unit], source: Store) -> None:
        """Create databases (same default charset and collation), then tables from the
        source's SHOW CREATE TABLE (types, charsets, AUTO_INCREMENT, engine, row format)
        minus their non-unique indexes, which ``finalize_target`` adds after the data;
        then views. A table that exists already is checked, not changed."""
        src, tables = self._source_of(source, units)
        databases = list(dict.fromkeys(db for db, _ in tables))
        path = self.endpoint.connection().path
        for db in databases:
            target_db = self.db_map.get(db, db)
            if path and target_db != path:
                raise PlanError(f"{self.endpoint.name or 'mysql'}.url",
                                f"names database {path}, but {db} would be copied to"
                                f" {target_db}", hint=f"add db_map: {{{db}: {path}}}")
            charset, collation = src.database_charset(db)
            self._one(f"CREATE DATABASE IF NOT EXISTS {quote_ident(target_db)}"
                      f" CHARACTER SET {charset} COLLATE {collation}")
        with self._lock:
            self._tables.clear()
        for db, table in tables:
            target_db = self.db_map.get(db, db)
            have = self._table(target_db, table, required=False)
            meta = src._table(db, table)
            if have is not None:
                ms.check_compatible(meta, have, self.endpoint.label)
                continue
            auto = next((c.name for c in meta.columns if "auto_increment" in c.extra.lower()),
                        None)
            ddl, _later = ms.split_secondary_indexes(
                src.show_create_table(db, table), auto_column=auto,
                keep_all=bool(meta.options["foreign_keys"] or src.referenced(db, table)))
            with self._session() as conn:
                ms.create_table(conn, target_db, ddl)
        views = [view for db in databases for view in src.views(db)]
        if views:
            with self._session() as conn:
                ms.create_views(conn, views, self.db_map)

    def finalize_target(self, units: list[Unit], source: Store) -> None:
        """Add the secondary indexes left out at creation and catch AUTO_INCREMENT up."""
        src, tables = self._source_of(source, units)
        for db, table in tables:
            ddl = src.show_create_table(db, table)
            with self._session() as conn, conn.cursor() as cur:
                ms.add_missing_indexes(cur, self.db_map.get(db, db), table, ddl)
        with self._lock:
            self._tables.clear()

    def importer(self, unit: Unit) -> Importer:
        return MySQLImporter(self, unit)

    def local_infile(self) -> bool:
        """Whether batches load with LOAD DATA LOCAL INFILE (else REPLACE statements)."""
        if self._local_infile is None:
            self.open()
        if not self._local_infile:
            self.refuse_local_infile("the server has local_infile=OFF")
        return bool(self._local_infile)

    def refuse_local_infile(self, reason: str) -> None:
        """Switch this store to INSERT statements, and say so once."""
        with self._lock:
            said, self._said_fallback = self._said_fallback, True
            self._local_infile = False
        if not said:
            log.warning("%s: LOAD DATA LOCAL INFILE refused (%s); loading with multi-row"
                        " REPLACE statements instead (slower)", self.endpoint.label, reason)

    # -- verification ----------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        """Key sub-ranges of about ``chunk_records`` rows inside the unit; together they
        cover the unit's whole range, so rows only the target has still fall in one."""
        spec = unit.spec
        meta = self._table(self._db(spec), spec["table"])
        key = self._key(meta, spec)
        if not key:
            return [Chunk("all", None)]
        lo, hi = spec.get("lo"), spec.get("hi")
        step = max(1, self.options.chunk_records)
        edges = [lo, *self._boundaries(meta, spec.get("index"), key, lo, hi, step), hi]
        return [Chunk(f"{i:04d}", {"lo": a, "hi": b})
                for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))]

    def _chunk_predicate(self, meta: Table, unit: Unit, chunk: Chunk) -> str:
        key = self._key(meta, unit.spec)
        bounds = chunk.bounds or {}
        return range_predicate(key, bounds.get("lo"), bounds.get("hi")) if key else "TRUE"

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Per chunk, COUNT(*) and the 128-bit sum of row MD5s, both computed by the
        server. A table missing here digests as empty: every row shows as missing."""
        meta = self._table(self._db(unit.spec), unit.spec["table"], required=False)
        if meta is None:
            return {c.id: ChunkDigest() for c in chunks}
        out = {}
        with self._session() as conn, conn.cursor() as cur:
            for chunk in chunks:
                pred = self._chunk_predicate(meta, unit, chunk)
                cur.execute(ms.digest_sql(meta.ident, unit.spec["columns"], pred))
                count, high, low = cur.fetchone()
                total = ((int(high or 0) << 64) + int(low or 0)) & base.HASH_MASK
                out[chunk.id] = ChunkDigest(count=int(count), hash=total)
        return out

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """(key, row MD5) of one chunk in key order; for a keyless table (row MD5, number
        of identical rows), so a duplicate row lost or gained is still named."""
        meta = self._table(self._db(unit.spec), unit.spec["table"], required=False)
        if meta is None:
            return
        key = self._key(meta, unit.spec)
        pred, hashed = self._chunk_predicate(meta, unit, chunk), ms.row_hash(unit.spec["columns"])
        if key:
            sql = (f"SELECT {ms.order_by(key)}, {hashed} FROM {meta.ident} WHERE {pred}"
                   f" ORDER BY {ms.order_by(key)}")
        else:
            sql = f"SELECT h, COUNT(*) FROM (SELECT {hashed} AS h FROM {meta.ident}) r GROUP BY h"
        n = len(key)
        with self._session(raw=True) as conn:
            cur = conn.cursor(pymysql.cursors.SSCursor)  # see export(): no draining close
            cur.execute(sql)
            for row in cur.fetchall_unbuffered():
                if key:
                    yield ms.key_text(key, row[:n]), row[n].decode("ascii")
                else:
                    yield "row md5 " + row[0].decode("ascii"), int(row[1])

    def schema(self, unit: Unit) -> dict[str, Any]:
        db, table = self._db(unit.spec), unit.spec["table"]
        with self._session() as conn, conn.cursor() as cur:
            meta = ms.load_table(cur, db, table)
            if meta is None:
                return {"missing": f"table {db}.{table} does not exist"}
            cur.execute(f"SHOW CREATE TABLE {meta.ident}")
            return ms.schema_of(meta, ms.auto_increment_of(cur.fetchone()[1]))


class MySQLImporter(Importer):
    """Loads one unit over its own connection, each batch one atomic ``REPLACE`` load,
    so that a replayed batch leaves the rows exactly as they were."""

    def __init__(self, store: MySQLStore, unit: Unit) -> None:
        self.store = store
        self.unit = unit
        self.spec = unit.spec
        self._conn: pymysql.Connection | None = None
        self._file: str | None = None
        self._columns: list[Column] = []
        self._meta: Table | None = None

    def _open(self) -> tuple[pymysql.Connection, Table]:
        if self._conn is None or self._meta is None:
            store = self.store
            self._meta = store._table(store._db(self.spec), self.spec["table"])
            self._columns = [self._meta.column(c) for c in self.spec["columns"]]
            self._conn = store._connect(local_infile=store.local_infile())
            try:
                with self._conn.cursor() as cur:
                    # the source enforced these already; a replayed batch must not trip them
                    cur.execute("SET foreign_key_checks = 0, unique_checks = 0")
            except pymysql.MySQLError as exc:
                raise store._error(exc, f"preparing {self.unit.name}") from exc
        return self._conn, self._meta

    def prepare(self, resumed: bool) -> None:
        """A keyless unit restarts from an empty table; ``overwrite`` clears the unit's
        key range first (in slices, so no transaction grows with the table)."""
        conn, meta = self._open()
        key = self.store._key(meta, self.spec)
        try:
            with conn.cursor() as cur:
                if not key:
                    cur.execute(f"TRUNCATE TABLE {meta.ident}")
                elif not resumed and self.store.options.on_existing == "overwrite":
                    pred = range_predicate(key, self.spec.get("lo"), self.spec.get("hi"))
                    while cur.execute(f"DELETE FROM {meta.ident} WHERE {pred}"
                                      f" ORDER BY {ms.order_by(key)} LIMIT {_DELETE_SLICE}"):
                        pass
        except pymysql.MySQLError as exc:
            raise self.store._error(exc, f"preparing {self.unit.name}") from exc

    def write_batch(self, batch: Batch) -> None:
        if not batch.records:
            return
        conn, meta = self._open()
        try:
            if self.store.local_infile():
                try:
                    self._load(conn, meta, batch.records)
                    return
                except pymysql.MySQLError as exc:
                    if not (exc.args and exc.args[0] in _LOCAL_INFILE_OFF):
                        raise
                    self.store.refuse_local_infile(str(exc.args[-1]))
            self._insert(conn, meta, batch.records)
        except pymysql.MySQLError as exc:
            raise self.store._error(exc, f"loading {self.unit.name}") from exc

    def _load(self, conn: pymysql.Connection, meta: Table, rows: list[Row]) -> None:
        """LOAD DATA from a private temp file (PyMySQL streams local files by name)."""
        if self._file is None:
            fd, self._file = tempfile.mkstemp(prefix="oim-mysql-", suffix=".tsv")
            os.close(fd)
        with open(self._file, "wb") as out:
            out.writelines([ms.tsv_line(row) for row in rows])
        with conn.cursor() as cur:
            cur.execute(ms.load_data_sql(meta.ident, conn.escape(self._file), self._columns))
            match = _LOAD_RESULT.search(cur._result.message or b"")
            loaded = int(match.group(1)) if match else len(rows)
            warnings = int(match.group(4)) if match else cur._result.warning_count
            if loaded != len(rows) or warnings:
                raise StoreError(self._problem(cur, f"loaded {loaded} of {len(rows)} rows"))

    def _problem(self, cur: Any, what: str) -> str:
        """LOAD DATA LOCAL turns bad values into warnings; a copy that changed data
        silently would be worse than a failed one, so they are errors here."""
        cur.execute("SHOW WARNINGS LIMIT 5")
        shown = "; ".join(str(w[2]) for w in cur.fetchall())
        return f"{self.store.endpoint.label}: {self.unit.name}: {what}: {shown or 'no detail'}"

    def _insert(self, conn: pymysql.Connection, meta: Table, rows: list[Row]) -> None:
        """Multi-row REPLACE statements under max_allowed_packet, one transaction."""
        limit = min(self.store._facts.get("max_allowed_packet", 4 << 20), 16 << 20) - 4096
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION")
            for sql in ms.insert_statements(meta.ident, self._columns, rows, limit):
                cur.execute(sql)
                if cur._result and cur._result.warning_count:
                    problem = self._problem(cur, "the server changed values while inserting")
                    cur.execute("ROLLBACK")
                    raise StoreError(problem)
            cur.execute("COMMIT")

    def finalize(self) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            _close_quietly(self._conn)
            self._conn = None
        if self._file is not None:
            try:
                os.unlink(self._file)
            except OSError:
                pass
            self._file = None

    def __del__(self) -> None:
        self.close()


def _close_quietly(conn: pymysql.Connection) -> None:
    """Close without reading the rest of an unbuffered result: PyMySQL's cursor and result
    finalizers would otherwise drain it (the rest of an abandoned unit) or, once the
    socket is gone, fail noisily during garbage collection."""
    result = getattr(conn, "_result", None)
    if result is not None and getattr(result, "unbuffered_active", False):
        result.unbuffered_active = False
        conn._result = None
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already broken; closing is best effort
        pass
