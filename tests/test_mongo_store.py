"""MongoDB store against real servers: DocumentDB's gateway on PostgreSQL here (FerretDB 1.24
when DocumentDB is not built), mongo:7 with docker-compose.test.yml.

Features a server lacks are probed at run time; their tests skip with the reason here and
run against real MongoDB (OIM_MONGO_FLAVOR=mongodb). On DocumentDB only change streams,
snapshot reads at a cluster time, splitVector, collation and capped collections skip.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import bson
import pytest
from bson import SON, Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo import errors as mx

from fixtures import mongo_data
from migrator.config import TLS, Endpoint, resolve_refs
from migrator.errors import CapabilityMissing, EndpointError, StoreError
from migrator.stores.base import Batch, Role, Selection, StoreOptions, Unit
from migrator.stores.mongo.meta import ferretdb_refusal, id_label
from migrator.stores.mongo.store import MongoStore

RAW = bson.CodecOptions(document_class=RawBSONDocument)


def with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


def client_for(url: str, **kwargs) -> MongoClient:
    """A driver client for a test URL (which may carry ${OIM_MONGO_*_PASSWORD} references)."""
    return MongoClient(resolve_refs(url, "test"), serverSelectionTimeoutMS=5000, **kwargs)


@pytest.fixture(scope="module")
def clients(mongo_env):
    src = client_for(mongo_env["OIM_MONGO_SRC_URL"])
    dst = client_for(mongo_env["OIM_MONGO_DST_URL"])
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


def flavour(client: MongoClient) -> str:
    build = client.admin.command("buildInfo")
    if "ferretdbVersion" in build:
        return "ferretdb"
    return "mongodb" if "gitVersion" in build else "documentdb"


MONGO7 = "runs against mongo:7 from docker-compose.test.yml"
BOTH = ("runs against DocumentDB (scripts/build-documentdb.sh) and mongo:7 from "
        "docker-compose.test.yml")


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
    "binary_1_function": Binary(b"f()", 1), "binary_2_old": Binary(b"old", 2),
    "binary_3_old_uuid": Binary(uuid.UUID(int=9).bytes, 3), "binary_6_encrypted": Binary(b"e", 6),
    "binary_8_sensitive": Binary(b"secret", 8),
    "dollar_fields": SON([("$price", Decimal128("9.99")), ("$currency", "EUR")]),
    "dotted_fields": SON([("a.b", 1), ("c.d.e", {"f.g": 2})]),
    "arrays_in_arrays_deep": [[[1], [2, [3, []]]], [{"x": [[4]]}]],
    "decimal128_specials": [Decimal128("NaN"), Decimal128("-Infinity"), Decimal128("-0"),
                            Decimal128("1E+6144")],
    "double_neg_inf": float("-inf"),
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


def test_a_first_copy_onto_a_different_document_is_refused_a_resumed_one_replaces_it(
        mongo_env, clients, db):
    """A fresh copy that meets another document under one of its `_id`s found a target
    holding other data; after a checkpoint (or in `sync`) the document there is an older
    copy of ours, and the source's current bytes replace it."""
    src, dst = clients
    ids = insert_ids(src, db, "t", 10)
    dst[db]["t"].insert_one({"_id": ids[4], "n": "not the same"})
    source, target = make(mongo_env, db)
    [unit] = source.list_units()
    imp = target.importer(unit)
    imp.prepare(False)
    with pytest.raises(StoreError, match=str(ids[4])):
        for batch in source.export(unit):
            imp.write_batch(batch)
    imp = target.importer(unit)
    imp.prepare(True)
    for batch in source.export(unit):
        imp.write_batch(batch)
    assert raw_docs(dst, db, "t") == raw_docs(src, db, "t")


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


