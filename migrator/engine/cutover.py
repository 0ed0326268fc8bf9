"""`cutover`: freeze the source's writers, bring the target up to date and prove it, switch
OpenIM in the cluster over, and report how long writes were held.

Each step is written to the journal (meta ``cutover``, plus one event per step) before its
effects can start, so a crash leaves a state the next run can finish from::

    pre-checks -> freezing -> frozen -> synced -> verified -> switching -> restarting
               -> switched                   (any failure, Ctrl-C or SIGTERM on the way:)
                                              rolling-back -> rolled-back

* The next ``cutover`` after a crash completes an active cutover (freezing .. restarting):
  it freezes again (the freeze command must be idempotent, as ``docker compose stop`` is),
  syncs and verifies again if the switch had not begun, and re-applies the switch, whose
  backups are taken once and whose patches set the same values again.
* A ``rolling-back`` state is finished by the next run, ``--rollback`` or not. A cutover is
  never left half done: either the cluster runs on the patched objects with the source
  frozen, or everything is restored and the source writable.
* ``--rollback`` restores the saved ConfigMaps and Secrets, restarts the Deployments and
  unfreezes the source, also after a cutover that had ended switched.

The freeze window runs from the start of the freeze to the end of the rollout; it is
reported per step. Nothing secret reaches the journal: Secret values are resolved in memory
and the backups' digests are keyed (migrator.deploy.switch).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrator.config import resolve_refs
from migrator.engine import operations
from migrator.engine.journal import COPIED, DIFFERS, VERIFIED, Journal, journal_path
from migrator.engine.session import Session
from migrator.engine.sync import FOLLOWING, CatchUp, SyncPass
from migrator.engine.verify import MATCH, Proven, VerifyReport, summary
from migrator.errors import (
    ApprovalRefused,
    CapabilityMissing,
    DeployError,
    Interrupted,
    JournalConflict,
    MigrateError,
    PlanError,
    UsageError,
    VerificationFailed,
    VerificationIncomplete,
)
from migrator.plan import Plan
from migrator.stores.base import Store

if TYPE_CHECKING:  # the kubernetes client takes seconds to import
    from migrator.deploy.switch import ConfigMapChange, SecretChange, Switch

FREEZING, FROZEN, SYNCED, VERIFIED_ = "freezing", "frozen", "synced", "verified"
SWITCHING, RESTARTING, SWITCHED = "switching", "restarting", "switched"
ROLLING_BACK, ROLLED_BACK = "rolling-back", "rolled-back"
ACTIVE = (FREEZING, FROZEN, SYNCED, VERIFIED_, SWITCHING, RESTARTING)
STEPS = ("freeze", "sync", "verify", "switch", "rollout")  # the freeze window, in order
META = "cutover"
# Crash tests: SIGKILL this process right after the journal records the named state (or
# "patched": after the first object was patched). Never set in production.
KILL_AT = "OIM_CUTOVER_KILL_AT"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """The plan's ``cutover:`` section, read once (the schema has checked its shape)."""

    freeze_command: list[str]
    unfreeze_command: list[str]
    command_timeout: float
    guards: dict[str, bool]
    max_freeze_seconds: float
    max_check_age: float
    max_lag: int
    kubeconfig: str | None
    context: str | None
    namespace: str
    configmaps: list[ConfigMapChange]
    secrets: list[SecretChange]
    deployments: list[str]
    rollout_timeout: float


