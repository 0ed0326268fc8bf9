#!/usr/bin/env bash
# Build (once) a real kube-apiserver and etcd for the deploy tests and the demo, and cache
# them beside MinIO and FerretDB, so a warm machine builds nothing:
#   kube-apiserver  k8s.io/kubernetes v1.37.2 (staging modules at v0.37.2)
#   etcd            go.etcd.io/etcd/server/v3 v3.6.16
# Cache dir: ${OPENIM_MIGRATE_BIN:-$HOME/.cache/openim-migrate/bin}
# Usage: build-k8s.sh [kube-apiserver] [etcd]   (default: both)
#
# Why wrapper modules (scripts/k8s/*/go.mod + go.sum, used with -mod=readonly): the
# kubernetes release's go.mod points every staging module (k8s.io/api, k8s.io/apiserver, ...)
# at ./staging/... with replace directives, so `go install .../kube-apiserver@v1.37.2` is
# refused. scripts/k8s/apiserver/go.mod requires k8s.io/kubernetes v1.37.2 and replaces each
# staging module with the published k8s.io/<m> v0.37.2 (the list was generated from the
# release's own `=> ./staging/` lines). etcd's sibling modules are published at the same tag,
# so its wrapper needs no replace lines.
#
# Cost (measured on a loaded 2-core machine): kube-apiserver cold ~800 CPU-seconds
# (10-25 min wall), peak RSS 2.4 GB, Go build cache 2.7 GB, binary 114 MiB; etcd ~1 min.
# With a warm Go build cache 0.5-2 min; with both binaries cached, nothing is built.
set -euo pipefail

K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN="${OPENIM_MIGRATE_BIN:-$HOME/.cache/openim-migrate/bin}"
mkdir -p "$BIN"
# Never fetch a toolchain; static binaries like the upstream releases.
export GOTOOLCHAIN=local CGO_ENABLED=0
export PATH="$PATH:/usr/local/go/bin"

log() { printf 'build-k8s: %s\n' "$*" >&2; }

# up_to_date NAME: the cached binary runs and reports the pinned version.
up_to_date() {
    local out
    case $1 in
    kube-apiserver)
        out=$("$BIN/kube-apiserver" --version 2>/dev/null) || return 1
        [ "$out" = "Kubernetes v$K8S_VERSION" ]
        ;;
    etcd)
        out=$("$BIN/etcd" --version 2>/dev/null) || return 1
        grep -qx "etcd Version: $ETCD_VERSION" <<<"$out"
        ;;
    esac
}

# build NAME MODULE_DIR PKG LDFLAGS
build() {
    local name=$1 dir=$2 pkg=$3 ldflags=$4 tmpout="$BIN/.$1.tmp.$$" start=$SECONDS
    if up_to_date "$name"; then
        log "$name: up to date in $BIN"
        return 0
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "ERROR: $name is missing and no Go toolchain is on PATH (need Go >= 1.26 from go.dev)"
        return 1
    fi
    log "$name: building $pkg (cold: many minutes; see the header of this script)..."
    rm -f "$tmpout"
    if ! (cd "$dir" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmpout" "$pkg"); then
        rm -f "$tmpout"
        log "ERROR: building $name failed"
        return 1
    fi
    mv -f "$tmpout" "$BIN/$name"
    if ! up_to_date "$name"; then
        log "ERROR: the new $name does not report the pinned version:"
        "$BIN/$name" --version 2>&1 | head -n 3 >&2 || true
        return 1
    fi
    log "$name: built in $((SECONDS - start))s -> $BIN/$name"
}

# One k8s build at a time per cache dir (a separate lock from build-go-servers.sh, so the two
# can run side by side).
exec 9>"$BIN/.build-k8s.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

v=k8s.io/component-base/version   # stamp /version like the release's hack/lib/version.sh
minor=${K8S_VERSION#1.}
minor=${minor%%.*}
rc=0
for what in "${@:-etcd kube-apiserver}"; do
    for w in $what; do
        case $w in
        etcd) build etcd "$here/k8s/etcd" go.etcd.io/etcd/server/v3 "-s -w" || rc=1 ;;
        kube-apiserver)
            build kube-apiserver "$here/k8s/apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
                "-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" || rc=1
            ;;
        *) log "unknown binary '$w' (choose kube-apiserver, etcd)"; rc=2 ;;
        esac
    done
done
exit $rc
