#!/usr/bin/env bash
# Serve the same GGUF with wick and with llama.cpp's own server (`llama-server -np N`:
# continuous batching over N parallel slots, N the largest concurrency), same threads,
# on loopback ports, run the same `wick benchmark` sweep against each (same seeded,
# exact-length prompts), and print one markdown table with ratios.
#
# The servers run one after the other (never both at once), each stopped when its sweep
# is done; an exit trap stops whichever is running if the script is interrupted.
#
# Usage (from the repository root):
#     scripts/compare_cpu.sh [threads]          # default: nproc
#
# Environment overrides:
#     CONCURRENCY=1,4,16,64     levels of the sweep
#     INPUT_LEN=128 OUTPUT_LEN=128
#     PROMPTS_PER_CONCURRENCY=2 requests per level = this × the level (at least 4)
#     PREFIX_CACHING=on|off     on both sides: wick's prefix cache and llama-server's
#                               per-request `cache_prompt` (default on)
#     SEED=0 WARMUP=2
#     REQUEST_RATE=r            Poisson arrivals at r requests/s (still capped by the
#                               concurrency level) on both sides; default: closed loop
#     MODEL=path.gguf           use this GGUF instead of `wick model-path`
#     WICK=path                 wick binary (default target/release/wick)
#     SKIP_BUILD=1              do not run `cargo build --release`
#     LLAMACPP_CACHE=dir        llama.cpp build cache (scripts/build_llamacpp.sh, run on
#                               first use)
#     PYTHON=python3            interpreter used to print the table
#     WICK_PORT=18080 LLAMA_PORT=18081
#     OUT_DIR=dir               where the JSON reports, SVG charts and server logs go
#                               (default: a new temporary directory)
#     WICK_EXTRA_ARGS=...       extra flags for `wick serve`
set -euo pipefail

THREADS="${1:-${THREADS:-$(nproc)}}"
CONCURRENCY="${CONCURRENCY:-1,4,16,64}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
PROMPTS_PER_CONCURRENCY="${PROMPTS_PER_CONCURRENCY:-2}"
PREFIX_CACHING="${PREFIX_CACHING:-on}"
SEED="${SEED:-0}"
WARMUP="${WARMUP:-2}"
PYTHON="${PYTHON:-python3}"
WICK_PORT="${WICK_PORT:-18080}"
LLAMA_PORT="${LLAMA_PORT:-18081}"
CACHE="${LLAMACPP_CACHE:-$HOME/.cache/wick/llamacpp}"
API=openai
HOST=127.0.0.1

if [[ ! -f Cargo.toml || ! -d scripts ]]; then
    echo "run this from the repository root" >&2
    exit 1
fi
case "$PREFIX_CACHING" in on|off) ;; *) echo "PREFIX_CACHING must be on or off" >&2; exit 1 ;; esac
OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
MAX_C="$(tr ',' '\n' <<<"$CONCURRENCY" | sort -n | tail -n 1)"

# --- stop servers on exit (helpers in bench_common.sh, sourced below) -----------------
trap 'declare -F stop_server >/dev/null && stop_server' EXIT
trap 'declare -F stop_server >/dev/null && stop_server; exit 130' INT TERM

# --- wick and llama.cpp -----------------------------------------------------------------
# shellcheck source=scripts/bench_common.sh
source "$(dirname "$0")/bench_common.sh"
BIN="$(LLAMACPP_CACHE="$CACHE" scripts/build_llamacpp.sh "$MODEL" | tail -n 1)"
FLAVOUR="$(cat "$BIN/FLAVOUR")"
echo ">> model: $MODEL, threads: $THREADS, llama.cpp: $FLAVOUR build, out: $OUT_DIR" >&2

