"""Opens the store pairs a plan names, once, and closes them all at the end."""

from __future__ import annotations

import threading

from migrator.engine.journal import Journal
from migrator.plan import Options, StorePair
from migrator.stores.base import Role, Selection, Store
from migrator.stores.registry import make_store


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
                 journal: Journal | None = None) -> None:
        self._pairs = stores
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
                source = make_store(spec.source, selection, store_options)
                target = make_store(spec.target, selection, store_options)
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
