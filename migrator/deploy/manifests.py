"""Typed builders for the in-cluster data services, one function per object.

Objects are the kubernetes client's models (pydantic, unknown fields refused), turned into
plain dicts only at the end (``to_dicts``), so a misspelt field fails here, not in the
cluster. Secret values never appear outside Secret objects: containers get them through
``secretKeyRef`` and refer to them as ``$(VAR)`` in args, which the kubelet expands.
"""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client as k

from migrator.deploy.spec import (
    APP_NAMES,
    COMPONENTS,
    MANAGER,
    PORTS,
    REPLICA_SET,
    DeploySpec,
    redis_memory_for,
)

PLACEHOLDER = "(generated on apply; never printed)"
ServiceMonitor = dict[str, Any]  # a CRD: no typed model in the client


def labels(spec: DeploySpec, kind: str, instance: str) -> dict[str, str]:
    image = spec.images[kind]
    return {**selector(kind, instance),
            "app.kubernetes.io/component": COMPONENTS[kind],
            "app.kubernetes.io/part-of": "openim",
            "app.kubernetes.io/managed-by": MANAGER,
            "app.kubernetes.io/version": image.rsplit(":", 1)[-1][:63]}


def selector(kind: str, instance: str) -> dict[str, str]:
    """Selector labels: only those that never change (a selector is immutable)."""
    return {"app.kubernetes.io/name": APP_NAMES[kind], "app.kubernetes.io/instance": instance}


def _meta(spec: DeploySpec, kind: str, name: str, instance: str | None = None
          ) -> k.V1ObjectMeta:
    return k.V1ObjectMeta(name=name, namespace=spec.namespace,
                          labels=labels(spec, kind, instance or name))


def _from_secret(env: str, secret: str, key: str) -> k.V1EnvVar:
    return k.V1EnvVar(name=env, value_from=k.V1EnvVarSource(
        secret_key_ref=k.V1SecretKeySelector(name=secret, key=key)))


def _exec_probe(script: str, *, period: int, failures: int, delay: int = 5) -> k.V1Probe:
    probe = k.V1Probe(initial_delay_seconds=delay, period_seconds=period, timeout_seconds=5,
                      failure_threshold=failures)
    probe.var_exec = k.V1ExecAction(command=["sh", "-c", script])  # "exec": a Python builtin
    return probe


