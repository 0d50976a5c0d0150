#!/bin/sh
# Installs Debian's chromium (what the browser tests and scripts/screenshot-admin.py drive through
# Playwright: its own browser download does not work everywhere) when /usr/bin/chromium is missing.
# Idempotent: does nothing when it is there. Needs root (or sudo) to install.
set -eu

[ -x /usr/bin/chromium ] && exit 0

echo "install-browser: /usr/bin/chromium is missing; installing chromium from Debian" >&2
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-browser: need root or sudo to apt-get install chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
lock="-o DPkg::Lock::Timeout=600"
# shellcheck disable=SC2086 # $lock is two words on purpose
$as_root apt-get $lock update -qq
# Fonts: without them pages (and the README's screenshot) render with boxes for letters.
# shellcheck disable=SC2086
$as_root apt-get $lock install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x /usr/bin/chromium ] || { echo "install-browser: chromium installed but /usr/bin/chromium is missing" >&2; exit 1; }
