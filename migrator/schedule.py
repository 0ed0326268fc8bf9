"""Scheduled backups and restore drills, rendered for Kubernetes or systemd.

Kubernetes: a CronJob (``concurrencyPolicy: Forbid``) that runs ``backup`` then ``backup
prune`` with the plan from a ConfigMap, and a weekly drill CronJob in a staging namespace.
systemd: a service and timer pair per job for a standalone host. Both run exactly the
commands an operator would type, so nothing here knows how a backup works.

Secrets never appear in what is rendered: ``${VAR}`` references become environment
variables filled from a Secret by ``secretKeyRef`` (or from an ``EnvironmentFile`` on a
host), and ``${k8s:ns/secret#key}`` references are read by the tool itself through a
ServiceAccount that may ``get`` exactly those Secrets. Pure rendering: no I/O, no printing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kubernetes import client as k

from migrator import __version__
from migrator.config import references_in
from migrator.deploy.job import (
    IMAGE,
    container_security,
    dns_name,
    labels,
    pod_security,
    references,
    secret_readers,
)
from migrator.deploy.manifests import to_dicts
from migrator.errors import UsageError

KINDS = ("cronjob", "systemd")
KEY_VAR = "OIM_ARCHIVE_KEY"  # the age identity inside the pod / the service
EXECUTABLE = "/usr/local/bin/openim-migrate"  # where `pip install` puts it system-wide
ENV_FILE = "/etc/openim-migrate/openim-migrate.env"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)#([-._A-Za-z0-9]+)$")
_K8S_REF = re.compile(r"^\$\{k8s:([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)/"
                      r"([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)#([-._A-Za-z0-9]+)\}$")
_VAR_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


# ----------------------------------------------------------------------------- cron
# Kubernetes parses schedules with robfig/cron's standard parser; this accepts the same.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
_SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


@dataclass(frozen=True)
class Cron:
    """A parsed schedule: the values each field allows, and whether day-of-month and
    day-of-week were left open (cron ORs the two days when both are restricted)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_open: bool
    weekdays_open: bool

    def matches(self, year: int, month: int, day: int, weekday: int, hour: int,
                minute: int) -> bool:
        """Whether the schedule fires at that minute (``weekday`` 0 = Sunday), as cron
        decides it: the reference the systemd calendar is tested against."""
        if minute not in self.minutes or hour not in self.hours or month not in self.months:
            return False
        day_ok, weekday_ok = day in self.days, weekday in self.weekdays
        if self.days_open or self.weekdays_open:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def parse_cron(text: str, option: str = "--schedule") -> Cron:
    """A five-field cron expression or a macro (@daily …); a wrong one is a UsageError
    naming ``option`` and the field."""
    expr = " ".join(text.split())
    if re.match(r"^(CRON_)?TZ=", expr):
        raise UsageError(f"{option} {text!r}: a time zone inside the schedule is not "
                         "supported by Kubernetes", hint="give --time-zone instead")
    if expr.lower().startswith("@every"):
        raise UsageError(f"{option} {text!r}: an interval, not a calendar macro; write five "
                         "fields", hint="systemd timers and the drill's --max-age need "
                         "calendar times, e.g. '0 */6 * * *' for every six hours")
    if expr.startswith("@"):
        if expr.lower() not in _MACROS:
            raise UsageError(f"{option} {text!r}: unknown macro; one of "
                             f"{', '.join(_MACROS)}, or five fields")
        expr = _MACROS[expr.lower()]
    parts = expr.split(" ")
    if len(parts) != 5:
        raise UsageError(f"{option} {text!r}: expected five fields (minute hour day-of-month "
                         f"month day-of-week), got {len(parts) if expr else 0}")
    sets, opens = [], []
    for part, (name, low, high) in zip(parts, _FIELDS, strict=True):
        names = _MONTHS if name == "month" else _DAYS if name == "day of week" else ()
        values, is_open = _field(part, name, low, high, names, option, text)
        sets.append(frozenset(values))
        opens.append(is_open)
    return Cron(text, minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3],
                weekdays=sets[4], days_open=opens[2], weekdays_open=opens[4])