def _restricted(uid: int) -> tuple[k.V1PodSecurityContext, k.V1SecurityContext]:
    """Non-root, no privilege escalation, no capabilities (Pod Security "restricted")."""
    pod = k.V1PodSecurityContext(run_as_user=uid, run_as_group=uid, fs_group=uid,
                                 run_as_non_root=True,
                                 seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"))
    container = k.V1SecurityContext(allow_privilege_escalation=False,
                                    capabilities=k.V1Capabilities(drop=["ALL"]))
    return pod, container


# ----------------------------------------------------------------------------- per object
def namespace(spec: DeploySpec) -> k.V1Namespace:
    return k.V1Namespace(api_version="v1", kind="Namespace", metadata=k.V1ObjectMeta(
        name=spec.namespace, labels={"app.kubernetes.io/managed-by": MANAGER}))


def secret(spec: DeploySpec, kind: str, values: dict[str, str] | None) -> k.V1Secret:
    """``values`` None (dry run): placeholders in stringData, nothing generated or read."""
    names = spec.names(kind)
    keys = [names.secret.password_key, *names.secret.extra_keys]
    if names.secret.user_key:
        keys.insert(0, names.secret.user_key)
    meta = _meta(spec, kind, names.secret.name, names.statefulset)
    if values is None:
        return k.V1Secret(api_version="v1", kind="Secret", metadata=meta, type="Opaque",
                          string_data={key: PLACEHOLDER for key in keys})
    return k.V1Secret(api_version="v1", kind="Secret", metadata=meta, type="Opaque",
                      data={key: base64.b64encode(values[key].encode()).decode()
                            for key in keys})


def services(spec: DeploySpec, kind: str) -> list[k.V1Service]:
    """A ClusterIP Service for clients and a headless one giving each pod a stable DNS name
    (published before it is ready, so a replica set can be initiated)."""
    names = spec.names(kind)
    port = k.V1ServicePort(name=APP_NAMES[kind], port=PORTS[kind],
                           target_port=APP_NAMES[kind], protocol="TCP")
    sel = selector(kind, names.statefulset)
    return [
        k.V1Service(api_version="v1", kind="Service",
                    metadata=_meta(spec, kind, names.service, names.statefulset),
                    spec=k.V1ServiceSpec(type="ClusterIP", selector=sel, ports=[port])),
        k.V1Service(api_version="v1", kind="Service",
                    metadata=_meta(spec, kind, names.headless, names.statefulset),
                    spec=k.V1ServiceSpec(cluster_ip="None", selector=sel, ports=[port],
                                         publish_not_ready_addresses=True)),
    ]


def _container(spec: DeploySpec, kind: str) -> tuple[k.V1Container, list[k.V1Volume],
                                                      list[k.V1Container], int]:
    """The main container, extra pod volumes, init containers and the image's user id."""
    names = spec.names(kind)
    sec = names.secret
    image = spec.images[kind]
    port = [k.V1ContainerPort(name=APP_NAMES[kind], container_port=PORTS[kind])]
    data = k.V1VolumeMount(name="data", mount_path="/data")
    if kind == "mongo":
        keyfile = k.V1VolumeMount(name="keyfile", mount_path="/etc/mongo-keyfile")
        ping = "mongosh --quiet --eval 'db.adminCommand(\"ping\").ok' | grep -q 1"
        main = k.V1Container(
            name="mongod", image=image, ports=port,
            args=["--replSet", REPLICA_SET, "--bind_ip_all",
                  "--keyFile", "/etc/mongo-keyfile/keyfile"],
            env=[k.V1EnvVar(name="MONGO_INITDB_ROOT_USERNAME", value=sec.user),
                 _from_secret("MONGO_INITDB_ROOT_PASSWORD", sec.name, sec.password_key)],
            volume_mounts=[k.V1VolumeMount(name="data", mount_path="/data/db"), keyfile],
            readiness_probe=_exec_probe(ping, period=10, failures=6),
            liveness_probe=_exec_probe(ping, period=20, failures=6, delay=30),
            resources=k.V1ResourceRequirements(requests={"cpu": "250m", "memory": "1Gi"}))
        # mongod refuses a keyfile others can read, and a Secret volume cannot be owned by
        # the mongodb user: copy it into an emptyDir with mode 0400.
        init = k.V1Container(
            name="keyfile", image=image,
            command=["sh", "-c", "cp /keyfile-secret/keyfile /etc/mongo-keyfile/keyfile && "
                     "chmod 0400 /etc/mongo-keyfile/keyfile"],
            volume_mounts=[k.V1VolumeMount(name="keyfile-secret", mount_path="/keyfile-secret",
                                           read_only=True), keyfile])
        volumes = [
            k.V1Volume(name="keyfile-secret", secret=k.V1SecretVolumeSource(
                secret_name=sec.name, default_mode=0o440,
                items=[k.V1KeyToPath(key="mongodb-replica-set-key", path="keyfile")])),
            k.V1Volume(name="keyfile", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory"))]
        return main, volumes, [init], 999
    if kind == "redis":
        args = ["--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes", "--dir", "/data"]
        env = [_from_secret("REDIS_PASSWORD", sec.name, sec.password_key),
               _from_secret("REDISCLI_AUTH", sec.name, sec.password_key)]
        if spec.redis_mode == "cluster":
            env.append(k.V1EnvVar(name="POD_NAME", value_from=k.V1EnvVarSource(
                field_ref=k.V1ObjectFieldSelector(field_path="metadata.name"))))
            args += ["--masterauth", "$(REDIS_PASSWORD)", "--cluster-enabled", "yes",
                     "--cluster-config-file", "/data/nodes.conf",
                     "--cluster-announce-hostname",
                     f"$(POD_NAME).{names.headless}.{spec.namespace}.svc.cluster.local",
                     "--cluster-preferred-endpoint-type", "hostname"]
        per_node = spec.data_bytes.get("redis", 0) // spec.replicas("redis")
        ping = "redis-cli ping | grep -q PONG"
        main = k.V1Container(
            name="redis", image=image, ports=port, command=["redis-server"], args=args,
            env=env, volume_mounts=[data],
            readiness_probe=_exec_probe(ping, period=5, failures=3),
            liveness_probe=_exec_probe(ping, period=15, failures=4, delay=15),
            resources=k.V1ResourceRequirements(requests={
                "cpu": "100m", "memory": redis_memory_for(per_node)}))
        return main, [], [], 999
    if kind == "objects":
        assert sec.user_key is not None
        main = k.V1Container(
            name="minio", image=image, ports=port, command=["minio"],
            args=["server", "/data", "--address", ":9000", "--console-address", ":9001",
                  "--certs-dir", "/tmp/certs"],
            env=[_from_secret("MINIO_ROOT_USER", sec.name, sec.user_key),
                 _from_secret("MINIO_ROOT_PASSWORD", sec.name, sec.password_key)],
            volume_mounts=[data, k.V1VolumeMount(name="tmp", mount_path="/tmp")],
            readiness_probe=k.V1Probe(http_get=k.V1HTTPGetAction(
                path="/minio/health/ready", port=APP_NAMES[kind]), period_seconds=10,
                failure_threshold=3),
            liveness_probe=k.V1Probe(http_get=k.V1HTTPGetAction(
                path="/minio/health/live", port=APP_NAMES[kind]), initial_delay_seconds=10,
                period_seconds=20, failure_threshold=4),
            resources=k.V1ResourceRequirements(requests={"cpu": "250m", "memory": "512Mi"}))
        return main, [k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource())], [], 1000
    # mysql (MariaDB): only when the source has MySQL (OpenIM <= 3.4, chat <= 1.5)
    ping = "mariadb-admin ping -uroot | grep -q alive"
    main = k.V1Container(
        name="mariadb", image=image, ports=port,
        env=[_from_secret("MARIADB_ROOT_PASSWORD", sec.name, sec.password_key),
             _from_secret("MYSQL_PWD", sec.name, sec.password_key)],
        volume_mounts=[k.V1VolumeMount(name="data", mount_path="/var/lib/mysql"),
                       k.V1VolumeMount(name="run", mount_path="/run/mysqld")],
        readiness_probe=_exec_probe(ping, period=10, failures=6),
        liveness_probe=_exec_probe(ping, period=20, failures=6, delay=30),
        resources=k.V1ResourceRequirements(requests={"cpu": "250m", "memory": "512Mi"}))
    return main, [k.V1Volume(name="run", empty_dir=k.V1EmptyDirVolumeSource())], [], 999


def statefulset(spec: DeploySpec, kind: str) -> k.V1StatefulSet:
    names = spec.names(kind)
    main, volumes, inits, uid = _container(spec, kind)
    pod_security, container_security = _restricted(uid)
    main.security_context = container_security
    for init in inits:
        init.security_context = container_security
    claim = k.V1PersistentVolumeClaim(
        # Only labels that never change: volumeClaimTemplates cannot be updated.
        metadata=k.V1ObjectMeta(name="data", labels={
            **selector(kind, names.statefulset), "app.kubernetes.io/managed-by": MANAGER}),
        spec=k.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"], storage_class_name=spec.storage_class,
            resources=k.V1VolumeResourceRequirements(requests={
                "storage": spec.pvc_size(kind)})))
    return k.V1StatefulSet(
        api_version="apps/v1", kind="StatefulSet",
        metadata=_meta(spec, kind, names.statefulset),
        spec=k.V1StatefulSetSpec(
            service_name=names.headless, replicas=spec.replicas(kind),
            pod_management_policy="Parallel",
            selector=k.V1LabelSelector(match_labels=selector(kind, names.statefulset)),
            template=k.V1PodTemplateSpec(
                metadata=k.V1ObjectMeta(labels=labels(spec, kind, names.statefulset)),
                spec=k.V1PodSpec(
                    containers=[main], init_containers=inits or None,
                    volumes=volumes or None, security_context=pod_security,
                    automount_service_account_token=False, enable_service_links=False,
                    termination_grace_period_seconds=60 if kind == "mongo" else 30)),
            volume_claim_templates=[claim]))


# Idempotent init scripts: safe to run again (a re-created Job finds the work done).
MONGO_INIT = """\
host="{host}:27017"
until mongosh --quiet --host "$host" --eval 'db.adminCommand("ping").ok' >/dev/null 2>&1; do
  echo "waiting for $host"; sleep 3
done
mongosh --quiet --host "$host" -u root -p "$MONGO_ROOT_PASSWORD" --authenticationDatabase admin \
  --eval 'try {{ rs.status().ok }} catch (e) {{
    rs.initiate({{_id: "{rs}", members: [{{_id: 0, host: "{host}:27017"}}]}}).ok }}'
until mongosh --quiet --host "$host" -u root -p "$MONGO_ROOT_PASSWORD" \
  --authenticationDatabase admin --eval 'db.hello().isWritablePrimary' | grep -q true; do
  echo "waiting for a primary"; sleep 2
done
"""

REDIS_CLUSTER_INIT = """\
nodes=""
for h in {hosts}; do
  until ip=$(getent hosts "$h" | awk '{{print $1}}') && [ -n "$ip" ] && \
        redis-cli -h "$h" ping | grep -q PONG; do echo "waiting for $h"; sleep 3; done
  nodes="$nodes $ip:6379"
done
first={first}
if redis-cli -h "$first" cluster info | grep -q 'cluster_state:ok'; then exit 0; fi
redis-cli --cluster create $nodes --cluster-replicas 0 --cluster-yes
until redis-cli -h "$first" cluster info | grep -q 'cluster_state:ok'; do sleep 2; done
"""


def init_job(spec: DeploySpec, kind: str) -> k.V1Job | None:
    """One-off set-up the server cannot do by itself: ``replSetInitiate`` for MongoDB,
    ``--cluster create`` for a Redis Cluster."""
    names = spec.names(kind)
    headless = f"{names.headless}.{spec.namespace}.svc.cluster.local"
    if kind == "mongo":
        script = MONGO_INIT.format(host=f"{names.statefulset}-0.{headless}", rs=REPLICA_SET)
        env = [_from_secret("MONGO_ROOT_PASSWORD", names.secret.name,
                            names.secret.password_key)]
        uid = 999
    elif kind == "redis" and spec.redis_mode == "cluster":
        hosts = [f"{names.statefulset}-{i}.{headless}" for i in range(spec.replicas(kind))]
        script = REDIS_CLUSTER_INIT.format(hosts=" ".join(hosts), first=hosts[0])
        env = [_from_secret("REDISCLI_AUTH", names.secret.name, names.secret.password_key)]
        uid = 999
    else:
        return None
    pod_security, container_security = _restricted(uid)
    name = f"{names.statefulset}-init"
    return k.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=_meta(spec, kind, name, names.statefulset),
        spec=k.V1JobSpec(
            backoff_limit=10, active_deadline_seconds=900,
            template=k.V1PodTemplateSpec(
                metadata=k.V1ObjectMeta(labels=labels(spec, kind, name)),
                spec=k.V1PodSpec(
                    restart_policy="OnFailure", security_context=pod_security,
                    automount_service_account_token=False,
                    containers=[k.V1Container(
                        name="init", image=spec.images[kind], command=["sh", "-c", script],
                        env=env, security_context=container_security,
                        resources=k.V1ResourceRequirements(requests={
                            "cpu": "50m", "memory": "64Mi"}))]))))


