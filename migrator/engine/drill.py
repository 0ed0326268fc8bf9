"""Restore drills: prove a backup can be restored, and say how old and how slow.

A drill is a restore of one set (the newest complete one by default) into staging stores,
a verify of every unit against the digests the manifest recorded, and OpenIM's cross-store
checks on what was restored. It reports the set's age at drill time (the recovery point a
disaster at that moment would have) and the restore plus verify time (the recovery time),
per store records and bytes, and pass or fail with every reason. Any error is a failure
with its reason, never an exception: a drill's job is to say what went wrong.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator.archive.manifest import parse_time
from migrator.config import Endpoint
from migrator.engine.backup import RestoreOutcome, restore, scratch_journal
from migrator.engine.verify import MATCH, summary
from migrator.errors import MigrateError
from migrator.plan import Options
from migrator.progress import Progress


@dataclass
class DrillReport:
    archive: str
    set_id: str | None = None
    set_time: str | None = None  # when the set's backup started: its data is this old
    drilled_at: str = ""
    rpo_seconds: float | None = None
    restore_seconds: float | None = None
    verify_seconds: float | None = None
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    max_age_seconds: float | None = None
    restore_outcome: RestoreOutcome | None = None

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def rto_seconds(self) -> float | None:
        if self.restore_seconds is None:
            return None
        return self.restore_seconds + (self.verify_seconds or 0.0)

    def to_dict(self) -> dict[str, Any]:
        outcome = self.restore_outcome
        return {"archive": self.archive, "set": self.set_id, "set_time": self.set_time,
                "drilled_at": self.drilled_at, "passed": self.passed,
                "rpo_seconds": _round(self.rpo_seconds), "rto_seconds": _round(self.rto_seconds),
                "restore_seconds": _round(self.restore_seconds),
                "verify_seconds": _round(self.verify_seconds),
                "max_age_seconds": self.max_age_seconds, "stores": self.stores,
                "reasons": self.reasons,
                "verify": outcome.verify.to_dict() if outcome and outcome.verify else None}

    def junit(self) -> str:
        """JUnit XML for CI: one test case per store and one per check, failures with
        their reasons; RPO and RTO as suite properties."""
        cases: list[tuple[str, list[str]]] = []
        for kind in sorted(self.stores) or ["(set)"]:
            mine = [r for r in self.reasons if r.startswith(f"{kind}:") or r.startswith(kind)]
            cases.append((f"restore and verify {kind}", mine))
        named = {r for _, rs in cases for r in rs}
        if self.max_age_seconds is not None:
            age = [r for r in self.reasons if r.startswith("set age")]
            named.update(age)
            cases.append(("set age within --max-age", age))
        rest = [r for r in self.reasons if r not in named]
        cases.append(("drill", rest))
        suite = ET.Element("testsuite", name="openim-migrate drill", tests=str(len(cases)),
                           failures=str(sum(1 for _, r in cases if r)), errors="0",
                           time=f"{self.rto_seconds or 0.0:.3f}",
                           timestamp=self.drilled_at)
        props = ET.SubElement(suite, "properties")
        for name, value in (("archive", self.archive), ("set", self.set_id or ""),
                            ("rpo_seconds", _text(self.rpo_seconds)),
                            ("rto_seconds", _text(self.rto_seconds))):
            ET.SubElement(props, "property", name=name, value=value)
        for name, reasons in cases:
            case = ET.SubElement(suite, "testcase", classname="openim-migrate.drill", name=name)
            if reasons:
                failure = ET.SubElement(case, "failure", message=reasons[0])
                failure.text = "\n".join(reasons)
        ET.indent(suite)
        return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def drill(archive: Endpoint, targets: dict[str, Endpoint], options: Options, *,
          max_age_seconds: float | None = None, journal: Path | None = None,
          progress: Progress | None = None, stop: threading.Event | None = None
          ) -> DrillReport:
    """Restore ``archive`` (its ``set`` option, or the newest complete set) into
    ``targets``, verify it, and report; never raises for what it finds."""
    now = datetime.now(UTC)
    report = DrillReport(archive=archive.label, max_age_seconds=max_age_seconds,
                         drilled_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    began = time.monotonic()
    try:
        if journal is None:
            with scratch_journal() as scratch:
                outcome = restore(archive, targets, options, journal=scratch,
                                  progress=progress, stop=stop)
        else:
            outcome = restore(archive, targets, options, journal=journal,
                              progress=progress, stop=stop)
    except MigrateError as exc:
        report.restore_seconds = time.monotonic() - began
        report.reasons.append(f"restore failed: {exc}")
        return report
    report.restore_outcome = outcome
    report.archive, report.set_id = outcome.archive, outcome.set_id
    report.set_time = outcome.set_started
    report.rpo_seconds = (now - parse_time(outcome.set_started)).total_seconds()
    report.restore_seconds = outcome.seconds - outcome.verify_seconds
    report.verify_seconds = outcome.verify_seconds if outcome.verify else None
    report.stores = {k: dict(v) for k, v in outcome.stores.items()}
    report.reasons.extend(_reasons(outcome))
    if max_age_seconds is not None and report.rpo_seconds > max_age_seconds:
        report.reasons.append(f"set age {report.rpo_seconds:.0f}s is over --max-age "
                              f"{max_age_seconds:.0f}s: backups are not running as scheduled")
    for kind, totals in report.stores.items():
        totals["passed"] = not any(r.startswith(f"{kind}:") for r in report.reasons)
    return report


def _reasons(outcome: RestoreOutcome) -> list[str]:
    reasons = [f"{o.key}: restore {o.state}: {o.error or 'no error recorded'}"
               for o in outcome.copy.failed]
    if outcome.copy.interrupted:
        reasons.append("restore interrupted before it finished")
    if outcome.verify is not None:
        for unit in outcome.verify.units:
            if unit.status != MATCH:
                detail = unit.error if unit.error else summary(unit)
                reasons.append(f"{unit.unit}: verify {unit.status}: {detail}")
        for name, check in outcome.verify.extra.items():
            if check.get("missing"):
                shown = ", ".join(str(m) for m in check["missing"][:5])
                reasons.append(f"{name}: {check.get('n_missing', len(check['missing']))} "
                               f"missing ({shown})" + (f": {check['error']}"
                                                       if check.get("error") else ""))
    elif not outcome.copy.failed and not outcome.copy.interrupted:
        reasons.append("no verify ran")
    return reasons
