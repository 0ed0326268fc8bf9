"""`openim-migrate drill ARCHIVE[@SET] --target KIND=URL …`: prove a backup restores."""

from __future__ import annotations

import re
from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.backup_cmd import archive_access, archive_endpoint_from, split_set
from migrator.cli.options import apply_tunables, endpoints, json_option, parallel_option
from migrator.cli.restore_cmd import with_targets
from migrator.errors import UsageError, VerificationFailed
from migrator.plan import ON_EXISTING, Options

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not match:
        raise UsageError(f"--max-age {text!r}: expected a number and a unit, e.g. 26h or 8d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@click.command("drill")
@click.argument("archive_url", metavar="ARCHIVE[@SET]")
@archive_access
@with_targets
@click.option("--max-age", default=None, metavar="AGE",
              help="Fail when the set is older than this (e.g. 26h for daily backups): "
              "a drill also proves that backups keep coming.")
@click.option("--on-existing", type=click.Choice(ON_EXISTING), default="fail",
              show_default=True, help="What to do when a staging target already holds data "
              "(a weekly drill into the same stores: overwrite).")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write a JUnit XML report here (for CI).")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Write Prometheus metrics here (node_exporter textfile collector).")
@parallel_option
@json_option
def drill_command(archive_url: str, key: str | None, passphrase: str | None,
                  raw_options: tuple[str, ...], targets: tuple[str, ...],
                  target_option: tuple[str, ...], max_age: str | None, on_existing: str,
                  junit_file: Path | None, metrics_file: str | None, parallel: int | None,
                  as_json: bool) -> int:
    """Restore the newest complete set of ARCHIVE (or ARCHIVE@SET) into staging stores,
    verify every unit against the manifest, run OpenIM's cross-store checks, and report.

    Reports the set's age at drill time (RPO) and the restore plus verify time (RTO), per
    store records and bytes, and pass or fail with every reason: as a table, --json,
    --junit FILE and --metrics-file FILE. Exit 0 only when the drill passes, else 5.
    The targets are written: point them at staging, never at production.
    """
    from migrator.engine.backup import check_targets
    from migrator.engine.drill import drill
    from migrator.metrics import observed

    age = parse_age(max_age) if max_age is not None else None
    url, set_id = split_set(archive_url)
    archive = archive_endpoint_from(url, key, passphrase, raw_options, set_id)
    live = endpoints(targets, target_option, "--target", "target")
    check_targets(live)
    options = apply_tunables(Options(on_existing=on_existing), parallel=parallel)
    with observed("drill", archive.label, textfile=metrics_file) as metrics:
        report = drill(archive, live, options, max_age_seconds=age,
                       progress=metrics)
        if metrics is not None:
            metrics.drilled(report)
            metrics.finished(report.passed)
    if junit_file is not None:
        junit_file.write_text(report.junit())
    if as_json:
        render.as_json(report.to_dict())
    else:
        render.drill_report(report)
    if not report.passed:
        raise VerificationFailed(f"the drill failed: {report.reasons[0]}",
                                 hint=f"{len(report.reasons)} reason(s) above"
                                 f"{'; see ' + str(junit_file) if junit_file else ''}")
    return 0

