"""MongoDB facts besides documents: the server, collection options, views, indexes, `_id` order.

The server part turns an endpoint into client arguments (secrets resolved only here, never
put into a URL string), says what is behind it (MongoDB or FerretDB, topology) and what its
error codes mean for us (terminal, transient, missing capability).

Collections are created with their options before data arrives (capped, collation and
timeseries can only be set at creation); indexes are built after the data
(one build over the finished collection is faster than maintaining them per insert); views
are definitions only. ``schema`` gives the verifier a normalised, JSON-like picture of all
of it, so two servers that spell the same definition differently (``v``, ``ns``) compare
equal.

The last part orders BSON values the way MongoDB does (type bracket first, then value)
so chunk membership can be decided client side in one unsorted pass over a unit.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, unquote

import bson
import jsonschema
from bson import SON, json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo import errors as mx
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.uri_parser import split_options

from migrator.config import Endpoint, resolve_refs
from migrator.errors import (
    CapabilityMissing,
    MigrateError,
    PlanError,
    StoreError,
    TransientError,
)

RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True,
                   datetime_conversion=DatetimeConversion.DATETIME_AUTO)
META = CodecOptions(document_class=SON, tz_aware=True,
                    datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_EJSON_IN = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL,
                                  document_class=SON, tz_aware=True,
                                  datetime_conversion=DatetimeConversion.DATETIME_AUTO)

# Error codes a server uses for "I do not implement that" (FerretDB: 238, 115, 59; an
# unsupported index type surfaces as 27 IndexNotFound or 67 CannotCreateIndex there).
UNSUPPORTED_CODES = {238, 115, 59}
_INDEX_UNSUPPORTED_CODES = UNSUPPORTED_CODES | {27, 67}
_NAMESPACE_EXISTS = 48
_DROPPED_INDEX_FIELDS = ("v", "ns", "background")


# -- the server --------------------------------------------------------------------------
_URL = re.compile(r"^(?P<scheme>mongodb(?:\+srv)?)://(?:(?P<userinfo>[^@/?]*)@)?"
                  r"(?P<hosts>[^/?]+)(?P<path>/[^?]*)?(?:\?(?P<query>.*))?$")
_AUTH_FAILED = 18
_UNAUTHORIZED = {13, 8000}  # 8000: Atlas' AtlasError for missing privileges
_CURSOR_GONE = {43, 237}  # CursorNotFound, CursorKilled: resume from the checkpoint


@dataclass(frozen=True)
class ServerInfo:
    flavor: str  # "mongodb" | "documentdb" | "ferretdb"
    version: str
    topology: str  # "standalone" | "replicaSet" | "sharded"
    set_name: str | None
    max_wire: int
    start_time: Any  # operationTime at open (replica sets), the catch-up start point
    # set by the store after probing: the server refused an atClusterTime in the future and
    # accepted the current one, i.e. it really reads at the time asked for
    snapshot_verified: bool = False

    @property
    def snapshot_candidate(self) -> bool:
        """What the replies promise; ``snapshot_reads`` is what a probe confirmed."""
        return (self.flavor != "ferretdb" and self.topology != "standalone"
                and self.max_wire >= 13 and self.start_time is not None)

    @property
    def snapshot_reads(self) -> bool:
        return self.snapshot_candidate and self.snapshot_verified

    @classmethod
    def from_replies(cls, hello: Mapping[str, Any], build: Mapping[str, Any]) -> ServerInfo:
        """From ``hello`` and ``buildInfo``. FerretDB reports ``ferretdbVersion``; DocumentDB's
        gateway claims to be a mongos (``isdbgrid``) but its ``buildInfo`` has no
        ``gitVersion``, which every MongoDB build reports."""
        if "ferretdbVersion" in build:
            flavor, version = "ferretdb", str(build["ferretdbVersion"])
        elif "gitVersion" not in build and "internal" in hello:
            flavor, version = "documentdb", str(build.get("version", "?"))
        else:
            flavor, version = "mongodb", str(build.get("version", "?"))
        if hello.get("msg") == "isdbgrid":
            topology = "sharded"
        else:
            topology = "replicaSet" if hello.get("setName") else "standalone"
        return cls(flavor=flavor, version=version, topology=topology,
                   set_name=hello.get("setName"), max_wire=int(hello.get("maxWireVersion", 0)),
                   start_time=hello.get("operationTime"))


def client_args(endpoint: Endpoint) -> tuple[str, dict[str, Any], str | None]:
    """(URI without credentials, MongoClient keyword arguments, database named in the URL).

    Parsed here rather than with ``Endpoint.connection()`` because MongoDB URLs may list
    several hosts (``h1:27017,h2:27017``), which ``urlsplit`` cannot read as one port.
    """
    where = f"{endpoint.name or endpoint.kind}.url"
    m = _URL.match(endpoint.url)
    if not m:
        raise PlanError(where, "not a MongoDB URL",
                        hint="mongodb://[user:${PASSWORD_VAR}@]host:port[/db][?options]")
    opts = endpoint.options
    timeout = int(opts.get("server_selection_timeout_ms", 5000))
    kwargs: dict[str, Any] = {"serverSelectionTimeoutMS": timeout,
                              "connectTimeoutMS": min(timeout, 10_000),
                              "appname": "openim-migrate",
                              "maxPoolSize": int(opts.get("max_pool_size", 32))}
    if m["userinfo"]:
        user, _, password = m["userinfo"].partition(":")
        kwargs["username"] = resolve_refs(unquote(user), where)
        if password:
            kwargs["password"] = resolve_refs(unquote(password), where)
    kwargs.update(_tls_args(endpoint))
    uri = f"{m['scheme']}://{m['hosts']}{m['path'] or '/'}"
    if m["query"]:
        uri += f"?{m['query']}"
    return uri, kwargs, unquote((m["path"] or "/").lstrip("/")) or None


def _tls_args(endpoint: Endpoint) -> dict[str, Any]:
    tls = endpoint.tls
    if not tls.enabled:
        # mongodb+srv:// means TLS to the driver; say so rather than let it happen unseen
        return {"tls": True} if endpoint.url.startswith("mongodb+srv://") else {}
    out: dict[str, Any] = {"tls": True}
    if tls.ca_file:
        out["tlsCAFile"] = tls.ca_file
    if tls.cert_file:
        if tls.key_file and tls.key_file != tls.cert_file:
            raise PlanError(f"{endpoint.name}.tls.key_file",
                            "MongoDB clients need the key inside the certificate file",
                            hint="cat cert.pem key.pem > client.pem and set cert_file")
        out["tlsCertificateKeyFile"] = tls.cert_file
    if not tls.verify:
        out["tlsAllowInvalidCertificates"] = True
        out["tlsAllowInvalidHostnames"] = True
    return out


def tls_state(endpoint: Endpoint) -> str:
    """The TLS state a plan shows: off, verified (against which CAs) or not verified."""
    tls = endpoint.tls
    if not tls.enabled and not endpoint.url.startswith("mongodb+srv://"):
        return "off"
    if tls.enabled and not tls.verify:
        return "on, certificate NOT verified (tls.verify: false)"
    return f"on, certificate verified against {tls.ca_file or 'the system CAs'}"


# -- what an endpoint may say --------------------------------------------------------------
SCHEMES = ("mongodb", "mongodb+srv")
_DB_NAME = r'^[^/\\. "$\x00]{1,63}$'  # MongoDB forbids / \ . space " $ and NUL in DB names
_URL_FORM = "write mongodb://[user:${PASSWORD_VAR}@]host:port[,host:port...][/db][?options]"
# URL parameters the store sets itself; in the URL they would be overridden or hidden
_OWN_PARAMS = {"serverselectiontimeoutms": "server_selection_timeout_ms",
               "connecttimeoutms": "server_selection_timeout_ms",
               "maxpoolsize": "max_pool_size", "appname": None}
_TLS_PARAMS = {"tls", "ssl", "tlscafile", "tlscertificatekeyfile", "tlsinsecure",
               "tlsallowinvalidcertificates", "tlsallowinvalidhostnames",
               "tlscertificatekeyfilepassword", "tlsdisableocspendpointcheck", "tlscrlfile"}


def _db_name(what: str) -> dict[str, Any]:
    return {"type": "string", "pattern": _DB_NAME,
            "description": f"{what}: 1-63 characters, none of / \\ . space \" $"}


OPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "databases": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": _db_name("a database name"),
                      "description": "a list of the source databases to copy (default: the "
                                     "URL's database, else all but admin, config, local)"},
        "db_map": {"type": "object", "propertyNames": _db_name("a source database name"),
                   "additionalProperties": _db_name("a database name on the target"),
                   "description": "a mapping from source database names to names on this "
                                  "(target) side"},
        "server_selection_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600_000,
                                        "description": "milliseconds from 1 to 600000"},
        "max_pool_size": {"type": "integer", "minimum": 1, "maximum": 1000,
                          "description": "connections per server, from 1 to 1000"},
        "snapshot": {"type": "boolean",
                     "description": "true or false (false: read without snapshot read concern)"},
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["db", "collection", "lo", "hi"],
    "additionalProperties": False,
    "properties": {
        "db": _db_name("the source database"),
        "collection": {"type": "string", "minLength": 1, "maxLength": 255,
                       "pattern": r"^[^$\x00]+$", "description": "the collection's name"},
        "lo": {"description": "first _id of the range, inclusive, as canonical Extended JSON; "
                              "null: from the lowest _id"},
        "hi": {"description": "end of the range, exclusive, as canonical Extended JSON; "
                              "null: to the highest _id"},
        "bypass_validation": {"type": "boolean"},
        "resumable": {"type": "boolean"},
    },
}

_OPTIONS = jsonschema.Draft202012Validator(OPTION_SCHEMA)


def check_endpoint(endpoint: Endpoint, role: str) -> None:
    """Refuse what this store would misread or silently ignore; errors name the field."""
    name = endpoint.name or "mongo"
    _check_options(endpoint, name)
    where = f"{name}.url"
    m = _URL.match(endpoint.url)
    scheme = endpoint.url.partition("://")[0] if "://" in endpoint.url else ""
    if scheme not in SCHEMES:
        problem = (f"scheme '{scheme}' is not one this store speaks (mongodb, mongodb+srv)"
                   if scheme else "has no scheme")
        raise PlanError(where, problem, hint=_URL_FORM)
    if not m:
        raise PlanError(where, "not a MongoDB URL", hint=_URL_FORM)
    if m["userinfo"] is not None:
        user, sep, _ = m["userinfo"].partition(":")
        if not user:
            raise PlanError(where, "has credentials without a user name", hint=_URL_FORM)
    _check_hosts(m["hosts"], scheme == "mongodb+srv", where)
    path = unquote((m["path"] or "/")[1:])
    if path and not re.match(_DB_NAME, path):
        raise PlanError(where, f"'{path}' is not a database name (none of / \\ . space \" $)",
                        hint=_URL_FORM)
    for key, value in parse_qsl(m["query"] or "", keep_blank_values=True):
        _check_param(key, value, role, where)
    opts = endpoint.options
    if path and opts.get("databases"):
        raise PlanError(f"{name}.databases", f"would be ignored: the URL names database '{path}'",
                        hint="drop the database from the URL, or drop databases")
    if role == "source" and opts.get("db_map"):
        raise PlanError(f"{name}.db_map", "is for targets: a source keeps its database names",
                        hint="move db_map to the target endpoint")


def _check_options(endpoint: Endpoint, name: str) -> None:
    known = OPTION_SCHEMA["properties"]
    for error in sorted(_OPTIONS.iter_errors(endpoint.options), key=lambda e: list(e.path)):
        path = [str(p) for p in error.absolute_path]
        if not path:
            extra = sorted(set(endpoint.options) - set(known))
            raise PlanError(f"{name}.{extra[0]}" if extra else name, "unknown option",
                            hint=f"allowed: {', '.join(sorted(known))}")
        expected = known.get(path[0], {}).get("description", "another value")
        raise PlanError(f"{name}.{'.'.join(path)}", f"expected {expected}, "
                        f"got {error.instance!r}")


def _check_hosts(hosts: str, srv: bool, where: str) -> None:
    items = hosts.split(",")
    if srv and len(items) != 1:
        raise PlanError(where, "mongodb+srv:// takes exactly one host name", hint=_URL_FORM)
    for item in items:
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise PlanError(where, f"cannot read host '{item}'", hint=_URL_FORM)
            port = rest[1:] if rest else None
        else:
            host, sep, port_text = item.rpartition(":")
            host, port = (host, port_text) if sep else (item, None)
        if not host:
            raise PlanError(where, f"has an empty host in '{hosts}' (it would not mean "
                            "localhost)", hint=_URL_FORM)
        if port is None:
            continue
        if srv:
            raise PlanError(where, "mongodb+srv:// takes no port (DNS names the servers)",
                            hint=_URL_FORM)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise PlanError(where, f"host '{item}' has port {port or '(empty)'}; a port is "
                            "1-65535 (an empty port or 0 would not mean 27017)", hint=_URL_FORM)


def _check_param(key: str, value: str, role: str, where: str) -> None:
    lower = key.lower()
    if lower in _TLS_PARAMS:
        raise PlanError(where, f"URL parameter '{key}': TLS is set with the endpoint's tls: "
                        "option, so the plan shows it",
                        hint="tls: {enabled: true, ca_file: ..., cert_file: ..., verify: true}")
    if lower in _OWN_PARAMS:
        option = _OWN_PARAMS[lower]
        raise PlanError(where, f"URL parameter '{key}' would be overridden by the store",
                        hint=f"use the endpoint option {option}" if option else
                        "drop it; the store names itself openim-migrate")
    try:
        parsed = split_options(f"{key}={value}", validate=True, warn=False)
    except (mx.ConfigurationError, ValueError, TypeError) as exc:
        text = str(exc).split(" Did you mean")[0].rstrip(".")
        problem = ("is not a MongoDB URL option, so it would be ignored"
                   if text.startswith("Unknown option") else f"is not valid ({text})")
        raise PlanError(where, f"URL parameter '{key}' {problem}",
                        hint="see the driver's connection string options") from exc
    if lower == "w" and str(parsed.get("w")) == "0" and role == "target":
        raise PlanError(where, "URL parameter 'w=0': unacknowledged writes cannot be "
                        "checkpointed; a lost write would only show at verify",
                        hint="drop w=0 (the default acknowledges every batch)")


def translate(endpoint: Endpoint, exc: mx.PyMongoError, what: str) -> MigrateError:
    """The project's error for a driver error; ``what`` says what we were doing."""
    label = endpoint.label
    if isinstance(exc, mx.OperationFailure):
        message = str((exc.details or {}).get("errmsg") or exc).splitlines()[0][:300]
        # DocumentDB's gateway answers a wrong password with 13 (Unauthorized), not 18
        if exc.code == _AUTH_FAILED or (exc.code in _UNAUTHORIZED and what == "connecting"):
            return endpoint.fail(f"authentication failed while {what}: {message}",
                                 hint="check the user, its password variable and authSource")
        if exc.code in _UNAUTHORIZED:
            return endpoint.fail(f"not authorized while {what}: {message}",
                                 hint="grant the user the roles this step needs")
        if exc.code in _CURSOR_GONE:
            return TransientError(f"{label}: cursor lost while {what}: {message}")
        if exc.code in UNSUPPORTED_CODES:
            return CapabilityMissing(f"{label}: the server cannot do this ({what}): {message}")
        if isinstance(exc, mx.ExecutionTimeout):
            return TransientError(f"{label}: timed out while {what}")
        return StoreError(f"{label}: {what} failed: {message}")
    if isinstance(exc, mx.ServerSelectionTimeoutError):
        reason = str(exc).split(", Timeout:")[0][:200]
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            return endpoint.fail(f"TLS: the server's certificate was not accepted while {what} "
                                 f"({reason})",
                                 hint="set tls.ca_file to the CA that signed the server's "
                                 "certificate (or tls.verify: false for a test server only)")
        return endpoint.fail(f"cannot reach the server while {what} ({reason})", transient=True,
                             hint="check host, port, replicaSet and the network")
    if isinstance(exc, mx.ConnectionFailure):  # AutoReconnect, NetworkTimeout, ...
        return TransientError(f"{label}: connection lost while {what}: {exc}")
    if isinstance(exc, mx.ConfigurationError):
        return endpoint.fail(f"client configuration: {exc}")
    return StoreError(f"{label}: {what} failed: {exc}")


