"""One archive file: plain bytes -> zstd -> age (when encrypted) -> SHA-256 -> storage.

Each file is a standalone zstd frame (with its content checksum), optionally wrapped in
an age file, so ``age -d -i KEY f.zst.age | zstd -d`` restores it without this tool.
The SHA-256 is of the bytes as stored, so ``check --read-data`` needs no key to find a
changed byte, and ``sha256sum`` on the stored file gives the manifest's value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pyrage
import zstandard

from migrator.archive.backends import Backend
from migrator.archive.crypto import Cipher
from migrator.archive.manifest import FileEntry
from migrator.archive.streams import CHUNK, HashingReader, HashingSink, read_all
from migrator.errors import StoreError

ZSTD_SUFFIX = ".zst"


class ArchiveDamaged(StoreError):
    """A stored file is not what the manifest says (changed, truncated, undecryptable)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}",
                         hint="run `openim-migrate backup check ARCHIVE --read-data`")
        self.path = path
        self.problem = problem


class _Flushable:
    """zstandard's writer wants ``flush``; the sinks flush when they close."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write(self, data: bytes) -> int:
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        pass


class ArchiveFile:
    """A binary stream that compresses, encrypts and hashes as it writes. The file
    appears in the archive only on ``close()`` (or at the end of a ``with`` block without
    an error), which hands its ``FileEntry`` to ``on_close``."""

    def __init__(self, backend: Backend, path: str, cipher: Cipher, level: int, *,
                 name: str, meta: dict[str, Any] | None = None,
                 on_close: Callable[[FileEntry], None] | None = None) -> None:
        self.name = name
        self.path = path
        self.meta = dict(meta or {})
        self.plain_bytes = 0
        self.entry: FileEntry | None = None
        self._on_close = on_close
        self._hashed = HashingSink(backend.create(path))
        self._encrypted = cipher.encrypting(self._hashed)
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._zstd = compressor.stream_writer(cast(Any, _Flushable(self._encrypted)),
                                               closefd=False)
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._zstd.write(data)
        self.plain_bytes += len(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def close(self) -> FileEntry:
        if self.entry is not None:
            return self.entry
        if self._done:
            raise StoreError(f"{self.path}: written after it was aborted")
        self._done = True
        try:
            self._zstd.close()
        except BaseException:
            self._encrypted.abort()
            raise
        self._encrypted.close()
        self.entry = FileEntry(name=self.name, path=self.path, bytes=self._hashed.size,
                               plain_bytes=self.plain_bytes,
                               sha256=self._hashed.sha.hexdigest(), meta=self.meta)
        if self._on_close is not None:
            self._on_close(self.entry)
        return self.entry

    def abort(self) -> None:
        """Discard: nothing of this file becomes visible."""
        if self._done:
            return
        self._done = True
        self._encrypted.abort()

    def __enter__(self) -> ArchiveFile:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()


class ArchiveReader:
    """Plain bytes of a stored file. Damage (a changed byte, a truncated file, a wrong
    digest) raises ``ArchiveDamaged`` naming the stored path, at the latest at the end."""

    def __init__(self, backend: Backend, path: str, cipher: Cipher,
                 expected: FileEntry | None = None) -> None:
        self.path = path
        self._expected = expected
        self._raw = backend.open(path)
        self._hashed = HashingReader(self._raw, self._check_end)
        try:
            size = expected.bytes if expected else backend.size(path) or 0
            self._plain = cipher.decrypting(self._hashed, size)
            self._stream = zstandard.ZstdDecompressor().stream_reader(
                cast(Any, self._plain), read_across_frames=True, closefd=False)
        except BaseException as exc:
            self.close()
            raise self._damage(exc) from exc

    def _check_end(self, sha256: str, size: int) -> None:
        want = self._expected
        if want is None:
            return
        if size != want.bytes:
            raise ArchiveDamaged(self.path, f"{size} bytes stored, the manifest says "
                                 f"{want.bytes} (truncated?)")
        if sha256 != want.sha256:
            raise ArchiveDamaged(self.path, "its SHA-256 differs from the manifest's")

    def _damage(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ArchiveDamaged) or not isinstance(
                exc, (zstandard.ZstdError, pyrage.DecryptError, OSError, ValueError)):
            return exc
        if isinstance(exc, zstandard.ZstdError):
            return ArchiveDamaged(self.path, f"not valid zstd data ({exc})")
        return ArchiveDamaged(self.path, f"cannot be decrypted ({exc})")

    def read(self, size: int = -1) -> bytes:
        try:
            if size is None or size < 0:
                return read_all(_Chunked(self))
            data = self._stream.read(size)
            if not data:
                read_all(self._hashed)  # reach the end of the stored bytes: check them
            return data
        except BaseException as exc:
            raise self._damage(exc) from exc

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        for part in (getattr(self, "_plain", None), self._raw):
            close = getattr(part, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing must not mask the real error
                    pass

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Chunked:
    def __init__(self, reader: ArchiveReader) -> None:
        self.reader = reader

    def read(self, size: int = -1) -> bytes:
        return self.reader.read(CHUNK)


def write_json(backend: Backend, path: str, cipher: Cipher, level: int, data: Any) -> FileEntry:
    with ArchiveFile(backend, path, cipher, level, name=path.rsplit("/", 1)[-1]) as file:
        file.write(json.dumps(data, indent=1, sort_keys=True).encode())
    assert file.entry is not None
    return file.entry


def read_json(backend: Backend, path: str, cipher: Cipher) -> Any:
    with ArchiveReader(backend, path, cipher) as reader:
        data = reader.read()
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArchiveDamaged(path, f"not valid JSON ({exc})") from exc
