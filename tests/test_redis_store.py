"""The Redis store against real servers: a standalone source, a standalone target and a
3-master Redis Cluster target (scripts/services.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from fixtures import redis_data
from migrator import presets
from migrator.config import Endpoint
from migrator.engine.verify import verify_unit
from migrator.errors import CapabilityMissing, EndpointError, PlanError, StoreError
from migrator.stores.base import Batch, Role, Selection, StoreOptions, Unit
from migrator.stores.redis import store as redis_store
from migrator.stores.redis import value as rv
from migrator.stores.redis.store import RedisStore
from migrator.stores.redis.value import key_text


def _with_auth(url_var: str, auth: str, path: str = "") -> str:
    """The test server's URL with credentials and ``path`` (no path: every DB)."""
    scheme, rest = os.environ[url_var].split("://", 1)
    return f"{scheme}://{auth}@{rest.split('/', 1)[0]}{path}"


def source_ep(path: str = "", **options: Any) -> Endpoint:
    return Endpoint("redis", _with_auth("OIM_REDIS_SRC_URL", ":${OIM_REDIS_SRC_PASSWORD}", path),
                    name="source.redis", options=options)


def reader_ep() -> Endpoint:
    auth = "${OIM_REDIS_SRC_READER_USER}:${OIM_REDIS_SRC_READER_PASSWORD}"
    return Endpoint("redis", _with_auth("OIM_REDIS_SRC_URL", auth), name="source.redis")


def target_ep(kind: str, path: str = "", **options: Any) -> Endpoint:
    if kind == "cluster":
        url = _with_auth("OIM_REDIS_CLUSTER_URL", ":${OIM_REDIS_CLUSTER_PASSWORD}", path)
    else:
        url = _with_auth("OIM_REDIS_DST_URL", ":${OIM_REDIS_DST_PASSWORD}", path)
    return Endpoint("redis", url, name="target.redis", options=options)


_opened: list[RedisStore] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture
def clean(redis_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Admin clients of all three servers, every DB emptied before the test."""
    clients = {"src": redis_data.client(source_ep()), "dst": redis_data.client(target_ep("dst")),
               "cluster": redis_data.client(target_ep("cluster"))}
    for c in clients.values():
        c.flushall()
    yield clients
    for c in clients.values():
        c.close()


def open_store(endpoint: Endpoint, **kw: Any) -> RedisStore:
    store = RedisStore(endpoint, kw.pop("selection", None), StoreOptions(**kw))
    _opened.append(store)
    store.open()
    return store


def copy(source: RedisStore, target: RedisStore) -> tuple[int, list[str]]:
    """What the engine does: prepare, then every unit's batches through an importer."""
    units = source.list_units()
    target.prepare_target(units, source)
    written, skipped = 0, []
    for unit in units:
        importer = target.importer(unit)
        importer.prepare(False)
        for batch in source.export(unit):
            importer.write_batch(batch)
            written += len(batch)
            skipped += batch.skipped
        importer.finalize()
    return written, skipped


def contents(client: Any) -> dict[bytes, tuple[str, Any, int | None]]:
    """Every key as (type, value, expiry ms), read with plain redis-py (not our code)."""
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            groups = [(g["name"], g["last-delivered-id"], g["pending"])
                      for g in client.xinfo_groups(key)]
            pending = [(p["message_id"], p["consumer"], p["times_delivered"])
                       for g in client.xinfo_groups(key)
                       for p in client.xpending_range(key, g["name"], "-", "+", 100)]
            value = (client.xrange(key), groups, pending,
                     client.xinfo_stream(key)["last-generated-id"])
        expire = client.pexpiretime(key)
        out[key] = (kind, value, None if expire < 0 else expire)
    return out


def nkeys(client: Any) -> int:
    return sum(1 for _ in client.scan_iter(count=1000))  # every master of a cluster


def assert_same(a: dict[bytes, Any], b: dict[bytes, Any], tolerance_ms: int = 1000) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key][:2] == b[key][:2], key
        if a[key][2] is None:
            assert b[key][2] is None, key
        else:
            assert abs(a[key][2] - b[key][2]) <= tolerance_ms, key


def every_type(client: Any) -> None:
    """One key of each type, with binary names and values, TTLs, ±inf scores, a group."""
    client.set(b"bin:\xff\x00\\name", b"\x00\x01\xfe binary", px=3_600_000)
    client.set("plain", "v")
    client.hset("h:{user1}", mapping={"a": "1", b"\xff": b"\x00"})
    client.pexpire("h:{user1}", 86_400_000)
    client.rpush("l", *[f"e{i}" for i in range(2500)], "e0")  # multi-page, repeats kept
    client.sadd("s", *range(300))
    client.zadd("z", {"neg": float("-inf"), "pos": float("inf"), "pi": 3.141592653589793,
                      "tiny": 1e-300})
    for i in range(5):
        client.xadd("x", {"f": f"v{i}", "g": b"\xff"}, id=f"1000-{i}")
    client.xgroup_create("x", "grp", id="0")
    client.xreadgroup("grp", "alice", {"x": ">"}, count=2)
    client.xack("x", "grp", "1000-0")
    client.pexpire("x", 7 * 86_400_000)


# -- copy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target_kind", ["dst", "cluster"])
def test_round_trip_keeps_every_type_value_and_ttl(clean, target_kind):
    every_type(clean["src"])
    source, target = open_store(source_ep()), open_store(target_ep(target_kind))
    written, skipped = copy(source, target)
    assert written == 7 and skipped == []
    assert_same(contents(clean["src"]), contents(clean[target_kind]))
    unit = source.list_units()[0]
    chunks = source.chunks(unit)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)


@pytest.mark.parametrize("target_kind", ["dst", "cluster"])
def test_typed_mode_round_trip_keeps_values_groups_and_pending(clean, target_kind):
    every_type(clean["src"])
    source = open_store(source_ep())
    target = open_store(target_ep(target_kind, mode="typed"))
    copy(source, target)
    batch = next(source.export(source.list_units()[0]))
    assert all(len(record) == 4 for record in batch.records)  # native values travelled
    assert_same(contents(clean["src"]), contents(clean[target_kind]))


def test_target_refusing_payloads_switches_to_typed_copy(clean):
    every_type(clean["src"])
    source, target = open_store(source_ep()), open_store(target_ep("dst"))
    unit = source.list_units()[0]
    target.prepare_target([unit], source)
    batch = next(source.export(unit))
    # A payload from a newer RDB version than the target knows: bump the version bytes.
    batch.records = [(k, e, p[:-10] + b"\xff\x00" + p[-8:]) for k, e, p in batch.records]
    target.importer(unit).write_batch(batch)
    assert_same(contents(clean["src"]), contents(clean["dst"]))
    assert all(len(r) == 4 for r in next(source.export(unit)).records)  # source switched


def test_restore_mode_fails_clearly_when_the_target_refuses_payloads(clean):
    clean["src"].set("a", "1")
    source = open_store(source_ep())
    target = open_store(target_ep("dst", mode="restore"))
    unit = source.list_units()[0]
    target.prepare_target([unit], source)
    batch = next(source.export(unit))
    batch.records = [(k, e, p[:-10] + b"\xff\x00" + p[-8:]) for k, e, p in batch.records]
    with pytest.raises(StoreError, match="refuses the source's DUMP payloads"):
        target.importer(unit).write_batch(batch)


