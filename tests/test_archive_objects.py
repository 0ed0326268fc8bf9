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
import time
import uuid
from typing import Any

import pyrage
import pytest
from minio import Minio
from minio.commonconfig import ENABLED, REPLACE, CopySource, Filter, Tags
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from minio.versioningconfig import VersioningConfig

from migrator.archive import Policy, archive_endpoint, check, open_archive, prune
from migrator.archive.reader import UnitReader
from migrator.config import Endpoint
from migrator.engine.backup import Source, backup, restore
from migrator.engine.session import Session
from migrator.engine.verify import DIFFER, verify
from migrator.errors import TransientError
from migrator.plan import Options, StorePair
from migrator.stores.base import Unit
from migrator.stores.objects import ObjectStore
from migrator.stores.objects.archive import ObjectArchive, read_index

MiB = 1 << 20
HEADERS = {"Content-Encoding": "gzip", "Content-Disposition": 'attachment; filename="a b.txt"',
           "Cache-Control": "max-age=60", "Content-Language": "de"}
UNICODE = "ünïcode/ключ с пробелом + plus.txt"


# docs/backups.md, "Objects": the set's packs, oldest first, extracted into ./restore.
PLAIN_RESTORE = r"""
mkdir -p restore
age -d -i "$KEY" sets/SET/manifest.json.zst.age | zstd -d | python3 -c '
import json, sys
for unit in json.load(sys.stdin)["stores"]["objects"]["units"].values():
    for f in unit["files"]:
        if f["name"].startswith("packs/"): print(f["path"])' | sort |
while read -r pack; do age -d -i "$KEY" "$pack" | zstd -d | tar -x -C restore; done
"""


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


def options(unit_records: int = 200_000) -> Options:
    return Options(batch_records=10, chunk_records=16, parallel=2, retries=1,
                   unit_records=unit_records)


