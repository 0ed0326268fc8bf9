#!/usr/bin/env python3
"""Backup and restore side by side with the native dump tools, in one run on the same
servers, so the figures are ratios rather than absolute seconds.

    python bench/bench_backup.py redis   --keys 1000000   # redis-cli --rdb; redis-server on it
    python bench/bench_backup.py mysql   --rows 100000    # mydumper/myloader, mariadb-dump | zstd
    python bench/bench_backup.py mongo   --scale 3        # mongodump/mongorestore --gzip
    python bench/bench_backup.py objects --small 10000    # rclone copy to/from a directory
    python bench/bench_backup.py all --repeat 3 --write   # all four, table into docs/benchmarks.md

One store prints one JSON object (medians, ratios, every round). `all` runs each store in
its own process and, with --write, rewrites the table between the bench-backup markers of
docs/benchmarks.md (rows of stores not run stay). Servers, the launcher that measures a
command's wall and CPU seconds and its own peak RSS, and the load sampling are
bench/compare.py's. Ours is the real command line: `backup --source … --to
archive+file://…` into a fresh archive, `restore … --journal …` into an empty target (the
restore ends with its verify against the set's checksums; the native tools check nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (puts ROOT and scripts/ on sys.path)
from compare import BIN, CLI, ROOT, hostport, load_fixture, services, step  # noqa: E402

from migrator.config import Endpoint  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-backup:begin -->", "<!-- bench-backup:end -->"
RESULTS = Path(tempfile.gettempdir()) / "openim-migrate-bench-backup.json"
MISS = "**misses goal**"
RSS_GOAL_MIB = 256
KEY_VAR = "OIM_BENCH_BACKUP_KEY"
PARALLEL = 4
GROUPS = {"redis": "redis", "mysql": "mysql", "mongo": "mongo", "objects": "minio"}


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (a file: its size)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def archive_args(opts: argparse.Namespace) -> list[str]:
    return ["--key", "${" + KEY_VAR + "}"] if opts.encrypt else []


def our_backup(sources: list[str], archive: Path, opts: argparse.Namespace,
               pid_files: dict[str, str] | None = None) -> dict[str, Any]:
    return step([*CLI, "backup", *sources, "--to", f"archive+file://{archive}",
                 *archive_args(opts), "--parallel", str(PARALLEL), "--no-progress"],
                pid_files=pid_files)


def our_restore(archive: Path, targets: list[str], journal: Path, opts: argparse.Namespace,
                pid_files: dict[str, str] | None = None) -> dict[str, Any]:
    journal.unlink(missing_ok=True)
    return step([*CLI, "restore", f"archive+file://{archive}", *archive_args(opts),
                 *targets, "--journal", str(journal), "--parallel", str(PARALLEL),
                 "--no-progress"], pid_files=pid_files)


def set_totals(archive: Path, opts: argparse.Namespace) -> dict[str, int]:
    """The newest set's totals (bytes stored, plain bytes, records) from `backup list`."""
    out = subprocess.run([*CLI, "backup", "list", f"archive+file://{archive}",
                          *archive_args(opts), "--json"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out)["sets"][-1]["totals"])


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    if path.suffix:
        path.unlink(missing_ok=True)
    return path


def summarize(runs: list[dict[str, Any]], pairs: dict[str, tuple[str, str]],
              sizes: dict[str, str]) -> dict[str, Any]:
    """Medians per step; a ratio is the median of the rounds' (native s / ours s).
    ``pairs``: comparison -> (native step, our step); ``sizes``: step -> its size key."""
    steps = list(dict.fromkeys(k for r in runs for k, v in r.items()
                               if isinstance(v, dict) and "s" in v))

    def mid(name: str, field: str) -> float:  # over the rounds that ran this step
        return round(median(float(r[name][field]) for r in runs if name in r), 2)

    plain = median(r["plain_bytes"] for r in runs)
    gib = plain / 2**30
    out: dict[str, Any] = {"repeat": len(runs), "plain_bytes": int(plain), "steps": {}}
    for name in steps:
        out["steps"][name] = {
            "s": mid(name, "s"), "cpu_s": mid(name, "cpu_s"),
            "cpu_s_per_gib": round(mid(name, "cpu_s") / gib, 1) if gib else None,
            "rss_mib": max(r[name]["rss_mib"] for r in runs if name in r),
            "load": [min(r[name]["load"][0] for r in runs if name in r),
                     max(r[name]["load"][1] for r in runs if name in r)],
            **({"bytes": int(median(r[sizes[name]] for r in runs))} if name in sizes else {}),
        }
    out["ratios"] = {label: round(median(r[n]["s"] / r[o]["s"] for r in runs
                                         if n in r and o in r), 2)
                     for label, (n, o) in pairs.items()
                     if any(n in r and o in r for r in runs)}
    out["load"] = [min(s["load"][0] for s in out["steps"].values()),
                   max(s["load"][1] for s in out["steps"].values())]
    out["runs"] = runs
    return out


