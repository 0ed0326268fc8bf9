"""`openim-migrate backup [create] PLAN --to ARCHIVE`, and `backup list|check|prune
ARCHIVE`: write sets into an archive and look after them. The options that open an
archive (key, passphrase, -o) are shared with `restore` and `drill`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from migrator.cli import render
from migrator.cli.options import (
    apply_tunables,
    endpoints,
    json_option,
    pairs,
    parallel_option,
    progress_option,
    rate_limit_option,
)
from migrator.config import Endpoint
from migrator.errors import Interrupted, UnitsFailed, UsageError, VerificationFailed
from migrator.plan import Options, load_plan
from migrator.progress import NullProgress, TqdmProgress
from migrator.stores.base import Selection

# -o NAME=VALUE: the archive endpoint's options (see docs/backups.md)
_OPTION_NAMES = ("access_key", "secret_key", "session_token", "region", "multipart_part_size",
                 "compression_level",
                 "tls.enabled", "tls.ca_file", "tls.cert_file", "tls.key_file", "tls.verify")
_BOOLEAN = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def archive_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """ARCHIVE plus how to open it; shared by every command that reads or writes one."""
    return click.argument("archive_url", metavar="ARCHIVE")(archive_access(func))


def archive_access(func: Callable[..., Any]) -> Callable[..., Any]:
    """How to open an archive: its key or passphrase and endpoint options."""
    for option in reversed([
        click.option("--key", default=None, metavar="REF",
                     help="The archive's age identity as a reference: '${VAR}' or "
                     "'${k8s:namespace/secret#key}' holding an AGE-SECRET-KEY-1… line."),
        click.option("--passphrase", default=None, metavar="REF",
                     help="The archive's passphrase as a reference ('${VAR}' or "
                     "'${k8s:namespace/secret#key}'), instead of --key."),
        click.option("-o", "--option", "raw_options", multiple=True, metavar="NAME=VALUE",
                     help="An archive option: " + ", ".join(_OPTION_NAMES) +
                     " (secrets as '${VAR}' references)."),
    ]):
        func = option(func)
    return func


def archive_endpoint_from(url: str, key: str | None, passphrase: str | None,
                          raw_options: tuple[str, ...], set_id: str | None = None
                          ) -> Endpoint:
    """The command line's archive as an endpoint, checked like a plan's."""
    from migrator.archive import archive_endpoint

    options: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for raw in raw_options:
        name, sep, value = raw.partition("=")
        if not sep or name not in _OPTION_NAMES:
            raise UsageError(f"-o {raw!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(_OPTION_NAMES)}")
        if name in ("tls.enabled", "tls.verify"):
            if value.lower() not in _BOOLEAN:
                raise UsageError(f"-o {name}: expected true or false, got {value!r}")
            tls[name[4:]] = _BOOLEAN[value.lower()]
        elif name.startswith("tls."):
            tls[name[4:]] = value
        elif name == "compression_level":
            if not value.isdigit():
                raise UsageError(f"-o compression_level: expected a number, got {value!r}")
            options[name] = int(value)
        else:
            options[name] = value
    if tls:
        options["tls"] = {"enabled": True, **tls}
    if key is not None:
        options["key"] = key
    if passphrase is not None:
        options["passphrase"] = passphrase
    if set_id is not None:
        options["set"] = set_id
    return archive_endpoint(url, options)


@contextmanager
def opened_archive(url: str, key: str | None, passphrase: str | None,
                   raw_options: tuple[str, ...]) -> Iterator[Any]:
    from migrator.archive import open_archive

    repo = open_archive(archive_endpoint_from(url, key, passphrase, raw_options))
    try:
        yield repo
    finally:
        repo.close()


def split_set(text: str) -> tuple[str, str | None]:
    """``ARCHIVE@SET`` -> (ARCHIVE, SET); a plain ARCHIVE -> (ARCHIVE, None). Only a
    suffix shaped like a set's name counts, so ``user@host`` in an S3 URL stays."""
    from migrator.archive.layout import SET_ID

    url, sep, name = text.rpartition("@")
    if sep and SET_ID.match(name):
        return url, name
    return text, None


class DefaultGroup(click.Group):
    """`backup PLAN --to ARCHIVE` is `backup create PLAN --to ARCHIVE`: a first word
    that is no subcommand (nor --help) goes to the default one."""

    default = "create"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@click.group("backup", cls=DefaultGroup)
def backup_group() -> None:
    """Archives of OpenIM's data: sets of portable files on a disk or an S3 bucket.

    `backup PLAN --to ARCHIVE` (short for `backup create …`) backs up the plan's sources
    into a new set; `list`, `check` and `prune` look after the sets. `openim-migrate
    restore` and `drill` read them back.

    ARCHIVE is archive+file:///absolute/path or archive+s3://host:port/bucket[/prefix]
    (plain HTTP unless -o tls.enabled=true; credentials as -o access_key=… and
    -o secret_key='${VAR}', or in the URL as user:${VAR}@). An encrypted archive needs
    --key or --passphrase, always as a reference, never the secret itself.
    """


