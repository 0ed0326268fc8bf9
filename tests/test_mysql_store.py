"""The MySQL store against real MariaDB servers (source, target) from scripts/services.py."""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
from typing import Any

import pymysql
import pymysql.converters
import pytest

from fixtures import mysql_data
from migrator.config import Endpoint
from migrator.errors import EndpointError, StoreError
from migrator.stores.base import Role, Selection, StoreOptions, Unit
from migrator.stores.mysql.schema import NO_KEY_NOTE
from migrator.stores.mysql.store import MySQLStore

SRC_DB = "oimtest_mysql"
DST_DB = "oimtest_mysql_copy"
_ENCODERS = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def ports(mysql_env: dict[str, str]) -> dict[str, int]:
    return {"src": _port(mysql_env["OIM_MYSQL_SRC_URL"]),
            "dst": _port(mysql_env["OIM_MYSQL_DST_URL"])}


def src_endpoint(ports: dict[str, int], user: str = "root",
                 password_var: str = "OIM_MYSQL_SRC_PASSWORD") -> Endpoint:
    return Endpoint("mysql", f"mysql://{user}:${{{password_var}}}@127.0.0.1:{ports['src']}"
                    f"/{SRC_DB}", name="source.mysql")


def dst_endpoint(ports: dict[str, int], **options: Any) -> Endpoint:
    return Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@127.0.0.1:{ports['dst']}",
                    name="target.mysql", options={"db_map": {SRC_DB: DST_DB}, **options})


@pytest.fixture(scope="module")
def loaded(ports: dict[str, int]) -> dict[str, int]:
    return mysql_data.load(src_endpoint(ports), seed=7, scale=1.0)


@pytest.fixture
def source(ports: dict[str, int], loaded: dict[str, int]) -> MySQLStore:
    store = MySQLStore(src_endpoint(ports), options=StoreOptions(
        unit_records=1000, chunk_records=300, batch_records=200))
    store.open()
    yield store
    store.close()


@pytest.fixture
def target(ports: dict[str, int]) -> MySQLStore:
    store = MySQLStore(dst_endpoint(ports), options=StoreOptions(on_existing="overwrite"))
    store.open()
    sql(store, f"DROP DATABASE IF EXISTS {DST_DB}")
    yield store
    store.close()


def sql(store: MySQLStore, query: str, args: Any = None, *, raw: bool = True) -> list[tuple]:
    """Run a query on the store's server over a separate raw connection (bytes back)."""
    info = store.endpoint.connection()
    kwargs: dict[str, Any] = {"conv": _ENCODERS, "use_unicode": False} if raw else {}
    conn = pymysql.connect(host=info.host, port=info.port, user=info.username,
                           password=info.password, autocommit=True, charset="utf8mb4",
                           init_command="SET time_zone='+00:00', character_set_results=binary"
                           if raw else "SET time_zone='+00:00'", **kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def source_ports(store: MySQLStore) -> dict[str, int]:
    return {"src": store.endpoint.connection().port}


def units_of(store: MySQLStore, table: str) -> list[Unit]:
    return [u for u in store.list_units() if u.spec["table"] == table]


def copy(source: MySQLStore, target: MySQLStore, units: list[Unit]) -> None:
    target.prepare_target(units, source)
    for unit in units:
        importer = target.importer(unit)
        importer.prepare(resumed=False)
        for batch in source.export(unit):
            importer.write_batch(batch)
        importer.finalize()
    target.finalize_target(units, source)


def same_digests(source: MySQLStore, target: MySQLStore, unit: Unit) -> bool:
    chunks = source.chunks(unit)
    return source.digest(unit, chunks) == target.digest(unit, chunks)


def differences(source: MySQLStore, target: MySQLStore, unit: Unit) -> dict[str, set[str]]:
    """What the verifier would name: keys missing on target, extra on target, differing."""
    out: dict[str, set[str]] = {"missing": set(), "extra": set(), "differ": set()}
    chunks = source.chunks(unit)
    src_d, dst_d = source.digest(unit, chunks), target.digest(unit, chunks)
    for chunk in chunks:
        if src_d[chunk.id] == dst_d[chunk.id]:
            continue
        src, dst = dict(source.records(unit, chunk)), dict(target.records(unit, chunk))
        out["missing"] |= set(src) - set(dst)
        out["extra"] |= set(dst) - set(src)
        out["differ"] |= {k for k in set(src) & set(dst) if src[k] != dst[k]}
    return out


ZOO_SELECT = "SELECT * FROM {}.type_zoo ORDER BY id"


def test_every_column_type_round_trips_byte_for_byte(source, target):
    units = units_of(source, "type_zoo")
    copy(source, target, units)
    before = sql(source, ZOO_SELECT.format(SRC_DB))
    after = sql(target, ZOO_SELECT.format(DST_DB))
    assert len(before) == 200
    assert after == before  # raw server bytes, every column including the generated one
    assert same_digests(source, target, units[0])
    edge = after[0]
    assert edge[10] == b"18446744073709551615"  # BIGINT UNSIGNED max
    assert edge[11] == b"99999999999999999999999999999999999.999999999999999999999999999999"
    assert edge[19] == b"9999-12-31 23:59:59.999999"
    assert edge[20] == b"2038-01-19 03:14:07.999999"
    assert edge[28] == b"\x00\t\n\\N\x00"  # NUL, tab, newline and LOAD DATA's null marker
    assert len(edge[30]) == 256 * 200


def test_nulls_stay_nulls_and_empty_strings_stay_empty(source, target):
    copy(source, target, units_of(source, "type_zoo"))
    query = "SELECT id, t_text IS NULL, t_text FROM {}.type_zoo WHERE t_text IS NULL OR t_text" \
            " IN ('', '\\\\N') ORDER BY id"
    rows = sql(target, query.format(DST_DB))
    assert rows == sql(source, query.format(SRC_DB))
    assert {r[1] for r in rows} == {b"0", b"1"}  # both NULLs and empty / "\N" strings present


def test_utf8mb4_emoji_and_latin1_columns_keep_their_bytes(source, target):
    copy(source, target, units_of(source, "type_zoo"))
    query = "SELECT HEX(t_varchar), HEX(t_latin1), HEX(t_mediumtext) FROM {}.type_zoo WHERE id=1"
    row = sql(target, query.format(DST_DB))[0]
    assert row == sql(source, query.format(SRC_DB))[0]
    assert row[0].startswith(b"F09F9880F09F8E89")  # 😀🎉 in UTF-8
    assert row[1] == "café ÿ Ø".encode("latin1").hex().upper().encode()  # stays latin1
    assert row[2] == ("📦" * 100).encode().hex().upper().encode()


def test_schema_keeps_charset_collation_indexes_and_auto_increment(source, target):
    units = units_of(source, "type_zoo")
    copy(source, target, units)
    src_schema, dst_schema = source.schema(units[0]), target.schema(units[0])
    assert dst_schema == src_schema
    assert dst_schema["options"]["auto_increment"] > 200 + 900  # the gap survived
    assert dst_schema["columns"]["t_latin1"]["collation"] == "latin1_swedish_ci"
    assert dst_schema["indexes"]["idx_latin1"]["columns"] == ["t_latin1(20)"]
    assert dst_schema["options"]["comment"] == "every column type"
    charset = "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM" \
              " information_schema.SCHEMATA WHERE SCHEMA_NAME=%s"
    assert sql(target, charset, (DST_DB,)) == sql(source, charset, (SRC_DB,))


def test_schema_difference_names_the_column(source, target):
    units = units_of(source, "users")
    copy(source, target, units)
    sql(target, f"ALTER TABLE {DST_DB}.users MODIFY name VARCHAR(100)")
    src_schema, dst_schema = source.schema(units[0]), target.schema(units[0])
    assert src_schema["columns"]["name"]["type"] == "varchar(255)"
    assert dst_schema["columns"]["name"]["type"] == "varchar(100)"
    assert {k for k in src_schema["columns"] if src_schema["columns"][k]
            != dst_schema["columns"][k]} == {"name"}


def test_big_table_splits_into_key_ranges_that_cover_it_exactly(source, loaded):
    units = units_of(source, "chat_logs")
    assert [u.name for u in units] == [f"{SRC_DB}.chat_logs#000{i}" for i in range(3)]
    assert [u.records for u in units] == [1000, 1000, 500]
    assert units[0].spec["lo"] is None and units[-1].spec["hi"] is None
    assert units[0].spec["hi"] == units[1].spec["lo"]
    exported = [len(b) for u in units for b in source.export(u)]
    assert sum(exported) == loaded["chat_logs"]
    chunks = source.chunks(units[1])
    assert chunks[0].bounds["lo"] == units[1].spec["lo"]
    assert chunks[-1].bounds["hi"] == units[1].spec["hi"]
    counts = source.digest(units[1], chunks)
    assert sum(d.count for d in counts.values()) == 1000
    assert len(chunks) == 4  # ~300 rows each


@dataclasses.dataclass(frozen=True)
class WithParallel(StoreOptions):
    parallel: int = 4  # what the engine's --parallel would be


def test_a_table_below_unit_records_fills_parallel_but_never_with_tiny_units(ports):
    db = "oimtest_mysql_split"
    endpoint = Endpoint("mysql", src_endpoint(ports).url.replace(SRC_DB, db), name="source.mysql")
    store = MySQLStore(endpoint)
    for query in (f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}",
                  f"CREATE TABLE {db}.wide (id INT PRIMARY KEY, v INT)",
                  f"CREATE TABLE {db}.small (id INT PRIMARY KEY, v INT)",
                  f"INSERT INTO {db}.wide VALUES "
                  + ", ".join(f"({i}, {i % 7})" for i in range(45_000)),
                  f"INSERT INTO {db}.small VALUES "
                  + ", ".join(f"({i}, {i})" for i in range(900)),
                  f"ANALYZE TABLE {db}.wide, {db}.small"):
        sql(store, query)
    try:
        for parallel, wide in ((4, 4), (2, 2), (16, 4), (1, 1)):
            store = MySQLStore(endpoint, options=WithParallel(parallel=parallel))
            units = store.list_units()
            counts = {t: [u.records for u in units if u.spec["table"] == t]
                      for t in ("wide", "small")}
            # at least 10,000 rows per unit, at most `parallel` units below unit_records
            assert len(counts["wide"]) == wide, (parallel, counts)
            assert sum(counts["wide"]) == 45_000 and min(counts["wide"]) >= 10_000
            assert counts["small"] == [900]
            assert MySQLStore.uncovered(units) == []
        many = MySQLStore(endpoint, options=WithParallel(parallel=4, unit_records=5_000))
        assert len([u for u in many.list_units() if u.spec["table"] == "wide"]) == 9  # asked
    finally:
        sql(store, f"DROP DATABASE IF EXISTS {db}")