def test_digests_and_records_see_each_document_once_after_many_updates(mongo_env, clients, db):
    """DocumentDB's gateway repeats (or loops over) updated documents across the batches of
    an unsorted cursor; the store's scans must count every document exactly once anyway."""
    src, _ = clients
    src[db]["t"].insert_many([{"_id": i, "v": f"value {i}"} for i in range(400)])
    rng = random.Random(1)
    for _ in range(300):  # values that grow and change type: rows move inside the server
        src[db]["t"].update_one({"_id": rng.randrange(400)}, {"$set": {"v": rng.choice(
            [1, "long string " * rng.randrange(1, 20), 2.5, None])}})
    source, _ = make(mongo_env, db, batch_records=10, chunk_records=120)
    [unit] = source.list_units()
    chunks = source.chunks(unit)
    digests = source.digest(unit, chunks)
    assert sum(d.count for d in digests.values()) == 400
    keys = [k for c in chunks for k, _ in source.records(unit, c)]
    assert len(keys) == len(set(keys)) == 400
    assert len([v for v in source.field_values(unit, "v")]) == src[db]["t"].count_documents(
        {"v": {"$ne": None}})


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
    "partial": ([("p", 1)], {"partialFilterExpression": {"p": {"$exists": True}},
                             "unique": True}),
    "collation": ([("c", 1)], {"collation": {"locale": "en", "strength": 2}}),
    "text": ([("body", "text"), ("title", "text")], {"weights": {"title": 5},
                                                      "default_language": "english"}),
    "2dsphere": ([("loc", "2dsphere")], {}),
    "hashed": ([("h", "hashed")], {}),
}


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_special_index_kinds_are_recreated(mongo_env, clients, db, kind):
    src, dst = clients
    keys, extra = INDEX_KINDS[kind]
    src[db]["t"].insert_one({"_id": 1, "loc": {"type": "Point", "coordinates": [13.4, 52.5]},
                             "body": "moved to kubernetes", "title": "migration"})
    try:
        src[db]["t"].create_index(keys, name=f"ix_{kind}", **extra)
    except mx.OperationFailure as exc:
        pytest.skip(f"{flavour(src)} refuses {kind} indexes ({exc.details.get('errmsg')}); "
                    f"{MONGO7}")
    source, target = make(mongo_env, db)
    [unit] = copy_all(source, target)
    assert source.schema(unit) == target.schema(unit)
    [built] = [i for i in dst[db]["t"].list_indexes() if i["name"] == f"ix_{kind}"]
    for option, value in extra.items():  # the options travelled, not just the keys
        if isinstance(value, dict) and option == "weights":  # servers add the default 1
            assert {k: built[option][k] for k in value} == value, (option, built)
        else:
            assert built[option] == value, (option, built)
    dst[db]["t"].drop_index(f"ix_{kind}")  # and their absence is a schema difference
    assert source.schema(unit) != target.schema(unit)


def test_recreated_indexes_work_on_the_target(mongo_env, clients, db):
    """Not just listed: $text, $near, the partial unique index and TTL expiry act."""
    src, dst = clients
    if is_ferretdb(src):
        pytest.skip(f"FerretDB 1.24 has no text, 2dsphere, partial or TTL indexes; {BOTH}")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    src[db]["t"].insert_many([
        {"_id": 1, "body": "kubernetes migration", "loc": {"type": "Point",
                                                           "coordinates": [13.4, 52.5]}},
        {"_id": 2, "body": "redis cluster", "loc": {"type": "Point", "coordinates": [2.3, 48.8]},
         "p": "x"}])
    for keys, extra in (INDEX_KINDS["text"], INDEX_KINDS["2dsphere"], INDEX_KINDS["partial"]):
        src[db]["t"].create_index(keys, **extra)
    src[db]["ttl"].insert_one({"_id": "stays", "at": "not a date"})
    src[db]["ttl"].create_index("at", expireAfterSeconds=60)
    source, target = make(mongo_env, db)
    copy_all(source, target)
    assert [d["_id"] for d in dst[db]["t"].find({"$text": {"$search": "kubernetes"}})] == [1]
    near = dst[db]["t"].find({"loc": {"$near": {"$geometry": {
        "type": "Point", "coordinates": [2.35, 48.85]}, "$maxDistance": 50_000}}})
    assert [d["_id"] for d in near] == [2]
    with pytest.raises(mx.DuplicateKeyError):
        dst[db]["t"].insert_one({"_id": 3, "p": "x"})
    dst[db]["t"].insert_many([{"_id": 4}, {"_id": 5}])  # partial: no p, no conflict
    dst[db]["ttl"].insert_one({"_id": "expires", "at": old})
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=150)
    while dst[db]["ttl"].count_documents({"_id": "expires"}) and \
            datetime.datetime.now() < deadline:
        time.sleep(2)
    assert [d["_id"] for d in dst[db]["ttl"].find()] == ["stays"]


