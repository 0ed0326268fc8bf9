"""Catch-up (`sync`) and the write freeze for MongoDB, against the real MongoDB-protocol
servers of ``mongo_env`` (DocumentDB's gateway, FerretDB 1.24, or mongo:7 from the compose
file): ``fetch`` and ``delete`` find exactly the `_id`s ``records()`` names, type included
(``1``, ``NumberLong(1)`` and ``1.0`` are one key to the server, three to us); a resumed
importer clears nothing and replaces what changed (an `_id` that changed type, top-level
``$`` fields, a unique key that moved to a new `_id`); ``describe`` says how sync catches
up, from what the server answered; ``fsyncLock`` is used only where the server and the
account allow it. Through the command line, a copy made under live writes converges with
`sync`, and a target changed behind our back is repaired by `sync` alone. Every final
comparison reads both servers here, raw BSON per `_id`, independently of the tool."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import SON, Binary, Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, monitoring
from pymongo import errors as mx

from fixtures import mongo_data
from migrator.config import Endpoint, resolve_refs
from migrator.engine.sync import record_catch_up, sync_unit
from migrator.errors import CapabilityMissing, StoreError
from migrator.stores.base import StoreOptions
from migrator.stores.mongo.meta import id_label
from migrator.stores.mongo.store import FETCH_SLICE, MongoStore
from tests.livewrites import copy_units, record_map, run_while_writing

ROOT = Path(__file__).resolve().parents[1]
RAW = bson.CodecOptions(document_class=RawBSONDocument)
MONGO7 = "runs against mongo:7 from docker-compose.test.yml"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


def connect(url: str, **kwargs: Any) -> MongoClient:
    """A driver client for a test URL (which may carry ${OIM_MONGO_*_PASSWORD} references)."""
    return MongoClient(resolve_refs(url, "test"), serverSelectionTimeoutMS=5000, **kwargs)


@pytest.fixture(scope="module")
def clients(mongo_env):
    src, dst = connect(mongo_env["OIM_MONGO_SRC_URL"]), connect(mongo_env["OIM_MONGO_DST_URL"])
    yield src, dst
    src.close()
    dst.close()


@pytest.fixture
def db(clients):
    """A fresh database name, dropped on both servers afterwards."""
    name = f"sy_{uuid.uuid4().hex[:10]}"
    yield name
    for client in clients:
        client.drop_database(name)


def flavour(client: MongoClient) -> str:
    build = client.admin.command("buildInfo")
    if "ferretdbVersion" in build:
        return "ferretdb"
    return "mongodb" if "gitVersion" in build else "documentdb"


def store(env: dict[str, str], side: str, db: str, *, options: dict | None = None,
          **store_opts: Any) -> MongoStore:
    s = MongoStore(Endpoint("mongo", with_db(env[f"OIM_MONGO_{side}_URL"], db),
                            name=f"{'source' if side == 'SRC' else 'target'}.mongo",
                            options=options or {}), None, StoreOptions(**store_opts))
    s.open()
    return s






def raw_by_id(client: MongoClient, db: str, coll: str) -> list[tuple[str, bytes]]:
    """Every document as (`_id` label, raw bytes), sorted, duplicates kept. Read in `_id`
    order: DocumentDB's unsorted cursors repeat updated documents across batches."""
    docs = client[db].get_collection(coll, codec_options=RAW).find(sort=[("_id", 1)])
    return sorted((id_label(bson.decode(d.raw)["_id"]), bytes(d.raw)) for d in docs)


def assert_same_databases(src: MongoClient, dst: MongoClient, db: str) -> None:
    """Independent of the tool: per collection the same `_id`s with the same bytes, no
    document missing, none left over, none twice, and the server's counts agree."""
    colls = sorted(n for n in src[db].list_collection_names() if not n.startswith("system."))
    assert colls and colls == sorted(n for n in dst[db].list_collection_names()
                                     if not n.startswith("system."))
    for coll in colls:
        a, b = raw_by_id(src, db, coll), raw_by_id(dst, db, coll)
        assert src[db][coll].count_documents({}) == dst[db][coll].count_documents({}) == len(b)
        assert len({k for k, _ in b}) == len(b), f"{coll}: an _id twice on the target"
        if a != b:
            sa, sb = Counter(a), Counter(b)
            pytest.fail(f"{coll}: missing on target {[k for k, _ in (sa - sb)][:3]}, "
                        f"left over {[k for k, _ in (sb - sa)][:3]}")


