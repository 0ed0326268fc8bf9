"""Reading Redis fast: SCAN pages, and pipelines without redis-py's per-command bookkeeping.

Commands are packed into one buffer per server and the replies parsed by hiredis straight
off the pooled connection's socket. All functions take clients whose response callbacks
are switched off (raw RESP replies); error replies come back as exception values, in order.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from binascii import crc_hqx
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import hiredis
from hiredis import pack_command
from redis._parsers import BaseParser
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

READ_AHEAD = 2  # SCAN pages being read while the next SCAN runs
FEED = 16 << 10  # bytes handed to the reply parser at a time
SLOTS = 16384


class ScanPage:
    """One SCAN reply; the hash slots of its keys are worked out once, when first needed."""

    __slots__ = ("cursor", "keys", "_slots")

    def __init__(self, cursor: int, keys: list[bytes]) -> None:
        self.cursor, self.keys = cursor, keys
        self._slots: list[int] | None = None

    @property
    def slots(self) -> list[int]:
        if self._slots is None:  # CRC16 inline for the common case: no call per key
            self._slots = [key_slot(k) if b"{" in k else crc_hqx(k, 0) & 0x3FFF
                           for k in self.keys]
        return self._slots


class PageCache:
    """Recent SCAN pages, shared by the units of a split DB that scan it at the same time.

    Every unit of a split DB walks the same SCAN cursor chain and keeps only its own slots;
    without sharing, eight units make the server scan the DB eight times. Units in step ask
    for the same page at the same moment, so a page being fetched is waited for, not
    fetched again. A page is reused only by a scan that started before its fetch began, so
    no scan sees the keyspace as it was before the scan itself began.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._pages: OrderedDict[tuple[Any, int], tuple[float, Future]] = OrderedDict()
        self._lock = threading.Lock()

    def page(self, where: Any, cursor: int, since: float,
             fetch: Callable[[], ScanPage]) -> ScanPage:
        key = (where, cursor)
        with self._lock:
            entry = self._pages.get(key)
            shared = entry is not None and entry[0] >= since
            if entry is None or not shared:
                entry = (time.monotonic(), Future())
                self._pages[key] = entry
                self._pages.move_to_end(key)
                while len(self._pages) > self.limit:
                    self._pages.popitem(last=False)
        future = entry[1]
        if shared:
            return future.result()  # fetched, or being fetched by a sibling right now
        try:
            future.set_result(fetch())
        except BaseException as exc:
            future.set_exception(exc)
            with self._lock:
                if self._pages.get(key, (0, None))[1] is future:
                    del self._pages[key]
            raise
        return future.result()


def scan_runs(nodes: list[Any], start: int, cursor: int,
              scan: Callable[[Any, int], ScanPage], select: Callable[[ScanPage], list[bytes]],
              size: int) -> Iterator[tuple[Any, list[bytes], dict[str, Any]]]:
    """(server, selected keys, cursor to resume after them) per run of SCAN calls, from
    server ``start`` at ``cursor`` on.

    A slice of the slots keeps few keys of each SCAN call: calls are gathered until they
    hold ``size`` keys, so reads still go out in big pipelines.
    """
    for index in range(start, len(nodes)):
        keys: list[bytes] = []
        while True:
            page = scan(nodes[index], cursor)
            cursor = page.cursor
            keys = keys + select(page) if keys else select(page)
            if cursor and len(keys) < size:
                continue
            if cursor:
                at: dict[str, Any] = {"node": index, "scan": cursor, "nodes": len(nodes)}
            elif index + 1 < len(nodes):
                at = {"node": index + 1, "scan": 0, "nodes": len(nodes)}
            else:
                at = {"done": True}
            yield nodes[index], keys, at
            keys = []
            if not cursor:
                break


def key_command(name: str, *after: Any) -> bytes:
    """A RESP template for ``name <key> *after``: ``template % (len(key), key)`` packs one.

    Formatting a template costs a tenth of ``pack_command``, which matters when every key
    of a database gets a command or two.
    """
    head = pack_command((name, "\x00", *after))
    prefix, _, rest = head.partition(b"$1\r\n\x00\r\n")
    return prefix.replace(b"%", b"%%") + b"$%d\r\n%s\r\n" + rest.replace(b"%", b"%%")


