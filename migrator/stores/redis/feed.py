"""Following a Redis source's changes with CLIENT TRACKING in broadcast mode.

Per master, one connection subscribes to ``__redis__:invalidate`` and another turns on
``CLIENT TRACKING ON REDIRECT <subscriber> BCAST``: from then on the server names every key
any client changes, deletes or lets expire, with no configuration change on the server
(keyspace notifications would need ``CONFIG SET``) and with rights a read-only account can
hold (``+client|tracking +subscribe &__redis__:invalidate``). A flush is reported as "every
key"; a lost connection ends the feed, since its gap cannot be known. The messages name
keys without their DB: a name stands for that key in every DB.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import redis

from migrator.errors import StoreError

CHANNEL = b"__redis__:invalidate"
BARRIER_TIMEOUT = 30.0  # seconds a take() waits for the server to echo its PING


class Broken(StoreError):
    """The feed can no longer say what changed: a connection was lost or refused."""


class _Node:
    """The two connections to one master and the keys its messages named so far."""

    def __init__(self, name: str, connect: Callable[[], redis.Connection]) -> None:
        self.name = name
        self._subscriber = connect()
        self._tracker = connect()
        self.keys: set[bytes] = set()
        self.flushed = False
        self.error: str | None = None
        self._echoes: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sub, tracker = self._subscriber, self._tracker
        sub.send_command("CLIENT", "ID")
        client_id = sub.read_response()
        sub.send_command("SUBSCRIBE", CHANNEL)
        sub.read_response()
        tracker.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST")
        tracker.read_response()
        self._thread = threading.Thread(target=self._read, name=f"redis-feed-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                message = self._subscriber.read_response(timeout=None)
                self._note(message)
        except Exception as exc:  # noqa: BLE001 - any end of the stream ends the feed
            with self._lock:
                if not self._closing and self.error is None:
                    self.error = f"{self.name}: the change feed's connection ended ({exc})"
                for echo in self._echoes.values():
                    echo.set()

    def _note(self, message: Any) -> None:
        kind = message[0] if isinstance(message, list) and message else None
        with self._lock:
            if kind == b"message" and message[1] == CHANNEL:
                if message[2] is None:
                    self.flushed = True  # FLUSHDB / FLUSHALL: every key
                else:
                    self.keys.update(message[2])
            elif kind == b"pong" and message[1] in self._echoes:
                self._echoes.pop(message[1]).set()

    def barrier(self, token: bytes) -> threading.Event:
        """An event set once the server echoed ``token``: every message about a write the
        server finished before it saw our PING has then been read."""
        echo = threading.Event()
        with self._lock:
            if self.error is not None:
                raise Broken(self.error)
            self._echoes[token] = echo
        try:
            self._subscriber.send_command("PING", token)
        except Exception as exc:  # noqa: BLE001
            raise Broken(f"{self.name}: the change feed's connection ended ({exc})") from exc
        return echo

    def take(self) -> tuple[set[bytes], bool]:
        with self._lock:
            if self.error is not None:
                raise Broken(self.error)
            keys, flushed = self.keys, self.flushed
            self.keys, self.flushed = set(), False
            return keys, flushed

    def close(self) -> None:
        with self._lock:
            self._closing = True
        for conn in (self._tracker, self._subscriber):
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001, S110 - closing must not mask anything
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)


class ChangeFeed:
    """Keys changed on every master since the feed started, or since the last ``take``."""

    exact = True  # take(): a PING echoed on the subscriber's own ordered stream

    def __init__(self, nodes: list[tuple[str, Callable[[], redis.Connection]]]) -> None:
        self._nodes = [_Node(name, connect) for name, connect in nodes]
        self._tokens = itertools.count(1)
        self.why: str | None = None

    def start(self) -> ChangeFeed:
        started: list[_Node] = []
        try:
            for node in self._nodes:
                node.start()
                started.append(node)
        except BaseException:
            for node in started + [n for n in self._nodes if n not in started]:
                node.close()
            raise
        return self

    def take(self) -> set[bytes] | None:
        """The keys changed since the last call (None: the DB was flushed, so any key may
        have changed). Waits until each master echoed a PING sent now, so that every write
        finished before this call is in the answer. Raises ``Broken`` when it cannot tell."""
        echoes = [node.barrier(b"oim-%d" % next(self._tokens)) for node in self._nodes]
        for node, echo in zip(self._nodes, echoes, strict=True):
            if not echo.wait(BARRIER_TIMEOUT):
                raise Broken(f"{node.name}: no answer to the change feed's PING within "
                             f"{BARRIER_TIMEOUT:g} s")
        keys: set[bytes] = set()
        flushed = False
        for node in self._nodes:
            got, was_flushed = node.take()
            keys |= got
            flushed = flushed or was_flushed
        self.why = "the source was flushed (FLUSHDB or FLUSHALL)" if flushed else None
        return None if flushed else keys

    def close(self) -> None:
        for node in self._nodes:
            node.close()