def _field(part: str, name: str, low: int, high: int, names: tuple[str, ...], option: str,
           text: str) -> tuple[set[int], bool]:
    def bad(problem: str) -> UsageError:
        hint = "0-6, Sunday is 0" if name == "day of week" else f"{low}-{high}"
        return UsageError(f"{option} {text!r}: {name} {part!r} {problem}",
                          hint=f"{name} takes {hint}, lists a,b, ranges a-b, steps */n")

    def number(token: str) -> int:
        if token.lower() in names:
            return names.index(token.lower()) + low
        if not token.isdigit():
            raise bad(f"has {token!r}, which is not a number")
        value = int(token)
        if not low <= value <= high:
            raise bad(f"has {value}, outside {low}-{high}")
        return value

    values: set[int] = set()
    is_open = False
    for item in part.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise bad(f"has step {step_text!r}: expected a whole number above 0")
            step = int(step_text)
        if span in ("*", "?"):  # robfig/cron takes "?" for "*" in any field
            start, end = low, high
            is_open = is_open or step == 1  # as robfig/cron: "*/2" restricts the field
        elif "-" in span:
            first, _, last = span.partition("-")
            start, end = number(first), number(last)
            if start > end:
                raise bad(f"has the range {span!r}, which runs backwards")
        else:
            start = number(span)
            end = high if slash else start  # "5/15" means 5-max/15
        values.update(range(start, end + 1, step))
    return values, is_open


def on_calendar(cron: Cron, option: str, time_zone: str | None = None) -> str:
    """The systemd calendar event that fires at the same minutes as ``cron``."""
    if not cron.days_open and not cron.weekdays_open:
        raise UsageError(f"{option} {cron.text!r}: restricts both day of month and day of "
                         "week, which cron treats as either one and systemd as both",
                         hint="restrict only one of the two day fields for --kind systemd")
    parts = []
    if cron.weekdays != frozenset(range(7)):
        order: list[int] = [d for d in (1, 2, 3, 4, 5, 6, 0) if d in cron.weekdays]
        parts.append(_runs(order, lambda d: _SYSTEMD_DAYS[d], (1, 2, 3, 4, 5, 6, 0)))
    day = _values(cron.days, 1, 31)
    parts.append(f"*-{_values(cron.months, 1, 12)}-{day}")
    parts.append(f"{_values(cron.hours, 0, 23)}:{_values(cron.minutes, 0, 59)}:00")
    if time_zone:
        parts.append(time_zone)
    return " ".join(parts)


def _values(values: frozenset[int], low: int, high: int) -> str:
    if values == frozenset(range(low, high + 1)):
        return "*"
    return _runs(sorted(values), lambda v: f"{v:02d}", tuple(range(low, high + 1)))


