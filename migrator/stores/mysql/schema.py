"""Table metadata, the SQL text the MySQL store builds from it, and the DDL steps that
recreate tables on a target (views, triggers, routines, events: ``objects.py``).

Kept apart from the store so the store reads as "what happens" and this module as "how a
key, a range, a row hash or a table definition is read or written in SQL". Everything here
is portable between MariaDB and MySQL 5.7/8; where the two differ, both are handled.

Values travel as the raw bytes the server sends on a connection whose
``character_set_results`` is binary, so every literal built here starts from bytes.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql

from migrator.errors import StoreError

SYSTEM_DATABASES = frozenset({"information_schema", "performance_schema", "mysql", "sys"})
NO_KEY_NOTE = "no primary key: copied whole, restarted from the start on resume"

# Column kinds: how a value is written as a literal, compared and hashed.
_KINDS = {
    **dict.fromkeys(("tinyint", "smallint", "mediumint", "int", "integer", "bigint"), "int"),
    **dict.fromkeys(("decimal", "numeric"), "dec"),
    **dict.fromkeys(("float", "double", "real", "double precision"), "float"),
    **dict.fromkeys(("date", "datetime", "timestamp", "time", "year"), "time"),
    **dict.fromkeys(("char", "varchar", "tinytext", "text", "mediumtext", "longtext"), "char"),
    **dict.fromkeys(("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"), "bin"),
    "enum": "enum", "set": "enum", "bit": "bit", "json": "json",
}
# Kinds whose index order equals the order of ``<``/``>`` on the values, so keyset
# pagination (``key > last``) is exact. ENUM sorts by ordinal but compares as text; FLOAT
# text forms do not round-trip exactly: such keys are not used for ranges.
_RANGE_KINDS = frozenset({"int", "dec", "time", "char", "bin"})
_NUMBER = re.compile(rb"^[-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$")
_TEMPORAL = re.compile(rb"^[-0-9: .]+$")
_GENERATED = re.compile(r"\b(VIRTUAL|STORED|PERSISTENT) GENERATED\b", re.I)  # not DEFAULT_GENERATED


def quote_ident(name: str) -> str:
    """A backtick-quoted identifier; a backtick inside the name is doubled."""
    return "`" + name.replace("`", "``") + "`"


def qualified(db: str, table: str) -> str:
    return f"{quote_ident(db)}.{quote_ident(table)}"


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    column_type: str
    nullable: bool
    default: str | None
    charset: str | None
    collation: str | None
    extra: str
    generated: bool
    expression: str = ""  # generation expression of a generated column

    @property
    def kind(self) -> str:
        return _KINDS.get(self.data_type, "other")

    def literal(self, raw: bytes) -> str:
        """``raw`` (server text form, in the column's charset) as an SQL literal of this
        column's type: numbers as numbers, text re-labelled with its own charset and
        collation so comparisons use the index order."""
        kind = self.kind
        if kind in ("int", "dec", "float"):
            if not _NUMBER.match(raw):
                raise StoreError(f"column {self.name}: {raw!r} is not a number")
            return raw.decode("ascii")
        if kind == "time":
            if not _TEMPORAL.match(raw):
                raise StoreError(f"column {self.name}: {raw!r} is not a date/time")
            return "'" + raw.decode("ascii") + "'"
        hexed = "X'" + raw.hex() + "'"
        if kind in ("char", "enum", "json") and self.charset and self.collation:
            return f"CONVERT({hexed} USING {self.charset}) COLLATE {self.collation}"
        return hexed


@dataclass
class Table:
    db: str
    name: str
    columns: list[Column]  # every column, ordinal order
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ident(self) -> str:
        return qualified(self.db, self.name)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise StoreError(f"{self.db}.{self.name}: no column {name!r}")

    def copy_columns(self) -> list[Column]:
        """Columns that carry data, in table order: generated columns are recomputed by the
        target. Read live when a copy or a digest starts, never taken from the plan."""
        return [c for c in self.columns if not c.generated]

    def unique_on(self, names: list[str]) -> bool:
        """Whether a unique index covers exactly these whole columns, in this order."""
        return any(index["unique"] and [p["name"] for p in index["columns"]] == names
                   and all(p["sub_part"] is None for p in index["columns"])
                   for index in self.indexes.values())

    def range_key(self) -> tuple[str | None, list[str]]:
        """The index used for ranges, resume and chunks: the primary key, else a unique
        key on NOT NULL columns (what InnoDB clusters on); ``(None, [])`` when none fits."""
        candidates = sorted(self.indexes.items(), key=lambda kv: (kv[0] != "PRIMARY", kv[0]))
        for name, index in candidates:
            if not index["unique"]:
                continue
            parts = index["columns"]
            cols = [self.column(p["name"]) for p in parts]
            if all(p["sub_part"] is None and c.kind in _RANGE_KINDS and not c.nullable
                   and not c.generated for p, c in zip(parts, cols, strict=True)):
                return name, [c.name for c in cols]
        return None, []


def list_tables(cur: Any, database: str | None) -> list[tuple[str, str, int, int]]:
    """(db, table, estimated rows, data bytes) of the base tables of one database, or of
    every non-system database when none is named."""
    if database:
        databases = [database]
    else:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        databases = sorted(r[0] for r in cur.fetchall() if r[0].lower() not in SYSTEM_DATABASES)
    if not databases:
        return []
    marks = ", ".join(["%s"] * len(databases))
    cur.execute("SELECT TABLE_SCHEMA, TABLE_NAME, COALESCE(TABLE_ROWS, 0),"
                " COALESCE(DATA_LENGTH, 0) FROM information_schema.TABLES"
                f" WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ({marks})"
                " ORDER BY TABLE_SCHEMA, TABLE_NAME", databases)
    return [(db, t, int(rows), int(size)) for db, t, rows, size in cur.fetchall()]


def load_table(cursor: Any, db: str, table: str) -> Table | None:
    """Read one table's definition from information_schema (cursor on a decoded
    connection); None when the table does not exist."""
    cursor.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT,"
        " CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, COALESCE(GENERATION_EXPRESSION, '')"
        " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s"
        " ORDER BY ORDINAL_POSITION", (db, table))
    columns = [Column(name=r[0], data_type=r[1].lower(), column_type=r[2],
                      nullable=r[3] == "YES", default=r[4], charset=r[5], collation=r[6],
                      extra=r[7] or "", generated=bool(r[8]) or bool(_GENERATED.search(r[7] or "")),
                      expression=r[8] or "")
               for r in cursor.fetchall()]
    if not columns:
        return None
    cursor.execute(
        "SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, COLLATION,"
        " INDEX_TYPE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA=%s"
        " AND TABLE_NAME=%s ORDER BY INDEX_NAME, SEQ_IN_INDEX", (db, table))
    indexes: dict[str, dict[str, Any]] = {}
    for name, non_unique, _seq, col, sub_part, collation, index_type in cursor.fetchall():
        index = indexes.setdefault(name, {"unique": not int(non_unique), "type": index_type,
                                          "columns": []})
        index["columns"].append({"name": col, "sub_part": sub_part,
                                 "order": "DESC" if collation == "D" else "ASC"})
    cursor.execute(
        "SELECT ENGINE, TABLE_COLLATION, ROW_FORMAT, CREATE_OPTIONS, TABLE_COMMENT"
        " FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s", (db, table))
    row = cursor.fetchone() or (None,) * 5
    options = {"engine": row[0], "collation": row[1], "row_format": row[2],
               "create_options": row[3] or "", "comment": row[4] or ""}
    cursor.execute(
        "SELECT CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME,"
        " REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
        " WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s AND REFERENCED_TABLE_NAME IS NOT NULL"
        " ORDER BY CONSTRAINT_NAME, ORDINAL_POSITION", (db, table))
    foreign: dict[str, list[str]] = {}
    for name, col, ref_db, ref_table, ref_col in cursor.fetchall():
        # the referenced DB is left out when it is the table's own, so a renamed DB matches
        where = ref_table if ref_db == db else f"{ref_db}.{ref_table}"
        foreign.setdefault(name, []).append(f"{col} -> {where}.{ref_col}")
    options["foreign_keys"] = foreign
    return Table(db=db, name=table, columns=columns, indexes=indexes, options=options)


def schema_of(table: Table, auto_increment: int | None) -> dict[str, Any]:
    """The definition the verifier compares, keyed by name so a difference names the
    column or index (positions are kept as data, not as list order)."""
    columns = {}
    for pos, c in enumerate(table.columns):
        columns[c.name] = {"position": pos, "type": c.column_type, "nullable": c.nullable,
                           "default": c.default, "charset": c.charset,
                           "collation": c.collation, "extra": c.extra,
                           "generated": c.expression or None}
    indexes = {}
    for name, index in table.indexes.items():
        indexes[name] = {"unique": index["unique"], "type": index["type"],
                         "columns": [_index_part(p) for p in index["columns"]]}
    return {"columns": columns, "indexes": indexes,
            "options": {**table.options, "auto_increment": auto_increment}}


def _index_part(part: dict[str, Any]) -> str:
    text = part["name"]
    if part["sub_part"] is not None:
        text += f"({part['sub_part']})"
    return text + (" DESC" if part["order"] == "DESC" else "")


# -- keys and ranges ------------------------------------------------------------------

KeyValue = Any  # JSON form of one key column value: int, str or {"b64": ...}


def encode_value(raw: bytes | None, kind: str) -> KeyValue:
    """Raw server bytes as plain JSON, losslessly: integers as numbers, text as text when
    it is valid UTF-8, anything else tagged ``{"b64": ...}``."""
    if raw is None:
        return None
    if kind == "int":
        return int(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def decode_value(value: KeyValue) -> bytes:
    """The inverse of ``encode_value``."""
    if isinstance(value, bool) or value is None:
        raise StoreError(f"bad key value in a plan or cursor: {value!r}")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    raise StoreError(f"bad key value in a plan or cursor: {value!r}")


def key_text(key: list[Column], raw: tuple[bytes, ...]) -> str:
    """A key as people read it: ``42``, ``u1`` or ``["u1", "u2"]`` for a composite key;
    binary columns as ``0x…``. Injective, so ``parse_key`` can hand back the exact bytes:
    text that is not valid UTF-8, or holds a backslash, shows its backslashes doubled and
    its undecodable bytes as ``\\xNN`` (a latin1 ``é`` is ``\\xe9``)."""
    parts: list[Any] = []
    for col, value in zip(key, raw, strict=True):
        if col.kind == "int":
            parts.append(int(value))
        elif col.kind == "bin":
            parts.append("0x" + value.hex())
        else:
            parts.append(_text_of(value))
    if len(parts) == 1:
        return str(parts[0])
    return json.dumps(parts, ensure_ascii=False)


def _text_of(value: bytes) -> str:
    if b"\\" not in value:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return value.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def _bytes_of(text: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1][1:], 16)]), raw)


def parse_key(key: list[Column], text: str) -> tuple[bytes, ...]:
    """The key values (server bytes) that ``key_text`` printed as ``text``: ``sync`` hands
    keys back by the names ``records`` gave them. Anything ``key_text`` could not have
    printed for these columns is refused rather than guessed at."""
    parts: Any = [text]
    if len(key) > 1:
        try:
            parts = json.loads(text)
        except ValueError:
            parts = None
    if not isinstance(parts, list) or len(parts) != len(key):
        raise StoreError(f"{text!r} is not a key of ({', '.join(c.name for c in key)})")
    raw: list[bytes] = []
    for col, part in zip(key, parts, strict=True):
        if col.kind == "int" and isinstance(part, int) and not isinstance(part, bool):
            raw.append(str(part).encode("ascii"))
        elif col.kind == "int" and isinstance(part, str) and _INTEGER.fullmatch(part):
            raw.append(part.encode("ascii"))
        elif col.kind == "bin" and isinstance(part, str) and part.startswith("0x"):
            try:
                raw.append(bytes.fromhex(part[2:]))
            except ValueError:
                raw.append(b"")
                break
        elif col.kind not in ("int", "bin") and isinstance(part, str):
            raw.append(_bytes_of(part))
        else:
            break
    if len(raw) != len(key) or key_text(key, tuple(raw)) != text:
        raise StoreError(f"{text!r} is not a key of ({', '.join(c.name for c in key)})")
    return tuple(raw)


def key_match(key: list[Column], keys: list[tuple[bytes, ...]]) -> str:
    """SQL that is true for exactly these keys: an IN list the optimizer turns into index
    lookups, and, when a text column is part of the key, the same list compared as bytes
    (under ``utf8mb4_general_ci`` the key ``'a'`` also matches ``'A '``, a different row
    on the other server)."""
    def row(items: list[str]) -> str:
        return items[0] if len(items) == 1 else "(" + ", ".join(items) + ")"

    names = [quote_ident(c.name) for c in key]
    sql = (f"{row(names)} IN ("
           + ", ".join(row([c.literal(v) for c, v in zip(key, values, strict=True)])
                       for values in keys) + ")")
    if any(c.kind == "char" for c in key):
        exact = [f"CAST({n} AS BINARY)" if c.kind == "char" else n
                 for c, n in zip(key, names, strict=True)]
        sql += (f" AND {row(exact)} IN ("
                + ", ".join(row([f"X'{v.hex()}'" if c.kind == "char" else c.literal(v)
                                 for c, v in zip(key, values, strict=True)])
                            for values in keys) + ")")
    return sql


ROW_MD5_PREFIX = "row md5 "
_MD5 = re.compile(r"[0-9a-f]{32}")


def parse_row_md5(text: str) -> str:
    """The row MD5 of a keyless table's record name (``row md5 <hex>``)."""
    digest = text[len(ROW_MD5_PREFIX):]
    if not text.startswith(ROW_MD5_PREFIX) or not _MD5.fullmatch(digest):
        raise StoreError(f"{text!r} is not a row of a table without a key (row md5 <hex>)")
    return digest


