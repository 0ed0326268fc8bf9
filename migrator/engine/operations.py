"""The jobs behind the commands, one function each, sharing one orchestration: open the
journal beside the plan, open the session, check access, then transfer and/or verify.

The CLI only parses options and renders what these return; later jobs (sync, cutover,
backup, restore, drill) are built from the same pieces.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrator.engine.journal import COPIED, DIFFERS, SKIPPED, VERIFIED, Journal, journal_path
from migrator.engine.planning import refuse_if_target_filled
from migrator.engine.retry import RetryPolicy
from migrator.engine.session import Session
from migrator.engine.sync import CatchUp, SyncPass, UnitSync
from migrator.engine.transfer import RunResult, Transfer
from migrator.engine.verify import Proven, VerifyReport, verify
from migrator.errors import PlanError, UsageError
from migrator.openim import cross_checks
from migrator.plan import Plan
from migrator.progress import NullProgress, Progress

DONE = (COPIED, VERIFIED, SKIPPED)


@dataclass
class RunOutcome:
    copy: RunResult
    verify: VerifyReport | None = None
    recopied: list[str] = field(default_factory=list)  # units verify had found different


@contextmanager
def opened(plan: Plan, plan_path: Path, *, exclusive: bool = True
           ) -> Iterator[tuple[Journal, Session]]:
    """The journal beside the plan and one session over the plan's stores."""
    with Journal(journal_path(plan_path)).open(exclusive=exclusive) as journal, \
            Session(plan.stores, plan.options, journal) as session:
        yield journal, session


def connect_all(plan: Plan, session: Session, *, access: bool) -> None:
    """Open every store pair up front, so a wrong password or a dead server is one clear
    error (exit 4) before any work, not a per-unit failure later."""
    for kind in plan.stores:
        if access:
            session.check_access(kind)
        else:
            session.pair(kind)


def refuse_source_drift(plan: Plan, session: Session) -> None:
    """A table, collection, DB or bucket that appeared in the selection after ``plan``
    has no unit: copying without it would end in a verify that cannot be EQUAL."""
    for kind in plan.stores:
        source, _ = session.pair(kind)
        unlisted = source.unlisted(plan.units_of(kind))
        if unlisted:
            shown = ", ".join(unlisted[:5]) + (" …" if len(unlisted) > 5 else "")
            raise PlanError(f"stores.{kind}.source",
                            f"now holds {len(unlisted)} thing(s) in the selection that the plan "
                            f"has no unit for: {shown}",
                            hint="re-run `openim-migrate plan` (with --on-existing overwrite "
                            "if this plan was already run), or narrow the selection")


def run_plan(plan: Plan, plan_path: Path, *, restart: bool = False,
             verify_after: bool | None = None, progress: Progress | None = None,
             stop: threading.Event | None = None) -> RunOutcome:
    """Copy every unit not yet copied (again those verify found different), then verify."""
    with Journal(journal_path(plan_path)).open() as journal:
        redo = [key for key, state in journal.units().items() if state.state == DIFFERS]
        if (restart and journal.has_progress()) or redo:
            # The target's data for these units is ours: replace it, do not refuse it.
            plan.options.on_existing = "overwrite"
        journal.bind_plan(plan.fingerprint(), restart=restart)
        with Session(plan.stores, plan.options, journal) as session:
            connect_all(plan, session, access=True)
            refuse_source_drift(plan, session)
            if not journal.has_progress() and plan.options.on_existing == "fail":
                refuse_if_target_filled(plan, session)
            transfer = Transfer(plan, journal, session, progress=progress or NullProgress(),
                                stop=stop)
            result = transfer.run()
            outcome = RunOutcome(copy=result, recopied=[] if restart else redo)
            wanted = ("verify" in plan.steps) if verify_after is None else verify_after
            if wanted and not result.failed and not result.interrupted:
                copied = [u for u in plan.inventory
                          if journal.unit(u.key).state in (COPIED, VERIFIED, DIFFERS)]
                outcome.verify = verify(copied, session, parallel=plan.options.parallel,
                                        journal=journal, checks=cross_checks(plan),
                                        whole={k: plan.units_of(k) for k in plan.stores})
    return outcome


@dataclass
class SyncOutcome:
    passes: list[SyncPass] = field(default_factory=list)
    stable: bool = False  # the last pass changed no more than the threshold
    interrupted: bool = False
    methods: dict[str, str] = field(default_factory=dict)  # store -> how it caught up
    notes: list[str] = field(default_factory=list)  # e.g. why a store cannot follow


