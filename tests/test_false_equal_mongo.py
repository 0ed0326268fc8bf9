""""EQUAL is a promise" for MongoDB: after a clean copy, each change to the source or the
target below must make `verify` exit 5 and name what changed (issue 6), through the real
command line. Views and validators need a server that has them (DocumentDB, mongo:7).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from bson import Int64
from pymongo import MongoClient

from migrator.config import resolve_refs
from migrator.stores.mongo.meta import id_label

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def clients(mongo_env):
    pair = tuple(MongoClient(resolve_refs(mongo_env[f"OIM_MONGO_{side}_URL"], "test"),
                             serverSelectionTimeoutMS=5000) for side in ("SRC", "DST"))
    yield pair
    for client in pair:
        client.close()


def has_views(client: MongoClient) -> bool:
    return "ferretdbVersion" not in client.admin.command("buildInfo")


class Copied:
    """A database copied with plan + run and verified EQUAL; tests then change one thing."""

    def __init__(self, env: dict[str, str], src: MongoClient, dst: MongoClient, tmp: Path,
                 *, schema_objects: bool, unit_records: int | None = None) -> None:
        self.db = f"fe_{uuid.uuid4().hex[:10]}"
        self.src, self.dst = src[self.db], dst[self.db]
        self.plan = tmp / "plan.yaml"
        self.src["msg"].insert_many([{"_id": i, "doc_id": f"si_a_b:{i}", "n": i}
                                     for i in range(300)])
        self.src["msg"].create_index("doc_id", unique=True)
        if schema_objects:
            self.src.create_collection("checked", validator={"n": {"$type": "int"}},
                                       validationLevel="strict")
            self.src["checked"].insert_one({"_id": 1, "n": 1})
            self.src.command("create", "first_ten", viewOn="msg",
                             pipeline=[{"$match": {"_id": {"$lt": 10}}}])
        args = ["plan", "--source", f"mongo={with_db(env['OIM_MONGO_SRC_URL'], self.db)}",
                "--target", f"mongo={with_db(env['OIM_MONGO_DST_URL'], self.db)}",
                "-o", str(self.plan)]
        if unit_records:
            args += ["--unit-records", str(unit_records)]
        for step in (args, ["run", str(self.plan), "--no-progress"]):
            out = cli(*step)
            assert out.returncode == 0, (step[0], out.stdout, out.stderr)
        assert self.verify().returncode == 0

    def verify(self) -> subprocess.CompletedProcess:
        return cli("verify", str(self.plan))

    def drop(self) -> None:
        self.src.client.drop_database(self.db)
        self.dst.client.drop_database(self.db)


@pytest.fixture
def copied(mongo_env, clients, tmp_path, request):
    params = getattr(request, "param", {})
    if params.get("schema_objects") and not has_views(clients[0]):
        pytest.skip("FerretDB 1.24 has no views or validators; DocumentDB and mongo:7 run this")
    made = Copied(mongo_env, *clients, tmp_path, **{"schema_objects": False, **params})
    yield made
    made.drop()


def different(out: subprocess.CompletedProcess, *names: str) -> None:
    assert out.returncode == 5, out.stdout + out.stderr
    for name in names:
        assert name in out.stdout, (name, out.stdout)


@pytest.mark.parametrize("copied", [{"schema_objects": True}], indirect=True)
def test_a_view_dropped_on_the_target_is_a_difference(copied):
    copied.dst.drop_collection("first_ten")
    different(copied.verify(), f"{copied.db}.first_ten", "only on source")


@pytest.mark.parametrize("copied", [{"schema_objects": True}], indirect=True)
def test_a_view_redefined_on_the_target_is_a_difference(copied):
    copied.dst.command("collMod", "first_ten", viewOn="msg",
                       pipeline=[{"$match": {"_id": {"$lt": 11}}}])
    different(copied.verify(), f"{copied.db}.first_ten", "pipeline")


@pytest.mark.parametrize("copied", [{"schema_objects": True}], indirect=True)
def test_a_changed_validator_is_a_difference(copied):
    copied.dst.command("collMod", "checked", validator={"n": {"$type": "string"}})
    different(copied.verify(), f"{copied.db}.checked", "validator")


@pytest.mark.parametrize("copied", [{"schema_objects": True}], indirect=True)
def test_a_changed_validation_level_is_a_difference(copied):
    copied.dst.command("collMod", "checked", validationLevel="moderate")
    different(copied.verify(), f"{copied.db}.checked", "validationLevel")


def test_a_dropped_index_is_a_difference(copied):
    copied.dst["msg"].drop_index("doc_id_1")
    different(copied.verify(), f"{copied.db}.msg", "doc_id_1")


def test_a_collection_created_on_the_source_after_the_run_is_missing_on_target(copied):
    copied.src.create_collection("created_later")  # empty, still part of the selection
    different(copied.verify(), f"{copied.db}.created_later")
    out = cli("run", str(copied.plan), "--no-progress")  # and run refuses to pretend
    assert out.returncode == 3 and f"{copied.db}.created_later" in out.stderr, out.stderr


def test_a_view_created_on_the_source_after_the_run_is_a_difference(copied, clients):
    if not has_views(clients[0]):
        pytest.skip("FerretDB 1.24 has no views; DocumentDB and mongo:7 run this")
    copied.src.command("create", "late_view", viewOn="msg", pipeline=[])
    different(copied.verify(), f"{copied.db}.late_view", "only on source")


@pytest.mark.parametrize("copied", [{"unit_records": 100}], indirect=True)
def test_an_edited_plan_that_narrows_or_drops_a_unit_is_refused(copied):
    plan = yaml.safe_load(copied.plan.read_text())
    units = [u for u in plan["inventory"] if u["store"] == "mongo"]
    assert len(units) == 3
    narrowed = json.loads(json.dumps(plan))
    narrowed["inventory"][1]["spec"]["lo"] = {"$numberInt": "150"}
    dropped = json.loads(json.dumps(plan))
    del dropped["inventory"][2]
    for edited, gap in ((narrowed, f"no unit covers _id from {id_label(100)} to {id_label(150)}"),
                        (dropped, f"no unit covers _id from {id_label(200)} up")):
        copied.plan.write_text(yaml.safe_dump(edited, sort_keys=False))
        out = copied.verify()
        assert out.returncode == 3, out.stdout + out.stderr
        assert gap in out.stderr and "Traceback" not in out.stderr


def test_an_id_that_changed_only_its_type_is_a_difference_that_sync_repairs(copied):
    """`1` and `NumberLong(1)` are one key to the server and to `$in`; to verify they are
    two documents, and `sync` must neither miss the change nor delete what it copied."""
    doc = copied.dst["msg"].find_one({"_id": 7})
    copied.dst["msg"].delete_one({"_id": 7})
    copied.dst["msg"].insert_one({**doc, "_id": Int64(7)})  # same number, same fields
    out = copied.verify()
    different(out, id_label(7), id_label(Int64(7)))
    synced = cli("sync", str(copied.plan))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert copied.verify().returncode == 0
    assert type(copied.dst["msg"].find_one({"_id": 7}, {"_id": 1})["_id"]) is int
