#!/bin/sh
# Installs pgBackRest (continuous WAL archiving, base backups, point-in-time restores) from Debian
# when it is missing. Idempotent: does nothing when pgbackrest is already on PATH. Needs root (or
# sudo) to install. Debian bookworm ships 2.45; deploy/pgbackrest/ keeps to what 2.45 reads.
set -eu

command -v pgbackrest >/dev/null 2>&1 && exit 0

echo "install-dr-tools: pgbackrest is missing; installing from Debian" >&2
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-dr-tools: need root or sudo to apt-get install pgbackrest" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -q
# --no-install-recommends: pgbackrest recommends a PostgreSQL server package, which this machine
# either has already or does not want (the drill uses the binaries pg_config names).
$as_root apt-get install -y -q --no-install-recommends pgbackrest
