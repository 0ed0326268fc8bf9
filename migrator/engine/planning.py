"""Builds a plan: reads both sides (never writes), measures units, checks access and that
the target is empty, and estimates the run."""

from __future__ import annotations

from datetime import UTC, datetime

from migrator.engine.session import Session
from migrator.engine.sync import record_catch_up
from migrator.errors import TargetNotEmpty
from migrator.plan import Options, Plan, StorePair, plan_from_dict

# Conservative copy rates per unit stream, from docs/benchmarks.md, for the estimate only.
NOMINAL_BYTES_PER_SECOND = {"redis": 20e6, "mysql": 30e6, "mongo": 30e6, "objects": 60e6}


def build_plan(name: str, pairs: dict[str, StorePair], options: Options) -> Plan:
    plan = Plan(name=name, stores=pairs, options=options,
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    # The same checks a saved plan gets on load, before anything connects.
    plan_from_dict(plan.to_dict(), check_integrity=False)
    with Session(pairs, options) as session:
        for kind, pair in pairs.items():
            session.check_access(kind)
            source, target = session.pair(kind)
            units = target.adapt_units(source.list_units(), source)
            plan.inventory.extend(units)
            plan.warnings.extend(selection_warnings(kind, pair, units))
            plan.existing.extend(target.existing(units))
            pair.facts = {"source": source.describe(), "target": target.describe()}
            for side in ("source", "target"):
                plan.warnings.extend(f"stores.{kind}.{side}: {w}"
                                     for w in pair.facts[side].get("warnings", []))
            from migrator.engine.cutover import record_freeze_guard  # cutover imports planning

            record_freeze_guard(pair.facts, source)
            record_catch_up(pair.facts, source)
    if plan.existing and options.on_existing == "fail":
        shown = ", ".join(plan.existing[:5]) + (" …" if len(plan.existing) > 5 else "")
        raise TargetNotEmpty(
            f"the target already holds data for {len(plan.existing)} unit(s): {shown}",
            hint="choose --on-existing overwrite (replace what is there) or skip "
            "(leave those units alone); no plan was written")
    plan.estimate = estimate(plan)
    return plan


def selection_warnings(kind: str, pair: StorePair, units: list) -> list[str]:
    """A selection that matches nothing is almost always a typo (or an escape the store reads
    differently): say so, instead of planning an empty copy that verifies EQUAL."""
    sel = pair.selection
    if not (sel.include or sel.exclude or sel.preset):
        return [f"stores.{kind}: the source holds nothing to copy"] if not units else []
    if not units or not any(u.records for u in units):
        given = ", ".join([*(f"include {p!r}" for p in sel.include),
                           *(f"exclude {p!r}" for p in sel.exclude),
                           *([f"preset {sel.preset!r}"] if sel.preset else [])])
        return [f"stores.{kind}.selection matches nothing on the source ({given})"]
    return []


def estimate(plan: Plan) -> dict[str, object]:
    records = sum(u.records for u in plan.inventory)
    size = sum(u.bytes for u in plan.inventory)
    seconds = 0.0
    for kind in plan.stores:
        kind_bytes = sum(u.bytes for u in plan.units_of(kind))
        streams = max(1, min(plan.options.parallel, len(plan.units_of(kind))))
        seconds += kind_bytes / (NOMINAL_BYTES_PER_SECOND.get(kind, 20e6) * streams)
    return {"units": len(plan.inventory), "records": records, "bytes": size,
            "copy_seconds": round(seconds, 1),
            "basis": "nominal per-stream rates from docs/benchmarks.md; a guide, not a promise"}


def refuse_if_target_filled(plan: Plan, session: Session) -> None:
    """Between plan and a first run, someone may have written to the target."""
    for kind in plan.stores:
        _, target = session.pair(kind)
        filled = [k for k in target.existing(plan.units_of(kind)) if k not in plan.existing]
        if filled:
            raise TargetNotEmpty(
                f"the target now holds data for {len(filled)} unit(s) it did not hold at plan "
                f"time: {', '.join(filled[:5])}",
                hint="re-run `openim-migrate plan` with --on-existing overwrite or skip")
