"""End to end through the command line, against real servers: plan -> run -> verify, a run
killed with SIGKILL at several points, targets changed behind our back, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import redis

from migrator.config import Endpoint

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def journal_records(plan: Path) -> int:
    path = plan.with_name(plan.stem + ".journal.sqlite")
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COALESCE(SUM(records), 0) FROM units").fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_at_several_points(plan: Path, total: int, points=(0.15, 0.45, 0.75),
                           rate: str = "400KB") -> int:
    """Start `run`, SIGKILL it once the journal shows each fraction copied. Returns kills."""
    kills = 0
    for fraction in points:
        proc = subprocess.Popen([sys.executable, "-m", "migrator", "run", str(plan),
                                 "--no-verify", "--rate-limit", rate, "--parallel", "2"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if journal_records(plan) >= total * fraction:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    return kills


# ------------------------------------------------------------------------------- redis
@pytest.fixture
def redis_pair(redis_env):
    src = redis.Redis.from_url(redis_env["OIM_REDIS_SRC_URL"],
                               password=redis_env["OIM_REDIS_SRC_PASSWORD"])
    dst = redis.RedisCluster.from_url(
        redis_env["OIM_REDIS_CLUSTER_URL"].replace("redis+cluster://", "redis://"),
        password=redis_env["OIM_REDIS_CLUSTER_PASSWORD"])
    for db in range(16):
        src.execute_command("SELECT", db)
        src.flushdb()
    src.execute_command("SELECT", 0)
    dst.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield src, dst
    dst.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    src.close()
    dst.close()


def cluster_keys(dst) -> int:
    return sum(node.redis_connection.dbsize() for node in dst.get_primaries())


def redis_plan_args(env: dict[str, str]) -> list[str]:
    return ["--source", "redis=redis://${OIM_REDIS_SRC_READER_USER}:"
            "${OIM_REDIS_SRC_READER_PASSWORD}@" + hostport(env["OIM_REDIS_SRC_URL"]) + "/0",
            "--target", "redis=redis+cluster://:${OIM_REDIS_CLUSTER_PASSWORD}@"
            + hostport(env["OIM_REDIS_CLUSTER_URL"])]


def load_redis(env: dict[str, str], scale: float) -> int:
    from fixtures import redis_data

    counts = redis_data.load(Endpoint("redis", env["OIM_REDIS_SRC_URL"].replace(
        "redis://", "redis://:${OIM_REDIS_SRC_PASSWORD}@"), name="fixture"), seed=7,
        scale=scale)
    return sum(counts.values())


def test_redis_read_only_source_to_cluster_plan_run_verify(redis_env, redis_pair, tmp_path):
    src, dst = redis_pair
    load_redis(redis_env, 0.2)
    plan = tmp_path / "r.yaml"
    out = cli("plan", *redis_plan_args(redis_env), "-o", str(plan))
    assert out.returncode == 0, out.stderr
    text = plan.read_text()
    assert redis_env["OIM_REDIS_SRC_READER_PASSWORD"] not in text
    assert redis_env["OIM_REDIS_CLUSTER_PASSWORD"] not in text
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    assert json.loads(run.stdout)["verify"]["ok"] is True
    assert cluster_keys(dst) == src.dbsize() > 0
    journal = (tmp_path / "r.journal.sqlite").read_bytes()
    for secret in (redis_env["OIM_REDIS_SRC_READER_PASSWORD"],
                   redis_env["OIM_REDIS_CLUSTER_PASSWORD"]):
        assert secret.encode() not in journal

    # Change one hash field, one TTL; delete one key, add one: verify names each of them.
    hash_key = next(k for k in src.scan_iter(count=1000) if src.type(k) == b"hash")
    ttl_key = next(k for k in src.scan_iter(count=1000)
                   if src.pttl(k) > 0 and k != hash_key)
    gone_key = next(k for k in src.scan_iter(count=1000) if k not in (hash_key, ttl_key))
    field = next(iter(dst.hkeys(hash_key)))
    dst.hset(hash_key, field, b"tampered")
    dst.pexpire(ttl_key, dst.pttl(ttl_key) + 3_600_000)
    dst.delete(gone_key)
    dst.set(b"not-on-source", b"x")
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    report = json.loads(check.stdout)
    differing = [u for u in report["units"] if u["status"] != "match"]
    assert differing and not report["ok"]
    differ = {k for u in differing for k in u["differ"]}
    assert differ == {hash_key.decode(), ttl_key.decode()}
    assert {k for u in differing for k in u["missing_on_target"]} == {gone_key.decode()}
    assert {k for u in differing for k in u["missing_on_source"]} == {"not-on-source"}


@pytest.mark.slow
def test_redis_run_killed_with_sigkill_resumes_without_duplicates(redis_env, redis_pair,
                                                                   tmp_path):
    src, dst = redis_pair
    load_redis(redis_env, 1.0)
    total = src.dbsize()
    plan = tmp_path / "k.yaml"
    assert cli("plan", *redis_plan_args(redis_env), "--batch-records", "200",
               "--unit-records", str(max(1, total // 4)), "-o", str(plan)).returncode == 0
    kills = kill_at_several_points(plan, total)
    assert kills >= 2
    final = cli("run", str(plan), "--json")
    assert final.returncode == 0, final.stderr + final.stdout
    assert json.loads(final.stdout)["verify"]["ok"] is True
    assert cluster_keys(dst) == total


def test_a_target_that_lost_its_data_is_found_by_verify_and_refilled_by_run(
        redis_env, redis_pair, tmp_path):
    """A target restarted without persistence: verify exits 5, and `run` again (no
    --restart) copies the units verify found different, so the next verify is EQUAL."""
    src, dst = redis_pair
    load_redis(redis_env, 0.1)
    plan = tmp_path / "lost.yaml"
    assert cli("plan", *redis_plan_args(redis_env), "-o", str(plan)).returncode == 0
    assert cli("run", str(plan)).returncode == 0
    dst.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    check = cli("verify", str(plan))
    assert check.returncode == 5 and "openim-migrate sync" in check.stderr
    again = cli("run", str(plan), "--json")
    assert again.returncode == 0, again.stderr + again.stdout
    report = json.loads(again.stdout)
    assert report["copy"]["recopied"] and report["verify"]["ok"] is True
    assert cluster_keys(dst) == src.dbsize()


def test_verify_with_a_wrong_password_is_a_connection_error_not_a_difference(
        redis_env, redis_pair, tmp_path):
    load_redis(redis_env, 0.02)
    plan = tmp_path / "pw.yaml"
    assert cli("plan", *redis_plan_args(redis_env), "-o", str(plan)).returncode == 0
    out = cli("verify", str(plan), env={"OIM_REDIS_SRC_READER_PASSWORD": "wrong-horse"})
    assert out.returncode == 4, out.stderr + out.stdout
    assert "stores.redis.source" in out.stderr and "DIFFERENT" not in out.stdout
    assert "--restart" not in out.stderr and "wrong-horse" not in out.stderr + out.stdout


def test_redis_wrong_password_names_the_endpoint_without_the_password(redis_env, redis_pair,
                                                                      tmp_path):
    args = redis_plan_args(redis_env)
    out = cli("plan", *args, "-o", str(tmp_path / "p.yaml"),
              env={"OIM_REDIS_SRC_READER_PASSWORD": "wrong-horse-battery"})
    assert out.returncode == 4, out.stderr
    assert "stores.redis.source" in out.stderr
    assert "wrong-horse-battery" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_unreachable_host_is_a_connection_error_naming_the_endpoint(redis_env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    out = cli("plan", "--source", f"redis=redis://127.0.0.1:{port}/0",
              "--target", "redis=redis+cluster://:${OIM_REDIS_CLUSTER_PASSWORD}@"
              + hostport(redis_env["OIM_REDIS_CLUSTER_URL"]), "-o", str(tmp_path / "p.yaml"))
    assert out.returncode == 4, out.stderr
    assert "stores.redis.source" in out.stderr and "Traceback" not in out.stderr


def test_non_empty_target_is_refused_and_nothing_is_written(redis_env, redis_pair, tmp_path):
    src, dst = redis_pair
    src.set(b"UID_PID_TOKEN_STATUS:u1:iOS", b"x")
    dst.set(b"UID_PID_TOKEN_STATUS:u1:iOS", b"old")
    plan = tmp_path / "p.yaml"
    out = cli("plan", *redis_plan_args(redis_env), "-o", str(plan))
    assert out.returncode == 3, out.stderr
    assert "--on-existing" in out.stderr
    assert not plan.exists()
    assert dst.get(b"UID_PID_TOKEN_STATUS:u1:iOS") == b"old"
    ok = cli("plan", *redis_plan_args(redis_env), "--on-existing", "overwrite", "-o", str(plan))
    assert ok.returncode == 0, ok.stderr
    assert cli("run", str(plan)).returncode == 0
    assert dst.get(b"UID_PID_TOKEN_STATUS:u1:iOS") == b"x"


# ------------------------------------------------------------------------------- mysql
def mysql_connect(env: dict[str, str], side: str, db: str | None = None):
    host, port = hostport(env[f"OIM_MYSQL_{side}_URL"]).split(":")
    return pymysql.connect(host=host, port=int(port), user=env[f"OIM_MYSQL_{side}_USER"],
                           password=env[f"OIM_MYSQL_{side}_PASSWORD"], database=db,
                           autocommit=True, charset="utf8mb4")


@pytest.fixture
def mysql_pair(mysql_env):
    src, dst = mysql_connect(mysql_env, "SRC"), mysql_connect(mysql_env, "DST")
    for conn in (src, dst):
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS openIM_v3")
    yield src, dst
    with dst.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS openIM_v3")
    src.close()
    dst.close()


def mysql_plan_args(env: dict[str, str]) -> list[str]:
    return ["--source", "mysql=mysql://${OIM_MYSQL_SRC_READER_USER}:"
            "${OIM_MYSQL_SRC_READER_PASSWORD}@" + hostport(env["OIM_MYSQL_SRC_URL"])
            + "/openIM_v3",
            "--target", "mysql=mysql://${OIM_MYSQL_DST_USER}:${OIM_MYSQL_DST_PASSWORD}@"
            + hostport(env["OIM_MYSQL_DST_URL"])]


def load_mysql(env: dict[str, str], scale: float) -> int:
    from fixtures import mysql_data

    counts = mysql_data.load(Endpoint("mysql", env["OIM_MYSQL_SRC_URL"].replace(
        "mysql://", "mysql://${OIM_MYSQL_SRC_USER}:${OIM_MYSQL_SRC_PASSWORD}@"),
        name="fixture"), seed=7, scale=scale)
    return sum(counts.values())


def table_counts(conn) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'openIM_v3' AND table_type = 'BASE TABLE'")
        tables = [r[0] for r in cur.fetchall()]
        counts = {}
        for table in tables:
            cur.execute(f"SELECT COUNT(*) FROM openIM_v3.`{table}`")
            counts[table] = cur.fetchone()[0]
    return counts


def primary_key(conn, table: str) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.key_column_usage WHERE "
                    "table_schema='openIM_v3' AND table_name=%s AND constraint_name='PRIMARY'",
                    (table,))
        return cur.fetchone()[0]


def test_mysql_read_only_source_plan_run_verify_and_tampering(mysql_env, mysql_pair, tmp_path):
    src, dst = mysql_pair
    load_mysql(mysql_env, 0.5)
    plan = tmp_path / "m.yaml"
    out = cli("plan", *mysql_plan_args(mysql_env), "--chunk-records", "200", "-o", str(plan))
    assert out.returncode == 0, out.stderr
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    assert json.loads(run.stdout)["verify"]["ok"] is True
    assert table_counts(dst) == table_counts(src)

    pk = primary_key(src, "chat_logs")
    with dst.cursor() as cur:
        cur.execute(f"SELECT `{pk}` FROM openIM_v3.chat_logs ORDER BY `{pk}` LIMIT 3")
        changed, deleted, _ = (r[0] for r in cur.fetchall())
        cur.execute(f"UPDATE openIM_v3.chat_logs SET content = 'tampered' WHERE `{pk}` = %s",
                    (changed,))
        cur.execute(f"DELETE FROM openIM_v3.chat_logs WHERE `{pk}` = %s", (deleted,))
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5
    report = json.loads(check.stdout)
    bad = [u for u in report["units"] if u["status"] != "match"]
    assert [u["unit"] for u in bad] and all("chat_logs" in u["unit"] for u in bad)
    assert [str(changed) in k for u in bad for k in u["differ"]] == [True]
    assert [str(deleted) in k for u in bad for k in u["missing_on_target"]] == [True]


@pytest.mark.slow
def test_mysql_run_killed_with_sigkill_resumes_without_duplicate_rows(mysql_env, mysql_pair,
                                                                      tmp_path):
    src, dst = mysql_pair
    load_mysql(mysql_env, 2.0)
    expected = table_counts(src)
    total = sum(expected.values())
    plan = tmp_path / "k.yaml"
    out = cli("plan", *mysql_plan_args(mysql_env), "--batch-records", "100",
              "--unit-records", str(max(1, total // 8)), "-o", str(plan))
    assert out.returncode == 0, out.stderr
    assert kill_at_several_points(plan, total) >= 2
    final = cli("run", str(plan), "--json")
    assert final.returncode == 0, final.stderr + final.stdout
    assert json.loads(final.stdout)["verify"]["ok"] is True
    assert table_counts(dst) == expected  # includes the table without a primary key


# ------------------------------------------------------------------- mongo + objects
@pytest.fixture
def mongo_objects(mongo_env, s3_env):
    import pymongo
    from minio import Minio

    from migrator.config import resolve_refs

    src = pymongo.MongoClient(resolve_refs(mongo_env["OIM_MONGO_SRC_URL"], "test"))
    dst = pymongo.MongoClient(resolve_refs(mongo_env["OIM_MONGO_DST_URL"], "test"))

    def bucket_client(side: str) -> Minio:
        return Minio(hostport(s3_env[f"OIM_S3_{side}_URL"]), secure=False,
                     access_key=s3_env[f"OIM_S3_{side}_ACCESS_KEY"],
                     secret_key=s3_env[f"OIM_S3_{side}_SECRET_KEY"])

    buckets = bucket_client("SRC"), bucket_client("DST")

    def clean() -> None:
        for client in (src, dst):
            client.drop_database("openim_v3")
        for client in buckets:
            if client.bucket_exists("openim"):
                for obj in client.list_objects("openim", recursive=True):
                    client.remove_object("openim", obj.object_name)
                client.remove_bucket("openim")

    clean()
    yield src, dst, buckets
    clean()


def load_mongo_objects(mongo_env, s3_env, scale: float) -> tuple[int, int]:
    from fixtures import mongo_data, objects_data

    keys = list(objects_data.object_keys(seed=3, scale=scale))
    objects = objects_data.load(Endpoint("objects", s3_env["OIM_S3_SRC_URL"] + "/openim",
                                         name="fixture",
                                         options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                                                  "secret_key": "${OIM_S3_SRC_SECRET_KEY}"}),
                                seed=3, scale=scale)
    docs = mongo_data.load(Endpoint("mongo", mongo_env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                                    name="fixture"), seed=3, scale=scale, object_keys=keys)
    return sum(docs.values()), objects["objects"]


def mongo_objects_args(mongo_env, s3_env) -> list[str]:
    return ["--source", "mongo=" + mongo_env["OIM_MONGO_SRC_URL"] + "/openim_v3",
            "--target", "mongo=" + mongo_env["OIM_MONGO_DST_URL"],
            "--source", "objects=" + s3_env["OIM_S3_SRC_URL"] + "/openim",
            "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
            "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
            "--target", "objects=" + s3_env["OIM_S3_DST_URL"] + "/openim",
            "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
            "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}"]


def test_mongo_and_objects_verify_names_a_changed_byte_and_a_missing_object(
        mongo_env, s3_env, mongo_objects, tmp_path):
    import io

    src, dst, (src_bucket, dst_bucket) = mongo_objects
    load_mongo_objects(mongo_env, s3_env, 0.1)
    plan = tmp_path / "mo.yaml"
    out = cli("plan", *mongo_objects_args(mongo_env, s3_env), "-o", str(plan))
    assert out.returncode == 0, out.stderr
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    result = json.loads(run.stdout)["verify"]
    assert result["ok"] and result["checks"]["openim-object-references"]["checked"] > 0

    # One byte of one user document; one object's bytes; one object gone from the target.
    user = dst.openim_v3.user.find_one(sort=[("_id", 1)])
    dst.openim_v3.user.update_one({"_id": user["_id"]},
                                  {"$set": {"nickname": user["nickname"][:-1] + "#"}})
    referenced = [d["key"] for d in src.openim_v3.s3.find({}, {"key": 1}).sort("_id", 1)]
    changed = next(k for k in referenced if dst_bucket.stat_object("openim", k).size > 0)
    gone = next(k for k in referenced if k != changed)
    body = dst_bucket.get_object("openim", changed).read()
    dst_bucket.put_object("openim", changed, io.BytesIO(bytes([body[0] ^ 1]) + body[1:]),
                          len(body))
    dst_bucket.remove_object("openim", gone)
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    report = json.loads(check.stdout)
    units = {u["unit"]: u for u in report["units"] if u["status"] != "match"}
    assert set(units) == {"mongo:openim_v3.user", "objects:openim/*"}, units.keys()
    assert units["mongo:openim_v3.user"]["differ"] == [str(user["_id"])] or \
        str(user["_id"]) in units["mongo:openim_v3.user"]["differ"][0]
    assert units["objects:openim/*"]["differ"] == [changed]
    assert units["objects:openim/*"]["missing_on_target"] == [gone]
    refs = report["checks"]["openim-object-references"]
    assert refs["missing"] == [f"openim/{gone}"]


@pytest.mark.slow
def test_mongo_and_objects_run_killed_with_sigkill_resumes_without_duplicates(
        mongo_env, s3_env, mongo_objects, tmp_path):
    src, dst, (src_bucket, dst_bucket) = mongo_objects
    docs, objects = load_mongo_objects(mongo_env, s3_env, 0.3)
    plan = tmp_path / "k.yaml"
    out = cli("plan", *mongo_objects_args(mongo_env, s3_env), "--batch-records", "50",
              "--unit-records", "400", "-o", str(plan))
    assert out.returncode == 0, out.stderr
    assert kill_at_several_points(plan, docs + objects, rate="1500KB") >= 2
    final = cli("run", str(plan), "--json")
    assert final.returncode == 0, final.stderr + final.stdout
    assert json.loads(final.stdout)["verify"]["ok"] is True
    for name in src.openim_v3.list_collection_names():
        assert dst.openim_v3[name].count_documents({}) == src.openim_v3[name].count_documents({})
    assert sum(1 for _ in dst_bucket.list_objects("openim", recursive=True)) == objects


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_at_a_batch_boundary_and_run_again_finishes(
        redis_env, redis_pair, tmp_path, sig, code, word):
    src, dst = redis_pair
    load_redis(redis_env, 4.0)  # several SCAN pages, so several batches
    total = src.dbsize()
    plan = tmp_path / "c.yaml"
    assert cli("plan", *redis_plan_args(redis_env), "--batch-records", "100",
               "-o", str(plan)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "run", str(plan), "--no-verify",
                             "--rate-limit", "100KB"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while journal_records(plan) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert word in stderr and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("error:")]) == 1
    copied = journal_records(plan)
    assert 0 < copied < total
    final = cli("run", str(plan), "--json")
    assert final.returncode == 0, final.stderr
    assert cluster_keys(dst) == total
