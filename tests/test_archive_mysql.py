"""The MySQL archive format against real MariaDB servers (and MinIO for an S3 archive):
backup -> verify against the live source -> restore into an empty server -> verify, for
every column type, a keyless table and views/triggers/routines/events; the set restored
with nothing but ``zstd`` and the ``mariadb`` client; changes after the backup named by
their keys; an encrypted archive on S3.
"""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pymysql
import pymysql.converters
import pyrage
import pytest
import zstandard
from pyrage import x25519

from fixtures import mysql_data
from migrator.archive import Repository, archive_endpoint
from migrator.config import Endpoint
from migrator.engine.backup import Source, archive_as, backup, restore
from migrator.engine.session import Session
from migrator.engine.verify import DIFFER, verify
from migrator.errors import StoreError
from migrator.plan import Options, StorePair
from migrator.stores.base import StoreOptions, Unit
from migrator.stores.mysql import archive as mysql_archive
from migrator.stores.mysql.archive import MySQLArchive, parse_line, row_md5
from migrator.stores.mysql.schema import tsv_line
from migrator.stores.mysql.store import MySQLStore
from tests.test_archive import AGE_MAGIC, ZSTD_MAGIC, minio_client

SRC_DB = "oimtest_archive_mysql"
CLI_DB = "oimtest_archive_mysql_cli"
KEY = x25519.Identity.generate()
ZOO = mysql_data.ZOO_COLUMNS
ENCODERS = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def ports(mysql_env: dict[str, str]) -> dict[str, int]:
    return {"src": _port(mysql_env["OIM_MYSQL_SRC_URL"]),
            "dst": _port(mysql_env["OIM_MYSQL_DST_URL"])}


def src_endpoint(ports: dict[str, int]) -> Endpoint:
    return Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@127.0.0.1:{ports['src']}"
                    f"/{SRC_DB}", name="stores.mysql.source")


def dst_endpoint(ports: dict[str, int], **options: Any) -> Endpoint:
    return Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@127.0.0.1:{ports['dst']}",
                    name="stores.mysql.target", options=options)


def sql(endpoint: Endpoint, query: str, args: Any = None, db: str | None = None) -> list[tuple]:
    """A query over a raw connection (values as the server's bytes, UTC)."""
    info = endpoint.connection()
    conn = pymysql.connect(host=info.host, port=info.port, user=info.username,
                           password=info.password or "", database=db, autocommit=True,
                           charset="utf8mb4", conv=ENCODERS, use_unicode=False,
                           init_command="SET time_zone = '+00:00', character_set_results = binary")
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def fill_source(endpoint: Endpoint) -> dict[str, int]:
    """OpenIM's tables, the type zoo, a keyless table holding two identical rows, two
    empty tables (with and without a key), and one object of every kind."""
    sizes = mysql_data.load(endpoint, seed=11, scale=1.0)
    mysql_data.add_objects(endpoint)
    sql(endpoint, "INSERT INTO user_login_records VALUES ('twin', '2024-01-01 00:00:00.000',"
        " '10.0.0.1', 'dev\\t1', 'iOS'), ('twin', '2024-01-01 00:00:00.000', '10.0.0.1',"
        " 'dev\\t1', 'iOS')", db=SRC_DB)
    sql(endpoint, "CREATE TABLE empty_keyed (id INT PRIMARY KEY, v VARCHAR(8))", db=SRC_DB)
    sql(endpoint, "CREATE TABLE empty_keyless (v VARCHAR(8)) CHARACTER SET latin1", db=SRC_DB)
    return sizes


@pytest.fixture(scope="module")
def loaded(ports: dict[str, int]) -> dict[str, int]:
    return fill_source(src_endpoint(ports))


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("OIM_TEST_ARCHIVE_KEY", str(KEY))


OPTIONS = dict(parallel=2, retries=1, batch_records=150, chunk_records=120, unit_records=900)


def take_backup(archive: Endpoint, ports: dict[str, int]):
    outcome = backup("t", {"mysql": Source(src_endpoint(ports))}, archive, Options(**OPTIONS))
    assert outcome.manifest is not None, [o for o in outcome.copy.outcomes if o.error]
    return outcome


def verify_against_set(archive: Endpoint, ports: dict[str, int], set_id: str):
    """The live source against a set, as a drill or `verify` would."""
    pairs = {"mysql": StorePair("mysql", src_endpoint(ports),
                                archive_as(archive, "mysql", role="target", set_id=set_id))}
    with Session(pairs, Options(**OPTIONS)) as session:
        _, target = session.pair("mysql")
        units = target.list_units()
        return verify(units, session, whole={"mysql": units})