def row_md5_match(columns: list[Column], digests: list[str]) -> str:
    """SQL true for the rows whose ``row_hash`` is one of ``digests``."""
    return f"{row_hash(columns)} IN ({', '.join(repr(d) for d in digests)})"


def compare(key: list[Column], values: list[KeyValue], op: str) -> str:
    """``(k1, k2, …) op (v1, v2, …)`` for op in ``>``, ``>=``, ``<``, written as nested
    OR/AND because neither server turns a row comparison into an index range."""
    literals = [c.literal(decode_value(v)) for c, v in zip(key, values, strict=True)]
    names = [quote_ident(c.name) for c in key]
    strict = op[0]
    expr = f"{names[-1]} {op} {literals[-1]}"
    for name, lit in zip(reversed(names[:-1]), reversed(literals[:-1]), strict=True):
        expr = f"({name} {strict} {lit} OR ({name} = {lit} AND {expr}))"
    if len(names) > 1:  # a plain bound on the first column lets the optimizer seek
        expr = f"{names[0]} {strict}= {literals[0]} AND {expr}"
    return expr


def range_predicate(key: list[Column], lo: list[KeyValue] | None,
                    hi: list[KeyValue] | None, after: list[KeyValue] | None = None) -> str:
    """``lo <= key < hi`` (either bound may be open), and ``key > after`` for resuming."""
    parts = []
    if after is not None:
        parts.append(compare(key, after, ">"))
    elif lo is not None:
        parts.append(compare(key, lo, ">="))
    if hi is not None:
        parts.append(compare(key, hi, "<"))
    return " AND ".join(f"({p})" for p in parts) or "TRUE"


