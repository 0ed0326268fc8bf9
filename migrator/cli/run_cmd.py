"""`openim-migrate run PLAN`: copy every unit, then verify; resumable from the journal."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.options import apply_tunables, json_option, parallel_option, rate_limit_option
from migrator.engine import operations
from migrator.errors import Interrupted, UnitsFailed
from migrator.plan import load_plan
from migrator.progress import NullProgress, TqdmProgress


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
@click.option("--metrics-port", type=int, default=None, metavar="PORT",
              help="Serve Prometheus metrics on this port while working (0: any free port).")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Write Prometheus metrics to this file at the end (node_exporter textfile).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="json: structured logs on stderr, one JSON object per line.")
@json_option
def run_command(plan_path: Path, restart: bool, dry_run: bool, do_verify: bool | None,
                parallel: int | None, rate_limit: str | None, progress: bool | None,
                metrics_port: int | None, metrics_file: str | None, log_format: str,
                as_json: bool) -> int:
    """Execute PLAN: copy every unit, then verify.

    Progress is checkpointed in a journal beside the plan (PLAN.journal.sqlite) after every
    committed batch, so after a crash, a failure, Ctrl-C or SIGTERM, running the same
    command again continues where it stopped; no record is copied twice. Units that a
    verify found different are copied again. The source must still look as it did at
    `plan`: a table, collection, DB or bucket added to the selection since is refused.
    The first Ctrl-C (or SIGTERM) stops at the next batch boundary; a second Ctrl-C aborts.
    """
    plan = load_plan(plan_path)
    apply_tunables(plan.options, parallel=parallel, rate_limit=rate_limit)
    if dry_run:
        rows = operations.dry_run(plan, plan_path)
        render.dry_run(rows, as_json)
        return 0
    from migrator.metrics import Tee, observed

    show_progress = render.stream_is_tty() if progress is None else progress
    bar = TqdmProgress() if show_progress and not as_json else NullProgress()
    with observed("run", plan.name, port=metrics_port, textfile=metrics_file,
                  log_format=log_format, units=[u.key for u in plan.inventory]) as metrics:
        outcome = operations.run_plan(plan, plan_path, restart=restart, verify_after=do_verify,
                                      progress=Tee(bar, metrics) if metrics else bar)
        if metrics is not None:
            if outcome.verify is not None:
                metrics.verified(outcome.verify)
            metrics.finished(not outcome.copy.failed and not outcome.copy.interrupted and (
                outcome.verify is None or outcome.verify.ok))
    result, report = outcome.copy, outcome.verify
    if as_json:
        render.as_json({"copy": {"seconds": round(result.seconds, 3),
                                 "recopied": outcome.recopied,
                                 "notices": result.notices,
                                 "units": [vars(o) for o in result.outcomes]},
                        "verify": report.to_dict() if report else None})
    else:
        render.run_summary(result, outcome.recopied)
        if report is not None:
            render.verify_table(report)
    if result.interrupted:
        raise Interrupted("interrupted; progress is saved in the journal",
                          hint=f"run `openim-migrate run {plan_path}` to continue")
    if result.failed:
        raise UnitsFailed(f"{len(result.failed)} unit(s) failed; see the table above",
                          hint=f"fix the cause and run `openim-migrate run {plan_path}` again: "
                          "copied units are not copied twice")
    if report is not None and not report.ok:
        raise render.verify_failure(report, plan_path)
    return 0