# -- JSON-safe values (plan files, cursors, chunk bounds) -----------------------------------
def to_ejson(value: Any) -> Any:
    """Canonical Extended JSON, so int32/int64/double and ObjectId survive a JSON file."""
    text = json_util.dumps({"v": value}, json_options=json_util.CANONICAL_JSON_OPTIONS)
    return json.loads(text)["v"]


def from_ejson(value: Any) -> Any:
    return json_util.loads(json.dumps({"v": value}), json_options=_EJSON_IN)["v"]


def id_label(value: Any) -> str:
    """A readable, unambiguous name for an `_id` in reports (and ``records()``' keys)."""
    if isinstance(value, bson.ObjectId):
        return f"ObjectId('{value}')"
    return json.dumps(to_ejson(value), separators=(",", ":"))


def id_from_label(label: str) -> Any:
    """The exact `_id` value (type included: int32, int64, double...) ``id_label`` named.

    Raises ValueError for a text ``id_label`` could not have printed, so a key is never
    read as a look-alike of another type.
    """
    try:
        if label.startswith("ObjectId('") and label.endswith("')"):
            value: Any = bson.ObjectId(label[len("ObjectId('"):-2])
        else:
            value = from_ejson(json.loads(label))
        same = id_label(value) == label
    except (ValueError, TypeError, KeyError, OverflowError, BSONError) as exc:
        raise ValueError(f"{label!r} is not an _id as this tool names one ({exc})") from exc
    if not same:
        raise ValueError(f"{label!r} is not an _id as this tool names one (it reads as "
                         f"{id_label(value)})")
    return value


