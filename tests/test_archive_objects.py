"""The objects archive format against real MinIO servers (``s3_env``): backups and
restores run through the engine (the archive as a run's target, then as its source), and
every claim about the restored bucket is checked with a plain minio client, not our code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import uuid
from typing import Any

import pyrage
import pytest
from minio import Minio
from minio.commonconfig import REPLACE, CopySource

from migrator.archive import Policy, archive_endpoint, check, is_archive_url, open_archive, prune
from migrator.archive.endpoint import ArchiveStore
from migrator.archive.reader import UnitReader
from migrator.config import Endpoint
from migrator.engine import session as session_module
from migrator.engine.journal import COPIED, Journal
from migrator.engine.session import Session
from migrator.engine.transfer import Transfer
from migrator.engine.verify import DIFFER, verify
from migrator.plan import Options, Plan, StorePair
from migrator.stores.objects import ObjectStore
from migrator.stores.objects.archive import ObjectArchive, read_index

MiB = 1 << 20
HEADERS = {"Content-Encoding": "gzip", "Content-Disposition": 'attachment; filename="a b.txt"',
           "Cache-Control": "max-age=60", "Content-Language": "de"}
UNICODE = "ünïcode/ключ с пробелом + plus.txt"


def client(side: str) -> Minio:
    return Minio(os.environ[f"OIM_S3_{side}_URL"].split("//", 1)[1], secure=False,
                 access_key=os.environ[f"OIM_S3_{side}_ACCESS_KEY"],
                 secret_key=os.environ[f"OIM_S3_{side}_SECRET_KEY"])


def objects_endpoint(side: str, bucket: str, name: str) -> Endpoint:
    return Endpoint("objects", f"{os.environ[f'OIM_S3_{side}_URL']}/{bucket}", name=name,
                    options={"access_key": f"${{OIM_S3_{side}_ACCESS_KEY}}",
                             "secret_key": f"${{OIM_S3_{side}_SECRET_KEY}}"})


def put(c: Minio, bucket: str, key: str, data: bytes, **kwargs: Any) -> None:
    c.put_object(bucket, key, io.BytesIO(data), len(data), **kwargs)


def snapshot(c: Minio, bucket: str) -> dict[str, tuple[Any, ...]]:
    """key -> (size, MD5 of the bytes as stored, type, user metadata, copied headers)."""
    out = {}
    for obj in c.list_objects(bucket, recursive=True):
        resp = c.get_object(bucket, obj.object_name)
        try:
            data = resp.read(decode_content=False)
            head = {k.lower(): v for k, v in resp.headers.items()}
        finally:
            resp.close()
            resp.release_conn()
        meta = {k: v for k, v in head.items() if k.startswith("x-amz-meta-")}
        copied = {k: head.get(k) for k in ("content-encoding", "content-disposition",
                                           "cache-control", "content-language")}
        out[obj.object_name] = (len(data), hashlib.md5(data).hexdigest(),
                                head.get("content-type"), meta, copied)
    return out


def fill(c: Minio, bucket: str) -> dict[str, bytes]:
    """Every kind of object the format must keep exactly."""
    c.make_bucket(bucket)
    big = os.urandom(6 * MiB + 12345)  # multipart (5 MiB parts): its ETag is not an MD5
    put(c, bucket, "big/multi.bin", big, part_size=5 * MiB, content_type="video/mp4")
    bodies = {"plain.txt": b"hello archive\n", "empty": b"", "dir/": b"",
              "headers.gz": b"\x1f\x8b\x08\x00 not really gzip",
              "meta/user.bin": os.urandom(3000), UNICODE: "Grüße".encode(),
              "big/multi.bin": big}
    put(c, bucket, "plain.txt", bodies["plain.txt"], content_type="text/plain")
    put(c, bucket, "empty", b"")
    put(c, bucket, "dir/", b"")
    put(c, bucket, "headers.gz", bodies["headers.gz"], content_type="text/plain",
        metadata=dict(HEADERS))
    put(c, bucket, "meta/user.bin", bodies["meta/user.bin"], content_type="image/png",
        metadata={"owner": "alice", "X-Id": "42"})
    put(c, bucket, UNICODE, bodies[UNICODE], content_type="text/plain; charset=utf-8")
    for i in range(40):
        key = f"many/{i:03d}"
        bodies[key] = os.urandom(1000 + 97 * i)
        put(c, bucket, key, bodies[key])
    return bodies


def bind(monkeypatch, writer=None) -> None:
    """What the backup operation does: an archive URL is an ArchiveStore, in a backup bound
    to the run's set (the pattern of tests/test_archive_endpoint.py)."""
    real = session_module.make_store

    def make(endpoint, selection=None, options=None):
        if is_archive_url(endpoint.url):
            return ArchiveStore(endpoint, selection, options, writer=writer)
        return real(endpoint, selection, options)

    monkeypatch.setattr(session_module, "make_store", make)


