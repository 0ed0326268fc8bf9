"""Following a MinIO source's changes with ListenBucketNotification (a MinIO extension).

One long GET per followed bucket subscribes to ``s3:ObjectCreated:*`` and
``s3:ObjectRemoved:*`` of the endpoint's prefix; a reader thread notes the object keys the
events name (as sent, and URL-decoded too: older MinIO releases escape them, current ones
do not; naming a key that does not exist costs one HEAD and changes nothing). The account
needs the MinIO policy action ``s3:ListenBucketNotification`` on the bucket; AWS S3, Ceph
and other S3 services have no such stream, so ``follow`` is refused there.

The barrier, so that ``take()`` is complete up to its call without writing to the source:
the stream also subscribes to ``s3:ObjectAccessed:Head``, and ``take`` HEADs an object of
the bucket itself with a User-Agent naming a fresh token. MinIO publishes an event into
each listener's queue inside the request that caused it, and one listener's queue reaches
its connection in order, so once the event of our HEAD is read, every event published
before that HEAD was sent has been read too. MinIO may hold the stream's bytes in a 2 KiB
buffer (the build the tests run does not flush it per event), so ``take`` keeps sending
padded HEADs until the first one's event arrives. What this rests on, precisely:

* a write's event is published before the writer holds its answer. PUT and DELETE publish
  before the handler returns; CopyObject flushes its XML answer just before publishing,
  so ``take`` waits ``SETTLE`` seconds after its call before its first HEAD;
* a single MinIO node, or, with several nodes, that an event crosses to the node serving
  our stream within ``SETTLE`` (events of other nodes arrive on internode streams that
  are not ordered with the local one);
* MinIO drops events for a listener whose queue is full (thousands of events behind): the
  reader does nothing but parse, so it keeps up with any write rate MinIO sustains;
* writes MinIO replicates into the bucket from another site publish no event.

A bucket with no object to HEAD gives no barrier: ``take`` then answers None (digest
everything once more), as it does until a stream's subscription was proven by one of our
events. A stream that ends, or a barrier unanswered for ``BARRIER_TIMEOUT``, ends the feed
(``Broken``): its gap cannot be known.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from migrator.errors import StoreError

EVENTS = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectAccessed:Head")
SETTLE = 0.1  # seconds between take()'s call and its first barrier HEAD (see above)
PROBE_WAIT = 0.02  # seconds to wait for a barrier's event before pushing another HEAD
BARRIER_TIMEOUT = 30.0  # seconds a take() waits for its barrier's event
START_TIMEOUT = 10.0  # seconds follow() waits for the server to prove the subscription
REFUSAL_WAIT = 0.5  # seconds follow() waits for a refusal where nothing can be HEADed
AGENT = "oim-migrate-barrier"
PAD = "." * 2048  # a barrier event larger than MinIO's 2 KiB buffer pushes out the rest


class Broken(StoreError):
    """The feed can no longer say what changed: a stream ended or its barrier went
    unanswered."""


class Refused(Exception):
    """The server answered the listen request with something other than an event stream."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason, self.cause = reason, cause


Opener = Callable[[], Any]  # opens one bucket's listen GET; returns the urllib3 response
Probe = Callable[[str, str], bool]  # HEAD one object of a bucket with this agent version


class _Stream:
    """One bucket's listen connection, its reader thread and the keys named so far."""

    def __init__(self, label: str, bucket: str, opener: Opener, feed_id: str) -> None:
        self.label, self.bucket, self._open = label, bucket, opener
        self._token = re.compile(rf"{AGENT}/{feed_id}\.(\d+)\.")
        self.keys: set[str] = set()
        self.seen = 0  # the highest barrier token of this feed read from the stream
        self.live = False  # one of our events came through: the subscription is active
        self.error: str | None = None
        self.refused: Refused | None = None
        self.response: Any = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"s3-feed-{bucket}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            response = self._open()
        except BaseException as exc:  # noqa: BLE001 - handed to follow() / take()
            self._end(f"the listen request failed ({exc})", Refused(str(exc), exc))
            return
        with self._cond:
            self.response = response
            closing = self._closing
        if closing:
            self._shut(response)
            return
        kind = response.headers.get("Content-Type", "")
        if not kind.startswith("text/event-stream"):
            self._shut(response)
            self._end(f"the listen request was answered with {kind or 'no content type'}",
                      Refused(f"HTTP {response.status} {kind or 'without a content type'}"))
            return
        try:
            rest = b""
            for block in response.stream(1 << 16, decode_content=False):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    self._note(line)
            why = "the server closed it"
        except Exception as exc:  # noqa: BLE001 - any end of the stream ends the feed
            why = str(exc) or type(exc).__name__
        self._end(f"the change stream of bucket {self.bucket} ended ({why})")

    def _note(self, line: bytes) -> None:
        line = line.strip()  # MinIO pads the stream with spaces to keep it alive
        if not line:
            return
        records = json.loads(line).get("Records") or []
        with self._cond:
            for record in records:
                name = str(record.get("eventName", ""))
                key = str(record["s3"]["object"]["key"])
                if name.startswith("s3:ObjectAccessed:"):
                    agent = str((record.get("source") or {}).get("userAgent", ""))
                    found = self._token.search(agent)
                    if found:
                        self.seen = max(self.seen, int(found.group(1)))
                        self.live = True
                        self._cond.notify_all()
                    continue
                self.keys.add(key)
                self.keys.add(unquote_plus(key))

    def _end(self, why: str, refused: Refused | None = None) -> None:
        with self._cond:
            if not self._closing and self.error is None:
                self.error = f"{self.label}: {why}"
                self.refused = refused
            self._cond.notify_all()

    def wait_for(self, token: int, timeout: float) -> bool:
        """Whether the event of barrier ``token`` (or a later one) was read in time."""
        with self._cond:
            self._cond.wait_for(lambda: self.seen >= token or self.error is not None, timeout)
            if self.error is not None:
                raise Broken(self.error)
            return self.seen >= token

    def wait_refusal(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None, timeout)

    def drain(self) -> set[str]:
        with self._cond:
            if self.error is not None:
                raise Broken(self.error)
            keys, self.keys = self.keys, set()
            return keys

    def check(self) -> None:
        with self._cond:
            if self.error is not None:
                raise Broken(self.error)

    @staticmethod
    def _shut(response: Any) -> None:
        for step in (response.shutdown, response.close, response.release_conn):
            try:
                step()
            except Exception:  # noqa: BLE001, S110 - closing must not mask anything
                pass

    def close(self) -> None:
        with self._cond:
            self._closing = True
            response = self.response
            self._cond.notify_all()
        if response is not None:
            self._shut(response)
        # A thread still waiting for the first bytes (a bucket with nothing to HEAD never
        # made MinIO send any) is a daemon: it ends with them or with the process.
        if self._thread.ident is not None:
            self._thread.join(timeout=2)


