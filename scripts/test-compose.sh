#!/usr/bin/env bash
# Run deploy/docker/compose.yaml for real with podman-compose, the monitoring profile included,
# and check what it gives: every application service becomes healthy and ready, the migrations
# run, and the profile's Prometheus (its own compose.yml and rule files, mounted as compose.yaml
# mounts them) scrapes every service up, has loaded every rule group and evaluates each rule
# without error, and sends to the profile's Alertmanager, which runs with its mounted secrets.
#
# This machine reaches no image registry: a compose override made here (never compose.yaml)
# swaps the pinned third-party images for stand-ins built from Debian's packages
# (scripts/build-standin-images.sh) and the services' builds for the images
# scripts/test-images.sh built (run it first; `make test-images` runs both). Grafana, the
# OpenTelemetry Collector and Jaeger have no Debian package: they are not started (the services'
# trace exports fail, a warning in their logs per batch, as compose.yaml says they do without it).
# The host ports compose.yaml publishes are dropped in the override, so nothing on this machine
# (its own PostgreSQL on 5432, say) is in the way: everything is reached at its container address.
#
# podman 4.3 (Debian bookworm) has no `podman wait --condition=healthy`, so podman-compose ignores
# `condition: service_healthy`, and nothing runs healthchecks without systemd timers: this script
# starts the stack in compose.yaml's dependency order itself (datastores healthy, then `migrate`
# completed, then the rest) and runs each healthcheck with `podman healthcheck run`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

COMPOSE_FILE=deploy/docker/compose.yaml
PODMAN_COMPOSE_PIN=podman-compose==1.6.0
VENV=${VENV:-.venv}
TOOLS=$VENV/compose-tools
PROJECT=prognetwork-compose-test-$$
READY_TIMEOUT_SECONDS=180
# Everything compose.yaml runs that has an image here, in the order its depends_on gives.
DATASTORES=(postgres redis)
APP_SERVICES=(user-service notification-service event-streaming billing-service api-gateway admin-client)
MONITORING=(prometheus alertmanager)
declare -A OPS_PORT=([user-service]=4007 [notification-service]=4004 [event-streaming]=9001
    [billing-service]=4003 [api-gateway]=9000 [admin-client]=4000)

fail() {
    echo "test-compose: FAIL: $*" >&2
    exit 1
}
passed=0
pass() {
    echo "test-compose: $*"
    passed=$((passed + 1))
}

python=$VENV/bin/python
[[ -x $python ]] || fail "no $python: run make first"

scripts/install-container-tools.sh >/dev/null
stamp=$TOOLS/podman-compose-pin
if [[ $(cat "$stamp" 2>/dev/null) != "$PODMAN_COMPOSE_PIN" || ! -x $TOOLS/podman-compose/bin/podman-compose ]]; then
    rm -rf "$TOOLS/podman-compose"
    mkdir -p "$TOOLS"
    "$python" -m venv "$TOOLS/podman-compose"
    "$TOOLS/podman-compose/bin/python" -m pip install --quiet --disable-pip-version-check "$PODMAN_COMPOSE_PIN" \
        >"$TOOLS/podman-compose.log" 2>&1 || { cat "$TOOLS/podman-compose.log" >&2; fail "pip install $PODMAN_COMPOSE_PIN"; }
    echo "$PODMAN_COMPOSE_PIN" >"$stamp"
fi
podman_compose=$TOOLS/podman-compose/bin/podman-compose
scripts/build-standin-images.sh

declare -A image=(
    [postgres]=localhost/prognetwork/standin-postgres:bookworm
    [redis]=localhost/prognetwork/standin-redis:bookworm
    [prometheus]=localhost/prognetwork/standin-prometheus:bookworm
    [alertmanager]=localhost/prognetwork/standin-alertmanager:bookworm
    # Built from the Dockerfile targets compose.yaml builds them from.
    [migrate]=localhost/prognetwork/user-service:test
    [stripe-fake]=localhost/prognetwork/billing-service:test
)
for svc in "${APP_SERVICES[@]}"; do image[$svc]=localhost/prognetwork/$svc:test; done
for svc in "${!image[@]}"; do
    podman image exists "${image[$svc]}" ||
        fail "no image ${image[$svc]} for $svc: scripts/test-images.sh builds the services' images (make test-images)"
