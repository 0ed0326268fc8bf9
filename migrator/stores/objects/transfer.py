"""Moving bytes: a source GET streamed into a target PUT, MD5-checked in flight, with a
memory budget shared by every copy of the store; and the existence check for the
cross-store reference test."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from migrator.errors import TransientError
from migrator.stores.base import Batch, Importer, Unit
from migrator.stores.objects.records import (
    MAX_PARTS,
    MD5_ETAG,
    MIN_PART,
    PARTS_ETAG,
    MiB,
    ObjectRecord,
    etag,
    split_headers,
)

if TYPE_CHECKING:
    from migrator.stores.objects.store import ObjectStore


class Budget:
    """Bytes of object data held in memory at once, shared by every copy of a store."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def take(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.limit)  # an oversized object waits until it runs alone
        with self._cond:
            self._cond.wait_for(lambda: self.used + nbytes <= self.limit)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


class _BodyReader:
    """Passes a GET body to put_object as stored (urllib3 would gunzip a body stored with
    ``Content-Encoding: gzip``)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size, decode_content=False)
        return data


class _HashingReader(_BodyReader):
    """Passes a body through to put_object while computing its MD5."""

    def __init__(self, raw: Any) -> None:
        super().__init__(raw)
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.md5.update(data)
        return data


def part_size(store: ObjectStore, size: int) -> int:
    needed = -(-size // MAX_PARTS)
    return max(store.part_size, -(-needed // MiB) * MiB)


def source_parts(store: ObjectStore, rec: ObjectRecord) -> int | None:
    """The part size of the source's multipart upload of ``rec``, when uploading in parts
    of that size gives the target the same ETag: the ETag names N parts and a HEAD of part
    1 gives a size that cuts the object into N (every part but the last the same size, as
    every S3 client uploads). None otherwise, or when ETags are not MD5-based."""
    source = rec.origin()
    found = PARTS_ETAG.fullmatch(rec.etag)
    if found is None or not (store.etag_is_md5 and source.etag_is_md5):
        return None
    parts = int(found.group(1))
    size = source.first_part_size(source.here_bucket(rec.bucket), rec.key, rec.etag)
    if size is None or size < MIN_PART or not 1 < parts <= MAX_PARTS \
            or -(-rec.size // size) != parts:
        return None
    return size


def copy_object(store: ObjectStore, rec: ObjectRecord, bucket: str, key: str) -> bool:
    """Stream one object from its source into ``bucket/key`` of ``store``; False if it
    vanished. A corrupted transfer fails here rather than at verify time: the target's MD5
    ETag of a single PUT must equal the source's, and a multipart copy is MD5-checked in
    flight against the source's ETag (the payload itself is checked by the server: SigV4
    SHA-256 over http, Content-MD5 over https).

    A multipart source is copied in its own parts (``source_parts``): both servers then
    compute the same ETag from the parts they hold, which proves the two objects equal
    without verify reading either, and memory holds a few parts, not whole objects."""
    same = source_parts(store, rec)
    multipart = same is not None or rec.size > store.threshold
    part = same or part_size(store, rec.size)
    with store.budget.take(part * (store.parallel_parts + 1) if multipart else rec.size):
        resp = rec.open()
        if resp is None:
            return False
        try:
            return _put_stream(store, rec, resp, bucket, key, part if multipart else 0)
        finally:
            resp.close()
            resp.release_conn()


def _put_stream(store: ObjectStore, rec: ObjectRecord, resp: Any, bucket: str,
                key: str, part: int) -> bool:
    """``part`` > 0: upload in parts of that size (one PUT if the body is no larger)."""
    length = int(resp.headers.get("Content-Length", rec.size))
    content_type, metadata, headers = split_headers(resp.headers)
    multipart = 0 < part < length
    # A single PUT's ETag is the target's own MD5 of what it stored (with etag_is_md5), so
    # hashing in flight would repeat it; a multipart ETag is not, and verify needs the MD5.
    reader = _HashingReader(resp) if multipart or not store.etag_is_md5 else _BodyReader(resp)
    meta: dict[str, Any] = {f"x-amz-meta-{k}": v for k, v in metadata.items()}
    meta.update(headers)
    with store._errors(f"put {bucket}/{key}"):
        result = store.client.put_object(
            bucket, key, cast(BinaryIO, reader),  # put_object only calls read()
            length, content_type=content_type or "binary/octet-stream",
            metadata=meta, part_size=part if multipart else max(MIN_PART, length),
            num_parallel_uploads=store.parallel_parts)
    stored = etag(result.etag).lower()
    src_etag = etag(resp.headers.get("ETag")).lower()
    sse = any(h.lower().startswith("x-amz-server-side-encryption") for h in resp.headers)
    source = rec.origin()
    src_md5 = src_etag if (source.etag_is_md5 and not sse
                           and MD5_ETAG.fullmatch(src_etag)) else None
    if not isinstance(reader, _HashingReader):
        if src_md5 and MD5_ETAG.fullmatch(stored) and stored != src_md5:
            raise TransientError(f"{store.endpoint.label}: put {bucket}/{key}: stored ETag "
                                 f"{stored} is not the source's ({src_md5})")
        return True
    md5 = reader.md5.hexdigest()
    if src_md5 and src_md5 != md5:
        raise TransientError(f"{source.endpoint.label}: get {rec.bucket}/{rec.key}: "
                             f"read bytes with MD5 {md5}, ETag says {src_etag}")
    if store.etag_is_md5 and MD5_ETAG.fullmatch(stored) and stored != md5:
        raise TransientError(f"{store.endpoint.label}: put {bucket}/{key}: stored ETag "
                             f"{stored} does not match the bytes sent ({md5})")
    if multipart:
        # The server checked every part's payload hash, so this MD5 is the stored
        # content's: spare the verify a re-read.
        there = store.stat(bucket, key)
        if there is not None and there.etag.lower() == stored:
            store.hash_cache[store.cache_key(bucket, there)] = md5
            if stored == src_etag == rec.etag.lower() and not sse \
                    and PARTS_ETAG.fullmatch(stored):
                # Each server made this ETag from the MD5s of the parts it holds: the
                # source's listed version holds these same bytes.
                source.hash_cache[source.cache_key(source.here_bucket(rec.bucket), rec)] = md5
    return True


class ObjectImporter(Importer):
    """Copies a batch's objects through the store's shared transfer pool; the batch returns
    only when all are stored. Never deletes or clears anything, resumed or not."""

    def __init__(self, store: ObjectStore, unit: Unit) -> None:
        self.store, self.unit = store, unit
        self.bucket = store.here_bucket(unit.spec["bucket"])
        self._check_replay = False

    def prepare(self, resumed: bool) -> None:
        self._check_replay = resumed

    def write_batch(self, batch: Batch) -> None:
        store, unit = self.store, self.unit
        todo = [(rec, store.here_key(unit, rec.key)) for rec in batch.records]
        if self._check_replay:  # the batch after a checkpoint may be stored already
            todo = [(rec, key) for (rec, key), stored in zip(
                todo, store.map_checks(lambda item: self._stored(*item), todo), strict=True)
                if not stored]
        self._check_replay = False
        futures = [(rec, store.copy_pool().submit(copy_object, store, rec, self.bucket, key))
                   for rec, key in todo]
        try:
            for rec, future in futures:
                if not future.result():
                    batch.skipped.append(f"{rec.bucket}/{rec.key} (deleted on the source)")
        except BaseException:
            for _, future in futures:  # the retry must not race copies still running
                future.cancel()
            wait([f for _, f in futures])
            raise

    def _stored(self, rec: ObjectRecord, key: str) -> bool:
        """The target holds this very version: same size and ETag, and the same type,
        metadata and headers (a HEAD of each side; a listing's metadata may be partial)."""
        there = self.store.stat(self.bucket, key)
        if there is None or (there.size, there.etag) != (rec.size, rec.etag):
            return False
        here = rec.origin().stat(rec.origin().here_bucket(rec.bucket), rec.key)
        return here is not None and (here.size, here.etag, here.content_type, here.metadata,
                                     here.headers) == (there.size, there.etag,
                                                       there.content_type, there.metadata,
                                                       there.headers)


def missing_objects(object_store: ObjectStore, keys: Iterable[str],
                    workers: int = 16) -> list[str]:
    """Which ``bucket/key`` names (e.g. from OpenIM's MongoDB ``s3`` collection) are absent.

    Streams: at most a window of HEAD requests in flight; duplicates (OpenIM points many
    names at one content key) are checked once per recent window.
    """
    missing: dict[str, None] = {}
    seen: dict[str, None] = {}
    window: deque[tuple[str, Future[ObjectRecord | None]]] = deque()

    def drain(limit: int) -> None:
        while len(window) > limit:
            name, future = window.popleft()
            if future.result() is None:
                missing[name] = None

    with ThreadPoolExecutor(workers, thread_name_prefix="oim-s3-exists") as pool:
        for name in keys:
            if name in seen:
                continue
            seen[name] = None
            if len(seen) > 100_000:
                seen.pop(next(iter(seen)))
            bucket, _, key = name.partition("/")
            here = object_store.here_bucket(bucket)
            window.append((name, pool.submit(object_store.stat, here, key)))
            drain(4 * workers)
        drain(0)
    return list(missing)
