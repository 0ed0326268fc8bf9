"""Bucket settings: policy, versioning, object lock, encryption, tags and lifecycle rules.

They belong to a bucket, not to any object, so verify compares them through
``definitions()``. Each is read live, as comparable data: bucket names as the *source*
names them, key prefixes relative to the endpoint's own key prefix, lists sorted. The same
translation (source bucket and prefix to target bucket and prefix) is applied when a
setting is copied, so what is written is what verify expects to find.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from minio.commonconfig import Tags
from minio.error import S3Error
from minio.objectlockconfig import ObjectLockConfig
from minio.xml import marshal, unmarshal

from migrator.errors import MigrateError, StoreError

if TYPE_CHECKING:
    from migrator.stores.objects.store import ObjectStore

# Copy order: versioning before object lock (which needs it); lifecycle last, after the
# data (see ObjectStore.finalize_target), so no rule acts on a half-copied bucket.
SETTINGS = ("versioning", "object_lock", "encryption", "policy", "tags", "lifecycle")
AFTER_DATA = ("lifecycle",)

_GET = {"policy": "get_bucket_policy", "versioning": "get_bucket_versioning",
        "object_lock": "get_object_lock_config", "encryption": "get_bucket_encryption",
        "tags": "get_bucket_tags", "lifecycle": "get_bucket_lifecycle"}
_SET = {"policy": "set_bucket_policy", "versioning": "set_bucket_versioning",
        "object_lock": "set_object_lock_config", "encryption": "set_bucket_encryption",
        "tags": "set_bucket_tags", "lifecycle": "set_bucket_lifecycle"}
_DELETE = {"policy": "delete_bucket_policy", "encryption": "delete_bucket_encryption",
           "tags": "delete_bucket_tags", "lifecycle": "delete_bucket_lifecycle"}
READ_ACTIONS = {"policy": "s3:GetBucketPolicy", "versioning": "s3:GetBucketVersioning",
                "object_lock": "s3:GetBucketObjectLockConfiguration",
                "encryption": "s3:GetEncryptionConfiguration", "tags": "s3:GetBucketTagging",
                "lifecycle": "s3:GetLifecycleConfiguration"}
# "Not set" answers; NotImplemented: a service without the feature has none of it.
_ABSENT = {"NoSuchBucketPolicy", "ObjectLockConfigurationNotFoundError", "NoSuchTagSet",
           "NoSuchLifecycleConfiguration", "ServerSideEncryptionConfigurationNotFoundError",
           "NotImplemented"}
_POLICY_LISTS = ("Action", "NotAction", "Resource", "NotResource", "AWS")


def rekey(key: str, from_prefix: str, to_prefix: str) -> str:
    """A key (or key pattern) under one endpoint's prefix, as the other endpoint holds it."""
    return to_prefix + key[len(from_prefix):] if key.startswith(from_prefix) else key


