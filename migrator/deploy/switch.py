"""The switch of a cutover: point OpenIM's in-cluster configuration at the in-cluster
Services, restart OpenIM, and undo exactly that.

OpenIM v3.8 reads one YAML file per concern (mongodb.yml, redis.yml, minio.yml, kafka.yml,
discovery.yml, share.yml, ...) from a ConfigMap mounted into every pod (the raw manifests
call it ``openim-config``), and takes credentials from Secrets through ``IMENV_*``
variables (``openim-mongo-secret``, ``openim-redis-secret``, ``openim-minio-secret``). It reads
both only at start, so a rollout restart of its Deployments makes a change effective.

Only the configured keys change. A file is edited in its text where the key's value stands,
so comments and layout stay; the edited text is parsed again and must equal the original
with exactly those keys set, or nothing is written.

Before an object is changed, a copy is kept in the cluster (``NAME-openim-migrate-ID``,
the same kind in the same namespace, so it needs no wider rights than the original). Its
digest is an HMAC-SHA256 keyed by a random key stored on the copy: the journal holds the
digest, which no password can be guessed from without the cluster. The changed object is
annotated with the copy's name. Rollback writes the copy's data back byte for byte and
checks the digest before and after.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client as k

from migrator.deploy.kube import Kube
from migrator.deploy.waiting import Check, Condition
from migrator.errors import DeployError

PREFIX = "openim-migrate.io"
BACKUP = f"{PREFIX}/backup"  # on a changed object: the name of its copy
CUTOVER = f"{PREFIX}/cutover"  # on a changed object and its copy: the cutover id
DIGEST = f"{PREFIX}/previous-digest"  # on a changed object: the copy's digest
BACKUP_OF = f"{PREFIX}/backup-of"  # on a copy: "ConfigMap ns/name"
DIGEST_KEY = f"{PREFIX}/digest-key"  # on a copy: the HMAC key of its digest
OURS = (BACKUP, CUTOVER, DIGEST)
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class ConfigMapChange:
    """Keys to set in the YAML files of one ConfigMap: ``{file: {dotted.key: value}}``."""

    name: str
    files: dict[str, dict[str, Any]] = field(hash=False)

    @property
    def keys(self) -> list[str]:
        return [f"{file}:{path}" for file, values in self.files.items() for path in values]


@dataclass(frozen=True)
class SecretChange:
    """Keys to set in one Secret, each from a ``${VAR}``/``${k8s:…}`` reference."""

    name: str
    keys: dict[str, str] = field(hash=False)


# ------------------------------------------------------------------------ YAML in place
def _content_end(node: yaml.Node) -> int:
    """Where a node's own text ends: a block collection's end mark runs on over trailing
    comments and blank lines, which belong to whatever follows."""
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _content_end(node.value[-1])
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return _content_end(node.value[-1][1])
    return int(node.end_mark.index)


def _find(root: yaml.Node, path: str) -> tuple[yaml.Node, yaml.Node]:
    node, key_node = root, None
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, yaml.MappingNode):
            where = ".".join(parts[:depth]) or "the file"
            raise ValueError(f"{where} is not a mapping, so it has no key {part!r}")
        for k_node, v_node in node.value:
            if k_node.value == part:
                key_node, node = k_node, v_node
                break
        else:
            raise ValueError(f"has no key {'.'.join(parts[:depth + 1])!r}")
    assert key_node is not None
    return key_node, node


def set_yaml_keys(text: str, values: dict[str, Any]) -> str:
    """``text`` with each dotted key's value replaced (as JSON, which YAML reads), every
    other byte kept. Raises ValueError naming the key when a key is missing or the edit
    would change anything else."""
    paths = sorted(values)
    for a, b in zip(paths, paths[1:], strict=False):
        if b.startswith(a + "."):
            raise ValueError(f"sets both {a!r} and {b!r} inside it")
    try:
        root = yaml.compose(text)
        before = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"is not valid YAML ({' '.join(str(exc).split())})") from None
    if root is None:
        raise ValueError(f"is empty, so it has no key {paths[0]!r}")
    edits = []
    for path in paths:
        key_node, node = _find(root, path)
        rendered = json.dumps(values[path], ensure_ascii=False)
        block = (isinstance(node, yaml.CollectionNode) and not node.flow_style) or (
            isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"))
        if block:
            start, end = int(key_node.end_mark.index), _content_end(node)
            while end > start and text[end - 1] == "\n":
                end -= 1
            edits.append((start, end, ": " + rendered))
        else:
            start, end = int(node.start_mark.index), int(node.end_mark.index)
            pad = " " if start == end and text[start - 1:start] == ":" else ""
            edits.append((start, end, pad + rendered))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    expected = copy.deepcopy(before)
    for path in paths:
        node = expected
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = values[path]
    if yaml.safe_load(out) != expected:
        raise ValueError("cannot be edited in place without changing other keys")
    return out


def missing_yaml_keys(text: str, paths: list[str]) -> list[str]:
    """The problem with each of ``paths`` in ``text`` (one line each); empty when all exist."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        return [f"is not valid YAML ({' '.join(str(exc).split())})"]
    problems = []
    for path in paths:
        try:
            if root is None:
                raise ValueError(f"is empty, so it has no key {path!r}")
            _find(root, path)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


