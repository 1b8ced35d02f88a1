#!/usr/bin/env bash
# What the HTTP server and SSE streaming cost per generated token, at a given concurrency.
#
# Starts `wick serve` (the default model) on a loopback port, runs `wick benchmark` against
# it (closed loop, streaming), and meanwhile samples the CPU time (utime + stime from
# /proc/PID/task/TID/stat) of every server thread, grouped by thread name:
#     wick-http     the tokio runtime (hyper, axum, JSON and SSE encoding of each token)
#     wick-engine   the engine loop (scheduling, sampling, detokenization, and its share of
#                   the CPU kernels: it is the first thread of the kernel pool)
#                   (threads it starts without a name, such as a rayon pool, inherit
#                   its name and are counted with it)
#     wick-cpu-N    the CPU kernel pool's other threads
#     candle-bp-N   candle's own CPU thread pool
#     other         anything else (the main thread, which mostly waits for the server)
# plus the load generator's own CPU time (it runs on the same machine and competes too).
#
# Reported per API, not asserted:
#   - HTTP CPU per output token (the wick-http threads' CPU seconds / output tokens the
#     server generated in the window)
#   - TPOT p50 from the load generator
#   - HTTP share of the server's CPU: on a machine whose cores the engine keeps busy, every
#     CPU second the HTTP threads use is taken from the engine, so this is the throughput
#     the HTTP layer costs. It equals (HTTP CPU per token) / (server CPU per token); the
#     server's CPU per token is TPOT x busy cores / tokens produced per TPOT interval.
#   - HTTP CPU per token / TPOT p50, the issue's literal ratio. TPOT is one stream's wait
#     per token, during which the server produces a token for every running stream, so
#     this ratio understates the cost by about the batch size; it is printed for reference.
# The kernel pool's threads spin and yield between operations, so engine and pool CPU
# include some waiting: the HTTP share is of the CPU the process actually took.
#
# Builds nothing: run `cargo build --release` first.
#
# Usage (from the repository root):
#     scripts/http_overhead.sh
#
# Environment overrides:
#     API=tgi,openai         APIs to measure, one benchmark run each, same server
#     CONCURRENCY=64 NUM_PROMPTS=128 INPUT_LEN=128 OUTPUT_LEN=128 SEED=0
#     THREADS=$(nproc)       wick serve --threads
#     PORT=18090
#     SAMPLE_INTERVAL=0.5    seconds between /proc samples (reported per thread)
#     MODEL=path.gguf        instead of `wick model-path`
#     WICK=path              wick binary (default target/release/wick)
#     OUT_DIR=dir            where the JSON reports, the server log and the per-thread CPU
#                            samples go (default: a new temporary directory)
#     WICK_EXTRA_ARGS=...    extra flags for `wick serve`
set -euo pipefail

API="${API:-tgi,openai}"
CONCURRENCY="${CONCURRENCY:-64}"
NUM_PROMPTS="${NUM_PROMPTS:-128}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
SEED="${SEED:-0}"
THREADS="${THREADS:-$(nproc)}"
PORT="${PORT:-18090}"
SAMPLE_INTERVAL="${SAMPLE_INTERVAL:-0.5}"
PYTHON="${PYTHON:-python3}"
HOST=127.0.0.1

if [[ ! -f Cargo.toml || ! -d scripts ]]; then
    echo "run this from the repository root" >&2
    exit 1
fi
[[ -x "${WICK:-target/release/wick}" ]] || {
    echo "${WICK:-target/release/wick} not found: run 'cargo build --release' first" >&2
    exit 1
}
SKIP_BUILD=1
# shellcheck source=scripts/bench_common.sh
source "$(dirname "$0")/bench_common.sh"
OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"

trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

echo ">> wick serve on $HOST:$PORT (model $MODEL, $THREADS threads), out: $OUT_DIR" >&2
# shellcheck disable=SC2086
"$WICK" serve --model-id "$MODEL" --hostname "$HOST" --port "$PORT" --threads "$THREADS" \
    --max-concurrent-requests "$((CONCURRENCY * 2))" ${WICK_EXTRA_ARGS:-} \
    >"$OUT_DIR/wick.log" 2>&1 &
SERVER_PID=$!
wait_http "http://$HOST:$PORT/health" "$SERVER_PID" "wick serve" "$OUT_DIR/wick.log"

CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
for api in ${API//,/ }; do
    case "$api" in openai|tgi) ;; *) echo "API must list openai and/or tgi" >&2; exit 1 ;; esac
    echo ">> $api: concurrency $CONCURRENCY, $NUM_PROMPTS requests, $INPUT_LEN in, $OUTPUT_LEN out" >&2
    SERVER_PID="$SERVER_PID" URL="http://$HOST:$PORT" INTERVAL="$SAMPLE_INTERVAL" \
        OUT="$OUT_DIR/$api" CPU="$CPU" CORES="$(nproc)" THREADS="$THREADS" \
        "$PYTHON" - "$WICK" benchmark --url "http://$HOST:$PORT" --api "$api" \
        --concurrency "$CONCURRENCY" --num-prompts "$NUM_PROMPTS" --input-len "$INPUT_LEN" \
        --output-len "$OUTPUT_LEN" --seed "$SEED" --warmup 0 --tokenizer "$MODEL" \
        --label "wick-$api" --quiet --json-out "$OUT_DIR/$api.json" <<'EOF'
import json, os, re, subprocess, sys, time, urllib.request

