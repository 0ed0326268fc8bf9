"""The store interface and the data that flows through it.

A store is one kind of data service (redis, mysql, mongo, objects). The engine only ever
talks to this interface, so adding a store means adding one module and one registry line.

Contract, in words:

* ``Store(endpoint, selection, options)`` never touches the network; ``open()`` does.
* ``check_access(role)`` proves the credentials can do what that role needs: a source
  needs read rights only, a target needs write rights. It raises ``EndpointError``.
* ``list_units()`` (source side) returns the units to copy, with size estimates.
  A unit's ``spec`` is plain JSON data, so it can be written to the plan and read back.
* ``existing(units)`` (target side) names the units that already hold data.
* ``prepare_target(units)`` / ``finalize_target(units)`` run once per run around the copy
  (schemas and collections before; secondary indexes after). Both are idempotent.
* ``export(unit, resume_from)`` yields ``Batch``es in a stable order; each batch carries
  the cursor reached *after* it. Passing that cursor back resumes right after the batch.
* ``importer(unit)`` returns an ``Importer``. Writing the same batch twice (a crash between
  the write and the journal's checkpoint) must leave the target exactly as writing it once.
  An importer may append to ``batch.skipped`` (e.g. a key that expired before it arrived).
* A unit whose ``spec["resumable"]`` is False (e.g. a table without a primary key) is
  always copied from the start: the engine passes no cursor and ``prepare(resumed=False)``.
* ``chunks(unit)`` (source side) cuts a unit into chunks that cover its whole key space, so
  a record that exists only on the target still falls into some chunk.
  ``digest(unit, chunks)`` computes, on whichever side the store is, a ``ChunkDigest`` per
  chunk: record count plus an order-independent combination of per-record hashes.
  ``records(unit, chunk)`` lists ``(key, fingerprint)`` of one chunk, to name the records
  that differ once the digests disagree; ``same_record`` compares two fingerprints (a store
  with tolerances, e.g. Redis TTLs, overrides it).
* ``record_hashes(unit, chunk)`` (optional) hands out the cheap per-record hashes the
  digest sums, so a chunk whose digests disagree is narrowed to the keys whose hashes
  differ before any canonical read; ``records_of(unit, keys)`` is ``records`` for those
  keys only. A store offers both or neither (the engine then lists whole chunks).
* ``schema(unit)`` returns the definitions that must match besides data (columns,
  indexes, options) as JSON-like data, read live from the server (never from the plan);
  ``{}`` when the store has none.
* ``definitions(units)`` returns the store-level objects that belong to no unit (MySQL views,
  triggers, routines, events; MongoDB views; bucket policy, versioning, lifecycle) as
  JSON-like data named the way the *source* names them, so the two sides compare as data.

Coverage, so that EQUAL can never hide what the plan does not list:

* ``SPEC_SCHEMA`` / ``OPTION_SCHEMA`` are JSON Schemas of a unit's ``spec`` and of the
  endpoint options; the plan is checked against them on load, before anything connects.
* ``check_endpoint(endpoint, role)`` (class method, no network) refuses a URL this store
  cannot honour exactly: wrong scheme, empty host, port 0, a path or query it would ignore.
* ``uncovered(units)`` (class method, no network) names the gaps in the units' key ranges:
  units of one container must tile its whole key space, or the plan was narrowed.
* ``unlisted(units)`` (source side, live) names what the selection holds now that no unit
  covers: a table, collection, DB or bucket created after ``plan``.
* ``adapt_units(units, source)`` (target side, at plan time) may regroup the source's units
  for this target (e.g. several Redis DBs merged into one) and refuse what cannot work.
Catch-up (``sync``), so a target can be brought up to date chunk by chunk:

* ``fetch(unit, keys)`` (source side) returns one ``Batch`` with the records named by
  ``records()`` keys, in the wire form the importer takes; keys gone meanwhile are absent.
* ``delete(unit, keys)`` (target side) removes those records; absent keys are no error.

Write freeze (``cutover``), where the source's account allows a server-side guard:

* ``freeze_check()`` (source side, reads only, run by ``plan``) returns None when this
  account can hold writes on the server, else one line saying why not.
* ``has_freeze_guard()`` says whether the server has such a guard at all.
* ``freeze(seconds)`` holds writes for at most ``seconds`` (a guard that lapses by itself if
  the tool dies is preferred; one that does not, like MongoDB's fsyncLock, says so) and
  returns what it did, for the log; ``unfreeze()`` undoes it and is harmless when nothing
  is held. A store without a guard raises CapabilityMissing:
  its freeze then relies on OpenIM's writers being stopped.

* Stores raise only ``migrator.errors`` exceptions, marked transient or terminal.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from abc import ABC, abstractmethod
from array import array
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from migrator.config import Endpoint
from migrator.errors import CapabilityMissing

Cursor = Any  # JSON-serialisable position inside a unit; None means "from the start"

HASH_BITS = 128
HASH_MASK = (1 << HASH_BITS) - 1


def packed_sum(packed: bytes | bytearray) -> int:
    """The sum mod 2**128 of 128-bit little-endian hashes packed 16 bytes each: a chunk's
    ``ChunkDigest.hash`` summed by C loops over 64-bit halves, not one int per record."""
    halves = array("Q", packed)
    if sys.byteorder != "little":
        halves.byteswap()
    return (sum(halves[0::2]) + (sum(halves[1::2]) << 64)) & HASH_MASK


class Role(StrEnum):
    SOURCE = "source"
    TARGET = "target"


@dataclass(frozen=True)
class Capabilities:
    """What a store (or the server behind it) can do, declared as data."""

    snapshot_reads: bool = False
    server_side_checksum: bool = False
    ttls: bool = False
    resumable_units: bool = True
    wire_format: str = ""  # what travels in batches, e.g. "redis DUMP payloads"


@dataclass(frozen=True)
class Unit:
    """The smallest piece copied, checkpointed and verified on its own."""

    store: str
    name: str
    spec: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    records: int = 0  # estimate at plan time
    bytes: int = 0  # estimate at plan time

    @property
    def key(self) -> str:
        return f"{self.store}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "name": self.name, "spec": self.spec,
                "records": self.records, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Unit:
        return cls(store=data["store"], name=data["name"], spec=dict(data.get("spec") or {}),
                   records=int(data.get("records") or 0), bytes=int(data.get("bytes") or 0))


@dataclass
class Batch:
    """Records in the store's wire form, plus the cursor reached after them."""

    records: list[Any]
    cursor: Cursor
    nbytes: int = 0
    # Records the exporter saw but could not copy for a harmless reason (e.g. a Redis
    # key that expired between SCAN and DUMP). Reported, never an error.
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Chunk:
    """A slice of a unit's key space; ``bounds`` is store-specific JSON data."""

    id: str
    bounds: Any = None