done

work=$(mktemp -d)
compose() {
    "$podman_compose" --project-name "$PROJECT" --file "$COMPOSE_FILE" --file "$work/override.yaml" \
        --profile monitoring "$@"
}
cleanup() {
    local status=$?
    if ((status)) && [[ -s $work/override.yaml ]]; then
        for c in $(podman ps --all --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            echo "--- $c ($(podman inspect --format '{{.State.Status}} exit {{.State.ExitCode}}' "$c"))" >&2
            podman logs --tail 15 "$c" >&2 2>&1 || true
        done
    fi
    # The containers first, with their anonymous volumes (the images' VOLUMEs), which
    # `podman-compose down --volumes` leaves behind; then the network and the named volumes.
    for c in $(podman ps --all --quiet --filter "label=io.podman.compose.project=$PROJECT"); do
        podman rm --force --volumes --time 10 "$c" >/dev/null 2>&1 || true
    done
    compose down --volumes --timeout 10 >/dev/null 2>&1 || true
    podman network rm --force "${PROJECT}_default" >/dev/null 2>&1 || true
    for v in $(podman volume ls --quiet --filter "label=io.podman.compose.project=$PROJECT"); do
        podman volume rm --force "$v" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

{
    echo "# Made by scripts/test-compose.sh: local images for compose.yaml's, no published ports."
    echo "services:"
    for svc in "${!image[@]}"; do
        printf '  %s:\n    image: %s\n' "$svc" "${image[$svc]}"
        # (podman-compose keeps a !reset of a key the service does not have, and then trips on it.)
        [[ $svc == migrate ]] || echo "    ports: !reset []"
    done
} >"$work/override.yaml"

container() { echo "${PROJECT}_$1_1"; }
address() {
    podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(container "$1")"
}
http_status() {
    curl --silent --output /dev/null --max-time 3 --write-out '%{http_code}' "$1" || true
}
running() {
    [[ $(podman inspect --format '{{.State.Running}}' "$(container "$1")" 2>/dev/null) == true ]]
}
# Until CHECK (a command) succeeds; fails when SERVICE's container stops or the deadline passes.
wait_until() {
    local svc=$1 what=$2 deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
    shift 2
    until "$@"; do
        running "$svc" || fail "$svc stopped before $what"
        ((SECONDS < deadline)) || fail "$svc: not $what within ${READY_TIMEOUT_SECONDS}s"
        sleep 1
    done
}
healthy() {
    podman healthcheck run "$(container "$1")" >/dev/null 2>&1
}
ready() {
    [[ $(http_status "http://$(address "$1"):${OPS_PORT[$1]}/readiness") == 200 ]]
}

echo "test-compose: compose.yaml with the monitoring profile (podman-compose ${PODMAN_COMPOSE_PIN#*==})"
compose up --detach --no-build "${DATASTORES[@]}" >"$work/up-datastores.log" 2>&1 ||
    { cat "$work/up-datastores.log" >&2; fail "podman-compose up ${DATASTORES[*]}"; }
for svc in "${DATASTORES[@]}"; do
    wait_until "$svc" healthy healthy "$svc"
    pass "$svc healthy"
done

compose up --detach --no-build --no-deps migrate >"$work/up-migrate.log" 2>&1 ||
    { cat "$work/up-migrate.log" >&2; fail "podman-compose up migrate"; }
code=$(podman wait "$(container migrate)")
((code == 0)) || fail "migrate exited $code"
pass "migrate completed"

compose up --detach --no-build --no-deps stripe-fake "${APP_SERVICES[@]}" "${MONITORING[@]}" \
    >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "podman-compose up"; }
for svc in stripe-fake "${APP_SERVICES[@]}" prometheus; do
    wait_until "$svc" healthy healthy "$svc"
done
for svc in "${APP_SERVICES[@]}"; do
    wait_until "$svc" ready ready "$svc"
    pass "$svc healthy and ready"
done
alertmanager_ready() { [[ $(http_status "http://$(address alertmanager):9093/-/ready") == 200 ]]; }
wait_until alertmanager ready alertmanager_ready
pass "stripe-fake and prometheus healthy, alertmanager ready"

# What Prometheus says, checked by the project's Python: every target up (a target's first scrape
# comes a scrape interval after discovery), every rule file's groups loaded and evaluated without
# error, Alertmanager discovered and holding the alert that always fires.
prometheus_url="http://$(address prometheus):9090"
alertmanager_url="http://$(address alertmanager):9093"
export PROMETHEUS_URL=$prometheus_url ALERTMANAGER_URL=$alertmanager_url
export EXPECTED_JOBS="${APP_SERVICES[*]} prometheus alertmanager"
monitoring_checks() {
    "$python" - <<'PY'
import json, os, sys, urllib.request
from pathlib import Path

import yaml

def get(path):
    with urllib.request.urlopen(os.environ["PROMETHEUS_URL"] + path, timeout=5) as response:
        return json.loads(response.read())["data"]

problems = []
targets = {t["labels"]["job"]: t for t in get("/api/v1/targets")["activeTargets"]}
for job in os.environ["EXPECTED_JOBS"].split():
    target = targets.get(job)
    if target is None or target["health"] != "up":
        problems.append(f"target {job}: {target and (target['health'], target['lastError'])}")
expected = {g["name"] for path in Path("deploy/monitoring/prometheus/rules").glob("*.yml")
            for g in yaml.safe_load(path.read_text())["groups"]}
groups = get("/api/v1/rules")["groups"]
loaded = {g["name"] for g in groups}
if loaded != expected:
    problems.append(f"rule groups: missing {sorted(expected - loaded)}, unexpected {sorted(loaded - expected)}")
for group in groups:
    for rule in group["rules"]:
        if rule["health"] != "ok":
            problems.append(f"rule {rule['name']}: {rule['health']} {rule.get('lastError', '')}")
    if group["lastEvaluation"].startswith("0001-"):
        problems.append(f"rule group {group['name']}: not evaluated yet")
if not get("/api/v1/alertmanagers")["activeAlertmanagers"]:
    problems.append("no active Alertmanager")
# The dead man's switch fires from the first evaluation: Alertmanager holding it shows the
# alerting path (rule, Prometheus, Alertmanager) works.
with urllib.request.urlopen(os.environ["ALERTMANAGER_URL"] + "/api/v2/alerts", timeout=5) as response:
    received = {alert["labels"]["alertname"] for alert in json.loads(response.read())}
if "Watchdog" not in received:
    problems.append(f"Alertmanager has not received the Watchdog alert (has {sorted(received)})")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{len(targets)} targets up; {len(groups)} rule groups, {sum(len(g['rules']) for g in groups)} rules evaluated; "
      f"alertmanager received {sorted(received)}")
PY
}
deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
until monitoring_checks >"$work/prometheus.txt" 2>&1; do
    ((SECONDS < deadline)) || { cat "$work/prometheus.txt" >&2; fail "prometheus: not every target up and every rule loaded"; }
    sleep 2
done
pass "prometheus: $(cat "$work/prometheus.txt")"

# The receivers' secret files are mounted where alertmanager.yml names them.
while read -r secret; do
    podman exec "$(container alertmanager)" test -s "$secret" || fail "alertmanager: $secret is not mounted"
done < <(grep -o '/etc/alertmanager/secrets/[a-z-]*' deploy/monitoring/alertmanager/alertmanager.yml | sort -u)
pass "alertmanager has every secret file its config names"

echo "test-compose: not run here (no Debian package): grafana, otel-collector, jaeger"
echo "test-compose: total time $((SECONDS - started))s"
echo "test-compose: $passed passed, 0 failed"