# Every `_id` type the servers store, and look-alikes: 1 (int32), NumberLong(2), 2.5,
# the string "1", the document {k: 1} (and {k: NumberLong(1)} cannot exist beside it).
MIXED_IDS: list[Any] = [1, Int64(2), 2.5, -0.5, "1", "ObjectId('x')", ObjectId(), SON([("k", 1)]),
                        None, True, datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
                        Binary(b"\x01\x02", 0), Binary(uuid.UUID(int=5).bytes, 4), Int64(2**40)]


def make_mixed(client: MongoClient, db: str, coll: str = "mixed") -> None:
    client[db][coll].insert_many([{"_id": v, "n": i, "s": f"doc {i}"}
                                  for i, v in enumerate(MIXED_IDS)])


# ------------------------------------------------------------------ fetch and delete
def test_fetch_returns_exactly_the_documents_records_named_by_exact_id_type(
        mongo_env, clients, db):
    src, _ = clients
    make_mixed(src, db)
    source = store(mongo_env, "SRC", db, chunk_records=4)
    [unit] = source.list_units()
    named = record_map(source, unit)
    stored = dict(raw_by_id(src, db, "mixed"))
    assert set(named) == set(stored) and len(named) == len(MIXED_IDS)
    for key in named:  # each name alone brings back its own document, byte for byte
        batch = source.fetch(unit, [key])
        assert [bytes(d.raw) for d in batch.records] == [stored[key]], key
    lookalikes = ['{"$numberLong":"1"}', '{"$numberDouble":"1.0"}', '{"$numberInt":"2"}',
                  '{"k":{"$numberLong":"1"}}', '"gone"', "ObjectId('0123456789abcdef01234567')"]
    assert source.fetch(unit, lookalikes).records == []  # same value, other type: not ours
    batch = source.fetch(unit, [*named, *lookalikes, *named])
    assert sorted(bytes(d.raw) for d in batch.records) == sorted(stored.values())
    assert batch.nbytes == sum(len(v) for v in stored.values())
    src[db]["mixed"].delete_one({"_id": "1"})  # gone between records() and fetch()
    assert len(source.fetch(unit, list(named)).records) == len(MIXED_IDS) - 1
    source.close()


class FindCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_fetch_and_delete_are_one_in_query_per_slice_not_one_per_key(mongo_env, clients, db):
    src, dst = clients
    src[db]["t"].insert_many([{"_id": i, "v": "x" * 20} for i in range(2 * FETCH_SLICE + 200)])
    source = store(mongo_env, "SRC", db)
    target = store(mongo_env, "DST", db)
    [unit] = source.list_units()
    copy_units(source, target, [unit])
    keys = [id_label(i) for i in range(2 * FETCH_SLICE + 100)]
    counter = FindCounter()
    monitoring.register(counter)  # seen by clients created from now on
    try:
        source, target = store(mongo_env, "SRC", db), store(mongo_env, "DST", db)
        counter.finds.clear()
        assert len(source.fetch(unit, keys).records) == len(keys)
        assert len(counter.finds) == 3 and all("$in" in f["_id"] for f in counter.finds)
        counter.finds.clear()
        target.delete(unit, keys)
        assert len(counter.finds) == 3
    finally:
        monitoring._LISTENERS.command_listeners.remove(counter)
    assert dst[db]["t"].count_documents({}) == 100
    source.close()
    target.close()


@pytest.mark.parametrize("bad", ["1", '{"$numberInt":"01"}', "ObjectId('zz')", '"unterminated',
                                 "{'k': 1}", '{"$numberLong":"1"} '])
def test_a_name_records_could_not_have_printed_is_refused(mongo_env, clients, db, bad):
    src, _ = clients
    src[db]["t"].insert_one({"_id": 1})
    source = store(mongo_env, "SRC", db)
    [unit] = source.list_units()
    with pytest.raises(StoreError, match=f"{db}.t: .* is not an _id as this tool names one"):
        source.fetch(unit, ['{"$numberInt":"1"}', bad])
    source.close()


def test_delete_is_type_exact_and_goes_through_db_map(mongo_env, clients, db):
    src, dst = clients
    make_mixed(src, db)
    mapped = f"{db}_m"
    try:
        source = store(mongo_env, "SRC", db)
        target = MongoStore(Endpoint("mongo", mongo_env["OIM_MONGO_DST_URL"], name="target.mongo",
                                     options={"db_map": {db: mapped}}))
        target.open()
        [unit] = source.list_units()
        copy_units(source, target, [unit])
        before = dict(raw_by_id(dst, mapped, "mixed"))
        # look-alikes of stored ids, in other types: nothing may go
        target.delete(unit, ['{"$numberLong":"1"}', '{"$numberDouble":"2.0"}',
                             '{"$numberInt":"2"}', '{"k":{"$numberDouble":"1.0"}}', '"nobody"'])
        assert dict(raw_by_id(dst, mapped, "mixed")) == before
        gone = ['{"$numberInt":"1"}', '{"$numberLong":"2"}', '"1"', '{"k":{"$numberInt":"1"}}']
        target.delete(unit, gone)
        assert set(before) - set(dict(raw_by_id(dst, mapped, "mixed"))) == set(gone)
        assert dst[db]["mixed"].count_documents({}) == 0  # only the mapped database
        dst[mapped].drop_collection("mixed")
        target.delete(unit, ["true"])  # no collection: nothing to delete, no error
        source.close()
        target.close()
    finally:
        dst.drop_database(mapped)