def metrics_service(spec: DeploySpec) -> k.V1Service:
    """Selects the migration Job's pods (see ``job render``) for Prometheus to scrape."""
    return k.V1Service(
        api_version="v1", kind="Service",
        metadata=k.V1ObjectMeta(name="openim-migrate-metrics", namespace=spec.namespace,
                                labels={"app.kubernetes.io/name": "openim-migrate",
                                        "app.kubernetes.io/managed-by": MANAGER}),
        spec=k.V1ServiceSpec(selector={"app.kubernetes.io/name": "openim-migrate"},
                             ports=[k.V1ServicePort(name="metrics", port=spec.metrics_port,
                                                    target_port="metrics")]))


def service_monitor(spec: DeploySpec) -> ServiceMonitor:
    """For the Prometheus Operator (kube-prometheus-stack): scrape the metrics Service."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "openim-migrate", "namespace": spec.namespace,
                     "labels": {"app.kubernetes.io/name": "openim-migrate",
                                "app.kubernetes.io/managed-by": MANAGER}},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "openim-migrate"}},
                 "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]},
    }


def render(spec: DeploySpec, secret_values: dict[str, dict[str, str]] | None = None
           ) -> list[dict[str, Any]]:
    """Every object, in apply order, as plain dicts. ``secret_values`` maps a Secret name
    to its values; None renders placeholders (dry run)."""
    objects: list[Any] = [namespace(spec)]
    for kind in spec.rendered:
        name = spec.names(kind).secret.name
        objects.append(secret(spec, kind, None if secret_values is None
                              else secret_values[name]))
    for kind in spec.rendered:
        objects.extend(services(spec, kind))
    objects.extend(statefulset(spec, kind) for kind in spec.rendered)
    objects.extend(j for j in (init_job(spec, kind) for kind in spec.rendered) if j)
    if spec.service_monitor:
        objects += [metrics_service(spec), service_monitor(spec)]
    return to_dicts(objects)


def to_dicts(objects: list[Any]) -> list[dict[str, Any]]:
    api = k.ApiClient()
    return [o if isinstance(o, dict) else api.sanitize_for_serialization(o) for o in objects]
