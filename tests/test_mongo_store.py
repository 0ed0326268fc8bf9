"""MongoDB store against real servers: FerretDB here, mongo:7 with docker-compose.test.yml.

Features FerretDB lacks are probed at run time; their tests skip with the reason here and
run against real MongoDB (OIM_MONGO_FLAVOR=mongodb).
"""

from __future__ import annotations

import datetime
import json
import socket
import uuid

import bson
import pytest
from bson import SON, Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo import errors as mx

from fixtures import mongo_data
from migrator.config import Endpoint
from migrator.errors import CapabilityMissing, EndpointError, StoreError
from migrator.stores.base import Batch, Role, Selection, StoreOptions, Unit
from migrator.stores.mongo import MongoStore
from migrator.stores.mongo_meta import id_label

RAW = bson.CodecOptions(document_class=RawBSONDocument)


def with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def clients(mongo_env):
    src = MongoClient(mongo_env["OIM_MONGO_SRC_URL"], serverSelectionTimeoutMS=5000)
    dst = MongoClient(mongo_env["OIM_MONGO_DST_URL"], serverSelectionTimeoutMS=5000)
    yield src, dst
    src.close()
    dst.close()


@pytest.fixture
def db(clients):
    """A fresh database name, dropped on both servers afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    for client in clients:
        client.drop_database(name)


def is_ferretdb(client: MongoClient) -> bool:
    return "ferretdbVersion" in client.admin.command("buildInfo")


def make(env, db: str, *, target_db: str | None = None, options: dict | None = None,
         selection: Selection | None = None, **store_opts) -> tuple[MongoStore, MongoStore]:
    opts = StoreOptions(**store_opts)
    source = MongoStore(Endpoint("mongo", with_db(env["OIM_MONGO_SRC_URL"], db),
                                 name="source.mongo"), selection, opts)
    target = MongoStore(Endpoint("mongo", with_db(env["OIM_MONGO_DST_URL"], target_db or db),
                                 name="target.mongo", options=options or {}), None, opts)
    source.open()
    target.open()
    return source, target


def copy_all(source: MongoStore, target: MongoStore, units=None) -> list:
    """What the engine does, in its order."""
    units = source.list_units() if units is None else units
    target.prepare_target(units, source)
    for unit in units:
        imp = target.importer(unit)
        imp.prepare(False)
        for batch in source.export(unit):
            imp.write_batch(batch)
        imp.finalize()
    target.finalize_target(units, source)
    return units


def raw_docs(client: MongoClient, db: str, coll: str) -> dict[str, bytes]:
    return {id_label(bson.decode(d.raw)["_id"]): d.raw
            for d in client[db].get_collection(coll, codec_options=RAW).find()}


def insert_ids(client: MongoClient, db: str, coll: str, n: int) -> list[ObjectId]:
    ids = sorted(ObjectId() for _ in range(n))
    client[db][coll].insert_many([{"_id": i, "n": k, "s": f"abcdefgh-{k:06d}"}
                                  for k, i in enumerate(ids)])
    return ids


# -- fidelity ------------------------------------------------------------------------------
BSON_VALUES = {
    "double": 1.5, "double_nan": float("nan"), "double_neg_zero": -0.0,
    "double_inf": float("inf"), "string": "héllo wörld ✓ 收到",
    "embedded": SON([("b", 1), ("a", 2)]),
    "array": [1, "a", None, {"x": 1}], "array_in_array": [[1, 2], []],
    "binary_0": Binary(b"\x00\x01\xff", 0), "binary_4_uuid": Binary(uuid.UUID(int=7).bytes, 4),
    "binary_5_md5": Binary(b"m" * 16, 5), "binary_128": Binary(b"user", 128),
    "objectid": ObjectId("65f1a2b3c4d5e6f708091a2b"), "bool": True,
    "datetime": datetime.datetime(2024, 3, 1, 12, 0, 0, 123000),
    "datetime_before_1970": datetime.datetime(1931, 7, 4, 1, 2, 3),
    "null": None, "regex_flags": Regex("^a.*b$", "imsx"), "int32": 2**31 - 1,
    "int64": Int64(2**62), "timestamp": Timestamp(1_700_000_000, 7),
    "decimal128": Decimal128("1.2300E+5"), "minkey": MinKey(), "maxkey": MaxKey(),
    "code": Code("function () { return 1; }"), "code_with_scope": Code("function(){return x}",
                                                                        {"x": 1}),
}


@pytest.mark.parametrize("kind", sorted(BSON_VALUES))
def test_every_bson_type_round_trips_as_identical_bytes(mongo_env, clients, db, kind):
    src, dst = clients
    doc = RawBSONDocument(bson.encode(SON([("_id", 1), ("v", BSON_VALUES[kind]), ("z", "end")])))
    try:
        src[db]["t"].insert_one(doc)
    except mx.PyMongoError as exc:
        if not is_ferretdb(src):
            raise
        reason = str(exc).split(", full error")[0][:90]
        pytest.skip(f"FerretDB cannot store {kind} ({type(exc).__name__}: {reason}); "
                    "runs against mongo:7 from docker-compose.test.yml")
    source, target = make(mongo_env, db)
    copy_all(source, target)
    assert raw_docs(dst, db, "t") == raw_docs(src, db, "t")
    stored = next(iter(raw_docs(src, db, "t").values()))
    if stored != doc.raw:  # only known server-side change: FerretDB stores -0.0 as +0.0
        assert is_ferretdb(src) and kind == "double_neg_zero"
        assert stored == bson.encode(SON([("_id", 1), ("v", 0.0), ("z", "end")]))


def test_document_close_to_16_mib_round_trips(mongo_env, clients, db):
    src, dst = clients
    big = SON([("_id", "big"), ("blob", Binary(b"\x5a" * (16 * 1024 * 1024 - 1024)))])
    src[db]["t"].insert_one(RawBSONDocument(bson.encode(big)))
    src[db]["t"].insert_many([{"_id": f"small{i}"} for i in range(3)])
    source, target = make(mongo_env, db)
    [unit] = source.list_units()
    batches = list(source.export(unit))
    assert [len(b) for b in batches][0] == 1  # the big document travels alone
    copy_all(source, target, [unit])
    assert raw_docs(dst, db, "t") == raw_docs(src, db, "t")


def test_openim_data_copies_exactly_with_100_slot_msg_documents(mongo_env, clients):
    src, dst = clients
    uid = uuid.uuid4().hex[:8]
    old, new = f"openIM_v3_{uid}", f"openim_v3_{uid}"  # ≤3.5 name → ≥3.6 name
    try:
        counts = mongo_data.load(Endpoint("mongo", with_db(mongo_env["OIM_MONGO_SRC_URL"], old),
                                          name="fixture"), seed=3, scale=0.15)
        source = MongoStore(Endpoint("mongo", with_db(mongo_env["OIM_MONGO_SRC_URL"], old),
                                     name="source.mongo"))
        target = MongoStore(Endpoint("mongo", mongo_env["OIM_MONGO_DST_URL"],
                                     name="target.mongo", options={"db_map": {old: new}}))
        source.open()
        target.open()
        units = copy_all(source, target)
        assert {u.spec["collection"] for u in units} == set(counts)
        assert old not in dst.list_database_names()
        for unit in units:
            chunks = source.chunks(unit)
            assert source.digest(unit, chunks) == target.digest(unit, chunks), unit.name
            assert source.schema(unit) == target.schema(unit), unit.name
        msgs = raw_docs(dst, new, "msg")
        assert msgs == raw_docs(src, old, "msg") and len(msgs) == counts["msg"] > 0
        empty = bson.encode(mongo_data.empty_slot())
        for raw in msgs.values():
            slots = bson.decode(raw)["msgs"]
            assert len(slots) == 100
            if slots[-1]["msg"] is None:  # empty slots keep exact shape and field order
                assert bson.encode(slots[-1]) == empty
        assert target.existing(units) == [u.name for u in units]
        assert dst[new]["data_version"].find_one({}, {"_id": 0}) == {"key": "seq", "value": "38"}
    finally:
        src.drop_database(old)
        dst.drop_database(new)


# -- units, resume, replay ------------------------------------------------------------------
def test_id_range_units_cover_every_document_exactly_once_with_mixed_id_types(
        mongo_env, clients, db):
    src, _ = clients
    ids = insert_ids(src, db, "t", 2500)
    odd = [None, 7, 2.5, Int64(-3), "str", {"k": 1}, Binary(b"\x01"), True,
           datetime.datetime(2001, 1, 1)]
    src[db]["t"].insert_many([{"_id": v} for v in odd])
    source, _ = make(mongo_env, db, unit_records=700)
    units = source.list_units()
    assert len(units) == 4 and units[0].name.endswith("#0000")
    assert all(a.spec["hi"] == b.spec["lo"] for a, b in zip(units, units[1:], strict=False))
    json.loads(json.dumps([u.to_dict() for u in units]))  # plan-safe
    seen = [bson.decode(d.raw)["_id"] for u in units for b in source.export(u) for d in b.records]
    assert len(seen) == len(ids) + len(odd)
    assert {id_label(i) for i in seen} == {id_label(i) for i in [*ids, *odd]}


def test_resume_from_mid_unit_cursor_with_replayed_batch_adds_no_duplicates(
        mongo_env, clients, db):
    src, dst = clients
    ids = insert_ids(src, db, "t", 1000)
    source, target = make(mongo_env, db, batch_records=100)
    [unit] = source.list_units()
    batches = list(source.export(unit))
    assert len(batches) == 10
    imp = target.importer(unit)
    imp.prepare(False)
    for batch in batches[:4]:  # crash after writing batch 4, checkpoint still at batch 3
        imp.write_batch(batch)
    cursor = json.loads(json.dumps(batches[2].cursor))
    resumed = list(source.export(unit, resume_from=cursor))
    assert bson.decode(resumed[0].records[0].raw)["_id"] == ids[300]
    imp = target.importer(unit)
    imp.prepare(True)
    for batch in resumed:
        imp.write_batch(batch)
    assert dst[db]["t"].count_documents({}) == 1000
    chunks = source.chunks(unit)
    assert source.digest(unit, chunks) == target.digest(unit, chunks)


def test_replay_onto_a_different_document_is_refused_naming_the_id(mongo_env, clients, db):
    src, dst = clients
    ids = insert_ids(src, db, "t", 10)
    dst[db]["t"].insert_one({"_id": ids[4], "n": "not the same"})
    source, target = make(mongo_env, db)
    [unit] = source.list_units()
    imp = target.importer(unit)
    imp.prepare(True)
    with pytest.raises(StoreError, match=str(ids[4])):
        for batch in source.export(unit):
            imp.write_batch(batch)


def test_overwrite_replaces_what_the_target_held_in_the_unit(mongo_env, clients, db):
    src, dst = clients
    ids = insert_ids(src, db, "t", 10)
    dst[db]["t"].insert_many([{"_id": ids[4], "n": "old"}, {"_id": "stale"}])
    source, target = make(mongo_env, db, on_existing="overwrite")
    assert target.existing(source.list_units()) == [f"{db}.t"]
    copy_all(source, target)
    assert raw_docs(dst, db, "t") == raw_docs(src, db, "t")


# -- verification ---------------------------------------------------------------------------
def test_one_changed_byte_differs_in_exactly_one_chunk_and_records_name_the_id(
        mongo_env, clients, db):
    src, dst = clients
    ids = insert_ids(src, db, "t", 2000)
    source, target = make(mongo_env, db, chunk_records=400)
    [unit] = copy_all(source, target)
    victim = ids[1234]
    raw = dst[db].get_collection("t", codec_options=RAW).find_one({"_id": victim}).raw
    at = raw.index(b"abcdefgh")
    changed = raw[:at] + b"X" + raw[at + 1:]  # one byte, still valid BSON
    dst[db]["t"].replace_one({"_id": victim}, RawBSONDocument(changed))
    chunks = source.chunks(unit)
    assert len(chunks) == 5
    a, b = source.digest(unit, chunks), target.digest(unit, chunks)
    differing = [c for c in chunks if a[c.id] != b[c.id]]
    assert len(differing) == 1 and a[differing[0].id].count == b[differing[0].id].count
    left, right = dict(source.records(unit, differing[0])), dict(target.records(unit, differing[0]))
    assert left.keys() == right.keys()
    assert [k for k in left if left[k] != right[k]] == [id_label(victim)]


def test_missing_and_extra_documents_are_named_even_outside_the_source_range(
        mongo_env, clients, db):
    src, dst = clients
    ids = insert_ids(src, db, "t", 2000)
    source, target = make(mongo_env, db, unit_records=1000, chunk_records=250)
    units = copy_all(source, target)
    assert len(units) == 2
    dst[db]["t"].delete_one({"_id": ids[1500]})
    extra = [ObjectId("0" * 24), ObjectId("f" * 24), "intruder"]
    dst[db]["t"].insert_many([{"_id": e} for e in extra])
    missing, added = set(), set()
    for unit in units:
        chunks = source.chunks(unit)
        a, b = source.digest(unit, chunks), target.digest(unit, chunks)
        for chunk in chunks:
            if a[chunk.id] != b[chunk.id]:
                left = dict(source.records(unit, chunk))
                right = dict(target.records(unit, chunk))
                missing |= left.keys() - right.keys()
                added |= right.keys() - left.keys()
    assert missing == {id_label(ids[1500])}
    assert added == {id_label(e) for e in extra}


# -- schema: options, indexes, views ------------------------------------------------------------
def test_indexes_are_recreated_after_the_data(mongo_env, clients, db):
    src, dst = clients
    insert_ids(src, db, "t", 20)
    src[db]["t"].create_index("n", unique=True)
    src[db]["t"].create_index([("s", 1), ("n", -1)], name="s_n")
    src[db]["t"].create_index("maybe", sparse=True)
    source, target = make(mongo_env, db)
    [unit] = source.list_units()
    target.prepare_target([unit], source)
    assert [i["name"] for i in dst[db]["t"].list_indexes()] == ["_id_"]  # none before data
    copy_all(source, target, [unit])
    assert source.schema(unit) == target.schema(unit)
    names = {i["name"] for i in dst[db]["t"].list_indexes()}
    assert {"n_1", "s_n", "maybe_1"} <= names


INDEX_KINDS = {
    "ttl": ([("at", 1)], {"expireAfterSeconds": 3600}),
    "partial": ([("p", 1)], {"partialFilterExpression": {"p": {"$exists": True}}}),
    "collation": ([("c", 1)], {"collation": {"locale": "en", "strength": 2}}),
    "text": ([("body", "text")], {}),
    "2dsphere": ([("loc", "2dsphere")], {}),
}


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_special_index_kinds_are_recreated(mongo_env, clients, db, kind):
    src, dst = clients
    keys, extra = INDEX_KINDS[kind]
    src[db]["t"].insert_one({"_id": 1})
    try:
        src[db]["t"].create_index(keys, name=f"ix_{kind}", **extra)
    except mx.OperationFailure as exc:
        pytest.skip(f"the source server refuses {kind} indexes ({exc.details.get('errmsg')}); "
                    "runs against mongo:7 from docker-compose.test.yml")
    source, target = make(mongo_env, db)
    [unit] = copy_all(source, target)
    assert source.schema(unit) == target.schema(unit)


def test_index_the_target_refuses_raises_capability_missing_and_the_rest_is_built(
        mongo_env, clients, db):
    _, dst = clients
    dst[db]["t"].insert_one({"_id": 1})
    _, target = make(mongo_env, db)
    specs = [SON([("key", SON([("at", 1)])), ("name", "ttl"), ("expireAfterSeconds", 60)]),
             SON([("key", SON([("plain", 1)])), ("name", "plain")])]
    try:
        target.create_indexes([(db, "t", specs)])
    except CapabilityMissing as exc:
        assert "ttl" in str(exc) and "target.mongo" in str(exc)
    else:
        pytest.skip("the target builds TTL indexes, so there is no refusal to report")
    assert "plain" in {i["name"] for i in dst[db]["t"].list_indexes()}


def test_collection_options_are_created_before_the_data(mongo_env, clients, db):
    src, dst = clients
    src[db].create_collection("capped", capped=True, size=1 << 20, max=1000)
    src[db]["capped"].insert_one({"_id": 1})
    source, target = make(mongo_env, db)
    [unit] = source.list_units()
    target.prepare_target([unit], source)
    assert dst[db]["capped"].options() == src[db]["capped"].options()
    target.prepare_target([unit], source)  # idempotent
    copy_all(source, target, [unit])
    assert source.schema(unit) == target.schema(unit)


def test_option_the_target_refuses_raises_capability_missing_naming_it(mongo_env, db):
    _, target = make(mongo_env, db)
    try:
        target.create_collection(db, "v", SON([("validator", {"a": {"$exists": True}}),
                                               ("validationLevel", "moderate")]))
    except CapabilityMissing as exc:
        assert "validator" in str(exc) and f"{db}.v" in str(exc)
    else:
        pytest.skip("the target supports validators, so there is no refusal to report")


def test_validator_collation_and_views_are_copied(mongo_env, clients, db):
    src, dst = clients
    try:
        src[db].create_collection("checked", validator={"n": {"$type": "int"}},
                                  validationLevel="moderate", collation={"locale": "fr"})
        src[db].command("create", "recent", viewOn="checked", pipeline=[{"$match": {"n": 1}}])
    except mx.OperationFailure as exc:
        pytest.skip(f"the source server lacks validators/collations/views "
                    f"({exc.details.get('errmsg')}); runs against mongo:7 from "
                    "docker-compose.test.yml")
    src[db]["checked"].insert_one({"_id": 1, "n": 1})
    source, target = make(mongo_env, db)
    [unit] = copy_all(source, target)
    assert source.schema(unit) == target.schema(unit)
    assert dst[db]["recent"].options() == src[db]["recent"].options()


# -- selection, consistency, access -------------------------------------------------------------
def test_include_and_exclude_patterns_pick_collections(mongo_env, clients, db):
    src, _ = clients
    for name in ("msg", "user", "cache_x"):
        src[db][name].insert_one({"_id": 1})
    sel = Selection(include=(f"{db}.*",), exclude=(f"{db}.cache_*",))
    source, _ = make(mongo_env, db, selection=sel)
    assert [u.name for u in source.list_units()] == [f"{db}.msg", f"{db}.user"]


def test_describe_names_flavor_and_consistency_basis(mongo_env, clients, db):
    src, _ = clients
    source, _ = make(mongo_env, db)
    info = source.describe()
    hello = src.admin.command("hello")
    if is_ferretdb(src):
        assert info["flavor"] == "ferretdb" and "write freeze" in info["consistency"]
    elif hello.get("setName"):
        assert info["topology"] == "replicaSet" and "snapshot_time" in info
    else:
        assert "write freeze" in info["consistency"]


def test_snapshot_export_does_not_see_writes_after_the_run_started(mongo_env, clients, db):
    src, _ = clients
    insert_ids(src, db, "t", 10)
    source, _ = make(mongo_env, db)
    if not source.server.snapshot_reads:
        pytest.skip(f"{source.server.flavor} {source.server.version} ({source.server.topology}) "
                    "has no snapshot reads; runs against the mongo:7 replica set from "
                    "docker-compose.test.yml")
    [unit] = source.list_units()
    src[db]["t"].insert_one({"_id": "late"})
    assert sum(len(b) for b in source.export(unit)) == 10


def test_split_units_hold_at_most_unit_records_documents(mongo_env, clients, db):
    """Whether the server split (splitVector) or we walked `_id`, parts stay bounded."""
    src, _ = clients
    insert_ids(src, db, "t", 3000)
    source, _ = make(mongo_env, db, unit_records=1000)
    units = source.list_units()
    sizes = [sum(len(b) for b in source.export(u)) for u in units]
    assert sum(sizes) == 3000 and len(units) >= 3 and max(sizes) <= 1000


def test_ferretdb_target_names_the_document_it_cannot_store(mongo_env, clients, db):
    _, dst = clients
    if not is_ferretdb(dst):
        pytest.skip("the target is MongoDB, which stores Decimal128")
    _, target = make(mongo_env, db)
    bad = RawBSONDocument(bson.encode({"_id": "price", "v": Decimal128("9.99")}))
    ok = RawBSONDocument(bson.encode({"_id": "fine", "v": 1}))
    unit = Unit("mongo", f"{db}.t", {"db": db, "collection": "t", "lo": None, "hi": None})
    with pytest.raises(CapabilityMissing, match=r"\"price\".*Decimal128"):
        target.importer(unit).write_batch(Batch([ok, bad], cursor="x"))


def test_target_write_probe_leaves_nothing_behind(mongo_env, clients, db):
    _, dst = clients
    _, target = make(mongo_env, db)
    target.check_access(Role.TARGET)
    assert db not in dst.list_database_names()
    dst[db]["keep"].insert_one({"_id": 1})
    target.check_access(Role.TARGET)
    assert dst[db].list_collection_names() == ["keep"]


def test_source_user_with_read_role_passes_the_source_check(mongo_env, clients, db,
                                                           monkeypatch):
    src, _ = clients
    src[db]["t"].insert_one({"_id": 1})
    try:
        src[db].command("createUser", "reader", pwd="reader-pw", roles=["read"])
    except mx.OperationFailure as exc:
        pytest.skip(f"the server has no users/roles ({exc.details.get('errmsg')}); "
                    "runs against mongo:7 from docker-compose.test.yml")
    try:
        monkeypatch.setenv("OIM_TEST_MONGO_READER_PW", "reader-pw")
        url = with_db(mongo_env["OIM_MONGO_SRC_URL"], db).replace(
            "mongodb://", "mongodb://reader:${OIM_TEST_MONGO_READER_PW}@", 1)
        store = MongoStore(Endpoint("mongo", url, name="source.mongo"))
        store.check_access(Role.SOURCE)
        assert [u.name for u in store.list_units()] == [f"{db}.t"]
    finally:
        src[db].command("dropUser", "reader")


def test_wrong_password_is_a_terminal_endpoint_error_without_the_password(
        mongo_env, db, monkeypatch):
    monkeypatch.setenv("OIM_TEST_MONGO_BAD_PW", "s3cr3t-Wr0ng")
    url = with_db(mongo_env["OIM_MONGO_SRC_URL"], db).replace(
        "mongodb://", "mongodb://nobody:${OIM_TEST_MONGO_BAD_PW}@", 1)
    store = MongoStore(Endpoint("mongo", url, name="source.mongo"))
    with pytest.raises(EndpointError) as info:
        store.open()
    assert not info.value.transient
    assert "source.mongo" in str(info.value) and "s3cr3t-Wr0ng" not in str(info.value)


def test_unreachable_server_is_a_transient_endpoint_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = MongoStore(Endpoint("mongo", f"mongodb://127.0.0.1:{port}/x", name="source.mongo",
                                options={"server_selection_timeout_ms": 300}))
    with pytest.raises(EndpointError) as info:
        store.open()
    assert info.value.transient and "source.mongo" in str(info.value)
