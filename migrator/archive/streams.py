"""Byte-stream plumbing for archive files: hashing, and bridges between push and pull.

A store's archive format *pushes* bytes (``write``); pyrage's ``encrypt_io`` and minio's
``put_object`` *pull* theirs (``read``). ``PullBridge`` joins the two through a bounded
queue and one thread, started only once a file outgrows a small buffer, so the many small
files of an archive (object sidecars, records) cost no thread at all and memory stays
bounded for the large ones. ``PushBridge`` is the reverse, for reading.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

CHUNK = 1 << 20  # one queue item: 1 MiB
DEPTH = 8  # queue items in flight between the two sides of a bridge


class Sink(Protocol):
    """Where a writer pushes bytes; ``close`` finishes the file, ``abort`` discards it."""

    def write(self, data: bytes) -> int: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class HashingSink:
    """Counts and SHA-256-hashes what passes through to ``inner``."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        """pyrage calls this; the inner sink flushes when it closes."""

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


class HashingReader:
    """Counts and SHA-256-hashes what is read from ``inner``; at the end of the stream
    ``on_end(sha256_hex, size)`` may raise, so damage is reported by whoever reads."""

    def __init__(self, inner: Any, on_end: Callable[[str, int], None] | None = None) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0
        self._on_end = on_end
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        if data:
            self.sha.update(data)
            self.size += len(data)
        elif not self._ended:
            self._ended = True
            if self._on_end is not None:
                self._on_end(self.sha.hexdigest(), self.size)
        return bytes(data)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class _Aborted(Exception):
    """Raised inside a bridge's consumer when the writer gave up."""


_END = object()


class _QueueReader:
    """The pull side of a bridge: ``read`` takes from ``pending`` first, then the queue."""

    def __init__(self, pending: list[bytes], items: queue.Queue) -> None:
        self._buffer = b"".join(pending)
        self._items = items
        self._done = False

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and not self._done:
            item = self._items.get()
            if item is _END:
                self._done = True
            elif isinstance(item, BaseException):
                raise item
            else:
                self._buffer = item
        if size is None or size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class PullBridge:
    """A ``Sink`` whose bytes are consumed by a function that pulls them.

    Up to ``threshold`` bytes are only buffered; a file that ends before that is handed
    whole to ``whole(data)``. A larger one starts ``stream(reader)`` in a thread, fed
    through a queue of at most ``DEPTH`` items. An error in the consumer surfaces on the
    writer's next ``write`` or ``close``.
    """

    def __init__(self, whole: Callable[[bytes], None], stream: Callable[[Readable], None],
                 *, threshold: int = CHUNK, name: str = "archive-bridge") -> None:
        self._whole = whole
        self._stream = stream
        self._threshold = threshold
        self._name = name
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._items: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, data: bytes) -> int:
        data = bytes(data)
        if self._thread is None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > self._threshold:
                self._start()
            return len(data)
        for start in range(0, len(data), CHUNK):
            self._put(data[start:start + CHUNK])
        return len(data)

    def flush(self) -> None:
        """Nothing to do: data moves on ``write`` and ``close``."""

    def _start(self) -> None:
        reader = _QueueReader(self._pending, self._items)
        self._pending = []

        def consume() -> None:
            try:
                self._stream(reader)
            except BaseException as exc:  # noqa: BLE001 - handed to the writer
                self._error = exc
                # Unblock a writer waiting on a full queue.
                while True:
                    try:
                        self._items.get_nowait()
                    except queue.Empty:
                        break

        self._thread = threading.Thread(target=consume, name=self._name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        assert self._thread is not None
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._items.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise self._error or RuntimeError(f"{self._name} stopped") from None

    def close(self) -> None:
        if self._thread is None:
            data, self._pending = b"".join(self._pending), []
            self._whole(data)
            return
        try:
            self._put(_END)
        finally:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._thread is None:
            self._pending = []
            return
        try:
            self._put(_Aborted("the writer gave up"))
        except BaseException:  # noqa: BLE001 - the consumer already failed: fine
            pass
        self._thread.join()


class PushBridge:
    """The reverse of ``PullBridge``: ``produce(writer)`` pushes bytes (pyrage's
    ``decrypt_io``) in a thread, and whoever holds this object pulls them with ``read``."""

    def __init__(self, produce: Callable[[Any], None], *, name: str = "archive-bridge") -> None:
        self._items: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._cancel = threading.Event()
        self._reader = _QueueReader([], self._items)
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name,
                                        daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[Any], None]) -> None:
        bridge = self

        class Writer:
            def write(self, data: bytes) -> int:
                bridge._offer(bytes(data))
                return len(data)

            def flush(self) -> None:
                pass

        try:
            produce(Writer())
            self._offer(_END)
        except _Aborted:
            return  # the reader closed early: nobody is waiting for the rest
        except BaseException as exc:  # noqa: BLE001 - raised to the reader
            try:
                self._offer(exc)
            except _Aborted:
                return

    def _offer(self, item: object) -> None:
        while not self._cancel.is_set():
            try:
                self._items.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Aborted("the reader closed the stream")

    def read(self, size: int = -1) -> bytes:
        return self._reader.read(size)

    def close(self) -> None:
        self._cancel.set()
        self._thread.join(timeout=30)


def read_all(stream: Readable | BinaryIO) -> bytes:
    """Everything left in ``stream`` (for small files: records, manifests)."""
    parts: list[bytes] = []
    while True:
        data = stream.read(CHUNK)
        if not data:
            return b"".join(parts)
        parts.append(data)
