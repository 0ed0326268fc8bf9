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
from typing import Any

from migrator.engine.journal import COPIED, VERIFIED, Journal
from migrator.engine.retry import RetryPolicy, call_with_retry
from migrator.engine.session import Session
from migrator.engine.verify import ChunkDiff, Proven, chunk_differences, resolve
from migrator.errors import MigrateError
from migrator.stores.base import ChangeFeed, Chunk, ChunkDigest, Importer, Store, Unit


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
    followed: int | None = None  # records the source named as changed (a followed pass)
    source_records: int = 0  # the unit's records on the source, as this pass counted them
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
    """A full pass of one unit: every chunk digested on both sides."""
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
    empty = ChunkDigest()
    differing = [chunk for chunk in chunks
                 if src_digest.get(chunk.id, empty) != tgt_digest.get(chunk.id, empty)]
    diffs = list(chunk_differences(source, target, unit, differing, stop))
    written = _apply(report, source, target, unit, diffs, batch_records)
    if stop is None or not stop.is_set():  # else some differing chunks went unlisted
        report.source_records = sum(d.count for d in src_digest.values())
        if _lists_records(source) and _lists_records(target):
            # The drill-down named every difference of the differing chunks, and the pass
            # wrote just those: what is left to prove is those records.
            report.proven = Proven(frozenset(), report.source_records, tuple(written))
        else:
            recheck = frozenset(chunk.id for chunk in differing)
            report.proven = Proven(recheck, sum(src_digest.get(chunk.id, empty).count
                                                for chunk in chunks
                                                if chunk.id not in recheck))
    report.seconds = time.monotonic() - started
    return report


def sync_changes(source: Store, target: Store, unit: Unit, keys: list[str], records: int,
                 *, batch_records: int = 1000, exact: bool = True) -> UnitSync:
    """A followed pass of one unit: only the records the source named as changed since a
    full pass (``Store.follow``) are compared, canonically, and copied or deleted.
    ``records``: the unit's source records as of the previous pass. ``exact``: whether the
    feed's answer is complete by construction; only then is the pass a proof."""
    started = time.monotonic()
    report = UnitSync(unit.key, unit.store, followed=len(keys))
    diffs = resolve(source, target, unit, [(Chunk("followed changes"), keys)]) if keys else []
    _apply(report, source, target, unit, diffs, batch_records)
    # The source gained what the target missed and lost what only the target still had.
    report.source_records = records + sum(len(d.missing_on_target) - len(d.missing_on_source)
                                          for d in diffs)
    report.proven = Proven(frozenset(), report.source_records, tuple(keys)) if exact else None
    report.seconds = time.monotonic() - started
    return report


def _lists_records(store: Store) -> bool:
    """Whether the store reads named records (``records_of``), so a verify can compare
    just the records a pass wrote."""
    return type(store).records_of is not Store.records_of


def _apply(report: UnitSync, source: Store, target: Store, unit: Unit, diffs: list[ChunkDiff],
           batch_records: int) -> list[str]:
    """Copy again what is missing or different on the target, delete what the source no
    longer has; counts go into ``report``. Returns the records written or deleted."""
    to_copy: list[str] = []
    to_delete: list[str] = []
    for diff in diffs:
        if diff:
            report.chunks.append(diff.chunk.id)
        to_copy.extend(diff.differ)
        to_copy.extend(diff.missing_on_target)
        to_delete.extend(diff.missing_on_source)
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
    return to_copy + to_delete


def sync_pass(number: int, units: list[Unit], session: Session, journal: Journal, *,
              parallel: int = 4, batch_records: int = 1000, retry: RetryPolicy | None = None,
              stop: threading.Event | None = None,
              on_unit: Callable[[UnitSync], None] | None = None,
              followed: dict[str, tuple[list[str], int, bool]] | None = None) -> SyncPass:
    """One pass over ``units``; a unit whose pass changed nothing and proved it (see
    ``Proven``) is marked verified in the journal. ``followed``: per unit key, the records
    its source named as changed, its record count and whether the feed is exact: those
    units compare only these records; the others digest every chunk."""
    started = time.monotonic()
    policy = retry or RetryPolicy()

    def one(unit: Unit) -> UnitSync:
        named = (followed or {}).get(unit.key)
        try:
            source, target = session.pair(unit.store)
            if named is None:
                result = call_with_retry(
                    lambda: sync_unit(source, target, unit, batch_records=batch_records,
                                      stop=stop), policy, stop=stop)
            else:
                keys, records, exact = named
                result = call_with_retry(
                    lambda: sync_changes(source, target, unit, keys, records,
                                         batch_records=batch_records, exact=exact),
                    policy, stop=stop)
        except MigrateError as exc:
            result = UnitSync(unit.key, unit.store, error=str(exc), error_code=exc.exit_code)
        if not result.error:
            how = "" if named is None else f" (of {len(named[0])} followed)"
            proved = not result.changed and result.proven is not None
            journal.set_state(unit.key, unit.store, unit.name, VERIFIED if proved else COPIED)
            journal.event(unit.key, "sync", f"pass {number}: {result.copied} copied, "
                          f"{result.deleted} deleted, {result.bytes} bytes{how}")
        if on_unit is not None:
            on_unit(result)
        return result

    result = SyncPass(number)
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="sync") as pool:
        result.units = list(pool.map(one, units))
    result.seconds = time.monotonic() - started
    return result


