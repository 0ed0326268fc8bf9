#!/usr/bin/env python3
"""The demo's last act: a staging cutover of an already copied plan against a local
kube-apiserver (scripts/k8s_apiserver.py), the freeze window printed, then the rollback.

    from demo_cutover import staging_cutover      # scripts/ on sys.path, as demo.py has it
    code = staging_cutover(ROOT / "plans" / "demo.yaml", work_dir)

or on its own, after `make demo -- --keep` left a copied plan and its servers:

    python scripts/demo_cutover.py plans/demo.yaml --dir /tmp/k8s-demo

What it sets up, as an OpenIM v3.8 install in Kubernetes would have it (the raw manifests
of open-im-server): namespace ``openim``, ConfigMap ``openim-config`` with one YAML file per
concern (mongodb.yml, redis.yml, minio.yml, share.yml, discovery.yml) still pointing at the
old standalone host, Secrets ``openim-redis-secret`` / ``openim-minio-secret``, and two
Deployments. The local API server runs no controllers and no kubelet, so a thread here plays
the Deployment controller: it patches each Deployment's /status once a restart is seen.
The tests (tests/test_cutover*.py) use the same objects and the same stand-in.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

# What OpenIM v3.8's config/*.yml look like on a compose host (openim-docker), trimmed.
OPENIM_FILES = {
    "mongodb.yml": """\
# URI for database connection, leave empty if using address and credential settings directly
uri:
# List of MongoDB server addresses
address: [ localhost:37017 ]
# Name of the database
database: openim_v3
# Username for database authentication
username: openIM
# Maximum number of connections in the connection pool
maxPoolSize: 100
# Maximum number of retry attempts for a failed database connection
maxRetry: 10
""",
    "redis.yml": """\
address: [ localhost:16379 ]
username:
# password comes from IMENV_REDIS_PASSWORD (Secret openim-redis-secret)
clusterMode: false
db: 0
maxRetry: 10
poolSize: 100
""",
    "minio.yml": """\
# Name of the bucket in MinIO
bucket: openim
# Access key ID for MinIO authentication
accessKeyID: root
# Session token for MinIO authentication (optional)
sessionToken:
# Internal address of the MinIO server
internalAddress: localhost:10005
# External address of the MinIO server, accessible from outside. Supports both HTTP and HTTPS
externalAddress: http://external_ip:10005
# Flag to enable or disable public read access to the bucket
publicRead: false
""",
    "share.yml": """\
imAdminUserID: [ imAdmin ]
multiLogin:
  policy: 1
  maxNumOneEnd: 30
""",
    "discovery.yml": """\
enable: k8s
kubernetes:
  namespace: default
etcd:
  rootDirectory: openim
  address: [ localhost:12379 ]
""",
}
DEPLOYMENTS = ("openim-api", "openim-rpc-user")


def in_cluster_values(ns: str, stores: list[str]) -> dict[str, dict[str, Any]]:
    """The ConfigMap keys a switch sets for each store the plan moves, as the deploy step
    names its Services."""
    files: dict[str, dict[str, Any]] = {"discovery.yml": {"kubernetes.namespace": ns}}
    if "mongo" in stores:
        files["mongodb.yml"] = {"address": [f"im-mongodb.{ns}.svc:27017"]}
    if "redis" in stores:
        files["redis.yml"] = {"address": [f"im-redis-master.{ns}.svc:6379"]}
    if "objects" in stores:
        files["minio.yml"] = {"internalAddress": f"im-minio.{ns}.svc:9000"}
    return files


def create_openim_objects(kube: Any, ns: str, deployments: tuple[str, ...] = DEPLOYMENTS,
                          ) -> None:
    """OpenIM's objects in ``ns`` (the namespace is created if missing)."""
    from kubernetes import client as k

    if kube.read("Namespace", ns) is None:
        kube.core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=ns)))
    kube.core.create_namespaced_config_map(ns, k.V1ConfigMap(
        metadata=k.V1ObjectMeta(name="openim-config"), data=dict(OPENIM_FILES)))
    kube.core.create_namespaced_secret(ns, k.V1Secret(
        metadata=k.V1ObjectMeta(name="openim-redis-secret"),
        string_data={"redis-password": "old-standalone-password"}))
    kube.core.create_namespaced_secret(ns, k.V1Secret(
        metadata=k.V1ObjectMeta(name="openim-minio-secret"),
        string_data={"minio-root-user": "root", "minio-root-password": "old-minio-secret"}))
    for name in deployments:
        labels = {"app": name}
        kube.apps.create_namespaced_deployment(ns, k.V1Deployment(
            metadata=k.V1ObjectMeta(name=name, labels=labels),
            spec=k.V1DeploymentSpec(
                replicas=2, selector=k.V1LabelSelector(match_labels=labels),
                template=k.V1PodTemplateSpec(
                    metadata=k.V1ObjectMeta(labels=labels),
                    spec=k.V1PodSpec(containers=[k.V1Container(
                        name=name, image="openim/openim-server:v3.8.3-patch.12")])))))