def test_index_the_target_refuses_raises_capability_missing_and_the_rest_is_built(
        mongo_env, clients, db):
    _, dst = clients
    dst[db]["t"].insert_one({"_id": 1})
    _, target = make(mongo_env, db)
    specs = [SON([("key", SON([("at", 1)])), ("name", "ttl"), ("expireAfterSeconds", 60)]),
             SON([("key", SON([("c", 1)])), ("name", "by_collation"),
                  ("collation", {"locale": "fr", "strength": 1})]),
             SON([("key", SON([("plain", 1)])), ("name", "plain")])]
    try:
        target.create_indexes([(db, "t", specs)])
    except CapabilityMissing as exc:
        refused = [s["name"] for s in specs[:2] if s["name"] in str(exc)]
        assert refused and "target.mongo" in str(exc)
        built = {i["name"] for i in dst[db]["t"].list_indexes()}
        assert not set(refused) & built  # named exactly those it could not build
    else:
        pytest.skip(f"the target builds TTL and collation indexes, so there is no refusal "
                    f"to report ({flavour(dst)})")
    assert "plain" in {i["name"] for i in dst[db]["t"].list_indexes()}


def test_collection_options_are_created_before_the_data(mongo_env, clients, db):
    src, dst = clients
    try:
        src[db].create_collection("capped", capped=True, size=1 << 20, max=1000)
    except mx.OperationFailure as exc:
        pytest.skip(f"{flavour(src)} has no capped collections ({exc.details.get('errmsg')}); "
                    f"{MONGO7}")
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
    tried = []
    for option, options in (
            ("validator", SON([("validator", {"a": {"$exists": True}}),
                               ("validationLevel", "moderate")])),
            ("capped", SON([("capped", True), ("size", 4096)])),
            ("collation", SON([("collation", {"locale": "fr"})]))):
        try:
            target.create_collection(db, f"c_{option}", options)
        except CapabilityMissing as exc:
            assert option in str(exc) and f"{db}.c_{option}" in str(exc)
            return
        tried.append(option)
    pytest.skip(f"the target supports {', '.join(tried)}, so there is no refusal to report")


def test_validators_and_views_are_copied_with_their_list_collections_options(
        mongo_env, clients, db):
    src, dst = clients
    try:
        src[db].create_collection(
            "checked", validator={"$jsonSchema": {"bsonType": "object",
                                                  "properties": {"n": {"bsonType": "int"}}}},
            validationLevel="moderate", validationAction="error")
        src[db].create_collection("typed", validator={"n": {"$type": "int"}})
        src[db].command("create", "recent", viewOn="checked", pipeline=[{"$match": {"n": 1}}])
        src[db].command("create", "recent_ids", viewOn="recent",
                        pipeline=[{"$project": {"_id": 1}}])
    except mx.OperationFailure as exc:
        pytest.skip(f"{flavour(src)} lacks validators or views ({exc.details.get('errmsg')}); "
                    + BOTH)
    src[db]["checked"].insert_one({"_id": 1, "n": 1})
    src[db]["checked"].insert_one({"_id": 2, "n": 2})
    src[db]["typed"].insert_one({"_id": 1, "n": 7})
    source, target = make(mongo_env, db)
    units = copy_all(source, target)
    for unit in units:
        assert source.schema(unit) == target.schema(unit)
    for name in ("checked", "typed", "recent", "recent_ids"):
        assert dst[db][name].options() == src[db][name].options(), name
    assert list(dst[db]["recent_ids"].find()) == [{"_id": 1}]
    assert source.definitions(units) == target.definitions(units)
    assert set(source.definitions(units)) == {f"{db}.recent", f"{db}.recent_ids"}
    dst[db].drop_collection("recent_ids")
    assert set(source.definitions(units)) - set(target.definitions(units)) == {
        f"{db}.recent_ids"}
    with pytest.raises(mx.WriteError):  # the validator acts on the target
        dst[db]["checked"].insert_one({"_id": 3, "n": "one"})


