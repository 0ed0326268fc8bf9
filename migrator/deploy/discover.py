"""Where a standalone OpenIM install keeps its data and credentials, read from its files.

Sources, in the order OpenIM itself gives them precedence: ``IMENV_*`` variables (this
process's environment, then the openim-server service's ``environment`` in the compose
file), the v3.8 per-file configs (config/mongodb.yml, redis.yml, minio.yml), and the data
services' own settings in the compose file (MONGO_INITDB_ROOT_*, ``--requirepass``,
MINIO_ROOT_*, MYSQL_ROOT_PASSWORD). Compose ``${VAR}`` substitution uses .env and the
environment, as docker compose does.

Secrets come out as references only: a value that the compose file takes from ``${VAR}``
keeps that reference (source .env before running); a literal gets a suggested variable
name and a note saying where the value is, never the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migrator.errors import PlanError

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.yaml", "compose.yaml", "compose.yml")
_SUBST = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_WHOLE = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-[^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))$")
CONTAINER_PORTS = {"mongo": 27017, "redis": 6379, "objects": 9000, "mysql": 3306}
DATA_DIRS = {"mongo": "/data/db", "redis": "/data", "objects": "/data", "mysql": "/var/lib/mysql"}


@dataclass(frozen=True)
class Value:
    """A setting's value plus, for secrets, the variable that holds it (if any)."""

    text: str
    origin: str  # e.g. "docker-compose.yml services.mongo.environment.MONGO_INITDB_ROOT_PASSWORD"
    var: str | None = None  # the environment variable it comes from


@dataclass
class Source:
    kind: str
    url: str
    options: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data_bytes: int | None = None  # size of the bind-mounted data directory, if readable


@dataclass
class Discovery:
    sources: dict[str, Source] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    database: str | None = None  # MongoDB database name, e.g. openim_v3


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