def differing(report) -> dict[str, dict[str, list[str]]]:
    return {u.unit: {"differ": u.differ, "missing_on_target": u.missing_on_target,
                     "missing_on_source": u.missing_on_source, "schema": u.schema}
            for u in report.units if u.status != "match"}


def file_archive(tmp_path: Path, **options: Any) -> Endpoint:
    return archive_endpoint(f"archive+file://{tmp_path}/archive", options)


def s3_archive(env: dict[str, str], **options: Any) -> Endpoint:
    client = minio_client(env)
    bucket = f"archive-mysql-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    host = env["OIM_S3_SRC_URL"].split("://", 1)[1].rstrip("/")
    return archive_endpoint(f"archive+s3://{host}/{bucket}/backups",
                            {"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                             "secret_key": "${OIM_S3_SRC_SECRET_KEY}", **options})


def stored_files(archive: Endpoint, tmp_path: Path, request: Any) -> dict[str, bytes]:
    """Every stored file of an archive, raw, by its path."""
    if archive.url.startswith("archive+file://"):
        root = tmp_path / "archive"
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file()}
    client = minio_client(request.getfixturevalue("s3_env"))
    bucket = archive.url.split("/")[3]
    out = {}
    for obj in client.list_objects(bucket, recursive=True):
        response = client.get_object(bucket, obj.object_name)
        try:
            out[obj.object_name] = response.read()
        finally:
            response.close()
            response.release_conn()
    return out


def zoo_rows(endpoint: Endpoint, db: str) -> list[tuple]:
    cols = ", ".join(f"`{c}`" for c in ZOO)
    return sql(endpoint, f"SELECT {cols} FROM `{db}`.type_zoo ORDER BY id")


def objects_of(endpoint: Endpoint, db: str) -> set[tuple[bytes, bytes]]:
    found = set()
    for query in ("SELECT 'view', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA=%s",
                  "SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS"
                  " WHERE TRIGGER_SCHEMA=%s",
                  "SELECT LOWER(ROUTINE_TYPE), ROUTINE_NAME FROM information_schema.ROUTINES"
                  " WHERE ROUTINE_SCHEMA=%s",
                  "SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE"
                  " EVENT_SCHEMA=%s"):
        found |= set(sql(endpoint, query, (db,)))
    return found


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("where", ["file", "s3+key"])
def test_backup_verify_restore_verify_round_trips_every_type_and_object(
        where, ports, loaded, tmp_path, monkeypatch, request):
    monkeypatch.setattr(MySQLArchive, "file_bytes", 64 << 10)  # several files per unit
    if where == "file":
        archive = file_archive(tmp_path)
    else:
        archive = s3_archive(request.getfixturevalue("s3_env"), key="${OIM_TEST_ARCHIVE_KEY}")
    outcome = take_backup(archive, ports)
    store = outcome.manifest.stores["mysql"]
    assert store.cut is not None and store.cut.snapshot is False
    assert "its own REPEATABLE READ" in store.cut.detail
    names = {f.name for f in store.files}
    assert {"catalog.json", "objects.json", f"{SRC_DB}/database.sql", f"{SRC_DB}/objects.sql",
            f"{SRC_DB}/tables/type_zoo.sql", f"{SRC_DB}/tables/user_login_records.sql"} <= names
    units = store.units
    assert sum(u.records for n, u in units.items() if ".chat_logs" in n) == loaded["chat_logs"]
    assert units[f"{SRC_DB}.user_login_records"].records == loaded["user_login_records"] + 2
    files = [f.name for u in units.values() for f in u.files if f.name.endswith(".tsv")]
    assert any(name.endswith(".001.tsv") for name in files)  # size-capped files
    chat = [u for n, u in units.items() if ".chat_logs#" in n]
    assert len(chat) > 1 and all(len(u.digests) > 1 for u in chat)  # units and chunks
    # every stored file is zstd (age first, with a key); no password in any of them
    stored = stored_files(archive, tmp_path, request)
    encrypted = where != "file"
    secrets = [src_endpoint(ports).connection().password, dst_endpoint(ports).connection(
    ).password, os.environ["OIM_S3_SRC_SECRET_KEY"] if encrypted else None, str(KEY)]
    for name, data in stored.items():
        if name.endswith("config.json"):
            continue
        assert data.startswith(AGE_MAGIC if encrypted else ZSTD_MAGIC), name
        if encrypted:
            data = pyrage.decrypt(data, [KEY])
        plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        assert not any(s and s.encode() in plain for s in secrets), name

    report = verify_against_set(archive, ports, outcome.set_id)
    assert report.ok, differing(report)
    assert sum(u.source_count for u in report.units) > 7000
    # the set's chunks are the live source's own: verify compares recorded digests
    live = MySQLStore(src_endpoint(ports), options=Options(**OPTIONS).store_options())
    live.open()
    try:
        for name, record in units.items():
            unit = Unit.from_dict(record.unit)
            assert [(c.id, c.bounds) for c in live.chunks(unit)] == \
                [(c["id"], c["bounds"]) for c in record.chunks], name
    finally:
        live.close()

    # the S3 set is restored under another database name (db_map on the target)
    db = SRC_DB if where == "file" else f"{SRC_DB}_renamed"
    dst = dst_endpoint(ports, **({} if db == SRC_DB else {"db_map": {SRC_DB: db}}))
    sql(dst, f"DROP DATABASE IF EXISTS `{db}`")
    restored = restore(archive, {"mysql": dst}, Options(**OPTIONS),
                       journal=tmp_path / f"restore-{where}.sqlite")
    assert restored.ok, (restored.copy.failed, restored.verify and differing(restored.verify))
    # byte for byte, every column type; the objects exist and work
    assert zoo_rows(dst, db) == zoo_rows(src_endpoint(ports), SRC_DB)
    assert len(zoo_rows(dst, db)) == loaded["type_zoo"]
    assert objects_of(dst, db) == objects_of(src_endpoint(ports), SRC_DB) and \
        len(objects_of(dst, db)) == 7
    assert sql(dst, f"SELECT `{db}`.user_label('x')") == [(b"user:x",)]
    assert sql(dst, f"SELECT COUNT(*) FROM `{db}`.labelled_users") == sql(
        src_endpoint(ports), f"SELECT COUNT(*) FROM `{SRC_DB}`.labelled_users")
    twins = f"SELECT COUNT(*) FROM `{db}`.user_login_records WHERE user_id = 'twin'"
    assert sql(dst, twins) == [(b"2",)]
    for empty in ("empty_keyed", "empty_keyless"):
        assert units[f"{SRC_DB}.{empty}"].records == 0
        assert sql(dst, f"SELECT COUNT(*) FROM `{db}`.{empty}") == [(b"0",)]
    audited = "SELECT COUNT(*) FROM `{}`.user_audit"
    assert sql(dst, audited.format(db)) == sql(src_endpoint(ports), audited.format(SRC_DB)), \
        "a trigger fired on restored rows"
    # a lost duplicate on the restored copy is named
    sql(dst, f"DELETE FROM `{db}`.user_login_records WHERE user_id = 'twin' LIMIT 1")
    pairs = {"mysql": StorePair("mysql", archive_as(archive, "mysql", role="source",
                                                    set_id=outcome.set_id), dst)}
    with Session(pairs, Options(**OPTIONS)) as session:
        source, _ = session.pair("mysql")
        again = verify([u for u in source.list_units() if u.name.endswith("login_records")],
                       session)
    [unit] = [u for u in again.units if u.status == DIFFER]
    assert unit.unit == f"mysql:{SRC_DB}.user_login_records" and unit.differ[0].startswith(
        "row md5 ")


def test_changes_after_the_backup_are_named_by_their_keys(ports, loaded, tmp_path):
    archive = file_archive(tmp_path)
    outcome = take_backup(archive, ports)
    src = src_endpoint(ports)
    user = sql(src, f"SELECT user_id FROM `{SRC_DB}`.users ORDER BY user_id LIMIT 1 OFFSET 7")
    uid = user[0][0].decode()
    ids = [int(r[0]) for r in sql(src, f"SELECT id FROM `{SRC_DB}`.type_zoo ORDER BY id")]
    changed, gone = ids[4], ids[50]
    try:
        sql(src, f"UPDATE `{SRC_DB}`.users SET name = 'changed' WHERE user_id = %s", (uid,))
        sql(src, f"UPDATE `{SRC_DB}`.type_zoo SET t_varchar = 'changed' WHERE id = {changed}")
        # a new key, and a deleted one, low in the key order: the live side's chunk bounds
        # then differ from the set's (text key: placed by keys the set holds; integer key:
        # placed by value)
        sql(src, f"INSERT INTO `{SRC_DB}`.users (user_id, name) VALUES ('a-new-user', 'n')")
        sql(src, f"DELETE FROM `{SRC_DB}`.type_zoo WHERE id = {gone}")
        report = verify_against_set(archive, ports, outcome.set_id)
    finally:
        sql(src, f"DELETE FROM `{SRC_DB}`.users WHERE user_id = 'a-new-user'")
    found = differing(report)
    assert found[f"mysql:{SRC_DB}.users"]["differ"] == [uid]
    assert found[f"mysql:{SRC_DB}.users"]["missing_on_target"] == ["a-new-user"]
    assert found[f"mysql:{SRC_DB}.type_zoo"]["differ"] == [str(changed)]
    assert found[f"mysql:{SRC_DB}.type_zoo"]["missing_on_source"] == [str(gone)]
    # the audit trigger wrote a row for the new user: found too, and nothing else
    assert len(found[f"mysql:{SRC_DB}.user_audit"]["missing_on_target"]) == 1
    assert set(found) == {f"mysql:{SRC_DB}.{t}" for t in ("users", "type_zoo", "user_audit")}

    # a new text key that lands exactly on a chunk bound of the live side: the set cannot
    # place it (text orders by collation, only the server knows it): an error for that
    # unit, never a guess
    with Repository.open(archive) as repo:
        unit = repo.reader(outcome.set_id).store("mysql").unit(f"{SRC_DB}.users")
        chunk = next(c for c in unit.meta["mysql"]["chunks"] if c["first"])
    below = sql(src, f"SELECT user_id FROM `{SRC_DB}`.users WHERE user_id < %s ORDER BY"
                " user_id DESC LIMIT 1", (chunk["bounds"]["lo"][0],))[0][0].decode()
    sql(src, f"INSERT INTO `{SRC_DB}`.users (user_id) VALUES (%s)", (below + "0",))
    report = verify_against_set(archive, ports, outcome.set_id)
    [users] = [u for u in report.units if u.unit == f"mysql:{SRC_DB}.users"]
    assert users.status == "error" and "not a key this set holds" in (users.error or "")
    fill_source(src)  # as the module's other tests expect it


def _plain_copy(root: Path, out: Path) -> Path:
    """The set's files decompressed with the zstd CLI, keeping the layout."""
    for path in root.rglob("*.zst"):
        target = out / path.relative_to(root).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["zstd", "-q", "-d", str(path), "-o", str(target)], check=True)
    [mysql] = list(out.glob("sets/*/mysql"))
    return mysql