def test_collection_collation_is_copied(mongo_env, clients, db):
    src, _ = clients
    try:
        src[db].create_collection("fr", collation={"locale": "fr", "strength": 1})
    except mx.OperationFailure as exc:
        pytest.skip(f"{flavour(src)} has no collations ({exc.details.get('errmsg')}); "
                    f"{MONGO7}")
    if "collation" not in src[db]["fr"].options():
        pytest.skip(f"{flavour(src)} accepts a collection's collation but does not keep it; "
                    f"{MONGO7}")
    src[db]["fr"].insert_one({"_id": 1})
    source, target = make(mongo_env, db)
    [unit] = copy_all(source, target)
    assert source.schema(unit) == target.schema(unit)
    assert source.schema(unit)["options"]["collation"]["locale"] == "fr"


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
    assert info["flavor"] == flavour(src) and info["tls"] == "off"
    if info["flavor"] in ("ferretdb", "documentdb"):
        assert "snapshot_time" not in info and "write freeze" in info["consistency"]
    elif hello.get("setName"):
        assert info["topology"] == "replicaSet" and "snapshot_time" in info
    else:
        assert "write freeze" in info["consistency"]


def test_a_snapshot_the_server_does_not_honour_is_never_reported(mongo_env, clients, db):
    """The probe itself, against the live server: DocumentDB accepts atClusterTime and reads
    the present, so the store must find that out and claim no snapshot."""
    src, _ = clients
    source, _ = make(mongo_env, db)
    if is_ferretdb(src):
        pytest.skip("FerretDB refuses snapshot read concern outright; nothing to probe")
    now = src.admin.command("hello").get("operationTime") or Timestamp(int(time.time()), 1)
    promised = dataclasses.replace(source.server, start_time=now, topology="replicaSet",
                                   max_wire=max(13, source.server.max_wire))
    assert promised.snapshot_candidate
    honoured = source._snapshot_honoured(promised)
    if flavour(src) == "documentdb":
        assert honoured is False
        fake = dataclasses.replace(promised, snapshot_verified=honoured)
        source._server = fake
        described = source.describe()
        assert "snapshot_time" not in described
        assert "does not honour" in described["consistency"]
    else:
        assert honoured is bool(src.admin.command("hello").get("setName"))


def test_snapshot_export_does_not_see_writes_after_the_run_started(mongo_env, clients, db):
    src, _ = clients
    insert_ids(src, db, "t", 10)
    source, _ = make(mongo_env, db)
    if not source.server.snapshot_reads:
        pytest.skip(f"{source.server.flavor} {source.server.version} ({source.server.topology}) "
                    "has no snapshot reads at a cluster time (DocumentDB accepts atClusterTime "
                    f"but does not honour it: probed); {MONGO7} (a replica set)")
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
    bad = RawBSONDocument(bson.encode({"_id": "price", "v": Decimal128("9.99")}))
    ok = RawBSONDocument(bson.encode({"_id": "fine", "v": 1}))
    assert ferretdb_refusal(bad.raw) == "v is a Decimal128" and ferretdb_refusal(ok.raw) is None
    if not is_ferretdb(dst):
        return  # the target stores Decimal128 (the round-trip tests prove it)
    _, target = make(mongo_env, db)
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


def reader_url(env, db: str) -> str:
    """The source URL with the readAnyDatabase user in place of the admin."""
    hostport = env["OIM_MONGO_SRC_URL"].split("@")[-1].split("://")[-1].split("/")[0]
    return (f"mongodb://${{OIM_MONGO_SRC_READER_USER}}:${{OIM_MONGO_SRC_READER_PASSWORD}}@"
            f"{hostport}/{db}")


@pytest.fixture
def reader(mongo_env, clients):
    """The source's readAnyDatabase user (made by scripts/services.py, or here on mongo:7)."""
    src, _ = clients
    if "OIM_MONGO_SRC_READER_USER" not in mongo_env:
        if is_ferretdb(src):
            pytest.skip(f"FerretDB 1.24 (SQLite) has no users or roles; {BOTH}")
        src.admin.command("createUser", "oim_test_reader", pwd="reader-pw-1",
                          roles=[{"role": "readAnyDatabase", "db": "admin"}])
        mongo_env = {**mongo_env, "OIM_MONGO_SRC_READER_USER": "oim_test_reader",
                     "OIM_MONGO_SRC_READER_PASSWORD": "reader-pw-1"}
        import os
        os.environ.update({k: mongo_env[k] for k in ("OIM_MONGO_SRC_READER_USER",
                                                      "OIM_MONGO_SRC_READER_PASSWORD")})
        yield mongo_env
        src.admin.command("dropUser", "oim_test_reader")
        return
    yield mongo_env