def test_unit_spec_is_plain_json_and_survives_a_plan_round_trip(source, target):
    import json
    units = units_of(source, "friends")  # composite key (owner, friend), split in two
    assert len(units) == 2
    reloaded = [Unit.from_dict(json.loads(json.dumps(u.to_dict()))) for u in units]
    copy(source, target, reloaded)
    assert all(same_digests(source, target, u) for u in reloaded)


def test_table_without_primary_key_moves_whole_and_restarts_on_resume(source, target, loaded):
    [unit] = units_of(source, "user_login_records")
    assert unit.spec["note"] == NO_KEY_NOTE and unit.spec["resumable"] is False
    target.prepare_target([unit], source)
    importer = target.importer(unit)
    importer.prepare(resumed=False)
    first = next(iter(source.export(unit)))
    importer.write_batch(first)  # then "crash"
    importer = target.importer(unit)
    importer.prepare(resumed=False)  # the engine restarts a keyless unit: it truncates
    for batch in source.export(unit, resume_from=first.cursor):
        importer.write_batch(batch)
    importer.finalize()
    count = "SELECT COUNT(*) FROM {}.user_login_records"
    assert sql(target, count.format(DST_DB)) == [(str(loaded["user_login_records"]).encode(),)]
    assert same_digests(source, target, unit)
    dups = "SELECT COUNT(*) FROM (SELECT 1 FROM {}.user_login_records GROUP BY user_id," \
           " login_time, ip, device_id, platform HAVING COUNT(*) > 1) d"
    assert sql(target, dups.format(DST_DB)) == sql(source, dups.format(SRC_DB)) != [(b"0",)]


@pytest.mark.parametrize("unit_name", ["chat_logs#0001", "friends#0000", "type_zoo"])
def test_resume_from_a_mid_unit_cursor_copies_every_row_exactly_once(source, target, unit_name):
    [unit] = [u for u in source.list_units() if u.name == f"{SRC_DB}.{unit_name}"]
    target.prepare_target([unit], source)
    importer = target.importer(unit)
    importer.prepare(resumed=False)
    batches = source.export(unit)
    batch = next(batches)
    importer.write_batch(batch)
    written, cursor = len(batch), batch.cursor
    batches.close()  # the crash
    importer = target.importer(unit)
    importer.prepare(resumed=True)
    rest = 0
    for batch in source.export(unit, resume_from=cursor):
        importer.write_batch(batch)
        rest += len(batch)
    importer.finalize()
    assert written + rest == unit.records
    table = unit.spec["table"]
    assert sql(target, f"SELECT COUNT(*) FROM {DST_DB}.{table}") == [(str(unit.records).encode(),)]
    assert same_digests(source, target, unit)