FOLLOWING = "followed changes"
DIGESTS = "chunk digests"


def record_catch_up(facts: dict[str, Any], source: Store) -> None:
    """At plan time: whether sync can follow the source's changes (a feed is started and
    closed at once), in the store facts shown by `plan`, so a missing right or server
    setting is seen before the cutover, not during it."""
    try:
        feed = source.follow()
    except MigrateError as exc:
        how, note = DIGESTS, f"catch-up: chunk digests in every pass ({exc.message})"
    else:
        feed.close()
        how, note = FOLLOWING, ("catch-up: after a full pass, passes compare only what the "
                                "source names as changed")
    side = facts.setdefault("source", {})
    side["catch_up"] = how
    side["notes"] = [*side.get("notes", []), note]


class CatchUp:
    """Sync passes over one session. Each store whose source can follow its changes
    (``Store.follow``) starts doing so before the first pass, which digests every chunk;
    from then on a pass of that store compares only the records the source named (a
    flush, a lost feed or a failed unit puts it back on digests). So passes after the
    first cost what changed, not what is stored."""

    def __init__(self, units: list[Unit], session: Session, journal: Journal, *,
                 follow: bool, parallel: int = 4, batch_records: int = 1000,
                 retry: RetryPolicy | None = None, stop: threading.Event | None = None
                 ) -> None:
        self.units, self.session, self.journal = units, session, journal
        self.parallel, self.batch_records, self.retry, self.stop = (parallel, batch_records,
                                                                    retry, stop)
        self.kinds = list(dict.fromkeys(u.store for u in units))
        self.methods = {kind: DIGESTS for kind in self.kinds}  # how each store catches up
        self.notes: list[str] = []
        self.passes = 0
        self._feeds: dict[str, ChangeFeed] = {}
        self._records: dict[str, int] = {}  # unit -> source records, after a proving pass
        if follow:
            try:
                for kind in self.kinds:
                    source, _ = session.pair(kind)
                    try:
                        self._feeds[kind] = source.follow()
                    except MigrateError as exc:  # cannot follow here: digests, saying why
                        self.notes.append(f"{kind}: {exc.message}")
                        continue
                    self.methods[kind] = FOLLOWING
            except BaseException:
                self.close()
                raise

    def run_pass(self, on_unit: Callable[[UnitSync], None] | None = None) -> SyncPass:
        self.passes += 1
        followed: dict[str, tuple[list[str], int, bool]] = {}
        for kind, feed in list(self._feeds.items()):
            try:
                changes = feed.take()  # before any read of this pass
            except MigrateError as exc:
                self._stop_following(kind, f"{exc.message}; back to chunk digests")
                continue
            if self.passes == 1:
                continue  # the feed started before this pass, which digests everything
            if changes is None:
                self.notes.append(f"{kind}: {feed.why or 'anything may have changed'}; "
                                  f"pass {self.passes} digests every chunk")
                continue
            source, _ = self.session.pair(kind)
            for unit in self.units:
                if unit.store == kind and unit.key in self._records:
                    try:
                        keys = source.changed_in(unit, changes)
                    except MigrateError as exc:  # e.g. the table's key changed since plan
                        self.notes.append(f"{unit.key}: {exc.message}; pass {self.passes} "
                                          "digests it")
                        continue
                    followed[unit.key] = (keys, self._records[unit.key], feed.exact)
        result = sync_pass(self.passes, self.units, self.session, self.journal,
                           parallel=self.parallel, batch_records=self.batch_records,
                           retry=self.retry, stop=self.stop, on_unit=on_unit,
                           followed=followed)
        for done in result.units:
            if done.error or (done.followed is None and done.proven is None):
                self._records.pop(done.unit, None)  # digested in full next time
            else:
                self._records[done.unit] = done.source_records
        return result

    def _stop_following(self, kind: str, why: str) -> None:
        feed = self._feeds.pop(kind)
        self.methods[kind] = DIGESTS
        self.notes.append(f"{kind}: {why}")
        try:
            feed.close()
        except Exception:  # noqa: BLE001, S110 - a feed that broke may not close cleanly
            pass

    def close(self) -> None:
        for kind in list(self._feeds):
            feed = self._feeds.pop(kind)
            try:
                feed.close()
            except Exception:  # noqa: BLE001, S110 - closing must not mask the real error
                pass

    def __enter__(self) -> CatchUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