def test_read_any_database_user_passes_the_source_check_and_cannot_write(
        mongo_env, clients, db, reader):
    src, _ = clients
    src[db]["t"].insert_one({"_id": 1})
    store = MongoStore(Endpoint("mongo", reader_url(reader, db), name="source.mongo"))
    store.check_access(Role.SOURCE)
    assert [u.name for u in store.list_units()] == [f"{db}.t"]
    with pytest.raises(EndpointError, match="source.mongo") as info:
        store.check_access(Role.TARGET)  # the write probe is refused: exit 4, named
    assert info.value.exit_code == 4
    raw = client_for(reader_url(reader, db))
    with pytest.raises(mx.OperationFailure) as refused:
        raw[db]["t"].insert_one({"_id": 2})
    assert refused.value.code == 13  # Unauthorized
    assert src[db]["t"].count_documents({}) == 1


def test_plan_run_verify_with_a_read_any_database_source_user(
        mongo_env, clients, db, reader, tmp_path):
    """The whole command line with a source account that can only read."""
    src, dst = clients
    src[db]["msg"].insert_many([{"_id": i, "v": Decimal128(f"{i}.5")} for i in range(50)])
    src[db]["msg"].create_index("v")
    src[db].command("create", "small", viewOn="msg", pipeline=[{"$match": {"_id": {"$lt": 5}}}])
    plan = tmp_path / "plan.yaml"
    target = with_db(mongo_env["OIM_MONGO_DST_URL"], db)
    steps = [["plan", "--source", f"mongo={reader_url(reader, db)}", "--target",
              f"mongo={target}", "-o", str(plan)],
             ["run", str(plan), "--no-progress"], ["verify", str(plan)]]
    for args in steps:
        out = cli(*args)
        assert out.returncode == 0, (args[0], out.stdout, out.stderr[-3000:])
    assert raw_docs(dst, db, "msg") == raw_docs(src, db, "msg")
    assert dst[db]["small"].count_documents({}) == 5
    secrets = [v for k, v in reader.items() if k.endswith("PASSWORD")]
    assert secrets and not [v for v in secrets if v in plan.read_text()]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=timeout)


def test_wrong_password_is_a_terminal_endpoint_error_without_the_password(
        mongo_env, db, monkeypatch):
    monkeypatch.setenv("OIM_TEST_MONGO_BAD_PW", "s3cr3t-Wr0ng")
    hostport = mongo_env["OIM_MONGO_SRC_URL"].split("://", 1)[1].split("@")[-1]
    url = f"mongodb://nobody:${{OIM_TEST_MONGO_BAD_PW}}@{hostport}/{db}"
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


# -- TLS -------------------------------------------------------------------------------------
def test_tls_with_ca_file_verifies_the_servers_certificate(mongo_env, clients, db):
    src, _ = clients
    src[db]["t"].insert_one({"_id": 1})
    endpoint = Endpoint("mongo", with_db(mongo_env["OIM_MONGO_TLS_URL"], db), name="source.mongo",
                        tls=TLS(enabled=True, ca_file=mongo_env["OIM_MONGO_TLS_CA_FILE"]))
    store = MongoStore(endpoint)
    store.check_access(Role.SOURCE)
    assert [u.name for u in store.list_units()] == [f"{db}.t"]
    assert store.describe()["tls"] == (
        f"on, certificate verified against {mongo_env['OIM_MONGO_TLS_CA_FILE']}")
    plain = MongoStore(Endpoint("mongo", endpoint.url, name="source.mongo",
                                options={"server_selection_timeout_ms": 1500}))
    with pytest.raises(EndpointError):  # the listener speaks TLS only
        plain.open()


