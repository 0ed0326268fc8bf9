"""Compares source and target unit by unit and collects every difference (rclone ``check``
style: missing on target, missing on source, differ), never stopping at the first one.

Chunk digests are compared first; only a chunk whose digests disagree is listed record by
record, so a clean run moves almost nothing and a dirty one names the exact keys.

Units are not the whole truth: a table created after ``plan`` has none. So a full verify
also asks each live source what its selection holds that no unit covers (reported as
missing on target) and compares the store-level definitions (views, triggers, bucket
policies) of both sides.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from migrator.engine.journal import DIFFERS, VERIFIED, Journal
from migrator.engine.session import Session
from migrator.errors import MigrateError
from migrator.stores.base import Chunk, ChunkDigest, Store, Unit

SAMPLE = 20  # keys listed per category and unit; the counts are always complete

MATCH, DIFFER, ERROR = "match", "differ", "error"


@dataclass
class UnitReport:
    unit: str
    store: str
    status: str = MATCH
    source_count: int = 0
    target_count: int = 0
    missing_on_target: list[str] = field(default_factory=list)
    missing_on_source: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    n_missing_on_target: int = 0
    n_missing_on_source: int = 0
    n_differ: int = 0
    chunks: list[str] = field(default_factory=list)  # ids of chunks with differences
    schema: list[str] = field(default_factory=list)  # schema differences, one line each
    error: str | None = None
    error_code: int | None = None  # the error's exit code (4: endpoint, 1: other)
    seconds: float = 0.0
    # Chunks digested again after a final sync pass proved the others (see ``Proven``);
    # None when every chunk was digested here.
    rechecked: list[str] | None = None
    rechecked_records: int = 0  # records compared again one by one (a followed pass's)


@dataclass(frozen=True)
class Proven:
    """What one sync pass inside a write freeze proved of a unit, so that the verify after
    it need not read everything again. The source is frozen and the target written by that
    pass alone, so what the pass found equal is still equal:

    - a full pass digested every chunk, and the drill-down named every difference of the
      chunks that disagreed; the pass wrote just those. Where both stores read named
      records, all that is left to prove is ``keys`` (the records it wrote or deleted);
      elsewhere the chunks it found different (``recheck``) are digested again.
    - a followed pass (the source named what changed since a full pass) compared only
      ``keys``; they are compared again.

    ``records``: the unit's source records as the proof counts them (for a followed pass,
    the full pass's count moved by the records added and deleted since)."""

    recheck: frozenset[str]
    records: int
    keys: tuple[str, ...] = ()


@dataclass
class VerifyReport:
    units: list[UnitReport] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # cross-store checks

    @property
    def ok(self) -> bool:
        return all(u.status == MATCH for u in self.units) and not any(
            check.get("missing") for check in self.extra.values())

    @property
    def exit_code(self) -> int:
        """5 on any difference; else 4 when an endpoint failed, 1 for other errors."""
        if self.ok:
            return 0
        if any(u.status == DIFFER for u in self.units) or any(
                check.get("missing") and not check.get("error") for check in self.extra.values()):
            return 5
        codes = {u.error_code for u in self.units if u.status == ERROR}
        codes |= {check["error_code"] for check in self.extra.values() if "error_code" in check}
        return 4 if 4 in codes else 1

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "seconds": round(self.seconds, 3),
                "units": [asdict(u) for u in self.units], "checks": self.extra}


def schema_differences(source: Any, target: Any, path: str = "") -> list[str]:
    """Every place two JSON-like values differ, as ``path: source=… target=…`` lines."""
    if isinstance(source, dict) and isinstance(target, dict):
        out = []
        for key in sorted(set(source) | set(target), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in target:
                out.append(f"{where}: only on source ({source[key]!r})")
            elif key not in source:
                out.append(f"{where}: only on target ({target[key]!r})")
            else:
                out.extend(schema_differences(source[key], target[key], where))
        return out
    if source != target:
        return [f"{path or '(schema)'}: source={source!r} target={target!r}"]
    return []


@dataclass
class ChunkDiff:
    """The records of one chunk that differ, by category (complete lists)."""

    chunk: Chunk
    missing_on_target: list[str] = field(default_factory=list)
    missing_on_source: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing_on_target or self.missing_on_source or self.differ)


RESOLVE_KEYS = 1000  # keys whose cheap hashes disagree, fingerprinted per batch


def listed_differences(source: Store, target: Store, unit: Unit, chunk: Chunk) -> ChunkDiff:
    """Both sides of one chunk listed with canonical fingerprints: the path for stores
    without ``record_hashes``."""
    src = dict(source.records(unit, chunk))
    diff = ChunkDiff(chunk)
    for key, fingerprint in target.records(unit, chunk):
        if key not in src:
            diff.missing_on_source.append(key)
        elif not source.same_record(src.pop(key), fingerprint):
            diff.differ.append(key)
    diff.missing_on_target.extend(src)
    return diff


