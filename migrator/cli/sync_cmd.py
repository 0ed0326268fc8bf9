"""`openim-migrate sync PLAN`: catch-up passes that bring a copied target up to date."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from migrator.cli import render
from migrator.cli.options import apply_tunables, json_option, parallel_option
from migrator.engine import operations
from migrator.engine.sync import UnitSync
from migrator.errors import Interrupted, UnitsFailed
from migrator.plan import load_plan


@click.command("sync")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--until-stable", is_flag=True,
              help="Repeat passes until one changes no more than --threshold records.")
@click.option("--threshold", type=click.IntRange(min=0), default=0, show_default=True,
              help="Records a pass may still change and count as stable.")
@click.option("--max-passes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Give up on --until-stable after this many passes.")
@parallel_option
@json_option
def sync_command(plan_path: Path, until_stable: bool, threshold: int, max_passes: int,
                 parallel: int | None, as_json: bool) -> int:
    """Bring the target of an already run PLAN up to date, copying only what changed.

    Each pass digests every chunk on both sides, lists only the chunks that differ, copies
    again the records that are missing or different on the target and deletes those the
    source no longer has. A unit whose pass changed nothing is proven equal. Run it while
    the source is still live to shrink the final pass, then once more inside the write
    freeze of a cutover. It also repairs what `verify` found different.

    With --until-stable, a source that can name its changes (Redis: CLIENT TRACKING, which
    the account needs +client|tracking +subscribe &__redis__:invalidate for) is followed
    from the first pass on, and later passes compare only the records it named: they cost
    what changed, not what is stored. Other stores digest every chunk in every pass.
    """
    plan = load_plan(plan_path)
    apply_tunables(plan.options, parallel=parallel)
    outcome = operations.sync_plan(plan, plan_path, until_stable=until_stable,
                                   threshold=threshold, max_passes=max_passes,
                                   on_pass=None if as_json else render.sync_pass)
    if as_json:
        render.as_json({"stable": outcome.stable, "interrupted": outcome.interrupted,
                        "method": outcome.methods, "notes": outcome.notes,
                        "passes": [{"number": p.number, "seconds": round(p.seconds, 3),
                                    "changed": p.changed,
                                    "units": [_unit_json(u) for u in p.units]}
                                   for p in outcome.passes]})
    else:
        render.info("caught up by " + ", ".join(f"{kind}: {how}" for kind, how in
                                                outcome.methods.items()))
        for note in outcome.notes:
            render.warning(note)
    if outcome.interrupted:
        raise Interrupted("sync interrupted; the target keeps what the pass copied",
                          hint=f"run `openim-migrate sync {plan_path}` again")
    last = outcome.passes[-1]
    if last.failed:
        raise UnitsFailed(f"{len(last.failed)} unit(s) failed to sync (first: "
                          f"{last.failed[0].unit}: {last.failed[0].error})",
                          hint="fix the cause and run sync again")
    if until_stable and not outcome.stable:
        raise UnitsFailed(f"not stable after {len(outcome.passes)} pass(es): the last one "
                          f"changed {last.changed} record(s) (threshold {threshold})",
                          hint="the source is still being written; freeze its writers "
                          "(cutover does) or raise --threshold")
    return 0


def _unit_json(unit: UnitSync) -> dict[str, Any]:
    """A unit's pass as JSON; ``proven`` is the cutover's business, not the operator's."""
    out = asdict(unit)
    out.pop("proven", None)
    return out
