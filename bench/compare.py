#!/usr/bin/env python3
"""Side-by-side benchmarks: `openim-migrate run` / `verify` against the native tools, in
one run on the same servers, so the figures are ratios rather than absolute seconds.

    python bench/compare.py mysql   --rows 100000            # mariadb-dump, mydumper
    python bench/compare.py redis   --keys 1000000           # SCAN + MIGRATE loop
    python bench/compare.py mongo   --scale 3                # mongodump | mongorestore
    python bench/compare.py objects --small 10000 --large 4  # rclone copy + check

Servers come from the OIM_* environment (docker-compose.test.yml) or are started here
with scripts/services.py and stopped at the end. The fixture is loaded once; then the
native tool and ours (`plan`, `run --no-verify`, `verify` through the real command line)
run interleaved ``--repeat`` times (3). Every command runs under a small launcher process
that reports its wall and CPU seconds and its own peak RSS (wait4), with the load average
sampled while it ran. One JSON object is printed: medians, ratios and every round.
bench/run_all.py runs every scenario and writes docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import services  # noqa: E402

from migrator.config import Endpoint  # noqa: E402

BIN = Path(os.environ.get("OPENIM_MIGRATE_BIN") or Path.home() / ".cache/openim-migrate/bin")

# The measured command runs as the child of this small launcher, never of the benchmark
# process itself. Linux keeps the larger of a process's peak RSS and that of the memory it
# had before exec(): a command forked from a parent holding 50-500 MiB (drivers, fixtures)
# would report that parent's size. The launcher (a bare interpreter, ~9 MiB) forks the
# command, waits for it with wait4() and writes its wall seconds, CPU seconds and peak RSS
# (KiB, of the command and the children it waited for) to the file descriptor it is given.
_LAUNCHER = """\
import os, sys, time
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
started = time.monotonic()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{time.monotonic() - started} {usage.ru_utime + usage.ru_stime} "
             f"{usage.ru_maxrss}".encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


