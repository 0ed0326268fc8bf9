"""The bad-input corpus: every way a user can get an input wrong ends in one line naming the
field, endpoint or file, the documented exit code, no traceback, and nothing written.

The base plan is written by `plan` against the real servers (all four stores, tiny data);
each row breaks one thing and runs the command a user would run next.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymysql
import pyrage
import pytest
import redis
import yaml

from migrator.plan import integrity_of

AGE_KEY, OTHER_AGE_KEY = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()

ROOT = Path(__file__).resolve().parents[1]
DB = "badinput"  # MySQL and MongoDB database, bucket: apart from the other tests' data


def cli(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI's ``main`` in this process (the corpus is long; an interpreter per row
    would double its time), with its exit code, stdout and stderr as a subprocess would
    show them. An env value of None removes that variable for the call."""
    from migrator.cli import main

    saved_env, saved_term = dict(os.environ), signal.getsignal(signal.SIGTERM)
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGTERM, saved_term)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def hostport(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path, parts.query, ""))


# ---------------------------------------------------------------------------- the world
@dataclass
class World:
    env: dict[str, str]
    plan: dict[str, Any]
    args: list[str]
    secrets: list[str] = field(default_factory=list)

    def redis(self, side: str) -> redis.Redis:
        return redis.Redis.from_url(self.env[f"OIM_REDIS_{side}_URL"],
                                    password=self.env[f"OIM_REDIS_{side}_PASSWORD"])

    def mysql(self, side: str) -> pymysql.Connection:
        host, port = hostport(self.env[f"OIM_MYSQL_{side}_URL"]).split(":")
        return pymysql.connect(host=host, port=int(port),
                               user=self.env[f"OIM_MYSQL_{side}_USER"],
                               password=self.env[f"OIM_MYSQL_{side}_PASSWORD"], autocommit=True)

    def bucket(self, side: str) -> Any:
        from minio import Minio

        return Minio(hostport(self.env[f"OIM_S3_{side}_URL"]), secure=False,
                     access_key=self.env[f"OIM_S3_{side}_ACCESS_KEY"],
                     secret_key=self.env[f"OIM_S3_{side}_SECRET_KEY"])

    def mongo(self, side: str) -> Any:
        import pymongo

        from migrator.config import resolve_refs

        return pymongo.MongoClient(resolve_refs(self.env[f"OIM_MONGO_{side}_URL"], "test"),
                                   serverSelectionTimeoutMS=5000)

    def targets_untouched(self) -> list[str]:
        """What was written on a target; empty when nothing was."""
        written = []
        if self.redis("DST").dbsize():
            written.append("redis target holds keys")
        with self.mysql("DST").cursor() as cur:
            if cur.execute("SHOW DATABASES LIKE %s", (DB,)):
                written.append("mysql target has the database")
        if self.bucket("DST").bucket_exists(DB):
            written.append("objects target has the bucket")
        client = self.mongo("DST")
        if DB in client.list_database_names():
            written.append("mongo target has the database")
        client.close()
        return written


