"""Following a MySQL/MariaDB source's changes in its binary log.

One replica connection (``COM_BINLOG_DUMP``, read with ``mysql-replication``) starts at the
position ``SHOW MASTER STATUS`` names when the feed starts and notes, per written, updated
or deleted row of a selected table, the table and its key (the plan's range key). That
needs ``log_bin`` and ``binlog_format=ROW`` on the server and REPLICATION SLAVE plus
BINLOG MONITOR (MariaDB) / REPLICATION CLIENT (MySQL) for the account: no trigger, no
table, no change on the server.

"Anything may have changed" (``take`` returns None, every chunk is digested again) when a
statement other than row events touched a followed database (DDL, TRUNCATE, a session that
logs statements), when a table without a key changed (its rows have no name to follow) or
when a key could not be read back exactly. A lost connection ends the feed: the binlog
would have to be re-read from where it broke, and a pass that digests is simpler and
certainly right.
"""

from __future__ import annotations

import datetime
import decimal
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    RowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from migrator.errors import StoreError
from migrator.stores.mysql.schema import Column

# The library warns about server settings we do not rely on (we read columns by position).
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)

START_TIMEOUT = 30.0  # seconds for the server to answer the binlog dump request
BARRIER_TIMEOUT = 60.0  # seconds a take() waits for the reader to reach the master's position
_SERVER_IDS = (1 << 30, (1 << 32) - 1)  # a replica id no real server of a setup uses


def _raw_string(self: Any, size: int, column: Any) -> bytes:
    """CHAR/VARCHAR/BINARY values as the stored bytes: a key must be byte-exact, and the
    library would decode them with a charset it may not know (then as UTF-8, failing on
    binary or latin1 bytes)."""
    return bytes(self.packet.read_length_coded_pascal_string(size))


_PATCHED = "_RowsEvent__read_string"
SUPPORTED = hasattr(RowsEvent, _PATCHED)  # the library's private reader we replace


def _read_strings_raw() -> None:
    """Swap in ``_raw_string`` (once, when a feed starts, not on import): the library has
    no option for raw string bytes, and this process reads no binlog any other way."""
    if getattr(RowsEvent, _PATCHED) is not _raw_string:
        setattr(RowsEvent, _PATCHED, _raw_string)


class Broken(StoreError):
    """The feed can no longer say what changed: its connection was lost or refused."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code  # the server's error number, when it gave one


@dataclass(frozen=True)
class TableKey:
    """How a followed table's rows are named: its key columns and where they sit in the
    binlog's row image (every column, in table order). No columns: a keyless table."""

    columns: tuple[Column, ...]
    positions: tuple[int, ...]
    width: int


@dataclass
class Changes:
    """What ``take`` hands out: per (db, table), the raw key values written since the last
    take (before and after images), and the key columns that name them."""

    rows: dict[tuple[str, str], set[tuple[bytes, ...]]] = field(default_factory=dict)
    keys: dict[tuple[str, str], tuple[Column, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for v in self.rows.values())


_INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32,
             "bigint": 64}
_PRECISION = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")
# Statements of a transaction's frame or about accounts: no table's rows change by them.
_HARMLESS = re.compile(
    r"(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE\s+SAVEPOINT|XA|GRANT|REVOKE|FLUSH|SET\s+PASSWORD"
    r"|(CREATE|DROP|ALTER|RENAME)\s+(USER|ROLE))\b", re.I)
_LEADING_COMMENT = re.compile(r"^\s*(/\*.*?\*/\s*)*", re.S)


def _precision(column: Column) -> tuple[int | None, int | None]:
    match = _PRECISION.search(column.column_type)
    if not match:
        return None, None
    return int(match[1]), int(match[2]) if match[2] is not None else None


def _fraction(micro: int, fsp: int) -> str:
    return f".{micro:06d}"[:fsp + 1] if fsp else ""


def raw_value(column: Column, value: Any) -> bytes | None:
    """A key value as the binlog library decoded it, in the server's text form (the bytes
    ``records()`` reads); None when that cannot be told exactly (then the caller digests)."""
    kind, data_type = column.kind, column.data_type
    if value is None or isinstance(value, bool):
        return None
    if kind == "int" and isinstance(value, int):
        if value < 0 and "unsigned" in column.column_type.lower():
            value += 1 << _INT_BITS.get(data_type, 64)  # no signedness in a NO_LOG binlog
        return str(value).encode("ascii")
    if kind == "dec" and isinstance(value, decimal.Decimal):
        _, scale = _precision(column)
        return f"{value:.{scale or 0}f}".encode("ascii")
    if kind == "char" and isinstance(value, bytes):
        return value
    if kind == "bin" and isinstance(value, bytes):
        length, _ = _precision(column)
        return value.ljust(length, b"\0") if data_type == "binary" and length else value
    if kind == "time":
        return _temporal(column, value)
    return None


