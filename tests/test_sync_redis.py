"""`sync` for Redis through the command line against real servers: a source written to
during the bulk copy is caught up by sync passes until verify is EQUAL, and a target that
verify found different is repaired by sync alone, without `run --restart`. Each case runs
on a standalone target and on a Redis Cluster target whose one DB merges two source DBs
(a union unit), and ends with a key-by-key comparison made with plain redis-py."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from fixtures import redis_data
from migrator.config import Endpoint
from migrator.engine.sync import sync_unit
from migrator.engine.verify import verify_unit
from migrator.stores.redis import value as rv
from migrator.stores.redis.store import HashMemo, RedisStore
from tests.test_false_equal_redis import ROOT, Servers, cli, hostport, named, report_of
from tests.test_redis_store import assert_same, contents

# (target, source DBs, extra plan arguments)
SCENARIOS = {
    "standalone": ("dst", [0], []),
    "cluster-union": ("cluster", [0, 1], ["--target-option", "redis.db_map={0: 0, 1: 0}"]),
}


@pytest.fixture
def servers(redis_env: dict[str, str]) -> Any:
    s = Servers(redis_env)
    s.flush()
    yield s
    s.flush()
    s.cluster.close()
    for client in s.clients.values():
        client.close()


def source_endpoint(servers: Servers) -> Endpoint:
    return Endpoint("redis", "redis://:${OIM_REDIS_SRC_PASSWORD}@"
                    + hostport(servers.env["OIM_REDIS_SRC_URL"]))


def target_client(servers: Servers, target: str) -> Any:
    return servers.cluster if target == "cluster" else servers.dst(0)


def source_union(servers: Servers, dbs: list[int]) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for db in dbs:
        part = contents(servers.src(db))
        assert not set(part) & set(out), "a key in two merged DBs"
        out.update(part)
    return out


def make_plan(servers: Servers, tmp_path: Path, scenario: str, n: int) -> tuple[Path, str]:
    """Source DBs filled with ``n`` keys each (every type, 30 % with TTLs), and a plan."""
    target, dbs, extra = SCENARIOS[scenario]
    for db in dbs:
        redis_data.mixed(source_endpoint(servers), n, seed=40 + db, prefix=f"k{db}", db=db)
    plan = tmp_path / f"{scenario}.yaml"
    out = cli("plan", "--source", servers.source(),
              "--target", servers.to_cluster() if target == "cluster" else servers.to_dst(),
              *extra, "--batch-records", "200", "-o", str(plan))
    assert out.returncode == 0, out.stderr
    units = yaml.safe_load(plan.read_text())["inventory"]
    assert [u["spec"].get("dbs", [u["spec"].get("db")]) for u in units] == [dbs]
    return plan, target


def sync_json(plan: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = cli("sync", str(plan), "--json", *args)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def totals(report: dict[str, Any]) -> tuple[int, int]:
    """(copied, deleted) over every pass and unit."""
    units = [u for p in report["passes"] for u in p["units"]]
    return sum(u["copied"] for u in units), sum(u["deleted"] for u in units)


class Writer(threading.Thread):
    """Changes, adds and deletes keys of every type (with and without TTLs, and TTLs
    changed) in the source DBs, a few hundred times a second, until stopped."""

    def __init__(self, clients: dict[int, redis.Redis], seed: int) -> None:
        super().__init__(daemon=True)
        self.clients, self.rng = clients, random.Random(seed)
        self.halt = threading.Event()
        self.ops = {"changed": 0, "added": 0, "deleted": 0, "ttl": 0}
        self.error: BaseException | None = None
        self.born = 0

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.step()
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def burst(self, count: int) -> None:
        for _ in range(count):
            self.step()

    def step(self) -> None:
        rng = self.rng
        db = rng.choice(sorted(self.clients))
        client = self.clients[db]
        roll = rng.random()
        key = client.randomkey()
        if key is None or roll < 0.3:
            self.add(client, db)
        elif roll < 0.5:
            client.delete(key)
            self.ops["deleted"] += 1
        elif roll < 0.6:
            if rng.random() < 0.5:
                client.pexpire(key, rng.randint(2, 5) * 3_600_000)
            else:
                client.persist(key)
            self.ops["ttl"] += 1
        else:
            self.change(client, key)

    def add(self, client: redis.Redis, db: int) -> None:
        rng = self.rng
        self.born += 1
        key = f"live{db}:{self.born}"
        kind = rng.choice(["string", "hash", "set", "zset", "list"])
        if kind == "string":
            client.set(key, rng.randbytes(rng.randint(1, 300)))
        elif kind == "hash":
            client.hset(key, mapping={f"f{i}": rng.randbytes(8) for i in range(4)})
        elif kind == "set":
            client.sadd(key, *[rng.randbytes(6) for _ in range(5)])
        elif kind == "zset":
            client.zadd(key, {f"m{i}": rng.random() for i in range(5)})
        else:
            client.rpush(key, *[rng.randbytes(6) for _ in range(5)])
        if rng.random() < 0.4:
            client.pexpire(key, 3_600_000)
        self.ops["added"] += 1

    def change(self, client: redis.Redis, key: bytes) -> None:
        rng = self.rng
        kind = client.type(key)
        if kind == b"string":
            client.set(key, rng.randbytes(20), keepttl=True)
        elif kind == b"hash":
            client.hset(key, "changed", rng.randbytes(8))
        elif kind == b"set":
            client.sadd(key, rng.randbytes(6))
        elif kind == b"zset":
            client.zadd(key, {"changed": rng.random()})
        elif kind == b"list":
            client.rpush(key, rng.randbytes(6))
        else:
            return  # gone meanwhile
        self.ops["changed"] += 1


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sync_catches_up_with_a_source_written_during_the_copy(servers, tmp_path, scenario):
    plan, target = make_plan(servers, tmp_path, scenario, 3000)
    dbs = SCENARIOS[scenario][1]
    writer = Writer({db: servers.src(db) for db in dbs}, seed=7)
    writer.start()
    started = time.monotonic()
    # The rate limit stretches the copy over a few seconds, so the writer overlaps it.
    run = subprocess.run([sys.executable, "-m", "migrator", "run", str(plan), "--no-verify",
                          "--rate-limit", "300KiB", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    copy_seconds = time.monotonic() - started
    during = sum(writer.ops.values())
    code, first = sync_json(plan)  # one pass while the writer still writes
    writer.halt.set()
    writer.join()
    assert writer.error is None, writer.error
    writer.burst(60)  # the last writes, after every pass so far
    assert run.returncode == 0, run.stderr + run.stdout
    # The overlap is judged by the writes, not by the copy's length (a faster machine is no fault).
    assert during > 200, (copy_seconds, writer.ops)
    assert code == 0 and totals(first)[0] > 0

    code, report = sync_json(plan, "--until-stable")
    assert code == 0, report
    assert report["stable"] is True and report["passes"][-1]["changed"] == 0
    copied, deleted = totals(report)
    assert copied > 0 and deleted > 0  # the burst changed and deleted copied keys
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 0, check.stdout + check.stderr

    # Independently of the tool: every key, type, value and expiry, and the key counts.
    source, copied_to = source_union(servers, dbs), contents(target_client(servers, target))
    assert_same(source, copied_to)
    dbsize = (servers.cluster.dbsize(target_nodes=redis.RedisCluster.PRIMARIES)
              if target == "cluster" else servers.dst(0).dbsize())
    assert len(copied_to) == len(source) == dbsize == sum(servers.src(db).dbsize() for db in dbs)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sync_alone_repairs_what_verify_found_different(servers, tmp_path, scenario):
    plan, target = make_plan(servers, tmp_path, scenario, 400)
    dbs = SCENARIOS[scenario][1]
    run = cli("run", str(plan))
    assert run.returncode == 0, run.stderr
    dst = target_client(servers, target)
    last = dbs[-1]
    gone = next(k for k in servers.src(last).scan_iter(f"k{last}:s:*"))  # from the last DB
    changed = next(k for k in servers.src(0).scan_iter("k0:h:*"))
    timed = next(k for k in servers.src(0).scan_iter("k0:s:*")
                 if k != gone and servers.src(0).ttl(k) > 0)
    dst.delete(gone)
    dst.hset(changed, "f0", b"changed on the target")
    dst.persist(timed)  # an expiry lost on the target
    dst.set("only-on-target", "x")

    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    report = report_of(check)
    assert named(report, "missing_on_target") == {gone.decode()}
    assert named(report, "differ") == {changed.decode(), timed.decode()}
    assert named(report, "missing_on_source") == {"only-on-target"}

    code, synced = sync_json(plan)
    assert code == 0, synced
    assert totals(synced) == (3, 1)
    assert synced["passes"][0]["changed"] == 4
    assert cli("verify", str(plan)).returncode == 0
    assert_same(source_union(servers, dbs), contents(dst))
    code, again = sync_json(plan)  # nothing left to do
    assert code == 0 and totals(again) == (0, 0)


def test_sync_refuses_a_key_that_came_to_be_in_two_merged_dbs(servers, tmp_path):
    plan, _ = make_plan(servers, tmp_path, "cluster-union", 200)
    assert cli("run", str(plan)).returncode == 0
    key = next(k for k in servers.src(0).scan_iter("k0:s:*"))
    servers.src(1).set(key, b"another value in DB 1")
    before = servers.cluster.get(key)
    out = cli("sync", str(plan))
    assert out.returncode == 1, out.stderr
    assert f"'{key.decode()}'" in out.stderr and "source DBs 0 and 1" in out.stderr
    assert "one value would be lost" in out.stderr and "Traceback" not in out.stderr
    assert servers.cluster.get(key) == before  # neither value was picked silently


# -- the drill-down: cheap per-key hashes first, canonical fingerprints for the rest -----
def _fill(client: Any, base: int, *, target: bool) -> None:
    """The same 1500 strings (a third with expiries), a hash and a set on both sides; on
    the target the hash is a hashtable and the set not an intset (other DUMP payloads for
    equal values). ``base``: an absolute expiry on a whole second."""
    for i in range(1500):
        client.set(f"s:{i}", f"value {i}".encode() * 3)
        if i % 3 == 0:
            client.pexpireat(f"s:{i}", base + 1000 * i)
    fields = {f"f{i}": f"v{i}" for i in range(5)}
    client.hset("h", mapping={**fields, **({"wide": "w" * 200} if target else {})})
    client.sadd("set", *range(10), *(["x"] if target else []))
    if target:
        client.hdel("h", "wide")  # stays a hashtable
        client.srem("set", "x")  # stays a hashtable
    client.set("near", b"n", pxat=base + 900)
    client.set("far", b"f", pxat=base + 900)
    client.set("changed", b"before")
    client.set("missing" if not target else "extra", b"one side only")


def _open(endpoint: Endpoint) -> RedisStore:
    store = RedisStore(endpoint)
    store.open()
    return store


@pytest.mark.parametrize("memo", ["kept", "read-again"])
@pytest.mark.parametrize("target_kind", ["dst", "cluster"])
def test_drill_down_fingerprints_only_keys_whose_cheap_hashes_differ(servers, monkeypatch,
                                                                    memo, target_kind):
    dst = target_client(servers, target_kind)
    base = (int(time.time()) + 7200) * 1000
    _fill(servers.src(0), base, target=False)
    _fill(dst, base, target=True)
    assert dst.object("encoding", "h") != servers.src(0).object("encoding", "h")
    assert dst.object("encoding", "set") != servers.src(0).object("encoding", "set")
    dst.set("changed", b"after")
    dst.pexpireat("near", dst.pexpiretime("near") + 300)  # next 1 s bucket, within tolerance
    dst.pexpireat("far", dst.pexpiretime("far") + 5000)  # beyond tolerance
    env = servers.env
    source = _open(source_endpoint(servers))
    target = _open(Endpoint("redis", (
        "redis+cluster://:${OIM_REDIS_CLUSTER_PASSWORD}@" + hostport(env["OIM_REDIS_CLUSTER_URL"])
        if target_kind == "cluster" else
        "redis://:${OIM_REDIS_DST_PASSWORD}@" + hostport(env["OIM_REDIS_DST_URL"]) + "/0")))
    try:
        unit = source.list_units()[0]
        target.prepare_target([unit], source)
        if memo == "read-again":  # the digest keeps no hashes: they are read per chunk
            source._hashes = target._hashes = HashMemo(limit=0)
        fingerprinted: list[bytes] = []
        real = rv.fingerprints

        def counted(client: Any, keys: list[bytes], **kw: Any) -> Any:
            fingerprinted.extend(keys)
            return real(client, keys, **kw)

        monkeypatch.setattr(rv, "fingerprints", counted)
        report = verify_unit(source, target, unit)
        assert report.status == "differ", report
        assert sorted(report.differ) == ["changed", "far"]
        assert report.missing_on_target == ["missing"] and report.missing_on_source == ["extra"]
        assert (report.n_differ, report.n_missing_on_target, report.n_missing_on_source) == \
            (2, 1, 1)
        assert report.source_count == report.target_count == 1506
        # Each side fingerprints the keys whose cheap hashes differ, nothing else: not the
        # 1500 equal strings, not the set (hashed from its sorted elements either way).
        suspects = {b"changed", b"far", b"near", b"h", b"missing", b"extra"}
        assert set(fingerprinted) == suspects and len(fingerprinted) == 2 * len(suspects)

        fingerprinted.clear()
        synced = sync_unit(source, target, unit)
        assert (synced.copied, synced.deleted) == (3, 1)  # changed, far, missing; extra
        assert set(fingerprinted) == suspects
        after = verify_unit(source, target, unit)
        assert after.status == "match" and after.chunks == [], after
        assert_same(contents(servers.src(0)), contents(dst))
    finally:
        source.close()
        target.close()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_later_passes_follow_the_source_and_compare_only_the_keys_it_named(servers, tmp_path,
                                                                           scenario):
    """Through the read-only account: the first pass digests every chunk, later ones take
    only the keys the source named (CLIENT TRACKING) — changed, deleted, added, expired —
    in whichever DB of the unit they live."""
    from migrator.engine import operations
    from migrator.engine.sync import FOLLOWING
    from migrator.plan import load_plan

    plan_path, target = make_plan(servers, tmp_path, scenario, 1500)
    assert yaml.safe_load(plan_path.read_text())["stores"]["redis"]["facts"]["source"][
        "catch_up"] == "followed changes"  # plan probed it with the read-only account
    assert cli("run", str(plan_path), "--no-verify").returncode == 0
    plan = load_plan(plan_path)
    dbs = SCENARIOS[scenario][1]
    first_db, last_db = servers.src(dbs[0]), servers.src(dbs[-1])
    with operations.catching_up(plan, plan_path, follow=True) as catch:
        assert catch.methods == {"redis": FOLLOWING}, catch.notes
        first = catch.run_pass()
        assert first.changed == 0 and [u.followed for u in first.units] == [None]
        changed = next(iter(first_db.scan_iter(f"k{dbs[0]}:s:*")))
        gone = next(iter(last_db.scan_iter(f"k{dbs[-1]}:h:*")))
        first_db.set(changed, b"changed after the first pass", keepttl=True)
        last_db.delete(gone)
        last_db.set(b"added-late", b"x", px=3_600_000)
        first_db.set(b"short-lived", b"y", px=1)  # named, then gone on both sides
        time.sleep(0.05)
        assert not first_db.exists(b"short-lived")  # expired now, and named again
        (second,) = catch.run_pass().units
        assert (second.followed, second.copied, second.deleted) == (4, 2, 1), second
        (third,) = catch.run_pass().units
        assert (third.followed, third.changed) == (0, 0)
    check = cli("verify", str(plan_path), "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert_same(source_union(servers, dbs), contents(target_client(servers, target)))
    # EQUAL stays a promise: a key the followed pass wrote, changed behind our back
    target_client(servers, target).set(b"added-late", b"tampered", keepttl=True)
    check = cli("verify", str(plan_path), "--json")
    assert check.returncode == 5 and "added-late" in named(report_of(check), "differ"), \
        check.stdout


def test_a_flush_or_a_lost_feed_goes_back_to_digests(servers, tmp_path):
    from migrator.engine import operations
    from migrator.engine.sync import DIGESTS
    from migrator.plan import load_plan

    plan_path, target = make_plan(servers, tmp_path, "standalone", 300)
    assert cli("run", str(plan_path), "--no-verify").returncode == 0
    plan = load_plan(plan_path)
    src = servers.src(0)
    with operations.catching_up(plan, plan_path, follow=True) as catch:
        catch.run_pass()
        src.flushdb()
        (flushed,) = catch.run_pass().units
        assert flushed.followed is None and flushed.deleted > 250 and servers.dst(0).dbsize() == 0
        assert any("flushed" in note for note in catch.notes), catch.notes
        src.set(b"after-flush", b"1")
        (again,) = catch.run_pass().units
        assert (again.followed, again.copied) == (1, 1)  # followed again after a full pass
        src.client_kill_filter(_type="pubsub")  # the feed's subscriber
        src.set(b"after-kill", b"1")
        (lost,) = catch.run_pass().units
        assert lost.followed is None and lost.copied == 1
        assert catch.methods == {"redis": DIGESTS}
        assert any("connection ended" in note for note in catch.notes), catch.notes
    assert servers.dst(0).get(b"after-kill") == b"1"


def test_an_account_that_may_not_follow_is_told_why_and_sync_digests(servers, tmp_path,
                                                                    monkeypatch):
    """The read-only account without +subscribe: `sync --until-stable` says what to grant
    and catches up by chunk digests all the same."""
    admin = servers.src(0)
    reader = next(line for line in admin.execute_command("ACL", "LIST")
                  if line.split()[1] == b"reader")
    rules = [r for r in reader.split()[2:] if not r.startswith(b"#") and r != b"+subscribe"]
    admin.execute_command("ACL", "SETUSER", "notrack", "reset", ">notrack-pw", *rules)
    try:
        monkeypatch.setenv("OIM_NOTRACK_PASSWORD", "notrack-pw")
        redis_data.mixed(source_endpoint(servers), 200, seed=3, prefix="k0")
        plan = tmp_path / "p.yaml"
        source = ("redis=redis://notrack:${OIM_NOTRACK_PASSWORD}@"
                  + hostport(servers.env["OIM_REDIS_SRC_URL"]) + "/0")
        planned = cli("plan", "--source", source, "--target", servers.to_dst(), "-o", str(plan))
        assert planned.returncode == 0, planned.stderr
        # plan already says it, before any sync or cutover
        (line,) = [x for x in planned.stdout.splitlines() if "catch-up:" in x]
        assert "chunk digests in every pass" in line and "+subscribe" in line, line
        assert cli("run", str(plan), "--no-verify").returncode == 0
        admin.set(b"k0:late", b"1")
        code, report = sync_json(plan, "--until-stable")
        assert code == 0 and report["method"] == {"redis": "chunk digests"}, report
        (note,) = report["notes"]
        assert "'notrack' may not follow changes" in note and "+subscribe" in note, note
        assert sum(u["copied"] for p in report["passes"] for u in p["units"]) == 1
    finally:
        admin.execute_command("ACL", "DELUSER", "notrack")


def test_a_full_pass_proves_all_but_what_it_wrote_and_verify_compares_just_that(servers,
                                                                                tmp_path):
    """What a cutover's verify relies on inside the freeze: a full pass (every chunk
    digested, every difference named by the drill-down) leaves only the keys it wrote to
    prove; those are compared again, and a change to one of them is found."""
    from migrator.engine import operations
    from migrator.plan import load_plan

    plan_path, _ = make_plan(servers, tmp_path, "standalone", 1000)
    assert cli("run", str(plan_path), "--no-verify").returncode == 0
    plan = load_plan(plan_path)
    src = servers.src(0)
    changed = sorted(src.scan_iter("k0:s:*"))[:2]
    for key in changed:
        src.set(key, b"changed after the copy", keepttl=True)
    src.set(b"added-after-the-copy", b"1")
    (unit,) = operations.sync_plan(plan, plan_path).passes[-1].units
    assert unit.proven is not None and unit.proven.recheck == frozenset()
    written = sorted(k.decode() for k in [*changed, b"added-after-the-copy"])
    assert sorted(unit.proven.keys) == written
    proven = {unit.unit: unit.proven}
    report = operations.verify_plan(plan, plan_path, proven=proven)
    (checked,) = [u for u in report.units if u.unit == unit.unit]
    assert report.ok and checked.rechecked == [] and checked.rechecked_records == 3
    assert checked.source_count == src.dbsize()
    servers.dst(0).set(changed[0], b"tampered", keepttl=True)
    report = operations.verify_plan(plan, plan_path, proven=proven)
    (checked,) = [u for u in report.units if u.unit == unit.unit]
    assert report.exit_code == 5 and checked.differ == [changed[0].decode()]
