"""Writes a tiny llama GGUF with seeded random weights, for comparing greedy generations on
the GPU and the CPU (scripts/gpu-check.sh). Python standard library only, so it runs on
any machine with python3; about 3 MB and a second or two.

    python3 scripts/make_tiny_gguf.py OUT.gguf [--seed 0]

Why a GGUF and not `random:<shape>`: a random model draws its weights with the device's
own generator, so `--device cpu` and `--device cuda` run different weights. This file
holds the weights, so both devices run the same ones. GGUF models compute in f32 on both
devices (f16 weights are widened to f32 on load) with an f16 KV cache, so their greedy
tokens should agree: the only differences are f32 summation order and the occasional f16
rounding of a cached value on the other side of a rounding boundary.

The shape exercises what the GPU kernels support: head size 64, grouped-query attention
(4 query heads over 2 KV heads), 2 layers. The weights are scaled so the model is far
from uniform: attention scores have a spread of a few units (peaked, position-sensitive
attention, so a rope or cache-slot bug changes the logits) and the logits spread by about
one unit, so greedy choices have clear margins.

The tokenizer is a GPT-2 style BPE without merges: the 94 printable ASCII characters,
space and newline as single tokens, then 415 word tokens " w000" ... " w414" that only the
model emits, and one end token. Every generated token decodes to ASCII and different
token sequences give different text, so comparing the printed text compares the tokens.
"""

import argparse
import random
import struct

# GGUF value types.
UINT32, FLOAT32, BOOL, STRING, ARRAY = 4, 6, 7, 8, 9
# ggml tensor types.
GGML_F32, GGML_F16 = 0, 1
ALIGN = 32

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 512, 2, 4, 2, 64
CONTEXT = 2048


def gguf_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value):
    out = gguf_str(key) + struct.pack("<I", vtype)
    if vtype == UINT32:
        out += struct.pack("<I", value)
    elif vtype == FLOAT32:
        out += struct.pack("<f", value)
    elif vtype == BOOL:
        out += struct.pack("<B", 1 if value else 0)
    elif vtype == STRING:
        out += gguf_str(value)
    else:
        raise ValueError(vtype)
    return out


def kv_array(key, elem_type, values):
    out = gguf_str(key) + struct.pack("<IIQ", ARRAY, elem_type, len(values))
    for v in values:
        if elem_type == STRING:
            out += gguf_str(v)
        elif elem_type == UINT32:
            out += struct.pack("<I", v)
        else:
            raise ValueError(elem_type)
    return out


def vocabulary():
    # GPT-2's byte-to-unicode alphabet: printable ASCII stands for itself, space is
    # U+0120 and newline U+010A.
    tokens = [chr(c) for c in range(0x21, 0x7F)] + ["\u0120", "\u010a"]
    tokens += ["\u0120w%03d" % i for i in range(415)]
    tokens.append("<|end|>")
    types = [1] * (len(tokens) - 1) + [3]  # normal tokens, then one control token
    return tokens, types


def tensors(vocab, rng):
    """(name, ggml dims (innermost first), ggml type, values)."""

    def normal(n, std):
        return [rng.gauss(0.0, std) for _ in range(n)]

    def matrix(name, rows, cols, std):
        # A [rows, cols] PyTorch weight is ggml [cols, rows].
        return (name, [cols, rows], GGML_F16, normal(rows * cols, std))

    out = [("token_embd.weight", [HIDDEN, vocab], GGML_F16, normal(HIDDEN * vocab, 1.0))]
    q_std = 2.0 / HIDDEN ** 0.5  # scores q.k/sqrt(d) spread by a few units
    for i in range(LAYERS):
        p = f"blk.{i}"
        out += [
            (f"{p}.attn_norm.weight", [HIDDEN], GGML_F32, [1.0] * HIDDEN),
            matrix(f"{p}.attn_q.weight", HEADS * HEAD_DIM, HIDDEN, q_std),
            matrix(f"{p}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN, q_std),
            matrix(f"{p}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN, 1.0 / HIDDEN ** 0.5),
            matrix(f"{p}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM, 1.0 / HIDDEN ** 0.5),
            (f"{p}.ffn_norm.weight", [HIDDEN], GGML_F32, [1.0] * HIDDEN),
            matrix(f"{p}.ffn_gate.weight", FFN, HIDDEN, 1.0 / HIDDEN ** 0.5),
            matrix(f"{p}.ffn_up.weight", FFN, HIDDEN, 1.0 / HIDDEN ** 0.5),
            matrix(f"{p}.ffn_down.weight", HIDDEN, FFN, 1.0 / FFN ** 0.5),
        ]
    out += [
        ("output_norm.weight", [HIDDEN], GGML_F32, [1.0] * HIDDEN),
        matrix("output.weight", vocab, HIDDEN, 1.0 / HIDDEN ** 0.5),
    ]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tokens, types = vocabulary()
    n_vocab = len(tokens)
    meta = [
        kv("general.architecture", STRING, "llama"),
        kv("general.name", STRING, "wick-gpu-check-tiny"),
        kv("general.alignment", UINT32, ALIGN),
        kv("llama.context_length", UINT32, CONTEXT),
        kv("llama.embedding_length", UINT32, HIDDEN),
        kv("llama.block_count", UINT32, LAYERS),
        kv("llama.feed_forward_length", UINT32, FFN),
        kv("llama.attention.head_count", UINT32, HEADS),
        kv("llama.attention.head_count_kv", UINT32, KV_HEADS),
        kv("llama.rope.dimension_count", UINT32, HEAD_DIM),
        kv("llama.attention.layer_norm_rms_epsilon", FLOAT32, 1e-5),
        kv("llama.rope.freq_base", FLOAT32, 10000.0),
        kv("llama.vocab_size", UINT32, n_vocab),
        kv("tokenizer.ggml.model", STRING, "gpt2"),
        kv("tokenizer.ggml.pre", STRING, "gpt-2"),
        kv_array("tokenizer.ggml.tokens", STRING, tokens),
        kv_array("tokenizer.ggml.token_type", UINT32, types),
        # One merge whose result is no token: wick drops it, so there are no merges.
        kv_array("tokenizer.ggml.merges", STRING, ["x y"]),
        kv("tokenizer.ggml.bos_token_id", UINT32, n_vocab - 1),
        kv("tokenizer.ggml.eos_token_id", UINT32, n_vocab - 1),
        kv("tokenizer.ggml.add_bos_token", BOOL, False),
    ]
    infos, blobs, offset = [], [], 0
    for name, dims, gtype, values in tensors(n_vocab, rng):
        if gtype == GGML_F16:
            blob = struct.pack(f"<{len(values)}e", *values)
        else:
            blob = struct.pack(f"<{len(values)}f", *values)
        info = gguf_str(name) + struct.pack("<I", len(dims))
        info += b"".join(struct.pack("<Q", d) for d in dims)
        info += struct.pack("<IQ", gtype, offset)
        infos.append(info)
        pad = (-len(blob)) % ALIGN
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad
    header = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(meta))
    head = header + b"".join(meta) + b"".join(infos)
    head += b"\0" * ((-len(head)) % ALIGN)
    with open(args.out, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    main()
