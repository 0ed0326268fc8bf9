"""The MySQL archive format: per table its ``CREATE TABLE``, per unit data files that
``mariadb`` + ``LOAD DATA LOCAL INFILE`` restore, views/routines/triggers/events apart.

Layout of one set's ``mysql/`` folder (every file ``.zst``, ``.zst.age`` when encrypted)::

    store/<db>/database.sql          CREATE DATABASE with the source's charset and collation
    store/<db>/tables/<table>.sql    SHOW CREATE TABLE as the source printed it at the backup
    store/<db>/objects.sql           procedures, functions, views, triggers, events (DELIMITER ;;)
    store/catalog.json, objects.json the same, as data: what a restore by this tool reads
    units/<unit>/<table>.NNN.tsv     the unit's rows in key order, the raw bytes the server
                                     sent, escaped as LOAD DATA's defaults read them
    units/<unit>/<table>.load.sql    the LOAD DATA statements for those files, with the
                                     session settings they need (UTC, sql_mode)

A data file is what the store's importer streams to ``LOAD DATA … CHARACTER SET binary``
from memory (``schema.tsv_line``), so the bytes a restore loads are the bytes the source
held. Digests are the store's own: per row the MD5 the server computes in
``MySQLStore.digest`` (``schema.row_hash``), summed per chunk of ``chunk_records`` rows in
key order, chunks cut exactly where ``MySQLStore.chunks`` cuts them; verify of the live
source against the set therefore compares chunk by chunk without moving a row.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from migrator.archive.files import ArchiveFile
from migrator.archive.format import ArchiveFormat
from migrator.archive.layout import folder
from migrator.archive.manifest import Cut, now
from migrator.archive.reader import StoreReader, UnitReader
from migrator.archive.writer import StoreWriter, UnitWriter
from migrator.config import Endpoint
from migrator.errors import CapabilityMissing, StoreError
from migrator.stores import base
from migrator.stores.base import Batch, Chunk, ChunkDigest, Cursor, Importer, Store, Unit
from migrator.stores.mysql import objects as mo
from migrator.stores.mysql import schema as ms
from migrator.stores.mysql.schema import Column, Table, quote_ident
from migrator.stores.mysql.store import MySQLStore, RowBatch

# The session a load needs: TIMESTAMP text is UTC (as exported), a 0 in an AUTO_INCREMENT
# column stays 0, dates the source accepted are accepted; the store's own import settings.
SQL_MODE = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,ALLOW_INVALID_DATES,NO_ENGINE_SUBSTITUTION"
LOAD_SESSION = (f"SET NAMES utf8mb4;\nSET time_zone = '+00:00', sql_mode = '{SQL_MODE}',"
                " foreign_key_checks = 0, unique_checks = 0;\n")
FILE_BYTES = 64 << 20  # plain bytes per data file: one LOAD DATA (one transaction) each
BATCH_ROWS = 1000  # restore batches, as the engine's default batch_records
BATCH_BYTES = 8 << 20
_PLAIN = frozenset({"int", "dec", "float", "time"})  # hashed by their text; NULL as N
_ESCAPED = re.compile(rb"\\(.)", re.S)
_UNESCAPE = {b"0": b"\0", b"b": b"\b", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"Z": b"\x1a"}
_TYPE_WORD = re.compile(r"[a-z]+")
Row = tuple[bytes | None, ...]


def column_of(name: str, column_type: str) -> Column:
    """A column as a batch names it, ``(name, COLUMN_TYPE)``: enough to hash, key and load
    its values (the kind follows the type, as information_schema's DATA_TYPE does)."""
    match = _TYPE_WORD.match(column_type.lower())
    data_type = match.group(0) if match else column_type.lower()
    return Column(name=name, data_type=data_type, column_type=column_type, nullable=True,
                  default=None, charset=None, collation=None, extra="", generated=False)


def row_md5(plain: list[bool], row: Row) -> str:
    """The MD5 ``schema.row_hash`` makes the server compute, from the same raw bytes:
    plain-text kinds as themselves (NULL as ``N``), other columns as their bytes (NULL
    skipped, as CONCAT_WS does) with their lengths listed at the end."""
    parts = [b"N" if v is None else v for p, v in zip(plain, row, strict=True)
             if p or v is not None]
    parts.append(b",".join([b"N" if v is None else b"%d" % len(v)
                            for p, v in zip(plain, row, strict=True) if not p]))
    return hashlib.md5(b"#".join(parts), usedforsecurity=False).hexdigest()


def row_hash(plain: list[bool], row: Row) -> int:
    """``row_md5`` as the 128-bit number the server's digest sums."""
    return int(row_md5(plain, row), 16)


def parse_line(line: bytes, width: int, where: str) -> Row:
    """One data-file line back into the row's raw values (``\\N`` is NULL)."""
    fields = line.split(b"\t")
    if len(fields) != width:
        raise StoreError(f"{where}: a line has {len(fields)} fields, the table {width}")
    return tuple(None if f == b"\\N" else
                 _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), f)
                 if b"\\" in f else f for f in fields)