def test_key_expired_before_import_is_skipped_not_written(clean):
    clean["src"].set("short", "x", px=300)
    clean["src"].set("long", "y")
    source, target = open_store(source_ep()), open_store(target_ep("dst"))
    unit = source.list_units()[0]
    batches = list(source.export(unit))
    time.sleep(0.4)
    importer = target.importer(unit)
    for batch in batches:
        importer.write_batch(batch)
    assert [s for b in batches for s in b.skipped] == ["short"]
    assert clean["dst"].exists("short") == 0 and clean["dst"].get("long") == b"y"


def test_key_vanishing_between_scan_and_dump_is_skipped(clean):
    clean["src"].set("stays", "1")
    source = open_store(source_ep())
    records, skipped, _ = source._read(source._client(0), [b"stays", b"vanished"])
    assert [r[0] for r in records] == [b"stays"] and skipped == [b"vanished"]


def test_resume_from_mid_unit_cursor_copies_the_rest(clean):
    redis_data.mixed(source_ep(), 2000, seed=3)
    source = open_store(source_ep(scan_count=100), batch_records=100)
    target = open_store(target_ep("cluster"))
    unit = source.list_units()[0]
    importer = target.importer(unit)
    stream = source.export(unit)
    first = [next(stream) for _ in range(3)]
    for batch in first:
        importer.write_batch(batch)
    stream.close()  # a crash after the third checkpoint
    assert 0 < nkeys(clean["cluster"]) < 2000
    for batch in source.export(unit, resume_from=first[-1].cursor):
        importer.write_batch(batch)
    assert nkeys(clean["cluster"]) == 2000
    chunks = source.chunks(unit)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)
    assert list(source.export(unit, resume_from={"done": True})) == []


@pytest.mark.parametrize("mode", ["auto", "typed"])
def test_replaying_a_batch_leaves_the_target_as_one_write(clean, mode):
    every_type(clean["src"])
    source = open_store(source_ep(mode=mode))
    target = open_store(target_ep("dst"))
    unit = source.list_units()[0]
    importer = target.importer(unit)
    for batch in source.export(unit):
        importer.write_batch(batch)
        importer.write_batch(batch)  # crash between write and checkpoint, then replay
    assert clean["dst"].llen("l") == 2501
    assert_same(contents(clean["src"]), contents(clean["dst"]))


def test_openim_preset_keeps_state_and_drops_rebuilt_caches(clean):
    counts = redis_data.load(source_ep(), seed=7, scale=0.5)
    selection = Selection(preset="openim")
    source = open_store(source_ep(), selection=selection)
    target = open_store(target_ep("cluster"), selection=selection)
    copy(source, target)
    dst = clean["cluster"]

    def count(pattern: str) -> int:
        return sum(1 for _ in dst.scan_iter(match=pattern, count=1000))

    for state in ("UID_PID_TOKEN_STATUS", "CHAT_UID_TOKEN_STATUS", "FCM_TOKEN", "MALLOC_SEQ",
                  "SEQ_USER_READ", "USER_BADGE_UNREAD_COUNT_SUM", "MAX_SEQ", "MIN_SEQ"):
        assert count(f"{state}:*") == counts[state] > 0, state
    assert counts["MSG_CACHE"] > 0 and count("MSG_CACHE:*") == 0
    assert counts["USER_INFO"] > 0 and count("USER_INFO:*") == 0
    assert count("oimtest:*") == 12  # keys the preset does not know are kept
    unit = source.list_units()[0]
    chunks = source.chunks(unit)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)


def test_preset_drop_patterns_never_match_a_state_key():
    drop = presets.get("redis", "openim").exclude
    from fnmatch import fnmatchcase
    for keep in presets.MUST_KEEP[("redis", "openim")]:
        example = keep.replace("*", "si_1_2:3")
        assert not any(fnmatchcase(example, p) for p in drop), keep
    with pytest.raises(PlanError, match="nosuch"):
        presets.get("redis", "nosuch")


def test_include_and_exclude_globs_match_binary_key_names(clean):
    src = clean["src"]
    src.set(b"keep:\xff\xfe", 1)
    src.set(b"keep:a", 1)
    src.set(b"keep:skip:1", 1)
    src.set(b"other", 1)
    selection = Selection(include=("keep:*",), exclude=("keep:skip*",))
    source = open_store(source_ep(), selection=selection)
    copy(source, open_store(target_ep("dst")))
    assert sorted(clean["dst"].keys()) == [b"keep:a", b"keep:\xff\xfe"]


def test_big_db_splits_into_slot_ranges_each_key_in_exactly_one(clean):
    redis_data.mixed(source_ep(), 1000, seed=5)
    source = open_store(source_ep(), unit_records=100)
    units = source.list_units()
    assert len(units) == 16 and units[0].name == "db0/slots-00000-01023"
    seen: list[bytes] = []
    for unit in units:
        lo, hi = unit.spec["slots"]
        keys = [r[0] for b in source.export(unit) for r in b.records]
        assert all(lo <= key_slot(k) <= hi for k in keys)
        seen += keys
    assert len(seen) == len(set(seen)) == 1000


def test_sibling_units_scanning_together_share_scan_pages(clean):
    redis_data.mixed(source_ep(), 4000, seed=4)
    source = open_store(source_ep(scan_count=100), unit_records=1000, batch_records=50)
    units = source.list_units()
    assert len(units) == 4

    def scans() -> int:
        return clean["src"].info("commandstats").get("cmdstat_scan", {}).get("calls", 0)

    before = scans()
    with ThreadPoolExecutor(len(units)) as pool:  # one thread per unit, like the engine
        exported = list(pool.map(lambda u: [r[0] for b in source.export(u) for r in b.records],
                                 units))
    one_pass = 4000 // 100
    assert scans() - before < 3 * one_pass  # four units, fewer than three passes
    keys = [k for part in exported for k in part]
    assert len(keys) == len(set(keys)) == 4000


# -- databases and cluster targets --------------------------------------------------------


def test_cluster_target_refuses_an_unmapped_db_and_accepts_a_mapped_one(clean):
    redis_data.client(source_ep(), db=3).set("in-db3", "x", px=60_000)
    source = open_store(source_ep())
    units = [u for u in source.list_units() if u.spec["db"] == 3]
    with pytest.raises(PlanError, match="DB 3"):
        open_store(target_ep("cluster")).existing(units)
    target = open_store(target_ep("cluster", db_map={"3": 0}))
    assert target.existing(units) == []
    importer = target.importer(units[0])
    for batch in source.export(units[0]):
        importer.write_batch(batch)
    assert clean["cluster"].get("in-db3") == b"x"
    assert target.existing(units) == [units[0].name]


def test_every_db_with_keys_is_copied_into_the_same_db(clean):
    redis_data.client(source_ep(), db=5).set("five", "5")
    clean["src"].set("zero", "0")
    copy(open_store(source_ep()), open_store(target_ep("dst")))
    assert redis_data.client(target_ep("dst"), db=5).get("five") == b"5"
    assert clean["dst"].get("zero") == b"0"


# -- verification -------------------------------------------------------------------------


@pytest.fixture(params=["dst", "cluster"])
def copied(request, clean):
    """OpenIM-like data copied into a target (standalone, then cluster), plus both stores."""
    redis_data.load(source_ep(), seed=11, scale=0.3)
    source, target = open_store(source_ep()), open_store(target_ep(request.param))
    copy(source, target)
    unit = source.list_units()[0]
    clean["target"] = clean[request.param]
    return source, target, unit, source.chunks(unit)


