#!/usr/bin/env python3
"""Measure llama.cpp prefill and decode throughput on a GGUF model (CPU).

Usage::

    python scripts/bench_llamacpp.py --model PATH.gguf --threads N \\
        --prompt-tokens 512 --decode-tokens 128 [--repeats 3]

Needs ``pip install llama-cpp-python==0.3.36 numpy`` (see
scripts/bench_vs_llamacpp.sh, which sets this up in ``.venv-bench``).

* prefill: a synthetic prompt of exactly ``--prompt-tokens`` tokens is
  evaluated in one ``llama_decode`` call (n_batch = n_ubatch = prompt length,
  logits only for the last position), KV cache cleared before every repeat;
  tok/s = prompt_tokens / seconds.
* decode: after a short prompt (8 tokens), ``--decode-tokens`` tokens are
  generated one at a time: ``llama_decode`` of 1 token, read the logits,
  numpy argmax; tok/s = decode_tokens / seconds (the short prompt is not
  timed).  KV cache cleared before every repeat.

One warm-up run of each is done first; the best (max) of ``--repeats`` is
reported.  Prints one JSON object on stdout; llama.cpp's log goes nowhere.
"""

import argparse
import ctypes
import json
import sys
import time

import numpy as np

import llama_cpp as L


@L.llama_log_callback
def _quiet(level, text, user_data):
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    P, M = args.prompt_tokens, args.decode_tokens
    short = 8

    L.llama_log_set(_quiet, ctypes.c_void_p())
    L.llama_backend_init()
    model = L.llama_model_load_from_file(args.model.encode(), L.llama_model_default_params())
    if not model:
        sys.exit(f"failed to load {args.model}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    cp = L.llama_context_default_params()
    cp.n_ctx = max(P, short + M) + 16
    cp.n_batch = max(P, short)
    cp.n_ubatch = max(P, short)
    cp.n_threads = args.threads
    cp.n_threads_batch = args.threads
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(max(P, short), 0, 1)

    # Synthetic prompt: ordinary (non-special) token ids, deterministic.
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(1000, n_vocab - 1000, size=P)]
    short_prompt = prompt[:short]

    def decode(tokens, pos0):
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1 if i == len(tokens) - 1 else 0
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"llama_decode returned {rc}")
        ptr = L.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def run_prefill():
        L.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        decode(prompt, 0)
        L.llama_synchronize(ctx)
        return P / (time.perf_counter() - t0)

    def run_decode():
        L.llama_memory_clear(mem, True)
        logits = decode(short_prompt, 0)
        tok = int(np.argmax(logits))
        pos = short
        t0 = time.perf_counter()
        for _ in range(M):
            logits = decode([tok], pos)
            tok = int(np.argmax(logits))
            pos += 1
        return M / (time.perf_counter() - t0)

    run_prefill()
    run_decode()
    prefill = max(run_prefill() for _ in range(args.repeats))
    dec = max(run_decode() for _ in range(args.repeats))

    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)

    print(json.dumps({
        "engine": "llama.cpp",
        "prefill_tok_s": round(prefill, 2),
        "decode_tok_s": round(dec, 2),
        "threads": args.threads,
        "prompt_tokens": P,
        "decode_tokens": M,
        "repeats": args.repeats,
        "version": "llama-cpp-python " + L.__version__,
    }))


if __name__ == "__main__":
    main()
