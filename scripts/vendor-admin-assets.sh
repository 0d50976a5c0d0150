#!/usr/bin/env bash
# Re-fetch the admin console's vendored browser assets from the npm registry, check each tarball
# against the integrity npm publishes for it, and write the files the console serves:
#   src/prognetwork/admin/static/vendor/htmx.min.js
#   src/prognetwork/admin/static/vendor/SHA256SUMS   (version and sha256 of every vendored file)
#
#   scripts/vendor-admin-assets.sh           # fetch the pinned versions, write the files
#   scripts/vendor-admin-assets.sh --check   # fetch them, fail if the vendored files differ
#
# Nothing is built: the console serves these files as they are (no CDN, no build step). To upgrade,
# change the version below, run this, and review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."

HTMX_VERSION=2.0.11
VENDOR=src/prognetwork/admin/static/vendor

die() {
    echo "vendor-admin-assets: $*" >&2
    exit 1
}

check=false
case ${1:-} in
--check) check=true ;;
"") ;;
*) die "unknown argument $1 (use --check to compare without writing)" ;;
esac
command -v npm >/dev/null || die "npm is needed (Debian: apt-get install npm)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch PACKAGE VERSION: the package's tarball in $work, verified against the registry's integrity.
fetch() {
    local package=$1 version=$2 integrity tarball algorithm expected actual
    integrity=$(npm view "$package@$version" dist.integrity)
    [[ $integrity == sha512-* ]] || die "$package@$version: the registry publishes no sha512 integrity"
    tarball=$(cd "$work" && npm pack --silent "$package@$version")
    algorithm=${integrity%%-*}
    expected=${integrity#*-}
    actual=$(openssl dgst "-$algorithm" -binary "$work/$tarball" | base64 -w0)
    [[ $actual == "$expected" ]] || die "$package@$version: tarball integrity $algorithm-$actual, published $integrity"
    mkdir -p "$work/$package"
    tar -xzf "$work/$tarball" -C "$work/$package"
}

fetch htmx.org "$HTMX_VERSION"
mkdir -p "$work/out"
cp "$work/htmx.org/package/dist/htmx.min.js" "$work/out/htmx.min.js"
sum=$(sha256sum "$work/out/htmx.min.js" | cut -d' ' -f1)
printf '# Vendored from the npm registry by scripts/vendor-admin-assets.sh: do not edit by hand.\n%s  htmx.min.js  htmx.org@%s\n' \
    "$sum" "$HTMX_VERSION" >"$work/out/SHA256SUMS"

if $check; then
    for file in htmx.min.js SHA256SUMS; do
        cmp -s "$work/out/$file" "$VENDOR/$file" || die "$VENDOR/$file differs from what the registry serves: run $0"
    done
    echo "vendor-admin-assets: $VENDOR matches htmx.org@$HTMX_VERSION"
else
    mkdir -p "$VENDOR"
    cp "$work/out/htmx.min.js" "$work/out/SHA256SUMS" "$VENDOR/"
    echo "vendor-admin-assets: htmx.org@$HTMX_VERSION → $VENDOR/htmx.min.js (sha256 $sum)"
fi