def normalise_policy(text: str, bucket_from: str, bucket_to: str, prefix_from: str = "",
                     prefix_to: str = "") -> Any:
    """A policy as comparable data: lists sorted, single strings listed, bucket renamed,
    object keys in resources and ``s3:prefix`` conditions moved between key prefixes."""
    arn = f"arn:aws:s3:::{bucket_from}"

    def resource(value: str) -> str:
        if value == arn:
            return f"arn:aws:s3:::{bucket_to}"
        if value.startswith(arn + "/"):
            return f"arn:aws:s3:::{bucket_to}/" + rekey(value[len(arn) + 1:], prefix_from,
                                                         prefix_to)
        return value

    def walk(value: Any, field: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk([v] if k in _POLICY_LISTS and isinstance(v, str) else v, k)
                    for k, v in value.items() if not (k == "Sid" and v == "")}
        if isinstance(value, list):
            return sorted((walk(v, field) for v in value),
                          key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(value, str) and field == "s3:prefix":
            return rekey(value, prefix_from, prefix_to)
        if isinstance(value, str):
            return resource(value)
        return value

    data = json.loads(text)
    for statement in data.get("Statement") or []:
        if statement.get("Principal") == "*":
            statement["Principal"] = {"AWS": ["*"]}
    return walk(data)


def _tree(config: Any, prefix_from: str, prefix_to: str) -> ET.Element:
    """A minio config object as XML, with every ``Prefix`` element moved between prefixes."""
    root = ET.fromstring(marshal(config))
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "Prefix" and element.text is not None:
            element.text = rekey(element.text, prefix_from, prefix_to)
    return root


def _element_data(element: ET.Element) -> Any:
    children = list(element)
    if not children:
        return (element.text or "").strip()
    grouped: dict[str, list[Any]] = {}
    for child in children:
        grouped.setdefault(child.tag.rpartition("}")[2], []).append(_element_data(child))
    return {tag: values[0] if len(values) == 1 else
            sorted(values, key=lambda v: json.dumps(v, sort_keys=True))
            for tag, values in grouped.items()}


def as_data(name: str, raw: Any, bucket_here: str, bucket_source: str, prefix: str) -> Any:
    """One setting as comparable JSON-like data, named the way the source names things."""
    if name == "versioning":  # never None: a bucket that was never versioned says "Off"
        data = _element_data(_tree(raw, prefix, "")) if raw is not None else {}
        return {"Status": "Off", **(data or {})}
    if raw is None or (name == "tags" and not raw):
        return None
    if name == "policy":
        return normalise_policy(raw, bucket_here, bucket_source, prefix, "")
    if name == "tags":
        return dict(sorted(raw.items()))
    return _element_data(_tree(raw, prefix, ""))


def translate(name: str, raw: Any, bucket_from: str, bucket_to: str, prefix_from: str,
              prefix_to: str) -> Any:
    """A setting read on one side, rewritten for the other side's bucket and key prefix."""
    if raw is None:
        return None
    if name == "policy":
        return json.dumps(normalise_policy(raw, bucket_from, bucket_to, prefix_from, prefix_to))
    if name == "tags":
        tags = Tags.new_bucket_tags()
        tags.update(raw)
        return tags
    return unmarshal(type(raw), ET.tostring(_tree(raw, prefix_from, prefix_to),
                                            encoding="unicode"))


def read(store: ObjectStore, bucket: str, name: str) -> Any:
    """One setting of ``bucket`` (named as on this side) as the client returns it; None
    when it is not set."""
    try:
        with store._errors(f"read the {name.replace('_', ' ')} of bucket {bucket}"):
            return getattr(store.client, _GET[name])(bucket)
    except StoreError as exc:
        if isinstance(exc.__cause__, S3Error) and exc.__cause__.code in _ABSENT:
            return None
        raise
    except MigrateError as exc:
        if "AccessDenied" in str(exc):
            exc.hint = f"grant {READ_ACTIONS[name]} to the user"
        raise


def write(store: ObjectStore, bucket: str, name: str, raw: Any, current: Any) -> None:
    """Make ``bucket``'s setting ``raw`` (already translated for this side). ``current``
    is what the bucket has now, to refuse what S3 cannot undo."""
    where = f"{store.endpoint.label}: bucket {bucket}: {name.replace('_', ' ')}"
    if name == "versioning" and getattr(raw, "status", None) is None:  # None: never versioned
        if getattr(current, "status", None) is not None:
            raise StoreError(f"{where}: the source bucket is not versioned but this one is, "
                             "and versioning cannot be switched off again",
                             hint="copy into a new bucket (bucket_map)")
        return
    if name == "object_lock" and (raw is None) != (current is None):
        has = "has object lock and this one has not" if current is None else \
            "has no object lock and this one has"
        raise StoreError(f"{where}: the source bucket {has}; object lock is fixed when a "
                         "bucket is created", hint="let the run create the bucket: copy "
                         "into a new bucket (bucket_map)")
    with store._errors(f"set the {name.replace('_', ' ')} of bucket {bucket}"):
        if name == "object_lock":
            store.client.set_object_lock_config(bucket, raw if raw.mode else
                                                ObjectLockConfig(None, None, None))
        elif raw is not None:
            getattr(store.client, _SET[name])(bucket, raw)
        elif current is not None:
            getattr(store.client, _DELETE[name])(bucket)


def copy(target: ObjectStore, source: ObjectStore, bucket: str, names: Iterable[str]) -> None:
    """Give the target's bucket the source bucket's settings ``names``, where they differ."""
    here, there = target.here_bucket(bucket), source.here_bucket(bucket)
    for name in names:
        raw = read(source, there, name)
        current = read(target, here, name)
        want = as_data(name, raw, there, bucket, source.prefix)
        if as_data(name, current, here, bucket, target.prefix) == want:
            continue
        write(target, here, name, translate(name, raw, there, here, source.prefix,
                                            target.prefix), current)
