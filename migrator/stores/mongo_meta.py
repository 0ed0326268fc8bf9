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
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import bson
from bson import SON, json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from pymongo import errors as mx
from pymongo.database import Database
from pymongo.errors import OperationFailure

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
    flavor: str  # "mongodb" | "ferretdb"
    version: str
    topology: str  # "standalone" | "replicaSet" | "sharded"
    set_name: str | None
    max_wire: int
    start_time: Any  # operationTime at open (replica sets), the catch-up start point

    @property
    def snapshot_reads(self) -> bool:
        return self.flavor == "mongodb" and self.topology != "standalone" and self.max_wire >= 13

    @classmethod
    def from_replies(cls, hello: Mapping[str, Any], build: Mapping[str, Any]) -> ServerInfo:
        """From ``hello`` and ``buildInfo`` (FerretDB reports ``ferretdbVersion`` there)."""
        if "ferretdbVersion" in build:
            flavor, version = "ferretdb", str(build["ferretdbVersion"])
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
        return {}
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


def translate(endpoint: Endpoint, exc: mx.PyMongoError, what: str) -> MigrateError:
    """The project's error for a driver error; ``what`` says what we were doing."""
    label = endpoint.label
    if isinstance(exc, mx.OperationFailure):
        message = str((exc.details or {}).get("errmsg") or exc).splitlines()[0][:300]
        if exc.code == _AUTH_FAILED:
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
    """A readable, unambiguous name for an `_id` in reports."""
    if isinstance(value, bson.ObjectId):
        return f"ObjectId('{value}')"
    return json.dumps(to_ejson(value), separators=(",", ":"))


def json_like(value: Any) -> Any:
    """Definitions as JSON-like data for comparing two servers' answers.

    Relaxed Extended JSON: numbers stay plain numbers, because servers differ in whether they
    report e.g. a capped ``size`` or ``expireAfterSeconds`` as int32 or int64.
    """
    text = json_util.dumps({"v": value}, json_options=json_util.RELAXED_JSON_OPTIONS)
    return json.loads(text)["v"]


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
