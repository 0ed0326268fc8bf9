#!/usr/bin/env bash
# Build (once) the MongoDB test server that behaves most like MongoDB: PostgreSQL 15 with the
# DocumentDB extensions and DocumentDB's own MongoDB-protocol gateway. Cached like the Go
# servers, so a warm machine builds nothing:
#   ${OPENIM_MIGRATE_BIN:-~/.cache/openim-migrate/bin}/documentdb_gateway   the gateway (Rust)
#   ~/.cache/openim-migrate/documentdb/<stamp>/                              the extension files
#       (a DESTDIR tree of pgvector, pg_cron, pg_documentdb_core, pg_documentdb), copied into
#       the Debian PostgreSQL 15 (/usr/lib/postgresql/15/lib, /usr/share/postgresql/15) when
#       they are not there yet.
#
# Sources: three archives no package registry carries, found in $OIM_VENDOR_DIR (default
# ~/.cache/openim-migrate/vendor), each checked against the SHA-256 below:
#   documentdb-0.106.0-ferretdb-2.5.0-src.tar.gz  github.com/FerretDB/documentdb, tag
#       v0.106.0-ferretdb-2.5.0 (a fork of microsoft/documentdb; MIT): the extensions and
#       the gateway (pg_documentdb_gw)
#   pgvector-0.8.0.tar.gz   github.com/pgvector/pgvector, tag v0.8.0 (PostgreSQL licence);
#       a DocumentDB dependency Debian 12 does not package
#   pg_cron-1.6.3.tar.gz    github.com/citusdata/pg_cron, tag v1.6.3 (PostgreSQL licence);
#       Debian 12's 1.4.2 rejects DocumentDB's "2 seconds" schedules
# Without them nothing is built and exit is 0: scripts/services.py then runs FerretDB 1.24.
# Debian packages (scripts/install-deps.sh installs them when the archives are present):
#   postgresql-15 postgresql-server-dev-15 postgresql-15-postgis-3 postgresql-15-rum
#   libbson-dev libpcre2-dev libintelrdfpmath-dev libicu-dev libkrb5-dev libssl-dev pkg-config
# Plus cargo (the gateway's crates come from crates.io; `cargo build --locked`).
#
# Usage: build-documentdb.sh [--check]   (--check: exit 0 if built and installed, else 1)
# Measured on 2 shared cores: extensions ~1 min, gateway ~3-6 min cold; warm: < 1 s.
set -euo pipefail

VERSION=0.106.0-ferretdb-2.5.0
PG_MAJOR=15
declare -A SHA256=(
    [documentdb-0.106.0-ferretdb-2.5.0-src.tar.gz]=7bc0c2345d6ac48c5b7e18ee842363cfc3be07d90c37208b7df5ba7abd345dc4
    [pgvector-0.8.0.tar.gz]=958aa543a05a60c3696f7fc3bc5722be5a1c413b0ee0e1811f898128526b9c8a
    [pg_cron-1.6.3.tar.gz]=c525dbe88dc22c2a58fe82565bb9602690e1c05c4ffd3d2ccee971ac52d59904
)
ARCHIVES=(pgvector-0.8.0.tar.gz pg_cron-1.6.3.tar.gz documentdb-0.106.0-ferretdb-2.5.0-src.tar.gz)
# Build flags are part of the cache key: change one and the next run rebuilds.
# libbson 1.23 (Debian 12) lacks BSON_SUBTYPE_SENSITIVE (0x08, added in 1.24).
DOCUMENTDB_COPT='-DBSON_SUBTYPE_SENSITIVE=0x08 -Wno-switch'

CACHE="${OIM_CACHE_DIR:-$HOME/.cache/openim-migrate}"
BIN="${OPENIM_MIGRATE_BIN:-$CACHE/bin}"
VENDOR="${OIM_VENDOR_DIR:-$CACHE/vendor}"
PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
STAMP="$VERSION-pg$PG_MAJOR-$(printf '%s' "$DOCUMENTDB_COPT" | sha256sum | cut -c1-8)"
STAGE="$CACHE/documentdb/$STAMP"
GATEWAY="$BIN/documentdb_gateway"

