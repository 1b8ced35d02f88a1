#!/usr/bin/env bash
# Benchmark wick against llama.cpp on the default model, same machine, same
# thread count, one after the other.
#
# Usage (from the repository root):
#     scripts/bench_vs_llamacpp.sh [threads]        # default: nproc
#
# Environment overrides:
#     MODEL=path.gguf   use this GGUF instead of `wick model-path`
#     VENV=dir          python venv holding llama-cpp-python (default .venv-bench;
#                       created on first use, llama-cpp-python is compiled from
#                       source, which takes a while)
#     PYTHON=python3    interpreter used to create the venv
#     SKIP_BUILD=1      do not run `cargo build --release`
#     WICK=path         wick binary to use (default target/release/wick)
#     PROMPT_TOKENS=512 DECODE_TOKENS=128 REPEATS=3
set -euo pipefail

THREADS="${1:-$(nproc)}"
PROMPT_TOKENS="${PROMPT_TOKENS:-512}"
DECODE_TOKENS="${DECODE_TOKENS:-128}"
REPEATS="${REPEATS:-3}"
VENV="${VENV:-.venv-bench}"
PYTHON="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"

if [[ ! -f Cargo.toml || ! -d scripts ]]; then
    echo "run this from the repository root" >&2
    exit 1
fi

# --- llama.cpp (llama-cpp-python) venv -------------------------------------
if ! "$VENV/bin/python" -c "import numpy, llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" 2>/dev/null; then
    echo ">> setting up $VENV (llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION, numpy)" >&2
    "$PYTHON" -m venv "$VENV"
    # keep the venv out of git even if .gitignore does not cover it
    [[ -f "$VENV/.gitignore" ]] || echo '*' > "$VENV/.gitignore"
    "$VENV/bin/pip" install --quiet --upgrade pip >&2
    "$VENV/bin/pip" install --quiet "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy >&2
fi

# --- wick -------------------------------------------------------------------
# shellcheck source=scripts/bench_common.sh
source "$(dirname "$0")/bench_common.sh"
echo ">> model: $MODEL" >&2

# --- run ----------------------------------------------------------------------
echo ">> wick bench (threads=$THREADS)" >&2
WICK_JSON="$("$WICK" bench --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
    --threads "$THREADS" --json | tail -n 1)"
echo "$WICK_JSON" >&2
[[ "$WICK_JSON" == "{"* ]] || { echo "wick bench printed no JSON object" >&2; exit 1; }

echo ">> llama.cpp bench (threads=$THREADS)" >&2
LLAMA_JSON="$("$VENV/bin/python" scripts/bench_llamacpp.py --model "$MODEL" --threads "$THREADS" \
    --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" --repeats "$REPEATS" | tail -n 1)"
echo "$LLAMA_JSON" >&2

CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
[[ -n "$CPU" ]] || CPU="$(uname -m)"

# --- table --------------------------------------------------------------------
WICK_JSON="$WICK_JSON" LLAMA_JSON="$LLAMA_JSON" CPU="$CPU" THREADS="$THREADS" \
"$VENV/bin/python" - <<'EOF'
import datetime, json, os
w = json.loads(os.environ["WICK_JSON"])
l = json.loads(os.environ["LLAMA_JSON"])
print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
print(f"cpu: {os.environ['CPU']}")
print(f"threads: {os.environ['THREADS']}")
print()
print("| metric | wick | llama.cpp | ratio (wick/llama.cpp) |")
print("|---|---:|---:|---:|")
for key, label in (("prefill_tok_s", f"prefill tok/s ({l['prompt_tokens']} tokens)"),
                   ("decode_tok_s", f"decode tok/s ({l['decode_tokens']} tokens)")):
    a, b = float(w[key]), float(l[key])
    print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
for key in ("prompt_tokens", "decode_tokens", "threads"):
    if key in w and w[key] != l[key]:
        print(f"\nwarning: {key} differs: wick={w[key]} llama.cpp={l[key]}")
EOF