# ------------------------------------------------------------------ the resumed importer
def test_a_resumed_importer_clears_nothing_and_replaces_changed_documents(
        mongo_env, clients, db):
    src, dst = clients
    has_dollar = flavour(src) != "ferretdb"  # FerretDB refuses $-prefixed field names
    src[db]["m"].create_index([("group_id", 1), ("user_id", 1)], unique=True)
    docs = [{"_id": i, "group_id": "g", "user_id": f"u{i}", "v": i} for i in range(1, 7)]
    src[db]["m"].insert_many(docs)
    if has_dollar:
        src[db]["m"].insert_one(RawBSONDocument(bson.encode(
            SON([("_id", "dollar"), ("$price", 1), ("group_id", "h"), ("user_id", "d")]))))
    source = store(mongo_env, "SRC", db)
    target = store(mongo_env, "DST", db, on_existing="overwrite")
    [unit] = source.list_units()
    copy_units(source, target, [unit])
    importer = target.importer(unit)
    importer.prepare(resumed=True)  # overwrite's delete_many must not run
    assert dst[db]["m"].count_documents({}) == len(docs) + has_dollar

    # the source changes: a value, the type of an _id (same number), a member who left and
    # joined again (same unique key, new _id), a top-level $ field
    src[db]["m"].update_one({"_id": 1}, {"$set": {"v": "now a string"}})
    src[db]["m"].delete_one({"_id": 2})
    src[db]["m"].insert_one({"_id": 2.0, "group_id": "g", "user_id": "u2", "v": "double"})
    src[db]["m"].delete_one({"_id": 3})
    src[db]["m"].insert_one({"_id": ObjectId(), "group_id": "g", "user_id": "u3", "v": "back"})
    changed = ['{"$numberInt":"1"}', '{"$numberDouble":"2.0"}',
               id_label(src[db]["m"].find_one({"user_id": "u3"})["_id"])]
    if has_dollar:
        src[db]["m"].delete_one({"_id": "dollar"})
        src[db]["m"].insert_one(RawBSONDocument(bson.encode(
            SON([("_id", "dollar"), ("$price", 2), ("group_id", "h"), ("user_id", "d")]))))
        changed.append('"dollar"')
    batch = source.fetch(unit, changed)
    assert len(batch) == len(changed)
    importer.write_batch(batch)
    importer.write_batch(batch)  # a replay finds its own bytes
    target.delete(unit, ['{"$numberInt":"3"}'])  # the rejoined member's old _id: gone already
    assert raw_by_id(dst, db, "m") == raw_by_id(src, db, "m")

    # a fresh (not resumed) importer still refuses to overwrite another document
    src[db]["m"].update_one({"_id": 4}, {"$set": {"v": "changed again"}})
    fresh = target.importer(unit)
    fresh.prepare(resumed=False)  # overwrite: clears the unit, then the copy starts
    assert dst[db]["m"].count_documents({}) == 0
    strict = store(mongo_env, "DST", db)
    copy_units(source, strict, [unit])
    src[db]["m"].update_one({"_id": 4}, {"$set": {"v": "and again"}})
    first = strict.importer(unit)
    first.prepare(resumed=False)
    with pytest.raises(StoreError, match=r"different document with _id \{\"\$numberInt\":\"4\"\}"):
        first.write_batch(source.fetch(unit, ['{"$numberInt":"4"}']))
    for s in (source, target, strict):
        s.close()


