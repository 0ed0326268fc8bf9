"""An in-memory store and a fault-injecting wrapper, for engine logic only (retry, resume,
partial failure). Every real store is tested against its real server elsewhere."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from migrator.errors import StoreError, TransientError
from migrator.stores.base import (
    Batch,
    Capabilities,
    Chunk,
    ChunkDigest,
    Importer,
    Role,
    Store,
    Unit,
    record_hash,
)

# name of the "server" (the URL's host) -> unit name -> key -> value
SERVERS: dict[str, dict[str, dict[str, str]]] = {}
FAULTS: dict[str, list[Any]] = {}  # server -> actions consumed by write_batch, see below
DEFINITIONS: dict[str, dict[str, Any]] = {}  # server -> store-level objects (like views)
LOCK = threading.Lock()


class MemoryStore(Store):
    kind = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(wire_format="python strings")

    def open(self) -> None:
        self.server = self.endpoint.connection().host
        with LOCK:
            self.data = SERVERS.setdefault(self.server, {})

    def close(self) -> None:
        pass

    def check_access(self, role: Role) -> None:
        pass

    def definitions(self, units: list[Unit]) -> dict[str, Any]:
        return dict(DEFINITIONS.get(self.server, {}))

    def list_units(self) -> list[Unit]:
        return [Unit("memory", name, {}, len(keys), sum(map(len, keys.values())))
                for name, keys in sorted(self.data.items())]

    def export(self, unit: Unit, resume_from: Any = None) -> Iterator[Batch]:
        keys = sorted(k for k in self.data.get(unit.name, {}) if resume_from is None
                      or k > resume_from)
        size = self.options.batch_records
        for i in range(0, len(keys), size):
            part = keys[i:i + size]
            yield Batch([(k, self.data[unit.name][k]) for k in part], part[-1],
                        sum(len(self.data[unit.name][k]) for k in part))

    def existing(self, units: list[Unit]) -> list[str]:
        return [u.key for u in units if self.data.get(u.name)]

    def importer(self, unit: Unit) -> Importer:
        return MemoryImporter(self, unit)

    def fetch(self, unit: Unit, keys: list[str]) -> Batch:
        values = self.data.get(unit.name, {})
        records = [(k, values[k]) for k in keys if k in values]
        return Batch(records, None, sum(len(v) for _, v in records))

    def delete(self, unit: Unit, keys: list[str]) -> None:
        for key in keys:
            self.data.get(unit.name, {}).pop(key, None)

    def chunks(self, unit: Unit) -> list[Chunk]:
        return [Chunk("lo", ["", "m"]), Chunk("hi", ["m", None])]

    def _in(self, key: str, chunk: Chunk) -> bool:
        lo, hi = chunk.bounds
        return key >= lo and (hi is None or key < hi)

    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]:
        out = {c.id: ChunkDigest() for c in chunks}
        for key, value in self.data.get(unit.name, {}).items():
            for c in chunks:
                if self._in(key, c):
                    out[c.id].add(record_hash(key.encode(), value.encode()))
        return out

    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        for key, value in sorted(self.data.get(unit.name, {}).items()):
            if self._in(key, chunk):
                yield key, value


class MemoryImporter(Importer):
    def __init__(self, store: MemoryStore, unit: Unit) -> None:
        self.store, self.unit = store, unit
        self.batches = 0

    def write_batch(self, batch: Batch) -> None:
        with LOCK:
            faults = FAULTS.get(self.store.server, [])
            action = faults.pop(0) if faults else None
        if action == "transient":
            raise TransientError("injected: connection reset")
        if action == "terminal":
            raise StoreError("injected: disk full")
        if action == "kill-after-write":
            self._write(batch)
            raise KeyboardInterrupt  # as if the process died between write and checkpoint
        self._write(batch)

    def _write(self, batch: Batch) -> None:
        target = self.store.data.setdefault(self.unit.name, {})
        for key, value in batch.records:
            target[key] = value