def differences(source: RedisStore, target: RedisStore, unit: Unit, chunks: list) -> list:
    """What the verifier does: drill into differing chunks, compare records."""
    a, b = source.digest(unit, chunks), target.digest(unit, chunks)
    out = []
    for chunk in chunks:
        if a[chunk.id] == b[chunk.id]:
            continue
        left, right = dict(source.records(unit, chunk)), dict(target.records(unit, chunk))
        out += [("missing", k) for k in left if k not in right]
        out += [("extra", k) for k in right if k not in left]
        out += [("differs", k) for k in left
                if k in right and not source.same_record(left[k], right[k])]
    return out


def test_digest_is_equal_after_copy(copied):
    source, target, unit, chunks = copied
    digests = source.digest(unit, chunks)
    assert sum(d.count for d in digests.values()) == source.list_units()[0].records
    assert digests == target.digest(unit, chunks)
    assert differences(*copied) == []


def test_a_digest_too_big_for_its_memo_sums_alike_and_drills_down_by_reading(
        copied, clean, monkeypatch):
    """Past the memo's limit the digest sums its packed hashes as it goes (every
    FOLD_KEYS keys) and keeps none: digests and per-key hashes read again are the same."""
    source, target, unit, chunks = copied
    kept = source.digest(unit, chunks)
    from_memo = {c.id: source.record_hashes(unit, c) for c in chunks}
    monkeypatch.setattr(redis_store, "FOLD_KEYS", 7)
    for store in (source, target):
        store._hashes.limit = 5
    assert source.digest(unit, chunks) == kept == target.digest(unit, chunks)
    assert {c.id: source.record_hashes(unit, c) for c in chunks} == from_memo
    key = next(clean["target"].scan_iter(match="UID_PID_TOKEN_STATUS:*"))
    clean["target"].hset(key, "x", "tampered")
    report = verify_unit(source, target, unit)
    assert report.status == "differ" and report.differ == [key.decode()]


def test_changed_hash_field_on_target_names_exactly_that_key(copied, clean):
    key = next(clean["target"].scan_iter(match="UID_PID_TOKEN_STATUS:*"))
    field = next(iter(clean["target"].hkeys(key)))
    clean["target"].hset(key, field, "tampered")
    assert differences(*copied) == [("differs", key.decode())]


def test_ttl_change_beyond_tolerance_differs_within_tolerance_does_not(copied, clean):
    keys = [k for k in clean["target"].scan_iter(match="MALLOC_SEQ:*")][:2]
    far, near = keys
    clean["target"].pexpireat(far, clean["target"].pexpiretime(far) + 5000)
    clean["target"].pexpireat(near, clean["target"].pexpiretime(near) + 300)
    assert differences(*copied) == [("differs", far.decode())]
    clean["target"].persist(near)  # an expiry lost altogether is a difference too
    assert sorted(differences(*copied)) == sorted([("differs", far.decode()),
                                                   ("differs", near.decode())])


def test_key_deleted_or_added_on_target_shows_as_missing_or_extra(copied, clean):
    gone = next(clean["target"].scan_iter(match="FCM_TOKEN:*"))
    clean["target"].delete(gone)
    clean["target"].set(b"intruder:\xff", "x")
    assert sorted(differences(*copied)) == [("extra", "intruder:\\xff"),
                                            ("missing", gone.decode())]


def test_verify_does_not_depend_on_encoding(clean):
    dst = clean["dst"]
    saved = {**dst.config_get("hash-max-listpack-entries"),
             **dst.config_get("set-max-intset-entries")}
    dst.config_set("hash-max-listpack-entries", 4)
    dst.config_set("set-max-intset-entries", 4)
    try:
        clean["src"].hset("h", mapping={f"f{i}": i for i in range(50)})
        clean["src"].sadd("s", *range(50))
        clean["src"].hset("big", mapping={f"f{i}": i for i in range(3000)})  # many HSCAN pages
        clean["src"].set("huge", os.urandom(3 << 20))  # several GETRANGE pages
        source, target = open_store(source_ep()), open_store(target_ep("dst", mode="typed"))
        copy(source, target)
        assert dst.object("encoding", "h") != clean["src"].object("encoding", "h")
        assert dst.object("encoding", "s") != clean["src"].object("encoding", "s")
        unit = source.list_units()[0]
        chunks = source.chunks(unit)
        a, b = source.digest(unit, chunks), target.digest(unit, chunks)
        # A set is digested from its sorted elements, whatever its encoding; a hash in a
        # listpack by its payload, so "h" differs here and is then compared canonically.
        assert a[chunk_of(chunks, "s")] == b[chunk_of(chunks, "s")]
        assert differences(source, target, unit, chunks) == []
        dst.hset("big", "f2999", "changed")
        assert differences(source, target, unit, chunks) == [("differs", "big")]
    finally:
        for name, value in saved.items():
            dst.config_set(name, value)


def chunk_of(chunks: list, key: str) -> str:
    slot = key_slot(key.encode())
    return next(c.id for c in chunks if c.bounds[0] <= slot <= c.bounds[1])


def digest_paths(client: Any) -> None:
    """One key for each way the chunk digest reads a value (each in its own chunk)."""
    client.set("str", b"\x00payload" * 10, px=3_600_000)  # MGET value
    client.set("num", 12345)
    client.hset("h", mapping={"a": "1", "b": "2"})  # listpack payload
    client.zadd("z", {"m1": 1, "m2": 2.5})
    client.rpush("l", *[f"e{i}" for i in range(300)])
    client.xadd("x", {"f": "v"}, id="1-1")
    client.sadd("ints", *range(20))  # sorted elements
    client.sadd("names", "x" * 100, *[f"user-{i}" for i in range(200)])  # hashtables
    client.hset("wide", mapping={"long": "v" * 100, **{f"f{i}": i for i in range(9)}})
    client.sadd("many", *[f"m{i}" for i in range(1500)])  # canonical: several SSCAN pages


@pytest.mark.parametrize("target_kind", ["dst", "cluster"])
def test_chunk_digest_catches_one_byte_and_ttl_changes(clean, target_kind):
    digest_paths(clean["src"])
    source, target = open_store(source_ep()), open_store(target_ep(target_kind))
    copy(source, target)
    unit = source.list_units()[0]
    chunks = source.chunks(unit)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)
    dst = clean[target_kind]
    changes = [("str", lambda: dst.setrange("str", 5, b"\x01")),
               ("num", lambda: dst.set("num", 12346)),
               ("h", lambda: dst.hset("h", "b", "3")),
               ("z", lambda: dst.zadd("z", {"m2": 2.25})),
               ("l", lambda: dst.lset("l", 150, "E150")),
               ("x", lambda: dst.xadd("x", {"f": "w"}, id="1-2")),
               ("ints", lambda: (dst.srem("ints", 19), dst.sadd("ints", 29))),
               ("names", lambda: (dst.srem("names", "user-7"), dst.sadd("names", "user_7"))),
               ("wide", lambda: dst.hset("wide", "f7", "8")),
               ("many", lambda: (dst.srem("many", "m7"), dst.sadd("many", "n7"))),
               ("str", lambda: dst.pexpireat("str", dst.pexpiretime("str") + 5000)),
               ("h", lambda: dst.pexpire("h", 3_600_000))]
    for key, change in changes:
        payload, expire = dst.dump(key), dst.pexpiretime(key)
        change()
        a, b = source.digest(unit, chunks), target.digest(unit, chunks)
        assert [c.id for c in chunks if a[c.id] != b[c.id]] == [chunk_of(chunks, key)], key
        assert differences(source, target, unit, chunks) == [("differs", key)], key
        dst.restore(key, max(expire, 0), payload, replace=True, absttl=True)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)


