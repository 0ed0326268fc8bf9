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
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import catchup  # noqa: E402
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

    result: dict[str, Any] = {"rows": args.rows, "changed": args.changed}
    if not args.skip_load:
        started = time.monotonic()
        mysql_data.message_rows(Endpoint("mysql", source_url(), name="bench"), args.rows)
        result["load_s"] = round(time.monotonic() - started, 2)
    target = connect("DST")
    with target.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {TARGET_DB}")
    target.close()
    catchup.copy_then_cutover_way(
        ["--source", f"mysql={source_url()}", "--target", f"mysql={target_url()}"],
        lambda: change(args.changed, seed=7), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
