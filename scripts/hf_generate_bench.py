"""The peer for wick's GPU benchmarks: Hugging Face transformers `generate` on a
random-weight model of a named shape, on the same GPU, plus the device-to-device copy
bandwidth that sets the memory roofline. Prints one JSON object.

    python scripts/hf_generate_bench.py --shape llama-3-8b --batch 64 \
        --input-len 512 --output-len 256
    python scripts/hf_generate_bench.py --prompts FILE --output-len 256
    python scripts/hf_generate_bench.py --bandwidth-only

Shapes match wick's `random:<shape>` models. The weights are random (initialised on the
GPU, in bf16); nothing is downloaded. With --prompts, the batch is the file's lines, each
line's bytes taken as token ids: the token ids wick's byte-level tokenizer gives the same
text for a `random:<shape>` model (one token per byte, no BOS), so both engines see the
same prompts (lines of unequal length are left-padded). Needs torch and transformers (the
GPU machines have them).
"""

import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "llama-3-8b": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        tie_word_embeddings=False)),
    "llama-3.2-1b": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        tie_word_embeddings=True)),
    "qwen2-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
        tie_word_embeddings=True)),
}


def copy_bandwidth(nbytes=2 << 30, repeats=10):
    """Device-to-device copy: bytes read plus bytes written per second."""
    x = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    del x, y
    torch.cuda.empty_cache()
    return 2 * nbytes / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--prompts", help="one prompt per line; its bytes are the token ids")
    ap.add_argument("--skip-generate", action="store_true", help="bandwidth and sizes only")
    ap.add_argument("--bandwidth-only", action="store_true", help="copy bandwidth only")
    args = ap.parse_args()

    bw = copy_bandwidth()
    if args.bandwidth_only:
        print(json.dumps({"copy_bandwidth_bytes_per_s": bw,
                          "device": torch.cuda.get_device_name(0),
                          "torch": torch.__version__}))
        return
    cfg_cls, model_cls, kw = SHAPES[args.shape]
    config = cfg_cls(**kw)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # Built in bf16 on the GPU directly: no f32 copy of the weights, no host round trip.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = model_cls(config).eval()
    torch.set_default_dtype(torch.float32)
    torch.cuda.synchronize()
    init_s = time.perf_counter() - t0
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {
        "peer": "transformers",
        "shape": args.shape,
        "copy_bandwidth_bytes_per_s": bw,
        "weight_bytes": weight_bytes,
        "device": torch.cuda.get_device_name(0),
        "init_s": init_s,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attention": getattr(model.config, "_attn_implementation", None),
    }
    if not args.skip_generate:
        if args.prompts:
            with open(args.prompts, "rb") as f:
                rows = [list(line.rstrip(b"\n")) for line in f if line.strip()]
            width = max(map(len, rows))
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            ids, mask = ids.cuda(), mask.cuda()
            args.batch, args.input_len = len(rows), width
        else:
            gen = torch.Generator(device="cuda").manual_seed(0)
            ids = torch.randint(100, config.vocab_size - 100, (args.batch, args.input_len),
                                device="cuda", generator=gen)
            mask = torch.ones_like(ids)
        common = dict(do_sample=False, eos_token_id=None, pad_token_id=0,
                      attention_mask=mask)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=2, min_new_tokens=2, **common)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **common)
            torch.cuda.synchronize()
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = model.generate(ids, max_new_tokens=args.output_len,
                                 min_new_tokens=args.output_len, **common)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
        new = (res.shape[1] - args.input_len) * args.batch
        out.update({
            "batch": args.batch,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "output_tok_s": new / total,
            "ttft_s": ttft,
            "tpot_s": (total - ttft) / max(1, args.output_len - 1),
            "total_s": total,
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
