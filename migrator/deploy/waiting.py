"""Readiness: what "deployed" means, one check per object, polled until all hold.

A StatefulSet is ready when its controller has seen the current generation and reports
every replica ready; each of its PVCs must be Bound; an init Job must be Complete (a failed
one ends the wait at once); an adopted Service needs a ready endpoint. Each check returns
None when it holds, else the condition that is missing, so a timeout names every object
still waiting and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrator.deploy.kube import Kube
from migrator.deploy.spec import Adopted, DeploySpec
from migrator.errors import DeployError

Check = Callable[[], "str | None"]


@dataclass(frozen=True)
class Condition:
    what: str  # e.g. "StatefulSet openim/im-mongodb"
    check: Check


def statefulset_ready(kube: Kube, ns: str, name: str) -> Check:
    def check() -> str | None:
        sts = kube.read("StatefulSet", name, ns)
        if sts is None:
            return "not found"
        want = sts.spec.replicas if sts.spec.replicas is not None else 1
        status = sts.status
        observed = status.observed_generation if status else None
        if observed is None or observed < (sts.metadata.generation or 0):
            return (f"status.observedGeneration {observed} < generation "
                    f"{sts.metadata.generation} (no StatefulSet controller has seen it yet)")
        ready = (status.ready_replicas or 0) if status else 0
        if ready < want:
            return f"status.readyReplicas {ready} of {want}"
        return None
    return check


def pvc_bound(kube: Kube, ns: str, name: str) -> Check:
    def check() -> str | None:
        pvc = kube.read("PersistentVolumeClaim", name, ns)
        if pvc is None:
            return "not created yet (want status.phase Bound)"
        phase = pvc.status.phase if pvc.status else None
        return None if phase == "Bound" else f"status.phase {phase or 'unset'}, want Bound"
    return check


def job_complete(kube: Kube, ns: str, name: str) -> Check:
    def check() -> str | None:
        job = kube.read("Job", name, ns)
        if job is None:
            return "not found"
        conditions = {c.type: c for c in (job.status.conditions or [])} if job.status else {}
        failed = conditions.get("Failed")
        if failed is not None and failed.status == "True":
            raise DeployError(f"Job {ns}/{name} failed: {failed.reason or ''} "
                              f"{failed.message or ''}".rstrip(),
                              hint=f"kubectl -n {ns} logs job/{name}")
        complete = conditions.get("Complete")
        if complete is not None and complete.status == "True":
            return None
        succeeded = job.status.succeeded if job.status else None
        return f"condition Complete not True (succeeded {succeeded or 0})"
    return check


def service_endpoints_ready(kube: Kube, ns: str, name: str) -> Check:
    def check() -> str | None:
        slices = kube.call(f"EndpointSlices of Service {ns}/{name}",
                           kube.discovery.list_namespaced_endpoint_slice, ns,
                           label_selector=f"kubernetes.io/service-name={name}")
        for s in (slices.items if slices else []):
            for ep in s.endpoints or []:
                # "ready: nil should be interpreted as ready" (EndpointConditions docs)
                if ep.conditions is None or ep.conditions.ready is not False:
                    return None
        return "no ready endpoint (no EndpointSlice lists a ready pod)"
    return check


def conditions(kube: Kube, spec: DeploySpec, applied: list[dict[str, Any]]) -> list[Condition]:
    """What to wait for, from the objects just applied and the adopted Services."""
    out: list[Condition] = []
    ns = spec.namespace
    for obj in applied:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "StatefulSet":
            out.append(Condition(f"StatefulSet {ns}/{name}", statefulset_ready(kube, ns, name)))
            for template in obj["spec"].get("volumeClaimTemplates") or []:
                for i in range(obj["spec"].get("replicas", 1)):
                    pvc = f"{template['metadata']['name']}-{name}-{i}"
                    out.append(Condition(f"PersistentVolumeClaim {ns}/{pvc}",
                                         pvc_bound(kube, ns, pvc)))
        elif kind == "Job":
            out.append(Condition(f"Job {ns}/{name}", job_complete(kube, ns, name)))
    for adopted in spec.adopt.values():
        out.append(adopted_condition(kube, ns, adopted))
    return out


def adopted_condition(kube: Kube, ns: str, adopted: Adopted) -> Condition:
    return Condition(f"Service {ns}/{adopted.service} (adopted {adopted.kind})",
                     service_endpoints_ready(kube, ns, adopted.service))


def wait_for(conditions: list[Condition], timeout: float, *, poll: float = 1.0,
             on_progress: Callable[[int, int, list[str]], None] | None = None) -> None:
    """Poll every unmet condition until all hold; on timeout a DeployError lists each object
    still waiting with the condition it lacks."""
    deadline = time.monotonic() + timeout
    pending = {c.what: c for c in conditions}
    missing: dict[str, str] = {}
    while True:
        for what, cond in list(pending.items()):
            problem = cond.check()
            if problem is None:
                del pending[what]
                missing.pop(what, None)
            else:
                missing[what] = problem
        if on_progress is not None:
            on_progress(len(conditions) - len(pending), len(conditions),
                        [f"{w}: {m}" for w, m in missing.items()])
        if not pending:
            return
        if time.monotonic() >= deadline:
            lines = "; ".join(f"{w}: {missing[w]}" for w in pending)
            raise DeployError(f"not ready after {timeout:g}s: {lines}",
                              hint="`kubectl describe` the objects named; raise --timeout if "
                              "they are still starting")
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