def _argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def settings_of(plan: Plan) -> Settings:
    from migrator.deploy.switch import ConfigMapChange, SecretChange

    if not plan.cutover:
        raise PlanError("cutover", "missing: the plan does not say how to freeze the source "
                        "and what to switch", hint="add a cutover: section (docs/cutover.md)")
    if not plan.environment:
        raise PlanError("environment", "missing: a plan with a cutover says staging or "
                        "production", hint="add `environment: staging` (unattended) or "
                        "`environment: production` (needs --approve)")
    c = plan.cutover
    freeze = c["freeze"]
    guards_raw = freeze.get("guards", True)
    guards = {kind: bool(guards_raw.get(kind, True)) if isinstance(guards_raw, dict)
              else bool(guards_raw) for kind in plan.stores}
    kube = c["kubernetes"]
    return Settings(
        freeze_command=_argv(freeze["command"]),
        unfreeze_command=_argv(freeze["unfreeze_command"]),
        command_timeout=float(freeze.get("command_timeout_seconds", 300)),
        guards=guards, max_freeze_seconds=float(freeze.get("max_seconds", 900)),
        max_check_age=float(c.get("max_check_age_seconds", 3600)),
        max_lag=int(c.get("max_lag_records", 10_000)),
        kubeconfig=kube.get("kubeconfig"), context=kube.get("context"),
        namespace=kube["namespace"],
        configmaps=[ConfigMapChange(m["name"], m["files"]) for m in c.get("configmaps") or []],
        secrets=[SecretChange(s["name"], s["keys"]) for s in c.get("secrets") or []],
        deployments=list(c["deployments"]),
        rollout_timeout=float(c.get("rollout_timeout_seconds", 600)))


def approval_fingerprint(plan: Plan) -> str:
    """What a production approval names: the plan's endpoints and units (its journal
    fingerprint), its environment and its whole cutover section. Any edit needs a new one."""
    data = {"plan": plan.fingerprint(), "environment": plan.environment,
            "cutover": plan.cutover}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def approves(given: str | None, fingerprint: str) -> bool:
    """The full fingerprint, or at least its first 12 hex digits (as a git short hash)."""
    text = (given or "").strip().lower()
    return len(text) >= 12 and fingerprint.startswith(text)


def has_guard(store: Store) -> bool:
    """Whether this tool can hold writes on this server at all."""
    return store.has_freeze_guard()


def record_freeze_guard(facts: dict[str, Any], source: Store) -> None:
    """At plan time: which write guard the source's account can use, in the store facts
    (shown by `plan`), so a missing right is seen before the cutover, not during it."""
    try:
        reason = source.freeze_check()
    except MigrateError as exc:
        reason = f"could not be checked ({exc.message})"
    side = facts.setdefault("source", {})
    side["freeze_guard"] = "available" if reason is None else reason
    note = ("write freeze guard: available to this account" if reason is None
            else f"write freeze guard: none ({reason})")
    side["notes"] = [*side.get("notes", []), note]


# ----------------------------------------------------------------------------- outcome
@dataclass
class CutoverOutcome:
    action: str  # switched | rolled-back | already-switched | nothing-to-roll-back | checked
    environment: str
    fingerprint: str
    cutover_id: str | None = None
    state: str | None = None  # the journal's cutover state at the end
    steps: dict[str, float] = field(default_factory=dict)  # seconds per freeze-window step
    window: float | None = None  # seconds from the start of the freeze to the end of switch
    checks: list[str] = field(default_factory=list)  # what the pre-checks found
    notes: list[str] = field(default_factory=list)  # what the steps did or could not do
    resumed_from: str | None = None
    failure: MigrateError | None = None  # what made an automatic rollback happen
    rollback_error: MigrateError | None = None  # the rollback did not finish
    verify: VerifyReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "environment": self.environment,
                "fingerprint": self.fingerprint, "cutover_id": self.cutover_id,
                "state": self.state, "resumed_from": self.resumed_from,
                "freeze_window_seconds": None if self.window is None else round(self.window, 3),
                "steps": {k: round(v, 3) for k, v in self.steps.items()},
                "checks": self.checks, "notes": self.notes,
                "failure": None if self.failure is None else self.failure.message,
                "rollback_error": None if self.rollback_error is None
                else self.rollback_error.message,
                "verify": None if self.verify is None else self.verify.to_dict()}


