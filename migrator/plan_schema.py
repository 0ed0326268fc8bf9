"""The plan's JSON Schema, built from the stores' own spec and option schemas.

One schema serves three readers: ``load_plan`` (every error names its field), editors
(``openim-migrate schema`` writes it, docs/plan.schema.json is a copy), and the docs.
Semantics a schema cannot say (sizes, secret references, key-range coverage) are checked
in plan.py after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from migrator.config import looks_secret
from migrator.errors import PlanError

_SIZE = {"oneOf": [{"type": "integer", "minimum": 1},
                   {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[Bb]?|[Bb])?"
                                                 r"\s*(/s)?\s*$"}]}
_TLS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"enabled": {"type": "boolean"}, "ca_file": {"type": "string"},
                   "cert_file": {"type": "string"}, "key_file": {"type": "string"},
                   "verify": {"type": "boolean"}},
}
_POSITIVE = {"type": "integer", "minimum": 1}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}
_COMMAND = {"oneOf": [{"type": "string", "minLength": 1},
                      {"type": "array", "minItems": 1, "items": {"type": "string"}}]}
_DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$"}
_DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}


def _cutover(kinds: Iterable[str]) -> dict[str, Any]:
    """The ``cutover:`` section: what freezes the source's writers, what the switch patches
    in the cluster (ConfigMap YAML keys, Secret keys from references), what restarts."""
    strict = {"type": "object", "additionalProperties": False}
    return {**strict, "required": ["freeze", "kubernetes", "deployments"], "properties": {
        "freeze": {**strict, "required": ["command", "unfreeze_command"], "properties": {
            "command": _COMMAND, "unfreeze_command": _COMMAND,
            "command_timeout_seconds": _SECONDS,
            "guards": {"oneOf": [
                {"type": "boolean"},
                {**strict, "properties": {kind: {"type": "boolean"} for kind in kinds}}]},
            "max_seconds": _SECONDS}},
        "max_check_age_seconds": _SECONDS,
        "max_lag_records": {"type": "integer", "minimum": 0},
        "kubernetes": {**strict, "required": ["namespace"], "properties": {
            "kubeconfig": {"type": "string", "minLength": 1},
            "context": {"type": "string", "minLength": 1},
            "namespace": _DNS_LABEL}},
        "configmaps": {"type": "array", "items": {
            **strict, "required": ["name", "files"], "properties": {
                "name": _DNS_NAME,
                "files": {"type": "object", "minProperties": 1, "additionalProperties": {
                    "type": "object", "minProperties": 1,
                    "propertyNames": {"pattern": r"^[^.\s]+(\.[^.\s]+)*$"}}}}}},
        "secrets": {"type": "array", "items": {
            **strict, "required": ["name", "keys"], "properties": {
                "name": _DNS_NAME,
                # values: ${VAR} / ${k8s:ns/secret#key} references, checked in plan.py
                "keys": {"type": "object", "minProperties": 1, "additionalProperties": {
                    "type": "string", "minLength": 1}}}}},
        "deployments": {"type": "array", "minItems": 1, "items": _DNS_NAME},
        "rollout_timeout_seconds": _SECONDS,
    }}


def _endpoint(option_schema: dict[str, Any]) -> dict[str, Any]:
    properties = {"url": {"type": "string", "minLength": 1}, "tls": _TLS,
                  **option_schema.get("properties", {})}
    mapping = {"type": "object", "required": ["url"], "properties": properties,
               "additionalProperties": option_schema.get("additionalProperties", True)}
    return {"oneOf": [{"type": "string", "minLength": 1}, mapping]}


def _pair(option_schema: dict[str, Any]) -> dict[str, Any]:
    patterns = {"type": "array", "items": {"type": "string", "minLength": 1}}
    return {
        "type": "object",
        "required": ["source", "target"],
        "additionalProperties": False,
        "properties": {
            "source": _endpoint(option_schema),
            "target": _endpoint(option_schema),
            "selection": {"type": ["object", "null"], "additionalProperties": False,
                          "properties": {"preset": {"type": ["string", "null"]},
                                         "include": patterns, "exclude": patterns}},
            "facts": {"type": "object"},
        },
    }


def plan_schema(kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """The whole plan's schema; ``kinds`` limits the stores (all registered by default)."""
    from migrator.plan import ENVIRONMENTS, ON_EXISTING, STEPS
    from migrator.stores.registry import STORES, store_class

    classes = {kind: store_class(kind) for kind in (STORES if kinds is None else kinds)}
    unit_rules = [{"if": {"properties": {"store": {"const": kind}}, "required": ["store"]},
                   "then": {"properties": {"spec": cls.SPEC_SCHEMA}}}
                  for kind, cls in classes.items()]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "openim-migrate plan",
        "type": "object",
        "required": ["version", "stores"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1},
            "name": {"type": "string"},
            "created_at": {"type": ["string", "null"]},
            "integrity": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "stores": {"type": "object", "minProperties": 1, "additionalProperties": False,
                       "properties": {kind: _pair(classes[kind].OPTION_SCHEMA)
                                      if kind in classes else {} for kind in STORES}},
            "options": {
                "type": ["object", "null"], "additionalProperties": False,
                "properties": {
                    "parallel": _POSITIVE, "batch_records": _POSITIVE, "batch_bytes": _SIZE,
                    "chunk_records": _POSITIVE,
                    "unit_records": {"oneOf": [{"type": "null"}, _POSITIVE]},
                    "rate_limit": {"oneOf": [{"type": "null"}, _SIZE]},
                    "on_existing": {"enum": list(ON_EXISTING)},
                    "retries": {"type": "integer", "minimum": 0},
                    "ttl_tolerance_ms": {"type": "integer", "minimum": 0},
                },
            },
            "steps": {"type": "array", "items": {"enum": list(STEPS)}},
            "environment": {"enum": list(ENVIRONMENTS)},
            "cutover": _cutover(classes),
            "estimate": {"type": ["object", "null"]},
            "existing_on_target": {"type": ["array", "null"], "items": {"type": "string"}},
            "inventory": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["store", "name"],
                    "additionalProperties": False,
                    "properties": {
                        "store": {"enum": list(STORES)},
                        "name": {"type": "string", "minLength": 1},
                        "spec": {"type": "object"},
                        "records": {"type": "integer", "minimum": 0},
                        "bytes": {"type": "integer", "minimum": 0},
                    },
                    "allOf": unit_rules,
                },
            },
        },
    }