def test_payloads_that_differ_for_equal_values_are_no_difference(clean):
    src, dst = clean["src"], clean["dst"]
    src.sadd("names", "x" * 100, *[f"user-{i}" for i in range(200)])
    src.hset("h", mapping={"a": "1", "b": "2", "c": "3"})
    source, target = open_store(source_ep()), open_store(target_ep("dst"))
    copy(source, target)
    # A hashtable dumps in an order set by each server's random hash seed.
    assert src.dump("names")[:-10] != dst.dump("names")[:-10]
    dst.delete("h")  # the same hash written natively, fields in another order
    dst.hset("h", mapping={"c": "3", "b": "2", "a": "1"})
    assert src.dump("h") != dst.dump("h")
    unit = source.list_units()[0]
    chunks = source.chunks(unit)
    a, b = source.digest(unit, chunks), target.digest(unit, chunks)
    assert a[chunk_of(chunks, "names")] == b[chunk_of(chunks, "names")]
    assert a[chunk_of(chunks, "h")] != b[chunk_of(chunks, "h")]  # listed key by key...
    assert differences(source, target, unit, chunks) == []  # ...where no key differs
    report = verify_unit(source, target, unit)
    assert report.status == "match" and report.chunks == [] and report.target_count == 2


def test_listing_many_differing_chunks_scans_the_unit_once(clean):
    redis_data.mixed(source_ep(), 3000, seed=6)
    source = open_store(source_ep(scan_count=100))
    target = open_store(target_ep("dst", scan_count=100))
    copy(source, target)
    changed = sorted(clean["dst"].scan_iter(count=1000))[::10]
    for key in changed:  # in most of the 256 chunks
        clean["dst"].pexpire(key, 3_600_000)
    unit = source.list_units()[0]
    chunks = source.chunks(unit)

    def scans() -> int:
        return clean["dst"].info("commandstats")["cmdstat_scan"]["calls"]

    before = scans()
    assert sorted(differences(source, target, unit, chunks)) == \
        [("differs", key.decode()) for key in changed]
    assert scans() - before < 3 * 3000 // 100  # the digest and one listing, not one per chunk


def test_chunk_digest_without_pexpiretime_and_with_vanished_keys(clean):
    every_type(clean["src"])
    source, target = open_store(source_ep()), open_store(target_ep("dst"))
    copy(source, target)
    for store in (source, target):
        store.version = (6, 2, 0)  # PTTL + now, as on servers before 7.0
    unit = source.list_units()[0]
    chunks = source.chunks(unit)
    assert sum(d.count for d in target.digest(unit, chunks).values()) == 7
    assert differences(source, target, unit, chunks) == []
    clean["dst"].pexpire("plain", 60_000)
    assert differences(source, target, unit, chunks) == [("differs", "plain")]
    for one_mget in (True, False):
        found = rv.record_hashes(source._client(0), [b"plain", b"vanished", b"s"], now_ms=0,
                                 pexpiretime=True, tolerance=1000, one_mget=one_mget)
        assert [key for key, _ in found] == [b"plain", b"s"]
        assert rv.record_hashes(source._client(0), [], now_ms=0, pexpiretime=True,
                                tolerance=1000, one_mget=one_mget) == []


def test_key_text_is_injective_for_binary_and_backslash_names():
    names = [b"a\\xff", b"a\xff", b"plain", "ü".encode(), b"a\\\\xff"]
    assert len({key_text(n) for n in names}) == len(names)
    assert key_text(b"plain") == "plain"
    # sync hands keys back by these names: they must lead back to the very same bytes
    names += [b"\xed\xa0\x80", b"a\\x41", b"\\", b"\x00\\\xff", os.urandom(64)]
    assert [rv.key_bytes(key_text(n)) for n in names] == names


# -- access and errors --------------------------------------------------------------------


def test_read_only_user_suffices_for_source_and_fails_as_target(clean):
    every_type(clean["src"])
    reader = open_store(reader_ep())
    reader.check_access(Role.SOURCE)
    units = reader.list_units()
    records = [r for b in reader.export(units[0]) for r in b.records]
    assert len(records) == 7
    chunks = reader.chunks(units[0])
    assert sum(d.count for d in reader.digest(units[0], chunks).values()) == 7
    with pytest.raises(EndpointError, match="RESTORE"):
        reader.check_access(Role.TARGET)
    open_store(target_ep("cluster")).check_access(Role.TARGET)
    open_store(target_ep("dst", mode="typed")).check_access(Role.TARGET)


def test_wrong_password_is_an_endpoint_error_that_never_shows_it(redis_env, monkeypatch):
    monkeypatch.setenv("OIM_WRONG_PW", "s3cret-not-this-one")
    for url_var in ("OIM_REDIS_SRC_URL", "OIM_REDIS_CLUSTER_URL"):
        endpoint = Endpoint("redis", _with_auth(url_var, ":${OIM_WRONG_PW}"), name="source.redis")
        with pytest.raises(EndpointError) as caught:
            open_store(endpoint).check_access(Role.SOURCE)
        message = str(caught.value)
        assert "authentication failed" in message and "source.redis" in message
        assert "s3cret-not-this-one" not in message and not caught.value.transient
        with pytest.raises(EndpointError, match="authentication failed"):  # no password
            open_store(Endpoint("redis", os.environ[url_var], name="source.redis"))


def test_unreachable_host_is_a_transient_endpoint_error():
    endpoint = Endpoint("redis", "redis://127.0.0.1:1/0", name="source.redis")
    with pytest.raises(EndpointError, match="source.redis") as caught:
        open_store(endpoint)
    assert caught.value.transient


def test_describe_names_version_mode_dbs_and_the_missing_snapshot(clean):
    clean["src"].set("a", 1)
    facts = open_store(source_ep()).describe()
    assert facts["mode"] == "standalone" and facts["dbs"] == {"0": 1}
    assert facts["version"] and "no snapshot" in facts["notes"][0]
    assert open_store(target_ep("cluster")).describe()["mode"] == "cluster"


def test_existing_names_only_units_whose_slots_hold_keys(clean):
    source = open_store(source_ep(), unit_records=1)
    clean["src"].set("a", 1)
    clean["src"].set("b", 1)
    units = source.list_units()
    target = open_store(target_ep("cluster"))
    assert target.existing(units) == []
    clean["cluster"].set("a", 1)
    owner = [u.name for u in units if u.spec["slots"][0] <= key_slot(b"a") <= u.spec["slots"][1]]
    assert target.existing(units) == owner


def test_batches_carry_whole_scan_calls_and_a_final_done_cursor(clean):
    redis_data.mixed(source_ep(), 3000, seed=2)
    source = open_store(source_ep(), batch_records=500)
    batches = list(source.export(source.list_units()[0]))
    assert sum(len(b) for b in batches) == 3000
    assert all(len(b) >= 500 for b in batches[:-1])
    assert batches[-1].cursor == {"done": True}
    assert isinstance(batches[0], Batch) and batches[0].cursor["scan"] != 0