def _lines(reader: Any) -> Iterator[bytes]:
    """The lines of a data file, streamed (a long BLOB may span many reads)."""
    pending: list[bytes] = []
    while block := reader.read(1 << 20):
        lines = block.split(b"\n")
        if len(lines) == 1:
            pending.append(block)
            continue
        if pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
        tail = lines.pop()
        pending = [tail] if tail else []
        yield from lines
    if pending:
        raise StoreError(f"{getattr(reader, 'path', 'a data file')}: ends inside a row")


class _Shape:
    """A unit's columns and key as its data files hold them."""

    def __init__(self, columns: Iterable[tuple[str, str]], key: list[str]) -> None:
        self.pairs = tuple((str(n), str(t)) for n, t in columns)
        self.columns = [column_of(n, t) for n, t in self.pairs]
        names = [c.name for c in self.columns]
        missing = [k for k in key if k not in names]
        if missing:
            raise StoreError(f"key column {missing[0]} is not among the copied columns")
        self.positions = [names.index(k) for k in key]
        self.key = [self.columns[p] for p in self.positions]
        self.plain = [c.kind in _PLAIN for c in self.columns]

    def key_of(self, row: Row) -> tuple[bytes, ...]:
        return tuple(row[p] or b"" for p in self.positions)

    def bound(self, row: Row) -> list[Any]:
        return [ms.encode_value(row[p], c.kind) for p, c in zip(self.positions, self.key,
                                                                 strict=True)]


def _time_order(raw: bytes) -> Any:
    """TIME text ('-838:59:59.000000' … '838:59:59') as signed microseconds."""
    text = raw.decode("ascii")
    sign = -1 if text.startswith("-") else 1
    hours, minutes, seconds = text.lstrip("-").split(":")
    return sign * round((int(hours) * 3600 + int(minutes) * 60) * 10**6
                        + Decimal(seconds) * 10**6)


def _orderer(col: Column) -> Callable[[bytes], Any] | None:
    """How Python orders a key column exactly as the server does, where it can: numbers,
    binary strings, dates and times; None for text (its order is the collation's)."""
    if col.kind == "int":
        return int
    if col.kind == "dec":
        return lambda v: Decimal(v.decode("ascii"))
    if col.kind == "bin":
        return bytes
    if col.kind == "time":
        return _time_order if col.data_type == "time" else bytes
    return None


