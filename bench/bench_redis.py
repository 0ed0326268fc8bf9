"""Redis copy throughput: our export → import against a server-side MIGRATE loop.

    python scripts/services.py start --dir /tmp/bench-svc --only redis
    . /tmp/bench-svc/env.sh
    python bench/bench_redis.py --keys 200000

Both runs copy the same keys from the source into the same standalone target (flushed in
between). The baseline is what an operator would script by hand: SCAN the source and send
``MIGRATE … COPY REPLACE KEYS <batch>`` for each page, so the source serialises and ships
the keys itself. Ours goes through the store API the way the engine does (exporter thread →
bounded queue → importer), one thread pair per unit. Prints keys/s, the ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import redis_data  # noqa: E402
from migrator.config import Endpoint
from migrator.engine.transfer import batches_through_queue  # noqa: E402
from migrator.stores.base import StoreOptions, Unit  # noqa: E402
from migrator.stores.redis.store import RedisStore  # noqa: E402


def endpoint(url_var: str, password_var: str, name: str) -> Endpoint:
    if url_var not in os.environ:
        sys.exit(f"{url_var} is not set: start servers with scripts/services.py and source "
                 "its env.sh")
    scheme, rest = os.environ[url_var].split("://", 1)
    return Endpoint("redis", f"{scheme}://:${{{password_var}}}@{rest}", name=name)


def migrate_loop(source: Endpoint, target: Endpoint, scan_count: int) -> int:
    """The baseline: server-side MIGRATE of each SCAN page; returns keys moved."""
    src = redis_data.client(source)
    conn = target.connection()
    moved, cursor = 0, 0
    while True:
        cursor, keys = src.scan(cursor, count=scan_count)
        if keys:
            src.execute_command("MIGRATE", conn.host, conn.port, "", 0, 60_000, "COPY",
                                "REPLACE", "AUTH", conn.password, "KEYS", *keys)
            moved += len(keys)
        if cursor == 0:
            return moved


def store_copy(source: RedisStore, target: RedisStore, units: list[Unit]) -> int:
    """Exporter and importer per unit in their own threads, like the engine."""
    target.prepare_target(units, source)
    written = [0] * len(units)
    errors: list[BaseException] = []

    def run(i: int, unit: Unit) -> None:
        try:
            importer = target.importer(unit)
            importer.prepare(False)
            for batch in batches_through_queue(source, unit, None, 4, threading.Event()):
                importer.write_batch(batch)
                written[i] += len(batch)
            importer.finalize()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, u)) for i, u in enumerate(units)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=1,
                        help="split the DB into this many slot-range units (power of 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--drill", action="store_true",
                        help="also time listing every chunk record by record (verify's "
                        "fallback when chunk digests disagree)")
    parser.add_argument("--cluster", action="store_true",
                        help="also time our copy into the 3-master cluster target")
    args = parser.parse_args()

    src = endpoint("OIM_REDIS_SRC_URL", "OIM_REDIS_SRC_PASSWORD", "source.redis")
    dst = endpoint("OIM_REDIS_DST_URL", "OIM_REDIS_DST_PASSWORD", "target.redis")
    admin_src, admin_dst = redis_data.client(src), redis_data.client(dst)
    if not args.skip_load:
        admin_src.flushall()
        t0 = time.perf_counter()
        counts = redis_data.mixed(src, args.keys, seed=args.seed)
        print(f"loaded {sum(counts.values())} keys {counts} in {time.perf_counter() - t0:.1f}s")
    total = admin_src.dbsize()
    if total == 0:
        sys.exit("the source is empty: run without --skip-load")

    admin_dst.flushall()
    t0 = time.perf_counter()
    moved = migrate_loop(src, dst, 1000)
    base = time.perf_counter() - t0
    assert moved == total == admin_dst.dbsize(), (moved, total, admin_dst.dbsize())
    print(f"MIGRATE loop      : {total / base:>9,.0f} keys/s ({base:.2f}s)")

    admin_dst.flushall()
    options = StoreOptions(unit_records=max(1, -(-total // args.units)))
    source = RedisStore(src, options=options)
    target = RedisStore(dst, options=options)
    source.open()
    target.open()
    units = source.list_units()
    t0, cpu0 = time.perf_counter(), time.process_time()
    written = store_copy(source, target, units)
    ours, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert written == total == admin_dst.dbsize(), (written, total, admin_dst.dbsize())
    print(f"export → import   : {total / ours:>9,.0f} keys/s ({ours:.2f}s, {len(units)} units, "
          f"{cpu:.2f}s of our CPU)")
    print(f"ratio (ours / MIGRATE): {base / ours:.2f}")

    t0 = time.perf_counter()
    unit = units[0]
    chunks = source.chunks(unit)
    equal = source.digest(unit, chunks) == target.digest(unit, chunks)
    took = time.perf_counter() - t0
    print(f"digest both sides : {2 * unit.records / took:>9,.0f} keys/s, equal={equal} "
          f"(unit {unit.name})")
    if args.drill:  # the worst case: every chunk's digests disagree (e.g. 6.x vs 7.x payloads)
        t0 = time.perf_counter()
        listed = sum(1 for chunk in chunks for store in (source, target)
                     for _ in store.records(unit, chunk))
        took = time.perf_counter() - t0
        print(f"list every chunk  : {listed / took:>9,.0f} keys/s ({took:.2f}s, canonical "
              "fingerprints)")

    if args.cluster:
        cl = endpoint("OIM_REDIS_CLUSTER_URL", "OIM_REDIS_CLUSTER_PASSWORD", "target.cluster")
        redis_data.client(cl).flushall()
        target = RedisStore(cl, options=options)
        target.open()
        t0 = time.perf_counter()
        store_copy(source, target, units)
        took = time.perf_counter() - t0
        print(f"into the cluster  : {total / took:>9,.0f} keys/s ({took:.2f}s)")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