def test_cluster_source_units_resume_per_master(clean):
    redis_data.mixed(target_ep("cluster"), 600, seed=9)
    source = open_store(target_ep("cluster"), batch_records=50)
    unit = source.list_units()[0]
    batches = list(source.export(unit))
    assert [b.cursor.get("node") for b in batches] == [1, 2, None]  # one batch per master
    target = open_store(target_ep("dst"))
    importer = target.importer(unit)
    for batch in source.export(unit, resume_from=batches[len(batches) // 2].cursor):
        importer.write_batch(batch)
    for batch in batches[: len(batches) // 2 + 1]:
        importer.write_batch(batch)
    assert nkeys(clean["dst"]) == 600
    chunks = source.chunks(unit)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)



# -- URLs, options and unit specs (no server) ---------------------------------------------


def endpoint(url: str, name: str = "source.redis", **options: Any) -> Endpoint:
    return Endpoint("redis", url, name=name, options=options)


@pytest.mark.parametrize("url, options, role, field, words", [
    ("redis://h:6379/abc", {}, Role.SOURCE, "source.redis.url", "not a database number"),
    ("redis://h:6379/1/2", {}, Role.TARGET, "source.redis.url", "not a database number"),
    ("redis://:6379/0", {}, Role.SOURCE, "source.redis.url", "names no host"),
    ("redis://", {}, Role.TARGET, "source.redis.url", "names no host"),
    ("redis://h:0/0", {}, Role.SOURCE, "source.redis.url", "port 0"),
    ("redis://h:99999", {}, Role.SOURCE, "source.redis.url", "not a valid URL"),
    ("redis://h:6379/0?ssl=true", {}, Role.SOURCE, "source.redis.url", "'?ssl=true' would be"),
    ("redis://h:6379/0#x", {}, Role.TARGET, "source.redis.url", "would be ignored"),
    ("http://h:6379", {}, Role.SOURCE, "source.redis.url", "unsupported scheme"),
    ("redis+cluster://h:7000/3", {}, Role.TARGET, "source.redis.url", "only DB 0"),
    ("redis://h", {"scan_count": "many"}, Role.SOURCE, "source.redis.scan_count",
     "must be a whole number, got 'many'"),
    ("redis://h", {"scan_count": 0}, Role.SOURCE, "source.redis.scan_count", "at least 1"),
    ("redis://h", {"timeout": "5s"}, Role.SOURCE, "source.redis.timeout", "must be a number"),
    ("redis://h", {"timeout": 0}, Role.SOURCE, "source.redis.timeout", "more than 0"),
    ("redis://h", {"mode": "fast"}, Role.TARGET, "source.redis.mode", "one of auto, restore"),
    ("redis://h", {"dbs": [0, "x"]}, Role.SOURCE, "source.redis.dbs[1]", "whole number"),
    ("redis://h", {"dbs": []}, Role.SOURCE, "source.redis.dbs", "[]"),
    ("redis://h", {"dbs": [-1]}, Role.SOURCE, "source.redis.dbs[0]", "at least 0"),
    ("redis://h", {"db_map": {"a": 0}}, Role.TARGET, "source.redis.db_map", "'a'"),
    ("redis://h", {"db_map": {0: "x"}}, Role.TARGET, "source.redis.db_map.0", "whole number"),
    ("redis://h", {"scan_cout": 10}, Role.SOURCE, "source.redis.scan_cout", "unknown option"),
    ("redis://h", {"db_map": {1: 0}}, Role.SOURCE, "source.redis.db_map", "target option"),
    ("redis://h/3", {"dbs": [4]}, Role.SOURCE, "source.redis.dbs", "disagrees with the URL's /3"),
    ("redis+cluster://h:7000", {"dbs": [1]}, Role.SOURCE, "source.redis.dbs", "only DB 0"),
    ("redis://h", {"dbs": [1]}, Role.TARGET, "source.redis.dbs", "source option"),
    ("redis+cluster://h:7000", {"db_map": {1: 2}}, Role.TARGET, "source.redis.db_map",
     "only DB 0"),
])
def test_check_endpoint_refuses_what_would_be_misread(url, options, role, field, words):
    with pytest.raises(PlanError) as caught:
        RedisStore.check_endpoint(endpoint(url, **options), role)
    assert caught.value.field == field and words in caught.value.message
    # The store refuses the same at construction, before any connection.
    if role is Role.SOURCE and "option" not in caught.value.message \
            and "disagrees" not in caught.value.message \
            and "only DB 0" not in caught.value.message:
        with pytest.raises(PlanError, match=field.replace("[", r"\[")):
            RedisStore(endpoint(url, **options))


@pytest.mark.parametrize("url, options, role", [
    ("redis://h", {}, Role.SOURCE),
    ("redis://h:6380/", {}, Role.TARGET),
    ("rediss://u:${P}@h:6380/15", {"dbs": [15]}, Role.SOURCE),
    ("redis+cluster://h:7000/0", {"db_map": {"3": 0, 4: 0}}, Role.TARGET),
    ("redis://h", {"mode": "typed", "scan_count": 50, "timeout": 2.5}, Role.TARGET),
])
def test_check_endpoint_accepts_what_it_can_honour(url, options, role):
    RedisStore.check_endpoint(endpoint(url, **options), role)


def spec_errors(spec: Any) -> list[tuple[list, str]]:
    import jsonschema
    validator = jsonschema.Draft202012Validator(RedisStore.SPEC_SCHEMA)
    return [(list(e.absolute_path), e.validator) for e in validator.iter_errors(spec)]


def test_spec_schema_names_the_bad_field():
    assert spec_errors({"db": 0, "slots": [0, 16383]}) == []
    assert spec_errors({"dbs": [0, 1], "target_db": 0, "slots": [0, 100]}) == []
    assert (["slots", 0], "type") in spec_errors({"db": 0, "slots": ["a", None]})
    assert (["slots", 1], "type") in spec_errors({"db": 0, "slots": ["a", None]})
    assert (["slots", 1], "maximum") in spec_errors({"db": 0, "slots": [0, 16384]})
    assert (["db"], "minimum") in spec_errors({"db": -1, "slots": [0, 1]})
    assert spec_errors({"slots": [0, 1]}) == [([], "required")]  # no db
    assert ([], "required") in spec_errors({"dbs": [0, 1], "slots": [0, 1]})  # no target_db
    assert spec_errors({"db": 0, "slots": [0, 1], "slot": 3}) == [([], "additionalProperties")]


def plain(db: int, lo: int, hi: int) -> Unit:
    return Unit("redis", f"db{db}/slots-{lo:05d}-{hi:05d}", {"db": db, "slots": [lo, hi]})


def test_uncovered_names_each_gap_per_group_of_dbs():
    whole = [plain(0, 0, 8191), plain(0, 8192, 16383), plain(3, 0, 16383)]
    assert RedisStore.uncovered(whole) == []
    assert RedisStore.container_of(whole[0]) == "db 0"
    union = Unit("redis", "db0+1/slots-00000-16383",
                 {"dbs": [0, 1], "target_db": 0, "slots": [0, 16383]})
    assert RedisStore.container_of(union) == "db 0+1" and RedisStore.uncovered([union]) == []
    narrowed = [plain(0, 0, 100), plain(0, 8192, 16383), plain(3, 0, 16383)]
    assert RedisStore.uncovered(narrowed) == ["db 0: slots 101-8191 are in no unit"]
    deleted = [plain(0, 8192, 16383), plain(3, 0, 10), plain(3, 20, 30)]
    assert RedisStore.uncovered(deleted) == ["db 0: slots 0-8191 are in no unit",
                                             "db 3: slots 11-19 are in no unit",
                                             "db 3: slots 31-16383 are in no unit"]
    backwards = [plain(0, 16383, 0)]
    assert RedisStore.uncovered(backwards) == [
        "db0/slots-16383-00000: slots [16383, 0] run backwards (covers nothing)"]
    assert RedisStore.uncovered([union, plain(0, 0, 16383)]) == [
        "db 0 is in more than one group of units: db 0, db 0+1"]


# -- key patterns: Redis' own MATCH -------------------------------------------------------


def scan_match(client: Any, pattern: bytes) -> set[bytes]:
    found: set[bytes] = set()
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=pattern, count=100_000)
        found.update(keys)
        if not cursor:
            return found


def test_patterns_match_exactly_what_scan_match_matches(clean):
    """Our matcher against the server's SCAN MATCH: escapes, classes, ranges, stray
    brackets and backslashes, the empty key, on random patterns as well as known traps."""
    import random
    rng = random.Random(6)
    alphabet = "ab*?[]^-\\c"
    keys = {b"", b"a*b", b"a\\b", b"a]b", b"[", b"]", b"\\", b"-", b"^", b"\xff\xfe", "é".encode()}
    keys |= {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))).encode()
             for _ in range(300)}
    src = clean["src"]
    for key in keys:
        src.set(key, 1)
    patterns = ["a\\*b", "a\\\\b", "[", "[^", "[]", "[^]", "[]a]", "[a-]", "[-a]", "[\\",
                "a\\", "\\", "*", "**", "", "[z-a]", "[a-\\]]", "a[b", "?*", "*?*", "[\\]]",
                "[^\\]", "é", "?", "??"]
    patterns += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))
                 for _ in range(400)]
    for pattern in patterns:
        keep = rv.KeyFilter(Selection(include=(pattern,)))
        assert {k for k in keys if keep(k)} == scan_match(src, pattern.encode()), pattern