def _suspects(source: Store, target: Store, unit: Unit, chunk: Chunk) -> list[str] | None:
    """Keys of one chunk whose cheap hashes are not equal on both sides (one side only,
    a hash that differs, or one that cannot tell), or None when a side offers none."""
    src = source.record_hashes(unit, chunk)
    if src is None:
        return None
    tgt = target.record_hashes(unit, chunk)
    if tgt is None:
        return None
    out = [key for key, h in tgt.items() if h is None or src.get(key) != h]
    out.extend(key for key in src if key not in tgt)
    return out


def resolve(source: Store, target: Store, unit: Unit,
             pending: list[tuple[Chunk, list[str]]]) -> list[ChunkDiff]:
    """Canonical fingerprints of the suspect keys of several chunks, both sides at once."""
    keys = [k for _, part in pending for k in part]
    src: dict[str, Any] = {}
    tgt: dict[str, Any] = {}
    if keys:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint") as pool:
            future = pool.submit(lambda: dict(source.records_of(unit, keys)))
            tgt = dict(target.records_of(unit, keys))
            src = future.result()
    out = []
    for chunk, part in pending:
        diff = ChunkDiff(chunk)
        for key in part:
            if key in src and key in tgt:
                if not source.same_record(src[key], tgt[key]):
                    diff.differ.append(key)
            elif key in src:
                diff.missing_on_target.append(key)
            elif key in tgt:
                diff.missing_on_source.append(key)
        out.append(diff)
    return out


def chunk_differences(source: Store, target: Store, unit: Unit, chunks: list[Chunk],
                      stop: threading.Event | None = None) -> Iterator[ChunkDiff]:
    """The real differences of chunks whose digests disagree, chunk by chunk in order
    (chunks without any are left out: a tolerance case, e.g. a TTL at a rounding edge).

    Where both stores offer ``record_hashes``, a chunk is first narrowed to the keys whose
    cheap hashes differ (equal hashes mean equal records), and only those get canonical
    fingerprints, gathered over consecutive chunks into batches of ``RESOLVE_KEYS``; else
    both sides of the chunk are listed canonically. Either way a key is named only after
    canonical fingerprints read now disagree, so the verdicts do not change."""
    pending: list[tuple[Chunk, list[str]]] = []
    waiting = 0
    for chunk in chunks:
        if stop is not None and stop.is_set():
            break
        suspects = _suspects(source, target, unit, chunk)
        if suspects is None:
            if pending:
                yield from (d for d in resolve(source, target, unit, pending) if d)
                pending, waiting = [], 0
            diff = listed_differences(source, target, unit, chunk)
            if diff:
                yield diff
            continue
        if suspects:
            pending.append((chunk, suspects))
            waiting += len(suspects)
        if waiting >= RESOLVE_KEYS:
            yield from (d for d in resolve(source, target, unit, pending) if d)
            pending, waiting = [], 0
    if pending:
        yield from (d for d in resolve(source, target, unit, pending) if d)


def _record(report: UnitReport, diff: ChunkDiff) -> None:
    """Count a chunk's differences into the report, naming up to SAMPLE per category."""
    for count, sample, keys in (
            ("n_missing_on_target", report.missing_on_target, diff.missing_on_target),
            ("n_missing_on_source", report.missing_on_source, diff.missing_on_source),
            ("n_differ", report.differ, diff.differ)):
        setattr(report, count, getattr(report, count) + len(keys))
        sample.extend(keys[:max(0, SAMPLE - len(sample))])
    if diff:
        report.chunks.append(diff.chunk.id)


def compare_chunk(source: Store, target: Store, unit: Unit, chunk: Chunk,
                  report: UnitReport) -> bool:
    """Compare one chunk into ``report``; True when a real difference was found. A digest
    mismatch with no record difference is a tolerance case (e.g. a TTL near a rounding
    boundary) and counts as equal."""
    found = False
    for diff in chunk_differences(source, target, unit, [chunk]):
        _record(report, diff)
        found = True
    return found


def verify_unit(source: Store, target: Store, unit: Unit, proven: Proven | None = None
                ) -> UnitReport:
    started = time.monotonic()
    report = UnitReport(unit=unit.key, store=unit.store)
    try:
        # A proof that leaves no chunk to recheck needs no chunk boundaries either (a
        # store may find them by walking its key index).
        chunks = source.chunks(unit) if proven is None or proven.recheck else []
        if proven is not None and proven.recheck <= {chunk.id for chunk in chunks}:
            chunks = [chunk for chunk in chunks if chunk.id in proven.recheck]
            report.rechecked = [chunk.id for chunk in chunks]
            report.rechecked_records = len(proven.keys)
            report.source_count = report.target_count = proven.records
            if proven.keys:
                for diff in resolve(source, target, unit,
                                    [(Chunk("followed changes"), list(proven.keys))]):
                    _record(report, diff)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as pool:
            # (no chunk to digest: a followed pass proved them all)
            src_future = pool.submit(lambda: source.digest(unit, chunks) if chunks else {})
            tgt_future = pool.submit(lambda: target.digest(unit, chunks) if chunks else {})
            src_schema = source.schema(unit)
            tgt_schema = target.schema(unit)
            src_digest, tgt_digest = src_future.result(), tgt_future.result()
        report.schema = schema_differences(src_schema, tgt_schema)
        empty = ChunkDigest()
        differing = []
        for chunk in chunks:
            s, t = src_digest.get(chunk.id, empty), tgt_digest.get(chunk.id, empty)
            report.source_count += s.count
            report.target_count += t.count
            if s != t:
                differing.append(chunk)
        for diff in chunk_differences(source, target, unit, differing):
            _record(report, diff)
        if report.chunks or report.schema:
            report.status = DIFFER
    except MigrateError as exc:
        report.status, report.error, report.error_code = ERROR, str(exc), exc.exit_code
    except Exception as exc:  # noqa: BLE001 - reported per unit, the others still run
        report.status, report.error_code = ERROR, 70
        report.error = f"internal error: {exc!r}\n" + "".join(traceback.format_exception(exc))
    report.seconds = time.monotonic() - started
    return report