def restore_buckets_only(monkeypatch) -> None:
    """ObjectStore.prepare_target/finalize_target copy bucket settings from a live source
    and refuse any other; restoring settings from a set is the restore operation's part
    (not landed). Here the restore only creates the buckets."""
    def prepare(self, units, source):
        for bucket in sorted({u.spec["bucket"] for u in units}):
            here = self.here_bucket(bucket)
            if not self.client.bucket_exists(here):
                self.client.make_bucket(here)

    monkeypatch.setattr(ObjectStore, "prepare_target", prepare)
    monkeypatch.setattr(ObjectStore, "finalize_target", lambda self, units, source: None)


def plan_of(source: Endpoint, target: Endpoint) -> Plan:
    plan = Plan(name="t", stores={"objects": StorePair("objects", source, target)},
                options=Options(batch_records=10, chunk_records=16, parallel=2, retries=1))
    with Session(plan.stores, plan.options) as session:
        src, dst = session.pair("objects")
        plan.inventory = dst.adapt_units(src.list_units(), src)
    return plan


def run(plan: Plan, tmp_path, name: str):
    with Journal(tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.sqlite").open() as journal, \
            Session(plan.stores, plan.options) as session:
        journal.bind_plan(plan.fingerprint(), restart=False)
        result = Transfer(plan, journal, session).run()
        assert not result.failed, result
        assert {s.state for s in journal.units().values()} == {COPIED}
        return result


class Archive:
    """One archive (directory or S3 prefix) and the source bucket it backs up."""

    def __init__(self, url: str, options: dict[str, Any], bucket: str) -> None:
        self.url, self.options, self.bucket = url, options, bucket
        self.endpoint = archive_endpoint(url, options)
        self.source = objects_endpoint("SRC", bucket, "stores.objects.source")

    def target(self) -> Endpoint:
        return Endpoint("objects", self.url, name="stores.objects.target",
                        options=dict(self.options))

    def backup(self, monkeypatch, tmp_path):
        with open_archive(self.endpoint, create=True) as repo:
            writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["objects"])
            bind(monkeypatch, writer)
            plan = plan_of(self.source, self.target())
            run(plan, tmp_path, "backup")
            manifest = writer.commit(plan.inventory)
            with Session(plan.stores, plan.options) as session:  # live bucket vs the set
                report = verify(plan.inventory, session)
        return manifest, plan, report

    def unit(self, repo, set_id: str | None = None) -> UnitReader:
        store = repo.reader(set_id).store("objects")
        (name,) = store.unit_names
        return store.unit(name)

    def restore(self, monkeypatch, tmp_path, into: str, set_id: str | None = None):
        bind(monkeypatch)
        restore_buckets_only(monkeypatch)
        options = dict(self.options, **({"set": set_id} if set_id else {}))
        source = Endpoint("objects", self.url, name="stores.objects.source", options=options)
        plan = plan_of(source, objects_endpoint("DST", into, "stores.objects.target"))
        run(plan, tmp_path, "restore")
        with Session(plan.stores, plan.options) as session:
            return verify(plan.inventory, session), plan


def age_key(monkeypatch) -> pyrage.x25519.Identity:
    identity = pyrage.x25519.Identity.generate()
    monkeypatch.setenv("OIM_TEST_ARCHIVE_KEY", str(identity))
    return identity


