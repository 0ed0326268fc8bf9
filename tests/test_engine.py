"""Engine logic (resume, retry, partial failure, journal, verify classification) on the
in-memory store. The real stores get the same treatment against real servers elsewhere."""

from __future__ import annotations

import threading

import pytest

from migrator.config import Endpoint
from migrator.engine.journal import COPIED, FAILED, Journal
from migrator.engine.retry import RetryPolicy, call_with_retry
from migrator.engine.session import Session
from migrator.engine.throttle import Throttle
from migrator.engine.transfer import Transfer
from migrator.engine.verify import DIFFER, MATCH, verify
from migrator.errors import JournalConflict, PlanError, StoreError, TransientError
from migrator.plan import Options, Plan, StorePair
from migrator.stores import registry
from migrator.stores.base import Unit, record_hash
from tests import memstore


@pytest.fixture(autouse=True)
def memory_kind(monkeypatch):
    monkeypatch.setitem(registry.STORES, "memory", ("tests.memstore", "MemoryStore"))
    memstore.SERVERS.clear()
    memstore.FAULTS.clear()
    memstore.DEFINITIONS.clear()
    yield


def make_plan(units: dict[str, int], batch_records: int = 10, parallel: int = 2) -> Plan:
    memstore.SERVERS["src"] = {name: {f"k{i:05d}": f"v{i}" for i in range(n)}
                               for name, n in units.items()}
    pair = StorePair("memory", Endpoint("memory", "memory://src"),
                     Endpoint("memory", "memory://dst"))
    options = Options(batch_records=batch_records, parallel=parallel, retries=3)
    plan = Plan(name="t", stores={"memory": pair}, options=options)
    with Session(plan.stores, options) as session:
        plan.inventory = session.pair("memory")[0].list_units()
    return plan


def run(plan: Plan, tmp_path, **kw):
    with Journal(tmp_path / "j.sqlite").open() as journal, \
            Session(plan.stores, plan.options) as session:
        journal.bind_plan(plan.fingerprint(), restart=False)
        transfer = Transfer(plan, journal, session,
                            retry=RetryPolicy(attempts=3, base_delay=0.001), **kw)
        return transfer.run(), journal.units()


def test_run_copies_every_unit_and_verify_matches(tmp_path):
    plan = make_plan({"a": 95, "b": 7, "c": 0})
    result, states = run(plan, tmp_path)
    assert not result.failed and not result.interrupted
    assert memstore.SERVERS["dst"]["a"] == memstore.SERVERS["src"]["a"]
    assert {s.state for s in states.values()} == {COPIED}
    assert states["memory:a"].records == 95
    with Session(plan.stores, plan.options) as session:
        report = verify(plan.inventory, session)
    assert report.ok and [u.status for u in report.units] == [MATCH] * 3


def test_run_resumes_after_kill_between_write_and_checkpoint_without_duplicates(tmp_path):
    plan = make_plan({"a": 100}, batch_records=10, parallel=1)
    memstore.FAULTS["dst"] = [None, None, None, "kill-after-write"]
    first, states = run(plan, tmp_path)
    assert first.interrupted
    assert states["memory:a"].cursor == "k00029"  # batch 4 was written, not checkpointed
    assert states["memory:a"].records == 30
    second, states = run(plan, tmp_path)
    assert not second.interrupted and not second.failed
    assert states["memory:a"].state == COPIED
    # resumed from the checkpoint: 70 records travelled the second time, not 100
    assert states["memory:a"].records == 100
    assert memstore.SERVERS["dst"]["a"] == memstore.SERVERS["src"]["a"]


def test_transient_error_is_retried_from_the_last_checkpoint(tmp_path):
    plan = make_plan({"a": 50}, parallel=1)
    memstore.FAULTS["dst"] = [None, "transient", None]
    result, states = run(plan, tmp_path)
    assert not result.failed
    assert states["memory:a"].state == COPIED and states["memory:a"].records == 50
    with Journal(tmp_path / "j.sqlite").open() as journal:
        kinds = [e[2] for e in journal.events("memory:a")]
    assert "retry" in kinds


