"""Copies every unit of a plan: exporter and importer joined by a bounded queue, units in
parallel threads, a journal checkpoint after each committed batch, retries from the last
checkpoint on transient errors, and a clean stop at a batch boundary on Ctrl-C.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial

from migrator.engine.journal import (
    COPIED,
    COPYING,
    FAILED,
    SKIPPED,
    VERIFIED,
    Journal,
)
from migrator.engine.retry import RetryPolicy, call_with_retry
from migrator.engine.session import Session
from migrator.engine.throttle import Throttle
from migrator.errors import MigrateError
from migrator.plan import Plan
from migrator.progress import NullProgress, Progress
from migrator.stores.base import Batch, Cursor, Store, Unit

MAX_SKIP_EVENTS = 100  # per unit; beyond that only the count is kept


class Stopped(Exception):
    """Raised inside a worker when the run was asked to stop at a safe point."""


@dataclass
class UnitOutcome:
    key: str
    state: str
    records: int = 0
    bytes: int = 0
    skipped: int = 0
    error: str | None = None


@dataclass
class RunResult:
    outcomes: list[UnitOutcome] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)  # from the stores, e.g. DEFINER rewrites

    @property
    def failed(self) -> list[UnitOutcome]:
        return [o for o in self.outcomes if o.state == FAILED]

    @property
    def records(self) -> int:
        return sum(o.records for o in self.outcomes)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.outcomes)


def batches_through_queue(source: Store, unit: Unit, cursor: Cursor, depth: int,
                          stop: threading.Event) -> Iterator[Batch]:
    """Run the exporter in its own thread so reading and writing overlap; at most ``depth``
    batches wait in between, which bounds memory whatever the unit's size."""
    pipe: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    cancel = threading.Event()

    def put(item: object) -> bool:
        while not cancel.is_set():
            try:
                pipe.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        export = source.export(unit, cursor)
        try:
            for batch in export:
                if not put(batch):
                    return
            put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer to raise
            put(exc)
        finally:
            getattr(export, "close", lambda: None)()  # a generator: end it now

    thread = threading.Thread(target=produce, name=f"export {unit.key}", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = pipe.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set():
                    raise Stopped from None
                continue
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        while not pipe.empty():
            pipe.get_nowait()
        thread.join(timeout=30)


class Transfer:
    def __init__(self, plan: Plan, journal: Journal, session: Session, *,
                 progress: Progress | None = None, parallel: int | None = None,
                 throttle: Throttle | None = None, retry: RetryPolicy | None = None,
                 stop: threading.Event | None = None, queue_depth: int = 4) -> None:
        self.plan = plan
        self.journal = journal
        self.session = session
        self.progress = progress or NullProgress()
        self.parallel = parallel or plan.options.parallel
        self.throttle = throttle or Throttle(plan.options.rate_limit)
        self.retry = retry or RetryPolicy(attempts=plan.options.retries)
        self.stop = stop or threading.Event()
        self.queue_depth = queue_depth

    # -- the run ---------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.monotonic()
        result = RunResult()
        todo = self._units_to_copy()
        self.progress.start(sum(u.records for u in todo), sum(u.bytes for u in todo))
        try:
            prepared = self._prepare_targets(todo)
            runnable = [u for u in todo if u.store in prepared]
            result.interrupted = self._copy_units(runnable)
            if not result.interrupted:
                self._finalize_targets()
        finally:
            self.progress.close()
        for kind in self.plan.stores:
            _, target = self.session.pair(kind)
            result.notices.extend(f"{kind}: {note}" for note in target.notices())
        for note in result.notices:
            self.journal.event(None, "notice", note)
        for unit in self.plan.inventory:
            state = self.journal.unit(unit.key)
            result.outcomes.append(UnitOutcome(unit.key, state.state, state.records,
                                               state.bytes, state.skipped, state.error))
        result.seconds = time.monotonic() - started
        return result

    def _units_to_copy(self) -> list[Unit]:
        todo = []
        skip_existing = self.plan.options.on_existing == "skip"
        for unit in self.plan.inventory:
            state = self.journal.unit(unit.key).state
            if state in (COPIED, VERIFIED, SKIPPED):
                continue  # a unit verify found different (DIFFERS) is copied again
            if skip_existing and unit.key in self.plan.existing:
                self.journal.set_state(unit.key, unit.store, unit.name, SKIPPED,
                                       error="already had data on the target (on_existing: skip)")
                continue
            todo.append(unit)
        return todo

    def _prepare_targets(self, todo: list[Unit]) -> set[str]:
        """Schemas first; a store whose target cannot be prepared fails all its units."""
        prepared = set()
        for kind in dict.fromkeys(u.store for u in todo):
            units = self.plan.units_of(kind)
            try:
                source, target = self.session.pair(kind)
                call_with_retry(partial(target.prepare_target, units, source),
                                self.retry, stop=self.stop,
                                on_retry=self._on_retry(f"{kind}:prepare"))
                self.journal.event(None, "prepared", kind)
                prepared.add(kind)
            except MigrateError as exc:
                for unit in (u for u in todo if u.store == kind):
                    self.journal.set_state(unit.key, unit.store, unit.name, FAILED,
                                           error=f"preparing the target failed: {exc}")
        return prepared

    def _copy_units(self, units: list[Unit]) -> bool:
        """True when the run was interrupted."""
        if not units:
            return False
        pool = ThreadPoolExecutor(max_workers=max(1, self.parallel),
                                  thread_name_prefix="unit")
        futures: set[Future] = {pool.submit(self._copy_unit, unit) for unit in units}
        interrupted = False
        try:
            pending = futures
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # workers catch their own errors; this re-raises bugs
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            # Workers stop at the next batch boundary; a second Ctrl-C aborts this wait.
            wait(futures)
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        return interrupted or self.stop.is_set()

    def _copy_unit(self, unit: Unit) -> None:
        if self.stop.is_set():
            return
        key = unit.key
        try:
            source, target = self.session.pair(unit.store)
            call_with_retry(lambda: self._attempt(unit, source, target), self.retry,
                            stop=self.stop, on_retry=self._on_retry(key))
            self.journal.set_state(key, unit.store, unit.name, COPIED)
            self.progress.unit_finished(key, COPIED)
        except Stopped:
            self.journal.event(key, "stopped", "interrupted; resumes from its checkpoint")
            self.progress.unit_finished(key, COPYING)
        except MigrateError as exc:
            self.journal.set_state(key, unit.store, unit.name, FAILED, error=str(exc))
            self.progress.unit_finished(key, FAILED)
        except Exception as exc:  # noqa: BLE001 - a bug in one unit must not lose the others
            detail = "".join(traceback.format_exception(exc)).strip()
            self.journal.set_state(key, unit.store, unit.name, FAILED,
                                   error=f"internal error: {exc!r}")
            self.journal.event(key, "traceback", detail)
            self.progress.unit_finished(key, FAILED)

    def _attempt(self, unit: Unit, source: Store, target: Store) -> None:
        key = unit.key
        state = self.journal.unit(key)
        resumable = unit.spec.get("resumable", True) and source.capabilities.resumable_units
        cursor = state.cursor if (state.state == COPYING and resumable) else None
        if cursor is None:
            self.journal.start_fresh(key, unit.store, unit.name)
            done = 0
        else:
            self.journal.set_state(key, unit.store, unit.name, COPYING, count_attempt=True)
            done = state.records
        importer = target.importer(unit)
        importer.prepare(resumed=cursor is not None)
        self.progress.unit_started(key, unit.records, unit.bytes, done)
        skip_events = state.skipped if cursor is not None else 0
        for batch in batches_through_queue(source, unit, cursor, self.queue_depth, self.stop):
            self.throttle.take(batch.nbytes, self.stop)
            importer.write_batch(batch)
            self.journal.checkpoint(key, batch.cursor, len(batch), batch.nbytes,
                                    len(batch.skipped))
            for skipped in batch.skipped:
                if skip_events < MAX_SKIP_EVENTS:
                    self.journal.event(key, "skipped", skipped)
                skip_events += 1
            self.progress.advance(key, len(batch), batch.nbytes)
            if self.stop.is_set():
                raise Stopped
        importer.finalize()

    def _finalize_targets(self) -> None:
        states = self.journal.units()
        for kind in self.plan.stores:
            units = self.plan.units_of(kind)
            done = all(states.get(u.key) and states[u.key].state in (COPIED, VERIFIED, SKIPPED)
                       for u in units)
            if not done or self.journal.get_meta(f"finalized:{kind}") == self.plan.fingerprint():
                continue
            source, target = self.session.pair(kind)
            try:
                call_with_retry(partial(target.finalize_target, units, source),
                                self.retry, stop=self.stop,
                                on_retry=self._on_retry(f"{kind}:finalize"))
            except MigrateError as exc:
                for unit in units:
                    self.journal.set_state(unit.key, unit.store, unit.name, FAILED,
                                           error=f"finalizing the target failed: {exc}")
                continue
            self.journal.set_meta(f"finalized:{kind}", self.plan.fingerprint())
            self.journal.event(None, "finalized", kind)

    def _on_retry(self, key: str):
        def note(attempt: int, exc: BaseException, delay: float) -> None:
            self.journal.event(key, "retry", f"attempt {attempt} in {delay:.1f}s after: {exc}")
            self.progress.retried(key, exc)
        return note
