"""Helpers of scripts/gpu-check.sh (Python standard library only):

    gpu_check.py prompts DIR                 the prompt files the benchmarks share
    gpu_check.py greedy CPU_URL GPU_URL OUT  greedy tokens of two servers compared
    gpu_check.py nsys-split CSV STEPS        decode step time split from an nsys GPU trace
    gpu_check.py sdpa OUT                    PyTorch's scaled_dot_product_attention (flash
                                             backend) on the prefill shapes, as JSON lines
    gpu_check.py report WORK OUTDIR          gpu-report.md and gpu-report.json

`sdpa` imports torch (gpu-check.sh runs it with PEER_PYTHON); the others need only the
standard library. `report` reads what the steps of gpu-check.sh left in WORK (see there) and never fails
because a step's output is missing: a missing number is reported as missing.
"""

import csv
import json
import os
import random
import statistics
import sys
import time
import urllib.request

# Prompts: the random models' tokenizer is byte-level (one token per byte, no BOS), so
# an ASCII line of N characters is exactly N prompt tokens, on wick's side (the server
# tokenizes the text) and on transformers' side (hf_generate_bench.py --prompts takes the
# bytes as token ids).
SERVING_PROMPTS = ("serving-512.txt", 64, 512)
TTFT_PROMPTS = [(2048, 3), (8192, 3), (32768, 2)]

# Architectures of wick's random shapes (src/model/random.rs), for bytes per token.
# (layers, hidden, intermediate, heads, kv heads, head dim, vocab, tied embeddings)
SHAPES = {
    "tiny": (2, 64, 128, 4, 2, 16, 512, False),
    "llama-3-8b": (32, 4096, 14336, 32, 8, 128, 128256, False),
    "llama-3.2-1b": (16, 2048, 8192, 32, 8, 64, 128256, True),
    "qwen2-0.5b": (24, 896, 4864, 14, 2, 64, 151936, True),
}

# Prefill attention: one causal prompt of each length at the llama-3-8b attention shape
# (32 query heads, 8 KV heads, head dim 128, bf16), wick's kernel (cuda_kernels
# prefill_attention_timing) beside PyTorch's SDPA with the FlashAttention backend.
PREFILL_TOKENS = [2048, 8192, 32768]
PREFILL_SHAPE = (32, 8, 128)
TARGET_PREFILL_VS_SDPA = 0.7

TARGET_ROOFLINE = 0.85
TARGET_VS_TRANSFORMERS = 8.0


def prompt_line(rng, n):
    words = []
    length = 0
    while length <= n:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        words.append(w)
        length += len(w) + 1
    line = " ".join(words)[:n]
    return line[:-1] + "x" if line.endswith(" ") else line  # no trailing blank to trim


def cmd_prompts(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(0)
    files = [SERVING_PROMPTS] + [(f"ttft-{n}.txt", k, n) for n, k in TTFT_PROMPTS]
    for name, count, n in files:
        with open(os.path.join(out_dir, name), "w") as f:
            for _ in range(count):
                line = prompt_line(rng, n)
                assert len(line.encode()) == n
                f.write(line + "\n")


GREEDY_PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
    "The three primary colors are", "Water boils at a temperature of",
    # 1,200 tokens: past 512 tokens of context (split-context attention) and, with the
    # servers' --max-batch-prefill-tokens 256, prefilled in 5 chunks.
    " ".join("word%d" % (i * 7919 % 1000) for i in range(150))[:1200],
]
GREEDY_TOKENS = 48
# A divergence where the CPU's two best tokens are closer than this (in logprob, i.e.
# logit units) is a near tie that summation order may flip, not a bug.
NEAR_TIE = 0.01