def test_terminal_error_fails_only_its_unit(tmp_path):
    plan = make_plan({"a": 5, "b": 5}, parallel=1)
    memstore.FAULTS["dst"] = ["terminal"]
    result, states = run(plan, tmp_path)
    assert [o.key for o in result.failed] == ["memory:a"]
    assert "disk full" in states["memory:a"].error
    assert states["memory:b"].state == COPIED
    # a second run retries only the failed unit
    result, states = run(plan, tmp_path)
    assert not result.failed and states["memory:a"].state == COPIED


def test_stop_event_stops_at_a_batch_boundary_and_keeps_the_checkpoint(tmp_path):
    plan = make_plan({"a": 100}, parallel=1)
    stop = threading.Event()

    class StopAfterTwo:
        calls = 0

        def take(self, nbytes, stop_event=None):
            StopAfterTwo.calls += 1
            if StopAfterTwo.calls == 2:
                stop.set()

    result, states = run(plan, tmp_path, stop=stop, throttle=StopAfterTwo())
    assert result.interrupted
    assert states["memory:a"].records == 20 and states["memory:a"].state == "copying"


def test_verify_names_missing_extra_and_differing_keys(tmp_path):
    plan = make_plan({"a": 30})
    run(plan, tmp_path)
    target = memstore.SERVERS["dst"]["a"]
    target["k00003"] = "changed"
    del target["k00017"]
    target["zz-extra"] = "x"
    with Session(plan.stores, plan.options) as session:
        report = verify(plan.inventory, session)
    unit = report.units[0]
    assert not report.ok and unit.status == DIFFER
    assert unit.differ == ["k00003"]
    assert unit.missing_on_target == ["k00017"]
    assert unit.missing_on_source == ["zz-extra"]
    assert unit.chunks == ["lo", "hi"]


def test_journal_refuses_a_second_concurrent_run(tmp_path):
    with Journal(tmp_path / "j.sqlite").open():
        with pytest.raises(JournalConflict, match="in use"):
            Journal(tmp_path / "j.sqlite").open()


def test_journal_refuses_a_changed_plan_until_restart(tmp_path):
    plan = make_plan({"a": 5})
    run(plan, tmp_path)
    with Journal(tmp_path / "j.sqlite").open() as journal:
        with pytest.raises(JournalConflict, match="different version"):
            journal.bind_plan("another", restart=False)
        journal.bind_plan("another", restart=True)
        assert not journal.has_progress()


def test_retry_gives_up_after_its_attempts_and_never_retries_terminal_errors():
    calls = []

    def flaky():
        calls.append(1)
        raise TransientError("timeout")

    with pytest.raises(TransientError):
        call_with_retry(flaky, RetryPolicy(attempts=2, base_delay=0.001))
    assert len(calls) == 3

    def broken():
        calls.append(2)
        raise StoreError("bad data")

    with pytest.raises(StoreError):
        call_with_retry(broken, RetryPolicy(attempts=5, base_delay=0.001))
    assert calls.count(2) == 1


def test_throttle_makes_callers_wait_in_proportion_to_bytes():
    waits = []

    class Recorder:
        def wait(self, seconds):
            waits.append(seconds)

    throttle = Throttle(1000, burst_seconds=1.0)
    throttle.take(1000, Recorder())  # the burst allowance
    throttle.take(500, Recorder())
    assert len(waits) == 1 and 0.45 < waits[0] <= 0.5
    Throttle(None).take(10**9, Recorder())
    assert len(waits) == 1


def test_failed_state_is_recorded_with_the_error_message(tmp_path):
    plan = make_plan({"a": 3}, parallel=1)
    memstore.FAULTS["dst"] = ["terminal"]
    _, states = run(plan, tmp_path)
    assert states["memory:a"].state == FAILED


# -- what no unit covers, store-level definitions, drift, re-copy ------------------------
def whole(plan: Plan) -> dict:
    return {kind: plan.units_of(kind) for kind in plan.stores}


def test_verify_reports_a_unit_created_on_the_source_after_plan_as_missing(tmp_path):
    plan = make_plan({"a": 5})
    run(plan, tmp_path)
    memstore.SERVERS["src"]["late"] = {"k1": "v"}  # e.g. a table created after `plan`
    with Session(plan.stores, plan.options) as session:
        report = verify(plan.inventory, session, whole=whole(plan))
    assert not report.ok and report.exit_code == 5
    row = next(u for u in report.units if u.unit == "memory:(not in plan)")
    assert row.status == DIFFER and row.missing_on_target == ["late"]


