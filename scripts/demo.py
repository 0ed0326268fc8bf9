#!/usr/bin/env python3
"""`make demo`: the main job end to end on local services.

Starts real servers (a standalone OpenIM-like source and Kubernetes-like targets: a Redis
Cluster, MariaDB, DocumentDB's MongoDB-protocol gateway (FerretDB when it is not built),
MinIO) on free loopback ports, loads OpenIM-shaped data, then runs the commands an operator
would: `plan`, `run`, `sync`, `verify`; a backup into an encrypted archive, `backup
list`/`check` and a restore `drill` into empty staging servers; then the cluster part
against a local kube-apiserver: `deploy` and a staging `cutover` with its rollback. Stops
every server at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import services  # noqa: E402

from migrator.config import Endpoint  # noqa: E402

GROUP = {"redis": "redis", "mysql": "mysql", "mongo": "mongo", "objects": "minio"}


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def endpoints(env: dict[str, str], stores: list[str]) -> list[str]:
    """CLI arguments for `plan`: URLs with ${VAR} references, never the secrets."""
    args: list[str] = []

    def hostport(url: str) -> str:
        return url.split("://", 1)[1].split("/", 1)[0]

    if "redis" in stores:
        args += ["--source", "redis=redis://${OIM_REDIS_SRC_READER_USER}:"
                 "${OIM_REDIS_SRC_READER_PASSWORD}@" + hostport(env["OIM_REDIS_SRC_URL"]) + "/0",
                 "--target", "redis=redis+cluster://:${OIM_REDIS_CLUSTER_PASSWORD}@"
                 + hostport(env["OIM_REDIS_CLUSTER_URL"]),
                 "--preset", "redis=openim"]
    if "mysql" in stores:
        args += ["--source", "mysql=mysql://${OIM_MYSQL_SRC_READER_USER}:"
                 "${OIM_MYSQL_SRC_READER_PASSWORD}@" + hostport(env["OIM_MYSQL_SRC_URL"])
                 + "/openIM_v3",
                 "--target", "mysql=mysql://${OIM_MYSQL_DST_USER}:${OIM_MYSQL_DST_PASSWORD}@"
                 + hostport(env["OIM_MYSQL_DST_URL"])]
    if "mongo" in stores:
        args += ["--source", "mongo=" + env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                 "--target", "mongo=" + env["OIM_MONGO_DST_URL"]]
    if "objects" in stores:
        args += ["--source", "objects=" + env["OIM_S3_SRC_URL"] + "/openim",
                 "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
                 "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
                 "--target", "objects=" + env["OIM_S3_DST_URL"] + "/openim",
                 "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
                 "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}"]
    return args


def staging_targets(env: dict[str, str], stores: list[str]) -> list[str]:
    """CLI arguments for `drill`: the empty staging servers' endpoints, their secrets as
    references to OIM_STAGING_* copies (the names would collide with the first servers')."""
    for name, value in env.items():
        if name.startswith("OIM_"):
            os.environ["OIM_STAGING_" + name[4:]] = value

    def hostport(url: str) -> str:
        return url.split("://", 1)[1].split("/", 1)[0]

    args: list[str] = []
    if "redis" in stores:
        args += ["--target", "redis=redis://:${OIM_STAGING_REDIS_DST_PASSWORD}@"
                 + hostport(env["OIM_REDIS_DST_URL"]) + "/0"]
    if "mysql" in stores:
        args += ["--target", "mysql=mysql://${OIM_STAGING_MYSQL_DST_USER}:"
                 "${OIM_STAGING_MYSQL_DST_PASSWORD}@" + hostport(env["OIM_MYSQL_DST_URL"])]
    if "mongo" in stores:
        args += ["--target", "mongo=" + env["OIM_MONGO_DST_URL"].replace(
            "${OIM_", "${OIM_STAGING_")]
    if "objects" in stores:
        args += ["--target", "objects=" + env["OIM_S3_DST_URL"] + "/openim",
                 "--target-option", "objects.access_key=${OIM_STAGING_S3_DST_ACCESS_KEY}",
                 "--target-option", "objects.secret_key=${OIM_STAGING_S3_DST_SECRET_KEY}"]
    return args


def backup_and_drill(plan: Path, work: Path, stores: list[str]) -> int:
    """A backup of the sources into an encrypted archive, then the after-life jobs: list,
    check, and a restore drill into empty staging servers."""
    import pyrage

    os.environ["OIM_DEMO_ARCHIVE_KEY"] = str(pyrage.x25519.Identity.generate())
    archive = f"archive+file://{work / 'archive'}"
    key = ["--key", "${OIM_DEMO_ARCHIVE_KEY}"]
    step("backup: the sources into an encrypted archive (age), one set")
    code = cli("backup", str(plan.relative_to(ROOT)), "--to", archive, *key)
    if code:
        return code
    step("backup list and backup check --read-data")
    code = cli("backup", "list", archive, *key) or cli("backup", "check", archive, *key,
                                                       "--read-data")
    if code:
        return code
    step("drill: restore the newest set into empty staging servers, verify, report RPO/RTO")
    staging = services.start(work / "staging", only=[GROUP[s] for s in stores])
    try:
        return cli("drill", archive, *key, *staging_targets(staging, stores),
                   "--max-age", "1h", "--junit", str(work / "drill.xml"),
                   "--metrics-file", str(work / "drill.prom"))
    finally:
        services.stop(work / "staging")


def load_fixtures(env: dict[str, str], stores: list[str], scale: float) -> None:
    if "redis" in stores:
        from fixtures import redis_data
        counts = redis_data.load(Endpoint("redis", env["OIM_REDIS_SRC_URL"].replace(
            "redis://", "redis://:${OIM_REDIS_SRC_PASSWORD}@"), name="demo.redis"),
            seed=1, scale=scale)
        print(f"  redis:   {sum(counts.values()):,} keys")
    if "mysql" in stores:
        from fixtures import mysql_data
        counts = mysql_data.load(Endpoint("mysql", env["OIM_MYSQL_SRC_URL"].replace(
            "mysql://", "mysql://${OIM_MYSQL_SRC_USER}:${OIM_MYSQL_SRC_PASSWORD}@"),
            name="demo.mysql"), seed=1, scale=scale)
        print(f"  mysql:   {sum(counts.values()):,} rows")
    if "mongo" in stores:
        from fixtures import mongo_data, objects_data
        # the s3 collection names the objects the bucket holds, as in a real install
        keys = list(objects_data.object_keys(seed=1, scale=scale, large=2))
        counts = mongo_data.load(Endpoint("mongo", env["OIM_MONGO_SRC_URL"] + "/openim_v3",
                                          name="demo.mongo"), seed=1, scale=scale,
                                 object_keys=keys if "objects" in stores else None)
        print(f"  mongo:   {sum(counts.values()):,} documents")
    if "objects" in stores:
        from fixtures import objects_data
        counts = objects_data.load(Endpoint(
            "objects", env["OIM_S3_SRC_URL"] + "/openim", name="demo.objects",
            options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                     "secret_key": "${OIM_S3_SRC_SECRET_KEY}"}), seed=1, scale=scale, large=2)
        print(f"  objects: {counts['objects']:,} objects, {counts['bytes'] / 2**20:.0f} MiB")


