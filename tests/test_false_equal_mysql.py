"""False EQUAL, MySQL: through the command line against real MariaDB servers, each way
`verify` could once say EQUAL while data or definitions were missing, and the faults that
left row files behind or hung on a stalled target. Each case changes the source or the
target after `plan` or `run` and checks what `run` and `verify` now say."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

from fixtures import mysql_data
from migrator.config import Endpoint

ROOT = Path(__file__).resolve().parents[1]
DB = "oimfe_mysql"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


class Servers:
    """Admin connections to the source and the target, and the plan's endpoint URLs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def connect(self, side: str) -> Any:
        host, port = hostport(self.env[f"OIM_MYSQL_{side}_URL"]).split(":")
        return pymysql.connect(host=host, port=int(port), user=self.env[f"OIM_MYSQL_{side}_USER"],
                               password=self.env[f"OIM_MYSQL_{side}_PASSWORD"], autocommit=True,
                               charset="utf8mb4")

    def sql(self, side: str, query: str, args: Any = None) -> list[tuple]:
        conn = self.connect(side)
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def plan_args(self) -> list[str]:
        return ["--source", "mysql=mysql://${OIM_MYSQL_SRC_USER}:${OIM_MYSQL_SRC_PASSWORD}@"
                + hostport(self.env["OIM_MYSQL_SRC_URL"]) + f"/{DB}",
                "--target", "mysql=mysql://${OIM_MYSQL_DST_USER}:${OIM_MYSQL_DST_PASSWORD}@"
                + hostport(self.env["OIM_MYSQL_DST_URL"])]

    def load(self, scale: float = 0.2, objects: bool = False,
             definer: str | None = None) -> None:
        fixture = Endpoint("mysql", self.env["OIM_MYSQL_SRC_URL"].replace(
            "mysql://", "mysql://${OIM_MYSQL_SRC_USER}:${OIM_MYSQL_SRC_PASSWORD}@") + f"/{DB}",
            name="fixture")
        mysql_data.load(fixture, seed=11, scale=scale)
        if objects:
            mysql_data.add_objects(fixture, definer=definer)

    def drop(self) -> None:
        for side in ("SRC", "DST"):
            self.sql(side, f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture
def servers(mysql_env: dict[str, str]) -> Any:
    s = Servers(mysql_env)
    s.drop()
    yield s
    s.drop()


def planned(servers: Servers, tmp_path: Path, *extra: str) -> Path:
    plan = tmp_path / "m.yaml"
    out = cli("plan", *servers.plan_args(), *extra, "-o", str(plan))
    assert out.returncode == 0, out.stderr
    return plan


def report_of(out: subprocess.CompletedProcess) -> dict[str, Any]:
    assert out.stdout, out.stderr
    return json.loads(out.stdout)


def schema_lines(report: dict[str, Any]) -> list[str]:
    return [f"{u['unit']}: {line}" for u in report["units"] for line in u["schema"]]


def run_ok(plan: Path, *extra: str) -> dict[str, Any]:
    out = cli("run", str(plan), "--json", *extra)
    assert out.returncode == 0, out.stderr + out.stdout
    report = report_of(out)
    assert report["verify"]["ok"] is True
    return report


def journal(plan: Path) -> Path:
    return plan.with_name(plan.stem + ".journal.sqlite")


def journal_records(plan: Path) -> int:
    path = journal(plan)
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COALESCE(SUM(records), 0) FROM units").fetchone()[0])
    except sqlite3.Error:
        return 0


# ------------------------------------------------------------------ schema drift
def test_a_column_added_after_plan_arrives_with_its_values(servers, tmp_path):
    servers.load()
    plan = planned(servers, tmp_path)
    servers.sql("SRC", f"ALTER TABLE {DB}.users ADD COLUMN tier INT NOT NULL DEFAULT 0")
    servers.sql("SRC", f"UPDATE {DB}.users SET tier = CRC32(user_id) % 7 + 1")
    run_ok(plan)  # before: the column was made on the target but every row held 0
    query = f"SELECT user_id, tier FROM {DB}.users ORDER BY user_id"
    assert servers.sql("DST", query) == servers.sql("SRC", query)
    [(first,)] = servers.sql("SRC", f"SELECT MIN(user_id) FROM {DB}.users")
    servers.sql("DST", f"UPDATE {DB}.users SET tier = 0 WHERE user_id = %s", (first,))
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    assert {k for u in report_of(check)["units"] for k in u["differ"]} == {first}


def test_a_column_added_after_the_run_is_named_by_verify(servers, tmp_path):
    servers.load()
    plan = planned(servers, tmp_path)
    run_ok(plan)
    servers.sql("SRC", f"ALTER TABLE {DB}.groups ADD COLUMN archived TINYINT DEFAULT 1")
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    lines = schema_lines(report_of(check))
    assert any(line.startswith(f"mysql:{DB}.groups: columns.archived: only on source")
               for line in lines), lines


def test_a_narrowed_or_deleted_unit_is_a_plan_error(servers, tmp_path):
    servers.load()
    plan = planned(servers, tmp_path, "--unit-records", "200")
    raw = yaml.safe_load(plan.read_text())
    chat = [u for u in raw["inventory"] if u["name"].startswith(f"{DB}.chat_logs#")]
    assert len(chat) == 3
    original = plan.read_text()
    chat[1]["spec"]["hi"] = chat[0]["spec"]["hi"]  # narrowed to nothing
    plan.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = cli("verify", str(plan))
    assert out.returncode == 3, out.stderr
    assert f"{DB}.chat_logs: unit {chat[1]['name']} covers no key" in out.stderr
    assert "Traceback" not in out.stderr
    raw = yaml.safe_load(original)
    raw["inventory"] = [u for u in raw["inventory"] if u["name"] != chat[0]["name"]]
    plan.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = cli("run", str(plan))
    assert out.returncode == 3, out.stderr
    assert f"{DB}.chat_logs: keys from the lowest key to " in out.stderr
    assert servers.sql("DST", f"SHOW DATABASES LIKE '{DB}'") == []  # nothing written


def test_a_table_created_after_plan_even_empty_is_named(servers, tmp_path):
    servers.load()
    plan = planned(servers, tmp_path)
    run_ok(plan)
    servers.sql("SRC", f"CREATE TABLE {DB}.born_later (id INT PRIMARY KEY)")
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5
    assert f"{DB}.born_later" in {k for u in report_of(check)["units"]
                                  for k in u["missing_on_target"]}
    again = cli("run", str(plan))
    assert again.returncode == 3 and f"{DB}.born_later" in again.stderr


# ------------------------------------------------------------------ schema objects
def test_views_triggers_routines_and_events_are_copied_and_compared(servers, tmp_path):
    servers.load(objects=True)
    plan = planned(servers, tmp_path)
    run_ok(plan)
    for table, column in (("VIEWS", "TABLE_SCHEMA"), ("TRIGGERS", "TRIGGER_SCHEMA"),
                          ("ROUTINES", "ROUTINE_SCHEMA"), ("EVENTS", "EVENT_SCHEMA")):
        query = f"SELECT COUNT(*) FROM information_schema.{table} WHERE {column} = %s"
        assert servers.sql("DST", query, (DB,)) == servers.sql("SRC", query, (DB,)) != [(0,)]
    # the audit trigger was made after the data: no audit row for an imported user
    audit = f"SELECT COUNT(*) FROM {DB}.user_audit"
    assert servers.sql("DST", audit) == servers.sql("SRC", audit) == [(25,)]
    for query in (f"DROP VIEW {DB}.active_users", f"DROP TRIGGER {DB}.users_trim",
                  f"DROP EVENT {DB}.purge_audit", f"DROP FUNCTION {DB}.user_label",
                  f"CREATE FUNCTION {DB}.user_label(uid VARCHAR(64)) RETURNS VARCHAR(80)"
                  " DETERMINISTIC RETURN uid"):
        servers.sql("DST", query)
    check = cli("verify", str(plan), "--json")
    assert check.returncode == 5, check.stderr
    lines = schema_lines(report_of(check))
    for name in (f"view {DB}.active_users: only on source",
                 f"trigger {DB}.users_trim: only on source",
                 f"event {DB}.purge_audit: only on source",
                 f"function {DB}.user_label.create: source="):
        assert any(f"mysql:(definitions): {name}" in line for line in lines), (name, lines)


def test_a_rerun_does_not_fire_triggers_on_imported_rows(servers, tmp_path):
    servers.load(objects=True)
    plan = planned(servers, tmp_path)
    run_ok(plan)
    run_ok(plan, "--restart")  # the triggers exist on the target now
    audit = f"SELECT COUNT(*) FROM {DB}.user_audit"
    assert servers.sql("DST", audit) == servers.sql("SRC", audit) == [(25,)]


def test_a_definer_missing_on_the_target_is_rewritten_and_reported(servers, tmp_path):
    servers.sql("SRC", "CREATE OR REPLACE USER 'oimfe_owner'@'%'")
    try:
        servers.sql("SRC", f"CREATE DATABASE IF NOT EXISTS {DB}")
        servers.sql("SRC", f"GRANT ALL ON {DB}.* TO 'oimfe_owner'@'%'")
        servers.load(objects=True, definer="oimfe_owner@%")
        plan = planned(servers, tmp_path)
        out = cli("run", str(plan))
        assert out.returncode == 0, out.stderr + out.stdout
        assert (f"view {DB}.active_users: definer oimfe_owner@% does not exist on the target;"
                " created with definer") in out.stderr
        assert servers.sql("DST", "SELECT DISTINCT DEFINER FROM information_schema.ROUTINES"
                                  " WHERE ROUTINE_SCHEMA = %s", (DB,)) != [("oimfe_owner@%",)]
        assert cli("verify", str(plan)).returncode == 0  # the rewrite is not a difference
    finally:
        servers.sql("SRC", "DROP USER IF EXISTS 'oimfe_owner'@'%'")


def test_objects_a_reader_cannot_see_are_plan_warnings_that_strict_refuses(servers,
                                                                          tmp_path):
    servers.load(objects=True)
    reader = ["--source", "mysql=mysql://${OIM_MYSQL_SRC_READER_USER}:"
              "${OIM_MYSQL_SRC_READER_PASSWORD}@" + hostport(servers.env["OIM_MYSQL_SRC_URL"])
              + f"/{DB}", *servers.plan_args()[2:]]
    plan = tmp_path / "reader.yaml"
    out = cli("plan", *reader, "-o", str(plan))
    assert out.returncode == 0, out.stderr
    assert "NOT copied nor verified: triggers of" in out.stderr
    assert "without the EVENT privilege" in out.stderr
    # and `plan` says which write guard the cutover may use, before any cutover
    assert "write freeze guard: none (account reader@" in out.stdout + out.stderr
    assert "that needs READ_ONLY ADMIN" in out.stdout + out.stderr
    root = cli("plan", *servers.plan_args(), "-o", str(tmp_path / "root.yaml"))
    assert "write freeze guard: available" in root.stdout + root.stderr
    strict = cli("plan", *reader, "--strict", "-o", str(tmp_path / "strict.yaml"))
    assert strict.returncode == 3, strict.stderr
    assert "--strict" in strict.stderr and not (tmp_path / "strict.yaml").exists()


# ------------------------------------------------------------------ faults
def test_no_row_file_is_left_in_the_temp_dir_by_a_killed_run(servers, tmp_path):
    servers.load(scale=0.5)
    plan = planned(servers, tmp_path, "--batch-records", "50")
    private = tmp_path / "tmp"
    private.mkdir()
    env = {**os.environ, "TMPDIR": str(private)}
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "run", str(plan), "--no-verify",
                             "--rate-limit", "300KB"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while journal_records(plan) < 500 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert sorted(p.name for p in private.iterdir() if p.name.startswith("oim-mysql-")) == []
    out = subprocess.run([sys.executable, "-m", "migrator", "run", str(plan), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and report_of(out)["verify"]["ok"] is True, out.stderr
    assert list(private.iterdir()) == []


def test_a_stalled_target_is_retried_and_the_copy_completes(servers, tmp_path):
    servers.load(scale=0.5)
    plan = planned(servers, tmp_path, "--target-option", "mysql.timeout=2",
                   "--batch-records", "100")
    [(pid_file,)] = servers.sql("DST", "SELECT @@pid_file")
    pid = int(Path(pid_file).read_text().strip())
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "run", str(plan), "--json",
                             "--rate-limit", "250KB", "--parallel", "2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while journal_records(plan) < 300 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the target could be stalled"
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(6)
    finally:
        os.kill(pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr + stdout
    assert json.loads(stdout)["verify"]["ok"] is True
    with sqlite3.connect(journal(plan)) as db:
        retries = db.execute("SELECT detail FROM events WHERE kind = 'retry'").fetchall()
    assert retries and any("timed out" in detail for (detail,) in retries), retries
