"""An archive is one more endpoint: a backup is the engine's own run with an archive as
the target, a restore one with an archive as the source, and verify compares a live store
with a set. Shown with the engine's in-memory store and a minimal JSON-lines format (the
four real formats plug into the same ``ArchiveFormat`` contract).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from migrator.archive import Cut, archive_endpoint, is_archive_url, open_archive
from migrator.archive import endpoint as archive_endpoint_module
from migrator.archive.endpoint import ArchiveStore
from migrator.archive.format import ArchiveFormat
from migrator.archive.reader import UnitReader
from migrator.archive.writer import UnitWriter
from migrator.config import Endpoint
from migrator.engine import session as session_module
from migrator.engine.journal import COPIED, Journal
from migrator.engine.session import Session
from migrator.engine.transfer import Transfer
from migrator.engine.verify import DIFFER, MATCH, verify
from migrator.errors import PlanError
from migrator.plan import Options, Plan, StorePair
from migrator.stores import registry
from migrator.stores.base import Batch, Chunk, Cursor, Importer, Role, Store, Unit, record_hash
from tests import memstore


class LinesImporter(Importer):
    def __init__(self, unit: UnitWriter, source: Store) -> None:
        self.unit, self.source = unit, source

    def prepare(self, resumed: bool) -> None:
        assert not resumed  # archive units always restart from their start
        self.chunks = self.source.chunks(self.unit.unit)
        self.unit.set_chunks(self.chunks)
        self.file = self.unit.open("records.jsonl")

    def write_batch(self, batch: Batch) -> None:
        for key, value in batch.records:
            self.file.write(json.dumps([key, value]).encode() + b"\n")
            chunk = next(c for c in self.chunks if MemoryLines.holds(c, key))
            self.unit.record(chunk.id, record_hash(key.encode(), value.encode()))

    def finalize(self) -> None:
        self.file.close()


class MemoryLines(ArchiveFormat):
    """The memory store's records, one JSON line each."""

    kind = "memory"

    @staticmethod
    def holds(chunk: Chunk, key: str) -> bool:
        lo, hi = chunk.bounds
        return key >= lo and (hi is None or key < hi)

    def importer(self, unit: UnitWriter, source: Store,
                 previous: UnitReader | None) -> Importer:
        return LinesImporter(unit, source)

    def _lines(self, unit: UnitReader) -> Iterator[tuple[str, str]]:
        with unit.open("records.jsonl") as reader:
            for line in reader.read().splitlines():
                key, value = json.loads(line)
                yield key, value

    def export(self, unit: UnitReader, resume_from: Cursor = None) -> Iterator[Batch]:
        records = [r for r in self._lines(unit) if resume_from is None or r[0] > resume_from]
        for start in range(0, len(records), 10):
            part = records[start:start + 10]
            yield Batch(part, part[-1][0], sum(len(v) for _, v in part))

    def records(self, unit: UnitReader, chunk: Chunk) -> Iterator[tuple[str, Any]]:
        return iter(sorted((k, v) for k, v in self._lines(unit) if self.holds(chunk, k)))


@pytest.fixture(autouse=True)
def memory_kind(monkeypatch):
    monkeypatch.setitem(registry.STORES, "memory", ("tests.memstore", "MemoryStore"))
    monkeypatch.setitem(archive_endpoint_module.FORMATS, "memory",
                        ("tests.test_archive_endpoint", "MemoryLines"))
    memstore.SERVERS.clear()
    memstore.DEFINITIONS.clear()


def bind(monkeypatch, writer=None) -> None:
    """What the registry and the backup operation do: an archive URL makes an
    ArchiveStore; in a backup, bound to the run's set."""
    real = session_module.make_store

    def make(endpoint, selection=None, options=None):
        if is_archive_url(endpoint.url):
            return ArchiveStore(endpoint, selection, options, writer=writer)
        return real(endpoint, selection, options)

    monkeypatch.setattr(session_module, "make_store", make)


def plan_of(source: Endpoint, target: Endpoint, inventory: list[Unit] | None = None) -> Plan:
    plan = Plan(name="t", stores={"memory": StorePair("memory", source, target)},
                options=Options(batch_records=10, parallel=2, retries=1))
    if inventory is None:
        with Session(plan.stores, plan.options) as session:
            source_store, target_store = session.pair("memory")
            inventory = target_store.adapt_units(source_store.list_units(), source_store)
    plan.inventory = inventory
    return plan