class DeploymentController(threading.Thread):
    """Stands in for the Deployment controller and the kubelet, which the local API server
    does not run: whenever a Deployment's generation is ahead of its status, report every
    replica updated and available, as a finished rollout would."""

    def __init__(self, kube: Any, ns: str, poll: float = 0.2) -> None:
        super().__init__(daemon=True, name="deployment-controller")
        self.kube, self.ns, self.poll = kube, ns, poll
        self.halt = threading.Event()
        self.rollouts = 0

    def run(self) -> None:
        while not self.halt.wait(self.poll):
            try:
                for dep in self.kube.apps.list_namespaced_deployment(self.ns).items:
                    status = dep.status
                    if status and (status.observed_generation or 0) >= dep.metadata.generation:
                        continue
                    n = dep.spec.replicas or 1
                    self.kube.apps.patch_namespaced_deployment_status(
                        dep.metadata.name, self.ns, {"status": {
                            "observedGeneration": dep.metadata.generation, "replicas": n,
                            "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}},
                        _content_type="application/merge-patch+json")
                    self.rollouts += 1
            except Exception:  # noqa: BLE001 - a stand-in: try again on the next tick
                continue

    def __enter__(self) -> DeploymentController:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=5)


def cutover_section(ns: str, stores: list[str], *, kubeconfig: str | None = None,
                    freeze: list[str] | None = None, unfreeze: list[str] | None = None,
                    secrets: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """A plan's ``cutover:`` section for these objects."""
    section: dict[str, Any] = {
        "freeze": {"command": freeze or [sys.executable, "-c", "print('stopping writers')"],
                   "unfreeze_command": unfreeze or [sys.executable, "-c",
                                                    "print('starting writers')"],
                   "max_seconds": 120},
        "max_check_age_seconds": 3600,
        "max_lag_records": 1000,
        "kubernetes": {"namespace": ns, **({"kubeconfig": kubeconfig} if kubeconfig else {})},
        "configmaps": [{"name": "openim-config", "files": in_cluster_values(ns, stores)}],
        "deployments": list(DEPLOYMENTS),
        "rollout_timeout_seconds": 60,
    }
    if secrets:
        section["secrets"] = [{"name": name, "keys": keys} for name, keys in secrets.items()]
    return section


def add_cutover(plan_path: Path, environment: str, section: dict[str, Any]) -> None:
    """Write the ``cutover`` section (edited by hand like options) and the environment into
    a plan. The environment is guarded by the integrity hash, so this re-seals the plan as
    `plan --environment` would have written it."""
    from migrator.plan import integrity_of

    raw = yaml.safe_load(plan_path.read_text())
    raw["environment"] = environment
    raw["cutover"] = section
    raw["integrity"] = integrity_of(raw)
    plan_path.write_text(yaml.safe_dump(raw, sort_keys=False, width=100))


def _cli(*args: str) -> int:
    print("$ openim-migrate " + " ".join(args), flush=True)
    return subprocess.call([sys.executable, "-m", "migrator", *args], cwd=ROOT)


def staging_cutover(plan_path: Path, work_dir: Path, *, ns: str = "openim") -> int:
    """Start the local API server, create OpenIM's objects, cut the copied plan over as a
    staging environment, print the freeze window, then roll back. Returns an exit code."""
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    import k8s_apiserver

    from migrator.deploy.kube import Kube
    from migrator.plan import load_plan

    state = k8s_apiserver.start(work_dir / "k8s")
    kube = Kube.connect(state["kubeconfig"])
    try:
        if kube.read("ConfigMap", "openim-config", ns) is None:
            create_openim_objects(kube, ns)
        plan = load_plan(plan_path)
        stores = list(plan.stores)
        # A store guard only where plan found the source account may use one; the others
        # rely on the stopped writers, as the cutover then says.
        guards = {kind: pair.facts.get("source", {}).get("freeze_guard") == "available"
                  for kind, pair in plan.stores.items()}
        secrets = {}
        if "redis" in stores and "OIM_REDIS_CLUSTER_PASSWORD" in os.environ:
            secrets["openim-redis-secret"] = {"redis-password": "${OIM_REDIS_CLUSTER_PASSWORD}"}
        if "objects" in stores and "OIM_S3_DST_SECRET_KEY" in os.environ:
            secrets["openim-minio-secret"] = {"minio-root-password": "${OIM_S3_DST_SECRET_KEY}"}
        section = cutover_section(ns, stores, kubeconfig=state["kubeconfig"], secrets=secrets)
        section["freeze"]["guards"] = guards
        add_cutover(plan_path, "staging", section)
        print("  (the local API server runs no controllers: a thread here patches each "
              "Deployment's /status, standing in for the Deployment controller)")
        metrics = work_dir / "cutover.prom"
        with DeploymentController(kube, ns):
            code = _cli("cutover", str(plan_path), "--metrics-file", str(metrics))
            if code:
                return code
            for line in metrics.read_text().splitlines():
                if line.startswith("openim_migrate_cutover_freeze_window_seconds "):
                    print(f"  freeze window (Prometheus textfile {metrics.name}): "
                          f"{float(line.split()[1]):.2f} s")
            return _cli("cutover", str(plan_path), "--rollback")
    finally:
        kube.client.close()
        if os.environ.get("OIM_DEMO_KEEP_K8S") != "1":
            k8s_apiserver.stop(work_dir / "k8s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--dir", type=Path, default=Path(".services/cutover-demo"))
    args = parser.parse_args()
    started = time.monotonic()
    code = staging_cutover(args.plan.resolve(), args.dir.resolve())
    print(f"demo cutover ended with exit code {code} after {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
