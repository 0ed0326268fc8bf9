"""Views, triggers, stored routines and events: read, compared as data, and recreated.

An object is read with ``SHOW CREATE …`` (or, for triggers, from information_schema, so the
statement is rebuilt with names the target understands) and kept as its CREATE text
without the DEFINER clause, plus the settings it was created under (sql_mode, client
charset and collation, time zone) and its definer. Both sides describe their objects in
the *source's* database names, so the verifier compares them as plain data.

On the target they are made after the data (a trigger must not fire on imported rows, an
event must not run on half a table) under their own settings. The DEFINER is kept when
that account exists on the target; otherwise the object is created by the target's user
and the rewrite is reported. Bodies are copied as written: a body that names its own
database explicitly keeps naming it under a ``db_map`` rename.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.charset

from migrator.errors import StoreError
from migrator.stores.mysql.schema import qualified, quote_ident

# creation order: a view may call a function, a trigger may call a procedure
KINDS = ("procedure", "function", "view", "trigger", "event")
DENIED = {1044, 1045, 1142, 1143, 1227, 1370}
_DEFINER = re.compile(r"\s+DEFINER\s*=\s*(`(?:[^`]|``)*`|'(?:[^']|'')*'|[^@\s]+)"
                      r"@(`(?:[^`]|``)*`|'(?:[^']|'')*'|\S+)", re.I)


def _unquote(part: str) -> str:
    if len(part) >= 2 and part[0] == part[-1] and part[0] in "`'":
        return part[1:-1].replace(part[0] * 2, part[0])
    return part


def split_definer(create_sql: str) -> tuple[str, str | None]:
    """CREATE text without its DEFINER clause, and the definer as ``user@host``."""
    match = _DEFINER.search(create_sql)
    if match is None:
        return create_sql, None
    definer = f"{_unquote(match.group(1))}@{_unquote(match.group(2))}"
    return create_sql[:match.start()] + create_sql[match.end():], definer


def definer_clause(definer: str) -> str:
    user, _, host = definer.rpartition("@")
    return f"DEFINER={quote_ident(user)}@{quote_ident(host)}"


def rename_db(text: str, old: str, new: str) -> str:
    """Re-point backtick-qualified names (what SHOW CREATE VIEW writes) at another
    database."""
    if old == new:
        return text
    return text.replace(quote_ident(old) + ".", quote_ident(new) + ".")


@dataclass
class SchemaObject:
    kind: str
    db: str  # its database on the side it was read from
    name: str
    create: str  # CREATE text without DEFINER, naming databases as its side does
    definer: str | None
    settings: dict[str, Any] = field(default_factory=dict)  # sql_mode, charsets, time zone
    extra: dict[str, Any] = field(default_factory=dict)  # trigger: table, timing, event…

    def key(self, db: str) -> str:
        return f"{self.kind} {db}.{self.name}"

    def data(self, side_db: str, source_db: str, definer: str | None) -> dict[str, Any]:
        """What verify compares, with databases named as the source names them."""
        out: dict[str, Any] = dict(self.extra)
        out["create"] = rename_db(self.create, side_db, source_db)
        out["definer"] = definer
        out.update(self.settings)
        return out

    def ddl(self, target_db: str, definer: str | None) -> str:
        """The statement that makes this object in ``target_db`` (which is selected)."""
        text = rename_db(self.create, self.db, target_db)
        if definer is None:
            return text
        if self.kind == "view":  # CREATE [ALGORITHM=…] DEFINER=… [SQL SECURITY …] VIEW
            match = re.match(r"CREATE(\s+ALGORITHM\s*=\s*\w+)?", text, re.I)
            end = match.end() if match else len("CREATE")
            return f"{text[:end]} {definer_clause(definer)}{text[end:]}"
        return f"CREATE {definer_clause(definer)}{text[len('CREATE'):]}"


# -- reading --------------------------------------------------------------------------


def read_objects(cur: Any, db: str, selected: Callable[[str, str], bool],
                 kinds: tuple[str, ...] = KINDS) -> list[SchemaObject]:
    """The objects of one database, in creation order (cursor on a decoded connection)."""
    found: list[SchemaObject] = []
    for kind in kinds:
        found.extend(_READERS[kind](cur, db, selected))
    return found


def _routines(kind: str) -> Callable[[Any, str, Callable[[str, str], bool]],
                                     list[SchemaObject]]:
    def read(cur: Any, db: str, selected: Callable[[str, str], bool]) -> list[SchemaObject]:
        cur.execute("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE"
                    " ROUTINE_SCHEMA = %s AND ROUTINE_TYPE = %s ORDER BY 1", (db, kind.upper()))
        out = []
        for (name,) in cur.fetchall():
            if not selected(db, name):
                continue
            cur.execute(f"SHOW CREATE {kind.upper()} {qualified(db, name)}")
            _name, sql_mode, text, charset, collation, *_ = cur.fetchone()
            if text is None:
                raise StoreError(f"cannot read the body of {kind} {db}.{name}",
                                 hint="the source user needs SELECT on mysql.proc (MariaDB)"
                                 " or SHOW_ROUTINE (MySQL 8)")
            create, definer = split_definer(text)
            out.append(SchemaObject(kind, db, name, create, definer, _settings(
                sql_mode, charset, collation)))
        return out
    return read


def _views(cur: Any, db: str, selected: Callable[[str, str], bool]) -> list[SchemaObject]:
    cur.execute("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"
                " ORDER BY 1", (db,))
    out = []
    for (name,) in cur.fetchall():
        if not selected(db, name):
            continue
        cur.execute(f"SHOW CREATE VIEW {qualified(db, name)}")
        _name, text, charset, collation = cur.fetchone()
        create, definer = split_definer(text)
        out.append(SchemaObject("view", db, name, create, definer,
                                _settings(None, charset, collation)))
    return out


def _triggers(cur: Any, db: str, selected: Callable[[str, str], bool]) -> list[SchemaObject]:
    """Rebuilt from information_schema: SHOW CREATE TRIGGER repeats the text as typed,
    which may name the source database."""
    cur.execute("SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION,"
                " ACTION_ORDER, ACTION_STATEMENT, SQL_MODE, DEFINER, CHARACTER_SET_CLIENT,"
                " COLLATION_CONNECTION FROM information_schema.TRIGGERS"
                " WHERE TRIGGER_SCHEMA = %s"
                " ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
                (db,))
    out = []
    for (name, table, timing, event, order, statement, sql_mode, definer, charset,
         collation) in cur.fetchall():
        if not selected(db, table):
            continue
        create = (f"CREATE TRIGGER {quote_ident(name)} {timing} {event} ON"
                  f" {quote_ident(table)} FOR EACH ROW {statement}")
        out.append(SchemaObject("trigger", db, name, create, definer or None,
                                _settings(sql_mode, charset, collation),
                                {"table": table, "order": int(order)}))
    return out


def _events(cur: Any, db: str, selected: Callable[[str, str], bool]) -> list[SchemaObject]:
    cur.execute("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"
                " ORDER BY 1", (db,))
    out = []
    for (name,) in cur.fetchall():
        if not selected(db, name):
            continue
        cur.execute(f"SHOW CREATE EVENT {qualified(db, name)}")
        _name, sql_mode, time_zone, text, charset, collation, *_ = cur.fetchone()
        create, definer = split_definer(text)
        settings = _settings(sql_mode, charset, collation)
        settings["time_zone"] = time_zone
        out.append(SchemaObject("event", db, name, create, definer, settings))
    return out


_READERS: dict[str, Callable[[Any, str, Callable[[str, str], bool]], list[SchemaObject]]] = {
    "procedure": _routines("procedure"), "function": _routines("function"),
    "view": _views, "trigger": _triggers, "event": _events}


def _settings(sql_mode: str | None, charset: str, collation: str) -> dict[str, Any]:
    out: dict[str, Any] = {"character_set_client": charset, "collation_connection": collation}
    if sql_mode is not None:
        out["sql_mode"] = sql_mode
    return out


def hidden_kinds(cur: Any, databases: list[str], tables: list[tuple[str, str]]) -> dict[str,
                                                                                         str]:
    """Object kinds this user cannot fully see, with the reason: MySQL and MariaDB leave
    triggers and events it may not manage out of information_schema without an error."""
    hidden: dict[str, str] = {}
    cur.execute("SELECT CURRENT_USER()")
    user, _, host = cur.fetchone()[0].rpartition("@")
    grantee = f"'{user}'@'{host}'"

    def granted(privileges: tuple[str, ...], db: str | None = None,
                table: str | None = None) -> bool:
        marks = ", ".join(["%s"] * len(privileges))
        cur.execute("SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s"
                    f" AND PRIVILEGE_TYPE IN ({marks})", (grantee, *privileges))
        if cur.fetchone()[0]:
            return True
        if db is None:
            return False
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES WHERE"
                    f" GRANTEE = %s AND PRIVILEGE_TYPE IN ({marks}) AND %s LIKE TABLE_SCHEMA",
                    (grantee, *privileges, db))
        if cur.fetchone()[0]:
            return True
        if table is None:
            return False
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLE_PRIVILEGES WHERE"
                    f" GRANTEE = %s AND PRIVILEGE_TYPE IN ({marks}) AND TABLE_SCHEMA = %s"
                    " AND TABLE_NAME = %s", (grantee, *privileges, db, table))
        return bool(cur.fetchone()[0])

    blind = [f"{db}.{t}" for db, t in tables if not granted(("TRIGGER",), db, t)]
    if blind:
        hidden["trigger"] = (f"triggers of {len(blind)} table(s) (e.g. {blind[0]}) are invisible"
                             " without the TRIGGER privilege")
    for db in databases:
        try:
            cur.execute(f"SHOW EVENTS FROM {quote_ident(db)}")
            cur.fetchall()
        except pymysql.MySQLError as exc:
            if not (exc.args and exc.args[0] in DENIED):
                raise
            hidden["event"] = (f"events of database {db} are invisible without the EVENT"
                               " privilege")
            break
    if not granted(("SELECT", "SHOW_ROUTINE")):
        try:  # MariaDB keeps routines in mysql.proc; SELECT on it shows them all
            cur.execute("SELECT 1 FROM mysql.proc LIMIT 0")
            cur.fetchall()
        except pymysql.MySQLError:
            hidden["procedure"] = hidden["function"] = (
                "stored routines this user may not run or alter are invisible without global"
                " SELECT (or SHOW_ROUTINE on MySQL 8)")
    return hidden


# -- writing --------------------------------------------------------------------------


def account_exists(cur: Any, definer: str) -> bool | None:
    """Whether ``user@host`` exists on this server; None when this user may not look."""
    user, _, host = definer.rpartition("@")
    try:
        cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = %s",
                    (user, host))
        return bool(cur.fetchone()[0])
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] in DENIED:
            return None
        raise


def drop_sql(obj: SchemaObject, db: str) -> str:
    return f"DROP {obj.kind.upper()} IF EXISTS {qualified(db, obj.name)}"


def create(conn: Any, obj: SchemaObject, target_db: str, definer: str | None) -> None:
    """Run the object's CREATE in ``target_db`` under the settings it was made with, sent
    in its own client charset (so a latin1 body keeps its bytes), then put the session
    back the way the store set it up."""
    charset = str(obj.settings["character_set_client"])
    encoding = pymysql.charset.charset_by_name(charset).encoding
    sql = obj.ddl(target_db, definer).encode(encoding)
    with conn.cursor() as cur:
        cur.execute("SELECT @@SESSION.sql_mode, @@SESSION.time_zone,"
                    " @@SESSION.character_set_client, @@SESSION.collation_connection")
        saved = cur.fetchone()
        conn.select_db(target_db)
        try:
            cur.execute("SET SESSION sql_mode = %s, time_zone = %s",
                        (obj.settings.get("sql_mode", saved[0]),
                         obj.settings.get("time_zone", saved[1])))
            cur.execute("SET SESSION character_set_client = %s, collation_connection = %s",
                        (charset, obj.settings["collation_connection"]))
            cur.execute(sql)
        finally:
            cur.execute("SET SESSION character_set_client = %s, collation_connection = %s,"
                        " sql_mode = %s, time_zone = %s", (saved[2], saved[3], saved[0],
                                                           saved[1]))