@backup_group.command("create")
@click.argument("plan_path", metavar="[PLAN]", required=False,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "archive_url", required=True, metavar="ARCHIVE",
              help="The archive to write a new set into (created when it does not exist).")
@archive_access
@click.option("--source", "sources", multiple=True, metavar="KIND=URL",
              help="Back up this store instead of a plan's sources, e.g. "
              "redis='redis://:${REDIS_PASSWORD}@host:6379'. Repeat per store.")
@click.option("--source-option", multiple=True, metavar="KIND.KEY=VALUE",
              help="An option of a --source endpoint, e.g. objects.access_key='${AK}'.")
@click.option("--preset", multiple=True, metavar="KIND=NAME",
              help="With --source: a selection preset, e.g. redis=openim.")
@click.option("--include", multiple=True, metavar="KIND=PATTERN",
              help="With --source: only what matches.")
@click.option("--exclude", multiple=True, metavar="KIND=PATTERN",
              help="With --source: leave out what matches.")
@parallel_option
@rate_limit_option
@progress_option
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Write Prometheus metrics to this file at the end (node_exporter textfile).")
@json_option
def create_command(plan_path: Path | None, archive_url: str, key: str | None,
                   passphrase: str | None, raw_options: tuple[str, ...],
                   sources: tuple[str, ...], source_option: tuple[str, ...],
                   preset: tuple[str, ...], include: tuple[str, ...],
                   exclude: tuple[str, ...], parallel: int | None, rate_limit: str | None,
                   progress: bool | None, metrics_file: str | None, as_json: bool) -> int:
    """Back up PLAN's sources (or each --source) into a new set of ARCHIVE.

    Every store is read as its store allows (a snapshot where it has one; the set says
    where it is not one) and written in portable files: mongodump's layout, MySQL CREATE
    statements and LOAD DATA files, Redis RDB files, object bytes with metadata sidecars
    (unchanged objects are referenced from the previous set, not stored again). The
    manifest is written last, so a set without one is never listed as complete. Killed or
    interrupted, the same command continues the same set: units already stored are not
    written again. Only reads the sources.
    """
    from migrator.engine.backup import Source, backup
    from migrator.metrics import Tee, observed

    if plan_path is not None and sources:
        raise UsageError("give a PLAN or --source KIND=URL, not both")
    if plan_path is None and not sources:
        raise UsageError("nothing to back up: give a PLAN or --source KIND=URL")
    archive = archive_endpoint_from(archive_url, key, passphrase, raw_options)
    if plan_path is not None:
        if preset or include or exclude or source_option:
            raise UsageError("--preset/--include/--exclude/--source-option go with --source; "
                             "a plan has its own selection")
        plan = load_plan(plan_path)
        name, options = plan.name, plan.options
        chosen = {k: Source(p.source, p.selection) for k, p in plan.stores.items()}
    else:
        name, options = "backup", Options()
        presets, includes, excludes = (pairs(preset, "--preset"), pairs(include, "--include"),
                                       pairs(exclude, "--exclude"))
        chosen = {kind: Source(endpoint, Selection(
                      include=tuple(includes.get(kind, ())),
                      exclude=tuple(excludes.get(kind, ())),
                      preset=presets[kind][-1] if presets.get(kind) else None))
                  for kind, endpoint in endpoints(sources, source_option, "--source",
                                                  "source").items()}
    apply_tunables(options, parallel=parallel, rate_limit=rate_limit)
    show = render.stream_is_tty() if progress is None else progress
    bar = TqdmProgress() if show and not as_json else NullProgress()
    with observed("backup", name, textfile=metrics_file) as metrics:
        outcome = backup(name, chosen, archive, options,
                         progress=Tee(bar, metrics) if metrics else bar)
        if metrics is not None:
            metrics.finished(outcome.manifest is not None)
    if as_json:
        render.as_json(outcome.to_dict())
    else:
        render.backup_summary(outcome)
    if outcome.copy.interrupted:
        raise Interrupted("interrupted; the units stored so far are kept in the set",
                          hint="run the same command again to finish this set")
    if outcome.copy.failed:
        raise UnitsFailed(f"{len(outcome.copy.failed)} unit(s) failed; the set is not "
                          "complete", hint="fix the cause and run the same command again: "
                          "stored units are not written twice")
    return 0