def field_path(parts: Iterable[Any]) -> str:
    """``["inventory", 0, "spec", "slots", 1]`` -> ``inventory[0].spec.slots[1]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "plan"


def _problem(error: ValidationError) -> tuple[str, str]:
    where = field_path(error.absolute_path)
    value: Any = error.instance
    schema: Any = error.schema
    rule: Any = error.validator_value
    path = list(error.absolute_path)
    if path and isinstance(path[-1], str) and looks_secret(path[-1]):
        # Never echo what may be a secret, whatever rule it broke.
        return where, "must be a ${VAR} reference to a secret, never the secret itself"
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if error.validator == "additionalProperties" and isinstance(value, dict):
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed)
        if extra:
            name = f"{where}.{extra[0]}" if where != "plan" else extra[0]
            return name, f"unknown field (allowed here: {', '.join(sorted(allowed))})"
    if error.validator == "required":
        missing = [k for k in rule if k not in (value or {})]
        name = f"{where}.{missing[0]}" if where != "plan" else missing[0]
        return name, "missing"
    if error.validator == "type":
        wanted = " or ".join(rule) if isinstance(rule, list) else str(rule)
        return where, f"must be {_ARTICLE.get(wanted, wanted)}, got {shown}"
    if error.validator == "enum":
        return where, f"must be one of {', '.join(map(str, rule))}, got {shown}"
    if error.validator == "const":
        return where, f"must be {rule!r}, got {shown}"
    if error.validator in ("minimum", "maximum"):
        word = "at least" if error.validator == "minimum" else "at most"
        return where, f"must be {word} {rule}, got {shown}"
    if error.validator == "oneOf" and error.context:
        deepest = best_match(error.context)
        if deepest is not None and list(deepest.absolute_path) != list(error.absolute_path):
            return _problem(deepest)
        return where, f"cannot read {shown} here"
    return where, error.message if len(error.message) <= 160 else error.message[:157] + "..."


_ARTICLE = {"integer": "a whole number", "string": "a string", "object": "a mapping",
            "array": "a list", "boolean": "true or false", "number": "a number",
            "null": "empty"}


def validate(raw: Any) -> None:
    """Raise ``PlanError`` naming the field of the most relevant schema violation. Only the
    stores the plan names are loaded, so a missing driver hurts only its own store."""
    from migrator.stores.registry import STORES

    named = raw.get("stores") if isinstance(raw, dict) else None
    kinds = [k for k in named if k in STORES] if isinstance(named, dict) else []
    validator = jsonschema.Draft202012Validator(plan_schema(kinds))
    error = best_match(validator.iter_errors(raw))
    if error is not None:
        where, problem = _problem(error)
        raise PlanError(where, problem)
