"""`openim-migrate cutover PLAN`: freeze, final sync, verify, switch; and `--rollback`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.options import json_option
from migrator.engine import cutover
from migrator.errors import ApprovalRefused, MigrateError
from migrator.plan import load_plan


def _approved(job: cutover.Cutover, approve: str | None) -> bool:
    """The approval gate: staging runs unattended; production needs the plan's cutover
    fingerprint, given with --approve or typed by an operator at a terminal."""
    if job.environment != "production":
        return True
    fingerprint = job.fingerprint
    if approve is not None:
        if cutover.approves(approve, fingerprint):
            return True
        raise ApprovalRefused(
            "--approve does not name this plan's cutover fingerprint (was the plan or its "
            "cutover section changed after the approval?); nothing was changed",
            hint="print the current one with `openim-migrate cutover PLAN --fingerprint` "
            "and have it approved again")
    if sys.stdin.isatty() and sys.stderr.isatty():
        render.warning(f"production cutover of plan {job.plan.name!r}: this stops the "
                       "source's writers and switches OpenIM in the cluster over")
        typed = click.prompt(f"type the plan's cutover fingerprint ({fingerprint[:12]}…) to "
                             "approve", default="", show_default=False, err=True)
        if cutover.approves(typed, fingerprint):
            return True
        raise ApprovalRefused("the fingerprint typed does not match; nothing was changed")
    raise ApprovalRefused(
        "a production cutover needs --approve FINGERPRINT (or an operator typing it at a "
        "prompt); nothing was changed",
        hint="`openim-migrate cutover PLAN --fingerprint` prints it; have it reviewed, then "
        "pass it with --approve")


def _metrics(metrics: object, out: cutover.CutoverOutcome) -> None:
    """The freeze window as Prometheus samples, beside the command's usual ones."""
    from prometheus_client import Gauge

    from migrator.metrics import PREFIX, Metrics

    assert isinstance(metrics, Metrics)
    step = Gauge(f"{PREFIX}_cutover_step_seconds", "Seconds each step of the cutover's freeze "
                 "window took (freeze, sync, verify, switch, rollout)", ["step"],
                 registry=metrics.registry)
    for name, seconds in out.steps.items():
        step.labels(name).set(seconds)
    if out.window is not None:
        Gauge(f"{PREFIX}_cutover_freeze_window_seconds", "Seconds from the start of the "
              "freeze to the end of the switch", registry=metrics.registry).set(out.window)
    Gauge(f"{PREFIX}_cutover_state", "1 for the cutover's state in the journal at the end "
          "(switched, rolled-back, rolling-back, ...)", ["state"],
          registry=metrics.registry).labels(out.state or "none").set(1)
    metrics.finished(out.failure is None and out.rollback_error is None)


def _report(out: cutover.CutoverOutcome) -> None:
    """The pre-checks and each step were shown as they happened; this is the summary."""
    if out.action == "rolled-back" and out.failure is None:
        click.echo(f"cutover {out.cutover_id} ({out.environment}): rolled back from state "
                   f"{out.resumed_from}")
    else:
        resumed = f" (resumed from {out.resumed_from})" if out.resumed_from else ""
        click.echo(f"cutover {out.cutover_id or '-'} ({out.environment}): {out.action}"
                   f"{resumed}")
        if out.steps:
            render.table([[s, f"{v:.2f}"] for s, v in out.steps.items()],
                         ["step", "seconds"])
        if out.window is not None:
            click.echo(f"freeze window: {out.window:.2f} s (from the start of the freeze to "
                       "the end of the rollout)")
    for note in out.notes:
        click.echo(f"  {note}")
    if out.verify is not None and not out.verify.ok:
        render.verify_table(out.verify)


def _error(out: cutover.CutoverOutcome, plan_path: Path) -> MigrateError | None:
    if out.rollback_error is not None:
        cause = f"cutover failed ({out.failure.message}); " if out.failure else ""
        error = MigrateError(f"{cause}the rollback did not finish: "
                             f"{out.rollback_error.message}",
                             hint=out.rollback_error.hint or f"fix the cause, then run "
                             f"`openim-migrate cutover {plan_path} --rollback` again")
        error.exit_code = out.rollback_error.exit_code
        return error
    if out.failure is not None:
        prefix = "" if out.resumed_from == cutover.ROLLING_BACK else "cutover rolled back: "
        error = MigrateError(prefix + out.failure.message, hint=out.failure.hint)
        error.exit_code = out.failure.exit_code
        return error
    return None


@click.command("cutover")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rollback", is_flag=True,
              help="Undo the last cutover: restore the saved ConfigMaps and Secrets, restart "
              "the Deployments, unfreeze the source.")
@click.option("--approve", metavar="FINGERPRINT",
              help="Approve a production cutover: the plan's cutover fingerprint (all of it, "
              "or its first 12 characters).")
@click.option("--fingerprint", "show_fingerprint", is_flag=True,
              help="Print the plan's cutover fingerprint (what --approve names) and exit.")
@click.option("--check", "check_only", is_flag=True,
              help="Run the pre-checks only; nothing is frozen or changed.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Write Prometheus metrics (the freeze window per step) to this file at the "
              "end (node_exporter textfile).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="json: structured logs on stderr, one JSON object per line.")
@json_option
def cutover_command(plan_path: Path, rollback: bool, approve: str | None,
                    show_fingerprint: bool, check_only: bool, metrics_file: str | None,
                    log_format: str, as_json: bool) -> int:
    """Switch OpenIM over to the target: freeze the source's writers, run a final sync and
    a full verify that must be EQUAL, patch OpenIM's ConfigMap and Secret in the cluster,
    restart its Deployments and wait for the rollout. Prints the freeze window per step.

    Pre-checks first (the last verify or sync is recent, the lag is small, OpenIM's objects
    exist in the cluster, the source accounts can use the store guards the plan asks for).
    Any failure after the freeze rolls everything back and exits non-zero with the reason.
    Every step is in the journal: after a crash, run the same command again and it finishes
    the cutover (or a rollback that was under way).

    `environment: production` plans need --approve FINGERPRINT (or the fingerprint typed at
    a prompt); without it nothing is changed and the exit code is 8. Staging runs unattended.
    """
    plan = load_plan(plan_path)
    job = cutover.Cutover(plan, plan_path, on_event=None if as_json else render.info)
    if show_fingerprint:
        click.echo(job.fingerprint)
        return 0
    if check_only:
        out = cutover.check_only(plan, plan_path)
        if as_json:
            render.as_json(out.to_dict())
        else:
            for line in out.checks:
                click.echo(f"pre-check: {line}")
            click.echo(f"pre-checks passed ({out.environment}); cutover fingerprint "
                       f"{out.fingerprint}")
        return 0
    approved = True if rollback else _approved(job, approve)
    from migrator.metrics import observed

    with observed("cutover", plan.name, textfile=metrics_file,
                  log_format=log_format) as metrics:
        out = job.rollback() if rollback else job.run(approved=approved)
        if metrics is not None:
            _metrics(metrics, out)
    if as_json:
        render.as_json(out.to_dict())
    else:
        _report(out)
    error = _error(out, plan_path)
    if error is not None:
        raise error
    return 0
