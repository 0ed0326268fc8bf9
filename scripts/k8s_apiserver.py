#!/usr/bin/env python3
"""A real kube-apiserver + etcd on free 127.0.0.1 ports, for the deploy tests and the demo.

    python scripts/k8s_apiserver.py start --dir DIR   # prints the admin kubeconfig path
    python scripts/k8s_apiserver.py stop  --dir DIR
    python scripts/k8s_apiserver.py demo  [--dir DIR] # the cluster part of `make demo`

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
Importable: ``start(dir) -> dict``, ``stop(dir)``, ``missing_binaries()``,
``play_controllers(kube, namespace)`` (the controllers' part, for tests and the demo).
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


# ----------------------------------------------------------------------------- controllers
def play_controllers(kube, ns: str) -> int:
    """Do what the missing controllers would for everything in ``ns``: create each
    StatefulSet's PVCs and mark them Bound, report every replica ready, mark Jobs complete.
    ``kube`` is a ``migrator.deploy.kube.Kube``. Returns how many objects it changed."""
    from datetime import UTC, datetime

    from kubernetes import client as k

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    changed = 0
    for sts in kube.apps.list_namespaced_stateful_set(ns).items:
        replicas = sts.spec.replicas or 1
        for template in sts.spec.volume_claim_templates or []:
            for i in range(replicas):
                name = f"{template.metadata.name}-{sts.metadata.name}-{i}"
                if kube.read("PersistentVolumeClaim", name, ns) is None:
                    kube.core.create_namespaced_persistent_volume_claim(
                        ns, k.V1PersistentVolumeClaim(
                            metadata=k.V1ObjectMeta(name=name, labels=template.metadata.labels),
                            spec=template.spec))
                    kube.core.patch_namespaced_persistent_volume_claim_status(
                        name, ns, {"status": {"phase": "Bound"}})
                    changed += 1
        status = sts.status
        if not status or (status.ready_replicas or 0) < replicas or \
                status.observed_generation != sts.metadata.generation:
            kube.apps.patch_namespaced_stateful_set_status(sts.metadata.name, ns, {"status": {
                "observedGeneration": sts.metadata.generation, "replicas": replicas,
                "readyReplicas": replicas, "currentReplicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": replicas}})
            changed += 1
    for job in kube.batch.list_namespaced_job(ns).items:
        if job.status and job.status.succeeded:
            continue
        kube.batch.patch_namespaced_job_status(job.metadata.name, ns, {"status": {
            "startTime": now, "completionTime": now, "succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now}]}})
        changed += 1
    return changed


def demo(dir: str | Path) -> int:
    """`deploy --dry-run -o yaml`, then `deploy` and its wait, against a throwaway API
    server; this process patches /status in place of the controllers, and says so."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    state = start(dir)
    env = {**os.environ, "KUBECONFIG": state["kubeconfig"]}
    cmd = [sys.executable, "-m", "migrator", "deploy", "-n", "openim"]
    try:
        print(f"== a real kube-apiserver v1.37 + etcd on {state['server']} (no controllers, "
              "no kubelet)", flush=True)
        print("== openim-migrate deploy -n openim --dry-run -o yaml  (first lines)", flush=True)
        out = subprocess.run([*cmd, "--dry-run"], env=env, capture_output=True, text=True,
                             cwd=root, check=True).stdout
        print("\n".join(out.splitlines()[:25]) + "\n   ...", flush=True)
        kinds = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("kind:")]
        print(f"   ({len(kinds)} objects: {', '.join(sorted(set(kinds)))})", flush=True)
        print("== openim-migrate deploy -n openim --timeout 120", flush=True)
        print("   (the demo now patches /status of StatefulSets, PVCs and Jobs as a stand-in for "
              "the controllers and kubelet a real cluster has)", flush=True)
        from migrator.deploy.kube import Kube

        kube = Kube.connect(state["kubeconfig"])
        proc = subprocess.Popen([*cmd, "--timeout", "120"], env=env, cwd=root)
        while proc.poll() is None:
            try:
                play_controllers(kube, "openim")
            except Exception:  # noqa: BLE001 - the namespace may not exist yet
                pass
            time.sleep(0.5)
        if proc.returncode != 0:
            return proc.returncode
        print("== the same deploy again: server-side apply changes nothing", flush=True)
        again = subprocess.run([*cmd, "--timeout", "30", "--json"], env=env, cwd=root,
                               capture_output=True, text=True)
        actions = [a["action"] for a in json.loads(again.stdout)["applied"]]
        print(f"   {len(actions)} objects: {', '.join(sorted(set(actions)))}", flush=True)
        return again.returncode
    finally:
        stop(dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "demo"))
    parser.add_argument("--dir", default=".services/k8s", help="state directory")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start(args.dir)["kubeconfig"])
        elif args.action == "demo":
            return demo(args.dir)
        else:
            stop(args.dir)
    except K8sServerError as exc:
        print(f"k8s_apiserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