@pytest.fixture
def small_packs(monkeypatch):
    """Packs of 16 KiB, so the fixture spans many packs and references cross them."""
    monkeypatch.setattr(ObjectArchive, "pack_bytes", 16 * 1024)


def test_round_trip_incremental_plain_tools_and_prune(s3_env, tmp_path, monkeypatch,
                                                      small_packs):
    src = client("SRC")
    bucket = f"arc-{uuid.uuid4().hex[:12]}"
    bodies = fill(src, bucket)
    identity = age_key(monkeypatch)
    archive = Archive(f"archive+file://{tmp_path}/archive",
                      {"key": "${OIM_TEST_ARCHIVE_KEY}"}, bucket)

    # First backup: every object stored, in several packs; the set equals the bucket.
    first, plan, report = archive.backup(monkeypatch, tmp_path)
    assert report.ok, report.to_dict()
    (unit1,) = first.stores["objects"].units.values()
    assert unit1.records == len(bodies)
    assert unit1.meta["objects"]["stored"] == len(bodies)
    assert unit1.meta["objects"]["referenced"] == 0
    packs1 = [f for f in unit1.files if f.name.startswith("packs/")]
    assert len(packs1) > 3 and all(f.path.startswith(f"sets/{first.set_id}/") for f in packs1)
    assert not any(".meta" in f.name or f.name.startswith("data/") for f in unit1.files)

    # The files restore with plain tools: age + zstd + tar, bytes and sidecars as stored.
    plain = tmp_path / "plain"
    plain.mkdir()
    keyfile = tmp_path / "archive.key"
    keyfile.write_text(str(identity) + "\n")
    for f in packs1:
        decrypted = subprocess.run(["age", "-d", "-i", str(keyfile), str(tmp_path / "archive"
                                                                          / f.path)],
                                   check=True, capture_output=True).stdout
        tar = subprocess.run(["zstd", "-d", "-q"], input=decrypted, check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(plain)], input=tar, check=True)
    for key in ("plain.txt", "headers.gz", "meta/user.bin", UNICODE, "big/multi.bin", "empty"):
        assert (plain / "data" / key).read_bytes() == bodies[key], key
    sidecar = json.loads((plain / "meta" / "headers.gz.json").read_text())
    assert sidecar["headers"] == {k.lower(): v for k, v in HEADERS.items()}
    assert sidecar["content_type"] == "text/plain" and sidecar["size"] == len(bodies["headers.gz"])
    assert sidecar["md5"] == hashlib.md5(bodies["headers.gz"]).hexdigest()
    user = json.loads((plain / "meta" / "meta/user.bin.json").read_text())
    assert user["metadata"] == {"owner": "alice", "x-id": "42"}
    assert user["content_type"] == "image/png"
    multi = json.loads((plain / "meta" / "big/multi.bin.json").read_text())
    assert multi["md5"] == hashlib.md5(bodies["big/multi.bin"]).hexdigest()
    assert "-" in multi["etag"]  # multipart: the MD5 was computed from the bytes

    # Changes, then a second backup: only what changed is read and stored again.
    put(src, bucket, "many/005", b"new content")  # bytes changed
    src.copy_object(bucket, "many/006", CopySource(bucket, "many/006"),  # metadata only
                    metadata={"tag": "v2"}, metadata_directive=REPLACE)
    src.remove_object(bucket, "many/007")
    put(src, bucket, "many/new", b"added")
    second, _, report = archive.backup(monkeypatch, tmp_path)
    assert report.ok, report.to_dict()
    (unit2,) = second.stores["objects"].units.values()
    assert unit2.records == len(bodies)  # one deleted, one added
    assert unit2.meta["objects"]["stored"] == 3
    assert unit2.meta["objects"]["referenced"] == len(bodies) - 3
    own = [f for f in unit2.files if f.path.startswith(f"sets/{second.set_id}/")]
    assert sorted(f.name for f in own)[0] == "index.jsonl" and len(own) == 2  # + one pack
    with open_archive(archive.endpoint) as repo:
        entries = {e.key: e for e in read_index(archive.unit(repo, second.set_id))}
    assert {k for k, e in entries.items() if e.pack == own[1].name} == \
        {"many/005", "many/006", "many/new"}
    assert "many/007" not in entries and entries["many/006"].metadata == {"tag": "v2"}

    # Third backup, nothing changed: no body read, every pack referenced from earlier sets.
    third, _, report = archive.backup(monkeypatch, tmp_path)
    assert report.ok
    (unit3,) = third.stores["objects"].units.values()
    assert unit3.meta["objects"]["stored"] == 0
    assert [f.name for f in unit3.files if f.path.startswith(f"sets/{third.set_id}/")] == \
        ["index.jsonl"]
    assert {f.path for f in unit3.files if f.name.startswith("packs/")} <= \
        {f.path for f in unit1.files + unit2.files}

    # An object changed after the backup: verify against the set names it.
    put(src, bucket, "plain.txt", b"changed after the backup")
    bind(monkeypatch)  # the archive endpoint now reads the newest set
    against_set = Plan(name="t", stores={"objects": StorePair(
        "objects", archive.source, archive.target())}, options=plan.options)
    with Session(against_set.stores, against_set.options) as session:
        report = verify(plan.inventory, session)
    differing = [u for u in report.units if u.status == DIFFER]
    assert [u.differ for u in differing] == [["plain.txt"]]
    put(src, bucket, "plain.txt", bodies["plain.txt"], content_type="text/plain")

    # Prune keeps only the newest set; packs it references in older sets stay.
    with open_archive(archive.endpoint) as repo:
        pruned = prune(repo, Policy(last=1))
        assert sorted(pruned.forgotten) == sorted([first.set_id, second.set_id])
        checked = check(repo, read_data=True)
        assert checked.ok, checked.to_dict()

    # Restore the newest set into an empty bucket: equal to the source, by a plain client.
    report, _ = archive.restore(monkeypatch, tmp_path, bucket)
    assert report.ok, report.to_dict()
    src_now = snapshot(src, bucket)
    assert snapshot(client("DST"), bucket) == src_now
    assert src_now["headers.gz"][4] == {k.lower(): v for k, v in HEADERS.items()}
    assert src_now["meta/user.bin"][3] == {"x-amz-meta-owner": "alice", "x-amz-meta-x-id": "42"}