def verify_coverage(kind: str, units: list[Unit], source: Store) -> UnitReport:
    """What the live source's selection holds that no unit covers, as missing on target."""
    report = UnitReport(unit=f"{kind}:(not in plan)", store=kind)
    unlisted = source.unlisted(units)
    if unlisted:
        report.status = DIFFER
        report.n_missing_on_target = len(unlisted)
        report.missing_on_target = unlisted[:SAMPLE]
    return report


def verify_definitions(kind: str, units: list[Unit], source: Store, target: Store
                       ) -> UnitReport:
    """Store-level objects outside every unit (views, triggers, routines, bucket policy)."""
    report = UnitReport(unit=f"{kind}:(definitions)", store=kind)
    report.schema = schema_differences(source.definitions(units), target.definitions(units))
    if report.schema:
        report.status = DIFFER
    return report


def _store_check(kind: str, check: Callable[[], UnitReport]) -> UnitReport:
    started = time.monotonic()
    try:
        report = check()
    except MigrateError as exc:
        report = UnitReport(f"{kind}:(store checks)", kind, ERROR, error=str(exc),
                            error_code=exc.exit_code)
    report.seconds = time.monotonic() - started
    return report


def verify(units: list[Unit], session: Session, *, parallel: int = 4,
           journal: Journal | None = None,
           on_unit: Callable[[UnitReport], None] | None = None,
           stop: threading.Event | None = None,
           checks: dict[str, Callable[[Session], dict[str, Any]]] | None = None,
           whole: dict[str, list[Unit]] | None = None,
           proven: dict[str, Proven] | None = None) -> VerifyReport:
    """``whole`` maps each store kind verified in full to all its planned units: those
    stores are also checked for uncovered data and store-level definitions. ``proven``:
    per unit key, what a final sync pass in the freeze proved (only a cutover passes it);
    the schema and the store checks are compared in full all the same."""
    started = time.monotonic()
    report = VerifyReport()

    def one(unit: Unit) -> UnitReport:
        if stop is not None and stop.is_set():
            return UnitReport(unit.key, unit.store, ERROR, error="interrupted", error_code=130)
        try:
            source, target = session.pair(unit.store)
        except MigrateError as exc:
            return UnitReport(unit.key, unit.store, ERROR, error=str(exc),
                              error_code=exc.exit_code)
        result = verify_unit(source, target, unit, (proven or {}).get(unit.key))
        if journal is not None and result.status != ERROR:
            journal.set_state(unit.key, unit.store, unit.name,
                              VERIFIED if result.status == MATCH else DIFFERS,
                              error=None if result.status == MATCH else summary(result))
        if on_unit is not None:
            on_unit(result)
        return result

    def store_checks(kind: str) -> list[UnitReport]:
        try:
            source, target = session.pair(kind)
        except MigrateError as exc:
            return [UnitReport(f"{kind}:(store checks)", kind, ERROR, error=str(exc),
                               error_code=exc.exit_code)]
        planned = (whole or {})[kind]
        return [_store_check(kind, lambda: verify_coverage(kind, planned, source)),
                _store_check(kind, lambda: verify_definitions(kind, planned, source, target))]

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="verify") as pool:
        whole_checks = [pool.submit(store_checks, kind) for kind in (whole or {})]
        report.units = list(pool.map(one, units))
        for future in whole_checks:
            report.units.extend(future.result())
    for name, check in (checks or {}).items():
        try:
            report.extra[name] = check(session)
        except MigrateError as exc:
            report.extra[name] = {"error": str(exc), "missing": ["(check failed)"],
                                  "error_code": exc.exit_code}
    report.seconds = time.monotonic() - started
    return report


def summary(report: UnitReport) -> str:
    parts = []
    if report.n_missing_on_target:
        parts.append(f"{report.n_missing_on_target} missing on target")
    if report.n_missing_on_source:
        parts.append(f"{report.n_missing_on_source} missing on source")
    if report.n_differ:
        parts.append(f"{report.n_differ} differ")
    if report.schema:
        parts.append(f"{len(report.schema)} schema difference(s)")
    return ", ".join(parts) or report.status
