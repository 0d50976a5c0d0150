#!/usr/bin/env bash
# Resolve pyproject.toml's dependencies into the two lock files, with uv's resolver:
#   requirements/runtime.lock  the [project] dependencies: what the service images install
#   requirements/dev.lock      those, plus the local, test, dev and deploy extras, held to the
#                              versions runtime.lock pins: what `make` installs
# Every entry is `name==version`, the sha256 of each of that release's files (pip installs with
# --require-hashes) and a `# via` trail naming what asked for it. The resolution targets CPython
# 3.11 (3.11.0 up: a marker such as python_full_version < "3.11.3" counts) on x86_64 Linux, so it
# comes out the same on any machine.
#
#   scripts/lock.sh               # after editing pyproject.toml: every pin that still fits stays
#   scripts/lock.sh PKG...        # and these packages move to their newest allowed release
#   scripts/lock.sh --upgrade     # every package to its newest allowed release
#
# `make lock`, `make lock PACKAGES="PKG..."` and `make lock-upgrade` run it. Nothing changes
# version unless named here: the current lock files are uv's preferences.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=3.11
PLATFORM=x86_64-unknown-linux-gnu
RUNTIME=requirements/runtime.lock
DEV=requirements/dev.lock

die() {
    echo "lock: $*" >&2
    exit 1
}

upgrade=()
for arg in "$@"; do
    case $arg in
    --upgrade) upgrade+=(--upgrade) ;;
    -*) die "unknown option $arg (packages to upgrade, or --upgrade for all)" ;;
    *) upgrade+=(--upgrade-package "$arg") ;;
    esac
done

# uv at the version pyproject.toml's dev extra pins, installed by the hashes dev.lock holds
# for it when the lock has that version (it has, except right after the pin was raised).
wanted=$("$PYTHON" -c 'import re, tomllib
dev = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
print(next((m[1] for d in dev if (m := re.fullmatch(r"uv\s*==\s*(\S+)", d))), ""))')
[[ -n $wanted ]] || die "pyproject.toml's dev extra pins no uv (uv==X.Y.Z)"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
uv=$VENV/bin/uv
if [[ $("$uv" --version 2>/dev/null) != "uv $wanted "* ]]; then
    entry=$(mktemp)
    trap 'rm -f "$entry"' EXIT
    # The uv entry of dev.lock: its line and the continuation lines under it.
    awk -v pin="uv==$wanted" '$1 == pin { on = 1 } on { print } on && !/\\$/ { exit }' "$DEV" >"$entry" 2>/dev/null || true
    if [[ -s $entry ]]; then
        "$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps --requirement "$entry"
    else
        "$VENV/bin/python" -m pip install --quiet "uv==$wanted"
    fi
fi

mkdir -p requirements
compile=("$uv" pip compile pyproject.toml --quiet --python-version "$PYTHON_VERSION" --python-platform "$PLATFORM"
    --generate-hashes --annotation-style split --custom-compile-command "make lock")
"${compile[@]}" "${upgrade[@]}" --output-file "$RUNTIME"
# Preferences for an upgrade named above also apply to dev-only packages; the constraint keeps
# every runtime package at runtime.lock's version.
"${compile[@]}" "${upgrade[@]}" --extra local --extra test --extra dev --extra deploy \
    --constraint "$RUNTIME" --output-file "$DEV"
echo "lock: $RUNTIME ($(grep -c '^[A-Za-z0-9]' "$RUNTIME") packages), $DEV ($(grep -c '^[A-Za-z0-9]' "$DEV") packages)"