pid = int(os.environ["SERVER_PID"])
url = os.environ["URL"]
out = os.environ["OUT"]
interval = float(os.environ["INTERVAL"])
tick = os.sysconf("SC_CLK_TCK")


def cpu_of(stat_path):
    """(name, utime + stime in seconds) from a /proc stat file."""
    with open(stat_path) as f:
        s = f.read()
    name = s[s.index("(") + 1 : s.rindex(")")]
    rest = s[s.rindex(")") + 2 :].split()
    return name, (int(rest[11]) + int(rest[12])) / tick


def threads():
    """{tid: (name, cpu seconds)} for every live thread of the server."""
    res = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            res[int(tid)] = cpu_of(f"/proc/{pid}/task/{tid}/stat")
        except (OSError, ValueError, IndexError):
            pass  # the thread exited between listdir and open
    return res


def group(name):
    if name == "wick-http":  # exactly: the main thread takes the binary's file name
        return "http"
    if name == "wick-engine":
        return "engine"
    if name.startswith("wick-cpu"):
        return "kernel pool"
    if name.startswith("candle"):
        return "candle"
    return "other"


def generated_tokens():
    """The server's own count of generated tokens (its /metrics), or None."""
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    m = re.search(r"^tgi_request_generated_tokens_sum(?:\{[^}]*\})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


tokens0 = generated_tokens()
before = threads()
_, proc0 = cpu_of(f"/proc/{pid}/stat")
t0 = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=sys.stderr)
last = dict(before)
samples = []
next_sample = t0 + interval
while True:
    done, status, usage = os.wait4(child.pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() >= next_sample:
        next_sample += interval
        now = threads()
        last.update(now)
        samples.append({"t": round(time.monotonic() - t0, 3),
                        "threads": {str(k): list(v) for k, v in now.items()}})
    time.sleep(0.02)
wall = time.monotonic() - t0
after = threads()
last.update(after)
_, proc1 = cpu_of(f"/proc/{pid}/stat")
tokens1 = generated_tokens()
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"wick benchmark failed ({os.waitstatus_to_exitcode(status)})")

per_thread = {}
for tid, (name, cpu) in last.items():
    d = cpu - before.get(tid, (name, 0.0))[1]
    per_thread[tid] = (name, d)
groups, counts = {}, {}
for name, d in per_thread.values():
    g = group(name)
    groups[g] = groups.get(g, 0.0) + d
    counts[g] = counts.get(g, 0) + 1
server_cpu = proc1 - proc0
# The process total less the threads' sum: time of threads that exited after their last
# sample, and the kernel's rounding of each thread's ticks.
groups["rest of the process total"] = server_cpu - sum(groups.values())
loadgen_cpu = usage.ru_utime + usage.ru_stime

report = json.load(open(f"{out}.json"))
level = report["levels"][0]
client_tokens = level["total_output_tokens"]
tokens = tokens1 - tokens0 if tokens0 is not None and tokens1 is not None else None
n = tokens if tokens else client_tokens
tpot = level["tpot_ms"]["p50"] / 1000
http = groups.get("http", 0.0)
http_per_tok = http / n
server_per_tok = server_cpu / n

with open(f"{out}.threads.json", "w") as f:
    json.dump({"window_s": wall, "per_thread": {str(t): v for t, v in per_thread.items()},
               "samples": samples}, f)

us = lambda s: f"{s * 1e6:.0f} µs"
print(f"## {report['api']}: concurrency {level['concurrency']}, {level['completed']}/{level['num_prompts']} requests "
      f"completed, {report['input_len']} prompt tokens, {report['output_len']} new tokens asked")
print(f"machine: {os.environ['CPU']}, {os.environ['CORES']} cores; wick serve --threads {os.environ['THREADS']}")
print(f"window: {wall:.1f} s; output tokens: {n:.0f} (server /metrics; the load generator counted {client_tokens}); "
      f"{level['output_throughput']:.1f} tok/s")
print(f"TPOT p50: {tpot * 1e3:.1f} ms; ITL p50: {level['itl_ms']['p50']:.1f} ms; TTFT p50: {level['ttft_ms']['p50']:.0f} ms")
print()
print("| CPU | seconds | per output token | share of server CPU |")
print("|---|---:|---:|---:|")
for g in ["engine", "kernel pool", "candle", "http", "other", "rest of the process total"]:
    v = groups.get(g, 0.0)
    k = counts.get(g)
    label = f"{g} ({k} thread{'s' if k != 1 else ''})" if k else g
    print(f"| {label} | {v:.2f} | {us(v / n)} | {100 * v / server_cpu:.2f} % |")
print(f"| server total | {server_cpu:.2f} ({server_cpu / wall:.2f} cores) | {us(server_per_tok)} | 100 % |")
print(f"| load generator (separate process) | {loadgen_cpu:.2f} ({loadgen_cpu / wall:.2f} cores) | {us(loadgen_cpu / n)} | "
      f"{100 * loadgen_cpu / (server_cpu + loadgen_cpu):.2f} % of server + load generator |")
print()
print(f"HTTP + SSE overhead: {us(http_per_tok)} CPU per token = {100 * http / server_cpu:.2f} % of the server's CPU "
      f"per token (the throughput it costs on busy cores); "
      f"{100 * http_per_tok / tpot:.3f} % of TPOT p50 taken literally (TPOT spans a token of every running stream)")
print()
EOF
done
stop_server
echo ">> reports, per-thread samples and the server log: $OUT_DIR" >&2
