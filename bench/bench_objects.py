"""Object copy + verify: our store API against ``rclone copy`` + ``rclone check``.

    python scripts/services.py start --dir /tmp/bench-svc --only minio
    . /tmp/bench-svc/env.sh
    python bench/bench_objects.py --small 10000 --large 4

Two data sets in the source MinIO: OpenIM-shaped small objects (fixtures.objects_data) and
a few 50 MiB files uploaded multipart. Each tool copies them into its own fresh target
bucket. Ours runs like the engine: every unit has an exporter thread feeding a bounded
queue and an importer, units run in a pool of 4 threads; verify is chunks + digest on both
sides per unit. rclone is Debian's, configured by RCLONE_CONFIG_* environment variables;
``rclone check`` compares size + MD5 where the S3 ETag gives one (it cannot check
multipart objects it did not upload itself), ours also streams those and compares
content type and metadata. Prints times, ratios and peak RSS of both.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures import objects_data  # noqa: E402
from migrator.config import Endpoint
from migrator.engine.transfer import batches_through_queue  # noqa: E402
from migrator.stores.base import StoreOptions, Unit  # noqa: E402
from migrator.stores.objects import ObjectStore  # noqa: E402

MiB = 1 << 20


def endpoint(side: str, path: str = "", **options: object) -> Endpoint:
    if f"OIM_S3_{side}_URL" not in os.environ:
        sys.exit(f"OIM_S3_{side}_URL is not set: start servers with scripts/services.py and "
                 "source its env.sh")
    return Endpoint("objects", os.environ[f"OIM_S3_{side}_URL"] + path,
                    name=f"{side.lower()}.objects",
                    options={"access_key": f"${{OIM_S3_{side}_ACCESS_KEY}}",
                             "secret_key": f"${{OIM_S3_{side}_SECRET_KEY}}", **options})


def load(small: int, large: int) -> None:
    """Source buckets ``bench-small`` and ``bench-large``, unless already loaded."""
    store = ObjectStore(endpoint("SRC"))
    client = store.client
    if not client.bucket_exists("bench-small"):
        t0 = time.perf_counter()
        counts = objects_data.load(endpoint("SRC", "/bench-small"), seed=11,
                                   scale=small / 2000, workers=16)
        print(f"loaded bench-small: {counts['objects']} objects, "
              f"{counts['bytes'] / MiB:.0f} MiB in {time.perf_counter() - t0:.0f}s")
    if not client.bucket_exists("bench-large"):
        client.make_bucket("bench-large")
        for i in range(large):
            obj = objects_data.FixtureObject(f"video/{i}.mp4", objects_data.LARGE_SIZE,
                                             "video/mp4", f"bench-large:{i}",
                                             part_size=objects_data.OPENIM_PART)
            body = cast(BinaryIO, objects_data.PartReader(obj))
            client.put_object("bench-large", obj.key, body, obj.size,
                              content_type=obj.content_type, part_size=obj.part_size)
        print(f"loaded bench-large: {large} x {objects_data.LARGE_SIZE // MiB} MiB")


def run_unit(source: ObjectStore, target: ObjectStore, unit: Unit) -> int:
    """One unit through the engine's own exporter -> bounded queue -> importer pipe."""
    importer = target.importer(unit)
    importer.prepare(False)
    copied = 0
    for batch in batches_through_queue(source, unit, None, 4, threading.Event()):
        importer.write_batch(batch)
        copied += len(batch)
    importer.finalize()
    return copied


def verify_unit(source: ObjectStore, target: ObjectStore, unit: Unit) -> bool:
    """Both sides' digests at once, as rclone check lists both sides at once."""
    chunks = source.chunks(unit)
    with ThreadPoolExecutor(2) as pool:
        theirs = pool.submit(target.digest, unit, chunks)
        return source.digest(unit, chunks) == theirs.result()


def ours(bucket: str, threads: int, unit_records: int) -> dict[str, float]:
    options = StoreOptions(unit_records=unit_records)
    source = ObjectStore(endpoint("SRC", f"/{bucket}"), options=options)
    target = ObjectStore(endpoint("DST", f"/ours-{bucket}"), options=options)
    source.open()
    target.open()
    t0 = time.perf_counter()
    units = source.list_units()
    t_plan = time.perf_counter() - t0
    target.prepare_target(units, source)
    with ThreadPoolExecutor(threads) as pool:
        copied = sum(pool.map(lambda u: run_unit(source, target, u), units))
    t_copy = time.perf_counter() - t0
    t1 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ok = all(pool.map(lambda u: verify_unit(source, target, u), units))
    t_verify = time.perf_counter() - t1
    t2 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ok = all(pool.map(lambda u: verify_unit(source, target, u), units)) and ok
    t_again = time.perf_counter() - t2
    if not ok:
        sys.exit(f"ours: verify found differences in {bucket}")
    return {"units": len(units), "objects": copied, "plan": t_plan, "copy": t_copy,
            "verify": t_verify, "verify_again": t_again}


