"""Catch-up (`sync`) and the write freeze for MySQL, against the real MariaDB servers of
``mysql_env``: records named by ``records()`` are fetched and deleted exactly (composite,
binary, latin1 and case-insensitive keys; identical rows of a keyless table), a resumed
importer clears nothing, ``SET GLOBAL read_only`` holds a normal account's writes, and
through the command line a copy made under live writes converges with `sync`, and a
target changed behind our back is repaired by `sync` alone. Every final comparison reads
both servers here, row by row, independently of the tool."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql
import pymysql.converters
import pytest

from fixtures import mysql_data
from migrator.config import Endpoint
from migrator.engine.sync import sync_unit
from migrator.errors import EndpointError, StoreError
from migrator.stores.base import StoreOptions, Unit
from migrator.stores.mysql.store import MySQLStore
from tests.livewrites import copy_units, record_map, run_while_writing

ROOT = Path(__file__).resolve().parents[1]
DB = "oimsync_mysql"
_RAW = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


class Servers:
    """Connections to both servers (raw: values come back as the server's bytes)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def connect(self, side: str, user: str | None = None, password: str | None = None,
                raw: bool = True) -> Any:
        host, port = hostport(self.env[f"OIM_MYSQL_{side}_URL"]).split(":")
        extra: dict[str, Any] = {"conv": _RAW, "use_unicode": False} if raw else {}
        return pymysql.connect(
            host=host, port=int(port), user=user or self.env[f"OIM_MYSQL_{side}_USER"],
            password=self.env[f"OIM_MYSQL_{side}_PASSWORD"] if password is None else password,
            autocommit=True, charset="utf8mb4",
            init_command="SET time_zone = '+00:00'" + (", character_set_results = binary"
                                                       if raw else ""), **extra)

    def sql(self, side: str, query: str, args: Any = None) -> list[tuple]:
        conn = self.connect(side)
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def url(self, side: str, db: str = "") -> str:
        return (f"mysql://${{OIM_MYSQL_{side}_USER}}:${{OIM_MYSQL_{side}_PASSWORD}}@"
                + hostport(self.env[f"OIM_MYSQL_{side}_URL"]) + (f"/{db}" if db else ""))

    def store(self, side: str, db: str = "", **options: Any) -> MySQLStore:
        store = MySQLStore(Endpoint("mysql", self.url(side, db), name=f"{side.lower()}.mysql"),
                           options=StoreOptions(**options))
        store.open()
        return store

    def drop(self) -> None:
        for side in ("SRC", "DST"):
            self.sql(side, f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture
def servers(mysql_env: dict[str, str]) -> Any:
    s = Servers(mysql_env)
    s.drop()
    yield s
    s.drop()


def table_rows(servers: Servers, side: str, table: str) -> list[tuple]:
    """Every stored column of every row, as bytes, sorted (duplicates kept)."""
    columns = [r[0].decode() for r in servers.sql(
        side, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
        " AND TABLE_NAME = %s AND COALESCE(GENERATION_EXPRESSION, '') = ''"
        " ORDER BY ORDINAL_POSITION",
        (DB, table))]
    assert columns, f"{side}: no table {DB}.{table}"
    rows = servers.sql(side, f"SELECT {', '.join(f'`{c}`' for c in columns)}"
                             f" FROM {DB}.`{table}`")
    return sorted(rows, key=lambda r: [(v is None, v or b"") for v in r])


def assert_same_tables(servers: Servers) -> None:
    """Row by row, independent of the tool: no row missing, none left over, none twice
    (a keyless table compares as a multiset), and the same count on both sides."""
    tables = sorted(r[0].decode() for r in servers.sql(
        "SRC", "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
        " AND TABLE_TYPE = 'BASE TABLE'", (DB,)))
    assert tables
    for table in tables:
        src, dst = table_rows(servers, "SRC", table), table_rows(servers, "DST", table)
        count = f"SELECT COUNT(*) FROM {DB}.`{table}`"
        assert servers.sql("DST", count) == servers.sql("SRC", count), table
        if src != dst:
            s, d = Counter(src), Counter(dst)
            pytest.fail(f"{table}: missing on target {list((s - d).elements())[:3]},"
                        f" left over {list((d - s).elements())[:3]}")






# Keys a byte-exact fetch must tell apart: case and trailing spaces equal under the
# table's utf8mb4_general_ci, backslashes and \x.. look-alikes, latin1 bytes that are not
# UTF-8, binary bytes, emoji.
KEYED = (f"CREATE TABLE {DB}.k (a VARCHAR(10) NOT NULL, b VARBINARY(4) NOT NULL,"
         " l VARCHAR(5) CHARACTER SET latin1 NOT NULL, v TEXT, PRIMARY KEY (a, b, l))"
         " DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_general_ci")
KEYED_ROWS = [("a", b"\x00", "é", "1"), ("b\\x", b"\xff\\", "a", "2"), ("c", b"", "ÿ", None),
              ("Zz", b"1", "\\xe9", "4"), ("😀", b"2", "x", "5"), ("q", b"3", "y", "6"),
              ("tab\t", b"\n", "", "7")]


def make_keyed(servers: Servers) -> None:
    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", KEYED)
    conn = servers.connect("SRC", raw=False)
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {DB}.k VALUES (%s, %s, %s, %s)", KEYED_ROWS)
    conn.close()


# ------------------------------------------------------------------ fetch and delete
def test_fetch_returns_exactly_the_rows_records_named(servers):
    make_keyed(servers)
    source = servers.store("SRC", DB, chunk_records=3)
    [unit] = source.list_units()
    named = record_map(source, unit)
    assert len(named) == len(KEYED_ROWS)
    for key in named:  # each name alone brings back its own row, byte for byte
        batch = source.fetch(unit, [key])
        assert len(batch.records) == 1
        [row] = batch.records
        assert source.fetch(unit, [key]).records == [row]
        assert names_of_rows(source, unit, batch.records) == [key]
    gone = '["A ", "0x00", "\\\\xe9"]'  # 'a' in another case with a trailing space
    batch = source.fetch(unit, [*named, gone, '["nobody", "0x", "x"]'])
    assert len(batch.records) == len(KEYED_ROWS)  # absent keys are simply absent
    assert [c for c, _ in batch.columns] == ["a", "b", "l", "v"]
    assert batch.nbytes == sum(len(v) for r in batch.records for v in r if v is not None)
    source.close()


def names_of_rows(store: MySQLStore, unit: Unit, rows: list[tuple]) -> list[str]:
    """The names ``records`` gives these rows (their key columns are the first three)."""
    from migrator.stores.mysql.schema import key_text
    meta = store._table(DB, unit.spec["table"])
    key = [meta.column(n) for n in unit.spec["key"]]
    return [key_text(key, tuple(r[:len(key)])) for r in rows]


@pytest.mark.parametrize("bad", ['["a", "0x00"]', '["a", "00", "x"]', '["a", "0xZZ", "x"]',
                                 "a", '["a", "0x00", "\\\\q"]'])
def test_a_name_the_key_could_not_have_printed_is_refused(servers, bad):
    make_keyed(servers)
    source = servers.store("SRC", DB)
    [unit] = source.list_units()
    with pytest.raises(StoreError, match=f"{DB}.k: .* is not a key of \\(a, b, l\\)"):
        source.fetch(unit, [bad])
    source.close()


def test_fetch_is_one_statement_per_slice_not_one_per_key(servers):
    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", f"CREATE TABLE {DB}.many (id INT PRIMARY KEY, v VARCHAR(20))")
    servers.sql("SRC", f"INSERT INTO {DB}.many VALUES "
                + ", ".join(f"({i}, 'v{i}')" for i in range(1, 1501)))
    source = servers.store("SRC", DB)
    [unit] = source.list_units()
    keys = [str(i) for i in range(1, 1201)]
    selects = "SHOW GLOBAL STATUS LIKE 'Com_select'"
    before = int(servers.sql("SRC", selects)[0][1])
    batch = source.fetch(unit, keys)
    after = int(servers.sql("SRC", selects)[0][1])
    assert sorted(int(r[0]) for r in batch.records) == list(range(1, 1201))
    # 3 slices of 500 keys, plus the live table definition (4 information_schema reads)
    assert after - before <= 10, after - before
    source.close()


def test_sync_makes_keys_a_collation_calls_equal_byte_exact(servers):
    make_keyed(servers)
    source = servers.store("SRC", DB, chunk_records=3)
    target = servers.store("DST")
    units = source.list_units()
    copy_units(source, target, units)
    target_ops = [
        f"UPDATE {DB}.k SET a = 'A ' WHERE a = 'a'",  # the same key to the server
        f"UPDATE {DB}.k SET l = 'Y' WHERE a = 'q'",  # likewise, in latin1
        f"UPDATE {DB}.k SET v = 'changed' WHERE a = '😀'",
        f"DELETE FROM {DB}.k WHERE a = 'c'",
        f"INSERT INTO {DB}.k VALUES ('extra', 'e', 'e', 'only here')",
    ]
    for query in target_ops:
        servers.sql("DST", query)
    reports = [sync_unit(source, target, u) for u in units]
    assert sum(r.copied for r in reports) == 4 and sum(r.deleted for r in reports) == 3
    assert_same_tables(servers)
    assert all(sync_unit(source, target, u).changed == 0 for u in units)
    source.close()
    target.close()


def test_a_keyless_table_has_its_groups_of_identical_rows_replaced_whole(servers):
    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", f"CREATE TABLE {DB}.logins (u VARCHAR(10), at DATETIME(3), ip VARBINARY(4))")
    servers.sql("SRC", f"INSERT INTO {DB}.logins VALUES ('x', '2024-01-01', X'0a000001'),"
                       " ('x', '2024-01-01', X'0a000001'), ('x', '2024-01-01', X'0a000001'),"
                       " ('y', NULL, ''), ('z', '2024-02-02 10:00:00.5', NULL)")
    source = servers.store("SRC", DB)
    target = servers.store("DST")
    [unit] = source.list_units()
    assert unit.spec["resumable"] is False
    copy_units(source, target, [unit])
    servers.sql("DST", f"DELETE FROM {DB}.logins WHERE u = 'x' LIMIT 1")  # a lost duplicate
    servers.sql("DST", f"INSERT INTO {DB}.logins VALUES ('y', NULL, '')")  # a gained one
    servers.sql("DST", f"UPDATE {DB}.logins SET ip = X'00' WHERE u = 'z'")  # changed
    servers.sql("DST", f"INSERT INTO {DB}.logins VALUES ('w', NULL, NULL)")  # only here
    report = sync_unit(source, target, unit)
    # groups x (3 rows), y (1 row) and z (1 row) re-copied; w and the changed z removed
    assert (report.copied, report.deleted) == (5, 2)
    assert_same_tables(servers)
    assert sync_unit(source, target, unit).changed == 0
    # delete() on its own removes whole groups, and nothing else
    digest = next(k for k, n in record_map(target, unit).items() if n == 3)
    target.delete(unit, [digest])
    assert servers.sql("DST", f"SELECT u, COUNT(*) FROM {DB}.logins GROUP BY u ORDER BY u") \
        == [(b"y", b"1"), (b"z", b"1")]
    source.close()
    target.close()


def test_a_resumed_importer_clears_nothing(servers):
    make_keyed(servers)
    servers.sql("SRC", f"CREATE TABLE {DB}.nokey (v INT)")
    servers.sql("SRC", f"INSERT INTO {DB}.nokey VALUES (1), (1), (2)")
    source = servers.store("SRC", DB)
    target = MySQLStore(Endpoint("mysql", servers.url("DST"), name="dst.mysql"),
                        options=StoreOptions(on_existing="overwrite"))
    target.open()
    units = source.list_units()
    copy_units(source, target, units)
    before = {t: table_rows(servers, "DST", t) for t in ("k", "nokey")}
    for unit in units:
        importer = target.importer(unit)
        importer.prepare(resumed=True)  # neither TRUNCATE (keyless) nor overwrite's DELETE
        importer.finalize()
    assert {t: table_rows(servers, "DST", t) for t in ("k", "nokey")} == before
    importer = target.importer(next(u for u in units if u.spec["table"] == "nokey"))
    importer.prepare(resumed=False)  # what the engine does for a keyless unit: restart
    importer.finalize()
    assert servers.sql("DST", f"SELECT COUNT(*) FROM {DB}.nokey") == [(b"0",)]
    source.close()
    target.close()


def test_delete_ignores_what_is_gone_and_does_not_cascade(servers):
    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", f"CREATE TABLE {DB}.parent (id INT PRIMARY KEY) ENGINE=InnoDB")
    servers.sql("SRC", f"CREATE TABLE {DB}.child (id INT PRIMARY KEY, p INT, FOREIGN KEY (p)"
                       f" REFERENCES {DB}.parent (id) ON DELETE CASCADE) ENGINE=InnoDB")
    servers.sql("SRC", f"INSERT INTO {DB}.parent VALUES (1), (2)")
    servers.sql("SRC", f"INSERT INTO {DB}.child VALUES (10, 1), (20, 2)")
    source = servers.store("SRC", DB)
    target = servers.store("DST")
    units = source.list_units()
    copy_units(source, target, units)
    parent = next(u for u in units if u.spec["table"] == "parent")
    target.delete(parent, ["1", "3"])  # 3 never existed
    assert servers.sql("DST", f"SELECT id FROM {DB}.parent") == [(b"2",)]
    # the child row stays: the source decides about it (its own unit), not a cascade
    assert servers.sql("DST", f"SELECT id FROM {DB}.child ORDER BY id") == [(b"10",), (b"20",)]
    servers.sql("DST", f"DROP TABLE {DB}.child")
    servers.sql("DST", f"DROP TABLE {DB}.parent")
    target.delete(parent, ["2"])  # no table: nothing to delete
    source.close()
    target.close()


# ------------------------------------------------------------------ write freeze
@pytest.fixture
def writer_account(servers):
    """A normal application account (no admin privilege) on the source."""
    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", f"CREATE TABLE {DB}.w (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    servers.sql("SRC", "CREATE OR REPLACE USER 'oim_app'@'%' IDENTIFIED BY 'app-secret'")
    servers.sql("SRC", f"GRANT SELECT, INSERT, UPDATE, DELETE ON {DB}.* TO 'oim_app'@'%'")
    yield lambda: servers.connect("SRC", "oim_app", "app-secret")
    servers.sql("SRC", "SET GLOBAL read_only = OFF")
    servers.sql("SRC", "DROP USER IF EXISTS 'oim_app'@'%'")


def reader_store(servers: Servers) -> MySQLStore:
    url = ("mysql://${OIM_MYSQL_SRC_READER_USER}:${OIM_MYSQL_SRC_READER_PASSWORD}@"
           + hostport(servers.env["OIM_MYSQL_SRC_URL"]) + f"/{DB}")
    store = MySQLStore(Endpoint("mysql", url, name="source.mysql"))
    store.open()
    return store


def insert(connect: Any) -> None:
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {DB}.w (v) VALUES (1)")
    finally:
        conn.close()


def test_freeze_check_reads_the_grants_and_names_the_missing_privilege(servers, writer_account):
    reader = reader_store(servers)
    reason = reader.freeze_check()
    assert reason is not None
    assert "reader@" in reason and "READ_ONLY ADMIN" in reason and "SELECT" in reason
    with pytest.raises(EndpointError, match="cannot SET GLOBAL read_only = ON") as info:
        reader.freeze(30)
    assert "READ_ONLY ADMIN" in str(info.value)
    assert servers.sql("SRC", "SELECT @@GLOBAL.read_only") == [(b"0",)]  # changed nothing
    root = servers.store("SRC", DB)
    assert root.freeze_check() is None
    assert servers.sql("SRC", "SELECT @@GLOBAL.read_only") == [(b"0",)]
    reader.close()
    root.close()


def test_freeze_holds_a_normal_accounts_writes_until_unfreeze(servers, writer_account):
    store = servers.store("SRC", DB)
    insert(writer_account)
    said = store.freeze(120)
    try:
        assert servers.sql("SRC", "SELECT @@GLOBAL.read_only") == [(b"1",)]
        # MariaDB: READ_ONLY ADMIN holders (root here) still write; the text says so
        assert "READ_ONLY ADMIN" in said and "'root'@" in said and "still" in said
        with pytest.raises(pymysql.OperationalError) as info:
            insert(writer_account)
        assert info.value.args[0] == 1290  # --read-only
        assert list(store.fetch(store.list_units()[0], ["1"]).records)  # reads go on
    finally:
        store.unfreeze()
    insert(writer_account)
    assert servers.sql("SRC", f"SELECT COUNT(*) FROM {DB}.w") == [(b"2",)]
    store.unfreeze()  # harmless when nothing is held
    store.close()


def test_freeze_lapses_after_its_limit_and_respects_a_read_only_server(servers, writer_account):
    store = servers.store("SRC", DB)
    store.freeze(1.0)
    deadline = time.monotonic() + 30
    while servers.sql("SRC", "SELECT @@GLOBAL.read_only") != [(b"0",)]:
        assert time.monotonic() < deadline, "the freeze did not lapse"
        time.sleep(0.2)
    insert(writer_account)
    servers.sql("SRC", "SET GLOBAL read_only = ON")  # a server that is read-only already
    said = store.freeze(60)
    assert "already" in said
    store.unfreeze()
    assert servers.sql("SRC", "SELECT @@GLOBAL.read_only") == [(b"1",)]  # left as found
    store.close()


# ------------------------------------------------------------------ through the CLI
def load_fixture(servers: Servers, scale: float) -> None:
    mysql_data.load(Endpoint("mysql", servers.url("SRC", DB), name="fixture"), seed=5,
                    scale=scale)


def plan_args(servers: Servers) -> list[str]:
    return ["--source", f"mysql={servers.url('SRC', DB)}", "--target",
            f"mysql={servers.url('DST')}"]


class Writer(threading.Thread):
    """Changes, adds and deletes source rows until told to stop: a composite-key table
    (friends), binary and utf8mb4 values (type_zoo), identical rows of a keyless table
    (user_login_records) and chat_logs."""

    def __init__(self, servers: Servers, seed: int) -> None:
        super().__init__(name="mysql-writer", daemon=True)
        self.conn = servers.connect("SRC", raw=False)
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.done: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"USE {DB}")
                while not self.halt.is_set():
                    self.step(cur)
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.conn.close()

    def one(self, cur: Any, query: str) -> tuple | None:
        cur.execute(query + " ORDER BY RAND() LIMIT 1")
        return cur.fetchone()

    def step(self, cur: Any) -> None:
        rng = self.rng
        table = rng.choice(["friends", "type_zoo", "user_login_records", "chat_logs"])
        op = rng.choice(["insert", "update", "delete"])
        emoji = rng.choice(mysql_data.EMOJI)
        if table == "friends":
            row = self.one(cur, "SELECT owner_user_id, friend_user_id FROM friends")
            if op == "insert" or row is None:
                cur.execute("INSERT IGNORE INTO friends (owner_user_id, friend_user_id, remark)"
                            " VALUES (%s, %s, %s)", (f"u{rng.randrange(10**9):09d}",
                                                     f"w{rng.randrange(10**6)}", emoji))
            elif op == "update":
                cur.execute("UPDATE friends SET remark = %s WHERE owner_user_id = %s AND"
                            " friend_user_id = %s", (f"{emoji} tab\there", *row))
            else:
                cur.execute("DELETE FROM friends WHERE owner_user_id = %s AND"
                            " friend_user_id = %s", row)
        elif table == "type_zoo":
            row = self.one(cur, "SELECT id FROM type_zoo")
            if op == "insert" or row is None:
                cur.execute("INSERT INTO type_zoo (t_varbinary, t_blob, t_text, t_latin1)"
                            " VALUES (%s, %s, %s, %s)", (rng.randbytes(16), rng.randbytes(300),
                                                         emoji * 3 + "\\N", "café"))
            elif op == "update":
                cur.execute("UPDATE type_zoo SET t_blob = %s, t_mediumtext = %s,"
                            " t_binary = %s WHERE id = %s",
                            (b"\x00\\\t\n" + rng.randbytes(40), emoji, rng.randbytes(8), row[0]))
            else:
                cur.execute("DELETE FROM type_zoo WHERE id = %s", row)
        elif table == "user_login_records":
            if op == "insert":  # an identical copy of a row: a duplicate to carry over
                cur.execute("INSERT INTO user_login_records SELECT * FROM user_login_records"
                            " ORDER BY RAND() LIMIT 1")
            elif op == "update":
                cur.execute("UPDATE user_login_records SET ip = %s ORDER BY RAND() LIMIT 1",
                            (f"10.9.{rng.randrange(256)}.{rng.randrange(256)}",))
            else:
                cur.execute("DELETE FROM user_login_records ORDER BY RAND() LIMIT 1")
        else:
            row = self.one(cur, "SELECT server_msg_id FROM chat_logs")
            if op == "insert" or row is None:
                cur.execute("INSERT INTO chat_logs (server_msg_id, content, send_time) VALUES"
                            " (%s, %s, NOW(3))", (f"live-{rng.randrange(10**12):012d}",
                                                  f'{{"content": "{emoji}"}}'))
            elif op == "update":
                cur.execute("UPDATE chat_logs SET status = status + 1, content = %s WHERE"
                            " server_msg_id = %s", (emoji, row[0]))
            else:
                cur.execute("DELETE FROM chat_logs WHERE server_msg_id = %s", row)
        self.done[op] += 1
        self.done[table] += 1


def test_live_writes_during_a_rate_limited_run_converge_with_sync(servers, tmp_path):
    load_fixture(servers, scale=0.5)
    plan = tmp_path / "mysql.yaml"
    out = cli("plan", *plan_args(servers), "--unit-records", "400", "--chunk-records", "100",
              "--batch-records", "50", "--rate-limit", "100KiB", "-o", str(plan))
    assert out.returncode == 0, out.stderr + out.stdout
    writer = Writer(servers, seed=3)
    run_while_writing(plan, writer, timeout=600)
    assert all(writer.done[k] >= 5 for k in ("insert", "update", "delete", "friends",
                                             "type_zoo", "user_login_records")), writer.done

    synced = cli("sync", str(plan), "--until-stable", "--json")
    assert synced.returncode == 0, synced.stderr + synced.stdout
    passes = json.loads(synced.stdout)["passes"]
    first = passes[0]["units"]
    assert sum(u["copied"] for u in first) > 0 and sum(u["deleted"] for u in first) > 0
    assert passes[-1]["changed"] == 0
    verified = cli("verify", str(plan), "--json")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert_same_tables(servers)

    # EQUAL is a promise: a change after the sync is seen again, by name.
    [(changed,)] = servers.sql("SRC", f"SELECT MAX(id) FROM {DB}.type_zoo")
    servers.sql("SRC", f"UPDATE {DB}.type_zoo SET t_blob = X'00' WHERE id = %s", (changed,))
    again = cli("verify", str(plan), "--json")
    assert again.returncode == 5, again.stderr + again.stdout
    assert [k for u in json.loads(again.stdout)["units"] for k in u["differ"]] \
        == [changed.decode()]


def test_sync_alone_repairs_deleted_changed_and_extra_rows_on_the_target(servers, tmp_path):
    load_fixture(servers, scale=0.2)
    plan = tmp_path / "mysql.yaml"
    out = cli("plan", *plan_args(servers), "--chunk-records", "50", "-o", str(plan))
    assert out.returncode == 0, out.stderr + out.stdout
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout

    [owner, friend] = servers.sql("DST", f"SELECT owner_user_id, friend_user_id FROM"
                                         f" {DB}.friends ORDER BY 1, 2 LIMIT 1 OFFSET 7")[0]
    servers.sql("DST", f"DELETE FROM {DB}.friends WHERE owner_user_id = %s AND"
                       " friend_user_id = %s", (owner, friend))
    [(zoo,)] = servers.sql("DST", f"SELECT MIN(id) FROM {DB}.type_zoo")
    servers.sql("DST", f"UPDATE {DB}.type_zoo SET t_varchar = 'not 😀' WHERE id = %s", (zoo,))
    servers.sql("DST", f"INSERT INTO {DB}.users (user_id, name) VALUES ('zz-extra', 'stray')")
    servers.sql("DST", f"DELETE FROM {DB}.user_login_records ORDER BY user_id LIMIT 1")
    verified = cli("verify", str(plan), "--json")
    assert verified.returncode == 5, verified.stderr + verified.stdout
    units = {u["unit"]: u for u in json.loads(verified.stdout)["units"]
             if u["status"] == "differ"}
    friend_key = json.dumps([owner.decode(), friend.decode()], ensure_ascii=False)
    assert units[f"mysql:{DB}.friends"]["missing_on_target"] == [friend_key]
    assert units[f"mysql:{DB}.type_zoo"]["differ"] == [zoo.decode()]
    assert units[f"mysql:{DB}.users"]["missing_on_source"] == ["zz-extra"]
    assert f"mysql:{DB}.user_login_records" in units
    assert "sync" in verified.stdout + verified.stderr  # the hint says how to repair

    synced = cli("sync", str(plan), "--json")
    assert synced.returncode == 0, synced.stderr + synced.stdout
    done = {u["unit"]: u for u in json.loads(synced.stdout)["passes"][0]["units"]}
    assert done[f"mysql:{DB}.friends"]["copied"] == 1
    assert done[f"mysql:{DB}.type_zoo"]["copied"] == 1
    assert done[f"mysql:{DB}.users"]["deleted"] == 1
    assert done[f"mysql:{DB}.user_login_records"]["copied"] >= 1
    again = cli("verify", str(plan), "--json")
    assert again.returncode == 0, again.stderr + again.stdout
    assert_same_tables(servers)


def test_sync_does_not_fire_the_targets_triggers_and_leaves_them_in_place(servers, tmp_path):
    load_fixture(servers, scale=0.2)
    mysql_data.add_objects(Endpoint("mysql", servers.url("SRC", DB), name="fixture"))
    # not idempotent: fired again on the target, a re-copied row would never converge
    servers.sql("SRC", f"CREATE TRIGGER {DB}.users_stamp BEFORE INSERT ON {DB}.users FOR EACH"
                       " ROW SET NEW.app_manger_level = NEW.app_manger_level + 10")
    plan = tmp_path / "mysql.yaml"
    out = cli("plan", *plan_args(servers), "-o", str(plan))
    assert out.returncode == 0, out.stderr + out.stdout
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    triggers = ("SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS"
                " WHERE TRIGGER_SCHEMA = %s ORDER BY 1")
    assert len(servers.sql("DST", triggers, (DB,))) == 3
    servers.sql("SRC", f"INSERT INTO {DB}.users (user_id, name, app_manger_level) VALUES"
                       " ('zz-new', ' new ', 1)")  # stamped and audited on the source
    servers.sql("SRC", f"UPDATE {DB}.users SET name = CONCAT(name, ' x') ORDER BY user_id"
                       " LIMIT 3")
    servers.sql("DST", f"DELETE FROM {DB}.users ORDER BY user_id DESC LIMIT 1")  # re-inserted
    synced = cli("sync", str(plan), "--json")  # one pass: nothing left for a second one
    assert synced.returncode == 0, synced.stderr + synced.stdout
    changed = {u["unit"]: u["copied"] for u in json.loads(synced.stdout)["passes"][0]["units"]}
    assert changed[f"mysql:{DB}.users"] == 5 and changed[f"mysql:{DB}.user_audit"] == 1
    verified = cli("verify", str(plan), "--json")  # also compares the triggers themselves
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert_same_tables(servers)
    assert servers.sql("DST", triggers, (DB,)) == servers.sql("SRC", triggers, (DB,))


def test_triggers_held_by_a_process_that_died_are_put_back_by_the_next_one(servers):
    load_fixture(servers, scale=0.1)
    mysql_data.add_objects(Endpoint("mysql", servers.url("SRC", DB), name="fixture"))
    source = servers.store("SRC", DB)
    target = servers.store("DST")
    copy_units(source, target, source.list_units())
    triggers = (f"SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA"
                f" = '{DB}' AND EVENT_OBJECT_TABLE = 'users' ORDER BY ACTION_TIMING, 1")
    before = servers.sql("DST", triggers)
    assert len(before) == 2
    cache: dict[str, str] = {}  # the journal's mapping, shared by the processes below
    holder = MySQLStore(Endpoint("mysql", servers.url("DST"), name="dst.mysql"))
    holder.use_cache(cache)
    holder.open()
    holder.hold_triggers(DB, "users")
    assert servers.sql("DST", triggers) == [] and len(cache) == 1
    # another process (a verify next to a running sync) leaves them to their holder
    other = MySQLStore(Endpoint("mysql", servers.url("DST"), name="dst.mysql"))
    other.use_cache(cache)
    other.open()
    other.close()
    assert servers.sql("DST", triggers) == []
    # the holder dies without close(): the next process puts them back
    gone = subprocess.Popen(["true"])
    gone.wait()
    cache.update({k: json.dumps({**json.loads(v), "pid": gone.pid}) for k, v in cache.items()})
    holder._held.clear()
    after = MySQLStore(Endpoint("mysql", servers.url("DST"), name="dst.mysql"))
    after.use_cache(cache)
    after.open()
    assert servers.sql("DST", triggers) == before and cache == {}
    for store in (source, target, holder, after):
        store.close()


# ------------------------------------------------------------------ following the binlog
OTHER_DB = "oimsync_mysql_other"


def reader_url(servers: Servers) -> str:
    return ("mysql://${OIM_MYSQL_SRC_READER_USER}:${OIM_MYSQL_SRC_READER_PASSWORD}@"
            + hostport(servers.env["OIM_MYSQL_SRC_URL"]) + f"/{DB}")


def followed_plan(servers: Servers, tmp_path: Path, *extra: str, source: str = "") -> Path:
    plan = tmp_path / "followed.yaml"
    out = cli("plan", "--source", f"mysql={source or reader_url(servers)}", "--target",
              f"mysql={servers.url('DST')}", "--chunk-records", "40", *extra, "-o", str(plan))
    assert out.returncode == 0, out.stderr + out.stdout
    run = cli("run", str(plan), "--no-verify")
    assert run.returncode == 0, run.stderr + run.stdout
    return plan


def dump_threads(servers: Servers) -> list[int]:
    """The server threads streaming the binlog to a replica (our feed)."""
    return [int(r[0]) for r in servers.sql(
        "SRC", "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE"
        " 'Binlog Dump%'")]


@pytest.fixture
def other_db(servers):
    servers.sql("SRC", f"DROP DATABASE IF EXISTS {OTHER_DB}")
    yield OTHER_DB
    servers.sql("SRC", f"DROP DATABASE IF EXISTS {OTHER_DB}")


def test_later_passes_follow_the_binlog_and_compare_only_the_rows_it_named(
        servers, tmp_path, other_db):
    """Through the read-only account: the first pass digests every chunk, later ones take
    only the rows the binlog named (inserted, updated, deleted, a key moved from one range
    unit to another), each in the unit whose key range holds it; rows of a table the plan
    leaves out, or of another database, are not followed."""
    from migrator.engine import operations
    from migrator.engine.sync import FOLLOWING
    from migrator.plan import load_plan

    servers.sql("SRC", f"CREATE DATABASE {DB}")
    for table, rows in (("big", 300), ("small", 20), ("skipped", 10)):
        servers.sql("SRC", f"CREATE TABLE {DB}.{table} (id INT PRIMARY KEY, v VARCHAR(20))")
        servers.sql("SRC", f"INSERT INTO {DB}.{table} VALUES "
                    + ", ".join(f"({i}, 'v{i}')" for i in range(1, rows + 1)))
    servers.sql("SRC", f"CREATE DATABASE {other_db}")
    servers.sql("SRC", f"CREATE TABLE {other_db}.t (id INT PRIMARY KEY)")
    plan_path = followed_plan(servers, tmp_path, "--unit-records", "100",
                              "--exclude", f"mysql={DB}.skipped")
    plan = load_plan(plan_path)
    assert sorted(u.name for u in plan.inventory) == [
        f"{DB}.big#0000", f"{DB}.big#0001", f"{DB}.big#0002", f"{DB}.small"]
    with operations.catching_up(plan, plan_path, follow=True) as catch:
        assert catch.methods == {"mysql": FOLLOWING}, catch.notes
        first = catch.run_pass()
        assert first.changed == 0 and all(u.followed is None for u in first.units)
        assert len(dump_threads(servers)) == 1
        for query in (f"UPDATE {DB}.big SET v = 'changed' WHERE id = 150",
                      f"DELETE FROM {DB}.big WHERE id = 250",
                      f"INSERT INTO {DB}.big VALUES (301, 'added')",
                      f"UPDATE {DB}.big SET id = 1000 WHERE id = 5",  # from unit 0 to 2
                      f"INSERT INTO {DB}.small VALUES (21, 'added')",
                      f"UPDATE {DB}.small SET v = 'tmp' WHERE id = 2",
                      f"UPDATE {DB}.small SET v = 'v2' WHERE id = 2",  # named, yet equal
                      f"UPDATE {DB}.skipped SET v = 'not followed'",
                      f"INSERT INTO {other_db}.t VALUES (1)"):
            servers.sql("SRC", query)
        second = {u.unit.split(":", 1)[1]: u for u in catch.run_pass().units}
        counts = {name: (u.followed, u.copied, u.deleted) for name, u in second.items()}
        assert counts == {f"{DB}.big#0000": (1, 0, 1), f"{DB}.big#0001": (1, 1, 0),
                          f"{DB}.big#0002": (3, 2, 1), f"{DB}.small": (2, 1, 0)}, counts
        assert all(u.proven is not None and not u.error for u in second.values())
        assert second[f"{DB}.small"].proven.records == 21
        third = catch.run_pass()
        assert all((u.followed, u.changed) == (0, 0) for u in third.units), third.units
    assert dump_threads(servers) == []  # closed with the catch-up
    check = cli("verify", str(plan_path), "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    servers.sql("SRC", f"DROP TABLE {DB}.skipped")
    assert_same_tables(servers)


def test_ddl_a_keyless_change_or_a_lost_binlog_connection_go_back_to_digests(servers,
                                                                            tmp_path):
    from migrator.engine import operations
    from migrator.engine.sync import DIGESTS, FOLLOWING
    from migrator.plan import load_plan

    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", f"CREATE TABLE {DB}.k (id INT PRIMARY KEY, v VARCHAR(20))")
    servers.sql("SRC", f"CREATE TABLE {DB}.nk (v VARCHAR(20))")
    servers.sql("SRC", f"INSERT INTO {DB}.k VALUES " + ", ".join(f"({i}, 'v')"
                                                              for i in range(1, 101)))
    servers.sql("SRC", f"INSERT INTO {DB}.nk VALUES ('a'), ('a'), ('b')")
    plan_path = followed_plan(servers, tmp_path)
    plan = load_plan(plan_path)

    def one_pass(catch: Any) -> dict[str, Any]:
        return {u.unit.rsplit(".", 1)[1]: u for u in catch.run_pass().units}

    with operations.catching_up(plan, plan_path, follow=True) as catch:
        assert catch.methods == {"mysql": FOLLOWING}, catch.notes
        one_pass(catch)
        servers.sql("SRC", f"INSERT INTO {DB}.nk VALUES ('a')")  # rows without a name
        keyless = one_pass(catch)
        assert [u.followed for u in keyless.values()] == [None, None]
        # the group of identical rows is copied again whole (the importer replaces it)
        assert (keyless["nk"].copied, keyless["nk"].deleted) == (3, 0)
        assert any("digests every chunk" in note for note in catch.notes), catch.notes
        servers.sql("SRC", f"INSERT INTO {DB}.k VALUES (101, 'after')")
        again = one_pass(catch)
        assert (again["k"].followed, again["k"].copied) == (1, 1)  # followed again
        assert again["nk"].followed == 0
        servers.sql("SRC", f"TRUNCATE TABLE {DB}.k")  # DDL: no row events at all
        truncated = one_pass(catch)
        assert truncated["k"].followed is None and truncated["k"].deleted == 101
        assert catch.methods == {"mysql": FOLLOWING}
        [thread] = dump_threads(servers)
        servers.sql("SRC", f"KILL {thread}")
        servers.sql("SRC", f"INSERT INTO {DB}.k VALUES (7, 'after the kill')")
        lost = one_pass(catch)
        assert lost["k"].followed is None and lost["k"].copied == 1
        assert catch.methods == {"mysql": DIGESTS}
        assert any("binlog connection was lost" in note for note in catch.notes), catch.notes
    assert dump_threads(servers) == []
    check = cli("verify", str(plan_path), "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert_same_tables(servers)


@pytest.mark.parametrize("grants, missing", [
    ("SELECT, SHOW VIEW", "GRANT BINLOG MONITOR"),
    ("SELECT, SHOW VIEW, BINLOG MONITOR", "GRANT REPLICATION SLAVE, BINLOG MONITOR")])
def test_an_account_that_may_not_follow_is_told_why_and_sync_digests(servers, tmp_path,
                                                                    monkeypatch, grants,
                                                                    missing):
    servers.sql("SRC", f"CREATE DATABASE {DB}")
    servers.sql("SRC", f"CREATE TABLE {DB}.k (id INT PRIMARY KEY, v VARCHAR(20))")
    servers.sql("SRC", f"INSERT INTO {DB}.k VALUES (1, 'a'), (2, 'b')")
    servers.sql("SRC", "CREATE OR REPLACE USER 'oim_nofollow'@'%' IDENTIFIED BY 'nf-secret'")
    servers.sql("SRC", f"GRANT {grants} ON *.* TO 'oim_nofollow'@'%'")
    try:
        monkeypatch.setenv("OIM_NOFOLLOW_PASSWORD", "nf-secret")
        source = ("mysql://oim_nofollow:${OIM_NOFOLLOW_PASSWORD}@"
                  + hostport(servers.env["OIM_MYSQL_SRC_URL"]) + f"/{DB}")
        plan = followed_plan(servers, tmp_path, source=source)
        servers.sql("SRC", f"INSERT INTO {DB}.k VALUES (3, 'late')")
        out = cli("sync", str(plan), "--until-stable", "--json")
        assert out.returncode == 0, out.stderr + out.stdout
        report = json.loads(out.stdout)
        assert report["method"] == {"mysql": "chunk digests"}, report
        (note,) = report["notes"]
        assert "oim_nofollow" in note and missing in note, note
        assert "nf-secret" not in out.stdout + out.stderr
        assert sum(u["copied"] for p in report["passes"] for u in p["units"]) == 1
        assert report["passes"][-1]["changed"] == 0
        check = cli("verify", str(plan), "--json")
        assert check.returncode == 0, check.stdout + check.stderr
        assert_same_tables(servers)
    finally:
        servers.sql("SRC", "DROP USER IF EXISTS 'oim_nofollow'@'%'")