@backup_group.command("list")
@archive_options
@json_option
def list_command(archive_url: str, key: str | None, passphrase: str | None,
                 raw_options: tuple[str, ...], as_json: bool) -> int:
    """The archive's sets, oldest first: time, state (complete, incomplete, damaged,
    forgotten), stores, each store's cut and whether it was a snapshot, size."""
    with opened_archive(archive_url, key, passphrase, raw_options) as repo:
        sets = [info.to_dict() for info in repo.sets()]
        label = repo.label
    if as_json:
        render.as_json({"archive": label, "sets": sets})
        return 0
    rows = []
    for s in sets:
        totals = s.get("totals", {})
        cuts = s.get("cuts") or {}
        cut = ", ".join(f"{kind} {c['time'][11:19]}{'' if c['snapshot'] else ' (no snapshot)'}"
                        for kind, c in cuts.items() if c) or "-"
        rows.append([s["set"], s["time"].replace("T", " "), s["state"],
                     ",".join(s["stores"]) or "-", cut,
                     f"{totals['records']:,}" if totals else "-",
                     render.human_bytes(s["stored_bytes"])])
    render.table(rows, ["set", "time (UTC)", "state", "stores", "cut", "records", "stored"])
    render.info(f"{len(sets)} set(s) in {label}")
    return 0


@backup_group.command("check")
@archive_options
@click.option("--read-data", is_flag=True,
              help="Also read every stored file and compare its SHA-256 (finds changed "
              "bytes; without it, only presence and sizes are checked).")
@click.option("--subset", default=None, metavar="PCT",
              help="With --read-data: read only this random percentage of the files.")
@json_option
def check_command(archive_url: str, key: str | None, passphrase: str | None,
                  raw_options: tuple[str, ...], read_data: bool, subset: str | None,
                  as_json: bool) -> int:
    """Check every set like `restic check`: manifests, every file's presence and size,
    chunk digests against record counts, and with --read-data every file's SHA-256.
    Names each damaged or missing file. Exit 5 on damage; incomplete sets and leftover
    files are warnings."""
    from migrator.archive import check

    percent = _percent(subset) if subset is not None else 100.0
    if subset is not None and not read_data:
        raise UsageError("--subset needs --read-data")
    with opened_archive(archive_url, key, passphrase, raw_options) as repo:
        report = check(repo, read_data=read_data, subset=percent)
    if as_json:
        render.as_json(report.to_dict())
    else:
        if report.problems:
            render.table([[p.severity, p.path, p.problem] for p in report.problems],
                         ["", "file", "problem"])
        read = (f", {report.files_read} read ({render.human_bytes(report.bytes_read)})"
                if read_data else " (sizes only; --read-data reads them)")
        render.info(f"{report.complete} complete set(s) of {report.sets}, "
                    f"{report.files} file(s) checked{read}: "
                    f"{len(report.damage)} damaged or missing")
    if not report.ok:
        raise VerificationFailed(f"the archive has {len(report.damage)} damaged or missing "
                                 "file(s); each is named above")
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise UsageError(f"--subset {text!r}: expected a percentage, e.g. 10") from None
    if not 0 < value <= 100:
        raise UsageError(f"--subset {text!r}: expected more than 0 and at most 100")
    return value


@backup_group.command("prune")
@archive_options
@click.option("--keep-last", type=int, default=0, metavar="N", help="Keep the N newest sets.")
@click.option("--keep-daily", type=int, default=0, metavar="N",
              help="Keep the newest set of each of the last N days that have one.")
@click.option("--keep-weekly", type=int, default=0, metavar="N",
              help="Keep the newest set of each of the last N ISO weeks that have one.")
@click.option("--keep-monthly", type=int, default=0, metavar="N",
              help="Keep the newest set of each of the last N months that have one.")
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@json_option
def prune_command(archive_url: str, key: str | None, passphrase: str | None,
                  raw_options: tuple[str, ...], keep_last: int, keep_daily: int,
                  keep_weekly: int, keep_monthly: int, dry_run: bool, as_json: bool) -> int:
    """Forget sets by a retention policy (restic `forget` rules, UTC) and delete every
    file no kept set needs. A file a kept set references (incremental backups) always
    stays; a recent incomplete set (a running or resumable backup) is left alone."""
    from migrator.archive import Policy, prune

    policy = Policy(last=keep_last, daily=keep_daily, weekly=keep_weekly,
                    monthly=keep_monthly)
    policy.check()  # before connecting: a policy that keeps nothing is refused
    with opened_archive(archive_url, key, passphrase, raw_options) as repo:
        report = prune(repo, policy, dry_run=dry_run)
    if as_json:
        render.as_json(report.to_dict())
        return 0
    rows = [[s, "keep", ", ".join(r)] for s, r in sorted(report.kept.items())]
    rows += [[s, "forget", ""] for s in report.forgotten]
    rows += [[s, "remove", "incomplete, older than the newest complete set"]
             for s in report.abandoned]
    rows += [[s, "leave", "incomplete (may be running) or damaged"] for s in report.left_alone]
    if rows:
        render.table(sorted(rows), ["set", "action", "reason"])
    verb = "would delete" if dry_run else "deleted"
    render.info(f"{len(report.kept)} set(s) kept, {len(report.forgotten)} forgotten; {verb} "
                f"{report.deleted_files} file(s), {render.human_bytes(report.deleted_bytes)}; "
                f"{report.referenced_files} file(s) of forgotten sets kept for kept sets")
    return 0
