"""The backup, restore and drill operations (migrator/engine/backup.py, drill.py) on the
engine's in-memory store and the toy JSON-lines format of test_archive_endpoint: the
orchestration (set per run, resume from the archive alone, manifest last, restore refusing
a filled target, verify against the manifest, the drill's reasons, RPO and RTO). Each real
store's format runs the same operations against its real server in test_archive_<kind>.py.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import pytest

from migrator.archive import archive_endpoint, open_archive
from migrator.archive import endpoint as archive_endpoint_module
from migrator.config import Endpoint
from migrator.engine.backup import Source, backup, restore
from migrator.engine.drill import drill
from migrator.errors import TargetNotEmpty
from migrator.plan import Options
from migrator.progress import NullProgress
from migrator.stores import registry
from tests import memstore


@pytest.fixture(autouse=True)
def memory_kind(monkeypatch):
    monkeypatch.setitem(registry.STORES, "memory", ("tests.memstore", "MemoryStore"))
    monkeypatch.setitem(archive_endpoint_module.FORMATS, "memory",
                        ("tests.test_archive_endpoint", "MemoryLines"))
    memstore.SERVERS.clear()
    memstore.DEFINITIONS.clear()
    memstore.FAULTS.clear()


def options() -> Options:
    return Options(batch_records=10, parallel=2, retries=1)


def source() -> dict[str, Source]:
    return {"memory": Source(Endpoint("memory", "memory://src", name="stores.memory.source"))}


def fill(server: str = "src") -> None:
    memstore.SERVERS[server] = {"a": {f"k{i:03d}": f"v{i}" for i in range(45)},
                                "b": {f"k{i:03d}": f"w{i}" for i in range(30)}, "c": {}}


class StopAfter(NullProgress):
    """Ctrl-C after some records: the transfer stops at the next batch edge."""

    def __init__(self, stop: threading.Event, records: int) -> None:
        self.stop, self.left = stop, records

    def advance(self, unit: str, records: int, nbytes: int) -> None:
        self.left -= records
        if self.left <= 0:
            self.stop.set()


def test_backup_writes_one_complete_set_and_restore_verifies_it(tmp_path):
    fill()
    url = f"archive+file://{tmp_path}/archive"
    outcome = backup("t", source(), archive_endpoint(url), options())
    assert outcome.manifest is not None and not outcome.resumed
    units = outcome.manifest.stores["memory"].units
    assert {n: u.records for n, u in units.items()} == {"a": 45, "b": 30, "c": 0}

    result = restore(archive_endpoint(url), {"memory": Endpoint("memory", "memory://dst")},
                     options(), journal=tmp_path / "restore.sqlite")
    assert result.ok, result.to_dict()
    assert result.set_id == outcome.set_id
    assert memstore.SERVERS["dst"]["a"] == memstore.SERVERS["src"]["a"]
    assert result.stores == {"memory": {"records": 75, "bytes": result.stores["memory"]["bytes"]}}

    # A second restore into the same, now filled, target is refused before writing.
    memstore.SERVERS["dst"]["b"]["k000"] = "changed by hand"
    with pytest.raises(TargetNotEmpty, match="memory:a"):
        restore(archive_endpoint(url), {"memory": Endpoint("memory", "memory://dst")},
                options(), journal=tmp_path / "again.sqlite")
    assert memstore.SERVERS["dst"]["b"]["k000"] == "changed by hand"


def test_an_interrupted_backup_leaves_no_complete_set_and_the_rerun_finishes_it(tmp_path):
    fill()
    url = f"archive+file://{tmp_path}/archive"
    stop = threading.Event()
    one_at_a_time = options()
    one_at_a_time.parallel = 1  # a (45 records) is stored whole, b is cut short
    first = backup("t", source(), archive_endpoint(url), one_at_a_time,
                   progress=StopAfter(stop, 50), stop=stop)
    assert first.copy.interrupted and first.manifest is None
    with open_archive(archive_endpoint(url)) as repo:
        assert [s.state for s in repo.sets()] == ["incomplete"]
    # Written between the runs: the resumed set still holds the units listed at its start.
    memstore.SERVERS["src"]["d"] = {"x": "new"}
    second = backup("t", source(), archive_endpoint(url), options())
    assert second.resumed and second.set_id == first.set_id
    assert second.manifest is not None
    assert set(second.manifest.stores["memory"].units) == {"a", "b", "c"}
    assert second.skipped_units == 1  # a, stored by the first run, is not written again
    with open_archive(archive_endpoint(url)) as repo:
        assert [(s.set_id, s.state) for s in repo.sets()] == [(first.set_id, "complete")]
    third = backup("t", source(), archive_endpoint(url), options())  # a new set, with d
    assert not third.resumed and "d" in third.manifest.stores["memory"].units


def test_drill_passes_on_a_good_set_and_names_the_damage_on_a_bad_one(tmp_path):
    fill()
    url = f"archive+file://{tmp_path}/archive"
    made = backup("t", source(), archive_endpoint(url), options())
    good = drill(archive_endpoint(url), {"memory": Endpoint("memory", "memory://stage1")},
                 options(), max_age_seconds=3600)
    assert good.passed, good.reasons
    assert good.set_id == made.set_id
    assert good.rpo_seconds is not None and 0 <= good.rpo_seconds < 3600
    assert good.rto_seconds is not None and good.rto_seconds >= good.restore_seconds
    assert good.stores["memory"]["records"] == 75 and good.stores["memory"]["passed"]
    suite = ET.fromstring(good.junit())
    assert suite.get("failures") == "0"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert float(props["rpo_seconds"]) >= 0 and float(props["rto_seconds"]) > 0

    # One flipped byte in a data file: the drill fails and says which unit and why.
    with open_archive(archive_endpoint(url)) as repo:
        entry = repo.reader().store("memory").unit("b").entry("records.jsonl")
    path = tmp_path / "archive" / entry.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    bad = drill(archive_endpoint(url), {"memory": Endpoint("memory", "memory://stage2")},
                options(), max_age_seconds=0)
    assert not bad.passed
    assert any(r.startswith("memory:b:") for r in bad.reasons), bad.reasons
    assert any(r.startswith("set age") for r in bad.reasons)
    failures = [c for c in ET.fromstring(bad.junit()).iter("testcase")
                if c.find("failure") is not None]
    assert {c.get("name") for c in failures} >= {"restore and verify memory",
                                                  "set age within --max-age"}
    assert bad.to_dict()["rpo_seconds"] is not None and "rto_seconds" in bad.to_dict()


def test_a_drill_of_a_missing_archive_fails_with_the_reason_not_an_exception(tmp_path):
    report = drill(archive_endpoint(f"archive+file://{tmp_path}/none"),
                   {"memory": Endpoint("memory", "memory://x")}, options())
    assert not report.passed
    assert report.reasons and "there is no archive" in report.reasons[0]
    assert report.rpo_seconds is None and ET.fromstring(report.junit()).get("failures") == "1"
