"""What a MySQL endpoint means, and the connections the MySQL store opens to it.

``settings(endpoint)`` reads the URL and options without touching the network, so a plan
is refused before anything connects when it names something this store would ignore or
misread: another scheme, an empty host, port 0, a path of two parts, an unknown query
parameter, TLS asked for in two ways that disagree.

``Connection`` is PyMySQL's connection with one change: a ``LOAD DATA LOCAL INFILE`` request
from the server is answered from bytes in memory (``load_local``), through PyMySQL's own
packet calls. Rows never touch the disk, and a server asking for any other file (which
PyMySQL would read and send) gets nothing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pymysql
import pymysql.connections
from pymysql.constants import CR, ER
from pymysql.protocol import LoadLocalPacketWrapper

from migrator.config import Endpoint
from migrator.errors import PlanError

SCHEMES = ("mysql", "mariadb")
DEFAULT_PORT = 3306
DEFAULT_TIMEOUT = 60.0  # seconds without an answer before a read or write gives up
DEFAULT_DDL_TIMEOUT = 6 * 3600.0  # index builds on big tables answer only when done
MIN_TIMEOUT = 0.1
INFILE_NAME = b"oim-migrate:memory"  # what LOAD DATA names; never a file

# TLS modes, named as MySQL's --ssl-mode names them
OFF, UNVERIFIED, VERIFY_CA, VERIFIED = "DISABLED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"
_SSL_MODES = (OFF, UNVERIFIED, VERIFY_CA, VERIFIED)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_TLS_STATE = {OFF: "off", UNVERIFIED: "on (NOT verified)",
              VERIFY_CA: "on (verified; host name not checked)", VERIFIED: "on (verified)"}


@dataclass(frozen=True)
class Settings:
    """An endpoint as this store reads it (no secrets: those stay in ``Endpoint``)."""

    host: str
    port: int
    database: str
    tls_mode: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    timeout: float
    ddl_timeout: float

    @property
    def tls_state(self) -> str:
        return _TLS_STATE[self.tls_mode]

    def ssl_context(self) -> ssl.SSLContext | None:
        """None when TLS is off; otherwise a context that verifies the server certificate
        (against ``ca_file`` or the system CAs) unless the endpoint says not to. PyMySQL's
        own default would skip verification whenever no CA file is named."""
        if self.tls_mode == OFF:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = self.tls_mode == VERIFIED
        ctx.verify_mode = ssl.CERT_NONE if self.tls_mode == UNVERIFIED else ssl.CERT_REQUIRED
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def settings(endpoint: Endpoint) -> Settings:
    """Read the URL and options, refusing (``PlanError`` naming the field) anything that
    would otherwise be ignored or silently replaced by a default."""
    where = f"{endpoint.name or 'mysql'}.url"
    try:
        parts = urlsplit(endpoint.url)
        port = parts.port
    except ValueError as exc:
        raise PlanError(where, f"not a valid URL ({exc})") from exc
    if parts.scheme.lower() not in SCHEMES:
        raise PlanError(where, f"scheme {parts.scheme + '://' if parts.scheme else '(none)'}"
                        " is not for MySQL", hint="write mysql://user:${PASSWORD}@host:3306/db")
    if not parts.hostname:
        raise PlanError(where, "names no host", hint="write mysql://user:${PASSWORD}@host:3306")
    if port == 0:
        raise PlanError(where, "port 0 is not a port",
                        hint=f"leave the port out for {DEFAULT_PORT}, or name the real one")
    database = parts.path.lstrip("/")
    if "/" in database:
        raise PlanError(where, f"path {parts.path!r} names more than one database",
                        hint="write at most one database: mysql://host:3306/openIM_v3")
    if parts.fragment:
        raise PlanError(where, f"has a fragment (#{parts.fragment}) this store would ignore")
    tls_mode = _tls_mode(endpoint, parts.query, where)
    options = endpoint.options
    return Settings(
        host=parts.hostname, port=port or DEFAULT_PORT, database=unquote(database),
        tls_mode=tls_mode, ca_file=endpoint.tls.ca_file, cert_file=endpoint.tls.cert_file,
        key_file=endpoint.tls.key_file,
        timeout=_seconds(options, "timeout", DEFAULT_TIMEOUT, endpoint),
        ddl_timeout=_seconds(options, "ddl_timeout", DEFAULT_DDL_TIMEOUT, endpoint))


def _tls_mode(endpoint: Endpoint, query: str, where: str) -> str:
    """TLS from the ``tls:`` block and/or ``?ssl=``/``?ssl-mode=``; off unless asked for.
    PREFERRED (TLS when offered, plain text otherwise, never verified) is refused: it is
    exactly the silent downgrade an explicit setting exists to prevent."""
    asked: str | None = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        key = name.lower().replace("_", "-")
        if key == "ssl":
            if value.lower() not in _TRUE + _FALSE:
                raise PlanError(where, f"?ssl={value} is neither true nor false")
            asked = VERIFIED if value.lower() in _TRUE else OFF
        elif key == "ssl-mode":
            mode = value.upper()
            if mode == "PREFERRED":
                raise PlanError(where, "?ssl-mode=PREFERRED would fall back to plain text"
                                " silently", hint="choose DISABLED, REQUIRED, VERIFY_CA or"
                                " VERIFY_IDENTITY")
            if mode not in _SSL_MODES:
                raise PlanError(where, f"?ssl-mode={value} is not a TLS mode",
                                hint=f"one of {', '.join(_SSL_MODES)}")
            asked = mode
        else:
            raise PlanError(where, f"unknown URL parameter {name!r}",
                            hint="allowed: ssl=true|false, ssl-mode=DISABLED|REQUIRED|"
                            "VERIFY_CA|VERIFY_IDENTITY; TLS files go under tls:")
    tls = endpoint.tls
    block = (VERIFIED if tls.verify else UNVERIFIED) if tls.enabled else None
    if asked is None:
        return block or OFF
    if block is not None:
        agree = (asked == block or (asked == VERIFY_CA and block == VERIFIED))
        if not agree:
            raise PlanError(where, f"the URL asks for TLS mode {asked} but tls: says"
                            f" {'verify' if tls.verify else 'do not verify'}",
                            hint="say it once: either the URL parameter or the tls: block")
    return asked


def _seconds(options: dict[str, Any], key: str, default: float, endpoint: Endpoint) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < MIN_TIMEOUT:
        raise PlanError(f"{endpoint.name or 'mysql'}.{key}",
                        f"must be a number of seconds, at least {MIN_TIMEOUT}, got {value!r}")
    return float(value)


def check_db_map(endpoint: Endpoint) -> dict[str, str]:
    db_map = endpoint.options.get("db_map") or {}
    if not isinstance(db_map, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in db_map.items()):
        raise PlanError(f"{endpoint.name or 'mysql'}.db_map",
                        "must map source database names to target database names")
    return dict(db_map)


# -- connections ------------------------------------------------------------------------


class Connection(pymysql.connections.Connection):
    """A PyMySQL connection whose ``LOAD DATA LOCAL INFILE`` reads from memory."""

    _infile: bytes | None = None

    def load_local(self, cursor: Any, sql: str, data: bytes) -> None:
        """Run ``sql`` (a LOAD DATA LOCAL INFILE naming ``INFILE_NAME``), sending ``data``
        when the server asks for the file."""
        self._infile = data
        try:
            cursor.execute(sql)
        finally:
            self._infile = None

    def _read_query_result(self, unbuffered: bool = False) -> Any:
        # PyMySQL's own body, with the result class that answers LOCAL INFILE from memory
        if unbuffered:
            return super()._read_query_result(unbuffered)
        self._result = None
        result = _MemoryInfileResult(self)
        result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows


class _MemoryInfileResult(pymysql.connections.MySQLResult):
    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn = self.connection
        asked = LoadLocalPacketWrapper(first_packet).filename
        data = conn._infile
        try:
            if data is None or asked != INFILE_NAME:
                raise pymysql.err.OperationalError(
                    ER.FILE_NOT_FOUND, f"the server asked for local file {asked!r}, which this"
                    " client never offers (it sends rows from memory only)")
            view = memoryview(data)
            # well under any server's max_allowed_packet (1 MiB is MariaDB's minimum default)
            step = 512 << 10
            for start in range(0, len(view), step):
                conn.write_packet(view[start:start + step])
        finally:
            conn.write_packet(b"")  # end of file, also after an error
            ok_packet = conn._read_packet()
        if not ok_packet.is_ok_packet():
            raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC,
                                               "Commands Out of Sync")
        self._read_ok_packet(ok_packet)
