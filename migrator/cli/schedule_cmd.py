"""`openim-migrate schedule render`: scheduled backups and drills as CronJobs or systemd
timers (rendering in migrator/schedule.py; this module parses options and writes files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from migrator import __version__
from migrator.cli import render
from migrator.errors import PlanError, UsageError

_ARCHIVE_HELP = ("The archive the backups go to: archive+s3://host:port/bucket/prefix or "
                 "archive+file:///path, secrets as ${VAR} or ${k8s:ns/secret#key} "
                 "references only.")


@click.group("schedule")
def schedule_group() -> None:
    """Scheduled backups (backup, then prune) and restore drills."""


@schedule_group.command("render")
@click.option("--kind", type=click.Choice(["cronjob", "systemd"]), required=True,
              help="cronjob: Kubernetes CronJobs; systemd: service and timer units for a "
              "standalone host.")
@click.option("--plan", "plan_path", required=True, metavar="PLAN",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The plan whose sources are backed up (a ConfigMap for a CronJob; its "
              "absolute path on the host for systemd).")
@click.option("--archive", required=True, metavar="ARCHIVE", help=_ARCHIVE_HELP)
@click.option("--archive-option", "archive_options", multiple=True, metavar="NAME=VALUE",
              help="An archive option, passed as -o (e.g. access_key=…, "
              "secret_key='${S3_SECRET}', tls.enabled=true).")
@click.option("--key-secret", default=None, metavar="REF",
              help="The archive's age identity: SECRET#KEY (a Secret in --namespace), "
              "'${k8s:namespace/secret#key}' or '${VAR}'.")
@click.option("--schedule", default="15 2 * * *", show_default=True, metavar="CRON",
              help="When backups run (five cron fields or @daily …).")
@click.option("--drill-schedule", default="30 4 * * 0", show_default=True, metavar="CRON",
              help="When the restore drill runs (weekly by default).")
@click.option("--no-drill", is_flag=True, help="Render no drill.")
@click.option("--drill-max-age", default="auto", show_default=True, metavar="AGE",
              help="The drill fails when the newest set is older (e.g. 26h); auto: the "
              "backup schedule's longest gap plus 2h; none: not checked.")
@click.option("--time-zone", default=None, metavar="TZ",
              help="Time zone of the schedules (IANA name); default: the cluster's "
              "controller / the host's.")
@click.option("--keep-last", type=int, default=3, show_default=True)
@click.option("--keep-daily", type=int, default=7, show_default=True)
@click.option("--keep-weekly", type=int, default=4, show_default=True)
@click.option("--keep-monthly", type=int, default=6, show_default=True)
@click.option("--drill-target", "drill_targets", multiple=True, metavar="KIND=URL",
              help="A store the drill restores into (staging, never production). CronJob "
              "default: the services `deploy -n STAGING` makes.")
@click.option("--drill-target-option", "drill_target_options", multiple=True,
              metavar="KIND.KEY=VALUE", help="An option of a --drill-target.")
@click.option("-n", "--namespace", default="openim", show_default=True,
              help="CronJob: namespace of the backup CronJob.")
@click.option("--staging-namespace", default="openim-staging", show_default=True,
              help="CronJob: namespace of the drill and its stores.")
@click.option("--image", default=f"openim-migrate:{__version__}", show_default=True,
              help="CronJob: the toolkit's image (built from the Dockerfile).")
@click.option("--env-secret", default=None, metavar="SECRET",
              help="CronJob: a Secret whose keys fill the ${VAR} references (one key per "
              "variable), in each CronJob's namespace.")
@click.option("--archive-claim", default=None, metavar="PVC",
              help="CronJob with an archive+file:// archive: the PVC mounted at its path.")
@click.option("--cpu", default="500m", show_default=True, help="CronJob: CPU request.")
@click.option("--memory", default="512Mi", show_default=True, help="CronJob: memory request.")
@click.option("--executable", default="/usr/local/bin/openim-migrate", show_default=True,
              help="systemd: the installed openim-migrate command.")
@click.option("--env-file", default="/etc/openim-migrate/openim-migrate.env",
              show_default=True, help="systemd: the EnvironmentFile with the ${VAR} values.")
@click.option("--user", default="openim-migrate", show_default=True,
              help="systemd: the system user the services run as.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Write the files here instead of printing them.")
def render_command(kind: str, plan_path: Path, archive: str, archive_options: tuple[str, ...],
                   key_secret: str | None, schedule: str, drill_schedule: str, no_drill: bool,
                   drill_max_age: str, time_zone: str | None, keep_last: int, keep_daily: int,
                   keep_weekly: int, keep_monthly: int, drill_targets: tuple[str, ...],
                   drill_target_options: tuple[str, ...], namespace: str,
                   staging_namespace: str, image: str, env_secret: str | None,
                   archive_claim: str | None, cpu: str, memory: str, executable: str,
                   env_file: str, user: str, output: Path | None) -> int:
    """Render scheduled backups of PLAN into ARCHIVE and a weekly restore drill.

    \b
    cronjob: a CronJob (concurrencyPolicy Forbid) that runs `backup PLAN --to ARCHIVE`
      then `backup prune`, the plan in a ConfigMap, secrets by secretKeyRef or read by a
      ServiceAccount allowed exactly the Secrets named; a drill CronJob in the staging
      namespace. Apply with `kubectl apply -f`.
    systemd: a oneshot service and a timer (Persistent=true) for each, secrets from an
      EnvironmentFile. Copy to /etc/systemd/system and enable the timers.
    """
    from migrator.plan import load_plan
    from migrator.schedule import Retention, ScheduleSpec, render_kubernetes, render_systemd

    if output is not None and output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: is a file, not a directory")
    _check_archive(archive, archive_options)
    if drill_max_age not in ("auto", "none"):
        from migrator.cli.drill_cmd import parse_age

        try:
            parse_age(drill_max_age)
        except UsageError:
            raise UsageError(f"--drill-max-age {drill_max_age!r}: expected auto, none, or a "
                             "number and a unit, e.g. 26h or 8d") from None
    spec = ScheduleSpec(
        archive=archive, archive_options=archive_options, key=key_secret, schedule=schedule,
        drill_schedule=None if no_drill else drill_schedule,
        drill_max_age=None if drill_max_age == "none" else drill_max_age,
        time_zone=time_zone, retention=Retention(keep_last, keep_daily, keep_weekly,
                                                 keep_monthly),
        drill_targets=_targets(drill_targets, drill_target_options),
        namespace=namespace, staging_namespace=staging_namespace, image=image,
        env_secret=env_secret, archive_claim=archive_claim, cpu=cpu, memory=memory,
        executable=executable, env_file=env_file, user=user)
    spec.check()  # every option before the plan is read: one line for the first wrong one
    plan = load_plan(plan_path)
    if kind == "cronjob":
        text = plan_path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise PlanError(str(plan_path), "not a plan")
        rendered = render_kubernetes(spec, plan.name, text, raw)
        files = {name: yaml.safe_dump_all(objects, sort_keys=False, width=100)
                 for name, objects in rendered.files.items()}
    else:
        rendered = render_systemd(spec, plan.name, str(plan_path.resolve()))
        files = dict(rendered.files)
    for note in rendered.notes:
        render.warning(note)
    if output is None:
        if kind == "cronjob":
            click.echo("---\n".join(files.values()), nl=False)
        else:
            click.echo("\n".join(f"# ==> {name} <==\n{text}" for name, text in files.items()),
                       nl=False)
        return 0
    try:
        output.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (output / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output {output}: cannot write ({exc.strerror or exc})") from None
    render.info(f"wrote {', '.join(files)} to {output}")
    return 0


def _check_archive(url: str, raw_options: tuple[str, ...]) -> None:
    """The archive as `backup` will check it (no network): a wrong URL or option, or a
    literal secret, is one line naming --archive or --archive-option."""
    from migrator.archive.location import parse
    from migrator.cli.backup_cmd import archive_endpoint_from

    try:
        parse(archive_endpoint_from(url, None, None, raw_options))
    except UsageError as exc:  # -o's own messages name "-o"
        raise UsageError(str(exc.message).replace("-o ", "--archive-option ", 1),
                         hint=exc.hint) from None
    except PlanError as exc:
        problem = exc.message[len(exc.field) + 2:]
        name = exc.field.split(".", 1)[1] if "." in exc.field else "url"
        option = "--archive" if name == "url" else f"--archive-option {name}"
        raise UsageError(f"{option}: {problem}", hint=exc.hint) from None


def _targets(urls: tuple[str, ...], extra: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``--drill-target``s checked like `drill`'s own --target (literal secrets refused)."""
    from migrator.cli.options import endpoint_options, endpoints

    try:
        endpoints(urls, extra, "--drill-target", "target")
    except PlanError as exc:
        raise UsageError(f"--drill-target {exc.message}", hint=exc.hint) from None
    options = endpoint_options(extra, "--drill-target-option")
    return {url.partition("=")[0]: {"url": url.partition("=")[2],
                                    **options.get(url.partition("=")[0], {})}
            for url in urls}