def _temporal(column: Column, value: Any) -> bytes | None:
    fsp = _precision(column)[0] or 0
    data_type = column.data_type
    if data_type in ("datetime", "timestamp") and isinstance(value, datetime.datetime):
        v = value
        if data_type == "timestamp" and v == datetime.datetime(1970, 1, 1):
            return None  # the zero TIMESTAMP, which the server shows as 0000-00-00
        text = (f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:"
                f"{v.second:02d}{_fraction(v.microsecond, fsp)}")
    elif data_type == "date" and isinstance(value, datetime.date) and not isinstance(
            value, datetime.datetime):
        text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    elif data_type == "time" and isinstance(value, datetime.timedelta):
        micro = abs(value) // datetime.timedelta(microseconds=1)
        seconds, micro = divmod(micro, 1_000_000)
        text = (f"{'-' if value < datetime.timedelta(0) else ''}{seconds // 3600:02d}:"
                f"{seconds // 60 % 60:02d}:{seconds % 60:02d}{_fraction(micro, fsp)}")
    elif data_type == "year" and isinstance(value, int):
        text = f"{value:04d}"
    else:
        return None
    return text.encode("ascii")


def _order(position: tuple[str, int]) -> tuple[int, int]:
    """A binlog position in the order the server writes: file number, then offset."""
    name, offset = position
    suffix = name.rsplit(".", 1)[-1]
    return (int(suffix) if suffix.isdigit() else 0), int(offset)