class ObjectFeed:
    """Keys created, overwritten or removed in each followed bucket since the feed started,
    or since the last ``take``: ``{bucket: {key, ...}}`` in the source's own names."""

    # take()'s barrier rests on timing (a CopyObject's event may follow its answer; a
    # cluster's other nodes must deliver within the wait), so a followed pass is not a
    # proof: the verify after it compares every chunk again.
    exact = False

    def __init__(self, label: str, buckets: list[tuple[str, Opener]], probe: Probe,
                 on_close: Callable[[], Any] | None = None) -> None:
        self.label, self._probe, self._on_close = label, probe, on_close
        self._id = uuid.uuid4().hex[:12]
        self._streams = [_Stream(label, bucket, opener, self._id) for bucket, opener in buckets]
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self.why: str | None = None  # after a take() that returned None: why

    @property
    def streams(self) -> list[_Stream]:
        return list(self._streams)

    def start(self) -> ObjectFeed:
        """Subscribe every bucket and prove each subscription with one of our events; a
        refusal is raised as ``Refused`` (the store says what it means). A bucket with
        nothing to HEAD stays unproven: ``take`` answers None until it is."""
        try:
            for stream in self._streams:
                stream.start()
            deadline = time.monotonic() + START_TIMEOUT
            for stream in self._streams:
                if self._barrier(stream, deadline, starting=True) is None:
                    stream.wait_refusal(REFUSAL_WAIT)
                    self._refusal(stream)
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _refusal(stream: _Stream) -> None:
        if stream.refused is not None:
            raise stream.refused
        if stream.error is not None:
            raise Refused(stream.error)

    def _barrier(self, stream: _Stream, deadline: float, starting: bool = False
                 ) -> bool | None:
        """HEAD an object of the bucket until the first HEAD's event is read: True then;
        None when there is no object to HEAD. Raises ``Broken`` past ``deadline`` (or
        ``Refused`` while starting, when the server refused or never answered)."""
        first = None
        for attempt in itertools.count():
            if starting:
                self._refusal(stream)
            token = next(self._tokens)
            if self._probe(stream.bucket, f"{self._id}.{token}.{PAD}"):
                first = first or token
            elif first is None:
                return None
            try:
                # A slow stream is pushed less and less often: at most one HEAD a second.
                if stream.wait_for(first or token, min(1.0, PROBE_WAIT * 2 ** attempt)):
                    return True
            except Broken:
                if starting:
                    self._refusal(stream)
                raise
            if time.monotonic() > deadline:
                if starting:
                    raise Refused(f"no event came back within {START_TIMEOUT:g} s")
                raise Broken(f"{self.label}: bucket {stream.bucket}: the change stream "
                             f"did not deliver our HEAD's event within "
                             f"{BARRIER_TIMEOUT:g} s")
        raise AssertionError("unreachable")

    def take(self) -> dict[str, set[str]] | None:
        """The keys named since the last call, complete up to the call (see the module's
        docstring for what the barrier assumes); None when a bucket offered nothing to
        HEAD or its subscription was not yet proven. Raises ``Broken`` when it cannot
        tell."""
        with self._lock:
            called = time.monotonic()
            for stream in self._streams:
                stream.check()
            unproven = [s.bucket for s in self._streams if not s.live]
            time.sleep(max(0.0, called + SETTLE - time.monotonic()))
            deadline = called + BARRIER_TIMEOUT
            empty = [s.bucket for s in self._streams if self._barrier(s, deadline) is None]
            changes = {stream.bucket: stream.drain() for stream in self._streams}
            self.why = None
            if unproven:
                self.why = (f"the change stream of bucket {unproven[0]} was not proven live "
                            "yet (its first event makes it so)")
            elif empty:
                self.why = (f"bucket {empty[0]} holds no object to HEAD for the change "
                            "stream's barrier")
            return None if self.why else changes

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        if self._on_close is not None:
            self._on_close()
