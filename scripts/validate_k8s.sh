#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline (scripts/validate_k8s.py) in a virtual environment
# with the pinned packages of deploy/kubernetes/requirements.txt, rebuilt only when that
# file or the Python version changes.
# Environment: PYTHON (default python3), WICK_K8S_VENV (default .venv-k8s/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${WICK_K8S_VENV:-$PWD/.venv-k8s}"
REQ=deploy/kubernetes/requirements.txt
stamp="$(sha256sum "$REQ" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.wick-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "== building the manifest validation environment ($VENV)"
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$VENV"
        "$PYTHON" -m virtualenv --version >/dev/null 2>&1 || "$PYTHON" -m pip install --user -q virtualenv
        "$PYTHON" -m virtualenv -q "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$stamp" >"$VENV/.wick-stamp"
fi
exec "$VENV/bin/python" scripts/validate_k8s.py "$@"
