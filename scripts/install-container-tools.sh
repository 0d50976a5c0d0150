#!/usr/bin/env bash
# Install podman (to build and run the service images without a Docker daemon),
# debootstrap (to make a local base image without a registry) and what
# scripts/test-images.sh uses beside them. Idempotent.
set -euo pipefail

# curl and psql: scripts/test-images.sh probes the containers and makes a throwaway database.
# The CNI dnsname plugin: containers on a compose network find each other by service name
# (scripts/test-compose.sh).
PACKAGES=(podman runc uidmap slirp4netns fuse-overlayfs debootstrap ca-certificates curl postgresql-client
    golang-github-containernetworking-plugin-dnsname)
CONF=/etc/containers/containers.conf

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-container-tools: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# crun and podman's default ulimits fail on these machines; runc with explicit limits works.
if ! grep -q '^runtime = "runc"' "$CONF" 2>/dev/null; then
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF" <<'CONF'
# Written by scripts/install-container-tools.sh.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
fi

podman --version