def order_by(key: list[Column]) -> str:
    return ", ".join(quote_ident(c.name) for c in key)


# Kinds whose text form is never empty, never ``N`` and never holds a ``#``.
_PLAIN_TEXT_KINDS = frozenset({"int", "dec", "float", "time"})


def row_hash(columns: list[Column]) -> str:
    """SQL for a row's MD5, computed by the server on binary strings: every column in its
    own stored bytes, ``#`` between them, so that neither NULL vs '' nor a ``#`` inside a
    value can make two different rows hash alike: a number or a date (never empty, never
    holding ``#``) stands for itself and NULL as ``N``; any other column is followed, in a
    length list at the end, by its length (``N`` for NULL, which CONCAT_WS skips). The
    length list only where needed: it is a fifth of the server's digest work."""
    parts, lengths = [], []
    for col in columns:
        ident = quote_ident(col.name)
        if col.kind in _PLAIN_TEXT_KINDS:
            parts.append(f"IFNULL({ident}, _binary'N')" if col.nullable else ident)
        else:
            parts.append(ident)
            lengths.append(f"IFNULL(LENGTH({ident}), _binary'N')")
    return (f"MD5(CONCAT_WS(_binary'#', {', '.join(parts)},"
            f" CONCAT_WS(_binary',', {', '.join(lengths) or '_binary' + repr('')})))")


