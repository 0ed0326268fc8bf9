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
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import catchup  # noqa: E402
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
    empty("SRC")
    empty("DST")
    source = Endpoint("objects", f"{os.environ['OIM_S3_SRC_URL']}/{BUCKET}", name="bench",
                      options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                               "secret_key": "${OIM_S3_SRC_SECRET_KEY}"})
    counts = objects_data.load(source, seed=args.seed, scale=args.small / 2000)
    result: dict[str, Any] = {"objects": counts["objects"], "bytes": counts["bytes"],
                              "changed_share": args.changed}
    catchup.copy_then_cutover_way([*endpoint_args("SRC"), *endpoint_args("DST")],
                                  lambda: change(args.changed, args.seed + 1), result)
    empty("SRC")
    empty("DST")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
