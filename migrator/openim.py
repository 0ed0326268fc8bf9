"""Checks that know OpenIM's layout and span two stores.

The first one: every object key recorded in MongoDB's ``s3`` collection (OpenIM's index of
uploaded files; message content links to them) exists in the target bucket. A copy can
match store by store and still lose files if the bucket and the collection disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from migrator.engine.session import Session
from migrator.plan import Plan

SAMPLE = 20
DEFAULT_BUCKET = "openim"  # config/minio.yml `bucket`


def object_references(plan: Plan, session: Session, restored: bool = False) -> dict[str, Any]:
    """Keys named by the ``s3`` collection(s) that the objects target lacks. After a
    restore (``restored``) the collection is read from the restored MongoDB, since the
    source is an archive."""
    from migrator.stores.objects import missing_objects

    mongo_source, mongo_target = session.pair("mongo")
    if restored:
        mongo_source = mongo_target
    _, objects_target = session.pair("objects")
    side = plan.stores["objects"].target if restored else plan.stores["objects"].source
    bucket = side.connection().path.split("/", 1)[0] or DEFAULT_BUCKET
    units = [u for u in plan.units_of("mongo") if u.spec.get("collection") == "s3"]
    checked = 0

    def keys() -> Iterator[str]:
        nonlocal checked
        for unit in units:
            for key in mongo_source.field_values(unit, "key"):  # type: ignore[attr-defined]
                checked += 1
                yield f"{bucket}/{key}"

    missing = missing_objects(objects_target, keys())  # type: ignore[arg-type]
    return {"checked": checked, "n_missing": len(missing), "missing": missing[:SAMPLE],
            "about": "object keys in MongoDB's s3 collection that the target bucket lacks"}


def cross_checks(plan: Plan, *, restored: bool = False
                 ) -> dict[str, Callable[[Session], dict[str, Any]]]:
    """The cross-store checks that apply to this plan, ready to run on a session."""
    checks: dict[str, Callable[[Session], dict[str, Any]]] = {}
    if {"mongo", "objects"} <= set(plan.stores) and any(
            u.spec.get("collection") == "s3" for u in plan.units_of("mongo")):
        checks["openim-object-references"] = partial(object_references, plan,
                                                     restored=restored)
    return checks
