#!/usr/bin/env python3
"""Builds tiny random checkpoints with transformers' own model classes and records their
logits and greedy continuations, for tests/hf_reference.rs.

Run by hand (not by CI), from the repository root, in a virtual environment outside the
repository with torch (the CPU wheel is enough), transformers and safetensors:

    python3 -m venv VENV && VENV/bin/pip install torch transformers safetensors
    VENV/bin/python scripts/make_hf_reference.py [ARCH...]

(naming architectures regenerates only theirs).

The committed files were made with transformers 5.25.0 and torch 2.15.0 (meta.json says
so per architecture); transformers 5 writes `rope_parameters` and `dtype` in config.json,
where 4.x wrote `rope_scaling`/`rope_theta` and `torch_dtype` (model::config reads both).

For each architecture it writes tests/reference/hf/<arch>/:

- config.json: as `save_pretrained` writes it (this transformers version's spelling);
- model.safetensors: the weights, in f32;
- reference.safetensors: per prompt `prompt_<i>` (the token ids, i64), `logits_<i>`
  (f32 logits of every prompt position, `[len, vocab]`, eager attention in f32) and
  `greedy_<i>` (the 8 tokens greedy decoding appends, i64, by full recomputation each
  step), `margin_<i>` (f32, the top-1 minus top-2 logit of each greedy step);
- meta.json: the transformers and torch versions and the prompt lengths.

Every weight is drawn at random (norm weights near 1 but not 1, biases non-zero), with
scales that give logits a spread of a few units, so that each feature shows in the logits.
No tokenizer is written: the test feeds token ids and gives each snapshot a word-level
tokenizer of its own in a temporary directory.

Features per architecture:
- all: rope_theta 20000 (not the default 10000, so that a config read that misses it shows).
- llama: rope_scaling of type llama3 with original_max_position_embeddings = 64 (so its
  three frequency bands are all present for head_dim 16), prompts reaching position 79;
  tie_word_embeddings = True.
- mistral: sliding_window = 8; prompts of 23 and 80 tokens go past it.
- qwen2: q/k/v biases (non-zero).
- qwen3: per-head q/k RMSNorm with random weights; head_dim given explicitly (24, so
  heads * head_dim != hidden_size).
- phi3: fused qkv_proj and gate_up_proj; partial_rotary_factor 0.75 (12 of 16 head
  dimensions rotated, as Phi-4-mini); longrope scaling with random short/long factors and
  original_max_position_embeddings = 16 (max_position_embeddings 256, so transformers'
  attention factor is not 1). transformers picks the long factors for a forward pass whose
  length exceeds the original length, the short ones otherwise; wick (like vLLM and
  llama.cpp) picks once, by max_position_embeddings, so phi3's prompts (20, 45 and 80
  tokens) all exceed the original length and every pass uses the long factors.
- gemma2: sliding_window = 8 on layer 0 and global attention on layer 1, prompts of 23
  and 77 tokens past the window; query_pre_attn_scalar 24 (not head_dim 16); attention
  logits soft-capped at 3 and final logits at 10 (low enough to bite on these logits);
  (1 + w) norms around attention and the MLP; GeGLU; embeddings scaled by sqrt(hidden)
  (untied: tied, the scaled embedding dominates the residual and greedy decoding repeats
  the last token).
- gemma3 (Gemma3ForCausalLM, gemma3_text): 4 layers, sliding_window_pattern 3 (layers 0,
  1 and 3 sliding with window 8, layer 2 global), prompts of 7, 23 and 77 tokens; two rope
  bases, 100 on the sliding layers and 20000 with linear scaling (factor 2) on the global
  one (transformers 5 writes them per layer type in rope_parameters), so that a mix-up
  shows; per-head (1 + w) q/k norms; query_pre_attn_scalar 24; no soft-capping (as
  released Gemma 3 checkpoints); otherwise as gemma2.
- mixtral: a sparse MoE MLP of 4 experts, top-2, the two weights renormalised to sum to 1;
  sliding_window = 16 (every layer); prompts of 23, 40 and 80 tokens, so every expert of
  every layer gets tokens.
- qwen3_moe: qwen3's attention (per-head q/k norms, head_dim 24) with 8 experts of
  moe_intermediate_size 48, top-2, norm_topk_prob False (the top-k softmax weights are
  used as they are); mlp_only_layers = [1], so layer 1 has a dense MLP of
  intermediate_size 128.
- (transformers 5 holds experts fused as 3-D `experts.gate_up_proj`/`experts.down_proj`
  parameters, 2-D matrices use fan_in = the last dimension; `save_pretrained` writes them
  per expert, `block_sparse_moe.experts.<e>.w{1,2,3}` for mixtral and
  `mlp.experts.<e>.{gate,up,down}_proj` for qwen3_moe.)
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference", "hf")
VOCAB = 320
PROMPT_LENS = [7, 23, 80]
# Per-architecture prompt lengths where they differ from PROMPT_LENS.
ARCH_PROMPT_LENS = {
    "phi3": [20, 45, 80],
    "gemma2": [7, 23, 77],
    "gemma3": [7, 23, 77],
    "mixtral": [23, 40, 80],
    "qwen3_moe": [23, 40, 80],
}
NEW_TOKENS = 8

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=20000.0,
    tie_word_embeddings=False,
)


def configs():
    llama = transformers.LlamaConfig(
        **{**COMMON, "tie_word_embeddings": True},
        head_dim=16,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    mistral = transformers.MistralConfig(**COMMON, head_dim=16, sliding_window=8)
    qwen2 = transformers.Qwen2Config(**COMMON, use_sliding_window=False)
    qwen3 = transformers.Qwen3Config(
        **COMMON, head_dim=24, attention_bias=False, use_sliding_window=False
    )
    fgen = torch.Generator().manual_seed(77)
    rot_pairs = int(16 * 0.75) // 2

    def factors(lo, hi):
        return [round(lo + (hi - lo) * float(x), 4) for x in torch.rand(rot_pairs, generator=fgen)]

    phi3 = transformers.Phi3Config(
        **COMMON,
        partial_rotary_factor=0.75,
        original_max_position_embeddings=16,
        rope_scaling={
            "rope_type": "longrope",
            "short_factor": factors(1.0, 1.5),
            "long_factor": factors(1.5, 8.0),
            "original_max_position_embeddings": 16,
            "partial_rotary_factor": 0.75,
            "rope_theta": 20000.0,
        },
        sliding_window=None,
        pad_token_id=None,
        eos_token_id=2,
    )
    gemma2 = transformers.Gemma2Config(
        **COMMON,
        head_dim=16,
        sliding_window=8,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=10.0,
        hidden_activation="gelu_pytorch_tanh",
        pad_token_id=None,
        eos_token_id=2,
        bos_token_id=1,
    )
    gemma3 = transformers.Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 4},
        head_dim=16,
        sliding_window=8,
        sliding_window_pattern=3,
        query_pre_attn_scalar=24,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        },
        hidden_activation="gelu_pytorch_tanh",
        pad_token_id=None,
        eos_token_id=2,
        bos_token_id=1,
    )
    mixtral = transformers.MixtralConfig(
        **{**COMMON, "intermediate_size": 96},
        head_dim=16,
        sliding_window=16,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    qwen3_moe = transformers.Qwen3MoeConfig(
        **COMMON,
        head_dim=24,
        moe_intermediate_size=48,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        attention_bias=False,
        use_sliding_window=False,
    )
    # Each architecture's seeds follow its position here: add new ones at the end, or the
    # fixtures after it change.
    return [
        ("llama", transformers.LlamaForCausalLM, llama),
        ("mistral", transformers.MistralForCausalLM, mistral),
        ("qwen2", transformers.Qwen2ForCausalLM, qwen2),
        ("qwen3", transformers.Qwen3ForCausalLM, qwen3),
        ("phi3", transformers.Phi3ForCausalLM, phi3),
        ("gemma2", transformers.Gemma2ForCausalLM, gemma2),
        ("gemma3", transformers.Gemma3ForCausalLM, gemma3),
        ("mixtral", transformers.MixtralForCausalLM, mixtral),
        ("qwen3_moe", transformers.Qwen3MoeForCausalLM, qwen3_moe),
    ]


def randomize(model, gen):
    """Every parameter drawn anew: matrices ~ N(0, 1/fan_in), the output head
    ~ N(0, 16/fan_in) and embeddings ~ N(0, 0.25) (logits of std about 4, tied or not),
    norm weights ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.3^2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith(".bias"):
                p.copy_(0.3 * r)
            elif "embed_tokens" in name:
                p.copy_(0.5 * r)
            elif "lm_head" in name:
                p.copy_(4.0 * r / (p.shape[-1] ** 0.5))
            else:
                p.copy_(r / (p.shape[-1] ** 0.5))


