#!/usr/bin/env bash
# Serve the same GGUF with wick and with llama.cpp's server (llama-cpp-python), same
# threads, on loopback ports, run the same `wick benchmark` sweep against each, and
# print one markdown table with ratios.
#
# The servers run one after the other (never both at once), each stopped when its sweep
# is done; an exit trap stops whichever is running if the script is interrupted.
#
# Usage (from the repository root):
#     scripts/compare_cpu.sh [threads]          # default: nproc
#
# Environment overrides:
#     CONCURRENCY=1,4,16        levels of the sweep
#     INPUT_LEN=128 OUTPUT_LEN=128
#     PROMPTS_PER_CONCURRENCY=2 requests per level = this × the level (at least 4)
#     API=openai                API for both servers: openai (llama.cpp's server speaks
#                               only OpenAI); API=tgi benchmarks wick over TGI's route and
#                               llama.cpp over OpenAI
#     SEED=0 WARMUP=2
#     MODEL=path.gguf           use this GGUF instead of `wick model-path`
#     WICK=path                 wick binary (default target/release/wick)
#     SKIP_BUILD=1              do not run `cargo build --release`
#     VENV=dir                  python venv for llama-cpp-python[server] (default
#                               .venv-bench, created on first use; llama-cpp-python is
#                               compiled from source, which takes a while)
#     PYTHON=python3            interpreter used to create the venv and print the table
#     SKIP_INSTALL=1            never create or install into the venv (fail if unusable)
#     WICK_PORT=18080 LLAMA_PORT=18081
#     OUT_DIR=dir               where the JSON reports, SVG charts and server logs go
#                               (default: a new temporary directory)
#     WICK_EXTRA_ARGS=...       extra flags for `wick serve`
set -euo pipefail

THREADS="${1:-${THREADS:-$(nproc)}}"
CONCURRENCY="${CONCURRENCY:-1,4,16}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
PROMPTS_PER_CONCURRENCY="${PROMPTS_PER_CONCURRENCY:-2}"
API="${API:-openai}"
SEED="${SEED:-0}"
WARMUP="${WARMUP:-2}"
VENV="${VENV:-.venv-bench}"
PYTHON="${PYTHON:-python3}"
WICK_PORT="${WICK_PORT:-18080}"
LLAMA_PORT="${LLAMA_PORT:-18081}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
HOST=127.0.0.1

if [[ ! -f Cargo.toml || ! -d scripts ]]; then
    echo "run this from the repository root" >&2
    exit 1
fi
case "$API" in openai|tgi) ;; *) echo "API must be openai or tgi" >&2; exit 1 ;; esac
OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
MAX_C="$(tr ',' '\n' <<<"$CONCURRENCY" | sort -n | tail -n 1)"

# --- stop servers on exit (helpers in bench_common.sh, sourced below) -----------------
trap 'declare -F stop_server >/dev/null && stop_server' EXIT
trap 'declare -F stop_server >/dev/null && stop_server; exit 130' INT TERM

# --- llama-cpp-python[server] venv ----------------------------------------------------
llama_ok() {
    "$VENV/bin/python" -c "import sys, llama_cpp, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" 2>/dev/null
}
if ! llama_ok; then
    if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
        echo "$VENV has no llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION and SKIP_INSTALL=1" >&2
        exit 1
    fi
    echo ">> setting up $VENV (llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION)" >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    # keep the venv out of git even if .gitignore does not cover it
    [[ -f "$VENV/.gitignore" ]] || echo '*' > "$VENV/.gitignore"
    "$VENV/bin/pip" install --quiet --upgrade pip >&2
    "$VENV/bin/pip" install --quiet "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" >&2
    llama_ok || { echo "llama-cpp-python[server] did not install into $VENV" >&2; exit 1; }
fi

# --- wick -----------------------------------------------------------------------------
# shellcheck source=scripts/bench_common.sh
source "$(dirname "$0")/bench_common.sh"
echo ">> model: $MODEL, threads: $THREADS, out: $OUT_DIR" >&2

# Same prompts for both: exact-length, seeded, measured with the GGUF's own tokenizer.
bench() { # label url api [extra benchmark flags]
    "$WICK" benchmark --url "$2" --api "$3" --label "$1" "${@:4}" \
        --concurrency "$CONCURRENCY" --prompts-per-concurrency "$PROMPTS_PER_CONCURRENCY" \
        --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed "$SEED" \
        --warmup "$WARMUP" --tokenizer "$MODEL" --model "$(basename "$MODEL")" \
        --json-out "$OUT_DIR/$1.json" --chart-out "$OUT_DIR/$1.svg" >&2
}