# The commands docs/backups.md gives, verbatim; only the client's settings (~/.my.cnf) and
# the database's name are the test's.
DOC_COMMANDS = """
cd plain/mysql                                   # the set, decompressed (and decrypted)
mariadb < store/$DB/database.sql                 # CREATE DATABASE, same charset and collation
cat store/$DB/tables/*.sql | mariadb $DB         # the tables, as SHOW CREATE TABLE printed them
for d in units/$DB.*/; do (cd "$d" && mariadb --local-infile=1 $DB < *.load.sql); done
mariadb $DB < store/$DB/objects.sql              # views, routines, triggers, events: last
"""


def same_as_source(ports: dict[str, int], db: str, loaded: dict[str, int]) -> None:
    """Every unit of the source digests alike in ``db`` on the target server, the objects
    are the same, and every row is there."""
    source = MySQLStore(src_endpoint(ports), options=StoreOptions(chunk_records=500))
    target = MySQLStore(dst_endpoint(ports, db_map={SRC_DB: db}),
                        options=StoreOptions(chunk_records=500))
    source.open()
    target.open()
    try:
        units = source.list_units()
        digests = {u.name: (source.digest(u, c), target.digest(u, c))
                   for u in units for c in [source.chunks(u)]}
        assert [name for name, (a, b) in digests.items() if a != b] == []
        assert source.definitions(units) == target.definitions(units)
        assert sum(d.count for _, b in digests.values() for d in b.values()) == \
            sum(loaded.values()) + 2 + 25 + 25  # twins, audited users and their audit rows
    finally:
        source.close()
        target.close()
    assert zoo_rows(dst_endpoint(ports), db) == zoo_rows(src_endpoint(ports), SRC_DB)