def digest_sql(table_ident: str, columns: list[Column], predicate: str) -> str:
    """COUNT and the two 64-bit halves of the sum of row MD5s, summed exactly (DECIMAL)
    by the server; the caller folds them into the 128-bit sum. The LIMIT keeps the
    optimizer from merging the derived table, which would compute each MD5 twice
    (measured 4x slower)."""
    half = "CAST(CONV(SUBSTRING(h, {0}, 16), 16, 10) AS UNSIGNED)"
    return (f"SELECT COUNT(*), SUM({half.format(1)}), SUM({half.format(17)}) FROM"
            f" (SELECT {row_hash(columns)} AS h FROM {table_ident} WHERE {predicate}"
            f" LIMIT {2**64 - 1}) AS rows_")


# -- loading --------------------------------------------------------------------------


def tsv_line(row: tuple[bytes | None, ...]) -> bytes:
    """One row for LOAD DATA … FIELDS ESCAPED BY '\\' (inline: this runs per value)."""
    return b"\t".join([b"\\N" if v is None else v.replace(b"\\", b"\\\\").replace(
        b"\t", b"\\t").replace(b"\n", b"\\n") for v in row]) + b"\n"


def load_data_sql(table_ident: str, path_literal: str, columns: list[Column]) -> str:
    """LOAD DATA that stores every field's bytes as they are (CHARACTER SET binary)."""
    targets, sets = [], []
    for i, col in enumerate(columns):
        if col.kind == "json":
            # MySQL 8 refuses binary-charset text for JSON columns; relabel it as UTF-8
            targets.append(f"@v{i}")
            sets.append(f"{quote_ident(col.name)} = CONVERT(@v{i} USING utf8mb4)")
        else:
            targets.append(quote_ident(col.name))
    return (f"LOAD DATA LOCAL INFILE {path_literal} REPLACE INTO TABLE {table_ident}"
            " CHARACTER SET binary FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\'"
            f" LINES TERMINATED BY '\\n' ({', '.join(targets)})"
            + (f" SET {', '.join(sets)}" if sets else ""))


