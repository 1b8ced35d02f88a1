#!/usr/bin/env bash
# GPU checks and benchmarks for wick's CUDA path, on a machine with an NVIDIA GPU and its
# driver but no cargo and no network: everything it runs is built elsewhere and brought
# along in one directory.
#
# Build (on any machine, GPU or not; see README "CUDA"):
#   eval "$(scripts/cuda-toolkit.sh --env)"
#   export RUSTFLAGS="-C target-cpu=x86-64-v3"   # binaries that travel: not -C target-cpu=native
#   cargo build --release --features cuda --target-dir target/cuda
#   cargo test --release --features cuda --target-dir target/cuda --test cuda_kernels --no-run
#   scripts/gpu-check.sh --pack DIR        # copies the binaries into DIR
# Then on the GPU machine:
#   scripts/gpu-check.sh DIR [kernels|e2e|bench|all]
#
# DIR holds `wick` and `cuda_kernels` (the test binary: kernel checks, and the whole GPU
# forward pass against the CPU's on the same random weights), and optionally `model.gguf`
# (the default model, for greedy generations GPU vs CPU). Each binary is about 61 MiB
# stripped (candle's PTX is most of it), so with a 64 MiB limit on what one transfer
# carries, bring them in separate calls: `kernels` needs only cuda_kernels, `e2e` and
# `bench` only wick (and model.gguf, 94 MiB, only where it can be copied). The CUDA libraries the binary
# links (libcudart, libcublas, libcublasLt, libcurand, libnvrtc: CUDA 13) come from the
# machine's toolkit (/usr/local/cuda) or from CUDA_LIBS=dir.
#
# Benchmarks (random weights, bf16, shape $SHAPE, default llama-3-8b):
#   * batch-1 decode tok/s, and its fraction of the memory roofline: bytes read per token
#     (weights + the KV cache of the context) over the step time, against the
#     device-to-device copy bandwidth measured in the same run;
#   * $CONC concurrent requests of $IN prompt / $OUT new tokens through `wick serve` and
#     `wick benchmark`, next to transformers `generate` on the same GPU and shape
#     ($PEER_PYTHON, default /opt/torch/.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--pack" ]]; then
    out="${2:?usage: scripts/gpu-check.sh --pack DIR}"
    target="${CARGO_TARGET_DIR:-target/cuda}/release"
    mkdir -p "$out"
    cp "$target/wick" "$out/wick"
    test_bin="$(ls -t "$target"/deps/cuda_kernels-* 2>/dev/null | grep -v '\.d$' | head -n 1)"
    [[ -n "$test_bin" ]] || { echo "no cuda_kernels test binary under $target/deps (cargo test --no-run first)" >&2; exit 1; }
    cp "$test_bin" "$out/cuda_kernels"
    strip "$out/wick" "$out/cuda_kernels" 2>/dev/null || true
    ls -la "$out"
    exit 0
fi

dir="${1:?usage: scripts/gpu-check.sh DIR [kernels|e2e|bench|all]}"
what="${2:-all}"
SHAPE="${SHAPE:-llama-3-8b}"
CONC="${CONC:-64}"
IN="${IN:-512}"
OUT="${OUT:-256}"
PEER_PYTHON="${PEER_PYTHON:-/opt/torch/.venv/bin/python}"
PORT="${PORT:-3917}"
for lib in "${CUDA_LIBS:-}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -n "$lib" && -d "$lib" ]] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
chmod +x "$dir/wick" "$dir/cuda_kernels" 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for bin in "$dir/wick" "$dir/cuda_kernels"; do
    [[ -f "$bin" ]] || continue
    echo "== shared libraries of $bin"
    ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|not found" || true
    if ldd "$bin" | grep -q "not found"; then
        echo "missing shared libraries: set CUDA_LIBS to a directory with the CUDA 13 libraries" >&2
        exit 1
    fi
done

run_kernels() {
    echo "== kernel correctness (GPU vs f64 and CPU references)"
    WICK_REQUIRE_GPU=1 "$dir/cuda_kernels" --test-threads=1 --nocapture
}

