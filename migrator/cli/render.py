"""The only module that prints: plan summaries, run results, verification tables, errors."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from migrator.config import redact_url
from migrator.engine.operations import RunResult
from migrator.engine.sync import SyncPass
from migrator.engine.verify import ERROR, MATCH, VerifyReport, summary
from migrator.errors import MigrateError, VerificationFailed, VerificationIncomplete
from migrator.plan import Plan


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def as_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def error(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)


def warning(message: str) -> None:
    click.secho(f"warning: {message}", fg="yellow", err=True)


def info(message: str) -> None:
    click.echo(message, err=True)


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    click.echo(click.style(line, bold=True))
    for row in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def plan_summary(plan: Plan, path: str) -> None:
    click.echo(f"plan {plan.name!r} written to {path}")
    for kind, pair in plan.stores.items():
        units = plan.units_of(kind)
        click.echo(f"  {kind}: {redact_url(pair.source.url)} -> {redact_url(pair.target.url)}")
        click.echo(f"    {len(units)} unit(s), {sum(u.records for u in units):,} records, "
                   f"{human_bytes(sum(u.bytes for u in units))}")
        for side in ("source", "target"):
            for note in pair.facts.get(side, {}).get("notes", []):
                click.echo(f"    {side}: {note}")
    est = plan.estimate
    click.echo(f"  estimate: {est.get('records', 0):,} records, "
               f"{human_bytes(est.get('bytes', 0))}, about {est.get('copy_seconds', 0)} s to copy")
    if plan.existing:
        click.echo(f"  {len(plan.existing)} unit(s) already hold data on the target; "
                   f"on_existing: {plan.options.on_existing}")


def dry_run(rows: list[dict[str, Any]], as_json_output: bool) -> None:
    todo = [r for r in rows if r["to_copy"]]
    if as_json_output:
        as_json({"dry_run": True, "would_copy": [
            {"unit": r["unit"], "state": r["state"], "records": r["records_left"],
             "bytes": r["bytes"]} for r in todo]})
        return
    table([[r["unit"], r["state"], f"{r['records']:,}", human_bytes(r["bytes"])] for r in rows],
          ["unit", "state", "records (plan)", "bytes (plan)"])
    click.echo(f"dry run: would copy {len(todo)} unit(s), about "
               f"{sum(r['records_left'] for r in todo):,} records, "
               f"{human_bytes(sum(r['bytes'] for r in todo))}; nothing was written")


def verify_failure(report: VerifyReport, plan_path: object) -> MigrateError:
    """The error that ends a verify that is not EQUAL, with the exit code it deserves
    (``plan_path`` None: a restore, checked against a set's manifest)."""
    if report.exit_code == 5:
        if plan_path is None:
            return VerificationFailed(
                "the restored data differs from the set's manifest",
                hint="`openim-migrate backup check ARCHIVE --read-data` tells whether the "
                "archive is damaged; otherwise something wrote to the target meanwhile")
        return VerificationFailed(
            "verification found differences",
            hint=f"`openim-migrate sync {plan_path}` repairs the named units (copies what "
            "differs, deletes what the source no longer has); data that no unit covers "
            "needs a new `openim-migrate plan`")
    failed = [u for u in report.units if u.status == ERROR]
    first = failed[0].error.splitlines()[0] if failed and failed[0].error else "a check failed"
    error = VerificationIncomplete(
        f"verification could not finish: {len(failed)} unit(s) could not be read ({first})",
        hint="nothing was proven; fix the cause and verify again")
    error.exit_code = report.exit_code
    return error


def run_summary(result: RunResult, recopied: list[str] | None = None) -> None:
    if recopied:
        click.echo(f"copying again {len(recopied)} unit(s) that verify found different")
    rows = [[o.key, o.state, f"{o.records:,}", human_bytes(o.bytes),
             str(o.skipped or ""), (o.error or "")[:80]] for o in result.outcomes]
    table(rows, ["unit", "state", "records", "bytes", "skipped", "error"])
    rate = result.bytes / result.seconds if result.seconds else 0
    click.echo(f"copied {result.records:,} records, {human_bytes(result.bytes)} in "
               f"{result.seconds:.1f} s ({human_bytes(rate)}/s)")
    for note in result.notices:
        warning(note)
    skipped = sum(o.skipped for o in result.outcomes)
    if skipped:
        click.echo(f"{skipped} record(s) vanished at the source during the copy (e.g. expired "
                   "keys); they are listed in the journal's events")


def verify_table(report: VerifyReport) -> None:
    rows = []
    for u in report.units:
        rows.append([u.unit, u.status, f"{u.source_count:,}", f"{u.target_count:,}",
                     str(u.n_missing_on_target), str(u.n_missing_on_source), str(u.n_differ),
                     "yes" if u.schema else ""])
    table(rows, ["unit", "status", "source", "target", "missing-on-target",
                 "missing-on-source", "differ", "schema"])
    for u in report.units:
        if u.status == MATCH:
            continue
        click.secho(f"\n{u.unit}: {u.error or summary(u)}", fg="red")
        if u.chunks:
            click.echo(f"  chunks: {', '.join(u.chunks[:10])}"
                       + (" …" if len(u.chunks) > 10 else ""))
        for label, keys in (("missing on target", u.missing_on_target),
                            ("missing on source", u.missing_on_source),
                            ("differ", u.differ)):
            for key in keys:
                click.echo(f"  {label}: {key}")
        for line in u.schema:
            click.echo(f"  schema: {line}")
    for name, check in report.extra.items():
        missing = check.get("missing", [])
        status = "ok" if not missing else f"{check.get('n_missing', len(missing))} missing"
        click.echo(f"\ncheck {name}: {status} ({check.get('checked', 0):,} checked)")
        for key in missing[:20]:
            click.echo(f"  missing: {key}")
    matched = sum(1 for u in report.units if u.status == MATCH)
    verdict = click.style("EQUAL", fg="green") if report.ok else click.style("DIFFERENT",
                                                                                fg="red")
    click.echo(f"\n{matched}/{len(report.units)} unit(s) match in {report.seconds:.1f} s: "
               f"{verdict}")


def sync_pass(result: SyncPass) -> None:
    rows = [[u.unit, f"{u.copied:,}", f"{u.deleted:,}", human_bytes(u.bytes),
             str(len(u.chunks)), (u.error or "")[:80]] for u in result.units if u.changed
            or u.error]
    if rows:
        table(rows, ["unit", "copied", "deleted", "bytes", "chunks", "error"])
    click.echo(f"pass {result.number}: {sum(u.copied for u in result.units):,} record(s) "
               f"copied, {sum(u.deleted for u in result.units):,} deleted, "
               f"{human_bytes(sum(u.bytes for u in result.units))} in {result.seconds:.1f} s"
               + (f"; {len(result.failed)} unit(s) failed" if result.failed else ""))


def stream_is_tty() -> bool:
    return sys.stderr.isatty()


def backup_summary(outcome: Any) -> None:
    """A ``BackupOutcome``: the units written, then the set and its cuts."""
    run_summary(outcome.copy)
    manifest = outcome.manifest
    if manifest is None:
        info(f"set {outcome.set_id} in {outcome.archive}: not complete")
        return
    totals = manifest.totals()
    for kind, store in sorted(manifest.stores.items()):
        cut = store.cut
        if cut is not None:
            how = cut.detail or ("a snapshot" if cut.snapshot else "no snapshot")
            info(f"  {kind}: cut {cut.time} ({how})")
    again = f", {outcome.skipped_units} unit(s) from the interrupted run" if outcome.resumed \
        else ""
    info(f"set {outcome.set_id} complete in {outcome.archive}: {totals['records']:,} records, "
         f"{totals['files']} file(s), {human_bytes(totals['own_bytes'])} stored "
         f"({human_bytes(totals['plain_bytes'])} before compression){again}")


def drill_report(report: Any) -> None:
    """A ``DrillReport``: per store, then RPO/RTO and the verdict with every reason."""
    rows = [[kind, f"{t.get('records', 0):,}", human_bytes(t.get("bytes", 0)),
             "pass" if t.get("passed") else "FAIL"] for kind, t in sorted(report.stores.items())]
    if rows:
        table(rows, ["store", "records", "bytes", "result"])

    def seconds(value: float | None) -> str:
        return "unknown" if value is None else f"{value:,.1f}s"

    info(f"set {report.set_id or '(none)'} of {report.archive}")
    info(f"RPO (set age at drill time): {seconds(report.rpo_seconds)}; RTO (restore "
         f"{seconds(report.restore_seconds)} + verify {seconds(report.verify_seconds)}): "
         f"{seconds(report.rto_seconds)}")
    for reason in report.reasons:
        warning(reason)
    info("drill PASSED" if report.passed else f"drill FAILED ({len(report.reasons)} reason(s))")
