"""`openim-migrate restore ARCHIVE[@SET] --target KIND=URL …`: a set back into live stores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from migrator.cli import render
from migrator.cli.backup_cmd import archive_access, archive_endpoint_from, split_set
from migrator.cli.options import (
    apply_tunables,
    endpoints,
    json_option,
    parallel_option,
    progress_option,
    rate_limit_option,
)
from migrator.errors import Interrupted, UnitsFailed
from migrator.plan import ON_EXISTING, Options
from migrator.progress import NullProgress, TqdmProgress

target_options = [
    click.option("--target", "targets", multiple=True, required=True, metavar="KIND=URL",
                 help="Where a store of the set goes, e.g. "
                 "mysql='mysql://root:${MYSQL_PASSWORD}@db:3306'. One per store."),
    click.option("--target-option", multiple=True, metavar="KIND.KEY=VALUE",
                 help="An option of a --target endpoint, e.g. objects.secret_key='${SK}'."),
]


def with_targets(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(target_options):
        func = option(func)
    return func


@click.command("restore")
@click.argument("archive_url", metavar="ARCHIVE[@SET]")
@archive_access
@with_targets
@click.option("--store", "stores", multiple=True, metavar="KIND",
              help="Restore only this store of the set (repeatable).")
@click.option("--unit", "units", multiple=True, metavar="PATTERN",
              help="Restore only units matching this glob, e.g. 'mysql:openim.*' (repeatable).")
@click.option("--on-existing", type=click.Choice(ON_EXISTING), default="fail",
              show_default=True, help="What to do when a target already holds a unit's data.")
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The restore's journal (default: one per set and targets under "
              "$XDG_STATE_HOME/openim-migrate), so running the same command again resumes.")
@click.option("--restart", is_flag=True,
              help="Forget the journal and restore everything again, overwriting.")
@parallel_option
@rate_limit_option
@progress_option
@json_option
def restore_command(archive_url: str, key: str | None, passphrase: str | None,
                    raw_options: tuple[str, ...], targets: tuple[str, ...],
                    target_option: tuple[str, ...], stores: tuple[str, ...],
                    units: tuple[str, ...], on_existing: str, journal: Path | None,
                    restart: bool, parallel: int | None, rate_limit: str | None,
                    progress: bool | None, as_json: bool) -> int:
    """Restore a set of ARCHIVE (the newest complete one, or ARCHIVE@SET) into live stores.

    Each store of the set needs a --target (or narrow with --store). Targets must be empty
    unless --on-existing says otherwise. Resumable: after a crash, Ctrl-C or SIGTERM, the
    same command continues. At the end every unit is verified against the checksums the
    set's manifest recorded at backup time: exit 0 only when all are EQUAL, 5 on any
    difference (each named). A damaged archive file fails its unit and is named.
    """
    from migrator.engine.backup import check_targets, restore

    url, set_id = split_set(archive_url)
    archive = archive_endpoint_from(url, key, passphrase, raw_options, set_id)
    live = endpoints(targets, target_option, "--target", "target")
    check_targets(live)
    options = apply_tunables(Options(on_existing=on_existing), parallel=parallel,
                             rate_limit=rate_limit)
    show = render.stream_is_tty() if progress is None else progress
    bar = TqdmProgress() if show and not as_json else NullProgress()
    outcome = restore(archive, live, options, stores=stores, unit_patterns=units,
                      journal=journal, restart=restart, progress=bar)
    if as_json:
        render.as_json(outcome.to_dict())
    else:
        render.run_summary(outcome.copy)
        if outcome.verify is not None:
            render.verify_table(outcome.verify)
    if outcome.copy.interrupted:
        raise Interrupted("interrupted; progress is saved in the restore's journal",
                          hint="run the same command again to continue")
    if outcome.copy.failed:
        raise UnitsFailed(f"{len(outcome.copy.failed)} unit(s) failed; see the table above",
                          hint="fix the cause and run the same command again")
    if outcome.verify is not None and not outcome.verify.ok:
        raise render.verify_failure(outcome.verify, None)
    return 0