def test_latin1_and_binary_keys_split_resume_and_verify(ports):
    db, copy_db = "oimtest_mysql_keys", "oimtest_mysql_keys_copy"
    endpoint = Endpoint("mysql", src_endpoint(ports).url.replace(SRC_DB, db), name="source.mysql")
    source = MySQLStore(endpoint, options=StoreOptions(unit_records=3, chunk_records=2,
                                                       batch_records=2))
    target = MySQLStore(dst_endpoint(ports, db_map={db: copy_db}))
    for query in (f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}",
                  f"CREATE TABLE {db}.k_latin (k VARCHAR(10) CHARACTER SET latin1 PRIMARY KEY,"
                  " v INT)",
                  f"CREATE TABLE {db}.k_bin (k VARBINARY(16) NOT NULL, n INT NOT NULL, v INT,"
                  " UNIQUE KEY kn (k, n))"):
        sql(source, query)
    latin = ["a", "B", "c", "é", "ÿ", "Ø", "z", "Å", "ñ", "0"]
    sql(source, f"INSERT INTO {db}.k_latin VALUES " + ", ".join(["(%s, %s)"] * len(latin)),
        [x for i, k in enumerate(latin) for x in (k, i)])
    binary = [b"\x00", b"\x00\x00", b"\xff", b"\x01\xfe", b"A", b"\x80abc", b"", b"\t\n"]
    sql(source, f"INSERT INTO {db}.k_bin VALUES " + ", ".join(["(%s, %s, %s)"] * 16),
        [x for i, k in enumerate(binary) for n in (1, 2) for x in (k, n, i)])
    sql(target, f"DROP DATABASE IF EXISTS {copy_db}")
    units = source.list_units()
    assert len(units) == 4 + 6  # 10 latin1 keys and 16 (bytes, n) keys, 3 per unit
    assert any(isinstance(v, dict) for u in units for v in (u.spec["lo"] or []))  # tagged b64
    target.prepare_target(units, source)
    for unit in units:  # every unit "crashes" after its first batch and resumes
        first = next(iter(source.export(unit)))
        importer = target.importer(unit)
        importer.prepare(resumed=False)
        importer.write_batch(first)
        importer = target.importer(unit)
        importer.prepare(resumed=True)
        for batch in source.export(unit, resume_from=first.cursor):
            importer.write_batch(batch)
        importer.finalize()
    target.finalize_target(units, source)
    for table, order in (("k_latin", "k"), ("k_bin", "k, n")):
        query = "SELECT * FROM {}." + table + " ORDER BY " + order
        assert sql(target, query.format(copy_db)) == sql(source, query.format(db))
    assert all(same_digests(source, target, u) for u in units)
    sql(target, f"DELETE FROM {copy_db}.k_bin WHERE k = 0x80616263 AND n = 2")
    missing = set().union(*(differences(source, target, u)["missing"] for u in units))
    assert missing == {'["0x80616263", 2]'}


def test_replaying_a_batch_changes_nothing(source, target):
    units = units_of(source, "type_zoo")
    target.prepare_target(units, source)
    importer = target.importer(units[0])
    importer.prepare(resumed=False)
    batches = list(source.export(units[0]))
    for batch in batches:
        importer.write_batch(batch)
    before = sql(target, ZOO_SELECT.format(DST_DB))
    importer.write_batch(batches[0])  # crash after the write, before the checkpoint
    importer.finalize()
    assert sql(target, ZOO_SELECT.format(DST_DB)) == before
    assert same_digests(source, target, units[0])


def test_a_changed_row_on_the_target_is_named_by_its_key(source, target):
    units = units_of(source, "friends")
    copy(source, target, units)
    owner, friend = sql(source, f"SELECT owner_user_id, friend_user_id FROM {SRC_DB}.friends"
                                " ORDER BY 1, 2 LIMIT 1 OFFSET 1100", raw=False)[0]
    sql(target, f"UPDATE {DST_DB}.friends SET remark = CONCAT(IFNULL(remark, ''), '!')"
                " WHERE owner_user_id=%s AND friend_user_id=%s", (owner, friend))
    assert same_digests(source, target, units[0])
    assert differences(source, target, units[1]) == {
        "missing": set(), "extra": set(), "differ": {f'["{owner}", "{friend}"]'}}


def test_null_vs_empty_and_a_shifted_separator_are_differences(source, target):
    units = units_of(source, "type_zoo")
    copy(source, target, units)
    sql(target, f"UPDATE {DST_DB}.type_zoo SET t_text = '' WHERE id = 2")  # '' on the source
    assert differences(source, target, units[0])["differ"] == set()
    [(null_id,)] = sql(source, f"SELECT MIN(id) FROM {SRC_DB}.type_zoo WHERE t_text IS NULL")
    sql(target, f"UPDATE {DST_DB}.type_zoo SET t_text = '' WHERE id = %s", (int(null_id),))
    # same concatenation, different rows: ('a#', 'b') on one side, ('a', '#b') on the other
    [(other,)] = sql(source, f"SELECT MAX(id) FROM {SRC_DB}.type_zoo")
    sql(source, f"UPDATE {SRC_DB}.type_zoo SET t_tinytext = 'a#', t_text = 'b' WHERE id = %s",
        (int(other),))
    sql(target, f"UPDATE {DST_DB}.type_zoo SET t_tinytext = 'a', t_text = '#b' WHERE id = %s",
        (int(other),))
    try:
        assert differences(source, target, units[0])["differ"] == {null_id.decode(),
                                                                    other.decode()}
    finally:
        mysql_data.load(src_endpoint(source_ports(source)), seed=7)


def test_deleted_and_added_rows_show_as_missing_and_extra(source, target):
    units = units_of(source, "users")
    copy(source, target, units)
    [(gone,)] = sql(source, f"SELECT user_id FROM {SRC_DB}.users ORDER BY user_id LIMIT 1",
                    raw=False)
    sql(target, f"DELETE FROM {DST_DB}.users WHERE user_id = %s", (gone,))
    sql(target, f"INSERT INTO {DST_DB}.users (user_id, name) VALUES ('zzz-only-here', 'x'),"
                " ('', 'empty key')")
    assert differences(source, target, units[0]) == {
        "missing": {gone}, "extra": {"zzz-only-here", ""}, "differ": set()}


