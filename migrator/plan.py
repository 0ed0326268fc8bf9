"""The plan file: human-readable YAML, schema-checked on load with errors naming the field."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migrator import plan_schema
from migrator.config import Endpoint, check_secret_reference, looks_secret
from migrator.errors import PlanChanged, PlanError
from migrator.stores.base import Role, Selection, StoreOptions, Unit

PLAN_VERSION = 1
STEPS = ("copy", "verify")
ON_EXISTING = ("fail", "overwrite", "skip")
ENVIRONMENTS = ("staging", "production")  # production cutovers need an approval

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(value: Any, field_name: str) -> int | None:
    """``"50MiB"``, ``"20MB/s"``, ``1048576`` -> bytes; ``None`` stays None."""
    if value is None or isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise PlanError(field_name, f"cannot read {value!r} as a size",
                        hint="write e.g. 50MiB, 20MB or a number of bytes")
    number, suffix = float(match.group(1)), (match.group(2) or "").upper()
    base = 1024 if "I" in suffix else 1000
    power = "BKMGT".index(suffix[0]) if suffix else 0
    return int(number * base**power)


@dataclass
class Options:
    parallel: int = 4
    batch_records: int = 1000
    batch_bytes: int = 8 << 20
    chunk_records: int = 10_000
    unit_records: int | None = None  # None: each store's own default (StoreOptions)
    rate_limit: int | None = None  # bytes per second over all units
    on_existing: str = "fail"
    retries: int = 5
    ttl_tolerance_ms: int = 1000

    def store_options(self) -> StoreOptions:
        return StoreOptions(batch_records=self.batch_records, batch_bytes=self.batch_bytes,
                            chunk_records=self.chunk_records, unit_records=self.unit_records,
                            on_existing=self.on_existing,
                            ttl_tolerance_ms=self.ttl_tolerance_ms, parallel=self.parallel)


@dataclass
class StorePair:
    kind: str
    source: Endpoint
    target: Endpoint
    selection: Selection = field(default_factory=Selection)
    facts: dict[str, Any] = field(default_factory=dict)  # describe() of both sides


@dataclass
class Plan:
    name: str
    stores: dict[str, StorePair]
    options: Options = field(default_factory=Options)
    inventory: list[Unit] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # unit keys with data on the target
    estimate: dict[str, Any] = field(default_factory=dict)
    steps: tuple[str, ...] = STEPS
    created_at: str = ""
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # from planning; not saved
    # The cutover: which environment (the approval gate) and what to freeze and switch.
    # Schema-checked on load; read by migrator.engine.cutover. Edited by hand like options.
    environment: str | None = None
    cutover: dict[str, Any] = field(default_factory=dict)

    def units_of(self, kind: str) -> list[Unit]:
        return [u for u in self.inventory if u.store == kind]


    def fingerprint(self) -> str:
        """What the journal binds to: the endpoints and units, not tunables like parallel."""
        data = {
            "stores": {k: [p.source.to_dict(), p.target.to_dict()]
                       for k, p in sorted(self.stores.items())},
            "inventory": [[u.store, u.name, u.spec] for u in self.inventory],
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    # -- YAML ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        stores: dict[str, Any] = {}
        for kind, pair in self.stores.items():
            entry: dict[str, Any] = {"source": pair.source.to_dict(),
                                     "target": pair.target.to_dict()}
            selection = {k: v for k, v in (("preset", pair.selection.preset),
                                           ("include", list(pair.selection.include)),
                                           ("exclude", list(pair.selection.exclude))) if v}
            if selection:
                entry["selection"] = selection
            if pair.facts:
                entry["facts"] = pair.facts
            stores[kind] = entry
        options = dict(vars(self.options))
        data = {
            "version": PLAN_VERSION,
            "name": self.name,
            "created_at": self.created_at,
            "integrity": "",
            "stores": stores,
            "options": options,
            "steps": list(self.steps),
            "estimate": self.estimate,
            "existing_on_target": list(self.existing),
            "inventory": [u.to_dict() for u in self.inventory],
        }
        if self.environment:
            data["environment"] = self.environment
        if self.cutover:
            data["cutover"] = self.cutover
        data["integrity"] = integrity_of(data)
        return data

    def save(self, path: Path) -> None:
        header = ("# openim-migrate plan. Edit options freely; re-run `plan` after changing\n"
                  "# endpoints or selection: `integrity` guards them and the inventory.\n"
                  "# Secrets appear only as ${VAR} references.\n")
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(header + body, encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise PlanError(str(path), f"cannot write the plan ({exc.strerror or exc})",
                            hint="choose a writable path with -o") from None
        self.path = path


def integrity_of(data: dict[str, Any]) -> str:
    """A hash over what decides what is copied and verified (endpoints, selection,
    inventory): an edit by hand, even before the first run, is noticed on load."""
    guarded = {"stores": {kind: {k: v for k, v in (entry or {}).items() if k != "facts"}
                          for kind, entry in (data.get("stores") or {}).items()},
               "existing_on_target": data.get("existing_on_target") or [],
               # production needs an approved cutover: flipping it by hand must be seen
               "environment": data.get("environment"),
               "inventory": data.get("inventory") or []}
    text = json.dumps(guarded, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def load_plan(path: Path) -> Plan:
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise PlanError(str(path), "no such plan file",
                        hint="create one with `openim-migrate plan ... -o PATH`") from None
    except IsADirectoryError:
        raise PlanError(str(path), "is a directory, not a plan file") from None
    except OSError as exc:
        raise PlanError(str(path), f"cannot read the plan ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PlanError(str(path), f"not UTF-8 text (byte {exc.start})",
                        hint="save the plan as UTF-8") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise PlanError(str(path), f"not valid YAML ({problem})") from None
    plan = plan_from_dict(raw, origin=str(path))
    plan.path = path
    return plan


def plan_from_dict(raw: Any, *, origin: str = "plan", check_integrity: bool = True) -> Plan:
    """Schema first (every error names its field), then what a schema cannot say: sizes,
    secret references, each store's URL rules, key-range coverage, and the integrity hash."""
    from migrator.stores.registry import store_class

    if not isinstance(raw, dict):
        raise PlanError("plan", f"must be a mapping of fields, got {type(raw).__name__}")
    plan_schema.validate(raw)
    stores: dict[str, StorePair] = {}
    for kind, entry in raw["stores"].items():
        where = f"stores.{kind}"
        sel = entry.get("selection") or {}
        stores[kind] = StorePair(
            kind=kind,
            source=Endpoint.from_dict(kind, entry["source"], f"{where}.source"),
            target=Endpoint.from_dict(kind, entry["target"], f"{where}.target"),
            selection=Selection(include=tuple(sel.get("include") or ()),
                                exclude=tuple(sel.get("exclude") or ()),
                                preset=sel.get("preset")),
            facts=entry.get("facts") or {})
    options = _options(raw.get("options") or {})
    _check_cutover(raw.get("cutover") or {})
    steps = tuple(raw.get("steps") or STEPS)
    inventory = []
    for i, entry in enumerate(raw.get("inventory") or []):
        if entry["store"] not in stores:
            raise PlanError(f"inventory[{i}].store", f"{entry['store']!r} is not in stores")
        inventory.append(Unit.from_dict(entry))
    for kind, pair in stores.items():
        cls = store_class(kind)
        cls.check_endpoint(pair.source, Role.SOURCE)
        cls.check_endpoint(pair.target, Role.TARGET)
        gaps = cls.uncovered([u for u in inventory if u.store == kind])
        if gaps:
            more = f" (and {len(gaps) - 3} more)" if len(gaps) > 3 else ""
            raise PlanError(f"inventory ({kind})",
                            f"the units no longer cover the selection: {'; '.join(gaps[:3])}"
                            f"{more}", hint="re-run `openim-migrate plan`; units are measured, "
                            "not edited by hand")
    plan = Plan(name=raw.get("name") or "plan", stores=stores, options=options, inventory=inventory,
                existing=list(raw.get("existing_on_target") or []),
                estimate=raw.get("estimate") or {}, steps=steps,
                created_at=str(raw.get("created_at") or ""),
                environment=raw.get("environment"), cutover=raw.get("cutover") or {})
    if check_integrity:
        stated = raw.get("integrity")
        if not stated:
            raise PlanChanged(f"{origin}: has no integrity hash, so edits to its endpoints, "
                              "selection or inventory cannot be detected",
                              hint="write plans with `openim-migrate plan -o PATH`")
        if stated != integrity_of(raw):
            raise PlanChanged(f"{origin}: endpoints, selection or inventory were edited after "
                              "`plan` wrote it (integrity hash differs)",
                              hint="re-run `openim-migrate plan`; only options and steps "
                              "may be edited by hand")
    return plan


def _check_cutover(section: dict[str, Any]) -> None:
    """What the schema cannot say about ``cutover:``: Secret values are references only,
    and a ConfigMap (plain text, readable by many) is never given a secret."""
    for i, secret in enumerate(section.get("secrets") or []):
        for key, value in secret["keys"].items():
            check_secret_reference(value, f"cutover.secrets[{i}].keys.{key}")
    for i, configmap in enumerate(section.get("configmaps") or []):
        for file, keys in configmap["files"].items():
            for path in keys:
                if looks_secret(path):
                    raise PlanError(f"cutover.configmaps[{i}].files.{file}.{path}",
                                    "looks like a secret; a ConfigMap is plain text",
                                    hint="set it in a Secret under cutover.secrets (OpenIM "
                                    "reads credentials from IMENV_* variables)")


def _options(data: dict[str, Any]) -> Options:
    """Types and bounds were checked by the schema; sizes are read here."""
    values = dict(data)
    for key in ("batch_bytes", "rate_limit"):
        if key in values:
            values[key] = parse_size(values[key], f"options.{key}")
    return Options(**values)
