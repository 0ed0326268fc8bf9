"""Endpoints, secret references and URL redaction.

A plan holds endpoint URLs with ``${VAR}`` references where secrets go, never the secrets
themselves. The resolved URL exists only in memory, just long enough to connect.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from migrator.errors import EndpointError, PlanError

_VAR = r"[A-Za-z_][A-Za-z0-9_]*"
# ${k8s:namespace/secret#key}: one key of a Kubernetes Secret, read through the API when a
# store connects. Inside a URL's user-info write "/" as %2F and "#" as %23 (the URL is
# decoded before references are resolved); `deploy` writes plans that way.
_K8S = r"k8s:([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)/([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)#([-._A-Za-z0-9]+)"
_REF = re.compile(rf"\$\{{(?:({_VAR})|{_K8S})\}}")
_FULL_REF = re.compile(rf"^\$\{{(?:{_VAR}|{_K8S})\}}$")
# For schemas of options that must be a reference (e.g. an object store's secret_key).
REF_PATTERN = _FULL_REF.pattern


def resolve_refs(text: str, where: str) -> str:
    """Replace each ``${VAR}`` with the environment's value and each
    ``${k8s:namespace/secret#key}`` with that Secret key's value; a missing one names
    ``where`` (and the Secret)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            from migrator.deploy.secretref import read_secret_key

            return read_secret_key(match.group(2), match.group(3), match.group(4), where)
        if name not in os.environ:
            raise PlanError(where, f"environment variable {name} is not set",
                            hint=f"export {name}=... before running")
        return os.environ[name]

    return _REF.sub(value, text)


def references_in(text: str) -> list[tuple[str, ...]]:
    """Each reference in ``text`` (decoded first, as URLs are): ``("env", VAR)`` or
    ``("k8s", namespace, secret, key)`` -- e.g. for a Job that must be given access to them."""
    return [("env", m.group(1)) if m.group(1) else ("k8s", m.group(2), m.group(3), m.group(4))
            for m in _REF.finditer(unquote(text))]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``; references stay visible."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    shown = parts.password if _FULL_REF.match(unquote(parts.password)) else "***"
    netloc = f"{parts.username or ''}:{shown}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class TLS:
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True  # False only for self-signed test set-ups; said in the plan

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str) -> TLS:
        if not data:
            return cls()
        unknown = set(data) - {"enabled", "ca_file", "cert_file", "key_file", "verify"}
        if unknown:
            raise PlanError(f"{where}.{sorted(unknown)[0]}", "unknown TLS option",
                            hint="allowed: enabled, ca_file, cert_file, key_file, verify")
        return cls(enabled=bool(data.get("enabled", True)), ca_file=data.get("ca_file"),
                   cert_file=data.get("cert_file"), key_file=data.get("key_file"),
                   verify=bool(data.get("verify", True)))

    def to_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        out: dict[str, Any] = {"enabled": True}
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if not self.verify:
            out["verify"] = False
        return out


@dataclass(frozen=True)
class Connection:
    scheme: str
    host: str
    port: int | None
    username: str | None
    password: str | None = field(repr=False)
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """Where a store lives. ``url`` may hold ``${VAR}`` references, never a literal secret."""

    kind: str
    url: str
    name: str = ""  # e.g. "source.redis", used in every message about this endpoint
    tls: TLS = field(default_factory=TLS)
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        check_no_literal_secret(self.url, f"{self.name or self.kind}.url")

    @property
    def label(self) -> str:
        return f"{self.name or self.kind} ({redact_url(self.url)})"

    def connection(self) -> Connection:
        """The URL's pieces with references resolved: for connecting only, never printing."""
        where = f"{self.name or self.kind}.url"
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError as exc:
            raise PlanError(where, f"bad port ({exc})") from exc
        user = resolve_refs(unquote(parts.username), where) if parts.username else None
        password = resolve_refs(unquote(parts.password), where) if parts.password else None
        return Connection(scheme=parts.scheme, host=parts.hostname or "", port=port,
                          username=user or None, password=password,
                          path=unquote(parts.path.lstrip("/")),
                          query=dict(parse_qsl(parts.query)))

    def resolved(self, key: str) -> str | None:
        """An option value with references filled in (e.g. ``secret_key``)."""
        raw = self.options.get(key)
        if raw is None:
            return None
        return resolve_refs(str(raw), f"{self.name or self.kind}.{key}")

    def fail(self, problem: str, *, transient: bool = False,
             hint: str | None = None) -> EndpointError:
        return EndpointError(self.label, problem, transient=transient, hint=hint)

    def __repr__(self) -> str:
        return f"Endpoint({self.kind}, {redact_url(self.url)})"

    __str__ = __repr__

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.tls.enabled:
            out["tls"] = self.tls.to_dict()
        out.update(self.options)
        return out

    @classmethod
    def from_dict(cls, kind: str, data: dict[str, Any] | str, where: str) -> Endpoint:
        if isinstance(data, str):
            data = {"url": data}
        if not isinstance(data, dict) or "url" not in data:
            raise PlanError(where, "an endpoint needs a url")
        options = {k: v for k, v in data.items() if k not in ("url", "tls")}
        for key, value in options.items():
            if isinstance(value, str) and looks_secret(key):
                check_secret_reference(value, f"{where}.{key}")
        return cls(kind=kind, url=str(data["url"]), name=where,
                   tls=TLS.from_dict(data.get("tls"), f"{where}.tls"), options=options)


def looks_secret(key: str) -> bool:
    return any(word in key.lower() for word in ("password", "secret", "token"))


def check_secret_reference(value: str, where: str) -> None:
    if not _FULL_REF.match(value):
        raise PlanError(where, "holds a literal secret; plans may only reference one",
                        hint="put it in an environment variable and write ${VAR_NAME}")


def check_no_literal_secret(url: str, where: str) -> None:
    try:
        password = urlsplit(url).password
    except ValueError as exc:
        raise PlanError(where, f"not a valid URL ({exc})") from exc
    if password is not None and not _FULL_REF.match(unquote(password)):
        raise PlanError(where, "the URL holds a literal password; plans may only reference one",
                        hint="write it as scheme://user:${PASSWORD_VAR}@host:port and "
                        "export PASSWORD_VAR")


def with_credentials(url: str, username: str, password_ref: str) -> str:
    """Insert ``user:${VAR}`` into a URL that has none (used by ``plan --source-user``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(username, safe='')}:{password_ref}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
