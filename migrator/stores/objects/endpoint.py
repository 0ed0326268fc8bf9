"""What an objects endpoint may say: its URL, its options and its units' specs.

Checked before anything connects, so a URL or option the store would misread (a scheme
it does not speak, an empty host that would mean 127.0.0.1, a query it would drop) is a
plan error naming the field, not a surprise at run time.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
from minio.helpers import check_bucket_name

from migrator.config import Endpoint
from migrator.errors import PlanError

SCHEMES = ("http", "https", "s3")  # s3:// is plain HTTP unless tls: is enabled
_REF = r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"
_SIZE_TEXT = r"^\s*(\d+)\s*([kmgtKMGT]?)([iI]?[bB])?\s*$"
_SIZE = {"oneOf": [{"type": "integer", "minimum": 1},
                   {"type": "string", "pattern": _SIZE_TEXT}],
         "description": "a size such as 16MiB (K, M, G, T count in 1024s) or a number of bytes"}


def _reference(what: str) -> dict[str, Any]:
    return {"type": "string", "pattern": _REF,
            "description": f"a ${{VAR}} reference to the environment variable holding {what}"}


def _count(what: str, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": maximum,
            "description": f"a whole number from 1 to {maximum}: {what}"}


OPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "access_key": _reference("the access key (without it: the URL's user name)"),
        "secret_key": _reference("the secret key (without it: the URL's password)"),
        "session_token": _reference("an STS session token"),
        "region": {"type": "string", "minLength": 1,
                   "description": "a region name such as us-east-1, used to sign requests "
                                  "and to create buckets"},
        "bucket_map": {"type": "object", "propertyNames": {"minLength": 1},
                       "additionalProperties": {"type": "string", "minLength": 3},
                       "description": "a mapping from source bucket names to bucket names "
                                      "on this side"},
        "multipart_threshold": _SIZE,
        "multipart_part_size": _SIZE,
        "memory_budget": _SIZE,
        "unit_bytes": _SIZE,
        "parallel_parts": _count("parts of one object uploaded at once", 64),
        "transfers": _count("objects copied at once by this store, all units together", 256),
        "checkers": _count("objects fingerprinted at once per unit by verify", 256),
        "etag_is_md5": {"type": "boolean",
                        "description": "true or false (false for services whose single-part "
                                       "ETag is not the content's MD5)"},
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["bucket", "prefix", "start", "end"],
    "additionalProperties": False,
    "properties": {
        "bucket": {"type": "string", "minLength": 3, "maxLength": 63,
                   "description": "bucket name on the source"},
        "prefix": {"type": "string", "description": "the source URL's key prefix"},
        "start": {"type": ["string", "null"], "minLength": 1,
                  "description": "first key of the range (inclusive); null: the beginning"},
        "end": {"type": ["string", "null"], "minLength": 1,
                "description": "end of the range (exclusive); null: the end"},
        "resumable": {"type": "boolean"},
    },
}

_OPTIONS = jsonschema.Draft202012Validator(OPTION_SCHEMA)


def parse_size(value: Any, where: str) -> int:
    """``16777216``, ``"16MiB"`` or ``"64M"`` -> bytes."""
    match = re.fullmatch(_SIZE_TEXT, str(value)) if not isinstance(value, bool) else None
    if not match:
        raise PlanError(where, f"not a size: {value!r}", hint="write e.g. 16MiB")
    return int(match.group(1)) << (10 * " kmgt".index((match.group(2) or " ").lower()))


def check_options(endpoint: Endpoint) -> None:
    """The endpoint's options against OPTION_SCHEMA; the error names the option."""
    name = endpoint.name or "objects"
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


def check_url(endpoint: Endpoint) -> None:
    """Refuse a URL this store would misread; each problem names ``<endpoint>.url``."""
    where = f"{endpoint.name or 'objects'}.url"
    form = "write http(s)://host:port[/bucket[/key-prefix]] (s3:// is plain HTTP)"
    try:
        parts = urlsplit(endpoint.url)
        port = parts.port
    except ValueError as exc:
        raise PlanError(where, f"not a valid URL ({exc})", hint=form) from exc
    if parts.scheme not in SCHEMES or "://" not in endpoint.url:
        problem = (f"scheme '{parts.scheme}' is not one this store speaks ({', '.join(SCHEMES)})"
                   if "://" in endpoint.url else "has no scheme")
        raise PlanError(where, problem, hint=form)
    if not parts.hostname:
        raise PlanError(where, "has no host", hint=form)
    if port == 0 or parts.netloc.endswith(":"):  # neither may mean "the default port"
        raise PlanError(where, "has port 0" if port == 0 else "has an empty port", hint=form)
    if parts.query or parts.fragment:
        extra = f"?{parts.query}" if parts.query else f"#{parts.fragment}"
        raise PlanError(where, f"'{extra}' would be ignored: this store reads no URL "
                        "parameters", hint="put settings in the endpoint's options")
    bucket = unquote(parts.path.lstrip("/")).partition("/")[0]
    if bucket:
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise PlanError(where, f"'{bucket}' is not a bucket name ({exc})",
                            hint=form) from exc
        if endpoint.options.get("bucket_map"):
            raise PlanError(f"{endpoint.name or 'objects'}.bucket_map",
                            f"would be ignored: the URL names bucket '{bucket}'",
                            hint="drop the bucket from the URL, or drop bucket_map")
    for option, part, what in (("access_key", parts.username, "user name"),
                               ("secret_key", parts.password, "password")):
        if part and endpoint.options.get(option):
            raise PlanError(where, f"its {what} would be ignored: {option} is also set",
                            hint=f"give the {what} once, in the URL or as {option}")
    bucket_map = endpoint.options.get("bucket_map")
    if isinstance(bucket_map, dict):
        for source, here in bucket_map.items():
            try:
                check_bucket_name(str(here))
            except ValueError as exc:
                raise PlanError(f"{endpoint.name or 'objects'}.bucket_map.{source}",
                                f"'{here}' is not a bucket name ({exc})") from exc
