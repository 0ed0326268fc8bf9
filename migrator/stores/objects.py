"""Object storage store: any S3-compatible service (MinIO, AWS S3, OSS, COS).

Only the S3 API of the ``minio`` client is used, so nothing here depends on MinIO itself.

* Units are contiguous key ranges of a bucket. A bucket above ``unit_records`` objects is
  split at leading characters after a common prefix (OpenIM's ``openim/data/hash/<md5>``
  splits by hex digit), found in one streaming pass over the sorted listing. A range is
  ``start`` (inclusive) to ``end`` (exclusive), so units never overlap and a key created
  between two split prefixes still belongs to exactly one unit.
* Batches hold object descriptors, never bodies. Each record carries a reference to the
  source store; the importer streams the body from it straight into ``put_object``, with
  a memory budget shared by all copies of the store.
* Verification compares size, a content MD5, content type, user metadata and the standard
  headers we copy. A single-part ETag *is* the MD5; for a multipart ETag the MD5 is
  streamed once and kept in ``hash_cache`` (keyed by the object's version), so both sides
  always yield comparable fingerprints whatever part sizes each side used.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from fnmatch import fnmatchcase
from itertools import pairwise
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from migrator.errors import MigrateError, PlanError, StoreError, TransientError
from migrator.stores.base import (
    Batch,
    Capabilities,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    Role,
    Store,
    Unit,
    record_hash,
)

MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's smallest multipart part
MAX_PARTS = 10_000
COPIED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language")
_MD5_ETAG = re.compile(r"[0-9a-fA-F]{32}")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
               "ExpiredToken", "AllAccessDisabled", "AccountProblem", "InvalidSecurity"}
GONE = "(deleted during verify)"
CHANGED = "(changed during verify)"
_POLICY_LISTS = ("Action", "NotAction", "Resource", "NotResource", "AWS")
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "OperationAborted", "XMinioServerNotInitialized", "Throttling"}


class CacheKey(NamedTuple):
    """One version of one object; any change to it gives a different key."""

    endpoint: str
    bucket: str
    key: str
    etag: str
    size: int
    last_modified: int


class HashCache(dict[CacheKey, str]):
    """Streamed content MD5s, so a second verify does not re-read unchanged objects.

    A plain dict on purpose (its single operations are atomic under the GIL): the engine
    can swap in any mapping with ``get`` and ``__setitem__``, e.g. one backed by its journal.
    """


class _Budget:
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


@dataclass(frozen=True)
class ObjectRecord:
    """One object as listed: what a batch carries instead of the bytes.

    ``metadata``/``headers`` are None when the listing did not include them (plain S3);
    ``source`` is the store the importer streams the body from.
    """

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: int = 0  # seconds since the epoch
    content_type: str | None = None
    metadata: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    source: ObjectStore | None = field(default=None, compare=False, repr=False)

    def open(self) -> Any:
        """The body as a readable HTTP response (close and release it), or None if gone."""
        if self.source is None:
            raise StoreError(f"object {self.bucket}/{self.key}: record has no source")
        return self.source.open_object(self.bucket, self.key)


@dataclass
class _Part:
    first: str
    last: str
    count: int
    nbytes: int


class _Node:
    """An inner node of the compressed key trie while the sorted listing streams by."""

    __slots__ = ("depth", "parts", "count", "nbytes")

    def __init__(self, depth: int) -> None:
        self.depth, self.parts, self.count, self.nbytes = depth, [], 0, 0

    def add(self, part: _Part, limit: int) -> None:
        self.count += part.count
        self.nbytes += part.nbytes
        last = self.parts[-1] if self.parts else None
        if last is not None and last.count + part.count <= limit:
            self.parts[-1] = _Part(last.first, part.last, last.count + part.count,
                                   last.nbytes + part.nbytes)
        else:
            self.parts.append(part)

    def finish(self, limit: int) -> list[_Part]:
        if self.count <= limit:
            return [_Part(self.parts[0].first, self.parts[-1].last, self.count, self.nbytes)]
        return self.parts


def _lcp(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search: slice compares run in C
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def separator(last: str, first: str) -> str:
    """The shortest string s with last < s <= first: a readable range boundary."""
    return first[:_lcp(last, first) + 1]


def split_ranges(entries: Iterable[tuple[str, int]], limit: int) -> list[_Part]:
    """Cut sorted (key, size) pairs into runs of <= limit keys at prefix boundaries.

    One pass, memory O(key length + runs): in sorted order every prefix's keys are
    contiguous, so a prefix is complete (and its count known) as soon as the listing
    leaves it. Subtrees that fit stay whole; neighbours that fit together are merged.
    """
    stack = [_Node(0)]
    prev: str | None = None
    prev_size = 0

    def close_to(depth: int) -> None:
        while stack[-1].depth > depth:
            parts = stack.pop().finish(limit)
            if stack[-1].depth < depth:
                stack.append(_Node(depth))
            for part in parts:
                stack[-1].add(part, limit)

    for key, size in entries:
        if prev is not None:
            right = _lcp(prev, key)
            if right > stack[-1].depth:
                stack.append(_Node(right))
            stack[-1].add(_Part(prev, prev, 1, prev_size), limit)
            close_to(right)
        prev, prev_size = key, size
    if prev is not None:
        stack[-1].add(_Part(prev, prev, 1, prev_size), limit)
        close_to(0)
    return stack[0].parts


def parse_size(value: Any, where: str) -> int:
    """``16777216``, ``"16MiB"`` or ``"64M"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise PlanError(where, f"not a size: {value!r}", hint="write e.g. 16MiB")
    return int(match.group(1)) << (10 * " kmgt".index((match.group(2) or " ").lower()))


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _epoch(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        value = parsedate_to_datetime(value)
    return int(value.timestamp())


def _split_headers(raw: Mapping[str, str]) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(content type, user metadata, copied standard headers) with names lowercased."""
    content_type, metadata, headers = None, {}, {}
    for name, value in raw.items():
        low = name.lower()
        if low == "content-type":
            content_type = value
        elif low.startswith("x-amz-meta-"):
            metadata[low[len("x-amz-meta-"):]] = value
        elif low in COPIED_HEADERS:
            headers[low] = value
    return content_type, metadata, headers


def _normalise_policy(text: str, bucket_from: str, bucket_to: str) -> Any:
    """A policy as comparable data: lists sorted, single strings listed, bucket renamed."""
    arn = f"arn:aws:s3:::{bucket_from}"

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk([v] if k in _POLICY_LISTS and isinstance(v, str) else v)
                    for k, v in value.items() if not (k == "Sid" and v == "")}
        if isinstance(value, list):
            return sorted((walk(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(value, str) and (value == arn or value.startswith(arn + "/")):
            return f"arn:aws:s3:::{bucket_to}" + value[len(arn):]
        return value

    data = json.loads(text)
    for statement in data.get("Statement") or []:
        if statement.get("Principal") == "*":
            statement["Principal"] = {"AWS": ["*"]}
    return walk(data)


class ObjectStore(Store):
    kind = "objects"
    capabilities = Capabilities(resumable_units=True,
                                wire_format="object byte streams + S3 metadata")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts, name = self.endpoint.options, self.endpoint.name or "objects"
        parts = urlsplit(self.endpoint.url)
        path = unquote(parts.path.lstrip("/"))
        self.bucket, _, self.prefix = path.partition("/")
        self.bucket = self.bucket or None
        self.secure = parts.scheme == "https" or self.endpoint.tls.enabled
        port = f":{parts.port}" if parts.port else ""
        self.endpoint_id = f"{'https' if self.secure else 'http'}://{parts.hostname}{port}"
        self.bucket_map: dict[str, str] = dict(opts.get("bucket_map") or {})
        self.threshold = parse_size(opts.get("multipart_threshold", 16 * MiB),
                                    f"{name}.multipart_threshold")
        self.part_size = max(MIN_PART, parse_size(opts.get("multipart_part_size", self.threshold),
                                                  f"{name}.multipart_part_size"))
        self.parallel_parts = int(opts.get("parallel_parts", 4))
        self.transfers = int(opts.get("transfers", 8))
        self.checkers = int(opts.get("checkers", 8))
        self.etag_is_md5 = bool(opts.get("etag_is_md5", True))
        # Selection option, so both sides agree: copy and compare bucket policies.
        self.with_policy = bool(self.selection.options.get("bucket_policy", True))
        self.hash_cache: Any = HashCache()
        self._budget = _Budget(parse_size(opts.get("memory_budget", 256 * MiB),
                                          f"{name}.memory_budget"))
        self._client: Minio | None = None
        self._http: urllib3.PoolManager | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_client", "_http", "_lock", "_budget"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fresh = ObjectStore(state["endpoint"], state["selection"], state["options"])
        self.__dict__.update(fresh.__dict__)
        self.__dict__.update(state)

    @property
    def client(self) -> Minio:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Minio:
        conn, tls = self.endpoint.connection(), self.endpoint.tls
        access = self.endpoint.resolved("access_key") or conn.username
        secret = self.endpoint.resolved("secret_key") or conn.password
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=15, read=300),
            maxsize=max(16, self.transfers * (self.parallel_parts + 1)),
            cert_reqs="CERT_REQUIRED" if tls.verify else "CERT_NONE",
            ca_certs=tls.ca_file or certifi.where(), cert_file=tls.cert_file,
            key_file=tls.key_file,
            # A blip inside one request is retried here; a dead endpoint fails fast
            # (connect=1) so the engine's retry policy decides about waiting.
            retries=urllib3.Retry(total=3, connect=1, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]))
        host = f"{conn.host}:{conn.port}" if conn.port else conn.host
        return Minio(host, access_key=access, secret_key=secret,
                     session_token=self.endpoint.resolved("session_token"), secure=self.secure,
                     region=self.endpoint.options.get("region"), http_client=self._http)

    def use_cache(self, cache: MutableMapping[Any, str]) -> None:
        self.hash_cache = cache

    def open(self) -> None:
        with self._errors("connect"):
            self.client  # noqa: B018 - builds the client; no network until first use

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.clear()
            self._client = self._http = None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate driver exceptions once, here, into the project's errors."""
        try:
            yield
        except MigrateError:
            raise
        except S3Error as exc:
            problem = f"{what}: {exc.code}: {exc.message}"
            if exc.code in _AUTH_CODES:
                raise self.endpoint.fail(problem, hint="check the access key, secret key and "
                                         "the user's policy") from exc
            if exc.code in _TRANSIENT_CODES:
                raise TransientError(f"{self.endpoint.label}: {problem}") from exc
            if exc.code == "NoSuchBucket":
                raise self.endpoint.fail(problem) from exc
            raise StoreError(f"{self.endpoint.label}: {problem}") from exc
        except (ServerError, InvalidResponseError) as exc:
            raise TransientError(f"{self.endpoint.label}: {what}: {exc}") from exc
        except MinioException as exc:
            raise StoreError(f"{self.endpoint.label}: {what}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, urllib3.exceptions.SSLError):
                raise self.endpoint.fail(f"{what}: TLS failure: {reason}",
                                         hint="check tls.ca_file / tls.verify") from exc
            raise self.endpoint.fail(f"{what}: unreachable ({type(reason).__name__})",
                                     transient=True) from exc
        except ValueError as exc:  # minio rejects invalid bucket/object names this way
            raise StoreError(f"{self.endpoint.label}: {what}: {exc}") from exc
        except OSError as exc:
            raise TransientError(f"{self.endpoint.label}: {what}: {exc}") from exc

    # -- naming: units speak the source's names; each side maps them to its own -------
    def here_bucket(self, bucket: str) -> str:
        return self.bucket or self.bucket_map.get(bucket, bucket)

    def _here_key(self, unit: Unit, key: str | None) -> str | None:
        return None if key is None else self.prefix + key[len(unit.spec["prefix"]):]

    def _unit_key(self, unit: Unit, key: str) -> str:
        return unit.spec["prefix"] + key[len(self.prefix):]

    def _selected(self, bucket: str, key: str) -> bool:
        name = f"{bucket}/{key}"
        sel = self.selection
        if sel.include and not any(fnmatchcase(name, p) for p in sel.include):
            return False
        return not any(fnmatchcase(name, p) for p in sel.exclude)

    def _bucket_selected(self, bucket: str) -> bool:
        def may_match(pattern: str) -> bool:
            head = pattern.split("/", 1)[0]
            return "*" in head or fnmatchcase(bucket, head)
        sel = self.selection
        if sel.include and not any(may_match(p) for p in sel.include):
            return False
        return not any(p in (bucket, f"{bucket}/*") for p in sel.exclude)

    # -- listing -----------------------------------------------------------------------
    def _record(self, bucket: str, obj: Any) -> ObjectRecord:
        raw = obj.metadata
        content_type, metadata, headers = _split_headers(raw) if raw else (None, None, None)
        if content_type is None:  # incomplete (plain S3 listing): fingerprint will HEAD
            metadata = headers = None
        return ObjectRecord(bucket, obj.object_name, int(obj.size or 0), _etag(obj.etag),
                            _epoch(obj.last_modified), content_type, metadata, headers)

    def stat(self, bucket: str, key: str) -> ObjectRecord | None:
        """HEAD one object; None when it does not exist."""
        try:
            with self._errors(f"head {bucket}/{key}"):
                return self._record(bucket, self.client.stat_object(bucket, key))
        except StoreError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code in (
                    "NoSuchKey", "NoSuchObject"):
                return None
            raise

    def list_range(self, bucket: str, start: str | None, end: str | None,
                   after: str | None = None, metadata: bool = True) -> Iterator[ObjectRecord]:
        """Objects under this endpoint's prefix with start <= key < end, in key order.

        S3's start-after is exclusive, so the key equal to ``start`` is fetched by HEAD.
        """
        if after is None and start:
            first = self.stat(bucket, start)
            if first is not None and first.key.startswith(self.prefix):
                yield first
        after = after or start or None
        with self._errors(f"list {bucket}"):
            for obj in self.client.list_objects(bucket, prefix=self.prefix or None,
                                                recursive=True, start_after=after,
                                                include_user_meta=metadata):
                if end is not None and obj.object_name >= end:
                    return
                yield self._record(bucket, obj)

    def _unit_objects(self, unit: Unit, start: str | None, end: str | None,
                      after: str | None = None, metadata: bool = True
                      ) -> Iterator[ObjectRecord]:
        """The selected objects of a unit's range on this side, keys in unit (source) names."""
        bucket = unit.spec["bucket"]
        here = self.here_bucket(bucket)
        for rec in self.list_range(here, self._here_key(unit, start), self._here_key(unit, end),
                                   self._here_key(unit, after), metadata):
            key = self._unit_key(unit, rec.key)
            if self._selected(bucket, key):
                yield replace(rec, key=key)

    def buckets(self) -> list[str]:
        if self.bucket:
            with self._errors(f"bucket {self.bucket}"):
                if not self.client.bucket_exists(self.bucket):
                    raise self.endpoint.fail(f"bucket {self.bucket} does not exist")
            return [self.bucket]
        with self._errors("list buckets"):
            return sorted(b.name for b in self.client.list_buckets()
                          if self._bucket_selected(b.name))

    # -- access --------------------------------------------------------------------------
    def check_access(self, role: Role) -> None:
        if role is Role.SOURCE:
            for bucket in self.buckets():
                first = next(self.list_range(bucket, None, None, metadata=False), None)
                if first is not None:
                    self.stat(bucket, first.key)
                if self.with_policy:
                    self.bucket_policy(bucket)
            return
        if self.bucket:
            with self._errors(f"bucket {self.bucket}"):
                exists = self.client.bucket_exists(self.bucket)
            if exists:
                self._probe_put(self.bucket)
                return
        # Prove bucket creation with the bucket the run will create (rights may be granted
        # for that name only), or a throw-away one; either is removed again.
        probe = self.bucket or f"oim-migrate-probe-{uuid.uuid4().hex[:12]}"
        with self._errors(f"create probe bucket {probe}"):
            self.client.make_bucket(probe, location=self.endpoint.options.get("region"))
        try:
            self._probe_put(probe)
        finally:
            with self._errors(f"remove probe bucket {probe}"):
                self.client.remove_bucket(probe)

    def _probe_put(self, bucket: str) -> None:
        key = f"{self.prefix}.oim-migrate-probe-{uuid.uuid4().hex}"
        with self._errors(f"write probe {bucket}/{key}"):
            self.client.put_object(bucket, key, io.BytesIO(b"probe"), 5)
            self.client.remove_object(bucket, key)

    def describe(self) -> dict[str, Any]:
        return {"consistency": "object storage has no snapshot; objects written during the "
                "copy are found by re-listing (catch-up) and by verify",
                "multipart_threshold": self.threshold, "part_size": self.part_size}

    # -- source side -------------------------------------------------------------------
    def list_units(self) -> list[Unit]:
        units = []
        for bucket in self.buckets():
            listing = ((r.key, r.size) for r in self.list_range(bucket, None, None, metadata=False)
                       if self._selected(bucket, r.key))
            parts = split_ranges(listing, self.options.unit_records)
            spec = {"bucket": bucket, "prefix": self.prefix}
            if len(parts) <= 1:
                count, nbytes = (parts[0].count, parts[0].nbytes) if parts else (0, 0)
                units.append(Unit(self.kind, f"{bucket}/{self.prefix}*",
                                  dict(spec, start=None, end=None), count, nbytes))
                continue
            bounds = [None, *(separator(a.last, b.first) for a, b in pairwise(parts)), None]
            for i, part in enumerate(parts):
                start, end = bounds[i], bounds[i + 1]
                units.append(Unit(self.kind, f"{bucket}/[{start or ''}..{end or ''})",
                                  dict(spec, start=start, end=end), part.count, part.nbytes))
        return units

    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]:
        records: list[ObjectRecord] = []
        nbytes = 0
        for rec in self._unit_objects(unit, unit.spec.get("start"), unit.spec.get("end"),
                                      resume_from):
            records.append(replace(rec, bucket=unit.spec["bucket"], source=self))
            nbytes += rec.size
            if len(records) >= self.options.batch_records or nbytes >= self.options.batch_bytes:
                yield Batch(records, records[-1].key, nbytes)
                records, nbytes = [], 0
        if records:
            yield Batch(records, records[-1].key, nbytes)

    def open_object(self, bucket: str, key: str, mapped: bool = False,
                    etag: str | None = None) -> Any:
        """A streaming GET of one object (of that ETag only, if given); None if it is gone.

        Read it with ``decode_content=False``: urllib3 would otherwise gunzip objects
        stored with ``Content-Encoding: gzip`` and we would copy different bytes.
        """
        here = bucket if mapped else self.here_bucket(bucket)
        headers = {"If-Match": f'"{etag}"'} if etag else None
        try:
            with self._errors(f"get {here}/{key}"):
                return self.client.get_object(here, key, request_headers=headers)
        except StoreError as exc:
            code = getattr(exc.__cause__, "code", None)
            if code == "NoSuchKey" or (etag and code == "PreconditionFailed"):
                return None
            raise

    def bucket_policy(self, bucket: str) -> str | None:
        """The bucket's policy JSON as stored, None when it has none."""
        try:
            with self._errors(f"read bucket policy of {bucket}"):
                return self.client.get_bucket_policy(bucket)
        except StoreError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "NoSuchBucketPolicy":
                return None
            raise
        except MigrateError as exc:
            if "AccessDenied" in str(exc):
                exc.hint = ("grant s3:GetBucketPolicy, or set bucket_policy: false in the "
                            "objects selection options to leave policies out")
            raise

    # -- target side -------------------------------------------------------------------
    def existing(self, units: list[Unit]) -> list[str]:
        names = []
        for unit in units:
            with self._errors(f"bucket {self.here_bucket(unit.spec['bucket'])}"):
                if not self.client.bucket_exists(self.here_bucket(unit.spec["bucket"])):
                    continue
            if next(self._unit_objects(unit, unit.spec.get("start"), unit.spec.get("end"),
                                       metadata=False), None) is not None:
                names.append(unit.name)
        return names

    def prepare_target(self, units: list[Unit], source: Store) -> None:
        buckets = sorted({u.spec["bucket"] for u in units})
        if self.bucket and len(buckets) > 1:
            raise PlanError(f"{self.endpoint.name or 'target'}.url",
                            f"names one bucket but the source has {len(buckets)}",
                            hint="drop the bucket from the target URL, or use bucket_map")
        read_policy = getattr(source, "bucket_policy", None)
        if read_policy is None:
            raise StoreError(f"{self.endpoint.label}: the source is not an object store")
        for bucket in buckets:
            here = self.here_bucket(bucket)
            with self._errors(f"create bucket {here}"):
                if not self.client.bucket_exists(here):
                    self.client.make_bucket(here, location=self.endpoint.options.get("region"))
            if not self.with_policy:
                continue
            policy = read_policy(bucket)
            with self._errors(f"set bucket policy of {here}"):
                if policy is None:
                    if self.bucket_policy(here) is not None:
                        self.client.delete_bucket_policy(here)
                else:
                    self.client.set_bucket_policy(here, json.dumps(
                        _normalise_policy(policy, bucket, here)))

    def importer(self, unit: Unit) -> Importer:
        return ObjectImporter(self, unit)

    def _part_size(self, size: int) -> int:
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // MiB) * MiB)

    def copy_object(self, rec: ObjectRecord, bucket: str, key: str) -> bool:
        """Stream one object from its source into ``bucket/key`` here; False if it vanished.

        The MD5 of the streamed bytes is checked against both ETags where they are MD5
        based, so a corrupted transfer fails here rather than at verify time.
        """
        multipart = rec.size > self.threshold
        with self._budget.take(self._part_size(rec.size) * (self.parallel_parts + 1)
                               if multipart else rec.size):
            resp = rec.open()
            if resp is None:
                return False
            try:
                return self._put_stream(rec, resp, bucket, key)
            finally:
                resp.close()
                resp.release_conn()

    def _put_stream(self, rec: ObjectRecord, resp: Any, bucket: str, key: str) -> bool:
        length = int(resp.headers.get("Content-Length", rec.size))
        content_type, metadata, headers = _split_headers(resp.headers)
        multipart = length > self.threshold
        reader = _HashingReader(resp)
        meta: dict[str, Any] = {f"x-amz-meta-{k}": v for k, v in metadata.items()}
        meta.update(headers)
        with self._errors(f"put {bucket}/{key}"):
            result = self.client.put_object(
                bucket, key, reader, length, content_type=content_type or "binary/octet-stream",
                metadata=meta, part_size=self._part_size(length) if multipart else
                max(MIN_PART, length), num_parallel_uploads=self.parallel_parts)
        md5, stored = reader.md5.hexdigest(), _etag(result.etag).lower()
        src_etag = _etag(resp.headers.get("ETag")).lower()
        sse = any(h.lower().startswith("x-amz-server-side-encryption") for h in resp.headers)
        if rec.source.etag_is_md5 and not sse and _MD5_ETAG.fullmatch(src_etag) \
                and src_etag != md5:
            raise TransientError(f"{rec.source.endpoint.label}: get {rec.bucket}/{rec.key}: "
                                 f"read bytes with MD5 {md5}, ETag says {src_etag}")
        if self.etag_is_md5 and _MD5_ETAG.fullmatch(stored) and stored != md5:
            raise TransientError(f"{self.endpoint.label}: put {bucket}/{key}: stored ETag "
                                 f"{stored} does not match the bytes sent ({md5})")
        if multipart:
            # The server checked every part's payload hash (SigV4 SHA-256, or Content-MD5
            # over TLS), so this MD5 is the stored content's: spare the verify a re-read.
            there = self.stat(bucket, key)
            if there is not None and there.etag.lower() == stored:
                self.hash_cache[self._cache_key(bucket, there)] = md5
        return True

    # -- verification ------------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        start, end = unit.spec.get("start"), unit.spec.get("end")
        if unit.records <= self.options.chunk_records // 2:  # surely one chunk: no listing
            return [Chunk("0", {"start": start, "end": end})]
        bounds: list[str | None] = [start]
        count, last = 0, None
        for rec in self._unit_objects(unit, start, end, metadata=False):
            if count == self.options.chunk_records:
                bounds.append(separator(last, rec.key))
                count = 0
            count, last = count + 1, rec.key
        bounds.append(end)
        return [Chunk(str(i), {"start": bounds[i], "end": bounds[i + 1]})
                for i in range(len(bounds) - 1)]

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        digests = {c.id: ChunkDigest() for c in chunks}
        starts = [c.bounds["start"] or "" for c in chunks]
        objects = self._unit_objects(unit, unit.spec.get("start"), unit.spec.get("end"))
        for key, fp in self._fingerprints(unit, objects):
            chunk = chunks[max(0, bisect_right(starts, key) - 1)]
            digests[chunk.id].add(self.fingerprint_hash(key, fp))
        return digests

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        objects = self._unit_objects(unit, chunk.bounds["start"], chunk.bounds["end"])
        yield from self._fingerprints(unit, objects)

    @staticmethod
    def fingerprint_hash(key: str, fp: dict[str, Any]) -> int:
        return record_hash(key.encode(), str(fp["size"]).encode(), fp["md5"].encode(),
                           (fp["content_type"] or "").encode(),
                           json.dumps(fp["metadata"], sort_keys=True).encode(),
                           json.dumps(fp["headers"], sort_keys=True).encode())

    def schema(self, unit: Unit) -> dict[str, Any]:
        if not self.with_policy:
            return {}
        bucket = unit.spec["bucket"]
        policy = self.bucket_policy(self.here_bucket(bucket))
        return {"bucket_policy": None if policy is None else
                _normalise_policy(policy, self.here_bucket(bucket), bucket)}

    def _cache_key(self, bucket: str, rec: ObjectRecord) -> CacheKey:
        return CacheKey(self.endpoint_id, bucket, rec.key, rec.etag, rec.size, rec.last_modified)

    def _fingerprints(self, unit: Unit, objects: Iterable[ObjectRecord]
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, fingerprint) in key order; HEADs and streamed hashes run in a thread pool."""
        here = self.here_bucket(unit.spec["bucket"])
        window: deque[tuple[str, Future[dict[str, Any]] | dict[str, Any]]] = deque()
        with ThreadPoolExecutor(self.checkers, thread_name_prefix="oim-s3-check") as pool:
            for rec in objects:
                if rec.metadata is None or self._known_md5(here, unit, rec) is None:
                    window.append((rec.key, pool.submit(self._fingerprint, unit, here, rec)))
                else:
                    window.append((rec.key, self._fingerprint(unit, here, rec)))
                while len(window) > 4 * self.checkers:
                    key, fp = window.popleft()
                    yield key, fp.result() if isinstance(fp, Future) else fp
            while window:
                key, fp = window.popleft()
                yield key, fp.result() if isinstance(fp, Future) else fp

    def _known_md5(self, here: str, unit: Unit, rec: ObjectRecord) -> str | None:
        """The content MD5 without reading the body: a single-part ETag, or the cache."""
        if self.etag_is_md5 and _MD5_ETAG.fullmatch(rec.etag):
            return rec.etag.lower()
        here_rec = replace(rec, key=self._here_key(unit, rec.key) or "")
        return self.hash_cache.get(self._cache_key(here, here_rec))

    def _fingerprint(self, unit: Unit, here: str, rec: ObjectRecord) -> dict[str, Any]:
        here_key = self._here_key(unit, rec.key) or ""
        if rec.metadata is None:
            stat = self.stat(here, here_key)
            if stat is None:  # deleted since the listing
                return {"size": rec.size, "md5": GONE, "content_type": None, "metadata": {},
                        "headers": {}}
            rec = replace(stat, key=rec.key)
        md5 = self._known_md5(here, unit, rec)
        if md5 is None:
            md5 = self._stream_md5(here, here_key, rec.etag)
            if md5 != CHANGED:
                self.hash_cache[self._cache_key(here, replace(rec, key=here_key))] = md5
        return {"size": rec.size, "md5": md5, "content_type": rec.content_type,
                "metadata": dict(sorted((rec.metadata or {}).items())),
                "headers": dict(sorted((rec.headers or {}).items()))}

    def _stream_md5(self, bucket: str, key: str, etag: str) -> str:
        """MD5 of the listed version's bytes (If-Match), so the cache never mixes versions."""
        md5 = hashlib.md5(usedforsecurity=False)
        resp = self.open_object(bucket, key, mapped=True, etag=etag)
        if resp is None:
            return CHANGED
        with self._errors(f"read {bucket}/{key}"):
            try:
                for block in resp.stream(MiB, decode_content=False):
                    md5.update(block)
            finally:
                resp.close()
                resp.release_conn()
        return md5.hexdigest()


class _HashingReader:
    """Passes a body through to put_object while computing its MD5."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.md5 = raw, hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size, decode_content=False)
        self.md5.update(data)
        return data


class ObjectImporter(Importer):
    """Copies a batch's objects in parallel; the batch returns only when all are stored."""

    def __init__(self, store: ObjectStore, unit: Unit) -> None:
        self.store, self.unit = store, unit
        self.bucket = store.here_bucket(unit.spec["bucket"])
        self._check_replay = False

    def prepare(self, resumed: bool) -> None:
        self._check_replay = resumed

    def write_batch(self, batch: Batch) -> None:
        store, unit = self.store, self.unit
        todo = []
        for rec in batch.records:
            key = store._here_key(unit, rec.key) or ""
            if self._check_replay:  # the batch after a checkpoint may be stored already
                there = store.stat(self.bucket, key)
                if there is not None and (there.size, there.etag) == (rec.size, rec.etag):
                    continue
            todo.append((rec, key))
        self._check_replay = False
        with ThreadPoolExecutor(store.transfers, thread_name_prefix="oim-s3-copy") as pool:
            futures = [(rec, pool.submit(store.copy_object, rec, self.bucket, key))
                       for rec, key in todo]
            for rec, future in futures:
                if not future.result():
                    batch.skipped.append(f"{rec.bucket}/{rec.key} (deleted on the source)")


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