def test_sync_unit_repairs_an_id_whose_type_changed_on_either_side(mongo_env, clients, db):
    src, dst = clients
    make_mixed(src, db)
    source = store(mongo_env, "SRC", db, chunk_records=3)
    target = store(mongo_env, "DST", db, chunk_records=3)
    [unit] = source.list_units()
    copy_units(source, target, [unit])
    # the target: 1 became NumberLong(1); the source: NumberLong(2) became 2.0
    old = dst[db]["mixed"].find_one({"_id": 1})
    dst[db]["mixed"].delete_one({"_id": 1})
    dst[db]["mixed"].insert_one({**old, "_id": Int64(1)})
    moved = src[db]["mixed"].find_one({"_id": Int64(2)})
    src[db]["mixed"].delete_one({"_id": 2})
    src[db]["mixed"].insert_one({**moved, "_id": 2.0})
    report = sync_unit(source, target, unit)
    # copied: int 1 and double 2.0; deleted: long 1 and long 2 (type-exact, after the copy:
    # a type-blind delete would remove the documents just copied)
    assert (report.copied, report.deleted) == (2, 2)
    assert raw_by_id(dst, db, "mixed") == raw_by_id(src, db, "mixed")
    assert sync_unit(source, target, unit).changed == 0
    source.close()
    target.close()


# ------------------------------------------------------------------ what sync uses
def test_describe_says_how_sync_catches_up_from_what_the_server_answered(
        mongo_env, clients, db):
    src, _ = clients
    src[db]["t"].insert_one({"_id": 1})
    try:
        with src[db].watch(max_await_time_ms=1):
            refused = None
    except mx.OperationFailure as exc:
        refused = exc.code
    source = store(mongo_env, "SRC", db)
    info = source.describe()
    facts = {"source": dict(info)}
    record_catch_up(facts, source)
    if refused is not None:  # DocumentDB, FerretDB, a standalone mongod
        assert info["change_streams"].startswith("none (") and f"error {refused}" in \
            info["change_streams"]
        assert facts["source"]["catch_up"] == "chunk digests"
        assert any(n.startswith("catch-up: chunk digests in every pass") and
                   f"error {refused}" in n for n in facts["source"]["notes"])
        with pytest.raises(CapabilityMissing, match=f"no change streams.*error {refused}"):
            source.follow()
    else:
        assert info["change_streams"] == "available"
        assert facts["source"]["catch_up"] == "followed changes"
    assert "sync" in info["consistency"]
    source.close()


# ------------------------------------------------------------------ write freeze
def reader_url(env: dict[str, str], db: str) -> str:
    hostport = env["OIM_MONGO_SRC_URL"].split("@")[-1].split("://")[-1].split("/")[0]
    return (f"mongodb://${{OIM_MONGO_SRC_READER_USER}}:${{OIM_MONGO_SRC_READER_PASSWORD}}@"
            f"{hostport}/{db}")


def fsync_listed(client: MongoClient) -> bool:
    return "fsync" in client.admin.command("listCommands")["commands"]


def test_freeze_check_names_why_fsync_lock_is_not_possible_and_freeze_refuses(
        mongo_env, clients, db):
    src, _ = clients
    if fsync_listed(src):
        pytest.skip(f"{flavour(src)} has fsync; the lock itself is tested below ({MONGO7})")
    src[db]["t"].insert_one({"_id": 1})
    source = store(mongo_env, "SRC", db)
    reason = source.freeze_check()
    assert reason is not None and "no fsync" in reason and "listCommands" in reason
    assert flavour(src) in reason
    with pytest.raises(CapabilityMissing, match="no fsync") as info:
        source.freeze(30)
    assert "source.mongo" in str(info.value)
    source.unfreeze()  # harmless: nothing is held, and the server has no fsyncUnlock
    src[db]["t"].insert_one({"_id": 2})  # writes were never held
    source.close()


def test_a_read_any_database_source_is_reported_unable_to_freeze(mongo_env, clients, db,
                                                                 monkeypatch):
    src, _ = clients
    made = "OIM_MONGO_SRC_READER_USER" not in mongo_env  # mongo:7: made here
    if made:
        if flavour(src) == "ferretdb":
            pytest.skip("FerretDB 1.24 (SQLite) has no users or roles; runs against "
                        f"DocumentDB and {MONGO7}")
        src.admin.command("createUser", "oim_sync_reader", pwd="reader-pw-2",
                          roles=[{"role": "readAnyDatabase", "db": "admin"}])
        monkeypatch.setenv("OIM_MONGO_SRC_READER_USER", "oim_sync_reader")
        monkeypatch.setenv("OIM_MONGO_SRC_READER_PASSWORD", "reader-pw-2")
    src[db]["t"].insert_one({"_id": 1})
    reader = MongoStore(Endpoint("mongo", reader_url(mongo_env, db), name="source.mongo"))
    try:
        reason = reader.freeze_check()
        assert reason is not None
        if fsync_listed(src):  # MongoDB: the account, not the server, is what is missing
            assert "lacks the fsync and unlock action(s)" in reason
            assert "readAnyDatabase@admin" in reason
        else:
            assert "no fsync" in reason
        with pytest.raises(CapabilityMissing):
            reader.freeze(30)
        reader.unfreeze()  # nothing this account could have locked
        src[db]["t"].insert_one({"_id": 2})
    finally:
        reader.close()
        if made:
            src.admin.command("dropUser", "oim_sync_reader")