def generate(url, prompt):
    body = json.dumps({"inputs": prompt, "parameters": {
        "max_new_tokens": GREEDY_TOKENS, "details": True, "top_n_tokens": 2}}).encode()
    req = urllib.request.Request(url + "/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        details = json.load(r)["details"]
    ids = [t["id"] for t in details["tokens"]]
    lps = [t["logprob"] for t in details["tokens"]]
    gaps = []
    for top in details.get("top_tokens") or []:
        best = sorted((t["logprob"] for t in top), reverse=True)
        gaps.append(best[0] - best[1] if len(best) > 1 else float("inf"))
    return ids, lps, gaps


def cmd_greedy(cpu_url, gpu_url, out):
    """Greedy tokens from a CPU server and a GPU server of the same GGUF model: the same,
    or diverging only at a near tie of the CPU's logits."""
    rows, bad = [], 0
    for p in GREEDY_PROMPTS:
        row = {"prompt": p}
        try:
            cpu, cpu_lp, gaps = generate(cpu_url, p)
            gpu, gpu_lp, _ = generate(gpu_url, p)
        except Exception as e:  # noqa: BLE001 - any failure of a request fails the check
            row.update(verdict="error", error=str(e)[:300])
            rows.append(row)
            bad += 1
            print(f"ERROR   {p[:40]!r}: {e}")
            continue
        first = next((i for i, (a, b) in enumerate(zip(cpu, gpu)) if a != b), None)
        if first is None and len(cpu) != len(gpu):
            first = min(len(cpu), len(gpu))
        common = first if first is not None else len(cpu)
        row["max_logprob_diff"] = max((abs(a - b) for a, b in
                                       zip(cpu_lp[:common], gpu_lp[:common])), default=0.0)
        row["tokens"] = len(cpu)
        if first is None:
            row["verdict"] = "same"
        elif first < len(gaps) and gaps[first] < NEAR_TIE:
            row.update(verdict="near tie", first_diff=first, gap=gaps[first])
        else:
            row.update(verdict="differs", first_diff=first,
                       gap=gaps[first] if first < len(gaps) else None)
            bad += 1
        row["cpu"], row["gpu"] = cpu, gpu
        rows.append(row)
        print(f"{row['verdict']:8} {p[:40]!r}" + (f" (from token {first})" if first is not None else "")
              + f", max |logprob cpu - gpu| {row['max_logprob_diff']:.2e}")
    same = sum(r["verdict"] == "same" for r in rows)
    ties = sum(r["verdict"] == "near tie" for r in rows)
    what = (f"tiny.gguf (random f16 weights, llama, head size 64, 4 query / 2 KV heads, "
            f"2 layers; f32 compute and an f16 KV cache on both devices), served by "
            f"`wick serve --device cpu` and `--device cuda` (prefill in chunks of 256): "
            f"{GREEDY_TOKENS} greedy tokens for each of {len(rows)} prompts, one of 1,200 "
            f"tokens. Pass: the GPU's tokens equal the CPU's, or they part only where the "
            f"CPU's two best tokens are within {NEAR_TIE} in logprob (a near tie).")
    json.dump({"what": what, "identical": same, "near_ties": ties, "total": len(rows),
               "prompts": rows}, open(out, "w"), indent=1)
    print(f"{same} of {len(rows)} identical, {ties} near ties, {bad} failed")
    return 1 if bad else 0


def cmd_nsys_split(csv_path, steps):
    """The last `steps` decode steps of `wick bench` in an `nsys stats -r cuda_gpu_trace`
    CSV. wick bench copies each step's logits to the host (one device-to-host copy per
    step), so the last steps+1 such copies delimit the last steps decode steps on the GPU
    timeline. Per step: the interval between those copies' ends, the kernel time that
    starts inside it, and the rest (GPU idle: launch latency and host work)."""
    steps = int(steps)
    rows = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            key = {k.split(" ")[0].lower(): v for k, v in row.items() if k}
            try:
                start, dur = float(key["start"]), float(key["duration"])
            except (KeyError, TypeError, ValueError):
                continue
            rows.append((start, dur, key.get("name") or ""))
    rows.sort()
    dtoh = [s + d for s, d, n in rows
            if "memcpy" in n.lower() and ("dtoh" in n.lower() or "device-to-host" in n.lower())]
    kernels = [(s, d) for s, d, n in rows if not n.startswith("[")]
    if len(dtoh) < steps + 1:
        print(json.dumps({"error": f"{len(dtoh)} device-to-host copies in the trace, "
                                   f"fewer than the {steps + 1} needed"}))
        return 1
    bounds = dtoh[-(steps + 1):]
    walls, ktimes, counts = [], [], []
    for a, b in zip(bounds, bounds[1:]):
        ks = [d for s, d in kernels if a < s <= b]
        walls.append(b - a)
        ktimes.append(sum(ks))
        counts.append(len(ks))
    med = statistics.median
    out = {
        "steps": steps,
        "step_ms_median": med(walls) / 1e6,
        "kernel_ms_median": med(ktimes) / 1e6,
        "gap_ms_median": med(w - k for w, k in zip(walls, ktimes)) / 1e6,
        "step_ms_mean": statistics.fmean(walls) / 1e6,
        "kernel_ms_mean": statistics.fmean(ktimes) / 1e6,
        "kernels_per_step_median": med(counts),
    }
    print(json.dumps(out))
    return 0


def cmd_sdpa(out):
    """Times F.scaled_dot_product_attention(is_causal=True) with the FlashAttention backend
    on the prefill shapes, as wick's timing does: host clock around each call plus a
    synchronize, after one warm-up call. K/V are expanded to the query heads beforehand
    (untimed): SDPA's own GQA support is not in every torch version's flash backend."""
    import torch
    import torch.nn.functional as F
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash_only():
            return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    except ImportError:  # torch before 2.3
        def flash_only():
            return torch.backends.cuda.sdp_kernel(
                enable_flash=True, enable_math=False, enable_mem_efficient=False)

    heads, kv_heads, d = PREFILL_SHAPE
    lines = []
    for n in PREFILL_TOKENS:
        # [batch, tokens, heads, dim] as a model holds them, viewed as [batch, heads, ...].
        q = torch.randn(1, n, heads, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k, v = (torch.randn(1, n, kv_heads, d, device="cuda", dtype=torch.bfloat16)
                .repeat_interleave(heads // kv_heads, dim=2).transpose(1, 2) for _ in range(2))
        with flash_only():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.cuda.synchronize()
            iters = 5 if n >= 32768 else 20
            t0 = time.perf_counter()
            for _ in range(iters):
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
                torch.cuda.synchronize()
            secs = (time.perf_counter() - t0) / iters
        flops = 4.0 * (n * (n + 1) // 2) * heads * d
        lines.append(json.dumps({"impl": "torch-sdpa-flash", "tokens": n, "heads": heads,
                                 "kv_heads": kv_heads, "head_dim": d, "ms": secs * 1e3,
                                 "tflops": flops / secs / 1e12, "torch": torch.__version__}))
        print(lines[-1])
        del q, k, v
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


def load_lines(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def bytes_per_decode_token(shape, context):
    """Weights read per decode token (everything but the embedding table, of which one
    row is read; a tied table is read whole as the output head) plus the bf16 KV cache of
    `context` tokens."""
    layers, hidden, inter, heads, kv_heads, head_dim, vocab, tied = SHAPES[shape]
    per_layer = (hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
                 + 3 * hidden * inter + 2 * hidden)
    params = layers * per_layer + hidden + vocab * hidden  # final norm, output head
    weights = 2 * params
    kv = 2 * layers * kv_heads * head_dim * 2 * context
    return weights, kv


def level0(report):
    if not report:
        return None
    levels = report.get("levels") or []
    return levels[0] if levels else None


def verdict(targets, key):
    t = targets.get(key)
    return "" if t is None else (" (met)" if t["met"] else " (**missed**)")


def fmt(x, spec=".1f", unit=""):
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def cmd_report(work, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    checks = []
    try:
        with open(os.path.join(work, "steps.jsonl")) as f:
            checks = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    shape = read_text(os.path.join(work, "shape")) or "llama-3-8b"
    gpu = {}
    line = read_text(os.path.join(work, "gpu.csv"))
    if line:
        parts = [p.strip() for p in line.splitlines()[0].split(",")]
        gpu = dict(zip(["name", "driver", "memory", "compute_cap"], parts))
    bundle = read_text(os.path.join(work, "bin", "COMMIT"))

    metrics = {}
    targets = {}
    notes = []

    bw = load(os.path.join(work, "bandwidth.json")) or {}
    bandwidth = bw.get("copy_bandwidth_bytes_per_s")
    one = load(os.path.join(work, "decode1.json"))
    if one and shape in SHAPES:
        # wick bench decodes from an 8-token prompt: mean context 8 + decode_tokens / 2.
        context = 8 + one["decode_tokens"] / 2
        weights, kv = bytes_per_decode_token(shape, context)
        d = {"tok_s": one["decode_tok_s"], "ms_per_step": 1000 / one["decode_tok_s"],
             "bytes_per_token": weights + kv, "mean_context": context}
        if bandwidth:
            d["roofline_tok_s"] = bandwidth / (weights + kv)
            d["roofline_share"] = one["decode_tok_s"] / d["roofline_tok_s"]
            targets["batch1_decode_roofline_share"] = {
                "target": TARGET_ROOFLINE, "value": d["roofline_share"],
                "met": d["roofline_share"] >= TARGET_ROOFLINE}
        metrics["batch1_decode"] = d
    split = load(os.path.join(work, "nsys-split.json"))
    if split and "step_ms_median" in split:
        metrics["decode_step_split"] = split

    wick = level0(load(os.path.join(work, "wick-serving.json")))
    peer = load(os.path.join(work, "peer.json"))
    serving = {}
    if wick:
        serving["wick"] = {
            "output_tok_s": wick["output_throughput"],
            "completed": wick["completed"], "failed": wick["failed"],
            "ttft_ms_p50": wick["ttft_ms"]["p50"], "ttft_ms_p99": wick["ttft_ms"]["p99"],
            "tpot_ms_p50": wick["tpot_ms"]["p50"], "tpot_ms_p99": wick["tpot_ms"]["p99"],
            "duration_s": wick["duration_s"],
        }
    if peer and "output_tok_s" in peer:
        serving["transformers"] = {
            "output_tok_s": peer["output_tok_s"], "ttft_ms": 1000 * peer["ttft_s"],
            "tpot_ms": 1000 * peer["tpot_s"], "total_s": peer["total_s"],
            "version": peer.get("transformers"), "attention": peer.get("attention"),
        }
    if "wick" in serving and "transformers" in serving:
        ratio = serving["wick"]["output_tok_s"] / serving["transformers"]["output_tok_s"]
        serving["ratio"] = ratio
        targets["serving_vs_transformers"] = {
            "target": TARGET_VS_TRANSFORMERS, "value": ratio,
            "met": ratio >= TARGET_VS_TRANSFORMERS}
    if serving:
        metrics["serving_64x512_256"] = serving
    ttft = {}
    for n, _ in TTFT_PROMPTS:
        lv = level0(load(os.path.join(work, f"ttft-{n}.json")))
        if lv:
            ttft[str(n)] = {"ttft_ms_p50": lv["ttft_ms"]["p50"], "ttft_ms_max":
                            lv["ttft_ms"]["p99"], "completed": lv["completed"],
                            "failed": lv["failed"]}
    if ttft:
        metrics["ttft_long_prompts"] = ttft
    prefill = {}
    for name, path in (("wick", "prefill-wick.jsonl"), ("sdpa", "prefill-sdpa.jsonl")):
        for row in load_lines(os.path.join(work, path)):
            prefill.setdefault(str(row["tokens"]), {})[name] = {
                "ms": row["ms"], "tflops": row["tflops"]}
    for v in prefill.values():
        if "wick" in v and "sdpa" in v:
            v["ratio"] = v["sdpa"]["ms"] / v["wick"]["ms"]
    if prefill:
        metrics["prefill_attention"] = prefill
        ratios = [v["ratio"] for v in prefill.values() if "ratio" in v]
        if ratios:
            targets["prefill_attention_vs_sdpa"] = {
                "target": TARGET_PREFILL_VS_SDPA, "value": min(ratios),
                "met": min(ratios) >= TARGET_PREFILL_VS_SDPA}
    greedy = load(os.path.join(work, "greedy.json"))

    ok = bool(checks) and all(c["status"] in ("pass", "skip") for c in checks)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "bundle_commit": bundle, "gpu": gpu, "shape": shape,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "checks": checks, "all_checks_passed": ok,
        "metrics": metrics, "targets": targets, "greedy": greedy,
    }
    with open(os.path.join(out_dir, "gpu-report.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")

    md = ["# wick GPU check", ""]
    md.append(f"{report['date']}; bundle built from commit {bundle or 'unknown'}.")
    md.append(f"GPU: {gpu.get('name', 'unknown')}, driver {gpu.get('driver', '?')}, "
              f"{gpu.get('memory', '?')} memory, compute capability "
              f"{gpu.get('compute_cap', '?')}. Device-to-device copy bandwidth (torch, "
              f"read + write): {fmt(bandwidth and bandwidth / 1e12, '.2f', ' TB/s')}.")
    md += ["", f"**Checks: {'all passed' if ok else 'FAILED'}**", "",
           "| check | status | seconds | detail |", "|---|---|---|---|"]
    for c in checks:
        md.append(f"| {c['name']} | {c['status']} | {c.get('seconds', 0)} | "
                  f"{c.get('detail', '').replace('|', '/')} |")
    md += ["", f"## Performance (random weights, shape {shape}, bf16)", ""]
    d = metrics.get("batch1_decode")
    if d:
        md.append(f"- **Batch-1 decode**: {d['tok_s']:.1f} tok/s ({d['ms_per_step']:.2f} ms "
                  f"per token, `wick bench`, mean context {d['mean_context']:.0f}); roofline "
                  f"{fmt(d.get('roofline_tok_s'))} tok/s = copy bandwidth / "
                  f"{d['bytes_per_token'] / 1e9:.3g} GB per token (weights but the "
                  f"embedding table, plus the KV cache read): "
                  f"**{fmt(d.get('roofline_share') and 100 * d['roofline_share'])} %** "
                  f"of roofline (target >= {100 * TARGET_ROOFLINE:.0f} %)"
                  f"{verdict(targets, 'batch1_decode_roofline_share')}.")
    else:
        md.append("- Batch-1 decode: not measured.")
    s = metrics.get("decode_step_split")
    if s:
        md.append(f"- **Decode step at batch 1** (nsys, median of the last {s['steps']} "
                  f"steps of a `wick bench` run, GPU timeline): {s['step_ms_median']:.3f} ms "
                  f"per step = {s['kernel_ms_median']:.3f} ms in kernels + "
                  f"{s['gap_ms_median']:.3f} ms with no kernel running (launch latency, host "
                  f"work, the logits copy); {s['kernels_per_step_median']:.0f} kernels per "
                  "step. The profiled steps run 8 to 72 tokens of context, the batch-1 "
                  "figure above 8 to 264.")
    else:
        md.append("- Decode step split into kernel time and launch overhead: not measured "
                  f"({read_text(os.path.join(work, 'nsys.detail')) or 'no nsys output'}); "
                  "the wall time per step is the batch-1 figure above.")
    sv = metrics.get("serving_64x512_256", {})
    w, t = sv.get("wick"), sv.get("transformers")
    md += ["", "### 64 concurrent requests, 512 prompt / 256 output tokens", "",
           "| | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms |", "|---|---|---|---|"]
    if w:
        md.append(f"| wick serve + wick benchmark | {w['output_tok_s']:.0f} | "
                  f"{w['ttft_ms_p50']:.0f} / {w['ttft_ms_p99']:.0f} | "
                  f"{w['tpot_ms_p50']:.1f} / {w['tpot_ms_p99']:.1f} |")
    else:
        md.append("| wick | n/a | n/a | n/a |")
    if t:
        md.append(f"| transformers generate | {t['output_tok_s']:.0f} | {t['ttft_ms']:.0f} "
                  f"(whole batch) | {t['tpot_ms']:.1f} (mean) |")
    else:
        md.append("| transformers | n/a | n/a | n/a |")
    md += ["", f"wick / transformers: **{fmt(sv.get('ratio'), '.2f', 'x')}** (target >= "
           f"{TARGET_VS_TRANSFORMERS:.0f}x){verdict(targets, 'serving_vs_transformers')}. Both run the same 64 prompts (exactly 512 tokens "
           "each). wick: `wick serve` over HTTP (TGI `/generate_stream`), 64 requests sent "
           "at once by `wick benchmark`, continuous batching with chunked prefill, device "
           "greedy, 256 tokens each; TTFT and TPOT per request as a client sees them. "
           "transformers: one offline call of `generate` on a batch of 64 (no padding: "
           "equal lengths), greedy, 256 new tokens, no HTTP; its TTFT is a separate "
           "`generate` of 1 new token for the whole batch (every row gets its first token "
           "at the same time) and its TPOT the mean time per later step. Weights are random "
           "on both sides (different numbers, same shape and dtype); both generate to the "
           "token limit."]
    md += ["", "### Time to first token, one request at a time", "",
           "| prompt tokens | TTFT p50 ms | slowest ms | requests |", "|---|---|---|---|"]
    for n, _ in TTFT_PROMPTS:
        v = ttft.get(str(n))
        if v:
            md.append(f"| {n} | {v['ttft_ms_p50']:.0f} | {v['ttft_ms_max']:.0f} | "
                      f"{v['completed']} ok, {v['failed']} failed |")
        else:
            md.append(f"| {n} | n/a | n/a | |")
    md += ["", "Through `wick serve` (HTTP, prefill in chunks of "
           "`--max-batch-prefill-tokens` 8192). The llama-3-8b random shape has "
           "max_position_embeddings 8192, so the server is started with "
           "`--max-total-tokens 33024`; rope has no position table, so a 32k prompt costs "
           "what it costs on Llama 3.1 8B, which has the same shape with a 128k context."]
    md += ["", "### Prefill attention, one causal prompt, llama-3-8b attention shape"
           f"{verdict(targets, 'prefill_attention_vs_sdpa')}", "",
           "| prompt tokens | wick ms | wick TFLOP/s | SDPA flash ms | SDPA TFLOP/s | wick / SDPA |",
           "|---|---|---|---|---|---|"]
    for n in PREFILL_TOKENS:
        v = prefill.get(str(n), {})
        w, t = v.get("wick", {}), v.get("sdpa", {})
        md.append(f"| {n} | {fmt(w.get('ms'), '.2f')} | {fmt(w.get('tflops'), '.0f')} | "
                  f"{fmt(t.get('ms'), '.2f')} | {fmt(t.get('tflops'), '.0f')} | "
                  f"{fmt(v.get('ratio'), '.2f')} |")
    md += ["", "32 query heads, 8 KV heads, head dim 128, bf16. wick: the attention op over "
           "the paged cache (16-token blocks) as the engine calls it for a whole prompt "
           "(cuda_kernels `prefill_attention_timing`); PyTorch: "
           "`scaled_dot_product_attention(is_causal=True)` with the FlashAttention backend on "
           "contiguous K/V. Both timed on the host clock around each call and a synchronize. "
           f"Target: wick >= {TARGET_PREFILL_VS_SDPA} x SDPA's throughput."]
    if greedy:
        md += ["", "### Greedy generations, GPU vs CPU", "",
               greedy.get("what", ""), ""]
        for g in greedy.get("prompts", []):
            mark = g["verdict"]
            if "first_diff" in g:
                mark += f" from token {g['first_diff']} (CPU top-2 gap {fmt(g.get('gap'), '.2e')})"
            if "max_logprob_diff" in g:
                mark += f"; max |logprob CPU - GPU| before that {g['max_logprob_diff']:.1e}"
            md.append(f"- {g['prompt'][:40]!r}: {g.get('error') or mark}")
    md += ["", "Targets: batch-1 decode >= 85 % of the measured roofline; 64 concurrent "
           ">= 8x transformers. Logs of every step are in gpu-check-logs/."]
    with open(os.path.join(out_dir, "gpu-report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return 0


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prompts" and len(args) == 1:
        return cmd_prompts(*args) or 0
    if cmd == "greedy" and len(args) == 3:
        return cmd_greedy(*args)
    if cmd == "nsys-split" and len(args) == 2:
        return cmd_nsys_split(*args)
    if cmd == "sdpa" and len(args) == 1:
        return cmd_sdpa(*args)
    if cmd == "report" and len(args) == 2:
        return cmd_report(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
