"""The MySQL store against real MariaDB servers (source, target) from scripts/services.py."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pymysql
import pymysql.converters
import pytest

from fixtures import mysql_data
from migrator.config import Endpoint
from migrator.errors import EndpointError, StoreError
from migrator.stores.base import Role, Selection, StoreOptions, Unit
from migrator.stores.mysql import MySQLStore
from migrator.stores.mysql_schema import NO_KEY_NOTE

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
    importer.prepare(resumed=True)  # truncates: a keyless unit restarts from the top
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