@dataclass
class ChunkDigest:
    count: int = 0
    hash: int = 0  # sum of per-record hashes mod 2**128: order-independent, no cancellation

    def add(self, record_hash: int) -> None:
        self.count += 1
        self.hash = (self.hash + record_hash) & HASH_MASK

    def merge(self, other: ChunkDigest) -> None:
        self.count += other.count
        self.hash = (self.hash + other.hash) & HASH_MASK

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ChunkDigest) and self.count == other.count
                and self.hash == other.hash)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "hash": f"{self.hash:032x}"}


def record_hash(*parts: bytes) -> int:
    """A 128-bit hash of one record; parts are length-prefixed so boundaries count."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little")


class Importer(ABC):
    """Writes one unit's batches into a target; replaying a batch must be harmless."""

    def prepare(self, resumed: bool) -> None:  # noqa: B027 - optional hook
        """Called once before the first batch; ``resumed`` is True after a checkpoint."""

    @abstractmethod
    def write_batch(self, batch: Batch) -> None: ...

    def finalize(self) -> None:  # noqa: B027 - optional hook
        """Called after the last batch of the unit was written."""


@dataclass(frozen=True)
class Selection:
    """Which parts of a store take part: include/exclude patterns and a named preset."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


DEFAULT_UNIT_RECORDS = 200_000


@dataclass(frozen=True)
class StoreOptions:
    batch_records: int = 1000
    batch_bytes: int = 8 << 20
    chunk_records: int = 10_000  # verification chunk size
    # A unit above this is split where the store can split; None: the store's default
    # (``split_records``), which is what a plan gets unless it names a number.
    unit_records: int | None = None
    on_existing: str = "fail"  # fail | overwrite | skip
    ttl_tolerance_ms: int = 1000
    parallel: int = 4  # units at once: stores size their unit split and connections by it

    @property
    def split_records(self) -> int:
        return self.unit_records or DEFAULT_UNIT_RECORDS


class RecordMemo:
    """Per-record hashes a digest computed, kept by unit and chunk, so that the drill-down
    of a chunk whose digests disagree (``record_hashes``) does not read it again. A chunk
    is handed out once; a unit's hashes go with its next digest, when older than
    ``max_age`` seconds, and oldest first beyond ``limit`` records in all; a digest over
    more than ``limit`` records keeps none. Here a unit's payload is ``{chunk id: {record:
    hash}}``; a store may keep a more compact one and say how to cut a chunk out of it
    (``_split``)."""

    def __init__(self, limit: int = 500_000, max_age: float = 600.0) -> None:
        self.limit, self.max_age = limit, max_age
        self._units: OrderedDict[str, list[Any]] = OrderedDict()  # [started, payload, size]
        self._size = 0
        self._lock = threading.Lock()

    def forget(self, unit: str) -> None:
        with self._lock:
            kept = self._units.pop(unit, None)
            if kept is not None:
                self._size -= kept[2]

    def put(self, unit: str, started: float, payload: Any, size: int) -> None:
        self.forget(unit)
        if size > self.limit:
            return
        with self._lock:
            self._units[unit] = [started, payload, size]
            self._size += size
            while self._size > self.limit and len(self._units) > 1:
                self._size -= self._units.popitem(last=False)[1][2]

    def take(self, unit: str, chunk: str) -> Any | None:
        """One chunk's hashes, or None when not kept (or handed out before)."""
        with self._lock:
            kept = self._units.get(unit)
            if kept is None or time.monotonic() - kept[0] > self.max_age:
                return None
            out, taken = self._split(kept[1], chunk)
            kept[2] -= taken
            self._size -= taken
            return out

    def _split(self, payload: Any, chunk: str) -> tuple[Any | None, int]:
        """(the chunk's hashes, how many records they are), removed from ``payload``."""
        got = payload.pop(chunk, None)
        return got, len(got or ())


