#!/bin/sh
# Installs nginx (Debian's nginx-light) when missing: the end-to-end tests put it in front of the
# gateway as the edge proxy, as ingress-nginx is in Kubernetes (tests/e2e/test_proxy_hops.py).
# Idempotent: does nothing when /usr/sbin/nginx exists. Needs root (or sudo) to install.
set -eu

[ -x /usr/sbin/nginx ] && exit 0

echo "install-edge-tools: nginx missing; installing nginx-light from Debian" >&2
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-edge-tools: need root or sudo to apt-get install nginx-light" >&2
    exit 1
fi

# The package would start its own daemon on :80; tests run their own on free ports. A policy-rc.d
# answering 101 forbids that; ours is removed afterwards, an existing one is kept.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $as_root tee "$policy" >/dev/null
    $as_root chmod +x "$policy"
    trap '$as_root rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
$as_root apt-get -o DPkg::Lock::Timeout=600 update -q
$as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends nginx-light
