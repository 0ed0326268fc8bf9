"""``job render PLAN``: the copy as a Kubernetes Job, running ``run`` then ``verify`` with
the toolkit's image inside the cluster, next to the targets.

The plan travels in a ConfigMap (it holds no secrets); the journal lives on a small PVC, so
a pod that is killed or evicted is replaced by one that resumes where it stopped (the Job's
backoffLimit counts those restarts). ``${k8s:…}`` references are read with the Job's own
ServiceAccount, which may ``get`` exactly the Secrets the plan names and nothing else;
``${VAR}`` references come from one Secret given with ``--env-secret``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k

from migrator import __version__
from migrator.config import references_in
from migrator.deploy.manifests import to_dicts
from migrator.deploy.spec import MANAGER
from migrator.errors import UsageError

IMAGE = f"openim-migrate:{__version__}"
UID = 10001  # the Dockerfile's user


@dataclass
class JobSpec:
    namespace: str = "openim"
    image: str = IMAGE
    env_secret: str | None = None
    metrics_port: int | None = 9464
    work_size: str = "1Gi"
    storage_class: str | None = None
    service_account: str = "openim-migrate"
    backoff_limit: int = 6


@dataclass
class References:
    env: set[str] = field(default_factory=set)
    secrets: dict[str, set[str]] = field(default_factory=dict)  # namespace -> Secret names


def references(raw: Any) -> References:
    """Every ``${VAR}`` and ``${k8s:ns/secret#key}`` anywhere in the plan (URLs decoded)."""
    refs = References()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            for ref in references_in(value):
                if ref[0] == "env":
                    refs.env.add(ref[1])
                else:
                    refs.secrets.setdefault(ref[1], set()).add(ref[2])

    walk(raw.get("stores") if isinstance(raw, dict) else raw)
    return refs


def dns_name(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return (cleaned[:40].rstrip("-")) or "plan"


def labels(instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "openim-migrate", "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/version": __version__}


def secret_readers(name: str, secrets: dict[str, set[str]], service_account: str,
                   namespace: str) -> list[Any]:
    """A Role per namespace that may ``get`` exactly the named Secrets, bound to the
    ServiceAccount in ``namespace``: how a pod resolves ``${k8s:…}`` references."""
    objects: list[Any] = []
    for secret_ns, names in sorted(secrets.items()):
        role_meta = k.V1ObjectMeta(name=f"{name}-secrets", namespace=secret_ns,
                                   labels=labels(name))
        objects += [
            k.V1Role(api_version="rbac.authorization.k8s.io/v1", kind="Role",
                     metadata=role_meta, rules=[k.V1PolicyRule(
                         api_groups=[""], resources=["secrets"], verbs=["get"],
                         resource_names=sorted(names))]),
            k.V1RoleBinding(api_version="rbac.authorization.k8s.io/v1", kind="RoleBinding",
                            metadata=role_meta, role_ref=k.V1RoleRef(
                                api_group="rbac.authorization.k8s.io", kind="Role",
                                name=f"{name}-secrets"),
                            subjects=[k.RbacV1Subject(kind="ServiceAccount",
                                                      name=service_account,
                                                      namespace=namespace)]),
        ]
    return objects


def pod_security() -> k.V1PodSecurityContext:
    """The Dockerfile's user, non-root, default seccomp (Pod Security "restricted")."""
    return k.V1PodSecurityContext(run_as_user=UID, run_as_group=UID, fs_group=UID,
                                  run_as_non_root=True,
                                  seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"))


def container_security() -> k.V1SecurityContext:
    return k.V1SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True,
                               capabilities=k.V1Capabilities(drop=["ALL"]))


def render(plan_name: str, plan_text: str, raw: dict[str, Any], spec: JobSpec
           ) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects (ConfigMap, PVC, ServiceAccount, Roles, Job) and notes for the reader."""
    name = f"openim-migrate-{dns_name(plan_name)}"
    ns = spec.namespace
    refs = references(raw)
    notes: list[str] = []
    if refs.env and not spec.env_secret:
        raise UsageError(f"the plan references environment variable(s) "
                         f"{', '.join(sorted(refs.env))}: give --env-secret NAME, a Secret in "
                         f"namespace {ns} with those keys",
                         hint="or refer to Secrets directly with ${k8s:namespace/secret#key}")
    if "127.0.0.1" in plan_text or "localhost" in plan_text:
        notes.append("the plan names 127.0.0.1/localhost endpoints, which inside the cluster "
                     "are the pod itself: use Service DNS names (deploy --endpoints cluster)")
    meta = lambda n: k.V1ObjectMeta(name=n, namespace=ns, labels=labels(name))  # noqa: E731
    objects: list[Any] = [
        k.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=meta(f"{name}-plan"),
                      data={"plan.yaml": plan_text}),
        k.V1PersistentVolumeClaim(
            api_version="v1", kind="PersistentVolumeClaim", metadata=meta(f"{name}-work"),
            spec=k.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"], storage_class_name=spec.storage_class,
                resources=k.V1VolumeResourceRequirements(requests={
                    "storage": spec.work_size}))),
        k.V1ServiceAccount(api_version="v1", kind="ServiceAccount",
                           metadata=meta(spec.service_account),
                           automount_service_account_token=False),
    ]
    objects += secret_readers(name, refs.secrets, spec.service_account, ns)
    observe = ["--log-format", "json"]
    if spec.metrics_port:
        observe += ["--metrics-port", str(spec.metrics_port)]
    flags = " ".join(shlex.quote(f) for f in observe)
    script = ("set -e\ncp /plan/plan.yaml /work/plan.yaml\n"
              f"openim-migrate run /work/plan.yaml --no-verify --no-progress {flags}\n"
              f"exec openim-migrate verify /work/plan.yaml {flags}\n")
    container = k.V1Container(
        name="migrate", image=spec.image, command=["sh", "-c", script],
        env=[k.V1EnvVar(name="HOME", value="/tmp")],
        env_from=[k.V1EnvFromSource(secret_ref=k.V1SecretEnvSource(name=spec.env_secret))]
        if spec.env_secret else None,
        ports=[k.V1ContainerPort(name="metrics", container_port=spec.metrics_port)]
        if spec.metrics_port else None,
        volume_mounts=[k.V1VolumeMount(name="plan", mount_path="/plan", read_only=True),
                       k.V1VolumeMount(name="work", mount_path="/work"),
                       k.V1VolumeMount(name="tmp", mount_path="/tmp")],
        resources=k.V1ResourceRequirements(requests={"cpu": "500m", "memory": "512Mi"}),
        security_context=container_security())
    objects.append(k.V1Job(
        api_version="batch/v1", kind="Job", metadata=meta(name),
        spec=k.V1JobSpec(
            backoff_limit=spec.backoff_limit,
            template=k.V1PodTemplateSpec(
                metadata=k.V1ObjectMeta(labels=labels(name)),
                spec=k.V1PodSpec(
                    restart_policy="Never", service_account_name=spec.service_account,
                    automount_service_account_token=bool(refs.secrets),
                    security_context=pod_security(),
                    containers=[container],
                    volumes=[
                        k.V1Volume(name="plan", config_map=k.V1ConfigMapVolumeSource(
                            name=f"{name}-plan")),
                        k.V1Volume(name="work", persistent_volume_claim=(
                            k.V1PersistentVolumeClaimVolumeSource(claim_name=f"{name}-work"))),
                        k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource())])))))
    return to_dicts(objects), notes