class LoadSampler:
    """The 1-minute load average sampled every second while a command runs: the machine
    may be shared, so every figure carries the load it was taken under."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def step(cmd: list[str] | str, *, env: dict[str, str] | None = None,
         pid_files: dict[str, str] | None = None, attempts: int = 1) -> dict[str, Any]:
    """Run one command (a string is a bash pipeline, with pipefail) through the launcher:
    wall seconds, CPU seconds and peak RSS of the command's own processes, the CPU seconds
    each local server spent meanwhile (``pid_files``), and the load average around it.
    ``attempts`` > 1: a failed run is run again (the figures are the run that passed, and
    ``failed_attempts`` says how many did not), for a native tool a server is known to
    drop connections under."""
    for attempt in range(1, attempts + 1):
        try:
            out = _step(cmd, env=env, pid_files=pid_files)
        except SystemExit:
            if attempt == attempts:
                raise
            time.sleep(2.0 * attempt)  # a server shedding connections wants a moment
            continue
        if attempt > 1:
            out["failed_attempts"] = attempt - 1
        return out
    raise AssertionError("unreachable")


def _step(cmd: list[str] | str, *, env: dict[str, str] | None = None,
          pid_files: dict[str, str] | None = None) -> dict[str, Any]:
    argv = ["/bin/bash", "-c", "set -o pipefail; " + cmd] if isinstance(cmd, str) else cmd
    before = _server_cpu(pid_files or {})
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as errors, LoadSampler() as load:
        try:
            proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(write_end),
                                     *argv], cwd=ROOT, env={**os.environ, **(env or {})},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=errors, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        code = proc.wait()
        with os.fdopen(read_end, "rb") as report:
            figures = report.read().split()
        if code != 0 or len(figures) != 3:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-3000:]
            shown = cmd if isinstance(cmd, str) else " ".join(cmd)
            raise SystemExit(f"command failed ({code}): {shown}\n{tail}")
    after = _server_cpu(pid_files or {})
    seconds, cpu, rss_kib = (float(x) for x in figures)
    return {"s": round(seconds, 2), "cpu_s": round(cpu, 2),
            **{f"{side}_server_cpu_s": round(after[side] - before[side], 2) for side in after},
            "rss_mib": round(rss_kib / 1024),
            "load": [round(min(load.samples), 1), round(max(load.samples), 1)]}


EXTRA_PLAN_ARGS: list[str] = []  # from --plan-arg, passed to every `plan`
CLI = [sys.executable, "-m", "migrator"]


def ours(plan: Path, plan_args: list[str], pid_files: dict[str, str] | None = None
         ) -> dict[str, dict[str, Any]]:
    """One round of ours through the real command line: plan, run --no-verify, verify."""
    for stale in (plan, plan.with_name(plan.stem + ".journal.sqlite")):
        stale.unlink(missing_ok=True)
    return {"plan": step([*CLI, "plan", *plan_args, "-o", str(plan)], pid_files=pid_files),
            "copy": step([*CLI, "run", str(plan), "--no-verify", "--no-progress"],
                         pid_files=pid_files),
            "verify": step([*CLI, "verify", str(plan)], pid_files=pid_files)}


def summary(runs: list[dict[str, dict[str, Any]]], natives: dict[str, tuple[str, ...]]
            ) -> dict[str, Any]:
    """Medians over the rounds; a ratio is the median of the rounds' ratios (native seconds
    over our copy's, > 1: we are faster). ``natives`` maps a native tool to its steps (a
    tool of two steps, mydumper + myloader, counts their sum). Peak RSS is the largest."""
    from statistics import median

    def mid(step_name: str, field: str = "s") -> float:
        return round(median(r[step_name][field] for r in runs), 2)

    def total(run: dict[str, dict[str, Any]], steps: tuple[str, ...], field: str = "s"
              ) -> float:
        return float(sum(run[s][field] for s in steps))

    return {
        "repeat": len(runs),
        "plan_s": mid("plan"), "copy_s": mid("copy"), "verify_s": mid("verify"),
        "copy_cpu_s": mid("copy", "cpu_s"), "verify_cpu_s": mid("verify", "cpu_s"),
        "verify_fraction": round(median(r["verify"]["s"] / r["copy"]["s"] for r in runs), 3),
        "run_rss_mib": max(r["copy"]["rss_mib"] for r in runs),
        "verify_rss_mib": max(r["verify"]["rss_mib"] for r in runs),
        "load": [min(s["load"][0] for r in runs for s in r.values()),
                 max(s["load"][1] for r in runs for s in r.values())],
        "natives": {name: {"s": round(median(total(r, steps) for r in runs), 2),
                           "cpu_s": round(median(total(r, steps, "cpu_s") for r in runs), 2),
                           "ratio": round(median(total(r, steps) / r["copy"]["s"]
                                                 for r in runs), 2)}
                    for name, steps in natives.items()},
        "runs": runs,
    }


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def load_fixture(code: str, *args: str) -> Any:
    """Run a fixture loader in a child process and return the JSON it prints, so this
    process stays small and its memory is not mistaken for anyone's."""
    out = subprocess.run([sys.executable, "-c", "import json, sys; " + code, *args], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# -------------------------------------------------------------------------------- mysql
MYSQL_DB = "openIM_bench"


def _server_cpu(pid_files: dict[str, str]) -> dict[str, float]:
    """CPU seconds each local server has used so far (from /proc), by side."""
    out = {}
    for side, pid_file in pid_files.items():
        try:
            pid = int(Path(pid_file).read_text().strip())
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[side] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            out[side] = float("nan")  # a server elsewhere (docker-compose): not measured
    return out


class MySQLBench:
    """Both MariaDB servers of a benchmark: the source endpoint, root connections, the
    servers' pid files (for their CPU time) and the target databases each tool fills."""

    def __init__(self, env: dict[str, str], db: str, copies: tuple[str, ...],
                 mydumper: bool = True) -> None:
        import pymysql

        if mydumper and not (shutil.which("mydumper") and shutil.which("myloader")):
            subprocess.run(["apt-get", "install", "-y", "-qq", "mydumper"], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        self.src = Endpoint("mysql", f"mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@"
                            f"{hostport(env['OIM_MYSQL_SRC_URL'])}/{db}", name="bench")
        self.conns = {}
        self.pid_files = {}
        for side in ("SRC", "DST"):
            host, port = hostport(env[f"OIM_MYSQL_{side}_URL"]).split(":")
            conn = pymysql.connect(host=host, port=int(port), user="root", autocommit=True,
                                   password=env[f"OIM_MYSQL_{side}_PASSWORD"])
            self.conns[side] = conn
            with conn.cursor() as cur:
                cur.execute("SELECT @@pid_file")
                self.pid_files[side.lower()] = str(cur.fetchone()[0])
        self.copies = copies

    def clean_target(self) -> None:
        with self.conns["DST"].cursor() as cur:
            for name in self.copies:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def copied(self, name: str) -> int:
        with self.conns["DST"].cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{name}`.chat_logs")
            return int(cur.fetchone()[0])


def bench_mysql(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """One chat_logs table of ``--rows`` rows, loaded once; then, interleaved and
    ``--repeat`` times: ``mariadb-dump | mariadb``, ``mydumper`` + ``myloader`` (4 threads;
    ``--rows`` asks for one chunk per thread, which mydumper 0.10 only does on an integer
    key: chat_logs' key is text, one file) and ours (plan, run, verify, default options).
    Every run keeps its wall and CPU seconds (ours, each server) and the load average.
    OIM_BENCH_MYSQL_NATIVE=mydumper (or mariadb-dump) runs one native tool only."""
    from statistics import median

    from fixtures import mysql_data

    db = MYSQL_DB
    natives = os.environ.get("OIM_BENCH_MYSQL_NATIVE", "mariadb-dump,mydumper").split(",")
    mb = MySQLBench(env, db, (db, "native_copy", "native_myloader"), "mydumper" in natives)
    src, conns, pid_files = mb.src, mb.conns, mb.pid_files
    clean_target, copied = mb.clean_target, mb.copied
    (sh, sp), (dh, dp) = (hostport(env[f"OIM_MYSQL_{s}_URL"]).split(":") for s in ("SRC", "DST"))
    clean_target()
    loaded = time.monotonic()
    mysql_data.message_rows(src, opts.rows, seed=1)
    load_s = time.monotonic() - loaded
    # passwords reach the clients through defaults files, never the command line
    cnf = {}
    for side in ("SRC", "DST"):
        path = work / f"{side.lower()}.cnf"
        path.write_text("".join(f"[{group}]\npassword={env[f'OIM_MYSQL_{side}_PASSWORD']}\n"
                                for group in ("client", "mydumper", "myloader")))
        path.chmod(0o600)
        cnf[side] = str(path)
    threads = 4
    chunk_rows = max(10_000, -(-opts.rows // threads))
    commands: dict[str, Any] = {
        "mariadb-dump": (f"mariadb-dump --defaults-extra-file={cnf['SRC']} -h {sh} -P {sp}"
                         f" -u root --single-transaction --quick {db} chat_logs"
                         f" | mariadb --defaults-extra-file={cnf['DST']} -h {dh} -P {dp}"
                         " -u root native_copy"),
        "mydumper": ["mydumper", f"--defaults-file={cnf['SRC']}", "-h", sh, "-P", sp,
                     "-u", "root", "--threads", str(threads), "--rows", str(chunk_rows),
                     "-B", db, "-T", "chat_logs", "-o", str(work / "mydumper")],
        "myloader": ["myloader", f"--defaults-file={cnf['DST']}", "-h", dh, "-P", dp,
                     "-u", "root", "--threads", str(threads), "-d", str(work / "mydumper"),
                     "-s", db, "-B", "native_myloader", "-o"],
    }
    plan = work / "mysql.yaml"
    plan_args = ["--source", f"mysql=mysql://root:${{OIM_MYSQL_SRC_PASSWORD}}@{sh}:{sp}/{db}",
                 "--target", f"mysql=mysql://root:${{OIM_MYSQL_DST_PASSWORD}}@{dh}:{dp}",
                 *EXTRA_PLAN_ARGS, "--parallel", str(opts.parallel)]
    runs = []
    for _ in range(opts.repeat):
        run: dict[str, dict[str, Any]] = {}
        if "mariadb-dump" in natives:
            with conns["DST"].cursor() as cur:
                cur.execute("CREATE DATABASE native_copy CHARACTER SET utf8mb4")
            run["mariadb_dump"] = step(commands["mariadb-dump"], pid_files=pid_files)
            assert copied("native_copy") == opts.rows
        if "mydumper" in natives:
            shutil.rmtree(work / "mydumper", ignore_errors=True)
            with conns["DST"].cursor() as cur:
                cur.execute("CREATE DATABASE native_myloader CHARACTER SET utf8mb4")
            run["mydumper"] = step(commands["mydumper"], pid_files=pid_files)
            run["myloader"] = step(commands["myloader"], pid_files=pid_files)
            assert copied("native_myloader") == opts.rows
        run.update(ours(plan, plan_args, pid_files))
        assert copied(db) == opts.rows
        clean_target()
        runs.append(run)
    with conns["SRC"].cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    tools = {"mariadb-dump": ("mariadb_dump",), "mydumper": ("mydumper", "myloader")}

    def mid(step_name: str, field: str) -> float:
        return round(median(r[step_name][field] for r in runs), 2)

    return {
        "store": "mysql", "rows": opts.rows, "load_s": round(load_s, 1),
        "units": len(_plan_units(plan)),
        "cpu_s": {name: {field: mid(name, field) for field in ("cpu_s", "src_server_cpu_s",
                                                              "dst_server_cpu_s")}
                  for name in runs[0]},
        "commands": {k: v if isinstance(v, str) else " ".join(v) for k, v in commands.items()
                     if k in natives or (k == "myloader" and "mydumper" in natives)},
        **summary(runs, {name: steps for name, steps in tools.items() if name in natives}),
    }


def _plan_units(plan: Path) -> list[Any]:
    import yaml

    return list((yaml.safe_load(plan.read_text()) or {}).get("inventory") or [])


# -------------------------------------------------------------------------------- redis
def bench_redis(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """``--keys`` mixed keys loaded once; then, interleaved and ``--repeat`` times, the
    SCAN + MIGRATE loop (bench/migrate_loop.py) and ours, into the flushed target."""
    import redis

    from fixtures import redis_data

    src = redis.Redis.from_url(env["OIM_REDIS_SRC_URL"], password=env["OIM_REDIS_SRC_PASSWORD"])
    dst = redis.Redis.from_url(env["OIM_REDIS_DST_URL"], password=env["OIM_REDIS_DST_PASSWORD"])
    src.flushall()
    dst.flushall()
    loaded = time.monotonic()
    redis_data.mixed(Endpoint("redis", env["OIM_REDIS_SRC_URL"].replace(
        "redis://", "redis://:${OIM_REDIS_SRC_PASSWORD}@"), name="bench"), opts.keys, seed=1)
    load_s = time.monotonic() - loaded
    total = src.dbsize()
    plan_args = ["--source", "redis=redis://:${OIM_REDIS_SRC_PASSWORD}@"
                 + hostport(env["OIM_REDIS_SRC_URL"]) + "/0",
                 "--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
                 + hostport(env["OIM_REDIS_DST_URL"]) + "/0",
                 *EXTRA_PLAN_ARGS, "--parallel", str(opts.parallel)]
    plan = work / "redis.yaml"
    runs = []
    for _ in range(opts.repeat):
        run = {"migrate_loop": step([sys.executable, str(ROOT / "bench" / "migrate_loop.py")])}
        assert dst.dbsize() == total, (dst.dbsize(), total)
        dst.flushall()
        run.update(ours(plan, plan_args))
        assert dst.dbsize() == total, (dst.dbsize(), total)
        dst.flushall()
        runs.append(run)
    units = len(_plan_units(plan))
    src.flushall()
    return {"store": "redis", "keys": total, "load_s": round(load_s, 1), "units": units,
            "commands": {"migrate_loop": "SCAN + MIGRATE COPY REPLACE KEYS loop "
                         "(bench/migrate_loop.py)"},
            **summary(runs, {"migrate_loop": ("migrate_loop",)})}


# -------------------------------------------------------------------------------- mongo
def mongo_tool_args(url: str, work: Path, side: str) -> list[str]:
    """``--uri`` without the password plus ``--config`` holding it (not on the command line).

    Test URLs carry ``user:${OIM_MONGO_*_PASSWORD}@`` (DocumentDB) or no user (FerretDB)."""
    from urllib.parse import quote, urlsplit

    from migrator.config import resolve_refs

    parts = urlsplit(url)
    if parts.password is None:
        return [f"--uri={url}"]
    config = work / f"mongo-{side}.yaml"
    config.write_text(json.dumps({"password": resolve_refs(parts.password, side)}) + "\n")
    config.chmod(0o600)
    bare = url.replace(f":{parts.password}@", "@", 1)
    return [f"--uri={bare}", f"--config={config}",
            f"--authenticationDatabase={quote('admin')}"]


def bench_mongo(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """The OpenIM fixture at ``--scale``, loaded once; then, interleaved and ``--repeat``
    times, ``mongodump --archive | mongorestore --archive`` and ours, into dropped targets."""
    import shlex

    import pymongo

    from fixtures import mongo_data
    from migrator.config import resolve_refs

    dump, restore = BIN / "mongodump", BIN / "mongorestore"
    if not (dump.exists() and restore.exists()):
        raise SystemExit(f"{dump} / {restore} missing: `make deps` builds them "
                         "(scripts/build-mongo-tools.sh)")
    src: Any = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_SRC_URL"], "bench"))
    dst: Any = pymongo.MongoClient(resolve_refs(env["OIM_MONGO_DST_URL"], "bench"))

    def drop_targets() -> None:
        for name in ("openim_v3", "native_copy"):
            dst.drop_database(name)

    for name in ("openim_v3", "native_copy"):
        src.drop_database(name)
    drop_targets()
    loaded = time.monotonic()
    counts = mongo_data.load(Endpoint("mongo", env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                                      name="bench"), seed=1, scale=opts.scale)
    load_s = time.monotonic() - loaded
    flavour = env.get("OIM_MONGO_FLAVOR", "ferretdb")
    dump_args = " ".join(map(shlex.quote, mongo_tool_args(env["OIM_MONGO_SRC_URL"], work, "src")))
    restore_args = " ".join(map(shlex.quote,
                                mongo_tool_args(env["OIM_MONGO_DST_URL"], work, "dst")))
    native = (f"{dump} {dump_args} --db=openim_v3 --archive --quiet | "
              f"{restore} {restore_args} --archive --quiet --drop "
              "--nsFrom='openim_v3.*' --nsTo='native_copy.*'")
    if flavour in ("ferretdb", "documentdb"):
        # FerretDB refuses mongorestore's index specs ("ns" is unknown); DocumentDB's
        # gateway resets the connection on them (seen 2026-12-02). Ours builds them: the
        # native side is spared that work, so the ratio understates ours.
        native += " --noIndexRestore"

    def documents(name: str) -> int:
        return sum(dst[name][c].estimated_document_count()
                   for c in dst[name].list_collection_names())

    def indexes(name: str) -> int:
        return sum(len(list(dst[name][c].list_indexes()))
                   for c in dst[name].list_collection_names())

    plan_args = ["--source", "mongo=" + env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                 "--target", "mongo=" + env["OIM_MONGO_DST_URL"],
                 *EXTRA_PLAN_ARGS, "--parallel", str(opts.parallel)]
    expected = sum(counts.values())
    runs = []
    found: dict[str, int] = {}
    for _ in range(opts.repeat):
        drop_targets()
        # DocumentDB's gateway resets some of mongo-tools' connections during their
        # handshakes (a burst of them at once); --drop makes a second attempt start clean.
        run = {"mongodump": step(native, attempts=3 if flavour == "documentdb" else 1)}
        assert documents("native_copy") == expected, (documents("native_copy"), expected)
        found["native"] = indexes("native_copy")
        run.update(ours(work / "mongo.yaml", plan_args))
        assert documents("openim_v3") == expected, (documents("openim_v3"), expected)
        found["ours"] = indexes("openim_v3")
        runs.append(run)
    drop_targets()
    src.drop_database("openim_v3")
    return {"store": "mongo", "documents": expected, "scale": opts.scale, "server": flavour,
            "load_s": round(load_s, 1), "indexes": found,
            "commands": {"mongodump": "mongodump --archive | mongorestore --archive"
                         + (" --noIndexRestore" if "noIndexRestore" in native else "")},
            **summary(runs, {"mongodump": ("mongodump",)})}


# ------------------------------------------------------------------------------ objects
class S3Bench:
    """Both MinIO servers of a benchmark: a client per side, and emptying a bucket."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def client(self, side: str) -> Any:
        from minio import Minio

        env = self.env
        return Minio(hostport(env[f"OIM_S3_{side}_URL"]), secure=False,
                     access_key=env[f"OIM_S3_{side}_ACCESS_KEY"],
                     secret_key=env[f"OIM_S3_{side}_SECRET_KEY"])

    def empty(self, side: str, bucket: str) -> None:
        """Delete every object of ``bucket`` and the bucket, if it exists."""
        from minio.deleteobjects import DeleteObject

        c = self.client(side)
        if not c.bucket_exists(bucket):
            return
        names = [DeleteObject(o.object_name) for o in c.list_objects(bucket, recursive=True)]
        for error in c.remove_objects(bucket, names):
            raise SystemExit(f"cleanup failed: {error}")
        c.remove_bucket(bucket)


def bench_objects(env: dict[str, str], opts: argparse.Namespace, work: Path) -> dict:
    """rclone and ours, interleaved, ``--repeat`` times on the same loaded source."""

    s3 = S3Bench(env)
    client, empty = s3.client, s3.empty

    loaded = time.monotonic()
    counts = load_fixture(
        "from fixtures import objects_data; from migrator.config import Endpoint; "
        "ep = Endpoint('objects', sys.argv[1] + '/openim', name='bench', options={"
        "'access_key': '${OIM_S3_SRC_ACCESS_KEY}', "
        "'secret_key': '${OIM_S3_SRC_SECRET_KEY}'}); "
        "print(json.dumps(objects_data.load(ep, seed=1, scale=float(sys.argv[2]), "
        "large=int(sys.argv[3]))))",
        env["OIM_S3_SRC_URL"], str(opts.small / 2000), str(opts.large))
    load_s = time.monotonic() - loaded
    rclone_env = {
        "RCLONE_CONFIG_SRC_TYPE": "s3", "RCLONE_CONFIG_SRC_PROVIDER": "Minio",
        "RCLONE_CONFIG_SRC_ENDPOINT": env["OIM_S3_SRC_URL"],
        "RCLONE_CONFIG_SRC_ACCESS_KEY_ID": env["OIM_S3_SRC_ACCESS_KEY"],
        "RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY": env["OIM_S3_SRC_SECRET_KEY"],
        "RCLONE_CONFIG_DST_TYPE": "s3", "RCLONE_CONFIG_DST_PROVIDER": "Minio",
        "RCLONE_CONFIG_DST_ENDPOINT": env["OIM_S3_DST_URL"],
        "RCLONE_CONFIG_DST_ACCESS_KEY_ID": env["OIM_S3_DST_ACCESS_KEY"],
        "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": env["OIM_S3_DST_SECRET_KEY"],
    }
    os.environ.pop("AWS_CA_BUNDLE", None)  # rclone refuses it on this machine's transport
    check_mode = "--download" if opts.download_check else "--one-way"
    plan_args = ["--source", "objects=" + env["OIM_S3_SRC_URL"] + "/openim",
                 "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
                 "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
                 "--target", "objects=" + env["OIM_S3_DST_URL"] + "/openim",
                 "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
                 "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}",
                 *EXTRA_PLAN_ARGS, "--parallel", str(opts.parallel)]
    runs = []
    for _ in range(opts.repeat):
        run: dict[str, dict[str, Any]] = {}
        run["rclone_copy"] = step(["rclone", "copy", "src:openim", "dst:rclone-copy",
                                   "--transfers", str(opts.parallel), "--checkers", "8"],
                                  env=rclone_env)
        run["rclone_check"] = step(["rclone", "check", "src:openim", "dst:rclone-copy",
                                    "--checkers", "8", check_mode], env=rclone_env)
        run.update(ours(work / "objects.yaml", plan_args))
        copied = sum(1 for _ in client("DST").list_objects("openim", recursive=True))
        assert copied == counts["objects"], (copied, counts["objects"])
        empty("DST", "openim")
        empty("DST", "rclone-copy")
        runs.append(run)
    empty("SRC", "openim")
    from statistics import median

    return {"store": "objects", "objects": counts["objects"], "bytes": counts["bytes"],
            "large": opts.large, "load_s": round(load_s, 1),
            "commands": {"rclone": "rclone copy + rclone check "
                         + ("--download" if opts.download_check else "(size + md5)")},
            "native_check_s": round(median(r["rclone_check"]["s"] for r in runs), 2),
            "check_ratio": round(median(r["rclone_check"]["s"] / r["verify"]["s"]
                                        for r in runs), 2),
            **summary(runs, {"rclone": ("rclone_copy",)})}


BENCHES: dict[str, tuple[str, Callable]] = {
    "mysql": ("mysql", bench_mysql), "redis": ("redis", bench_redis),
    "mongo": ("mongo", bench_mongo), "objects": ("minio", bench_objects),
}


def compile_ours() -> None:
    """Write migrator's bytecode once, as ``pip install`` does for an operator's copy.

    A source checkout run with PYTHONDONTWRITEBYTECODE (set on this machine) compiles every
    module of ours on every command, 0.05-0.1 s each, while the drivers' bytecode is in
    site-packages: timing that would measure the checkout, not the tool."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "migrator")],
                   check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", choices=sorted(BENCHES))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of native tool then ours, interleaved (medians)")
    parser.add_argument("--download-check", action="store_true",
                        help="objects: make rclone check hash by downloading, like our verify")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--plan-arg", action="append", default=[],
                        help="extra `openim-migrate plan` argument, "
                        "e.g. --plan-arg=--unit-records=50000")
    opts = parser.parse_args()
    if opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    EXTRA_PLAN_ARGS.extend(opts.plan_arg)
    compile_ours()
    group, bench = BENCHES[opts.store]
    work = Path(tempfile.mkdtemp(prefix="oim-bench-"))
    started_here = f"OIM_{'S3' if group == 'minio' else group.upper()}_SRC_URL" not in os.environ
    env = dict(os.environ)
    try:
        if started_here:
            env.update(services.start(work / "services", only=[group]))
            os.environ.update(env)
        result = bench(env, opts, work)
    finally:
        if started_here:
            services.stop(work / "services")
        shutil.rmtree(work, ignore_errors=True)
    result.update(parallel=opts.parallel, argv=["python", "bench/compare.py", *sys.argv[1:]])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