# Same prompts for both: exact-length, seeded, measured with the GGUF's own tokenizer.
bench() { # label url [extra benchmark flags]
    "$WICK" benchmark --url "$2" --api "$API" --label "$1" "${@:3}" \
        --concurrency "$CONCURRENCY" --prompts-per-concurrency "$PROMPTS_PER_CONCURRENCY" \
        --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed "$SEED" \
        --warmup "$WARMUP" ${REQUEST_RATE:+--request-rate "$REQUEST_RATE"} \
        --tokenizer "$MODEL" --model "$(basename "$MODEL")" \
        --json-out "$OUT_DIR/$1.json" --chart-out "$OUT_DIR/$1.svg" >&2
}

# --- wick serve -----------------------------------------------------------------------
WICK_FLAGS=()
[[ "$PREFIX_CACHING" == off ]] && WICK_FLAGS+=(--disable-prefix-caching)
echo ">> wick serve on $HOST:$WICK_PORT" >&2
# shellcheck disable=SC2086
"$WICK" serve --model-id "$MODEL" --hostname "$HOST" --port "$WICK_PORT" \
    --threads "$THREADS" --max-concurrent-requests "$((MAX_C * 2))" "${WICK_FLAGS[@]}" \
    ${WICK_EXTRA_ARGS:-} >"$OUT_DIR/wick.log" 2>&1 &
SERVER_PID=$!
wait_http "http://$HOST:$WICK_PORT/health" "$SERVER_PID" "wick serve" "$OUT_DIR/wick.log"
bench wick "http://$HOST:$WICK_PORT"
stop_server

# --- llama-server -----------------------------------------------------------------------
# -np slots share a context of -c tokens: each slot gets INPUT_LEN + OUTPUT_LEN + margin.
SLOT_CTX=$((INPUT_LEN + OUTPUT_LEN + 64))
CACHE_PROMPT=true
[[ "$PREFIX_CACHING" == off ]] && CACHE_PROMPT=false
echo ">> llama-server -np $MAX_C on $HOST:$LLAMA_PORT" >&2
"$BIN/llama-server" -m "$MODEL" --host "$HOST" --port "$LLAMA_PORT" -t "$THREADS" \
    -tb "$THREADS" -np "$MAX_C" -c "$((SLOT_CTX * MAX_C))" --cont-batching \
    >"$OUT_DIR/llama.log" 2>&1 &
SERVER_PID=$!
wait_http "http://$HOST:$LLAMA_PORT/health" "$SERVER_PID" "llama-server" "$OUT_DIR/llama.log"
# Greedy, no repeat penalty on both sides.
bench llama.cpp "http://$HOST:$LLAMA_PORT" \
    --extra-body "{\"repeat_penalty\": 1.0, \"cache_prompt\": $CACHE_PROMPT}"
stop_server

# --- table ----------------------------------------------------------------------------
CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
[[ -n "$CPU" ]] || CPU="$(uname -m)"
CMD="scripts/compare_cpu.sh $THREADS  (CONCURRENCY=$CONCURRENCY INPUT_LEN=$INPUT_LEN OUTPUT_LEN=$OUTPUT_LEN PROMPTS_PER_CONCURRENCY=$PROMPTS_PER_CONCURRENCY PREFIX_CACHING=$PREFIX_CACHING${REQUEST_RATE:+ REQUEST_RATE=$REQUEST_RATE}${WICK_EXTRA_ARGS:+ WICK_EXTRA_ARGS=\"$WICK_EXTRA_ARGS\"})"
W="$OUT_DIR/wick.json" L="$OUT_DIR/llama.cpp.json" CPU="$CPU" THREADS="$THREADS" \
    CORES="$(nproc)" MODEL_NAME="$(basename "$MODEL")" CMD="$CMD" API="$API" FLAVOUR="$FLAVOUR" \
    "$PYTHON" - <<'EOF'
import datetime, json, os
w = json.load(open(os.environ["W"]))
l = json.load(open(os.environ["L"]))
print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
print(f"machine: {os.environ['CPU']}, {os.environ['CORES']} cores; servers use {os.environ['THREADS']} threads")
print(f"model: {os.environ['MODEL_NAME']}; input {w['input_len']} tokens, output {w['output_len']} tokens (asked); "
      f"both over {w['api']}; llama.cpp: llama-server -np <max concurrency>, {os.environ['FLAVOUR']} build")
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