def test_a_lost_duplicate_in_a_keyless_table_is_named(source, target):
    [unit] = units_of(source, "user_login_records")
    copy(source, target, [unit])
    [(user, moment)] = sql(source, f"SELECT user_id, login_time FROM {SRC_DB}.user_login_records"
                                   " GROUP BY user_id, login_time, ip, device_id, platform"
                                   " HAVING COUNT(*) > 1 ORDER BY 1, 2 LIMIT 1", raw=False)
    sql(target, f"DELETE FROM {DST_DB}.user_login_records WHERE user_id=%s AND login_time=%s"
                " LIMIT 1", (user, moment))
    found = differences(source, target, unit)
    assert len(found["differ"]) == 1 and not found["missing"] and not found["extra"]
    assert next(iter(found["differ"])).startswith("row md5 ")


def test_overwrite_clears_the_unit_range_before_copying(source, target):
    units = units_of(source, "users")
    target.prepare_target(units, source)
    sql(target, f"INSERT INTO {DST_DB}.users (user_id) VALUES ('stale-row')")
    assert target.existing(units) == [units[0].key]
    copy(source, target, units)
    assert sql(target, f"SELECT COUNT(*) FROM {DST_DB}.users WHERE user_id='stale-row'") \
        == [(b"0",)]
    assert same_digests(source, target, units[0])


def test_prepare_target_twice_is_a_no_op(source, target):
    units = units_of(source, "type_zoo") + units_of(source, "chat_logs")
    target.prepare_target(units, source)
    before = sql(target, f"SHOW CREATE TABLE {DST_DB}.type_zoo")
    sql(target, f"INSERT INTO {DST_DB}.chat_logs (server_msg_id) VALUES ('kept')")
    target.prepare_target(units, source)
    assert sql(target, f"SHOW CREATE TABLE {DST_DB}.type_zoo") == before
    assert sql(target, f"SELECT COUNT(*) FROM {DST_DB}.chat_logs") == [(b"1",)]


def test_prepare_target_refuses_an_existing_table_with_other_columns(source, target):
    units = units_of(source, "logs")
    target.prepare_target(units, source)
    sql(target, f"ALTER TABLE {DST_DB}.logs MODIFY platform INT")
    with pytest.raises(StoreError, match="platform"):
        target.prepare_target(units, source)


def test_views_are_created_after_their_tables(source, target):
    sql(source, f"CREATE OR REPLACE VIEW {SRC_DB}.active_users AS SELECT user_id, name"
                f" FROM {SRC_DB}.users WHERE app_manger_level > 1")
    try:
        units = units_of(source, "users")
        copy(source, target, units)
        query = "SELECT * FROM {}.active_users ORDER BY user_id"
        assert sql(target, query.format(DST_DB)) == sql(source, query.format(SRC_DB)) != []
    finally:
        sql(source, f"DROP VIEW {SRC_DB}.active_users")


def test_include_and_exclude_patterns_select_db_dot_table(ports, loaded):
    store = MySQLStore(src_endpoint(ports), Selection(include=(f"{SRC_DB}.*",),
                                                      exclude=("*.chat_logs", "*.group*")))
    names = {u.spec["table"] for u in store.list_units()}
    assert "users" in names and "type_zoo" in names
    assert not names & {"chat_logs", "groups", "group_members", "group_requests"}


def test_reader_user_suffices_for_the_source_side_only(ports, target, loaded):
    reader = MySQLStore(src_endpoint(ports, "${OIM_MYSQL_SRC_READER_USER}",
                                     "OIM_MYSQL_SRC_READER_PASSWORD"),
                        options=StoreOptions(unit_records=1000, chunk_records=300))
    reader.check_access(Role.SOURCE)
    units = [u for u in reader.list_units() if u.spec["table"] in ("chat_logs", "type_zoo")]
    assert len(units) == 4
    copy(reader, target, units)
    for unit in units:
        chunks = reader.chunks(unit)
        assert reader.digest(unit, chunks) == target.digest(unit, chunks)
        assert dict(reader.records(unit, chunks[0])) == dict(target.records(unit, chunks[0]))
    with pytest.raises(EndpointError, match="cannot create"):
        reader.check_access(Role.TARGET)
    target.check_access(Role.TARGET)
    assert sql(target, "SHOW DATABASES LIKE 'oim_migrate_probe%'") == []


def test_wrong_password_is_a_terminal_endpoint_error_without_the_password(
        ports, monkeypatch):
    monkeypatch.setenv("OIM_TEST_BAD_PASSWORD", "s3cret-wrong-pass")
    store = MySQLStore(src_endpoint(ports, password_var="OIM_TEST_BAD_PASSWORD"))
    with pytest.raises(EndpointError) as info:
        store.open()
    assert not info.value.transient
    assert "source.mysql" in str(info.value) and "1045" in str(info.value)
    assert "s3cret-wrong-pass" not in str(info.value)


def test_unreachable_server_is_a_transient_endpoint_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        store = MySQLStore(Endpoint("mysql", f"mysql://root@127.0.0.1:{port}", name="t.mysql"))
        with pytest.raises(EndpointError) as info:
            store.open()
    assert info.value.transient and "t.mysql" in str(info.value)


def test_db_map_on_the_source_is_refused(ports):
    endpoint = Endpoint("mysql", src_endpoint(ports).url, name="source.mysql",
                        options={"db_map": {"a": "b"}})
    with pytest.raises(Exception, match="db_map"):
        MySQLStore(endpoint).list_units()


def test_insert_fallback_when_the_target_forbids_local_infile(source, target, caplog):
    units = units_of(source, "type_zoo") + units_of(source, "user_login_records")
    target.prepare_target(units, source)
    sql(target, "SET GLOBAL local_infile = 0")
    try:
        with caplog.at_level(logging.WARNING, logger="migrator.stores.mysql"):
            copy(source, target, units)  # the store read local_infile=ON at open()
    finally:
        sql(target, "SET GLOBAL local_infile = 1")
    refused = [r for r in caplog.records if "LOAD DATA LOCAL INFILE refused" in r.message]
    assert len(refused) == 1  # said once, not per batch
    assert sql(target, ZOO_SELECT.format(DST_DB)) == sql(source, ZOO_SELECT.format(SRC_DB))
    assert all(same_digests(source, target, u) for u in units)


def test_secondary_indexes_are_added_after_the_data(source, target):
    units = units_of(source, "chat_logs")
    target.prepare_target(units, source)
    created = target.schema(units[0])["indexes"]
    assert set(created) == {"PRIMARY"}  # 7 non-unique indexes wait for the data
    zoo = units_of(source, "type_zoo")
    target.prepare_target(zoo, source)
    assert set(target.schema(zoo[0])["indexes"]) == {"PRIMARY", "uk_varbinary"}  # unique stays
    copy(source, target, units + zoo)
    for unit in (units[0], zoo[0]):
        assert target.schema(unit)["indexes"] == source.schema(unit)["indexes"]
    target.finalize_target(units + zoo, source)  # again: nothing left to add
    assert target.schema(units[0]) == source.schema(units[0])