def run_commands(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` to one server as one pipeline; replies in order, errors as values."""
    return _exchange([(client, b"".join([pack_command(c) for c in commands]), len(commands))])[0]


def run_packed(client: Any, packed: bytes, count: int) -> list[Any]:
    """Like ``run_commands`` for ``count`` commands already packed into ``packed``."""
    return _exchange([(client, packed, count)])[0]


def _exchange(work: list[tuple[Any, bytes, int]]) -> list[list[Any]]:
    """Send each server its packed commands, then read every server's replies.

    redis-py's Pipeline spends more time per command than the server spends on a DUMP or
    RESTORE; packing with hiredis and reading replies straight off pooled connections is
    what keeps a copy near MIGRATE's speed. Sending to every server before reading lets a
    cluster's masters work at the same time.
    """
    taken: list[tuple[Any, Any]] = []
    try:
        for client, packed, count in work:
            conn = client.connection_pool.get_connection()
            taken.append((client, conn))
            if count:
                conn.send_packed_command([packed])
        return [_receive(conn, count) if count else []
                for (_, conn), (_, _, count) in zip(taken, work, strict=True)]
    except BaseException:
        for _, conn in taken:
            conn.disconnect()  # unread replies would answer the next user's commands
        raise
    finally:
        for client, conn in taken:
            client.connection_pool.release(conn)


def run_routed(route: Callable[[bytes], Any], keyed: list[tuple[bytes, tuple[Any, ...]]]
               ) -> list[Any]:
    """Replies of ``(key, command)``s, each sent to the server ``route(key)`` names."""
    servers: dict[int, tuple[Any, list[tuple[Any, ...]], list[int]]] = {}
    for i, (key, command) in enumerate(keyed):
        client = route(key)
        _, commands, positions = servers.setdefault(id(client), (client, [], []))
        commands.append(command)
        positions.append(i)
    replies: list[Any] = [None] * len(keyed)
    answers = _exchange([(client, b"".join([pack_command(c) for c in commands]), len(commands))
                         for client, commands, _ in servers.values()])
    for (_, _, positions), got in zip(servers.values(), answers, strict=True):
        for i, reply in zip(positions, got, strict=True):
            replies[i] = reply
    return replies


def read_ahead(pages: Iterator[tuple[Any, list[bytes], dict[str, Any]]],
               read: Callable[[Any, list[bytes]], Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``read(server, keys)`` of each page, in SCAN order, with pages read ahead.

    Pages are read on other pooled connections while SCAN goes on, so the server
    never idles waiting for us; results still come back strictly in SCAN order.
    """
    inflight: deque[tuple[Future, dict[str, Any]]] = deque()
    with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="redis-read") as pool:
        try:
            for page in itertools.chain(pages, [None]):
                if page is not None:
                    client, keys, at = page
                    inflight.append((pool.submit(read, client, keys), at))
                while inflight and (page is None or len(inflight) > READ_AHEAD):
                    future, at = inflight.popleft()
                    yield future.result(), at
        finally:
            for future, _ in inflight:
                future.cancel()


def _receive(conn: Any, count: int) -> list[Any]:
    sock = getattr(conn, "_sock", None)
    buffered = getattr(getattr(conn, "_parser", None), "_reader", None)
    if sock is not None and buffered is not None and not buffered.has_data():
        return _read_replies(sock, count, conn)
    replies: list[Any] = []  # no hiredis parser underneath: redis-py reads them one by one
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # the reply was read; the stream is in step
            replies.append(exc)
    return replies


def _read_replies(sock: socket.socket, count: int, conn: Any) -> list[Any]:
    """``count`` replies parsed by hiredis straight off the socket, errors as exceptions.

    Half the client-side cost of a copy is redis-py's per-reply bookkeeping; hiredis
    parses a whole pipeline's worth in C. Errors get redis-py's classes (NOPERM, MOVED).
    """
    reader = hiredis.Reader(replyError=BaseParser.parse_error)
    replies: list[Any] = []
    gets, append = reader.gets, replies.append
    data, fed = b"", 0
    while count:
        reply = gets()
        if reply is not False:
            append(reply)
            count -= 1
            continue
        if fed < len(data):
            # hiredis moves its unread buffer to the front after each KiB of replies it
            # hands out: fed a MiB at once, small replies would cost quadratic copying.
            reader.feed(data, fed, min(FEED, len(data) - fed))
            fed += FEED
            continue
        try:
            data, fed = sock.recv(1 << 20), 0
        except TimeoutError as exc:
            raise RedisTimeoutError(f"timeout reading from {conn.host}:{conn.port}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"error reading from {conn.host}:{conn.port}: "
                                       f"{exc}") from exc
        if not data:
            raise RedisConnectionError(f"{conn.host}:{conn.port} closed the connection")
    return replies


class KeyListings:
    """The keys of recently scanned units by hash slot, so that listing many chunks of a
    unit (a verify whose chunk digests disagree) scans the unit once, not once per chunk.

    A unit's listing is dropped when its digest is taken again (a new verify pass), when
    it is older than ``max_age`` seconds, and oldest first beyond ``limit`` keys in all. A
    slot range is handed out once; asking for it again means listing the unit afresh.
    """

    def __init__(self, limit: int = 1_000_000, max_age: float = 600.0) -> None:
        self.limit, self.max_age = limit, max_age
        # unit -> (scan start, keys by slot, slots handed out: one byte a slot)
        self._units: OrderedDict[str, tuple[float, dict[int, list[bytes]], bytearray]] = \
            OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def forget(self, unit: str) -> None:
        with self._lock:
            entry = self._units.pop(unit, None)
            if entry is not None:
                self._size -= sum(map(len, entry[1].values()))

    def take(self, unit: str, lo: int, hi: int) -> list[bytes] | None:
        """The keys of slots lo..hi, or None when the unit is not (or no longer) listed."""
        with self._lock:
            entry = self._units.get(unit)
            if entry is None or time.monotonic() - entry[0] > self.max_age or any(
                    entry[2][lo:hi + 1]):
                return None
            entry[2][lo:hi + 1] = b"\x01" * (hi - lo + 1)
            keys = [k for slot in range(lo, hi + 1) for k in entry[1].pop(slot, ())]
            self._size -= len(keys)
            return keys

    def put(self, unit: str, started: float, by_slot: dict[int, list[bytes]],
            taken: tuple[int, int]) -> None:
        """Keep the listing of ``unit`` made by a scan begun at ``started``, less ``taken``."""
        self.forget(unit)
        size = sum(map(len, by_slot.values()))
        if size > self.limit:
            return
        handed = bytearray(SLOTS)
        handed[taken[0]:taken[1] + 1] = b"\x01" * (taken[1] - taken[0] + 1)
        with self._lock:
            self._units[unit] = (started, by_slot, handed)
            self._size += size
            while self._size > self.limit and len(self._units) > 1:
                _, (_, dropped, _) = self._units.popitem(last=False)
                self._size -= sum(map(len, dropped.values()))
