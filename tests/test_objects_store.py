"""Object storage store against two real MinIO servers (``s3_env``)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, cast

import jsonschema
import pytest
from minio import MinioAdmin
from minio.commonconfig import ENABLED, Filter, Tags
from minio.credentials import StaticProvider
from minio.datatypes import Part
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from minio.objectlockconfig import DAYS, GOVERNANCE, ObjectLockConfig
from minio.versioningconfig import SUSPENDED, VersioningConfig

from fixtures import objects_data
from migrator.config import TLS, Endpoint
from migrator.engine.verify import schema_differences
from migrator.errors import (
    CapabilityMissing,
    EndpointError,
    PlanError,
    StoreError,
    TransientError,
)
from migrator.stores.base import Role, Selection, StoreOptions, Unit
from migrator.stores.objects import ObjectStore, missing_objects, separator, split_ranges
from migrator.stores.objects import transfer as transfer_module

MiB = 1 << 20
READ_SETTINGS = ("s3:GetBucketPolicy", "s3:GetBucketVersioning", "s3:GetLifecycleConfiguration",
                 "s3:GetBucketObjectLockConfiguration", "s3:GetEncryptionConfiguration",
                 "s3:GetBucketTagging")
SMALL = StoreOptions(batch_records=50, chunk_records=20, unit_records=1000)


def endpoint(side: str, path: str = "", var: str | None = None, **options: Any) -> Endpoint:
    var = var or f"OIM_S3_{side}"
    return Endpoint("objects", os.environ[f"OIM_S3_{side}_URL"] + path,
                    name=f"{side.lower()}.objects",
                    options={"access_key": f"${{{var}_ACCESS_KEY}}",
                             "secret_key": f"${{{var}_SECRET_KEY}}", **options})


def store(side: str, path: str = "", options: StoreOptions = SMALL,
          selection: Selection | None = None, **endpoint_options: Any) -> ObjectStore:
    s = ObjectStore(endpoint(side, path, **endpoint_options), selection, options)
    s.open()
    return s


def new_bucket(s: ObjectStore) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    s.client.make_bucket(name)
    return name


def put(s: ObjectStore, bucket: str, key: str, data: bytes, **kwargs: Any) -> None:
    s.client.put_object(bucket, key, io.BytesIO(data), len(data), **kwargs)


def body(s: ObjectStore, bucket: str, key: str) -> bytes:
    resp = s.client.get_object(bucket, key)
    try:
        return resp.read(decode_content=False)
    finally:
        resp.close()
        resp.release_conn()


def copy(src: ObjectStore, dst: ObjectStore) -> list[Unit]:
    """What the engine does for a run, in one thread."""
    units = src.list_units()
    dst.prepare_target(units, src)
    for unit in units:
        imp = dst.importer(unit)
        imp.prepare(False)
        for batch in src.export(unit):
            imp.write_batch(batch)
        imp.finalize()
    dst.finalize_target(units, src)
    return units


def compare(src: ObjectStore, dst: ObjectStore, units: list[Unit]) -> dict[str, set[str]]:
    """What the verifier does: digests per chunk, then records only where they differ."""
    out: dict[str, set[str]] = {"missing": set(), "extra": set(), "differ": set()}
    for unit in units:
        chunks = src.chunks(unit)
        ours, theirs = src.digest(unit, chunks), dst.digest(unit, chunks)
        for chunk in chunks:
            if ours[chunk.id] == theirs[chunk.id]:
                continue
            a, b = dict(src.records(unit, chunk)), dict(dst.records(unit, chunk))
            out["missing"] |= a.keys() - b.keys()
            out["extra"] |= b.keys() - a.keys()
            out["differ"] |= {k for k in a.keys() & b.keys() if not src.same_record(a[k], b[k])}
    return out


def equal(src: ObjectStore, dst: ObjectStore, units: list[Unit]) -> bool:
    return all(src.digest(u, c) == dst.digest(u, c) for u in units for c in [src.chunks(u)])


@pytest.fixture
def pair(s3_env: dict[str, str]):
    """A fresh source bucket and the store pair (target: same bucket name, created by us)."""
    src = store("SRC")
    bucket = new_bucket(src)
    src = store("SRC", f"/{bucket}")
    dst = store("DST")
    yield src, dst, bucket
    src.close()
    dst.close()


def count_calls(s: ObjectStore, method: str) -> list[str]:
    calls: list[str] = []
    original = getattr(s.client, method)

    def counted(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(key)
        return original(bucket, key, *args, **kwargs)

    setattr(s.client, method, counted)
    return calls


# -- copy fidelity -------------------------------------------------------------------------

def test_copy_keeps_bytes_type_metadata_and_headers_of_odd_objects(pair) -> None:
    src, dst, bucket = pair
    gz = gzip.compress(b"openim " * 1000)
    objects: dict[str, tuple[bytes, dict[str, Any]]] = {
        "empty": (b"", {}),
        "one byte": (b"x", {}),
        "openim/data/hash/ünïcödé näme 文件.jpg": (os.urandom(3000),
                                                   {"content_type": "image/jpeg"}),
        "gzipped.json": (gz, {"content_type": "application/json",
                              "metadata": {"Content-Encoding": "gzip"}}),
        "with-meta": (b"meta", {"content_type": "text/plain; charset=utf-8", "metadata": {
            "X-Amz-Meta-Uploader": "user 42", "x-amz-meta-Sha": "abc",
            "Cache-Control": "max-age=60", "Content-Disposition": 'attachment; filename="a b"',
            "Content-Language": "zh-CN"}}),
        "dir/": (b"", {}),
    }
    for key, (data, kwargs) in objects.items():
        put(src, bucket, key, data, **kwargs)
    units = copy(src, dst)
    for key, (data, _) in objects.items():
        assert body(dst, bucket, key) == data, key
        a, b = src.client.stat_object(bucket, key), dst.client.stat_object(bucket, key)
        assert a.content_type == b.content_type
        for header in ("x-amz-meta-uploader", "x-amz-meta-sha", "cache-control",
                       "content-disposition", "content-language", "content-encoding"):
            assert a.metadata.get(header) == b.metadata.get(header), (key, header)
    assert dst.client.stat_object(bucket, "gzipped.json").size == len(gz)  # not gunzipped
    assert equal(src, dst, units)


def test_object_above_threshold_goes_multipart_and_still_verifies(s3_env) -> None:
    src = store("SRC")
    bucket = new_bucket(src)
    src = store("SRC", f"/{bucket}")
    dst = store("DST", multipart_threshold="5MiB", multipart_part_size="5MiB")
    data = os.urandom(5 * MiB + 1)
    put(src, bucket, "big", data, part_size=6 * MiB)  # single-part on the source
    units = copy(src, dst)
    assert "-" not in str(src.client.stat_object(bucket, "big").etag)
    assert str(dst.client.stat_object(bucket, "big").etag).endswith("-2")
    assert body(dst, bucket, "big") == data
    gets = count_calls(dst, "get_object")
    assert equal(src, dst, units)
    assert gets == []  # the importer proved the target's MD5 through its multipart ETag


def put_parts(s: ObjectStore, bucket: str, key: str, parts: list[bytes]) -> None:
    """A multipart upload in parts of these sizes (S3 lets every part but the last differ;
    minio-py's own put_object cuts equal parts, so this uses its part calls)."""
    client = s.client
    upload = client._create_multipart_upload(bucket, key, {})
    done = [Part(i, client._upload_part(bucket, key, data, None, upload, i))
            for i, data in enumerate(parts, 1)]
    client._complete_multipart_upload(bucket, key, upload, done)


def test_multipart_etag_on_source_and_single_part_on_target_compare_equal(pair) -> None:
    """A source uploaded in parts of unequal sizes cannot be re-cut the same way: it is
    copied as one PUT, and the two ETags' forms differ; verify compares content MD5s."""
    src, dst, bucket = pair
    put_parts(src, bucket, "video.mp4", [os.urandom(5 * MiB), os.urandom(6 * MiB)])
    units = copy(src, dst)
    assert src.client.stat_object(bucket, "video.mp4").etag.endswith("-2")
    assert "-" not in dst.client.stat_object(bucket, "video.mp4").etag
    assert compare(src, dst, units) == {"missing": set(), "extra": set(), "differ": set()}


def test_a_multipart_source_is_copied_in_its_own_parts_and_verified_without_reads(
        pair) -> None:
    """OpenIM's uploads (5 MiB parts) get the source's ETag on the target: two servers'
    MD5s of the same parts prove the bytes equal, so verify reads neither body; a change
    on either side afterwards is a new version, read and named."""
    src, dst, bucket = pair
    for key in ("video.mp4", "audio.aac"):
        put(src, bucket, key, os.urandom(11 * MiB + 7), part_size=5 * MiB)
    units = copy(src, dst)
    for key in ("video.mp4", "audio.aac"):
        etag = src.client.stat_object(bucket, key).etag
        assert etag.endswith("-3") and dst.client.stat_object(bucket, key).etag == etag
    reads = count_calls(src, "get_object") + count_calls(dst, "get_object")
    assert compare(src, dst, units) == {"missing": set(), "extra": set(), "differ": set()}
    assert reads == []
    put(dst, bucket, "video.mp4", os.urandom(11 * MiB + 7), part_size=5 * MiB)
    put(src, bucket, "audio.aac", os.urandom(11 * MiB + 7), part_size=5 * MiB)
    assert compare(src, dst, units)["differ"] == {"video.mp4", "audio.aac"}


@pytest.mark.slow
def test_100_mib_object_streams_with_bounded_memory(s3_env) -> None:
    src = store("SRC")
    bucket = new_bucket(src)
    src = store("SRC", f"/{bucket}")
    dst = store("DST", multipart_part_size="8MiB", parallel_parts=2)
    big = objects_data.FixtureObject("big", 100 * MiB, "video/mp4", "t100", part_size=8 * MiB)
    src.client.put_object(bucket, "big", cast(BinaryIO, objects_data.PartReader(big)),
                          big.size, content_type="video/mp4", part_size=8 * MiB)
    tracemalloc.start()
    try:
        units = copy(src, dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 60 * MiB, f"copy held {peak / MiB:.0f} MiB"
    assert equal(src, dst, units)


# -- policy, naming, selection -------------------------------------------------------------

def test_bucket_policy_copied_to_renamed_bucket_and_definitions_equal(pair) -> None:
    src, _, bucket = pair
    renamed = f"r-{uuid.uuid4().hex[:16]}"
    dst = store("DST", bucket_map={bucket: renamed})
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/openim/*"]}]}
    src.client.set_bucket_policy(bucket, json.dumps(policy))
    put(src, bucket, "openim/a", b"a")
    units = copy(src, dst)
    stored = json.loads(dst.client.get_bucket_policy(renamed))
    assert stored["Statement"][0]["Resource"] == [f"arn:aws:s3:::{renamed}/openim/*"]
    assert src.definitions(units) == dst.definitions(units)
    assert src.definitions(units)[bucket]["policy"] is not None
    src.client.delete_bucket_policy(bucket)
    assert src.definitions(units) != dst.definitions(units)


def test_target_url_bucket_and_prefix_receive_the_keys(pair) -> None:
    src, _, bucket = pair
    for key in ("a", "openim/b", "openim/c"):
        put(src, bucket, key, key.encode())
    other = f"m-{uuid.uuid4().hex[:16]}"
    dst = store("DST", f"/{other}/mirror/")
    units = copy(src, dst)
    listed = sorted(o.object_name for o in dst.client.list_objects(other, recursive=True))
    assert listed == ["mirror/a", "mirror/openim/b", "mirror/openim/c"]
    assert equal(src, dst, units)


def test_excluded_keys_are_neither_copied_nor_verified(pair) -> None:
    src, _, bucket = pair
    for key in ("openim/data/hash/1", "openim/temp/x.presigned", "openim/direct/d.jpg"):
        put(src, bucket, key, b"x")
    selection = Selection(exclude=("*/openim/temp/*",))
    src = store("SRC", f"/{bucket}", selection=selection)
    dst = store("DST", selection=selection)
    units = copy(src, dst)
    listed = {o.object_name for o in dst.client.list_objects(bucket, recursive=True)}
    assert listed == {"openim/data/hash/1", "openim/direct/d.jpg"}
    assert equal(src, dst, units)


# -- units, chunks, resume -----------------------------------------------------------------

def test_split_ranges_keeps_runs_within_limit_and_covers_all_keys() -> None:
    rng = random.Random(7)
    keys = sorted({f"openim/data/hash/{rng.randbytes(16).hex()}" for _ in range(3000)}
                  | {f"openim/direct/2024{rng.randrange(10**4):04d}/u{i}" for i in range(400)}
                  | {"openim/data/hash/", "openim/data/hash/0", "a", "zz"})
    parts = split_ranges(((k, 1) for k in keys), 250)
    assert sum(p.count for p in parts) == len(keys)
    assert all(p.count <= 250 for p in parts)
    assert [p.first for p in parts] == [keys[sum(q.count for q in parts[:i])]
                                        for i in range(len(parts))]
    for a, b in zip(parts, parts[1:], strict=False):
        cut = separator(a.last, b.first)
        assert a.last < cut <= b.first
        assert len(cut) <= len("openim/data/hash/") + 2  # split at leading characters


def test_units_partition_the_bucket_including_keys_between_split_prefixes(pair) -> None:
    src, _, bucket = pair
    rng = random.Random(3)
    for _ in range(120):
        put(src, bucket, f"openim/data/hash/{rng.randbytes(16).hex()}", b"h")
    src = store("SRC", f"/{bucket}", options=StoreOptions(unit_records=30))
    units = src.list_units()
    assert len(units) >= 4
    assert units[0].spec["start"] is None and units[-1].spec["end"] is None
    assert all(a.spec["end"] == b.spec["start"] for a, b in zip(units, units[1:], strict=False))
    # Written after planning, at and around every boundary. (No key equal to a "directory"
    # of other keys: MinIO's drive layout then hides that directory from listings.)
    late = ["0", "openim/data/hasg", "openim/data/hasi", "zzz"] + \
        [u.spec["start"] for u in units[1:]] + [u.spec["start"] + "~" for u in units[1:]]
    for key in late:
        put(src, bucket, key, b"late")
    seen: list[str] = []
    for unit in units:
        seen += [r.key for batch in src.export(unit) for r in batch.records]
    everything = [o.object_name for o in src.client.list_objects(bucket, recursive=True)]
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen))


def test_export_resumes_right_after_the_cursor(pair) -> None:
    src, _, bucket = pair
    keys = sorted(f"k{i:03d}" for i in range(23))
    for key in keys:
        put(src, bucket, key, key.encode())
    src = store("SRC", f"/{bucket}", options=StoreOptions(batch_records=5))
    unit = src.list_units()[0]
    first = next(src.export(unit))
    assert [r.key for r in first.records] == keys[:5] and first.cursor == keys[4]
    rest = [r.key for b in src.export(unit, resume_from=first.cursor) for r in b.records]
    assert rest == keys[5:]


def test_replayed_batch_after_resume_puts_nothing_twice(pair) -> None:
    src, dst, bucket = pair
    for i in range(8):
        put(src, bucket, f"o{i}", os.urandom(100))
    units = copy(src, dst)
    puts = count_calls(dst, "put_object")
    imp = dst.importer(units[0])
    imp.prepare(True)
    batch = next(src.export(units[0]))
    imp.write_batch(batch)
    assert puts == []
    imp.write_batch(batch)  # after the first batch the importer stops checking: puts again
    assert len(puts) == 8
    assert equal(src, dst, units)


def test_batches_pickle_and_still_fetch_from_the_source(pair) -> None:
    src, dst, bucket = pair
    put(src, bucket, "p", b"pickled")
    units = src.list_units()
    dst.prepare_target(units, src)
    batch = pickle.loads(pickle.dumps(next(src.export(units[0]))))
    dst.importer(units[0]).write_batch(batch)
    assert body(dst, bucket, "p") == b"pickled"


def test_chunks_cover_the_unit_and_each_object_counts_once(pair) -> None:
    src, _, bucket = pair
    for i in range(50):
        put(src, bucket, f"c/{i:02d}", b"c")
    src = store("SRC", f"/{bucket}", options=StoreOptions(chunk_records=7))
    unit = src.list_units()[0]
    chunks = src.chunks(unit)
    assert len(chunks) == 8
    assert chunks[0].bounds["start"] is None and chunks[-1].bounds["end"] is None
    digests = src.digest(unit, chunks)
    assert sum(d.count for d in digests.values()) == 50
    keys = [k for c in chunks for k, _ in src.records(unit, c)]
    assert sorted(keys) == [f"c/{i:02d}" for i in range(50)]


# -- verification finds exactly what differs -----------------------------------------------

def test_one_changed_byte_on_target_names_exactly_that_key(pair) -> None:
    src, dst, bucket = pair
    for i in range(60):
        put(src, bucket, f"openim/data/hash/{i:02d}", os.urandom(500), content_type="image/png")
    units = copy(src, dst)
    data = bytearray(body(dst, bucket, "openim/data/hash/37"))
    data[123] ^= 1
    put(dst, bucket, "openim/data/hash/37", bytes(data), content_type="image/png")
    assert compare(src, dst, units) == {"missing": set(), "extra": set(),
                                        "differ": {"openim/data/hash/37"}}


def test_changed_metadata_on_target_is_a_difference(pair) -> None:
    src, dst, bucket = pair
    put(src, bucket, "m", b"m", metadata={"x-amz-meta-a": "1"})
    units = copy(src, dst)
    put(dst, bucket, "m", b"m", metadata={"x-amz-meta-a": "2"})
    assert compare(src, dst, units)["differ"] == {"m"}


def test_missing_and_extra_objects_are_named(pair) -> None:
    src, dst, bucket = pair
    for i in range(30):
        put(src, bucket, f"k{i:02d}", b"v")
    units = copy(src, dst)
    dst.client.remove_object(bucket, "k07")
    put(dst, bucket, "k07x", b"extra")
    put(dst, bucket, "zz-only-on-target", b"extra")
    assert compare(src, dst, units) == {"missing": {"k07"}, "extra": {"k07x", "zz-only-on-target"},
                                        "differ": set()}


def test_second_digest_reads_no_bodies_when_cache_is_warm(pair) -> None:
    src, dst, bucket = pair
    for i in range(3):
        put(src, bucket, f"mp{i}", os.urandom(6 * MiB), part_size=5 * MiB)
    put(src, bucket, "small", b"s")
    unit = src.list_units()[0]
    chunks = src.chunks(unit)
    gets = count_calls(src, "get_object")
    first = src.digest(unit, chunks)
    assert sorted(gets) == ["mp0", "mp1", "mp2"]
    gets.clear()
    assert src.digest(unit, chunks) == first
    assert gets == []
    put(src, bucket, "mp1", os.urandom(6 * MiB), part_size=5 * MiB)  # a new version
    assert src.digest(unit, chunks) != first and gets == ["mp1"]


def test_object_rewritten_after_listing_is_reported_not_cached(pair) -> None:
    src, _, bucket = pair
    put(src, bucket, "mp", os.urandom(6 * MiB), part_size=5 * MiB)
    unit = src.list_units()[0]
    chunk = src.chunks(unit)[0]
    stale = list(src.client.list_objects(bucket, recursive=True, include_user_meta=True))
    new = os.urandom(6 * MiB)
    put(src, bucket, "mp", new, part_size=5 * MiB)
    listing = src.client.list_objects
    src.client.list_objects = lambda *args, **kwargs: iter(stale)  # the race, made certain
    assert dict(src.records(unit, chunk))["mp"]["md5"] == "(changed during verify)"
    assert len(src.hash_cache) == 0
    src.client.list_objects = listing
    assert dict(src.records(unit, chunk))["mp"]["md5"] == hashlib.md5(new).hexdigest()


# -- access and errors ---------------------------------------------------------------------

def test_read_only_user_suffices_for_the_source_but_not_the_target(pair, monkeypatch) -> None:
    src, dst, bucket = pair
    put(src, bucket, "openim/data/hash/r", b"readable")
    user, secret = f"reader{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = MinioAdmin(endpoint=os.environ["OIM_S3_SRC_URL"].split("//")[1], secure=False,
                       credentials=StaticProvider(os.environ["OIM_S3_SRC_ACCESS_KEY"],
                                                  os.environ["OIM_S3_SRC_SECRET_KEY"]))

    def allow(*actions: str) -> None:
        admin.policy_add(user, policy={"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Resource": ["arn:aws:s3:::*"], "Action": list(actions)}]})

    admin.user_add(user, secret)
    allow("s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject")  # list + get only
    admin.policy_set(user, user=user)
    monkeypatch.setenv("OIM_RO_ACCESS_KEY", user)
    monkeypatch.setenv("OIM_RO_SECRET_KEY", secret)
    with pytest.raises(EndpointError) as err:
        store("SRC", f"/{bucket}", var="OIM_RO").check_access(Role.SOURCE)
    assert "s3:GetBucketPolicy" in str(err.value)  # the hint says what to grant or set
    assert "s3:GetBucketVersioning" in str(err.value)  # all of it at once
    no_settings = Selection(options={"bucket_settings": False})
    reader = store("SRC", f"/{bucket}", var="OIM_RO", selection=no_settings)
    reader.check_access(Role.SOURCE)
    units = copy(reader, store("DST", selection=no_settings))
    assert reader.definitions(units) == {}
    assert body(dst, bucket, "openim/data/hash/r") == b"readable"
    assert equal(reader, dst, units)

    allow("s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:GetBucketPolicy")
    with pytest.raises(EndpointError) as err:  # the other bucket settings are read too
        store("SRC", f"/{bucket}", var="OIM_RO").check_access(Role.SOURCE)
    assert "s3:GetBucketVersioning" in str(err.value)
    assert "s3:GetBucketPolicy" not in str(err.value)
    allow("s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", *READ_SETTINGS)
    reader = store("SRC", f"/{bucket}", var="OIM_RO")
    reader.check_access(Role.SOURCE)
    assert reader.definitions(units) == dst.definitions(units)
    with pytest.raises(EndpointError, match="AccessDenied"):
        reader.check_access(Role.TARGET)


def test_wrong_secret_is_an_endpoint_error_that_hides_the_secret(s3_env, monkeypatch) -> None:
    monkeypatch.setenv("OIM_BAD_ACCESS_KEY", os.environ["OIM_S3_SRC_ACCESS_KEY"])
    monkeypatch.setenv("OIM_BAD_SECRET_KEY", "definitely-not-the-secret-9f2c")
    with pytest.raises(EndpointError) as err:
        store("SRC", var="OIM_BAD").check_access(Role.SOURCE)
    assert not err.value.transient
    assert "src.objects" in str(err.value)
    assert "definitely-not-the-secret-9f2c" not in str(err.value) + repr(err.value.__cause__)


def test_unreachable_endpoint_is_a_transient_endpoint_error(s3_env, monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OIM_S3_GONE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(EndpointError) as err:
        store("GONE", var="OIM_S3_SRC").check_access(Role.SOURCE)
    assert err.value.transient and "gone.objects" in str(err.value)


def test_target_access_probe_leaves_nothing_behind(s3_env) -> None:
    dst = store("DST")
    bucket = new_bucket(dst)
    before = sorted(b.name for b in dst.client.list_buckets())
    dst.check_access(Role.TARGET)  # no bucket in the URL: probes bucket creation too
    store("DST", f"/{bucket}/some/prefix/").check_access(Role.TARGET)
    assert sorted(b.name for b in dst.client.list_buckets()) == before
    assert list(dst.client.list_objects(bucket, recursive=True)) == []


def test_existing_names_the_units_that_already_hold_objects(pair) -> None:
    src, dst, bucket = pair
    put(src, bucket, "a", b"a")
    units = src.list_units()
    assert dst.existing(units) == []
    copy(src, dst)
    assert dst.existing(units) == [units[0].name]


# -- cross-store check and fixture ---------------------------------------------------------

def test_missing_objects_lists_exactly_the_absent_keys(s3_env) -> None:
    dst = store("DST")
    bucket = new_bucket(dst)
    present = [f"openim/data/hash/{i:032x}" for i in range(40)]
    for key in present:
        put(dst, bucket, key, b"p")
    absent = [f"openim/data/hash/{i:032x}" for i in range(40, 45)]
    names = [f"{bucket}/{k}" for k in present + absent + absent[:2] + present[:3]]
    assert missing_objects(dst, iter(names)) == [f"{bucket}/{k}" for k in absent]


def test_fixture_writes_exactly_the_keys_object_keys_predicts(s3_env) -> None:
    src = store("SRC")
    bucket = new_bucket(src)
    counts = objects_data.load(endpoint("SRC", f"/{bucket}"), seed=5, scale=0.05)
    listed = {o.object_name: o for o in src.client.list_objects(bucket, recursive=True)}
    assert set(listed) == set(objects_data.object_keys(seed=5, scale=0.05))
    assert counts["objects"] == len(listed) and counts["hash"] > counts["thumbnail"] > 0
    assert counts["multipart"] == sum(o.etag.strip('"').count("-") for o in listed.values())
    assert {o.object_name.split("/")[1] for o in listed.values()} == \
        {"data", "thumbnail", "direct", "temp"}


def test_credentials_may_come_from_url_userinfo_references(s3_env) -> None:
    bucket = new_bucket(store("SRC"))
    url = os.environ["OIM_S3_SRC_URL"].replace(
        "http://", "http://${OIM_S3_SRC_ACCESS_KEY}:${OIM_S3_SRC_SECRET_KEY}@") + f"/{bucket}"
    s = ObjectStore(Endpoint("objects", url, name="userinfo.objects"))
    s.open()
    s.check_access(Role.SOURCE)
    assert [u.name for u in s.list_units()] == [f"{bucket}/*"]


# -- bucket settings: copied, then compared as store-level definitions ---------------------

def lifecycle(*rules: tuple[str, str, int]) -> LifecycleConfig:
    return LifecycleConfig([Rule(ENABLED, rule_filter=Filter(prefix=prefix), rule_id=rule_id,
                                 expiration=Expiration(days=days))
                            for rule_id, prefix, days in rules])


def test_versioning_lifecycle_and_tags_are_copied_and_compared(pair) -> None:
    src, dst, bucket = pair
    src.client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    src.client.set_bucket_lifecycle(bucket, lifecycle(("temp", "openim/temp/", 1)))
    tags = Tags.new_bucket_tags()
    tags["owner"] = "openim"
    src.client.set_bucket_tags(bucket, tags)
    put(src, bucket, "openim/temp/x", b"x")
    units = copy(src, dst)
    assert dst.client.get_bucket_versioning(bucket).status == ENABLED
    rule = dst.client.get_bucket_lifecycle(bucket).rules[0]
    assert (rule.rule_id, rule.rule_filter.prefix, rule.expiration.days) == \
        ("temp", "openim/temp/", 1)
    assert dict(dst.client.get_bucket_tags(bucket)) == {"owner": "openim"}
    ours = src.definitions(units)
    assert ours == dst.definitions(units)
    assert ours[bucket]["versioning"] == {"Status": "Enabled"}
    assert ours[bucket]["lifecycle"]["Rule"]["Filter"] == {"Prefix": "openim/temp/"}

    dst.client.set_bucket_lifecycle(bucket, lifecycle(("temp", "openim/temp/", 30)))
    dst.client.set_bucket_versioning(bucket, VersioningConfig(SUSPENDED))
    lines = schema_differences(src.definitions(units), dst.definitions(units))
    assert [line.split(":")[0] for line in lines] == [
        f"{bucket}.lifecycle.Rule.Expiration.Days", f"{bucket}.versioning.Status"]
    copy(src, dst)  # a second run puts the settings back
    assert src.definitions(units) == dst.definitions(units)


def test_object_lock_bucket_is_created_locked_with_its_default_retention(pair) -> None:
    src, dst, _ = pair
    locked = f"l-{uuid.uuid4().hex[:16]}"
    src.client.make_bucket(locked, object_lock=True)
    src.client.set_object_lock_config(locked, ObjectLockConfig(GOVERNANCE, 3, DAYS))
    put(src, locked, "a", b"a")
    src = store("SRC", f"/{locked}")
    units = copy(src, dst)
    config = dst.client.get_object_lock_config(locked)
    assert (config.mode, config.duration) == (GOVERNANCE, 3)
    assert body(dst, locked, "a") == b"a"
    assert src.definitions(units) == dst.definitions(units)
    assert src.definitions(units)[locked]["object_lock"]["Rule"]["DefaultRetention"] == \
        {"Mode": "GOVERNANCE", "Days": "3"}


def test_settings_follow_the_bucket_and_key_prefix_of_each_side(pair) -> None:
    src, _, bucket = pair
    other = f"m-{uuid.uuid4().hex[:16]}"
    dst = store("DST", f"/{other}/mirror/")
    src.client.set_bucket_lifecycle(bucket, lifecycle(("temp", "openim/temp/", 1)))
    src.client.set_bucket_policy(bucket, json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/openim/*"}]}))
    put(src, bucket, "openim/a", b"a")
    units = copy(src, dst)
    lifecycle_there = dst.client.get_bucket_lifecycle(other)
    assert lifecycle_there is not None and lifecycle_there.rules[0].rule_filter is not None
    assert lifecycle_there.rules[0].rule_filter.prefix == "mirror/openim/temp/"
    assert json.loads(dst.client.get_bucket_policy(other))["Statement"][0]["Resource"] == \
        [f"arn:aws:s3:::{other}/mirror/openim/*"]
    assert src.definitions(units) == dst.definitions(units)


def test_a_versioned_target_bucket_for_an_unversioned_source_is_refused(pair) -> None:
    src, dst, bucket = pair
    put(src, bucket, "a", b"a")
    dst.client.make_bucket(bucket)
    dst.client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    with pytest.raises(StoreError, match=f"bucket {bucket}: versioning.*cannot be switched off"):
        copy(src, dst)


def test_bucket_settings_false_leaves_settings_out(pair) -> None:
    src, _, bucket = pair
    src.client.set_bucket_lifecycle(bucket, lifecycle(("temp", "t/", 1)))
    off = Selection(options={"bucket_settings": False})
    src = store("SRC", f"/{bucket}", selection=off)
    units = copy(src, store("DST", selection=off))
    assert store("DST").client.get_bucket_lifecycle(bucket) is None
    assert src.definitions(units) == {}


def test_a_deleted_target_bucket_is_missing_objects_not_an_error(pair) -> None:
    src, dst, bucket = pair
    for key in ("a", "b"):
        put(src, bucket, key, b"x")
    units = copy(src, dst)
    for key in ("a", "b"):
        dst.client.remove_object(bucket, key)
    dst.client.remove_bucket(bucket)
    assert compare(src, dst, units)["missing"] == {"a", "b"}
    assert dst.definitions(units) == {bucket: None}


# -- coverage: units must tile each bucket; buckets without units are named ----------------

def test_units_of_a_split_bucket_tile_it_and_edits_are_named(pair) -> None:
    src, _, bucket = pair
    rng = random.Random(5)
    for _ in range(90):
        put(src, bucket, f"openim/data/hash/{rng.randbytes(16).hex()}", b"h")
    units = store("SRC", f"/{bucket}", options=StoreOptions(unit_records=30)).list_units()
    assert len(units) >= 3 and ObjectStore.uncovered(units) == []
    assert {ObjectStore.container_of(u) for u in units} == {bucket}
    for unit in units:
        jsonschema.validate(unit.spec, ObjectStore.SPEC_SCHEMA)
    middle = units[1]
    cut = middle.spec["start"] + "8"  # inside the unit: the rest of it is left out
    narrowed = [replace(u, spec=dict(u.spec, end=cut)) if u is middle else u for u in units]
    hole = f"[{cut}..{middle.spec['end']})"
    assert ObjectStore.uncovered(narrowed) == [f"{bucket}: keys {hole} are in no unit"]
    deleted = [u for u in units if u is not middle]
    assert ObjectStore.uncovered(deleted) == [
        f"{bucket}: keys [{middle.spec['start']}..{middle.spec['end']}) are in no unit"]
    assert ObjectStore.uncovered(units[1:]) == [
        f"{bucket}: keys [..{units[1].spec['start']}) are in no unit"]
    assert ObjectStore.uncovered(units + [units[0]]) == [
        f"{bucket}: keys [..{units[0].spec['end']}) are in two units"]


def test_unlisted_names_selected_buckets_created_after_plan_even_empty(s3_env) -> None:
    tag = uuid.uuid4().hex[:10]
    admin = store("SRC")
    admin.client.make_bucket(f"sel-{tag}-a")
    put(admin, f"sel-{tag}-a", "k", b"k")
    src = store("SRC", selection=Selection(include=(f"sel-{tag}-*",)))
    units = src.list_units()
    assert [u.name for u in units] == [f"sel-{tag}-a/*"] and src.unlisted(units) == []
    admin.client.make_bucket(f"sel-{tag}-b")  # empty, in the selection
    admin.client.make_bucket(f"other-{tag}")  # outside it
    assert src.unlisted(units) == [f"sel-{tag}-b"]
    assert src.unlisted([]) == [f"sel-{tag}-a", f"sel-{tag}-b"]  # a deleted unit, too


def test_spec_schema_refuses_edited_specs() -> None:
    validator = jsonschema.Draft202012Validator(ObjectStore.SPEC_SCHEMA)
    validator.check_schema(ObjectStore.SPEC_SCHEMA)
    good = {"bucket": "openim", "prefix": "", "start": None, "end": "openim/data/hash/8"}
    assert not list(validator.iter_errors(good))
    for bad in ({"bucket": "openim"}, dict(good, start=5), dict(good, end=""),
                dict(good, bucket=None), dict(good, strat="a"), "oops"):
        assert list(validator.iter_errors(bad)), bad


# -- endpoint URLs and options: refused before anything connects ---------------------------

BAD_ENDPOINTS = [  # (url, options, field after "stores.objects.source.", words in the message)
    ("ftp://h:9000/openim", {}, "url", "scheme 'ftp'"),
    ("h:9000", {}, "url", "has no scheme"),
    ("http://:9000/openim", {}, "url", "has no host"),
    ("http://h:0/openim", {}, "url", "port 0"),
    ("http://h:/openim", {}, "url", "empty port"),
    ("http://h:99999", {}, "url", "not a valid URL"),
    ("http://h:9000/openim?region=cn", {}, "url", "'?region=cn' would be ignored"),
    ("http://h:9000/openim#x", {}, "url", "'#x' would be ignored"),
    ("http://h:9000/Open_IM!", {}, "url", "'Open_IM!' is not a bucket name"),
    ("http://h:9000/openim", {"bucket_map": {"a": "b"}}, "bucket_map", "would be ignored"),
    ("http://${U}@h:9000", {"access_key": "${A}"}, "url", "user name would be ignored"),
    ("http://h:9000", {"bucket_map": {"a": "No_Such!"}}, "bucket_map.a", "not a bucket name"),
    ("http://h:9000", {"bucket_map": ["a"]}, "bucket_map", "expected a mapping"),
    ("http://h:9000", {"acess_key": "${A}"}, "acess_key", "unknown option"),
    ("http://h:9000", {"access_key": "AKIAPLAIN"}, "access_key", "expected a ${VAR}"),
    ("http://h:9000", {"transfers": "8x"}, "transfers", "whole number"),
    ("http://h:9000", {"transfers": True}, "transfers", "whole number"),
    ("http://h:9000", {"checkers": 0}, "checkers", "whole number"),
    ("http://h:9000", {"parallel_parts": 1000}, "parallel_parts", "from 1 to 64"),
    ("http://h:9000", {"multipart_threshold": "16XB"}, "multipart_threshold", "a size"),
    ("http://h:9000", {"memory_budget": -1}, "memory_budget", "a size"),
    ("http://h:9000", {"etag_is_md5": "no"}, "etag_is_md5", "true or false"),
    ("http://h:9000", {"region": ""}, "region", "region name"),
]


@pytest.mark.parametrize(("url", "options", "field", "words"), BAD_ENDPOINTS)
def test_bad_endpoint_is_one_plan_error_naming_the_field(url, options, field, words) -> None:
    where = "stores.objects.source"
    with pytest.raises(PlanError) as err:
        ObjectStore(Endpoint("objects", url, name=where, options=options))
    assert err.value.exit_code == 3 and err.value.field == f"{where}.{field}"
    assert words in err.value.message and "\n" not in err.value.message
    if field == "url" or "bucket_map" in field and "would be ignored" in words:
        with pytest.raises(PlanError):  # the check the plan loader runs, no network
            ObjectStore.check_endpoint(Endpoint("objects", url, name=where, options=options),
                                       Role.SOURCE)


def test_option_schema_is_a_json_schema_that_accepts_the_documented_forms() -> None:
    jsonschema.Draft202012Validator.check_schema(ObjectStore.OPTION_SCHEMA)
    options = {"access_key": "${AK}", "secret_key": "${SK}", "region": "us-east-1",
               "bucket_map": {"openim": "openim-new"}, "multipart_threshold": "64MiB",
               "multipart_part_size": 8 * MiB, "memory_budget": "1G", "parallel_parts": 4,
               "transfers": 16, "checkers": 8, "etag_is_md5": False, "unit_bytes": "2GiB"}
    jsonschema.validate(options, ObjectStore.OPTION_SCHEMA)
    for url in ("s3://h:9000/openim/some/prefix/", "https://s3.amazonaws.com/openim",
                "http://[::1]:9000", "http://${AK}:${SK}@h:9000/openim"):
        ObjectStore.check_endpoint(Endpoint("objects", url, name="x"), Role.TARGET)
    s = ObjectStore(Endpoint("objects", "s3://h:9000", name="x", options=options))
    assert (s.threshold, s.part_size, s.transfers) == (64 * MiB, 8 * MiB, 16)
    assert s.unit_bytes == 2 << 30


# -- TLS: a MinIO that speaks only HTTPS, with a self-signed certificate -------------------

@pytest.fixture(scope="module")
def tls_minio(s3_env, tmp_path_factory):
    """A third MinIO, HTTPS only, with the source's credentials; its certificate is its CA."""
    bin_dir = os.environ.get("OPENIM_MIGRATE_BIN") or str(Path.home() / ".cache/openim-migrate/bin")
    exe = shutil.which("minio", path=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    if exe is None:
        pytest.skip("minio binary not found")
    root = tmp_path_factory.mktemp("minio-tls")
    certs = root / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(certs / "private.key"),
                    "-out", str(certs / "public.crt")], check=True, capture_output=True)
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        port, console = a.getsockname()[1], b.getsockname()[1]
    env = dict(os.environ, MINIO_ROOT_USER=os.environ["OIM_S3_SRC_ACCESS_KEY"],
               MINIO_ROOT_PASSWORD=os.environ["OIM_S3_SRC_SECRET_KEY"], MINIO_BROWSER="off",
               MINIO_UPDATE="off", MINIO_CI_CD="1")
    log = (root / "minio.log").open("wb")
    proc = subprocess.Popen([exe, "server", "--quiet", "--address", f"127.0.0.1:{port}",
                             "--console-address", f"127.0.0.1:{console}", "--certs-dir",
                             str(certs), str(root / "data")], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(certs / "public.crt"))
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/minio/health/ready",
                                        timeout=2, context=context):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"TLS MinIO did not start: {(root / 'minio.log').read_text()}")
            time.sleep(0.2)
    yield {"port": port, "ca": str(certs / "public.crt")}
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def tls_store(url: str, tls: TLS | None = None) -> ObjectStore:
    s = ObjectStore(Endpoint("objects", url, name="tls.objects", tls=tls or TLS(),
                             options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                                      "secret_key": "${OIM_S3_SRC_SECRET_KEY}"}), None, SMALL)
    s.open()
    return s


def test_http_to_an_https_port_is_an_endpoint_error_naming_it(tls_minio) -> None:
    with pytest.raises(EndpointError) as err:
        tls_store(f"http://127.0.0.1:{tls_minio['port']}").check_access(Role.SOURCE)
    assert not err.value.transient  # retrying cannot help: the URL is wrong
    assert err.value.exit_code == 4 and "tls.objects" in str(err.value)
    assert "speaks HTTPS" in err.value.message and "https://" in (err.value.hint or "")


def test_https_checks_the_certificate_against_tls_ca_file(tls_minio) -> None:
    url = f"https://127.0.0.1:{tls_minio['port']}"
    with pytest.raises(EndpointError, match="TLS failure"):
        tls_store(url).check_access(Role.TARGET)  # self-signed: not in the system CAs
    trusted = tls_store(url, TLS(enabled=True, ca_file=tls_minio["ca"]))
    trusted.check_access(Role.TARGET)
    trusted.client.make_bucket("tls-bucket")
    put(trusted, "tls-bucket", "k", b"over tls")
    assert [u.name for u in trusted.list_units()] == ["tls-bucket/*"]


def test_plan_with_http_to_an_https_port_exits_4_in_one_line(tls_minio, tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "migrator", "plan",
         "--source", f"objects=http://127.0.0.1:{tls_minio['port']}",
         "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
         "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
         "--target", f"objects={os.environ['OIM_S3_DST_URL']}",
         "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
         "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}",
         "-o", str(tmp_path / "p.yaml")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert out.returncode == 4, out.stderr
    assert "Traceback" not in out.stderr and "speaks HTTPS" in out.stderr.splitlines()[0]
    assert not (tmp_path / "p.yaml").exists()


def test_definitions_without_units_list_the_selected_buckets_by_source_name(pair) -> None:
    src, _, bucket = pair
    renamed = f"r-{uuid.uuid4().hex[:16]}"
    selection = Selection(include=(f"{bucket}/*",))  # source names, on both sides
    src = store("SRC", selection=selection)
    dst = store("DST", bucket_map={bucket: renamed}, selection=selection)
    src.client.set_bucket_lifecycle(bucket, lifecycle(("temp", "t/", 1)))
    units = copy(src, dst)
    assert src.definitions() == dst.definitions() == src.definitions(units)
    gone = store("DST", f"/{bucket}-gone")  # verify before the run created it
    assert gone.definitions() == {f"{bucket}-gone": None}


# -- catch-up (sync) and freeze ------------------------------------------------------------

def test_fetch_names_only_live_keys_and_carries_no_bodies(pair) -> None:
    src, dst, bucket = pair
    big = objects_data.FixtureObject("openim/video/big.mp4", 24 * MiB, "video/mp4", "fetch")
    src.client.put_object(bucket, big.key, objects_data.PartReader(big), big.size,
                          content_type="video/mp4")
    put(src, bucket, "openim/a", b"a", metadata={"x-amz-meta-who": "me"})
    units = src.list_units()
    tracemalloc.start()
    try:
        batch = src.fetch(units[0], ["openim/a", big.key, "openim/gone"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"fetch held {peak / MiB:.1f} MiB"
    assert [r.key for r in batch.records] == ["openim/a", big.key]
    assert batch.nbytes == big.size + 1 and batch.records[0].metadata == {"who": "me"}
    src.client.remove_object(bucket, "openim/a")  # gone between fetch and the copy: skipped
    dst.prepare_target(units, src)
    imp = dst.importer(units[0])
    imp.prepare(resumed=True)
    imp.write_batch(batch)
    assert batch.skipped == [f"{bucket}/openim/a (deleted on the source)"]
    assert dst.client.stat_object(bucket, big.key).size == big.size


def test_delete_removes_the_keys_in_one_request_and_ignores_absent_ones(pair) -> None:
    src, dst, bucket = pair
    keys = [f"k{i:02d}" for i in range(30)]
    for key in keys:
        put(src, bucket, key, b"x")
    units = copy(src, dst)
    calls = count_calls(dst, "remove_objects")
    dst.delete(units[0], keys[:20] + ["never-there"])
    assert len(calls) == 1  # one multi-object DELETE for the whole list
    left = sorted(o.object_name for o in dst.client.list_objects(bucket, recursive=True))
    assert left == keys[20:]
    assert compare(src, dst, units)["missing"] == set(keys[:20])
    store("DST", "/no-such-bucket-here").delete(
        replace(units[0], spec=dict(units[0].spec, bucket="no-such-bucket-here")), ["k"])


def test_delete_maps_keys_to_the_target_bucket_and_prefix(pair) -> None:
    src, _, bucket = pair
    for key in ("a", "b"):
        put(src, bucket, key, b"x")
    other = f"m-{uuid.uuid4().hex[:16]}"
    dst = store("DST", f"/{other}/mirror/")
    units = copy(src, dst)
    dst.delete(units[0], ["a"])
    assert [o.object_name for o in dst.client.list_objects(other, recursive=True)] == \
        ["mirror/b"]
    assert [o.object_name for o in src.client.list_objects(bucket)] == ["a", "b"]


def test_resumed_importer_rewrites_an_object_whose_metadata_alone_changed(pair) -> None:
    src, dst, bucket = pair
    put(src, bucket, "k", b"same bytes", content_type="image/png")
    units = copy(src, dst)
    put(src, bucket, "k", b"same bytes", content_type="image/webp",
        metadata={"x-amz-meta-rev": "2"})  # same ETag and size as on the target
    imp = dst.importer(units[0])
    imp.prepare(resumed=True)
    imp.write_batch(src.fetch(units[0], ["k"]))
    stat = dst.client.stat_object(bucket, "k")
    assert stat.content_type == "image/webp" and stat.metadata["x-amz-meta-rev"] == "2"
    assert equal(src, dst, units)


def test_freeze_is_not_available_and_says_the_writers_must_stop(s3_env) -> None:
    src = store("SRC")
    reason = src.freeze_check()
    assert reason is not None and "writers" in reason and "OpenIM" in reason
    with pytest.raises(CapabilityMissing, match="writers being stopped"):
        src.freeze(30)
    src.unfreeze()  # nothing held: harmless


# -- speed: shared pool, count-cut batches, single PUTs, units by bytes ---------------------

def test_export_cuts_batches_by_count_not_by_batch_bytes(pair) -> None:
    src, _, bucket = pair
    for i in range(12):
        put(src, bucket, f"k{i:02d}", os.urandom(600))
    tiny_batches = StoreOptions(batch_records=5, batch_bytes=1000)
    unit = store("SRC", f"/{bucket}", options=tiny_batches).list_units()[0]
    sizes = [len(b) for b in store("SRC", f"/{bucket}", options=tiny_batches).export(unit)]
    assert sizes == [5, 5, 2]  # 3000 bytes a batch: batch_bytes (1000) does not cut them
    capped = store("SRC", f"/{bucket}", options=tiny_batches, memory_budget=1500)
    assert [len(b) for b in capped.export(unit)] == [3, 3, 3, 3]  # the budget still caps


def test_batches_of_all_units_share_one_pool_of_transfers_threads(pair, monkeypatch) -> None:
    src, _, bucket = pair
    for i in range(40):
        put(src, bucket, f"openim/data/hash/{i % 4}{i:03d}", b"x")
    options = StoreOptions(batch_records=4, unit_records=10)
    src = store("SRC", f"/{bucket}", options=options)
    dst = store("DST", options=options, transfers=3)
    threads: list[Any] = []
    original = transfer_module.copy_object

    def spy(*args: Any) -> bool:
        threads.append(threading.current_thread())  # kept alive: no identity is reused
        return original(*args)

    monkeypatch.setattr(transfer_module, "copy_object", spy)
    units = copy(src, dst)
    assert len(units) >= 4 and len(threads) == 40
    assert len(set(threads)) <= 3
    assert equal(src, dst, units)
    dst.close()
    assert all(not t.is_alive() for t in threads)


def test_objects_up_to_64_mib_are_one_put_whose_etag_verify_uses(pair) -> None:
    src, dst, bucket = pair
    obj = objects_data.FixtureObject("openim/video/v.mp4", 20 * MiB, "video/mp4", "single")
    src.client.put_object(bucket, obj.key, objects_data.PartReader(obj), obj.size,
                          content_type="video/mp4", part_size=64 * MiB)
    units = copy(src, dst)
    assert "-" not in src.client.stat_object(bucket, obj.key).etag
    assert "-" not in dst.client.stat_object(bucket, obj.key).etag
    gets = count_calls(dst, "get_object") + count_calls(src, "get_object")
    assert equal(src, dst, units) and gets == []  # each ETag is its object's MD5


def test_a_byte_changed_in_flight_of_a_copy_in_parts_is_named_by_verify(pair,
                                                                         monkeypatch) -> None:
    """A source in parts has no MD5 to check in flight; the target's ETag then differs
    from the source's, so nothing vouches for the source, and verify reads and names it."""
    src, dst, bucket = pair
    put(src, bucket, "flipped", os.urandom(11 * MiB), part_size=5 * MiB)
    real_read = transfer_module._BodyReader.read

    def flip(self: Any, size: int = -1) -> bytes:
        data = real_read(self, size)
        return bytes([data[0] ^ 1]) + data[1:] if data else data

    monkeypatch.setattr(transfer_module._BodyReader, "read", flip)
    units = copy(src, dst)
    monkeypatch.undo()
    assert dst.client.stat_object(bucket, "flipped").etag.endswith("-3")
    assert dst.client.stat_object(bucket, "flipped").etag != \
        src.client.stat_object(bucket, "flipped").etag
    assert compare(src, dst, units)["differ"] == {"flipped"}


@pytest.mark.parametrize("threshold", ["64MiB", "5MiB"], ids=["single PUT", "multipart"])
def test_a_byte_changed_in_flight_fails_the_copy_of_that_object(pair, monkeypatch,
                                                                 threshold) -> None:
    src, _, bucket = pair
    dst = store("DST", multipart_threshold=threshold, multipart_part_size="5MiB")
    put(src, bucket, "flipped", os.urandom(6 * MiB), part_size=8 * MiB)  # ETag: its MD5
    real_read = transfer_module._BodyReader.read

    def flip(self: Any, size: int = -1) -> bytes:
        data = real_read(self, size)
        return bytes([data[0] ^ 1]) + data[1:] if data else data

    monkeypatch.setattr(transfer_module._BodyReader, "read", flip)
    units = src.list_units()
    dst.prepare_target(units, src)
    with pytest.raises(TransientError, match="flipped"):
        dst.importer(units[0]).write_batch(next(src.export(units[0])))


def test_units_are_split_by_bytes_and_a_larger_object_is_a_unit_alone(pair) -> None:
    src, _, bucket = pair
    for i in range(9):
        put(src, bucket, f"openim/data/hash/{i}", os.urandom(300))
    put(src, bucket, "openim/data/hash/5x", os.urandom(5000))
    units = store("SRC", f"/{bucket}", unit_bytes=1000).list_units()
    assert all(u.bytes <= 1000 or u.records == 1 for u in units)
    assert [u.records for u in units if u.bytes > 1000] == [1]
    assert sum(u.records for u in units) == 10 and len(units) >= 4
    assert ObjectStore.uncovered(units) == []
