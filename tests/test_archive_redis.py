"""The Redis archive format against real servers: RDB files built from DUMP payloads.

What must hold: every Redis type (each of its encodings, with and without TTL, binary
keys, big values) goes backup -> restore into an empty DB -> verify EQUAL through the
engine; the archive's RDB files start a fresh ``redis-server`` with the same keys and
TTLs and pass ``redis-check-rdb``; a DB split into several units joins into one file as
the docs say; values decoded from payloads give exactly the live store's fingerprints and
chunk hashes; a key changed after the backup is named by verify; a key that expired
since the backup is not restored; an age-encrypted archive on MinIO round-trips.
"""

from __future__ import annotations

import io
import random
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import zstandard
from pyrage import x25519

from fixtures import redis_data
from migrator.archive import archive_endpoint, is_archive_url, open_archive
from migrator.archive.endpoint import ArchiveStore
from migrator.config import Endpoint
from migrator.engine import session as session_module
from migrator.engine.journal import COPIED, Journal
from migrator.engine.session import Session
from migrator.engine.transfer import Transfer
from migrator.engine.verify import DIFFER, verify
from migrator.errors import CapabilityMissing
from migrator.plan import Options, Plan, StorePair
from migrator.stores.base import Batch, Chunk, StoreOptions
from migrator.stores.redis import archive as ra
from migrator.stores.redis import rdb
from migrator.stores.redis import value as rv
from migrator.stores.redis.store import RedisStore
from tests.test_archive import minio_client
from tests.test_redis_store import source_ep, target_ep

KEY = x25519.Identity.generate()
BIG = random.Random(7).randbytes(3 * (1 << 20) + 17)  # > 3 GETRANGE pages, incompressible
DAY = 86_400_000


@pytest.fixture(autouse=True)
def _archive_key(monkeypatch):
    monkeypatch.setenv("OIM_TEST_ARCHIVE_KEY", str(KEY))


def raw(endpoint: Endpoint, db: int = 0) -> redis.Redis:
    conn = endpoint.connection()
    client = redis.Redis(host=conn.host, port=conn.port, username=conn.username,
                         password=conn.password, db=db, protocol=2)
    client.response_callbacks.clear()
    return client


@pytest.fixture
def servers(redis_env):
    clients = {"src": raw(source_ep()), "dst": raw(target_ep("dst"))}
    for c in clients.values():
        c.flushall()
    yield clients
    for c in clients.values():
        c.flushall()
        c.close()


