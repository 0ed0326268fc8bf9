"""The plan file: human-readable YAML, schema-checked on load with errors naming the field."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migrator.config import Endpoint
from migrator.errors import PlanError
from migrator.stores.base import Selection, StoreOptions, Unit

PLAN_VERSION = 1
STEPS = ("copy", "verify")
ON_EXISTING = ("fail", "overwrite", "skip")

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
    unit_records: int = 200_000
    rate_limit: int | None = None  # bytes per second over all units
    on_existing: str = "fail"
    retries: int = 5
    ttl_tolerance_ms: int = 1000

    def store_options(self) -> StoreOptions:
        return StoreOptions(batch_records=self.batch_records, batch_bytes=self.batch_bytes,
                            chunk_records=self.chunk_records, unit_records=self.unit_records,
                            on_existing=self.on_existing,
                            ttl_tolerance_ms=self.ttl_tolerance_ms)


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

    def units_of(self, kind: str) -> list[Unit]:
        return [u for u in self.inventory if u.store == kind]

    def fingerprint(self) -> str:
        """What the journal binds to: the endpoints and units, not tunables like parallel."""
        data = {
            "stores": {k: [p.source.url, p.target.url] for k, p in sorted(self.stores.items())},
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
        return {
            "version": PLAN_VERSION,
            "name": self.name,
            "created_at": self.created_at,
            "stores": stores,
            "options": options,
            "steps": list(self.steps),
            "estimate": self.estimate,
            "existing_on_target": list(self.existing),
            "inventory": [u.to_dict() for u in self.inventory],
        }

    def save(self, path: Path) -> None:
        header = ("# openim-migrate plan. Edit options and selection freely; re-run `plan` after\n"
                  "# changing endpoints or selection. Secrets appear only as ${VAR} references.\n")
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(header + body, encoding="utf-8")
        tmp.replace(path)
        self.path = path


def load_plan(path: Path) -> Plan:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(str(path), "no such plan file",
                        hint="create one with `openim-migrate plan ... -o PATH`") from None
    except yaml.YAMLError as exc:
        raise PlanError(str(path), f"not valid YAML ({exc})") from exc
    plan = plan_from_dict(raw)
    plan.path = path
    return plan


def _require(data: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PlanError(where, f"must be a {_NAMES.get(names, names)}, got "
                        f"{_NAMES.get(type(data).__name__, type(data).__name__)}")
    return data


_NAMES = {"dict": "mapping", "list": "list", "str": "string", "int": "number",
          "NoneType": "nothing", "bool": "true/false"}


def _unknown(data: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise PlanError(f"{where}.{extra[0]}" if where else extra[0], "unknown field",
                        hint=f"allowed here: {', '.join(sorted(allowed))}")


def plan_from_dict(raw: Any) -> Plan:
    from migrator.stores.registry import STORES

    _require(raw, dict, "plan")
    _unknown(raw, {"version", "name", "created_at", "stores", "options", "steps", "estimate",
                   "existing_on_target", "inventory"}, "")
    if raw.get("version") != PLAN_VERSION:
        raise PlanError("version", f"must be {PLAN_VERSION}, got {raw.get('version')!r}")
    name = str(_require(raw.get("name", "plan"), str, "name"))
    stores: dict[str, StorePair] = {}
    for kind, entry in _require(raw.get("stores"), dict, "stores").items():
        where = f"stores.{kind}"
        if kind not in STORES:
            raise PlanError(where, "unknown store kind", hint=f"one of: {', '.join(STORES)}")
        _require(entry, dict, where)
        _unknown(entry, {"source", "target", "selection", "facts"}, where)
        for side in ("source", "target"):
            if side not in entry:
                raise PlanError(f"{where}.{side}", "missing")
        sel = _require(entry.get("selection") or {}, dict, f"{where}.selection")
        _unknown(sel, {"preset", "include", "exclude"}, f"{where}.selection")
        selection = Selection(
            include=tuple(_require(sel.get("include") or [], list, f"{where}.selection.include")),
            exclude=tuple(_require(sel.get("exclude") or [], list, f"{where}.selection.exclude")),
            preset=sel.get("preset"))
        stores[kind] = StorePair(
            kind=kind,
            source=Endpoint.from_dict(kind, entry["source"], f"{where}.source"),
            target=Endpoint.from_dict(kind, entry["target"], f"{where}.target"),
            selection=selection, facts=entry.get("facts") or {})
    if not stores:
        raise PlanError("stores", "names no store")
    options = _options(raw.get("options") or {})
    steps = tuple(_require(raw.get("steps") or list(STEPS), list, "steps"))
    for i, step in enumerate(steps):
        if step not in STEPS:
            raise PlanError(f"steps[{i}]", f"unknown step {step!r}", hint=f"one of {STEPS}")
    inventory = []
    for i, entry in enumerate(_require(raw.get("inventory") or [], list, "inventory")):
        where = f"inventory[{i}]"
        _require(entry, dict, where)
        for key in ("store", "name"):
            if key not in entry:
                raise PlanError(f"{where}.{key}", "missing")
        if entry["store"] not in stores:
            raise PlanError(f"{where}.store", f"{entry['store']!r} is not in stores")
        inventory.append(Unit.from_dict(entry))
    return Plan(name=name, stores=stores, options=options, inventory=inventory,
                existing=list(raw.get("existing_on_target") or []),
                estimate=raw.get("estimate") or {}, steps=steps,
                created_at=str(raw.get("created_at") or ""))


def _options(data: dict) -> Options:
    _require(data, dict, "options")
    defaults = Options()
    _unknown(data, set(vars(defaults)), "options")
    values: dict[str, Any] = {}
    for key, default in vars(defaults).items():
        if key not in data:
            continue
        value, where = data[key], f"options.{key}"
        if key in ("batch_bytes", "rate_limit"):
            value = parse_size(value, where)
        elif key == "on_existing":
            if value not in ON_EXISTING:
                raise PlanError(where, f"must be one of {', '.join(ON_EXISTING)}, got {value!r}")
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise PlanError(where, f"must be a whole number, got {value!r}")
        if isinstance(value, int) and value < (0 if key in ("retries",) else 1):
            raise PlanError(where, f"must be at least {0 if key == 'retries' else 1}")
        values[key] = value
    return Options(**values)