def cli(*args: str) -> int:
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"$ openim-migrate {shown}", flush=True)
    return subprocess.call([sys.executable, "-m", "migrator", *args], cwd=ROOT)


class SourceWriter(threading.Thread):
    """OpenIM still running on the source during the copy: logins come and go (token keys
    the openim preset keeps), so the target is behind when the copy ends."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        import redis

        self.client = redis.Redis.from_url(env["OIM_REDIS_SRC_URL"],
                                           password=env["OIM_REDIS_SRC_PASSWORD"])
        self.stopping = threading.Event()
        self.writes = 0

    def run(self) -> None:
        i = 0
        while not self.stopping.wait(0.02):
            i += 1
            key = f"UID_PID_TOKEN_STATUS:demo-user-{i % 500}:iOS"
            if i % 7 == 0:
                self.client.delete(key)
            else:
                self.client.hset(key, f"token-{i}", "1")
            self.writes += 1

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return self.writes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", default="redis,mysql,mongo,objects",
                        help="comma-separated subset of redis,mysql,mongo,objects")
    parser.add_argument("--scale", type=float, default=1.0, help="fixture size multiplier")
    parser.add_argument("--keep", action="store_true", help="leave the servers running")
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip the Kubernetes part (deploy, cutover)")
    opts = parser.parse_args()
    stores = [s for s in opts.stores.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="openim-migrate-demo-"))
    plan = ROOT / "plans" / "demo.yaml"
    for stale in (plan, plan.with_name("demo.journal.sqlite")):
        stale.unlink(missing_ok=True)
    try:
        step("starting local services (" + ", ".join(GROUP[s] for s in stores) + ")")
        env = services.start(work, only=[GROUP[s] for s in stores])
        os.environ.update(env)
        step("loading OpenIM-shaped data into the sources")
        load_fixtures(env, stores, opts.scale)
        args = endpoints(env, stores)
        step("plan: measure both sides, check access, write plans/demo.yaml")
        code = cli("plan", *args, "--environment", "staging", "-o", str(plan.relative_to(ROOT)))
        if code:
            return code
        writer = SourceWriter(env) if "redis" in stores else None
        step("run: copy every unit (resumable)"
             + (", while OpenIM keeps writing to the source Redis" if writer else ""))
        if writer:
            writer.start()
        code = cli("run", str(plan.relative_to(ROOT)), "--no-verify")
        if writer:
            print(f"  (the writer made {writer.stop():,} changes during the copy)")
        if code:
            return code
        step("sync: catch the target up with what changed during the copy")
        code = cli("sync", str(plan.relative_to(ROOT)), "--until-stable")
        if code:
            return code
        step("verify: checksums of source and target, unit by unit")
        code = cli("verify", str(plan.relative_to(ROOT)))
        if code:
            return code
        code = backup_and_drill(plan, work, stores)
        if code or opts.no_cluster:
            return code
        step("deploy: the in-cluster data services, against a local kube-apiserver")
        code = subprocess.call([sys.executable, "scripts/k8s_apiserver.py", "demo",
                                "--dir", str(work / "k8s-deploy")], cwd=ROOT)
        if code:
            return code
        step("cutover (staging): freeze, final sync, verify, switch OpenIM's config; "
             "then --rollback")
        from demo_cutover import staging_cutover

        return staging_cutover(plan, work)
    finally:
        if opts.keep:
            print(f"\nservers left running; stop them with: python scripts/services.py stop "
                  f"--dir {work}")
        else:
            services.stop(work)


if __name__ == "__main__":
    sys.exit(main())