def test_zstd_and_the_mariadb_client_restore_the_set(ports, loaded, tmp_path):
    archive = file_archive(tmp_path)
    take_backup(archive, ports)
    mysql = _plain_copy(tmp_path / "archive", tmp_path / "plain")
    dst = dst_endpoint(ports)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text(f"[client]\nhost=127.0.0.1\nport={ports['dst']}\nuser=root\n"
                                  f"password={dst.connection().password}\n")
    (home / ".my.cnf").chmod(0o600)
    env = {**os.environ, "HOME": str(home), "DB": SRC_DB}
    run = tmp_path / "set"  # the set's folder, with the plain files in plain/ (as the docs)
    run.mkdir()
    (run / "plain").symlink_to(mysql.parent)

    # as the docs say, under the backed-up name
    sql(dst, f"DROP DATABASE IF EXISTS `{SRC_DB}`")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", DOC_COMMANDS], cwd=run,
                          env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    same_as_source(ports, SRC_DB, loaded)

    # under another name: create it, then name it instead (objects.sql names no database)
    sql(dst, f"DROP DATABASE IF EXISTS `{CLI_DB}`")
    sql(dst, f"CREATE DATABASE `{CLI_DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    renamed = DOC_COMMANDS.replace("mariadb < store/$DB/database.sql", "").replace(
        "mariadb $DB", "mariadb $TO").replace("--local-infile=1 $DB", "--local-infile=1 $TO")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", renamed], cwd=run,
                          env={**env, "TO": CLI_DB}, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    same_as_source(ports, CLI_DB, loaded)


