#!/bin/sh
# Installs Prometheus (with promtool), Alertmanager (with amtool) and the Pushgateway from Debian
# when any is missing.
# Idempotent: does nothing when the tools are already on PATH. Needs root (or sudo) to install.
set -eu

missing=""
# Debian names the Alertmanager binary prometheus-alertmanager, the Pushgateway's
# prometheus-pushgateway.
for tool in prometheus promtool prometheus-alertmanager amtool prometheus-pushgateway; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0

echo "install-monitoring-tools: missing:$missing; installing from Debian" >&2
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-monitoring-tools: need root or sudo to apt-get install prometheus prometheus-alertmanager prometheus-pushgateway" >&2
    exit 1
fi

# The packages would start their own daemons on :9090/:9093/:9091; tests run their own on free ports.
# A policy-rc.d answering 101 forbids that; ours is removed afterwards, an existing one is kept.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $as_root tee "$policy" >/dev/null
    $as_root chmod +x "$policy"
    trap '$as_root rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -q
# --no-install-recommends keeps node-exporter and friends off the machine.
$as_root apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager prometheus-pushgateway
