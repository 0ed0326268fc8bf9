"""Opens the store pairs a plan names, once, and closes them all at the end."""

from __future__ import annotations

import threading
from collections.abc import Callable

from migrator.config import Endpoint
from migrator.engine.journal import Journal
from migrator.plan import Options, StorePair
from migrator.stores import registry
from migrator.stores.base import Role, Selection, Store, StoreOptions

StoreFactory = Callable[[Endpoint, Selection, StoreOptions], Store]


def make_store(endpoint: Endpoint, selection: Selection | None = None,
               options: StoreOptions | None = None) -> Store:
    """A live store by kind, or, for an ``archive+…`` URL, a set of an archive read as
    that kind (restores, drills, verify against a backup)."""
    if endpoint.url.startswith("archive+"):
        from migrator.archive.endpoint import archive_store

        return archive_store(endpoint, selection, options)
    return registry.make_store(endpoint, selection, options)


def effective_selection(kind: str, selection: Selection) -> Selection:
    """The plan's selection with its preset's patterns folded in."""
    if not selection.preset:
        return selection
    from migrator import presets

    base = presets.get(kind, selection.preset)
    return Selection(include=tuple(base.include) + tuple(selection.include),
                     exclude=tuple(base.exclude) + tuple(selection.exclude),
                     preset=selection.preset, options=dict(base.options))


class Session:
    """Stores are thread-safe, so one source and one target instance serve every unit."""

    def __init__(self, stores: dict[str, StorePair], options: Options,
                 journal: Journal | None = None, *, factory: StoreFactory | None = None
                 ) -> None:
        self._pairs = stores
        self._make = factory or make_store
        self._options = options
        self._journal = journal
        self._open: dict[str, tuple[Store, Store]] = {}
        self._lock = threading.Lock()

    def pair(self, kind: str) -> tuple[Store, Store]:
        with self._lock:
            if kind not in self._open:
                spec = self._pairs[kind]
                selection = effective_selection(kind, spec.selection)
                store_options = self._options.store_options()
                source = self._make(spec.source, selection, store_options)
                target = self._make(spec.target, selection, store_options)
                if self._journal is not None:
                    source.use_cache(self._journal.cache(f"{kind}:source"))
                    target.use_cache(self._journal.cache(f"{kind}:target"))
                source.open()
                try:
                    target.open()
                except BaseException:
                    source.close()
                    raise
                self._open[kind] = (source, target)
            return self._open[kind]

    def check_access(self, kind: str) -> None:
        source, target = self.pair(kind)
        source.check_access(Role.SOURCE)
        target.check_access(Role.TARGET)

    def close(self) -> None:
        with self._lock:
            for source, target in self._open.values():
                for store in (source, target):
                    try:
                        store.close()
                    except Exception:  # noqa: BLE001 - closing must not mask the real error
                        pass
            self._open.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