class Archive:
    """One archive (directory or S3 prefix) and the source bucket it backs up."""

    def __init__(self, url: str, options: dict[str, Any], bucket: str) -> None:
        self.url, self.options, self.bucket = url, options, bucket
        self.endpoint = archive_endpoint(url, options)
        self.source = objects_endpoint("SRC", bucket, "stores.objects.source")

    def backup(self, unit_records: int = 200_000):
        """The backup operation, then a verify of the live bucket against the new set."""
        outcome = backup("t", {"objects": Source(self.source)}, self.endpoint,
                         options(unit_records))
        assert outcome.manifest is not None, outcome.to_dict()
        return outcome.manifest, self.verify(unit_records=unit_records)

    def verify(self, set_id: str | None = None, unit_records: int = 200_000):
        reading = Endpoint("objects", self.url, name="stores.objects.archive",
                           options=dict(self.options, **({"set": set_id} if set_id else {})))
        pairs = {"objects": StorePair("objects", self.source, reading)}
        with Session(pairs, options(unit_records)) as session:
            source, _ = session.pair("objects")
            return verify(source.list_units(), session)

    def unit(self, repo, set_id: str | None = None) -> UnitReader:
        store = repo.reader(set_id).store("objects")
        (name,) = store.unit_names
        return store.unit(name)

    def restore(self, tmp_path, into: str, set_id: str | None = None):
        """The restore operation (copy, then verify against the set) into ``into``."""
        where = archive_endpoint(self.url, dict(self.options,
                                                **({"set": set_id} if set_id else {})))
        outcome = restore(where, {"objects": objects_endpoint("DST", into, "restore.objects")},
                          options(), journal=tmp_path / f"restore-{uuid.uuid4().hex[:6]}.db")
        assert not outcome.copy.failed, outcome.to_dict()
        return outcome


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
    first, report = archive.backup()
    assert report.ok, report.to_dict()
    (unit1,) = first.stores["objects"].units.values()
    assert unit1.records == len(bodies)
    # The chunks cut while writing are the live store's, so verify compared the digests
    # recorded during the backup (not ones recomputed from the index).
    live = ObjectStore(archive.source, options=options().store_options())
    live.open()
    try:
        chunks = live.chunks(Unit.from_dict(unit1.unit))
    finally:
        live.close()
    assert len(chunks) == 3 and [{"id": c.id, "bounds": c.bounds} for c in chunks] == \
        unit1.chunks
    assert sum(d.count for d in unit1.digests.values()) == len(bodies)
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
    time.sleep(1)  # set names sort by their start second (the plain recipe relies on it)
    second, report = archive.backup()
    assert report.ok, report.to_dict()
    (unit2,) = second.stores["objects"].units.values()
    assert unit2.records == len(bodies)  # one deleted, one added
    assert unit2.meta["objects"]["stored"] == 3
    # Everything was written just now: each candidate for reuse (same size, ETag and
    # Last-Modified second) got a HEAD: all but the changed, deleted and new objects, and
    # many/006 too if its copy landed in the second of its first write (then the HEAD's
    # metadata is what tells it changed).
    assert len(bodies) - 3 <= unit2.meta["objects"]["checked"] <= len(bodies) - 2
    assert unit2.meta["objects"]["referenced"] == len(bodies) - 3
    own = [f for f in unit2.files if f.path.startswith(f"sets/{second.set_id}/")]
    assert sorted(f.name for f in own)[0] == "index.jsonl" and len(own) == 2  # + one pack
    with open_archive(archive.endpoint) as repo:
        entries = {e.key: e for e in read_index(archive.unit(repo, second.set_id))}
    assert {k for k, e in entries.items() if e.pack == own[1].name} == \
        {"many/005", "many/006", "many/new"}
    assert "many/007" not in entries and entries["many/006"].metadata == {"tag": "v2"}

    # The restore side of the format: the set's objects (read from its own pack and the
    # first set's packs), each exactly once, with the right bytes; resuming after any
    # batch's cursor gives exactly the rest.
    bodies.update({"many/005": b"new content", "many/new": b"added"})
    del bodies["many/007"]
    with open_archive(archive.endpoint) as repo:
        unit = archive.unit(repo, second.set_id)
        batches = list(ObjectArchive().export(unit))
        keys = [r.key for b in batches for r in b.records]
        assert sorted(keys) == sorted(bodies) and len(batches) > 3
        for batch in batches:
            for rec in batch.records:
                resp = rec.open()
                assert resp.read(-1) == bodies[rec.key], rec.key
                assert resp.headers["Content-Length"] == str(len(bodies[rec.key]))
        done = 0
        for batch in batches[:-1]:
            done += len(batch.records)
            rest = [r.key for b in ObjectArchive().export(unit, batch.cursor) for r in b.records]
            assert rest == keys[done:]

    # The second set restores with plain tools too, by the recipe in docs/backups.md: its
    # packs (its own and the first set's) in path order, newest version of a key last.
    script = PLAIN_RESTORE.replace("SET", second.set_id)
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path / "archive",
                   check=True, env=dict(os.environ, KEY=str(keyfile)))
    out = tmp_path / "archive" / "restore"
    for key in entries:
        if not key.endswith("/"):
            assert (out / "data" / key).read_bytes() == bodies[key], key
            meta = json.loads((out / "meta" / f"{key}.json").read_text())
            assert meta == {k: v for k, v in entries[key].to_dict().items() if k != "pack"}
    assert (out / "data" / "many/007").exists()  # deleted later: not in the index

    # Third backup, nothing changed, the objects written long before the previous backup
    # (as in a nightly job): no HEAD, no GET; every pack referenced from earlier sets.
    monkeypatch.setattr(ObjectArchive, "recent_seconds", -10**9)
    third, report = archive.backup()
    assert report.ok
    (unit3,) = third.stores["objects"].units.values()
    assert unit3.meta["objects"]["stored"] == 0 and unit3.meta["objects"]["checked"] == 0
    assert [f.name for f in unit3.files if f.path.startswith(f"sets/{third.set_id}/")] == \
        ["index.jsonl"]
    assert {f.path for f in unit3.files if f.name.startswith("packs/")} <= \
        {f.path for f in unit1.files + unit2.files}

    # An object changed after the backup: verify against the set names it.
    put(src, bucket, "plain.txt", b"changed after the backup")
    report = archive.verify()
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
    outcome = archive.restore(tmp_path, bucket)
    assert outcome.ok, outcome.to_dict()
    src_now = snapshot(src, bucket)
    assert snapshot(client("DST"), bucket) == src_now
    assert src_now["headers.gz"][4] == {k.lower(): v for k, v in HEADERS.items()}
    assert src_now["meta/user.bin"][3] == {"x-amz-meta-owner": "alice", "x-amz-meta-x-id": "42"}


