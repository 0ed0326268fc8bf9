"""One Kubernetes API client with the project's errors: server-side apply, reads that treat
404 as "absent", permission checks up front, and every API failure as one line naming the
object (DeployError, exit 7) or the API server (EndpointError, exit 4).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from migrator.deploy.spec import MANAGER
from migrator.errors import DeployError, EndpointError, PlanError

APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    plural: str
    namespaced: bool = True

    @property
    def label(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = {
    "Namespace": Resource("", "namespaces", namespaced=False),
    "Secret": Resource("", "secrets"),
    "ConfigMap": Resource("", "configmaps"),
    "Service": Resource("", "services"),
    "ServiceAccount": Resource("", "serviceaccounts"),
    "PersistentVolumeClaim": Resource("", "persistentvolumeclaims"),
    "StatefulSet": Resource("apps", "statefulsets"),
    "Job": Resource("batch", "jobs"),
    "Role": Resource("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io", "rolebindings"),
    "EndpointSlice": Resource("discovery.k8s.io", "endpointslices"),
    "ServiceMonitor": Resource("monitoring.coreos.com", "servicemonitors"),
}


def status_message(exc: ApiException) -> str:
    """The API's own one-line explanation (its Status.message), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or f"HTTP {exc.status}")


def load_client(kubeconfig: str | None = None, context: str | None = None) -> k.ApiClient:
    """From --kubeconfig/KUBECONFIG/~/.kube/config, or the pod's service account inside a
    cluster (a Job), in the same order kubectl uses."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    default = Path(kconfig.KUBE_CONFIG_DEFAULT_LOCATION).expanduser()
    try:
        if path or default.exists():
            configuration = k.Configuration()
            kconfig.load_kube_config(config_file=path or str(default), context=context,
                                     client_configuration=configuration)
            return k.ApiClient(configuration)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = k.Configuration()
            kconfig.load_incluster_config(client_configuration=configuration)
            return k.ApiClient(configuration)
    except (ConfigException, OSError, ValueError) as exc:
        raise PlanError("kubeconfig", f"cannot load {path or default}: {exc}",
                        hint="pass --kubeconfig PATH or set KUBECONFIG") from exc
    raise PlanError("kubeconfig", f"no kubeconfig ({default} does not exist, KUBECONFIG is "
                    "not set) and not running inside a cluster",
                    hint="pass --kubeconfig PATH or set KUBECONFIG")


class Kube:
    """Typed API groups over one client; ``call`` turns failures into the project's errors."""

    def __init__(self, api_client: k.ApiClient) -> None:
        self.client = api_client
        self.server = str(api_client.configuration.host)
        self.core = k.CoreV1Api(api_client)
        self.apps = k.AppsV1Api(api_client)
        self.batch = k.BatchV1Api(api_client)
        self.rbac = k.RbacAuthorizationV1Api(api_client)
        self.discovery = k.DiscoveryV1Api(api_client)
        self.custom = k.CustomObjectsApi(api_client)
        self.authz = k.AuthorizationV1Api(api_client)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        return cls(load_client(kubeconfig, context))

    @property
    def label(self) -> str:
        return f"kubernetes API ({self.server})"

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a 404 returns None, anything else raises, naming ``what``
        (e.g. "StatefulSet openim/im-mongodb")."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self.error(what, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise EndpointError(self.label, f"cannot reach the API server ({exc})",
                                transient=True,
                                hint="check the kubeconfig's server and your network") from None

    def error(self, what: str, exc: ApiException) -> DeployError | EndpointError:
        message = status_message(exc)
        if exc.status == 401:
            return EndpointError(self.label, f"not authenticated ({message})",
                                 hint="refresh the kubeconfig's credentials")
        if exc.status == 403:
            return DeployError(f"{what}: forbidden: {message}",
                               hint="grant the permission named above with a Role "
                               "(docs/deploy.md lists the rules deploy needs)")
        if exc.status == 409:
            return DeployError(f"{what}: {message}",
                               hint="another field manager owns these fields; "
                               "--force-conflicts takes them over")
        return DeployError(f"{what}: {message} (HTTP {exc.status})")

    # -- generic read / apply ------------------------------------------------------------
    def _typed(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(read, patch) methods of the typed client for a kind."""
        table: dict[str, tuple[Any, str]] = {
            "Namespace": (self.core, "namespace"), "Secret": (self.core, "namespaced_secret"),
            "ConfigMap": (self.core, "namespaced_config_map"),
            "Service": (self.core, "namespaced_service"),
            "ServiceAccount": (self.core, "namespaced_service_account"),
            "PersistentVolumeClaim": (self.core, "namespaced_persistent_volume_claim"),
            "StatefulSet": (self.apps, "namespaced_stateful_set"),
            "Job": (self.batch, "namespaced_job"),
            "Role": (self.rbac, "namespaced_role"),
            "RoleBinding": (self.rbac, "namespaced_role_binding"),
        }
        api, suffix = table[kind]
        return getattr(api, f"read_{suffix}"), getattr(api, f"patch_{suffix}")

    @staticmethod
    def describe(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        where = f"{meta['namespace']}/" if meta.get("namespace") else ""
        return f"{obj['kind']} {where}{meta['name']}"

    def read(self, kind: str, name: str, namespace: str | None = None) -> Any:
        """The object (a model; a dict for custom resources) or None when absent."""
        what = f"{kind} {namespace + '/' if namespace else ''}{name}"
        if kind == "ServiceMonitor":
            return self.call(what, self.custom.get_namespaced_custom_object,
                             "monitoring.coreos.com", "v1", namespace, "servicemonitors", name)
        read, _ = self._typed(kind)
        args = (name, namespace) if RESOURCES[kind].namespaced else (name,)
        return self.call(what, read, *args)

    def apply(self, obj: dict[str, Any], *, force: bool = False) -> str:
        """Server-side apply as field manager ``openim-migrate``; returns "created",
        "configured" or "unchanged" (by resourceVersion)."""
        kind, meta = obj["kind"], obj["metadata"]
        what = self.describe(obj)
        before = self.read(kind, meta["name"], meta.get("namespace"))
        options = {"field_manager": MANAGER, "force": force, "_content_type": APPLY}
        if kind == "ServiceMonitor":
            after = self.call(what, self.custom.patch_namespaced_custom_object,
                              "monitoring.coreos.com", "v1", meta["namespace"],
                              "servicemonitors", meta["name"], obj, **options)
            if after is None:
                raise DeployError(f"{what}: the cluster has no ServiceMonitor resource",
                                  hint="install the Prometheus Operator (e.g. "
                                  "kube-prometheus-stack) or leave out --service-monitor")
            return _action(_rv(before), _rv(after))
        _, patch = self._typed(kind)
        args = (meta["name"], meta["namespace"]) if RESOURCES[kind].namespaced else (
            meta["name"],)
        after = self.call(what, patch, *args, obj, **options)
        if after is None:  # the namespace is missing
            raise DeployError(f"{what}: namespace {meta.get('namespace')} not found")
        return _action(_rv(before), _rv(after))

    # -- permissions -----------------------------------------------------------------------
    def missing_permissions(self, namespace: str,
                            needs: list[tuple[str, str]]) -> list[str]:
        """Each ``(verb, kind)`` the current identity may not do in ``namespace``, asked with
        SelfSubjectAccessReviews (which every authenticated identity may create)."""
        missing = []
        for verb, kind in needs:
            res = RESOURCES[kind]
            review = k.V1SelfSubjectAccessReview(
                api_version="authorization.k8s.io/v1", kind="SelfSubjectAccessReview",
                spec=k.V1SelfSubjectAccessReviewSpec(resource_attributes=k.V1ResourceAttributes(
                    namespace=namespace if res.namespaced else None, verb=verb,
                    group=res.group, resource=res.plural)))
            answer = self.call("SelfSubjectAccessReview",
                               self.authz.create_self_subject_access_review, review)
            if answer is None or not answer.status.allowed:
                missing.append(f"{verb} {res.label}")
        return missing

    def whoami(self) -> str:
        try:
            review = k.AuthenticationV1Api(self.client).create_self_subject_review(
                k.V1SelfSubjectReview(api_version="authentication.k8s.io/v1",
                                      kind="SelfSubjectReview"))
            user = review.status.user_info if review.status else None
            return str(user.username) if user and user.username else "the current user"
        except (ApiException, AttributeError, urllib3.exceptions.HTTPError, OSError):
            return "the current user"


def _rv(obj: Any) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get("metadata", {}).get("resourceVersion")
    return obj.metadata.resource_version


def _action(before: str | None, after: str | None) -> str:
    if before is None:
        return "created"
    return "unchanged" if before == after else "configured"
