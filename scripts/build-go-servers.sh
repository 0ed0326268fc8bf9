#!/usr/bin/env bash
# Build (once) the Go test servers used by scripts/services.py and cache them
# outside the repository, so that every clone on this machine reuses them:
#   ferretdb  FerretDB v1.24.2            (MongoDB wire protocol on SQLite)
#   minio     github.com/minio/minio @ pinned pseudo-version
# Cache dir: ${OPENIM_MIGRATE_BIN:-$HOME/.cache/openim-migrate/bin}
# Usage: build-go-servers.sh [ferretdb] [minio]   (default: both)
# OIM_GO_TEMP_MODULE=1 skips the `go install pkg@version` attempt (always use a temp module).
# A binary is rebuilt only when it is missing or `go version -m` does not show
# the pinned module version. Exits non-zero (with the Go error) when a build fails.
set -euo pipefail

FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2
FERRETDB_PKG=github.com/FerretDB/FerretDB/cmd/ferretdb
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_PKG=github.com/minio/minio

BIN="${OPENIM_MIGRATE_BIN:-$HOME/.cache/openim-migrate/bin}"
mkdir -p "$BIN"

log() { printf 'build-go-servers: %s\n' "$*" >&2; }

# up_to_date NAME BINARY MODULE VERSION: the binary runs and embeds MODULE@VERSION
# (main module after `go install`, or dependency after a temp-module build).
up_to_date() {
    local name=$1 bin=$2 module=$3 version=$4
    [ -x "$bin" ] || return 1
    case $name in
    ferretdb)
        local out
        out=$("$bin" --version 2>/dev/null) || return 1
        grep -qx "version: $version" <<<"$out" || return 1
        ;;
    *) "$bin" --version >/dev/null 2>&1 || return 1 ;;
    esac
    if ! command -v go >/dev/null 2>&1; then
        log "go not found; trusting existing $bin without a module version check"
        return 0
    fi
    go version -m "$bin" 2>/dev/null |
        awk -v m="$module" -v v="$version" '($1 == "mod" || $1 == "dep") && $2 == m && $3 == v { found = 1 } END { exit !found }'
}

# build_temp_module NAME MODULE VERSION PKG OUT
# `go install pkg@version` needs the proxy's version list (deprecation check),
# which the proxy here refuses (403); a throw-away module avoids that request.
# `replace` directives of MODULE's own go.mod are copied (go ignores them for dependencies).
# FerretDB embeds build/version/version.txt, which is empty in the module zip (the
# binary then panics at start-up), so it is built from a local copy with that file written.
build_temp_module() {
    local name=$1 module=$2 version=$3 pkg=$4 out=$5 tmp rc
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/oim-gobuild.XXXXXX") || return 1
    # Every step is checked explicitly: this runs under `if !`, where `set -e` is off.
    (
        die() { echo "build-go-servers: $*" >&2; exit 1; }
        cd "$tmp" || die "cd $tmp"
        export GOFLAGS="${GOFLAGS:-} -mod=mod"
        go mod init fbuild >/dev/null 2>&1 || die "go mod init failed"
        local_gomod=$(go mod download -json "$module@$version" |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error")))') ||
            die "go mod download $module@$version failed"
        replaces=$(go mod edit -json "$local_gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    new = r["New"]
    if not new.get("Version"):
        continue  # local-path replace: cannot be reproduced outside the module
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    print("-replace=%s=%s@%s" % (old, new["Path"], new["Version"]))
') || die "reading replace directives of $local_gomod failed"
        for rep in $replaces; do
            go mod edit "$rep" || die "go mod edit $rep failed"
        done
        go get "$module@$version" || die "go get $module@$version failed"
        if [ "$name" = ferretdb ]; then
            cp -r "$(go list -m -f '{{.Dir}}' "$module")" src || die "copying $module source failed"
            chmod -R u+w src &&
                echo "$version" >src/build/version/version.txt &&
                echo "oim-migrate-test" >src/build/version/package.txt &&
                go mod edit -replace "$module=./src" || die "patching $module failed"
        fi
        printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >tools.go || die "tools.go"
        go mod tidy || die "go mod tidy failed"
        go build -trimpath -o "$out" "$pkg" || die "go build $pkg failed"
    )
    rc=$?
    rm -rf "$tmp"
    return $rc
}

# build NAME MODULE VERSION PKG TRY_GO_INSTALL
build() {
    local name=$1 module=$2 version=$3 pkg=$4 try_install=$5
    local target="$BIN/$name" tmpout="$BIN/.$name.tmp.$$" gobin errlog
    if up_to_date "$name" "$target" "$module" "$version"; then
        log "$name: up to date ($module@$version) in $BIN"
        return 0
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "ERROR: $name is missing and no Go toolchain is on PATH (install Go >= 1.24 from go.dev)"
        return 1
    fi
    log "$name: building $module@$version (takes minutes the first time)..."
    local start=$SECONDS
    errlog=$(mktemp)
    rm -f "$tmpout"
    if [ "$try_install" = yes ] && [ "${OIM_GO_TEMP_MODULE:-0}" != 1 ]; then
        gobin=$(mktemp -d "${TMPDIR:-/tmp}/oim-gobin.XXXXXX")
        if GOBIN="$gobin" go install -trimpath "$pkg@$version" 2>"$errlog"; then
            mv "$gobin/$(basename "$pkg")" "$tmpout"
        else
            log "$name: 'go install $pkg@$version' failed, retrying with a temporary module:"
            grep -v '^go: downloading' "$errlog" | tail -n 20 >&2 || true
        fi
        rm -rf "$gobin"
    fi
    if [ ! -x "$tmpout" ]; then
        if ! build_temp_module "$name" "$module" "$version" "$pkg" "$tmpout" 2>"$errlog"; then
            log "ERROR: building $name failed:"
            grep -v '^go: downloading' "$errlog" | tail -n 40 >&2 || true
            rm -f "$tmpout" "$errlog"
            return 1
        fi
    fi
    rm -f "$errlog"
    if ! up_to_date "$name" "$tmpout" "$module" "$version"; then
        log "ERROR: the new $name binary does not run or does not embed $module@$version:"
        "$tmpout" --version 2>&1 | head -n 5 >&2 || true
        rm -f "$tmpout"
        return 1
    fi
    mv -f "$tmpout" "$target"
    log "$name: built in $((SECONDS - start))s -> $target"
}

# One build at a time per cache dir (several clones may run `make deps` at once).
exec 9>"$BIN/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

rc=0
for what in "${@:-ferretdb minio}"; do
    for w in $what; do
        case $w in
        ferretdb) build ferretdb "$FERRETDB_MODULE" "$FERRETDB_VERSION" "$FERRETDB_PKG" no || rc=1 ;;
        minio) build minio "$MINIO_MODULE" "$MINIO_VERSION" "$MINIO_PKG" yes || rc=1 ;;
        *) log "unknown server '$w' (choose ferretdb, minio)"; rc=2 ;;
        esac
    done
done
exit $rc