def fill(client: redis.Redis, db: int, now_ms: int) -> None:
    """Every type in each encoding a 7.x server picks, some keys with expiries."""
    c = raw_db(client, db)
    later = now_ms + DAY
    c.set(b"str:small", b"hello")
    c.set(b"str:int", b"-12345")
    c.set(b"str:empty", b"")
    c.set(b"str:lzf", b"openim message " * 5000)  # compressible: LZF in the payload
    c.set(b"str:big", BIG)
    c.set(b"str:ttl", b"expires tomorrow", px=DAY)
    c.set(b"bin:\x00\xff\\x41\r\n", b"\x00\x01\x02binary value\xff")
    c.rpush(b"list:small", b"a", b"1", b"-300", b"70000", b"b" * 100)
    c.rpush(b"list:big", *[b"item-%d" % i if i % 3 else b"%d" % i for i in range(5000)])
    c.rpush(b"list:fat", *[random.Random(i).randbytes(3000) for i in range(40)])
    c.sadd(b"set:ints", *range(-5, 100))
    c.sadd(b"set:small", b"alice", b"bob", b"\xffbytes")
    c.sadd(b"set:big", *[b"member-%d" % i for i in range(1500)])
    c.sadd(b"set:intbig", *range(0, 2000, 3))  # past intset's 512: a hashtable of ints
    c.hset(b"hash:small", mapping={b"f1": b"v1", b"n": b"42", b"neg": b"-7000000"})
    c.hset(b"hash:long-value", mapping={b"f": b"x" * 70})  # past 64 bytes: a hashtable
    c.hset(b"hash:mid", mapping={b"field-%d" % i: b"value-%d" % i for i in range(700)})
    c.hset(b"hash:big", mapping={b"field-%d" % i: b"%d" % i for i in range(1500)})
    c.zadd(b"zset:small", {b"a": 1, b"b": 2.5, b"c": -3.25, b"inf": float("inf"),
                           b"big": 1e300, b"tiny": 1e-300})
    c.zadd(b"zset:big", {b"m%d" % i: i / 7 for i in range(300)})
    c.pexpireat(b"zset:big", later)
    c.pexpireat(b"hash:mid", later + 5)
    c.pexpireat(b"list:big", later + 10)
    for i in range(250):
        fields = {b"type": b"msg", b"n": b"%d" % i} if i % 5 else {b"other": b"shape %d" % i}
        c.xadd(b"stream:chat", fields, id=b"%d-%d" % (1_700_000_000_000 + i // 3, i % 3))
    c.xdel(b"stream:chat", b"1700000000010-1", b"1700000000020-0")
    c.xgroup_create(b"stream:chat", b"readers", id=b"0")
    c.xgroup_create(b"stream:chat", b"late", id=b"$")
    c.xreadgroup(b"readers", b"worker-1", {b"stream:chat": b">"}, count=7)
    c.xreadgroup(b"readers", b"worker-2", {b"stream:chat": b">"}, count=3)
    c.xack(b"stream:chat", b"readers", b"1700000000000-1")
    c.xadd(b"stream:empty", {b"f": b"v"}, id=b"5-5")
    c.xtrim(b"stream:empty", maxlen=0)
    c.xgroup_create(b"stream:empty", b"g", id=b"$")
    c.pexpireat(b"stream:chat", later + 20)
    c.close()


def raw_db(client: redis.Redis, db: int) -> redis.Redis:
    """A raw client of the same server on DB ``db``."""
    kwargs = client.connection_pool.connection_kwargs
    out = redis.Redis(host=kwargs["host"], port=kwargs["port"], password=kwargs.get("password"),
                      username=kwargs.get("username"), db=db, protocol=2)
    out.response_callbacks.clear()
    return out


def fingerprints(client: redis.Redis) -> dict[bytes, rv.Fingerprint]:
    keys = sorted(client.execute_command("KEYS", "*"))
    return dict(rv.fingerprints(client, keys, pexpiretime=True, now_ms=ra._now_ms()))


def same_contents(a: dict[bytes, rv.Fingerprint], b: dict[bytes, rv.Fingerprint]) -> None:
    """Equal keys, types and values; expiries equal to the millisecond."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] == b[key], key


# --------------------------------------------------------------------- engine plumbing
def bind(monkeypatch, writer=None) -> None:
    """An archive URL makes an ArchiveStore; in a backup, bound to the run's set."""
    real = session_module.make_store

    def make(endpoint, selection=None, options=None):
        if is_archive_url(endpoint.url):
            return ArchiveStore(endpoint, selection, options, writer=writer)
        return real(endpoint, selection, options)

    monkeypatch.setattr(session_module, "make_store", make)


def plan_of(source: Endpoint, target: Endpoint, **options: Any) -> Plan:
    plan = Plan(name="t", stores={"redis": StorePair("redis", source, target)},
                options=Options(parallel=2, retries=1, **options))
    with Session(plan.stores, plan.options) as session:
        source_store, target_store = session.pair("redis")
        plan.inventory = target_store.adapt_units(source_store.list_units(), source_store)
    return plan


def run(plan: Plan, tmp_path: Path, name: str) -> None:
    with Journal(tmp_path / f"{name}.sqlite").open() as journal, \
            Session(plan.stores, plan.options) as session:
        journal.bind_plan(plan.fingerprint(), restart=False)
        result = Transfer(plan, journal, session).run()
        assert not result.failed, result
        assert {s.state for s in journal.units().values()} == {COPIED}


def backup(monkeypatch, tmp_path: Path, url: str, options: dict[str, Any],
           source: Endpoint | None = None, **plan_options):
    """The engine's run into a new set; returns the plan and the manifest."""
    repo = open_archive(archive_endpoint(url, options), create=True)
    try:
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"])
        bind(monkeypatch, writer)
        plan = plan_of(source or source_ep(), Endpoint("redis", url, name="stores.redis.target",
                                             options=options), **plan_options)
        run(plan, tmp_path, "backup")
        manifest = writer.commit(plan.inventory)
    finally:
        repo.close()
    bind(monkeypatch)
    return plan, manifest


def restore(monkeypatch, tmp_path: Path, url: str, options: dict[str, Any]) -> Plan:
    bind(monkeypatch)
    plan = plan_of(Endpoint("redis", url, name="stores.redis.source", options=options),
                   target_ep("dst"))
    run(plan, tmp_path, "restore")
    return plan


def check(plan: Plan, **kw: Any):
    with Session(plan.stores, plan.options) as session:
        return verify(plan.inventory, session, **kw)


def rdb_files(root: Path) -> dict[str, bytes]:
    """The plain RDB files of a directory archive that is not encrypted, by unit file."""
    out = {}
    for path in sorted(root.rglob("*.rdb.zst")):
        with path.open("rb") as f:
            out[path.name[:-4]] = zstandard.ZstdDecompressor().stream_reader(f).read()
    return out


# ------------------------------------------------------------------------- redis-server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Loaded:
    """A fresh redis-server that loads one RDB file at start (no password, loopback)."""

    def __init__(self, directory: Path, filename: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(directory), "--dbfilename", filename,
             "--save", "", "--appendonly", "no", "--databases", "16"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                probe = self.client(0)
                if probe.execute_command("PING") and probe.execute_command(
                        "INFO", "persistence").find(b"loading:0") >= 0:
                    probe.close()
                    break
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise AssertionError(f"redis-server did not load {filename}: {output}")
            time.sleep(0.05)

    def client(self, db: int) -> redis.Redis:
        client = redis.Redis(host="127.0.0.1", port=self.port, db=db, protocol=2)
        client.response_callbacks.clear()
        return client

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def check_rdb(path: Path) -> str:
    proc = subprocess.run([shutil.which("redis-check-rdb") or "redis-check-rdb", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RDB looks OK" in proc.stdout, proc.stdout
    return proc.stdout


def join(files: list[bytes]) -> bytes:
    """What the docs' shell recipe does: the first file without its EOF + CRC (9 bytes),
    the others without their magic (9 bytes) and EOF + CRC, then EOF and a zero checksum
    (which Redis reads as "saved without a checksum")."""
    return files[0][:-9] + b"".join(f[9:-9] for f in files[1:]) + b"\xff" + bytes(8)


# ------------------------------------------------------------------------------- tests
def test_payload_values_give_the_live_stores_fingerprints_and_chunk_hashes(servers):
    """The decoders read each value exactly as the native commands do: for every key the
    fingerprint from its DUMP payload equals ``value.fingerprints`` and the chunk hash
    equals ``value.record_hashes`` (one string of each length page, each encoding)."""
    src = servers["src"]
    fill(src, 0, ra._now_ms())
    keys = sorted(src.execute_command("KEYS", "*"))
    now = ra._now_ms()
    live = dict(rv.fingerprints(src, keys, pexpiretime=True, now_ms=now))
    hashes = dict(rv.record_hashes(src, keys, pexpiretime=True, now_ms=now, tolerance=1000,
                                   one_mget=True))
    types = set()
    for key in keys:
        payload = src.execute_command("DUMP", key)
        expire = src.execute_command("PEXPIRETIME", key)
        part = rdb.split_payload(payload)
        types.add(part.type)
        entry = rdb.Entry(0, key, max(expire, 0), part.type, bytes(part.body), part.version)
        value = rdb.decode_body(part.type, part.body)
        assert ra.fingerprint(entry, value) == live[key], key
        assert ra.record_hash(entry, 1000) == hashes[key], key
        assert rdb.make_payload(part.type, part.body, part.version) == payload
    # string, quicklist 2, intset, hashtable set, listpack/hashtable hash, listpack zset,
    # skiplist zset, stream: each decoder ran
    assert {rdb.STRING, rdb.LIST_QUICKLIST_2, rdb.SET_INTSET, rdb.SET, rdb.HASH_LISTPACK,
            rdb.HASH, rdb.ZSET_LISTPACK, rdb.ZSET_2} <= types
    assert types & {rdb.STREAM_LISTPACKS_2, rdb.STREAM_LISTPACKS_3}
    with pytest.raises(rdb.RdbError, match="CRC-64"):
        rdb.split_payload(payload[:-1] + bytes([payload[-1] ^ 1]))


def test_backup_restore_verify_and_the_rdb_loads_in_redis_server(servers, monkeypatch,
                                                                 tmp_path):
    src, dst = servers["src"], servers["dst"]
    now = ra._now_ms()
    fill(src, 0, now)
    fill(src, 3, now)
    raw_db(src, 3).set(b"only-in-db3", b"3")
    url = f"archive+file://{tmp_path}/archive"
    plan, manifest = backup(monkeypatch, tmp_path, url, {})
    units = manifest.stores["redis"].units
    assert {n: u.records for n, u in units.items()} == {
        "db0/slots-00000-16383": 22, "db3/slots-00000-16383": 23}
    assert manifest.stores["redis"].cut is not None
    assert not manifest.stores["redis"].cut.snapshot

    # Live source against the set: EQUAL; a key changed afterwards is named.
    report = check(plan)
    assert report.ok, report.to_dict()
    raw_db(src, 3).hset(b"hash:mid", b"field-3", b"changed after the backup")
    raw_db(src, 3).set(b"new-after-backup", b"x")
    report = check(plan)
    differing = {u.unit: u for u in report.units if u.status == DIFFER}
    assert list(differing) == ["redis:db3/slots-00000-16383"]
    assert differing["redis:db3/slots-00000-16383"].differ == ["hash:mid"]
    assert differing["redis:db3/slots-00000-16383"].missing_on_target == ["new-after-backup"]
    raw_db(src, 3).delete(b"new-after-backup")
    raw_db(src, 3).hset(b"hash:mid", b"field-3", b"value-3")

    # Chunks cut differently from the recorded ones are digested from the file, equal to
    # the live store's digests of the same chunks.
    other = [Chunk("a", [0, 5000]), Chunk("b", [5001, 5001]), Chunk("c", [5002, 16383])]
    live = RedisStore(source_ep(), None, StoreOptions())
    with open_archive(archive_endpoint(url)) as repo:
        store = repo.reader().store("redis")
        for name in units:
            reader = store.unit(name)
            digests = ra.RedisArchive().digest(reader, other)
            assert sum(d.count for d in digests.values()) == units[name].records
            assert digests == live.digest(reader.unit, other), name
            # export: every key once, payloads RESTORE accepts; a cursor resumes after it
            (whole,) = ra.RedisArchive().export(reader)
            assert len(whole.records) == units[name].records and whole.cursor == len(whole)
            (rest,) = ra.RedisArchive().export(reader, 5)
            assert rest.records == whole.records[5:]
    live.close()

    # The RDB files: redis-check-rdb accepts them, redis-server loads them as they are.
    files = rdb_files(tmp_path / "archive")
    assert sorted(files) == ["db0-slots-00000-16383.rdb", "db3-slots-00000-16383.rdb"]
    loaded_dir = tmp_path / "loaded"
    loaded_dir.mkdir()
    for name, data in files.items():
        assert data.startswith(b"REDIS0010")  # Redis 7.0's RDB version: its payloads'
        assert rdb.crc64(data[:-8]) == int.from_bytes(data[-8:], "little")
        (loaded_dir / name).write_bytes(data)
        report_text = check_rdb(loaded_dir / name)
        assert "redis-ver" in report_text
        db = int(name[2])
        server = Loaded(loaded_dir, name)
        try:
            copy = fingerprints(server.client(db))
            assert int(server.client(db).execute_command("DBSIZE")) == units[
                f"db{db}/slots-00000-16383"].records
        finally:
            server.stop()
        same_contents(copy, fingerprints(raw_db(src, db)))

    # Restore into an empty server, then verify the restored DBs against the set.
    restored = restore(monkeypatch, tmp_path, url, {})
    for db in (0, 3):
        same_contents(fingerprints(raw_db(dst, db)), fingerprints(raw_db(src, db)))
    report = check(restored)
    assert report.ok, report.to_dict()
    raw_db(dst, 0).rpush(b"list:small", b"appended after the restore")
    report = check(restored)
    assert [(u.unit, u.differ) for u in report.units if u.status == DIFFER] == [
        ("redis:db0/slots-00000-16383", ["list:small"])]


def test_units_of_one_db_join_into_one_rdb_and_expired_keys_stay_dead(servers, monkeypatch,
                                                                      tmp_path):
    """A DB planned as several slot-range units is one RDB file per unit, each loadable
    alone; joined as the docs say they load as the whole DB. A key whose expiry passed
    between backup and restore is not restored, and verify still says EQUAL."""
    src, dst = servers["src"], servers["dst"]
    pipe = src.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(b"user:%d" % i, b"profile %d" % i, px=DAY if i % 2 else None)
    pipe.execute()
    src.set(b"short-lived", b"gone soon", px=1500)
    url = f"archive+file://{tmp_path}/archive"
    plan, manifest = backup(monkeypatch, tmp_path, url, {}, unit_records=1000)
    units = manifest.stores["redis"].units
    assert len(units) == 4 and sum(u.records for u in units.values()) == 3001
    files = rdb_files(tmp_path / "archive")
    assert len(files) == 4
    loaded_dir = tmp_path / "loaded"
    loaded_dir.mkdir()
    parts = []
    for name, data in sorted(files.items()):
        (loaded_dir / name).write_bytes(data)
        check_rdb(loaded_dir / name)
        parts.append(data)
    # the docs' shell recipe, as written there
    recipe = ('{ head -c -9 "$1"; shift; for f in "$@"; do tail -c +10 "$f" | head -c -9; '
              "done; printf '\\377\\0\\0\\0\\0\\0\\0\\0\\0'; } > joined.rdb")
    subprocess.run(["bash", "-c", recipe, "join", *sorted(files)], cwd=loaded_dir, check=True)
    assert (loaded_dir / "joined.rdb").read_bytes() == join(parts)
    check_rdb(loaded_dir / "joined.rdb")
    while src.execute_command("EXISTS", b"short-lived"):
        time.sleep(0.05)
    server = Loaded(loaded_dir, "joined.rdb")
    try:
        joined = fingerprints(server.client(0))
    finally:
        server.stop()
    assert len(joined) == 3000
    same_contents(joined, fingerprints(src))

    restored = restore(monkeypatch, tmp_path, url, {})
    assert not dst.execute_command("EXISTS", b"short-lived")
    same_contents(fingerprints(dst), fingerprints(src))
    assert check(restored).ok


def test_encrypted_archive_on_minio_round_trips(servers, monkeypatch, tmp_path, s3_env):
    src, dst = servers["src"], servers["dst"]
    fill(src, 0, ra._now_ms())
    client = minio_client(s3_env)
    bucket = f"redis-archive-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    host = s3_env["OIM_S3_SRC_URL"].split("://", 1)[1].split("/", 1)[0]
    url = f"archive+s3://{host}/{bucket}/backups"
    options = {"access_key": "${OIM_S3_SRC_ACCESS_KEY}", "secret_key": "${OIM_S3_SRC_SECRET_KEY}",
               "key": "${OIM_TEST_ARCHIVE_KEY}"}
    plan, _ = backup(monkeypatch, tmp_path, url, options)
    stored = [o.object_name for o in client.list_objects(bucket, recursive=True)]
    rdbs = [name for name in stored if name.endswith(".rdb.zst.age")]
    assert len(rdbs) == 1, stored
    response = client.get_object(bucket, rdbs[0])
    try:
        sealed = response.read()
    finally:
        response.close()
        response.release_conn()
    assert sealed.startswith(b"age-encryption.org/v1") and b"REDIS" not in sealed
    assert b"str:small" not in sealed
    assert check(plan).ok
    restored = restore(monkeypatch, tmp_path, url, options)
    same_contents(fingerprints(dst), fingerprints(src))
    assert check(restored).ok


def test_a_key_listed_twice_is_stored_once_and_damage_is_named(servers, tmp_path):
    """SCAN may return a key twice and the engine may send a batch again: the RDB holds
    each key once (redis-server refuses a file with a duplicate key). A typed record
    cannot become an RDB value and is refused, naming the key. A flipped byte in a file
    fails its CRC-64."""
    src = servers["src"]
    src.set(b"a", b"1")
    src.set(b"b", b"2", px=DAY)
    url = f"archive+file://{tmp_path}/archive"
    store = RedisStore(source_ep(), None, StoreOptions())
    store.open()
    repo = open_archive(archive_endpoint(url), create=True)
    try:
        (unit,) = store.list_units()
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"])
        unit_writer = writer.store("redis").unit(unit)
        importer = ra.RedisArchive().importer(unit_writer, store, None)
        importer.prepare(False)
        (batch,) = list(store.export(unit))
        importer.write_batch(batch)
        importer.write_batch(batch)
        importer.finalize()
        assert unit_writer.records == 2
        (entry,) = unit_writer.files
        with repo.read_file(entry) as stream:
            data = stream.read()
        assert sorted(e.key for e in rdb.read_file(io.BytesIO(data))) == [b"a", b"b"]

        typed = ra.RedisArchive().importer(writer.store("redis").unit(unit), store, None)
        typed.prepare(False)
        with pytest.raises(CapabilityMissing, match="'k' came as a typed value"):
            typed.write_batch(Batch([(b"k", 0, "string", b"v")], None))
    finally:
        store.close()
        repo.close()
    at = data.index(b"\x01a")  # the key "a" as an RDB string
    damaged = data[:at + 1] + b"A" + data[at + 2:]
    with pytest.raises(rdb.RdbError, match="CRC-64 is wrong"):
        list(rdb.read_file(io.BytesIO(damaged)))
    with pytest.raises(rdb.RdbError, match="truncated"):
        list(rdb.read_file(io.BytesIO(data[:-20])))


def _lp(items: list[bytes | int]) -> bytes:
    """A small listpack (strings under 64 bytes, non-negative ints) for hand-made values."""
    body = b""
    for item in items:
        if isinstance(item, int):
            entry = bytes((item,)) if item < 128 else b"\xf4" + item.to_bytes(8, "little")
        else:
            entry = bytes((0x80 | len(item),)) + item
        body += entry + bytes((len(entry),))
    return (len(body) + 7).to_bytes(4, "little") + len(items).to_bytes(2, "little") + body + \
        b"\xff"


def test_hashes_with_field_expiries_decode_to_their_live_fields(servers):
    """Redis 7.4+ hashes whose fields expire (RDB types 22-25; the test server is 7.0, so
    the values are made by hand in the layouts Redis' loader reads): a field whose expiry
    passed is left out, and the rest fingerprint as the same hash written with HSET."""
    src = servers["src"]
    now = ra._now_ms()
    src.hset(b"h", mapping={b"keep": b"1", b"ttl": b"later"})
    reference = fingerprints(src)[b"h"]
    triples = [(b"keep", b"1", 0), (b"ttl", b"later", now + DAY), (b"gone", b"x", now - 5)]
    base = now - 5
    bodies = {
        rdb.HASH_LISTPACK_EX: base.to_bytes(8, "little") + rdb.string(
            _lp([x for t in triples for x in t])),
        rdb.HASH_LISTPACK_EX_PRE_GA: rdb.string(_lp([x for t in triples for x in t])),
        rdb.HASH_METADATA: base.to_bytes(8, "little") + rdb.length(3) + b"".join(
            rdb.length(e - base + 1 if e else 0) + rdb.string(f) + rdb.string(v)
            for f, v, e in triples),
        rdb.HASH_METADATA_PRE_GA: rdb.length(3) + b"".join(
            rdb.length(e) + rdb.string(f) + rdb.string(v) for f, v, e in triples),
    }
    for kind, body in bodies.items():
        value = rdb.decode_body(kind, body)
        assert sorted(value) == [(b"keep", b"1"), (b"ttl", b"later")], kind
        entry = rdb.Entry(0, b"h", 0, kind, body, 12)
        assert ra.fingerprint(entry, value) == reference, kind
        # read back from a file: the walker finds the value's end
        data = rdb.header(12, {}) + rdb.select_db(0, 2, 0) + bytes((kind,)) + \
            rdb.string(b"h") + body + bytes((kind,)) + rdb.string(b"next") + body + b"\xff"
        data += rdb.crc64(data).to_bytes(8, "little")
        assert [(e.key, e.body) for e in rdb.read_file(io.BytesIO(data))] == [
            (b"h", body), (b"next", body)]


def test_an_empty_db_is_a_valid_empty_rdb(servers, monkeypatch, tmp_path):
    url = f"archive+file://{tmp_path}/archive"
    plan, manifest = backup(monkeypatch, tmp_path, url, {})
    assert [u.records for u in manifest.stores["redis"].units.values()] == [0]
    ((name, data),) = rdb_files(tmp_path / "archive").items()
    assert data.startswith(b"REDIS%04d" % rdb.MIN_VERSION)
    (tmp_path / name).write_bytes(data)
    check_rdb(tmp_path / name)
    server = Loaded(tmp_path, name)
    try:
        assert server.client(0).execute_command("DBSIZE") == 0
    finally:
        server.stop()
    assert check(plan).ok
    restored = restore(monkeypatch, tmp_path, url, {})
    assert servers["dst"].execute_command("DBSIZE") == 0
    assert check(restored).ok


def test_a_cluster_source_backs_up_per_slot_range_and_restores_standalone(
        servers, monkeypatch, tmp_path):
    """Keys spread over a 3-master cluster: one unit per slot range reads every master;
    the set restores into a standalone server key for key."""
    cluster = redis_data.client(target_ep("cluster"))
    try:
        cluster.flushall()
        for i in range(2000):
            cluster.set(b"user:%d" % i, b"v%d" % i, px=DAY if i % 3 == 0 else None)
            if i % 100 == 0:
                cluster.hset(b"{user:%d}:h" % i, mapping={b"a": b"1", b"b": b"%d" % i})
        url = f"archive+file://{tmp_path}/archive"
        plan, manifest = backup(monkeypatch, tmp_path, url, {}, source=target_ep("cluster"),
                                unit_records=500)
        units = manifest.stores["redis"].units
        assert len(units) == 8 and sum(u.records for u in units.values()) == 2020
        assert check(plan).ok
        restore(monkeypatch, tmp_path, url, {})
        password = target_ep("cluster").connection().password
        live: dict[bytes, rv.Fingerprint] = {}
        for node in cluster.get_primaries():
            client = redis.Redis(host=node.host, port=node.port, password=password, protocol=2)
            client.response_callbacks.clear()
            live.update(fingerprints(client))
            client.close()
        same_contents(fingerprints(servers["dst"]), live)
    finally:
        cluster.flushall()
        cluster.close()