def test_a_target_with_local_infile_off_loads_with_insert_and_says_so_once(
        ports, loaded, caplog):
    sql_target = MySQLStore(dst_endpoint(ports))
    sql(sql_target, "SET GLOBAL local_infile = 0")
    try:
        target = MySQLStore(dst_endpoint(ports), options=StoreOptions(on_existing="overwrite"))
        sql(target, f"DROP DATABASE IF EXISTS {DST_DB}")
        assert "REPLACE statements" in target.describe()["import"]
        source = MySQLStore(src_endpoint(ports), options=StoreOptions(batch_records=50))
        units = units_of(source, "type_zoo") + units_of(source, "users")
        with caplog.at_level(logging.WARNING, logger="migrator.stores.mysql"):
            copy(source, target, units)
    finally:
        sql(sql_target, "SET GLOBAL local_infile = 1")
    assert len([r for r in caplog.records if "local_infile=OFF" in r.message]) == 1
    assert all(same_digests(source, target, u) for u in units)


def test_units_of_one_store_pair_copy_in_parallel_threads(source, target):
    from concurrent.futures import ThreadPoolExecutor
    units = units_of(source, "chat_logs") + units_of(source, "friends")
    target.prepare_target(units, source)

    def one(unit: Unit) -> None:
        importer = target.importer(unit)
        importer.prepare(resumed=False)
        for batch in source.export(unit):
            importer.write_batch(batch)
        importer.finalize()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, units))
    target.finalize_target(units, source)
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda u: same_digests(source, target, u), units))


# ------------------------------------------------------------------ columns read live
def test_a_column_added_after_plan_is_copied_and_checked(source, target):
    units = units_of(source, "logs")  # planned before the column exists
    sql(source, f"ALTER TABLE {SRC_DB}.logs ADD COLUMN late INT NOT NULL DEFAULT 0")
    try:
        sql(source, f"UPDATE {SRC_DB}.logs SET late = CRC32(log_id) % 1000 + 1")
        copy(source, target, units)
        query = "SELECT log_id, late FROM {}.logs ORDER BY log_id"
        assert sql(target, query.format(DST_DB)) == sql(source, query.format(SRC_DB))
        assert same_digests(source, target, units[0])
        [(first,)] = sql(source, f"SELECT MIN(log_id) FROM {SRC_DB}.logs", raw=False)
        sql(target, f"UPDATE {DST_DB}.logs SET late = 0 WHERE log_id = %s", (first,))
        assert differences(source, target, units[0])["differ"] == {first}  # digest covers it
    finally:
        sql(source, f"ALTER TABLE {SRC_DB}.logs DROP COLUMN late")


def test_a_column_the_target_table_lacks_is_refused_by_name(source, target):
    units = units_of(source, "logs")
    target.prepare_target(units, source)  # the target table is made now, without it
    sql(source, f"ALTER TABLE {SRC_DB}.logs ADD COLUMN late2 VARCHAR(8) DEFAULT 'x'")
    try:
        importer = target.importer(units[0])
        importer.prepare(resumed=False)
        with pytest.raises(StoreError, match=rf"{DST_DB}\.logs.*column late2"):
            for batch in source.export(units[0]):
                importer.write_batch(batch)
        importer.finalize()
        with pytest.raises(StoreError, match=rf"{DST_DB}\.logs.*column late2"):
            target.prepare_target(units, source)  # and the next run says so up front
    finally:
        sql(source, f"ALTER TABLE {SRC_DB}.logs DROP COLUMN late2")


def test_schema_compares_generated_expressions_read_live(source, target):
    from migrator.engine.verify import schema_differences

    units = units_of(source, "type_zoo")
    copy(source, target, units)
    assert "t_int" in source.schema(units[0])["columns"]["t_gen"]["generated"]
    assert schema_differences(source.schema(units[0]), target.schema(units[0])) == []
    sql(target, f"ALTER TABLE {DST_DB}.type_zoo MODIFY t_gen BIGINT"
                " GENERATED ALWAYS AS (t_int + 2) VIRTUAL")
    [line] = schema_differences(source.schema(units[0]), target.schema(units[0]))
    assert line.startswith("columns.t_gen.generated:")


def test_export_refuses_a_key_that_is_no_longer_unique(ports):
    db = "oimtest_mysql_drift"
    store = MySQLStore(Endpoint("mysql", src_endpoint(ports).url.replace(SRC_DB, db),
                                name="source.mysql"))
    for query in (f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}",
                  f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v INT)",
                  f"INSERT INTO {db}.t VALUES (1, 1), (2, 2)"):
        sql(store, query)
    [unit] = store.list_units()
    sql(store, f"ALTER TABLE {db}.t DROP PRIMARY KEY, ADD INDEX (id)")
    sql(store, f"INSERT INTO {db}.t VALUES (2, 3)")
    with pytest.raises(StoreError, match=rf"{db}\.t: the plan splits it on \(id\)"):
        list(store.export(unit))


# ------------------------------------------------------ views, triggers, routines, events
OBJ_DB = "oimtest_mysql_objects"
OBJ_COPY = "oimtest_mysql_objects_copy"


def objects_source(ports: dict[str, int], user: str = "root",
                   password_var: str = "OIM_MYSQL_SRC_PASSWORD") -> MySQLStore:
    endpoint = src_endpoint(ports, user, password_var)
    store = MySQLStore(Endpoint("mysql", endpoint.url.replace(SRC_DB, OBJ_DB),
                                name="source.mysql"), options=StoreOptions(batch_records=100))
    store.open()
    return store


def objects_target(ports: dict[str, int], cache: dict | None = None) -> MySQLStore:
    store = MySQLStore(dst_endpoint(ports, db_map={OBJ_DB: OBJ_COPY}),
                       options=StoreOptions(on_existing="overwrite"))
    if cache is not None:
        store.use_cache(cache)
    store.open()
    return store


@pytest.fixture
def objects_db(ports: dict[str, int]) -> list[str]:
    """A small OpenIM database with every kind of schema object (and 25 audit rows)."""
    fixture = Endpoint("mysql", src_endpoint(ports).url.replace(SRC_DB, OBJ_DB), name="fixture")
    mysql_data.load(fixture, seed=3, scale=0.1)
    names = mysql_data.add_objects(fixture)
    dst = MySQLStore(dst_endpoint(ports))
    sql(dst, f"DROP DATABASE IF EXISTS {OBJ_COPY}")
    return names


def audit_rows(store: MySQLStore, db: str) -> int:
    return int(sql(store, f"SELECT COUNT(*) FROM {db}.user_audit")[0][0])


