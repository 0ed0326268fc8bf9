"""`cutover` through the command line: a real Redis source and target (tests/conftest.py),
a real kube-apiserver holding OpenIM's objects (tests/k8s_fixtures.py), and a thread that
plays the Deployment controller (scripts/demo_cutover.py) where a rollout should finish.

The freeze command writes a marker file (the "writers stopped"), the unfreeze command
removes it, so each test can see whether the source was left frozen or writable."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.k8s_fixtures import k8s_cluster_fixture, k8s_ns_fixture  # noqa: F401
from tests.test_cutover_switch import demo

ROOT = Path(__file__).resolve().parents[1]
DB = 3  # a DB of its own on the shared test servers


def cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process (the kubernetes client takes seconds to import;
    once per test process is enough), with exit code, stdout and stderr as a subprocess
    would show them."""
    from migrator.cli import main

    saved_term = signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, saved_term)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def killed_at(step: str, *args: str) -> subprocess.CompletedProcess:
    """A real process, killed with SIGKILL right after the journal records ``step``."""
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=180, stdin=subprocess.DEVNULL,
                          env={**os.environ, "OIM_CUTOVER_KILL_AT": step})


def error_line(stderr: str) -> str:
    """The one line that names the problem (progress lines come before it)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def journal(plan: Path) -> dict:
    path = plan.with_name(plan.stem + ".journal.sqlite")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'cutover'").fetchone()
    return json.loads(row[0]) if row else {}


def events(plan: Path, kind: str) -> list[str]:
    path = plan.with_name(plan.stem + ".journal.sqlite")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [d for (d,) in db.execute("SELECT detail FROM events WHERE kind = ?", (kind,))]


class Setup:
    """A copied and verified Redis plan with a staging cutover section, and OpenIM's objects
    in a namespace of their own."""

    def __init__(self, env: dict[str, str], cluster, ns: str, tmp: Path) -> None:
        self.env, self.cluster, self.ns, self.tmp = env, cluster, ns, tmp
        self.kube = cluster.kube()
        self.marker, self.started, self.slow = tmp / "frozen", tmp / "started", tmp / "slow"
        self.src, self.dst = self.client("SRC"), self.client("DST")
        for side in (self.src, self.dst):
            side.flushdb()
        for i in range(200):
            self.src.set(f"UID_PID_TOKEN_STATUS:u{i}:web", f"token-{i}")
        self.src.hset("MALLOC_SEQ:si_1_2", mapping={"CURR": 10, "LAST": 20})
        demo.create_openim_objects(self.kube, ns)
        self.original = {kind: self.data(kind, name) for kind, name in self.objects}

    objects = (("ConfigMap", "openim-config"), ("Secret", "openim-redis-secret"))

    def client(self, side: str, timeout: float = 5) -> redis.Redis:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        host, port = hostport(self.env[f"OIM_REDIS_{side}_URL"]).split(":")
        return redis.Redis(host, int(port), db=DB, socket_timeout=timeout,
                           retry=Retry(NoBackoff(), 0),  # a timeout is the answer here
                           password=self.env[f"OIM_REDIS_{side}_PASSWORD"])

    def source_url(self, user: str = "", password_var: str = "OIM_REDIS_SRC_PASSWORD") -> str:
        return (f"redis://{user}:${{{password_var}}}@{hostport(self.env['OIM_REDIS_SRC_URL'])}"
                f"/{DB}")

    def plan(self, name: str = "p", source: str | None = None, *extra: str) -> Path:
        plan = self.tmp / f"{name}.yaml"
        target = (f"redis://:${{OIM_REDIS_DST_PASSWORD}}@{hostport(self.env['OIM_REDIS_DST_URL'])}"
                  f"/{DB}")
        out = cli("plan", "--source", f"redis={source or self.source_url()}", "--target",
                  f"redis={target}", "-o", str(plan), *extra)
        assert out.returncode == 0, out.stderr
        self.plan_output = out.stdout
        run = cli("run", str(plan))
        assert run.returncode == 0, run.stderr + run.stdout
        self.set_cutover(plan)
        return plan

    def section(self, **changes) -> dict:
        sh = "/bin/sh"
        section = demo.cutover_section(
            self.ns, ["redis"], kubeconfig=self.cluster.kubeconfig,
            freeze=[sh, "-c", f"touch {self.started}; [ -e {self.slow} ] && echo $$ > "
                    f"{self.slow} && exec sleep 60; echo writers stopped; touch {self.marker}"],
            unfreeze=[sh, "-c", f"echo writers started; rm -f {self.marker} {self.started}"],
            secrets={"openim-redis-secret": {"redis-password": "${OIM_REDIS_DST_PASSWORD}"}})
        section.update(changes)
        return section

    def set_cutover(self, plan: Path, environment: str = "staging", **changes) -> None:
        demo.add_cutover(plan, environment, self.section(**changes))

    def data(self, kind: str, name: str) -> dict:
        read = (self.kube.core.read_namespaced_config_map if kind == "ConfigMap"
                else self.kube.core.read_namespaced_secret)
        return dict(read(name, self.ns).data or {})

    def switched_in_cluster(self) -> bool:
        """True when every object holds the switch's values, False when every object is
        as it was; anything in between fails the test (a half-done switch)."""
        redis_yml = self.data("ConfigMap", "openim-config")["redis.yml"]
        password = base64.b64decode(self.data("Secret", "openim-redis-secret")["redis-password"])
        if "im-redis-master" in redis_yml:
            assert password.decode() == self.env["OIM_REDIS_DST_PASSWORD"]
            return True
        assert {k: self.data(k, n) for k, n in self.objects} == self.original  # every byte
        return False

    def assert_agree(self, plan: Path, state: str) -> None:
        """Journal and cluster agree; the source is frozen exactly when switched."""
        assert journal(plan)["state"] == state
        assert self.switched_in_cluster() is (state == "switched")
        assert self.marker.exists() is (state == "switched")

    def generation(self) -> int:
        return self.kube.apps.read_namespaced_deployment("openim-api", self.ns).metadata.generation


@pytest.fixture
def setup(redis_env, k8s_cluster, k8s_ns, tmp_path):
    s = Setup(redis_env, k8s_cluster, k8s_ns, tmp_path)
    yield s
    for side in (s.src, s.dst):
        side.close()


def test_staging_cutover_syncs_switches_reports_the_window_and_rolls_back(setup):
    plan = setup.plan()
    # written after the last verify: the sync pass before the freeze carries them over
    setup.src.set("FCM_TOKEN:late:1", "new")
    setup.src.hset("MALLOC_SEQ:si_1_2", "CURR", 11)
    # the stopping writers' last write, made by the freeze command itself: only the final
    # pass inside the freeze, which follows what the source named since, carries it over
    host, port = hostport(setup.env["OIM_REDIS_SRC_URL"]).split(":")
    section = setup.section()
    sh, flag, script = section["freeze"]["command"]
    section["freeze"]["command"] = [
        sh, flag, f'REDISCLI_AUTH="$OIM_REDIS_SRC_PASSWORD" redis-cli -h {host} -p {port} '
        f"-n {DB} SET FCM_TOKEN:last:1 at-freeze >/dev/null && {script}"]
    setup.set_cutover(plan, freeze=section["freeze"])
    metrics = setup.tmp / "cutover.prom"
    with demo.DeploymentController(setup.kube, setup.ns):
        out = cli("cutover", str(plan), "--json", "--metrics-file", str(metrics))
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    assert report["action"] == "switched" and report["state"] == "switched"
    assert list(report["steps"]) == ["freeze", "sync", "verify", "switch", "rollout"]
    assert sum(report["steps"].values()) <= report["freeze_window_seconds"] < 60
    samples = dict(line.rsplit(" ", 1) for line in metrics.read_text().splitlines()
                   if line.startswith("openim_migrate_cutover"))
    assert abs(float(samples["openim_migrate_cutover_freeze_window_seconds"])
               - report["freeze_window_seconds"]) < 0.01
    assert float(samples['openim_migrate_cutover_step_seconds{step="verify"}']) > 0
    # the final pass followed the source's changes since the pass before the freeze: it
    # compared (and verify compared again) the one key the freeze command wrote, no chunk
    assert any("following the changes of redis" in n for n in report["notes"]), report
    units = [u for u in report["verify"]["units"] if "(" not in u["unit"]]
    assert units and all(u["rechecked"] == [] for u in units), units
    assert sum(u["rechecked_records"] for u in units) == 1, units
    assert samples['openim_migrate_cutover_state{state="switched"}'] == "1.0"
    setup.assert_agree(plan, "switched")
    assert setup.dst.get("FCM_TOKEN:late:1") == b"new"
    assert setup.dst.hget("MALLOC_SEQ:si_1_2", "CURR") == b"11"
    assert setup.dst.get("FCM_TOKEN:last:1") == b"at-freeze"
    assert any("writers stopped" in e for e in events(plan, "cutover-command"))
    journal_bytes = plan.with_name("p.journal.sqlite").read_bytes()
    for secret in (setup.env["OIM_REDIS_DST_PASSWORD"], "old-standalone-password"):
        assert secret.encode() not in journal_bytes and secret not in out.stdout + out.stderr

    again = cli("cutover", str(plan), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["action"] == "already-switched"
    # EQUAL is a promise after the cutover too: a target change is named by verify
    setup.dst.set("UID_PID_TOKEN_STATUS:u7:web", "tampered")
    verify = cli("verify", str(plan))
    assert verify.returncode == 5 and "UID_PID_TOKEN_STATUS:u7:web" in verify.stdout

    restarts = setup.generation()
    with demo.DeploymentController(setup.kube, setup.ns):
        back = cli("cutover", str(plan), "--rollback")
    assert back.returncode == 0, back.stderr + back.stdout
    setup.assert_agree(plan, "rolled-back")
    assert setup.generation() == restarts + 1  # OpenIM restarted on the old configuration


def test_cutover_killed_at_each_step_ends_switched_or_rolled_back(setup):
    plan = setup.plan()
    with demo.DeploymentController(setup.kube, setup.ns):
        # 1. during a slow freeze command
        setup.slow.touch()
        setup.started.unlink(missing_ok=True)  # only this run's freeze command may create it
        proc = subprocess.Popen([sys.executable, "-m", "migrator", "cutover", str(plan)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300  # a loaded machine starts Python slowly
        while not setup.started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert setup.started.exists(), "the freeze command never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while not setup.slow.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert setup.slow.read_text().strip(), "the slow freeze command wrote no pid"
        os.kill(int(setup.slow.read_text()), signal.SIGKILL)  # the command's orphan
        setup.slow.unlink()
        assert journal(plan)["state"] == "freezing"
        again = cli("cutover", str(plan), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["resumed_from"] == "freezing"
        setup.assert_agree(plan, "switched")
        assert cli("cutover", str(plan), "--rollback").returncode == 0
        setup.assert_agree(plan, "rolled-back")

        # 2. frozen and proven, not switched: the store guard still holds writes
        killed = killed_at("verified", "cutover", str(plan))
        assert killed.returncode == -signal.SIGKILL and journal(plan)["state"] == "verified"
        assert not setup.switched_in_cluster()
        probe = setup.client("SRC", timeout=1)
        with pytest.raises(redis.exceptions.TimeoutError):
            probe.set("probe", "while frozen")  # CLIENT PAUSE ... WRITE holds it
        assert cli("cutover", str(plan), "--rollback").returncode == 0
        setup.assert_agree(plan, "rolled-back")
        probe = setup.client("SRC", timeout=2)
        assert probe.set("probe", "after rollback")  # writable again
        probe.delete("probe")

        # 3. one object patched, the other not yet
        killed = killed_at("patched", "cutover", str(plan))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert journal(plan)["state"] == "switching"
        again = cli("cutover", str(plan), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["resumed_from"] == "switching"
        setup.assert_agree(plan, "switched")

        # 4. killed in the middle of a rollback: the next cutover finishes the rollback
        killed = killed_at("restored", "cutover", str(plan), "--rollback")
        assert killed.returncode == -signal.SIGKILL and journal(plan)["state"] == "rolling-back"
        finish = cli("cutover", str(plan))
        assert finish.returncode == 1
        assert "the rollback is now finished" in finish.stderr
        setup.assert_agree(plan, "rolled-back")


def test_rollout_that_never_finishes_rolls_back_and_names_the_deployment(setup):
    plan = setup.plan()
    setup.set_cutover(plan, rollout_timeout_seconds=2)
    out = cli("cutover", str(plan))  # no controller: no Deployment ever reports the rollout
    assert out.returncode == 7, out.stderr
    first = error_line(out.stderr)
    assert first.startswith("error: cutover rolled back: not ready after 2s: ")
    assert f"Deployment {setup.ns}/openim-api: status.observedGeneration" in first
    setup.assert_agree(plan, "rolled-back")


def test_production_cutover_needs_the_plan_fingerprint_and_a_refusal_writes_nothing(setup):
    plan = setup.plan()
    setup.set_cutover(plan, "production")
    check = cli("cutover", str(plan), "--check")  # needs no approval, changes nothing
    fingerprint = cli("cutover", str(plan), "--fingerprint").stdout.strip()
    assert check.returncode == 0 and f"cutover fingerprint {fingerprint}" in check.stdout
    assert "pre-check: cluster: 1 ConfigMap(s), 1 Secret(s)" in check.stdout
    assert journal(plan) == {} and not setup.marker.exists()
    journal_file = plan.with_name("p.journal.sqlite")
    before = hashlib.sha256(journal_file.read_bytes()).hexdigest()
    versions = {n: setup.kube.core.read_namespaced_config_map(n, setup.ns).metadata
                .resource_version for n in ("openim-config",)}

    for args in ([], ["--approve", "0" * 64], ["--approve", "abc"]):
        out = cli("cutover", str(plan), *args)
        assert out.returncode == 8, out.stderr
        assert out.stderr.startswith("error: ") and "nothing was changed" in out.stderr
    assert hashlib.sha256(journal_file.read_bytes()).hexdigest() == before
    assert not list(setup.tmp.glob("*.cutover.lock")) and not setup.marker.exists()
    assert setup.kube.core.read_namespaced_config_map("openim-config", setup.ns).metadata \
        .resource_version == versions["openim-config"]
    assert len(setup.kube.core.list_namespaced_config_map(setup.ns).items) == 1  # no backup

    assert len(fingerprint) == 64
    with demo.DeploymentController(setup.kube, setup.ns):
        out = cli("cutover", str(plan), "--approve", fingerprint[:12])
        assert out.returncode == 0, out.stderr
        setup.assert_agree(plan, "switched")
        # any edit of the cutover section needs a new approval; a rollback needs none
        setup.set_cutover(plan, "production", max_lag_records=5)
        assert cli("cutover", str(plan), "--rollback").returncode == 0
    assert cli("cutover", str(plan), "--approve", fingerprint).returncode == 8


def test_bad_input_is_one_line_naming_the_problem_and_freezes_nothing(setup):
    plan = setup.plan()

    def first_line(**changes) -> str:
        section = setup.section(**changes)
        demo.add_cutover(plan, "staging", section)
        out = cli("cutover", str(plan))
        assert out.returncode == 3, out.stderr
        assert not setup.marker.exists() and not setup.started.exists()
        return error_line(out.stderr)

    section = setup.section()
    del section["freeze"]["command"]
    assert first_line(freeze=section["freeze"]) == "error: cutover.freeze.command: missing"
    configmaps = [{"name": "nope", "files": {"redis.yml": {"address": ["x:1"]}}}]
    assert first_line(configmaps=configmaps) == (
        f"error: cutover.configmaps[0].name: ConfigMap {setup.ns}/nope does not exist")
    configmaps = [{"name": "openim-config", "files": {"redis.yml": {"adress": ["x:1"]}}}]
    assert first_line(configmaps=configmaps) == (
        f"error: cutover.configmaps[0].files.redis.yml: ConfigMap {setup.ns}/openim-config: "
        "redis.yml has no key 'adress'")

    assert first_line(max_check_age_seconds=0.001).startswith(
        "error: cutover.max_check_age_seconds: the last verify or sync of redis:")
    setup.src.set("FCM_TOKEN:late:2", "x")
    assert cli("sync", str(plan)).returncode == 0  # its pass copied 1 record: the lag
    assert first_line(max_lag_records=0) == (
        "error: cutover.max_lag_records: the lag estimate is 1 record(s) (what the last sync "
        "or verify of each unit found changed), over 0")

    # a guard the account lacks: said by `plan`, named by the pre-check
    reader = setup.plan("r", setup.source_url("${OIM_REDIS_SRC_READER_USER}",
                                              "OIM_REDIS_SRC_READER_PASSWORD"),
                        "--on-existing", "overwrite")
    assert "write freeze guard: none" in setup.plan_output
    out = cli("cutover", str(reader))
    assert out.returncode == 3
    line = error_line(out.stderr)
    assert line.startswith("error: cutover.freeze.guards: redis: the source account cannot "
                           "hold writes") and "CLIENT PAUSE" in line
    assert not setup.marker.exists()
