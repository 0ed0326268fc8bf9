"""False EQUAL, Redis: through the command line against real servers, each way `verify`
could once say EQUAL (or plan an empty copy) while data was missing. Each case changes
the source or the target after a run and checks that verify exits 5 naming the key or
DB, or that plan refuses (exit 3) naming the field, with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


class Servers:
    """Admin clients of the source (any DB), the standalone target and the cluster."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.clients: dict[tuple[str, int], redis.Redis] = {}
        self.cluster = redis.RedisCluster(
            host=hostport(env["OIM_REDIS_CLUSTER_URL"]).split(":")[0],
            port=int(hostport(env["OIM_REDIS_CLUSTER_URL"]).split(":")[1]),
            password=env["OIM_REDIS_CLUSTER_PASSWORD"])

    def _client(self, side: str, db: int) -> redis.Redis:
        if (side, db) not in self.clients:
            host, port = hostport(self.env[f"OIM_REDIS_{side}_URL"]).split(":")
            self.clients[side, db] = redis.Redis(
                host=host, port=int(port), db=db,
                password=self.env[f"OIM_REDIS_{side}_PASSWORD"])
        return self.clients[side, db]

    def src(self, db: int = 0) -> redis.Redis:
        return self._client("SRC", db)

    def dst(self, db: int = 0) -> redis.Redis:
        return self._client("DST", db)

    def cluster_keys(self) -> set[bytes]:
        return set(self.cluster.scan_iter(count=1000, target_nodes=redis.RedisCluster.PRIMARIES))

    def source(self, path: str = "") -> str:
        return ("redis=redis://${OIM_REDIS_SRC_READER_USER}:${OIM_REDIS_SRC_READER_PASSWORD}@"
                + hostport(self.env["OIM_REDIS_SRC_URL"]) + path)

    def to_cluster(self) -> str:
        return ("redis=redis+cluster://:${OIM_REDIS_CLUSTER_PASSWORD}@"
                + hostport(self.env["OIM_REDIS_CLUSTER_URL"]))

    def to_dst(self, path: str = "") -> str:
        return ("redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
                + hostport(self.env["OIM_REDIS_DST_URL"]) + path)

    def flush(self) -> None:
        self.src().flushall()
        self.dst().flushall()
        self.cluster.flushall(target_nodes=redis.RedisCluster.PRIMARIES)


@pytest.fixture
def servers(redis_env: dict[str, str]) -> Any:
    s = Servers(redis_env)
    s.flush()
    yield s
    s.flush()
    s.cluster.close()
    for client in s.clients.values():
        client.close()


def report_of(out: subprocess.CompletedProcess) -> dict[str, Any]:
    assert out.stdout, out.stderr
    return json.loads(out.stdout)


def named(report: dict[str, Any], category: str) -> set[str]:
    return {k for u in report["units"] for k in u[category]}


def refused(out: subprocess.CompletedProcess, plan: Path, *words: str) -> str:
    """Exit 3, one line naming ``words``, no traceback, no plan written."""
    assert out.returncode == 3, out.stderr + out.stdout
    assert "Traceback" not in out.stderr and not plan.exists()
    first = out.stderr.strip().splitlines()[0]
    for word in words:
        assert word in first, first
    return first


def fill_two_dbs(servers: Servers) -> None:
    zero, one = servers.src(0), servers.src(1)
    for i in range(300):
        zero.set(f"user:{i}", f"u{i}", px=86_400_000 if i % 3 == 0 else None)
    for i in range(200):
        one.hset(f"token:{i}", mapping={"t": f"x{i}", "p": "web"})
    one.rpush("queue", *range(50))


def test_two_dbs_merged_into_a_cluster_verify_as_one_and_a_lost_key_is_named(servers,
                                                                             tmp_path):
    fill_two_dbs(servers)
    plan = tmp_path / "merge.yaml"
    out = cli("plan", "--source", servers.source(), "--target", servers.to_cluster(),
              "--target-option", "redis.db_map={0: 0, 1: 0}", "-o", str(plan))
    assert out.returncode == 0, out.stderr
    units = yaml.safe_load(plan.read_text())["inventory"]
    assert [u["spec"]["dbs"] for u in units] == [[0, 1]]
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    assert report_of(run)["verify"]["ok"] is True
    assert len(servers.cluster_keys()) == 501
    # Before unions, each source DB was compared with the whole target DB: never EQUAL.
    assert cli("verify", str(plan)).returncode == 0
    servers.cluster.delete("token:7")  # from source DB 1
    servers.cluster.set("user:5", "changed")  # from source DB 0
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    report = report_of(check)
    assert named(report, "missing_on_target") == {"token:7"}
    assert named(report, "differ") == {"user:5"}


