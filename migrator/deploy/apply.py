"""``deploy`` end to end: check permissions, check adopted services, keep or generate
Secret values, server-side apply every object, wait for readiness.

Applying the same input again changes nothing: generated passwords are read back from the
existing Secrets rather than generated anew, and a StatefulSet's volume size (which
Kubernetes does not let change) is kept as it is.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from migrator.deploy import manifests
from migrator.deploy.kube import Kube
from migrator.deploy.spec import DeploySpec, Secret, quantity
from migrator.deploy.waiting import conditions, wait_for
from migrator.errors import DeployError

WRITE = ("get", "create", "patch")


@dataclass
class DeployResult:
    applied: list[tuple[str, str]] = field(default_factory=list)  # (object, action)
    notes: list[str] = field(default_factory=list)


def needed_permissions(spec: DeploySpec) -> list[tuple[str, str]]:
    """(verb, kind) pairs deploy uses in the namespace; server-side apply of a new object
    needs create as well as patch."""
    needs: list[tuple[str, str]] = []
    if spec.rendered:
        for kind in ("Secret", "Service", "StatefulSet"):
            needs += [(verb, kind) for verb in WRITE]
        if any(manifests.init_job(spec, kind) for kind in spec.rendered):
            needs += [(verb, "Job") for verb in WRITE]
        needs.append(("get", "PersistentVolumeClaim"))
    if spec.service_monitor:
        needs += [(verb, kind) for kind in ("Service", "ServiceMonitor") for verb in WRITE]
    if spec.adopt:
        needs += [("get", "Service"), ("get", "Secret"), ("list", "EndpointSlice")]
    return list(dict.fromkeys(needs))


def check_permissions(kube: Kube, spec: DeploySpec) -> None:
    missing = kube.missing_permissions(spec.namespace, needed_permissions(spec))
    if missing:
        raise DeployError(f"{kube.whoami()} may not {', '.join(missing)} in namespace "
                          f"{spec.namespace}",
                          hint="grant these with a Role and RoleBinding (docs/deploy.md "
                          "has one); nothing was applied")


def _decoded(obj: Any) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}


def _generate(secret: Secret, key: str) -> str:
    if key == secret.user_key:
        return "admin-" + secrets.token_hex(4)
    # hex: valid in any URL, shell and MongoDB keyfile (base64 alphabet, 6-1024 chars)
    return secrets.token_hex(48 if key.endswith("-key") else 16)


def secret_values(kube: Kube, spec: DeploySpec) -> dict[str, dict[str, str]]:
    """Existing values kept, missing keys generated; values live only in memory and in
    the Secret objects."""
    values = {}
    for kind in spec.rendered:
        sec = spec.names(kind).secret
        existing = kube.read("Secret", sec.name, spec.namespace)
        current = _decoded(existing) if existing is not None else {}
        keys = [k for k in (sec.user_key, sec.password_key, *sec.extra_keys) if k]
        values[sec.name] = {key: current.get(key) or _generate(sec, key) for key in keys}
    return values


def keep_volume_sizes(kube: Kube, spec: DeploySpec, notes: list[str]) -> None:
    for kind in spec.rendered:
        name = spec.names(kind).statefulset
        sts = kube.read("StatefulSet", name, spec.namespace)
        if sts is None or not sts.spec.volume_claim_templates:
            continue
        current = (sts.spec.volume_claim_templates[0].spec.resources.requests or {}).get(
            "storage")
        wanted = spec.pvc_size(kind)
        if current and current != wanted:
            spec.storage[kind] = current
            try:
                grow = quantity(wanted, "size") > quantity(current, "size")
            except Exception:  # noqa: BLE001 - a size written another way: just keep it
                grow = False
            if grow:
                notes.append(f"StatefulSet {spec.namespace}/{name} keeps its volume size "
                             f"{current} (the plan would want {wanted}): volumeClaimTemplates "
                             "cannot change; expand its PVCs if the storage class allows")


def check_adopted(kube: Kube, spec: DeploySpec) -> None:
    """Adopted services must exist, expose the port, and have their credentials Secret."""
    ns = spec.namespace
    for adopted in spec.adopt.values():
        flag = f"--adopt {adopted.kind}=svc/{adopted.service}"
        svc = kube.read("Service", adopted.service, ns)
        if svc is None:
            raise DeployError(f"Service {ns}/{adopted.service} not found ({flag})",
                              hint=f"kubectl -n {ns} get svc lists the Services there")
        ports = [p.port for p in (svc.spec.ports or [])]
        if adopted.port not in ports:
            raise DeployError(f"Service {ns}/{adopted.service} has no port {adopted.port} "
                              f"(it has {', '.join(map(str, ports)) or 'none'})",
                              hint=f"{flag}:PORT names the port to use")
        sec = adopted.secret
        found = kube.read("Secret", sec.name, ns)
        if found is None:
            raise DeployError(f"Secret {ns}/{sec.name} not found (credentials of the adopted "
                              f"{adopted.kind} service)",
                              hint=f"--adopt-secret {adopted.kind}=NAME names the Secret")
        for key in (sec.user_key, sec.password_key):
            if key and key not in (found.data or {}):
                raise DeployError(f"Secret {ns}/{sec.name} has no key {key!r} (credentials of "
                                  f"the adopted {adopted.kind} service)",
                                  hint=f"its keys: {', '.join(sorted(found.data or {}))}")


def _namespace_exists(kube: Kube, namespace: str) -> bool:
    try:
        return kube.call(f"Namespace {namespace}", kube.core.read_namespace,
                         namespace) is not None
    except DeployError:  # may not read namespaces: rights inside it were checked already
        return True


def deploy(kube: Kube, spec: DeploySpec, *, force: bool = False, wait: bool = True,
           timeout: float = 600,
           on_progress: Callable[[int, int, list[str]], None] | None = None) -> DeployResult:
    result = DeployResult()
    check_permissions(kube, spec)
    check_adopted(kube, spec)
    values = secret_values(kube, spec)
    keep_volume_sizes(kube, spec, result.notes)
    objects = manifests.render(spec, values)
    if _namespace_exists(kube, spec.namespace):
        objects = [o for o in objects if o["kind"] != "Namespace"]  # not ours to change
    for obj in objects:
        result.applied.append((Kube.describe(obj), kube.apply(obj, force=force)))
    if wait:
        wait_for(conditions(kube, spec, objects), timeout, on_progress=on_progress)
    return result