def _runs(values: list[int], show: Any, order: tuple[int, ...]) -> str:
    """``a,b,c..f``: runs of three or more consecutive values (in ``order``) as ranges."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and order.index(values[j + 1]) == order.index(values[j]) + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{show(values[i])}..{show(values[j])}")
        else:
            out.extend(show(v) for v in values[i:j + 1])
        i = j + 1
    return ",".join(out)


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class Retention:
    last: int = 3
    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    def args(self) -> list[str]:
        out = []
        for name in ("last", "daily", "weekly", "monthly"):
            value = getattr(self, name)
            if value < 0:
                raise UsageError(f"--keep-{name} must be 0 or more")
            if value:
                out += [f"--keep-{name}", str(value)]
        if not out:
            raise UsageError("--keep-last/--keep-daily/--keep-weekly/--keep-monthly: all are "
                             "0, so prune would keep nothing; give at least one")
        return out


@dataclass
class ScheduleSpec:
    """What both forms need. ``archive`` and the options hold references, never secrets
    (the CLI has checked them as an archive endpoint)."""

    archive: str
    archive_options: tuple[str, ...] = ()  # NAME=VALUE, passed as -o
    key: str | None = None  # --key-secret as given
    schedule: str = "15 2 * * *"
    drill_schedule: str | None = "30 4 * * 0"  # weekly; None: no drill
    drill_max_age: str | None = "auto"  # from the backup schedule; None: not checked
    time_zone: str | None = None
    retention: Retention = field(default_factory=Retention)
    drill_targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> endpoint
    # Kubernetes
    namespace: str = "openim"
    staging_namespace: str = "openim-staging"
    image: str = IMAGE
    env_secret: str | None = None
    archive_claim: str | None = None
    cpu: str = "500m"
    memory: str = "512Mi"
    reports_size: str = "64Mi"
    # systemd
    executable: str = EXECUTABLE
    env_file: str = ENV_FILE
    user: str = "openim-migrate"

    def check(self) -> None:
        """Every option that can be wrong without a cluster or a host, one line each."""
        parse_cron(self.schedule, "--schedule")
        if self.drill_schedule is not None:
            parse_cron(self.drill_schedule, "--drill-schedule")
        if self.time_zone is not None:
            try:
                ZoneInfo(self.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise UsageError(f"--time-zone {self.time_zone!r}: not a known time zone",
                                 hint="an IANA name such as Europe/Berlin or UTC") from None
        self.retention.args()
        for option, value in (("--namespace", self.namespace),
                              ("--staging-namespace", self.staging_namespace)):
            if not _DNS_LABEL.match(value) or len(value) > 63:
                raise UsageError(f"{option} {value!r} is not a valid namespace name")
        if self.staging_namespace == self.namespace and self.drill_schedule is not None:
            raise UsageError(f"--staging-namespace {self.staging_namespace!r} is the backups' "
                             "namespace: a drill restores into it, so give it one of its own")
        for option, value in (("--cpu", self.cpu), ("--memory", self.memory),
                              ("--reports-size", self.reports_size)):
            _quantity(option, value)
        if self.key is not None:
            _key_ref(self.key, self.namespace)


def _quantity(option: str, value: str) -> None:
    from kubernetes.utils import parse_quantity

    try:
        if parse_quantity(value) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise UsageError(f"{option} {value!r}: expected a Kubernetes quantity such as 500m, "
                         "2 or 512Mi") from None


def _key_ref(value: str, namespace: str) -> tuple[str, ...]:
    """``("env", VAR)`` or ``("k8s", ns, secret, key)`` from ``--key-secret``."""
    if match := _VAR_REF.match(value):
        return ("env", match.group(1))
    if match := _K8S_REF.match(value):
        return ("k8s", *match.groups())
    if match := _SECRET_KEY.match(value):
        return ("k8s", namespace, match.group(1), match.group(2))
    raise UsageError("--key-secret: not a reference (the value is not shown: it may be the "
                     "key itself); expected SECRET#KEY (a Secret in --namespace), "
                     "${k8s:namespace/secret#key} or ${VAR}",
                     hint="the Secret's key holds the age identity (AGE-SECRET-KEY-1...)")


def default_drill_targets(raw_plan: dict[str, Any], staging: str) -> dict[str, dict[str, Any]]:
    """The plan's stores as `deploy -n STAGING` lays them out: Service names and
    ``${k8s:…}`` references in the staging namespace, the plan's buckets and databases."""
    from migrator.deploy import endpoints
    from migrator.deploy.spec import DeploySpec

    stores = raw_plan.get("stores") or {}
    old = {kind: dict(pair.get("target") or {}) for kind, pair in stores.items()
           if isinstance(pair, dict)}
    cluster = str(old.get("redis", {}).get("url", "")).startswith("redis+cluster://")
    spec = DeploySpec(namespace=staging, stores=tuple(old),
                      redis_mode="cluster" if cluster else "standalone")
    return endpoints.targets(spec, "cluster", old=old)


def target_args(targets: dict[str, dict[str, Any]]) -> list[str]:
    """``--target kind=url`` and ``--target-option kind.name=value`` for each endpoint."""
    out: list[str] = []
    for kind, endpoint in sorted(targets.items()):
        out += ["--target", f"{kind}={endpoint['url']}"]
        for name, value in _flat(endpoint, ""):
            if name != "url":
                out += ["--target-option", f"{kind}.{name}={value}"]
    return out