def test_escaped_glob_selects_the_literal_key_and_excludes_work_alike(clean):
    for key in (b"a*b", b"axb", b"a\\b", b"keep:1", b"keep:[x]"):
        clean["src"].set(key, 1)
    selection = Selection(include=("a\\*b", "keep:*"), exclude=("keep:\\[x]",))
    copy(open_store(source_ep(), selection=selection), open_store(target_ep("dst")))
    assert sorted(clean["dst"].keys()) == [b"a*b", b"keep:1"]


def test_a_db_where_nothing_matches_the_selection_is_estimated_empty(clean):
    clean["src"].set("cache:1", 1)
    redis_data.client(source_ep(), db=2).set("state:1", 1)
    units = open_store(source_ep(), selection=Selection(include=("state:*",))).list_units()
    assert [(u.spec["db"], u.records) for u in units] == [(0, 0), (2, 1)]
    units = open_store(source_ep(), selection=Selection(include=("a\\*b",))).list_units()
    assert sum(u.records for u in units) == 0  # what lets plan warn "matches nothing"


def test_pattern_redis_reads_differently_by_cpu_is_refused():
    with pytest.raises(PlanError) as caught:
        RedisStore(endpoint("redis://h"), Selection(include=("ok:*",), exclude=("[a-é]",)))
    assert caught.value.field == "stores.redis.selection.exclude[0]"
    assert "x86 and ARM" in caught.value.message
    # With a preset, as the session hands it over (the preset's patterns first), the index
    # still counts the plan's own patterns.
    from migrator.engine.session import effective_selection
    given = Selection(exclude=("ok:*", "[\x01-\x80]"), preset="openim")
    with pytest.raises(PlanError) as caught:
        RedisStore(endpoint("redis://h"), effective_selection("redis", given))
    assert caught.value.field == "stores.redis.selection.exclude[1]"


# -- which databases ----------------------------------------------------------------------


def test_source_url_db_means_only_that_db_even_while_empty(clean):
    redis_data.client(source_ep(), db=2).set("two", "2")
    clean["src"].set("zero", "0")
    source = open_store(source_ep("/3"))
    assert [u.name for u in source.list_units()] == ["db3/slots-00000-16383"]
    assert [u.spec["db"] for u in open_store(source_ep("/2")).list_units()] == [2]
    units = open_store(source_ep(dbs=[0, 2])).list_units()
    assert [u.spec["db"] for u in units] == [0, 2]
    # A key that arrives in the empty DB after plan is still copied: the unit exists.
    redis_data.client(source_ep(), db=3).set("three", "3")
    target = open_store(target_ep("dst"))
    copy(source, target)
    assert redis_data.client(target_ep("dst"), db=3).get("three") == b"3"
    assert clean["dst"].get("zero") is None  # DB 0 was not asked for


def test_target_url_db_is_where_the_source_db_lands(clean):
    clean["src"].set("zero", "0")
    source = open_store(source_ep("/0"))
    target = open_store(target_ep("dst", "/4"))
    units = target.adapt_units(source.list_units(), source)
    copy_units(source, target, units)
    assert redis_data.client(target_ep("dst"), db=4).get("zero") == b"0"
    assert clean["dst"].dbsize() == 0
    assert verify_unit(source, target, units[0]).status == "match"


def test_dbs_the_server_does_not_have_are_refused_with_its_count(clean):
    for ep, field in ((source_ep(dbs=[0, 99]), "source.redis.dbs"),
                      (source_ep("/16"), "source.redis.url"),
                      (reader_ep_with(dbs=[99]), "source.redis.dbs")):  # no CONFIG: SELECT
        with pytest.raises(PlanError) as caught:
            open_store(ep).list_units()
        assert caught.value.field == field
        assert "the server has 16 databases (0-15)" in caught.value.message
    clean["src"].set("zero", "0")
    source = open_store(source_ep())
    with pytest.raises(PlanError, match="DB 20, but the server has 16") as caught:
        open_store(target_ep("dst", db_map={0: 20})).adapt_units(source.list_units(), source)
    assert caught.value.field == "target.redis.db_map"


def reader_ep_with(**options: Any) -> Endpoint:
    return Endpoint("redis", reader_ep().url, name="source.redis", options=options)


def test_a_merge_only_the_target_url_makes_is_refused(clean):
    clean["src"].set("zero", "0")
    redis_data.client(source_ep(), db=5).set("five", "5")
    source = open_store(source_ep())
    with pytest.raises(PlanError) as caught:
        open_store(target_ep("dst", "/0")).adapt_units(source.list_units(), source)
    assert caught.value.field == "target.redis.url"
    assert "DBs 0 and 5 would all land in DB 0" in caught.value.message
    assert "db_map: {0: 0, 5: 0}" in str(caught.value)


def copy_units(source: RedisStore, target: RedisStore, units: list[Unit]) -> None:
    target.prepare_target(units, source)
    for unit in units:
        importer = target.importer(unit)
        for batch in source.export(unit):
            importer.write_batch(batch)


def test_unlisted_names_a_db_that_got_keys_after_plan(clean):
    clean["src"].set("zero", "0")
    source = open_store(source_ep())
    units = source.list_units()
    assert source.unlisted(units) == []
    redis_data.client(source_ep(), db=4).set("late", "x")
    assert source.unlisted(units) == ["db 4"]
    assert source.unlisted(source.list_units()) == []
    # Only keys in the selection count, and only DBs the endpoint names.
    selective = open_store(source_ep(), selection=Selection(exclude=("late",)))
    assert selective.unlisted(units) == []
    assert open_store(source_ep(dbs=[0])).unlisted(units) == []


# -- merging source DBs into one target DB ------------------------------------------------


@pytest.fixture
def two_dbs(clean):
    """DB 0 and DB 1 of the source with different keys, every type in DB 1."""
    redis_data.mixed(source_ep(), 300, seed=21, prefix="zero")
    redis_data.mixed(source_ep(), 200, seed=22, prefix="one", db=1)
    every_type(redis_data.client(source_ep(), db=1))
    return clean


