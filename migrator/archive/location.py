"""Where an archive lives: ``archive+file:///path`` or ``archive+s3://host:port/bucket/prefix``.

An archive is an endpoint like any other (``config.Endpoint``), so its secrets follow the
same rules: the S3 secret key and the encryption key or passphrase are ``${VAR}`` or
``${k8s:ns/secret#key}`` references, never literals, and every message uses the redacted
label. Checked here before anything connects, each problem naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import jsonschema
from minio.helpers import check_bucket_name

from migrator.archive.layout import SET_ID
from migrator.config import REF_PATTERN, Endpoint
from migrator.errors import PlanError

FILE, S3 = "archive+file", "archive+s3"
FORMS = "write archive+file:///absolute/path or archive+s3://host:port/bucket[/prefix]"
DEFAULT_LEVEL = 3  # zstd's own default: fast, and most of the ratio of higher levels

# Options of the S3 endpoint, passed to the objects store which owns their rules.
S3_OPTIONS = ("access_key", "secret_key", "session_token", "region", "multipart_part_size")


def _reference(what: str) -> dict[str, Any]:
    return {"type": "string", "pattern": REF_PATTERN,
            "description": f"a ${{VAR}} or ${{k8s:namespace/secret#key}} reference to {what}"}


OPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "key": _reference("an age identity (AGE-SECRET-KEY-1...)"),
        "passphrase": _reference("the archive's passphrase"),
        "compression_level": {"type": "integer", "minimum": 1, "maximum": 22,
                              "description": "a zstd level from 1 (fastest) to 22"},
        "set": {"type": "string", "pattern": SET_ID.pattern,
                "description": "a set's name, e.g. 20250102T030405Z-1a2b3c (default: the "
                               "newest complete set)"},
        "access_key": {"type": "string"},
        "secret_key": {"type": "string"},
        "session_token": {"type": "string"},
        "region": {"type": "string"},
        "multipart_part_size": {"type": ["string", "integer"]},
    },
}
_OPTIONS = jsonschema.Draft202012Validator(OPTION_SCHEMA)


@dataclass(frozen=True)
class Location:
    """A checked archive URL: a directory, or a bucket and key prefix on an S3 service."""

    endpoint: Endpoint
    scheme: str
    path: Path | None = None  # archive+file
    bucket: str = ""  # archive+s3
    prefix: str = ""  # archive+s3: "" or ending in "/"

    @property
    def label(self) -> str:
        return self.endpoint.label

    @property
    def level(self) -> int:
        return int(self.endpoint.options.get("compression_level", DEFAULT_LEVEL))

    def objects_endpoint(self) -> Endpoint:
        """The same S3 place as an objects-store endpoint, to reuse its client, TLS and
        error handling (``s3://`` is plain HTTP unless ``tls`` is enabled, as there)."""
        parts = urlsplit(self.endpoint.url)
        url = urlunsplit(("s3", parts.netloc, f"/{self.bucket}", "", ""))
        options = {k: v for k, v in self.endpoint.options.items() if k in S3_OPTIONS}
        return Endpoint(kind="objects", url=url, name=self.endpoint.name or "archive",
                        tls=self.endpoint.tls, options=options)


def archive_endpoint(url: str, options: dict[str, Any] | None = None, *,
                     name: str = "archive") -> Endpoint:
    """An archive endpoint from a URL and options (e.g. from the command line), with the
    same checks a plan's endpoint gets: literal secrets are refused, naming the field."""
    data: dict[str, Any] = {"url": url, **(options or {})}
    return Endpoint.from_dict("archive", data, name)


def is_archive_url(url: str) -> bool:
    return url.split("://", 1)[0] in (FILE, S3)


def parse(endpoint: Endpoint) -> Location:
    """Check an archive endpoint's URL and options; no network."""
    name = endpoint.name or "archive"
    where = f"{name}.url"
    _check_options(endpoint, name)
    try:
        parts = urlsplit(endpoint.url)
        port = parts.port
    except ValueError as exc:
        raise PlanError(where, f"not a valid URL ({exc})", hint=FORMS) from exc
    if "://" not in endpoint.url or parts.scheme not in (FILE, S3):
        raise PlanError(where, f"'{parts.scheme or endpoint.url}' is not an archive URL",
                        hint=FORMS)
    if parts.query or parts.fragment:
        extra = f"?{parts.query}" if parts.query else f"#{parts.fragment}"
        raise PlanError(where, f"'{extra}' would be ignored: archive URLs take no parameters",
                        hint="put settings in the endpoint's options")
    if parts.scheme == FILE:
        if parts.netloc:
            raise PlanError(where, f"'{parts.netloc}' would be read as a host name",
                            hint="write archive+file:///absolute/path (three slashes)")
        path = unquote(parts.path)
        if not path.startswith("/") or path.rstrip("/") == "":
            raise PlanError(where, "needs an absolute path other than /", hint=FORMS)
        for option in S3_OPTIONS:
            if option in endpoint.options:
                raise PlanError(f"{name}.{option}", "would be ignored: the archive is a "
                                "directory, not S3")
        return Location(endpoint, FILE, path=Path(path))
    if not parts.hostname:
        raise PlanError(where, "has no host", hint=FORMS)
    if port == 0 or parts.netloc.endswith(":"):
        raise PlanError(where, "has port 0" if port == 0 else "has an empty port", hint=FORMS)
    bucket, _, prefix = unquote(parts.path.lstrip("/")).partition("/")
    if not bucket:
        raise PlanError(where, "names no bucket", hint=FORMS)
    try:
        check_bucket_name(bucket)
    except ValueError as exc:
        raise PlanError(where, f"'{bucket}' is not a bucket name ({exc})", hint=FORMS) from exc
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise PlanError(where, f"the key prefix '{prefix}' has an empty, '.' or '..' part")
    return Location(endpoint, S3, bucket=bucket, prefix=f"{prefix}/" if prefix else "")


def _check_options(endpoint: Endpoint, name: str) -> None:
    known = OPTION_SCHEMA["properties"]
    for error in sorted(_OPTIONS.iter_errors(endpoint.options), key=lambda e: list(e.path)):
        path = [str(p) for p in error.absolute_path]
        if not path:
            extra = sorted(set(endpoint.options) - set(known))
            raise PlanError(f"{name}.{extra[0]}" if extra else name, "unknown option",
                            hint=f"allowed: {', '.join(sorted(known))}")
        expected = known.get(path[0], {}).get("description", "another value")
        shown = "a literal value" if path[0] in ("key", "passphrase") else repr(error.instance)
        raise PlanError(f"{name}.{path[0]}", f"expected {expected}, got {shown}")
