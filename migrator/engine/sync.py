"""Catch-up: bring an already copied target up to date without copying everything again.

A pass digests every chunk on both sides (what verify does), narrows the chunks that
differ to their differing records the way verify does (cheap per-record hashes first, where
the store offers them), re-copies the records that are missing or different on the target
and deletes the ones the source no longer has. Its cost grows with the changes, plus one
digest read of both sides. Passes repeat until one changes little enough
(``--until-stable``): the write freeze of a cutover then only waits for the last one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from migrator.engine.journal import COPIED, VERIFIED, Journal
from migrator.engine.retry import RetryPolicy, call_with_retry
from migrator.engine.session import Session
from migrator.engine.verify import Proven, chunk_differences
from migrator.errors import MigrateError
from migrator.stores.base import ChunkDigest, Importer, Store, Unit


@dataclass
class UnitSync:
    unit: str
    store: str
    copied: int = 0  # records written again (missing or different on the target)
    deleted: int = 0  # records removed from the target (gone from the source)
    bytes: int = 0
    chunks: list[str] = field(default_factory=list)  # chunks that differed
    # Set when the pass compared every chunk: the chunks whose digests disagreed (the only
    # ones it wrote to) and the records of those that agreed; a cutover's verify uses them.
    proven: Proven | None = None
    error: str | None = None
    error_code: int | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.copied + self.deleted


@dataclass
class SyncPass:
    number: int
    units: list[UnitSync] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return sum(u.changed for u in self.units)

    @property
    def failed(self) -> list[UnitSync]:
        return [u for u in self.units if u.error]


def _slices(keys: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(keys), size):
        yield keys[i:i + size]


def sync_unit(source: Store, target: Store, unit: Unit, *, batch_records: int = 1000,
              stop: threading.Event | None = None) -> UnitSync:
    started = time.monotonic()
    report = UnitSync(unit.key, unit.store)
    chunks = source.chunks(unit)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sync-digest") as pool:
        src_future = pool.submit(source.digest, unit, chunks)
        tgt_digest = target.digest(unit, chunks)
        src_digest = src_future.result()
    # List the differing chunks first, then copy and delete across them in full batches:
    # a pass costs round trips per batch of changes, not per chunk.
    # verify's drill-down names them: cheap per-record hashes first where the stores
    # offer them, canonical fingerprints only for the keys those cannot clear.
    to_copy: list[str] = []
    to_delete: list[str] = []
    empty = ChunkDigest()
    differing = [chunk for chunk in chunks
                 if src_digest.get(chunk.id, empty) != tgt_digest.get(chunk.id, empty)]
    for diff in chunk_differences(source, target, unit, differing, stop):
        report.chunks.append(diff.chunk.id)
        to_copy.extend(diff.differ)
        to_copy.extend(diff.missing_on_target)
        to_delete.extend(diff.missing_on_source)
    if stop is None or not stop.is_set():  # else some differing chunks went unlisted
        recheck = frozenset(chunk.id for chunk in differing)
        report.proven = Proven(recheck, sum(src_digest.get(chunk.id, empty).count
                                            for chunk in chunks if chunk.id not in recheck))
    if to_copy:
        importer: Importer = target.importer(unit)
        importer.prepare(resumed=True)  # never clear the unit: only these keys change
        for keys in _slices(to_copy, batch_records):
            batch = source.fetch(unit, keys)
            importer.write_batch(batch)
            report.copied += len(batch) - len(batch.skipped)  # vanished before the copy
            report.bytes += batch.nbytes
        importer.finalize()
    for keys in _slices(to_delete, batch_records):
        target.delete(unit, keys)
        report.deleted += len(keys)
    report.seconds = time.monotonic() - started
    return report


def sync_pass(number: int, units: list[Unit], session: Session, journal: Journal, *,
              parallel: int = 4, batch_records: int = 1000, retry: RetryPolicy | None = None,
              stop: threading.Event | None = None,
              on_unit: Callable[[UnitSync], None] | None = None) -> SyncPass:
    """One pass over ``units``; a unit whose pass changed nothing is proven equal
    (its digests matched) and marked verified in the journal."""
    started = time.monotonic()
    policy = retry or RetryPolicy()

    def one(unit: Unit) -> UnitSync:
        try:
            source, target = session.pair(unit.store)
            result = call_with_retry(
                lambda: sync_unit(source, target, unit, batch_records=batch_records, stop=stop),
                policy, stop=stop)
        except MigrateError as exc:
            result = UnitSync(unit.key, unit.store, error=str(exc), error_code=exc.exit_code)
        if not result.error:
            journal.set_state(unit.key, unit.store, unit.name,
                              VERIFIED if not result.changed else COPIED)
            journal.event(unit.key, "sync", f"pass {number}: {result.copied} copied, "
                          f"{result.deleted} deleted, {result.bytes} bytes")
        if on_unit is not None:
            on_unit(result)
        return result

    result = SyncPass(number)
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="sync") as pool:
        result.units = list(pool.map(one, units))
    result.seconds = time.monotonic() - started
    return result