def _flat(data: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in data.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{name}.")
        elif isinstance(value, bool):
            out.append((prefix + name, "true" if value else "false"))
        elif isinstance(value, list):
            out.append((prefix + name, ",".join(str(v) for v in value)))
        else:
            out.append((prefix + name, str(value)))
    return out


def _base(plan_name: str) -> str:
    """Room for ``-backup`` within a CronJob name's 52 characters."""
    return f"openim-migrate-{dns_name(plan_name)[:30].rstrip('-')}"


def _redacted(url: str) -> str:
    """The archive URL for a description: references stay, anything else in a password
    place would have been refused earlier; drop the user-info anyway."""
    scheme, sep, rest = url.partition("://")
    head, slash, path = rest.partition("/")
    return f"{scheme}{sep}{head.rsplit('@', 1)[-1]}{slash}{path}"


# ----------------------------------------------------------------------------- commands
@dataclass
class _Access:
    """How one pod or service gets each reference it needs."""

    env: set[str] = field(default_factory=set)  # ${VAR}
    secrets: dict[str, set[str]] = field(default_factory=dict)  # ${k8s:…}: ns -> names
    key_arg: list[str] = field(default_factory=list)  # --key …
    key_env: tuple[str, str] | None = None  # (secret, key) for KEY_VAR by secretKeyRef

    def add(self, texts: list[str]) -> None:
        for text in texts:
            for ref in references_in(text):
                if ref[0] == "env":
                    self.env.add(ref[1])
                else:
                    self.secrets.setdefault(ref[1], set()).add(ref[2])


def _access(spec: ScheduleSpec, namespace: str, texts: list[str], *, kube: bool) -> _Access:
    access = _Access()
    access.add([spec.archive, *spec.archive_options, *texts])
    if spec.key is not None:
        ref = _key_ref(spec.key, spec.namespace)
        if ref[0] == "env":
            access.env.add(ref[1])
            access.key_arg = ["--key", spec.key]
        elif kube and ref[1] == namespace:  # the pod's own namespace: an env var
            access.key_env = (ref[2], ref[3])
            access.key_arg = ["--key", f"${{{KEY_VAR}}}"]
        else:  # another namespace (the drill's key), or a host reading the cluster
            access.secrets.setdefault(ref[1], set()).add(ref[2])
            access.key_arg = ["--key", f"${{k8s:{ref[1]}/{ref[2]}#{ref[3]}}}"]
    return access


def _archive_args(spec: ScheduleSpec, access: _Access) -> list[str]:
    out = list(access.key_arg)
    for option in spec.archive_options:
        out += ["-o", option]
    return out


def commands(spec: ScheduleSpec, plan_path: str, access: _Access) -> list[list[str]]:
    """The backup job: a backup of the plan, then prune by the retention rules."""
    archive = _archive_args(spec, access)
    return [["openim-migrate", "backup", plan_path, "--to", spec.archive, *archive],
            ["openim-migrate", "backup", "prune", spec.archive, *archive,
             *spec.retention.args()]]


def drill_command(spec: ScheduleSpec, access: _Access, reports: str) -> list[str]:
    """Into the same staging stores every week (so ``--on-existing overwrite``), failing
    when the newest set is older than the backup schedule allows."""
    age = spec.drill_max_age
    if age == "auto":
        age = max_age(parse_cron(spec.schedule, "--schedule"))
    return ["openim-migrate", "drill", spec.archive, *_archive_args(spec, access),
            *target_args(spec.drill_targets), "--on-existing", "overwrite",
            *(["--max-age", age] if age else []),
            "--junit", f"{reports}/drill-junit.xml", "--metrics-file", f"{reports}/drill.prom"]


def max_age(cron: Cron, slack_hours: int = 2) -> str:
    """The longest wait between two runs of ``cron`` over eight years (two leap days,
    months of every length), plus ``slack_hours`` for a backup to finish: the oldest the newest
    set may be when every backup works (a daily backup gives 26h)."""
    import datetime as dt

    day = dt.date(2024, 1, 1)
    times = sorted(h * 60 + m for h in cron.hours for m in cron.minutes)
    longest = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0)
    previous: int | None = None  # minutes since the start of the window of the last run
    for offset in range(8 * 366 + 7):
        date = day + dt.timedelta(days=offset)
        if not cron.matches(date.year, date.month, date.day, (date.weekday() + 1) % 7,
                            times[0] // 60, times[0] % 60):
            continue
        if previous is not None:
            longest = max(longest, offset * 1440 + times[0] - previous)
        previous = offset * 1440 + times[-1]
    return f"{-(-longest // 60) + slack_hours}h"


# ----------------------------------------------------------------------------- Kubernetes
@dataclass
class Rendered:
    files: dict[str, Any]  # file name -> objects (Kubernetes) or text (systemd)
    notes: list[str] = field(default_factory=list)


def render_kubernetes(spec: ScheduleSpec, plan_name: str, plan_text: str,
                      raw_plan: dict[str, Any]) -> Rendered:
    """``backup.yaml`` (ConfigMap with the plan, ServiceAccount, Secret readers, CronJob)
    and, with a drill schedule, ``drill.yaml`` for the staging namespace."""
    spec.check()
    base = _base(plan_name)
    notes: list[str] = []
    if spec.archive.startswith("archive+file:") and not spec.archive_claim:
        raise UsageError(f"--archive {_redacted(spec.archive)}: a directory inside a pod is "
                         "lost with the pod: give --archive-claim PVC, mounted at its path",
                         hint="or back up into an archive+s3:// archive")
    # a backup reads only the plan's sources: only their secrets are made readable
    sources = {kind: {"source": pair.get("source")}
               for kind, pair in (raw_plan.get("stores") or {}).items() if isinstance(pair, dict)}
    if re.search(r"//([^/@']*@)?(127\.0\.0\.1|localhost)[:/']", str(sources)):
        notes.append("the plan's sources include 127.0.0.1/localhost, which inside the "
                     "cluster is the pod itself: give Service DNS names")
    name = f"{base}-backup"
    plan_refs = references({"stores": sources})
    access = _access(spec, spec.namespace, [], kube=True)
    access.env |= plan_refs.env
    for ns, names in plan_refs.secrets.items():
        access.secrets.setdefault(ns, set()).update(names)
    # backup keeps its journal in a temporary folder (the set holds its progress), so the
    # plan is read where the ConfigMap puts it; prune only after a backup that succeeded
    script = "set -e\n" + "\n".join(
        ("" if i == 0 else "exec ") + shlex.join(cmd)
        for i, cmd in enumerate(commands(spec, "/plan/plan.yaml", access))) + "\n"
    meta = _meta(spec.namespace, name)
    backup: list[Any] = [
        k.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=meta(f"{name}-plan"),
                      data={"plan.yaml": plan_text}),
        k.V1ServiceAccount(api_version="v1", kind="ServiceAccount", metadata=meta(name),
                           automount_service_account_token=False),
        *secret_readers(name, access.secrets, name, spec.namespace),
        _cron_job(spec, spec.namespace, name, spec.schedule, access,
                  command=["sh", "-c", script],
                  volumes=[("plan", "/plan", k.V1Volume(
                      name="plan", config_map=k.V1ConfigMapVolumeSource(name=f"{name}-plan")))],
                  notes=notes),
    ]
    files = {"backup.yaml": to_dicts(backup)}
    if spec.drill_schedule is not None:
        files["drill.yaml"] = _drill_objects(spec, base, raw_plan, notes)
    return Rendered(files, notes)


