#!/usr/bin/env bash
# Soak test (not a CI test): starts `wick serve`, sends REQUESTS mixed requests through
# `wick benchmark` (TGI /generate_stream and OpenAI /v1/completions, synthetic prompts
# and a small set of repeated prompts that exercise the prefix cache, several
# concurrency levels) while a side loop sends non-streaming, chat, malformed and
# dropped requests; samples the server's resident memory (VmRSS) and the KV gauges from
# /metrics, and prints a summary: requests tried, errors by status, KV blocks still held
# once idle, RSS after warm-up against RSS at the end (drift %).
#
# Exits non-zero when blocks leak, the server dies, or the RSS drift exceeds
# MAX_DRIFT_PCT.
#
# Environment (defaults in brackets):
#   WICK           the wick binary [target/release/wick, built if missing]
#   PORT           [3999]
#   REQUESTS       benchmark requests after warm-up [10000]
#   WARMUP         benchmark requests before the RSS baseline [1000]; they must cycle
#                  through the whole KV cache (its pages are touched on first use)
#   CHUNK          requests per benchmark run [250]
#   INPUT_LEN      synthetic prompt tokens [16]
#   OUTPUT_LEN     tokens per request [8]
#   SAMPLE_SECS    sampling period [5]
#   MAX_DRIFT_PCT  [5]
#   SOAK_DIR       where samples and reports go [a new temporary directory]
#   SOAK_PAUSE_FILE  while this file exists the server and the load generator are
#                  frozen (SIGSTOP, then SIGCONT), so the machine can be shared with
#                  timing runs [unset]
#   SERVE_ARGS     extra `wick serve` flags [--max-batch-total-tokens 4096]
set -euo pipefail

cd "$(dirname "$0")/.."
WICK=${WICK:-target/release/wick}
PORT=${PORT:-3999}
REQUESTS=${REQUESTS:-10000}
WARMUP=${WARMUP:-1000}
CHUNK=${CHUNK:-250}
INPUT_LEN=${INPUT_LEN:-16}
OUTPUT_LEN=${OUTPUT_LEN:-8}
SAMPLE_SECS=${SAMPLE_SECS:-5}
MAX_DRIFT_PCT=${MAX_DRIFT_PCT:-5}
SOAK_DIR=${SOAK_DIR:-$(mktemp -d -t wick-soak.XXXXXX)}
SERVE_ARGS=${SERVE_ARGS:---max-batch-total-tokens 4096}
URL="http://127.0.0.1:$PORT"
mkdir -p "$SOAK_DIR"

if [[ ! -x $WICK ]]; then
    cargo build --release --bin wick
fi

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# shellcheck disable=SC2086
"$WICK" serve --hostname 127.0.0.1 --port "$PORT" --json-output $SERVE_ARGS \
    >"$SOAK_DIR/server.log" 2>&1 &
SERVER=$!
SIDE=
SAMPLER=
FREEZER=
cleanup() {
    for p in $SIDE $SAMPLER $FREEZER; do kill "$p" 2>/dev/null || true; done
    kill -CONT "$SERVER" 2>/dev/null || true
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 600); do
    if curl -sf "$URL/health" >/dev/null 2>&1; then break; fi
    kill -0 "$SERVER" 2>/dev/null || { log "the server died; see $SOAK_DIR/server.log"; exit 1; }
    sleep 0.5
done
curl -sf "$URL/health" >/dev/null || { log "the server never became healthy"; exit 1; }
log "server pid $SERVER on $URL; files in $SOAK_DIR"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status" 2>/dev/null || echo 0; }
metric() { awk -v n="$1" '$1 == n {print $2; exit}' "$2"; }

sample() {
    local m="$SOAK_DIR/metrics.txt"
    curl -sf -m 5 "$URL/metrics" >"$m" 2>/dev/null || : >"$m"
    printf '%s,%s,%s,%s,%s,%s\n' "$(date +%s)" "$(rss_kb)" \
        "$(metric wick_kv_blocks_used "$m")" "$(metric wick_kv_blocks_cached "$m")" \
        "$(metric wick_requests_in_flight "$m")" "$(metric tgi_queue_size "$m")" \
        >>"$SOAK_DIR/samples.csv"
}
echo "unix_s,rss_kb,blocks_used,blocks_cached,in_flight,queue" >"$SOAK_DIR/samples.csv"
(
    while kill -0 "$SERVER" 2>/dev/null; do
        sample
        sleep "$SAMPLE_SECS"
    done
) &
SAMPLER=$!