def insert_renderers(columns: list[Column]) -> list[Callable[[bytes], str]]:
    """How a raw value of each column is written in an INSERT: numbers as the server sent
    them, everything else as a hex literal (its bytes exactly)."""
    def number(v: bytes) -> str:
        return v.decode("ascii")

    def json_text(v: bytes) -> str:
        return f"CONVERT(X'{v.hex()}' USING utf8mb4)"

    def hexed(v: bytes) -> str:
        return f"X'{v.hex()}'"

    return [number if c.kind in ("int", "dec", "float") else json_text if c.kind == "json"
            else hexed for c in columns]


def insert_statements(table_ident: str, columns: list[Column], rows: list[tuple],
                      limit: int) -> Iterator[str]:
    """Multi-row REPLACE statements for ``rows``, each at most ``limit`` bytes long
    (unless one row alone is longer)."""
    head = f"REPLACE INTO {table_ident} ({', '.join(quote_ident(c.name) for c in columns)}) VALUES "
    render = insert_renderers(columns)
    parts: list[str] = []
    size = len(head)
    for row in rows:
        text = "(" + ",".join("NULL" if v is None else f(v)
                              for f, v in zip(render, row, strict=True)) + ")"
        if parts and size + len(text) + 1 > limit:
            yield head + ",".join(parts)
            parts, size = [], len(head)
        parts.append(text)
        size += len(text) + 1
    if parts:
        yield head + ",".join(parts)


