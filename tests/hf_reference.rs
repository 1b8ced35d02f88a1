//! wick's safetensors path against transformers: tiny random checkpoints of each supported
//! family, made with transformers' own model classes by `scripts/make_hf_reference.py`
//! (tests/reference/hf/<arch>/: config.json and model.safetensors as `save_pretrained`
//! writes them, f32 weights, and reference.safetensors with transformers' f32 eager logits
//! of every prompt position and its greedy continuations).
//!
//! Each checkpoint goes through wick's loader as a snapshot directory would (a word-level
//! tokenizer is written beside it: the prompts are token ids, the tokenizer is not what is
//! compared). Logits come from the paged CPU cache, the prompt prefilled in two chunks
//! across 4-token blocks; greedy tokens from the engine.
//!
//! Tolerance: wick's CPU attention keeps K/V in f16 and rounds queries and softmax
//! weights to f16 (as llama.cpp does), so logits are not bit-equal to an f32 reference.
//! The test bounds max |wick - transformers| over every logit of every position by
//! `TOLERANCE` times the standard deviation of the reference logits.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use wick::config::ModelsConfig;
use wick::engine::{
    generate_greedy, CacheConfig, EngineConfig, EngineCore, EngineStats, FlatBatch, ModelRunner,
    SchedulerConfig, Sequence,
};
use wick::hub::{resolve, HubOptions, ResolvedModel};
use wick::kv::BlockPool;
use wick::model::{load, LoadOptions, Model};

/// Bound on max |wick - transformers| / std(reference logits).
const TOLERANCE: f32 = 1e-2;

const BLOCK_SIZE: usize = 4;

fn reference_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/hf")
        .join(arch)
}

/// The checkpoint in a temporary snapshot directory with a word-level tokenizer.
fn snapshot(arch: &str) -> (tempfile::TempDir, ResolvedModel) {
    let src = reference_dir(arch);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    // No end-of-sequence token: greedy decoding runs to its length.
    common::write_word_tokenizer(dir.path(), vocab, None).unwrap();
    let resolved = resolve(
        Some(dir.path().to_str().unwrap()),
        &ModelsConfig::embedded(),
        &HubOptions::from_env(),
    )
    .unwrap();
    (dir, resolved)
}

struct Case {
    prompt: Vec<u32>,
    /// `[prompt len, vocab]`.
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
    margins: Vec<f32>,
}

fn cases(arch: &str) -> Vec<Case> {
    cases_in(&reference_dir(arch).join("reference.safetensors"))
}

/// The prompts, logits and greedy tokens of one reference file (margins where it has
/// them: llama.cpp's references have none).
fn cases_in(path: &Path) -> Vec<Case> {
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let ids = |name: &str| -> Vec<u32> {
        t[name]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    };
    (0..)
        .take_while(|i| t.contains_key(&format!("prompt_{i}")))
        .map(|i| Case {
            prompt: ids(&format!("prompt_{i}")),
            logits: t[&format!("logits_{i}")].to_vec2::<f32>().unwrap(),
            greedy: ids(&format!("greedy_{i}")),
            margins: t
                .get(&format!("margin_{i}"))
                .map(|m| m.to_vec1::<f32>().unwrap())
                .unwrap_or_default(),
        })
        .collect()
}

/// Logits of every prompt position through the paged cache, the prompt prefilled in two
/// chunks (so the second attends to cached context).
fn prefill_logits(runner: &mut ModelRunner, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut pool = BlockPool::new(runner.num_blocks());
    // Hold a few blocks first so the sequence's blocks are not 0, 1, 2...
    let _holes = pool.allocate(3).unwrap();
    let mut seq = Sequence::new(prompt.to_vec());
    let mut rows = Vec::new();
    for n in [prompt.len() / 3, prompt.len() - prompt.len() / 3] {
        seq.block_table.grow(n, BLOCK_SIZE, &mut pool).unwrap();
        let mut batch = FlatBatch::build(&[(&seq, n)], BLOCK_SIZE).unwrap();
        batch.logits_rows = (0..n as u32).collect();
        let logits = runner.forward(&batch).unwrap();
        rows.extend(
            logits
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
        );
        seq.num_computed += n;
    }
    rows
}

fn std_dev(rows: &[Vec<f32>]) -> f32 {
    let all: Vec<f64> = rows.iter().flatten().map(|&x| x as f64).collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    (all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / all.len() as f64).sqrt() as f32
}