@torch.no_grad()
def logits_of(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, ids, n):
    ids = list(ids)
    new, margins = [], []
    for _ in range(n):
        last = logits_of(model, ids)[-1]
        top = torch.topk(last, 2)
        tok = int(top.indices[0])
        margins.append(float(top.values[0] - top.values[1]))
        new.append(tok)
        ids.append(tok)
    return new, margins


def main():
    only = set(sys.argv[1:])
    torch.manual_seed(0)
    for arch_i, (arch, cls, config) in enumerate(configs()):
        if only and arch not in only:
            continue
        prompt_lens = ARCH_PROMPT_LENS.get(arch, PROMPT_LENS)
        config._attn_implementation = "eager"
        gen = torch.Generator().manual_seed(1000 + arch_i)
        model = cls(config).to(torch.float32).eval()
        model.config._attn_implementation = "eager"
        randomize(model, gen)
        out = os.path.join(OUT, arch)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        for extra in ("generation_config.json",):
            path = os.path.join(out, extra)
            if os.path.exists(path):
                os.remove(path)
        ref = {}
        pgen = torch.Generator().manual_seed(2000 + arch_i)
        for i, n in enumerate(prompt_lens):
            ids = torch.randint(0, VOCAB, (n,), generator=pgen).tolist()
            logits = logits_of(model, ids)
            new, margins = greedy(model, ids, NEW_TOKENS)
            ref[f"prompt_{i}"] = torch.tensor(ids, dtype=torch.int64)
            ref[f"logits_{i}"] = logits.contiguous()
            ref[f"greedy_{i}"] = torch.tensor(new, dtype=torch.int64)
            ref[f"margin_{i}"] = torch.tensor(margins, dtype=torch.float32)
            print(
                f"{arch} prompt {i} ({n} tokens): logit std {logits.std():.2f}, "
                f"greedy {new}, smallest margin {min(margins):.3f}",
                file=sys.stderr,
            )
        save_file(ref, os.path.join(out, "reference.safetensors"))
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump(
                {
                    "class": cls.__name__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "weights": "f32",
                    "attention": "eager",
                    "prompt_lens": prompt_lens,
                    "new_tokens": NEW_TOKENS,
                },
                f,
                indent=1,
            )
            f.write("\n")


if __name__ == "__main__":
    main()