def test_data_lines_are_the_stores_load_data_payload_and_parse_back():
    rows = [(b"1", None, b"", b"\\N", b"tab\there\nnew\\line", b"\x00\xff\r"),
            (b"-2", b"N", b"\\", b"x", b"", None)]
    for row in rows:
        line = tsv_line(row)
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        assert parse_line(line[:-1], len(row), "t") == row
    # a file read in blocks of any size gives back the same lines, an empty one too
    data = b"".join(tsv_line(r) for r in [(b"a\tb",), (b"",), (b"x" * 50,)])

    class Blocks(io.BytesIO):
        def __init__(self, size: int) -> None:
            super().__init__(data)
            self.size = size

        def read(self, _size: int = -1) -> bytes:
            return super().read(self.size)

    for size in (1, 2, 3, 7, 1000):
        assert [parse_line(x, 1, "t") for x in mysql_archive._lines(Blocks(size))] == \
            [(b"a\tb",), (b"",), (b"x" * 50,)]
    with pytest.raises(StoreError, match="ends inside a row"):
        list(mysql_archive._lines(io.BytesIO(b"a\nb")))
    # NULL and '' differ, and so do a value and the same bytes shifted across a column
    plain = [True, False, False, False, False, False]
    assert row_md5(plain, rows[0]) != row_md5(plain, (b"1", b"", None) + rows[0][3:])
    assert row_md5([False, False], (b"a#", b"b")) != row_md5([False, False], (b"a", b"#b"))


def test_export_resumes_from_a_cursor_without_rereading_earlier_files(ports, loaded, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(MySQLArchive, "file_bytes", 16 << 10)
    archive = file_archive(tmp_path)
    outcome = take_backup(archive, ports)
    fmt = MySQLArchive()
    with Repository.open(archive) as repo:
        unit = repo.reader(outcome.set_id).store("mysql").unit(f"{SRC_DB}.type_zoo")
        batches = list(fmt.export(unit))
        everything = [r for b in batches for r in b.records]
        assert len(everything) == loaded["type_zoo"]
        assert batches[0].columns and [c for c, _ in batches[0].columns] == list(ZOO)
        opened: list[str] = []
        real = unit.open
        monkeypatch.setattr(unit, "open", lambda name: opened.append(name) or real(name))
        files = unit.meta["mysql"]["files"]
        assert len(files) >= 2
        skip = files[0]["rows"] + 3
        rest = [r for b in fmt.export(unit, {"rows": skip}) for r in b.records]
        assert rest == everything[skip:]
        assert files[0]["name"] not in opened
    assert mysql_archive.FILE_BYTES == 64 << 20


def test_an_attempt_that_fails_half_way_leaves_no_file(ports, loaded, tmp_path):
    source = MySQLStore(src_endpoint(ports), options=StoreOptions(batch_records=50))
    source.open()
    try:
        [unit] = [u for u in source.list_units() if u.spec["table"] == "type_zoo"]
        with Repository.open(file_archive(tmp_path), create=True) as repo:
            writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["mysql"])
            importer = MySQLArchive().importer(writer.store("mysql").unit(unit), source, None)
            importer.prepare(resumed=False)
            importer.write_batch(next(iter(source.export(unit))))
            folder = tmp_path / "archive" / "sets" / writer.set_id / "mysql" / "units"
            assert [p for p in folder.rglob("*") if p.is_file()]  # being written
            del importer  # the engine drops a failed attempt's importer
            assert [p for p in folder.rglob("*") if p.is_file()] == []
    finally:
        source.close()
