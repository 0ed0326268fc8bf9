"""`openim-migrate run PLAN`: copy every unit, then verify; resumable from the journal."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.options import apply_tunables, json_option, parallel_option, rate_limit_option
from migrator.engine.journal import Journal, journal_path
from migrator.engine.planning import refuse_if_target_filled
from migrator.engine.session import Session
from migrator.engine.transfer import Transfer
from migrator.engine.verify import verify
from migrator.errors import Interrupted, UnitsFailed, VerificationFailed
from migrator.openim import cross_checks
from migrator.plan import Plan, load_plan
from migrator.progress import NullProgress, TqdmProgress


def _dry_run(plan: Plan, journal_file: Path, as_json: bool) -> int:
    states = {}
    if journal_file.exists():
        with Journal(journal_file).open(exclusive=False) as journal:
            states = journal.units()
    rows, todo = [], []
    for unit in plan.inventory:
        state = states.get(unit.key)
        name = state.state if state else "pending"
        done = state.records if state and name == "copying" else 0
        if name not in ("copied", "verified", "skipped", "differs"):
            todo.append({"unit": unit.key, "state": name, "records": unit.records - done,
                         "bytes": unit.bytes})
        rows.append([unit.key, name, f"{unit.records:,}", render.human_bytes(unit.bytes)])
    with Session(plan.stores, plan.options) as session:
        for kind in plan.stores:
            session.check_access(kind)
    if as_json:
        render.as_json({"dry_run": True, "would_copy": todo})
    else:
        render.table(rows, ["unit", "state", "records (plan)", "bytes (plan)"])
        click.echo(f"dry run: would copy {len(todo)} unit(s), about "
                   f"{sum(t['records'] for t in todo):,} records, "
                   f"{render.human_bytes(sum(t['bytes'] for t in todo))}; nothing was written")
    return 0


@click.command("run")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--restart", is_flag=True,
              help="Forget the journal and copy everything again, overwriting the target.")
@click.option("--dry-run", is_flag=True,
              help="Check access and say what would be copied; write nothing.")
@click.option("--verify/--no-verify", "do_verify", default=None,
              help="Verify after copying (default: when the plan's steps include verify).")
@parallel_option
@rate_limit_option
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr (default: when stderr is a terminal).")
@json_option
def run_command(plan_path: Path, restart: bool, dry_run: bool, do_verify: bool | None,
                parallel: int | None, rate_limit: str | None, progress: bool | None,
                as_json: bool) -> int:
    """Execute PLAN: copy every unit, then verify.

    Progress is checkpointed in a journal beside the plan (PLAN.journal.sqlite) after every
    committed batch, so after a crash, a failure or Ctrl-C, running the same command again
    continues where it stopped; no record is copied twice. The first Ctrl-C stops at the
    next batch boundary; a second one aborts.
    """
    plan = load_plan(plan_path)
    apply_tunables(plan.options, parallel=parallel, rate_limit=rate_limit)
    journal_file = journal_path(plan_path)
    if dry_run:
        return _dry_run(plan, journal_file, as_json)
    show_progress = render.stream_is_tty() if progress is None else progress
    with Journal(journal_file).open() as journal:
        if restart and journal.has_progress():
            plan.options.on_existing = "overwrite"  # the earlier attempt's data is ours
        journal.bind_plan(plan.fingerprint(), restart=restart)
        with Session(plan.stores, plan.options, journal) as session:
            for kind in plan.stores:
                session.check_access(kind)
            if not journal.has_progress() and plan.options.on_existing == "fail":
                refuse_if_target_filled(plan, session)
            transfer = Transfer(plan, journal, session,
                                progress=TqdmProgress() if show_progress and not as_json
                                else NullProgress())
            result = transfer.run()
            if not as_json:
                render.run_summary(result)
            if result.interrupted:
                raise Interrupted("interrupted; progress is saved in the journal",
                                  hint=f"run `openim-migrate run {plan_path}` to continue")
            report = None
            verify_now = ("verify" in plan.steps) if do_verify is None else do_verify
            if verify_now and not result.failed:
                copied = [u for u in plan.inventory
                          if journal.unit(u.key).state in ("copied", "verified", "differs")]
                report = verify(copied, session, parallel=plan.options.parallel,
                                journal=journal, checks=cross_checks(plan))
            if as_json:
                render.as_json({"copy": {"seconds": round(result.seconds, 3),
                                         "units": [vars(o) for o in result.outcomes]},
                                "verify": report.to_dict() if report else None})
            elif report is not None:
                click.echo()
                render.verify_table(report)
    if result.failed:
        raise UnitsFailed(f"{len(result.failed)} unit(s) failed; see the table above",
                          hint=f"fix the cause and run `openim-migrate run {plan_path}` again: "
                          "copied units are not copied twice")
    if report is not None and not report.ok:
        raise VerificationFailed("verification found differences",
                                 hint=f"details: `openim-migrate verify {plan_path}`")
    return 0