# ----------------------------------------------------------------------------- journal
class Record:
    """The cutover's state in the journal's meta table (JSON; never a secret)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.data: dict[str, Any] = json.loads(journal.get_meta(META) or "{}")

    @property
    def state(self) -> str | None:
        return self.data.get("state")

    def start(self, environment: str, fingerprint: str) -> None:
        self.data = {"id": secrets.token_hex(4), "state": None, "environment": environment,
                     "fingerprint": fingerprint, "started_at": time.time(),
                     "freeze_started": None, "switched_at": None, "steps": {}, "guards": [],
                     "objects": [], "restarted": False, "reason": None}

    def save(self) -> None:
        self.journal.set_meta(META, json.dumps(self.data, sort_keys=True))

    def set(self, state: str, detail: str = "") -> None:
        self.data["state"] = state
        self.save()
        self.journal.event(None, "cutover", f"{self.data['id']} {state}"
                           + (f": {detail}" if detail else ""))
        failpoint(state)

    def add_step(self, step: str, seconds: float) -> None:
        steps = self.data.setdefault("steps", {})
        steps[step] = steps.get(step, 0.0) + seconds
        self.save()


def failpoint(name: str) -> None:
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def cutover_lock(plan_path: Path) -> Iterator[None]:
    """One cutover per plan at a time. The journal itself is opened shared, because the
    final sync and verify open it too (operations.sync_plan/verify_plan)."""
    path = journal_path(plan_path).with_suffix(".cutover.lock")
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole cutover
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalConflict(f"another cutover of this plan is running (lock {path})",
                                  hint="wait for it to end") from None
        yield
    finally:
        handle.close()


_COUNTS = re.compile(r"(\d+) (?:copied|deleted|missing on target|missing on source|differ)\b")


def last_checks(journal: Journal) -> dict[str, tuple[float, int]]:
    """Per unit, when it was last verified or synced and how many records that check found
    changed (a sync pass's copied + deleted, a verify's differences): the lag estimate."""
    latest: dict[str, tuple[float, int]] = {}
    for ts, unit, kind, detail in journal.events():
        if unit is None or kind not in ("sync", VERIFIED, DIFFERS):
            continue
        changed = sum(int(n) for n in _COUNTS.findall(detail or ""))
        latest[unit] = (ts, changed if kind != DIFFERS else max(1, changed))
    return latest


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else (
        f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s")


# ----------------------------------------------------------------------------- the job
class Cutover:
    """One cutover of one plan: pre-checks, freeze, final sync and verify, switch, and the
    rollback of all of it. The CLI renders what ``run``/``rollback`` return."""

    def __init__(self, plan: Plan, plan_path: Path, *,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.plan_path = plan_path
        self.cfg = settings_of(plan)
        self.environment = str(plan.environment)
        self.fingerprint = approval_fingerprint(plan)
        self.on_event = on_event or (lambda line: None)
        self._switch: Switch | None = None
        self._secret_values: dict[str, dict[str, str]] = {}
        self._frozen_at: float | None = None

    # -- helpers -------------------------------------------------------------------------
    @property
    def switch(self) -> Switch:
        if self._switch is None:
            from migrator.deploy.kube import Kube
            from migrator.deploy.switch import Switch

            self._switch = Switch(Kube.connect(self.cfg.kubeconfig, self.cfg.context),
                                  self.cfg.namespace)
        return self._switch

    def outcome(self, action: str, record: Record | None = None) -> CutoverOutcome:
        out = CutoverOutcome(action, self.environment, self.fingerprint)
        if record is not None and record.data:
            out.cutover_id = record.data.get("id")
            out.state = record.state
            out.steps = {s: record.data["steps"][s] for s in STEPS
                         if s in record.data.get("steps", {})}
            if record.data.get("switched_at") and record.data.get("freeze_started"):
                out.window = record.data["switched_at"] - record.data["freeze_started"]
        return out

    def _journal(self) -> Journal:
        path = journal_path(self.plan_path)
        if not path.exists():
            raise UsageError(f"no journal beside the plan ({path}): a cutover finishes a "
                             "copy, and this plan was never run",
                             hint=f"run `openim-migrate run {self.plan_path}` first")
        return Journal(path).open(exclusive=False)

    def _guarded(self, session: Session) -> Iterator[tuple[str, Store]]:
        for kind in self.plan.stores:
            if self.cfg.guards[kind]:
                source, _ = session.pair(kind)
                if has_guard(source):
                    yield kind, source

    # -- pre-checks ----------------------------------------------------------------------
    def precheck(self, journal: Journal | None, *, fresh: bool) -> list[str]:
        """Everything that can be known before the freeze, cheapest first; the first problem
        is raised as one line naming the plan field. ``fresh``: also the journal's age and
        lag (a resumed cutover proves itself again inside the freeze)."""
        notes: list[str] = []
        if fresh and journal is not None:
            notes += self._check_journal(journal)
        self._resolve_secrets()
        notes += self._check_cluster()
        with Session(self.plan.stores, self.plan.options) as session:
            operations.connect_all(self.plan, session, access=False)
            notes += self._check_guards(session)
        return notes

    def _check_journal(self, journal: Journal) -> list[str]:
        states = journal.units()
        for unit in self.plan.inventory:
            state = states.get(unit.key)
            if state is None or state.state not in (COPIED, VERIFIED, DIFFERS):
                raise UsageError(f"unit {unit.key} was never copied; a cutover finishes a copy",
                                 hint=f"run `openim-migrate run {self.plan_path}` first")
        checks = last_checks(journal)
        now = time.time()
        unchecked = [u.key for u in self.plan.inventory if u.key not in checks]
        if unchecked:
            raise PlanError("cutover.max_check_age_seconds",
                            f"unit {unchecked[0]} was never verified or synced "
                            f"({len(unchecked)} unit(s) like it)",
                            hint=f"run `openim-migrate sync {self.plan_path} --until-stable`")
        if not self.plan.inventory:
            return ["journal: the plan has no units"]
        oldest_key = min((u.key for u in self.plan.inventory), key=lambda key: checks[key][0])
        age = now - checks[oldest_key][0]
        if age > self.cfg.max_check_age:
            raise PlanError("cutover.max_check_age_seconds",
                            f"the last verify or sync of {oldest_key} was {_age(age)} ago, over "
                            f"the limit of {_age(self.cfg.max_check_age)}",
                            hint=f"run `openim-migrate sync {self.plan_path} --until-stable` "
                            "right before the cutover")
        lag = sum(checks[u.key][1] for u in self.plan.inventory)
        if lag > self.cfg.max_lag:
            raise PlanError("cutover.max_lag_records",
                            f"the lag estimate is {lag:,} record(s) (what the last sync or "
                            f"verify of each unit found changed), over {self.cfg.max_lag:,}",
                            hint=f"run `openim-migrate sync {self.plan_path} --until-stable` "
                            "until passes are small, then cut over")
        return [f"journal: every unit checked within {_age(age)}; lag estimate {lag:,} "
                "record(s)"]

    def _resolve_secrets(self) -> None:
        self._secret_values = {
            s.name: {key: resolve_refs(ref, f"cutover.secrets[{i}].keys.{key}")
                     for key, ref in s.keys.items()}
            for i, s in enumerate(self.cfg.secrets)}

    def _check_cluster(self) -> list[str]:
        problems = self.switch.problems(
            self.cfg.configmaps, self.cfg.secrets, self.cfg.deployments,
            lambda section, i: f"cutover.{section}[{i}]")
        if problems:
            where, problem = problems[0]
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise PlanError(where, problem + more,
                            hint="create OpenIM's objects in the cluster first, or correct "
                            "the plan's cutover section")
        missing = self.switch.missing_permissions(configmaps=bool(self.cfg.configmaps),
                                                  secrets_=bool(self.cfg.secrets))
        if missing:
            raise DeployError(f"namespace {self.cfg.namespace}: the identity in use may not "
                              f"{', '.join(missing)}, which the switch and its rollback need",
                              hint="grant them with a Role (docs/cutover.md lists the rules)")
        keys = sum(len(c.keys) for c in self.cfg.configmaps) + sum(
            len(s.keys) for s in self.cfg.secrets)
        return [f"cluster: {len(self.cfg.configmaps)} ConfigMap(s), {len(self.cfg.secrets)} "
                f"Secret(s) ({keys} key(s) to set) and {len(self.cfg.deployments)} "
                f"Deployment(s) found in namespace {self.cfg.namespace}"]

    def _check_guards(self, session: Session) -> list[str]:
        notes = []
        for kind in self.plan.stores:
            source, _ = session.pair(kind)
            if not self.cfg.guards[kind]:
                notes.append(f"{kind}: store guard off in the plan; the freeze relies on the "
                             "stopped writers")
            elif not has_guard(source):
                notes.append(f"{kind}: no server-side write guard for this store; the freeze "
                             "relies on the stopped writers")
            else:
                reason = source.freeze_check()
                if reason is not None:
                    where = "cutover.freeze.guards" + (
                        f".{kind}" if isinstance(self.plan.cutover["freeze"].get("guards"),
                                                 dict) else "")
                    raise PlanError(where, f"{kind}: the source account cannot hold writes "
                                    f"({reason}); `plan` reported this too",
                                    hint=f"grant the right to stores.{kind}.source's account, "
                                    f"or set cutover.freeze.guards.{kind}: false to rely on "
                                    "the stopped writers alone")
                notes.append(f"{kind}: store write guard available")
        return notes

    # -- the cutover ---------------------------------------------------------------------
    def run(self, *, approved: bool) -> CutoverOutcome:
        """Cut over, or finish what the journal says an earlier run left."""
        if self.environment == "production" and not approved:
            raise ApprovalRefused("production cutover not approved; nothing was changed",
                                  hint="pass --approve with the plan's cutover fingerprint "
                                  "(`openim-migrate cutover PLAN --fingerprint`)")
        with cutover_lock(self.plan_path), self._journal() as journal:
            record = Record(journal)
            if record.state == SWITCHED:
                out = self.outcome("already-switched", record)
                out.notes.append(f"cutover {record.data['id']} already switched; "
                                 "nothing to do (`--rollback` undoes it)")
                return out
            if record.state == ROLLING_BACK:
                out = self.outcome("rolled-back", record)
                out.resumed_from = ROLLING_BACK
                self._rollback_into(out, record, record.data.get("reason") or "interrupted")
                if out.rollback_error is None:
                    out.failure = MigrateError(
                        "an earlier cutover was being rolled back; the rollback is now "
                        "finished and no new cutover was started",
                        hint=f"run `openim-migrate cutover {self.plan_path}` again to cut over")
                return out
            resumed = record.state if record.state in ACTIVE else None
            notes = self.precheck(journal, fresh=resumed is None)
            if resumed is None:
                record.start(self.environment, self.fingerprint)
            out = self.outcome("switched", record)
            out.resumed_from, out.checks = resumed, notes
            for line in notes:
                self.on_event(f"pre-check: {line}")
            self._run_steps(out, record)
            return out

    def _run_steps(self, out: CutoverOutcome, record: Record) -> None:
        # With the journal: the stores keep what a later process needs to undo a freeze
        # (e.g. whether MySQL was read-only before), even after a crash.
        with Session(self.plan.stores, self.plan.options, record.journal) as session, \
                ExitStack() as feeds:
            try:
                catch = None
                if record.state is None:  # fresh: catch up before the freeze (see _catch_up)
                    catch = feeds.enter_context(operations.catching_up(
                        self.plan, self.plan_path, follow=True))
                    self._catch_up(out, catch)
                self._freeze(out, record, session)
                if record.state in (FROZEN, SYNCED, VERIFIED_):
                    self._prove(out, record, catch)
                self._switch_over(out, record)
                self._release(out, record, session)
            except BaseException as exc:  # noqa: BLE001 - every way out of a freeze rolls back
                failure = exc if isinstance(exc, MigrateError) else (
                    Interrupted("cutover interrupted") if isinstance(exc, KeyboardInterrupt)
                    else MigrateError(f"internal error: {exc!r}"))
                out.failure = failure
                out.action = "rolled-back"
                self.on_event(f"failed: {failure.message}; rolling back")
                self._rollback_into(out, record, failure.message, session)
                if not isinstance(exc, (MigrateError, KeyboardInterrupt)):
                    raise
        done = self.outcome(out.action, record)
        out.state, out.steps, out.window = done.state, done.steps, done.window

    def _timed(self, record: Record, step: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            return fn()
        finally:
            seconds = time.monotonic() - started
            record.add_step(step, seconds)
            self.on_event(f"{step}: {seconds:.2f} s")

    def _run_command(self, journal: Journal, argv: list[str], label: str) -> str:
        """Run a freeze/unfreeze command; its output goes to the journal's events."""
        field_name = f"cutover.freeze.{label}"
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.cfg.command_timeout, check=False)
        except FileNotFoundError:
            raise PlanError(field_name, f"{argv[0]}: no such program") from None
        except subprocess.TimeoutExpired:
            raise MigrateError(f"{field_name} did not finish within "
                               f"{self.cfg.command_timeout:g} s: {shlex.join(argv)}",
                               hint="raise cutover.freeze.command_timeout_seconds") from None
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-4000:]
        detail = f"{shlex.join(argv)} -> exit {proc.returncode}\n{output}".rstrip()
        journal.event(None, "cutover-command", detail)
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        self.on_event(f"{label.replace('_', ' ')}: exit {proc.returncode}: {last}")
        if proc.returncode != 0:
            raise MigrateError(f"{field_name} exited {proc.returncode}: {last}",
                               hint="its whole output is in the journal's events")
        return output

    def _freeze(self, out: CutoverOutcome, record: Record, session: Session) -> None:
        """Stop the writers (the plan's command) and hold writes where guards allow. Done
        again on resume: the command is idempotent and guards may have lapsed."""
        fresh = record.state in (None, FREEZING)
        if record.data.get("freeze_started") is None:
            record.data["freeze_started"] = time.time()
        if fresh:
            record.set(FREEZING, shlex.join(self.cfg.freeze_command))

        def freeze() -> None:
            # Also on resume: someone may have started the writers again meanwhile.
            self._run_command(record.journal, self.cfg.freeze_command, "command")
            for kind, source in self._guarded(session):
                if kind not in record.data["guards"]:
                    record.data["guards"].append(kind)  # before: a crash may leave it held
                    record.save()
                try:
                    what = source.freeze(self.cfg.max_freeze_seconds)
                except CapabilityMissing as exc:
                    out.notes.append(f"{kind}: no store guard ({exc.message}); relies on the "
                                     "stopped writers")
                    continue
                record.journal.event(None, "cutover-guard", f"{kind}: {what}")
                out.notes.append(f"{kind}: {what}")
            self._frozen_at = time.monotonic()

        self._timed(record, "freeze", freeze)
        if fresh:
            record.set(FROZEN)

    def _check_window(self, step: str) -> None:
        held = time.monotonic() - (self._frozen_at or time.monotonic())
        if held > self.cfg.max_freeze_seconds:
            raise MigrateError(f"the freeze has held {held:.0f} s by the end of the {step}, "
                               f"over cutover.freeze.max_seconds "
                               f"({self.cfg.max_freeze_seconds:g} s); store guards may have "
                               "lapsed, so the proof would not hold",
                               hint="sync until passes are small before cutting over, or "
                               "raise cutover.freeze.max_seconds")

    def _catch_up(self, out: CutoverOutcome, catch: CatchUp) -> None:
        """Where a source can follow its changes, one full sync pass before the freeze with
        the feed already running: the final pass inside the freeze then compares only what
        the source named since, so the freeze costs the changes, not the data size."""
        for note in catch.notes:
            out.notes.append(note)
        if FOLLOWING not in catch.methods.values():
            return  # the final pass digests every chunk anyway: nothing to gain before
        result = catch.run_pass()
        _refuse_failed(result, "catch-up before the freeze")
        followed = ", ".join(k for k, how in catch.methods.items() if how == FOLLOWING)
        line = (f"before the freeze: a full sync pass changed {result.changed} record(s) in "
                f"{result.seconds:.1f} s; following the changes of {followed} since")
        out.notes.append(line)
        self.on_event(line)

    def _prove(self, out: CutoverOutcome, record: Record, catch: CatchUp | None) -> None:
        """The final sync pass, then a full verify that must be EQUAL.

        The pass runs inside the freeze: what it found equal is still equal (the source is
        frozen, the target written only by the pass, only where it found differences), so
        the verify compares again only what the pass wrote, or the chunks it found
        different for a store that cannot read named records (``verify.Proven``), and
        compares schemas, coverage, definitions and the cross-store checks in full. Where
        the pass followed the source's changes since the full pass before the freeze, it
        compared only the records the source named, and the verify compares those again.
        A cutover resumed after a crash has no such pass in hand and verifies every
        chunk."""
        proven: dict[str, Proven] = {}

        def sync() -> int:
            if catch is not None:
                last = catch.run_pass()
            else:
                result = operations.sync_plan(self.plan, self.plan_path)
                if result.interrupted:
                    raise KeyboardInterrupt
                last = result.passes[-1]
            _refuse_failed(last, "final sync")
            proven.update((u.unit, u.proven) for u in last.units if u.proven is not None)
            return last.changed

        changed = self._timed(record, "sync", sync)
        self._check_window("sync")
        record.set(SYNCED, f"{changed} record(s) changed")

        def verify() -> VerifyReport:
            return operations.verify_plan(self.plan, self.plan_path, proven=proven)

        report = self._timed(record, "verify", verify)
        out.verify = report
        if not report.ok:
            raise _verify_error(report)
        self._check_window("verify")
        record.set(VERIFIED_, "EQUAL")

    def _switch_over(self, out: CutoverOutcome, record: Record) -> None:
        """Back up and patch each object once (resumable per object), restart, wait."""
        from migrator.deploy.switch import Backup
        from migrator.deploy.waiting import wait_for

        switch, cid = self.switch, record.data["id"]
        if record.state != RESTARTING:
            record.set(SWITCHING)

            def patch() -> None:
                entries = {(e["kind"], e["name"]): e for e in record.data["objects"]}
                changes: list[tuple[str, Any]] = [("ConfigMap", c) for c in self.cfg.configmaps]
                changes += [("Secret", s) for s in self.cfg.secrets]
                for kind, change in changes:
                    entry = entries.get((kind, change.name))
                    if entry is None:
                        backup = switch.save(kind, change.name, cid)
                        entry = {"kind": kind, "name": change.name, "backup": backup.name,
                                 "digest": backup.digest, "state": "saved",
                                 "keys": change.keys if kind == "ConfigMap"
                                 else sorted(change.keys)}
                        record.data["objects"].append(entry)
                        record.save()
                    if entry["state"] == "saved":
                        backup = Backup(entry["backup"], entry["digest"])
                        if kind == "ConfigMap":
                            switch.patch_configmap(change, backup, cid)
                        else:
                            switch.patch_secret(change, self._secret_values[change.name],
                                                backup, cid)
                        entry["state"] = "patched"
                        record.save()
                        record.journal.event(None, "cutover-patch", f"{kind} {self.cfg.namespace}/"
                                            f"{change.name}: set {', '.join(entry['keys'])}; "
                                            f"backup {entry['backup']}")
                        failpoint("patched")

            self._timed(record, "switch", patch)
            record.set(RESTARTING, ", ".join(self.cfg.deployments))
        if not record.data.get("restarted"):
            switch.restart(self.cfg.deployments, _now())
            record.data["restarted"] = True
            record.save()
        self._timed(record, "rollout", lambda: wait_for(
            switch.rollout(self.cfg.deployments), self.cfg.rollout_timeout, poll=0.5))

    def _release(self, out: CutoverOutcome, record: Record, session: Session) -> None:
        """Switched: the writers stay stopped (the freeze command's effect), the store
        guards are released; they were needed for the proof only."""
        record.data["switched_at"] = time.time()
        window = record.data["switched_at"] - record.data["freeze_started"]
        record.set(SWITCHED, f"freeze window {window:.2f} s")
        for kind, source in self._guarded(session):
            try:
                source.unfreeze()
            except MigrateError as exc:
                out.notes.append(f"{kind}: could not release the store guard ({exc.message})")

    # -- rollback ------------------------------------------------------------------------
    def rollback(self) -> CutoverOutcome:
        """Undo the last cutover whatever state it reached (no approval needed)."""
        with cutover_lock(self.plan_path), self._journal() as journal:
            record = Record(journal)
            if record.state in (None, ROLLED_BACK):
                out = self.outcome("nothing-to-roll-back", record)
                out.notes.append("no cutover to roll back" if record.state is None else
                                 f"cutover {record.data['id']} is already rolled back")
                return out
            out = self.outcome("rolled-back", record)
            out.resumed_from = record.state
            self._rollback_into(out, record, "requested with --rollback")
            return out

    def _rollback_into(self, out: CutoverOutcome, record: Record, reason: str,
                       session: Session | None = None) -> None:
        try:
            if session is None:
                with Session(self.plan.stores, self.plan.options, record.journal) as own:
                    self._rollback(out, record, reason, own)
            else:
                self._rollback(out, record, reason, session)
            out.action = "rolled-back"
        except KeyboardInterrupt:
            out.rollback_error = Interrupted("rollback interrupted")
        except MigrateError as exc:
            out.rollback_error = exc
        out.state = record.state

    def _rollback(self, out: CutoverOutcome, record: Record, reason: str,
                  session: Session) -> None:
        from migrator.deploy.switch import Backup
        from migrator.deploy.waiting import wait_for

        if record.state != ROLLING_BACK:
            record.data["reason"] = reason
            record.set(ROLLING_BACK, reason)
        switch = self.switch
        objects = record.data.get("objects") or []
        for entry in reversed(objects):
            if entry["state"] == "restored":
                continue
            switch.restore(entry["kind"], entry["name"], Backup(entry["backup"], entry["digest"]))
            entry["state"] = "restored"
            record.save()
            record.journal.event(None, "cutover-restore", f"{entry['kind']} {self.cfg.namespace}/"
                                f"{entry['name']} restored from {entry['backup']}")
            failpoint("restored")
        if objects or record.data.get("restarted"):
            switch.restart(self.cfg.deployments, _now())
            try:
                wait_for(switch.rollout(self.cfg.deployments), self.cfg.rollout_timeout,
                         poll=0.5)
            except DeployError as exc:
                # The restored objects are in place and the restart is asked for; pods come
                # up on the old configuration as soon as the cluster lets them.
                out.notes.append(f"rollback: Deployments restarted, rollout not finished "
                                 f"({exc.message})")
        problems = []
        if record.data.get("freeze_started") is not None:
            for kind in record.data.get("guards") or []:
                try:
                    source, _ = session.pair(kind)
                    source.unfreeze()
                except MigrateError as exc:
                    problems.append(f"{kind}: {exc.message}")
            try:
                self._run_command(record.journal, self.cfg.unfreeze_command,
                                  "unfreeze_command")
            except MigrateError as exc:
                problems.append(exc.message)
        if problems:
            raise MigrateError("the cluster is restored, but the source is not unfrozen: "
                               + "; ".join(problems),
                               hint=f"fix that, then run `openim-migrate cutover "
                               f"{self.plan_path} --rollback` again")
        record.set(ROLLED_BACK, reason)
        self.on_event("rolled back: configuration restored, Deployments restarted, source "
                      "unfrozen")