def fsync_locked(client: MongoClient) -> bool:
    return bool(client.admin.command("currentOp").get("fsyncLock"))


def blocked_insert(url: str, db: str, _id: Any) -> bool:
    """True when an insert from another connection does not finish within 1.5 s."""
    other = connect(url, socketTimeoutMS=1500)
    try:
        other[db]["t"].insert_one({"_id": _id})
        return False
    except mx.NetworkTimeout:
        return True
    finally:
        other.close()


def test_fsync_lock_holds_writes_until_unfreeze_and_lapses_at_its_limit(
        mongo_env, clients, db):
    src, _ = clients
    if not fsync_listed(src):
        pytest.skip(f"{flavour(src)} has no fsync command (the refusal is tested above); "
                    f"{MONGO7}")
    url = mongo_env["OIM_MONGO_SRC_URL"]
    src[db]["t"].insert_one({"_id": 0})
    source = store(mongo_env, "SRC", db)
    assert source.freeze_check() is None
    said = source.freeze(120)
    try:
        assert "does not lift it by itself" in said and "lock count 1" in said
        assert fsync_locked(src)
        assert blocked_insert(url, db, 1)
        assert src[db]["t"].find_one({"_id": 0}) is not None  # reads go on
        source.freeze(120)  # a resumed cutover freezes again: the count goes to 2
    finally:
        source.unfreeze()  # down to 0, not just one step
    assert not fsync_locked(src)
    src[db]["t"].insert_one({"_id": 2})
    source.unfreeze()  # harmless when nothing is held
    source.freeze(1.0)  # lifted by this process at its limit
    deadline = time.monotonic() + 30
    while fsync_locked(src):
        assert time.monotonic() < deadline, "the fsyncLock did not lapse"
        time.sleep(0.2)
    src[db]["t"].insert_one({"_id": 3})
    source.close()


# ------------------------------------------------------------------ through the CLI
MIXED_CLI_IDS = 400


def mixed_id(i: int) -> Any:
    """The i-th `_id` of the mixed collection: int32, int64, double, string, ObjectId,
    document, date, binary, in turn."""
    kinds = [lambda: i, lambda: Int64(10**10 + i), lambda: i + 0.25, lambda: f"id-{i:05d}",
             lambda: ObjectId(f"{i:024x}"), lambda: SON([("k", i), ("t", "x")]),
             lambda: datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
             + datetime.timedelta(seconds=i), lambda: Binary(i.to_bytes(4, "big"), 0)]
    return kinds[i % len(kinds)]()


def load(env: dict[str, str], src: MongoClient, db: str, scale: float) -> None:
    mongo_data.load(Endpoint("mongo", with_db(env["OIM_MONGO_SRC_URL"], db), name="fixture"),
                    seed=7, scale=scale)
    src[db]["mixed"].insert_many([{"_id": mixed_id(i), "n": i, "v": f"value {i}"}
                                  for i in range(MIXED_CLI_IDS)])


def plan_args(env: dict[str, str], db: str) -> list[str]:
    return ["--source", f"mongo={with_db(env['OIM_MONGO_SRC_URL'], db)}",
            "--target", f"mongo={with_db(env['OIM_MONGO_DST_URL'], db)}"]


VALUES = [lambda r: r.randrange(100), lambda r: Int64(r.randrange(10**12)),
          lambda r: r.random(), lambda r: f"text {r.randrange(1000)}",
          lambda r: {"nested": r.randrange(9)}, lambda r: [1, "two", 3.0], lambda r: None,
          lambda r: r.random() < 0.5,
          lambda r: datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)]


