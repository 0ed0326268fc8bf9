"""Store kinds by name, imported only when used, so a missing driver hurts only its store."""

from __future__ import annotations

import importlib

from migrator.config import Endpoint
from migrator.errors import PlanError
from migrator.stores.base import Selection, Store, StoreOptions

# kind -> (module, class, pip extra hint)
STORES: dict[str, tuple[str, str]] = {
    "redis": ("migrator.stores.redis.store", "RedisStore"),
    "mysql": ("migrator.stores.mysql.store", "MySQLStore"),
    "mongo": ("migrator.stores.mongo.store", "MongoStore"),
    "objects": ("migrator.stores.objects", "ObjectStore"),
}


def store_class(kind: str) -> type[Store]:
    try:
        module_name, class_name = STORES[kind]
    except KeyError:
        raise PlanError(f"store '{kind}'", "unknown store kind",
                        hint=f"one of: {', '.join(STORES)}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PlanError(f"store '{kind}'", f"its driver is not installed ({exc.name})",
                        hint="pip install openim-migrate") from exc
    return getattr(module, class_name)


def make_store(endpoint: Endpoint, selection: Selection | None = None,
               options: StoreOptions | None = None) -> Store:
    return store_class(endpoint.kind)(endpoint, selection, options)