def _drill_objects(spec: ScheduleSpec, base: str, raw_plan: dict[str, Any],
                   notes: list[str]) -> list[dict[str, Any]]:
    assert spec.drill_schedule is not None
    ns = spec.staging_namespace
    name = f"{base}-drill"
    if not spec.drill_targets:
        spec.drill_targets = default_drill_targets(raw_plan, ns)
        notes.append(f"the drill restores into the services `deploy -n {ns}` makes "
                     f"({', '.join(sorted(spec.drill_targets))}); --drill-target changes that")
    access = _access(spec, ns, [v for _, v in _flat(spec.drill_targets, "")], kube=True)
    meta = _meta(ns, name)
    reports = k.V1PersistentVolumeClaim(
        api_version="v1", kind="PersistentVolumeClaim", metadata=meta(f"{name}-reports"),
        spec=k.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=k.V1VolumeResourceRequirements(requests={"storage": spec.reports_size})))
    objects: list[Any] = [
        reports,
        k.V1ServiceAccount(api_version="v1", kind="ServiceAccount", metadata=meta(name),
                           automount_service_account_token=False),
        *secret_readers(name, access.secrets, name, ns),
        _cron_job(spec, ns, name, spec.drill_schedule, access,
                  command=drill_command(spec, access, "/reports"),
                  volumes=[("reports", "/reports", k.V1Volume(
                      name="reports", persistent_volume_claim=(
                          k.V1PersistentVolumeClaimVolumeSource(claim_name=f"{name}-reports"))))],
                  notes=notes),
    ]
    return to_dicts(objects)


