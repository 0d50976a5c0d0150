#!/usr/bin/env bash
# Build every service image and run each one for real (podman, host networking) against
# this machine's PostgreSQL and Redis: /health and /readiness answer 200 on the ops port
# (OPS_PORT) and 404 on the API port (PORT), the image's own HEALTHCHECK passes, the process
# runs as a non-root UID as PID 1 with a read-only root filesystem, and SIGTERM stops it
# cleanly (exit 0 before `podman stop` would kill it).
#
#   scripts/test-images.sh                            # every service target in deploy/docker/Dockerfile
#   scripts/test-images.sh user-service api-gateway   # only these (targets are named as the services)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

DOCKERFILE=deploy/docker/Dockerfile
BASE_IMAGE=localhost/prognetwork/debian-python:bookworm
PG_ADMIN_URL=${TEST_POSTGRES_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
REDIS_URL=redis://127.0.0.1:6379/14
# 275 until pg_dump and pg_restore (with their libraries, about 15 MB) and boto3 (Secrets
# Manager and S3: botocore's service models, about 35 MB) joined every image.
MAX_IMAGE_MB=${MAX_IMAGE_MB:-330}
STOP_GRACE_SECONDS=10
READY_TIMEOUT_SECONDS=60

if (($#)); then
    services=("$@")
else
    # Service targets are the stages built FROM the shared runtime stage.
    mapfile -t services < <(sed -n 's/^FROM runtime AS \([a-z0-9_-]*\).*/\1/p' "$DOCKERFILE")
fi

scripts/install-container-tools.sh
scripts/build-base-image.sh

work=$(mktemp -d)
database="prog_images_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
containers=()
cleanup() {
    local status=$?
    for c in "${containers[@]}"; do podman rm --force --ignore --volumes "$c" >/dev/null 2>&1 || true; done
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

fail() {
    echo "test-images: FAIL: $*" >&2
    exit 1
}

# The registered services, from the ServiceSpecs in this tree's packages: a target is tested
# only once its service exists, and every service finds the others (<NAME>_URL) and the token
# issuer's keys (JWKS_URL) as `prog up` would tell it. Needs the project's virtualenv (`make`).
python=${VENV:-.venv}/bin/python
[[ -x $python ]] || python=python3
declare -A registered env_prefix
issuer=
while read -r name prefix signs; do
    registered[$name]=1
    env_prefix[$name]=$prefix
    if ((signs)); then issuer=$name; fi
done < <(PYTHONPATH=src "$python" -c '
from prognetwork.registry import services
for s in services().values():
    print(s.name, s.env_prefix, int("JWT_SIGNING_KEYS" in s.secrets))
' || echo "registry-unreadable - 0")
[[ ! -v registered[registry-unreadable] ]] && ((${#registered[@]})) ||
    fail "cannot list the registered services with $python (PYTHONPATH=src): run make first"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

http_status() {
    curl --silent --output /dev/null --max-time 3 --write-out '%{http_code}' "$1" || true
}

# Poll until URL answers 200, the container dies, or the deadline passes.
wait_for_200() {
    local container=$1 url=$2 deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
    until [[ $(http_status "$url") == 200 ]]; do
        if [[ $(podman inspect --format '{{.State.Running}}' "$container") != true ]]; then
            podman logs "$container" 2>&1 | tail -n 30 >&2
            fail "$container exited before $url answered 200"
        fi
        if ((SECONDS > deadline)); then
            podman logs "$container" 2>&1 | tail -n 30 >&2
            fail "$url did not answer 200 within ${READY_TIMEOUT_SECONDS}s (last: $(http_status "$url"))"
        fi
        sleep 0.2
    done
}

# pip inside the build trusts the same certificate authorities as this machine.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$work/pip.conf"
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source_url=$(git remote get-url origin 2>/dev/null || echo unknown)

declare -A build_seconds size_mb
built=()
skipped=0
for svc in "${services[@]}"; do
    grep -q "^FROM runtime AS $svc\$" "$DOCKERFILE" || fail "no target '$svc' in $DOCKERFILE"
    if [[ ! -v registered[$svc] ]]; then
        echo "test-images: SKIP $svc: no package registers a service of that name yet"
        skipped=$((skipped + 1))
        continue
    fi
    echo "test-images: building $svc"
    t0=$SECONDS
    podman build --quiet --format docker --network host --file "$DOCKERFILE" --target "$svc" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$version" \
        --build-arg REVISION="$revision" --build-arg SOURCE="$source_url" \
        --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
        --volume "$work/pip.conf:/etc/pip.conf:ro" \
        --tag "localhost/prognetwork/$svc:test" . >"$work/build-$svc.log" 2>&1 ||
        { tail -n 40 "$work/build-$svc.log" >&2; fail "build of $svc"; }
    build_seconds[$svc]=$((SECONDS - t0))
    size_mb[$svc]=$(($(podman image inspect --format '{{.Size}}' "localhost/prognetwork/$svc:test") / 1000000))
    built+=("$svc")
done
((${#built[@]})) || fail "no service image to test"

psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE \"$database\"" >/dev/null
database_url="postgresql://postgres@127.0.0.1:5432/$database"
# Every service gets both datastores; user-service, api-gateway and event-streaming need Redis.
run_flags=(--network host --read-only -e PROG_ENV=development -e "DATABASE_URL=$database_url"
    -e "REDIS_URL=$REDIS_URL" -e HOST=127.0.0.1 -e SHUTDOWN_DRAIN_SECONDS=1 -e LOG_FORMAT=json)

# Migrations ship inside the package: `prog migrate` from an image brings the schema up.
podman run --rm --no-healthcheck "${run_flags[@]}" "localhost/prognetwork/${built[0]}:test" prog migrate ||
    fail "prog migrate in the ${built[0]} image"
# The backup job's PostgreSQL client tools work from the image: a backup made, then proven by
# restoring it into a scratch database (the image's /tmp is its only writable place).
podman run --rm --no-healthcheck "${run_flags[@]}" "localhost/prognetwork/${built[0]}:test" \
    sh -c 'prog backup create --target /tmp/backups && prog backup verify latest --target /tmp/backups' >/dev/null ||
    fail "prog backup create and verify in the ${built[0]} image"

# All services run side by side, as they would deployed: api-gateway and event-streaming are
# ready only once they have the token issuer's public keys (JWKS_URL).
declare -A port ops_port uid stop_seconds
for svc in "${built[@]}"; do
    port[$svc]=$(free_port)
    ops_port[$svc]=$(free_port)
    while [[ ${ops_port[$svc]} == "${port[$svc]}" ]]; do ops_port[$svc]=$(free_port); done
    run_flags+=(-e "${env_prefix[$svc]}_URL=http://127.0.0.1:${port[$svc]}")
done
if [[ -n $issuer && -v port[$issuer] ]]; then
    run_flags+=(-e "JWKS_URL=http://127.0.0.1:${port[$issuer]}/.well-known/jwks.json")
fi

for svc in "${built[@]}"; do
    image="localhost/prognetwork/$svc:test"
    name="prog-images-$svc-$$"
    containers+=("$name")
    echo "test-images: starting $svc on 127.0.0.1:${port[$svc]} (ops ${ops_port[$svc]})"
    [[ $(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$image") == "$revision" ]] ||
        fail "$svc: OCI revision label is not $revision"
    podman run --rm --no-healthcheck --entrypoint sh "$image" -c \
        '! command -v gcc && ! command -v cc && ! command -v pip && ! python -c "import pip" 2>/dev/null && ! test -e /root/.cache' \
        >/dev/null || fail "$svc: runtime image contains a compiler, pip or a pip cache"
    # podman's complaints about systemd timers (none on this machine) go to a file.
    podman run --detach --name "$name" "${run_flags[@]}" -e "PORT=${port[$svc]}" -e "OPS_PORT=${ops_port[$svc]}" \
        "$image" >/dev/null 2>"$work/run-$svc.err" ||
        { cat "$work/run-$svc.err" >&2; fail "$svc: podman run"; }
done

for svc in "${built[@]}"; do
    name="prog-images-$svc-$$"
    wait_for_200 "$name" "http://127.0.0.1:${ops_port[$svc]}/health"
    wait_for_200 "$name" "http://127.0.0.1:${ops_port[$svc]}/readiness"
    for path in /health /readiness /metrics /docs /openapi.json; do
        [[ $(http_status "http://127.0.0.1:${port[$svc]}$path") == 404 ]] || fail "$svc: the API port serves $path"
    done
    podman healthcheck run "$name" >/dev/null 2>&1 || fail "$svc: podman healthcheck run is not healthy"
    # PID 1 of the container is `prog serve <svc>` itself (no shell between it and signals).
    pid=$(podman inspect --format '{{.State.Pid}}' "$name")
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    [[ $cmdline == *"bin/prog serve $svc "* ]] || fail "$svc: PID 1 is not 'prog serve $svc': $cmdline"
    uid[$svc]=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
    ((uid[$svc] != 0)) || fail "$svc runs as root"
    echo "test-images: $svc healthy and ready"
done

# Stopped in reverse order of start, so a service's dependencies outlive it.
for ((i = ${#built[@]} - 1; i >= 0; i--)); do
    svc=${built[i]}
    name="prog-images-$svc-$$"
    t0=$(date +%s%N)
    podman stop --time "$STOP_GRACE_SECONDS" "$name" >/dev/null 2>>"$work/run-$svc.err"
    stop_seconds[$svc]=$(awk -v ns=$(($(date +%s%N) - t0)) 'BEGIN {printf "%.1f", ns / 1e9}')
    code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    # Into a file first: `grep -q` closing a pipe early would fail the pipeline (pipefail).
    podman logs "$name" >"$work/$svc.log" 2>&1
    # podman stop kills after the grace period, which would show as 137: 0 means a clean stop in time.
    [[ $code == 0 ]] || { tail -n 20 "$work/$svc.log" >&2; fail "$svc: exit status $code after SIGTERM"; }
    grep -q '"shutdown requested; draining"' "$work/$svc.log" || fail "$svc: no drain after SIGTERM in its log"
    podman rm --volumes "$name" >/dev/null 2>>"$work/run-$svc.err"
done


printf '\n%-22s %8s %9s %5s %10s %6s\n' service "build s" "size MB" uid "stop s" result
for svc in "${built[@]}"; do
    printf '%-22s %8s %9s %5s %10s %6s\n' "$svc" "${build_seconds[$svc]}" "${size_mb[$svc]}" "${uid[$svc]}" \
        "${stop_seconds[$svc]}" ok
done
for svc in "${built[@]}"; do
    ((size_mb[$svc] <= MAX_IMAGE_MB)) || fail "$svc image is ${size_mb[$svc]} MB (limit $MAX_IMAGE_MB MB)"
done
echo "test-images: total time $((SECONDS - started))s"
echo "test-images: ${#built[@]} passed, 0 failed$( ((skipped)) && echo ", $skipped skipped")"