/// max |got - reference| / std(reference) over every logit of every prompt, checked
/// against `TOLERANCE`.
fn compare_logits(arch: &str, runner: &mut ModelRunner, cases: &[Case]) -> f32 {
    compare_logits_within(arch, runner, cases, TOLERANCE)
}

/// max |got - reference| / std(reference) over every logit of every prompt, checked
/// against `tolerance`.
fn compare_logits_within(
    arch: &str,
    runner: &mut ModelRunner,
    cases: &[Case],
    tolerance: f32,
) -> f32 {
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        let got = prefill_logits(runner, &c.prompt);
        assert_eq!(got.len(), c.logits.len(), "{arch} prompt {i}: rows");
        let scale = std_dev(&c.logits);
        let diff = got
            .iter()
            .zip(&c.logits)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        eprintln!(
            "{arch} prompt {i} ({} tokens): max |wick - reference| = {diff:.2e}, \
             logit std {scale:.2}, ratio {:.2e}",
            c.prompt.len(),
            diff / scale
        );
        worst = worst.max(diff / scale);
        assert!(
            diff <= tolerance * scale,
            "{arch} prompt {i}: logits differ by {diff} (> {tolerance} x std {scale})"
        );
    }
    worst
}

fn check(arch: &str) {
    let (_dir, resolved) = snapshot(arch);
    let cases = cases(arch);
    assert!(!cases.is_empty(), "{arch}: no prompts in the reference");
    check_against(arch, &resolved, &[("transformers", &cases)], TOLERANCE);
}

/// Logits of every prompt against each reference (within `TOLERANCE`), then greedy
/// continuations through the engine, all prompts in one batch, against each reference's.
/// Returns the worst max diff / std per reference.
fn check_against(
    arch: &str,
    resolved: &ResolvedModel,
    references: &[(&str, &[Case])],
    tolerance: f32,
) -> Vec<f32> {
    let cache = CacheConfig {
        block_size: BLOCK_SIZE,
        num_blocks: 64,
    };
    let loaded = load(resolved, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.config().arch.as_str(), arch);
    let mut runner = ModelRunner::new(loaded.model, cache);
    let worst: Vec<f32> = references
        .iter()
        .map(|(name, cases)| {
            compare_logits_within(&format!("{arch} vs {name}"), &mut runner, cases, tolerance)
        })
        .collect();
    let loaded = load(resolved, &LoadOptions::default()).unwrap();
    let mut engine = EngineCore::new(
        ModelRunner::new(loaded.model, cache),
        Arc::new(loaded.tokenizer),
        Arc::new(EngineStats::default()),
        EngineConfig {
            scheduler: SchedulerConfig {
                max_batch_prefill_tokens: 16,
                ..Default::default()
            },
            check_invariants: true,
            ..Default::default()
        },
    );
    let cases = references[0].1;
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt.clone()).collect();
    let n = cases[0].greedy.len();
    let out = generate_greedy(&mut engine, &prompts, n, false, |_, _| {}).unwrap();
    for (name, cases) in references {
        for (i, (o, c)) in out.iter().zip(cases.iter()).enumerate() {
            assert_eq!(c.prompt, prompts[i], "{arch}: {name}'s prompt {i} differs");
            assert_eq!(
                o.generated, c.greedy,
                "{arch} prompt {i}: greedy tokens differ from {name}'s (reference top-1 \
                 margins {:?})",
                c.margins
            );
        }
    }
    for ((name, _), w) in references.iter().zip(&worst) {
        eprintln!("{arch} vs {name}: worst max diff / std = {w:.2e}");
    }
    worst
}

#[test]
fn llama_with_llama3_rope_scaling_and_tied_embeddings() {
    check("llama");
}

#[test]
fn mistral_with_a_sliding_window() {
    check("mistral");
}

#[test]
fn qwen2_with_qkv_bias() {
    check("qwen2");
}

#[test]
fn qwen3_with_per_head_qk_norm() {
    check("qwen3");
}

#[test]
fn phi3_with_fused_projections_partial_rotary_and_longrope() {
    check("phi3");
}

#[test]
fn gemma2_with_soft_capping_and_alternating_windows() {
    check("gemma2");
}

#[test]
fn gemma3_with_qk_norm_windows_and_two_rope_bases() {
    check("gemma3");
}

#[test]
fn mixtral_with_renormalised_top2_of_4_experts_and_a_sliding_window() {
    check("mixtral");
}

#[test]
fn qwen3_moe_with_unnormalised_top2_of_8_experts_and_a_dense_layer() {
    check("qwen3_moe");
}

