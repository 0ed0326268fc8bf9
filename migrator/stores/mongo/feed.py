"""Following a MongoDB source's changes with change streams (a replica set or sharded
cluster; a standalone server, FerretDB and DocumentDB have none).

One stream per source database (the ``read`` role on it suffices), projected down to the
namespace and the document key. Events carry the document's `_id` exactly as stored, so a
change names one document of one collection. A drop or rename of a collection makes the
next ``take`` say "anything may have changed"; a dropped database, an invalidated stream
or a lost cursor ends the feed, since its gap cannot be known.

Completeness of a ``take``: the source's ``operationTime`` is read first (the optime of
the last write it applied), then the streams are read until each has passed it, by an
event's ``clusterTime`` or by the stream's post-batch resume token. The token's timestamp
is read from its ``_data`` prefix (a KeyString timestamp: ``82`` + seconds + increment),
the resume-token format MongoDB has used since 4.0.7.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bson import Timestamp
from pymongo import MongoClient
from pymongo import errors as mx

from migrator.errors import StoreError
from migrator.stores.mongo import meta

BARRIER_TIMEOUT = 30.0  # seconds a take() waits for the streams to pass the source's optime
AWAIT_MS = 200  # how long one getMore waits on the server for new events
_FLUSHING = {"drop", "rename"}  # the collection's documents all changed at once
_ENDING = {"dropDatabase", "invalidate"}  # the stream is closed after these


class Broken(StoreError):
    """The feed can no longer say what changed."""


def token_time(token: Any) -> Timestamp | None:
    """The timestamp a resume token stands at (None: a format we do not know)."""
    data = (token or {}).get("_data")
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    return Timestamp(int(data[2:10], 16), int(data[10:18], 16))


class _Stream:
    """The change stream of one database, read by a thread of its own."""

    def __init__(self, client: MongoClient, db: str) -> None:
        self.db = db
        self.changes: set[tuple[str, str, str]] = set()  # (db, collection, `_id` label)
        self.flushed = False
        self.error: str | None = None
        self.seen: Timestamp | None = None  # the streams have been read up to here
        self._lock = threading.Lock()
        self._closing = threading.Event()
        pipeline = [{"$project": {"ns": 1, "documentKey": 1, "operationType": 1,
                                  "clusterTime": 1}}]
        self._stream = client.get_database(db, codec_options=meta.RAW).watch(
            pipeline, max_await_time_ms=AWAIT_MS)
        self._thread = threading.Thread(target=self._read, name=f"mongo-feed-{db}",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._closing.is_set():
                event = self._stream.try_next()
                with self._lock:
                    if event is not None:
                        self._note(event)
                    else:
                        self.seen = token_time(self._stream.resume_token) or self.seen
        except Exception as exc:  # noqa: BLE001 - any end of the stream ends the feed
            with self._lock:
                if not self._closing.is_set() and self.error is None:
                    self.error = f"database {self.db}: the change stream ended ({exc})"

    def _note(self, event: Any) -> None:
        kind = event.get("operationType")
        ns = event.get("ns") or {}
        if kind in _ENDING:
            self.error = f"database {self.db}: the change stream was closed by a {kind}"
            return
        if kind in _FLUSHING:
            self.flushed = True
        key = event.get("documentKey")
        if key is not None and "_id" in key:  # decoded as the store decodes documents
            self.changes.add((str(ns.get("db")), str(ns.get("coll")), meta.id_label(key["_id"])))
        when = event.get("clusterTime")
        if isinstance(when, Timestamp):
            self.seen = when

    def passed(self, optime: Timestamp) -> bool:
        with self._lock:
            if self.error is not None:
                raise Broken(self.error)
            return self.seen is not None and self.seen >= optime

    def take(self) -> tuple[set[tuple[str, str, str]], bool]:
        with self._lock:
            if self.error is not None:
                raise Broken(self.error)
            out, flushed = self.changes, self.flushed
            self.changes, self.flushed = set(), False
            return out, flushed

    def close(self) -> None:
        self._closing.set()
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001, S110 - closing must not mask anything
            pass
        self._thread.join(timeout=5)


class ChangeFeed:
    """Documents changed in the source's databases since the start or the last ``take``."""

    exact = True  # take(): every stream read past the optime the source names

    def __init__(self, client: MongoClient, dbs: list[str]) -> None:
        self._client, self._dbs = client, dbs
        self._streams: list[_Stream] = []
        self.why: str | None = None

    def start(self) -> ChangeFeed:
        try:
            for db in self._dbs:
                self._streams.append(_Stream(self._client, db))
        except BaseException:
            self.close()
            raise
        return self

    def _optime(self) -> Timestamp:
        try:
            reply = self._client[self._dbs[0]].command("ping")
        except mx.PyMongoError as exc:
            raise Broken(f"reading the source's optime: {exc}") from exc
        optime = reply.get("operationTime")
        if not isinstance(optime, Timestamp):
            raise Broken("the source reports no operationTime (not a replica set?)")
        return optime

    def take(self) -> set[tuple[str, str, str]] | None:
        """(db, collection, `_id` label) of every document written since the last call, or
        None when a collection was dropped or renamed. Waits until every stream has read
        past the source's optime as of this call."""
        optime = self._optime()
        deadline = time.monotonic() + BARRIER_TIMEOUT
        for stream in self._streams:
            while not stream.passed(optime):
                if time.monotonic() > deadline:
                    raise Broken(f"database {stream.db}: the change stream did not reach "
                                 f"the source's optime within {BARRIER_TIMEOUT:g} s")
                time.sleep(AWAIT_MS / 4000)
        changes: set[tuple[str, str, str]] = set()
        flushed = False
        for stream in self._streams:
            got, was_flushed = stream.take()
            changes |= got
            flushed = flushed or was_flushed
        self.why = "a collection was dropped or renamed" if flushed else None
        return None if flushed else changes

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        self._streams = []