# -------------------------------------------------------------------------------- redis
def bench_redis(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """``--keys`` mixed keys. Backup: ``redis-cli --rdb`` (one RDB over the replication
    link) against ours. Restore: ``redis-server`` started on that RDB until it answers
    PING (loading done) against our restore into the flushed target."""
    import redis

    from fixtures import redis_data

    src = redis.Redis.from_url(env["OIM_REDIS_SRC_URL"], password=env["OIM_REDIS_SRC_PASSWORD"],
                               socket_timeout=600)
    dst = redis.Redis.from_url(env["OIM_REDIS_DST_URL"], password=env["OIM_REDIS_DST_PASSWORD"],
                               socket_timeout=600)
    src.flushall()
    dst.flushall()
    loaded = time.monotonic()
    redis_data.mixed(Endpoint("redis", env["OIM_REDIS_SRC_URL"].replace(
        "redis://", "redis://:${OIM_REDIS_SRC_PASSWORD}@"), name="bench"), opts.keys, seed=1)
    load_s = time.monotonic() - loaded
    total = src.dbsize()
    sh, sp = hostport(env["OIM_REDIS_SRC_URL"]).split(":")
    sources = ["--source", "redis=redis://:${OIM_REDIS_SRC_PASSWORD}@"
               + hostport(env["OIM_REDIS_SRC_URL"]) + "/0"]
    targets = ["--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
               + hostport(env["OIM_REDIS_DST_URL"]) + "/0"]
    port = services._free_ports(1)[0]
    rdb_dir = work / "rdb"
    auth = {"REDISCLI_AUTH": env["OIM_REDIS_SRC_PASSWORD"]}  # never on the command line
    server = (f"redis-server --port {port} --bind 127.0.0.1 --dir {rdb_dir} "
              f"--dbfilename dump.rdb --save '' --appendonly no --daemonize yes "
              f"--pidfile {rdb_dir}/redis.pid --logfile {rdb_dir}/redis.log; "
              f"until [ \"$(redis-cli -p {port} ping 2>/dev/null)\" = PONG ]; "
              "do sleep 0.02; done")
    runs = []
    for round_ in range(opts.repeat):
        run: dict[str, Any] = {}
        fresh(rdb_dir).mkdir()
        run["redis_cli_rdb"] = step(["redis-cli", "-h", sh, "-p", sp, "--rdb",
                                     str(rdb_dir / "dump.rdb")], env=auth)
        run["rdb_bytes"] = du(rdb_dir / "dump.rdb")
        archive = fresh(work / f"archive-{round_}")
        run["ours_backup"] = our_backup(sources, archive, opts)
        totals = set_totals(archive, opts)
        run.update(ours_bytes=totals["bytes"], plain_bytes=totals["plain_bytes"])
        assert totals["records"] == total, (totals, total)
        run["redis_server_load"] = step(server)
        loaded_server = redis.Redis(port=port)
        try:
            assert loaded_server.dbsize() == total, (loaded_server.dbsize(), total)
        finally:
            loaded_server.shutdown(nosave=True)
        run["ours_restore"] = our_restore(archive, targets, work / "restore.sqlite", opts)
        assert dst.dbsize() == total, (dst.dbsize(), total)
        dst.flushall(asynchronous=True)
        shutil.rmtree(archive)
        runs.append(run)
    return {"store": "redis", "keys": total, "load_s": round(load_s, 1),
            "commands": {"redis_cli_rdb": "redis-cli --rdb dump.rdb",
                         "redis_server_load": "redis-server on dump.rdb until PING answers"},
            **summarize(runs, {"backup": ("redis_cli_rdb", "ours_backup"),
                               "restore": ("redis_server_load", "ours_restore")},
                        {"redis_cli_rdb": "rdb_bytes", "ours_backup": "ours_bytes"})}


# -------------------------------------------------------------------------------- mysql
def bench_mysql(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """``--rows`` chat_logs rows. Backup: ``mydumper --threads 4 --compress`` and
    ``mariadb-dump | zstd`` against ours; restore: ``myloader --threads 4`` and
    ``zstd -d | mariadb`` against ours, each into its own empty database."""

    from fixtures import mysql_data

    db = compare.MYSQL_DB
    mb = compare.MySQLBench(env, db, (db, "native_myloader", "native_dump"))
    src, conns, pid_files = mb.src, mb.conns, mb.pid_files
    clean_target, copied = mb.clean_target, mb.copied
    (sh, sp), (dh, dp) = (hostport(env[f"OIM_MYSQL_{s}_URL"]).split(":") for s in ("SRC", "DST"))
    clean_target()
    loaded = time.monotonic()
    mysql_data.message_rows(src, opts.rows, seed=1)
    load_s = time.monotonic() - loaded
    cnf = {}
    for side in ("SRC", "DST"):  # passwords in defaults files, never on a command line
        path = work / f"{side.lower()}.cnf"
        path.write_text("".join(f"[{group}]\npassword={env[f'OIM_MYSQL_{side}_PASSWORD']}\n"
                                for group in ("client", "mydumper", "myloader")))
        path.chmod(0o600)
        cnf[side] = str(path)
    dumped, sql = work / "mydumper", work / "dump.sql.zst"
    commands: dict[str, Any] = {
        "mydumper": ["mydumper", f"--defaults-file={cnf['SRC']}", "-h", sh, "-P", sp,
                     "-u", "root", "--threads", "4", "--compress", "-B", db,
                     "-o", str(dumped)],
        "myloader": ["myloader", f"--defaults-file={cnf['DST']}", "-h", dh, "-P", dp,
                     "-u", "root", "--threads", "4", "-d", str(dumped), "-s", db,
                     "-B", "native_myloader", "-o"],
        "mariadb_dump_zstd": (f"mariadb-dump --defaults-extra-file={cnf['SRC']} -h {sh} "
                              f"-P {sp} -u root --single-transaction --quick {db} "
                              f"| zstd -q -3 -o {sql}"),
        "zstd_mariadb": (f"zstd -q -d -c {sql} | mariadb --defaults-extra-file={cnf['DST']}"
                         f" -h {dh} -P {dp} -u root native_dump"),
    }
    sources = ["--source", f"mysql=mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@{sh}:{sp}/{db}"]
    targets = ["--target", f"mysql=mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@{dh}:{dp}"]
    runs = []
    for round_ in range(opts.repeat):
        run: dict[str, Any] = {}
        fresh(dumped)
        run["mydumper"] = step(commands["mydumper"], pid_files=pid_files)
        run["mydumper_bytes"] = du(dumped)
        fresh(sql)
        run["mariadb_dump_zstd"] = step(commands["mariadb_dump_zstd"], pid_files=pid_files)
        run["dump_bytes"] = du(sql)
        archive = fresh(work / f"archive-{round_}")
        run["ours_backup"] = our_backup(sources, archive, opts, pid_files)
        totals = set_totals(archive, opts)
        run.update(ours_bytes=totals["bytes"], plain_bytes=totals["plain_bytes"])
        with conns["DST"].cursor() as cur:
            cur.execute("CREATE DATABASE native_myloader CHARACTER SET utf8mb4")
        run["myloader"] = step(commands["myloader"], pid_files=pid_files)
        assert copied("native_myloader") == opts.rows
        with conns["DST"].cursor() as cur:
            cur.execute("CREATE DATABASE native_dump CHARACTER SET utf8mb4")
        run["zstd_mariadb"] = step(commands["zstd_mariadb"], pid_files=pid_files)
        assert copied("native_dump") == opts.rows
        run["ours_restore"] = our_restore(archive, targets, work / "restore.sqlite", opts,
                                          pid_files)
        assert copied(db) == opts.rows
        clean_target()
        shutil.rmtree(archive)
        runs.append(run)
    with conns["SRC"].cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    return {"store": "mysql", "rows": opts.rows, "load_s": round(load_s, 1),
            "commands": {k: v if isinstance(v, str) else " ".join(v)
                         for k, v in commands.items()},
            **summarize(runs, {"backup": ("mydumper", "ours_backup"),
                               "restore": ("myloader", "ours_restore"),
                               "backup/mariadb-dump": ("mariadb_dump_zstd", "ours_backup"),
                               "restore/mariadb": ("zstd_mariadb", "ours_restore")},
                        {"mydumper": "mydumper_bytes", "mariadb_dump_zstd": "dump_bytes",
                         "ours_backup": "ours_bytes"})}


# -------------------------------------------------------------------------------- mongo
def bench_mongo(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """The OpenIM fixture at ``--scale``. Backup: ``mongodump --gzip`` into a directory
    against ours; restore: ``mongorestore --gzip`` of it (into another database) against
    ours into the dropped target."""
    import pymongo

    from fixtures import mongo_data
    from migrator.config import resolve_refs

    dump, restore = BIN / "mongodump", BIN / "mongorestore"
    if not (dump.exists() and restore.exists()):
        raise SystemExit(f"{dump} / {restore} missing: `make deps` builds them")
    src: Any = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_SRC_URL"], "bench"))
    dst: Any = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_DST_URL"], "bench"))

    def drop_targets() -> None:
        for name in ("openim_v3", "native_copy"):
            dst.drop_database(name)

    src.drop_database("openim_v3")
    drop_targets()
    loaded = time.monotonic()
    counts = mongo_data.load(Endpoint("mongo", env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                                      name="bench"), seed=1, scale=opts.scale)
    load_s = time.monotonic() - loaded
    expected = sum(counts.values())
    flavour = env.get("OIM_MONGO_FLAVOR", "ferretdb")
    dumped = work / "mongodump"
    native_backup = [str(dump), *compare.mongo_tool_args(env["OIM_MONGO_SRC_URL"], work, "src"),
                     "--db=openim_v3", "--gzip", f"--out={dumped}", "--quiet"]
    native_restore = [str(restore),
                      *compare.mongo_tool_args(env["OIM_MONGO_DST_URL"], work, "dst"),
                      "--gzip", f"--dir={dumped}", "--quiet", "--drop",
                      "--nsFrom=openim_v3.*", "--nsTo=native_copy.*"]
    # DocumentDB's gateway resets some of mongo-tools' connections during their handshakes
    # (a burst at once): a failed native run is run again (--drop: from a clean start).
    attempts = 6 if flavour == "documentdb" else 1
    if flavour == "ferretdb":
        native_restore.append("--noIndexRestore")  # FerretDB refuses its index specs

    def documents(name: str) -> int:
        return sum(dst[name][c].estimated_document_count()
                   for c in dst[name].list_collection_names())

    sources = ["--source", "mongo=" + env["OIM_MONGO_SRC_URL"] + "/openim_v3"]
    targets = ["--target", "mongo=" + env["OIM_MONGO_DST_URL"]]
    runs = []
    for round_ in range(opts.repeat):
        run: dict[str, Any] = {}
        drop_targets()
        fresh(dumped)
        run["mongodump"] = step(native_backup, attempts=attempts)
        run["mongodump_bytes"] = du(dumped)
        archive = fresh(work / f"archive-{round_}")
        run["ours_backup"] = our_backup(sources, archive, opts)
        totals = set_totals(archive, opts)
        run.update(ours_bytes=totals["bytes"], plain_bytes=totals["plain_bytes"])
        run["mongorestore"] = step(native_restore, attempts=attempts)
        assert documents("native_copy") == expected, (documents("native_copy"), expected)
        run["ours_restore"] = our_restore(archive, targets, work / "restore.sqlite", opts)
        assert documents("openim_v3") == expected, (documents("openim_v3"), expected)
        drop_targets()
        shutil.rmtree(archive)
        runs.append(run)
    src.drop_database("openim_v3")
    return {"store": "mongo", "documents": expected, "scale": opts.scale, "server": flavour,
            "load_s": round(load_s, 1),
            "commands": {"mongodump": "mongodump --db=openim_v3 --gzip --out=DIR",
                         "mongorestore": "mongorestore --gzip --dir=DIR --nsFrom --nsTo"
                         + (" --noIndexRestore" if flavour == "ferretdb" else "")},
            **summarize(runs, {"backup": ("mongodump", "ours_backup"),
                               "restore": ("mongorestore", "ours_restore")},
                        {"mongodump": "mongodump_bytes", "ours_backup": "ours_bytes"})}


# ------------------------------------------------------------------------------ objects
def bench_objects(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """``--small`` objects. Backup: ``rclone copy`` into a local directory against ours,
    then ours again with nothing changed (it references the first set's files); restore:
    ``rclone copy`` of the directory into a new bucket against ours.

    A second backup trusts the listing for objects written well before the first one
    began (``ObjectArchive.recent_seconds``) and HEADs the others. Freshly loaded, every
    object is that recent: so the first round also measures that worst case (a backup
    pair made right after the load), then waits until the objects are older (unless
    --no-settle) for the backup pair of the table, as a nightly backup finds them."""
    from migrator.stores.objects.archive import ObjectArchive

    s3 = compare.S3Bench(env)
    client, empty = s3.client, s3.empty

    def count(bucket: str) -> int:
        return sum(1 for _ in client("DST").list_objects(bucket, recursive=True))

    loaded = time.monotonic()
    counts = load_fixture(
        "from fixtures import objects_data; from migrator.config import Endpoint; "
        "ep = Endpoint('objects', sys.argv[1] + '/openim', name='bench', options={"
        "'access_key': '${OIM_S3_SRC_ACCESS_KEY}', "
        "'secret_key': '${OIM_S3_SRC_SECRET_KEY}'}); "
        "print(json.dumps(objects_data.load(ep, seed=1, scale=float(sys.argv[2]))))",
        env["OIM_S3_SRC_URL"], str(opts.small / 2000))
    load_s = time.monotonic() - loaded
    written = time.time()  # the newest object's Last-Modified is at most this
    rclone_env = {
        "RCLONE_CONFIG_SRC_TYPE": "s3", "RCLONE_CONFIG_SRC_PROVIDER": "Minio",
        "RCLONE_CONFIG_SRC_ENDPOINT": env["OIM_S3_SRC_URL"],
        "RCLONE_CONFIG_SRC_ACCESS_KEY_ID": env["OIM_S3_SRC_ACCESS_KEY"],
        "RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY": env["OIM_S3_SRC_SECRET_KEY"],
        "RCLONE_CONFIG_DST_TYPE": "s3", "RCLONE_CONFIG_DST_PROVIDER": "Minio",
        "RCLONE_CONFIG_DST_ENDPOINT": env["OIM_S3_DST_URL"],
        "RCLONE_CONFIG_DST_ACCESS_KEY_ID": env["OIM_S3_DST_ACCESS_KEY"],
        "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": env["OIM_S3_DST_SECRET_KEY"],
    }
    os.environ.pop("AWS_CA_BUNDLE", None)  # rclone refuses it on this machine's transport
    sources = ["--source", "objects=" + env["OIM_S3_SRC_URL"] + "/openim",
               "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
               "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}"]
    targets = ["--target", "objects=" + env["OIM_S3_DST_URL"] + "/openim",
               "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
               "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}"]
    copy = ["rclone", "copy", "--transfers", str(PARALLEL), "--checkers", "8"]
    local = work / "rclone"
    settle_until = written + ObjectArchive.recent_seconds + 5
    settled_s = 0.0
    runs = []
    for round_ in range(opts.repeat):
        run: dict[str, Any] = {}
        fresh(local)
        run["rclone_copy"] = step([*copy, "src:openim", str(local)], env=rclone_env)
        run["rclone_bytes"] = du(local)
        if opts.settle and time.time() < settle_until:
            recent = fresh(work / "archive-recent")
            run["recent_backup"] = our_backup(sources, recent, opts)
            run["recent_backup_again"] = our_backup(sources, recent, opts)
            shutil.rmtree(recent)
        run["rclone_restore"] = step([*copy, str(local), "dst:rclone-restore"], env=rclone_env)
        assert count("rclone-restore") == counts["objects"]
        if opts.settle and time.time() < settle_until:
            settled_s += settle_until - time.time()
            time.sleep(settle_until - time.time())
        archive = fresh(work / f"archive-{round_}")
        run["ours_backup"] = our_backup(sources, archive, opts)
        totals = set_totals(archive, opts)
        run.update(ours_bytes=totals["bytes"], plain_bytes=totals["plain_bytes"])
        run["ours_backup_again"] = our_backup(sources, archive, opts)
        again = set_totals(archive, opts)
        run["again_own_bytes"] = again["own_bytes"]
        assert again["records"] == totals["records"] == counts["objects"], (again, counts)
        run["ours_restore"] = our_restore(archive, targets, work / "restore.sqlite", opts)
        assert count("openim") == counts["objects"]
        empty("DST", "openim")
        empty("DST", "rclone-restore")
        shutil.rmtree(archive)
        runs.append(run)
    empty("SRC", "openim")
    out = {"store": "objects", "objects": counts["objects"], "bytes": counts["bytes"],
           "load_s": round(load_s, 1), "settled_s": round(settled_s, 1),
           "commands": {"rclone_copy": "rclone copy src:openim DIR --transfers 4",
                        "rclone_restore": "rclone copy DIR dst:bucket --transfers 4"},
           "again_own_bytes": int(median(r["again_own_bytes"] for r in runs)),
           **summarize(runs, {"backup": ("rclone_copy", "ours_backup"),
                              "restore": ("rclone_restore", "ours_restore"),
                              "second backup": ("ours_backup", "ours_backup_again"),
                              "second backup, all recent": ("recent_backup",
                                                            "recent_backup_again")},
                       {"rclone_copy": "rclone_bytes", "ours_backup": "ours_bytes"})}
    return out


BENCHES = {"redis": bench_redis, "mysql": bench_mysql, "mongo": bench_mongo,
           "objects": bench_objects}


# -------------------------------------------------------------------------------- table
# row id -> (store, comparison in "ratios", native step, our step, tool as shown, goal)
ROWS: list[tuple[str, str, str, str, str, str, float]] = [
    ("mongo/backup", "mongo", "backup", "mongodump", "ours_backup",
     "`mongodump --gzip --out DIR`", 1.0),
    ("mongo/restore", "mongo", "restore", "mongorestore", "ours_restore",
     "`mongorestore --gzip --dir DIR`", 1.0),
    ("mysql/backup", "mysql", "backup", "mydumper", "ours_backup",
     "`mydumper --threads 4 --compress`", 1.0),
    ("mysql/restore", "mysql", "restore", "myloader", "ours_restore",
     "`myloader --threads 4`", 1.0),
    ("mysql/backup-dump", "mysql", "backup/mariadb-dump", "mariadb_dump_zstd", "ours_backup",
     "`mariadb-dump --single-transaction --quick \\| zstd`", 0.0),
    ("mysql/restore-dump", "mysql", "restore/mariadb", "zstd_mariadb", "ours_restore",
     "`zstd -d \\| mariadb`", 0.0),
    ("redis/backup", "redis", "backup", "redis_cli_rdb", "ours_backup",
     "`redis-cli --rdb FILE`", 0.5),
    ("redis/restore", "redis", "restore", "redis_server_load", "ours_restore",
     "`redis-server` started on that RDB (until PING answers)", 0.0),
    ("objects/backup", "objects", "backup", "rclone_copy", "ours_backup",
     "`rclone copy` to a directory", 1.0),
    ("objects/restore", "objects", "restore", "rclone_restore", "ours_restore",
     "`rclone copy` from that directory", 0.0),
    ("objects/again", "objects", "second backup", "ours_backup", "ours_backup_again",
     "ours, first backup (second: nothing changed)", 10.0),
    ("objects/again-recent", "objects", "second backup, all recent", "recent_backup",
     "recent_backup_again", "ours, first backup (second: nothing changed, every object "
     "written < 5 min before the first: a HEAD each)", 0.0),
]
HEADER = ("| row | data | native tool | native | ours | ratio | goal | size: native / ours "
          "(plain) | CPU s/GiB: native / ours | peak RSS ours (goal ≤ 256 MiB) "
          "| load (1 min) | made by |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
ROW_ID = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def describe(r: dict[str, Any]) -> str:
    kind = r["store"]
    if kind == "redis":
        return f"{r['keys']:,} mixed keys"
    if kind == "mysql":
        return f"{r['rows']:,} `chat_logs` rows"
    if kind == "mongo":
        return f"OpenIM fixture scale {r['scale']:g}: {r['documents']:,} documents ({r['server']})"
    return f"{r['objects']:,} small objects ({_mib(r['bytes'])})"


def row_lines(result: dict[str, Any], day: str) -> tuple[dict[str, str], list[str]]:
    """Table lines by row id for one store's result, and the goals missed."""
    lines, misses = {}, []
    steps = result["steps"]
    runs = "1 run" if result["repeat"] == 1 else f"median of {result['repeat']}"
    for rid, kind, label, native, ours, tool, goal in ROWS:
        if kind != result["store"] or label not in result["ratios"]:
            continue
        n, o = steps[native], steps[ours]
        ratio = result["ratios"][label]
        shown = f"**{ratio:.2f}×**" if goal else f"{ratio:.2f}×"
        if goal and ratio < goal:
            shown = f"{ratio:.2f}× {MISS}"
            misses.append(f"{rid}: {ratio:.2f}× (goal ≥ {goal:g}×)")
        rss = f"{o['rss_mib']} MiB"
        if o["rss_mib"] > RSS_GOAL_MIB:
            rss += f" {MISS}"
            misses.append(f"{rid}: peak RSS {o['rss_mib']} MiB (goal ≤ {RSS_GOAL_MIB})")
        if rid == "objects/again":
            size = f"second set stores {_mib(result['again_own_bytes'])} of its own"
        elif "bytes" in n or "bytes" in o:
            size = (f"{_mib(n['bytes']) if 'bytes' in n else '–'} / "
                    f"{_mib(o['bytes']) if 'bytes' in o else '–'}"
                    f" ({_mib(result['plain_bytes'])})")
        else:
            size = "–"
        cpu = (f"{n['cpu_s_per_gib']:,.0f} / {o['cpu_s_per_gib']:,.0f}"
               if n.get("cpu_s_per_gib") is not None else "–")
        if rid == "redis/restore":
            cpu = f"(server) / {o['cpu_s_per_gib']:,.0f}"
        low = min(n["load"][0], o["load"][0])
        high = max(n["load"][1], o["load"][1])
        cells = [f"`{rid}`", describe(result), tool, f"{n['s']:.2f} s", f"{o['s']:.2f} s",
                 shown, f"≥ {goal:g}×" if goal else "(report)", size, cpu, rss,
                 f"{low:.1f}–{high:.1f}", f"{day}, {runs}: `{result['command']}`"
                 + ("; restore hooks added (see below)" if ours == "ours_restore"
                    and result["store"] in ("mysql", "objects")
                    and result.get("restore_hooks_added") else "")]
        lines[rid] = "| " + " | ".join(cells) + " |"
    return lines, misses


def write_table(path: Path, fresh_rows: dict[str, str], summary: str) -> None:
    """Rewrite the text between the bench-backup markers; rows not run now stay."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path}: needs exactly one {BEGIN} … {END} pair; nothing written")
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    kept = {}
    for line in old.splitlines():
        found = ROW_ID.match(line)
        if found:
            kept[found.group(1)] = line
    kept.update(fresh_rows)
    order = [r[0] for r in ROWS]
    ids = [i for i in order if i in kept] + [i for i in kept if i not in order]
    body = "\n".join(kept[i] for i in ids)
    path.write_text(head + BEGIN + "\n<!-- written by bench/bench_backup.py -->\n"
                    + f"{summary}\n\n{HEADER}\n{body}\n" + END + tail)


def run_all(opts: argparse.Namespace, argv: list[str]) -> int:
    """Each store in its own process (own servers); the table written after each."""
    chosen = [s.strip() for s in (opts.only or "mongo,mysql,redis,objects").split(",")]
    day = date.today().isoformat()
    fresh_rows: dict[str, str] = {}
    misses: list[str] = []
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for kind in chosen:
        args = [kind, "--repeat", str(opts.repeat), *(["--encrypt"] if opts.encrypt else []),
                *{"redis": ["--keys", str(opts.keys)], "mysql": ["--rows", str(opts.rows)],
                  "mongo": ["--scale", f"{opts.scale:g}"],
                  "objects": ["--small", str(opts.small)]}[kind]]
        command = " ".join(["python", "bench/bench_backup.py", *map(shlex.quote, args)])
        print(f"{kind} ...", flush=True)
        began = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, *args], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            print(f"    FAILED: {command}", flush=True)
            continue
        result = json.loads(lines[-1])
        result.update(command=command, seconds=round(time.monotonic() - began, 1))
        results.append(result)
        rows, missed = row_lines(result, day)
        fresh_rows.update(rows)
        misses += missed
        for line in rows.values():
            print("    " + line, flush=True)
        kept = json.loads(opts.json.read_text()) if opts.json.exists() else []
        done = {r["store"] for r in results}  # other stores' last results stay in the file
        opts.json.write_text(json.dumps([r for r in kept if r.get("store") not in done]
                                        + results, indent=1) + "\n")
        if opts.write:
            write_table(opts.output, fresh_rows, (
                f"Last run: {day}, `{' '.join(argv)}`: {len(results)} of {len(chosen)} "
                f"stores in {(time.monotonic() - started) / 60:.1f} min on {os.cpu_count()} "
                "cores; rows with an older date were kept from earlier runs. Ratio: native "
                "seconds / ours (> 1: we are faster); for `objects/again` the first backup's "
                f"seconds / the second's. {MISS} marks a ratio below its goal or a peak "
                f"RSS over {RSS_GOAL_MIB} MiB."))
    if misses:
        print("\nBelow goal:\n  " + "\n  ".join(misses))
    return 0 if len(results) == len(chosen) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", choices=[*BENCHES, "all"])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--no-settle", dest="settle", action="store_false",
                        help="objects: do not wait for the loaded objects to be older than "
                        "the second backup's HEAD window before the table's backups")
    parser.add_argument("--encrypt", action="store_true",
                        help="ours into an age-encrypted archive (a key made for the run)")
    parser.add_argument("--only", help="with all: comma-separated stores")
    parser.add_argument("--write", action="store_true",
                        help="with all: rewrite the table in --output")
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument("--json", type=Path, default=RESULTS,
                        help="with all: each store's last JSON, every round "
                        f"(default {RESULTS}; stores not run stay)")
    opts = parser.parse_args()
    if opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    if opts.store == "all":
        return run_all(opts, ["python", "bench/bench_backup.py", *sys.argv[1:]])
    if opts.encrypt and KEY_VAR not in os.environ:
        import pyrage

        os.environ[KEY_VAR] = str(pyrage.x25519.Identity.generate())
    compare.compile_ours()
    group = GROUPS[opts.store]
    work = Path(tempfile.mkdtemp(prefix="oim-bench-backup-"))
    var = f"OIM_{'S3' if group == 'minio' else group.upper()}_SRC_URL"
    started_here = var not in os.environ
    env = dict(os.environ)
    try:
        if started_here:
            env.update(services.start(work / "services", only=[group]))
            os.environ.update(env)
        result = BENCHES[opts.store](env, opts, work)
    finally:
        if started_here:
            services.stop(work / "services")
        shutil.rmtree(work, ignore_errors=True)
    result.update(parallel=PARALLEL, encrypted=opts.encrypt,
                  argv=["python", "bench/bench_backup.py", *sys.argv[1:]])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
