#!/usr/bin/env bash
# Build the stand-ins for the third-party images of deploy/docker/compose.yaml from Debian
# bookworm's packages (scripts/standin-images/Containerfile says what each imitates), on the local
# base image: localhost/prognetwork/standin-{postgres,redis,prometheus,alertmanager}:bookworm.
# podman's layer cache makes a second run take seconds; --force rebuilds from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=localhost/prognetwork/debian-python:bookworm
STANDINS=(postgres redis prometheus alertmanager)
context=scripts/standin-images

scripts/build-base-image.sh
cache=()
[[ ${1:-} == --force ]] && cache=(--no-cache)
for name in "${STANDINS[@]}"; do
    t0=$SECONDS
    log=$(mktemp)
    podman build --quiet --format docker --network host "${cache[@]}" --file "$context/Containerfile" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --target "$name" \
        --tag "localhost/prognetwork/standin-$name:bookworm" "$context" >"$log" 2>&1 ||
        { tail -n 40 "$log" >&2; rm -f "$log"; echo "build-standin-images: FAIL: $name" >&2; exit 1; }
    rm -f "$log"
    echo "stand-in image localhost/prognetwork/standin-$name:bookworm: $((SECONDS - t0))s"
done