@contextmanager
def catching_up(plan: Plan, plan_path: Path, *, follow: bool,
                stop: threading.Event | None = None) -> Iterator[CatchUp]:
    """The journal, session and change feeds of sync passes over an already copied plan."""
    with Journal(journal_path(plan_path)).open() as journal:
        journal.bind_plan(plan.fingerprint(), restart=False)
        states = journal.units()
        not_copied = [u.key for u in plan.inventory
                      if (states.get(u.key) is None
                          or states[u.key].state not in (COPIED, VERIFIED, DIFFERS))]
        if not_copied:
            raise UsageError(f"sync brings a copied target up to date, but {len(not_copied)} "
                             f"unit(s) were never copied (e.g. {not_copied[0]}); run "
                             f"`openim-migrate run {plan_path}` first")
        with Session(plan.stores, plan.options, journal) as session:
            connect_all(plan, session, access=True)
            refuse_source_drift(plan, session)
            for kind in plan.stores:  # idempotent; attaches the source where a target needs it
                source, target = session.pair(kind)
                target.prepare_target(plan.units_of(kind), source)
            with CatchUp(plan.inventory, session, journal, follow=follow,
                         parallel=plan.options.parallel,
                         batch_records=plan.options.batch_records,
                         retry=RetryPolicy(attempts=plan.options.retries), stop=stop) as catch:
                yield catch


def sync_plan(plan: Plan, plan_path: Path, *, until_stable: bool = False, threshold: int = 0,
              max_passes: int = 10, stop: threading.Event | None = None,
              on_unit: Callable[[UnitSync], None] | None = None,
              on_pass: Callable[[SyncPass], None] | None = None) -> SyncOutcome:
    """Catch-up passes over every unit of an already copied plan; with several passes the
    sources that can follow their changes do, so passes after the first cost the changes."""
    stop = stop or threading.Event()
    passes = max_passes if until_stable else 1
    outcome = SyncOutcome()
    with catching_up(plan, plan_path, follow=passes > 1, stop=stop) as catch:
        for _ in range(passes):
            try:
                result = catch.run_pass(on_unit)
            except KeyboardInterrupt:
                stop.set()
                outcome.interrupted = True
                break
            outcome.passes.append(result)
            if on_pass is not None:
                on_pass(result)
            if stop.is_set():
                outcome.interrupted = True
                break
            outcome.stable = not result.failed and result.changed <= threshold
            if outcome.stable or result.failed:
                break
        outcome.methods, outcome.notes = dict(catch.methods), list(catch.notes)
    return outcome


def select_units(plan: Plan, patterns: tuple[str, ...]) -> list[Any]:
    if not patterns:
        return list(plan.inventory)
    units = [u for u in plan.inventory if any(fnmatch.fnmatchcase(u.key, p) for p in patterns)]
    if not units:
        raise UsageError(f"no unit matches {', '.join(patterns)}")
    return units


def verify_plan(plan: Plan, plan_path: Path, *, unit_patterns: tuple[str, ...] = (),
                proven: dict[str, Proven] | None = None) -> VerifyReport:
    """Every unit, plus (unless narrowed to some units) what no unit covers, store-level
    definitions and the cross-store checks. Shares the journal with a running copy.
    ``proven``: what a cutover's final sync pass proved (``verify.Proven``)."""
    units = select_units(plan, unit_patterns)
    whole = None if unit_patterns else {k: plan.units_of(k) for k in plan.stores}
    with opened(plan, plan_path, exclusive=False) as (journal, session):
        connect_all(plan, session, access=False)
        return verify(units, session, parallel=plan.options.parallel, journal=journal,
                      checks=None if unit_patterns else cross_checks(plan), whole=whole,
                      proven=proven)


def dry_run(plan: Plan, plan_path: Path) -> list[dict[str, Any]]:
    """What ``run`` would copy, from the journal's states; access is checked, nothing written."""
    path = journal_path(plan_path)
    states = {}
    if path.exists():
        with Journal(path).open(exclusive=False) as journal:
            states = journal.units()
    rows = []
    for unit in plan.inventory:
        state = states.get(unit.key)
        name = state.state if state else "pending"
        done = state.records if state and name == "copying" else 0
        rows.append({"unit": unit.key, "state": name, "records": unit.records,
                     "bytes": unit.bytes, "to_copy": name not in DONE,
                     "records_left": max(0, unit.records - done)})
    with Session(plan.stores, plan.options) as session:
        connect_all(plan, session, access=True)
    return rows