# Repeated prompts (prefix cache hits and evictions).
python3 - "$SOAK_DIR/prompts.txt" <<'EOF'
import random, sys
random.seed(8)
words = "the a river stone cloud bird tree sun moon city road house light dark old new".split()
with open(sys.argv[1], "w") as f:
    for i in range(40):
        f.write(f"Story {i}: " + " ".join(random.choice(words) for _ in range(12 + i % 9)) + "\n")
EOF

wait_pause() {
    if [[ -n ${SOAK_PAUSE_FILE:-} ]]; then
        while [[ -e $SOAK_PAUSE_FILE ]]; do sleep 5; done
    fi
}

# Freezes the server and the running load generator while the pause file exists.
if [[ -n ${SOAK_PAUSE_FILE:-} ]]; then
    (
        frozen=()
        while kill -0 "$SERVER" 2>/dev/null; do
            if [[ -e $SOAK_PAUSE_FILE && ${#frozen[@]} -eq 0 ]]; then
                frozen=("$SERVER")
                if [[ -s $SOAK_DIR/bench.pid ]]; then frozen+=("$(cat "$SOAK_DIR/bench.pid")"); fi
                kill -STOP "${frozen[@]}" 2>/dev/null || true
                echo "$(date +%s) frozen" >>"$SOAK_DIR/pauses.txt"
            elif [[ ! -e $SOAK_PAUSE_FILE && ${#frozen[@]} -gt 0 ]]; then
                kill -CONT "${frozen[@]}" 2>/dev/null || true
                frozen=()
                echo "$(date +%s) resumed" >>"$SOAK_DIR/pauses.txt"
            fi
            sleep 1
        done
    ) &
    FREEZER=$!
fi

# Waits until nothing is in flight (bounded), then samples.
drain() {
    local m="$SOAK_DIR/drain.txt"
    for _ in $(seq 1 120); do
        curl -sf -m 5 "$URL/metrics" >"$m" || true
        if [[ "$(metric wick_requests_in_flight "$m")" == "0" && "$(metric wick_kv_blocks_used "$m")" == "0" ]]; then
            break
        fi
        sleep 0.5
    done
    sample
}

CHUNK_NO=0
run_chunk() { # $1: requests, $2: phase
    wait_pause
    kill -0 "$SERVER" 2>/dev/null || { log "the server died"; exit 1; }
    local n=$1 apis=(tgi openai) levels=(4 16 32)
    local api=${apis[$((CHUNK_NO % 2))]} c=${levels[$((CHUNK_NO % 3))]}
    local prompts=()
    if ((CHUNK_NO % 4 >= 2)); then prompts=(--prompts-file "$SOAK_DIR/prompts.txt"); fi
    "$WICK" benchmark --url "$URL" --api "$api" --concurrency "$c" --num-prompts "$n" \
        --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed "$CHUNK_NO" --warmup 0 \
        --timeout 3600 --quiet "${prompts[@]}" \
        --json-out "$SOAK_DIR/$2-$(printf %03d $CHUNK_NO).json" >/dev/null 2>>"$SOAK_DIR/bench.err" &
    echo $! >"$SOAK_DIR/bench.pid"
    wait $! || true
    : >"$SOAK_DIR/bench.pid"
    CHUNK_NO=$((CHUNK_NO + 1))
}

# The side loop: non-streaming TGI and chat requests, malformed bodies, and streams the
# client drops after a moment; one status code per line.
side_loop() {
    local i=0 code
    while [[ ! -e $SOAK_DIR/done ]]; do
        wait_pause
        case $((i % 6)) in
        0) code=$(curl -s -o /dev/null -w '%{http_code}' -m 120 -H 'content-type: application/json' \
            -d "{\"inputs\":\"Note $i:\",\"parameters\":{\"max_new_tokens\":4}}" "$URL/generate") || code=err ;;
        1) code=$(curl -s -o /dev/null -w '%{http_code}' -m 120 -H 'content-type: application/json' \
            -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Say $i\"}],\"max_tokens\":4}" "$URL/v1/chat/completions") || code=err ;;
        2) code=$(curl -s -o /dev/null -w '%{http_code}' -m 120 -H 'content-type: application/json' \
            -d '{"inputs": "x", "parameters": {"max_new_tokens": ' "$URL/generate") || code=err ;;
        3) code=$(curl -s -o /dev/null -w '%{http_code}' -m 0.3 -H 'content-type: application/json' \
            -d "{\"inputs\":\"Drop $i\",\"parameters\":{\"max_new_tokens\":32}}" "$URL/generate_stream") || true
           code="dropped" ;;
        4) code=$(curl -s -o /dev/null -w '%{http_code}' -m 0.5 -H 'content-type: application/json' \
            -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Drop $i\"}],\"max_tokens\":32,\"stream\":true}" \
            "$URL/v1/chat/completions") || true
           code="dropped" ;;
        5) code=$(curl -s -o /dev/null -w '%{http_code}' -m 120 -H 'content-type: application/json' \
            -d '{"messages":[{"role":"wizard","content":"x"}]}' "$URL/v1/chat/completions") || code=err ;;
        esac
        echo "$code" >>"$SOAK_DIR/side.txt"
        i=$((i + 1))
        sleep 0.2
    done
}

