"""Backups of all four stores together, through the command line, against real servers:
backup -> list -> check -> restore into empty stores -> verify, an independent verify of
the live sources against the restored stores, a change found afterwards, kill -9 during a
backup and a restore, a drill that passes and one that fails, and secrets that never land
anywhere. Each store's format is tested on its own in test_archive_<kind>.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pymysql
import pyrage
import pytest
import redis

from migrator.config import Endpoint, resolve_refs

ROOT = Path(__file__).resolve().parents[1]
KEY = pyrage.x25519.Identity.generate()
KEY_ENV = {"OIM_TEST_BACKUP_KEY": str(KEY)}
KEY_ARGS = ["--key", "${OIM_TEST_BACKUP_KEY}"]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **KEY_ENV})


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def source_args(env: dict[str, str]) -> list[str]:
    return ["--source", "redis=redis://${OIM_REDIS_SRC_READER_USER}:"
            "${OIM_REDIS_SRC_READER_PASSWORD}@" + hostport(env["OIM_REDIS_SRC_URL"]) + "/0",
            "--source", "mysql=mysql://${OIM_MYSQL_SRC_READER_USER}:"
            "${OIM_MYSQL_SRC_READER_PASSWORD}@" + hostport(env["OIM_MYSQL_SRC_URL"])
            + "/openIM_v3",
            "--source", "mongo=" + env["OIM_MONGO_SRC_URL"] + "/openim_v3",
            "--source", "objects=" + env["OIM_S3_SRC_URL"] + "/openim",
            "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
            "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}"]


def target_args(env: dict[str, str]) -> list[str]:
    return ["--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
            + hostport(env["OIM_REDIS_DST_URL"]) + "/0",
            "--target", "mysql=mysql://${OIM_MYSQL_DST_USER}:${OIM_MYSQL_DST_PASSWORD}@"
            + hostport(env["OIM_MYSQL_DST_URL"]),
            "--target", "mongo=" + env["OIM_MONGO_DST_URL"],
            "--target", "objects=" + env["OIM_S3_DST_URL"] + "/openim",
            "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
            "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}"]


def mysql(env: dict[str, str], side: str) -> pymysql.Connection:
    host, port = hostport(env[f"OIM_MYSQL_{side}_URL"]).split(":")
    return pymysql.connect(host=host, port=int(port), user=env[f"OIM_MYSQL_{side}_USER"],
                           password=env[f"OIM_MYSQL_{side}_PASSWORD"], autocommit=True)


def clean_targets(env: dict[str, str]) -> None:
    import pymongo
    from minio import Minio

    redis.Redis.from_url(env["OIM_REDIS_DST_URL"],
                         password=env["OIM_REDIS_DST_PASSWORD"]).flushall()
    with mysql(env, "DST").cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS openIM_v3")
    client = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_DST_URL"], "test"))
    client.drop_database("openim_v3")
    client.close()
    s3 = Minio(hostport(env["OIM_S3_DST_URL"]), access_key=env["OIM_S3_DST_ACCESS_KEY"],
               secret_key=env["OIM_S3_DST_SECRET_KEY"], secure=False)
    if s3.bucket_exists("openim"):
        for obj in s3.list_objects("openim", recursive=True):
            s3.remove_object("openim", obj.object_name)
        s3.remove_bucket("openim")


@pytest.fixture(scope="module")
def four(services):
    """OpenIM-shaped data in all four sources; empty targets before and after."""
    from fixtures import mongo_data, mysql_data, objects_data, redis_data

    env = services
    src_redis = redis.Redis.from_url(env["OIM_REDIS_SRC_URL"],
                                     password=env["OIM_REDIS_SRC_PASSWORD"])
    src_redis.flushall()
    redis_data.load(Endpoint("redis", env["OIM_REDIS_SRC_URL"].replace(
        "redis://", "redis://:${OIM_REDIS_SRC_PASSWORD}@"), name="fixture"), seed=11, scale=0.1)
    mysql_data.load(Endpoint("mysql", env["OIM_MYSQL_SRC_URL"].replace(
        "mysql://", "mysql://${OIM_MYSQL_SRC_USER}:${OIM_MYSQL_SRC_PASSWORD}@"),
        name="fixture"), seed=11, scale=0.1)
    keys = list(objects_data.object_keys(seed=11, scale=0.1))
    objects_data.load(Endpoint("objects", env["OIM_S3_SRC_URL"] + "/openim", name="fixture",
                               options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                                        "secret_key": "${OIM_S3_SRC_SECRET_KEY}"}),
                      seed=11, scale=0.1)
    mongo_data.load(Endpoint("mongo", env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                             name="fixture"), seed=11, scale=0.1, object_keys=keys)
    clean_targets(env)
    yield env
    clean_targets(env)


@pytest.fixture(autouse=True)
def empty_targets(four):
    """Every test restores into empty stores."""
    clean_targets(four)


def secrets_of(env: dict[str, str]) -> list[str]:
    found = [v for k, v in env.items() if k.endswith(("PASSWORD", "SECRET_KEY")) and v]
    return found + [str(KEY)]


def assert_no_secret(env: dict[str, str], *texts: str | bytes, where: str) -> None:
    for secret in secrets_of(env):
        for text in texts:
            data = text.encode() if isinstance(text, str) else text
            assert secret.encode() not in data, f"a secret is in {where}"


def test_all_four_stores_back_up_restore_and_verify_through_the_cli(four, tmp_path):
    env = four
    archive = f"archive+file://{tmp_path / 'archive'}"
    made = cli("backup", *source_args(env), "--to", archive, *KEY_ARGS, "--json")
    assert made.returncode == 0, made.stderr + made.stdout
    backup = json.loads(made.stdout)
    assert backup["complete"] and set(backup["cuts"]) == {"redis", "mysql", "mongo", "objects"}
    assert backup["totals"]["records"] > 0

    listed = json.loads(cli("backup", "list", archive, *KEY_ARGS, "--json").stdout)
    assert [(s["set"], s["state"]) for s in listed["sets"]] == [(backup["set"], "complete")]
    checked = cli("backup", "check", archive, *KEY_ARGS, "--read-data")
    assert checked.returncode == 0, checked.stderr + checked.stdout

    journal = tmp_path / "restore.sqlite"
    restored = cli("restore", archive, *KEY_ARGS, *target_args(env), "--journal", str(journal),
                   "--json")
    assert restored.returncode == 0, restored.stderr + restored.stdout
    report = json.loads(restored.stdout)
    assert report["set"] == backup["set"] and report["verify"]["ok"]
    assert sum(s["records"] for s in report["stores"].values()) == backup["totals"]["records"]

    # Independently of the archive: the live sources against the restored targets.
    plan = tmp_path / "check.yaml"
    made_plan = cli("plan", *source_args(env), *target_args(env), "--on-existing", "overwrite",
                    "-o", str(plan))
    assert made_plan.returncode == 0, made_plan.stderr
    same = cli("verify", str(plan))
    assert same.returncode == 0, same.stderr + same.stdout

    # EQUAL is a promise: a row changed on the restored side is found and named.
    with mysql(env, "DST").cursor() as cur:
        cur.execute("SELECT user_id FROM openIM_v3.users ORDER BY user_id LIMIT 1")
        (user_id,) = cur.fetchone()
        cur.execute("UPDATE openIM_v3.users SET name = 'changed' WHERE user_id = %s",
                    (user_id,))
    differs = cli("verify", str(plan), "--json")
    assert differs.returncode == 5, differs.stderr
    named = [u for u in json.loads(differs.stdout)["units"] if u["status"] == "differ"]
    assert [u["unit"] for u in named] == ["mysql:openIM_v3.users"]
    assert user_id in json.dumps(named[0]["differ"])

    # No password and not the archive's key: not in the archive, the journal, the output.
    for path in (tmp_path / "archive").rglob("*"):
        if path.is_file():
            assert_no_secret(env, path.read_bytes(), where=str(path))
    assert_no_secret(env, journal.read_bytes(), plan.read_bytes(), where="journal/plan")
    assert_no_secret(env, made.stdout, made.stderr, restored.stdout, restored.stderr,
                     where="output")


def unit_records(archive: Path) -> int:
    """Units stored so far by a running backup (their records are in the set's folder)."""
    return sum(1 for p in archive.glob("sets/*/*/records/*") if p.is_file())


def restore_rows(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COALESCE(SUM(records), 0) FROM units").fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_when(args: list[str], ready, timeout: float = 120) -> bool:
    proc = subprocess.Popen([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                            env={**os.environ, **KEY_ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    return killed


def test_kill_9_during_backup_and_restore_then_rerun_finishes_and_checks(four, tmp_path):
    env = four
    folder = tmp_path / "archive"
    archive = f"archive+file://{folder}"
    mysql_source = source_args(env)[2:4]
    slow = ["--parallel", "1", "--rate-limit", "200KB"]
    backup_args = ["backup", *mysql_source, "--to", archive, *KEY_ARGS, *slow]
    assert kill_when(backup_args, lambda: unit_records(folder) >= 1), "backup ended too soon"
    listed = json.loads(cli("backup", "list", archive, *KEY_ARGS, "--json").stdout)
    assert [s["state"] for s in listed["sets"]] == ["incomplete"]
    first_set = listed["sets"][0]["set"]
    again = cli("backup", *mysql_source, "--to", archive, *KEY_ARGS, "--json")
    assert again.returncode == 0, again.stderr + again.stdout
    finished = json.loads(again.stdout)
    assert finished["set"] == first_set and finished["resumed"]
    assert finished["units_already_stored"] >= 1
    checked = cli("backup", "check", archive, *KEY_ARGS, "--read-data")
    assert checked.returncode == 0, checked.stderr + checked.stdout

    journal = tmp_path / "restore.sqlite"
    target = target_args(env)[2:4]
    restore_args = ["restore", archive, *KEY_ARGS, *target, "--journal", str(journal), *slow]
    total = finished["totals"]["records"]
    assert kill_when(restore_args, lambda: restore_rows(journal) >= total // 3), \
        "restore ended too soon"
    rerun = cli(*restore_args[:-len(slow)], "--json")
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert json.loads(rerun.stdout)["verify"]["ok"]
    with mysql(env, "DST").cursor() as cur, mysql(env, "SRC").cursor() as src:
        for table in ("users", "friends", "groups"):
            cur.execute(f"CHECKSUM TABLE openIM_v3.`{table}`")
            src.execute(f"CHECKSUM TABLE openIM_v3.`{table}`")
            assert cur.fetchone()[1] == src.fetchone()[1], table


def test_drill_passes_then_fails_on_a_damaged_file_with_rpo_and_rto_everywhere(four, tmp_path):
    env = four
    folder = tmp_path / "archive"
    archive = f"archive+file://{folder}"
    redis_source, redis_target = source_args(env)[:2], target_args(env)[:2]
    made = cli("backup", *redis_source, "--to", archive, *KEY_ARGS)
    assert made.returncode == 0, made.stderr
    junit, metrics = tmp_path / "good.xml", tmp_path / "good.prom"
    good = cli("drill", archive, *KEY_ARGS, *redis_target, "--max-age", "1h",
               "--junit", str(junit), "--metrics-file", str(metrics))
    assert good.returncode == 0, good.stderr + good.stdout
    assert re.search(r"RPO \(set age at drill time\): [\d.,]+s", good.stderr + good.stdout)
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0"
    assert {p.get("name") for p in suite.iter("property")} >= {"rpo_seconds", "rto_seconds"}
    prom = metrics.read_text()
    assert "openim_migrate_drill_passed 1.0" in prom
    assert re.search(r"^openim_migrate_drill_rpo_seconds \d", prom, re.M)
    assert re.search(r"^openim_migrate_drill_rto_seconds \d", prom, re.M)

    data_files = [p for p in folder.glob("sets/*/redis/units/*/*") if p.stat().st_size > 64]
    assert data_files
    damaged = bytearray(data_files[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    data_files[0].write_bytes(bytes(damaged))
    redis.Redis.from_url(env["OIM_REDIS_DST_URL"], password=env["OIM_REDIS_DST_PASSWORD"]
                         ).flushall()
    junit = tmp_path / "bad.xml"
    bad = cli("drill", archive, *KEY_ARGS, *redis_target, "--junit", str(junit), "--json")
    assert bad.returncode == 5, bad.stderr + bad.stdout
    report = json.loads(bad.stdout)
    assert not report["passed"] and report["reasons"]
    assert report["rpo_seconds"] is not None and "rto_seconds" in report
    failure = ET.parse(junit).getroot().find("testcase/failure")
    assert failure is not None and "redis" in (failure.get("message") or "")
    redis.Redis.from_url(env["OIM_REDIS_DST_URL"], password=env["OIM_REDIS_DST_PASSWORD"]
                         ).flushall()