_INT_WIDTH = re.compile(r"^((?:tiny|small|medium|big)?int)\(\d+\)", re.I)


def same_type(a: str, b: str) -> bool:
    """Column types as the two servers print them; an integer's display width (MariaDB's
    ``int(11)``, MySQL 8's ``int``) changes nothing stored."""
    return a == b or _INT_WIDTH.sub(r"\1", a).lower() == _INT_WIDTH.sub(r"\1", b).lower()


def column_mismatches(wanted: list[tuple[str, str]], target: Table) -> list[str]:
    """Why ``target`` cannot take rows of these (name, type) columns, one line each."""
    have = {c.name: c for c in target.columns}
    problems = []
    for name, column_type in wanted:
        col = have.get(name)
        if col is None:
            problems.append(f"column {name} ({column_type}) is missing on the target")
        elif col.generated:
            problems.append(f"column {name} is generated on the target")
        elif not same_type(col.column_type, column_type):
            problems.append(f"column {name} is {column_type} on the source but"
                            f" {col.column_type} on the target")
    return problems


def check_compatible(source: Table, target: Table, label: str) -> None:
    """An existing target table must take the source's columns as they are now."""
    wrong = column_mismatches([(c.name, c.column_type) for c in source.copy_columns()], target)
    if wrong:
        raise StoreError(f"{label}: table {target.db}.{target.name} cannot take the source's"
                         f" rows: {'; '.join(wrong[:5])}",
                         hint="the source table changed after the target table was made (or"
                         " it was made by hand): drop the target table so the next run"
                         " creates it from the source, or alter it to match")


# -- DDL ------------------------------------------------------------------------------

_AUTO_INCREMENT = re.compile(r"\)[^)]*?\bAUTO_INCREMENT=(\d+)", re.S)
_IDENT = r"(`(?:[^`]|``)+`)"
_SECONDARY = re.compile(r"^\s*(?:(?:FULLTEXT|SPATIAL)\s+)?KEY\s+" + _IDENT + r"\s*\(" + _IDENT)


def auto_increment_of(create_sql: str) -> int | None:
    """The table's next AUTO_INCREMENT value as SHOW CREATE TABLE states it (information
    _schema may be cached for a day on MySQL 8)."""
    match = _AUTO_INCREMENT.search(create_sql)
    return int(match.group(1)) if match else None


def create_table(conn: Any, db: str, create_sql: str) -> None:
    """Run SHOW CREATE TABLE text in ``db``, re-runnable (``IF NOT EXISTS``), with foreign
    key checks off for this statement: a referenced table may come later."""
    if not create_sql.startswith("CREATE TABLE "):
        raise StoreError(f"unexpected SHOW CREATE TABLE output: {create_sql[:60]!r}")
    with conn.cursor() as cur:
        cur.execute("SET foreign_key_checks = 0")
        try:
            conn.select_db(db)
            cur.execute("CREATE TABLE IF NOT EXISTS " + create_sql[len("CREATE TABLE "):])
        finally:
            cur.execute("SET foreign_key_checks = 1")