def test_tls_with_the_wrong_ca_is_exit_4_naming_the_endpoint(mongo_env, db, tmp_path):
    wrong = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=some other CA", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(wrong)], check=True, capture_output=True)
    store = MongoStore(Endpoint("mongo", with_db(mongo_env["OIM_MONGO_TLS_URL"], db),
                                name="source.mongo", tls=TLS(enabled=True, ca_file=str(wrong)),
                                options={"server_selection_timeout_ms": 3000}))
    with pytest.raises(EndpointError) as info:
        store.open()
    assert info.value.exit_code == 4 and not info.value.transient
    assert "source.mongo" in str(info.value) and "certificate" in str(info.value)
    out = cli("plan", "--source", f"mongo={with_db(mongo_env['OIM_MONGO_TLS_URL'], db)}",
              "--source-option", f"mongo.tls={{enabled: true, ca_file: {wrong}}}",
              "--source-option", "mongo.server_selection_timeout_ms=3000",
              "--target", f"mongo={with_db(mongo_env['OIM_MONGO_DST_URL'], db)}",
              "-o", str(tmp_path / "p.yaml"))
    assert out.returncode == 4, out.stderr
    assert "stores.mongo.source" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "p.yaml").exists()


# -- coverage: what a plan may say -------------------------------------------------------------
def _unit(lo, hi, name="u", db="d", coll="c") -> Unit:
    return Unit("mongo", f"{db}.{coll}#{name}", {"db": db, "collection": coll,
                                                  "lo": lo, "hi": hi})


OID = {"$oid": "65f1a2b3c4d5e6f708091a2b"}


@pytest.mark.parametrize("units, expected", [
    ([_unit(None, None)], []),
    ([_unit(None, OID, "a"), _unit(OID, None, "b")], []),
    # mixed _id types: edges in different BSON types, numbers compared as numbers
    ([_unit(None, {"$numberInt": "1"}, "a"), _unit({"$numberDouble": "1.0"}, "x", "b"),
      _unit("x", OID, "c"), _unit(OID, None, "d")], []),
    ([_unit(OID, None, "b")], ["d.c: no unit covers _id below ObjectId('65f1a2b3c4d5e6f7"]),
    ([_unit(None, OID, "a")], ["d.c: no unit covers _id from ObjectId('65f1a2b3c4d5e6f7"]),
    ([_unit(None, "m", "a"), _unit("n", None, "b")], ['d.c: no unit covers _id from "m" to "n"']),
    ([_unit(None, "n", "a"), _unit("m", None, "b")], ["d.c#b: overlaps the unit before it"]),
    ([_unit(None, None, "a"), _unit(None, None, "b")], ["d.c#b: overlaps a unit that already"]),
    ([_unit(None, "m", "a"), _unit("m", "a", "b"), _unit("m", None, "c")],
     ["d.c#b: its range is empty"]),
    ([_unit(None, {"$oid": "zz"}, "a")], ["d.c#a: lo/hi is not an _id value"]),
])
def test_uncovered_names_gaps_and_overlaps_per_collection(units, expected):
    found = MongoStore.uncovered(units)
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), (line, start)
    other = [_unit(None, None, "z", coll="other")]  # another collection is its own space
    assert len(MongoStore.uncovered(units + other)) == len(expected)


def test_container_of_is_db_dot_collection_for_whole_and_split_units():
    assert MongoStore.container_of(_unit(None, None, coll="msg", db="openim_v3")) == "openim_v3.msg"
    assert MongoStore.container_of(Unit("mongo", "a.b#0003", {})) == "a.b"


def test_spec_schema_refuses_what_the_store_could_not_read():
    import jsonschema
    check = jsonschema.Draft202012Validator(MongoStore.SPEC_SCHEMA)
    assert not list(check.iter_errors({"db": "a", "collection": "b", "lo": None, "hi": OID}))
    for bad in ({"db": "a", "collection": "b"}, {"db": "a.b", "collection": "c", "lo": None,
                                                   "hi": None},
                {"db": "a", "collection": "", "lo": None, "hi": None},
                {"db": "a", "collection": "b", "lo": None, "hi": None, "slots": [1]},
                {"db": "a", "collection": "b", "lo": None, "hi": None,
                 "bypass_validation": "yes"}):
        assert list(check.iter_errors(bad)), bad


