"""Where archive files are stored: a directory or an S3 prefix, behind one small interface.

The contract (what the rest of the archive relies on):

* Names are relative, ``/``-separated, and never contain empty, ``.`` or ``..`` parts.
* ``create(name)`` returns a ``Sink``; the file becomes visible under ``name`` only when the
  sink is closed, complete, replacing any earlier file of that name. ``abort()`` leaves
  nothing visible. So a reader never sees half a file, which is what makes "the manifest
  is written last" an atomic commit.
* ``open(name)`` streams a file's bytes; ``size(name)`` is None when it does not exist.
* ``files(prefix)`` yields ``(name, size)`` of every file under ``prefix``, in name order.
* ``delete(name)`` removes a file; an absent one is no error.
* ``sync()`` makes every file closed so far durable, before a commit point.

Errors are the project's: an unreachable or refusing service is an ``EndpointError``
(exit 4) naming the archive; retries belong to the engine, not here.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrator.archive.location import FILE, Location
from migrator.archive.streams import PullBridge, Readable, Sink
from migrator.errors import EndpointError, MigrateError, PlanError, StoreError

if TYPE_CHECKING:
    from migrator.stores.objects import ObjectStore

TMP_MARK = ".tmp-"  # in-progress files of the file backend: never listed


def check_name(name: str) -> str:
    """Refuse a name that could escape the archive's root or alias another file."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise StoreError(f"archive file name {name!r} has an empty, '.' or '..' part")
    return name