def _meta(namespace: str, instance: str) -> Any:
    return lambda n: k.V1ObjectMeta(name=n, namespace=namespace, labels=labels(instance))


def _cron_job(spec: ScheduleSpec, namespace: str, name: str, schedule: str, access: _Access,
              *, command: list[str], volumes: list[tuple[str, str, k.V1Volume]],
              notes: list[str]) -> k.V1CronJob:
    env = [k.V1EnvVar(name="HOME", value="/tmp")]
    if access.env:
        if not spec.env_secret:
            raise UsageError(f"{', '.join(sorted(access.env))} are referenced as ${{VAR}}: "
                             f"give --env-secret NAME, a Secret in namespace {namespace} with "
                             "those keys", hint="or refer to Secrets directly with "
                             "${k8s:namespace/secret#key}")
        # optional: a variable only one side of the plan uses must not stop the pod; the
        # tool names the one it misses, with its field
        env += [k.V1EnvVar(name=var, value_from=k.V1EnvVarSource(
            secret_key_ref=k.V1SecretKeySelector(name=spec.env_secret, key=var, optional=True)))
            for var in sorted(access.env)]
    if access.key_env:
        env.append(k.V1EnvVar(name=KEY_VAR, value_from=k.V1EnvVarSource(
            secret_key_ref=k.V1SecretKeySelector(name=access.key_env[0], key=access.key_env[1]))))
    mounts = [k.V1VolumeMount(name=v, mount_path=path) for v, path, _ in volumes]
    pod_volumes = [volume for _, _, volume in volumes]
    mounts.append(k.V1VolumeMount(name="tmp", mount_path="/tmp"))  # journals, HOME, cwd
    pod_volumes.append(k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource()))
    if spec.archive_claim and spec.archive.startswith("archive+file:"):
        path = unquote(urlsplit(spec.archive).path)
        mounts.append(k.V1VolumeMount(name="archive", mount_path=path))
        pod_volumes.append(k.V1Volume(name="archive", persistent_volume_claim=(
            k.V1PersistentVolumeClaimVolumeSource(claim_name=spec.archive_claim))))
        if namespace != spec.namespace:
            notes.append(f"the drill mounts PVC {spec.archive_claim} in namespace {namespace}: "
                         "it must hold the same archive (e.g. bound to the same NFS volume)")
    container = k.V1Container(
        name=name.rsplit("-", 1)[-1], image=spec.image, command=command, env=env,
        working_dir="/tmp", volume_mounts=mounts,
        resources=k.V1ResourceRequirements(requests={"cpu": spec.cpu, "memory": spec.memory}),
        security_context=container_security())
    pod_labels = labels(name)
    return k.V1CronJob(
        api_version="batch/v1", kind="CronJob", metadata=_meta(namespace, name)(name),
        spec=k.V1CronJobSpec(
            schedule=schedule, time_zone=spec.time_zone, concurrency_policy="Forbid",
            starting_deadline_seconds=3600,  # a missed run still starts within the hour
            successful_jobs_history_limit=3, failed_jobs_history_limit=3,
            job_template=k.V1JobTemplateSpec(
                metadata=k.V1ObjectMeta(labels=pod_labels),
                spec=k.V1JobSpec(
                    backoff_limit=2,  # a retry resumes the archive's incomplete set
                    template=k.V1PodTemplateSpec(
                        metadata=k.V1ObjectMeta(labels=pod_labels),
                        spec=k.V1PodSpec(
                            restart_policy="Never", service_account_name=name,
                            automount_service_account_token=bool(access.secrets),
                            security_context=pod_security(), containers=[container],
                            volumes=pod_volumes))))))


