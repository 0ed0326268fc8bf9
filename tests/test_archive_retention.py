"""Retention: which sets `prune` keeps (restic `forget` rules, table-driven), and that
pruning never deletes a file a kept (or a resumable) set still needs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from migrator.archive import Cut, Policy, archive_endpoint, check, open_archive, prune, select
from migrator.archive import layout as archive_layout
from migrator.archive import repository as archive_repository
from migrator.stores.base import Unit
from tests.test_archive import cli


def t(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


# (case, sets as "YYYY-MM-DD HH:MM", policy, the sets kept with their reasons)
CASES = [
    ("last keeps the newest N",
     ["2024-03-01 10:00", "2024-03-02 10:00", "2024-03-03 10:00", "2024-03-04 10:00"],
     Policy(last=2), {"2024-03-04 10:00": ["last"], "2024-03-03 10:00": ["last"]}),
    ("daily keeps the newest of each day",
     ["2024-03-01 08:00", "2024-03-01 20:00", "2024-03-02 09:00", "2024-03-03 12:00"],
     Policy(daily=2), {"2024-03-03 12:00": ["daily"], "2024-03-02 09:00": ["daily"]}),
    ("daily counts days that have a set, not calendar days",
     ["2024-03-01 08:00", "2024-03-05 08:00", "2024-03-20 08:00"],
     Policy(daily=3), {"2024-03-01 08:00": ["daily"], "2024-03-05 08:00": ["daily"],
                       "2024-03-20 08:00": ["daily"]}),
    ("weekly uses ISO weeks (Monday to Sunday)",
     ["2024-01-01 10:00", "2024-01-07 10:00", "2024-01-08 10:00", "2024-01-15 10:00"],
     Policy(weekly=2), {"2024-01-15 10:00": ["weekly"], "2024-01-08 10:00": ["weekly"]}),
    ("an ISO week spans the new year",
     ["2024-12-30 10:00", "2025-01-02 10:00", "2025-01-06 10:00"],
     Policy(weekly=2), {"2025-01-06 10:00": ["weekly"], "2025-01-02 10:00": ["weekly"]}),
    ("monthly keeps the newest of each month",
     ["2024-01-05 10:00", "2024-01-30 10:00", "2024-02-10 10:00", "2024-03-01 10:00"],
     Policy(monthly=2), {"2024-03-01 10:00": ["monthly"], "2024-02-10 10:00": ["monthly"]}),
    ("rules add up and every reason is named",
     ["2024-01-31 10:00", "2024-02-27 10:00", "2024-02-28 10:00", "2024-02-28 23:00"],
     Policy(last=1, daily=2, monthly=2),
     {"2024-02-28 23:00": ["last", "daily", "monthly"], "2024-02-27 10:00": ["daily"],
      "2024-01-31 10:00": ["monthly"]}),
    ("a policy longer than the history keeps everything",
     ["2024-01-01 10:00", "2024-06-01 10:00"], Policy(last=10, monthly=10),
     {"2024-06-01 10:00": ["last", "monthly"], "2024-01-01 10:00": ["last", "monthly"]}),
    ("no sets, nothing kept", [], Policy(last=3), {}),
]


@pytest.mark.parametrize("case, times, policy, kept", CASES, ids=[c[0] for c in CASES])
def test_which_sets_the_policy_keeps(case, times, policy, kept):
    sets = [(f"set-{text}", t(text)) for text in times]
    assert select(sets, policy) == {f"set-{k}": v for k, v in kept.items()}


def test_a_policy_without_rules_or_with_negative_counts_is_refused(tmp_path):
    with pytest.raises(Exception, match="no retention rule given"):
        Policy().check()
    with pytest.raises(Exception, match="--keep-daily: must be 0 or more"):
        Policy(daily=-1).check()
    url = f"archive+file://{tmp_path}/a"
    proc = cli("backup", "prune", url)
    assert proc.returncode == 3 and "no retention rule given" in proc.stderr
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------- prune on disk
class Clock:
    """Sets stamped at chosen times: the writer's clock, moved by the test."""

    def __init__(self, monkeypatch) -> None:
        self.when = t("2024-05-01 12:00")
        monkeypatch.setattr(archive_repository, "now",
                            lambda: self.when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        monkeypatch.setattr(archive_repository, "new_set_id",
                            lambda: archive_layout.new_set_id(self.when))


def backup(repo, clock: Clock, when: str, files: dict[str, bytes],
           reuse: dict[str, object] | None = None, *, commit: bool = True):
    """One set of store "objects", unit "bucket": new files, plus files referenced from
    an earlier set (``reuse``: name -> FileEntry), as an incremental objects backup does."""
    clock.when = t(when)
    writer = repo.begin_set(plan_name="p", plan_fingerprint="fp", stores=["objects"])
    store = writer.store("objects")
    store.set_cut(Cut(time=clock.when.isoformat(), snapshot=False, detail="listed"))
    unit = store.unit(Unit("objects", "bucket"))
    for name, data in files.items():
        with unit.open(name) as f:
            f.write(data)
    for name, entry in (reuse or {}).items():
        unit.reference(entry, name)
    unit.count(len(files) + len(reuse or {}))
    unit.commit()
    store.commit()
    if not commit:
        return writer
    return writer.commit([Unit("objects", "bucket")])


def files_of(manifest) -> dict[str, object]:
    return {f.name: f for f in manifest.files()}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    clock = Clock(monkeypatch)
    with open_archive(archive_endpoint(f"archive+file://{tmp_path}/a"), create=True) as repo:
        repo.clock = clock
        yield repo


def stored(repo) -> set[str]:
    return {path for path, _ in repo.backend.files("sets/")}


def test_prune_forgets_by_policy_and_deletes_the_forgotten_sets_files(repo):
    made = [backup(repo, repo.clock, f"2024-05-0{d} 12:00", {"o": bytes([d]) * 100})
            for d in range(1, 6)]
    report = prune(repo, Policy(last=2))
    assert sorted(report.kept) == [m.set_id for m in made[3:]]
    assert report.forgotten == [m.set_id for m in made[:3]]
    assert report.deleted_files == 6 and report.referenced_files == 0  # manifest + file each
    assert {p.split("/")[1] for p in stored(repo)} == {m.set_id for m in made[3:]}
    assert [i.state for i in repo.sets()] == ["complete", "complete"]
    assert check(repo, read_data=True).ok


def test_prune_never_deletes_a_file_a_kept_set_references(repo):
    first = backup(repo, repo.clock, "2024-05-01 12:00", {"x": b"x" * 100, "y": b"y" * 100})
    second = backup(repo, repo.clock, "2024-05-02 12:00", {"z": b"z" * 100},
                    reuse={"x": files_of(first)["x"]})
    x_path = files_of(first)["x"].path
    report = prune(repo, Policy(last=1))
    assert report.forgotten == [first.set_id] and report.referenced_files == 1
    left = stored(repo)
    assert x_path in left and files_of(first)["y"].path not in left
    assert f"sets/{first.set_id}/forgotten.json" in left
    assert f"sets/{first.set_id}/manifest.json.zst" not in left
    assert [(i.set_id, i.state) for i in repo.sets()] == \
        [(first.set_id, "forgotten"), (second.set_id, "complete")]
    report = check(repo, read_data=True)
    assert report.ok and not report.problems and report.files_read == 2
    with repo.read_file(files_of(repo.open_set())["x"]) as reader:
        assert reader.read() == b"x" * 100
    # Once no kept set needs it, the referenced file goes, and the forgotten set with it.
    third = backup(repo, repo.clock, "2024-05-03 12:00", {"w": b"w"})
    prune(repo, Policy(last=1))
    assert {p.split("/")[1] for p in stored(repo)} == {third.set_id}
    assert [i.state for i in repo.sets()] == ["complete"]


def test_prune_dry_run_deletes_nothing(repo):
    for day in (1, 2, 3):
        backup(repo, repo.clock, f"2024-05-0{day} 12:00", {"o": b"o"})
    before = stored(repo)
    report = prune(repo, Policy(last=1), dry_run=True)
    assert report.dry_run and len(report.forgotten) == 2 and report.deleted_files == 4
    assert stored(repo) == before
    assert [i.state for i in repo.sets()] == ["complete"] * 3


def test_prune_leaves_a_recent_incomplete_set_and_what_its_finished_units_reference(repo):
    old = backup(repo, repo.clock, "2024-05-01 12:00", {"x": b"x" * 10})
    newer = backup(repo, repo.clock, "2024-05-02 12:00", {"n": b"n"})
    running = backup(repo, repo.clock, "2024-05-03 12:00", {"r": b"r"},
                     reuse={"x": files_of(old)["x"]}, commit=False)
    report = prune(repo, Policy(last=1))
    assert report.forgotten == [old.set_id] and report.left_alone == [running.set_id]
    assert files_of(old)["x"].path in stored(repo)  # the running backup references it
    running.commit([Unit("objects", "bucket")])
    assert check(repo, read_data=True).ok
    assert newer.set_id in {i.set_id for i in repo.sets()}


def test_prune_removes_an_incomplete_set_older_than_the_newest_complete_one(repo):
    abandoned = backup(repo, repo.clock, "2024-05-01 12:00", {"a": b"a"}, commit=False)
    done = backup(repo, repo.clock, "2024-05-02 12:00", {"b": b"b"})
    assert repo.resumable_set("fp") is None  # a rerun starts a new set instead
    report = prune(repo, Policy(last=5))
    assert report.abandoned == [abandoned.set_id] and sorted(report.kept) == [done.set_id]
    assert {p.split("/")[1] for p in stored(repo)} == {done.set_id}


def test_prune_cli_json_and_table(tmp_path, monkeypatch):
    clock = Clock(monkeypatch)
    url = f"archive+file://{tmp_path}/a"
    with open_archive(archive_endpoint(url), create=True) as repo:
        sets = [backup(repo, clock, f"2024-05-{d:02d} 12:00", {"o": b"o"}).set_id
                for d in (1, 2, 9)]
    dry = cli("backup", "prune", url, "--keep-daily", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 file(s)" in dry.stderr and sets[0] in dry.stdout
    proc = cli("backup", "prune", url, "--keep-daily", "2", "--json")
    data = json.loads(proc.stdout)
    assert data["kept"] == [{"set": sets[1], "reasons": ["daily"]},
                            {"set": sets[2], "reasons": ["daily"]}]
    assert data["forgotten"] == [sets[0]] and data["deleted_files"] == 2
    listed = json.loads(cli("backup", "list", url, "--json").stdout)["sets"]
    assert [s["set"] for s in listed] == sets[1:]
    assert listed[0]["time"] == "2024-05-02T12:00:00Z"
    assert listed[0]["cuts"]["objects"]["snapshot"] is False

