"""`openim-migrate deploy [PLAN]`: the in-cluster data services, applied and waited for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from migrator.cli import render
from migrator.config import Endpoint
from migrator.deploy import endpoints
from migrator.deploy.spec import DEFAULT_STORES, IMAGES, KINDS, DeploySpec, parse_adopt
from migrator.errors import UsageError
from migrator.plan import Plan, load_plan, plan_from_dict


def kind_values(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        kind, sep, rest = value.partition("=")
        if not sep or not rest or kind not in KINDS:
            raise UsageError(f"{flag} {value!r}: expected KIND=VALUE with KIND one of "
                             f"{', '.join(KINDS)}")
        out[kind] = rest
    return out


def dump(objects: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2)
    return yaml.safe_dump_all(objects, sort_keys=False, width=100)


def _retarget(plan_path: Path, plan: Plan, targets: dict[str, dict[str, Any]]) -> Plan:
    """The plan with its targets replaced, checked like any loaded plan before anything is
    applied, so a target the stores would refuse stops deploy early."""
    for kind, target in targets.items():
        if kind in plan.stores:
            plan.stores[kind].target = Endpoint.from_dict(kind, target, f"stores.{kind}.target")
    plan_from_dict(plan.to_dict(), origin=str(plan_path))
    return plan


@click.command("deploy")
@click.argument("plan_path", metavar="[PLAN]", required=False,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "--namespace", default="openim", show_default=True,
              help="Namespace for the services (created if missing).")
@click.option("--stores", default=None, metavar="KIND,...",
              help="Services to deploy without a plan (default: mongo,redis,objects; with a "
              "plan: its stores, so MySQL only when the source has it).")
@click.option("--storage-class", default=None, help="StorageClass of the PVCs (default: the "
              "cluster's default class).")
@click.option("--image", "images", multiple=True, metavar="KIND=IMAGE",
              help="Override a pinned image, e.g. mongo=mongo:7.0.28. Defaults: "
              + ", ".join(f"{k}={v}" for k, v in IMAGES.items()))
@click.option("--size", "sizes", multiple=True, metavar="KIND=SIZE",
              help="PVC size, e.g. mongo=50Gi (default: the plan's measured bytes x headroom "
              "+ 1Gi, at least 1Gi).")
@click.option("--headroom", type=float, default=2.0, show_default=True,
              help="Multiplier on the measured bytes when sizing PVCs.")
@click.option("--redis-mode", type=click.Choice(["standalone", "cluster"]),
              default="standalone", show_default=True,
              help="A standalone Redis (requirepass, AOF) or a 3-master Redis Cluster.")
@click.option("--adopt", "adopt", multiple=True, metavar="KIND=svc/NAME[:PORT]",
              help="Use an existing Service (e.g. a Helm release) instead of deploying one: "
              "checked to exist and be ready, nothing rendered for it.")
@click.option("--adopt-secret", multiple=True, metavar="KIND=SECRET",
              help="The Secret with an adopted service's credentials (default: the Bitnami "
              "chart's, e.g. im-redis for im-redis-master).")
@click.option("--service-monitor", is_flag=True,
              help="Also render a ServiceMonitor (Prometheus Operator) for the migration "
              "Job's metrics.")
@click.option("--dry-run", is_flag=True, help="Print the manifests; touch nothing.")
@click.option("-o", "--output", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True, help="Manifest format for --dry-run.")
@click.option("--timeout", type=float, default=600, show_default=True,
              help="Seconds to wait for readiness.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for StatefulSets ready, PVCs Bound and init Jobs complete.")
@click.option("--endpoints", "endpoint_mode", type=click.Choice(endpoints.MODES),
              default="cluster", show_default=True,
              help="Targets written into PLAN: Service DNS names (for the in-cluster Job), "
              "or 127.0.0.1 for a workstation behind `kubectl port-forward`.")
@click.option("--force-conflicts", is_flag=True,
              help="Take over fields another field manager owns (server-side apply force).")
@click.option("--kubeconfig", default=None, help="Kubeconfig file (default: KUBECONFIG, "
              "~/.kube/config, or the in-cluster service account).")
@click.option("--context", default=None, help="Kubeconfig context.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def deploy_command(plan_path: Path | None, namespace: str, stores: str | None,
                   storage_class: str | None, images: tuple[str, ...], sizes: tuple[str, ...],
                   headroom: float, redis_mode: str, adopt: tuple[str, ...],
                   adopt_secret: tuple[str, ...], service_monitor: bool, dry_run: bool,
                   fmt: str, timeout: float, wait: bool, endpoint_mode: str,
                   force_conflicts: bool, kubeconfig: str | None, context: str | None,
                   as_json: bool) -> int:
    """Deploy the in-cluster data services OpenIM needs, and point PLAN's targets at them.

    Renders MongoDB (a single-member replica set, keyfile and root password in a generated
    Secret, replSetInitiate by an init Job), Redis (requirepass, AOF; or a 3-master
    cluster), MinIO, and MariaDB only when the plan has MySQL: each a StatefulSet with a
    Service, a PVC sized from the plan's measured bytes, resource requests, probes and
    app.kubernetes.io labels. Applies them with server-side apply (field manager
    openim-migrate; applying again changes nothing), waits for readiness, then writes the
    Service DNS names and ${k8s:namespace/secret#key} references into PLAN's targets.
    Passwords exist only in Secrets. Exit 7 when something cannot be applied or does not
    become ready (the message names the object and what is missing).
    """
    # The kubernetes client takes seconds to import: only for this command.
    from migrator.deploy import manifests
    from migrator.deploy.apply import deploy
    from migrator.deploy.kube import Kube

    plan = load_plan(plan_path) if plan_path else None
    if plan is not None:
        kinds = tuple(k for k in KINDS if k in plan.stores)
        data_bytes = {k: sum(u.bytes for u in plan.units_of(k)) for k in kinds}
    else:
        kinds = tuple(s.strip() for s in stores.split(",")) if stores else DEFAULT_STORES
        data_bytes = {}
    secret_names = kind_values(adopt_secret, "--adopt-secret")
    adopted = {a.kind: a for a in (parse_adopt(v, secret_names) for v in adopt)}
    for kind in adopted:
        if kind not in kinds:
            raise UsageError(f"--adopt {kind}=…: {kind} is not among the stores "
                             f"({', '.join(kinds)})")
    spec = DeploySpec(namespace=namespace, stores=kinds, storage_class=storage_class,
                      images={**IMAGES, **kind_values(images, "--image")},
                      data_bytes=data_bytes, storage=kind_values(sizes, "--size"),
                      headroom=headroom, redis_mode=redis_mode, adopt=adopted,
                      service_monitor=service_monitor)
    if dry_run:
        click.echo("# openim-migrate deploy --dry-run: nothing was applied. Secret values are "
                   "placeholders; deploy generates them and they never leave the cluster.")
        click.echo(dump(manifests.render(spec), fmt))
        return 0
    old = {k: p.target.to_dict() for k, p in plan.stores.items()} if plan else None
    targets = endpoints.targets(spec, endpoint_mode, old)
    if plan is not None and plan_path is not None:
        plan = _retarget(plan_path, plan, targets)
    kube = Kube.connect(kubeconfig, context)
    result = deploy(kube, spec, force=force_conflicts, wait=wait, timeout=timeout,
                    on_progress=_Progress() if wait and not as_json else None)
    if plan is not None and plan_path is not None:
        plan.save(plan_path)
    if as_json:
        render.as_json({"namespace": namespace, "applied": [
            {"object": o, "action": a} for o, a in result.applied], "notes": result.notes,
            "targets": targets, "plan": str(plan_path) if plan_path else None})
        return 0
    render.table([[o, a] for o, a in result.applied], ["object", "action"])
    for note in result.notes:
        render.warning(note)
    for kind in spec.adopt:
        click.echo(f"adopted {kind}: Service {namespace}/{spec.adopt[kind].service} is ready")
    if wait:
        click.echo("ready: every StatefulSet, PVC and init Job")
    if plan_path is not None:
        click.echo(f"targets written into {plan_path}:")
    else:
        click.echo("targets (pass them to `openim-migrate plan --target …`):")
    for kind, target in targets.items():
        extra = {k: v for k, v in target.items() if k != "url"}
        click.echo(f"  {kind}: {target['url']}" + (f"  {extra}" if extra else ""))
    if endpoint_mode == "port-forward":
        click.echo("reach them from this machine with:")
        for line in endpoints.port_forwards(spec):
            click.echo(f"  {line} &")
    return 0


class _Progress:
    """A bar on a terminal, else one line each time another object becomes ready."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = -1

    def __call__(self, ready: int, total: int, missing: list[str]) -> None:
        if render.stream_is_tty():
            if self.bar is None:
                self.bar = click.progressbar(length=total, label="waiting for readiness",
                                             file=click.get_text_stream("stderr"))
                self.bar.__enter__()
            self.bar.update(ready - self.bar.pos)
            if ready == total:
                self.bar.__exit__(None, None, None)
        elif ready != self.shown:
            self.shown = ready
            render.info(f"ready {ready}/{total}" + (f"; waiting for {missing[0]}"
                                                    if missing else ""))
