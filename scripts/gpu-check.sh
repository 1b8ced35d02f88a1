#!/usr/bin/env bash
# The first GPU run of wick's CUDA path, in one call: correctness checks, then benchmarks,
# then one report (gpu-report.md and gpu-report.json). For a GPU machine with the NVIDIA
# driver, python3, and PyTorch + transformers (for the peer benchmark) but no cargo and no
# network: the binaries are built elsewhere and travel in one bundle.
#
# Build (any machine, GPU or not; see README "CUDA"):
#   eval "$(scripts/cuda-toolkit.sh --env)"
#   export RUSTFLAGS="-C target-cpu=x86-64-v3"   # binaries that travel: not target-cpu=native
#   cargo build --release --features cuda --target-dir target/cuda
#   cargo test --release --features cuda --target-dir target/cuda --test cuda_kernels --no-run
#   scripts/gpu-check.sh --pack target/gpu-bundle
# --pack writes DIR/gpu-bundle.tar.xz (the stripped `wick` and `cuda_kernels` test binary,
# ~61 MiB each, mostly candle's PTX, which xz shrinks about sevenfold (a stripped cuda
# debug build of wick: 66 MiB to 9.7 MiB); plus tiny.gguf from
# scripts/make_tiny_gguf.py and the commit) and its sha256: about 10-20 MiB in all, one
# transfer under 64 MiB. Then on the GPU machine, from the repository root:
#   scripts/gpu-check.sh target/gpu-bundle [STEP ...]
# The report goes to $OUT when it is set (as on the lent GPU machines), else to DIR; each
# step's log goes beside it in gpu-check-logs/. Exit status: 0 when every check passed,
# 1 otherwise. A step that fails does not stop the later ones.
#
# Steps (all by default, in this order), with a time model for an H100 (80 GB, ~3 TB/s):
#   gpu        nvidia-smi: name, driver, memory                                       ~2 s
#   start      the binaries start (shared libraries found, `wick --version`)          ~2 s
#   bandwidth  device-to-device copy bandwidth through torch (the roofline)         ~15 s
#   kernels    cuda_kernels: wick's kernels vs f64 and CPU references              ~60-120 s
#   prefill    prefill attention (the tensor-core kernel) for one 2k, 8k and 32k-token
#              prompt at the llama-3-8b shape (cuda_kernels prefill_attention_timing),
#              beside PyTorch's scaled_dot_product_attention (FlashAttention backend)
#              on the same shapes                                                    ~20-30 s
#   forward    cuda_kernels: the whole GPU forward vs the CPU forward on the same
#              random weights (f32 weights + f16 cache; bf16 weights + cache),
#              relative L2 logit error within the test's tolerances; then a small
#              model of each family (mistral, phi3, gemma2, gemma3, mixtral,
#              qwen3_moe) the same way                                               ~30-60 s
#   greedy     tiny.gguf served on the CPU and on the GPU, 6 prompts (one of 1,200
#              tokens, prefill in chunks of 256), 48 greedy tokens each: the same
#              tokens, or parting only at a near tie of the CPU's logits             ~20 s
#   decode1    `wick bench`, random:llama-3-8b bf16 (16 GB made on the device by
#              the GPU's generator, a few seconds), 256 decode steps x 3 runs         ~30 s
#   serving    `wick serve` random:llama-3-8b + `wick benchmark`: 64 concurrent
#              requests of 512 prompt / 256 output tokens (one wave: prefill ~33k
#              tokens, then 256 steps at batch 64), then one request at a time with
#              2k, 8k and 32k-token prompts (TTFT; 3, 3 and 2 requests)             ~60-90 s
#   peer       transformers generate on the same 64 prompts: model init in bf16 on
#              the GPU (~10 s), import (~10 s), warm-up, a 1-token generate (TTFT),
#              and a 256-token generate (~10-20 s at ~50 ms per step)               ~45-60 s
#   nsys       `nsys profile` of a short `wick bench` (2 x 64 decode steps) and the
#              per-step split into kernel time and gaps (launch overhead)          ~40-60 s
# About 7 minutes in all (the middle estimates; each random:llama-3-8b load, ~10-15 s
# with CUDA start-up, is counted in its step). Each step has its own timeout, cut to what
# the global budget BUDGET_S (default 510 s) leaves; a step that does not start for lack
# of time fails. Give the call that runs it 600 s.
#
# Settings: SHAPE (random shape for the benchmarks, default llama-3-8b), BUDGET_S,
# PEER_PYTHON (default /opt/torch/.venv/bin/python), PYTHON (python3 for the helpers),
# CUDA_LIBS (a directory with the CUDA 13 libraries, when /usr/local/cuda lacks them),
# GC_PORT (default 3917), NSYS (path of nsys), REPORT_DIR, WORK (scratch directory).
# shellcheck disable=SC2317  # the step_* functions are called by name ("step_$2")
set -uo pipefail
CALLER_PWD="$PWD"
cd "$(dirname "$0")/.." || exit 2
SELF="$PWD/scripts/gpu-check.sh"