def test_objects_are_copied_after_the_data_and_compare_equal(ports, objects_db):
    src, dst = objects_source(ports), objects_target(ports)
    units = src.list_units()
    assert set(src.definitions(units)) == set(objects_db)  # 2 views, 2 triggers, 2 routines,
    copy(src, dst, units)  # and an event
    assert dst.definitions(units) == src.definitions(units)
    # the audit trigger did not fire on imported users: 25 rows, not 25 + every user again
    assert audit_rows(dst, OBJ_COPY) == audit_rows(src, OBJ_DB) == 25
    # and they work on the target: the view calls the function, the trigger fires now
    assert sql(dst, f"SELECT label FROM {OBJ_COPY}.labelled_users WHERE user_id = 'audited-0001'"
               ) == [(b"user:audited-0001",)]
    sql(dst, f"INSERT INTO {OBJ_COPY}.users (user_id) VALUES ('after-the-copy')")
    assert audit_rows(dst, OBJ_COPY) == 26
    copy(src, dst, units)  # a re-run: triggers are off while rows are loaded
    assert audit_rows(dst, OBJ_COPY) == 25 and dst.definitions(units) == src.definitions(units)


def test_a_dropped_or_changed_object_on_the_target_is_named_and_made_again(ports, objects_db):
    from migrator.engine.verify import schema_differences

    src, dst = objects_source(ports), objects_target(ports)
    units = src.list_units()
    copy(src, dst, units)
    for query in (f"DROP VIEW {OBJ_COPY}.active_users", f"DROP TRIGGER {OBJ_COPY}.users_trim",
                  f"DROP EVENT {OBJ_COPY}.purge_audit",
                  f"DROP PROCEDURE {OBJ_COPY}.count_users",
                  f"CREATE PROCEDURE {OBJ_COPY}.count_users(OUT n INT) SET n = 0"):
        sql(dst, query)
    lines = schema_differences(src.definitions(units), dst.definitions(units))
    named = {line.split(":")[0].rsplit(".", 1)[0] if line.startswith("procedure") else
             line.split(":")[0] for line in lines}
    assert named == {f"view {OBJ_DB}.active_users", f"trigger {OBJ_DB}.users_trim",
                     f"event {OBJ_DB}.purge_audit", f"procedure {OBJ_DB}.count_users"}
    dst.finalize_target(units, src)
    assert dst.definitions(units) == src.definitions(units)


def test_a_definer_missing_on_the_target_is_rewritten_reported_and_not_a_difference(
        ports, objects_db):
    fixture = Endpoint("mysql", src_endpoint(ports).url.replace(SRC_DB, OBJ_DB), name="fixture")
    src = objects_source(ports)
    for query in ("CREATE OR REPLACE USER 'oim_ghost'@'%'",
                  f"GRANT ALL ON {OBJ_DB}.* TO 'oim_ghost'@'%'",
                  f"DROP DATABASE {OBJ_DB}"):
        sql(src, query)
    mysql_data.load(fixture, seed=3, scale=0.1)
    mysql_data.add_objects(fixture, definer="oim_ghost@%")
    cache: dict[str, str] = {}  # what the journal keeps between run and verify
    dst = objects_target(ports, cache)
    units = src.list_units()
    copy(src, dst, units)
    assert len(dst.definer_rewrites) == 7
    assert all("definer oim_ghost@% does not exist on the target" in line
               for line in dst.definer_rewrites)
    assert dst.definer_rewrites[0] in dst.describe()["notes"]
    assert dst.notices() == dst.definer_rewrites  # printed by the engine after finalize
    definers = sql(dst, "SELECT DISTINCT DEFINER FROM information_schema.VIEWS WHERE"
                        " TABLE_SCHEMA = %s", (OBJ_COPY,))
    assert definers == [(b"root@127.0.0.1",)]
    later = objects_target(ports, cache).definitions(units)  # verify, in another process
    assert later == src.definitions(units)
    without = objects_target(ports).definitions(units)  # no record of the rewrite: different
    assert without != src.definitions(units)
    assert without[f"view {OBJ_DB}.active_users"]["definer"] == "root@127.0.0.1"
    # once the account exists on the target, a copy keeps it
    sql(dst, "CREATE OR REPLACE USER 'oim_ghost'@'%'")
    try:
        sql(dst, f"DROP VIEW {OBJ_COPY}.active_users")
        kept = objects_target(ports, cache)
        kept.finalize_target(src.list_units(), src)
        assert kept.definer_rewrites == []
        assert sql(dst, "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"
                        " AND TABLE_NAME = 'active_users'", (OBJ_COPY,)) == [(b"oim_ghost@%",)]
    finally:
        sql(dst, "DROP USER 'oim_ghost'@'%'")
        sql(src, "DROP USER 'oim_ghost'@'%'")


def test_a_reader_is_told_which_objects_it_cannot_see(ports, objects_db):
    reader = objects_source(ports, "${OIM_MYSQL_SRC_READER_USER}",
                            "OIM_MYSQL_SRC_READER_PASSWORD")
    warnings = reader.describe()["warnings"]  # plan warnings: `plan --strict` refuses
    assert [w.startswith("NOT copied nor verified: ") for w in warnings] == [True, True]
    assert "TRIGGER privilege" in " ".join(warnings) and "EVENT privilege" in " ".join(warnings)
    kinds = {name.split()[0] for name in reader.definitions(reader.list_units())}
    assert kinds == {"view", "procedure", "function"}


def test_a_server_asking_for_a_file_gets_nothing(target):
    from migrator.stores.mysql.conn import Connection

    sql(target, f"CREATE DATABASE IF NOT EXISTS {DST_DB}")
    sql(target, f"CREATE TABLE {DST_DB}.lines (line TEXT)")
    conn = target._connect(local_infile=True)
    assert isinstance(conn, Connection)
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.MySQLError, match="never offers"):
            # stock PyMySQL would read and send this file
            cur.execute(f"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {DST_DB}.lines")
    finally:
        conn.close()
    assert sql(target, f"SELECT COUNT(*) FROM {DST_DB}.lines") == [(b"0",)]


# ------------------------------------------------------------------ coverage (no network)
def _endpoint(url: str, **options: Any) -> Endpoint:
    from migrator.config import TLS

    tls = options.pop("tls", None)
    return Endpoint("mysql", url, name="source.mysql", options=options,
                    tls=TLS.from_dict(tls, "source.mysql.tls"))


