"""The plan's targets after a deploy: Service DNS names (or 127.0.0.1 behind
``kubectl port-forward``) and ``${k8s:namespace/secret#key}`` references, never values."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from migrator.deploy.secretref import reference, url_reference
from migrator.deploy.spec import PORTS, REPLICA_SET, Adopted, DeploySpec, Secret
from migrator.errors import UsageError

MODES = ("cluster", "port-forward")


def _target(kind: str, ns: str, host: str, port: int, secret: Secret, *, ours: bool,
            mode: str, cluster_redis: bool, old: dict[str, Any] | None) -> dict[str, Any]:
    password = url_reference(ns, secret.name, secret.password_key)
    old_url = urlsplit(str((old or {}).get("url") or ""))
    if kind == "mongo":
        query = "authSource=admin"
        if mode == "port-forward":
            query += "&directConnection=true"  # members' names do not resolve outside
        elif ours:
            query += f"&replicaSet={REPLICA_SET}"
        return {"url": f"mongodb://{secret.user}:{password}@{host}:{port}/?{query}"}
    if kind == "redis":
        if cluster_redis:
            if mode == "port-forward":
                raise UsageError("a Redis Cluster cannot be reached through one port-forward "
                                 "(clients follow redirects to each node's name)",
                                 hint="use --endpoints cluster and run the copy as a Job")
            return {"url": f"redis+cluster://:{password}@{host}:{port}"}
        return {"url": f"redis://:{password}@{host}:{port}/0"}
    if kind == "objects":
        bucket = old_url.path.strip("/") or "openim"
        assert secret.user_key is not None
        return {"url": f"http://{host}:{port}/{bucket}",
                "access_key": reference(ns, secret.name, secret.user_key),
                "secret_key": reference(ns, secret.name, secret.password_key)}
    path = old_url.path.strip("/")
    return {"url": f"mysql://{secret.user}:{password}@{host}:{port}/{path}"}


def targets(spec: DeploySpec, mode: str = "cluster",
            old: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Target endpoint dicts (``url`` + options) per store kind. ``old`` targets lend what
    deploy does not decide: the bucket, the MySQL database, other options such as db_map."""
    if mode not in MODES:
        raise UsageError(f"--endpoints must be one of {', '.join(MODES)}")
    out = {}
    for kind in spec.stores:
        adopted: Adopted | None = spec.adopt.get(kind)
        if adopted is not None:
            service, port, secret = adopted.service, adopted.port, adopted.secret
        else:
            names = spec.names(kind)
            service, port, secret = names.service, PORTS[kind], names.secret
        host = spec.host(service) if mode == "cluster" else "127.0.0.1"
        previous = (old or {}).get(kind)
        target = _target(kind, spec.namespace, host, port, secret, ours=adopted is None,
                         mode=mode, old=previous, cluster_redis=(
                             kind == "redis" and adopted is None
                             and spec.redis_mode == "cluster"))
        keep = {k: v for k, v in (previous or {}).items()
                if k not in ("url", "access_key", "secret_key", "tls")}
        out[kind] = {**target, **keep}
    return out


def port_forwards(spec: DeploySpec) -> list[str]:
    """The kubectl commands that make ``--endpoints port-forward`` targets reachable."""
    lines = []
    for kind in spec.stores:
        adopted = spec.adopt.get(kind)
        service = adopted.service if adopted else spec.names(kind).service
        port = adopted.port if adopted else PORTS[kind]
        lines.append(f"kubectl -n {spec.namespace} port-forward svc/{service} {port}:{port}")
    return lines