abspath() {  # paths given on the command line are relative to where it was run
    if [[ "$1" == /* ]]; then echo "$1"; else echo "$CALLER_PWD/$1"; fi
}

pack() {
    local out="$1"
    local target="${CARGO_TARGET_DIR:-target/cuda}/release"
    local stage test_bin
    stage="$(mktemp -d)"
    mkdir -p "$out"
    cp "$target/wick" "$stage/wick" || { echo "no $target/wick (cargo build --release --features cuda first)" >&2; return 1; }
    # shellcheck disable=SC2010  # the newest test binary; names are cargo's, no odd characters
    test_bin="$(ls -t "$target"/deps/cuda_kernels-* 2>/dev/null | grep -v '\.d$' | head -n 1)"
    [[ -n "$test_bin" ]] || { echo "no cuda_kernels test binary under $target/deps (cargo test --no-run first)" >&2; return 1; }
    cp "$test_bin" "$stage/cuda_kernels"
    strip "$stage/wick" "$stage/cuda_kernels"
    python3 scripts/make_tiny_gguf.py "$stage/tiny.gguf"
    { git rev-parse HEAD; git status --porcelain | grep -q . && echo "(with uncommitted changes)"; } \
        | paste -sd ' ' >"$stage/COMMIT"
    echo "compressing (xz -9, about a minute) ..."
    tar -C "$stage" -cf - wick cuda_kernels tiny.gguf COMMIT | xz -9 -T1 >"$out/gpu-bundle.tar.xz"
    (cd "$out" && sha256sum gpu-bundle.tar.xz >gpu-bundle.sha256)
    rm -rf "$stage"
    local size
    size=$(stat -c %s "$out/gpu-bundle.tar.xz")
    ls -la "$out"
    if (( size > 60 * 1024 * 1024 )); then
        echo "the bundle is $((size >> 20)) MiB: over 60 MiB, it will not travel in one 64 MiB transfer" >&2
        return 1
    fi
}

if [[ "${1:-}" == "--pack" ]]; then
    pack "$(abspath "${2:?usage: scripts/gpu-check.sh --pack DIR}")"
    exit
fi

# ---------------------------------------------------------------------------------------
# The steps. Each runs as `gpu-check.sh --step NAME` under `timeout`, which signals the
# whole process group, so a server or benchmark a step started ends with it. Exit status:
# 0 pass, 3 not applicable (skip), anything else fail. A step may write $W/NAME.detail,
# one line for the report.

step_gpu() {
    nvidia-smi || return 1
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader >"$W/gpu.csv" \
        || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$W/gpu.csv" \
        || return 1
    head -n 1 "$W/gpu.csv" >"$W/gpu.detail"
}

step_start() {
    local bin fail=0
    : >"$W/start.detail"
    for bin in "$B/wick" "$B/cuda_kernels"; do
        [[ -x "$bin" ]] || { echo "missing: $bin" | tee -a "$W/start.detail"; fail=1; continue; }
        ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|not found" || true
        if ldd "$bin" | grep -q "not found"; then
            echo "$(basename "$bin"): missing shared libraries (set CUDA_LIBS to a directory with the CUDA 13 libraries)" \
                | tee -a "$W/start.detail"
            fail=1
        fi
    done
    "$B/wick" --version || { echo "wick does not start" | tee -a "$W/start.detail"; fail=1; }
    "$B/cuda_kernels" --list >/dev/null || { echo "cuda_kernels does not start" | tee -a "$W/start.detail"; fail=1; }
    (( fail == 0 )) && echo "wick and cuda_kernels start" >"$W/start.detail"
    return "$fail"
}

step_bandwidth() {
    "$PEER_PYTHON" scripts/hf_generate_bench.py --bandwidth-only >"$W/bandwidth.json" || return 1
    cat "$W/bandwidth.json"
    "$PY" -c 'import json,sys; print("%.2f TB/s" % (json.load(open(sys.argv[1]))["copy_bandwidth_bytes_per_s"] / 1e12))' \
        "$W/bandwidth.json" >"$W/bandwidth.detail"
}

# libtest exits 0 when a filter matches no test: demand that tests ran and passed. The
# detail line: libtest's summary and the names of failed tests.
test_summary() {  # output detail
    { grep -E "^test result:" "$1" | tail -n 1
      grep -E "^test .* FAILED$" "$1" | sed 's/^test //; s/ \.\.\. FAILED$//' | paste -sd ' '
    } | paste -sd ' ' >"$2"
    grep -qE "^test result: ok\. [1-9][0-9]* passed; 0 failed" "$1"
}

step_kernels() {
    WICK_REQUIRE_GPU=1 "$B/cuda_kernels" --test-threads=1 --nocapture \
        --skip gpu_forward_matches_the_cpu_forward --skip prefill_attention_timing 2>&1 \
        | tee "$W/kernels.out"
    local rc=${PIPESTATUS[0]}
    test_summary "$W/kernels.out" "$W/kernels.detail" || rc=1
    return "$rc"
}

step_prefill() {
    WICK_REQUIRE_GPU=1 WICK_PREFILL_TIMES="$W/prefill-wick.jsonl" "$B/cuda_kernels" \
        --exact prefill_attention_timing --nocapture 2>&1 | tee "$W/prefill.out"
    local rc=${PIPESTATUS[0]}
    test_summary "$W/prefill.out" "$W/prefill.detail" || rc=1
    "$PEER_PYTHON" scripts/gpu_check.py sdpa "$W/prefill-sdpa.jsonl" || rc=1
    # The detail line: wick's time over SDPA's per prompt length.
    "$PY" - "$W" >>"$W/prefill.detail" <<'PY' || rc=1
import json, os, sys
rows = {}
for name in ("wick", "sdpa"):
    with open(os.path.join(sys.argv[1], f"prefill-{name}.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.setdefault(r["tokens"], {})[name] = r["ms"]
print("; ".join(f"{n}: wick {v['wick']:.2f} ms, SDPA {v['sdpa']:.2f} ms"
                for n, v in sorted(rows.items()) if len(v) == 2))
PY
    return "$rc"
}

step_forward() {
    # Both tests whose names start so: the two random shapes, and a small model of every
    # family (windows, soft-capping, two rope bases, partial rope, experts).
    WICK_REQUIRE_GPU=1 "$B/cuda_kernels" gpu_forward_matches_the_cpu_forward --nocapture \
        2>&1 | tee "$W/forward.out"
    local rc=${PIPESTATUS[0]}
    test_summary "$W/forward.out" "$W/forward.detail" || rc=1
    # The test's own lines: worst relative L2 logit error and argmax agreement per model,
    # or the assertion that failed.
    grep -E "^ok .*worst relative|GPU logits differ|panicked" "$W/forward.out" \
        | paste -sd ';' >>"$W/forward.detail"
    return "$rc"
}

# Greedy tokens GPU vs CPU on tiny.gguf (f32 compute and an f16 KV cache on both devices,
# so the tokens should be the same; see scripts/make_tiny_gguf.py), through a server on
# each device; gpu_check.py greedy says what passes.
step_greedy() {
    local cpu_port=$((GC_PORT + 1)) gpu_port=$((GC_PORT + 2)) dev port pids=() rc
    for dev in cpu cuda; do
        port=$cpu_port; [[ $dev == cuda ]] && port=$gpu_port
        "$B/wick" serve --model-id "$B/tiny.gguf" --device "$dev" --hostname 127.0.0.1 --port "$port" \
            --max-batch-prefill-tokens 256 --cuda-memory-fraction 0.2 >"$W/greedy-serve-$dev.log" 2>&1 &
        pids+=($!)
        echo "$!" >>"$W/serve.pid"
    done
    SERVE_PIDS="${pids[*]}"
    # shellcheck disable=SC2086  # the pids, split
    trap 'kill $SERVE_PIDS 2>/dev/null' EXIT
    wait_healthy "http://127.0.0.1:$cpu_port" "${pids[0]}" "$W/greedy-serve-cpu.log" || return 1
    wait_healthy "http://127.0.0.1:$gpu_port" "${pids[1]}" "$W/greedy-serve-cuda.log" || return 1
    "$PY" scripts/gpu_check.py greedy "http://127.0.0.1:$cpu_port" "http://127.0.0.1:$gpu_port" "$W/greedy.json"
    rc=$?
    "$PY" -c '
import json, sys
g = json.load(open(sys.argv[1]))
errors = [p["error"] for p in g["prompts"] if p.get("error")]
print("%d of %d greedy texts identical, %d near ties" % (g["identical"], g["total"], g["near_ties"]),
      ("; " + errors[0][:200]) if errors else "")' "$W/greedy.json" >"$W/greedy.detail" 2>/dev/null
    return "$rc"
}

step_decode1() {
    "$B/wick" bench --model-id "random:$SHAPE" --device cuda --prompt-tokens 512 \
        --decode-tokens 256 --repeats 2 --json | tee "$W/decode1.json"
    local rc=${PIPESTATUS[0]}
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.1f tok/s at batch 1" % d["decode_tok_s"])' \
        "$W/decode1.json" >"$W/decode1.detail" 2>/dev/null
    return "$rc"
}

# `wick benchmark` exits 0 even when requests fail: check the JSON.
all_completed() {
    "$PY" -c '
import json, sys
lv = json.load(open(sys.argv[1]))["levels"][0]
print("%s: %d of %d completed, %.0f output tok/s, TTFT p50 %.0f ms" % (sys.argv[2],
      lv["completed"], lv["num_prompts"], lv["output_throughput"], lv["ttft_ms"]["p50"]))
sys.exit(0 if lv["completed"] == lv["num_prompts"] and lv["failed"] == 0 else 1)' "$@"
}

healthy() {  # curl where there is one, else python
    if command -v curl >/dev/null; then
        curl -sf "$1/health" >/dev/null 2>&1
    else
        "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1/health" >/dev/null 2>&1
    fi
}

wait_healthy() {  # url pid log: up to 120 s for the server to answer 200 on /health
    for _ in $(seq 1 240); do
        healthy "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "the server exited:"; tail -n 30 "$3"; return 1; }
        sleep 0.5
    done
    echo "the server is not healthy after 120 s"; tail -n 30 "$3"
    return 1
}

step_serving() {
    local url="http://127.0.0.1:$GC_PORT" fail=0 n count
    "$B/wick" serve --model-id "random:$SHAPE" --device cuda --hostname 127.0.0.1 --port "$GC_PORT" \
        --max-batch-prefill-tokens 8192 --max-concurrent-requests 256 --max-batch-size 256 \
        --max-input-tokens 32800 --max-total-tokens 33024 >"$W/serve.log" 2>&1 &
    SERVE_PID=$!
    echo "$SERVE_PID" >>"$W/serve.pid"
    trap 'kill "$SERVE_PID" 2>/dev/null' EXIT
    wait_healthy "$url" "$SERVE_PID" "$W/serve.log" || return 1
    echo "== 64 concurrent, 512 prompt / 256 output tokens"
    # No warm-up request: the server warms up before /health says 200, and a warm-up
    # prompt from the file would sit in the prefix cache for its measured twin.
    "$B/wick" benchmark --url "$url" --api tgi --concurrency 64 --num-prompts 64 \
        --prompts-file "$W/prompts/serving-512.txt" --output-len 256 --warmup 0 --quiet --timeout 180 \
        --label wick --json-out "$W/wick-serving.json" || fail=1
    all_completed "$W/wick-serving.json" "64 x 512/256" | tee "$W/serving.detail" || fail=1
    for n in 2048 8192 32768; do
        echo "== TTFT, $n-token prompts, one request at a time"
        count=$(wc -l <"$W/prompts/ttft-$n.txt")
        "$B/wick" benchmark --url "$url" --api tgi --concurrency 1 --num-prompts "$count" \
            --prompts-file "$W/prompts/ttft-$n.txt" --output-len 1 --warmup 0 --quiet --timeout 60 \
            --label "wick-ttft-$n" --json-out "$W/ttft-$n.json" || fail=1
        all_completed "$W/ttft-$n.json" "TTFT $n" | tee -a "$W/serving.detail" || fail=1
    done
    paste -sd ';' "$W/serving.detail" >"$W/serving.detail.tmp" && mv "$W/serving.detail.tmp" "$W/serving.detail"
    return "$fail"
}

step_peer() {
    "$PEER_PYTHON" scripts/hf_generate_bench.py --shape "$SHAPE" \
        --prompts "$W/prompts/serving-512.txt" --output-len 256 >"$W/peer.json" || return 1
    cat "$W/peer.json"
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("transformers %s: %.0f output tok/s" % (d.get("transformers"), d["output_tok_s"]))' \
        "$W/peer.json" >"$W/peer.detail"
}

find_nsys() {
    local c
    for c in "${NSYS:-}" "$(command -v nsys 2>/dev/null)" /usr/local/cuda/bin/nsys \
        /usr/local/cuda/nsight-systems-*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys; do
        [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
    done
    return 1
}

step_nsys() {
    local nsys steps=64
    nsys="$(find_nsys)" || { echo "nsys not found: no kernel/launch split" >"$W/nsys.detail"; return 3; }
    "$nsys" --version
    "$nsys" profile --trace=cuda --sample=none --cpuctxsw=none --force-overwrite=true \
        -o "$W/decode" "$B/wick" bench --model-id "random:$SHAPE" --device cuda \
        --prompt-tokens 16 --decode-tokens "$steps" --repeats 1 --json || return 1
    local csv="" rep="$W/decode.nsys-rep"
    [[ -f "$rep" ]] || rep="$W/decode.qdrep"  # older nsys
    for report in cuda_gpu_trace gputrace; do
        "$nsys" stats --report "$report" --format csv --force-export=true \
            --output "$W/decode" "$rep" >/dev/null || continue
        [[ -f "$W/decode_$report.csv" ]] && { csv="$W/decode_$report.csv"; break; }
    done
    [[ -n "$csv" ]] || { echo "nsys stats wrote no GPU trace" >"$W/nsys.detail"; return 1; }
    "$PY" scripts/gpu_check.py nsys-split "$csv" "$steps" | tee "$W/nsys-split.json"
    local rc=${PIPESTATUS[0]}
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("error") or "%.3f ms per step: %.3f ms kernels" % (d["step_ms_median"], d["kernel_ms_median"]))' \
        "$W/nsys-split.json" >"$W/nsys.detail" 2>/dev/null
    return "$rc"
}

if [[ "${1:-}" == "--step" ]]; then
    "step_$2"
    exit
fi

# ---------------------------------------------------------------------------------------
# The run: unpack, run every step, collect statuses, write the report.

dir="$(abspath "${1:?usage: scripts/gpu-check.sh DIR [STEP ...]   or   scripts/gpu-check.sh --pack DIR}")"
shift
ALL_STEPS=(gpu start bandwidth kernels prefill forward greedy decode1 serving peer nsys)
STEPS=("$@")
(( ${#STEPS[@]} )) || STEPS=("${ALL_STEPS[@]}")
declare -A TIMEOUT=([gpu]=30 [start]=30 [bandwidth]=60 [kernels]=180 [prefill]=90 [forward]=150 [greedy]=120
    [decode1]=120 [serving]=240 [peer]=180 [nsys]=150)
for s in "${STEPS[@]}"; do
    [[ -n "${TIMEOUT[$s]:-}" ]] || { echo "unknown step '$s': ${ALL_STEPS[*]}" >&2; exit 2; }
done

export SHAPE="${SHAPE:-llama-3-8b}"
export PEER_PYTHON="${PEER_PYTHON:-/opt/torch/.venv/bin/python}"
PY="${PYTHON:-$(command -v python3 || echo "$PEER_PYTHON")}"
export PY
export GC_PORT="${GC_PORT:-3917}"
BUDGET_S="${BUDGET_S:-510}"
W="$(abspath "${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/wick-gpu-check.XXXXXX")}")"
export W
REPORT_DIR="$(abspath "${REPORT_DIR:-${OUT:-$dir}}")"
mkdir -p "$W" "$REPORT_DIR/gpu-check-logs"
: >"$W/steps.jsonl"
echo "$SHAPE" >"$W/shape"
# The driver compiles candle's PTX for the GPU on first use; a cache large enough for all of
# it, in a place that is writable, lets every later process of the run skip that.
export CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-$W/cuda-cache}" CUDA_CACHE_MAXSIZE="${CUDA_CACHE_MAXSIZE:-4294967296}"
for lib in "${CUDA_LIBS:-}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -n "$lib" && -d "$lib" ]] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

record() {  # name status seconds detail
    "$PY" -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "status": sys.argv[2], "seconds": int(sys.argv[3]), "detail": sys.argv[4]}))' \
        "$1" "$2" "$3" "$4" >>"$W/steps.jsonl"
    printf '== %-9s %-4s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

unxz_to() {  # xz where there is one, else python's lzma
    if command -v xz >/dev/null; then
        xz -dc "$1"
    else
        "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
    fi
}

# Unpack the bundle (or use DIR as it is, holding wick, cuda_kernels and tiny.gguf).
t0=$SECONDS
if [[ -f "$dir/gpu-bundle.tar.xz" ]]; then
    export B="$W/bin"
    mkdir -p "$B"
    if { [[ ! -f "$dir/gpu-bundle.sha256" ]] || (cd "$dir" && sha256sum -c --quiet gpu-bundle.sha256); } \
        && unxz_to "$dir/gpu-bundle.tar.xz" | tar -xf - -C "$B"; then
        record bundle pass $((SECONDS - t0)) "unpacked: $(cat "$B/COMMIT" 2>/dev/null)"
    else
        record bundle fail $((SECONDS - t0)) "$dir/gpu-bundle.tar.xz is damaged or incomplete"
    fi
else
    export B="$dir"
fi
if [[ ! -f "$B/tiny.gguf" && -d "$B" ]]; then
    "$PY" scripts/make_tiny_gguf.py "$B/tiny.gguf" || true
fi
chmod +x "$B/wick" "$B/cuda_kernels" 2>/dev/null
"$PY" scripts/gpu_check.py prompts "$W/prompts" || record prompts fail 0 "could not write the prompt files"

start=$SECONDS
failed=0
for s in "${STEPS[@]}"; do
    left=$((BUDGET_S - (SECONDS - start) - 10))
    if (( left < 20 )); then
        record "$s" fail 0 "not run: the ${BUDGET_S} s budget (BUDGET_S) was spent"
        failed=1
        continue
    fi
    limit=${TIMEOUT[$s]}
    (( limit > left )) && limit=$left
    echo "== $s (at most ${limit} s)"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" bash "$SELF" --step "$s" >"$W/$s.log" 2>&1
    rc=$?
    tail -n 15 "$W/$s.log" | sed 's/^/   /'
    # The server of the serving step must be gone (and its GPU memory free) before the
    # next step: TERM, up to 20 s to exit, then KILL.
    if [[ -f "$W/serve.pid" ]]; then
        while read -r pid; do
            kill "$pid" 2>/dev/null
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null
        done <"$W/serve.pid"
        rm -f "$W/serve.pid"
    fi
    detail="$(head -c 400 "$W/$s.detail" 2>/dev/null | tr '\n' ' ')"
    case $rc in
        0) record "$s" pass $((SECONDS - t0)) "$detail" ;;
        3) record "$s" skip $((SECONDS - t0)) "$detail" ;;
        124) record "$s" fail $((SECONDS - t0)) "timed out after ${limit} s. $detail"; failed=1 ;;
        137) if (( SECONDS - t0 >= limit )); then why="timed out after ${limit} s"; else why="killed (out of memory?)"; fi
             record "$s" fail $((SECONDS - t0)) "$why. $detail"; failed=1 ;;
        *) record "$s" fail $((SECONDS - t0)) "exit status $rc. $detail"; failed=1 ;;
    esac
done
grep -q '"status": "fail"' "$W/steps.jsonl" && failed=1

cp "$W"/*.log "$W"/*.json "$W/steps.jsonl" "$REPORT_DIR/gpu-check-logs/" 2>/dev/null
"$PY" scripts/gpu_check.py report "$W" "$REPORT_DIR" || failed=1
echo
cat "$REPORT_DIR/gpu-report.md" 2>/dev/null
echo "report: $REPORT_DIR/gpu-report.md, $REPORT_DIR/gpu-report.json; total $((SECONDS)) s"
exit "$failed"