# --- wick serve -----------------------------------------------------------------------
echo ">> wick serve on $HOST:$WICK_PORT" >&2
# shellcheck disable=SC2086
"$WICK" serve --model-id "$MODEL" --hostname "$HOST" --port "$WICK_PORT" \
    --threads "$THREADS" --max-concurrent-requests "$((MAX_C * 2))" \
    ${WICK_EXTRA_ARGS:-} >"$OUT_DIR/wick.log" 2>&1 &
SERVER_PID=$!
wait_http "http://$HOST:$WICK_PORT/health" "$SERVER_PID" "wick serve" "$OUT_DIR/wick.log"
bench wick "http://$HOST:$WICK_PORT" "$API"
stop_server

# --- llama.cpp's server -----------------------------------------------------------------
# llama-cpp-python's server has no parallel slots: it runs one request at a time and
# queues the rest. interrupt_requests=False keeps it from cutting a running stream short
# whenever another request arrives (its default), which would break the sweep.
N_CTX=$((INPUT_LEN + OUTPUT_LEN + 64))
((N_CTX < 2048)) && N_CTX=2048
echo ">> llama.cpp server (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION) on $HOST:$LLAMA_PORT" >&2
"$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --host "$HOST" --port "$LLAMA_PORT" \
    --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$N_CTX" \
    --interrupt_requests False --verbose False >"$OUT_DIR/llama.log" 2>&1 &
SERVER_PID=$!
wait_http "http://$HOST:$LLAMA_PORT/v1/models" "$SERVER_PID" "llama.cpp server" "$OUT_DIR/llama.log"
# llama-cpp-python's completions default to repeat_penalty 1.1; wick's greedy decoding
# has no penalty: ask for the same decoding from both.
bench llama.cpp "http://$HOST:$LLAMA_PORT" openai --extra-body '{"repeat_penalty": 1.0}'
stop_server

# --- table ----------------------------------------------------------------------------
CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
[[ -n "$CPU" ]] || CPU="$(uname -m)"
CMD="scripts/compare_cpu.sh $THREADS  (CONCURRENCY=$CONCURRENCY INPUT_LEN=$INPUT_LEN OUTPUT_LEN=$OUTPUT_LEN PROMPTS_PER_CONCURRENCY=$PROMPTS_PER_CONCURRENCY API=$API)"
W="$OUT_DIR/wick.json" L="$OUT_DIR/llama.cpp.json" CPU="$CPU" THREADS="$THREADS" \
    CORES="$(nproc)" MODEL_NAME="$(basename "$MODEL")" CMD="$CMD" API="$API" \
    "$PYTHON" - <<'EOF'
import datetime, json, os
w = json.load(open(os.environ["W"]))
l = json.load(open(os.environ["L"]))
print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
print(f"machine: {os.environ['CPU']}, {os.environ['CORES']} cores; servers use {os.environ['THREADS']} threads")
print(f"model: {os.environ['MODEL_NAME']}; input {w['input_len']} tokens, output {w['output_len']} tokens (asked); "
      f"wick over {w['api']}, llama.cpp over {l['api']}")
print(f"command: {os.environ['CMD']}")
print()
print("| concurrency | metric | wick | llama.cpp | ratio (wick/llama.cpp) |")
print("|---:|---|---:|---:|---:|")
def fmt(x, d):
    return f"{x:.{d}f}"
lv = {x["concurrency"]: x for x in l["levels"]}
for a in w["levels"]:
    c = a["concurrency"]
    b = lv.get(c)
    if b is None:
        continue
    rows = [
        ("output tok/s (higher is better)", a["output_throughput"], b["output_throughput"], 1),
        ("requests/s", a["request_throughput"], b["request_throughput"], 2),
        ("TTFT p50 ms (lower is better)", a["ttft_ms"]["p50"], b["ttft_ms"]["p50"], 0),
        ("TTFT p99 ms", a["ttft_ms"]["p99"], b["ttft_ms"]["p99"], 0),
        ("TPOT p50 ms", a["tpot_ms"]["p50"], b["tpot_ms"]["p50"], 1),
        ("ITL p99 ms", a["itl_ms"]["p99"], b["itl_ms"]["p99"], 1),
        ("E2E p50 s", a["e2e_ms"]["p50"] / 1000, b["e2e_ms"]["p50"] / 1000, 2),
        ("mean output tokens", a["mean_output_tokens"], b["mean_output_tokens"], 1),
    ]
    for name, x, y, d in rows:
        ratio = f"{x / y:.2f}" if y else "-"
        print(f"| {c} | {name} | {fmt(x, d)} | {fmt(y, d)} | {ratio} |")
    errs = [f"{n}: {r['completed']}/{r['num_prompts']} ok" + (f" ({r['errors']})" if r["errors"] else "")
            for n, r in (("wick", a), ("llama.cpp", b))]
    if any(r["failed"] for r in (a, b)):
        print(f"| {c} | errors | {errs[0]} | {errs[1]} | |")
EOF
echo ">> reports and charts: $OUT_DIR" >&2