class ChangeFeed(Protocol):
    """Changes a source noted since the feed started (see ``Store.follow``)."""

    why: str | None  # after a ``take`` that returned None: what made anything possible
    # True when ``take`` is complete by construction (a position or optime the server
    # names, an echo on the same ordered stream); False when it rests on timing. A pass
    # over an inexact feed is never taken as proof: the verify after it digests in full.
    exact: bool

    def take(self) -> Any:
        """What changed since the last call, complete up to the call; None when anything
        may have changed (e.g. a flush): then every chunk must be digested once more.
        Raises when it can no longer tell (a lost connection): the feed is done."""

    def close(self) -> None: ...


class Store(ABC):
    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, endpoint: Endpoint, selection: Selection | None = None,
                 options: StoreOptions | None = None) -> None:
        self.endpoint = endpoint
        self.selection = selection or Selection()
        self.options = options or StoreOptions()

    # -- lifecycle -------------------------------------------------------------------
    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def check_access(self, role: Role) -> None: ...

    def use_cache(self, cache: MutableMapping[Any, str]) -> None:  # noqa: B027
        """Receive a persistent mapping (kept in the journal) for facts that are expensive to
        recompute, such as streamed content hashes, so a second verify need not re-read."""

    def describe(self) -> dict[str, Any]:
        """Facts for the plan: server version, topology, ``notes`` (shown), ``warnings``
        (shown, and refused by ``plan --strict``: e.g. objects the account cannot see)."""
        return {}

    def notices(self) -> list[str]:
        """Things a copy did that an operator must know (e.g. a DEFINER rewritten because
        the account does not exist on the target); the engine journals and reports them."""
        return []

    # -- source side -----------------------------------------------------------------
    @abstractmethod
    def list_units(self) -> list[Unit]: ...

    @abstractmethod
    def export(self, unit: Unit, resume_from: Cursor = None) -> Iterator[Batch]: ...

    # -- target side -----------------------------------------------------------------
    @abstractmethod
    def existing(self, units: list[Unit]) -> list[str]: ...

    def prepare_target(self, units: list[Unit], source: Store) -> None:  # noqa: B027
        """Create what must exist before data arrives (schemas, collections)."""

    def finalize_target(self, units: list[Unit], source: Store) -> None:  # noqa: B027
        """Build what is faster after the data (secondary indexes)."""

    @abstractmethod
    def importer(self, unit: Unit) -> Importer: ...

    # -- verification ----------------------------------------------------------------
    @abstractmethod
    def chunks(self, unit: Unit) -> list[Chunk]: ...

    @abstractmethod
    def digest(self, unit: Unit, chunks: list[Chunk]) -> dict[str, ChunkDigest]: ...

    @abstractmethod
    def records(self, unit: Unit, chunk: Chunk) -> Iterator[tuple[str, Any]]: ...

    def same_record(self, source_fp: Any, target_fp: Any) -> bool:
        return source_fp == target_fp

    def record_hashes(self, unit: Unit, chunk: Chunk) -> dict[str, Any] | None:
        """``{key: hash}`` of one chunk, as cheap as the digest's own per-record hashes, or
        None when not offered (the engine then compares the chunk with ``records``).

        Why: listing a chunk canonically costs far more than hashing what the copy reads;
        most keys of a chunk whose digests disagree are equal. Contract: equal hashes of a
        key on both sides must imply ``same_record`` of its fingerprints; a hash of None
        means "compare this key canonically" (e.g. it cannot be told cheaply)."""
        return None

    def records_of(self, unit: Unit, keys: list[str]) -> Iterator[tuple[str, Any]]:
        """``records`` of the named keys only, present ones alone; offered with
        ``record_hashes``."""
        raise CapabilityMissing(f"the {self.kind} store cannot list single records")

    # -- write freeze ----------------------------------------------------------------
    def has_freeze_guard(self) -> bool:
        """Whether this server has a write guard at all (whatever the account may do): a
        cutover relies on stopped writers where it has none, and refuses to start where it
        has one the account lacks the rights for."""
        return type(self).freeze is not Store.freeze

    def freeze_check(self) -> str | None:
        """Source side, at plan time: None if ``freeze`` will work with this account."""
        return f"the {self.kind} store has no server-side write guard; stop the writers"

    def freeze(self, seconds: float) -> str:
        """Source side: hold writes on the server for at most ``seconds``."""
        raise CapabilityMissing(self.freeze_check() or f"{self.kind}: no write guard")

    def unfreeze(self) -> None:  # noqa: B027 - nothing held by default
        """Release what ``freeze`` holds; harmless when nothing is held."""

    # -- catch-up --------------------------------------------------------------------
    def fetch(self, unit: Unit, keys: list[str]) -> Batch:
        """Source side: the named records as one batch for the importer."""
        raise CapabilityMissing(f"the {self.kind} store cannot fetch single records yet; "
                                "`sync` is not available for it")

    def delete(self, unit: Unit, keys: list[str]) -> None:
        """Target side: remove the named records (absent ones are no error)."""
        raise CapabilityMissing(f"the {self.kind} store cannot delete single records yet; "
                                "`sync` is not available for it")

    def follow(self) -> ChangeFeed:
        """Source side: start noting which records change from now on, so that a later
        ``sync`` pass reads only those instead of digesting every chunk. Raises
        ``CapabilityMissing`` (saying why) where the server or the account cannot."""
        raise CapabilityMissing(f"the {self.kind} store cannot follow changes; catch-up "
                                "digests every chunk")

    def changed_in(self, unit: Unit, changes: Any) -> list[str]:
        """Of what a ``ChangeFeed.take`` returned, the records of ``unit`` (``records``
        names), selected keys only."""
        raise CapabilityMissing(f"the {self.kind} store cannot follow changes")

    def schema(self, unit: Unit) -> dict[str, Any]:
        return {}

    def definitions(self, units: list[Unit]) -> dict[str, Any]:
        """Store-level objects outside every unit (views, triggers, policies), live, for
        the containers the plan's ``units`` name, keyed by the source's names."""
        return {}

    def stand_in(self) -> Store | None:
        """A live store of this kind that answers for this one as a source (a set of an
        archive stands in for the MySQL it was read from); None: use this store."""
        return None

    # -- coverage --------------------------------------------------------------------
    # JSON Schemas, checked when a plan is loaded; the messages name the field.
    SPEC_SCHEMA: ClassVar[dict[str, Any]] = {"type": "object"}
    OPTION_SCHEMA: ClassVar[dict[str, Any]] = {"type": "object"}

    @classmethod  # noqa: B027 - accepting every URL is a valid default
    def check_endpoint(cls, endpoint: Endpoint, role: Role) -> None:
        """Refuse (``PlanError`` naming ``endpoint.name``) a URL that would be misread."""

    @classmethod
    def container_of(cls, unit: Unit) -> str:
        """What a unit is a piece of (a table, a collection, a DB, a bucket)."""
        return str(unit.spec.get("container", unit.name))

    @classmethod
    def uncovered(cls, units: list[Unit]) -> list[str]:
        """Gaps in the key ranges of each container's units, one line each."""
        return []

    def unlisted(self, units: list[Unit]) -> list[str]:
        """Live source: containers the selection holds that no unit covers."""
        planned = {self.container_of(u) for u in units}
        return sorted({self.container_of(u) for u in self.list_units()} - planned)

    def adapt_units(self, units: list[Unit], source: Store) -> list[Unit]:
        """Target side, at plan time: the source's units as this target will take them."""
        return units