START=$(date +%s)
log "warm-up: $WARMUP requests"
left=$WARMUP
while ((left > 0)); do
    n=$((left < CHUNK ? left : CHUNK)); run_chunk "$n" warmup; left=$((left - n))
done
drain
RSS_WARM=$(rss_kb)
log "RSS after warm-up: $RSS_WARM kB"

: >"$SOAK_DIR/side.txt"
side_loop &
SIDE=$!
left=$REQUESTS
while ((left > 0)); do
    n=$((left < CHUNK ? left : CHUNK)); run_chunk "$n" soak; left=$((left - n))
    log "$((REQUESTS - left))/$REQUESTS requests, RSS $(rss_kb) kB"
done
touch "$SOAK_DIR/done"
wait "$SIDE" 2>/dev/null || true
SIDE=
drain
RSS_END=$(rss_kb)
curl -sf -m 5 "$URL/metrics" >"$SOAK_DIR/final-metrics.txt" || true
ALIVE=1
kill -0 "$SERVER" 2>/dev/null || ALIVE=0

python3 - "$SOAK_DIR" "$RSS_WARM" "$RSS_END" "$MAX_DRIFT_PCT" "$ALIVE" "$(( $(date +%s) - START ))" <<'EOF'
import collections, csv, glob, json, os, sys
d, warm, end, max_drift, alive, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1", int(sys.argv[6])
tried = ok = 0
errors = collections.Counter()
for f in sorted(glob.glob(os.path.join(d, "soak-*.json"))):
    for lvl in json.load(open(f))["levels"]:
        tried += lvl["num_prompts"]; ok += lvl["completed"]
        errors.update(lvl.get("errors", {}))
side = collections.Counter(l.strip() for l in open(os.path.join(d, "side.txt")) if l.strip())
final = {}
for line in open(os.path.join(d, "final-metrics.txt")):
    p = line.split()
    if len(p) == 2 and not line.startswith("#"):
        final[p[0]] = p[1]
rows = list(csv.DictReader(open(os.path.join(d, "samples.csv"))))
rss = [int(r["rss_kb"]) for r in rows if r["rss_kb"].isdigit() and int(r["rss_kb"]) > 0]
used = final.get("wick_kv_blocks_used", "?")
drift = 100.0 * (end - warm) / warm if warm else float("nan")
print("== soak summary ==")
print(f"duration: {secs} s; server alive at the end: {alive}")
print(f"benchmark requests tried: {tried}, completed: {ok}, errors: {dict(errors) or 'none'}")
print(f"side-loop requests: {sum(side.values())}, by status: {dict(sorted(side.items()))}")
print(f"total requests: {tried + sum(side.values())}")
print(f"KV blocks held once idle (leaked): {used}; prefix-cached: {final.get('wick_kv_blocks_cached', '?')}; "
      f"in flight: {final.get('wick_requests_in_flight', '?')}")
print(f"engine: finished {final.get('wick_requests_finished_total', '?')}, cancelled {final.get('wick_requests_cancelled_total', '?')}, "
      f"failed {final.get('wick_requests_failed_total', '?')}")
print(f"RSS after warm-up: {warm / 1024:.1f} MiB, at the end: {end / 1024:.1f} MiB, drift {drift:+.2f} % "
      f"(max during the run {max(rss, default=0) / 1024:.1f} MiB, {len(rss)} samples)")
bad = (not alive) or used != "0" or abs(drift) > max_drift
print("RESULT:", "FAIL" if bad else "PASS")
sys.exit(1 if bad else 0)
EOF