def json_like(value: Any) -> Any:
    """Definitions as JSON-like data for comparing two servers' answers.

    Relaxed Extended JSON: numbers stay plain numbers, because servers differ in whether they
    report e.g. a capped ``size`` or ``expireAfterSeconds`` as int32 or int64.
    """
    text = json_util.dumps({"v": value}, json_options=json_util.RELAXED_JSON_OPTIONS)
    return json.loads(text)["v"]


def from_json_like(value: Any) -> Any:
    """Back from ``json_like`` to BSON values (SON documents), for a definition recorded
    as JSON (an archive's schema): numbers come back as int32, int64 by size, or double."""
    return json_util.loads(json.dumps({"v": value}), json_options=_RELAXED_IN)["v"]


_RELAXED_IN = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, document_class=SON,
                                    tz_aware=True,
                                    datetime_conversion=DatetimeConversion.DATETIME_AUTO)


# -- collections and views --------------------------------------------------------------
def collection_infos(db: Database) -> list[dict[str, Any]]:
    """``listCollections`` entries: name, type (collection / view / timeseries), options."""
    return [dict(info) for info in db.with_options(codec_options=META).list_collections()]


def collection_info(db: Database, name: str) -> dict[str, Any] | None:
    found = list(db.with_options(codec_options=META).list_collections(filter={"name": name}))
    return dict(found[0]) if found else None


