"""The switch of a cutover against a real kube-apiserver (tests/k8s_fixtures.py): exactly
the configured keys change, a rollback restores every byte, and the rollout wait passes
only when the Deployments report it (the test plays the Deployment controller)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import sys
import time
from pathlib import Path

import pytest
import yaml

from migrator.deploy.switch import (
    BACKUP,
    ConfigMapChange,
    SecretChange,
    Switch,
    set_yaml_keys,
)
from migrator.deploy.waiting import wait_for
from migrator.errors import DeployError
from tests.k8s_fixtures import k8s_cluster_fixture, k8s_ns_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def load_demo_cutover():
    """scripts/demo_cutover.py: OpenIM's objects and the Deployment controller stand-in."""
    if "oim_demo_cutover" not in sys.modules:
        spec = importlib.util.spec_from_file_location("oim_demo_cutover",
                                                      ROOT / "scripts" / "demo_cutover.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["oim_demo_cutover"]


demo = load_demo_cutover()

CHANGES = {"mongodb.yml": {"address": ["im-mongodb.openim.svc:27017"]},
           "redis.yml": {"address": ["im-redis-master.openim.svc:6379"], "clusterMode": True},
           "discovery.yml": {"kubernetes.namespace": "openim"}}


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b), "the edit added or removed lines"
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_switch_sets_exactly_the_configured_keys_and_rollback_restores_every_byte(
        k8s_cluster, k8s_ns):
    kube = k8s_cluster.kube()
    demo.create_openim_objects(kube, k8s_ns)
    switch = Switch(kube, k8s_ns)
    cm_before = switch.read("ConfigMap", "openim-config")
    secret_before = switch.read("Secret", "openim-redis-secret")

    cm = ConfigMapChange("openim-config", CHANGES)
    secret = SecretChange("openim-redis-secret", {"redis-password": "${NEW_REDIS_PASSWORD}"})
    cm_backup = switch.save("ConfigMap", cm.name, "t1")
    secret_backup = switch.save("Secret", secret.name, "t1")
    switch.patch_configmap(cm, cm_backup, "t1")
    switch.patch_secret(secret, {"redis-password": "n3w-Pass"}, secret_backup, "t1")

    data_before, data = cm_before["data"], switch.read("ConfigMap", cm.name)["data"]
    assert set(data) == set(data_before)
    for file in data:  # untouched files: byte for byte
        if file not in CHANGES:
            assert data[file] == data_before[file], file
    # only the lines holding the keys changed; comments and layout stay
    assert changed_lines(data_before["mongodb.yml"], data["mongodb.yml"]) == [
        ("address: [ localhost:37017 ]", 'address: ["im-mongodb.openim.svc:27017"]')]
    assert changed_lines(data_before["redis.yml"], data["redis.yml"]) == [
        ("address: [ localhost:16379 ]", 'address: ["im-redis-master.openim.svc:6379"]'),
        ("clusterMode: false", "clusterMode: true")]
    assert changed_lines(data_before["discovery.yml"], data["discovery.yml"]) == [
        ("  namespace: default", '  namespace: "openim"')]
    for file, values in CHANGES.items():  # as data: exactly those keys differ
        old, new = yaml.safe_load(data_before[file]), yaml.safe_load(data[file])
        for path, value in values.items():
            *parents, last = path.split(".")
            node = old
            for part in parents:
                node = node[part]
            node[last] = value
        assert new == old, file

    secret_after = switch.read("Secret", secret.name)
    assert base64.b64decode(secret_after["data"]["redis-password"]) == b"n3w-Pass"
    assert set(secret_after["data"]) == set(secret_before["data"])
    # the patched objects name their backup; the digests reveal no value
    assert switch.read("ConfigMap", cm.name)["metadata"]["annotations"][BACKUP] == \
        cm_backup.name
    assert secret_after["metadata"]["annotations"][BACKUP] == secret_backup.name
    for value in (b"old-standalone-password", b"n3w-Pass"):
        assert hashlib.sha256(value).hexdigest() not in secret_backup.digest

    switch.restore("Secret", secret.name, secret_backup)
    switch.restore("ConfigMap", cm.name, cm_backup)
    assert switch.read("ConfigMap", cm.name)["data"] == data_before  # byte for byte
    assert switch.read("Secret", secret.name)["data"] == secret_before["data"]
    for kind, name in (("ConfigMap", cm.name), ("Secret", secret.name)):
        annotations = switch.read(kind, name)["metadata"].get("annotations") or {}
        assert not [a for a in annotations if a.startswith("openim-migrate.io/")]

    # a backup changed behind our back is refused, not restored from
    kube.core.patch_namespaced_config_map(cm_backup.name, k8s_ns,
                                          {"data": {"redis.yml": "address: [ evil:1 ]\n"}})
    with pytest.raises(DeployError, match="changed since the cutover saved it"):
        switch.restore("ConfigMap", cm.name, cm_backup)


def test_set_yaml_keys_refuses_a_missing_key_and_keeps_block_values_in_place():
    text = "a:\n  - x\n  - y\n# kept\nb: 1\n"
    assert set_yaml_keys(text, {"a": ["z"]}) == 'a: ["z"]\n# kept\nb: 1\n'
    with pytest.raises(ValueError, match="has no key 'c'"):
        set_yaml_keys(text, {"c": 1})


def test_rollout_wait_passes_once_status_is_patched_and_times_out_naming_the_deployment(
        k8s_cluster, k8s_ns):
    kube = k8s_cluster.kube()
    demo.create_openim_objects(kube, k8s_ns)
    switch = Switch(kube, k8s_ns)
    switch.restart(list(demo.DEPLOYMENTS), "2026-01-01T00:00:00Z")
    with pytest.raises(DeployError) as err:
        wait_for(switch.rollout(list(demo.DEPLOYMENTS)), 1.0, poll=0.2)
    assert f"Deployment {k8s_ns}/openim-api: status.observedGeneration" in str(err.value)
    assert f"Deployment {k8s_ns}/openim-rpc-user" in str(err.value)

    with demo.DeploymentController(kube, k8s_ns) as controller:
        started = time.monotonic()
        wait_for(switch.rollout(list(demo.DEPLOYMENTS)), 20.0, poll=0.2)
    assert controller.rollouts == 2 and time.monotonic() - started < 20
    template = kube.apps.read_namespaced_deployment("openim-api", k8s_ns).spec.template
    assert template.metadata.annotations["kubectl.kubernetes.io/restartedAt"] == \
        "2026-01-01T00:00:00Z"


def test_the_documented_cutover_section_loads_and_a_secret_in_a_configmap_is_refused():
    import re

    from migrator.engine.cutover import settings_of
    from migrator.errors import PlanError
    from migrator.plan import plan_from_dict

    text = (ROOT / "docs" / "cutover.md").read_text()
    section = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", text, re.S)[0])
    raw = {"version": 1, "stores": {"redis": {"source": "redis://h:6379/0",
                                              "target": "redis://t:6379/0"}}, **section}
    settings = settings_of(plan_from_dict(raw, check_integrity=False))
    assert settings.freeze_command[0] == "ssh" and settings.guards == {"redis": True}
    raw["cutover"]["configmaps"][0]["files"]["redis.yml"]["password"] = "x"
    with pytest.raises(PlanError, match=r"^cutover.configmaps\[0\].files.redis.yml.password: "
                       "looks like a secret"):
        plan_from_dict(raw, check_integrity=False)