/// The MoE checkpoints with their experts fused as transformers 5 holds them in memory
/// (`mlp.experts.gate_up_proj` `[experts, 2 * inter, hidden]`, gate rows first, and
/// `mlp.experts.down_proj` `[experts, hidden, inter]`), rewritten from the per-expert
/// tensors `save_pretrained` wrote: the same logits.
#[test]
fn moe_experts_fused_as_transformers_5_holds_them() {
    for (arch, saved, [g, u, d]) in [
        ("mixtral", "block_sparse_moe", ["w1", "w3", "w2"]),
        ("qwen3_moe", "mlp", ["gate_proj", "up_proj", "down_proj"]),
    ] {
        let (dir, resolved) = snapshot(arch);
        let path = dir.path().join("model.safetensors");
        let mut t: HashMap<String, Tensor> =
            candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let layers: Vec<String> = t
            .keys()
            .filter(|k| k.ends_with(&format!("{saved}.experts.0.{g}.weight")))
            .map(|k| k.split(&format!(".{saved}.")).next().unwrap().to_string())
            .collect();
        assert!(!layers.is_empty(), "{arch}: no experts");
        for l in layers {
            let mut gate_up = Vec::new();
            let mut down = Vec::new();
            for e in 0.. {
                let name = |w: &str| format!("{l}.{saved}.experts.{e}.{w}.weight");
                let Some(gate) = t.remove(&name(g)) else {
                    break;
                };
                let up = t.remove(&name(u)).unwrap();
                gate_up.push(Tensor::cat(&[gate, up], 0).unwrap());
                down.push(t.remove(&name(d)).unwrap());
            }
            let router = t.remove(&format!("{l}.{saved}.gate.weight")).unwrap();
            t.insert(format!("{l}.mlp.gate.weight"), router);
            t.insert(
                format!("{l}.mlp.experts.gate_up_proj"),
                Tensor::stack(&gate_up, 0).unwrap(),
            );
            t.insert(
                format!("{l}.mlp.experts.down_proj"),
                Tensor::stack(&down, 0).unwrap(),
            );
        }
        assert!(!t.keys().any(|k| k.contains(".experts.0.")), "{arch}");
        candle_core::safetensors::save(&t, &path).unwrap();
        let loaded = load(&resolved, &LoadOptions::default()).unwrap();
        let cache = CacheConfig {
            block_size: BLOCK_SIZE,
            num_blocks: 64,
        };
        let mut runner = ModelRunner::new(loaded.model, cache);
        compare_logits(
            &format!("{arch} (fused experts)"),
            &mut runner,
            &cases(arch),
        );
    }
}

