#!/usr/bin/env python3
"""Start/stop real local test servers on free 127.0.0.1 ports (stdlib only).

    python scripts/services.py start --dir DIR [--only redis,mysql,minio,mongo]
    python scripts/services.py env   --dir DIR
    python scripts/services.py stop  --dir DIR
    eval "$(python scripts/services.py start --dir .services)"   # start + export in a shell

Groups:
  redis  source (requirepass + read-only ACL user ``reader``), standalone target,
         3-master Redis Cluster target
  mysql  MariaDB source (row-format binlog; read-only user ``reader`` who may read it)
         and target
  minio  MinIO source and target
  mongo  MongoDB-protocol source and target, one of two flavours (OIM_MONGO_TEST_SERVER=
         auto|documentdb|ferretdb; auto takes DocumentDB when scripts/build-documentdb.sh
         has built it):
           documentdb  PostgreSQL 15 + DocumentDB + its gateway, one PostgreSQL data dir and
                       one gateway per side; admin user ``oimadmin`` (the URLs carry it as
                       ``oimadmin:${OIM_MONGO_SRC_PASSWORD}@``) and a source user with only
                       ``readAnyDatabase`` (OIM_MONGO_SRC_READER_USER/_PASSWORD)
           ferretdb    FerretDB 1.24 (SQLite backend), no users
         both: a TLS listener in front of the source (OIM_MONGO_TLS_URL) whose certificate
         is signed by a test CA (OIM_MONGO_TLS_CA_FILE); OIM_MONGO_FLAVOR names the flavour

State lives in DIR: DIR/services.json (pids, ports, env) and DIR/env.sh (export
lines). ``start`` may be called again with other groups; they are added.
``stop`` kills exactly the processes it started and is safe to call twice.
Nothing is installed here: a missing binary is reported with ``make deps``.
Importable: ``start(dir, only=None) -> dict[str, str]``, ``stop(dir)``, ``env(dir)``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

GROUPS = ("redis", "mysql", "minio", "mongo")
ALIASES = {"s3": "minio", "mariadb": "mysql", "mongodb": "mongo", "ferretdb": "mongo"}
HOST = "127.0.0.1"
STATE_FILE = "services.json"
ENV_FILE = "env.sh"
READY_TIMEOUT = float(os.environ.get("OIM_SERVICES_TIMEOUT", "60"))
GO_BIN_DIR = Path(os.environ.get("OPENIM_MIGRATE_BIN") or Path.home() / ".cache/openim-migrate/bin")

# Binaries each group needs.
BINARIES = {
    "redis": ["redis-server", "redis-cli"],
    "mysql": ["mariadbd", "mariadb-install-db", "mariadb"],
    "minio": ["minio"],
    "mongo": ["ferretdb", "openssl"],  # the FerretDB flavour; see _binaries() for DocumentDB
}

# Read-only Redis user: everything for SCAN/DUMP/PTTL/TYPE/H*/L*/S*/Z*/X* reads,
# INFO/DBSIZE/SELECT/MEMORY USAGE, connection handling; no write/admin/dangerous command.
# CLIENT TRACKING (in @connection) + SUBSCRIBE to the invalidation channel: `sync` follows
# the keys the source changes.
REDIS_READER_RULES = (
    "on ~* &* resetchannels &__redis__:invalidate -@all +@read +@connection -@admin "
    "-@dangerous +subscribe +unsubscribe "
    "+scan +dump +pttl +ttl +pexpiretime +expiretime +type +exists +info +select +ping "
    "+dbsize +memory|usage +object|encoding +object|freq +object|idletime +object|refcount "
    "+client|setname +client|getname +client|id +client|info +hello +auth +echo +time "
    "+multi +exec +discard +watch +unwatch +acl|whoami "
    "+command|count +command|docs +command|info +command|list "
    "+cluster|info +cluster|nodes +cluster|slots +cluster|shards +cluster|myid "
    "+readonly +readwrite"
).split()
# Rules for commands that only newer servers know (applied one by one; errors ignored).
REDIS_READER_OPTIONAL_RULES = ["+client|setinfo"]


class ServiceError(RuntimeError):
    """A server could not be started."""


class MissingBinary(ServiceError):
    """A required executable is not installed."""

    def __init__(self, binary: str, group: str):
        self.binary = binary
        self.group = group
        where = (f"PATH or {GO_BIN_DIR}" if binary in ("minio", "ferretdb", "documentdb_gateway")
                 else "PATH, /usr/sbin")
        super().__init__(
            f"missing binary '{binary}' (needed for {group} test servers; looked in {where}): "
            f"run `make deps` to install it"
        )


# ----------------------------------------------------------------------------- helpers


def find_binary(name: str) -> str | None:
    # the pinned builds in GO_BIN_DIR win over other copies on PATH
    path = os.pathsep.join(
        [str(GO_BIN_DIR), os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
    )
    return shutil.which(name, path=path)


def missing_binaries(only=None) -> list[tuple[str, str]]:
    """[(binary, group)] for every needed binary that is not installed."""
    return [(b, g) for g in _groups(only) for b in _binaries(g) if find_binary(b) is None]


def _binaries(group: str) -> list[str]:
    if group == "mongo" and mongo_flavour() == "documentdb":
        return DOCUMENTDB_BINARIES
    return BINARIES[group]


def _groups(only) -> list[str]:
    if only is None:
        return list(GROUPS)
    if isinstance(only, str):
        only = [x for x in only.replace(" ", "").split(",") if x]
    only = [ALIASES.get(g, g) for g in only]
    bad = [g for g in only if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown service group(s) {bad}; choose from {', '.join(GROUPS)}")
    return [g for g in GROUPS if g in only]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (all sockets held open until every port is chosen)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _password(var: str) -> str:
    return os.environ.get(var) or secrets.token_hex(12)


def _proc_starttime(pid: int) -> str | None:
    """Kernel start time of pid (guards against killing a recycled pid); None if gone/zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _alive(proc: dict) -> bool:
    _reap(proc["pid"])
    st = _proc_starttime(proc["pid"])
    return st is not None and st == proc.get("starttime")