def set_bucket_settings(c: Minio, bucket: str) -> dict[str, Any]:
    """OpenIM's bucket is public-read; versioning, tags and a lifecycle rule besides."""
    c.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    tags = Tags.new_bucket_tags()
    tags["app"] = "openim"
    c.set_bucket_tags(bucket, tags)
    c.set_bucket_policy(bucket, json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/many/*"]}]}))
    c.set_bucket_lifecycle(bucket, LifecycleConfig([Rule(
        ENABLED, rule_filter=Filter(prefix="tmp/"), rule_id="tmp",
        expiration=Expiration(days=7))]))
    return bucket_settings(c, bucket)


def bucket_settings(c: Minio, bucket: str) -> dict[str, Any]:
    lifecycle = c.get_bucket_lifecycle(bucket)
    return {"versioning": c.get_bucket_versioning(bucket).status,
            "tags": dict(c.get_bucket_tags(bucket) or {}),
            "policy": json.loads(c.get_bucket_policy(bucket))["Statement"][0]["Resource"],
            "lifecycle": [(r.rule_id, r.rule_filter.prefix, r.expiration.days)
                          for r in lifecycle.rules] if lifecycle else None}


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
    settings = set_bucket_settings(src, bucket)
    first, report = archive.backup()
    assert report.ok, report.to_dict()
    second, report = archive.backup()
    assert report.ok
    (unit2,) = second.stores["objects"].units.values()
    assert unit2.meta["objects"] == dict(unit2.meta["objects"], stored=0,
                                         referenced=len(bodies))
    stored = {o.object_name for o in dst.list_objects(archive_bucket, recursive=True)}
    assert all(name.endswith(".zst.age") for name in stored if "/sets/" in name)
    assert not any("alice" in name or "multi" in name for name in stored)  # keys inside

    outcome = archive.restore(tmp_path, bucket, set_id=first.set_id)
    assert outcome.ok, outcome.to_dict()  # its verify compares the bucket settings too
    assert bucket_settings(dst, bucket) == settings
    assert snapshot(dst, bucket) == snapshot(src, bucket)
    # A pack read alone gives an object's exact bytes (the format's body reader).
    with open_archive(archive.endpoint) as repo:
        entry, body = ObjectArchive().open_body(archive.unit(repo), "big/multi.bin")
        assert body.read() == bodies["big/multi.bin"] and entry.size == 6 * MiB + 12345


def test_vanished_objects_are_skipped_and_a_failed_attempt_leaves_no_file(s3_env, tmp_path,
                                                                            monkeypatch):
    src = client("SRC")
    bucket = f"arc-{uuid.uuid4().hex[:12]}"
    src.make_bucket(bucket)
    for i in range(30):
        put(src, bucket, f"k{i:02d}", os.urandom(100 + i))
    store = ObjectStore(objects_endpoint("SRC", bucket, "src"), options=options().store_options())
    store.open()
    repo = open_archive(archive_endpoint(f"archive+file://{tmp_path}/a"), create=True)
    try:
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["objects"])
        (unit,) = store.list_units()
        batches = list(store.export(unit))

        # Deleted between the listing and the GET: reported as skipped, neither stored
        # nor counted.
        src.remove_object(bucket, "k03")
        unit_writer = writer.store("objects").unit(unit)
        importer = ObjectArchive().importer(unit_writer, store, None)
        importer.prepare(False)
        for batch in batches:
            importer.write_batch(batch)
        importer.finalize()
        assert [s for b in batches for s in b.skipped] == [f"{bucket}/k03 (deleted on the source)"]
        assert unit_writer.records == 29
        record = unit_writer.commit()
        entries = [e.key for e in read_index(UnitReader(repo, record))]
        assert entries == [f"k{i:02d}" for i in range(30) if i != 3]

        # A GET failing half-way: the attempt's files are discarded, none half-written.
        calls = {"n": 0}
        real = store.open_object

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 15:
                raise TransientError("connection reset")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "open_object", flaky)
        unit_writer = writer.store("objects").unit(unit)
        importer = ObjectArchive().importer(unit_writer, store, None)
        importer.prepare(False)
        with pytest.raises(TransientError, match="connection reset"):
            for batch in batches:
                importer.write_batch(batch)
        folder = f"sets/{writer.set_id}/objects/units/"
        assert repo.backend.list_tmp(folder) == []
        assert [p for p, _ in repo.backend.files(folder)] == \
            [f.path for f in record.files]  # only the first attempt's committed files
    finally:
        repo.close()
        store.close()


def test_a_bucket_split_differently_is_still_incremental(s3_env, tmp_path, monkeypatch):
    """A bucket that grew past unit_records is cut into other units than last time:
    their objects are still found in the earlier set's unit(s), not read again."""
    src = client("SRC")
    bucket = f"arc-{uuid.uuid4().hex[:12]}"
    bodies = fill(src, bucket)
    archive = Archive(f"archive+file://{tmp_path}/archive", {}, bucket)
    first, report = archive.backup()
    assert report.ok and [u.name for u in first.stores["objects"].units.values()] == \
        [f"{bucket}/*"]
    monkeypatch.setattr(ObjectArchive, "recent_seconds", -10**9)  # a nightly job's objects
    second, report = archive.backup(unit_records=20)
    assert report.ok, report.to_dict()
    units = list(second.stores["objects"].units.values())
    assert len(units) >= 3 and sum(u.records for u in units) == len(bodies)
    assert [u.meta["objects"]["stored"] for u in units] == [0] * len(units)
    assert sum(u.meta["objects"]["referenced"] for u in units) == len(bodies)
    first_set = f"sets/{first.set_id}/"
    assert all(f.path.startswith(first_set) for u in units for f in u.files
               if f.name.startswith("packs/"))
    with open_archive(archive.endpoint) as repo:  # each unit's index: only its own range
        for u in units:
            keys = [e.key for e in read_index(repo.reader(second.set_id).store("objects")
                                              .unit(u.name))]
            spec = u.unit["spec"]
            assert keys and all((spec["start"] is None or k >= spec["start"])
                                and (spec["end"] is None or k < spec["end"]) for k in keys)