def creatable_options(info: Mapping[str, Any]) -> SON:
    """The ``create`` command's options for a collection or view, in the server's order."""
    return SON((k, v) for k, v in (info.get("options") or {}).items() if k != "uuid")


def create_collection(db: Database, name: str, options: SON) -> str:
    """Create ``name`` with ``options``; returns "created" or "exists" (idempotent).

    An existing collection must already carry the same options: a re-run finds its own
    work, but a collection someone else created differently is a conflict, not a success.
    """
    try:
        db.command(SON([("create", name), *options.items()]))
        return "created"
    except OperationFailure as exc:
        if exc.code != _NAMESPACE_EXISTS:
            raise
    info = collection_info(db, name) or {}
    have = json_like(creatable_options(info))
    want = json_like(options)
    if have != want:
        raise CollectionConflict(name, have, want)
    return "exists"


class CollectionConflict(Exception):
    def __init__(self, name: str, have: Any, want: Any) -> None:
        super().__init__(f"{name} exists with options {json.dumps(have)}, the source has "
                         f"{json.dumps(want)}")


def unsupported_option(options: Mapping[str, Any], exc: OperationFailure) -> str | None:
    """Which option a server refused as not implemented, if that is what it said."""
    if exc.code not in UNSUPPORTED_CODES:
        return None
    message = str((exc.details or {}).get("errmsg", exc))
    named = [k for k in options if f'"{k}"' in message or f"'{k}'" in message]
    return ", ".join(named) or ", ".join(options) or "create"


