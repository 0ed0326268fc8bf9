"""A real kube-apiserver + etcd for the deploy tests (scripts/k8s_apiserver.py), one per
test process, and a fresh namespace per test. Test modules import the fixtures:
``from tests.k8s_fixtures import k8s_cluster_fixture, k8s_ns_fixture  # noqa: F401``.

There are no controllers and no kubelet: ``play_controllers`` does their part (PVCs created
and Bound, StatefulSet and Job status patched), as the StatefulSet, PV and Job controllers
would. Missing binaries: skip, or fail when OIM_REQUIRE_SERVICES=1 (`make test`).
"""

from __future__ import annotations

import atexit
import base64
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("oim_k8s_apiserver",
                                                  ROOT / "scripts" / "k8s_apiserver.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


k8s_apiserver = _load_script()


@dataclass
class Cluster:
    kubeconfig: str
    server: str
    token: str
    ca: str

    def kube(self, token: str | None = None):
        """A ``migrator.deploy.kube.Kube`` as admin, or as the holder of ``token``."""
        from kubernetes import client as k

        from migrator.deploy.kube import Kube

        conf = k.Configuration()
        conf.host = self.server
        conf.ssl_ca_cert = self.ca
        conf.api_key = {"authorization": f"Bearer {token or self.token}"}
        return Kube(k.ApiClient(conf))

    def kubeconfig_for(self, token: str, path: Path) -> str:
        data = json.loads(Path(self.kubeconfig).read_text())
        data["users"][0]["user"]["token"] = token
        path.write_text(json.dumps(data))
        return str(path)


_STARTED: dict[str, Cluster] = {}


@pytest.fixture(scope="session", name="k8s_cluster")
def k8s_cluster_fixture() -> Cluster:
    """The API server, started on first use and stopped when the test process ends. Test
    modules import this fixture; the module-level cache keeps it to one server per process
    however many modules import it."""
    missing = k8s_apiserver.missing_binaries()
    if missing:
        msg = (f"missing binary '{missing[0]}' for the Kubernetes API server tests (looked in "
               f"{k8s_apiserver.BIN_DIR}): run `make deps` (scripts/build-k8s.sh)")
        if os.environ.get("OIM_REQUIRE_SERVICES") == "1":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    if "cluster" not in _STARTED:
        # Not under pytest's basetemp: concurrent pytest sessions prune old basetemps, which
        # would delete the state (and the pids) of a server still running.
        root = Path(tempfile.mkdtemp(prefix="oim-k8s-"))
        atexit.register(shutil.rmtree, root, True)
        atexit.register(k8s_apiserver.stop, root)  # runs first (atexit is last-in first-out)
        state = k8s_apiserver.start(root)
        _STARTED["cluster"] = Cluster(state["kubeconfig"], state["server"], state["token"],
                                      state["ca"])
    return _STARTED["cluster"]


@pytest.fixture(name="k8s_ns")
def k8s_ns_fixture(k8s_cluster, request) -> str:
    """A namespace of its own for each test (not deleted: no namespace controller runs)."""
    from kubernetes import client as k

    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-')}-" \
           f"{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    k8s_cluster.kube().core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=name)))
    return name


play_controllers = k8s_apiserver.play_controllers  # the controllers' part, shared with the demo


def ready_endpoint_slice(kube, ns: str, service: str, ready: bool = True) -> None:
    """What the EndpointSlice controller writes for a Service with one (un)ready pod."""
    from kubernetes import client as k

    kube.discovery.create_namespaced_endpoint_slice(ns, k.V1EndpointSlice(
        address_type="IPv4",
        metadata=k.V1ObjectMeta(name=f"{service}-x", labels={
            "kubernetes.io/service-name": service}),
        endpoints=[k.V1Endpoint(addresses=["10.0.0.9"],
                                conditions=k.V1EndpointConditions(ready=ready))],
        ports=[k.DiscoveryV1EndpointPort(port=27017, name="mongodb")]))


def service_account_token(kube, ns: str, name: str, rules: list[dict]) -> str:
    """A ServiceAccount bound to a Role with exactly ``rules``, and a token for it."""
    from kubernetes import client as k

    kube.core.create_namespaced_service_account(ns, k.V1ServiceAccount(
        metadata=k.V1ObjectMeta(name=name)))
    kube.rbac.create_namespaced_role(ns, k.V1Role(metadata=k.V1ObjectMeta(name=name), rules=[
        k.V1PolicyRule(**r) for r in rules]))
    kube.rbac.create_namespaced_role_binding(ns, k.V1RoleBinding(
        metadata=k.V1ObjectMeta(name=name),
        role_ref=k.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[k.RbacV1Subject(kind="ServiceAccount", name=name, namespace=ns)]))
    answer = kube.core.create_namespaced_service_account_token(
        name, ns, k.AuthenticationV1TokenRequest(spec=k.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600)))
    return answer.status.token


def secret_values(kube, ns: str) -> list[str]:
    out = []
    for s in kube.core.list_namespaced_secret(ns).items:
        out += [base64.b64decode(v).decode() for v in (s.data or {}).values()]
    return out
