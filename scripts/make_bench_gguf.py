#!/usr/bin/env python3
"""A GGUF for CPU speed comparisons of the K-quant formats: random weights in the layer
shape of Llama 3.2 1B (hidden 2048, feed-forward 8192, 32 query and 8 KV heads of 64),
whose rows are all multiples of 256, with the default model's vocabulary and tokenizer.

Why: the default model (SmolLM2-135M) is 576 wide, which is not a multiple of 256, so
llama-quantize gives most tensors of its K-quant files 32-wide fallbacks (Q5_0, Q5_1,
Q8_0) and only a few tensors run the Q4_K/Q5_K/Q6_K kernels. A file of this shape,
requantized with llama-quantize by scripts/bench_vs_llamacpp.sh (MODEL=...), runs each
format's own kernels on both engines. Speed does not depend on the weights' values, so
random weights measure what a real checkpoint of this shape would; the text it writes is
meaningless.

The tokenizer (and the chat template) come from the source GGUF, so both engines
tokenize as for the default model; the embedding and output are tied, as in Llama 3.2.

Usage (gguf-py from llama.cpp's source tree, numpy):
    PYTHONPATH=<llama.cpp>/gguf-py python3 scripts/make_bench_gguf.py \
        --tokenizer-from "$(wick model-path)" --layers 4 --out bench-l3shape-4l.F16.gguf
"""

import argparse

import numpy as np

import gguf


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer-from", required=True, help="GGUF whose tokenizer.* metadata is copied")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    src = gguf.GGUFReader(a.tokenizer_from)
    tokens = src.fields["tokenizer.ggml.tokens"]
    vocab = len(tokens.data)
    head_dim = a.hidden // a.heads

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"random llama-3.2-1b layer shape, {a.layers} layers, vocabulary of {vocab}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(8192)
    w.add_embedding_length(a.hidden)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    for name, field in src.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, field.contents(), vtype)

    rng = np.random.default_rng(a.seed)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    q, kv = a.heads * head_dim, a.kv_heads * head_dim
    w.add_tensor("token_embd.weight", normal(vocab, a.hidden))
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(a.hidden))
        w.add_tensor(p + "attn_q.weight", normal(q, a.hidden))
        w.add_tensor(p + "attn_k.weight", normal(kv, a.hidden))
        w.add_tensor(p + "attn_v.weight", normal(kv, a.hidden))
        w.add_tensor(p + "attn_output.weight", normal(a.hidden, q))
        w.add_tensor(p + "ffn_norm.weight", ones(a.hidden))
        w.add_tensor(p + "ffn_gate.weight", normal(a.ffn, a.hidden))
        w.add_tensor(p + "ffn_up.weight", normal(a.ffn, a.hidden))
        w.add_tensor(p + "ffn_down.weight", normal(a.hidden, a.ffn))
    w.add_tensor("output_norm.weight", ones(a.hidden))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(a.out)


if __name__ == "__main__":
    main()