class Writer(threading.Thread):
    """Inserts, updates (changing fields' BSON types) and deletes source documents until
    told to stop: the mixed-`_id` collection (new ids of every type, and an `_id` replaced
    by the same number in another type), group members who leave and join again (a unique
    key under a new `_id`), users and 100-slot msg documents."""

    def __init__(self, url: str, db: str, seed: int) -> None:
        super().__init__(name="mongo-writer", daemon=True)
        self.client = connect(url)
        self.db = self.client[db]
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.done: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.ids = {c: [d["_id"] for d in self.db[c].find({}, {"_id": 1})]
                    for c in ("mixed", "group_member", "user", "msg")}
        self.next_new = MIXED_CLI_IDS

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.step()
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.client.close()

    def pick(self, coll: str) -> Any:
        ids = self.ids[coll]
        return ids.pop(self.rng.randrange(len(ids)))

    def step(self) -> None:
        rng = self.rng
        coll = rng.choice(["mixed", "mixed", "group_member", "user", "msg"])
        op = rng.choice(["insert", "update", "delete", "retype"] if coll == "mixed"
                        else ["insert", "update", "delete"])
        if len(self.ids[coll]) < 5:
            op = "insert"
        c = self.db[coll]
        if coll == "mixed":
            if op == "insert":
                new = mixed_id(self.next_new)
                self.next_new += 1
                c.insert_one({"_id": new, "n": rng.randrange(100), "v": "new"})
                self.ids[coll].append(new)
            elif op == "update":  # a field changes its BSON type
                change: dict[str, Any] = {"$set": {"v": rng.choice(VALUES)(rng)}}
                if rng.random() < 0.3:
                    change["$unset"] = {"n": ""}  # a field disappears
                c.update_one({"_id": rng.choice(self.ids[coll])}, change)
            elif op == "delete":
                c.delete_one({"_id": self.pick(coll)})
            else:  # the same number under another type: int32 <-> int64 <-> double
                ints = [i for i in self.ids[coll] if isinstance(i, int) and not isinstance(
                    i, bool) and abs(i) < 2**31]
                if not ints:
                    return
                old = rng.choice(ints)
                self.ids[coll].remove(old)
                doc = c.find_one({"_id": old})
                c.delete_one({"_id": old})
                if doc is None:
                    return
                new = Int64(old) if type(old) is int else float(old)
                c.insert_one({**doc, "_id": new})
                self.ids[coll].append(new)
        elif coll == "group_member":
            _id = self.pick(coll)
            doc = c.find_one({"_id": _id})
            if doc is None:
                return
            if op == "update":
                c.update_one({"_id": _id}, {"$set": {"role_level": Int64(60),
                                                     "nickname": rng.choice(VALUES)(rng)}})
                self.ids[coll].append(_id)
            elif op == "delete":
                c.delete_one({"_id": _id})
            else:  # leaves and joins again: the same (group_id, user_id) under a new _id
                c.delete_one({"_id": _id})
                new = ObjectId()
                c.insert_one({**doc, "_id": new, "join_time": datetime.datetime.now(
                    datetime.UTC)})
                self.ids[coll].append(new)
        elif coll == "user":
            if op == "insert":
                new = ObjectId()
                c.insert_one({"_id": new, "user_id": f"live-{new}", "nickname": "live"})
                self.ids[coll].append(new)
            elif op == "update":
                c.update_one({"_id": rng.choice(self.ids[coll])},
                             {"$set": {"nickname": rng.choice(VALUES)(rng)}})
            else:
                c.delete_one({"_id": self.pick(coll)})
        else:  # msg: a slot filled, the document deleted, or a copy under a new doc_id
            if op == "update":
                c.update_one({"_id": rng.choice(self.ids[coll])},
                             {"$set": {f"msgs.{rng.randrange(100)}.is_read": True,
                                       f"msgs.{rng.randrange(100)}.del_list": ["u1"]}})
            elif op == "delete":
                c.delete_one({"_id": self.pick(coll)})
            else:
                doc = c.find_one({"_id": rng.choice(self.ids[coll])})
                if doc is None:
                    return
                new = ObjectId()
                c.insert_one({**doc, "_id": new, "doc_id": f"live:{new}"})
                self.ids[coll].append(new)
        self.done[op] += 1
        self.done[coll] += 1