BAD_ENDPOINTS = [
    # (url, options, role, field, message part)
    ("postgres://h:27017/db", {}, "source", "x.url", "scheme 'postgres'"),
    ("h:27017/db", {}, "source", "x.url", "has no scheme"),
    ("mongodb://:27017/db", {}, "source", "x.url", "empty host"),
    ("mongodb://h:0/db", {}, "source", "x.url", "port 0"),
    ("mongodb://h:/db", {}, "source", "x.url", "port (empty)"),
    ("mongodb://h:99999", {}, "source", "x.url", "port 99999"),
    ("mongodb://h:27017,:27018/db", {}, "source", "x.url", "empty host"),
    ("mongodb+srv://h:27017/db", {}, "source", "x.url", "takes no port"),
    ("mongodb+srv://a,b/db", {}, "source", "x.url", "exactly one host"),
    ("mongodb://h/a.b", {}, "source", "x.url", "'a.b' is not a database name"),
    ("mongodb://h/a/b", {}, "source", "x.url", "is not a database name"),
    ("mongodb://:${P}@h/db", {}, "source", "x.url", "without a user name"),
    ("mongodb://h/db?replicaSett=rs0", {}, "source", "x.url", "'replicaSett' is not a MongoDB"),
    ("mongodb://h/db?retryWrites=perhaps", {}, "source", "x.url", "'retryWrites' is not valid"),
    ("mongodb://h/db?directConnection=maybe", {}, "source", "x.url", "is not valid"),
    ("mongodb://h/db?tls=true", {}, "source", "x.url", "tls: option"),
    ("mongodb://h/db?tlsCAFile=/x", {}, "source", "x.url", "tls: option"),
    ("mongodb://h/db?serverSelectionTimeoutMS=5", {}, "source", "x.url",
     "server_selection_timeout_ms"),
    ("mongodb://h/db?maxPoolSize=5", {}, "source", "x.url", "overridden"),
    ("mongodb://h/db?w=0", {}, "target", "x.url", "w=0"),
    ("mongodb://h/db", {"databases": ["a"]}, "source", "x.databases", "would be ignored"),
    ("mongodb://h", {"db_map": {"a": "b"}}, "source", "x.db_map", "is for targets"),
    ("mongodb://h", {"databases": []}, "source", "x.databases", "expected a list"),
    ("mongodb://h", {"databases": ["a b"]}, "source", "x.databases.0", "expected"),
    ("mongodb://h", {"db_map": {"a": "b.c"}}, "target", "x.db_map.a", "expected"),
    ("mongodb://h", {"max_pool_size": "many"}, "target", "x.max_pool_size", "expected"),
    ("mongodb://h", {"server_selection_timeout_ms": 0}, "target",
     "x.server_selection_timeout_ms", "expected"),
    ("mongodb://h", {"snapshot": "no"}, "source", "x.snapshot", "true or false"),
    ("mongodb://h", {"dbs": ["a"]}, "source", "x.dbs", "unknown option"),
]


@pytest.mark.parametrize("url, options, role, field, message", BAD_ENDPOINTS,
                         ids=[f"{b[0]}|{sorted(b[1])}" for b in BAD_ENDPOINTS])
def test_check_endpoint_refuses_urls_and_options_it_would_misread(url, options, role, field,
                                                                  message):
    from migrator.errors import PlanError
    with pytest.raises(PlanError) as info:
        MongoStore.check_endpoint(Endpoint("mongo", url, name="x", options=options), Role(role))
    assert info.value.field == field and info.value.exit_code == 3
    assert message in str(info.value) and "\n" not in info.value.message


@pytest.mark.parametrize("url", [
    "mongodb://h", "mongodb://h:27017/openim_v3", "mongodb://u:${P}@h1:1,h2:2/db?replicaSet=rs0",
    "mongodb://[::1]:27017/db?authSource=admin&readPreference=secondaryPreferred",
    "mongodb+srv://cluster0.example.net/db?retryWrites=true&w=majority",
    "mongodb://h/?directConnection=true"])
def test_check_endpoint_accepts_urls_the_store_honours(url):
    MongoStore.check_endpoint(Endpoint("mongo", url, name="x"), Role.SOURCE)
    MongoStore.check_endpoint(Endpoint("mongo", url, name="x",
                                       options={"db_map": {"a": "b"}}), Role.TARGET)