class BinlogFeed:
    """Rows of the selected tables changed since the feed started, or since the last
    ``take``; see the module's text."""

    exact = True  # take(): the reader passed the binlog position the master names

    def __init__(self, *, label: str, connect: Callable[[bool], pymysql.Connection],
                 position: Callable[[], tuple[str, int]], start: tuple[str, int],
                 schemas: list[str], tables: dict[tuple[str, str], TableKey],
                 selected: Callable[[str, str], bool], heartbeat: float,
                 end: Callable[[int], None]) -> None:
        self.label = label
        self._connect, self._position, self._end = connect, position, end
        self._thread_id: int | None = None  # the server's thread streaming to us
        self._schemas = list(schemas)
        self._folded = [s.casefold() for s in schemas]
        self._tables, self._selected = tables, selected
        self._cond = threading.Condition()
        self._at = start  # the position the reader has noted everything up to
        self._rows: dict[tuple[str, str], set[tuple[bytes, ...]]] = {}
        self._everything: str | None = None  # why anything may have changed, if so
        self.error: str | None = None
        self._code = 0
        self._started = threading.Event()
        self._closing = False
        self._streams = 0
        self._stream = BinLogStreamReader(
            connection_settings={"read_timeout": heartbeat * 2},  # only sizes the heartbeat
            server_id=random.randint(*_SERVER_IDS), resume_stream=True, blocking=True,
            log_file=start[0], log_pos=start[1], only_schemas=self._schemas,
            filter_non_implemented_events=False, enable_logging=False,
            slave_heartbeat=heartbeat, pymysql_wrapper=self._open)
        self._thread = threading.Thread(target=self._read, name="mysql-feed", daemon=True)

    # -- connections ------------------------------------------------------------------
    def _open(self, **settings: Any) -> pymysql.Connection:
        """The library's connections, made by the store (its TLS and account): the
        schema-lookup one, and the replica stream once. The library reconnects a stream
        that broke as if nothing was lost; here a second stream ends the feed instead."""
        if "cursorclass" in settings:  # the library's lookup connection
            return self._connect(False)
        with self._cond:
            if self._closing:
                raise Broken(f"{self.label}: the change feed is closed")
            self._streams += 1
            if self._streams > 1:
                raise Broken(f"{self.label}: the binlog connection was lost")
        conn = self._connect(True)
        self._thread_id = conn.thread_id()
        return conn

    def start(self) -> BinlogFeed:
        """Connect and wait until the server streams (or refuses: ``Broken`` with its
        error number, e.g. 1227 without REPLICATION SLAVE)."""
        _read_strings_raw()
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            self.close()
            raise Broken(f"{self.label}: the server did not start the binlog stream within"
                         f" {START_TIMEOUT:g} s")
        with self._cond:
            error, code = self.error, self._code
        if error is not None:
            self.close()
            raise Broken(error, code)
        return self

    # -- the reader thread ------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                event = self._stream.fetchone()
                if event is None:
                    raise Broken("the server ended the binlog stream")
                self._note(event)
        except Exception as exc:  # noqa: BLE001 - any end of the stream ends the feed
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            text = str(exc.args[1]) if code and len(exc.args) > 1 else str(exc)
            with self._cond:
                if not self._closing and self.error is None:
                    self.error = (text if text.startswith(self.label) else
                                  f"{self.label}: the binlog connection ended ({text})")
                    self._code = code
                self._cond.notify_all()
        finally:
            self._started.set()

    def _note(self, event: Any) -> None:
        with self._cond:
            if isinstance(event, RowsEvent):
                self._note_rows(event)
            elif isinstance(event, QueryEvent):
                self._note_query(event)
            if not isinstance(event, HeartbeatLogEvent):
                self._at = (self._stream.log_file, self._stream.log_pos)
            self._cond.notify_all()
        self._started.set()

    def _dirty(self, why: str) -> None:
        if self._everything is None:
            self._everything = why

    def _note_query(self, event: QueryEvent) -> None:
        """A statement in a row-format binlog: DDL (or DML of a session that logs
        statements). If it may touch a followed database, every row may have changed."""
        query = event.query if isinstance(event.query, str) else bytes(event.query).decode(
            "utf-8", "replace")
        text = _LEADING_COMMENT.sub("", query)
        if _HARMLESS.match(text):
            return
        schema = event.schema if isinstance(event.schema, str) else bytes(
            event.schema).decode("utf-8", "replace")
        folded = text.casefold()
        if schema.casefold() in self._folded or any(s in folded for s in self._folded):
            self._dirty(f"a statement changed a followed database ({text[:60].strip()})")

    def _note_rows(self, event: RowsEvent) -> None:
        name = (str(event.schema), str(event.table))
        if not self._selected(*name):
            return
        table = self._tables.get(name)
        if table is None:
            self._dirty(f"rows of {name[0]}.{name[1]}, a table unknown when following began")
            return
        if not table.columns:
            self._dirty(f"rows of {name[0]}.{name[1]}, which has no key, changed")
            return
        if event.number_of_columns != table.width:
            self._dirty(f"{name[0]}.{name[1]} has {event.number_of_columns} columns in the"
                        f" binlog, {table.width} when following began")
            return
        keys = self._rows.setdefault(name, set())
        for row in event.rows:
            if isinstance(event, UpdateRowsEvent):
                before = self._key(table, row["before_values"])
                after = self._key(table, row["after_values"], absent_ok=True)
                images = [before, before if after == () else after]
            elif isinstance(event, WriteRowsEvent | DeleteRowsEvent):
                images = [self._key(table, row["values"])]
            else:
                images = [None]
            for key in images:
                if not key:
                    self._dirty(f"a key of {name[0]}.{name[1]} could not be read exactly")
                    return
                keys.add(key)

    @staticmethod
    def _key(table: TableKey, image: dict[str, Any], absent_ok: bool = False
             ) -> tuple[bytes, ...] | None:
        """The raw key of one row image; ``()`` when ``absent_ok`` and every key column
        is absent (a minimal update image: the key did not change); None if unreadable."""
        values = list(image.values())
        picked = [values[i] if i < len(values) else None for i in table.positions]
        if absent_ok and all(v is None for v in picked):
            return ()
        raw = [raw_value(col, v) for col, v in zip(table.columns, picked, strict=True)]
        if any(r is None for r in raw):
            return None
        return tuple(r for r in raw if r is not None)

    # -- the engine's side ------------------------------------------------------------
    def take(self) -> Changes | None:
        """The rows changed since the last call (None: anything may have changed). Reads
        the master's position now and waits until the reader has passed it, so every write
        committed before this call is in the answer. Raises ``Broken`` when it cannot tell."""
        with self._cond:
            if self.error is not None:
                raise Broken(self.error)
        target = _order(self._position())
        deadline = time.monotonic() + BARRIER_TIMEOUT
        with self._cond:
            while self.error is None and _order(self._at) < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Broken(f"{self.label}: the binlog reader did not reach the master's"
                                 f" position within {BARRIER_TIMEOUT:g} s")
                self._cond.wait(left)
            if self.error is not None:
                raise Broken(self.error)
            rows, everything = self._rows, self._everything
            self._rows, self._everything = {}, None
        if everything is not None:
            self.why = everything
            return None
        return Changes(rows, {name: self._tables[name].columns for name in rows})

    why: str = ""  # why the last take returned None

    def close(self) -> None:
        with self._cond:
            self._closing = True
        if self._thread_id is not None:
            # Ending the server's side first: the server notices a closed replica only when
            # it next writes to it, and our reader's blocked read returns only then.
            self._end(self._thread_id)
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001, S110 - closing must not mask anything
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=5)
