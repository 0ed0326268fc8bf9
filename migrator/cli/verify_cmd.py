"""`openim-migrate verify PLAN`: compare checksums of source and target."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.options import apply_tunables, json_option, parallel_option
from migrator.engine.journal import Journal, journal_path
from migrator.engine.session import Session
from migrator.engine.verify import verify
from migrator.errors import UsageError, VerificationFailed
from migrator.openim import cross_checks
from migrator.plan import load_plan


@click.command("verify")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--unit", "unit_patterns", multiple=True, metavar="GLOB",
              help="Only units whose key matches, e.g. 'mysql:openIM_v3.chat_logs*'.")
@parallel_option
@json_option
def verify_command(plan_path: Path, unit_patterns: tuple[str, ...], parallel: int | None,
                   as_json: bool) -> int:
    """Compare source and target unit by unit; exit 0 only when everything matches.

    Each unit is cut into chunks whose digests (count + order-independent hash) are
    computed on both sides; a chunk that differs is listed record by record, so the
    report names the unit, the chunk and the keys: missing on target, missing on source
    (extra on the target), or differing. Schemas and indexes are compared too.
    """
    plan = load_plan(plan_path)
    apply_tunables(plan.options, parallel=parallel)
    units = plan.inventory
    if unit_patterns:
        units = [u for u in units if any(fnmatch.fnmatchcase(u.key, p) for p in unit_patterns)]
        if not units:
            raise UsageError(f"no unit matches {', '.join(unit_patterns)}")
    # Shared, not exclusive: verify may run beside a copy; the journal keeps its results
    # and the hash cache that spares a second verify from re-reading unchanged objects.
    with Journal(journal_path(plan_path)).open(exclusive=False) as journal, \
            Session(plan.stores, plan.options, journal) as session:
        report = verify(units, session, parallel=plan.options.parallel, journal=journal,
                        checks=None if unit_patterns else cross_checks(plan))
    if as_json:
        render.as_json(report.to_dict())
    else:
        render.verify_table(report)
    if not report.ok:
        raise VerificationFailed(
            "verification found differences",
            hint="re-copy the named units (`openim-migrate run PLAN --restart`), or fix the "
            "named keys, then verify again")
    return 0