def _now() -> str:
    """A restart stamp; sub-second, so a rollback right after a switch is a new rollout
    (an unchanged annotation would restart nothing)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _refuse_failed(result: SyncPass, what: str) -> None:
    """A pass in which a unit failed proves nothing: stop, naming the first failure."""
    if result.failed:
        first = result.failed[0]
        error = MigrateError(f"{what} failed for {len(result.failed)} unit(s) "
                             f"(first: {first.unit}: {first.error})")
        error.exit_code = first.error_code or 1
        raise error


def _verify_error(report: VerifyReport) -> MigrateError:
    bad = [u for u in report.units if u.status != MATCH]
    first = (f"{bad[0].unit}: {bad[0].error or summary(bad[0])}" if bad
             else next(iter(report.extra), "a cross-store check"))
    if report.exit_code == 5:
        return VerificationFailed(f"the final verify inside the freeze is not EQUAL "
                                  f"({len(bad)} unit(s); first {first})",
                                  hint="something still writes to the source: check the "
                                  "freeze command stops every writer")
    error = VerificationIncomplete(f"the final verify could not finish ({first})")
    error.exit_code = report.exit_code
    return error


def check_only(plan: Plan, plan_path: Path) -> CutoverOutcome:
    """``--check``: the pre-checks alone; nothing is frozen or written."""
    job = Cutover(plan, plan_path)
    path = journal_path(plan_path)
    if not path.exists():
        job._journal()  # raises the "never run" error
    with Journal(path).open(exclusive=False) as journal:
        record = Record(journal)
        out = job.outcome("checked", record)
        out.checks = job.precheck(journal, fresh=record.state not in ACTIVE)
    return out
