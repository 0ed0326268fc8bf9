#!/usr/bin/env python3
"""MongoDB catch-up cost: what a cutover's final pass and verify cost after a bulk copy.

    python scripts/services.py start --dir /tmp/bench-svc --only mongo
    . /tmp/bench-svc/env.sh
    python bench/bench_sync_mongo.py --scale 3 --changed 0.01

The OpenIM fixture at ``--scale`` is planned and copied with ``run --no-verify`` (the bulk
copy, timed). Then, in one process, as ``cutover`` does: the source is followed where it
has change streams (a replica set; DocumentDB, FerretDB and a standalone mongod have
none, and every pass digests), a full sync pass, a share of every collection's documents
changed, the final pass, and the verify of what it left to prove (``verify_plan`` with
what the pass proved). Prints one JSON object with the seconds and the ratios to the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import catchup  # noqa: E402
import pymongo  # noqa: E402

from fixtures import mongo_data  # noqa: E402
from migrator.config import Endpoint, resolve_refs  # noqa: E402

DB = "openim_v3"


def change(client: pymongo.MongoClient, share: float, seed: int) -> int:
    """Sets a field on ``share`` of each collection's documents, picked uniformly."""
    rng = random.Random(seed)
    done = 0
    for name in client[DB].list_collection_names():
        ids = [d["_id"] for d in client[DB][name].find({}, {"_id": 1})]
        for _id in rng.sample(ids, int(len(ids) * share)):
            client[DB][name].update_one({"_id": _id}, {"$set": {"bench_changed": rng.random()}})
            done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--changed", type=float, default=0.01, help="share of documents")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for var in ("OIM_MONGO_SRC_URL", "OIM_MONGO_DST_URL"):
        if var not in os.environ:
            sys.exit(f"{var} is not set: start servers with scripts/services.py and source "
                     "its env.sh")
    src = pymongo.MongoClient(resolve_refs(os.environ["OIM_MONGO_SRC_URL"], "bench"))
    dst = pymongo.MongoClient(resolve_refs(os.environ["OIM_MONGO_DST_URL"], "bench"))
    for client in (src, dst):
        client.drop_database(DB)
    counts = mongo_data.load(Endpoint("mongo", os.environ["OIM_MONGO_SRC_URL"] + "/" + DB,
                                      name="bench"), seed=args.seed, scale=args.scale)
    result: dict[str, Any] = {"documents": sum(counts.values()), "changed_share": args.changed,
                              "server": os.environ.get("OIM_MONGO_FLAVOR", "?")}
    catchup.copy_then_cutover_way(
        ["--source", f"mongo={os.environ['OIM_MONGO_SRC_URL']}/{DB}",
         "--target", f"mongo={os.environ['OIM_MONGO_DST_URL']}"],
        lambda: change(src, args.changed, args.seed + 1), result)
    for client in (src, dst):
        client.drop_database(DB)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