def merged(target_kind: str, **kw: Any) -> tuple[RedisStore, RedisStore, list[Unit]]:
    source = open_store(source_ep(), **kw)
    target = open_store(target_ep(target_kind, db_map={0: 0, 1: 0}), **kw)
    return source, target, target.adapt_units(source.list_units(), source)


@pytest.mark.parametrize("target_kind", ["cluster", "dst"])
def test_merged_dbs_verify_as_one_union(two_dbs, target_kind):
    source, target, units = merged(target_kind)
    assert [(u.name, u.spec) for u in units] == [
        ("db0+1/slots-00000-16383", {"dbs": [0, 1], "target_db": 0, "slots": [0, 16383]})]
    assert units[0].records == 507
    assert RedisStore.uncovered(units) == [] and source.unlisted(units) == []
    copy_units(source, target, units)
    dst = two_dbs[target_kind]
    assert nkeys(dst) == 507
    report = verify_unit(source, target, units[0])
    assert report.status == "match" and report.source_count == report.target_count == 507
    gone = b"plain"  # from DB 1
    dst.delete(gone)
    dst.set(b"zero:s:0", b"changed")  # from DB 0, if it exists; else a new key
    report = verify_unit(source, target, units[0])
    assert report.status == "differ" and report.missing_on_target == ["plain"]
    assert report.differ + report.missing_on_source == ["zero:s:0"]


def test_merged_units_split_like_any_big_db_and_resume_across_dbs(two_dbs):
    source, target, units = merged("cluster", unit_records=100, batch_records=50)
    assert [u.spec["slots"] for u in units] == [[i, i + 2047] for i in range(0, 16384, 2048)]
    assert RedisStore.uncovered(units) == []
    source_cluster = open_store(source_ep(scan_count=20), batch_records=50)
    unit = units[0]
    batches = list(source_cluster.export(unit))
    assert [b.cursor.get("dbi") for b in batches][-1] is None  # done
    assert batches[-1].cursor == {"done": True}
    middle = next(i for i, b in enumerate(batches) if b.cursor.get("dbi") == 1)
    target.prepare_target(units, source_cluster)
    importer = target.importer(unit)
    for batch in source_cluster.export(unit, resume_from=batches[middle].cursor):
        importer.write_batch(batch)  # a crash after the checkpoint in DB 1...
    for batch in batches[: middle + 1]:
        importer.write_batch(batch)  # ...and what came before it
    assert verify_unit(source, target, unit).status == "match"


def test_merge_with_a_key_in_both_dbs_is_refused_naming_it(two_dbs):
    redis_data.client(source_ep(), db=1).set("zero:s:3", "dup")
    redis_data.client(source_ep(), db=1).set(b"bin\xff", "dup")
    two_dbs["src"].set(b"bin\xff", "dup")
    with pytest.raises(PlanError) as caught:
        merged("cluster")
    message = caught.value.message
    assert caught.value.field == "target.redis.db_map"
    assert "2 key(s) exist in more than one" in message
    assert "'bin\\\\xff' (DBs 0 and 1)" in message and "'zero:s:3' (DBs 0 and 1)" in message


def test_a_key_that_collides_after_plan_is_a_difference(two_dbs):
    source, target, units = merged("cluster")
    copy_units(source, target, units)
    value = two_dbs["src"].get("zero:s:1")
    redis_data.client(source_ep(), db=1).set("zero:s:1", value)  # same key, same value
    report = verify_unit(source, target, units[0])
    assert report.status == "differ" and report.differ == ["zero:s:1"]


def test_typed_copy_of_a_union_rereads_each_key_from_its_db(two_dbs):
    source = open_store(source_ep())
    target = open_store(target_ep("cluster", db_map={0: 0, 1: 0}, mode="typed"))
    units = target.adapt_units(source.list_units(), source)
    copy_units(source, target, units)
    assert verify_unit(source, target, units[0]).status == "match"
    assert contents(two_dbs["cluster"])[b"l"][1] == contents(
        redis_data.client(source_ep(), db=1))[b"l"][1]


def test_units_planned_apart_that_land_in_one_db_are_refused(two_dbs):
    source = open_store(source_ep())
    units = source.list_units()  # not adapted: db0 and db1 apart
    target = open_store(target_ep("cluster", db_map={1: 0}))
    with pytest.raises(PlanError, match="db 0 and db 1 all land in DB 0"):
        target.existing(units)
    with pytest.raises(PlanError, match="planned apart"):
        target.prepare_target(units, source)


# -- catch-up: fetch, delete, resumed imports ---------------------------------------------


def names_of(store: RedisStore, unit: Unit) -> list[str]:
    """Every key of ``unit`` as ``records`` names it (what sync hands back)."""
    return [key for chunk in store.chunks(unit) for key, _ in store.records(unit, chunk)]


def test_fetch_gives_export_records_for_the_keys_records_names(clean):
    every_type(clean["src"])
    source = open_store(source_ep())
    unit = source.list_units()[0]
    exported = sorted(r for b in source.export(unit) for r in b.records)
    names = names_of(source, unit)
    assert "bin:\xff\x00\\name" not in names and len(names) == 7  # an escaped name too
    batch = source.fetch(unit, [*names, "never-there"])
    assert sorted(batch.records) == exported  # DUMP payload + the same absolute expiry
    assert batch.skipped == [] and batch.nbytes > 0
    clean["src"].delete("plain")
    assert sorted(r[0] for r in source.fetch(unit, names).records) == [
        r[0] for r in exported if r[0] != b"plain"]  # a vanished key is absent


def test_fetch_in_typed_mode_gives_typed_records_the_importer_rebuilds(clean):
    every_type(clean["src"])
    source = open_store(source_ep(mode="typed"))
    target = open_store(target_ep("cluster"))
    unit = source.list_units()[0]
    batch = source.fetch(unit, names_of(source, unit))
    assert len(batch) == 7 and all(len(r) == 4 for r in batch.records)
    importer = target.importer(unit)
    importer.prepare(resumed=True)
    importer.write_batch(batch)
    assert_same(contents(clean["src"]), contents(clean["cluster"]))


def test_fetch_from_a_union_takes_each_key_from_its_db_and_refuses_a_collision(two_dbs):
    source, target, units = merged("cluster")
    unit = units[0]
    batch = source.fetch(unit, ["plain", "zero:s:0", "one:s:1", "nowhere"])
    assert sorted(r[0] for r in batch.records) == sorted(
        k for k in (b"plain", b"zero:s:0", b"one:s:1")
        if two_dbs["src"].exists(k) or redis_data.client(source_ep(), db=1).exists(k))
    db1 = redis_data.client(source_ep(), db=1)
    assert db1.exists("plain") and not two_dbs["src"].exists("plain")
    db1.set("zero:s:0", "now in both")
    with pytest.raises(StoreError, match="'zero:s:0' of db0\\+1/.* source DBs 0 and 1"):
        source.fetch(unit, ["zero:s:0"])


@pytest.mark.parametrize("target_kind", ["dst", "cluster"])
def test_delete_removes_the_named_keys_on_every_master_and_nothing_else(clean, target_kind):
    redis_data.mixed(target_ep(target_kind), 400, seed=5)
    dst = clean[target_kind]
    dst.set(b"bin\xff\\x", "1")
    target = open_store(target_ep(target_kind))
    unit = Unit("redis", "db0/slots-00000-16383", {"db": 0, "slots": [0, 16383]})
    names = sorted(names_of(target, unit))
    doomed = sorted({*names[::3], key_text(b"bin\xff\\x")}) + ["absent:key"]
    slots = {key_slot(rv.key_bytes(k)) for k in doomed}
    assert len(slots) > 100  # spread over every master of the cluster
    target.delete(unit, doomed)
    assert sorted(names_of(target, unit)) == sorted(set(names) - set(doomed))
    assert nkeys(dst) == len(set(names) - set(doomed))


