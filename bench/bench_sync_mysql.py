#!/usr/bin/env python3
"""MySQL catch-up cost while following the binlog: what a cutover's final pass costs.

    python scripts/services.py start --dir /tmp/bench-svc --only mysql
    . /tmp/bench-svc/env.sh
    python bench/bench_sync_mysql.py --rows 1000000 --changed 0.01

A chat_logs-shaped table of ``--rows`` rows (``fixtures.mysql_data.message_rows``) is
planned and copied with ``run --no-verify`` (the bulk copy, timed). Then, in one process,
as ``cutover`` does: a full sync pass while the source's binlog is followed, a share of
the rows changed (updates, deletes and inserts spread over the whole key range), the
followed pass over only the rows the binlog named, and the verify of those
(``verify_plan`` with what the passes proved). Prints one JSON object with the seconds and
the ratios to the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402

from fixtures import mysql_data  # noqa: E402
from migrator.config import Endpoint  # noqa: E402

DB, TARGET_DB = "openIM_bench_sync", "openIM_bench_sync"


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def source_url() -> str:
    return (f"mysql://${{OIM_MYSQL_SRC_USER}}:${{OIM_MYSQL_SRC_PASSWORD}}@"
            f"{hostport(os.environ['OIM_MYSQL_SRC_URL'])}/{DB}")


def target_url() -> str:
    return (f"mysql://${{OIM_MYSQL_DST_USER}}:${{OIM_MYSQL_DST_PASSWORD}}@"
            f"{hostport(os.environ['OIM_MYSQL_DST_URL'])}")


def connect(side: str) -> Any:
    host, port = hostport(os.environ[f"OIM_MYSQL_{side}_URL"]).split(":")
    return pymysql.connect(host=host, port=int(port), user=os.environ[f"OIM_MYSQL_{side}_USER"],
                           password=os.environ[f"OIM_MYSQL_{side}_PASSWORD"], autocommit=True)


def cli(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def change(share: float, seed: int) -> dict[str, int]:
    """Update, delete and insert ``share`` of the rows in about equal parts, spread over
    the key range (every k-th key), in transactions of 1,000 rows."""
    conn = connect("SRC")
    rng = random.Random(seed)
    with conn.cursor() as cur:
        cur.execute(f"SELECT server_msg_id FROM {DB}.chat_logs")
        keys = [r[0] for r in cur.fetchall()]
        picked = rng.sample(keys, int(len(keys) * share))
        third = len(picked) // 3
        updates, deletes = picked[:third], picked[third:2 * third]
        inserts = len(picked) - 2 * third
        for i in range(0, len(updates), 1000):
            part = updates[i:i + 1000]
            cur.execute(f"UPDATE {DB}.chat_logs SET status = status + 1, content = CONCAT("
                        "content, ' (edited)') WHERE server_msg_id IN"
                        f" ({', '.join(['%s'] * len(part))})", part)
        for i in range(0, len(deletes), 1000):
            part = deletes[i:i + 1000]
            cur.execute(f"DELETE FROM {DB}.chat_logs WHERE server_msg_id IN"
                        f" ({', '.join(['%s'] * len(part))})", part)
        for i in range(0, inserts, 1000):
            rows = [(f"late-{rng.randrange(10**12):012d}-{i + j}", '{"content": "late"}')
                    for j in range(min(1000, inserts - i))]
            cur.executemany(f"INSERT INTO {DB}.chat_logs (server_msg_id, content, send_time)"
                            " VALUES (%s, %s, NOW(3))", rows)
    conn.close()
    return {"updated": len(updates), "deleted": len(deletes), "inserted": inserts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--skip-load", action="store_true", help="reuse the loaded table")
    args = parser.parse_args()

    from migrator.engine import operations
    from migrator.plan import load_plan

    result: dict[str, Any] = {"rows": args.rows, "changed": args.changed}
    if not args.skip_load:
        started = time.monotonic()
        mysql_data.message_rows(Endpoint("mysql", source_url(), name="bench"), args.rows)
        result["load_s"] = round(time.monotonic() - started, 2)
    target = connect("DST")
    with target.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {TARGET_DB}")
    target.close()
    workdir = Path(tempfile.mkdtemp(prefix="oim-bench-sync-mysql-"))
    plan_path = workdir / "plan.yaml"
    cli("plan", "--source", f"mysql={source_url()}", "--target", f"mysql={target_url()}",
        "-o", str(plan_path))
    result["copy_s"] = cli("run", str(plan_path), "--no-verify")
    plan = load_plan(plan_path)
    result["units"] = len(plan.inventory)
    with operations.catching_up(plan, plan_path, follow=True) as catch:
        result["method"] = catch.methods
        started = time.monotonic()
        full = catch.run_pass()
        result["full_pass_s"] = time.monotonic() - started
        result["full_pass_changed"] = full.changed
        started = time.monotonic()
        result["changes"] = change(args.changed, seed=7)
        result["change_s"] = time.monotonic() - started
        started = time.monotonic()
        last = catch.run_pass()
        result["followed_pass_s"] = time.monotonic() - started
        result["followed"] = sum(u.followed or 0 for u in last.units)
        result["followed_copied"] = sum(u.copied for u in last.units)
        result["followed_deleted"] = sum(u.deleted for u in last.units)
        result["notes"] = catch.notes
    proven = {u.unit: u.proven for u in last.units if u.proven is not None}
    started = time.monotonic()
    report = operations.verify_plan(plan, plan_path, proven=proven)
    result["verify_s"] = time.monotonic() - started
    result["verify_ok"] = report.ok
    copy = result["copy_s"]
    result["followed_pass_over_copy"] = result["followed_pass_s"] / copy
    result["followed_pass_and_verify_over_copy"] = (result["followed_pass_s"]
                                                    + result["verify_s"]) / copy
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