# Popen objects of the servers this process started (kept so they are reaped, not warned about)
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines)


def _wait(
    what: str,
    check,
    timeout: float = READY_TIMEOUT,
    proc: dict | None = None,
    log: Path | None = None,
):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            # the port must be ours: another program may have taken it since it was chosen
            owned = proc is None or not proc.get("port") or _owns_port(proc["pid"], proc["port"])
            result = owned and check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last_exc = exc
        if proc is not None and not _alive(proc):
            raise ServiceError(
                f"{what} exited during start-up; log {log}:\n{_log_tail(log) if log else ''}"
            )
        time.sleep(0.05)
    detail = f" (last error: {last_exc})" if last_exc else ""
    tail = f"; log {log}:\n{_log_tail(log)}" if log else ""
    raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{tail}")


def _owns_port(pid: int, port: int) -> bool:
    """True if process pid holds the socket listening on TCP port (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{cols[9]}]")
        except OSError:
            continue
    if not os.path.isdir("/proc/self/fd"):
        return True  # no /proc: cannot tell, trust the protocol check
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _tcp_open(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


class _Launcher:
    """Starts processes and records them for stop()."""

    def __init__(self, root: Path, detach: bool):
        self.root = root
        self.detach = detach
        self.procs: list[dict] = []
        self.lock = threading.Lock()

    def spawn(
        self,
        name: str,
        group: str,
        argv: list[str],
        port: int | None = None,
        env: dict | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> dict:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log, "ab") as out:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd or self.root),
                start_new_session=self.detach,
                close_fds=True,
                user=user,
            )
        rec = {
            "name": name,
            "group": group,
            "pid": p.pid,
            "port": port,
            "log": str(log),
            "argv0": argv[0],
        }
        rec["starttime"] = _proc_starttime(p.pid)
        with self.lock:
            _CHILDREN[p.pid] = p
            self.procs.append(rec)
        return rec


def _run(
    argv: list[str],
    what: str,
    log: Path,
    env: dict | None = None,
    input: str | None = None,
    timeout: float = READY_TIMEOUT,
    user: str | None = None,
) -> str:
    full_env = dict(os.environ)
    full_env.update(env or {})
    r = subprocess.run(
        argv, input=input, capture_output=True, text=True, env=full_env, timeout=timeout,
        user=user, cwd="/" if user else None,
    )
    with open(log, "a") as f:
        f.write(f"$ {' '.join(shlex.quote(a) for a in argv[:2])} ...\n{r.stdout}{r.stderr}\n")
    if r.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}"
        )
    return r.stdout


# ----------------------------------------------------------------------------- redis


class _Resp:
    """Minimal RESP2 client, enough for AUTH/PING/CLUSTER INFO/ACL SETUSER."""

    def __init__(self, port: int, password: str | None = None, user: str | None = None):
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.buf = self.sock.makefile("rb")
        if password is not None:
            try:
                self.call(*(["AUTH", user, password] if user else ["AUTH", password]))
            except BaseException:
                self.close()
                raise

    def close(self):
        self.buf.close()
        self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.buf.readline()
        if not line:
            raise ConnectionError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ServiceError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError(f"bad RESP line {line!r}")


def _redis_call(port: int, password: str, *args):
    c = _Resp(port, password)
    try:
        return c.call(*args)
    finally:
        c.close()


def _redis_conf(
    path: Path, port: int, password: str, data: Path, cluster_port: int | None = None
) -> None:
    data.mkdir(parents=True, exist_ok=True)
    lines = [
        f"port {port}",
        f"bind {HOST}",
        "protected-mode yes",
        "daemonize no",
        f"dir {data}",
        'save ""',
        "appendonly no",
        "databases 16",
        f"requirepass {password}",
        f"masterauth {password}",
        "loglevel warning",
    ]
    if cluster_port:
        lines += [
            "cluster-enabled yes",
            f"cluster-port {cluster_port}",
            f"cluster-config-file {data / 'nodes.conf'}",
            "cluster-node-timeout 5000",
            f"cluster-announce-ip {HOST}",
        ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def _start_redis(root: Path, L: _Launcher) -> dict:
    exe, cli = find_binary("redis-server"), find_binary("redis-cli")
    src_pw = _password("OIM_REDIS_SRC_PASSWORD")
    reader_pw = _password("OIM_REDIS_SRC_READER_PASSWORD")
    dst_pw = _password("OIM_REDIS_DST_PASSWORD")
    cl_pw = _password("OIM_REDIS_CLUSTER_PASSWORD")
    src_port, dst_port, *cl = _free_ports(2 + 6)
    cl_ports, cl_bus = cl[:3], cl[3:]

    procs = []
    for name, port, pw, bus in [
        ("redis-src", src_port, src_pw, None),
        ("redis-dst", dst_port, dst_pw, None),
    ] + [(f"redis-cluster-{i}", cl_ports[i], cl_pw, cl_bus[i]) for i in range(3)]:
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        _redis_conf(d / "redis.conf", port, pw, d, bus)
        rec = L.spawn(name, "redis", [exe, str(d / "redis.conf")], port=port)
        procs.append((rec, pw))

    for rec, pw in procs:
        _wait(
            rec["name"],
            lambda r=rec, p=pw: _redis_call(r["port"], p, "PING") == "PONG",
            proc=rec,
            log=Path(rec["log"]),
        )

    # read-only user on the source
    _redis_call(
        src_port, src_pw, "ACL", "SETUSER", "reader", "reset", f">{reader_pw}", *REDIS_READER_RULES
    )
    for rule in REDIS_READER_OPTIONAL_RULES:
        try:
            _redis_call(src_port, src_pw, "ACL", "SETUSER", "reader", rule)
        except ServiceError:
            pass  # command unknown to this redis version

    # 3-master cluster
    log = root / "logs" / "redis-cluster-create.log"
    _run(
        [
            cli,
            "--cluster",
            "create",
            *[f"{HOST}:{p}" for p in cl_ports],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        "redis-cli --cluster create",
        log,
        env={"REDISCLI_AUTH": cl_pw},
    )

    def cluster_ok():
        for p in cl_ports:
            info = _redis_call(p, cl_pw, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                return False
        return True

    _wait("redis cluster_state:ok on all 3 nodes", cluster_ok, log=log)
    return {
        "OIM_REDIS_SRC_URL": f"redis://{HOST}:{src_port}/0",
        "OIM_REDIS_SRC_PASSWORD": src_pw,
        "OIM_REDIS_SRC_READER_USER": "reader",
        "OIM_REDIS_SRC_READER_PASSWORD": reader_pw,
        "OIM_REDIS_DST_URL": f"redis://{HOST}:{dst_port}/0",
        "OIM_REDIS_DST_PASSWORD": dst_pw,
        "OIM_REDIS_CLUSTER_URL": f"redis+cluster://{HOST}:{cl_ports[0]}",
        "OIM_REDIS_CLUSTER_PASSWORD": cl_pw,
    }


# ----------------------------------------------------------------------------- mysql (MariaDB)


def _mysql_handshake(port: int) -> bool:
    """True once the server sends its protocol-10 greeting over TCP."""
    with socket.create_connection((HOST, port), timeout=2) as s:
        data = s.recv(64)
    return len(data) > 4 and data[4] == 10


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _start_mariadb(
    root: Path, L: _Launcher, name: str, port: int, root_pw: str, reader_pw: str | None,
    binlog: bool = False,
) -> None:
    d = root / name
    shutil.rmtree(d, ignore_errors=True)  # always a fresh instance (passwords are new)
    data, tmp = d / "data", d / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sock = d / "mysqld.sock"
    if len(str(sock)) > 100:  # unix socket paths are limited to 107 bytes
        sock = Path(tempfile.mkdtemp(prefix="oim-my-")) / "mysqld.sock"
        (d / "socket-dir").write_text(str(sock.parent))
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    common = ["--no-defaults"]
    fast = [
        "--innodb-buffer-pool-size=256M",
        "--innodb-log-file-size=64M",
        "--innodb-doublewrite=0",
        "--innodb-flush-log-at-trx-commit=2",
        "--skip-name-resolve",
    ]
    _run(
        [
            find_binary("mariadb-install-db"),
            *common,
            f"--datadir={data}",
            # private tmpdir: internal temp tables in a shared /tmp were seen to vanish
            # (another process cleaning /tmp), crashing the bootstrap
            f"--tmpdir={tmp}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *as_root,
            *fast,
        ],
        f"mariadb-install-db ({name})",
        log,
    )
    rec = L.spawn(
        name,
        "mysql",
        [
            find_binary("mariadbd"),
            *common,
            f"--datadir={data}",
            f"--socket={sock}",
            f"--pid-file={d / 'mysqld.pid'}",
            f"--tmpdir={tmp}",
            f"--port={port}",
            f"--bind-address={HOST}",
            *as_root,
            *fast,
            # the source writes a row-format binlog, so `sync` can follow its changes
            *(["--log-bin=mysql-bin", "--binlog-format=ROW", f"--server-id={port}"]
              if binlog else ["--skip-log-bin"]),
            "--local-infile=1",
            "--max-allowed-packet=256M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--performance-schema=OFF",
            "--max-connections=300",
            "--sync-binlog=0",
            "--log-error=" + str(log),
        ],
        port=port,
    )
    _wait(f"{name} (mariadbd on port {port})", lambda: _mysql_handshake(port), proc=rec, log=log)

    pw = _sql_str(root_pw)
    sql = [
        "DELETE FROM mysql.global_priv WHERE User = '' "
        "OR (User = 'root' AND Host NOT IN ('localhost', '127.0.0.1', '::1'))",
        "FLUSH PRIVILEGES",
        "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
        "CREATE USER IF NOT EXISTS 'root'@'::1'",
    ]
    for host in ("localhost", "127.0.0.1", "::1"):
        sql += [
            f"ALTER USER 'root'@'{host}' IDENTIFIED BY {pw}",
            f"GRANT ALL PRIVILEGES ON *.* TO 'root'@'{host}' WITH GRANT OPTION",
        ]
    if reader_pw is not None:
        for host in ("%", "localhost", "127.0.0.1"):
            sql += [
                f"CREATE OR REPLACE USER 'reader'@'{host}' IDENTIFIED BY {_sql_str(reader_pw)}",
                # REPLICATION SLAVE + BINLOG MONITOR: read the binlog (`sync` follows it)
                f"GRANT SELECT, SHOW VIEW, PROCESS, REPLICATION SLAVE, BINLOG MONITOR"
                f" ON *.* TO 'reader'@'{host}'",
            ]
    sql.append("FLUSH PRIVILEGES")
    # fresh datadir: root has no password yet, log in over the unix socket
    _run(
        [find_binary("mariadb"), "--no-defaults", f"--socket={sock}", "-uroot", "--batch"],
        f"MariaDB user setup ({name})",
        log,
        input=";\n".join(sql) + ";\n",
    )


def _start_mysql(root: Path, L: _Launcher) -> dict:
    src_pw = _password("OIM_MYSQL_SRC_PASSWORD")
    reader_pw = _password("OIM_MYSQL_SRC_READER_PASSWORD")
    dst_pw = _password("OIM_MYSQL_DST_PASSWORD")
    src_port, dst_port = _free_ports(2)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [
            ex.submit(_start_mariadb, root, L, "mysql-src", src_port, src_pw, reader_pw,
                      binlog=True),
            ex.submit(_start_mariadb, root, L, "mysql-dst", dst_port, dst_pw, None),
        ]
        for f in futs:
            f.result()
    return {
        "OIM_MYSQL_SRC_URL": f"mysql://{HOST}:{src_port}",
        "OIM_MYSQL_SRC_USER": "root",
        "OIM_MYSQL_SRC_PASSWORD": src_pw,
        "OIM_MYSQL_SRC_READER_USER": "reader",
        "OIM_MYSQL_SRC_READER_PASSWORD": reader_pw,
        "OIM_MYSQL_DST_URL": f"mysql://{HOST}:{dst_port}",
        "OIM_MYSQL_DST_USER": "root",
        "OIM_MYSQL_DST_PASSWORD": dst_pw,
    }


# ----------------------------------------------------------------------------- minio


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def _start_minio(root: Path, L: _Launcher) -> dict:
    exe = find_binary("minio")
    env_out: dict[str, str] = {}
    started = []
    ports = _free_ports(4)
    for i, side in enumerate(("SRC", "DST")):
        name = f"minio-{side.lower()}"
        port, console = ports[2 * i], ports[2 * i + 1]
        access = (
            os.environ.get(f"OIM_S3_{side}_ACCESS_KEY")
            or f"oim{side.lower()}{secrets.token_hex(4)}"
        )
        secret = _password(f"OIM_S3_{side}_SECRET_KEY")
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        (d / "data").mkdir(parents=True, exist_ok=True)
        env = {
            "MINIO_ROOT_USER": access,
            "MINIO_ROOT_PASSWORD": secret,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
            "MINIO_CALLHOME_ENABLE": "off",
            "MINIO_SCANNER_SPEED": "fastest",
        }
        rec = L.spawn(
            name,
            "minio",
            [
                exe,
                "server",
                "--quiet",
                "--address",
                f"{HOST}:{port}",
                "--console-address",
                f"{HOST}:{console}",
                "--certs-dir",
                str(d / "certs"),
                str(d / "data"),
            ],
            port=port,
            env=env,
            cwd=d,
        )
        started.append((rec, port))
        env_out.update(
            {
                f"OIM_S3_{side}_URL": f"http://{HOST}:{port}",
                f"OIM_S3_{side}_ACCESS_KEY": access,
                f"OIM_S3_{side}_SECRET_KEY": secret,
            }
        )
    for rec, port in started:
        _wait(
            rec["name"],
            lambda p=port: _http_ok(f"http://{HOST}:{p}/minio/health/ready"),
            proc=rec,
            log=Path(rec["log"]),
        )
    return env_out


# ----------------------------------------------------------------------------- mongo
# Two flavours. DocumentDB (PostgreSQL 15 + the DocumentDB extensions + DocumentDB's gateway,
# built by scripts/build-documentdb.sh) behaves much like MongoDB: every BSON type, views,
# validators, TTL/partial/text/2dsphere/hashed indexes, transactions, users and roles.
# FerretDB 1.24 (SQLite) is the fallback when DocumentDB is not built.

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_SHARE = Path(f"/usr/share/postgresql/{PG_MAJOR}")
# extensions `CREATE EXTENSION documentdb CASCADE` needs (Debian packages + our build)
DOCUMENTDB_EXTENSIONS = ("documentdb", "documentdb_core", "pg_cron", "vector", "postgis", "rum")
DOCUMENTDB_BINARIES = ["documentdb_gateway", "psql", "openssl"]
MONGO_ADMIN = "oimadmin"
MONGO_READER = "oimreader"
_PG_SUPERUSER = "oimpg"
_GATEWAY_READY_TIMEOUT = max(READY_TIMEOUT, 180.0)  # CREATE EXTENSION postgis on busy cores


def documentdb_ready() -> bool:
    """True when the DocumentDB flavour can start (built, installed, PostgreSQL present)."""
    if find_binary("documentdb_gateway") is None:
        return False
    if not all((PG_BIN / b).exists() for b in ("postgres", "initdb")):
        return False
    if not all((PG_SHARE / "extension" / f"{e}.control").exists() for e in DOCUMENTDB_EXTENSIONS):
        return False
    return os.geteuid() != 0 or _pg_user() is not None


def mongo_flavour() -> str:
    """"documentdb" or "ferretdb": OIM_MONGO_TEST_SERVER if set, else what is available."""
    want = os.environ.get("OIM_MONGO_TEST_SERVER", "auto").lower()
    if want in ("documentdb", "ferretdb"):
        return want
    if want != "auto":
        raise ValueError(f"OIM_MONGO_TEST_SERVER={want!r}: choose auto, documentdb or ferretdb")
    return "documentdb" if documentdb_ready() else "ferretdb"


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, its servers run as user ``postgres``."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


def _test_ca(root: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) for 127.0.0.1/localhost."""
    d = root / "mongo-tls"
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "server.key",
                                                  "server.csr", "server.pem"))
    log = root / "logs" / "mongo-tls.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    ssl = find_binary("openssl") or "openssl"
    _run([ssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
          "-subj", "/CN=openim-migrate test CA", "-keyout", str(ca_key), "-out", str(ca)],
         "openssl (test CA)", log)
    _run([ssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
          "-keyout", str(key), "-out", str(csr)], "openssl (server key)", log)
    ext = d / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run([ssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
          "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)],
         "openssl (server certificate)", log)
    for f in (ca_key, key):
        f.chmod(0o600)
    return ca, cert, key


def _start_mongo(root: Path, L: _Launcher) -> dict:
    if mongo_flavour() == "documentdb":
        return _start_documentdb(root, L)
    return _start_ferretdb(root, L)


def _start_ferretdb(root: Path, L: _Launcher) -> dict:
    exe = find_binary("ferretdb")
    env_out = {"OIM_MONGO_FLAVOR": "ferretdb"}
    started = []
    ca, cert, key = _test_ca(root)
    ports = _free_ports(3)
    for side, port in zip(("SRC", "DST"), ports, strict=False):
        name = f"mongo-{side.lower()}"
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        (d / "sqlite").mkdir(parents=True, exist_ok=True)
        (d / "state").mkdir(parents=True, exist_ok=True)
        tls = []
        if side == "SRC":  # a TLS listener beside the plain one (tests of tls: options)
            tls = [f"--listen-tls={HOST}:{ports[2]}", f"--listen-tls-cert-file={cert}",
                   f"--listen-tls-key-file={key}"]
            env_out["OIM_MONGO_TLS_URL"] = f"mongodb://{HOST}:{ports[2]}"
            env_out["OIM_MONGO_TLS_CA_FILE"] = str(ca)
        rec = L.spawn(
            name,
            "mongo",
            [
                exe,
                "--handler=sqlite",
                f"--sqlite-url=file:{d / 'sqlite'}/",
                f"--listen-addr={HOST}:{port}",
                *tls,
                f"--state-dir={d / 'state'}",
                "--debug-addr=-",
                "--telemetry=disable",
                "--log-level=warn",
            ],
            port=port,
            cwd=d,
            env={"FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"},
        )
        started.append((rec, port))
        env_out[f"OIM_MONGO_{side}_URL"] = f"mongodb://{HOST}:{port}"
    for rec, port in started:
        _wait(rec["name"], lambda p=port: _tcp_open(p), proc=rec, log=Path(rec["log"]))
    _wait("FerretDB TLS listener", lambda: _tcp_open(ports[2]), proc=started[0][0],
          log=Path(started[0][0]["log"]))
    return env_out


def _pg_conf(port: int, sockdir: Path) -> str:
    return "\n".join([
        f"listen_addresses = '{HOST}'",
        f"port = {port}",
        f"unix_socket_directories = '{sockdir}'",
        "shared_preload_libraries = 'pg_cron,pg_documentdb_core,pg_documentdb'",
        "cron.database_name = 'postgres'",
        # what DocumentDB needs switched on to act like MongoDB (users, validators, ...)
        "documentdb.enableCompact = true",
        "documentdb.enableLetAndCollationForQueryMatch = true",
        "documentdb.enableNowSystemVariable = true",
        "documentdb.enableSortbyIdPushDownToPrimaryKey = true",
        "documentdb.enableSchemaValidation = true",
        "documentdb.enableBypassDocumentValidation = true",
        "documentdb.enableUserCrud = true",
        "documentdb.maxUserLimit = 100",
        # index builds on collections with data run from a pg_cron job (default every 2 s)
        "documentdb.indexBuildScheduleInSec = 1",
        # a throw-away test server: durability off, modest memory
        "fsync = off",
        "synchronous_commit = off",
        "full_page_writes = off",
        "shared_buffers = 128MB",
        "max_connections = 200",
        "log_min_messages = warning",
        "",
    ])


def _start_pg(root: Path, L: _Launcher, name: str, port: int) -> Path:
    """One PostgreSQL with DocumentDB; returns its private dir (data + unix socket).

    The data dir lives outside ``root`` (a pytest temp dir is private to root, and the
    server runs as ``postgres``); ``socket-dir`` records it so ``stop()`` removes it.
    """
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    user = _pg_user()
    ext = Path(tempfile.mkdtemp(prefix="oim-docdb-"))
    (d / "socket-dir").write_text(str(ext))
    if user:
        shutil.chown(ext, user, user)
    log = root / "logs" / f"{name}-setup.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    data = ext / "data"
    _run([str(PG_BIN / "initdb"), "-D", str(data), "-U", _PG_SUPERUSER, "--auth=trust",
          "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], f"initdb ({name})", log, user=user,
         timeout=_GATEWAY_READY_TIMEOUT)
    with open(data / "postgresql.conf", "a") as f:
        f.write(_pg_conf(port, ext))
    rec = L.spawn(name, "mongo", [str(PG_BIN / "postgres"), "-D", str(data)], port=port,
                  user=user, cwd=ext)
    psql = [find_binary("psql") or "psql", "-q", "-h", HOST, "-p", str(port), "-U",
            _PG_SUPERUSER, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X"]
    _wait(f"{name} (PostgreSQL on port {port})",
          lambda: subprocess.run([*psql, "-c", "SELECT 1"], capture_output=True,
                                 timeout=10).returncode == 0,
          proc=rec, log=Path(rec["log"]))
    _run([*psql, "-c", "CREATE EXTENSION documentdb CASCADE"],
         f"CREATE EXTENSION documentdb ({name})", log, timeout=_GATEWAY_READY_TIMEOUT)
    return ext


def _psql(port: int, sql: str, what: str, log: Path) -> None:
    _run([find_binary("psql") or "psql", "-q", "-h", HOST, "-p", str(port), "-U", _PG_SUPERUSER,
          "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X", "-f", "-"], what, log, input=sql)


def _sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _start_gateway(root: Path, L: _Launcher, name: str, pg_port: int, port: int,
                   cert: Path, key: Path, tls: bool) -> dict:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "NodeHostName": "localhost",
        "BlockedRolePrefixes": ["documentdb", "citus", "pg", "internal_role"],
        "PostgresSystemUser": _PG_SUPERUSER,
        "PostgresHostName": HOST,
        "PostgresPort": pg_port,
        "PostgresDatabase": "postgres",
        "GatewayListenPort": port,
        "UseLocalHost": True,  # 127.0.0.1 only
        "EnforceSslTcp": tls,  # either TLS only or plain only
        "TransactionTimeoutSecs": 30,
        "CursorTimeoutSecs": 600,
        "PostgresCommandTimeoutSecs": 300,
        # release builds refuse to start without a certificate, even when plain
        "CertificateOptions": {"CertType": "pem_file", "FilePath": str(cert),
                               "KeyFilePath": str(key)},
    }
    (d / "gateway.json").write_text(json.dumps(config, indent=2))
    return L.spawn(name, "mongo", [find_binary("documentdb_gateway"), str(d / "gateway.json")],
                   port=port, cwd=d, env={"RUST_LOG": "warn"})


def _start_documentdb(root: Path, L: _Launcher) -> dict:
    ca, cert, key = _test_ca(root)
    pg_src, pg_dst, gw_src, gw_dst, gw_tls = _free_ports(5)
    pw = {"SRC": _password("OIM_MONGO_SRC_PASSWORD"), "DST": _password("OIM_MONGO_DST_PASSWORD")}
    reader_pw = _password("OIM_MONGO_SRC_READER_PASSWORD")
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(_start_pg, root, L, "mongo-src-pg", pg_src),
                ex.submit(_start_pg, root, L, "mongo-dst-pg", pg_dst)]
        for f in futs:
            f.result()
    log = root / "logs" / "mongo-users.log"
    for side, port in (("SRC", pg_src), ("DST", pg_dst)):
        sql = [f"CREATE ROLE {MONGO_ADMIN} LOGIN INHERIT PASSWORD {_sql_literal(pw[side])} "
               "IN ROLE documentdb_admin_role",
               f"ALTER ROLE {MONGO_ADMIN} CREATEROLE",
               f"GRANT {MONGO_ADMIN} TO {_PG_SUPERUSER} WITH ADMIN OPTION"]
        if side == "SRC":
            spec = json.dumps({"createUser": MONGO_READER, "pwd": reader_pw,
                               "roles": [{"role": "readAnyDatabase", "db": "admin"}]})
            sql.append(f"SELECT documentdb_api.create_user({_sql_literal(spec)}::"
                       "documentdb_core.bson)")
        _psql(port, ";\n".join(sql) + ";\n", f"DocumentDB users (mongo-{side.lower()})", log)
    gateways = [
        (_start_gateway(root, L, "mongo-src", pg_src, gw_src, cert, key, False), gw_src),
        (_start_gateway(root, L, "mongo-dst", pg_dst, gw_dst, cert, key, False), gw_dst),
        (_start_gateway(root, L, "mongo-tls", pg_src, gw_tls, cert, key, True), gw_tls),
    ]
    for rec, port in gateways:
        _wait(rec["name"], lambda p=port: _tcp_open(p), proc=rec, log=Path(rec["log"]),
              timeout=_GATEWAY_READY_TIMEOUT)
    def url(side: str, port: int) -> str:  # a plan-style URL: the password is a reference
        return f"mongodb://{MONGO_ADMIN}:${{OIM_MONGO_{side}_PASSWORD}}@{HOST}:{port}"

    return {
        "OIM_MONGO_FLAVOR": "documentdb",
        "OIM_MONGO_SRC_URL": url("SRC", gw_src),
        "OIM_MONGO_SRC_USER": MONGO_ADMIN,
        "OIM_MONGO_SRC_PASSWORD": pw["SRC"],
        "OIM_MONGO_SRC_READER_USER": MONGO_READER,
        "OIM_MONGO_SRC_READER_PASSWORD": reader_pw,
        "OIM_MONGO_DST_URL": url("DST", gw_dst),
        "OIM_MONGO_DST_USER": MONGO_ADMIN,
        "OIM_MONGO_DST_PASSWORD": pw["DST"],
        "OIM_MONGO_TLS_URL": url("SRC", gw_tls),
        "OIM_MONGO_TLS_CA_FILE": str(ca),
    }


def _start_group(group: str, root: Path, L: _Launcher) -> dict:
    """Run a group's starter; retry once (fresh dirs, new ports) after a quick failure,
    e.g. a port taken by another program since it was chosen. Timeouts are not retried."""
    try:
        return STARTERS[group](root, L)
    except ServiceError as exc:
        if str(exc).startswith("timed out"):
            raise
        print(f"services.py: {group}: {str(exc).splitlines()[0]}; retrying", file=sys.stderr)
        failed = [p for p in list(L.procs) if p["group"] == group]
        _kill(failed)
        with L.lock:
            L.procs[:] = [p for p in L.procs if p not in failed]
        return STARTERS[group](root, L)


STARTERS = {
    "redis": _start_redis,
    "mysql": _start_mysql,
    "minio": _start_minio,
    "mongo": _start_mongo,
}


# ----------------------------------------------------------------------------- state


@contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(root: Path) -> dict:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"groups": {}}