def test_live_writes_during_a_rate_limited_run_converge_with_sync(
        mongo_env, clients, db, tmp_path):
    src, dst = clients
    load(mongo_env, src, db, scale=0.2)
    plan = tmp_path / "mongo.yaml"
    out = cli("plan", *plan_args(mongo_env, db), "--unit-records", "150", "--chunk-records",
              "40", "--batch-records", "40", "--rate-limit", "120KiB", "-o", str(plan),
              "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    facts = json.loads(out.stdout)
    text = json.dumps(facts)
    assert "chunk digests in every pass" in text and "freeze" in text  # the plan says both
    writer = Writer(mongo_env["OIM_MONGO_SRC_URL"], db, seed=11)
    run_while_writing(plan, writer, timeout=900)
    assert all(writer.done[k] >= 3 for k in ("insert", "update", "delete", "retype", "mixed",
                                             "group_member", "user", "msg")), writer.done

    synced = cli("sync", str(plan), "--until-stable", "--json")
    assert synced.returncode == 0, synced.stderr + synced.stdout
    passes = json.loads(synced.stdout)["passes"]
    first = passes[0]["units"]
    assert sum(u["copied"] for u in first) > 0 and sum(u["deleted"] for u in first) > 0
    assert passes[-1]["changed"] == 0
    verified = cli("verify", str(plan), "--json")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert_same_databases(src, dst, db)

    # EQUAL is a promise: a change after the sync is seen again, by its exact _id.
    changed = next(i for i in writer.ids["mixed"] if isinstance(i, float))
    src[db]["mixed"].update_one({"_id": changed}, {"$set": {"v": "after sync"}})
    again = cli("verify", str(plan), "--json")
    assert again.returncode == 5, again.stderr + again.stdout
    assert [k for u in json.loads(again.stdout)["units"] for k in u["differ"]] \
        == [id_label(changed)]


def test_sync_alone_repairs_deleted_changed_and_extra_documents_on_the_target(
        mongo_env, clients, db, tmp_path):
    src, dst = clients
    load(mongo_env, src, db, scale=0.1)
    plan = tmp_path / "mongo.yaml"
    out = cli("plan", *plan_args(mongo_env, db), "--unit-records", "150", "--chunk-records",
              "30", "-o", str(plan))
    assert out.returncode == 0, out.stderr + out.stdout
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout

    t = dst[db]
    t["mixed"].delete_one({"_id": Int64(10**10 + 1)})  # deleted
    t["mixed"].update_one({"_id": "id-00003"}, {"$set": {"v": 3}})  # a field's type changed
    seven = t["mixed"].find_one({"_id": 8})  # the same number under another _id type
    t["mixed"].delete_one({"_id": 8})
    t["mixed"].insert_one({**seven, "_id": 8.0})
    t["mixed"].insert_one({"_id": Int64(-1), "v": "only here"})  # added only on the target
    member = t["group_member"].find_one(sort=[("_id", 1)])
    t["group_member"].delete_one({"_id": member["_id"]})  # left and joined, on the target only
    t["group_member"].insert_one({**member, "_id": ObjectId("f" * 24)})
    user = t["user"].find_one(sort=[("_id", -1)])
    t["user"].update_one({"_id": user["_id"]}, {"$set": {"nickname": None}})

    verified = cli("verify", str(plan), "--json")
    assert verified.returncode == 5, verified.stderr + verified.stdout
    units = {u["unit"]: u for u in json.loads(verified.stdout)["units"]
             if u["status"] == "differ"}
    mixed = [u for k, u in units.items() if f"{db}.mixed" in k]
    missing_t = {k for u in mixed for k in u["missing_on_target"]}
    missing_s = {k for u in mixed for k in u["missing_on_source"]}
    differ = {k for u in mixed for k in u["differ"]}
    assert missing_t == {'{"$numberLong":"10000000001"}', '{"$numberInt":"8"}'}
    assert missing_s == {'{"$numberLong":"-1"}', '{"$numberDouble":"8.0"}'}
    assert differ == {'"id-00003"'}
    members = units[f"mongo:{db}.group_member"]
    assert members["missing_on_target"] == [id_label(member["_id"])]
    assert members["missing_on_source"] == [id_label(ObjectId("f" * 24))]
    assert units[f"mongo:{db}.user"]["differ"] == [id_label(user["_id"])]
    assert "sync" in verified.stdout + verified.stderr  # the hint says how to repair

    synced = cli("sync", str(plan), "--json")
    assert synced.returncode == 0, synced.stderr + synced.stdout
    [one] = json.loads(synced.stdout)["passes"]
    assert sum(u["copied"] for u in one["units"]) == 5
    assert sum(u["deleted"] for u in one["units"]) == 3
    verified = cli("verify", str(plan), "--json")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert_same_databases(src, dst, db)

    # a pass copies the changed documents and nothing else, whatever their chunks hold
    changed = mongo_data.change(Endpoint("mongo", with_db(mongo_env["OIM_MONGO_SRC_URL"], db),
                                         name="fixture"), fraction=0.05, seed=4)
    assert min(changed.values()) > 0, changed
    synced = cli("sync", str(plan), "--json")
    assert synced.returncode == 0, synced.stderr + synced.stdout
    [one] = json.loads(synced.stdout)["passes"]
    assert sum(u["copied"] for u in one["units"]) == changed["updated"] + changed["inserted"]
    assert sum(u["deleted"] for u in one["units"]) == changed["deleted"]
    assert cli("verify", str(plan)).returncode == 0
    assert_same_databases(src, dst, db)


# ------------------------------------------------------------------ following changes
def test_records_of_names_exactly_the_documents_records_names(mongo_env, clients, db):
    """What a followed pass compares: the same (label, hash) as ``records``, present
    documents only, `_id` type-exact; ``changed_in`` keeps a unit's collection and range."""
    src, _ = clients
    make_mixed(src, db)
    src[db]["other"].insert_one({"_id": 1})
    source = store(mongo_env, "SRC", db)
    (unit,) = [u for u in source.list_units() if u.spec["collection"] == "mixed"]
    every = record_map(source, unit)
    labels = [id_label(1), id_label(Int64(2)), id_label(2.5), id_label(99), id_label(Int64(1))]
    assert dict(source.records_of(unit, labels)) == {k: every[k] for k in labels[:3]}
    changes = {(db, "mixed", id_label(1)), (db, "other", id_label(1)),
               ("elsewhere", "mixed", id_label(2.5)), (db, "mixed", id_label("1"))}
    assert sorted(source.changed_in(unit, changes)) == sorted([id_label(1), id_label("1")])
    ranged = dataclasses.replace(unit, spec={**unit.spec, "lo": None, "hi": {"$numberInt": "2"}})
    assert source.changed_in(ranged, changes) == [id_label(1)]  # "1" sorts after numbers
    source.close()


def test_a_change_stream_names_what_changed_and_a_followed_pass_copies_only_that(
        mongo_env, clients, db):
    """On a replica set: the feed's take() holds every write acknowledged before it, and
    sync_changes compares, copies and deletes just those documents."""
    from migrator.engine.sync import sync_changes

    src, dst = clients
    make_mixed(src, db)
    source, target = store(mongo_env, "SRC", db), store(mongo_env, "DST", db)
    (unit,) = source.list_units()
    copy_units(source, target, [unit])
    try:
        feed = source.follow()
    except CapabilityMissing as exc:
        pytest.skip(f"{flavour(src)}: {exc.message}; {MONGO7} (a replica set)")
    try:
        assert feed.take() == set()
        src[db]["mixed"].update_one({"_id": 1}, {"$set": {"s": "changed"}})
        src[db]["mixed"].delete_one({"_id": Int64(2)})
        src[db]["mixed"].insert_one({"_id": "late", "n": 99})
        changes = feed.take()
        keys = source.changed_in(unit, changes)
        assert sorted(keys) == sorted([id_label(1), id_label(Int64(2)), id_label("late")])
        report = sync_changes(source, target, unit, keys, len(MIXED_IDS))
        assert (report.followed, report.copied, report.deleted) == (3, 2, 1)
        assert report.source_records == len(MIXED_IDS)  # +1 added, -1 deleted
        assert feed.take() == set()
        src[db].drop_collection("other_one")  # nothing to drop: no event
        src[db]["gone"].insert_one({"_id": 1})
        src[db].drop_collection("gone")
        assert feed.take() is None  # a dropped collection: digest every chunk again
    finally:
        feed.close()
    assert raw_by_id(src, db, "mixed") == raw_by_id(dst, db, "mixed")
    source.close()
    target.close()


def test_a_sync_pass_narrows_differing_chunks_from_the_digest_not_by_reading_them_again(
        mongo_env, clients, db):
    """The digest keeps each document's hash: a chunk whose digests disagree is narrowed to
    its changed documents without another scan, and only those are read again (`$in`)."""
    src, dst = clients
    src[db]["t"].insert_many([{"_id": i, "v": "x" * 20} for i in range(3000)])
    source = store(mongo_env, "SRC", db, chunk_records=500)
    target = store(mongo_env, "DST", db, chunk_records=500)
    [unit] = source.list_units()
    copy_units(source, target, [unit])
    changed = [7, 1234, 2999]
    for i in changed:
        src[db]["t"].update_one({"_id": i}, {"$set": {"v": "changed"}})
    dst[db]["t"].delete_one({"_id": 2000})
    counter = FindCounter()
    monitoring.register(counter)  # seen by clients created from now on
    try:
        source = store(mongo_env, "SRC", db, chunk_records=500)
        target = store(mongo_env, "DST", db, chunk_records=500)
        chunks = source.chunks(unit)
        counter.finds.clear()
        report = sync_unit(source, target, unit)
        ranged = [f for f in counter.finds if f and "$in" not in str(f.get("_id", ""))]
        # the chunk walk and one digest scan per side; the drill-down and the copy only
        # ask for named `_id`s: no chunk is listed by its `_id` range
        assert len(counter.finds) - len(ranged) - sum(
            "$in" in str(f.get("_id", "")) for f in counter.finds) == 3, counter.finds
        assert ranged == [] and len(chunks) == 6, counter.finds
        assert (report.copied, report.deleted) == (4, 0) and len(report.chunks) == 4
    finally:
        monitoring._LISTENERS.command_listeners.remove(counter)
    assert raw_by_id(src, db, "t") == raw_by_id(dst, db, "t")
    source.close()
    target.close()
