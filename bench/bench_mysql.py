#!/usr/bin/env python3
"""MySQL copy benchmark: ``mariadb-dump | mariadb`` against our export → import.

    python bench/bench_mysql.py --rows 200000 [--parallel 4] [--method load|insert]

Uses the servers named by OIM_MYSQL_* if set, otherwise starts its own with
scripts/services.py (and stops them). Loads a chat_logs-shaped table, then times:
  * dump:  mariadb-dump --single-transaction --quick DB chat_logs | mariadb DUMPDB
  * ours:  list_units, prepare_target, every unit exported and imported (threads),
           finalize_target; run in a child process so its peak RSS is ours alone
  * digest: chunks + digest on source and target, as a fraction of our copy time
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures import mysql_data  # noqa: E402
from migrator.config import Endpoint  # noqa: E402
from migrator.stores.base import StoreOptions  # noqa: E402
from migrator.stores.mysql.store import MySQLStore  # noqa: E402

SRC_DB, OURS_DB, DUMP_DB = "openIM_bench", "openIM_bench_ours", "openIM_bench_dump"


def endpoints() -> tuple[Endpoint, Endpoint]:
    src = os.environ["OIM_MYSQL_SRC_URL"].split("://", 1)[1]
    dst = os.environ["OIM_MYSQL_DST_URL"].split("://", 1)[1]
    return (Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@{src}/{SRC_DB}",
                     name="source.mysql"),
            Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@{dst}",
                     name="target.mysql", options={"db_map": {SRC_DB: OURS_DB}}))


def run_ours(parallel: int, method: str, unit_records: int) -> dict[str, float]:
    """The copy through the store API, as the engine drives it (child process)."""
    src_ep, dst_ep = endpoints()
    source = MySQLStore(src_ep, options=StoreOptions(unit_records=unit_records))
    target = MySQLStore(dst_ep, options=StoreOptions())
    source.open()
    target.open()
    if method == "insert":
        target.refuse_local_infile("forced by --method insert")
    with target._session() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {OURS_DB}")
    started = time.monotonic()
    units = source.list_units()
    planned = time.monotonic()
    target.prepare_target(units, source)

    def one(unit):  # noqa: ANN001, ANN202 - local helper
        importer = target.importer(unit)
        importer.prepare(resumed=False)
        for batch in source.export(unit):
            importer.write_batch(batch)
        importer.finalize()

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, units))
    target.finalize_target(units, source)
    copied = time.monotonic()
    all_chunks = {u.name: source.chunks(u) for u in units}
    chunked = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        src_d = list(pool.map(lambda u: source.digest(u, all_chunks[u.name]), units))
    src_done = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        dst_d = list(pool.map(lambda u: target.digest(u, all_chunks[u.name]), units))
    done = time.monotonic()
    if src_d != dst_d:
        raise SystemExit("digests differ after the copy")
    return {"units": len(units), "plan_s": planned - started, "copy_s": copied - planned,
            "chunks_s": chunked - copied, "digest_source_s": src_done - chunked,
            "digest_target_s": done - src_done,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_dump() -> float:
    src_ep, dst_ep = endpoints()
    src, dst = src_ep.connection(), dst_ep.connection()
    client = shutil.which("mariadb") or "mysql"
    dump = shutil.which("mariadb-dump") or "mysqldump"
    subprocess.run([client, "-h", dst.host, "-P", str(dst.port), "-u", "root", "-e",
                    f"DROP DATABASE IF EXISTS {DUMP_DB}; CREATE DATABASE {DUMP_DB}"],
                   check=True, env={**os.environ, "MYSQL_PWD": dst.password or ""})
    started = time.monotonic()
    producer = subprocess.Popen(
        [dump, "-h", src.host, "-P", str(src.port), "-u", "root", "--single-transaction",
         "--quick", SRC_DB, "chat_logs"], stdout=subprocess.PIPE,
        env={**os.environ, "MYSQL_PWD": src.password or ""})
    consumer = subprocess.run([client, "-h", dst.host, "-P", str(dst.port), "-u", "root",
                               DUMP_DB], stdin=producer.stdout,
                              env={**os.environ, "MYSQL_PWD": dst.password or ""})
    producer.stdout.close()
    if producer.wait() or consumer.returncode:
        raise SystemExit("mariadb-dump | mariadb failed")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--method", choices=["load", "insert"], default="load")
    parser.add_argument("--unit-records", type=int, default=StoreOptions().split_records,
                        help="rows per unit (the table is split into this many per unit)")
    parser.add_argument("--skip-load", action="store_true", help="reuse the loaded table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_ours(args.parallel, args.method, args.unit_records)))
        return
    services_dir = None
    if "OIM_MYSQL_SRC_URL" not in os.environ:
        services_dir = tempfile.mkdtemp(prefix="oim-bench-mysql-")
        subprocess.run([sys.executable, str(ROOT / "scripts/services.py"), "start", "--dir",
                        services_dir, "--only", "mysql"], check=True, stdout=subprocess.DEVNULL)
        env = subprocess.run([sys.executable, str(ROOT / "scripts/services.py"), "env",
                              "--dir", services_dir], check=True, capture_output=True,
                             text=True).stdout
        for line in env.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                os.environ[key] = value.strip("'\"")
    try:
        if not args.skip_load:
            started = time.monotonic()
            mysql_data.message_rows(endpoints()[0], args.rows)
            print(f"loaded {args.rows} rows in {time.monotonic() - started:.1f}s")
        dump_s = run_dump()
        child = subprocess.run([sys.executable, __file__, "--child", "--parallel",
                                str(args.parallel), "--method", args.method,
                                "--unit-records", str(args.unit_records)],
                               check=True, capture_output=True, text=True)
        ours = json.loads(child.stdout.strip().splitlines()[-1])
        digest_s = ours["chunks_s"] + ours["digest_source_s"] + ours["digest_target_s"]
        print(f"rows {args.rows}, {ours['units']} units, parallel {args.parallel},"
              f" import {args.method}")
        print(f"mariadb-dump | mariadb : {dump_s:7.2f}s  ({args.rows / dump_s:,.0f} rows/s)")
        print(f"ours (export→import)   : {ours['copy_s']:7.2f}s  "
              f"({args.rows / ours['copy_s']:,.0f} rows/s)  plan {ours['plan_s']:.2f}s")
        print(f"ratio ours/dump        : {ours['copy_s'] / dump_s:7.2f}")
        print(f"our peak RSS           : {ours['peak_rss_mb']:7.1f} MB")
        print(f"verify (chunks {ours['chunks_s']:.2f}s + source {ours['digest_source_s']:.2f}s"
              f" + target {ours['digest_target_s']:.2f}s) = {digest_s:.2f}s"
              f" = {digest_s / ours['copy_s']:.2f} x copy time")
    finally:
        if services_dir:
            subprocess.run([sys.executable, str(ROOT / "scripts/services.py"), "stop", "--dir",
                            services_dir], check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
