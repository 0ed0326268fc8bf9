#!/usr/bin/env python3
"""Our MongoDB export→import against ``mongodump --archive | mongorestore --archive``.

Both copy the same OpenIM-shaped database (fixtures/mongo_data.py) between the same two
servers; both copies are then checked with our digests. Ours runs through the store API
(units in parallel threads, like the engine) in a child process, so its peak RSS is its own.

    python bench/bench_mongo.py [--scale 3] [--parallel 4]

Servers: OIM_MONGO_SRC_URL / OIM_MONGO_DST_URL if set, else scripts/services.py's MongoDB
flavour (DocumentDB's gateway when built, else FerretDB; started and stopped here).
mongodump/mongorestore come from scripts/build-mongo-tools.sh (~/.cache/openim-migrate/bin);
they get the password through a --config file, never on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures import mongo_data  # noqa: E402
from migrator.config import Endpoint  # noqa: E402
from migrator.stores.base import StoreOptions  # noqa: E402
from migrator.stores.mongo.store import MongoStore  # noqa: E402

BIN = Path(os.environ.get("OPENIM_MIGRATE_BIN") or Path.home() / ".cache/openim-migrate/bin")
SOURCE_DB = "openim_v3"


def with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


def stores(src: str, dst: str, to_db: str) -> tuple[MongoStore, MongoStore]:
    source = MongoStore(Endpoint("mongo", with_db(src, SOURCE_DB), name="source.mongo"),
                        options=StoreOptions())
    target = MongoStore(Endpoint("mongo", dst, name="target.mongo",
                                 options={"db_map": {SOURCE_DB: to_db}}), options=StoreOptions())
    source.open()
    target.open()
    return source, target


def copy(src: str, dst: str, to_db: str, parallel: int) -> dict[str, float]:
    """The engine's sequence, units in threads; runs in the measured child process."""
    source, target = stores(src, dst, to_db)
    started = time.monotonic()
    units = source.list_units()
    target.prepare_target(units, source)
    docs = nbytes = 0

    def one(unit):  # noqa: ANN001, ANN202
        n = b = 0
        imp = target.importer(unit)
        imp.prepare(False)
        for batch in source.export(unit):
            imp.write_batch(batch)
            n, b = n + len(batch), b + batch.nbytes
        imp.finalize()
        return n, b

    with ThreadPoolExecutor(parallel) as pool:
        for n, b in pool.map(one, units):
            docs, nbytes = docs + n, nbytes + b
    copied = time.monotonic() - started
    target.finalize_target(units, source)
    return {"seconds": time.monotonic() - started, "copy_seconds": copied, "docs": docs,
            "bytes": nbytes, "units": len(units)}


