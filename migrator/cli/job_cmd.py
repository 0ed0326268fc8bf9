"""`openim-migrate job render PLAN`: the copy as a Kubernetes Job (run, then verify)."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from migrator import __version__
from migrator.cli import render
from migrator.cli.deploy_cmd import dump
from migrator.errors import PlanError
from migrator.plan import load_plan


@click.group("job")
def job_group() -> None:
    """Run the migration inside the cluster as a Kubernetes Job."""


@job_group.command("render")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "--namespace", default="openim", show_default=True,
              help="Namespace of the Job (where deploy put the targets).")
@click.option("--image", default=f"openim-migrate:{__version__}", show_default=True,
              help="The toolkit's container image (build it from the Dockerfile and push it "
              "to a registry the cluster can pull from).")
@click.option("--env-secret", default=None, metavar="SECRET",
              help="A Secret whose keys become environment variables: needed when the plan "
              "has ${VAR} references (source passwords).")
@click.option("--metrics-port", type=int, default=9464, show_default=True,
              help="Port for Prometheus metrics in the pod (0: none).")
@click.option("--work-size", default="1Gi", show_default=True,
              help="PVC for the journal, so a replaced pod resumes.")
@click.option("--storage-class", default=None, help="StorageClass of the journal's PVC.")
@click.option("-o", "--output", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
def job_render_command(plan_path: Path, namespace: str, image: str, env_secret: str | None,
                       metrics_port: int, work_size: str, storage_class: str | None,
                       fmt: str) -> int:
    """Print a Job (plus its ConfigMap, PVC, ServiceAccount and Role) that runs `run` and
    then `verify` on PLAN inside the cluster with the toolkit's image.

    Apply it with `kubectl apply -f -`; `kubectl logs -f job/openim-migrate-NAME` follows
    it (JSON lines); the Job succeeds only when verify finds everything EQUAL.
    """
    from migrator.deploy.job import JobSpec
    from migrator.deploy.job import render as render_job

    plan = load_plan(plan_path)  # refuses a plan that would fail inside the cluster anyway
    text = plan_path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(str(plan_path), f"not valid YAML ({exc})") from None
    objects, notes = render_job(plan.name, text, raw, JobSpec(
        namespace=namespace, image=image, env_secret=env_secret,
        metrics_port=metrics_port or None, work_size=work_size, storage_class=storage_class))
    for note in notes:
        render.warning(note)
    click.echo(dump(objects, fmt))
    return 0