def rclone(*args: str) -> tuple[float, int, str]:
    """Run rclone; (seconds, peak RSS KiB, output)."""
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)  # the AWS SDK in rclone cannot apply it to its transport
    for side in ("SRC", "DST"):
        env.update({f"RCLONE_CONFIG_{side}_TYPE": "s3", f"RCLONE_CONFIG_{side}_PROVIDER": "Minio",
                    f"RCLONE_CONFIG_{side}_ENDPOINT": os.environ[f"OIM_S3_{side}_URL"],
                    f"RCLONE_CONFIG_{side}_ACCESS_KEY_ID": os.environ[f"OIM_S3_{side}_ACCESS_KEY"],
                    f"RCLONE_CONFIG_{side}_SECRET_ACCESS_KEY":
                        os.environ[f"OIM_S3_{side}_SECRET_KEY"]})
    t0 = time.perf_counter()
    proc = subprocess.Popen(["rclone", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"rclone {' '.join(args)} failed:\n{out[-2000:]}")
    return time.perf_counter() - t0, usage.ru_maxrss, out


def theirs(bucket: str, transfers: int) -> dict[str, Any]:
    if _exists(f"rclone-{bucket}"):
        rclone("purge", f"dst:rclone-{bucket}")
    t_copy, rss_copy, _ = rclone("copy", f"src:{bucket}", f"dst:rclone-{bucket}",
                                 "--transfers", str(transfers), "--checkers", str(2 * transfers))
    t_check, rss_check, out = rclone("check", f"src:{bucket}", f"dst:rclone-{bucket}",
                                     "--checkers", str(2 * transfers))
    unchecked = next((line for line in out.splitlines() if "hashes could not" in line), "")
    t_download, _, _ = rclone("check", "--download", f"src:{bucket}", f"dst:rclone-{bucket}",
                              "--checkers", str(2 * transfers))
    return {"copy": t_copy, "verify": t_check, "rss_kib": max(rss_copy, rss_check),
            "note": unchecked.split("NOTICE: ")[-1].strip(), "download": t_download}


def _exists(bucket: str) -> bool:
    return ObjectStore(endpoint("DST")).client.bucket_exists(bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="small objects (approx.)")
    parser.add_argument("--large", type=int, default=4, help="50 MiB files")
    parser.add_argument("--threads", type=int, default=4, help="units copied in parallel")
    parser.add_argument("--unit-records", type=int, default=2500,
                        help="split units at this many objects, so the unit threads have work")
    parser.add_argument("--rclone-transfers", type=int, default=4,
                        help="rclone --transfers (its default is 4)")
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_only:
        load(args.small, args.large)
        return
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed (apt-get install rclone)")
    # Loading runs in a child process so our peak RSS below is the copy and verify alone.
    subprocess.run([sys.executable, __file__, "--load-only", "--small", str(args.small),
                    "--large", str(args.large)], check=True)
    for bucket in ("bench-small", "bench-large"):
        if _exists(f"ours-{bucket}"):
            rclone("purge", f"dst:ours-{bucket}")
        a = ours(bucket, args.threads, args.unit_records)
        b = theirs(bucket, args.rclone_transfers)
        print(f"\n{bucket}: {a['objects']} objects in {a['units']} units "
              f"(plan {a['plan']:.1f}s)")
        print(f"  copy    ours {a['copy']:7.1f}s   rclone {b['copy']:7.1f}s   "
              f"ratio {b['copy'] / a['copy']:.2f}x")
        print(f"  verify  ours {a['verify']:7.1f}s   rclone {b['verify']:7.1f}s   "
              f"ratio {b['verify'] / a['verify']:.2f}x   (ours again, warm cache: "
              f"{a['verify_again']:.1f}s)")
        if b["note"]:
            print(f"  rclone check: {b['note']}; rclone check --download (reads all bytes of "
                  f"both sides): {b['download']:.1f}s")
        print(f"  rclone peak RSS {b['rss_kib'] / 1024:.0f} MiB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nours: peak RSS {peak:.0f} MiB (copy + verify of both data sets)")


if __name__ == "__main__":
    main()