log() { printf 'build-documentdb: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

# built: the staged extension tree and the gateway are in the cache
built() {
    [ -f "$STAGE/.complete" ] && [ -x "$GATEWAY" ] &&
        [ "$(cat "$BIN/.documentdb_gateway.version" 2>/dev/null)" = "$VERSION" ]
}

# installed: every staged file is in the system PostgreSQL, byte for byte
installed() {
    [ -f "$STAGE/.complete" ] || return 1
    local f
    while IFS= read -r f; do
        cmp -s "$STAGE/root$f" "$f" || return 1
    done <"$STAGE/files"
}

# install_tree DIR: put each file under DIR at the same path under / when it differs there.
# install(1) replaces a file by a new inode, so running servers that mapped the old
# library keep it; existing directories keep their owner, mode and times.
install_tree() {
    local f
    while IFS= read -r -d '' f; do
        cmp -s "$1/$f" "/$f" ||
            "${sudo[@]}" install -D -p -m "$(stat -c %a "$1/$f")" "$1/$f" "/$f"
    done < <(cd "$1" && find . -type f -printf '%P\0')
}

install_stage() {
    log "installing the cached extension files into PostgreSQL $PG_MAJOR"
    install_tree "$STAGE/root"
}

if [ "${1:-}" = --check ]; then
    built && installed && exit 0
    exit 1
fi

mkdir -p "$BIN" "$CACHE/documentdb"
exec 9>"$CACHE/documentdb/.build.lock"
command -v flock >/dev/null 2>&1 && flock 9

if built; then
    installed || install_stage
    log "up to date ($VERSION, cache $STAGE, gateway $GATEWAY)"
    exit 0
fi

missing=()
for a in "${ARCHIVES[@]}"; do [ -f "$VENDOR/$a" ] || missing+=("$a"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "archives not found in $VENDOR (${missing[*]}): not building; the MongoDB tests use"
    log "FerretDB 1.24. Set OIM_VENDOR_DIR to the folder holding them (see docs/stores.md)."
    exit 0
fi
for a in "${ARCHIVES[@]}"; do
    got=$(sha256sum "$VENDOR/$a" | cut -d' ' -f1)
    [ "$got" = "${SHA256[$a]}" ] || die "$VENDOR/$a: SHA-256 $got, expected ${SHA256[$a]}"
done
[ -x "$PG_CONFIG" ] || die "$PG_CONFIG missing: run scripts/install-deps.sh (postgresql-server-dev-$PG_MAJOR)"
for tool in make gcc pkg-config cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not on PATH (see the package list at the top of $0)"
done
for pc in libbson-static-1.0 libpcre2-8; do
    pkg-config --exists "$pc" || die "pkg-config cannot find $pc: run scripts/install-deps.sh"
done
bid=/usr/lib/$(gcc -print-multiarch)/libbidgcc000.a
[ -f "$bid" ] || die "$bid missing: run scripts/install-deps.sh (libintelrdfpmath-dev)"

work=$(mktemp -d "${TMPDIR:-/tmp}/oim-documentdb.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
for a in "${ARCHIVES[@]}"; do tar -xzf "$VENDOR/$a" -C "$work"; done
mkdir -p "$work/pkgconfig" "$work/root"
# Debian ships the Intel decimal library only as a static archive, without a .pc file.
cat >"$work/pkgconfig/intelmathlib.pc" <<EOF
Name: intelmathlib
Description: Intel Decimal Floating-Point Math Library (Debian libintelrdfpmath-dev)
Version: 2.0
Cflags: -I/usr/include
Libs: $bid
EOF
export PKG_CONFIG_PATH="$work/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

# Each extension is staged under $work/root, then copied into the system PostgreSQL before
# the next one builds (pg_documentdb needs the others installed to link and to be created).
ext() {
    local dir=$1
    shift
    log "building $(basename "$dir")"
    make -s -C "$dir" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" with_llvm=no "$@" >"$work/make.log" 2>&1 &&
        make -s -C "$dir" PG_CONFIG="$PG_CONFIG" with_llvm=no DESTDIR="$work/root" "$@" install \
            >>"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; die "building $dir failed"; }
    install_tree "$work/root"
}
ext "$work/pgvector"
ext "$work/pg_cron"
ext "$work/documentdb/pg_documentdb_core"
ext "$work/documentdb/pg_documentdb" COPT="$DOCUMENTDB_COPT"
log "extensions built in $((SECONDS - start))s"

gw_start=$SECONDS
log "building the gateway (cargo build --release --locked; takes minutes the first time)"
(cd "$work/documentdb/pg_documentdb_gw" &&
    CARGO_TARGET_DIR="$work/target" cargo build -q --release --locked) >"$work/cargo.log" 2>&1 ||
    { tail -n 40 "$work/cargo.log" >&2; die "cargo build of the gateway failed"; }
install -m 755 "$work/target/release/documentdb_gateway" "$GATEWAY.tmp"
mv -f "$GATEWAY.tmp" "$GATEWAY"
echo "$VERSION" >"$BIN/.documentdb_gateway.version"
log "gateway built in $((SECONDS - gw_start))s -> $GATEWAY"

rm -rf "$STAGE.tmp"
mkdir -p "$STAGE.tmp"
cp -a "$work/root" "$STAGE.tmp/root"
(cd "$STAGE.tmp/root" && find . -type f | sed 's/^\.//' | sort) >"$STAGE.tmp/files"
touch "$STAGE.tmp/.complete"
rm -rf "$STAGE"
mv "$STAGE.tmp" "$STAGE"
log "done in $((SECONDS - start))s; cached in $STAGE"