@pytest.mark.parametrize("url, options, field, problem", [
    ("postgres://h:5432/db", {}, "source.mysql.url", "scheme postgres:// is not for MySQL"),
    ("mysql://:3306/db", {}, "source.mysql.url", "names no host"),
    ("mysql://h:0/db", {}, "source.mysql.url", "port 0 is not a port"),
    ("mysql://h:99999/db", {}, "source.mysql.url", "not a valid URL"),
    ("mysql://h/a/b", {}, "source.mysql.url", "names more than one database"),
    ("mysql://h/db?charset=latin1", {}, "source.mysql.url", "unknown URL parameter 'charset'"),
    ("mysql://h/db?ssl=maybe", {}, "source.mysql.url", "?ssl=maybe is neither true nor false"),
    ("mysql://h/db?ssl-mode=PREFERRED", {}, "source.mysql.url", "fall back to plain text"),
    ("mysql://h/db?ssl-mode=sometimes", {}, "source.mysql.url", "is not a TLS mode"),
    ("mysql://h/db#frag", {}, "source.mysql.url", "has a fragment"),
    ("mysql://h/db?ssl=false", {"tls": {"enabled": True}}, "source.mysql.url",
     "asks for TLS mode DISABLED but tls: says verify"),
    ("mysql://h/db?ssl-mode=REQUIRED", {"tls": {"enabled": True}}, "source.mysql.url",
     "asks for TLS mode REQUIRED"),
    ("mysql://h/db", {"db_map": {"a": "b"}}, "source.mysql.db_map", "set it there"),
    ("mysql://h/db", {"db_map": {"a": ""}}, "source.mysql.db_map", "must map"),
    ("mysql://h/db", {"timeout": "soon"}, "source.mysql.timeout", "number of seconds"),
    ("mysql://h/db", {"timeout": 0}, "source.mysql.timeout", "number of seconds"),
    ("mysql://h/db", {"ddl_timeout": True}, "source.mysql.ddl_timeout", "number of seconds"),
    ("mysql://h/db", {"tls": {"ca_file": "/nonexistent/ca.pem"}}, "source.mysql.tls.ca_file",
     "no such file"),
])
def test_endpoints_this_store_would_misread_are_refused(url, options, field, problem):
    from migrator.errors import PlanError

    with pytest.raises(PlanError) as info:
        MySQLStore.check_endpoint(_endpoint(url, **options), Role.SOURCE)
    assert info.value.field == field
    assert problem in str(info.value)
    assert "\n" not in info.value.message


@pytest.mark.parametrize("url, tls, state", [
    ("mysql://h/db", None, "off"),
    ("mariadb://h/db", None, "off"),
    ("mysql://h/db?ssl=true", None, "on (verified)"),
    ("mysql://h/db?ssl=false", None, "off"),
    ("mysql://h/db?ssl-mode=REQUIRED", None, "on (NOT verified)"),
    ("mysql://h/db?ssl_mode=verify_ca", None, "on (verified; host name not checked)"),
    ("mysql://h/db", {"enabled": True}, "on (verified)"),
    ("mysql://h/db", {"enabled": True, "verify": False}, "on (NOT verified)"),
    ("mysql://h/db?ssl-mode=VERIFY_IDENTITY", {"enabled": True}, "on (verified)"),
])
def test_tls_is_off_unless_asked_and_verified_unless_told_otherwise(url, tls, state):
    endpoint = _endpoint(url, **({"tls": tls} if tls else {}))
    MySQLStore.check_endpoint(endpoint, Role.SOURCE)
    store = MySQLStore(endpoint)
    assert store.settings.tls_state == state
    assert store.settings.port == 3306 and store.settings.database == "db"
    context = store.settings.ssl_context()
    if state == "off":
        assert context is None
    else:
        assert context is not None
        assert context.check_hostname is (state == "on (verified)")
        assert (context.verify_mode == ssl.CERT_NONE) is (state == "on (NOT verified)")


