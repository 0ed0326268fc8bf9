#!/usr/bin/env bash
# Install what the local test servers need (idempotent; quick when all is present):
#   Debian packages redis-server, mariadb-server, mariadb-client, rclone (only if a binary is missing)
#   ferretdb + minio, built once by scripts/build-go-servers.sh into ~/.cache/openim-migrate/bin
#   PostgreSQL 15 and the DocumentDB build/run dependencies, only when the DocumentDB archives
#   are present (OIM_VENDOR_DIR) or already built: scripts/build-documentdb.sh says which
# Python packages are installed by the Makefile (pip install -e '.[test]'), not here.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

pkgs=()
{ have redis-server && have redis-cli; } || pkgs+=(redis-server redis-tools)
{ have mariadbd && have mariadb-install-db; } || pkgs+=(mariadb-server)
{ have mariadb && have mariadb-admin; } || pkgs+=(mariadb-client)
have rclone || pkgs+=(rclone)
have age || pkgs+=(age)        # backups: docs/backups.md shows `age -d`; tests run it
have zstd || pkgs+=(zstd)

# The MongoDB test server that behaves like MongoDB (scripts/build-documentdb.sh); without its
# archives the tests use FerretDB and none of these packages are needed.
documentdb_pkgs=(postgresql-15 postgresql-server-dev-15 postgresql-15-postgis-3 postgresql-15-rum
    libbson-dev libpcre2-dev libintelrdfpmath-dev libicu-dev libkrb5-dev libssl-dev pkg-config)
vendor="${OIM_VENDOR_DIR:-$HOME/.cache/openim-migrate/vendor}"
if command -v dpkg-query >/dev/null 2>&1 && { [ -f "$vendor/documentdb-0.106.0-ferretdb-2.5.0-src.tar.gz" ] ||
    compgen -G "$HOME/.cache/openim-migrate/documentdb/*/.complete" >/dev/null; }; then
    for p in "${documentdb_pkgs[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || pkgs+=("$p")
    done
fi

if [ ${#pkgs[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: missing ${pkgs[*]} and apt-get is not available; install them by hand" >&2
        exit 1
    fi
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting system-wide servers on the
    # default ports (the tests start their own instances on free ports).
    policy_added=no
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
        policy_added=yes
    fi
    echo "install-deps: apt-get install ${pkgs[*]}" >&2
    status=0
    { "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } || status=$?
    [ "$policy_added" = no ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    [ "$status" -eq 0 ] || exit "$status"
else
    echo "install-deps: redis, mariadb, rclone (and PostgreSQL for DocumentDB if wanted) already installed" >&2
fi

"$here/build-go-servers.sh"
