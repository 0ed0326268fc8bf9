"""Object storage catch-up cost with MinIO's change stream: the bulk copy, then in one
process what `cutover` does: a full pass while following the source (ListenBucketNotification),
a share of the objects changed, the pass over only the objects the stream named, and the
verify of what that pass compared.

    python scripts/services.py start --dir /tmp/bench-svc --only minio
    . /tmp/bench-svc/env.sh
    python bench/bench_sync_objects.py --small 10000 --changed 0.01

The source is the OpenIM fixture (``fixtures/objects_data``, ``--small`` objects as
``bench/compare.py objects`` loads them) in bucket ``openim``. Of the changed share: 60 %
overwritten with other bytes, 15 % given other metadata only (same bytes), 15 % deleted,
plus new objects as many as 10 % of it. Prints one JSON object: wall and our CPU seconds
per step, the ratios to the copy, and the load (the machine may be shared).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minio import Minio  # noqa: E402
from minio.commonconfig import REPLACE, CopySource  # noqa: E402
from minio.deleteobjects import DeleteObject  # noqa: E402

from fixtures import objects_data  # noqa: E402
from migrator.config import Endpoint  # noqa: E402

BUCKET = "openim"


def client(side: str) -> Minio:
    return Minio(os.environ[f"OIM_S3_{side}_URL"].split("//", 1)[1], secure=False,
                 access_key=os.environ[f"OIM_S3_{side}_ACCESS_KEY"],
                 secret_key=os.environ[f"OIM_S3_{side}_SECRET_KEY"])


def empty(side: str) -> None:
    c = client(side)
    if c.bucket_exists(BUCKET):
        doomed = (DeleteObject(o.object_name) for o in c.list_objects(BUCKET, recursive=True))
        for error in c.remove_objects(BUCKET, doomed):
            raise SystemExit(f"cleanup failed: {error}")
        c.remove_bucket(BUCKET)


def endpoint_args(side: str) -> list[str]:
    role = {"SRC": "source", "DST": "target"}[side]
    return [f"--{role}", f"objects={os.environ[f'OIM_S3_{side}_URL']}/{BUCKET}",
            f"--{role}-option", f"objects.access_key=${{OIM_S3_{side}_ACCESS_KEY}}",
            f"--{role}-option", f"objects.secret_key=${{OIM_S3_{side}_SECRET_KEY}}"]


def cli(*args: str) -> tuple[float, float]:
    """Run one command; (wall seconds, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    took = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def timed(name: str, fn: Any, figures: dict[str, Any]) -> Any:
    """``fn()`` in this process, with its wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    out = fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures[f"{name}_s"] = round(time.monotonic() - started, 3)
    figures[f"{name}_cpu_s"] = round(after.ru_utime + after.ru_stime
                                     - before.ru_utime - before.ru_stime, 2)
    return out


def change(share: float, seed: int) -> dict[str, int]:
    """Change ``share`` of the source's objects, picked uniformly (see the docstring)."""
    c, rng = client("SRC"), random.Random(seed)
    keys = [o.object_name for o in c.list_objects(BUCKET, recursive=True)]
    picked = rng.sample(keys, max(1, int(len(keys) * share)))
    done = {"rewritten": 0, "metadata": 0, "deleted": 0, "added": 0}
    jobs = []
    for i, key in enumerate(picked):
        roll = rng.random()
        if roll < 0.15:
            jobs.append(lambda key=key: c.remove_object(BUCKET, key))
            done["deleted"] += 1
        elif roll < 0.30:
            jobs.append(lambda key=key: c.copy_object(
                BUCKET, key, CopySource(BUCKET, key), metadata_directive=REPLACE,
                metadata={"Content-Type": "image/webp", "x-amz-meta-bench": "1"}))
            done["metadata"] += 1
        else:
            data = rng.randbytes(rng.randrange(1, 32_768))
            jobs.append(lambda key=key, data=data: c.put_object(
                BUCKET, key, io.BytesIO(data), len(data), content_type="image/jpeg"))
            done["rewritten"] += 1
        if roll >= 0.9:
            new, data = f"openim/data/hash/bench-new-{i}", rng.randbytes(4096)
            jobs.append(lambda new=new, data=data: c.put_object(
                BUCKET, new, io.BytesIO(data), len(data), content_type="image/png"))
            done["added"] += 1
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="fixture objects")
    parser.add_argument("--changed", type=float, default=0.01, help="share changed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for var in ("OIM_S3_SRC_URL", "OIM_S3_DST_URL"):
        if var not in os.environ:
            sys.exit(f"{var} is not set: start servers with scripts/services.py and source "
                     "its env.sh")
    from migrator.engine import operations
    from migrator.plan import load_plan

    empty("SRC")
    empty("DST")
    source = Endpoint("objects", f"{os.environ['OIM_S3_SRC_URL']}/{BUCKET}", name="bench",
                      options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                               "secret_key": "${OIM_S3_SRC_SECRET_KEY}"})
    counts = objects_data.load(source, seed=args.seed, scale=args.small / 2000)
    result: dict[str, Any] = {"objects": counts["objects"], "bytes": counts["bytes"],
                              "changed_share": args.changed}
    with tempfile.TemporaryDirectory() as work:
        plan_path = Path(work) / "plan.yaml"
        cli("plan", *endpoint_args("SRC"), *endpoint_args("DST"), "-o", str(plan_path))
        copy_s, copy_cpu = cli("run", str(plan_path), "--no-verify", "--json")
        result["copy_s"], result["copy_cpu_s"] = round(copy_s, 2), round(copy_cpu, 2)
        plan = load_plan(plan_path)
        with operations.catching_up(plan, plan_path, follow=True) as catch:
            result["method"] = catch.methods
            full = timed("full_pass", catch.run_pass, result)
            result["full_pass_changed"] = full.changed
            result["changes"] = change(args.changed, args.seed + 1)
            last = timed("followed_pass", catch.run_pass, result)
            result["notes"] = catch.notes
        result["followed_keys"] = sum(u.followed or 0 for u in last.units)
        result["followed_copied"] = sum(u.copied for u in last.units)
        result["followed_deleted"] = sum(u.deleted for u in last.units)
        proven = {u.unit: u.proven for u in last.units if u.proven}
        report = timed("verify", lambda: operations.verify_plan(plan, plan_path,
                                                                proven=proven), result)
        result["verify_ok"] = report.ok
        result["verify_rechecked_records"] = sum(u.rechecked_records for u in report.units)
    for name in ("full_pass", "followed_pass", "verify"):
        result[f"{name}_ratio"] = round(result[f"{name}_s"] / copy_s, 4)
    result["freeze_ratio"] = round((result["followed_pass_s"] + result["verify_s"]) / copy_s, 4)
    result["load"] = round(os.getloadavg()[0], 1)
    empty("SRC")
    empty("DST")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
