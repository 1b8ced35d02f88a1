# Shared by the benchmark scripts (sourced, not run): finds or builds the wick binary and
# the model file.
#     WICK=path     wick binary (default target/release/wick)
#     SKIP_BUILD=1  do not run `cargo build --release`
#     MODEL=path    GGUF to use instead of `wick model-path`
# Sets WICK and MODEL, or exits with a message.
WICK="${WICK:-target/release/wick}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo ">> cargo build --release" >&2
    cargo build --release >&2
fi
[[ -x "$WICK" ]] || { echo "$WICK not found (build failed?)" >&2; exit 1; }
if [[ -z "${MODEL:-}" ]]; then
    MODEL="$("$WICK" model-path | tail -n 1)"
fi
[[ -f "$MODEL" ]] || { echo "model file not found: '$MODEL' (set MODEL=path.gguf)" >&2; exit 1; }

# Server helpers for the scripts that start servers (they set SERVER_PID and the traps:
#     trap stop_server EXIT; trap 'stop_server; exit 130' INT TERM).
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

wait_http() { # url pid name log: waits until url answers, or exits with the log's tail
    local url="$1" pid="$2" name="$3" log="$4"
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during startup; its log ($log):" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        if curl -sf -o /dev/null "$url"; then
            return 0
        fi
        sleep 0.5
    done
    echo "$name did not answer $url within 300 s; its log ($log):" >&2
    tail -n 30 "$log" >&2
    exit 1
}