class MySQLArchive(ArchiveFormat):
    kind = "mysql"
    version = 1
    file_bytes = FILE_BYTES  # a class attribute, so tests can make files small

    # -- backup --------------------------------------------------------------------------
    def cut(self, source: Store) -> Cut:
        """Each unit is read in its own snapshot (the store's export); tables are not one
        cut: a cross-table snapshot would need the exports to share one transaction."""
        return Cut(now(), snapshot=False, detail=(
            "each table (or key range of a big table) read in its own REPEATABLE READ"
            " transaction started WITH CONSISTENT SNAPSHOT when its copy began: a unit is"
            " one point in time, different units and tables are not; for one cut across"
            " tables, back up while OpenIM's writers are stopped"))

    def prepare(self, store: StoreWriter, units: list[Unit], source: Store) -> None:
        """Per database its CREATE DATABASE, per table its CREATE TABLE (as SQL for the
        ``mariadb`` client, and as data in ``catalog.json`` for a restore by this tool)."""
        src = _mysql(source)
        tables = list(dict.fromkeys((str(u.spec["db"]), str(u.spec["table"])) for u in units))
        catalog: dict[str, Any] = {"databases": {}, "tables": {}}
        for db in dict.fromkeys(db for db, _ in tables):
            charset, collation = src.database_charset(db)
            catalog["databases"][db] = {"charset": charset, "collation": collation}
            _write(store.open(f"{folder(db)}/database.sql"),
                   f"CREATE DATABASE IF NOT EXISTS {quote_ident(db)} CHARACTER SET {charset}"
                   f" COLLATE {collation};\n".encode())
        for db, table in tables:
            create = src.show_create_table(db, table)
            meta = src._table(db, table)
            catalog["tables"][f"{db}.{table}"] = {
                "db": db, "table": table, "create": create,
                "referenced": src.referenced(db, table), "meta": asdict(meta)}
            _write(store.open(f"{folder(db)}/tables/{folder(table)}.sql"),
                   (f"-- {quote_ident(db)}.{quote_ident(table)} as SHOW CREATE TABLE printed"
                    f" it at the backup\nSET NAMES utf8mb4;\nSET foreign_key_checks = 0;\n"
                    f"{create};\n").encode())
        _write(store.open("catalog.json"), json.dumps(catalog, indent=1).encode())

    def importer(self, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> Importer:
        return MySQLArchiveImporter(self, unit, _mysql(source))

    def finalize(self, store: StoreWriter, units: list[Unit], source: Store) -> None:
        """Views, routines, triggers and events as the source has them after the data (as
        the store makes them on a target), per database: SQL, and data for this tool."""
        src = _mysql(source)
        recorded: dict[str, list[dict[str, Any]]] = {}
        for db in dict.fromkeys(str(u.spec["db"]) for u in units):
            objects = src._objects(db, db)
            recorded[db] = [asdict(o) for o in objects]
            _write(store.open(f"{folder(db)}/objects.sql"), objects_sql(db, objects))
        _write(store.open("objects.json"), json.dumps(recorded, indent=1).encode())

    # -- restore -------------------------------------------------------------------------
    def export(self, unit: UnitReader, resume_from: Cursor = None) -> Iterator[Batch]:
        """The unit's rows in the store's wire form (``RowBatch`` of raw values plus the
        columns), in key order; the cursor counts rows, and a resume skips whole files
        by their row counts without reading them."""
        shape = self._shape(unit)
        skip = int((resume_from or {}).get("rows", 0)) if isinstance(resume_from, dict) else 0
        done = skip
        rows: list[Row] = []
        nbytes = 0
        for row in self._rows(unit, shape, skip):
            rows.append(row)
            nbytes += sum(len(v) for v in row if v is not None)
            if len(rows) >= BATCH_ROWS or nbytes >= BATCH_BYTES:
                done += len(rows)
                yield RowBatch(rows, {"rows": done}, nbytes, columns=shape.pairs)
                rows, nbytes = [], 0
        if rows:
            done += len(rows)
            yield RowBatch(rows, {"rows": done}, nbytes, columns=shape.pairs)

    def stand_in(self, store: StoreReader) -> MySQLStore:
        """What a MySQL target's ``prepare_target``/``finalize_target`` read instead of a
        live source during a restore: the tables and objects recorded at the backup."""
        return RecordedSource(store)

    # -- verify --------------------------------------------------------------------------
    def records(self, unit: UnitReader, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        """As ``MySQLStore.records``: ``(key, row MD5)`` in key order; for a keyless table
        ``(row md5 <hex>, copies)``."""
        shape = self._shape(unit)
        if not shape.key:
            counts: dict[str, int] = {}
            for row in self._rows(unit, shape):
                md5 = row_md5(shape.plain, row)
                counts[md5] = counts.get(md5, 0) + 1
            for md5, n in counts.items():
                yield ms.ROW_MD5_PREFIX + md5, n
            return
        first, end = self._spans(unit, shape, [chunk])[chunk.id]
        for i, row in enumerate(self._rows(unit, shape, first)):
            if first + i >= end:
                return
            yield ms.key_text(shape.key, shape.key_of(row)), row_md5(shape.plain, row)

    def digest(self, unit: UnitReader, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        """Digests for chunks cut elsewhere (a live source that changed since): rows are
        placed by key, exactly where Python orders the key as the server does (numbers,
        binary, dates), else where a chunk's bound is a key the set holds."""
        shape = self._shape(unit)
        out = {c.id: ChunkDigest() for c in chunks}
        if not shape.key:
            if [c.id for c in chunks] != ["all"]:
                raise CapabilityMissing(f"{unit.unit.name}: a table without a key is one"
                                        " chunk, 'all'")
            for row in self._rows(unit, shape):
                out["all"].add(row_hash(shape.plain, row))
            return out
        spans = sorted((span, cid) for cid, span in self._spans(unit, shape, chunks).items())
        index = 0
        for i, row in enumerate(self._rows(unit, shape)):
            while index < len(spans) and i >= spans[index][0][1]:
                index += 1
            if index < len(spans) and i >= spans[index][0][0]:
                out[spans[index][1]].add(row_hash(shape.plain, row))
        return out

    # -- reading the files -------------------------------------------------------------
    def _shape(self, unit: UnitReader) -> _Shape:
        layout = unit.meta.get("mysql") or {}
        if "columns" not in layout:
            raise StoreError(f"{unit.unit.name}: the set records no columns for this unit")
        return _Shape(layout["columns"], list(layout.get("key") or []))

    def _rows(self, unit: UnitReader, shape: _Shape, skip: int = 0) -> Iterator[Row]:
        """Every row of the unit in order, from row ``skip`` on."""
        layout = unit.meta["mysql"]
        seen = 0
        for entry in layout["files"]:
            name, count = str(entry["name"]), int(entry["rows"])
            if seen + count <= skip:
                seen += count
                continue
            end = seen + count
            with unit.open(name) as reader:
                for line in _lines(reader):
                    seen += 1
                    if seen > skip:
                        yield parse_line(line, len(shape.columns), f"{unit.unit.name}/{name}")
            if seen != end:
                raise StoreError(f"{unit.unit.name}/{name}: holds {count - end + seen} rows,"
                                 f" the manifest says {count}")

    def _spans(self, unit: UnitReader, shape: _Shape, chunks: list[Chunk]
               ) -> dict[str, tuple[int, int]]:
        """``[first, end)`` row numbers of each chunk: recorded ones from the manifest;
        others by placing their bounds among the set's keys (one pass)."""
        layout = unit.meta["mysql"]
        recorded = {str(c["id"]): c for c in layout.get("chunks") or []}
        out: dict[str, tuple[int, int]] = {}
        for chunk in chunks:
            known = recorded.get(chunk.id)
            if known is not None and known.get("bounds") == chunk.bounds:
                out[chunk.id] = (int(known["first"]), int(known["first"]) + int(known["rows"]))
        others = [c for c in chunks if c.id not in out]
        if others:
            places = self._place(unit, shape, [v for c in others for v in (
                (c.bounds or {}).get("lo"), (c.bounds or {}).get("hi"))])
            total = int(layout.get("rows", 0))
            for chunk in others:
                bounds = chunk.bounds or {}
                lo, hi = bounds.get("lo"), bounds.get("hi")
                first = 0 if lo is None else places[json.dumps(lo)]
                end = total if hi is None else places[json.dumps(hi)]
                out[chunk.id] = (first, max(first, end))
        return out

    def _place(self, unit: UnitReader, shape: _Shape, bounds: list[Any]) -> dict[str, int]:
        """For each (non-open) bound, the number of the first row whose key is not below
        it. Exact where Python orders the key as the server does; for text keys only
        where the bound is a key the set holds (the collation's order is the server's)."""
        spec = unit.unit.spec
        total = int(unit.meta["mysql"].get("rows", 0))
        places: dict[str, int] = {}
        todo: dict[str, tuple[bytes, ...]] = {}
        for bound in bounds:
            if bound is None:
                continue
            name = json.dumps(bound)
            if bound == spec.get("lo"):
                places[name] = 0  # every row of the unit is at or above its own lo
            elif bound == spec.get("hi"):
                places[name] = total
            else:
                todo[name] = tuple(ms.decode_value(v) for v in bound)
        if not todo:
            return places
        orderers = [o for o in (_orderer(c) for c in shape.key) if o is not None]
        if len(orderers) == len(shape.key):
            def order(key: tuple[bytes, ...]) -> tuple[Any, ...]:
                return tuple(o(v) for o, v in zip(orderers, key, strict=True))
            ahead = sorted((order(k), n) for n, k in todo.items())
            at = 0
            for i, row in enumerate(self._rows(unit, shape)):
                here = order(shape.key_of(row))
                while at < len(ahead) and here >= ahead[at][0]:
                    places[ahead[at][1]] = i
                    at += 1
                if at == len(ahead):
                    break
            for _, name in ahead[at:]:
                places[name] = total
            return places
        by_key = {k: n for n, k in todo.items()}
        for i, row in enumerate(self._rows(unit, shape)):
            hit = by_key.get(shape.key_of(row))
            if hit is not None:
                places[hit] = i
        missing = [n for n in todo if n not in places]
        if missing:
            raise CapabilityMissing(
                f"{unit.unit.name}: chunk bound {missing[0]} is not a key this set holds, and"
                " text keys order by their collation, which only the server knows",
                hint="the source changed since the backup; verify the set against a copy"
                " restored from it, or verify while the source is unchanged")
        return places


class MySQLArchiveImporter(Importer):
    """Writes one unit's batches as data files, hashing every row as the server would and
    cutting chunks every ``chunk_records`` rows, where ``MySQLStore.chunks`` cuts them."""

    def __init__(self, fmt: MySQLArchive, unit: UnitWriter, source: MySQLStore) -> None:
        self.fmt = fmt
        self.unit = unit
        self.source = source
        spec = unit.unit.spec
        self.spec = spec
        self.table = str(spec["table"])
        self.key_names = [str(k) for k in spec.get("key") or []]
        self.step = max(1, source.options.chunk_records)
        self.shape: _Shape | None = None
        self.file: ArchiveFile | None = None
        self.files: list[dict[str, Any]] = []
        self.file_rows = 0
        self.rows = 0
        self.chunks: list[dict[str, Any]] = []  # id, bounds, first row, rows
        self.digest = ChunkDigest()

    def prepare(self, resumed: bool) -> None:
        self.rows = 0

    def write_batch(self, batch: Batch) -> None:
        if not batch.records:
            return
        shape = self._bind(tuple(getattr(batch, "columns", ())))
        if self.file is None or self.file.plain_bytes >= self.fmt.file_bytes:
            self._new_file()  # files end between batches: a file is whole rows
        assert self.file is not None
        self.file.write(b"".join([ms.tsv_line(row) for row in batch.records]))
        self.file_rows += len(batch.records)
        plain, step = shape.plain, self.step
        for row in batch.records:
            if self.key_names and self.rows % step == 0:
                self._new_chunk(shape.bound(row) if self.rows else self.spec.get("lo"))
            self.rows += 1
            self.digest.add(row_hash(plain, row))

    def _bind(self, columns: tuple[tuple[str, str], ...]) -> _Shape:
        if self.shape is None:
            if not columns:
                raise StoreError(f"{self.unit.unit.name}: a batch came without its columns")
            self.shape = _Shape(columns, self.key_names)
        elif columns != self.shape.pairs:
            raise StoreError(f"{self.unit.unit.name}: the table's columns changed during the"
                             " backup", hint="run the backup again")
        return self.shape

    def _new_chunk(self, lo: Any) -> None:
        self._close_chunk(lo)
        self.chunks.append({"id": f"{len(self.chunks):04d}", "bounds": {"lo": lo, "hi": None},
                            "first": self.rows, "rows": 0})

    def _close_chunk(self, hi: Any) -> None:
        if self.chunks:
            last = self.chunks[-1]
            last["bounds"]["hi"] = hi
            last["rows"] = self.rows - last["first"]
            self.unit.add_digests({last["id"]: self.digest})
            self.digest = ChunkDigest()

    def _new_file(self) -> None:
        self._close_file()
        name = f"{folder(self.table)}.{len(self.files):03d}.tsv"
        self.file = self.unit.open(name)
        self.files.append({"name": name, "rows": 0})
        self.file_rows = 0

    def _close_file(self) -> None:
        if self.file is not None:
            self.files[-1]["rows"] = self.file_rows
            self.file.meta["rows"] = self.file_rows
            self.file.close()
            self.file = None

    def finalize(self) -> None:
        self._close_file()
        if self.key_names:
            if not self.chunks:
                self._new_chunk(self.spec.get("lo"))
            self._close_chunk(self.spec.get("hi"))
            self.unit.set_chunks([Chunk(c["id"], c["bounds"]) for c in self.chunks])
        else:
            self.unit.set_chunks([Chunk("all", None)])
            self.unit.add_digests({"all": self.digest})
        shape = self.shape or _Shape(self._live_columns(), self.key_names)
        self.unit.meta["mysql"] = {
            "db": self.spec["db"], "table": self.table, "columns": [list(p) for p in
                                                                    shape.pairs],
            "key": self.key_names, "rows": self.rows, "files": self.files,
            "chunks": self.chunks}
        load = load_sql(str(self.spec["db"]), self.table, shape.columns,
                        [f["name"] for f in self.files], self.rows, self.spec)
        _write(self.unit.open(f"{folder(self.table)}.load.sql"), load)

    def __del__(self) -> None:
        """An attempt that failed half-way leaves no half-written file behind (the next
        attempt writes the unit again from its start)."""
        file = getattr(self, "file", None)
        if file is not None:
            file.abort()

    def _live_columns(self) -> list[tuple[str, str]]:
        """An empty unit saw no batch: its columns as the table has them now."""
        meta = self.source._table(str(self.spec["db"]), self.table)
        return [(c.name, c.column_type) for c in meta.copy_columns()]


# -- SQL files ----------------------------------------------------------------------------


def load_sql(db: str, table: str, columns: list[Column], files: list[str], rows: int,
             spec: dict[str, Any]) -> bytes:
    """The unit's LOAD DATA statements, run from the folder holding its data files."""
    where = ""
    if spec.get("lo") is not None or spec.get("hi") is not None:
        where = f", keys from {json.dumps(spec.get('lo'))} to before {json.dumps(spec.get('hi'))}"
    head = (f"-- {rows} row(s) of {quote_ident(db)}.{quote_ident(table)}{where}, in"
            f" {len(files)} file(s). In this folder, after the table exists:\n"
            f"--   mariadb --local-infile=1 DATABASE < {folder(table)}.load.sql\n")
    lines = [head, LOAD_SESSION]
    for name in files:
        lines.append(ms.load_data_sql(quote_ident(table), "'" + name + "'", columns) + ";\n")
    return "".join(lines).encode()


def _creation_order(objects: list[mo.SchemaObject]) -> list[mo.SchemaObject]:
    """Kinds in the store's order; a view after the views it selects from."""
    views = [o for o in objects if o.kind == "view"]
    ordered: list[mo.SchemaObject] = []
    pending = list(views)
    while pending:
        ready = [v for v in pending if not any(
            w is not v and w in pending and quote_ident(w.name) in v.create for w in pending)]
        ready = ready or pending[:1]  # a cycle cannot exist; never loop forever
        ordered += ready
        pending = [v for v in pending if v not in ready]
    out: list[mo.SchemaObject] = []
    for kind in mo.KINDS:
        out += ordered if kind == "view" else [o for o in objects if o.kind == kind]
    return out


def objects_sql(db: str, objects: list[mo.SchemaObject]) -> bytes:
    """Objects for the ``mariadb`` client: each under the settings it was created with, in
    its own client charset, with its DEFINER; names of ``db`` left unqualified, so the
    file restores into the database the command line selects."""
    out = [(f"-- procedures, functions, views, triggers and events of {quote_ident(db)}."
            " After the data:\n--   mariadb DATABASE < objects.sql\nDELIMITER ;;\n").encode()]
    for obj in _creation_order(objects):
        charset = str(obj.settings.get("character_set_client") or "utf8mb4")
        encoding = _encoding(charset)
        # a view keeps no sql_mode: it is made under the store's own, as the store does
        settings = [f"sql_mode = '{obj.settings.get('sql_mode', SQL_MODE)}'",
                    f"character_set_client = {charset}",
                    f"collation_connection = {obj.settings.get('collation_connection')}"]
        if "time_zone" in obj.settings:
            settings.append(f"time_zone = '{obj.settings['time_zone']}'")
        text = obj.ddl(db, obj.definer).replace(quote_ident(db) + ".", "")
        out.append(f"-- {obj.kind} {obj.name}\nSET SESSION {', '.join(settings)};;\n"
                   f"DROP {obj.kind.upper()} IF EXISTS {quote_ident(obj.name)};;\n"
                   .encode())
        out.append(text.encode(encoding) + b";;\n")
    out.append(b"DELIMITER ;\nSET NAMES utf8mb4;\n")
    return b"".join(out)


def _encoding(charset: str) -> str:
    import pymysql.charset

    return str(pymysql.charset.charset_by_name(charset).encoding)


def _write(file: ArchiveFile, data: bytes) -> None:
    with file:
        file.write(data)


def _mysql(source: Store) -> MySQLStore:
    if not isinstance(source, MySQLStore):
        raise CapabilityMissing(f"the MySQL archive format backs up MySQL stores, not"
                                f" {source.kind}")
    return source


# -- restore: what the target reads instead of a live source ------------------------------


class RecordedSource(MySQLStore):
    """A MySQL "source" that answers the questions a MySQL target asks while creating
    tables and objects (``prepare_target``/``finalize_target``) from what a set recorded:
    nothing connects anywhere."""

    def __init__(self, store: StoreReader) -> None:  # no MySQLStore.__init__: no server
        self.endpoint = Endpoint("mysql", "mysql://archive", name="archive")
        self.options = base.StoreOptions()
        self.selection = base.Selection()
        with store.open("catalog.json") as reader:
            self.catalog: dict[str, Any] = json.loads(reader.read())
        with store.open("objects.json") as reader:
            self.recorded: dict[str, list[dict[str, Any]]] = json.loads(reader.read())

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _entry(self, db: str, table: str) -> dict[str, Any]:
        entry = self.catalog["tables"].get(f"{db}.{table}")
        if entry is None:
            raise StoreError(f"the set holds no table {db}.{table}")
        return dict(entry)

    def database_charset(self, db: str) -> tuple[str, str]:
        data = self.catalog["databases"].get(db)
        if data is None:
            raise StoreError(f"the set holds no database {db}")
        return str(data["charset"]), str(data["collation"])

    def show_create_table(self, db: str, table: str) -> str:
        return str(self._entry(db, table)["create"])

    def referenced(self, db: str, table: str) -> bool:
        return bool(self._entry(db, table)["referenced"])

    def _table(self, db: str, table: str) -> Table:
        data = dict(self._entry(db, table)["meta"])
        data["columns"] = [Column(**c) for c in data["columns"]]
        return Table(**data)

    def trigger_names(self, db: str) -> set[str]:
        return {str(o["name"]) for o in self.recorded.get(db, []) if o["kind"] == "trigger"}

    def _objects(self, db: str, source_db: str) -> list[mo.SchemaObject]:
        return [mo.SchemaObject(**o) for o in self.recorded.get(source_db, [])]