def _save(root: Path, state: dict) -> None:
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.chmod(0o600)
    tmp.replace(root / STATE_FILE)
    lines = ["# generated by scripts/services.py; source it: . " + str(root / ENV_FILE)]
    for k, v in _env_of(state).items():
        lines.append(f"export {k}={shlex.quote(v)}")
    envf = root / ENV_FILE
    envf.write_text("\n".join(lines) + "\n")
    envf.chmod(0o600)


def _env_of(state: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for g in GROUPS:
        out.update(state["groups"].get(g, {}).get("env", {}))
    return out


def _group_alive(info: dict) -> bool:
    return bool(info.get("procs")) and all(_alive(p) for p in info["procs"])


def _kill(procs: list[dict], grace: float = 10.0) -> None:
    live = [p for p in procs if _alive(p)]
    for p in live:
        try:
            os.kill(p["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if _alive(p)]
    for p in live:
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if _alive(p)]


# ----------------------------------------------------------------------------- API


def start(dir, only=None, detach: bool = True) -> dict[str, str]:
    """Start the requested groups (default: all) in dir; return the env of every running group.

    Groups already running from an earlier call are kept. detach=False keeps the
    servers in the caller's process group (so a killed test run takes them along).
    """
    root = Path(dir).resolve()
    groups = _groups(only)
    missing = missing_binaries(groups)
    if missing:
        raise MissingBinary(*missing[0])
    with _locked(root):
        state = _load(root)
        todo = []
        for g in groups:
            info = state["groups"].get(g)
            if info and _group_alive(info):
                continue
            if info:  # partly dead from an earlier run: clean it up and start afresh
                _kill(info.get("procs", []))
                state["groups"].pop(g, None)
            todo.append(g)
        if todo:
            L = _Launcher(root, detach)
            try:
                with concurrent.futures.ThreadPoolExecutor(len(todo)) as ex:
                    futs = {g: ex.submit(_start_group, g, root, L) for g in todo}
                    errors = []
                    for g, f in futs.items():
                        try:
                            env_g = f.result()
                        except Exception as exc:  # noqa: BLE001
                            errors.append(f"[{g}] {exc}")
                            continue
                        state["groups"][g] = {
                            "env": env_g,
                            "procs": [p for p in L.procs if p["group"] == g],
                        }
                if errors:
                    raise ServiceError("could not start test servers:\n" + "\n".join(errors))
            except BaseException:
                _kill(L.procs)  # everything this call started, including healthy groups
                for g in todo:
                    state["groups"].pop(g, None)
                _save(root, state)
                raise
        _save(root, state)
        return _env_of(state)


def stop(dir) -> None:
    """Stop every server started in dir (only the recorded pids). Safe to call twice."""
    root = Path(dir).resolve()
    if not (root / STATE_FILE).exists():
        return
    with _locked(root):
        state = _load(root)
        procs = [p for info in state["groups"].values() for p in info.get("procs", [])]
        _kill(procs)
        for link in root.glob("*/socket-dir"):
            shutil.rmtree(link.read_text().strip(), ignore_errors=True)
            link.unlink()
        state["groups"] = {}
        _save(root, state)


def env(dir) -> dict[str, str]:
    """Env of the groups currently recorded in dir."""
    return _env_of(_load(Path(dir).resolve()))


def status(dir) -> dict[str, bool]:
    state = _load(Path(dir).resolve())
    return {g: _group_alive(info) for g, info in state["groups"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["start", "stop", "env", "status"])
    default_dir = os.environ.get("OIM_SERVICES_DIR") or str(
        Path(__file__).resolve().parents[1] / ".services"
    )
    ap.add_argument(
        "--dir", default=default_dir, help=f"state/data directory (default {default_dir})"
    )
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(GROUPS)}")
    a = ap.parse_args(argv)
    try:
        if a.command == "start":
            t0 = time.monotonic()
            start(a.dir, a.only)
            print(
                f"services: started in {time.monotonic() - t0:.1f}s; "
                f". {Path(a.dir).resolve() / ENV_FILE}",
                file=sys.stderr,
            )
            print((Path(a.dir).resolve() / ENV_FILE).read_text(), end="")
        elif a.command == "stop":
            stop(a.dir)
        elif a.command == "env":
            p = Path(a.dir).resolve() / ENV_FILE
            if p.exists():
                print(p.read_text(), end="")
        else:
            for g, ok in status(a.dir).items():
                print(f"{g}: {'running' if ok else 'DEAD'}")
    except (ServiceError, ValueError) as exc:
        print(f"services.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
