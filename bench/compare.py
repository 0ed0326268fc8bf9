#!/usr/bin/env python3
"""Side-by-side benchmarks: `openim-migrate run` / `verify` against the native tools, in
one run on the same servers, so the figures are ratios rather than absolute seconds.

    python bench/compare.py mysql   --rows 2000000
    python bench/compare.py redis   --keys 1000000
    python bench/compare.py mongo   --scale 20
    python bench/compare.py objects --small 10000 --large 4

Servers come from the OIM_* environment (docker-compose.test.yml) or are started here
with scripts/services.py and stopped at the end. Ours runs through the real command line
in a child process; its peak RSS is read from wait4(). Each result is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import services  # noqa: E402

from migrator.config import Endpoint  # noqa: E402

BIN = Path(os.environ.get("OPENIM_MIGRATE_BIN") or Path.home() / ".cache/openim-migrate/bin")


def measured(cmd: list[str] | str, *, shell: bool = False, env: dict | None = None,
             cwd: Path = ROOT) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the process and the children it waited for)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, shell=shell, cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


EXTRA_PLAN_ARGS: list[str] = []  # from --plan-arg, passed to every `plan`


def ours(plan: Path, plan_args: list[str], parallel: int) -> dict[str, float]:
    for stale in (plan, plan.with_name(plan.stem + ".journal.sqlite")):
        stale.unlink(missing_ok=True)
    cli = [sys.executable, "-m", "migrator"]
    plan_s, _ = measured([*cli, "plan", *plan_args, *EXTRA_PLAN_ARGS,
                          "--parallel", str(parallel), "-o", str(plan)])
    copy_s, rss = measured([*cli, "run", str(plan), "--no-verify", "--no-progress"])
    verify_s, verify_rss = measured([*cli, "verify", str(plan)])
    return {"plan_s": round(plan_s, 2), "copy_s": round(copy_s, 2), "run_rss_mib": round(rss),
            "verify_s": round(verify_s, 2), "verify_rss_mib": round(verify_rss),
            "verify_fraction": round(verify_s / copy_s, 3)}


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


# -------------------------------------------------------------------------------- mysql
MYSQL_DB = "openIM_bench"


def _server_cpu(pid_files: dict[str, str]) -> dict[str, float]:
    """CPU seconds each local mariadbd has used so far (from /proc), by side."""
    out = {}
    for side, pid_file in pid_files.items():
        try:
            pid = int(Path(pid_file).read_text().strip())
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[side] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            out[side] = float("nan")  # a server elsewhere (docker-compose): not measured
    return out


def _mysql_step(cmd: list[str] | str, pid_files: dict[str, str], *, shell: bool = False
                ) -> dict[str, float]:
    """One timed command: wall seconds, CPU seconds of the command's processes and of
    each server, and the 1-minute load average around it (the machine is shared)."""
    load = os.getloadavg()[0]
    before = _server_cpu(pid_files)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, shell=shell, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"command failed: {cmd}\n{err[-3000:]}")
    after = _server_cpu(pid_files)
    return {"s": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            **{f"{side}_server_cpu_s": round(after[side] - before[side], 2) for side in after},
            "rss_mib": round(usage.ru_maxrss / 1024),
            "load": round(max(load, os.getloadavg()[0]), 1)}


def bench_mysql(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """One chat_logs table of ``--rows`` rows, loaded once; then, interleaved and
    ``repeat`` times (3 unless --repeat says otherwise): ``mariadb-dump | mariadb``,
    ``mydumper`` + ``myloader`` (4 threads; ``--rows`` asks for one chunk per thread, which
    mydumper 0.10 only does on an integer key: chat_logs' key is text, one file) and
    ours (plan, run, verify, default options). Medians; every run keeps its wall and CPU
    seconds (ours, each server) and the load average. OIM_BENCH_MYSQL_NATIVE=mydumper
    (or mariadb-dump) runs one native tool only."""
    from statistics import median

    import pymysql

    from fixtures import mysql_data

    db = MYSQL_DB
    natives = os.environ.get("OIM_BENCH_MYSQL_NATIVE", "mariadb-dump,mydumper").split(",")
    if "mydumper" in natives and not (shutil.which("mydumper") and shutil.which("myloader")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "mydumper"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    src = Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@"
                   f"{hostport(env['OIM_MYSQL_SRC_URL'])}/{db}", name="bench")
    sh, sp = hostport(env["OIM_MYSQL_SRC_URL"]).split(":")
    dh, dp = hostport(env["OIM_MYSQL_DST_URL"]).split(":")
    conns = {side: pymysql.connect(host=h, port=int(p), user="root", autocommit=True,
                                   password=env[f"OIM_MYSQL_{side}_PASSWORD"])
             for side, h, p in (("SRC", sh, sp), ("DST", dh, dp))}
    pid_files = {}
    for side, conn in conns.items():
        with conn.cursor() as cur:
            cur.execute("SELECT @@pid_file")
            pid_files[side.lower()] = str(cur.fetchone()[0])
    copies = (db, "native_copy", "native_myloader")

    def clean_target() -> None:
        with conns["DST"].cursor() as cur:
            for name in copies:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def copied(name: str) -> int:
        with conns["DST"].cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{name}`.chat_logs")
            return int(cur.fetchone()[0])

    clean_target()
    loaded = time.monotonic()
    mysql_data.message_rows(src, opts.rows, seed=1)
    load_s = time.monotonic() - loaded
    # passwords reach the clients through defaults files, never the command line
    cnf = {}
    for side in ("SRC", "DST"):
        path = work / f"{side.lower()}.cnf"
        path.write_text("".join(f"[{group}]\npassword={env[f'OIM_MYSQL_{side}_PASSWORD']}\n"
                                for group in ("client", "mydumper", "myloader")))
        path.chmod(0o600)
        cnf[side] = str(path)
    threads = 4
    chunk_rows = max(10_000, -(-opts.rows // threads))
    commands = {
        "mariadb-dump": (f"mariadb-dump --defaults-extra-file={cnf['SRC']} -h {sh} -P {sp}"
                         f" -u root --single-transaction --quick {db} chat_logs"
                         f" | mariadb --defaults-extra-file={cnf['DST']} -h {dh} -P {dp}"
                         " -u root native_copy"),
        "mydumper": ["mydumper", f"--defaults-file={cnf['SRC']}", "-h", sh, "-P", sp,
                     "-u", "root", "--threads", str(threads), "--rows", str(chunk_rows),
                     "-B", db, "-T", "chat_logs", "-o", str(work / "mydumper")],
        "myloader": ["myloader", f"--defaults-file={cnf['DST']}", "-h", dh, "-P", dp,
                     "-u", "root", "--threads", str(threads), "-d", str(work / "mydumper"),
                     "-s", db, "-B", "native_myloader", "-o"],
    }
    plan = work / "mysql.yaml"
    plan_args = ["--source", f"mysql=mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@{sh}:{sp}/{db}",
                 "--target", f"mysql=mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@{dh}:{dp}",
                 *EXTRA_PLAN_ARGS, "--parallel", str(opts.parallel)]
    cli = [sys.executable, "-m", "migrator"]
    runs = []
    for _ in range(max(1, getattr(opts, "repeat", 3) or 3)):
        run: dict[str, dict[str, float]] = {}
        if "mariadb-dump" in natives:
            with conns["DST"].cursor() as cur:
                cur.execute("CREATE DATABASE native_copy CHARACTER SET utf8mb4")
            run["mariadb_dump"] = _mysql_step(commands["mariadb-dump"], pid_files, shell=True)
            assert copied("native_copy") == opts.rows
        if "mydumper" in natives:
            shutil.rmtree(work / "mydumper", ignore_errors=True)
            with conns["DST"].cursor() as cur:
                cur.execute("CREATE DATABASE native_myloader CHARACTER SET utf8mb4")
            run["mydumper"] = _mysql_step(commands["mydumper"], pid_files)
            run["myloader"] = _mysql_step(commands["myloader"], pid_files)
            assert copied("native_myloader") == opts.rows
        for stale in (plan, plan.with_name(plan.stem + ".journal.sqlite")):
            stale.unlink(missing_ok=True)
        run["plan"] = _mysql_step([*cli, "plan", *plan_args, "-o", str(plan)], pid_files)
        run["copy"] = _mysql_step([*cli, "run", str(plan), "--no-verify", "--no-progress"],
                                  pid_files)
        run["verify"] = _mysql_step([*cli, "verify", str(plan)], pid_files)
        assert copied(db) == opts.rows
        clean_target()
        runs.append(run)
    with conns["SRC"].cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")

    def mid(step: str, field: str = "s") -> float:
        return round(median(r[step][field] for r in runs), 2)

    result: dict[str, Any] = {
        "store": "mysql", "rows": opts.rows, "load_s": round(load_s, 1), "repeat": len(runs),
        "plan_s": mid("plan"), "copy_s": mid("copy"), "verify_s": mid("verify"),
        "verify_fraction": round(median(r["verify"]["s"] / r["copy"]["s"] for r in runs), 3),
        "run_rss_mib": max(r["copy"]["rss_mib"] for r in runs),
        "verify_rss_mib": max(r["verify"]["rss_mib"] for r in runs),
        "cpu_s": {step: {field: mid(step, field) for field in ("cpu_s", "src_server_cpu_s",
                                                              "dst_server_cpu_s")}
                  for step in runs[0]},
        "units": len(_plan_units(plan)),
        "commands": {k: v if isinstance(v, str) else " ".join(v) for k, v in commands.items()
                     if k in natives or (k == "myloader" and "mydumper" in natives)},
        "load": [min(s["load"] for r in runs for s in r.values()),
                 max(s["load"] for r in runs for s in r.values())],
        "runs": runs,
    }
    if "mariadb-dump" in natives:
        result["native"] = "mariadb-dump --single-transaction --quick | mariadb"
        result["native_s"] = mid("mariadb_dump")
        result["speedup"] = round(median(r["mariadb_dump"]["s"] / r["copy"]["s"]
                                         for r in runs), 2)
    if "mydumper" in natives:
        result["mydumper_s"] = round(median(r["mydumper"]["s"] + r["myloader"]["s"]
                                            for r in runs), 2)
        result["speedup_vs_mydumper"] = round(median(
            (r["mydumper"]["s"] + r["myloader"]["s"]) / r["copy"]["s"] for r in runs), 2)
    return result


def _plan_units(plan: Path) -> list[Any]:
    import yaml

    return list((yaml.safe_load(plan.read_text()) or {}).get("inventory") or [])


# -------------------------------------------------------------------------------- redis
def bench_redis(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    import redis

    from fixtures import redis_data

    src = redis.Redis.from_url(env["OIM_REDIS_SRC_URL"], password=env["OIM_REDIS_SRC_PASSWORD"])
    dst = redis.Redis.from_url(env["OIM_REDIS_DST_URL"], password=env["OIM_REDIS_DST_PASSWORD"])
    src.flushall()
    dst.flushall()
    redis_data.mixed(Endpoint("redis", env["OIM_REDIS_SRC_URL"].replace(
        "redis://", "redis://:${OIM_REDIS_SRC_PASSWORD}@"), name="bench"), opts.keys, seed=1)
    total = src.dbsize()
    native_s, _ = measured([sys.executable, str(ROOT / "bench" / "migrate_loop.py")])
    assert dst.dbsize() == total, (dst.dbsize(), total)
    dst.flushall()
    result = ours(work / "redis.yaml",
                  ["--source", "redis=redis://:${OIM_REDIS_SRC_PASSWORD}@"
                   + hostport(env["OIM_REDIS_SRC_URL"]) + "/0",
                   "--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
                   + hostport(env["OIM_REDIS_DST_URL"]) + "/0"], opts.parallel)
    assert dst.dbsize() == total
    src.flushall()
    dst.flushall()
    return {"store": "redis", "keys": total, "native": "SCAN + MIGRATE COPY REPLACE KEYS loop",
            "native_s": round(native_s, 2), **result,
            "throughput_ratio": round(native_s / result["copy_s"], 2)}


# -------------------------------------------------------------------------------- mongo
def mongo_tool_args(url: str, work: Path, side: str) -> list[str]:
    """``--uri`` without the password plus ``--config`` holding it (not on the command line).

    Test URLs carry ``user:${OIM_MONGO_*_PASSWORD}@`` (DocumentDB) or no user (FerretDB)."""
    from urllib.parse import quote, urlsplit

    from migrator.config import resolve_refs

    parts = urlsplit(url)
    if parts.password is None:
        return [f"--uri={url}"]
    config = work / f"mongo-{side}.yaml"
    config.write_text(json.dumps({"password": resolve_refs(parts.password, side)}) + "\n")
    config.chmod(0o600)
    bare = url.replace(f":{parts.password}@", "@", 1)
    return [f"--uri={bare}", f"--config={config}",
            f"--authenticationDatabase={quote('admin')}"]


def bench_mongo(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    import shlex

    import pymongo

    from fixtures import mongo_data
    from migrator.config import resolve_refs

    dump, restore = BIN / "mongodump", BIN / "mongorestore"
    if not (dump.exists() and restore.exists()):
        subprocess.run(["bash", str(ROOT / "scripts" / "build-mongo-tools.sh")], check=True)
    src = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_SRC_URL"], "bench"))
    dst = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_DST_URL"], "bench"))
    for name in ("openim_v3", "native_copy"):
        src.drop_database(name)
        dst.drop_database(name)
    counts = mongo_data.load(Endpoint("mongo", env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                                      name="bench"), seed=1, scale=opts.scale)
    flavour = env.get("OIM_MONGO_FLAVOR", "ferretdb")
    dump_args = " ".join(map(shlex.quote, mongo_tool_args(env["OIM_MONGO_SRC_URL"], work, "src")))
    restore_args = " ".join(map(shlex.quote,
                                mongo_tool_args(env["OIM_MONGO_DST_URL"], work, "dst")))
    native = (f"{dump} {dump_args} --db=openim_v3 --archive --quiet | "
              f"{restore} {restore_args} --archive --quiet "
              "--nsFrom='openim_v3.*' --nsTo='native_copy.*'")
    if flavour == "ferretdb":
        # FerretDB refuses mongorestore's index specs ("ns" is unknown); ours builds them.
        native += " --noIndexRestore"
    native_s, _ = measured(native, shell=True)
    native_indexes = sum(len(list(dst["native_copy"][c].list_indexes()))
                         for c in dst["native_copy"].list_collection_names())
    result = ours(work / "mongo.yaml",
                  ["--source", "mongo=" + env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                   "--target", "mongo=" + env["OIM_MONGO_DST_URL"]], opts.parallel)
    copied = sum(dst["openim_v3"][c].estimated_document_count()
                 for c in dst["openim_v3"].list_collection_names())
    our_indexes = sum(len(list(dst["openim_v3"][c].list_indexes()))
                      for c in dst["openim_v3"].list_collection_names())
    for name in ("openim_v3", "native_copy"):
        src.drop_database(name)
        dst.drop_database(name)
    return {"store": "mongo", "documents": sum(counts.values()), "copied": copied,
            "server": flavour, "indexes": {"ours": our_indexes, "native": native_indexes},
            "native": "mongodump --archive | mongorestore --archive"
                      + (" --noIndexRestore" if "noIndexRestore" in native else ""),
            "native_s": round(native_s, 2), **result,
            "speedup": round(native_s / result["copy_s"], 2)}


# ------------------------------------------------------------------------------ objects
def _timed_cpu(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and the 1-minute load average around one
    command: the machine is shared, so every figure carries the load it was taken under."""
    load = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"command failed: {cmd}\n{err[-3000:]}")
    return {"s": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rss_mib": round(usage.ru_maxrss / 1024),
            "load": round(max(load, os.getloadavg()[0]), 1)}