def run_measured(cmd: list[str], **kwargs) -> tuple[int, float, int, bytes]:  # noqa: ANN003
    """(exit code, seconds, peak RSS in KiB, stdout) of one child process."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, **kwargs)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - started, usage.ru_maxrss, out


def tool_args(url: str, work: Path, side: str) -> list[str]:
    """``--uri`` without the password, and a ``--config`` file holding it."""
    from urllib.parse import urlsplit

    from migrator.config import resolve_refs

    password = urlsplit(url).password
    if password is None:
        return [f"--uri={url}"]
    config = work / f"mongo-{side}.yaml"
    config.write_text(json.dumps({"password": resolve_refs(password, side)}) + "\n")
    config.chmod(0o600)
    return [f"--uri={url.replace(f':{password}@', '@', 1)}", f"--config={config}",
            "--authenticationDatabase=admin"]


def dump_restore(src: str, dst: str, to_db: str, log_dir: Path) -> dict[str, object]:
    dump = [str(BIN / "mongodump"), *tool_args(src, log_dir, "src"), f"--db={SOURCE_DB}",
            "--archive"]
    restore = [str(BIN / "mongorestore"), *tool_args(dst, log_dir, "dst"), "--archive",
               f"--nsFrom={SOURCE_DB}.*", f"--nsTo={to_db}.*"]
    result: dict[str, object] = {}
    for label, extra in (("with indexes", []), ("--noIndexRestore", ["--noIndexRestore"])):
        mongo_client(dst).drop_database(to_db)
        started = time.monotonic()
        with open(log_dir / "dump.log", "wb") as dlog, open(log_dir / "restore.log", "wb") as rlog:
            d = subprocess.Popen(dump, stdout=subprocess.PIPE, stderr=dlog)
            r = subprocess.Popen(restore + extra, stdin=d.stdout, stderr=rlog)
            assert d.stdout is not None
            d.stdout.close()
            _, dstatus, dusage = os.wait4(d.pid, 0)
            _, rstatus, rusage = os.wait4(r.pid, 0)
        failed = [line for line in (log_dir / "restore.log").read_text().splitlines()
                  if "Failed:" in line]
        result = {"mode": label, "seconds": time.monotonic() - started,
                  "dump_rc": os.waitstatus_to_exitcode(dstatus),
                  "restore_rc": os.waitstatus_to_exitcode(rstatus),
                  "dump_rss_kib": dusage.ru_maxrss, "restore_rss_kib": rusage.ru_maxrss,
                  "error": failed[0].split("Failed: ", 1)[1] if failed else None,
                  "first_error": result.get("error") if result else None}
        if result["restore_rc"] == 0:
            break
    return result


def mongo_client(url: str):  # noqa: ANN201
    from pymongo import MongoClient

    from migrator.config import resolve_refs
    return MongoClient(resolve_refs(url, "bench"), serverSelectionTimeoutMS=5000)


def verify(src: str, dst: str, to_db: str) -> tuple[bool, list[str]]:
    """Our digests and schemas, source against one copy; returns (data equal, schema diffs)."""
    source, target = stores(src, dst, to_db)
    equal, schema_diffs = True, []
    for unit in source.list_units():
        chunks = source.chunks(unit)
        equal &= source.digest(unit, chunks) == target.digest(unit, chunks)
        if source.schema(unit) != target.schema(unit):
            schema_diffs.append(unit.name)
    return equal, schema_diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--copy-only", nargs=3, metavar=("SRC", "DST", "TO_DB"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.copy_only:
        print(json.dumps(copy(*args.copy_only, args.parallel)))
        return 0
    for tool in ("mongodump", "mongorestore"):
        if not (BIN / tool).exists():
            print(f"{BIN / tool} missing: run scripts/build-mongo-tools.sh", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-mongo-"))
    started_services = "OIM_MONGO_SRC_URL" not in os.environ
    services = [sys.executable, str(ROOT / "scripts/services.py")]
    try:
        if started_services:
            subprocess.run([*services, "start", "--dir", str(tmp), "--only", "mongo"],
                           check=True, stdout=subprocess.DEVNULL)
            printed = subprocess.run([*services, "env", "--dir", str(tmp)], check=True,
                                     capture_output=True, text=True).stdout
            for line in printed.splitlines():
                if line.startswith("export "):
                    key, _, value = line.removeprefix("export ").partition("=")
                    os.environ[key] = shlex.split(value)[0] if value else ""
        src, dst = os.environ["OIM_MONGO_SRC_URL"], os.environ["OIM_MONGO_DST_URL"]
        t = time.monotonic()
        counts = mongo_data.load(Endpoint("mongo", with_db(src, SOURCE_DB), name="fixture"),
                                 seed=args.seed, scale=args.scale)
        print(f"loaded {sum(counts.values())} documents ({counts['msg']} msg) "
              f"in {time.monotonic() - t:.1f}s, scale {args.scale}")
        for db in ("bench_ours", "bench_dump"):
            mongo_client(dst).drop_database(db)
        rc, _, rss, out = run_measured([sys.executable, __file__, "--parallel",
                                        str(args.parallel), "--copy-only", src, dst,
                                        "bench_ours"])
        if rc != 0:
            print("our copy failed", file=sys.stderr)
            return 1
        ours = json.loads(out)
        theirs = dump_restore(src, dst, "bench_dump", tmp)
        ours_ok, ours_schema = verify(src, dst, "bench_ours")
        dump_ok, dump_schema = verify(src, dst, "bench_dump")
        mb = ours["bytes"] / 1e6
        print(f"ours:      {ours['seconds']:.2f}s ({ours['copy_seconds']:.2f}s data, rest "
              f"indexes) {ours['docs']} docs {mb:.1f} MB {mb / ours['copy_seconds']:.2f} MB/s "
              f"in {ours['units']} units x{args.parallel}; peak RSS {rss / 1024:.0f} MiB; "
              f"digests equal: {ours_ok}; schema diffs: {ours_schema or 'none'}")
        print(f"mongodump|mongorestore ({theirs['mode']}): {theirs['seconds']:.2f}s, rc "
              f"{theirs['dump_rc']}/{theirs['restore_rc']}; peak RSS "
              f"{theirs['dump_rss_kib'] / 1024:.0f}+{theirs['restore_rss_kib'] / 1024:.0f} MiB; "
              f"digests equal: {dump_ok}; schema diffs: {len(dump_schema)} units")
        if theirs.get("first_error"):
            print(f"  with indexes mongorestore failed: {theirs['first_error']}")
        print(f"ratio ours/theirs (wall): {ours['seconds'] / theirs['seconds']:.2f}")
        for db in ("bench_ours", "bench_dump"):
            mongo_client(dst).drop_database(db)
        return 0
    finally:
        if started_services:
            subprocess.run([*services, "stop", "--dir", str(tmp)], check=False,
                           stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
