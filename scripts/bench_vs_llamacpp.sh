#!/usr/bin/env bash
# `wick bench` against llama.cpp's `llama-bench`, one format after the other, same
# machine, same threads, same prompt and decode lengths, in one command. Each format's
# file is made from the source model with llama.cpp's `llama-quantize`
# (`--allow-requantize`: the default model ships as Q4_1 only, so the other formats are
# requantized from it; their speed, not their quality, is what this measures).
#
# Usage (from the repository root):
#     scripts/bench_vs_llamacpp.sh [threads]        # default: nproc
#
# Environment overrides:
#     FORMATS="Q4_1 Q8_0 Q4_K_M Q5_K_M Q6_K Q4_0"   llama-quantize type names
#     MODEL=path.gguf   source model (default: `wick model-path`)
#     PROMPT_TOKENS=512 DECODE_TOKENS=128 REPEATS=3
#     LLAMACPP_CACHE=dir  where scripts/build_llamacpp.sh keeps llama.cpp and where the
#                       requantized files go (default ~/.cache/wick/llamacpp)
#     SKIP_BUILD=1 WICK=path   as in scripts/bench_common.sh
# Needs scripts/build_llamacpp.sh (run on first use; builds llama.cpp from source).
set -euo pipefail

THREADS="${1:-$(nproc)}"
FORMATS="${FORMATS:-Q4_1 Q8_0 Q4_K_M Q5_K_M Q6_K Q4_0}"
PROMPT_TOKENS="${PROMPT_TOKENS:-512}"
DECODE_TOKENS="${DECODE_TOKENS:-128}"
REPEATS="${REPEATS:-3}"
PYTHON="${PYTHON:-python3}"
CACHE="${LLAMACPP_CACHE:-$HOME/.cache/wick/llamacpp}"

if [[ ! -f Cargo.toml || ! -d scripts ]]; then
    echo "run this from the repository root" >&2
    exit 1
fi

# shellcheck source=scripts/bench_common.sh
source "$(dirname "$0")/bench_common.sh"
BIN="$(NO_SERVER=1 LLAMACPP_CACHE="$CACHE" scripts/build_llamacpp.sh "$MODEL" | tail -n 1)"
FLAVOUR="$(cat "$BIN/FLAVOUR")"
echo ">> source model: $MODEL; llama.cpp: $FLAVOUR build" >&2

mkdir -p "$CACHE/models"
STEM="$(basename "$MODEL" .gguf)"
STEM="${STEM%.*}" # drop the source's own format suffix
ROWS=()
for FMT in $FORMATS; do
    FILE="$CACHE/models/$STEM.$FMT.gguf"
    if [[ "$(basename "$MODEL" .gguf)" == *".$FMT" ]]; then
        FILE="$MODEL"
    elif [[ ! -f "$FILE" ]]; then
        echo ">> llama-quantize $FMT" >&2
        "$BIN/llama-quantize" --allow-requantize "$MODEL" "$FILE.tmp" "$FMT" >/dev/null 2>&1 \
            || { echo "llama-quantize $FMT failed" >&2; exit 1; }
        mv "$FILE.tmp" "$FILE"
    fi
    echo ">> $FMT: wick bench" >&2
    W="$("$WICK" bench --model-id "$FILE" --prompt-tokens "$PROMPT_TOKENS" \
        --decode-tokens "$DECODE_TOKENS" --repeats "$REPEATS" --threads "$THREADS" --json \
        2>/dev/null | tail -n 1)"
    [[ "$W" == "{"* ]] || { echo "wick bench printed no JSON object for $FMT" >&2; exit 1; }
    echo ">> $FMT: llama-bench" >&2
    L="$("$BIN/llama-bench" -m "$FILE" -p "$PROMPT_TOKENS" -n "$DECODE_TOKENS" \
        -r "$REPEATS" -t "$THREADS" -o json 2>/dev/null)"
    ROWS+=("$FMT	$W	$(tr -d '\n' <<<"$L")")
done

CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' \
    | grep -xE 'avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|amx_int8' | tr '\n' ' ' || true)"
CMD="scripts/bench_vs_llamacpp.sh $THREADS  (FORMATS=\"$FORMATS\" PROMPT_TOKENS=$PROMPT_TOKENS DECODE_TOKENS=$DECODE_TOKENS REPEATS=$REPEATS)"
RAW="$(mktemp)"
printf '%s\n' "${ROWS[@]}" > "$RAW"
echo ">> raw results: $RAW" >&2
RAW="$RAW" CPU="$CPU" FLAGS="$FLAGS" THREADS="$THREADS" CMD="$CMD" FLAVOUR="$FLAVOUR" \
    SOURCE="$(basename "$MODEL")" "$PYTHON" - <<'EOF'
import datetime, json, os
e = os.environ
now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
print(f"date: {now}")
print(f"cpu: {e['CPU']} (flags: {e['FLAGS'].strip()}), {os.cpu_count()} cores, {e['THREADS']} threads")
print(f"llama.cpp: llama-bench, {e['FLAVOUR']} build; source model {e['SOURCE']}")
print(f"command: {e['CMD']}")
print()
print("| format | prefill wick | prefill llama.cpp | ratio | decode wick | decode llama.cpp | ratio | wick kernels |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for line in open(e["RAW"]):
    if not line.strip():
        continue
    fmt, w, l = line.rstrip("\n").split("\t")
    w, l = json.loads(w), json.loads(l)
    pp = next(r["avg_ts"] for r in l if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in l if r["n_gen"] > 0 and r["n_prompt"] == 0)
    a, b = w["prefill_tok_s"], w["decode_tok_s"]
    kernels = w.get("kernels", "")
    print(f"| {fmt} | {a:.1f} | {pp:.1f} | {a / pp:.2f} | {b:.1f} | {tg:.1f} | {b / tg:.2f} | {kernels} |")
EOF