def test_unit_specs_and_options_are_checked_against_the_store_schemas(source):
    import jsonschema

    for unit in source.list_units():
        jsonschema.validate(unit.spec, MySQLStore.SPEC_SCHEMA)
    bad_specs = [{"db": "d"}, {"table": "t"}, {"db": "d", "table": ""},
                 {"db": "d", "table": "t", "lo": ["a", None]},
                 {"db": "d", "table": "t", "hi": "zzz"},
                 {"db": "d", "table": "t", "lo": [True]},
                 {"db": "d", "table": "t", "key": "id"},
                 {"db": "d", "table": "t", "colums": ["a"]}]
    for spec in bad_specs:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(spec, MySQLStore.SPEC_SCHEMA)
    jsonschema.validate({"db_map": {"a": "b"}, "timeout": 2.5}, MySQLStore.OPTION_SCHEMA)
    for options in ({"timeout": "60"}, {"timeout": 0}, {"db_map": {"a": ""}}, {"bogus": 1},
                    {"db_map": ["a"]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(options, MySQLStore.OPTION_SCHEMA)


def _ranged(name: str, lo: Any, hi: Any, key: tuple[str, ...] = ("id",)) -> Unit:
    return Unit("mysql", name, {"db": "d", "table": "t", "key": list(key), "lo": lo, "hi": hi})


def test_units_that_no_longer_tile_a_table_are_named():
    whole = [_ranged("d.t#0", None, [100]), _ranged("d.t#1", [100], [200]),
             _ranged("d.t#2", [200], None)]
    assert MySQLStore.uncovered(whole) == []
    assert MySQLStore.container_of(whole[0]) == "d.t"
    narrowed = [whole[0], _ranged("d.t#1", [100], [150]), whole[2]]
    assert MySQLStore.uncovered(narrowed) == [
        "d.t: keys from 150 (where d.t#1 ends) to 200 (where d.t#2 starts) are in no unit"]
    [gap] = MySQLStore.uncovered([whole[0], whole[2]])
    assert "keys from 100 (where d.t#0 ends) to 200 (where d.t#2 starts)" in gap
    [gap] = MySQLStore.uncovered(whole[1:])
    assert "keys from the lowest key to 100 (where d.t#1 starts)" in gap
    [gap] = MySQLStore.uncovered(whole[:2])
    assert "keys from 200 (where d.t#1 ends) to the highest key" in gap
    emptied = [whole[0], _ranged("d.t#1", [100], [100]), whole[2]]
    assert MySQLStore.uncovered(emptied) == [
        "d.t: unit d.t#1 covers no key (lo = hi = 100)",
        "d.t: no unit ends at 200, where d.t#2 starts: keys below it are in no unit"]
    two_gaps = MySQLStore.uncovered([whole[0], _ranged("d.t#1", [120], [150]),
                                     _ranged("d.t#2", [180], None)])
    assert len(two_gaps) == 4 and all(line.startswith("d.t: no unit") for line in two_gaps)
    [gap] = MySQLStore.uncovered([*whole, _ranged("d.t#9", [100], None)])
    assert "d.t#1, d.t#9 all start at 100 (they overlap)" in gap
    [gap] = MySQLStore.uncovered([_ranged("d.t#0", None, [1, 2]), whole[2]])
    assert "has hi [1, 2], which does not fit its key (id)" in gap
    [gap] = MySQLStore.uncovered([_ranged("d.t", None, [5], key=())])
    assert "has hi [5], which does not fit its key (none)" in gap
    [gap] = MySQLStore.uncovered([_ranged("d.t#0", None, None, key=()),
                                  _ranged("d.t#1", None, None, key=())])
    assert "without a key is copied as one whole unit, not 2" in gap
    [gap] = MySQLStore.uncovered([whole[0], _ranged("d.t#1", [100], None, key=("k",))])
    assert "split on different keys" in gap


def test_a_table_created_after_plan_is_unlisted_even_when_empty(source):
    units = source.list_units()
    assert source.unlisted(units) == []
    sql(source, f"CREATE TABLE {SRC_DB}.born_later (id INT PRIMARY KEY)")
    try:
        assert source.unlisted(units) == [f"{SRC_DB}.born_later"]
        assert source.unlisted([u for u in units if u.spec["table"] != "users"]) == [
            f"{SRC_DB}.born_later", f"{SRC_DB}.users"]
    finally:
        sql(source, f"DROP TABLE {SRC_DB}.born_later")


# ------------------------------------------------------------------ faults
def server_pid(store: MySQLStore) -> int:
    [(pid_file,)] = sql(store, "SELECT @@pid_file", raw=False)
    with open(pid_file) as f:
        return int(f.read().strip())


def test_a_stalled_target_is_a_transient_error_after_its_timeout(ports, source):
    import os
    import signal
    import time

    from migrator.errors import TransientError

    target = MySQLStore(dst_endpoint(ports, timeout=1), options=StoreOptions(
        on_existing="overwrite"))
    sql(target, f"DROP DATABASE IF EXISTS {DST_DB}")
    units = units_of(source, "users")
    target.prepare_target(units, source)
    importer = target.importer(units[0])
    importer.prepare(resumed=False)
    batch = next(iter(source.export(units[0])))
    pid = server_pid(target)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match="target.mysql.*timed out"):
            importer.write_batch(batch)
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    importer = target.importer(units[0])  # what a retry does: a new importer, same batch
    importer.prepare(resumed=True)
    for batch in source.export(units[0]):
        importer.write_batch(batch)
    importer.finalize()
    assert same_digests(source, target, units[0])


def test_asking_for_tls_from_a_server_without_it_is_refused(ports):
    store = MySQLStore(Endpoint("mysql", dst_endpoint(ports).url + "?ssl-mode=REQUIRED",
                                name="target.mysql"))
    with pytest.raises(EndpointError) as info:
        store.open()
    assert "target.mysql" in str(info.value) and not info.value.transient


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> dict[str, Any]:
    """A MariaDB of the test binaries with a self-signed certificate for 127.0.0.1 only,
    started here (scripts/services.py runs its servers without TLS)."""
    import os
    import shutil
    import subprocess
    import time

    binaries = {name: shutil.which(name) for name in ("mariadbd", "mariadb-install-db",
                                                      "openssl")}
    if not all(binaries.values()):
        pytest.skip(f"needs {', '.join(n for n, p in binaries.items() if not p)}")
    d = tmp_path_factory.mktemp("tls-mariadb")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([binaries["openssl"], "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run([binaries["mariadb-install-db"], "--no-defaults", f"--datadir={d / 'data'}",
                    "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = d / "s.sock"
    proc = subprocess.Popen(
        [binaries["mariadbd"], "--no-defaults", f"--datadir={d / 'data'}", f"--socket={sock}",
         f"--port={port}", "--bind-address=127.0.0.1", *as_root, "--skip-log-bin",
         "--innodb-buffer-pool-size=32M", "--performance-schema=OFF", "--skip-name-resolve",
         f"--ssl-cert={cert}", f"--ssl-key={key}", f"--log-error={d / 'error.log'}",
         f"--pid-file={d / 'pid'}", f"--tmpdir={d}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                admin = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
                break
            except pymysql.MySQLError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"TLS MariaDB did not start: {(d / 'error.log').read_text()}")
                time.sleep(0.2)
        with admin.cursor() as cur:
            cur.execute("CREATE USER 'tls'@'127.0.0.1' IDENTIFIED BY 'tls-test-pass'")
            cur.execute("GRANT ALL ON *.* TO 'tls'@'127.0.0.1'")
        admin.close()
        yield {"port": port, "ca": str(cert)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _tls_store(server: dict[str, Any], query: str = "", host: str = "127.0.0.1",
               **tls: Any) -> MySQLStore:
    from migrator.config import TLS

    url = f"mysql://tls:${{OIM_TEST_TLS_PASSWORD}}@{host}:{server['port']}{query}"
    return MySQLStore(Endpoint("mysql", url, name="tls.mysql",
                               tls=TLS.from_dict(tls or None, "tls.mysql.tls")))


def _cipher(store: MySQLStore) -> str:
    with store._session() as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return str(cur.fetchone()[1])


def test_tls_against_a_server_with_a_self_signed_certificate(tls_server, monkeypatch):
    monkeypatch.setenv("OIM_TEST_TLS_PASSWORD", "tls-test-pass")
    plain = _tls_store(tls_server)
    assert _cipher(plain) == "" and plain.describe()["tls"] == "off"  # not negotiated silently
    verified = _tls_store(tls_server, enabled=True, ca_file=tls_server["ca"])
    assert _cipher(verified) != "" and verified.describe()["tls"] == "on (verified)"
    assert "tls: on (verified)" in verified.describe()["notes"]
    for refused in (_tls_store(tls_server, enabled=True),  # system CAs do not know it
                    _tls_store(tls_server, "?ssl=true"),
                    _tls_store(tls_server, host="localhost", enabled=True,
                               ca_file=tls_server["ca"])):  # the certificate names 127.0.0.1
        with pytest.raises(EndpointError, match="tls.mysql.*TLS failed") as info:
            refused.open()
        assert not info.value.transient
    other_name = _tls_store(tls_server, "?ssl-mode=VERIFY_CA", host="localhost", enabled=True,
                            ca_file=tls_server["ca"])
    assert _cipher(other_name) != ""
    unverified = _tls_store(tls_server, enabled=True, verify=False)
    assert _cipher(unverified) != "" and unverified.describe()["tls"] == "on (NOT verified)"
    assert _cipher(_tls_store(tls_server, "?ssl-mode=REQUIRED")) != ""