def split_secondary_indexes(create_sql: str, keep_all: bool = False,
                            auto_column: str | None = None) -> tuple[str, dict[str, str]]:
    """SHOW CREATE TABLE text without its non-unique indexes, and those indexes by name
    (as ``KEY `name` (…)`` clauses for a later ALTER TABLE ADD). Loading chat_logs into
    a table without its 7 secondary indexes and adding them afterwards took half the
    server CPU and wall time of loading into the indexed table. ``keep_all`` keeps
    them in the text (tables in foreign-key relations) but still lists them; an index
    leading with the AUTO_INCREMENT column stays, as the table needs it."""
    lines = create_sql.split("\n")
    end = next((i for i in range(1, len(lines)) if lines[i].startswith(")")), None)
    if end is None:
        return create_sql, {}
    kept, indexes = [], {}
    for line in lines[1:end]:
        line = line[:-1] if line.endswith(",") else line
        match = _SECONDARY.match(line)
        if match:
            name = match.group(1)[1:-1].replace("``", "`")
            indexes[name] = line.strip()
            if not keep_all and match.group(2) != quote_ident(auto_column or ""):
                continue
        kept.append(line)
    return "\n".join([lines[0], ",\n".join(kept), *lines[end:]]), indexes


def add_missing_indexes(cur: Any, db: str, table: str, source_ddl: str) -> None:
    """Give a target table the secondary indexes the source has and it lacks (those left
    out at creation), in one ALTER so InnoDB sorts each index once; then raise its
    AUTO_INCREMENT to the source's, so ids handed out before are not reused."""
    ident = qualified(db, table)
    meta = load_table(cur, db, table)
    if meta is None:
        raise StoreError(f"table {db}.{table} is missing on the target")
    _text, indexes = split_secondary_indexes(source_ddl)
    missing = [d for name, d in indexes.items() if name not in meta.indexes]
    if missing:
        cur.execute(f"ALTER TABLE {ident} " + ", ".join(f"ADD {d}" for d in missing))
    wanted = auto_increment_of(source_ddl)
    cur.execute(f"SHOW CREATE TABLE {ident}")
    have = auto_increment_of(cur.fetchone()[1])
    if wanted is not None and (have or 0) < wanted:
        cur.execute(f"ALTER TABLE {ident} AUTO_INCREMENT = {int(wanted)}")


def unreadable_tables(cur: Any, tables: list[tuple[Any, ...]], denied: set[int]) -> list[str]:
    """``db.table`` of each table this user may not read or describe."""
    refused = []
    for db, table, *_rest in tables:
        try:
            cur.execute(f"SELECT * FROM {qualified(db, table)} LIMIT 0")
            cur.execute(f"SHOW CREATE TABLE {qualified(db, table)}")
        except pymysql.MySQLError as exc:
            if not (exc.args and exc.args[0] in denied):
                raise
            refused.append(f"{db}.{table}")
    return refused


def probe_writes(cur: Any, db: str, scratch: str) -> None:
    """Create, fill, index and drop a scratch table in ``db`` (and ``db`` itself when it
    is missing): what a copy needs, leaving nothing behind."""
    cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (db,))
    create_db = not cur.fetchone()[0]
    table = qualified(db, scratch)
    if create_db:
        cur.execute(f"CREATE DATABASE {quote_ident(db)}")
    try:
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v BLOB)")
        try:
            cur.execute(f"REPLACE INTO {table} VALUES (1, NULL)")
            cur.execute(f"ALTER TABLE {table} ADD INDEX i_v (v(8))")
            cur.execute(f"DELETE FROM {table}")
        finally:
            cur.execute(f"DROP TABLE {table}")
    finally:
        if create_db:
            cur.execute(f"DROP DATABASE {quote_ident(db)}")