# ------------------------------------------------------------------------ digests
def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {"data": obj.get("data") or {}, "binaryData": obj.get("binaryData") or {}}


def digest(key: bytes, obj: dict[str, Any]) -> str:
    """HMAC-SHA256 of an object's data; the key lives on the backup copy, not in the
    journal, so a short password cannot be found by hashing guesses."""
    text = json.dumps(_content(obj), sort_keys=True, ensure_ascii=False).encode()
    return "hmac-sha256:" + hmac.new(key, text, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Backup:
    name: str
    digest: str


# ------------------------------------------------------------------------ the switch
class Switch:
    """Reads, patches, backs up and restores OpenIM's ConfigMaps, Secrets and Deployments in
    one namespace; every API failure is one line naming the object (kube.Kube.call)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.ns = namespace

    def what(self, kind: str, name: str) -> str:
        return f"{kind} {self.ns}/{name}"

    def _api(self, kind: str) -> tuple[Any, str]:
        if kind == "Deployment":
            return self.kube.apps, "namespaced_deployment"
        return self.kube.core, {"ConfigMap": "namespaced_config_map",
                                "Secret": "namespaced_secret"}[kind]

    def read(self, kind: str, name: str) -> dict[str, Any] | None:
        api, suffix = self._api(kind)
        obj = self.kube.call(self.what(kind, name), getattr(api, f"read_{suffix}"), name,
                             self.ns)
        if obj is None:
            return None
        out: dict[str, Any] = self.kube.client.sanitize_for_serialization(obj)
        out.setdefault("apiVersion", "apps/v1" if kind == "Deployment" else "v1")
        out.setdefault("kind", kind)
        out["metadata"].pop("managedFields", None)
        return out

    def _replace(self, kind: str, body: dict[str, Any]) -> None:
        """PUT with the resourceVersion read: a concurrent change is a conflict, not lost."""
        api, suffix = self._api(kind)
        name = body["metadata"]["name"]
        if self.kube.call(self.what(kind, name), getattr(api, f"replace_{suffix}"), name,
                          self.ns, body) is None:
            raise DeployError(f"{self.what(kind, name)}: deleted while being changed")

    def _create_or_replace(self, kind: str, body: dict[str, Any]) -> None:
        """A backup left by a crash before the journal recorded it is replaced: the original
        was not changed yet (changes come only after the record)."""
        api, suffix = self._api(kind)
        name = body["metadata"]["name"]
        current = self.read(kind, name)
        if current is None:
            if self.kube.call(self.what(kind, name), getattr(api, f"create_{suffix}"), self.ns,
                              body) is None:
                raise DeployError(f"{self.what(kind, name)}: namespace {self.ns} not found")
            return
        body["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
        self._replace(kind, body)

    # -- checks ------------------------------------------------------------------------
    def problems(self, configmaps: list[ConfigMapChange], secrets_: list[SecretChange],
                 deployments: list[str], field_of: Callable[[str, int], str]) -> list[
                     tuple[str, str]]:
        """``(plan field, problem)`` for each object that is missing or lacks a file or key
        the cutover would set; ``field_of(section, index)`` names the plan field."""
        out: list[tuple[str, str]] = []
        for i, cm in enumerate(configmaps):
            obj = self.read("ConfigMap", cm.name)
            where = field_of("configmaps", i)
            if obj is None:
                out.append((f"{where}.name", f"{self.what('ConfigMap', cm.name)} does not "
                            "exist"))
                continue
            data = obj.get("data") or {}
            for file, values in cm.files.items():
                if file not in data:
                    keys = ", ".join(sorted(data)) or "(none)"
                    out.append((f"{where}.files.{file}", f"{self.what('ConfigMap', cm.name)} "
                                f"has no file {file!r} (it has: {keys})"))
                    continue
                for problem in missing_yaml_keys(data[file], list(values)):
                    out.append((f"{where}.files.{file}",
                                f"{self.what('ConfigMap', cm.name)}: {file} {problem}"))
        for i, sec in enumerate(secrets_):
            if self.read("Secret", sec.name) is None:
                out.append((f"{field_of('secrets', i)}.name",
                            f"{self.what('Secret', sec.name)} does not exist"))
        for i, name in enumerate(deployments):
            if self.read("Deployment", name) is None:
                out.append((field_of("deployments", i),
                            f"{self.what('Deployment', name)} does not exist"))
        return out

    def missing_permissions(self, *, configmaps: bool, secrets_: bool) -> list[str]:
        """What the identity in use may not do for a switch and its rollback."""
        needs = [("apps", "deployments", verb) for verb in ("get", "patch")]
        for wanted, plural in ((configmaps, "configmaps"), (secrets_, "secrets")):
            if wanted:
                needs += [("", plural, verb) for verb in ("get", "create", "update")]
        missing = []
        for group, plural, verb in needs:
            review = k.V1SelfSubjectAccessReview(
                api_version="authorization.k8s.io/v1", kind="SelfSubjectAccessReview",
                spec=k.V1SelfSubjectAccessReviewSpec(resource_attributes=k.V1ResourceAttributes(
                    namespace=self.ns, verb=verb, group=group, resource=plural)))
            answer = self.kube.call("SelfSubjectAccessReview",
                                    self.kube.authz.create_self_subject_access_review, review)
            if answer is None or not answer.status.allowed:
                missing.append(f"{verb} {plural}{'.' + group if group else ''}")
        return missing

    # -- backup, patch, restore ----------------------------------------------------------
    def backup_name(self, name: str, cutover_id: str) -> str:
        return f"{name}-openim-migrate-{cutover_id}"

    def save(self, kind: str, name: str, cutover_id: str) -> Backup:
        """Keep a copy of the object as it is now; returns its name and digest."""
        current = self.read(kind, name)
        if current is None:
            raise DeployError(f"{self.what(kind, name)}: not found, nothing to switch",
                              hint="create OpenIM's objects in the cluster first")
        key = secrets.token_bytes(32)
        copy_name = self.backup_name(name, cutover_id)
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": kind,
            "metadata": {"name": copy_name, "namespace": self.ns,
                         "labels": {"app.kubernetes.io/managed-by": "openim-migrate",
                                    CUTOVER: cutover_id},
                         "annotations": {BACKUP_OF: self.what(kind, name),
                                         DIGEST_KEY: key.hex(), CUTOVER: cutover_id}},
            **{k_: v for k_, v in _content(current).items() if v}}
        if kind == "Secret":
            body["type"] = current.get("type") or "Opaque"
        self._create_or_replace(kind, body)
        return Backup(copy_name, digest(key, current))

    def _annotated(self, obj: dict[str, Any], backup: Backup, cutover_id: str) -> None:
        annotations = obj["metadata"].get("annotations") or {}
        annotations.update({BACKUP: backup.name, DIGEST: backup.digest, CUTOVER: cutover_id})
        obj["metadata"]["annotations"] = annotations

    def patch_configmap(self, change: ConfigMapChange, backup: Backup, cutover_id: str) -> None:
        obj = self.read("ConfigMap", change.name)
        if obj is None:
            raise DeployError(f"{self.what('ConfigMap', change.name)}: not found")
        data = dict(obj.get("data") or {})
        for file, values in change.files.items():
            if file not in data:
                raise DeployError(f"{self.what('ConfigMap', change.name)}: no file {file!r}")
            try:
                data[file] = set_yaml_keys(data[file], values)
            except ValueError as exc:
                raise DeployError(f"{self.what('ConfigMap', change.name)}: {file} "
                                  f"{exc}") from None
        obj["data"] = data
        self._annotated(obj, backup, cutover_id)
        self._replace("ConfigMap", obj)

    def patch_secret(self, change: SecretChange, values: dict[str, str], backup: Backup,
                     cutover_id: str) -> None:
        """``values`` are the resolved references: in memory only, never logged."""
        obj = self.read("Secret", change.name)
        if obj is None:
            raise DeployError(f"{self.what('Secret', change.name)}: not found")
        data = dict(obj.get("data") or {})
        for key in change.keys:
            data[key] = base64.b64encode(values[key].encode()).decode()
        obj["data"] = data
        obj.pop("stringData", None)
        self._annotated(obj, backup, cutover_id)
        self._replace("Secret", obj)

    def restore(self, kind: str, name: str, backup: Backup) -> None:
        """Write the copy's data back, byte for byte, and drop our annotations."""
        saved = self.read(kind, backup.name)
        if saved is None:
            raise DeployError(f"{self.what(kind, name)}: its backup "
                              f"{self.what(kind, backup.name)} is gone; cannot restore",
                              hint="restore the object by hand from your own records")
        key = bytes.fromhex((saved["metadata"].get("annotations") or {}).get(DIGEST_KEY, ""))
        if digest(key, saved) != backup.digest:
            raise DeployError(f"{self.what(kind, backup.name)}: changed since the cutover "
                              "saved it (digest differs); not restoring from it",
                              hint="restore the object by hand from your own records")
        current = self.read(kind, name)
        if current is None:
            raise DeployError(f"{self.what(kind, name)}: deleted; cannot restore",
                              hint=f"recreate it from {self.what(kind, backup.name)}")
        for part, value in _content(saved).items():
            if value:
                current[part] = value
            else:
                current.pop(part, None)
        annotations = current["metadata"].get("annotations") or {}
        current["metadata"]["annotations"] = {a: v for a, v in annotations.items()
                                              if a not in OURS}
        self._replace(kind, current)
        after = self.read(kind, name)
        if after is None or digest(key, after) != backup.digest:
            raise DeployError(f"{self.what(kind, name)}: restored, but its data does not "
                              "match the backup; something else changed it",
                              hint="inspect it, then run `cutover --rollback` again")

    # -- restart and rollout -------------------------------------------------------------
    def restart(self, deployments: list[str], stamp: str) -> None:
        """What `kubectl rollout restart` does: a new pod-template annotation."""
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        for name in deployments:
            if self.kube.call(self.what("Deployment", name),
                              self.kube.apps.patch_namespaced_deployment, name, self.ns, body,
                              _content_type=MERGE) is None:
                raise DeployError(f"{self.what('Deployment', name)}: not found")

    def rolled_out(self, name: str) -> Check:
        """`kubectl rollout status` for one Deployment: None once done."""
        what = self.what("Deployment", name)

        def check() -> str | None:
            dep = self.kube.call(what, self.kube.apps.read_namespaced_deployment, name, self.ns)
            if dep is None:
                return "not found"
            status = dep.status
            observed = status.observed_generation if status else None
            if observed is None or observed < (dep.metadata.generation or 0):
                return (f"status.observedGeneration {observed} < generation "
                        f"{dep.metadata.generation} (no Deployment controller has seen the "
                        "restart yet)")
            for cond in status.conditions or []:
                if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                    raise DeployError(f"{what}: exceeded its progress deadline "
                                      f"({cond.message or 'no message'})",
                                      hint=f"kubectl -n {self.ns} describe deployment {name}")
            want = dep.spec.replicas if dep.spec.replicas is not None else 1
            updated = status.updated_replicas or 0
            if updated < want:
                return f"status.updatedReplicas {updated} of {want}"
            if (status.replicas or 0) > updated:
                return f"{(status.replicas or 0) - updated} old replica(s) still terminating"
            available = status.available_replicas or 0
            if available < updated:
                return f"status.availableReplicas {available} of {updated}"
            return None
        return check

    def rollout(self, deployments: list[str]) -> list[Condition]:
        return [Condition(self.what("Deployment", name), self.rolled_out(name))
                for name in deployments]
