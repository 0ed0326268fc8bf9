"""MySQL / MariaDB store (PyMySQL).

Units are tables, or primary-key ranges of big tables; rows travel as the raw bytes the
server sends (no decoding: DECIMAL, DATETIME(6), latin1 and utf8mb4 text keep their exact
bytes) and are loaded with ``LOAD DATA LOCAL INFILE … CHARACTER SET binary`` streamed from
memory, or multi-row ``REPLACE`` where the target forbids local files. Verification is
pt-table-checksum's idea: the server sums per-row MD5s per key chunk; no row travels to
compare.

The plan fixes *which rows* a unit holds (table and key range), never *what a row is*:
export, digest and schema read the table's columns live, so a column added after ``plan``
is copied and checked, or the copy refuses naming it. Views, triggers, routines and events
are compared as data (``definitions``) and made on the target after the data.

Every connection is owned by one thread: exports and importers open their own, the
metadata calls borrow one from a small pool. Every connection has read and write
timeouts; a stall or a dropped connection is a transient error the engine retries.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pymysql
import pymysql.converters
import pymysql.cursors
from pymysql.constants import CLIENT

from migrator.config import Endpoint
from migrator.errors import (
    CapabilityMissing,
    MigrateError,
    PlanError,
    StoreError,
    TransientError,
)
from migrator.stores import base
from migrator.stores.base import Batch, Chunk, ChunkDigest, Importer, Store, Unit
from migrator.stores.mysql import conn as mc
from migrator.stores.mysql import objects as mo
from migrator.stores.mysql import schema as ms
from migrator.stores.mysql.schema import Column, Table, qualified, quote_ident, range_predicate

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
# lock wait timeout, deadlock, query interrupted, table definition changed under a snapshot
_RETRY = {1205, 1213, 1317, 1412}
_UNKNOWN_COLUMN = 1054
_TLS_REFUSED = 2026  # TLS was required and the server offers none (or the handshake failed)
_LOCAL_INFILE_OFF = {1148, 3948, 2068, 4166}  # MySQL 5.7, MySQL 8, client, MariaDB
_LOAD_RESULT = re.compile(rb"Records: (\d+)\s+Deleted: (\d+)\s+Skipped: (\d+)\s+Warnings: (\d+)")
_POOL_SIZE = 8
# journal cache key prefixes: triggers dropped and events disabled until put back
_HELD = "held triggers "
_HELD_EVENT = "held event "
_GLOBAL_GRANT = re.compile(r"GRANT (.+?) ON \*\.\* TO ", re.I)
_DELETE_SLICE = 10_000
_MIN_UNIT_ROWS = 10_000  # a table is split to fill --parallel only into units this big
_KEY_SLICE = 500  # keys per fetch or delete statement: one IN list, one index lookup each
_READ_ONLY_REFUSED = 1290  # "running with the --read-only option"
Row = tuple[bytes | None, ...]

# A key value in a unit spec: what schema.encode_value writes.
_KEY_VALUE = {"oneOf": [
    {"type": "integer"}, {"type": "string"},
    {"type": "object", "required": ["b64"], "additionalProperties": False,
     "properties": {"b64": {"type": "string"}}}]}
_BOUND = {"oneOf": [{"type": "null"}, {"type": "array", "minItems": 1, "items": _KEY_VALUE}]}


@dataclass
class RowBatch(Batch):
    """Rows plus the (name, type) of the source columns they hold, read live when the
    export started, so the importer loads them into the same columns or refuses."""

    columns: tuple[tuple[str, str], ...] = ()
    # Keyless tables (``sync``): the row MD5s whose rows this batch replaces as a whole.
    # The importer deletes every target row of these groups, then loads the batch's rows
    # (the source's rows of the same groups, identical copies included), in one
    # transaction: n copies on the source become exactly n on the target.
    groups: tuple[str, ...] = ()


class MySQLStore(Store):
    kind = "mysql"
    capabilities = base.Capabilities(
        snapshot_reads=True, server_side_checksum=True, ttls=False, resumable_units=True,
        wire_format="rows of the server's raw column bytes (text protocol, not decoded)")

    SPEC_SCHEMA = {
        "type": "object",
        "required": ["db", "table"],
        "additionalProperties": False,
        "properties": {
            "db": {"type": "string", "minLength": 1},
            "table": {"type": "string", "minLength": 1},
            "key": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "index": {"type": ["string", "null"]},
            "lo": _BOUND,
            "hi": _BOUND,
            "resumable": {"type": "boolean"},
            "note": {"type": "string"},
            # written by plans before columns were read live; ignored
            "columns": {"type": "array", "items": {"type": "string"}},
        },
    }
    OPTION_SCHEMA = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "db_map": {"type": "object", "propertyNames": {"minLength": 1},
                       "additionalProperties": {"type": "string", "minLength": 1}},
            "timeout": {"type": "number", "minimum": mc.MIN_TIMEOUT},
            "ddl_timeout": {"type": "number", "minimum": mc.MIN_TIMEOUT},
        },
    }

    def __init__(self, endpoint: Endpoint, selection: base.Selection | None = None,
                 options: base.StoreOptions | None = None) -> None:
        super().__init__(endpoint, selection, options)
        self.settings = mc.settings(endpoint)
        self.db_map: dict[str, str] = mc.check_db_map(endpoint)
        # Objects created with another DEFINER than the source's, one line each (target).
        self.definer_rewrites: list[str] = []
        self._lock = threading.Lock()
        self._idle: dict[tuple[bool, bool], list[mc.Connection]] = {}
        self._facts: dict[str, Any] = {}
        self._local_infile: bool | None = None
        self._said_fallback = False
        self._hidden: dict[str, str] | None = None
        self._cache: MutableMapping[Any, str] = {}
        # digest statements running at once on this server, all units together
        self._digest_slots = threading.BoundedSemaphore(self._parallel())
        # target, in sync: triggers dropped until close(), by "db.table"
        self._held: dict[str, list[mo.SchemaObject]] = {}
        self._held_events: list[tuple[str, str]] = []
        self._hold_lock = threading.Lock()
        self._frozen_before: bool | None = None  # read_only before our freeze, if we froze
        self._lapse: threading.Timer | None = None

    def use_cache(self, cache: MutableMapping[Any, str]) -> None:
        """The journal's mapping: the target keeps its definer rewrites there, so a later
        ``verify`` (another process) still sees the source's definer through them."""
        self._cache = cache

    # -- coverage --------------------------------------------------------------------
    @classmethod
    def check_endpoint(cls, endpoint: Endpoint, role: base.Role) -> None:
        mc.settings(endpoint)
        db_map = mc.check_db_map(endpoint)
        name = endpoint.name or "mysql"
        if role == base.Role.SOURCE and db_map:
            raise PlanError(f"{name}.db_map", "db_map renames databases on the target; set it"
                            " there", hint="move db_map to the target endpoint")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(endpoint.tls, key)
            if path and not os.path.isfile(path):
                raise PlanError(f"{name}.tls.{key}", f"no such file: {path}")

    @classmethod
    def container_of(cls, unit: Unit) -> str:
        return f"{unit.spec.get('db')}.{unit.spec.get('table')}"

    @classmethod
    def uncovered(cls, units: list[Unit]) -> list[str]:
        """Per table: its units split on one key, the first starts open (``lo: null``),
        every unit's ``hi`` is where another starts, the last ends open. A gap is named by
        the bounds around it; when several gaps cannot be paired without knowing the key
        order (the server's collation, not Python's), each edge is named on its own."""
        groups: dict[str, list[Unit]] = {}
        for unit in units:
            groups.setdefault(cls.container_of(unit), []).append(unit)
        gaps: list[str] = []
        for table, group in groups.items():
            gaps.extend(_range_gaps(table, group))
        return gaps

    def unlisted(self, units: list[Unit]) -> list[str]:
        """Selected tables with no unit (one information_schema query; no measuring)."""
        planned = {self.container_of(u) for u in units}
        with self._session() as conn, conn.cursor() as cur:
            tables = self._selected_tables(cur)
        return sorted({f"{db}.{table}" for db, table, *_ in tables} - planned)

    # -- connections -----------------------------------------------------------------
    def _connect(self, *, raw: bool = False, local_infile: bool = False,
                 long: bool = False, default_db: bool = True) -> mc.Connection:
        """A new connection set up for this store (raw: results stay the server's bytes;
        long: for statements that answer only when done, such as index builds;
        default_db: start in the URL's database)."""
        info = self.endpoint.connection()
        s = self.settings
        init = _SESSION + (", character_set_results = binary" if raw else "")
        extra: dict[str, Any] = {"conv": _ENCODERS, "use_unicode": False} if raw else {}
        try:
            context = s.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise self.endpoint.fail(f"cannot use the TLS files: {exc}") from exc
        try:
            conn = mc.Connection(
                host=s.host, port=s.port, user=info.username, password=info.password or "",
                database=(s.database or None) if default_db else None, charset="utf8mb4",
                autocommit=True,
                connect_timeout=min(s.timeout, 15.0),
                read_timeout=s.ddl_timeout if long else s.timeout, write_timeout=s.timeout,
                local_infile=local_infile, ssl=context, ssl_disabled=context is None,
                init_command=init, max_allowed_packet=256 << 20, **extra)
        except pymysql.MySQLError as exc:
            raise self._error(exc, "cannot connect", connecting=True) from exc
        if context is not None and not conn.server_capabilities & CLIENT.SSL:
            _close_quietly(conn)
            raise self.endpoint.fail("the server does not offer TLS; not continuing in plain"
                                     " text", hint="enable TLS on the server, or drop tls:")
        return conn

    @contextmanager
    def _session(self, raw: bool = False, long: bool = False) -> Iterator[mc.Connection]:
        """Borrow a pooled connection for the current thread; a connection that saw an
        error, or was abandoned mid-result, is closed rather than returned."""
        conn = None
        kind = (raw, long)
        with self._lock:
            if self._idle.get(kind):
                conn = self._idle[kind].pop()
        if conn is not None:
            try:
                conn.ping(reconnect=False)
            except pymysql.MySQLError:
                _close_quietly(conn)
                conn = None
        conn = conn or self._connect(raw=raw, long=long)
        healthy = False
        try:
            yield conn
            healthy = True
        except pymysql.MySQLError as exc:
            raise self._error(exc, "query failed") from exc
        finally:
            if healthy and conn.open:
                with self._lock:
                    idle = self._idle.setdefault(kind, [])
                    if len(idle) < _POOL_SIZE:
                        idle.append(conn)
                        conn = None
            if conn is not None:
                _close_quietly(conn)

    def _error(self, exc: BaseException, doing: str, *, connecting: bool = False
               ) -> MigrateError:
        """A driver exception as the project's error: access problems and a certificate
        that fails verification are terminal endpoint errors; a server that cannot be
        reached is a transient endpoint error; a stall (timeout), a dropped connection or
        a lock timeout mid-work is a ``TransientError`` the engine retries."""
        if isinstance(exc, MigrateError):
            return exc
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        password = self.endpoint.connection().password
        if password and len(password) >= 3:
            text = text.replace(password, "***")
        problem = f"{doing}: ({code}) {text}" if code else f"{doing}: {text}"
        original = getattr(exc, "original_exception", None)
        if isinstance(original, ssl.SSLError):
            return self.endpoint.fail(
                f"{doing}: TLS failed: {original}",
                hint="name the server's CA in tls.ca_file, or for a test server with a"
                " self-signed certificate set tls.verify: false (the plan then says NOT"
                " verified)")
        if code == _TLS_REFUSED:
            return self.endpoint.fail(problem, hint="enable TLS on the server, or leave tls:"
                                      " and ?ssl out of the endpoint")
        if code in _DENIED:
            return self.endpoint.fail(problem, hint="check the user, password and grants"
                                      " (a source needs SELECT and SHOW VIEW)")
        if code == _UNKNOWN_DB:
            return self.endpoint.fail(problem, hint="check the database named in the URL")
        if code in _CONNECTION or isinstance(exc, pymysql.InterfaceError):
            if connecting:
                return self.endpoint.fail(problem, transient=True)
            return TransientError(f"{self.endpoint.label}: {problem}")
        if code in _RETRY:
            return TransientError(f"{self.endpoint.label}: {problem}")
        return StoreError(f"{self.endpoint.label}: {problem}")

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        with self._session() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@version_comment, @@local_infile,"
                        " @@max_allowed_packet, CURRENT_USER()")
            version, comment, local_infile, packet, user = cur.fetchone()
        flavour = "mariadb" if "mariadb" in f"{version} {comment}".lower() else "mysql"
        self._facts = {"version": version, "flavour": flavour, "max_allowed_packet": int(packet),
                       "user": user}
        self._local_infile = bool(int(local_infile))
        if any(str(k).startswith((_HELD, _HELD_EVENT)) for k in list(self._cache)):
            self._release_triggers(orphans=True)  # an earlier process died holding them

    def close(self) -> None:
        if self._held or self._held_events:
            try:
                self._release_triggers()
            except MigrateError as exc:  # kept in the journal: the next open() retries
                log.warning("%s: could not make the triggers held during sync again: %s",
                            self.endpoint.label, exc)
        with self._lock:
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle = {}
        for conn in idle:
            _close_quietly(conn)

    def describe(self) -> dict[str, Any]:
        if not self._facts:
            self.open()
        notes = [f"tls: {self.settings.tls_state}", *self.definer_rewrites]
        warnings = [f"NOT copied nor verified: {why}"
                    for why in dict.fromkeys(self._hidden_kinds().values())]
        return {
            **{k: v for k, v in self._facts.items() if k != "user"},
            "tls": self.settings.tls_state,
            "consistency": "each unit is read in its own REPEATABLE READ transaction started"
            " WITH CONSISTENT SNAPSHOT; units (and tables) are not consistent with each"
            " other: that relies on the write freeze at cutover (one global snapshot would"
            " need FLUSH TABLES WITH READ LOCK, i.e. the RELOAD privilege)",
            "import": "LOAD DATA LOCAL INFILE (REPLACE), streamed from memory"
            if self._local_infile else
            "multi-row REPLACE statements (the server has local_infile=OFF)",
            "checksum": "per key chunk: COUNT(*) and the sum of per-row MD5s, by the server,"
            " over the columns each side has when the digest starts",
            "objects": "views, triggers, routines and events are created after the data;"
            " a DEFINER is kept when that account exists on the target, otherwise the target"
            " user becomes the definer and the plan/run says so",
            "timeouts": f"{self.settings.timeout:g} s per read or write"
            f" ({self.settings.ddl_timeout:g} s for index builds)",
            "notes": notes,
            "warnings": warnings,
        }

    def check_access(self, role: base.Role) -> None:
        if role == base.Role.SOURCE:
            self._check_source()
            return
        # probe with a scratch table: grants (roles, wildcards, partial revokes) are too
        # varied to read reliably from SHOW GRANTS
        path = self.settings.database
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
                            " DROP (and CREATE VIEW, TRIGGER, CREATE ROUTINE, EVENT for"
                            " those objects)") from exc
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

    def _live(self, db: str, table: str) -> Table | None:
        """The table as it is now (never cached: the plan may be days old)."""
        with self._session() as conn, conn.cursor() as cur:
            return ms.load_table(cur, db, table)

    def _table(self, db: str, table: str) -> Table:
        meta = self._live(db, table)
        if meta is None:
            raise StoreError(f"{self.endpoint.label}: table {db}.{table} does not exist")
        return meta

    def _key(self, meta: Table, spec: dict[str, Any]) -> list[Column]:
        return [meta.column(name) for name in spec.get("key") or []]

    def _checked_key(self, meta: Table, spec: dict[str, Any]) -> list[Column]:
        """The plan's range key, refused when the live table no longer has it unique:
        ranges and resume cursors over a non-unique key would skip rows."""
        names = list(spec.get("key") or [])
        missing = [n for n in names if n not in {c.name for c in meta.columns}]
        if missing or (names and not meta.unique_on(names)):
            raise StoreError(
                f"{self.endpoint.label}: table {meta.db}.{meta.name}: the plan splits it on"
                f" ({', '.join(names)}), which is no longer a unique key"
                + (f" (column {missing[0]} is gone)" if missing else ""),
                hint="re-run `openim-migrate plan`")
        return self._key(meta, spec)

    def _one(self, sql: str, args: Any = None) -> Any:
        with self._session() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def show_create_table(self, db: str, table: str) -> str:
        return str(self._one(f"SHOW CREATE TABLE {qualified(db, table)}")[1])

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

    def _selected(self, db: str, name: str) -> bool:
        full, sel = f"{db}.{name}", self.selection
        if sel.include and not any(fnmatch.fnmatchcase(full, p) for p in sel.include):
            return False
        return not any(fnmatch.fnmatchcase(full, p) for p in sel.exclude)

    def _selected_tables(self, cur: Any) -> list[tuple[str, str, int, int]]:
        """The URL's database or every non-system one, filtered by include/exclude
        patterns on ``db.table``."""
        tables = ms.list_tables(cur, self.settings.database)
        return [t for t in tables if self._selected(t[0], t[1])]

    def _databases(self, cur: Any) -> list[str]:
        """This side's databases in scope: the URL's, or every non-system one."""
        if self.settings.database:
            return [self.settings.database]
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1")
        return [r[0] for r in cur.fetchall() if r[0].lower() not in ms.SYSTEM_DATABASES]

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

    def _parallel(self) -> int:
        return max(1, self.options.parallel)

    def _unit_step(self, rows: int) -> int | None:
        """Rows per unit when a table of ``rows`` rows should be cut into more units than
        ``unit_records`` asks for, else None: a table of at least 2 × 10,000 rows is cut
        into up to ``parallel`` units of about 10,000 rows or more, so one table alone
        still loads and verifies in parallel; never more units than ``parallel``."""
        step = max(1, self.options.split_records)
        wanted = min(self._parallel(), rows // _MIN_UNIT_ROWS)
        if wanted > max(1, -(-rows // step)):
            return -(-rows // wanted)
        return None

    def _units_of(self, db: str, table: str, est_rows: int, size: int) -> list[Unit]:
        """One unit per ``unit_records`` rows of key range (fewer rows per unit where
        ``_unit_step`` fills ``parallel``); counts are exact (every range
        but the last holds exactly that many rows at plan time). The spec names the rows
        (table and key range), not the columns: those are read when the copy starts."""
        meta = self._table(db, table)
        index, key_names = meta.range_key()
        spec: dict[str, Any] = {"db": db, "table": table, "key": key_names}

        def estimate(count: int) -> int:
            return int(size / est_rows * count) if est_rows else size

        if not key_names:
            count = self._count(meta, [], None, None)
            spec.update(lo=None, hi=None, resumable=False, note=ms.NO_KEY_NOTE)
            return [Unit(self.kind, f"{db}.{table}", spec, count, estimate(count))]
        key = self._key(meta, spec)
        step = max(1, self.options.split_records)
        if self._unit_step(est_rows) is not None:  # an estimate: the split uses the count
            step = self._unit_step(self._count(meta, key, None, None)) or step
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
        with self._session(raw=True, long=True) as conn, conn.cursor() as cur:
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
        with self._session(long=True) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {meta.ident} WHERE {pred}")
            return int(cur.fetchone()[0])

    def export(self, unit: Unit, resume_from: base.Cursor = None) -> Iterator[Batch]:
        """Stream the unit's rows in key order from a consistent snapshot; each batch's
        cursor is the last key in it. The columns are the table's as they are once the
        snapshot is open (a change after that makes the server refuse the read, and the
        retry reads them again). A keyless unit always starts from the top."""
        spec = unit.spec
        db, table = self._db(spec), spec["table"]
        max_records = max(1, self.options.batch_records)
        max_bytes = max(1, self.options.batch_bytes)
        conn = self._connect(raw=True)
        try:
            # no cursor context manager: closing an SSCursor would first read the rest of
            # the result, and an abandoned export must stop at once
            cur = conn.cursor(pymysql.cursors.SSCursor)
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            meta = self._table(db, table)
            key = self._checked_key(meta, spec)
            copied = meta.copy_columns()
            names = [c.name for c in copied]
            columns = tuple((c.name, c.column_type) for c in copied)
            positions = [names.index(c.name) for c in key]
            after = resume_from if key and resume_from is not None else None
            pred = range_predicate(key, spec.get("lo"), spec.get("hi"), after) if key else "TRUE"

            def cursor(row: Row, seen: int) -> base.Cursor:
                if not key:
                    return {"rows": seen}  # informative only: a keyless unit restarts
                return [ms.encode_value(row[p], c.kind)
                        for p, c in zip(positions, key, strict=True)]

            cur.execute(f"SELECT {', '.join(quote_ident(c) for c in names)} FROM {meta.ident}"
                        f" WHERE {pred}" + (f" ORDER BY {ms.order_by(key)}" if key else ""))
            rows: list[Row] = []
            nbytes = seen = 0
            while fetched := cur.fetchmany(1000):
                for row in fetched:
                    rows.append(row)
                    nbytes += sum(map(len, filter(None, row)))
                    if len(rows) >= max_records or nbytes >= max_bytes:
                        seen += len(rows)
                        yield RowBatch(rows, cursor(row, seen), nbytes, columns=columns)
                        rows, nbytes = [], 0
            if rows:
                seen += len(rows)
                yield RowBatch(rows, cursor(rows[-1], seen), nbytes, columns=columns)
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == _UNKNOWN_COLUMN:  # dropped since we read the list
                raise TransientError(f"{self.endpoint.label}: exporting {unit.name}: the"
                                     f" table changed while the export started ({exc.args[-1]})"
                                     ) from exc
            raise self._error(exc, f"exporting {unit.name}") from exc
        finally:
            _close_quietly(conn)  # ends the read-only snapshot transaction too

    # -- target side -----------------------------------------------------------------
    def existing(self, units: list[Unit]) -> list[str]:
        found = []
        for unit in units:
            meta = self._live(self._db(unit.spec), unit.spec["table"])
            if meta is None:
                continue
            spec = unit.spec
            try:
                key = self._key(meta, spec)
            except StoreError:
                key = []  # not this key on the target: any row counts
            pred = range_predicate(key, spec.get("lo"), spec.get("hi")) if key else "TRUE"
            if self._one(f"SELECT 1 FROM {meta.ident} WHERE {pred} LIMIT 1"):
                found.append(unit.key)
        return found

    def _source_of(self, source: Store, units: list[Unit]) -> tuple[MySQLStore, list[Any]]:
        if not isinstance(source, MySQLStore):
            # a restore: the archive's recorded tables and objects stand in for a live source
            source = source.stand_in() or source
        if not isinstance(source, MySQLStore):
            raise CapabilityMissing(f"{self.endpoint.label}: can only create tables from a"
                                    f" MySQL source, not {source.kind}")
        return source, list(dict.fromkeys((u.spec["db"], u.spec["table"]) for u in units))

    def _ensure_database(self, src: MySQLStore, db: str) -> str:
        target_db = self.db_map.get(db, db)
        path = self.settings.database
        if path and target_db != path:
            raise PlanError(f"{self.endpoint.name or 'mysql'}.url",
                            f"names database {path}, but {db} would be copied to"
                            f" {target_db}", hint=f"add db_map: {{{db}: {path}}}")
        charset, collation = src.database_charset(db)
        self._one(f"CREATE DATABASE IF NOT EXISTS {quote_ident(target_db)}"
                  f" CHARACTER SET {charset} COLLATE {collation}")
        return target_db

    def prepare_target(self, units: list[Unit], source: Store) -> None:
        """Create databases (same default charset and collation), then tables from the
        source's SHOW CREATE TABLE as it is now (types, charsets, AUTO_INCREMENT, engine,
        row format) minus their non-unique indexes, which ``finalize_target`` adds after
        the data. A table that exists already is checked against the source, not changed.
        Triggers on these tables are dropped and events disabled until ``finalize_target``
        makes them again, so neither acts on imported rows."""
        src, tables = self._source_of(source, units)
        for db in dict.fromkeys(db for db, _ in tables):
            self._ensure_database(src, db)
        for db, table in tables:
            target_db = self.db_map.get(db, db)
            have = self._live(target_db, table)
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
        self._quiesce(src, tables)

    def _quiesce(self, src: MySQLStore, tables: list[tuple[str, str]]) -> None:
        """Hold (``hold_triggers``) the triggers of these tables and disable the enabled
        events of their databases until ``finalize_target`` makes them from the source,
        or, when no finalize follows (``sync``), until ``close()`` puts them back."""
        by_db: dict[str, set[str]] = {}
        for db, table in tables:
            by_db.setdefault(db, set()).add(table)
        strangers = []
        holds: list[tuple[str, str]] = []
        events: list[tuple[str, str]] = []
        with self._session() as conn, conn.cursor() as cur:
            for db, names in by_db.items():
                target_db = self.db_map.get(db, db)
                known = src.trigger_names(db)
                cur.execute("SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM"
                            " information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
                            (target_db,))
                for name, table in cur.fetchall():
                    if table not in names:
                        continue
                    if name not in known:
                        strangers.append(f"{target_db}.{name} (on {table})")
                        continue
                    holds.append((target_db, table))
                cur.execute("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE"
                            " EVENT_SCHEMA = %s AND STATUS = 'ENABLED'", (target_db,))
                events.extend((target_db, name) for (name,) in cur.fetchall())
        if strangers:
            raise StoreError(f"{self.endpoint.label}: trigger(s) {', '.join(strangers[:5])}"
                             " exist only on the target and would fire on every imported row",
                             hint="drop them on the target (the source has no such trigger)")
        for db, table in dict.fromkeys(holds):
            self.hold_triggers(db, table)
        for db, name in events:
            self._hold_event(db, name)

    def trigger_names(self, db: str) -> set[str]:
        """The names of the triggers of database ``db`` on this side."""
        return {str(r[0]) for r in self._rows("SELECT TRIGGER_NAME FROM"
                                              " information_schema.TRIGGERS WHERE"
                                              " TRIGGER_SCHEMA = %s", (db,))}

    def _rows(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self._session() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def finalize_target(self, units: list[Unit], source: Store) -> None:
        """Add the secondary indexes left out at creation and catch AUTO_INCREMENT up;
        then make the views, triggers, routines and events the source has now."""
        src, tables = self._source_of(source, units)
        for db, table in tables:
            ddl = src.show_create_table(db, table)
            with self._session(long=True) as conn, conn.cursor() as cur:
                ms.add_missing_indexes(cur, self.db_map.get(db, db), table, ddl)
        self._sync_objects(src, units)
        # every object of these databases is now as on the source: nothing to put back
        self._forget_held({self.db_map.get(str(u.spec["db"]), str(u.spec["db"]))
                           for u in units})

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

    # -- views, triggers, routines, events -------------------------------------------
    def _hidden_kinds(self) -> dict[str, str]:
        """Object kinds this user cannot see in full (read once per store)."""
        if self._hidden is None:
            with self._session() as conn, conn.cursor() as cur:
                tables = [(db, t) for db, t, *_ in self._selected_tables(cur)]
                self._hidden = mo.hidden_kinds(cur, self._databases(cur), tables)
        return self._hidden

    def _objects(self, db: str, source_db: str) -> list[mo.SchemaObject]:
        """The selected objects of one database, read on a connection with no default
        database: SHOW CREATE VIEW leaves out the qualifier of the current one, and both
        sides must write their texts alike."""
        kinds = tuple(k for k in mo.KINDS if k not in self._hidden_kinds())
        conn = self._connect(default_db=False)
        try:
            with conn.cursor() as cur:
                return mo.read_objects(cur, db, lambda _db, name: self._selected(source_db,
                                                                                 name), kinds)
        except StoreError as exc:
            raise StoreError(f"{self.endpoint.label}: {exc.message}", hint=exc.hint) from exc
        except pymysql.MySQLError as exc:
            raise self._error(exc, f"reading the objects of {db}") from exc
        finally:
            _close_quietly(conn)

    def _shown_definer(self, key: str, definer: str | None) -> str | None:
        """The definer verify should see: the source's, where this store rewrote it."""
        recorded = self._cache.get(f"definer {key}")
        if recorded and definer is not None:
            rewrite = json.loads(recorded)
            if rewrite.get("target") == definer:
                return str(rewrite.get("source"))
        return definer

    def definitions(self, units: list[Unit]) -> dict[str, Any]:
        """The selected objects of the databases the units name (on a target, through
        db_map): ``{"view db.v": {...}, "trigger db.t": {...}, ...}`` by source name. Each
        holds the CREATE text without DEFINER, the definer (a rewrite this store made
        shows as the source's) and the settings the object runs under."""
        out: dict[str, Any] = {}
        for source_db in dict.fromkeys(str(u.spec["db"]) for u in units):
            db = self.db_map.get(source_db, source_db)
            for obj in self._objects(db, source_db):
                key = obj.key(source_db)
                out[key] = obj.data(db, source_db, self._shown_definer(key, obj.definer))
        return out

    def _sync_objects(self, src: MySQLStore, units: list[Unit]) -> None:
        """Make on this target every object of the units' databases that the source has
        now and that is missing or different here (dropped first), in dependency order; a
        view on a view not made yet waits for the next pass. Objects only the target has
        are left alone (verify names them)."""
        pending: list[tuple[str, mo.SchemaObject]] = []
        for db in dict.fromkeys(str(u.spec["db"]) for u in units):
            objects = src._objects(db, db)
            if not objects:
                continue
            target_db = self._ensure_database(src, db)
            have = {o.key(db): o for o in self._objects(target_db, db)}
            for obj in objects:
                key = obj.key(db)
                current = have.get(key)
                if current is not None and current.data(
                        target_db, db, self._shown_definer(key, current.definer)) == obj.data(
                        db, db, obj.definer):
                    continue
                pending.append((target_db, obj))
        conn = self._connect()
        try:
            while pending:
                failed, errors = [], []
                for target_db, obj in pending:
                    try:
                        self._make(conn, obj, target_db)
                    except pymysql.MySQLError as exc:
                        failed.append((target_db, obj))
                        errors.append(f"{obj.key(obj.db)}: {exc.args[-1]}")
                if len(failed) == len(pending):
                    raise StoreError(f"{self.endpoint.label}: cannot create "
                                     + "; ".join(errors[:5]))
                pending = failed
        finally:
            _close_quietly(conn)

    def _make(self, conn: mc.Connection, obj: mo.SchemaObject, target_db: str) -> None:
        """Drop and create one object, with the source's DEFINER when that account exists
        here and this user may name it; otherwise as this user, recorded as a rewrite."""
        key = obj.key(obj.db)
        definer = obj.definer
        with conn.cursor() as cur:
            cur.execute(mo.drop_sql(obj, target_db))
            exists = mo.account_exists(cur, definer) if definer else None
        if definer and exists:
            try:
                mo.create(conn, obj, target_db, definer)
                return
            except pymysql.MySQLError as exc:
                if not (exc.args and exc.args[0] in _DENIED):
                    raise
                why = "exists here, but this user may not create objects for it"
        else:
            why = ("does not exist on the target" if exists is False else
                   "cannot be looked up on the target (no SELECT on mysql.user)")
        mo.create(conn, obj, target_db, None)
        if definer:
            me = str(self._facts.get("user") or self._one("SELECT CURRENT_USER()")[0])
            line = f"{key}: definer {definer} {why}; created with definer {me}"
            self.definer_rewrites.append(line)
            self._cache[f"definer {key}"] = json.dumps({"source": definer, "target": me})
            log.warning("%s: %s", self.endpoint.label, line)

    # -- verification ----------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        """Key sub-ranges of about ``chunk_records`` rows inside the unit; together they
        cover the unit's whole range, so rows only the target has still fall in one."""
        spec = unit.spec
        meta = self._table(self._db(spec), spec["table"])
        key = self._checked_key(meta, spec)
        if not key:
            return [Chunk("all", None)]
        lo, hi = spec.get("lo"), spec.get("hi")
        step = max(1, self.options.chunk_records)
        edges = [lo, *self._boundaries(meta, spec.get("index"), key, lo, hi, step), hi]
        return [Chunk(f"{i:04d}", {"lo": a, "hi": b})
                for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))]

    def _chunk_predicate(self, key: list[Column], chunk: Chunk) -> str:
        bounds = chunk.bounds or {}
        return range_predicate(key, bounds.get("lo"), bounds.get("hi")) if key else "TRUE"

    def _verify_meta(self, unit: Unit) -> tuple[Table, list[Column]] | None:
        """This side's table as it is now and the unit's key in it; None when the table
        is missing. A key column missing here is left to the schema comparison: every
        row is then compared as a whole."""
        meta = self._live(self._db(unit.spec), unit.spec["table"])
        if meta is None:
            return None
        try:
            return meta, self._key(meta, unit.spec)
        except StoreError:
            return meta, []

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Per chunk, COUNT(*) and the 128-bit sum of row MD5s over the columns this side
        has now, both computed by the server. A table missing here digests as empty:
        every row shows as missing."""
        found = self._verify_meta(unit)
        if found is None:
            return {c.id: ChunkDigest() for c in chunks}
        meta, key = found
        columns = meta.copy_columns()
        out: dict[str, ChunkDigest] = {}

        def part(share: list[Chunk]) -> None:
            with self._session(long=not key) as conn, conn.cursor() as cur:
                for chunk in share:
                    pred = self._chunk_predicate(key, chunk)
                    with self._digest_slots:
                        cur.execute(ms.digest_sql(meta.ident, columns, pred))
                        count, high, low = cur.fetchone()
                    total = ((int(high or 0) << 64) + int(low or 0)) & base.HASH_MASK
                    out[chunk.id] = ChunkDigest(count=int(count), hash=total)

        lanes = min(len(chunks), self._parallel())
        if lanes <= 1:
            part(chunks)
            return out
        # the chunks of one unit on several connections (the server sums each chunk on
        # one core); a store-wide limit keeps units times lanes from swamping the server
        with ThreadPoolExecutor(lanes, thread_name_prefix="mysql-digest") as pool:
            for done in [pool.submit(part, chunks[i::lanes]) for i in range(lanes)]:
                done.result()
        return out

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """(key, row MD5) of one chunk in key order; for a keyless table (row MD5, number
        of identical rows), so a duplicate row lost or gained is still named."""
        found = self._verify_meta(unit)
        if found is None:
            return
        meta, key = found
        pred = self._chunk_predicate(key, chunk)
        hashed = ms.row_hash(meta.copy_columns())
        if key:
            sql = (f"SELECT {ms.order_by(key)}, {hashed} FROM {meta.ident} WHERE {pred}"
                   f" ORDER BY {ms.order_by(key)}")
        else:
            sql = f"SELECT h, COUNT(*) FROM (SELECT {hashed} AS h FROM {meta.ident}) r GROUP BY h"
        n = len(key)
        with self._session(raw=True, long=not key) as conn:
            cur = conn.cursor(pymysql.cursors.SSCursor)  # see export(): no draining close
            cur.execute(sql)
            for row in cur.fetchall_unbuffered():
                if key:
                    yield ms.key_text(key, row[:n]), row[n].decode("ascii")
                else:
                    yield ms.ROW_MD5_PREFIX + row[0].decode("ascii"), int(row[1])

    def schema(self, unit: Unit) -> dict[str, Any]:
        """This side's table as it is now: columns (type, charset, collation, default,
        generated expression, nullability, position), indexes and table options."""
        db, table = self._db(unit.spec), unit.spec["table"]
        with self._session() as conn, conn.cursor() as cur:
            meta = ms.load_table(cur, db, table)
            if meta is None:
                return {"missing": f"table {unit.spec['db']}.{table} does not exist"}
            cur.execute(f"SHOW CREATE TABLE {meta.ident}")
            return ms.schema_of(meta, ms.auto_increment_of(cur.fetchone()[1]))

    # -- catch-up --------------------------------------------------------------------
    def _wanted(self, unit: Unit, key: list[Column], columns: list[Column], keys: list[str]
                ) -> tuple[list[str], tuple[str, ...]]:
        """WHERE clauses (one per slice of keys) for the records ``records()`` named, and
        for a keyless table the row MD5s they are. A name this table's key could not have
        printed is refused: guessing would copy or delete the wrong row."""
        try:
            if not key:
                groups = tuple(dict.fromkeys(ms.parse_row_md5(k) for k in keys))
                # every statement reads the whole table: one for all the names given
                return ([ms.row_md5_match(columns, list(groups))] if groups else []), groups
            wanted = list(dict.fromkeys(ms.parse_key(key, k) for k in keys))
        except StoreError as exc:
            raise StoreError(f"{self.endpoint.label}: {unit.name}: {exc.message}") from exc
        return [ms.key_match(key, wanted[i:i + _KEY_SLICE])
                for i in range(0, len(wanted), _KEY_SLICE)], ()

    def fetch(self, unit: Unit, keys: list[str]) -> Batch:
        """The rows ``records()`` named, as one ``RowBatch`` for the importer (columns read
        live, as ``export`` does); rows gone meanwhile are absent. One statement per 500
        keys: an IN list on the unit's key, exact to the byte. For a table without a key
        the names are row MD5s: the batch carries every source row of those groups and
        asks the importer to replace the target's rows of the same groups."""
        spec = unit.spec
        meta = self._table(self._db(spec), spec["table"])
        key = self._checked_key(meta, spec)
        copied = meta.copy_columns()
        names = [c.name for c in copied]
        where, groups = self._wanted(unit, key, copied, keys)
        select = f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {meta.ident} WHERE "
        rows: list[Row] = []
        with self._session(raw=True, long=not key) as conn, conn.cursor() as cur:
            for pred in where:
                cur.execute(select + pred)
                rows.extend(cur.fetchall())
        nbytes = sum(len(v) for row in rows for v in row if v is not None)
        return RowBatch(rows, None, nbytes, columns=tuple((c.name, c.column_type)
                                                          for c in copied), groups=groups)

    def delete(self, unit: Unit, keys: list[str]) -> None:
        """Delete the named rows on this target (the rows of the named MD5 groups for a
        table without a key), 500 keys per statement, with foreign key checks off as
        for the import: the source decides, and cascades would reach rows of other
        units. A missing table or row is no error."""
        spec = unit.spec
        meta = self._live(self._db(spec), spec["table"])
        if meta is None or not keys:
            return
        key = self._key(meta, spec)
        where, _groups = self._wanted(unit, key, meta.copy_columns(), keys)
        self.hold_triggers(meta.db, meta.name)
        with self._session() as conn, conn.cursor() as cur:
            cur.execute("SET foreign_key_checks = 0")
            for pred in where:
                cur.execute(f"DELETE FROM {meta.ident} WHERE {pred}")
            cur.execute("SET foreign_key_checks = 1")

    def records_of(self, unit: Unit, keys: list[str]) -> Iterator[tuple[str, Any]]:
        """``records`` of the named keys inside the unit's range, present rows only: one
        statement per 500 keys (an IN list on the key, byte-exact); a followed pass and the
        verify after it compare only these."""
        found = self._verify_meta(unit)
        if found is None or not keys:
            return
        meta, key = found
        if not key and unit.spec.get("key"):
            return  # the key column is gone here: the schema comparison says so
        columns = meta.copy_columns()
        where, _groups = self._wanted(unit, key, columns, keys)
        hashed = ms.row_hash(columns)
        inside = range_predicate(key, unit.spec.get("lo"), unit.spec.get("hi")) if key else ""
        n = len(key)
        with self._session(raw=True, long=not key) as conn, conn.cursor() as cur:
            for pred in where:
                if key:
                    cur.execute(f"SELECT {ms.order_by(key)}, {hashed} FROM {meta.ident}"
                                f" WHERE ({pred}) AND ({inside})")
                else:
                    cur.execute(f"SELECT {hashed}, COUNT(*) FROM {meta.ident} WHERE {pred}"
                                " GROUP BY 1")
                for row in cur.fetchall():
                    if key:
                        yield ms.key_text(key, row[:n]), row[n].decode("ascii")
                    else:
                        yield ms.ROW_MD5_PREFIX + row[0].decode("ascii"), int(row[1])

    # -- following changes -------------------------------------------------------------
    def _binlog_position(self) -> tuple[str, int]:
        """Where the master writes its binlog now (``SHOW MASTER STATUS``; MySQL 8.4 knows
        only ``SHOW BINARY LOG STATUS``)."""
        with self._session() as conn, conn.cursor() as cur:
            try:
                cur.execute("SHOW MASTER STATUS")
            except pymysql.ProgrammingError as exc:
                if not exc.args or exc.args[0] != 1064:
                    raise
                cur.execute("SHOW BINARY LOG STATUS")
            row = cur.fetchone()
        if row is None:
            raise StoreError(f"{self.endpoint.label}: the binary log is off")
        return str(row[0]), int(row[1])

    def _binlog_connect(self, stream: bool) -> pymysql.Connection:
        """A connection for the binlog reader, made like every other (TLS, account); the
        lookup connection answers as dictionaries from information_schema."""
        conn = self._connect(default_db=False)
        if not stream:
            conn.select_db("information_schema")
            conn.cursorclass = pymysql.cursors.DictCursor
        return conn

    def _end_thread(self, thread_id: int) -> None:
        """End one of this account's own server threads (a binlog dump we left); gone
        already is fine."""
        try:
            with self._session() as conn, conn.cursor() as cur:
                cur.execute("KILL CONNECTION %s", (thread_id,))
        except MigrateError as exc:
            if "Unknown thread" not in exc.message:
                log.debug("%s: could not end thread %s: %s", self.endpoint.label, thread_id,
                          exc.message)

    def _follow_refused(self, what: str, fix: str) -> CapabilityMissing:
        return CapabilityMissing(f"{self.endpoint.label}: {what} ({fix}): catch-up digests"
                                 " every chunk")

    def follow(self) -> Any:
        """Read the binlog from now on (see ``feed``): later passes compare only the rows
        it names. Refused, saying what to configure or grant, without ``log_bin``, without
        ``binlog_format=ROW`` or without the account's replication privileges."""
        from migrator.stores.mysql import feed as mf

        self.open()
        user = self._facts.get("user")
        mariadb = self._facts.get("flavour") == "mariadb"
        monitor = "BINLOG MONITOR" if mariadb else "REPLICATION CLIENT"
        if not mf.SUPPORTED:
            raise self._follow_refused("this mysql-replication cannot hand out raw key bytes",
                                       "install the version pyproject.toml names")
        with self._session() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format")
            log_bin, binlog_format = cur.fetchone()
            if not int(log_bin):
                raise self._follow_refused("the binary log is off",
                                           "start the server with log_bin and binlog_format=ROW")
            if str(binlog_format).upper() != "ROW":
                raise self._follow_refused(f"binlog_format is {binlog_format}, not ROW",
                                           "SET GLOBAL binlog_format = 'ROW', or start the"
                                           " server with binlog_format=ROW")
            schemas = self._databases(cur)
            tables: dict[tuple[str, str], mf.TableKey] = {}
            for db, name, *_ in self._selected_tables(cur):
                meta = ms.load_table(cur, db, name)
                if meta is None:
                    continue
                _index, names = meta.range_key()
                cols = [meta.column(n) for n in names]
                positions = [meta.columns.index(c) for c in cols]
                tables[(db, name)] = mf.TableKey(tuple(cols), tuple(positions),
                                                 len(meta.columns))
        try:
            start = self._binlog_position()
        except MigrateError as exc:
            raise self._follow_refused(f"the account {user} may not read the binlog position"
                                       f" ({exc.message})",
                                       f"GRANT {monitor} ON *.* TO the account") from None
        heartbeat = max(1.0, min(10.0, self.settings.timeout / 4))
        feed = mf.BinlogFeed(label=self.endpoint.label, connect=self._binlog_connect,
                             position=self._binlog_position, start=start, schemas=schemas,
                             tables=tables, selected=self._selected, heartbeat=heartbeat,
                             end=self._end_thread)
        try:
            return feed.start()
        except mf.Broken as exc:
            if exc.code in _DENIED:
                raise self._follow_refused(f"the account {user} may not read the binlog",
                                           f"GRANT REPLICATION SLAVE, {monitor} ON *.* TO the"
                                           " account") from None
            raise

    def changed_in(self, unit: Unit, changes: Any) -> list[str]:
        """The keys of ``unit`` (its table, inside its key range) that the binlog named,
        as ``records`` names them. A key compared by the server's collation (text) is not
        sorted into ranges here: ``records_of`` reads only the unit's range anyway."""
        db, table = unit.spec["db"], unit.spec["table"]
        rows = changes.rows.get((db, table))
        if not rows or not self._selected(db, table):
            return []
        key: tuple[Column, ...] = changes.keys[(db, table)]
        if [c.name for c in key] != list(unit.spec.get("key") or []):
            raise StoreError(f"{self.endpoint.label}: {unit.name}: the plan names its rows by"
                             f" ({', '.join(unit.spec.get('key') or [])}), the table now by"
                             f" ({', '.join(c.name for c in key)})",
                             hint="re-run `openim-migrate plan`")
        picked = sorted(rows)
        lo, hi = unit.spec.get("lo"), unit.spec.get("hi")
        if all(c.kind == "int" for c in key):
            low = tuple(int(v) for v in lo) if lo else None
            high = tuple(int(v) for v in hi) if hi else None
            numbers = [(tuple(int(v) for v in raw), raw) for raw in picked]
            picked = [raw for n, raw in numbers
                      if (low is None or n >= low) and (high is None or n < high)]
        elif (lo is not None or hi is not None) and not any(c.data_type == "time"
                                                             for c in key):
            picked = self._in_range(list(key), lo, hi, picked)
        return [ms.key_text(list(key), raw) for raw in picked]

    def _in_range(self, key: list[Column], lo: Any, hi: Any, keys: list[tuple[bytes, ...]]
                  ) -> list[tuple[bytes, ...]]:
        """The keys inside ``lo <= key < hi`` as the server orders them (its collation, not
        Python's): the keys as a derived table under the key's column names, filtered by
        the unit's own range predicate, 500 per statement. (TIME keys are left unsorted:
        their text does not order like the values; ``records_of`` reads the range anyway.)"""
        inside: set[int] = set()
        names = [quote_ident(c.name) for c in key]
        predicate = range_predicate(key, lo, hi)
        with self._session() as conn, conn.cursor() as cur:
            for start in range(0, len(keys), _KEY_SLICE):
                part = keys[start:start + _KEY_SLICE]
                table = " UNION ALL ".join(
                    f"SELECT {start + i} AS oim_key_no, "
                    + ", ".join(f"{c.literal(v)} AS {n}"
                                for c, v, n in zip(key, raw, names, strict=True))
                    for i, raw in enumerate(part))
                cur.execute(f"SELECT oim_key_no FROM ({table}) k WHERE {predicate}")
                inside.update(int(row[0]) for row in cur.fetchall())
        return [raw for i, raw in enumerate(keys) if i in inside]

    def hold_triggers(self, db: str, table: str) -> None:
        """Target, in ``sync``: drop this table's triggers until ``close()``, so that rows
        re-copied or deleted do not fire them (the source's triggers acted on these rows
        already: an audit row would be written twice, a ``SET NEW.x = NEW.x + 1`` would
        never converge). Their definitions wait in memory and in the journal, so a sync
        that dies leaves them to the next ``open()``."""
        key = f"{db}.{table}"
        with self._hold_lock:
            if key in self._held:
                return
            conn = self._connect(default_db=False)
            try:
                with conn.cursor() as cur:
                    triggers = mo.read_objects(cur, db, lambda _db, name: name == table,
                                               ("trigger",))
                    if triggers:
                        self._cache[_HELD + key] = json.dumps(
                            {**_holder(), "triggers": [asdict(t) for t in triggers]})
                    for trigger in triggers:
                        cur.execute(mo.drop_sql(trigger, db))
            except pymysql.MySQLError as exc:
                raise self._error(exc, f"holding the triggers of {key}") from exc
            finally:
                _close_quietly(conn)
            self._held[key] = triggers

    def _hold_event(self, db: str, name: str) -> None:
        """Disable an enabled event until ``finalize_target`` or ``close()``."""
        with self._hold_lock:
            self._cache[f"{_HELD_EVENT}{db}.{name}"] = json.dumps({**_holder(),
                                                                   "event": [db, name]})
            self._one(f"ALTER EVENT {qualified(db, name)} DISABLE")
            self._held_events.append((db, name))

    def _forget_held(self, dbs: set[str]) -> None:
        """``finalize_target`` made these databases' objects again: drop what was kept."""
        with self._hold_lock:
            for key in [k for k in self._held if k.split(".", 1)[0] in dbs]:
                self._cache.pop(_HELD + key, None)
                del self._held[key]
            for db, name in [e for e in self._held_events if e[0] in dbs]:
                self._cache.pop(f"{_HELD_EVENT}{db}.{name}", None)
                self._held_events.remove((db, name))

    def _release_triggers(self, orphans: bool = False) -> None:
        """Make the triggers this store holds again, in their order, and enable its held
        events; with ``orphans``, only those a process that died held (from the journal:
        one still running, e.g. a copy that ``verify`` shares the journal with, keeps
        its own)."""
        with self._hold_lock:
            if orphans:
                held, events = {}, []
                for k, v in list(self._cache.items()):
                    record = json.loads(v) if str(k).startswith((_HELD, _HELD_EVENT)) else None
                    if record is None or not _dead(record):
                        continue
                    if str(k).startswith(_HELD):
                        held[str(k)[len(_HELD):]] = [mo.SchemaObject(**t)
                                                     for t in record["triggers"]]
                    else:
                        events.append((record["event"][0], record["event"][1]))
            else:
                held, self._held = self._held, {}
                events, self._held_events = self._held_events, []
            if not any(held.values()) and not events:
                for key in held:
                    self._cache.pop(_HELD + key, None)
                return
            conn = self._connect(default_db=False)
            try:
                with conn.cursor() as cur:
                    for key, triggers in held.items():
                        for trigger in triggers:
                            cur.execute(mo.drop_sql(trigger, trigger.db))
                            mo.create(conn, trigger, trigger.db, trigger.definer)
                        self._cache.pop(_HELD + key, None)
                    for db, name in dict.fromkeys(events):
                        cur.execute("SELECT COUNT(*) FROM information_schema.EVENTS WHERE"
                                    " EVENT_SCHEMA = %s AND EVENT_NAME = %s", (db, name))
                        if cur.fetchone()[0]:
                            cur.execute(f"ALTER EVENT {qualified(db, name)} ENABLE")
                        self._cache.pop(f"{_HELD_EVENT}{db}.{name}", None)
            except pymysql.MySQLError as exc:
                raise self._error(exc, "making the triggers held during sync again") from exc
            finally:
                _close_quietly(conn)

    # -- write freeze ----------------------------------------------------------------
    def _read_only_rights(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(privileges that allow ``SET GLOBAL read_only``, privileges whose holders still
        write while it is ON), for this server: MariaDB 10.11 moved both from SUPER to
        READ_ONLY ADMIN (added in 10.5.2); MySQL 8 sets it with SYSTEM_VARIABLES_ADMIN,
        and SUPER or CONNECTION_ADMIN holders keep writing."""
        if not self._facts:
            self.open()
        version = tuple(int(n) for n in re.findall(r"\d+", str(self._facts["version"]))[:3])
        if self._facts["flavour"] == "mariadb":
            if version >= (10, 11):
                return ("READ_ONLY ADMIN",), ("READ_ONLY ADMIN",)
            if version >= (10, 5, 2):
                return ("READ_ONLY ADMIN", "SUPER"), ("READ_ONLY ADMIN", "SUPER")
            return ("SUPER",), ("SUPER",)
        if version >= (8,):
            return ("SYSTEM_VARIABLES_ADMIN", "SUPER"), ("SUPER", "CONNECTION_ADMIN")
        return ("SUPER",), ("SUPER",)

    def _global_privileges(self, cur: Any) -> set[str]:
        """This account's privileges ON *.*, from SHOW GRANTS (MariaDB adds the current
        role's; on MySQL 8 the active roles are named with USING)."""
        statement = "SHOW GRANTS"
        if self._facts.get("flavour") == "mysql":
            cur.execute("SELECT CURRENT_ROLE()")
            roles = cur.fetchone()[0]
            if roles and roles != "NONE":
                statement = f"SHOW GRANTS FOR CURRENT_USER() USING {roles}"
        cur.execute(statement)
        held: set[str] = set()
        for (line,) in cur.fetchall():
            match = _GLOBAL_GRANT.match(str(line))
            if match:
                held.update(p.strip().upper() for p in match.group(1).split(","))
        return held

    def freeze_check(self) -> str | None:
        """None when this account may ``SET GLOBAL read_only`` here; else why not (the
        grants are read, nothing is changed)."""
        allowed, _writers = self._read_only_rights()
        with self._session() as conn, conn.cursor() as cur:
            held = self._global_privileges(cur)
        if "ALL PRIVILEGES" in held or held & set(allowed):
            return None
        server = f"{self._facts['flavour']} {self._facts['version']}"
        return (f"account {self._facts.get('user')} may not SET GLOBAL read_only on {server}:"
                f" that needs {' or '.join(allowed)} (it has"
                f" {', '.join(sorted(held)) or 'no global privilege'})")

    def freeze(self, seconds: float) -> str:
        """``SET GLOBAL read_only = ON``: every account without the bypass privilege can
        no longer write. Held until ``unfreeze`` (or ``cutover --rollback``), and for at
        most ``seconds`` while this process lives; the server keeps it if the process
        dies. A server that was read-only already is left as it was."""
        allowed, writers = self._read_only_rights()
        with self._session() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.read_only")
            before = bool(int(cur.fetchone()[0]))
            if not before:
                # it waits for open write transactions to end: bounded by the timeout
                cur.execute("SET SESSION lock_wait_timeout ="
                            f" {max(1, int(self.settings.timeout))}")
                self._set_read_only(cur, "ON", f"grant {' or '.join(allowed)} ON *.* to the"
                                    " source account, or turn this store's guard off"
                                    " (cutover.freeze.guards)")
            cur.execute("SELECT DISTINCT GRANTEE FROM information_schema.USER_PRIVILEGES"
                        f" WHERE PRIVILEGE_TYPE IN ({', '.join(['%s'] * len(writers))})"
                        " ORDER BY 1", writers)
            bypass = [str(r[0]) for r in cur.fetchall()]
        self._frozen_before = before
        self._cache["freeze"] = json.dumps({"read_only_before": before})
        if before:
            return ("read_only was ON already (not set by this tool); left ON, and unfreeze"
                    " leaves it ON")
        self._arm_lapse(seconds)
        who = ", ".join(bypass[:8]) + (f" and {len(bypass) - 8} more" if len(bypass) > 8
                                       else "") if bypass else "none visible to this account"
        return (f"SET GLOBAL read_only = ON ({self._facts['flavour']}"
                f" {self._facts['version']}): accounts without {' or '.join(writers)} can no"
                f" longer write; accounts with it still can ({who}), so their writers must be"
                f" stopped. Held until unfreeze or `cutover --rollback`, at most {seconds:g} s"
                " while this process runs; it stays ON if the process dies")

    def _arm_lapse(self, seconds: float) -> None:
        with self._lock:
            if self._lapse is not None:
                self._lapse.cancel()
            self._lapse = threading.Timer(max(0.0, seconds), self._lapsed)
            self._lapse.daemon = True
            self._lapse.start()

    def _lapsed(self) -> None:
        log.warning("%s: the write freeze reached its limit; SET GLOBAL read_only = OFF",
                    self.endpoint.label)
        try:
            self.unfreeze()
        except MigrateError as exc:
            log.warning("%s: could not end the write freeze: %s", self.endpoint.label, exc)

    def unfreeze(self) -> None:
        """``SET GLOBAL read_only = OFF``, unless ``freeze`` found it ON already (known in
        this process, or from the journal's cache). Harmless when nothing is held."""
        with self._lock:
            timer, self._lapse = self._lapse, None
        if timer is not None:
            timer.cancel()
        before = self._frozen_before
        if before is None and self._cache.get("freeze"):
            before = bool(json.loads(self._cache["freeze"]).get("read_only_before"))
        if before:
            return
        with self._session() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.read_only")
            if int(cur.fetchone()[0]):
                self._set_read_only(cur, "OFF", "an administrator must run SET GLOBAL"
                                    " read_only = OFF on the source")
        self._frozen_before = None

    def _set_read_only(self, cur: Any, value: str, hint: str) -> None:
        try:
            cur.execute(f"SET GLOBAL read_only = {value}")
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] in _DENIED:
                raise self.endpoint.fail(f"cannot SET GLOBAL read_only = {value}:"
                                         f" {exc.args[-1]}", hint=hint) from exc
            raise

    def notices(self) -> list[str]:
        """What the operator should know after ``finalize_target``: objects created with
        another definer than the source's, one line each."""
        return list(self.definer_rewrites)


def _range_gaps(table: str, group: list[Unit]) -> list[str]:
    """The coverage problems of one table's units, one line each."""
    keys = {json.dumps(u.spec.get("key") or []) for u in group}
    if len(keys) > 1:
        return [f"{table}: its units split on different keys ({', '.join(sorted(keys))})"]
    key = group[0].spec.get("key") or []
    for unit in group:
        for side in ("lo", "hi"):
            bound = unit.spec.get(side)
            if bound is not None and (not isinstance(bound, list) or len(bound) != len(key)):
                return [f"{table}: unit {unit.name} has {side} {bound!r}, which does not fit"
                        f" its key ({', '.join(key) or 'none'})"]
    if not key:
        if len(group) > 1 or group[0].spec.get("lo") is not None \
                or group[0].spec.get("hi") is not None:
            return [f"{table}: a table without a key is copied as one whole unit, not"
                    f" {len(group)} unit(s) with ranges"]
        return []

    def shown(bound: list[Any]) -> str:
        return json.dumps(bound[0] if len(bound) == 1 else bound, ensure_ascii=False)

    starts: dict[str, list[Unit]] = {}
    for unit in group:
        starts.setdefault(json.dumps(unit.spec.get("lo")), []).append(unit)
    ends = {json.dumps(unit.spec.get("hi")) for unit in group}
    gaps = [f"{table}: units {', '.join(u.name for u in same)} all start at"
            f" {'the lowest key' if lo == 'null' else shown(json.loads(lo))} (they overlap)"
            for lo, same in starts.items() if len(same) > 1]
    gaps += [f"{table}: unit {u.name} covers no key (lo = hi = {shown(u.spec['lo'])})"
             for u in group if u.spec.get("lo") is not None
             and u.spec.get("lo") == u.spec.get("hi")]
    # where a gap begins (after a unit's hi, or below everything) and where one ends
    begins: list[Unit | None] = [None] if "null" not in starts else []
    begins += [u for u in group if u.spec.get("hi") is not None
               and json.dumps(u.spec["hi"]) not in starts]
    finishes: list[Unit | None] = [u for u in group if u.spec.get("lo") is not None
                                   and json.dumps(u.spec["lo"]) not in ends]
    finishes += [None] if "null" not in ends else []
    if len(begins) == len(finishes) == 1:
        first, last = begins[0], finishes[0]
        low = "the lowest key" if first is None else \
            f"{shown(first.spec['hi'])} (where {first.name} ends)"
        high = "the highest key" if last is None else \
            f"{shown(last.spec['lo'])} (where {last.name} starts)"
        return [*gaps, f"{table}: keys from {low} to {high} are in no unit"]
    for before in begins:
        gaps.append(f"{table}: no unit starts at the lowest key (lo: null)" if before is None
                    else f"{table}: no unit starts at {shown(before.spec['hi'])}, where"
                    f" {before.name} ends: keys from there on are in no unit")
    for after in finishes:
        gaps.append(f"{table}: no unit reaches the highest key (hi: null)" if after is None
                    else f"{table}: no unit ends at {shown(after.spec['lo'])}, where"
                    f" {after.name} starts: keys below it are in no unit")
    return gaps


class MySQLImporter(Importer):
    """Loads one unit over its own connection, each batch one atomic ``REPLACE`` load,
    so that a replayed batch leaves the rows exactly as they were."""

    def __init__(self, store: MySQLStore, unit: Unit) -> None:
        self.store = store
        self.unit = unit
        self.spec = unit.spec
        self._conn: mc.Connection | None = None
        self._meta: Table | None = None
        self._bound: tuple[tuple[str, str], ...] | None = None
        self._columns: list[Column] = []

    def _open(self) -> tuple[mc.Connection, Table]:
        """The target table as it is when the copy starts, and a connection to load it."""
        if self._conn is None or self._meta is None:
            store = self.store
            self._meta = store._table(store._db(self.spec), self.spec["table"])
            self._conn = store._connect(local_infile=store.local_infile())
            try:
                with self._conn.cursor() as cur:
                    # the source enforced these already; a replayed batch must not trip them
                    cur.execute("SET foreign_key_checks = 0, unique_checks = 0")
            except pymysql.MySQLError as exc:
                raise store._error(exc, f"preparing {self.unit.name}") from exc
        return self._conn, self._meta

    def _bind(self, meta: Table, columns: tuple[tuple[str, str], ...]) -> None:
        """Map the batch's source columns onto this table, or refuse naming the column:
        rows loaded without a column the source has would verify as different forever."""
        if columns == self._bound:
            return
        if not columns:
            raise StoreError(f"{self.store.endpoint.label}: {self.unit.name}: a batch came"
                             " without its column list")
        problems = ms.column_mismatches(list(columns), meta)
        if problems:
            raise StoreError(
                f"{self.store.endpoint.label}: table {meta.db}.{meta.name}: the source's"
                f" rows do not fit: {'; '.join(problems[:5])}",
                hint="the source table changed after the target table was made: drop the"
                " target table and run again (with --restart if units were copied), so it"
                " is created from the source as it is now")
        self._columns = [meta.column(name) for name, _ in columns]
        self._bound = columns

    def prepare(self, resumed: bool) -> None:
        """A keyless unit restarts from an empty table; ``overwrite`` clears the unit's
        key range first (in slices, so no transaction grows with the table). A resumed
        importer (after a checkpoint, or for ``sync``) never clears anything, and checks
        unique keys again: its rows may replace rows the target holds."""
        conn, meta = self._open()
        key = self.store._key(meta, self.spec)
        try:
            if resumed:  # sync, or a copy resumed: no trigger of the table may fire
                self.store.hold_triggers(meta.db, meta.name)
            with conn.cursor() as cur:
                if resumed:
                    cur.execute("SET unique_checks = 1")
                elif not key:
                    cur.execute(f"TRUNCATE TABLE {meta.ident}")
                elif self.store.options.on_existing == "overwrite":
                    pred = range_predicate(key, self.spec.get("lo"), self.spec.get("hi"))
                    while cur.execute(f"DELETE FROM {meta.ident} WHERE {pred}"
                                      f" ORDER BY {ms.order_by(key)} LIMIT {_DELETE_SLICE}"):
                        pass
        except pymysql.MySQLError as exc:
            raise self.store._error(exc, f"preparing {self.unit.name}") from exc

    def write_batch(self, batch: Batch) -> None:
        groups = getattr(batch, "groups", ())
        if not batch.records and not groups:
            return
        conn, meta = self._open()
        self._bind(meta, getattr(batch, "columns", ()))
        try:
            if groups:
                self._replace_groups(conn, meta, batch.records, groups)
            else:
                self._write(conn, meta, batch.records, transaction=False)
        except pymysql.MySQLError as exc:
            raise self.store._error(exc, f"loading {self.unit.name}") from exc

    def _write(self, conn: mc.Connection, meta: Table, rows: list[Row], *,
               transaction: bool) -> None:
        """LOAD DATA LOCAL, or REPLACE statements where the server refuses local files;
        ``transaction``: inside one the caller opened (it commits)."""
        if self.store.local_infile():
            try:
                self._load(conn, meta, rows)
                return
            except pymysql.MySQLError as exc:
                if not (exc.args and exc.args[0] in _LOCAL_INFILE_OFF):
                    raise
                self.store.refuse_local_infile(str(exc.args[-1]))
        self._insert(conn, meta, rows, transaction=transaction)

    def _replace_groups(self, conn: mc.Connection, meta: Table, rows: list[Row],
                        groups: tuple[str, ...]) -> None:
        """A keyless table in ``sync``: delete every row of these MD5 groups, then load
        the source's rows of them, as one transaction (a replay does the same again)."""
        columns = meta.copy_columns()
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION")
            try:
                cur.execute(f"DELETE FROM {meta.ident} WHERE"
                            f" {ms.row_md5_match(columns, list(groups))}")
                if rows:
                    self._write(conn, meta, rows, transaction=True)
                cur.execute("COMMIT")
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except pymysql.MySQLError:
                    pass  # the connection is gone: the server rolled back
                raise

    def _load(self, conn: mc.Connection, meta: Table, rows: list[Row]) -> None:
        """LOAD DATA LOCAL with the rows streamed from memory: nothing on disk."""
        data = b"".join([ms.tsv_line(row) for row in rows])
        with conn.cursor() as cur:
            conn.load_local(cur, ms.load_data_sql(meta.ident, conn.escape(
                mc.INFILE_NAME.decode()), self._columns), data)
            result = cur._result
            loaded, warnings = _load_counts(result.message, len(rows), result.warning_count)
            if loaded != len(rows) or warnings:
                raise StoreError(self._problem(cur, f"loaded {loaded} of {len(rows)} rows"))

    def _problem(self, cur: Any, what: str) -> str:
        """LOAD DATA LOCAL turns bad values into warnings; a copy that changed data
        silently would be worse than a failed one, so they are errors here."""
        cur.execute("SHOW WARNINGS LIMIT 5")
        shown = "; ".join(str(w[2]) for w in cur.fetchall())
        return f"{self.store.endpoint.label}: {self.unit.name}: {what}: {shown or 'no detail'}"

    def _insert(self, conn: mc.Connection, meta: Table, rows: list[Row], *,
                transaction: bool = False) -> None:
        """Multi-row REPLACE statements under max_allowed_packet, one transaction (the
        caller's when ``transaction``)."""
        limit = min(self.store._facts.get("max_allowed_packet", 4 << 20), 16 << 20) - 4096
        with conn.cursor() as cur:
            if not transaction:
                cur.execute("START TRANSACTION")
            for sql in ms.insert_statements(meta.ident, self._columns, rows, limit):
                cur.execute(sql)
                if cur._result and cur._result.warning_count:
                    problem = self._problem(cur, "the server changed values while inserting")
                    cur.execute("ROLLBACK")
                    raise StoreError(problem)
            if not transaction:
                cur.execute("COMMIT")

    def finalize(self) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            _close_quietly(self._conn)
            self._conn = None

    def __del__(self) -> None:
        self.close()


def _holder() -> dict[str, Any]:
    """Who holds triggers or events: a later process puts them back only once it is gone."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _dead(record: dict[str, Any]) -> bool:
    """Whether the process that held these is gone (one on another host: not known)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _load_counts(message: bytes | None, rows: int, warning_count: int) -> tuple[int, int]:
    """(records loaded, warnings) from LOAD DATA's "Records: n Deleted: … Warnings: w"."""
    match = _LOAD_RESULT.search(message or b"")
    if match is None:
        return rows, warning_count
    return int(match.group(1)), int(match.group(4))


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