@pytest.mark.parametrize("resumed", [True, False])
def test_an_importer_never_clears_what_the_target_holds(clean, resumed):
    clean["src"].set("fresh", "from the source")
    clean["dst"].set("only-on-target", "stays")
    clean["dst"].set("fresh", "old value")
    source, target = open_store(source_ep()), open_store(target_ep("dst"))
    unit = source.list_units()[0]
    importer = target.importer(unit)
    importer.prepare(resumed=resumed)
    importer.write_batch(source.fetch(unit, ["fresh"]))
    importer.finalize()
    assert clean["dst"].get("only-on-target") == b"stays"
    assert clean["dst"].get("fresh") == b"from the source"


# -- write freeze -------------------------------------------------------------------------


def user_ep(user: str, url_var: str = "OIM_REDIS_SRC_URL") -> Endpoint:
    return Endpoint("redis", _with_auth(url_var, f"{user}:${{OIM_TEST_FREEZE_PW}}"),
                    name="source.redis")


@pytest.fixture
def acl_users(clean, monkeypatch) -> Iterator[Any]:
    """Creates source ACL users (password in OIM_TEST_FREEZE_PW) and removes them after."""
    monkeypatch.setenv("OIM_TEST_FREEZE_PW", "freeze-test-pw")
    made: list[str] = []

    def make(name: str, *rules: str) -> Endpoint:
        clean["src"].execute_command("ACL", "SETUSER", name, "reset", "on",
                                     ">freeze-test-pw", "~*", "-@all", "+@read",
                                     "+acl|whoami", "+client|setname",
                                     "+info", *rules)
        made.append(name)
        return user_ep(name)

    yield make
    for name in made:
        clean["src"].execute_command("ACL", "DELUSER", name)


def writable(client_ep: Endpoint, key: str, *, db: int = 0) -> bool:
    """Whether a write from another client lands within half a second."""
    conn = client_ep.connection()
    once = dict(host=conn.host, port=conn.port or 6379, password=conn.password,
                socket_timeout=0.5, retry=Retry(NoBackoff(), 0))  # no silent retry
    if conn.scheme.endswith("+cluster"):
        client: Any = RedisCluster(**once)
    else:
        client = redis.Redis(db=db, **once)
    try:
        client.set(key, "written")
        return True
    except Exception:  # noqa: BLE001 - a timeout, however the client words it
        return False
    finally:
        client.close()


@pytest.fixture
def unpause(clean) -> Iterator[None]:
    yield
    clean["src"].execute_command("CLIENT", "UNPAUSE")
    for node in clean["cluster"].get_primaries():
        clean["cluster"].get_redis_connection(node).execute_command("CLIENT", "UNPAUSE")


def test_freeze_check_allows_the_admin_and_names_what_the_reader_lacks(clean):
    assert open_store(source_ep()).freeze_check() is None  # through ACL DRYRUN
    problem = open_store(reader_ep()).freeze_check()  # no DRYRUN right: the MULTI probe
    assert problem is not None and "\n" not in problem
    assert "'reader' may not run CLIENT PAUSE and CLIENT UNPAUSE" in problem
    assert "source.redis" in problem and "+client|pause +client|unpause" in problem
    reader = open_store(reader_ep())
    with pytest.raises(CapabilityMissing, match="may not run CLIENT PAUSE"):
        reader.freeze(5)
    assert writable(source_ep(), "still-writable")  # a refused freeze paused nothing


def test_freeze_check_without_acl_dryrun_asks_in_a_discarded_multi(acl_users, clean):
    both = acl_users("pauser", "+multi", "+discard", "+client|pause", "+client|unpause")
    half = acl_users("halfpauser", "+multi", "+discard", "+client|pause")
    blind = acl_users("blind", "+client|pause", "+client|unpause")
    assert open_store(both).freeze_check() is None
    assert open_store(half).freeze_check().endswith(
        "'halfpauser' may not run CLIENT UNPAUSE, which the write freeze needs "
        "(grant +client|unpause)")
    assert "cannot tell whether the account 'blind'" in open_store(blind).freeze_check()
    assert writable(source_ep(), "after-the-checks")  # the queued PAUSE never ran


def test_freeze_holds_writes_lets_reads_through_and_unfreeze_releases(clean, unpause):
    clean["src"].set("before", "1")
    source = open_store(source_ep())
    said = source.freeze(20)
    assert "CLIENT PAUSE 20000 WRITE" in said and "source.redis" in said
    started = time.monotonic()
    assert not writable(source_ep(), "during")  # the write waits...
    assert redis_data.client(source_ep()).get("before") == b"1"  # ...reads do not
    assert redis_data.client(source_ep()).exists("during") == 0
    assert sum(d.count for d in source.digest(source.list_units()[0], source.chunks(
        source.list_units()[0])).values()) == 1  # verify and sync read while frozen
    source.unfreeze()
    assert time.monotonic() - started < 10
    assert writable(source_ep(), "after")
    assert clean["src"].get("after") == b"written"
    source.unfreeze()  # harmless when nothing is paused


def test_a_freeze_lapses_by_itself_when_nobody_lifts_it(clean, unpause):
    source = open_store(source_ep())
    started = time.monotonic()
    source.freeze(2.5)
    assert not writable(source_ep(), "early")
    time.sleep(max(0.0, started + 2.6 - time.monotonic()))
    assert writable(source_ep(), "late")  # no unfreeze: the tool could have died


def test_freeze_of_a_cluster_pauses_every_master(clean, unpause):
    ep = Endpoint("redis", target_ep("cluster").url, name="source.redis")
    store = open_store(ep)
    assert store.freeze_check() is None
    keys = [store._probe_key(i).decode() for i in range(3)]  # one key on each master
    for key in keys:
        clean["cluster"].set(f"{key}:read", "r")
    said = store.freeze(20)
    masters = [name for name, _ in store._nodes]
    assert len(masters) == 3 and all(m in said for m in masters)
    assert [writable(ep, key) for key in keys] == [False, False, False]
    assert [clean["cluster"].get(f"{key}:read") for key in keys] == [b"r"] * 3  # reads go on
    store.unfreeze()
    assert [writable(ep, key) for key in keys] == [True, True, True]


def test_chunks_narrow_as_the_estimate_grows_and_always_tile_the_unit():
    store = RedisStore(Endpoint("redis", "redis://127.0.0.1:6379", name="source.redis"))
    widths = {}
    for records, slots in [(0, [0, 16383]), (16_384, [0, 16383]), (200_000, [0, 16383]),
                           (1_000_000, [0, 16383]), (125_000, [2048, 4095]), (10, [5, 7])]:
        chunks = store.chunks(Unit("redis", "u", {"db": 0, "slots": slots}, records))
        covered = [s for c in chunks for s in range(c.bounds[0], c.bounds[1] + 1)]
        assert covered == list(range(slots[0], slots[1] + 1))  # each slot once, in order
        widths[records] = max(c.bounds[1] - c.bounds[0] + 1 for c in chunks)
        assert widths[records] == 1 or records * widths[records] / (
            slots[1] - slots[0] + 1) <= 64  # about 64 keys a chunk at most, by the estimate
    # a sync lists every key of a chunk that holds a change: few keys a chunk, few listed
    assert widths == {0: 64, 16_384: 64, 200_000: 4, 1_000_000: 1, 125_000: 1, 10: 3}
