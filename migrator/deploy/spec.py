"""What ``deploy`` renders: per store kind, a service with fixed names, port, image and size.

Names follow the Service names of OpenIM's Helm charts (im-mongodb, im-redis-master,
im-minio; Secret keys as in their Bitnami subcharts), so OpenIM's own configuration finds
the services we deploy, and an existing Helm install can be adopted with the same
references. The sizes come from the plan's measured bytes: data x headroom + 1 GiB, because
WiredTiger compaction, the oplog, AOF rewrites and MinIO's erasure metadata all need room
beyond the data itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from migrator.errors import UsageError

GiB = 1 << 30
MiB = 1 << 20
KINDS = ("mongo", "redis", "objects", "mysql")
DEFAULT_STORES = ("mongo", "redis", "objects")

# Pinned by tag (never :latest): what OpenIM v3.8's compose files run, or the nearest
# maintained release. Override with --image KIND=IMAGE.
IMAGES = {
    "mongo": "mongo:7.0.28",
    "redis": "redis:7.2.4",
    "objects": "minio/minio:RELEASE.2024-01-11T07-46-16Z",
    "mysql": "mariadb:10.11.8",
}
PORTS = {"mongo": 27017, "redis": 6379, "objects": 9000, "mysql": 3306}
APP_NAMES = {"mongo": "mongodb", "redis": "redis", "objects": "minio", "mysql": "mariadb"}
COMPONENTS = {"mongo": "database", "redis": "cache", "objects": "object-storage",
              "mysql": "database"}
REPLICA_SET = "rs0"
REDIS_CLUSTER_NODES = 3
MANAGER = "openim-migrate"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)$")


@dataclass(frozen=True)
class Secret:
    """A Secret and the keys a service needs from it (``user`` may be a fixed name)."""

    name: str
    password_key: str
    user: str | None = None  # a fixed user name, not secret (e.g. "root")
    user_key: str | None = None  # or a key holding a generated user name (MinIO)
    extra_keys: tuple[str, ...] = ()  # generated too, e.g. the replica-set keyfile


@dataclass(frozen=True)
class Names:
    statefulset: str
    service: str
    headless: str
    secret: Secret


def names(kind: str, redis_mode: str = "standalone") -> Names:
    if kind == "mongo":
        return Names("im-mongodb", "im-mongodb", "im-mongodb-headless",
                     Secret("im-mongodb", "mongodb-root-password", user="root",
                            extra_keys=("mongodb-replica-set-key",)))
    if kind == "redis":
        base = "im-redis-master" if redis_mode == "standalone" else "im-redis-cluster"
        return Names(base, base, f"{base}-headless", Secret("im-redis", "redis-password"))
    if kind == "objects":
        return Names("im-minio", "im-minio", "im-minio-headless",
                     Secret("im-minio", "root-password", user_key="root-user"))
    if kind == "mysql":
        return Names("im-mysql", "im-mysql", "im-mysql-headless",
                     Secret("im-mysql", "mysql-root-password", user="root"))
    raise UsageError(f"unknown store kind {kind!r}; one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class Adopted:
    """An existing Service (e.g. from OpenIM's Helm charts) used instead of rendering one."""

    kind: str
    service: str
    secret: Secret
    port: int


def adopted_secret(kind: str, service: str, secret_name: str | None = None) -> Secret:
    """The Bitnami chart's Secret for a Service: im-redis-master -> im-redis, else same name."""
    ours = names(kind).secret
    default = service[: -len("-master")] if service.endswith("-master") else service
    return Secret(secret_name or default, ours.password_key, user=ours.user,
                  user_key=ours.user_key)


def parse_adopt(value: str, secret_names: dict[str, str]) -> Adopted:
    """``mongo=svc/im-mongodb`` or ``redis=svc/im-redis-master:6379``."""
    kind, sep, ref = value.partition("=")
    if not sep or kind not in KINDS:
        raise UsageError(f"--adopt {value!r}: expected KIND=svc/NAME with KIND one of "
                         f"{', '.join(KINDS)}")
    what, slash, name = ref.partition("/")
    if not slash or what not in ("svc", "service") or not name:
        raise UsageError(f"--adopt {value!r}: expected svc/NAME, e.g. mongo=svc/im-mongodb")
    name, colon, port = name.partition(":")
    if not _DNS_LABEL.match(name):
        raise UsageError(f"--adopt {value!r}: {name!r} is not a Service name")
    if colon and not port.isdigit():
        raise UsageError(f"--adopt {value!r}: port {port!r} is not a number")
    return Adopted(kind, name, adopted_secret(kind, name, secret_names.get(kind)),
                   int(port) if colon else PORTS[kind])


def quantity(size: str, where: str) -> int:
    """``20Gi`` -> bytes (binary suffixes only, as Kubernetes writes storage)."""
    match = _QUANTITY.match(size.strip())
    if not match:
        raise UsageError(f"{where} {size!r}: write a size like 512Mi or 20Gi")
    return int(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)[0]) + 1)


def storage_for(data_bytes: int, headroom: float) -> str:
    return f"{max(1, math.ceil(data_bytes * headroom / GiB) + 1)}Gi"


def redis_memory_for(data_bytes: int) -> str:
    """Redis keeps everything in memory: request 1.5 x the data, at least 256 MiB."""
    return f"{max(256, math.ceil(data_bytes * 1.5 / MiB))}Mi"


@dataclass
class DeploySpec:
    namespace: str = "openim"
    stores: tuple[str, ...] = DEFAULT_STORES
    storage_class: str | None = None
    images: dict[str, str] = field(default_factory=lambda: dict(IMAGES))
    data_bytes: dict[str, int] = field(default_factory=dict)  # measured, per kind
    storage: dict[str, str] = field(default_factory=dict)  # explicit PVC sizes
    headroom: float = 2.0
    redis_mode: str = "standalone"  # or "cluster" (3 masters)
    adopt: dict[str, Adopted] = field(default_factory=dict)
    service_monitor: bool = False
    metrics_port: int = 9464

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise UsageError(f"--namespace {self.namespace!r} is not a valid namespace name")
        for kind in self.stores:
            names(kind)  # raises on an unknown kind
        if self.redis_mode not in ("standalone", "cluster"):
            raise UsageError("--redis-mode must be standalone or cluster")
        if self.headroom < 1:
            raise UsageError("--headroom must be at least 1.0")
        for kind, size in self.storage.items():
            quantity(size, f"--size {kind}=")

    @property
    def rendered(self) -> tuple[str, ...]:
        """Kinds we render objects for (the rest are adopted)."""
        return tuple(k for k in self.stores if k not in self.adopt)

    def names(self, kind: str) -> Names:
        return names(kind, self.redis_mode)

    def pvc_size(self, kind: str) -> str:
        return self.storage.get(kind) or storage_for(self.data_bytes.get(kind, 0),
                                                     self.headroom)

    def replicas(self, kind: str) -> int:
        return REDIS_CLUSTER_NODES if kind == "redis" and self.redis_mode == "cluster" else 1

    def host(self, service: str) -> str:
        return f"{service}.{self.namespace}.svc.cluster.local"
