"""`openim-migrate verify PLAN`: compare checksums of source and target."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.options import apply_tunables, json_option, parallel_option
from migrator.engine import operations
from migrator.plan import load_plan


@click.command("verify")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--unit", "unit_patterns", multiple=True, metavar="GLOB",
              help="Only units whose key matches, e.g. 'mysql:openIM_v3.chat_logs*' (skips "
              "the whole-store checks, so the result is not a proof for the whole plan).")
@parallel_option
@click.option("--metrics-port", type=int, default=None, metavar="PORT",
              help="Serve Prometheus metrics on this port while working (0: any free port).")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Write Prometheus metrics to this file at the end (node_exporter textfile).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="json: structured logs on stderr, one JSON object per line.")
@json_option
def verify_command(plan_path: Path, unit_patterns: tuple[str, ...], parallel: int | None,
                   metrics_port: int | None, metrics_file: str | None, log_format: str,
                   as_json: bool) -> int:
    """Compare source and target; exit 0 only when everything matches.

    Each unit is cut into chunks whose digests (count + order-independent hash) are
    computed on both sides; a chunk that differs is listed record by record, so the
    report names the unit, the chunk and the keys: missing on target, missing on source
    (extra on the target), or differing. Live schemas are compared on both sides. The live
    source is also listed again within the plan's selection: a table, collection, DB or
    bucket that no unit covers is reported as missing on the target. Store-level objects
    (views, triggers, routines, events, bucket policies) are compared too.

    Exit 5 on any difference; 4 when a server cannot be reached or refuses the login.
    """
    plan = load_plan(plan_path)
    apply_tunables(plan.options, parallel=parallel)
    from migrator.metrics import observed

    with observed("verify", plan.name, port=metrics_port, textfile=metrics_file,
                  log_format=log_format, units=[u.key for u in plan.inventory]) as metrics:
        report = operations.verify_plan(plan, plan_path, unit_patterns=unit_patterns)
        if metrics is not None:
            metrics.verified(report)
            metrics.finished(report.ok)
    if as_json:
        render.as_json(report.to_dict())
    else:
        render.verify_table(report)
    if not report.ok:
        raise render.verify_failure(report, plan_path)
    return 0