def _load_sources(world: World) -> None:
    import io

    src = world.redis("SRC")
    src.flushall()
    src.set("bad:token", "t1")
    src.hset("bad:hash", mapping={"a": "1"})
    with world.mysql("SRC").cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
        cur.execute(f"CREATE TABLE {DB}.users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute(f"INSERT INTO {DB}.users VALUES (1, 'a'), (2, 'b')")
    bucket = world.bucket("SRC")
    if not bucket.bucket_exists(DB):
        bucket.make_bucket(DB)
    bucket.put_object(DB, "a/b.txt", io.BytesIO(b"hello"), 5)
    client = world.mongo("SRC")
    client.drop_database(DB)
    client[DB]["users"].insert_many([{"_id": i, "n": i} for i in range(3)])
    client.close()


def _clean(world: World) -> None:
    world.redis("SRC").flushall()
    world.redis("DST").flushall()
    for side in ("SRC", "DST"):
        with world.mysql(side).cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        bucket = world.bucket(side)
        if bucket.bucket_exists(DB):
            for obj in bucket.list_objects(DB, recursive=True):
                bucket.remove_object(DB, obj.object_name)
            bucket.remove_bucket(DB)
        client = world.mongo(side)
        client.drop_database(DB)
        client.close()


@pytest.fixture(scope="module")
def world(services, tmp_path_factory):
    env = services
    mongo_src = with_path(env["OIM_MONGO_SRC_URL"], DB)
    args = [
        "--source", "redis=redis://${OIM_REDIS_SRC_READER_USER}:${OIM_REDIS_SRC_READER_PASSWORD}@"
        + hostport(env["OIM_REDIS_SRC_URL"]) + "/0",
        "--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
        + hostport(env["OIM_REDIS_DST_URL"]) + "/0",
        "--source", "mysql=mysql://${OIM_MYSQL_SRC_READER_USER}:${OIM_MYSQL_SRC_READER_PASSWORD}@"
        + hostport(env["OIM_MYSQL_SRC_URL"]) + f"/{DB}",
        "--target", "mysql=mysql://${OIM_MYSQL_DST_USER}:${OIM_MYSQL_DST_PASSWORD}@"
        + hostport(env["OIM_MYSQL_DST_URL"]),
        "--source", f"objects={env['OIM_S3_SRC_URL']}/{DB}",
        "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
        "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
        "--target", f"objects={env['OIM_S3_DST_URL']}/{DB}",
        "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
        "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}",
        "--source", f"mongo={mongo_src}",
        "--target", f"mongo={env['OIM_MONGO_DST_URL']}",
    ]
    world = World(env=env, plan={}, args=args,
                  secrets=[v for k, v in env.items() if k.endswith(("PASSWORD", "SECRET_KEY"))])
    _clean(world)
    _load_sources(world)
    path = tmp_path_factory.mktemp("bad-input") / "base.yaml"
    out = cli("plan", *args, "-o", str(path))
    assert out.returncode == 0, out.stderr
    world.plan = yaml.safe_load(path.read_text())
    assert not world.targets_untouched()
    yield world
    _clean(world)


# ---------------------------------------------------------------------------- the rows
def sealed(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "integrity": integrity_of(data)}


def unit_of(data: dict[str, Any], store: str) -> dict[str, Any]:
    return next(u for u in data["inventory"] if u["store"] == store)


def endpoint(data: dict[str, Any], store: str, side: str) -> dict[str, Any]:
    return data["stores"][store][side]


def set_url(store: str, side: str, change: Callable[[str], str]) -> Callable[[dict], None]:
    def mutate(data: dict[str, Any]) -> None:
        ep = endpoint(data, store, side)
        ep["url"] = change(ep["url"])
    return mutate


def netloc_swap(url: str, host_port: str) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, userinfo + host_port, parts.path, parts.query, ""))


def scheme_swap(url: str, scheme: str) -> str:
    return scheme + url[url.index("://"):]


@dataclass
class Row:
    id: str
    mutate: Callable[[dict], None] | None = None  # an edit of the base plan
    code: int = 3
    names: tuple[str, ...] = ()  # each must appear in the error line
    seal: bool = True  # re-seal the integrity hash after the edit (as `plan` would)
    raw: bytes | None = None  # the plan file's bytes instead of an edit
    command: tuple[str, ...] = ("run", "{plan}")
    env: dict[str, str | None] = field(default_factory=dict)
    prepare: Callable[[Path], Any] | None = None  # e.g. damage the journal