def test_verify_compares_store_definitions_of_both_sides(tmp_path):
    plan = make_plan({"a": 5})
    memstore.DEFINITIONS["src"] = {"views": {"v1": "select 1"}}
    memstore.DEFINITIONS["dst"] = {"views": {"v1": "select 1"}}
    run(plan, tmp_path)
    with Session(plan.stores, plan.options) as session:
        assert verify(plan.inventory, session, whole=whole(plan)).ok
        del memstore.DEFINITIONS["dst"]["views"]["v1"]  # a view dropped on the target
        report = verify(plan.inventory, session, whole=whole(plan))
    row = next(u for u in report.units if u.unit == "memory:(definitions)")
    assert row.status == DIFFER and any("views.v1" in line for line in row.schema)


def test_narrowed_verify_skips_whole_store_checks_but_says_nothing_false(tmp_path):
    plan = make_plan({"a": 5})
    run(plan, tmp_path)
    memstore.SERVERS["src"]["late"] = {"k1": "v"}
    with Session(plan.stores, plan.options) as session:
        report = verify(plan.inventory, session)  # no `whole`: units only
    assert report.ok and all(":(" not in u.unit for u in report.units)


def test_run_refuses_a_source_that_grew_a_container_after_plan(tmp_path):
    from migrator.engine import operations

    plan = make_plan({"a": 5})
    memstore.SERVERS["src"]["late"] = {"k1": "v"}
    with pytest.raises(PlanError, match="late"):
        operations.run_plan(plan, tmp_path / "p.yaml")
    assert "dst" not in memstore.SERVERS or not memstore.SERVERS["dst"].get("a")


def test_run_copies_again_what_verify_found_different(tmp_path):
    from migrator.engine import operations

    plan = make_plan({"a": 30, "b": 4})
    first = operations.run_plan(plan, tmp_path / "p.yaml")
    assert first.verify is not None and first.verify.ok
    del memstore.SERVERS["dst"]["a"]["k00007"]  # the target lost a record
    report = operations.verify_plan(plan, tmp_path / "p.yaml")
    assert report.exit_code == 5
    second = operations.run_plan(plan, tmp_path / "p.yaml")
    assert second.recopied == ["memory:a"]
    assert second.verify is not None and second.verify.ok
    assert memstore.SERVERS["dst"]["a"]["k00007"] == "v7"


def test_verify_exit_code_is_4_for_an_unreachable_side_and_5_for_differences(tmp_path):
    from migrator.engine.verify import ERROR, UnitReport, VerifyReport

    unreachable = VerifyReport(units=[UnitReport("memory:a", "memory", ERROR, error="x",
                                                 error_code=4)])
    assert unreachable.exit_code == 4
    both = VerifyReport(units=[*unreachable.units,
                               UnitReport("memory:b", "memory", DIFFER)])
    assert both.exit_code == 5


@pytest.mark.parametrize("content", [b"", b"not a journal at all, just text\n" * 40,
                                     b"SQLite format 3\x00" + b"\x00" * 50])
def test_an_unreadable_journal_is_a_conflict_naming_the_file(tmp_path, content):
    path = tmp_path / "j.sqlite"
    path.write_bytes(content)
    if not content:
        path.unlink()
        path.mkdir()  # a directory where the journal should be
    with pytest.raises(JournalConflict, match="j.sqlite"):
        Journal(path).open()


# -- catch-up ---------------------------------------------------------------------------
def test_sync_copies_changes_deletes_leftovers_and_then_proves_equal(tmp_path):
    from migrator.engine import operations

    plan = make_plan({"a": 40, "b": 5})
    assert operations.run_plan(plan, tmp_path / "p.yaml").verify.ok
    src, dst = memstore.SERVERS["src"], memstore.SERVERS["dst"]
    src["a"]["k00003"] = "changed"          # changed on the source
    src["a"]["k99999"] = "new"              # added
    del src["b"]["k00001"]                  # deleted
    dst["a"]["k00010"] = "tampered"         # changed behind our back on the target
    outcome = operations.sync_plan(plan, tmp_path / "p.yaml")
    first = outcome.passes[0]
    assert (sum(u.copied for u in first.units), sum(u.deleted for u in first.units)) == (3, 1)
    assert dst["a"] == src["a"] and dst["b"] == src["b"]
    again = operations.sync_plan(plan, tmp_path / "p.yaml")
    assert again.passes[0].changed == 0 and again.stable
    assert operations.verify_plan(plan, tmp_path / "p.yaml").ok


