"""The plan file: schema errors name the field; secrets never land in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from migrator.config import Endpoint, redact_url
from migrator.errors import PlanChanged, PlanError
from migrator.plan import integrity_of, load_plan, parse_size

GOOD = {
    "version": 1,
    "name": "t",
    "stores": {"redis": {"source": {"url": "redis://:${SRC_PW}@127.0.0.1:1/0"},
                         "target": {"url": "redis://127.0.0.1:2/0"}}},
    "options": {"parallel": 2, "batch_bytes": "4MiB"},
    "inventory": [{"store": "redis", "name": "db0/slots-00000-16383", "records": 1,
                   "spec": {"db": 0, "slots": [0, 16383]}}],
}


def write(tmp_path, data, *, seal: bool = True) -> Path:
    """Write a plan as `plan` would, with its integrity hash (unless ``seal`` is off)."""
    if seal:
        data = {**data, "integrity": integrity_of(data)}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bad(tmp_path, mutate) -> PlanError:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    with pytest.raises(PlanError) as info:
        load_plan(write(tmp_path, data))
    return info.value


def test_a_good_plan_loads_and_round_trips(tmp_path):
    plan = load_plan(write(tmp_path, GOOD))
    assert plan.options.batch_bytes == 4 << 20 and plan.options.parallel == 2
    plan.save(tmp_path / "again.yaml")
    again = load_plan(tmp_path / "again.yaml")
    assert again.fingerprint() == plan.fingerprint()
    assert again.inventory[0].name == "db0/slots-00000-16383"


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["options"].update(parallel="four"), "options.parallel"),
    (lambda d: d["options"].update(parallell=3), "options.parallell"),
    (lambda d: d["options"].update(on_existing="merge"), "options.on_existing"),
    (lambda d: d["stores"]["redis"].pop("target"), "stores.redis.target"),
    (lambda d: d["stores"].update(cassandra={}), "stores.cassandra"),
    (lambda d: d["inventory"][0].pop("name"), "inventory[0].name"),
    (lambda d: d["inventory"][0].update(spec="oops"), "inventory[0].spec"),
    (lambda d: d["inventory"][0].update(records="many"), "inventory[0].records"),
    (lambda d: d["options"].update(rate_limit=True), "options.rate_limit"),
    (lambda d: d["options"].update(retries=-1), "options.retries"),
    (lambda d: d.update(version=9), "version"),
    (lambda d: d["stores"]["redis"]["source"].update(url="redis://u:hunter2@h:1"),
     "stores.redis.source.url"),
    (lambda d: d["stores"]["redis"]["source"].update(password="hunter2"),
     "stores.redis.source.password"),
])
def test_a_malformed_plan_error_names_the_field(tmp_path, mutate, field):
    error = bad(tmp_path, mutate)
    assert error.field == field
    assert "hunter2" not in str(error)


def test_an_edited_inventory_is_refused_even_before_the_first_run(tmp_path):
    path = write(tmp_path, GOOD)
    text = path.read_text().replace("records: 1", "records: 2")
    path.write_text(text)
    with pytest.raises(PlanChanged, match="edited after"):
        load_plan(path)


def test_a_plan_without_integrity_hash_is_refused(tmp_path):
    with pytest.raises(PlanChanged, match="no integrity hash"):
        load_plan(write(tmp_path, GOOD, seal=False))


def test_a_saved_plan_carries_a_hash_that_loads(tmp_path):
    plan = load_plan(write(tmp_path, GOOD))
    plan.options.parallel = 7  # options are free to edit
    plan.save(tmp_path / "saved.yaml")
    assert load_plan(tmp_path / "saved.yaml").options.parallel == 7


def test_redaction_hides_literal_passwords_but_shows_references():
    assert redact_url("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://u:${PW}@h:1/0") == "redis://u:${PW}@h:1/0"


def test_secret_references_resolve_only_when_connecting(monkeypatch):
    endpoint = Endpoint("redis", "redis://reader:${PW}@127.0.0.1:6379/0", name="source.redis")
    monkeypatch.setenv("PW", "p@ss:w/rd")
    assert endpoint.connection().password == "p@ss:w/rd"
    assert "p@ss" not in repr(endpoint) and "p@ss" not in endpoint.label
    monkeypatch.delenv("PW")
    with pytest.raises(PlanError, match="PW is not set"):
        endpoint.connection()


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_size("50MiB", "x") == 50 << 20
    assert parse_size("20MB/s", "x") == 20_000_000
    assert parse_size(123, "x") == 123
    with pytest.raises(PlanError):
        parse_size("fast", "x")


def test_cli_reports_a_malformed_plan_with_exit_3_and_no_traceback(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["options"]["parallel"] = "four"
    path = write(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "migrator", "verify", str(path)],
                          capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 3
    assert "options.parallel" in proc.stderr and "Traceback" not in proc.stderr


EXAMPLES = sorted((Path(__file__).parents[1] / "plans").glob("example-*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans_stay_valid(path):
    plan = load_plan(path)
    assert plan.stores and all("${" in p.source.url or "@" not in p.source.url
                               for p in plan.stores.values())


def test_the_published_schema_is_the_one_plans_are_checked_against():
    import json

    from migrator.plan_schema import plan_schema

    published = Path(__file__).parents[1] / "docs" / "plan.schema.json"
    assert json.loads(published.read_text()) == json.loads(json.dumps(plan_schema())), (
        "regenerate it: python -m migrator schema > docs/plan.schema.json")