def _pop(path: list[Any]) -> Callable[[dict], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


def _put(path: list[Any], value: Any) -> Callable[[dict], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _unit(store: str, change: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(data: dict[str, Any]) -> None:
        change(unit_of(data, store))
    return mutate


def _drop_unit(store: str) -> Callable[[dict], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["inventory"].remove(unit_of(data, store))
    return mutate


def _narrow_redis(unit: dict[str, Any]) -> None:
    unit["spec"]["slots"] = [0, 100]


def _bad_slots(unit: dict[str, Any]) -> None:
    unit["spec"]["slots"] = ["a", None]


def _no_table(unit: dict[str, Any]) -> None:
    unit["spec"].pop("table", None)


def _damaged_journal(content: bytes) -> Callable[[Path], None]:
    def prepare(plan: Path) -> None:
        plan.with_name(plan.stem + ".journal.sqlite").write_bytes(content)
    return prepare


def _truncated_journal(plan: Path) -> None:
    journal = plan.with_name(plan.stem + ".journal.sqlite")
    with sqlite3.connect(journal) as db:
        db.execute("CREATE TABLE units (key TEXT PRIMARY KEY, store TEXT, name TEXT, "
                   "state TEXT, cursor TEXT, records INTEGER, bytes INTEGER, skipped INTEGER, "
                   "attempts INTEGER, error TEXT, updated_at REAL)")
        db.executemany("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       [(f"k{i}", "s", "n", "copied", "x" * 500, 0, 0, 0, 0, None, 0)
                        for i in range(200)])
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 3])


def _journal_dir(plan: Path) -> None:
    plan.with_name(plan.stem + ".journal.sqlite").mkdir()


_HELD: list[Any] = []


def _journal_locked(plan: Path) -> None:
    lock = plan.with_name(plan.stem + ".journal.lock")
    handle = open(lock, "a+")  # noqa: SIM115 - held until the row ends
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(handle)


ROWS: list[Row] = [
    # -- the file itself
    Row("plan-not-utf8", raw=b"version: 1\nname: \xff\xfe\n", names=("UTF-8",)),
    Row("plan-not-yaml", raw=b"version: [1\n", names=("YAML",)),
    Row("plan-a-list", raw=b"- 1\n- 2\n", names=("plan",)),
    Row("plan-empty-file", raw=b"", names=("plan",)),
    Row("plan-missing", command=("run", "{missing}"), names=("no such plan",)),
    Row("plan-is-a-directory", command=("run", "{dir}"), code=2, names=("directory",)),
    # -- top level
    Row("version-missing", _pop(["version"]), names=("version",)),
    Row("version-9", _put(["version"], 9), names=("version",)),
    Row("unknown-top-field", _put(["colour"], "blue"), names=("colour",)),
    Row("stores-empty", _put(["stores"], {}), names=("stores",)),
    Row("store-kind-unknown", _put(["stores", "cassandra"], {}), names=("stores.cassandra",)),
    Row("store-without-target", _pop(["stores", "redis", "target"]),
        names=("stores.redis.target",)),
    Row("endpoint-without-url", _pop(["stores", "mysql", "source", "url"]),
        names=("stores.mysql.source",)),
    Row("endpoint-url-empty", _put(["stores", "mysql", "source", "url"], ""),
        names=("stores.mysql.source.url",)),
    Row("endpoint-url-a-number", _put(["stores", "redis", "target", "url"], 6379),
        names=("stores.redis.target",)),
    Row("literal-password-in-url",
        set_url("redis", "target", lambda u: u.replace("${OIM_REDIS_DST_PASSWORD}", "hunter2")),
        names=("stores.redis.target.url", "literal password")),
    Row("literal-secret-option", _put(["stores", "objects", "source", "secret_key"], "hunter2"),
        names=("stores.objects.source.secret_key",)),
    Row("tls-unknown-option", _put(["stores", "redis", "source", "tls"], {"cafile": "x"}),
        names=("stores.redis.source.tls",)),
    Row("tls-enabled-yes", _put(["stores", "redis", "source", "tls"], {"enabled": "yes"}),
        names=("stores.redis.source.tls.enabled",)),
    Row("selection-include-a-string", _put(["stores", "redis", "selection"], {"include": "a*"}),
        names=("stores.redis.selection.include",)),
    Row("selection-unknown-field", _put(["stores", "redis", "selection"], {"only": ["a"]}),
        names=("stores.redis.selection.only",)),
    Row("password-variable-unset", env={"OIM_MYSQL_SRC_READER_PASSWORD": None},
        names=("OIM_MYSQL_SRC_READER_PASSWORD",)),
    # -- options
    Row("parallel-text", _put(["options", "parallel"], "four"), names=("options.parallel",)),
    Row("parallel-zero", _put(["options", "parallel"], 0), names=("options.parallel",)),
    Row("batch-bytes-text", _put(["options", "batch_bytes"], "lots"),
        names=("options.batch_bytes",)),
    Row("rate-limit-true", _put(["options", "rate_limit"], True), names=("options.rate_limit",)),
    Row("on-existing-merge", _put(["options", "on_existing"], "merge"),
        names=("options.on_existing",)),
    Row("retries-negative", _put(["options", "retries"], -1), names=("options.retries",)),
    Row("options-unknown", _put(["options", "turbo"], True), names=("options.turbo",)),
    Row("steps-unknown", _put(["steps"], ["copy", "dance"]), names=("steps[1]",)),
    # -- inventory
    Row("inventory-a-mapping", _put(["inventory"], {"a": 1}), names=("inventory",)),
    Row("unit-without-name", _unit("redis", lambda u: u.pop("name")),
        names=("inventory[", "name")),
    Row("unit-spec-a-string", _unit("redis", lambda u: u.update(spec="oops")),
        names=("inventory[", "spec")),
    Row("unit-records-many", _unit("mysql", lambda u: u.update(records="many")),
        names=("inventory[", "records")),
    Row("unit-store-not-in-stores", _unit("mysql", lambda u: u.update(store="objects2")),
        names=("inventory[", "store")),
    Row("unit-unknown-field", _unit("mysql", lambda u: u.update(colour=1)),
        names=("inventory[", "colour")),
    Row("mysql-unit-without-table", _unit("mysql", _no_table), names=("inventory[", "table")),
    Row("redis-slots-not-numbers", _unit("redis", _bad_slots), names=("inventory[", "slots")),
    Row("redis-unit-narrowed", _unit("redis", _narrow_redis), names=("inventory (redis)",)),
    # the only unit of a container gone: no gap to see on load, so `run` finds it live
    Row("redis-unit-deleted", _drop_unit("redis"), names=("stores.redis.source", "db 0")),
    Row("mysql-unit-deleted", _drop_unit("mysql"),
        names=("stores.mysql.source", f"{DB}.users")),
    # -- integrity: edits without `plan` (exit 6 even before the first run)
    Row("inventory-edited-by-hand", _unit("mysql", lambda u: u.update(records=99)),
        seal=False, code=6, names=("edited after",)),
    Row("endpoint-edited-by-hand",
        set_url("redis", "target", lambda u: u.replace("/0", "/1")), seal=False, code=6,
        names=("edited after",)),
    Row("integrity-removed", _pop(["integrity"]), seal=False, code=6,
        names=("integrity",)),
    # -- endpoint options, per store
    Row("redis-scan-count-text", _put(["stores", "redis", "source", "scan_count"], "lots"),
        names=("stores.redis.source.scan_count",)),
    Row("redis-timeout-text", _put(["stores", "redis", "source", "timeout"], "soon"),
        names=("stores.redis.source.timeout",)),
    Row("redis-mode-unknown", _put(["stores", "redis", "target", "mode"], "fast"),
        names=("stores.redis.target.mode",)),
    Row("redis-dbs-out-of-range", _put(["stores", "redis", "source", "dbs"], [99]),
        names=("stores.redis.source", "dbs")),
    # -- URLs, per store
    Row("redis-scheme-http", set_url("redis", "source", lambda u: scheme_swap(u, "http")),
        names=("stores.redis.source",)),
    Row("mysql-scheme-postgres", set_url("mysql", "source",
                                         lambda u: scheme_swap(u, "postgres")),
        names=("stores.mysql.source",)),
    Row("objects-scheme-ftp", set_url("objects", "target", lambda u: scheme_swap(u, "ftp")),
        names=("stores.objects.target",)),
    Row("mongo-scheme-http", set_url("mongo", "target", lambda u: scheme_swap(u, "http")),
        names=("stores.mongo.target",)),
    Row("redis-empty-host", set_url("redis", "target", lambda u: netloc_swap(u, ":6379")),
        names=("stores.redis.target",)),
    Row("redis-port-zero", set_url("redis", "target", lambda u: netloc_swap(u, "127.0.0.1:0")),
        names=("stores.redis.target",)),
    Row("mysql-empty-host", set_url("mysql", "target", lambda u: netloc_swap(u, "")),
        names=("stores.mysql.target",)),
    Row("objects-port-zero",
        set_url("objects", "source", lambda u: netloc_swap(u, "127.0.0.1:0")),
        names=("stores.objects.source",)),
    Row("mongo-port-zero", set_url("mongo", "target", lambda u: netloc_swap(u, "127.0.0.1:0")),
        names=("stores.mongo.target",)),
    Row("redis-db-not-a-number", set_url("redis", "source", lambda u: u.replace("/0", "/abc")),
        names=("stores.redis.source",)),
    Row("mysql-unknown-query", set_url("mysql", "target", lambda u: u + "?compress=1"),
        names=("stores.mysql.target",)),
    # -- the journal beside the plan (exit 6)
    Row("journal-not-sqlite", prepare=_damaged_journal(b"just some text\n" * 100), code=6,
        names=("journal",)),
    Row("journal-sqlite-header-then-garbage",
        prepare=_damaged_journal(b"SQLite format 3\x00" + b"\xff" * 300), code=6,
        names=("journal",)),
    Row("journal-truncated", prepare=_truncated_journal, code=6, names=("journal",)),
    Row("journal-is-a-directory", prepare=_journal_dir, code=6, names=("journal",)),
    Row("journal-held-by-another-run", prepare=_journal_locked, code=6, names=("in use",)),
    # -- command lines (exit 2)
    Row("parallel-flag-zero", command=("run", "{plan}", "--parallel", "0"), code=2,
        names=("--parallel",)),
    Row("rate-limit-flag-text", command=("run", "{plan}", "--rate-limit", "fast"), code=3,
        names=("--rate-limit",)),
    Row("verify-unit-matches-nothing", command=("verify", "{plan}", "--unit", "nope:*"),
        code=2, names=("nope:*",)),
    Row("plan-source-without-equals", command=("plan", "--source", "redis", "--target",
                                               "redis=redis://127.0.0.1:1", "-o", "{out}"),
        code=2, names=("--source",)),
    Row("plan-unknown-kind", command=("plan", "--source", "cassandra=x://h:1", "--target",
                                      "cassandra=x://h:2", "-o", "{out}"), code=2,
        names=("cassandra",)),
    Row("plan-source-without-target", command=("plan", "--source", "redis=redis://127.0.0.1:1",
                                               "--target", "mysql=mysql://127.0.0.1:1",
                                               "-o", "{out}"), code=2, names=("--target",)),
    Row("plan-output-under-a-file", command=("plan", "{args}", "-o", "{file}/p.yaml"),
        names=("p.yaml",)),
    Row("plan-strict-selection-matches-nothing",
        command=("plan", "{args}", "--include", "mysql=nomatch.*", "--strict", "-o", "{out}"),
        names=("--strict",)),
    # -- backups, restores and drills: the archive and its key (nothing written anywhere)
    Row("backup-archive-url-unknown-scheme", command=("backup", "{plan}", "--to", "archive+ftp://h/x"),
        names=("archive.url", "archive+ftp")),
    Row("backup-archive-url-relative-path",
        command=("backup", "{plan}", "--to", "archive+file://relative/path"),
        names=("archive.url",)),
    Row("backup-key-given-literally",
        command=("backup", "{plan}", "--to", "{archive}", "--key", "AGE-SECRET-KEY-1QQQQ"),
        names=("archive.key",)),
    Row("backup-key-variable-unset",
        command=("backup", "{plan}", "--to", "{archive}", "--key", "${{OIM_NO_SUCH_AGE_KEY}}"),
        names=("OIM_NO_SUCH_AGE_KEY",)),
    Row("backup-plan-and-source-both",
        command=("backup", "{plan}", "--source", "redis=redis://127.0.0.1:1", "--to",
                 "{archive}"), code=2, names=("--source",)),
    Row("backup-nothing-to-back-up", command=("backup", "--to", "{archive}"), code=2,
        names=("--source",)),
    Row("backup-missing-to", command=("backup", "{plan}"), code=2, names=("--to",)),
    Row("backup-archive-bucket-missing",
        command=("backup", "{plan}", "--to", "archive+s3://{s3}/no-such-bucket-oim/x",
                 "-o", "access_key=${{OIM_S3_SRC_ACCESS_KEY}}",
                 "-o", "secret_key=${{OIM_S3_SRC_SECRET_KEY}}"), code=4,
        names=("no-such-bucket-oim",)),
    Row("restore-no-archive-there",
        command=("restore", "{archive}", "--target", "{redis_dst}"),
        names=("there is no archive",)),
    Row("restore-unknown-set", prepare=lambda plan: _archive(plan, key=True),
        command=("restore", "{archive}@20200101T000000Z-abcdef", "--key",
                 "${{OIM_BAD_INPUT_KEY}}", "--target", "{redis_dst}"),
        env={"OIM_BAD_INPUT_KEY": str(AGE_KEY)}, names=("20200101T000000Z-abcdef",)),
    Row("restore-wrong-key", prepare=lambda plan: _archive(plan, key=True),
        command=("restore", "{archive}", "--key", "${{OIM_BAD_INPUT_KEY}}", "--target",
                 "{redis_dst}"), env={"OIM_BAD_INPUT_KEY": str(OTHER_AGE_KEY)},
        names=("archive.key", "not this archive's key")),
    Row("restore-encrypted-without-key", prepare=lambda plan: _archive(plan, key=True),
        command=("restore", "{archive}", "--target", "{redis_dst}"),
        names=("encrypted",)),
    Row("restore-target-is-an-archive", prepare=lambda plan: _archive(plan),
        command=("restore", "{archive}", "--target", "redis={archive}"),
        names=("stores.redis.target",)),
    Row("restore-store-not-in-the-set", prepare=lambda plan: _archive(plan),
        command=("restore", "{archive}", "--target", "{redis_dst}", "--target",
                 "mysql=mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@127.0.0.1:1"), code=2,
        names=("--target mysql",)),
    Row("restore-target-option-without-target", prepare=lambda plan: _archive(plan),
        command=("restore", "{archive}", "--target", "{redis_dst}", "--target-option",
                 "objects.access_key=x"), code=2, names=("objects",)),
    Row("drill-max-age-without-unit", prepare=lambda plan: _archive(plan),
        command=("drill", "{archive}", "--target", "{redis_dst}", "--max-age", "26"),
        code=2, names=("--max-age",)),
    # -- schedule render: every option checked before anything is printed or written
    *[Row(f"schedule-{rid}", code=2, names=names,
          command=("schedule", "render", "--plan", "{plan}", "--output", "{out}", *extra))
      for rid, extra, names in [
          ("kind-unknown", ("--kind", "cron", "--archive", "{archive}"), ("--kind",)),
          ("archive-missing", ("--kind", "systemd"), ("--archive",)),
          ("archive-not-an-archive", ("--kind", "systemd", "--archive", "s3://{s3}/backups"),
           ("--archive",)),
          ("archive-literal-password",
           ("--kind", "systemd", "--archive", "archive+s3://backup:hunter2@{s3}/backups"),
           ("--archive", "literal password")),
          ("archive-option-literal-secret", ("--kind", "systemd", "--archive", "{archive}",
                                             "--archive-option", "secret_key=hunter2"),
           ("--archive-option secret_key",)),
          ("key-secret-literal", ("--kind", "systemd", "--archive", "{archive}",
                                  "--key-secret", "AGE-SECRET-KEY-1HUNTER2"), ("--key-secret",)),
          ("cron-hour-25", ("--kind", "cronjob", "--archive", "{archive}", "--schedule",
                            "0 25 * * *"), ("--schedule", "hour")),
          ("drill-cron-four-fields", ("--kind", "cronjob", "--archive", "{archive}",
                                      "--drill-schedule", "0 4 * *"), ("--drill-schedule",)),
          ("systemd-cron-both-day-fields", ("--kind", "systemd", "--archive", "{archive}",
                                            "--schedule", "0 3 1 * 1"), ("--schedule",)),
          ("keep-nothing", ("--kind", "systemd", "--archive", "{archive}", "--keep-last", "0",
                            "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"),
           ("--keep-",)),
          ("cronjob-refs-without-env-secret", ("--kind", "cronjob", "--archive",
                                               "archive+s3://{s3}/backups"), ("--env-secret",)),
          ("cronjob-directory-archive-without-claim",
           ("--kind", "cronjob", "--archive", "{archive}", "--env-secret", "env"),
           ("--archive-claim",)),
      ]],
]


def _archive(plan: Path, *, key: bool = False) -> None:
    """An archive beside the plan holding one complete set of an empty redis store."""
    from migrator.archive import Cut, archive_endpoint, open_archive

    options = {"key": "${OIM_BAD_INPUT_KEY}"} if key else {}
    os.environ["OIM_BAD_INPUT_KEY"] = str(AGE_KEY)
    try:
        with open_archive(archive_endpoint(f"archive+file://{plan.parent}/archive", options),
                          create=True) as repo:
            writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"])
            writer.store("redis").set_cut(Cut("2024-01-01T00:00:00.000000Z", True))
            writer.store("redis").commit()
            writer.commit()
    finally:
        del os.environ["OIM_BAD_INPUT_KEY"]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() \
        else []


def _expand(command: tuple[str, ...], world: World, plan: Path, tmp: Path) -> list[str]:
    out: list[str] = []
    for part in command:
        if part == "{args}":
            out.extend(world.args)
            continue
        out.append(part.format(plan=plan, missing=tmp / "nope.yaml", dir=tmp,
                               out=tmp / "out.yaml", file=plan,
                               archive=f"archive+file://{tmp}/archive",
                               s3=hostport(world.env["OIM_S3_SRC_URL"]),
                               redis_dst="redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
                               + hostport(world.env["OIM_REDIS_DST_URL"]) + "/0"))
    return out


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input_is_one_line_with_its_exit_code_and_nothing_written(world, row, tmp_path):
    plan = tmp_path / "plan.yaml"
    if row.raw is not None:
        plan.write_bytes(row.raw)
    else:
        data = yaml.safe_load(yaml.safe_dump(world.plan))
        if row.mutate:
            row.mutate(data)
        if row.seal:
            data = sealed(data)
        plan.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(row.env)
    if row.prepare:
        row.prepare(plan)
    archive_before = _files(tmp_path / "archive")
    try:
        proc = cli(*_expand(row.command, world, plan, tmp_path), env=env)
    finally:
        while _HELD:
            _HELD.pop().close()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    others = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith(("error:", "  hint:", "warning:",
                                                       "Usage:", "Try ", "Error:"))]
    assert proc.returncode == row.code, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    if row.code == 2 and not errors:  # click's own usage errors: "Error: ..." on one line
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and not others, proc.stderr
    for name in row.names:
        assert name in errors[0], errors[0]
    for secret in world.secrets + ["hunter2"]:
        assert secret not in proc.stderr + proc.stdout
    assert not world.targets_untouched()
    assert not (tmp_path / "out.yaml").exists()
    assert _files(tmp_path / "archive") == archive_before  # no archive, set or file written


def test_run_in_a_read_only_directory_is_one_line_and_nothing_written(world, tmp_path):
    """The journal cannot be created beside the plan (root ignores modes: chattr +i)."""
    if not shutil.which("chattr"):
        pytest.skip("chattr is missing")
    folder = tmp_path / "ro"
    folder.mkdir()
    plan = folder / "plan.yaml"
    plan.write_text(yaml.safe_dump(world.plan, sort_keys=False))
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        proc = cli("run", str(plan))
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr and "journal" in proc.stderr
    assert not world.targets_untouched()


def test_a_selection_that_matches_nothing_is_a_warning_without_strict(world, tmp_path):
    out = cli("plan", *world.args, "--include", "mysql=nomatch.*", "-o", str(tmp_path / "p.yaml"))
    assert out.returncode == 0, out.stderr
    assert "stores.mysql.selection matches nothing" in out.stderr


def test_the_corpus_is_big_enough():
    assert len(ROWS) >= 60
    assert len({r.id for r in ROWS}) == len(ROWS)

