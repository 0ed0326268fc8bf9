"""Prometheus metrics, JSON logs and the Grafana dashboard: the metrics are read over real
HTTP from the server the code starts, and the dashboard may only query what the code
exports."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from migrator.engine.verify import UnitReport, VerifyReport
from migrator.metrics import METRIC_NAMES, JsonFormatter, Metrics, Tee

ROOT = Path(__file__).resolve().parents[1]
UNITS = ["redis:db0/slots-00000-08191", "redis:db0/slots-08192-16383", "mongo:openim_v3.msg"]


def samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def a_run() -> Metrics:
    """A run as the engine reports it: three units, one retried, one failed, then verify."""
    m = Metrics("run", plan="prod")
    m.pending(UNITS)
    m.start(300, 3000)
    m.unit_started(UNITS[0], 100, 1000, done=40)  # resumed: 40 records from an earlier run
    m.advance(UNITS[0], 60, 600)
    m.unit_finished(UNITS[0], "copied")
    m.unit_started(UNITS[1], 100, 1000)
    m.retried(UNITS[1], "connection reset")
    m.advance(UNITS[1], 100, 1000)
    m.unit_finished(UNITS[1], "copied")
    m.unit_started(UNITS[2], 100, 1000)
    m.unit_finished(UNITS[2], "failed")
    m.verified(VerifyReport(units=[
        UnitReport(UNITS[0], "redis"),
        UnitReport(UNITS[1], "redis", status="differ", n_missing_on_target=2, n_differ=1)]))
    m.finished(ok=True)
    return m


def test_metrics_endpoint_over_http_has_one_labelled_sample_per_unit():
    m = a_run()
    port = m.serve(0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
    finally:
        m.stop_serving()
    got = samples(text)
    per_unit = {s.labels["unit"]: s.value for s in got["openim_migrate_unit_records_done"]}
    assert per_unit == {UNITS[0]: 100, UNITS[1]: 100, UNITS[2]: 0}  # one sample per unit
    assert all(s.labels["store"] == s.labels["unit"].split(":")[0] and
               s.labels["command"] == "run" for s in got["openim_migrate_unit_records_done"])
    by_store = {s.labels["store"]: s.value for s in got["openim_migrate_records_total"]}
    assert by_store == {"redis": 160}  # this process copied 60 + 100
    assert {s.labels["store"]: s.value for s in got["openim_migrate_bytes_total"]} == {
        "redis": 1600}
    assert [(s.labels["store"], s.value) for s in got["openim_migrate_retries_total"]] == [
        ("redis", 1)]
    errors = {s.labels["store"]: s.value for s in got["openim_migrate_errors_total"]}
    assert errors == {"mongo": 1}
    states = {s.labels["state"]: s.value for s in got["openim_migrate_units"]}
    assert states == {"pending": 0, "copying": 0, "copied": 0, "failed": 1, "verified": 1,
                      "differs": 1}
    diffs = {(s.labels["unit"], s.labels["kind"]): s.value
             for s in got["openim_migrate_verify_differences"]}
    assert diffs[(UNITS[1], "missing_on_target")] == 2 and diffs[(UNITS[1], "differ")] == 1
    assert diffs[(UNITS[0], "missing_on_target")] == 0
    assert got["openim_migrate_last_success_timestamp_seconds"][0].value > 1.7e9
    assert got["openim_migrate_duration_seconds"][0].value >= 0
    info = got["openim_migrate_info"][0].labels
    assert info["plan"] == "prod" and info["command"] == "run"


def test_textfile_and_failed_command_leave_last_success_unset(tmp_path):
    m = Metrics("verify", plan="prod")
    m.pending(UNITS[:1])
    m.finished(ok=False)
    path = tmp_path / "openim_migrate.prom"
    m.write_textfile(path)
    got = samples(path.read_text())
    assert "openim_migrate_last_success_timestamp_seconds" not in got
    assert [s.labels["unit"] for s in got["openim_migrate_unit_records_done"]] == UNITS[:1]


def test_tee_forwards_progress_to_every_observer():
    m1, m2 = Metrics("run"), Metrics("run")
    tee = Tee(m1, None, m2)
    tee.unit_started(UNITS[0], 10, 10)
    tee.advance(UNITS[0], 5, 50)
    for m in (m1, m2):
        assert m.registry.get_sample_value("openim_migrate_records_total",
                                           {"command": "run", "store": "redis"}) == 5


def test_json_log_lines_are_one_object_each_with_extra_fields():
    record = logging.LogRecord("migrator.events", logging.INFO, __file__, 1, "unit finished",
                               None, None)
    record.unit, record.state = UNITS[0], "copied"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "unit finished" and data["level"] == "info"
    assert data["unit"] == UNITS[0] and data["state"] == "copied"


def exported_names() -> set[str]:
    """Every sample name a fully used registry exposes (so METRIC_NAMES cannot lie)."""
    names = set()
    for family in a_run().registry.collect():
        names.update(s.name for s in family.samples)
    return names


def test_metric_names_list_what_the_code_exports():
    names = exported_names()
    assert set(METRIC_NAMES) <= names
    assert {n for n in names if not n.endswith("_created")} == set(METRIC_NAMES)


def test_grafana_dashboard_is_json_and_queries_only_exported_metrics():
    dashboards = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert dashboards, "no dashboard under deploy/grafana/"
    names = exported_names()
    for path in dashboards:
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        exprs += [v["definition"] for v in dash.get("templating", {}).get("list", [])
                  if v.get("definition")]
        queried = {m for e in exprs for m in re.findall(r"\bopenim_migrate_[a-z_]+", e)}
        assert queried, f"{path.name} queries no openim_migrate metric"
        assert queried <= names, f"{path.name} queries unknown metrics {queried - names}"
        # and every exported series has a panel
        assert set(METRIC_NAMES) <= queried, set(METRIC_NAMES) - queried


def test_run_and_verify_write_metrics_and_json_logs(redis_env, tmp_path):
    """The wiring: `run` and `verify` through the CLI against real Redis servers."""
    import os
    import subprocess
    import sys

    import redis

    def cli(*args: str):
        return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env=os.environ)

    def hostport(url: str) -> str:
        return url.split("://", 1)[1].split("/", 1)[0]

    src = redis.Redis.from_url("redis://" + hostport(redis_env["OIM_REDIS_SRC_URL"]) + "/3",
                               password=redis_env["OIM_REDIS_SRC_PASSWORD"])
    dst = redis.Redis.from_url("redis://" + hostport(redis_env["OIM_REDIS_DST_URL"]) + "/3",
                               password=redis_env["OIM_REDIS_DST_PASSWORD"])
    src.flushdb()
    dst.flushdb()
    src.mset({f"metrics:{i}": str(i) for i in range(50)})
    plan = tmp_path / "m.yaml"
    out = cli("plan", "--source", "redis=redis://:${OIM_REDIS_SRC_PASSWORD}@"
              + hostport(redis_env["OIM_REDIS_SRC_URL"]) + "/3",
              "--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
              + hostport(redis_env["OIM_REDIS_DST_URL"]) + "/3", "-o", str(plan))
    assert out.returncode == 0, out.stderr
    prom = tmp_path / "run.prom"
    run = cli("run", str(plan), "--no-progress", "--metrics-file", str(prom),
              "--log-format", "json")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert {"unit_started", "unit_finished", "finished"} <= {e.get("event") for e in events}
    got = samples(prom.read_text())
    units = {s.labels["unit"]: s.value for s in got["openim_migrate_unit_records_done"]}
    assert units and sum(units.values()) == 50
    assert got["openim_migrate_last_success_timestamp_seconds"][0].value > 0

    dst.delete("metrics:7")
    prom2 = tmp_path / "verify.prom"
    check = cli("verify", str(plan), "--metrics-file", str(prom2))
    assert check.returncode == 5, check.stderr
    diffs = [s for s in samples(prom2.read_text())["openim_migrate_verify_differences"]
             if s.labels["kind"] == "missing_on_target" and s.value == 1]
    assert len(diffs) == 1 and diffs[0].labels["unit"] in units
    src.flushdb()
    dst.flushdb()