run_e2e() {
    if [[ ! -f "$dir/model.gguf" ]]; then
        echo "== end-to-end: skipped (no $dir/model.gguf)"
        return 0
    fi
    echo "== end-to-end: greedy tokens, GPU vs CPU, default model"
    local same=0 total=0
    while IFS= read -r prompt; do
        cpu="$("$dir/wick" generate --model-id "$dir/model.gguf" --device cpu --max-new-tokens 48 --prompt "$prompt")"
        gpu="$("$dir/wick" generate --model-id "$dir/model.gguf" --device cuda --max-new-tokens 48 --prompt "$prompt")"
        total=$((total + 1))
        if [[ "$cpu" == "$gpu" ]]; then
            same=$((same + 1))
        else
            printf 'differs for %q\n  cpu: %q\n  gpu: %q\n' "$prompt" "$cpu" "$gpu"
        fi
    done <<'EOF'
The capital of France is
def fibonacci(n):
Once upon a time, in a small village,
The three primary colors are
Water boils at a temperature of
EOF
    echo "identical greedy continuations: $same of $total"
}

run_bench() {
    echo "== peer: copy bandwidth and transformers generate ($SHAPE, $CONC x $IN/$OUT)"
    peer="$("$PEER_PYTHON" scripts/hf_generate_bench.py --shape "$SHAPE" --batch "$CONC" \
        --input-len "$IN" --output-len "$OUT")"
    echo "$peer"
    echo "== wick: batch-1 decode ($SHAPE, bf16, random weights)"
    one="$("$dir/wick" bench --model-id "random:$SHAPE" --device cuda --prompt-tokens 128 \
        --decode-tokens 256 --repeats 3 --json)"
    echo "$one"
    echo "== wick: $CONC concurrent, $IN prompt / $OUT new tokens"
    "$dir/wick" serve --model-id "random:$SHAPE" --device cuda --port "$PORT" \
        --max-batch-prefill-tokens 8192 --max-concurrent-requests 256 --max-batch-size 256 \
        >"$dir/serve.log" 2>&1 &
    local pid=$!
    trap 'kill $pid 2>/dev/null || true' RETURN
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        kill -0 $pid 2>/dev/null || { cat "$dir/serve.log"; return 1; }
        sleep 1
    done
    "$dir/wick" benchmark --url "http://127.0.0.1:$PORT" --api tgi --concurrency "$CONC" \
        --num-prompts $((CONC * 2)) --input-len "$IN" --output-len "$OUT" --quiet \
        --label wick --json-out "$dir/wick-serving.json"
    PEER="$peer" ONE="$one" SERVING="$dir/wick-serving.json" IN="$IN" SHAPE="$SHAPE" python3 - <<'EOF'
import json, os
peer = json.loads(os.environ["PEER"])
one = json.loads(os.environ["ONE"])
serving = json.load(open(os.environ["SERVING"]))
level = serving["levels"][0] if "levels" in serving else serving
bw = peer["copy_bandwidth_bytes_per_s"]
weights = peer["weight_bytes"]
# KV bytes read per decode token at the mean context of the batch-1 run (bf16 K and V).
shapes = {"llama-3-8b": (32, 8, 128), "llama-3.2-1b": (16, 8, 64), "qwen2-0.5b": (24, 2, 64)}
layers, kv_heads, head_dim = shapes[os.environ["SHAPE"]]
ctx = one["prompt_tokens"] + one["decode_tokens"] / 2
kv = 2 * layers * kv_heads * head_dim * 2 * ctx
roof = bw / (weights + kv)
print(f"batch-1 decode: {one['decode_tok_s']:.1f} tok/s; roofline {roof:.1f} tok/s "
      f"({(weights + kv) / 1e9:.2f} GB per token at {bw / 1e12:.2f} TB/s copy bandwidth): "
      f"{100 * one['decode_tok_s'] / roof:.1f} %")
print(json.dumps({"wick_serving": level}, indent=1)[:4000])
if "output_tok_s" in peer:
    w = level.get("output_throughput") or level.get("output_tok_s")
    print(f"serving: wick {w} output tok/s vs transformers {peer['output_tok_s']:.1f} "
          f"(ratio {w / peer['output_tok_s']:.2f}); transformers TTFT {peer['ttft_s']:.2f} s, "
          f"TPOT {1000 * peer['tpot_s']:.1f} ms")
EOF
}

case "$what" in
    kernels) run_kernels ;;
    e2e) run_e2e ;;
    bench) run_bench ;;
    all) run_kernels; run_e2e; run_bench ;;
    *) echo "unknown step '$what': kernels, e2e, bench or all" >&2; exit 2 ;;
esac