# ----------------------------------------------------------------------------- systemd
def systemd_quote(arg: str) -> str:
    """One ExecStart= word: ``%`` and ``$`` doubled (no specifier or variable expansion:
    a ``${VAR}`` reference must reach the tool as written, not as the secret), quoted
    when it has anything but plain characters."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and re.fullmatch(r"[A-Za-z0-9_@%+=:,./${}#-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_systemd(spec: ScheduleSpec, plan_name: str, plan_path: str) -> Rendered:
    """A oneshot service and its timer for the backup (then prune), and with drill
    targets a second pair for the drill. ``plan_path`` is the plan's absolute path on the
    host (only read: a backup's journal is temporary, its progress is in the set)."""
    spec.check()
    base = _base(plan_name)
    notes: list[str] = []
    access = _access(spec, spec.namespace, [], kube=False)
    files: dict[str, str] = {}
    if plan_path.startswith(("/tmp/", "/var/tmp/")):
        notes.append(f"the plan is under {plan_path.split('/')[1]}/, which the service's "
                     "PrivateTmp hides: keep it in /etc/openim-migrate/")
    backup = f"{base}-backup"
    lines = [f"ExecStart={_exec(spec, cmd)}" for cmd in commands(spec, plan_path, access)]
    files[f"{backup}.service"] = _service(
        spec, f"OpenIM backup of plan {plan_name} into {_redacted(spec.archive)}, then prune",
        backup, lines, access, plan_refs=True)
    files[f"{backup}.timer"] = _timer(spec, backup, spec.schedule, "--schedule")
    if spec.drill_schedule is not None and spec.drill_targets:
        drill = f"{base}-drill"
        drill_access = _access(spec, spec.namespace,
                               [v for _, v in _flat(spec.drill_targets, "")], kube=False)
        command = drill_command(spec, drill_access, f"/var/lib/{drill}")
        files[f"{drill}.service"] = _service(
            spec, f"OpenIM restore drill from {_redacted(spec.archive)}", drill,
            [f"ExecStart={_exec(spec, command)}"], drill_access, plan_refs=False)
        files[f"{drill}.timer"] = _timer(spec, drill, spec.drill_schedule, "--drill-schedule")
    elif spec.drill_schedule is not None:
        notes.append("no drill units: on a host, give --drill-target KIND=URL for each store "
                     "to restore into (a staging copy, never production)")
    return Rendered(files, notes)


def _exec(spec: ScheduleSpec, command: list[str]) -> str:
    return " ".join(systemd_quote(a) for a in [spec.executable, *command[1:]])


def _service(spec: ScheduleSpec, description: str, name: str, exec_lines: list[str],
             access: _Access, *, plan_refs: bool) -> str:
    needs = sorted(access.env)
    head = [f"# Rendered by openim-migrate {__version__} (schedule render --kind systemd).",
            f"# {spec.env_file} (mode 0600) must define: "
            f"{', '.join(needs) if needs else '(nothing yet)'}"
            + ("; and every ${VAR} the plan names" if plan_refs else "")]
    if access.secrets:
        head.append("# ${k8s:...} references are read with the kubeconfig in KUBECONFIG "
                    "(set it in the environment file)")
    dirs = [f"RuntimeDirectory={name}"]  # a working directory and HOME, gone after the run
    if not plan_refs:
        dirs.append(f"StateDirectory={name}")  # the drill's reports outlive the run
    if plan_refs and spec.archive.startswith("archive+file:"):  # the drill only reads it
        dirs.append(f"ReadWritePaths={systemd_quote(unquote(urlsplit(spec.archive).path))}")
    body = [
        "[Unit]", f"Description={_escape_specifiers(description)}",
        "Wants=network-online.target", "After=network-online.target", "",
        "[Service]", "Type=oneshot", f"User={spec.user}", f"Group={spec.user}",
        f"EnvironmentFile={spec.env_file}",
        *dirs, f"WorkingDirectory=/run/{name}", f"Environment=HOME=/run/{name}",
        *exec_lines,
        "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only",
        "PrivateTmp=yes", "PrivateDevices=yes",
        "Nice=10", "IOSchedulingClass=best-effort", "IOSchedulingPriority=7", "",
    ]
    return "\n".join(head + body)


def _timer(spec: ScheduleSpec, name: str, schedule: str, option: str) -> str:
    calendar = on_calendar(parse_cron(schedule, option), option, spec.time_zone)
    return "\n".join([
        f"# Rendered by openim-migrate {__version__}: cron {schedule!r}",
        "[Unit]", f"Description=Run {name}.service on schedule", "",
        "[Timer]", f"OnCalendar={calendar}", "Persistent=true", f"Unit={name}.service", "",
        "[Install]", "WantedBy=timers.target", ""])


def _escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")