def bench_objects(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """rclone and ours, interleaved, ``repeat`` times (3 unless --repeat says otherwise) on
    the same loaded source; medians, and every run with its CPU seconds and load."""
    from statistics import median

    from minio import Minio
    from minio.deleteobjects import DeleteObject

    def client(side: str) -> Minio:
        return Minio(hostport(env[f"OIM_S3_{side}_URL"]), secure=False,
                     access_key=env[f"OIM_S3_{side}_ACCESS_KEY"],
                     secret_key=env[f"OIM_S3_{side}_SECRET_KEY"])

    def empty(side: str, bucket: str) -> None:
        c = client(side)
        if not c.bucket_exists(bucket):
            return
        names = [DeleteObject(o.object_name) for o in c.list_objects(bucket, recursive=True)]
        for error in c.remove_objects(bucket, names):
            raise SystemExit(f"cleanup failed: {error}")
        c.remove_bucket(bucket)

    # Loaded by a child process: a child's peak RSS (wait4) starts at the parent's RSS at
    # fork, so a parent that held the fixture's buffers would inflate every figure below.
    loader = ("import json, sys; from fixtures import objects_data; "
              "from migrator.config import Endpoint; "
              "ep = Endpoint('objects', sys.argv[1] + '/openim', name='bench', options={"
              "'access_key': '${OIM_S3_SRC_ACCESS_KEY}', "
              "'secret_key': '${OIM_S3_SRC_SECRET_KEY}'}); "
              "print(json.dumps(objects_data.load(ep, seed=1, scale=float(sys.argv[2]), "
              "large=int(sys.argv[3]))))")
    counts = json.loads(subprocess.run(
        [sys.executable, "-c", loader, env["OIM_S3_SRC_URL"], str(opts.small / 2000),
         str(opts.large)], cwd=ROOT, check=True, capture_output=True, text=True).stdout)
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
    check_mode = "--download" if opts.download_check else "--one-way"
    plan_args = ["--source", "objects=" + env["OIM_S3_SRC_URL"] + "/openim",
                 "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
                 "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
                 "--target", "objects=" + env["OIM_S3_DST_URL"] + "/openim",
                 "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
                 "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}",
                 *EXTRA_PLAN_ARGS, "--parallel", str(opts.parallel)]
    cli = [sys.executable, "-m", "migrator"]
    runs = []
    for _ in range(max(1, getattr(opts, "repeat", 3) or 3)):
        run: dict[str, dict[str, float]] = {}
        run["rclone_copy"] = _timed_cpu(["rclone", "copy", "src:openim", "dst:rclone-copy",
                                         "--transfers", str(opts.parallel), "--checkers", "8"],
                                        rclone_env)
        run["rclone_check"] = _timed_cpu(["rclone", "check", "src:openim", "dst:rclone-copy",
                                          "--checkers", "8", check_mode], rclone_env)
        plan = work / "objects.yaml"
        for stale in (plan, plan.with_name(plan.stem + ".journal.sqlite")):
            stale.unlink(missing_ok=True)
        run["plan"] = _timed_cpu([*cli, "plan", *plan_args, "-o", str(plan)])
        run["copy"] = _timed_cpu([*cli, "run", str(plan), "--no-verify", "--no-progress"])
        run["verify"] = _timed_cpu([*cli, "verify", str(plan)])
        copied = sum(1 for _ in client("DST").list_objects("openim", recursive=True))
        assert copied == counts["objects"], (copied, counts["objects"])
        empty("DST", "openim")
        empty("DST", "rclone-copy")
        runs.append(run)
    empty("SRC", "openim")

    def mid(step: str, field: str = "s") -> float:
        return round(median(r[step][field] for r in runs), 2)

    return {"store": "objects", "objects": counts["objects"], "bytes": counts["bytes"],
            "large": opts.large, "repeat": len(runs),
            "native": "rclone copy + rclone check "
                      + ("--download" if opts.download_check else "(size + md5)"),
            "native_s": mid("rclone_copy"), "native_check_s": mid("rclone_check"),
            "plan_s": mid("plan"), "copy_s": mid("copy"), "verify_s": mid("verify"),
            "copy_speedup": round(median(r["rclone_copy"]["s"] / r["copy"]["s"] for r in runs), 2),
            "check_speedup": round(median(r["rclone_check"]["s"] / r["verify"]["s"]
                                          for r in runs), 2),
            "copy_cpu_s": {"ours": mid("copy", "cpu_s"), "rclone": mid("rclone_copy", "cpu_s")},
            "run_rss_mib": max(r["copy"]["rss_mib"] for r in runs),
            "load": [min(r[k]["load"] for r in runs for k in r),
                     max(r[k]["load"] for r in runs for k in r)],
            "runs": runs}


BENCHES: dict[str, tuple[str, Callable]] = {
    "mysql": ("mysql", bench_mysql), "redis": ("redis", bench_redis),
    "mongo": ("mongo", bench_mongo), "objects": ("minio", bench_objects),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", choices=sorted(BENCHES))
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=0)
    parser.add_argument("--download-check", action="store_true",
                        help="objects: make rclone check hash by downloading, like our verify")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--plan-arg", action="append", default=[],
                        help="extra `openim-migrate plan` argument, "
                        "e.g. --plan-arg=--unit-records=50000")
    opts = parser.parse_args()
    EXTRA_PLAN_ARGS.extend(opts.plan_arg)
    group, bench = BENCHES[opts.store]
    work = Path(tempfile.mkdtemp(prefix="oim-bench-"))
    started_here = f"OIM_{'S3' if group == 'minio' else group.upper()}_SRC_URL" not in os.environ
    env = dict(os.environ)
    try:
        if started_here:
            env.update(services.start(work / "services", only=[group]))
            os.environ.update(env)
        result = bench(env, opts, work)
    finally:
        if started_here:
            services.stop(work / "services")
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
