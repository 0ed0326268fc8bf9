"""Redis catch-up cost: bulk copy, then `sync` passes and `verify` after a few changes.

    python scripts/services.py start --dir /tmp/bench-svc --only redis
    . /tmp/bench-svc/env.sh
    python bench/bench_sync_redis.py --keys 200000 --changed 0.01

Everything runs through the real command line, as an operator would: ``plan``, ``run
--no-verify`` (the bulk copy), then a share of the source's keys is changed (values
rewritten, keys deleted, keys added, expiries changed, spread over the whole key space)
and ``sync`` is timed (the pass that copies those changes), then ``sync`` again (a pass
with nothing to do: digests only) and ``verify``. With ``--follow``, what ``cutover``
does instead: a full pass while the source names its changes (CLIENT TRACKING), the
changes, then a pass over only the keys it named and the verify of those. The goal of
the cutover design is a pass at most 15 % of the copy and freeze → final sync → verify
at most 25 % of it.
Prints one JSON object: per step wall seconds, our CPU seconds and the Redis servers' CPU
seconds (the machine may be shared: CPU seconds move less with its load), and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import catchup  # noqa: E402
import redis  # noqa: E402

from fixtures import redis_data  # noqa: E402
from migrator.config import Endpoint  # noqa: E402


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def server_cpu(servers: list[redis.Redis]) -> float:
    """CPU seconds the Redis servers have used so far (INFO cpu)."""
    total = 0.0
    for server in servers:
        cpu = server.info("cpu")
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


def cli(*args: str, servers: list[redis.Redis] | None = None,
        figures: dict[str, Any] | None = None, name: str = "") -> tuple[float, dict[str, Any]]:
    """Run one command; (wall seconds, its JSON report). With ``figures``, also records
    ``name``'s wall seconds, our CPU seconds and the servers' CPU seconds there: the
    machine may be shared, and CPU seconds move less with its load than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers_before = server_cpu(servers or [])
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    took = time.monotonic() - started
    if out.returncode != 0 or not out.stdout:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    if figures is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures[f"{name}_s"] = took
        figures[f"{name}_cpu_s"] = round(after.ru_utime + after.ru_stime
                                         - before.ru_utime - before.ru_stime, 2)
        figures[f"{name}_server_cpu_s"] = round(server_cpu(servers or []) - servers_before, 2)
    return took, json.loads(out.stdout)


def change(client: redis.Redis, share: float, seed: int) -> dict[str, int]:
    """Touch ``share`` of the keys, picked uniformly: 60 % values rewritten, 15 % deleted,
    15 % expiries changed, plus as many new keys as 10 % of the share."""
    rng = random.Random(seed)
    keys = [k for k in client.scan_iter(count=1000)]
    picked = rng.sample(keys, max(1, int(len(keys) * share)))
    done = {"rewritten": 0, "deleted": 0, "ttl": 0, "added": 0}
    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(picked):
        roll = rng.random()
        if roll < 0.15:
            pipe.delete(key)
            done["deleted"] += 1
        elif roll < 0.30:
            pipe.pexpire(key, rng.randint(1, 30) * redis_data.DAY_MS)
            done["ttl"] += 1
        elif roll < 0.40:
            pipe.set(f"bench:new:{i}", rng.randbytes(64))
            done["added"] += 1
        else:
            pipe.delete(key)
            pipe.set(key, rng.randbytes(rng.randint(16, 512)))
            done["rewritten"] += 1
    pipe.execute()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of keys changed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--follow", action="store_true",
                        help="the cutover's way: a full pass while following the source "
                        "(CLIENT TRACKING), then the changes, then a followed pass and the "
                        "verify of what it compared (in this process, timed the same way)")
    args = parser.parse_args()
    for var in ("OIM_REDIS_SRC_URL", "OIM_REDIS_DST_URL"):
        if var not in os.environ:
            sys.exit(f"{var} is not set: start servers with scripts/services.py and source "
                     "its env.sh")
    src_url, dst_url = os.environ["OIM_REDIS_SRC_URL"], os.environ["OIM_REDIS_DST_URL"]
    source = Endpoint("redis", f"redis://:${{OIM_REDIS_SRC_PASSWORD}}@{hostport(src_url)}/0",
                      name="bench")
    src = redis.Redis.from_url(src_url, password=os.environ["OIM_REDIS_SRC_PASSWORD"])
    dst = redis.Redis.from_url(dst_url, password=os.environ["OIM_REDIS_DST_PASSWORD"])
    src.flushall()
    dst.flushall()
    redis_data.mixed(source, args.keys, seed=args.seed)
    result: dict[str, Any] = {"keys": src.dbsize(), "changed_share": args.changed}
    plan_args = ["--source", f"redis=redis://:${{OIM_REDIS_SRC_PASSWORD}}@{hostport(src_url)}/0",
                 "--target", f"redis=redis://:${{OIM_REDIS_DST_PASSWORD}}@{hostport(dst_url)}/0"]
    if args.follow:
        catchup.copy_then_cutover_way(
            plan_args, lambda: change(src, args.changed, args.seed + 1), result,
            parallel=args.parallel)
        src.flushall()
        dst.flushall()
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as work:
        plan = str(Path(work) / "plan.yaml")
        cli("plan", *plan_args, "-o", plan, "--json")
        par = ["--parallel", str(args.parallel)]
        timed = {"servers": [src, dst], "figures": result}
        cli("run", plan, "--no-verify", "--json", *par, name="copy", **timed)
        result["changes"] = change(src, args.changed, args.seed + 1)
        _, report = cli("sync", plan, "--json", *par, name="sync", **timed)
        units = [u for p in report["passes"] for u in p["units"]]
        result["sync_copied"] = sum(u["copied"] for u in units)
        result["sync_deleted"] = sum(u["deleted"] for u in units)
        _, report = cli("sync", plan, "--json", *par, name="sync_idle", **timed)
        result["sync_idle_changed"] = sum(p["changed"] for p in report["passes"])
        _, report = cli("verify", plan, "--json", *par, name="verify", **timed)
        result["verify_ok"] = report["ok"]
    assert src.dbsize() == dst.dbsize(), (src.dbsize(), dst.dbsize())
    copy = result["copy_s"]
    result["sync_ratio"] = round(result["sync_s"] / copy, 3)
    # The freeze window: the final sync (here: the pass with changes) plus the verify.
    result["freeze_ratio"] = round((result["sync_s"] + result["verify_s"]) / copy, 3)
    for name in ("copy_s", "sync_s", "sync_idle_s", "verify_s"):
        result[name] = round(result[name], 2)
    # The same ratios in CPU seconds (ours + the servers'), which the load moves less.
    cpu = {n: result[f"{n}_cpu_s"] + result[f"{n}_server_cpu_s"]
           for n in ("copy", "sync", "sync_idle", "verify")}
    result["sync_cpu_ratio"] = round(cpu["sync"] / cpu["copy"], 3)
    result["freeze_cpu_ratio"] = round((cpu["sync"] + cpu["verify"]) / cpu["copy"], 3)
    result["load"] = round(os.getloadavg()[0], 1)
    src.flushall()
    dst.flushall()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
