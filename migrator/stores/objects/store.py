"""The object storage store: listing, units, access checks, naming and verification.

See ``migrator/stores/objects/__init__.py`` for the design in words.
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
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from fnmatch import fnmatchcase
from itertools import pairwise
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from migrator.config import Endpoint
from migrator.errors import (
    CapabilityMissing,
    EndpointError,
    MigrateError,
    PlanError,
    StoreError,
    TransientError,
)
from migrator.stores.base import (
    Batch,
    Capabilities,
    ChangeFeed,
    Chunk,
    ChunkDigest,
    Cursor,
    Importer,
    Role,
    Store,
    Unit,
    record_hash,
)
from migrator.stores.objects import endpoint as url_rules
from migrator.stores.objects import feed as of
from migrator.stores.objects import settings
from migrator.stores.objects.ranges import range_name, separator, split_ranges, tiling_gaps
from migrator.stores.objects.records import (
    CHANGED,
    GONE,
    MD5_ETAG,
    MIN_PART,
    CacheKey,
    HashCache,
    MiB,
    ObjectRecord,
    epoch,
    etag,
    split_headers,
)
from migrator.stores.objects.transfer import Budget, ObjectImporter

T = TypeVar("T")
R = TypeVar("R")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
               "ExpiredToken", "AllAccessDisabled", "AccountProblem", "InvalidSecurity"}
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "OperationAborted", "XMinioServerNotInitialized", "Throttling"}


class ObjectStore(Store):
    kind = "objects"
    capabilities = Capabilities(resumable_units=True,
                                wire_format="object byte streams + S3 metadata")
    SPEC_SCHEMA: ClassVar[dict[str, Any]] = url_rules.SPEC_SCHEMA
    OPTION_SCHEMA: ClassVar[dict[str, Any]] = url_rules.OPTION_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_endpoint(self.endpoint, Role.SOURCE)  # a bad URL never half-works
        url_rules.check_options(self.endpoint)
        opts, name = self.endpoint.options, self.endpoint.name or "objects"
        parts = urlsplit(self.endpoint.url)
        bucket, _, self.prefix = unquote(parts.path.lstrip("/")).partition("/")
        self.bucket: str | None = bucket or None
        self.secure = parts.scheme == "https" or self.endpoint.tls.enabled
        port = f":{parts.port}" if parts.port else ""
        self.endpoint_id = f"{'https' if self.secure else 'http'}://{parts.hostname}{port}"
        self.bucket_map: dict[str, str] = dict(opts.get("bucket_map") or {})
        parse_size = url_rules.parse_size
        # A single PUT up to 64 MiB: one request, and its ETag is the MD5 verify needs, so
        # nothing is hashed in flight. Larger objects go multipart in 16 MiB parts.
        self.threshold = parse_size(opts.get("multipart_threshold", 64 * MiB),
                                    f"{name}.multipart_threshold")
        self.part_size = max(MIN_PART, parse_size(opts.get("multipart_part_size", 16 * MiB),
                                                  f"{name}.multipart_part_size"))
        self.unit_bytes = parse_size(opts.get("unit_bytes", 4 << 30), f"{name}.unit_bytes")
        self.parallel_parts = int(opts.get("parallel_parts", 4))
        self.transfers = int(opts.get("transfers", 8))
        self.checkers = int(opts.get("checkers", 8))
        self.etag_is_md5 = bool(opts.get("etag_is_md5", True))
        # Selection options, so both sides agree on which bucket settings count.
        sel = self.selection.options
        self.setting_names = tuple(
            n for n in settings.SETTINGS if sel.get("bucket_settings", True)
            and (n != "policy" or sel.get("bucket_policy", True)))
        self.hash_cache: Any = HashCache()
        # Object bytes held at once by all copies: with the interpreter, a run's peak RSS
        # stays under 256 MB (four 50 MiB single PUTs at once would not).
        self.budget = Budget(parse_size(opts.get("memory_budget", 160 * MiB),
                                          f"{name}.memory_budget"))
        self._client: Minio | None = None
        self._http: urllib3.PoolManager | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._probe_keys: dict[str, str] = {}  # bucket -> an object the feed's barrier HEADs

    # -- lifecycle -------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_client", "_http", "_pool", "_lock", "budget"):
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
        self._http = self._pool_manager(
            maxsize=max(32, self.transfers * (self.parallel_parts + 1), 4 * self.checkers),
            timeout=urllib3.Timeout(connect=15, read=300),
            # A blip inside one request is retried here; a dead endpoint fails fast
            # (connect=1) so the engine's retry policy decides about waiting.
            retries=urllib3.Retry(total=3, connect=1, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]))
        return self._minio(self._http)

    def _pool_manager(self, maxsize: int, timeout: urllib3.Timeout,
                      retries: urllib3.Retry | bool) -> urllib3.PoolManager:
        tls = self.endpoint.tls
        return urllib3.PoolManager(
            timeout=timeout, maxsize=maxsize, retries=retries,
            cert_reqs="CERT_REQUIRED" if tls.verify else "CERT_NONE",
            ca_certs=tls.ca_file or certifi.where(), cert_file=tls.cert_file,
            key_file=tls.key_file)

    def _minio(self, http: urllib3.PoolManager) -> Minio:
        conn = self.endpoint.connection()
        access = self.endpoint.resolved("access_key") or conn.username
        secret = self.endpoint.resolved("secret_key") or conn.password
        host = f"[{conn.host}]" if ":" in conn.host else conn.host  # IPv6 literal
        host = f"{host}:{conn.port}" if conn.port else host
        return Minio(host, access_key=access, secret_key=secret,
                     session_token=self.endpoint.resolved("session_token"), secure=self.secure,
                     region=self.endpoint.options.get("region"), http_client=http)

    def use_cache(self, cache: MutableMapping[Any, str]) -> None:
        self.hash_cache = cache

    def open(self) -> None:
        with self._errors("connect"):
            self.client  # noqa: B018 - builds the client; no network until first use

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            if self._http is not None:
                self._http.clear()
            self._client = self._http = None

    def copy_pool(self) -> ThreadPoolExecutor:
        """One pool of ``transfers`` threads for every batch of every unit of this store:
        no threads started per batch, and the number of copies at once is bounded for the
        whole run, whatever ``--parallel`` is."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.transfers, thread_name_prefix="oim-s3-copy")
            return self._pool

    def map_checks(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``fn`` over ``items`` with ``checkers`` threads (HEAD requests), in order."""
        with ThreadPoolExecutor(self.checkers, thread_name_prefix="oim-s3-head") as pool:
            return list(pool.map(fn, items))

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
        except InvalidResponseError as exc:
            raise self._not_s3(what, exc) from exc
        except ServerError as exc:
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

    def _not_s3(self, what: str, exc: InvalidResponseError) -> MigrateError:
        """An answer that is not S3's XML: a proxy's 5xx may pass; a 4xx means the URL
        does not lead to an S3 API as written (most often http:// to an HTTPS port)."""
        status = int(getattr(exc, "_code", 0) or 0)
        body = " ".join(str(getattr(exc, "_body", "") or "").split())[:120]
        problem = f"{what}: HTTP {status} that is not an S3 answer ({body or 'no body'})"
        if status >= 500:
            return TransientError(f"{self.endpoint.label}: {problem}")
        if not self.secure and "HTTPS" in body:
            return self.endpoint.fail(f"{what}: this port speaks HTTPS; the URL says http://",
                                      hint="write https:// (or set tls:), with tls.ca_file "
                                      "for a private CA")
        return self.endpoint.fail(problem, hint="check the URL's scheme, host and port: "
                                  "they must lead to the S3 API itself")

    # -- naming: units speak the source's names; each side maps them to its own -------
    def here_bucket(self, bucket: str) -> str:
        return self.bucket or self.bucket_map.get(bucket, bucket)

    def source_bucket(self, here: str) -> str:
        """The source's name for a bucket here (``bucket_map`` read backwards)."""
        return {v: k for k, v in self.bucket_map.items()}.get(here, here)

    def here_key(self, unit: Unit, key: str) -> str:
        return self.prefix + key[len(unit.spec["prefix"]):]

    def _here_bound(self, unit: Unit, key: str | None) -> str | None:
        return None if key is None else self.here_key(unit, key)

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
            # Patterns match "bucket/key" and * crosses "/", so only the literal text
            # before the first wildcard pins the bucket down.
            literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            head, slash, _ = literal.partition("/")
            return bucket == head if slash else bucket.startswith(literal)
        sel = self.selection
        if sel.include and not any(may_match(p) for p in sel.include):
            return False
        return not any(p in (bucket, f"{bucket}/*") for p in sel.exclude)

    # -- listing -----------------------------------------------------------------------
    def _record(self, bucket: str, obj: Any) -> ObjectRecord:
        raw = obj.metadata
        content_type, metadata, headers = split_headers(raw) if raw else (None, None, None)
        if content_type is None:  # incomplete (plain S3 listing): fingerprint will HEAD
            metadata = headers = None
        return ObjectRecord(bucket, obj.object_name, int(obj.size or 0), etag(obj.etag),
                            epoch(obj.last_modified), content_type, metadata, headers)

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

    def first_part_size(self, bucket: str, key: str, etag: str) -> int | None:
        """The size of part 1 of that version of a multipart object (HEAD ?partNumber=1);
        None when it is gone or changed. A server without part HEADs answers the whole
        object's size."""
        try:
            with self._errors(f"head {bucket}/{key} part 1"):
                found = self.client.stat_object(bucket, key, extra_headers={
                    "If-Match": f'"{etag}"'}, extra_query_params={"partNumber": "1"})
        except StoreError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code in (
                    "NoSuchKey", "NoSuchObject", "PreconditionFailed", "InvalidPart",
                    "InvalidArgument"):
                return None
            raise
        return int(found.size or 0)

    def list_range(self, bucket: str, start: str | None, end: str | None,
                   after: str | None = None, metadata: bool = True) -> Iterator[ObjectRecord]:
        """Objects under this endpoint's prefix with start <= key < end, in key order.

        S3's start-after is exclusive, so the key equal to ``start`` is fetched by HEAD.
        A bucket that does not exist lists as empty: on a target, its objects are missing.
        """
        if after is None and start:
            first = self.stat(bucket, start)
            if first is not None and first.key.startswith(self.prefix):
                yield first
        after = after or start or None
        try:
            with self._errors(f"list {bucket}"):
                for obj in self.client.list_objects(bucket, prefix=self.prefix or None,
                                                    recursive=True, start_after=after,
                                                    include_user_meta=metadata):
                    if end is not None and obj.object_name >= end:
                        return
                    yield self._record(bucket, obj)
        except MigrateError as exc:
            if getattr(exc.__cause__, "code", None) != "NoSuchBucket":
                raise

    def _unit_objects(self, unit: Unit, start: str | None, end: str | None,
                      after: str | None = None, metadata: bool = True
                      ) -> Iterator[ObjectRecord]:
        """The selected objects of a unit's range on this side, keys in unit (source) names."""
        bucket = unit.spec["bucket"]
        here = self.here_bucket(bucket)
        for rec in self.list_range(here, self._here_bound(unit, start),
                                   self._here_bound(unit, end), self._here_bound(unit, after),
                                   metadata):
            key = self._unit_key(unit, rec.key)
            if self._selected(bucket, key):
                yield replace(rec, key=key)

    def buckets(self) -> list[str]:
        """The selected buckets here, by the names they have here."""
        if self.bucket:
            with self._errors(f"bucket {self.bucket}"):
                if not self.client.bucket_exists(self.bucket):
                    raise self.endpoint.fail(f"bucket {self.bucket} does not exist")
            return [self.bucket]
        with self._errors("list buckets"):
            return sorted(b.name for b in self.client.list_buckets()
                          if self._bucket_selected(self.source_bucket(b.name)))

    # -- access --------------------------------------------------------------------------
    def check_access(self, role: Role) -> None:
        if role is Role.SOURCE:
            for bucket in self.buckets():
                first = next(self.list_range(bucket, None, None, metadata=False), None)
                if first is not None:
                    self.stat(bucket, first.key)
                self._check_settings_readable(bucket)
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

    def _check_settings_readable(self, bucket: str) -> None:
        """The rights to read every bucket setting verify compares, all named at once."""
        denied = []
        for name in self.setting_names:
            try:
                settings.read(self, bucket, name)
            except EndpointError as exc:
                if "AccessDenied" not in str(exc):
                    raise
                denied.append(name)
        if denied:
            actions = ", ".join(settings.READ_ACTIONS[n] for n in denied)
            raise self.endpoint.fail(
                f"bucket {bucket}: AccessDenied reading its {', '.join(denied)}",
                hint=f"grant {actions} to the user: verify compares these settings")

    def _probe_put(self, bucket: str) -> None:
        key = f"{self.prefix}.oim-migrate-probe-{uuid.uuid4().hex}"
        with self._errors(f"write probe {bucket}/{key}"):
            self.client.put_object(bucket, key, io.BytesIO(b"probe"), 5)
            self.client.remove_object(bucket, key)

    def describe(self) -> dict[str, Any]:
        return {"consistency": "object storage has no snapshot; objects written during the "
                "copy are found by re-listing (catch-up) and by verify",
                "multipart_threshold": self.threshold, "part_size": self.part_size,
                "bucket_settings": list(self.setting_names)}

    # -- source side -------------------------------------------------------------------
    def list_units(self) -> list[Unit]:
        units = []
        for bucket in self.buckets():
            listing = ((r.key, r.size) for r in self.list_range(bucket, None, None, metadata=False)
                       if self._selected(bucket, r.key))
            parts = split_ranges(listing, self.options.split_records, self.unit_bytes)
            spec = {"bucket": bucket, "prefix": self.prefix}
            if len(parts) <= 1:
                count, nbytes = (parts[0].count, parts[0].nbytes) if parts else (0, 0)
                units.append(Unit(self.kind, f"{bucket}/{self.prefix}*",
                                  dict(spec, start=None, end=None), count, nbytes))
                continue
            bounds = [None, *(separator(a.last, b.first) for a, b in pairwise(parts)), None]
            for i, part in enumerate(parts):
                start, end = bounds[i], bounds[i + 1]
                units.append(Unit(self.kind, f"{bucket}/{range_name(start, end)}",
                                  dict(spec, start=start, end=end), part.count, part.nbytes))
        return units

    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]:
        """Batches of descriptors from a listing without metadata (the importer takes type
        and metadata from the GET it streams). Cut by count: a batch holds no bodies, so
        ``batch_bytes`` would only starve the transfer pool of large objects; the memory
        budget caps a batch's bytes instead, which keeps ``rate_limit`` (taken per batch)
        smooth."""
        records: list[ObjectRecord] = []
        nbytes, cap = 0, max(self.options.batch_bytes, self.budget.limit)
        bucket = unit.spec["bucket"]
        for rec in self._unit_objects(unit, unit.spec.get("start"), unit.spec.get("end"),
                                      resume_from, metadata=False):
            records.append(replace(rec, bucket=bucket, source=self))
            nbytes += rec.size
            if len(records) >= self.options.batch_records or nbytes >= cap:
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
        headers: dict[str, str | list[str] | tuple[str]] | None = \
            {"If-Match": f'"{etag}"'} if etag else None
        try:
            with self._errors(f"get {here}/{key}"):
                return self.client.get_object(here, key, request_headers=headers)
        except StoreError as exc:
            code = getattr(exc.__cause__, "code", None)
            if code == "NoSuchKey" or (etag and code == "PreconditionFailed"):
                return None
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
        """Buckets, with the source's settings except lifecycle rules (after the data)."""
        origin = self._object_source(source)
        buckets = sorted({u.spec["bucket"] for u in units})
        if self.bucket and len(buckets) > 1:
            raise PlanError(f"{self.endpoint.name or 'target'}.url",
                            f"names one bucket but the source has {len(buckets)}",
                            hint="drop the bucket from the target URL, or use bucket_map")
        for bucket in buckets:
            here = self.here_bucket(bucket)
            with self._errors(f"create bucket {here}"):
                exists = self.client.bucket_exists(here)
            if not exists:
                # Object lock can only be switched on when a bucket is created.
                locked = "object_lock" in self.setting_names and settings.read(
                    origin, origin.here_bucket(bucket), "object_lock") is not None
                with self._errors(f"create bucket {here}"):
                    self.client.make_bucket(here, location=self.endpoint.options.get("region"),
                                            object_lock=locked)
            settings.copy(self, origin, bucket, [n for n in self.setting_names
                                                 if n not in settings.AFTER_DATA])

    def finalize_target(self, units: list[Unit], source: Store) -> None:
        origin = self._object_source(source)
        for bucket in sorted({u.spec["bucket"] for u in units}):
            settings.copy(self, origin, bucket, [n for n in self.setting_names
                                                 if n in settings.AFTER_DATA])

    def _object_source(self, source: Store) -> ObjectStore:
        """The store whose bucket settings prepare/finalize read: the live source, or in a
        restore the set's recorded settings (``stand_in``), which answer the same calls."""
        if not isinstance(source, ObjectStore):
            stand_in = source.stand_in()
            if stand_in is None:
                raise StoreError(f"{self.endpoint.label}: the source is not an object store")
            return cast(ObjectStore, stand_in)
        return source

    def importer(self, unit: Unit) -> Importer:
        return ObjectImporter(self, unit)

    # -- catch-up and freeze -----------------------------------------------------------
    def fetch(self, unit: Unit, keys: list[str]) -> Batch:
        """Source side: the named objects as one batch of descriptors (one HEAD each, in
        parallel); the importer streams their bodies as it does for an export. Objects gone
        since ``records()`` named them are left out."""
        bucket = unit.spec["bucket"]
        here = self.here_bucket(bucket)

        def head(key: str) -> ObjectRecord | None:
            rec = self.stat(here, self.here_key(unit, key))
            return None if rec is None else replace(rec, bucket=bucket, key=key, source=self)

        records = [r for r in self.map_checks(head, sorted(set(keys))) if r is not None]
        return Batch(records, records[-1].key if records else None,
                     sum(r.size for r in records))

    def delete(self, unit: Unit, keys: list[str]) -> None:
        """Target side: one multi-object DELETE per 1000 keys; absent keys (and a bucket
        that does not exist) are no error."""
        here = self.here_bucket(unit.spec["bucket"])
        objects = [DeleteObject(self.here_key(unit, key)) for key in keys]
        if not objects:
            return
        try:
            with self._errors(f"delete from {here}"):
                errors = [e for e in self.client.remove_objects(here, objects)
                          if e.code not in ("NoSuchKey", "NoSuchVersion")]
        except EndpointError as exc:
            if getattr(exc.__cause__, "code", None) == "NoSuchBucket":
                return
            raise
        if errors:
            first, more = errors[0], f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            problem = f"delete {here}/{first.name}: {first.code}: {first.message}{more}"
            if first.code in _AUTH_CODES:
                raise self.endpoint.fail(problem, hint="grant s3:DeleteObject to the user")
            if first.code in _TRANSIENT_CODES:
                raise TransientError(f"{self.endpoint.label}: {problem}")
            raise StoreError(f"{self.endpoint.label}: {problem}")

    def follow(self) -> ChangeFeed:
        """MinIO's ListenBucketNotification on every selected bucket (see ``feed``): from
        now on the server names each object created, overwritten or removed. Refused,
        saying why, where the server has no such stream or the account may not listen."""
        self.open()
        buckets = self.buckets()
        # Its own connections: no read timeout (a quiet bucket sends nothing for as long
        # as it stays quiet; take()'s barrier notices a dead server) and no retry (a
        # request sent again would subscribe anew, silently losing the events between).
        http = self._pool_manager(maxsize=max(1, len(buckets)),
                                  timeout=urllib3.Timeout(connect=15, read=None), retries=False)
        probes = self._pool_manager(maxsize=1, timeout=urllib3.Timeout(connect=15, read=30),
                                    retries=False)
        listener, prober = self._minio(http), self._minio(probes)

        def opener(bucket: str) -> Callable[[], Any]:
            def open_stream() -> Any:
                events = listener.listen_bucket_notification(bucket, prefix=self.prefix,
                                                             events=of.EVENTS)
                # One request, never the iterable: it reopens a closed stream by itself,
                # which would hide the events lost in between.
                return events._func()
            return open_stream

        def release() -> None:
            http.clear()
            probes.clear()

        feed = of.ObjectFeed(self.endpoint.label, [(b, opener(b)) for b in buckets],
                             probe=lambda bucket, tag: self._probe(prober, bucket, tag),
                             on_close=release)
        try:
            return feed.start()
        except of.Refused as exc:
            raise CapabilityMissing(self._follow_refused(exc)) from None
        except MigrateError as exc:  # e.g. the barrier's HEAD failed: sync still digests
            raise CapabilityMissing(f"{self.endpoint.label}: could not start following "
                                    f"changes ({exc.message}): catch-up digests every "
                                    "chunk") from None

    def _follow_refused(self, exc: of.Refused) -> str:
        """One line for ``sync``'s notes: what to grant, or that the service cannot."""
        code = getattr(exc.cause, "code", None)
        user = (self.endpoint.resolved("access_key") or self.endpoint.connection().username
                or "?")
        if code in _AUTH_CODES:
            return (f"{self.endpoint.label}: the account '{user}' may not listen to bucket "
                    f"notifications ({code}; grant the MinIO policy action "
                    "s3:ListenBucketNotification on the bucket): catch-up digests every chunk")
        return (f"{self.endpoint.label}: the server offers no change stream ({exc.reason}); "
                "only MinIO has ListenBucketNotification, AWS S3, Ceph and other S3 services "
                "cannot announce changes: catch-up digests every chunk")

    def _probe(self, client: Minio, bucket: str, tag: str) -> bool:
        """HEAD one object of ``bucket`` (under the prefix) with ``tag`` in the User-Agent,
        for the feed's barrier; False when the bucket holds none. The object is remembered
        and listed again only once it is gone. The feed probes one bucket at a time, so
        the client's agent is set for this HEAD alone."""
        for _ in range(5):
            key = self._probe_keys.get(bucket)
            if key is None:
                first = next(self.list_range(bucket, None, None, metadata=False), None)
                if first is None:
                    return False
                key = self._probe_keys[bucket] = first.key
            client.set_app_info(of.AGENT, tag)
            try:
                with self._errors(f"head {bucket}/{key}"):
                    client.stat_object(bucket, key)
                return True
            except StoreError as exc:
                if getattr(exc.__cause__, "code", None) not in ("NoSuchKey", "NoSuchObject"):
                    raise
            self._probe_keys.pop(bucket, None)  # deleted meanwhile: list again
        return False

    def changed_in(self, unit: Unit, changes: Any) -> list[str]:
        """Of a ``take``'s keys, those of the unit's bucket, range and selection, named as
        ``records`` names them."""
        bucket = unit.spec["bucket"]
        start, end = unit.spec.get("start"), unit.spec.get("end")
        out = []
        for here_key in changes.get(self.here_bucket(bucket), ()):
            if not here_key.startswith(self.prefix):
                continue
            key = self._unit_key(unit, here_key)
            if ((start is None or key >= start) and (end is None or key < end)
                    and self._selected(bucket, key)):
                out.append(key)
        return sorted(out)

    def records_of(self, unit: Unit, keys: list[str]) -> Iterator[tuple[str, Any]]:
        """``records`` of the named objects: one HEAD each (``checkers`` at once), then the
        same fingerprint a listing gives (a multipart ETag's MD5 from the cache or read
        once); absent objects and keys outside the unit are left out."""
        bucket = unit.spec["bucket"]
        here = self.here_bucket(bucket)
        start, end = unit.spec.get("start"), unit.spec.get("end")
        wanted = sorted(k for k in set(keys) if (start is None or k >= start)
                        and (end is None or k < end) and self._selected(bucket, k))

        def head(key: str) -> ObjectRecord | None:
            rec = self.stat(here, self.here_key(unit, key))
            return None if rec is None else replace(rec, key=key)

        found = [r for r in self.map_checks(head, wanted) if r is not None]
        return self._fingerprints(unit, found)

    def freeze_check(self) -> str | None:
        """S3 has no switch that holds writes (a deny policy would have to name OpenIM's
        user and would change the very settings verify compares)."""
        return ("object storage has no server-side write guard: the freeze relies on "
                "OpenIM's writers being stopped (the plan's freeze command)")

    # -- verification ------------------------------------------------------------------
    def chunks(self, unit: Unit) -> list[Chunk]:
        start, end = unit.spec.get("start"), unit.spec.get("end")
        if unit.records <= self.options.chunk_records // 2:  # surely one chunk: no listing
            return [Chunk("0", {"start": start, "end": end})]
        bounds: list[str | None] = [start]
        count, last = 0, ""
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

    def definitions(self, units: list[Unit] | None = None) -> dict[str, Any]:
        """Per bucket (by its source name), its settings as data; None for a bucket that
        does not exist here. ``units`` names the buckets; without them, every selected
        bucket here is listed (the target's bucket_map read backwards)."""
        if not self.setting_names:
            return {}
        if units is not None:
            buckets = sorted({u.spec["bucket"] for u in units if u.store == self.kind})
        else:  # a missing URL bucket is a difference (None), not an endpoint error
            here_names = [self.bucket] if self.bucket else self.buckets()
            buckets = [self.source_bucket(here) for here in here_names]
        return {bucket: self.bucket_settings(bucket) for bucket in buckets}

    def bucket_settings(self, bucket: str) -> dict[str, Any] | None:
        here = self.here_bucket(bucket)
        with self._errors(f"bucket {here}"):
            if not self.client.bucket_exists(here):
                return None
        return {name: settings.as_data(name, settings.read(self, here, name), here, bucket,
                                       self.prefix) for name in self.setting_names}

    # -- coverage ----------------------------------------------------------------------
    @classmethod
    def check_endpoint(cls, endpoint: Endpoint, role: Role) -> None:
        url_rules.check_url(endpoint)

    @classmethod
    def container_of(cls, unit: Unit) -> str:
        bucket, prefix = unit.spec.get("bucket"), unit.spec.get("prefix") or ""
        if not bucket:
            return unit.name.partition("/")[0]
        return f"{bucket}/{prefix}" if prefix else str(bucket)

    @classmethod
    def uncovered(cls, units: list[Unit]) -> list[str]:
        """Each bucket's units must tile its key space: one line per hole or overlap."""
        ranges: dict[str, list[tuple[str | None, str | None]]] = {}
        for unit in units:
            ranges.setdefault(cls.container_of(unit), []).append(
                (unit.spec.get("start"), unit.spec.get("end")))
        return [f"{container}: {problem}" for container, found in sorted(ranges.items())
                for problem in tiling_gaps(found)]

    def unlisted(self, units: list[Unit]) -> list[str]:
        """Selected buckets with no unit (created after plan, even empty ones): one
        bucket listing, no object listing."""
        planned = {self.container_of(u) for u in units if u.store == self.kind}
        prefix = f"/{self.prefix}" if self.prefix else ""
        return sorted({f"{b}{prefix}" for b in self.buckets()} - planned)

    def cache_key(self, bucket: str, rec: ObjectRecord) -> CacheKey:
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
        if self.etag_is_md5 and MD5_ETAG.fullmatch(rec.etag):
            return rec.etag.lower()
        here_rec = replace(rec, key=self.here_key(unit, rec.key))
        return self.hash_cache.get(self.cache_key(here, here_rec))

    def _fingerprint(self, unit: Unit, here: str, rec: ObjectRecord) -> dict[str, Any]:
        here_key = self.here_key(unit, rec.key)
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
                self.hash_cache[self.cache_key(here, replace(rec, key=here_key))] = md5
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
