"""``${k8s:namespace/secret#key}``: a plan's reference to one key of a Kubernetes Secret.

Resolved only when a store connects (through ``migrator.config.resolve_refs``), with the
kubeconfig in KUBECONFIG / ~/.kube/config, or the pod's service account inside a cluster.
Each Secret is read once per process. A missing Secret or key is a PlanError naming the
plan field and the Secret; no permission or no API server is an EndpointError naming the
API server: one line each, never the value.
"""

from __future__ import annotations

import base64
import threading
from typing import TYPE_CHECKING
from urllib.parse import quote

from migrator.errors import EndpointError, PlanError

if TYPE_CHECKING:  # the kubernetes client takes seconds to import: only when a ref is used
    from migrator.deploy.kube import Kube

_lock = threading.Lock()
_kube: Kube | None = None
_secrets: dict[tuple[str, str], dict[str, str]] = {}


def reference(namespace: str, secret: str, key: str) -> str:
    return f"${{k8s:{namespace}/{secret}#{key}}}"


def url_reference(namespace: str, secret: str, key: str) -> str:
    """The reference as it must appear inside a URL's user-info: ``/`` and ``#`` would end
    the host part, so they are percent-encoded (the URL is decoded before resolving)."""
    return quote(reference(namespace, secret, key), safe="${}:")


def _client() -> Kube:
    global _kube
    if _kube is None:
        from migrator.deploy.kube import Kube

        _kube = Kube.connect()
    return _kube


def forget() -> None:
    """Drop the cached client and values (tests; a long process after a credential change)."""
    global _kube
    with _lock:
        _kube = None
        _secrets.clear()


def read_secret_key(namespace: str, name: str, key: str, where: str) -> str:
    with _lock:
        data = _secrets.get((namespace, name))
        if data is None:
            data = _read(namespace, name, where)
            _secrets[(namespace, name)] = data
    if key not in data:
        raise PlanError(where, f"Kubernetes Secret {namespace}/{name} has no key {key!r}",
                        hint=f"its keys: {', '.join(sorted(data)) or '(none)'}")
    return data[key]


def _read(namespace: str, name: str, where: str) -> dict[str, str]:
    from kubernetes.client.exceptions import ApiException

    from migrator.deploy.kube import status_message

    kube = _client()
    try:
        secret = kube.core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise PlanError(where, f"Kubernetes Secret {namespace}/{name} not found",
                            hint="create it, or run `openim-migrate deploy`, which does") from None
        if exc.status == 403:
            raise EndpointError(kube.label, f"no permission to read Secret {namespace}/{name} "
                                f"(for {where}): {status_message(exc)}",
                                hint="grant `get` on this Secret to the identity in use") from None
        raise kube.error(f"Secret {namespace}/{name} (for {where})", exc) from None
    except OSError as exc:
        raise EndpointError(kube.label, f"cannot reach the API server ({exc})",
                            transient=True) from None
    except Exception as exc:  # urllib3 errors are not OSErrors
        if type(exc).__module__.startswith("urllib3"):
            raise EndpointError(kube.label, f"cannot reach the API server ({exc})",
                                transient=True) from None
        raise
    return {k: base64.b64decode(v).decode("utf-8") for k, v in (secret.data or {}).items()}