class _Compose:
    def __init__(self, path: Path | None, env: dict[str, str]) -> None:
        self.path, self.env = path, env
        self.services: dict[str, dict[str, Any]] = {}
        if path is not None:
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise PlanError(str(path), f"not valid YAML ({' '.join(str(exc).split())})"
                                ) from None
            self.services = data.get("services") or {}

    def subst(self, raw: Any, origin: str) -> Value:
        text = str(raw)
        whole = _WHOLE.match(text)

        def one(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(3)
            return self.env.get(name, m.group(2) or "")

        return Value(_SUBST.sub(one, text), origin,
                     (whole.group(1) or whole.group(2)) if whole else None)

    def environment(self, service: str) -> dict[str, Value]:
        env = self.services.get(service, {}).get("environment") or {}
        pairs = env.items() if isinstance(env, dict) else (
            e.partition("=")[::2] for e in env if isinstance(e, str))
        name = self.path.name if self.path else "compose"
        return {k: self.subst(v, f"{name} services.{service}.environment.{k}")
                for k, v in pairs if v is not None}

    def kind_of(self, service: str) -> str | None:
        image = self.subst(self.services[service].get("image") or "", "").text.lower()
        for kind, words in (("objects", ("minio",)), ("mongo", ("mongo",)),
                            ("redis", ("redis",)), ("mysql", ("mysql", "mariadb"))):
            if any(w in image or w == service for w in words):
                return kind
        return None

    def published(self, service: str, container_port: int) -> int | None:
        for entry in self.services.get(service, {}).get("ports") or []:
            if isinstance(entry, dict):
                if int(entry.get("target", 0)) == container_port and entry.get("published"):
                    return int(self.subst(entry["published"], "").text)
                continue
            parts = self.subst(entry, "").text.split("/")[0].split(":")
            if len(parts) >= 2 and parts[-1].isdigit() and int(parts[-1]) == container_port:
                host = parts[-2]
                return int(host) if host.isdigit() else None
        return None

    def data_dir(self, service: str, container_path: str, base: Path) -> Path | None:
        """The host directory bind-mounted at ``container_path`` (named volumes: None)."""
        for entry in self.services.get(service, {}).get("volumes") or []:
            if isinstance(entry, dict):
                source, target = entry.get("source"), entry.get("target")
            else:
                parts = self.subst(entry, "").text.split(":")
                source, target = (parts[0], parts[1]) if len(parts) >= 2 else (None, None)
            if source and target == container_path:
                source = self.subst(source, "").text
                if source.startswith((".", "/", "~")):
                    return (base / Path(source).expanduser()).resolve()
        return None

    def command_arg(self, service: str, flag: str) -> Value | None:
        cmd = self.services.get(service, {}).get("command")
        words = cmd if isinstance(cmd, list) else str(cmd or "").split()
        for i, word in enumerate(words[:-1]):
            if str(word) == flag:
                name = self.path.name if self.path else "compose"
                return self.subst(words[i + 1], f"{name} services.{service}.command {flag}")
        return None


def _config(config_dir: Path | None, name: str) -> dict[str, Any]:
    if config_dir is None or not (config_dir / name).exists():
        return {}
    try:
        return yaml.safe_load((config_dir / name).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PlanError(str(config_dir / name), f"not valid YAML ({exc})") from None


def discover(directory: Path, config_dir: Path | None = None,
             environ: dict[str, str] | None = None) -> Discovery:
    environ = dict(os.environ if environ is None else environ)
    compose_path = next((directory / n for n in COMPOSE_FILES if (directory / n).exists()), None)
    dotenv = read_env_file(directory / ".env")
    compose = _Compose(compose_path, {**dotenv, **environ})  # the environment wins
    if config_dir is None:
        config_dir = next((d for d in (directory / "config",) if d.is_dir()), None)
    result = Discovery()
    if compose_path is None and config_dir is None:
        raise PlanError(str(directory), "holds no docker-compose.yml and no config/ directory",
                        hint="point discover at the openim-docker (or open-im-server) checkout")
    by_kind: dict[str, str] = {}
    for service in compose.services:
        kind = compose.kind_of(service)
        if kind and kind not in by_kind:
            by_kind[kind] = service
    server_env: dict[str, Value] = {}
    for service in compose.services:
        server_env.update({k: v for k, v in compose.environment(service).items()
                           if k.startswith("IMENV_")})

    def imenv(key: str) -> Value | None:
        if key in environ:
            return Value(environ[key], f"environment variable {key}", key)
        return server_env.get(key)

    def from_config(file: str, key: str) -> Value | None:
        value = _config(config_dir, file).get(key)
        if value in (None, "", []):
            return None
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        return Value(text, f"{config_dir}/{file} {key}")

    def pick(*values: Value | None) -> Value | None:
        return next((v for v in values if v is not None and v.text), None)

    def address(kind: str, value: Value | None) -> tuple[str, int, list[str]]:
        """A host:port this machine can reach: a published compose port if there is one."""
        notes: list[str] = []
        service = by_kind.get(kind)
        default_port = CONTAINER_PORTS[kind]
        host, port = (service or "localhost"), default_port
        if value is not None:
            first = value.text.split(",")[0].strip()
            first = re.sub(r"^[a-z]+://", "", first)
            host, _, p = first.partition(":")
            port = int(p) if p.isdigit() else default_port
        if service and host in (service, compose.services[service].get("container_name")):
            published = compose.published(service, port)
            if published:
                return "127.0.0.1", published, notes
            notes.append(f"{kind}: the compose service {service!r} publishes no port: run "
                         "openim-migrate on the compose network, or publish "
                         f"127.0.0.1:{port} while migrating")
        return host, port, notes

    def secret_ref(value: Value | None, suggested: str, what: str, notes: list[str]) -> str:
        if value is None:
            notes.append(f"{what}: not found; set {suggested}")
            return f"${{{suggested}}}"
        if value.var:
            where = ("the environment" if value.var in environ else ".env")
            notes.append(f"{what}: ${{{value.var}}} from {where} ({value.origin})")
            return f"${{{value.var}}}"
        notes.append(f"{what}: export {suggested} with the value in {value.origin}")
        return f"${{{suggested}}}"

    # -- MongoDB ----------------------------------------------------------------------
    mongo_env = compose.environment(by_kind["mongo"]) if "mongo" in by_kind else {}
    mongo_addr = pick(imenv("IMENV_MONGODB_ADDRESS"), from_config("mongodb.yml", "address"))
    if mongo_addr or "mongo" in by_kind:
        notes: list[str] = []
        host, port, more = address("mongo", mongo_addr)
        notes += more
        user = pick(imenv("IMENV_MONGODB_USERNAME"), from_config("mongodb.yml", "username"))
        password = pick(imenv("IMENV_MONGODB_PASSWORD"), from_config("mongodb.yml", "password"))
        database = pick(imenv("IMENV_MONGODB_DATABASE"), from_config("mongodb.yml", "database"),
                        mongo_env.get("MONGO_INITDB_DATABASE"))
        db = database.text if database else "openim_v3"
        auth = pick(from_config("mongodb.yml", "authSource"))
        auth_source = auth.text if auth else db
        if user is None:  # only the root account from the compose file
            user = pick(mongo_env.get("MONGO_INITDB_ROOT_USERNAME"))
            password = pick(mongo_env.get("MONGO_INITDB_ROOT_PASSWORD"))
            auth_source = "admin"
        ref = secret_ref(password, "SRC_MONGO_PASSWORD", "mongo password", notes)
        name = user.text if user else "root"
        result.sources["mongo"] = Source("mongo", f"mongodb://{name}:{ref}@{host}:{port}/{db}"
                                         f"?authSource={auth_source}", notes=notes)
        result.database = db
        if db == "openIM_v3":
            result.notes.append("MongoDB database openIM_v3 means OpenIM <= 3.5; v3.6+ uses "
                                "openim_v3: add --target-option "
                                "mongo.db_map='{openIM_v3: openim_v3}'")
    # -- Redis ------------------------------------------------------------------------
    redis_addr = pick(imenv("IMENV_REDIS_ADDRESS"), from_config("redis.yml", "address"))
    if redis_addr or "redis" in by_kind:
        notes = []
        host, port, more = address("redis", redis_addr)
        notes += more
        password = pick(imenv("IMENV_REDIS_PASSWORD"), from_config("redis.yml", "password"),
                        compose.command_arg(by_kind["redis"], "--requirepass")
                        if "redis" in by_kind else None)
        ref = secret_ref(password, "SRC_REDIS_PASSWORD", "redis password", notes)
        cluster = _config(config_dir, "redis.yml").get("clusterMode") or (
            _config(config_dir, "redis.yml").get("redisMode") == "cluster")
        scheme = "redis+cluster" if cluster else "redis"
        result.sources["redis"] = Source("redis", f"{scheme}://:{ref}@{host}:{port}"
                                         + ("" if cluster else "/0"), notes=notes)
    # -- MinIO ------------------------------------------------------------------------
    minio_env = compose.environment(by_kind["objects"]) if "objects" in by_kind else {}
    minio_addr = pick(imenv("IMENV_MINIO_INTERNALADDRESS"),
                      from_config("minio.yml", "internalAddress"))
    if minio_addr or "objects" in by_kind:
        notes = []
        host, port, more = address("objects", minio_addr)
        notes += more
        access = pick(imenv("IMENV_MINIO_ACCESSKEYID"), from_config("minio.yml", "accessKeyID"),
                      minio_env.get("MINIO_ROOT_USER"))
        secret = pick(imenv("IMENV_MINIO_SECRETACCESSKEY"),
                      from_config("minio.yml", "secretAccessKey"),
                      minio_env.get("MINIO_ROOT_PASSWORD"))
        bucket = pick(from_config("minio.yml", "bucket"))
        result.sources["objects"] = Source(
            "objects", f"http://{host}:{port}/{bucket.text if bucket else 'openim'}",
            options={"access_key": secret_ref(access, "SRC_MINIO_ACCESS_KEY",
                                              "minio access key", notes),
                     "secret_key": secret_ref(secret, "SRC_MINIO_SECRET_KEY",
                                              "minio secret key", notes)},
            notes=notes)
    # -- MySQL (OpenIM <= 3.4, chat <= 1.5) --------------------------------------------
    if "mysql" in by_kind:
        notes = []
        mysql_env = compose.environment(by_kind["mysql"])
        host, port, more = address("mysql", None)
        notes += more
        password = pick(mysql_env.get("MYSQL_ROOT_PASSWORD"),
                        mysql_env.get("MARIADB_ROOT_PASSWORD"))
        ref = secret_ref(password, "SRC_MYSQL_PASSWORD", "mysql password", notes)
        result.sources["mysql"] = Source("mysql", f"mysql://root:{ref}@{host}:{port}/openIM_v3",
                                         notes=notes)
        result.notes.append("a MySQL service means OpenIM <= 3.4 (or chat <= 1.5): deploy "
                            "renders MariaDB for it")
    if not result.sources:
        raise PlanError(str(directory), "found no MongoDB, Redis, MinIO or MySQL settings")
    for kind, source in result.sources.items():
        if kind in by_kind:
            path = compose.data_dir(by_kind[kind], DATA_DIRS[kind], directory)
            if path is not None and path.is_dir():
                source.data_bytes = _du(path)
    return result


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (what `deploy --size` should hold, before headroom);
    unreadable entries are skipped."""
    total = 0
    for root, _dirs, files in os.walk(path, onerror=lambda _e: None):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
