#!/usr/bin/env python3
"""A real kube-apiserver + etcd on free 127.0.0.1 ports, for the deploy tests and the demo.

    python scripts/k8s_apiserver.py start --dir DIR   # prints the admin kubeconfig path
    python scripts/k8s_apiserver.py stop  --dir DIR

The binaries come from scripts/build-k8s.sh (cached in ~/.cache/openim-migrate/bin; a
missing one is reported with `make deps`). Each start makes a throwaway CA, a serving
certificate for 127.0.0.1, a service-account signing key (openssl) and a static admin token
in group system:masters; RBAC is on, so other identities (service-account tokens from the
TokenRequest API) get only what Roles grant. There are no controllers and no kubelet:
nothing creates Pods or PVCs, and status changes only when a client patches /status.

Flags that matter (1.37): `--endpoint-reconciler-type none` (otherwise a loopback
--advertise-address is refused), `--disable-admission-plugins ServiceAccount` (no token
controller runs). Ready in about 5 s; RSS about 280 MB (apiserver) + 45 MB (etcd).

State lives in DIR/k8s.json (pids with their kernel start times, ports, paths); `stop` kills
exactly those processes, by pid, and is safe to call twice. Stdlib + openssl only.
Importable: ``start(dir) -> dict``, ``stop(dir)``, ``missing_binaries()``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
BIN_DIR = Path(os.environ.get("OPENIM_MIGRATE_BIN") or Path.home() / ".cache/openim-migrate/bin")
BINARIES = ("kube-apiserver", "etcd")
STATE_FILE = "k8s.json"
START_TIMEOUT = float(os.environ.get("OIM_K8S_START_TIMEOUT", "120"))


class K8sServerError(RuntimeError):
    """The API server could not be started."""


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")]))


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if find_binary(b) is None]


def _free_ports(n: int) -> list[int]:
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


def _starttime(pid: int) -> str | None:
    """Kernel start time of pid, so a recycled pid is never killed; None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certs(pki: Path) -> None:
    """Throwaway CA, serving certificate (SAN 127.0.0.1, localhost), service-account key."""
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-days", "7", "-subj", "/CN=oim-test-ca",
             "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    _openssl("req", *ec, "-subj", "/CN=kube-apiserver",
             "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr"))
    (pki / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,"
                             "DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"),
             "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "7",
             "-extfile", str(pki / "ext"), "-out", str(pki / "apiserver.crt"))
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")


def _kubeconfig(server: str, ca: Path, token: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "oim-test",
        "clusters": [{"name": "oim-test", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "oim-test", "context": {"cluster": "oim-test", "user": "admin"}}],
    }


def _ready(server: str, ca: Path, token: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(server + "/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 12) -> str:
    try:
        return "\n".join("    " + x for x in path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _spawn(argv: list[str], log: Path) -> dict:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return {"pid": proc.pid, "starttime": _starttime(proc.pid), "log": str(log)}


def _alive(proc: dict) -> bool:
    try:  # reap it if it is our exited child
        os.waitpid(proc["pid"], os.WNOHANG)
    except ChildProcessError:
        pass
    return _starttime(proc["pid"]) == proc["starttime"]


def start(dir: str | Path, timeout: float = START_TIMEOUT) -> dict:
    """Start etcd + kube-apiserver; returns the state (kubeconfig, server, token, ca, pids)."""
    root = Path(dir).resolve()
    state_path = root / STATE_FILE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if all(_alive(p) for p in state["procs"].values()):
            return state
        stop(root)
    missing = missing_binaries()
    if missing:
        raise K8sServerError(f"missing binary '{missing[0]}' (looked in {BIN_DIR} and PATH): "
                             "run `make deps` (scripts/build-k8s.sh) to build it")
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    _certs(pki)
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
    etcd_port, peer_port, api_port = _free_ports(3)
    server = f"https://{HOST}:{api_port}"
    state: dict = {"server": server, "token": token, "ca": str(pki / "ca.crt"),
                   "kubeconfig": str(root / "kubeconfig"), "procs": {}}
    etcd_url, peer_url = f"http://{HOST}:{etcd_port}", f"http://{HOST}:{peer_port}"
    state["procs"]["etcd"] = _spawn([
        find_binary("etcd") or "etcd", "--name", "oim", "--data-dir", str(root / "etcd"),
        "--log-level", "warn", "--unsafe-no-fsync",
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"oim={peer_url}"], root / "etcd.log")
    state["procs"]["apiserver"] = _spawn([
        find_binary("kube-apiserver") or "kube-apiserver", "--etcd-servers", etcd_url,
        "--bind-address", HOST, "--advertise-address", HOST, "--secure-port", str(api_port),
        "--tls-cert-file", str(pki / "apiserver.crt"),
        "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"), "--token-auth-file", str(pki / "tokens.csv"),
        "--authorization-mode", "RBAC",
        "--service-account-issuer", server, "--service-account-key-file", str(pki / "sa.key"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-cluster-ip-range", "10.0.0.0/24", "--allow-privileged=true",
        # No controllers run: no token controller for the ServiceAccount admission plugin.
        "--disable-admission-plugins", "ServiceAccount", "--cert-dir", str(pki),
        # 1.37 refuses a loopback --advertise-address with the default "lease" reconciler.
        "--endpoint-reconciler-type", "none", "--profiling=false"], root / "apiserver.log")
    state_path.write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + timeout
    while not _ready(server, pki / "ca.crt", token):
        for name, proc in state["procs"].items():
            if not _alive(proc):
                stop(root)
                raise K8sServerError(f"{name} exited during start-up; log {proc['log']}:\n"
                                     + _tail(Path(proc["log"])))
        if time.monotonic() > deadline:
            stop(root)
            raise K8sServerError(f"kube-apiserver not ready after {timeout:.0f}s; log "
                                 f"{root / 'apiserver.log'}:\n{_tail(root / 'apiserver.log')}")
        time.sleep(0.3)
    Path(state["kubeconfig"]).write_text(json.dumps(_kubeconfig(server, pki / "ca.crt", token),
                                                    indent=2))
    return state


def stop(dir: str | Path) -> None:
    """SIGTERM each recorded process (by pid, if it is still the same process), then SIGKILL."""
    state_path = Path(dir).resolve() / STATE_FILE
    if not state_path.exists():
        return
    procs = json.loads(state_path.read_text())["procs"]
    for proc in (procs.get("apiserver"), procs.get("etcd")):
        if proc is None or not _alive(proc):
            continue
        os.kill(proc["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(proc):
            os.kill(proc["pid"], signal.SIGKILL)
    state_path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", default=".services/k8s", help="state directory")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start(args.dir)["kubeconfig"])
        else:
            stop(args.dir)
    except K8sServerError as exc:
        print(f"k8s_apiserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