class Backend(ABC):
    def __init__(self, location: Location) -> None:
        self.location = location

    @property
    def label(self) -> str:
        return self.location.label

    @abstractmethod
    def create(self, name: str) -> Sink: ...

    @abstractmethod
    def open(self, name: str) -> Readable: ...

    @abstractmethod
    def size(self, name: str) -> int | None: ...

    @abstractmethod
    def files(self, prefix: str = "") -> Iterator[tuple[str, int]]: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def sync(self) -> None:  # noqa: B027 - most backends are durable on close
        """Make every closed file durable."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def write_bytes(self, name: str, data: bytes) -> None:
        sink = self.create(name)
        try:
            sink.write(data)
        except BaseException:
            sink.abort()
            raise
        sink.close()

    def read_bytes(self, name: str) -> bytes:
        stream = self.open(name)
        try:
            return stream.read(-1)
        finally:
            getattr(stream, "close", lambda: None)()


# -- a directory ----------------------------------------------------------------------
class _FileSink:
    """Writes ``<dir>/.tmp-<random>-<name>``, then fsync and rename onto the name."""

    def __init__(self, backend: FileBackend, path: Path) -> None:
        self._backend = backend
        self._path = path
        self._tmp = path.with_name(f"{TMP_MARK}{uuid.uuid4().hex[:12]}-{path.name}")
        with backend.errors(f"create {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close/abort

    def write(self, data: bytes) -> int:
        with self._backend.errors(f"write {self._path}"):
            return self._file.write(data)

    def close(self) -> None:
        with self._backend.errors(f"write {self._path}"):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
        self._backend.touched(self._path.parent)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class FileBackend(Backend):
    def __init__(self, location: Location) -> None:
        super().__init__(location)
        assert location.path is not None
        self.root = location.path
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()

    def errors(self, what: str) -> Any:
        return _FileErrors(self, what)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def create(self, name: str) -> Sink:
        return _FileSink(self, self._path(name))

    def open(self, name: str) -> Readable:
        with self.errors(f"read {name}"):
            try:
                return open(self._path(name), "rb")  # noqa: SIM115 - the caller closes it
            except FileNotFoundError:
                raise StoreError(f"{self.label}: {name} is missing") from None

    def size(self, name: str) -> int | None:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"stat {name}", exc) from exc

    def files(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return
        found = []
        with self.errors(f"list {prefix or '/'}"):
            for dirpath, _, filenames in os.walk(base):
                for filename in filenames:
                    if filename.startswith(TMP_MARK):
                        continue
                    path = Path(dirpath, filename)
                    found.append((path.relative_to(self.root).as_posix(),
                                  path.stat().st_size))
        yield from sorted(found)

    def list_tmp(self, prefix: str = "") -> list[str]:
        """Leftovers of writes that never finished (a killed writer)."""
        base = self.root / prefix.rstrip("/") if prefix else self.root
        return sorted(Path(d, f).relative_to(self.root).as_posix()
                      for d, _, files in os.walk(base) for f in files
                      if f.startswith(TMP_MARK))

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self.errors(f"delete {name}"):
            path.unlink(missing_ok=True)
            for parent in path.parents:  # drop directories left empty, up to the root
                if parent == self.root or not parent.is_relative_to(self.root):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    def touched(self, directory: Path) -> None:
        with self._lock:
            self._dirs.add(directory)

    def sync(self) -> None:
        """fsync the directories whose entries changed, so renames survive a crash."""
        with self._lock:
            dirs, self._dirs = self._dirs, set()
        for directory in sorted(dirs):
            with self.errors(f"sync {directory}"):
                fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def _fail(self, what: str, exc: OSError) -> MigrateError:
        if isinstance(exc, PermissionError):
            return EndpointError(self.label, f"{what}: permission denied",
                                 hint="check the directory's owner and mode")
        return StoreError(f"{self.label}: {what}: {exc.strerror or exc}")


class _FileErrors:
    def __init__(self, backend: FileBackend, what: str) -> None:
        self.backend, self.what = backend, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise self.backend._fail(self.what, exc) from exc


# -- an S3 prefix ---------------------------------------------------------------------
class S3Backend(Backend):
    """Through the objects store's client: the same URL rules, credentials, TLS options and
    error translation as a bucket being migrated. Never creates the bucket."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        from migrator.stores.objects import ObjectStore

        self.store: ObjectStore = ObjectStore(location.objects_endpoint())
        self.bucket = location.bucket
        self.prefix = location.prefix

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def create(self, name: str) -> Sink:
        key = self._key(name)
        client, part = self.store.client, self.store.part_size

        def whole(data: bytes) -> None:
            with self.store._errors(f"put {key}"):
                client.put_object(self.bucket, key, io.BytesIO(data), len(data))

        def stream(reader: Readable) -> None:
            with self.store._errors(f"put {key}"):
                client.put_object(self.bucket, key, reader, -1, part_size=part,  # type: ignore[arg-type]
                                  num_parallel_uploads=1)

        # Up to one part is buffered; beyond that, a multipart upload streams it.
        return PullBridge(whole, stream, threshold=part, name=f"archive-put {name}")

    def open(self, name: str) -> Readable:
        key = self._key(name)
        with self.store._errors(f"get {key}"):
            response = self.store.client.get_object(self.bucket, key)
        return _Response(response)

    def size(self, name: str) -> int | None:
        record = self.store.stat(self.bucket, self._key(name))
        return None if record is None else record.size

    def files(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        start = self.prefix + prefix
        with self.store._errors(f"list {start or '/'}"):
            for obj in self.store.client.list_objects(self.bucket, prefix=start or None,
                                                      recursive=True):
                yield obj.object_name[len(self.prefix):], int(obj.size or 0)

    def delete(self, name: str) -> None:
        key = self._key(name)
        with self.store._errors(f"delete {key}"):
            self.store.client.remove_object(self.bucket, key)

    def check_bucket(self) -> None:
        """A bucket that does not exist is the wrong place, said as such (exit 4)."""
        with self.store._errors(f"check bucket {self.bucket}"):
            exists = self.store.client.bucket_exists(self.bucket)
        if not exists:
            raise self.store.endpoint.fail(f"bucket '{self.bucket}' does not exist",
                                           hint="create it first (the archive never "
                                           "creates buckets), or fix the URL")

    def close(self) -> None:
        self.store.close()


class _Response:
    """An S3 GET as a readable that releases its connection on close."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def read(self, size: int = -1) -> bytes:
        return self._response.read(None if size is None or size < 0 else size)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


def open_backend(location: Location) -> Backend:
    if location.scheme == FILE:
        return FileBackend(location)
    backend = S3Backend(location)
    try:
        backend.check_bucket()
    except BaseException:
        backend.close()
        raise
    return backend


def refuse_missing_root(backend: Backend) -> None:
    """A directory archive whose parent does not exist is a typo, not a new archive."""
    if isinstance(backend, FileBackend) and not backend.root.parent.is_dir():
        raise PlanError(f"{backend.location.endpoint.name or 'archive'}.url",
                        f"the directory {backend.root.parent} does not exist",
                        hint="create it first, or fix the path")