def run(plan: Plan, tmp_path, name: str):
    with Journal(tmp_path / f"{name}.sqlite").open() as journal, \
            Session(plan.stores, plan.options) as session:
        journal.bind_plan(plan.fingerprint(), restart=False)
        result = Transfer(plan, journal, session).run()
        return result, journal.units()


def test_backup_restore_and_verify_run_through_the_engine(tmp_path, monkeypatch):
    memstore.SERVERS["src"] = {"a": {f"k{i:03d}": f"v{i}" for i in range(45)}, "b": {},
                               "c": {"k1": "only"}}
    memstore.DEFINITIONS["src"] = {"views": ["v1"]}
    url = f"archive+file://{tmp_path}/archive"
    repo = open_archive(archive_endpoint(url), create=True)
    source = Endpoint("memory", "memory://src", name="stores.memory.source")
    to_archive = Endpoint("memory", url, name="stores.memory.target")

    # Backup: the archive is the target of an ordinary run.
    writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["memory"])
    bind(monkeypatch, writer)
    backup = plan_of(source, to_archive)
    assert all(u.spec["resumable"] is False for u in backup.inventory)
    result, states = run(backup, tmp_path, "backup")
    assert not result.failed and {s.state for s in states.values()} == {COPIED}
    manifest = writer.commit(backup.inventory)
    units = manifest.stores["memory"].units
    assert {n: u.records for n, u in units.items()} == {"a": 45, "b": 0, "c": 1}
    assert manifest.stores["memory"].meta["definitions"] == {"views": ["v1"]}
    with Session(backup.stores, backup.options) as session:  # live source vs the set
        report = verify(backup.inventory, session, whole={"memory": backup.inventory})
        assert report.ok, report.to_dict()
        memstore.SERVERS["src"]["c"]["k2"] = "written after the backup"
        report = verify(backup.inventory, session)
        del memstore.SERVERS["src"]["c"]["k2"]
    assert [(u.unit, u.missing_on_target) for u in report.units if u.status == DIFFER] == \
        [("memory:c", ["k2"])]

    # Restore: the set is the source of an ordinary run, into an empty store.
    bind(monkeypatch)
    from_archive = Endpoint("memory", url, name="stores.memory.source")
    restore = plan_of(from_archive, Endpoint("memory", "memory://dst"))
    assert [u.name for u in restore.inventory] == ["a", "b", "c"]
    result, _ = run(restore, tmp_path, "restore")
    assert not result.failed
    assert memstore.SERVERS["dst"] == {"a": memstore.SERVERS["src"]["a"],
                                       "c": {"k1": "only"}}
    with Session(restore.stores, restore.options) as session:
        assert verify(restore.inventory, session).ok
        memstore.SERVERS["dst"]["a"]["k007"] = "changed after the restore"
        report = verify(restore.inventory, session)
    assert not report.ok
    differing = [u for u in report.units if u.status == DIFFER]
    assert [u.unit for u in differing] == ["memory:a"]
    assert differing[0].differ == ["k007"]
    assert [u.status for u in report.units if u.unit != "memory:a"] == [MATCH, MATCH]


def test_a_reading_archive_endpoint_refuses_to_be_written_and_names_missing_parts(tmp_path):
    url = f"archive+file://{tmp_path}/archive"
    with open_archive(archive_endpoint(url), create=True) as repo:
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["memory"])
        writer.store("memory").set_cut(Cut("2024-01-01T00:00:00.000000Z", True))
        writer.store("memory").commit()
        writer.commit()
    store = ArchiveStore(Endpoint("memory", url, name="stores.memory.target"))
    store.open()
    try:
        with pytest.raises(PlanError, match="not as a plan's target"):
            store.check_access(Role.TARGET)
        assert store.list_units() == []
    finally:
        store.close()
    with pytest.raises(PlanError, match="has no archive format yet"):
        ArchiveStore(Endpoint("postgres", url))
    with pytest.raises(PlanError, match="stores.memory.source.url: has port 0"):
        ArchiveStore(Endpoint("memory", "archive+s3://h:0/b", name="stores.memory.source"))