/// A qwen2/qwen3/phi3 checkpoint as llama.cpp's converter writes it (f32 tensors under
/// GGUF names, `<arch>.*` metadata; these families keep the Hugging Face q/k layout), read
/// back through wick's GGUF loader. phi3 keeps `attn_qkv` and `ffn_up` (gate and up)
/// fused, gives the rotated width as `rope.dimension_count` (no `key_length`), and its
/// longrope factors as `rope_factors_{long,short}` tensors with the original context and
/// the attention factor in metadata.
fn gguf_of(arch: &str) -> Model {
    let src = reference_dir(arch);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let rename = |name: &str| -> String {
        let table = [
            ("model.embed_tokens.", "token_embd."),
            ("model.norm.", "output_norm."),
            ("lm_head.", "output."),
            ("model.layers.", "blk."),
            ("input_layernorm.", "attn_norm."),
            ("post_attention_layernorm.", "ffn_norm."),
            ("self_attn.q_proj.", "attn_q."),
            ("self_attn.k_proj.", "attn_k."),
            ("self_attn.v_proj.", "attn_v."),
            ("self_attn.o_proj.", "attn_output."),
            ("self_attn.q_norm.", "attn_q_norm."),
            ("self_attn.k_norm.", "attn_k_norm."),
            ("mlp.gate_proj.", "ffn_gate."),
            ("mlp.up_proj.", "ffn_up."),
            ("mlp.down_proj.", "ffn_down."),
            ("self_attn.qkv_proj.", "attn_qkv."),
            ("mlp.gate_up_proj.", "ffn_up."),
        ];
        table
            .iter()
            .fold(name.to_string(), |n, (from, to)| n.replace(from, to))
    };
    let mut tensors: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(name, t)| (rename(name), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    let u = |k: &str| gguf_file::Value::U32(config[k].as_u64().unwrap() as u32);
    let f = |x: f64| gguf_file::Value::F32(x as f32);
    let head_dim = config["head_dim"].as_u64().unwrap_or(
        config["hidden_size"].as_u64().unwrap() / config["num_attention_heads"].as_u64().unwrap(),
    );
    let mut metadata: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (format!("{arch}.embedding_length"), u("hidden_size")),
        (
            format!("{arch}.feed_forward_length"),
            u("intermediate_size"),
        ),
        (format!("{arch}.block_count"), u("num_hidden_layers")),
        (
            format!("{arch}.attention.head_count"),
            u("num_attention_heads"),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u("num_key_value_heads"),
        ),
        (format!("{arch}.vocab_size"), u("vocab_size")),
        (
            format!("{arch}.context_length"),
            u("max_position_embeddings"),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            f(config["rms_norm_eps"].as_f64().unwrap()),
        ),
        (
            format!("{arch}.rope.freq_base"),
            f(config["rope_parameters"]["rope_theta"].as_f64().unwrap()),
        ),
    ];
    let rope = &config["rope_parameters"];
    if arch == "phi3" {
        // The converter's numbers: rotated width, original context, and
        // sqrt(1 + ln(s) / ln(original)) for s = context / original.
        let rot = (head_dim as f64 * rope["partial_rotary_factor"].as_f64().unwrap()) as u32;
        let original = rope["original_max_position_embeddings"].as_u64().unwrap();
        let s = config["max_position_embeddings"].as_u64().unwrap() as f64 / original as f64;
        metadata.extend([
            (
                format!("{arch}.rope.dimension_count"),
                gguf_file::Value::U32(rot),
            ),
            (
                format!("{arch}.rope.scaling.original_context_length"),
                gguf_file::Value::U32(original as u32),
            ),
            (
                format!("{arch}.rope.scaling.attn_factor"),
                f((1.0 + s.ln() / (original as f64).ln()).sqrt()),
            ),
            (
                format!("{arch}.attention.sliding_window"),
                gguf_file::Value::U32(0),
            ),
        ]);
        for which in ["long", "short"] {
            let factors: Vec<f32> = rope[format!("{which}_factor")]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let t = Tensor::new(factors, &Device::Cpu).unwrap();
            tensors.push((
                format!("rope_factors_{which}.weight"),
                QTensor::quantize(&t, GgmlDType::F32).unwrap(),
            ));
        }
    } else {
        metadata.push((
            format!("{arch}.attention.key_length"),
            gguf_file::Value::U32(head_dim as u32),
        ));
    }
    let mut file = tempfile::tempfile().unwrap();
    gguf_file::write(
        &mut file,
        &metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect::<Vec<_>>(),
        &tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    use std::io::Seek;
    file.rewind().unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    Model::from_gguf(&content, &mut file, &Device::Cpu).unwrap()
}

#[test]
fn qwen2_qwen3_and_phi3_through_gguf() {
    for arch in ["qwen2", "qwen3", "phi3"] {
        let model = gguf_of(arch);
        assert_eq!(model.config().arch.as_str(), arch);
        assert_eq!(model.config().qk_norm, arch == "qwen3");
        assert_eq!(model.config().qkv_bias, arch == "qwen2");
        let mut runner = ModelRunner::new(
            model,
            CacheConfig {
                block_size: BLOCK_SIZE,
                num_blocks: 64,
            },
        );
        let worst = compare_logits(&format!("{arch} (gguf)"), &mut runner, &cases(arch));
        eprintln!("{arch} (gguf): worst max diff / std = {worst:.2e}");
    }
}

/// tests/reference/gguf: the fixtures converted by llama.cpp's own converter, with
/// llama.cpp's and transformers' logits of what was converted
/// (`scripts/make_gguf_reference.py`).
fn gguf_reference(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/gguf")
        .join(arch)
}

fn gguf_resolved(path: &Path) -> ResolvedModel {
    resolve(
        Some(path.to_str().unwrap()),
        &ModelsConfig::embedded(),
        &HubOptions::from_env(),
    )
    .unwrap()
}

/// A converter-made GGUF through wick's loader (weights and tokenizer), against llama.cpp
/// and transformers, logits within `TOLERANCE` and greedy tokens exact.
fn check_converted(arch: &str) {
    check_converted_as(arch, arch);
}

/// As [`check_converted`], for a GGUF that wick reads as architecture `read_as`.
fn check_converted_as(arch: &str, read_as: &str) {
    let base = gguf_reference(arch);
    let gguf = base.with_extension("gguf");
    let llamacpp = cases_in(&base.with_extension("llamacpp.safetensors"));
    let transformers = cases_in(&base.with_extension("transformers.safetensors"));
    assert!(
        !llamacpp.is_empty() && llamacpp.len() == transformers.len(),
        "{arch}"
    );
    let resolved = gguf_resolved(&gguf);
    eprintln!("{arch}.gguf, read as {read_as}:");
    check_against(
        read_as,
        &resolved,
        &[("llama.cpp", &llamacpp), ("transformers", &transformers)],
        TOLERANCE,
    );
}

#[test]
fn gemma2_gguf_from_llamacpps_converter() {
    check_converted("gemma2");
}

#[test]
fn gemma3_gguf_from_llamacpps_converter() {
    check_converted("gemma3");
}

#[test]
fn mixtral_gguf_from_llamacpps_converter() {
    check_converted("mixtral");
}

#[test]
fn qwen3_moe_gguf_from_llamacpps_converter() {
    check_converted("qwen3_moe");
}

/// The MoE GGUFs quantized by llama.cpp's llama-quantize (Q8_0; qwen3_moe's 48-wide down
/// experts, which Q8_0 blocks of 32 cannot tile, in llama-quantize's fallback F16): the
/// 3-D expert tensors split into per-expert quantized layers, against llama.cpp's logits
/// of the same file. wick and llama.cpp both quantize the activations that meet Q8_0
/// weights (to blocks of their own), which moves these logits (an output head with 4x the
/// usual scale, Q8_0 too) by about 0.17, about 0.05 of their std, whether the weights are
/// Q8_0 or the same values in f32. Where that noise changes which experts a token is
/// routed to, its logits and the ones after it jump (llama.cpp's own Q8_0 run leaves its
/// f32 greedy path on qwen3_moe's third prompt), so rather than the worst row this checks
/// that at least 90% of the rows (token positions) are within `Q8_TOLERANCE` of
/// llama.cpp's, and no greedy tokens; a wrong expert layout moves every row by the
/// logits' whole spread.
#[test]
fn moe_gguf_quantized_by_llama_quantize() {
    const Q8_TOLERANCE: f32 = 1e-1;
    for arch in ["mixtral", "qwen3_moe"] {
        let base = gguf_reference(arch);
        let q8 = base.with_extension("q8_0.gguf");
        let mut file = std::fs::File::open(&q8).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let exps = content
            .tensor_infos
            .get("blk.0.ffn_gate_exps.weight")
            .unwrap();
        assert_eq!(exps.ggml_dtype, GgmlDType::Q8_0, "{arch}");
        let llamacpp = cases_in(&base.with_extension("q8_0.llamacpp.safetensors"));
        let loaded = load(&gguf_resolved(&q8), &LoadOptions::default()).unwrap();
        let mut runner = ModelRunner::new(
            loaded.model,
            CacheConfig {
                block_size: BLOCK_SIZE,
                num_blocks: 64,
            },
        );
        let (mut rows, mut within) = (0, 0);
        let mut ratios = Vec::new();
        for c in &llamacpp {
            let got = prefill_logits(&mut runner, &c.prompt);
            let scale = std_dev(&c.logits);
            for (a, b) in got.iter().zip(&c.logits) {
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                rows += 1;
                within += (d <= Q8_TOLERANCE * scale) as usize;
                ratios.push(d / scale);
            }
        }
        ratios.sort_by(f32::total_cmp);
        eprintln!(
            "{arch} (Q8_0) vs llama.cpp (Q8_0): {within} of {rows} rows within {Q8_TOLERANCE} x \
             std; max diff / std: median {:.2e}, worst {:.2e}",
            ratios[rows / 2],
            ratios[rows - 1]
        );
        assert!(
            within * 10 >= rows * 9,
            "{arch}: only {within} of {rows} rows within {Q8_TOLERANCE} x std of llama.cpp's"
        );
    }
}

/// llama's llama3 rope scaling becomes a `rope_freqs` tensor; mistral converts as
/// llama (its window dropped: the variant has none); phi3 keeps its fused `attn_qkv` and
/// gate/up `ffn_up`, its partial rotary and its longrope factors as `rope_factors_long`/
/// `rope_factors_short` tensors.
#[test]
fn llama_mistral_qwen2_qwen3_and_phi3_gguf_from_llamacpps_converter() {
    for arch in ["llama", "qwen2", "qwen3", "phi3"] {
        check_converted(arch);
    }
    check_converted_as("mistral", "llama");
}