def views_in_creation_order(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Views sorted so a view defined on another view comes after it."""
    views = {i["name"]: i for i in infos if i.get("type") == "view"}
    done: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen or name not in views or name in stack:
            return
        visit(str(views[name]["options"].get("viewOn", "")), (*stack, name))
        seen.add(name)
        done.append(views[name])

    for name in sorted(views):
        visit(name, ())
    return done


# -- indexes -----------------------------------------------------------------------------
def index_specs(db: Database, collection: str) -> list[SON]:
    """Secondary index definitions ready for ``createIndexes`` (``_id_`` left out)."""
    specs = []
    for spec in db.get_collection(collection, codec_options=META).list_indexes():
        if spec.get("name") == "_id_":
            continue
        specs.append(SON((k, v) for k, v in spec.items() if k not in _DROPPED_INDEX_FIELDS))
    return specs


def normalise_index(spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: json_like(v) for k, v in spec.items() if k not in _DROPPED_INDEX_FIELDS}
    # key order is the index; keep it as a list of pairs so JSON cannot reorder it
    out["key"] = [[field, json_like(direction)] for field, direction in spec["key"].items()]
    return out


def index_from_normalised(spec: Mapping[str, Any]) -> SON:
    """A ``createIndexes`` spec from ``normalise_index``'s form (key as a list of pairs)."""
    out: SON[str, Any] = SON()
    for name, value in spec.items():
        out[name] = (SON((str(f), from_json_like(d)) for f, d in value) if name == "key"
                     else from_json_like(value))
    return out


def create_indexes(db: Database, collection: str,
                   specs: list[SON]) -> list[tuple[str, OperationFailure, bool]]:
    """Build all indexes in one command; on failure try each alone to name every refusal.

    Returns ``(index name, error, is_unsupported)`` for each index the server refused.
    An index that already exists with the same definition is not a failure.
    """
    if not specs:
        return []
    try:
        db.command("createIndexes", collection, indexes=specs)
        return []
    except OperationFailure:
        pass
    failures = []
    for spec in specs:
        try:
            db.command("createIndexes", collection, indexes=[spec])
        except OperationFailure as exc:
            failures.append((str(spec.get("name")), exc, exc.code in _INDEX_UNSUPPORTED_CODES))
    return failures


_MISSING = object()  # a path the document does not have (indexed as null)
_THROUGH_ARRAY = object()  # a path that crosses an array: not expressible as one filter
_INDEX_IN_MESSAGE = re.compile(r"index: (\S+) dup key|Index '([^']+)'")


def _at_path(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if isinstance(value, list):
            return _THROUGH_ARRAY
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def duplicate_index_name(message: str) -> str | None:
    """The index a duplicate-key error names (MongoDB: ``index: NAME dup key``; DocumentDB's
    gateway: ``Index 'NAME'``), if it names one."""
    m = _INDEX_IN_MESSAGE.search(message)
    return (m[1] or m[2]) if m else None


def unique_conflict_filter(spec: Mapping[str, Any],
                           doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """A filter for the documents other than ``doc`` that hold its key of the unique index
    ``spec``, i.e. those that keep ``doc`` from being inserted; None when the index cannot
    make it collide, or the key is not expressible as one filter (a path through an array).

    An array value matches any of its elements (a multikey index collides on each), so the
    filter may find more than the one document in the way; the caller only deletes from a
    target that ``sync`` re-checks anyway.
    """
    if not spec.get("unique") or spec.get("name") == "_id_":
        return None
    clauses: list[dict[str, Any]] = []
    present = False
    for path, kind in spec["key"].items():
        if isinstance(kind, str):  # text, hashed, 2dsphere...: not an equality key
            return None
        value = _at_path(doc, path)
        if value is _THROUGH_ARRAY or (isinstance(value, list) and not value):
            return None
        if value is _MISSING:
            clauses.append({path: None})  # matches missing and null, as the index stores both
            continue
        present = True
        clauses.append({path: {"$in": value} if isinstance(value, list) else value})
    if spec.get("sparse") and not present:
        return None
    if spec.get("partialFilterExpression"):
        clauses.append(dict(spec["partialFilterExpression"]))
    clauses.append({"_id": {"$ne": doc["_id"]}})
    return {"$and": clauses}


def schema(db: Database, collection: str) -> dict[str, Any]:
    """Options and indexes of one collection, normalised for comparison."""
    info = collection_info(db, collection)
    if info is None:
        return {"exists": False}
    indexes = [normalise_index(s) for s in db.get_collection(
        collection, codec_options=META).list_indexes()]
    return {"type": info.get("type", "collection"),
            "options": json_like(creatable_options(info)),
            "indexes": sorted(indexes, key=lambda i: str(i.get("name")))}


# -- MongoDB's order of BSON values --------------------------------------------------------
# Type brackets in MongoDB's comparison order, with the $type aliases that select each.
# Range queries ($gte/$lt) only match values of their bound's bracket, so a range that spans
# brackets is expressed as an $or over the whole brackets in between.
BRACKETS: list[tuple[str, ...]] = [
    ("minKey",), ("null", "undefined"), ("number",), ("string", "symbol"), ("object",),
    ("array",), ("binData",), ("objectId",), ("bool",), ("date",), ("timestamp",),
    ("regex",), ("dbPointer",), ("javascript",), ("javascriptWithScope",), ("maxKey",),
]
# Aliases FerretDB 1.x refuses in $type (it cannot store those types at all).
FERRETDB_NO_ALIAS = {"minKey", "maxKey", "undefined", "symbol", "dbPointer", "javascript",
                     "javascriptWithScope"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def order_key(value: Any) -> tuple[Any, ...]:
    """A Python sort key that orders BSON values like MongoDB without a collation."""
    if isinstance(value, bson.MinKey):
        return (0,)
    if value is None:
        return (1,)
    if isinstance(value, bool):
        return (8, value)
    if isinstance(value, (int, float, bson.Decimal128)):
        number = value.to_decimal() if isinstance(value, bson.Decimal128) else value
        if (isinstance(number, float) and math.isnan(number)) or (
                isinstance(number, Decimal) and number.is_nan()):
            return (2, 0)  # NaN sorts below every other number
        return (2, 1, number)
    if isinstance(value, bson.Code):  # before str: Code is a str
        scope = () if value.scope is None else order_key(dict(value.scope))
        return (14 if value.scope is not None else 13, str(value).encode(), scope)
    if isinstance(value, str):
        return (3, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bson.DBRef):
        return order_key(value.as_doc())
    if isinstance(value, Mapping):
        items = []
        for name, item in value.items():
            key = order_key(item)
            items.append((key[0], name.encode(), key))
        return (4, tuple(items))
    if isinstance(value, (list, tuple)):
        return (5, tuple((order_key(v)[0], str(i).encode(), order_key(v))
                         for i, v in enumerate(value)))
    if isinstance(value, bson.Binary):
        return (6, len(value), value.subtype, bytes(value))
    if isinstance(value, bytes):
        return (6, len(value), 0, value)
    if isinstance(value, bson.ObjectId):
        return (7, value.binary)
    if isinstance(value, datetime.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return (9, (aware - _EPOCH) // datetime.timedelta(milliseconds=1))
    if isinstance(value, bson.DatetimeMS):
        return (9, int(value))
    if isinstance(value, bson.Timestamp):
        return (10, value.time, value.inc)
    if isinstance(value, (bson.Regex, re.Pattern)):
        return (11, str(value.pattern).encode(), str(getattr(value, "flags", "")))
    if isinstance(value, bson.MaxKey):
        return (15,)
    raise TypeError(f"cannot order BSON value of type {type(value).__name__}")


def range_gaps(container: str, parts: Iterable[tuple[str, Any, Any]]) -> list[str]:
    """Where the ``(unit name, lo, hi)`` ranges of one collection fail to tile all of `_id`.

    Bounds are compared by MongoDB's order (``order_key``), so ``1``, ``1.0`` and
    ``NumberLong(1)`` are the same edge, and ranges may span BSON types. ``None`` is an open
    end. Gaps, overlaps and empty ranges are each one line.
    """
    def key(bound: Any) -> tuple[Any, ...]:
        return order_key(bound)

    ordered = sorted(parts, key=lambda p: (0,) if p[1] is None else (1, key(p[1])))
    out: list[str] = []
    reached: Any = None  # the end covered so far; None before the first unit: the lowest
    started = ended = False
    for name, lo, hi in ordered:
        if lo is not None and hi is not None and key(hi) <= key(lo):
            out.append(f"{name}: its range is empty (lo {id_label(lo)} is not below "
                       f"hi {id_label(hi)})")
            continue
        if ended:
            out.append(f"{name}: overlaps a unit that already reaches the highest _id")
            continue
        if not started:
            if lo is not None:
                out.append(f"{container}: no unit covers _id below {id_label(lo)}")
        elif lo is None or key(lo) < key(reached):
            out.append(f"{name}: overlaps the unit before it (starts at "
                       f"{'the lowest _id' if lo is None else id_label(lo)}, which is below "
                       f"{id_label(reached)})")
        elif key(lo) > key(reached):
            out.append(f"{container}: no unit covers _id from {id_label(reached)} to "
                       f"{id_label(lo)}")
        started = True
        if hi is None:
            ended = True
        elif reached is None or key(hi) > key(reached):
            reached = hi
    if started and not ended:
        out.append(f"{container}: no unit covers _id from {id_label(reached)} up")
    return out


def bracket(value: Any) -> int:
    """Index into ``BRACKETS`` of the bracket ``value`` belongs to."""
    return int(order_key(value)[0])


def orders_like_server(value: Any) -> bool:
    """True for bounds the server compares as we do whatever the collation (no strings)."""
    return value is None or bracket(value) in (1, 2, 6, 7, 8, 9, 10)


def id_range_filter(lo: Any, hi: Any, *, lo_inclusive: bool = True,
                    ferretdb: bool = False) -> dict[str, Any]:
    """A filter for ``lo <= _id < hi`` in MongoDB's order; ``None`` is an open end."""
    if lo is None and hi is None:
        return {}
    low_op = "$gte" if lo_inclusive else "$gt"
    first = 0 if lo is None else bracket(lo)
    last = len(BRACKETS) - 1 if hi is None else bracket(hi)
    if lo is not None and hi is not None and first == last:
        return {"_id": {low_op: lo, "$lt": hi}}
    clauses: list[dict[str, Any]] = []
    if lo is not None:
        clauses.append({"_id": {low_op: lo}})
    inner_from = first + 1 if lo is not None else 0
    inner_to = last - 1 if hi is not None else len(BRACKETS) - 1
    aliases = [alias for b in BRACKETS[inner_from:inner_to + 1] for alias in b
               if not (ferretdb and alias in FERRETDB_NO_ALIAS)]
    if aliases:
        clauses.append({"_id": {"$type": aliases}})
    if hi is not None:
        clauses.append({"_id": {"$lt": hi}})
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


# -- what a FerretDB target cannot store ---------------------------------------------------
_PLAIN = CodecOptions(document_class=dict, tz_aware=True,
                      datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def ferretdb_refusal(raw: bytes) -> str | None:
    """Why FerretDB 1.x would refuse (or drop the connection over) this document, if it would.

    FerretDB closes the connection instead of answering for NaN, Decimal128, MinKey, MaxKey
    and JavaScript values, which looks like a network failure; this turns it into a reason.
    """
    def walk(value: Any, path: str, in_array: bool) -> str | None:
        if isinstance(value, float):
            if math.isnan(value):
                return f"{path} is NaN"
            if math.isinf(value):
                return f"{path} is an infinity"
            return None
        if isinstance(value, (bson.Decimal128, bson.MinKey, bson.MaxKey, bson.Code)):
            return f"{path} is a {type(value).__name__}"
        if isinstance(value, Mapping):
            for name, item in value.items():
                if name.startswith("$"):
                    return f"{path}.{name} starts with '$'"
                found = walk(item, f"{path}.{name}", False)
                if found:
                    return found
        elif isinstance(value, list):
            if in_array:
                return f"{path} is an array inside an array"
            for i, item in enumerate(value):
                found = walk(item, f"{path}.{i}", True)
                if found:
                    return found
        return None

    found = walk(bson.decode(raw, codec_options=_PLAIN), "", False)
    return found.lstrip(".") if found else None