def test_sync_until_stable_stops_when_a_pass_changes_nothing(tmp_path):
    from migrator.engine import operations

    plan = make_plan({"a": 20})
    operations.run_plan(plan, tmp_path / "p.yaml")
    memstore.SERVERS["src"]["a"]["k00001"] = "x"
    outcome = operations.sync_plan(plan, tmp_path / "p.yaml", until_stable=True)
    assert [p.changed for p in outcome.passes] == [1, 0] and outcome.stable


def test_sync_refuses_a_plan_that_was_never_run(tmp_path):
    from migrator.engine import operations
    from migrator.errors import UsageError

    plan = make_plan({"a": 3})
    with pytest.raises(UsageError, match="run"):
        operations.sync_plan(plan, tmp_path / "p.yaml")


# -- two-step drill-down (record_hashes, records_of) ------------------------------------
class HashingStore(memstore.MemoryStore):
    """The memory store with the optional drill-down hooks, shaped like Redis: the cheap
    hash is of the exact bytes (like a DUMP payload), the canonical fingerprint ignores
    case (like a value whose encoding differs), and a key starting with "?" has no cheap
    hash. Every canonical read is logged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listed: list[str] = []  # chunks listed whole with records()
        self.fingerprinted: list[str] = []  # keys read by records_of()

    def records(self, unit, chunk):
        self.listed.append(chunk.id)
        for key, value in super().records(unit, chunk):
            yield key, value.lower()

    def record_hashes(self, unit, chunk):
        return {key: None if key.startswith("?") else record_hash(key.encode(), value.encode())
                for key, value in self.data.get(unit.name, {}).items() if self._in(key, chunk)}

    def records_of(self, unit, keys):
        self.fingerprinted.extend(keys)
        values = self.data.get(unit.name, {})
        return iter([(k, values[k].lower()) for k in keys if k in values])


def _pair(source_kind=HashingStore, target_kind=HashingStore):
    stores = []
    for cls, host in ((source_kind, "src"), (target_kind, "dst")):
        store = cls(Endpoint("memory", f"memory://{host}"))
        store.open()
        stores.append(store)
    return stores


def _drill_fixture() -> Unit:
    keys = {f"k{i:03d}": f"v{i}" for i in range(60)} | {"?odd": "same", "zz": "tail"}
    memstore.SERVERS["src"] = {"a": dict(keys)}
    target = dict(keys)
    target["k005"] = "V5"  # equal canonically ("encoding" differs): not a difference
    target["k007"] = "changed"  # differs
    del target["k050"]  # missing on the target
    target["extra"] = "x"  # missing on the source
    target["zz"] = "TAIL"  # equal canonically, in the other chunk
    memstore.SERVERS["dst"] = {"a": target}
    return Unit("memory", "a", {}, len(keys))


def test_verify_fingerprints_only_the_keys_whose_cheap_hashes_differ(monkeypatch):
    from migrator.engine import verify as verify_mod

    unit = _drill_fixture()
    source, target = _pair()
    report = verify_mod.verify_unit(source, target, unit)
    assert report.status == DIFFER
    assert report.differ == ["k007"]
    assert report.missing_on_target == ["k050"] and report.missing_on_source == ["extra"]
    assert (report.n_differ, report.n_missing_on_target, report.n_missing_on_source) == (1, 1, 1)
    assert report.chunks == ["lo"]  # "hi" differed by digest only ("zz": case)
    suspects = {"k005", "k007", "k050", "extra", "?odd", "zz"}
    assert sorted(source.fingerprinted) == sorted(target.fingerprinted) == sorted(suspects)
    assert source.listed == target.listed == []  # no chunk listed whole

    # The same verdicts, chunk by chunk in order, when batches resolve one key at a time.
    monkeypatch.setattr(verify_mod, "RESOLVE_KEYS", 1)
    again = verify_mod.verify_unit(*_pair(), unit)
    assert (again.differ, again.missing_on_target, again.missing_on_source, again.chunks) == \
        (report.differ, report.missing_on_target, report.missing_on_source, report.chunks)


def test_without_the_hook_on_both_sides_the_chunks_are_listed_whole():
    from migrator.engine.verify import verify_unit

    unit = _drill_fixture()
    source, target = _pair(target_kind=memstore.MemoryStore)
    report = verify_unit(source, target, unit)
    # The plain target lists exact values: case differences count here.
    assert set(report.differ) == {"k005", "k007", "zz"}
    assert source.listed == ["lo", "hi"] and source.fingerprinted == []


def test_sync_through_the_hooks_copies_and_deletes_only_real_differences():
    from migrator.engine.sync import sync_unit

    unit = _drill_fixture()
    source, target = _pair()
    result = sync_unit(source, target, unit)
    assert (result.copied, result.deleted, result.chunks) == (2, 1, ["lo"])
    dst, src = memstore.SERVERS["dst"]["a"], memstore.SERVERS["src"]["a"]
    assert dst["k007"] == "v7" and dst["k050"] == "v50" and "extra" not in dst
    assert dst["k005"] == "V5"  # canonically equal: left alone
    assert {k: v.lower() for k, v in dst.items()} == {k: v.lower() for k, v in src.items()}
    second = sync_unit(*_pair(), unit)
    assert second.changed == 0


def test_a_final_sync_pass_proves_its_equal_chunks_and_verify_rechecks_the_rest(
        tmp_path, monkeypatch):
    """What a cutover does in the freeze: the sync pass names the chunks it found different
    (the only ones it wrote to); verify digests just those again, so a change there after
    the pass is still named, and a proof that does not fit the chunks is not used."""
    from migrator.engine import operations
    from migrator.engine.verify import Proven

    plan = make_plan({"a": 40})
    path = tmp_path / "p.yaml"
    assert operations.run_plan(plan, path).verify.ok
    src, dst = memstore.SERVERS["src"], memstore.SERVERS["dst"]
    src["a"]["z-new"] = "added"  # only chunk "hi" (keys from "m" on) differs
    unit = plan.inventory[0]
    last = operations.sync_plan(plan, path).passes[-1].units[0]
    assert last.copied == 1 and last.proven == Proven(frozenset({"hi"}), 40)

    digested: list[list[str]] = []
    real = memstore.MemoryStore.digest

    def counting(self, unit, chunks):
        digested.append([c.id for c in chunks])
        return real(self, unit, chunks)

    monkeypatch.setattr(memstore.MemoryStore, "digest", counting)
    report = operations.verify_plan(plan, path, proven={unit.key: last.proven})
    assert report.ok and digested == [["hi"], ["hi"]]
    (checked,) = [u for u in report.units if u.unit == unit.key]
    assert checked.rechecked == ["hi"] and checked.source_count == checked.target_count == 41

    dst["a"]["z-new"] = "changed on the target after the pass"
    digested.clear()
    report = operations.verify_plan(plan, path, proven={unit.key: last.proven})
    (checked,) = [u for u in report.units if u.unit == unit.key]
    assert report.exit_code == 5 and checked.differ == ["z-new"] and digested == [["hi"]] * 2

    listed: list[str] = []
    chunks_of = memstore.MemoryStore.chunks
    monkeypatch.setattr(memstore.MemoryStore, "chunks",
                        lambda self, unit: listed.append(unit.key) or chunks_of(self, unit))
    # A proof that leaves nothing to recheck: no chunk listed or digested. It is taken as
    # given (the tampered record is in a chunk it claims), which is why only a cutover's
    # own pass inside the freeze hands one to verify.
    digested.clear()
    report = operations.verify_plan(plan, path, proven={unit.key: Proven(frozenset(), 41)})
    (checked,) = [u for u in report.units if u.unit == unit.key]
    assert checked.rechecked == [] and digested == [] and listed == []
    assert checked.status == "match" and checked.source_count == 41
    listed.clear()

    digested.clear()  # a chunk the store no longer lists: every chunk is digested
    report = operations.verify_plan(plan, path, proven={unit.key: Proven(frozenset({"x"}), 0)})
    (checked,) = [u for u in report.units if u.unit == unit.key]
    assert checked.rechecked is None and digested == [["lo", "hi"]] * 2 and listed
    assert report.exit_code == 5 and checked.source_count == 41