def test_merge_with_a_key_in_both_dbs_is_refused_at_plan_time(servers, tmp_path):
    fill_two_dbs(servers)
    servers.src(1).set("user:42", "also in db 1")
    plan = tmp_path / "collide.yaml"
    out = cli("plan", "--source", servers.source(), "--target", servers.to_cluster(),
              "--target-option", "redis.db_map={0: 0, 1: 0}", "-o", str(plan))
    line = refused(out, plan, "stores.redis.target.db_map", "'user:42' (DBs 0 and 1)")
    assert "1 key(s) exist in more than one" in line
    assert not servers.cluster_keys()


def test_a_key_that_collides_after_plan_is_named_by_verify(servers, tmp_path):
    fill_two_dbs(servers)
    plan = tmp_path / "late.yaml"
    assert cli("plan", "--source", servers.source(), "--target", servers.to_cluster(),
               "--target-option", "redis.db_map={0: 0, 1: 0}", "-o", str(plan)
               ).returncode == 0
    assert cli("run", str(plan)).returncode == 0
    servers.src(1).set("user:3", servers.src(0).get("user:3"))  # same key, same value
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5 and named(report_of(check), "differ") == {"user:3"}


def test_a_db_that_got_keys_after_plan_is_named_by_verify_and_refused_by_run(servers,
                                                                             tmp_path):
    servers.src(0).set("a", "1")
    plan = tmp_path / "grow.yaml"
    assert cli("plan", "--source", servers.source(), "--target", servers.to_dst(),
               "-o", str(plan)).returncode == 0
    assert cli("run", str(plan)).returncode == 0
    servers.src(6).set("born-later", "x")
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    assert named(report_of(check), "missing_on_target") == {"db 6"}
    again = cli("run", str(plan))
    assert again.returncode == 3 and "db 6" in again.stderr
    assert servers.dst(6).dbsize() == 0


def test_an_escaped_pattern_selects_the_literal_key(servers, tmp_path):
    for key in ("a*b", "axb", "a\\b", "other"):
        servers.src(0).set(key, "1")
    plan = tmp_path / "glob.yaml"
    out = cli("plan", "--source", servers.source("/0"), "--target", servers.to_dst("/0"),
              "--include", "redis=a\\*b", "--strict", "-o", str(plan))
    assert out.returncode == 0, out.stderr
    assert cli("run", str(plan)).returncode == 0
    assert servers.dst(0).keys() == [b"a*b"]
    servers.dst(0).set("a*b", "2")
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5 and named(report_of(check), "differ") == {"a*b"}


def test_url_db_paths_are_honoured_on_both_sides(servers, tmp_path):
    servers.src(0).set("in-zero", "0")
    servers.src(2).set("in-two", "2")
    plan = tmp_path / "paths.yaml"
    out = cli("plan", "--source", servers.source("/2"), "--target", servers.to_dst("/5"),
              "-o", str(plan))
    assert out.returncode == 0, out.stderr
    assert [u["spec"]["db"] for u in yaml.safe_load(plan.read_text())["inventory"]] == [2]
    assert cli("run", str(plan)).returncode == 0
    assert servers.dst(5).keys() == [b"in-two"]
    assert servers.dst(0).dbsize() == servers.dst(2).dbsize() == 0
    servers.dst(5).delete("in-two")
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5 and named(report_of(check), "missing_on_target") == {"in-two"}


@pytest.mark.parametrize("source_path, options, words", [
    ("", ["--source-option", "redis.dbs=[99]"],
     ("stores.redis.source.dbs", "DB 99", "the server has 16 databases (0-15)")),
    ("/16", [], ("stores.redis.source.url", "the server has 16 databases")),
    ("/abc", [], ("stores.redis.source.url", "'/abc' is not a database number")),
    ("", ["--source-option", "redis.scan_count=lots"],
     ("stores.redis.source.scan_count", "must be a whole number")),
    ("", ["--target-option", "redis.db_map={5: 0}", "--source-option", "redis.dbs=[5]",
          "--include", "redis=[a-\u00e9]"], ("stores.redis.selection.include[0]", "x86 and ARM")),
])
def test_bad_redis_input_is_one_line_and_writes_nothing(servers, tmp_path, source_path,
                                                       options, words):
    servers.src(0).set("a", "1")
    plan = tmp_path / "bad.yaml"
    out = cli("plan", "--source", servers.source(source_path), "--target", servers.to_dst(),
              *options, "-o", str(plan))
    refused(out, plan, *words)
    assert servers.dst(0).dbsize() == 0


def test_a_merge_made_by_the_target_url_alone_is_refused(servers, tmp_path):
    servers.src(0).set("a", "1")
    servers.src(3).set("b", "1")
    plan = tmp_path / "implicit.yaml"
    out = cli("plan", "--source", servers.source(), "--target", servers.to_dst("/0"),
              "-o", str(plan))
    refused(out, plan, "stores.redis.target.url", "DBs 0 and 3 would all land in DB 0")
