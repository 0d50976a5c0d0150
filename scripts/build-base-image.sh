#!/usr/bin/env bash
# Build the local base image prognetwork/debian-python:bookworm (Debian bookworm minbase +
# python3) with debootstrap, for machines that reach Debian's mirror but no image registry.
# The result is cached: nothing is done when the image already exists (--force rebuilds).
set -euo pipefail

IMAGE=${BASE_IMAGE_NAME:-localhost/prognetwork/debian-python:bookworm}
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates

if [[ ${1:-} != --force ]] && podman image exists "$IMAGE"; then
    echo "base image $IMAGE: cached"
    exit 0
fi

# The mirror apt already uses on this machine (deb822 .sources or one-line sources.list).
mirror() {
    local uri
    uri=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' | grep -v security | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

root=$(mktemp -d /var/tmp/prognetwork-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
MIRROR=$(mirror)
echo "base image $IMAGE: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 ||
    { tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# Only what a Python runtime needs: no apt lists, caches, docs or man pages.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

tar -C "$root" --numeric-owner -c . |
    podman import --quiet --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
echo "base image $IMAGE: built ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