def test_s3_archive_passphrase_round_trip(s3_env, tmp_path, monkeypatch):
    src, dst = client("SRC"), client("DST")
    bucket = f"arc-{uuid.uuid4().hex[:12]}"
    bodies = fill(src, bucket)
    archive_bucket = f"backups-{uuid.uuid4().hex[:8]}"
    dst.make_bucket(archive_bucket)
    monkeypatch.setenv("OIM_TEST_PASSPHRASE", "correct horse battery staple")
    host = os.environ["OIM_S3_DST_URL"].split("//", 1)[1]
    archive = Archive(f"archive+s3://{host}/{archive_bucket}/openim",
                      {"passphrase": "${OIM_TEST_PASSPHRASE}",
                       "access_key": "${OIM_S3_DST_ACCESS_KEY}",
                       "secret_key": "${OIM_S3_DST_SECRET_KEY}"}, bucket)
    first, _, report = archive.backup(monkeypatch, tmp_path)
    assert report.ok, report.to_dict()
    second, _, report = archive.backup(monkeypatch, tmp_path)
    assert report.ok
    (unit2,) = second.stores["objects"].units.values()
    assert unit2.meta["objects"] == dict(unit2.meta["objects"], stored=0,
                                         referenced=len(bodies))
    stored = {o.object_name for o in dst.list_objects(archive_bucket, recursive=True)}
    assert all(name.endswith(".zst.age") for name in stored if "/sets/" in name)
    assert not any("alice" in name or "multi" in name for name in stored)  # keys inside

    report, _ = archive.restore(monkeypatch, tmp_path, bucket, set_id=first.set_id)
    assert report.ok, report.to_dict()
    assert snapshot(dst, bucket) == snapshot(src, bucket)
    # A pack read alone gives an object's exact bytes (the format's body reader).
    with open_archive(archive.endpoint) as repo:
        entry, body = ObjectArchive().open_body(archive.unit(repo), "big/multi.bin")
        assert body.read() == bodies["big/multi.bin"] and entry.size == 6 * MiB + 12345
