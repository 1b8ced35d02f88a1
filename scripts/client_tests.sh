#!/usr/bin/env bash
# Runs real, pinned client packages (tests/clients/) against a started `wick serve`:
# raw requests, TGI's text-generation client, huggingface_hub's InferenceClient, the
# openai SDK, LangChain's ChatOpenAI and infernet-ml's TGI and HF workflows. Each family gets its own virtual
# environment, since they pin conflicting huggingface_hub versions.
#
# Usage: scripts/client_tests.sh [family ...]     (default: all of them)
#   families: requests tgi hf openai langchain infernet
# Environment:
#   WICK_BIN           the wick binary (default: target/release/wick, built if missing)
#   WICK_SERVE_ARGS    extra `wick serve` arguments (default: the default model)
#   WICK_CLIENT_VENVS  where the virtual environments live (default: .venv-clients/);
#                      each is rebuilt only when its requirements file changes
#   WICK_URL, WICK_API_KEY   test an already running server instead of starting one
#   PYTHON             the Python that creates the environments (default: python3)
# Exits non-zero when a suite fails or the server does not come up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS="$ROOT/tests/clients"
PYTHON="${PYTHON:-python3}"
VENVS="${WICK_CLIENT_VENVS:-$ROOT/.venv-clients}"
WICK_BIN="${WICK_BIN:-$ROOT/target/release/wick}"
HEALTH_TIMEOUT="${WICK_HEALTH_TIMEOUT:-600}"
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ left in tests/clients
SUITE_TIMEOUT="${WICK_SUITE_TIMEOUT:-900}"

declare -A SUITE_FILE=(
    [requests]=test_requests.py
    [tgi]=test_text_generation.py
    [hf]=test_huggingface_hub.py
    [openai]=test_openai.py
    [langchain]=test_langchain.py
    [infernet]=test_infernet.py
)
FAMILIES=("$@")
if [ ${#FAMILIES[@]} -eq 0 ]; then
    FAMILIES=(requests tgi hf openai langchain infernet)
fi
for f in "${FAMILIES[@]}"; do
    [ -n "${SUITE_FILE[$f]:-}" ] || { echo "unknown family '$f' (requests tgi hf openai langchain infernet)" >&2; exit 2; }
done

WORK=$(mktemp -d)
SERVER_PID=""
SERVER_LOG="$WORK/server.log"

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "wick serve did not stop within 30 s of SIGTERM; killing it" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

cleanup() {
    local rc=$?
    stop_server
    if [ $rc -ne 0 ] && [ -s "$SERVER_LOG" ]; then
        echo "---- last lines of the wick serve log ----" >&2
        tail -n 40 "$SERVER_LOG" >&2 || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A virtual environment with pip: venv, else virtualenv (installed for the user if needed:
# Debian's python3 without python3-venv has no ensurepip).
create_venv() {
    local dir=$1
    rm -rf "$dir"
    if "$PYTHON" -m venv "$dir" >/dev/null 2>&1 && "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$dir"
    if ! "$PYTHON" -m virtualenv --version >/dev/null 2>&1; then
        if command -v virtualenv >/dev/null 2>&1; then
            virtualenv -q -p "$PYTHON" "$dir"
            return 0
        fi
        echo "python3 -m venv has no ensurepip here: installing virtualenv for the user" >&2
        "$PYTHON" -m pip install --user -q virtualenv
    fi
    "$PYTHON" -m virtualenv -q "$dir"
}

# Builds (or reuses) the environment of one family: reused while the requirements file and
# the Python version are those it was built from.
ensure_venv() {
    local family=$1 req="$CLIENTS/requirements-$1.txt" dir="$VENVS/$1" stamp
    stamp="$(sha256sum "$req" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.wick-stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    echo "== building the $family client environment ($dir)"
    create_venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$stamp" >"$dir/.wick-stamp"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# GET url/health: prints the status code (000 when nothing answers).
health_status() {
    "$PYTHON" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

start_server() {
    if [ ! -x "$WICK_BIN" ]; then
        echo "== building wick (cargo build --release)"
        cargo build --release
    fi
    local port
    port=$(free_port)
    WICK_URL="http://127.0.0.1:$port"
    WICK_API_KEY="wick-client-tests-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    echo "== starting wick serve on $WICK_URL"
    # shellcheck disable=SC2086 # WICK_SERVE_ARGS is a list of arguments
    "$WICK_BIN" serve --hostname 127.0.0.1 --port "$port" --api-key "$WICK_API_KEY" \
        ${WICK_SERVE_ARGS:-} >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
}

wait_healthy() {
    local start=$SECONDS status
    while :; do
        status=$(health_status "$WICK_URL")
        [ "$status" = 200 ] && break
        if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "wick serve exited before it became healthy" >&2
            return 1
        fi
        if [ $((SECONDS - start)) -ge "$HEALTH_TIMEOUT" ]; then
            echo "wick serve not healthy after ${HEALTH_TIMEOUT}s (last /health: $status)" >&2
            return 1
        fi
        sleep 1
    done
    echo "== wick serve healthy after $((SECONDS - start))s"
}

if [ -n "${WICK_URL:-}" ]; then
    : "${WICK_API_KEY:?WICK_API_KEY must be set with WICK_URL}"
    echo "== testing the running server at $WICK_URL"
else
    # The model loads while the environments are built.
    start_server
fi

mkdir -p "$VENVS"
for f in "${FAMILIES[@]}"; do
    ensure_venv "$f"
done
wait_healthy
export WICK_URL WICK_API_KEY

failed=()
for f in "${FAMILIES[@]}"; do
    echo "== $f: ${SUITE_FILE[$f]}"
    if ! (cd "$CLIENTS" && timeout "$SUITE_TIMEOUT" "$VENVS/$f/bin/python" -m pytest -q \
        --junitxml="$WORK/$f.xml" "${SUITE_FILE[$f]}"); then
        failed+=("$f")
    fi
    if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "wick serve died during the $f suite" >&2
        failed+=("server")
        break
    fi
done

stop_server

if [ ${#failed[@]} -gt 0 ]; then
    echo "client suites failed: ${failed[*]}" >&2
else
    echo "client suites passed: ${FAMILIES[*]}"
fi

# The closing line: the tests of every suite together (from pytest's JUnit reports).
"$PYTHON" - "$WORK" "${FAMILIES[@]}" <<'EOF'
import sys, xml.etree.ElementTree as ET
from pathlib import Path
work, families = Path(sys.argv[1]), sys.argv[2:]
passed = failed = skipped = 0
for f in families:
    p = work / f"{f}.xml"
    if not p.exists():
        print(f"{f}: no results", file=sys.stderr)
        failed += 1
        continue
    for suite in ET.parse(p).getroot().iter("testsuite"):
        t, fl, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        passed += t - fl - e - s
        failed += fl + e
        skipped += s
print(f"clients: {passed} passed, {failed} failed, {skipped} skipped")
EOF

[ ${#failed[@]} -eq 0 ]
