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

use candle_core::{DType, Device, Tensor};
use wick::config::ModelsConfig;
use wick::engine::{
    generate_greedy, CacheConfig, EngineConfig, EngineCore, EngineStats, FlatBatch, ModelRunner,
    SchedulerConfig, Sequence,
};
use wick::hub::{resolve, HubOptions, ResolvedModel};
use wick::kv::BlockPool;
use wick::model::{load, LoadOptions};

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
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(
        reference_dir(arch).join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
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
            margins: t[&format!("margin_{i}")].to_vec1::<f32>().unwrap(),
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

fn check(arch: &str) {
    let (_dir, resolved) = snapshot(arch);
    let cases = cases(arch);
    assert!(!cases.is_empty(), "{arch}: no prompts in the reference");
    let cache = CacheConfig {
        block_size: BLOCK_SIZE,
        num_blocks: 64,
    };
    let loaded = load(&resolved, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.config().arch.as_str(), arch);
    let mut runner = ModelRunner::new(loaded.model, cache);
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        let got = prefill_logits(&mut runner, &c.prompt);
        assert_eq!(got.len(), c.logits.len(), "{arch} prompt {i}: rows");
        let scale = std_dev(&c.logits);
        let diff = got
            .iter()
            .zip(&c.logits)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        eprintln!(
            "{arch} prompt {i} ({} tokens): max |wick - transformers| = {diff:.2e}, \
             logit std {scale:.2}, ratio {:.2e}",
            c.prompt.len(),
            diff / scale
        );
        worst = worst.max(diff / scale);
        assert!(
            diff <= TOLERANCE * scale,
            "{arch} prompt {i}: logits differ by {diff} (> {TOLERANCE} x std {scale})"
        );
    }
    // Greedy continuations through the engine, all prompts in one batch.
    let loaded = load(&resolved, &LoadOptions::default()).unwrap();
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
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt.clone()).collect();
    let n = cases[0].greedy.len();
    let out = generate_greedy(&mut engine, &prompts, n, false, |_, _| {}).unwrap();
    for (i, (o, c)) in out.iter().zip(&cases).enumerate() {
        assert_eq!(
            o.generated, c.greedy,
            "{arch} prompt {i}: greedy tokens differ (reference top-1 margins {:?})",
            c.margins
        );
    }
    eprintln!("{arch}: worst max diff / std = {worst:.2e}");
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
