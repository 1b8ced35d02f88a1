//! A Hugging Face style safetensors snapshot through the whole loading path: resolve a
//! directory, read config.json, tokenizer.json and tokenizer_config.json, run greedy
//! generation.

mod common;

use std::sync::Arc;
use wick::config::ModelsConfig;

use wick::engine::{
    generate_greedy, CacheConfig, EngineConfig, EngineCore, EngineStats, ModelRunner,
    SchedulerConfig,
};
use wick::hub::{resolve, HubOptions, ModelFormat};
use wick::model::{load, LoadOptions};

#[test]
fn random_llama_snapshot_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    common::write_random_llama(dir.path(), 11).unwrap();
    let opts = HubOptions::from_env();
    let resolved = resolve(
        Some(dir.path().to_str().unwrap()),
        &ModelsConfig::embedded(),
        &opts,
    )
    .unwrap();
    assert_eq!(resolved.format, ModelFormat::Safetensors);
    let loaded = load(&resolved, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.config().num_layers, 2);
    let prompt = loaded.tokenizer.encode("t5 t9 t33 t2", false).unwrap();
    assert_eq!(prompt, vec![5, 9, 33, 2]);
    assert_eq!(loaded.tokenizer.eos_ids(), &[1]);
    let cache = CacheConfig::for_model(loaded.model.config(), 4, Some(256), 0.0).unwrap();
    assert_eq!(cache.num_blocks, 64);
    // The same snapshot through two engines: prompts prefilled 3 tokens a step, and whole.
    let engine = |max_step_tokens: usize| {
        let loaded = load(&resolved, &LoadOptions::default()).unwrap();
        let config = EngineConfig {
            scheduler: SchedulerConfig {
                max_batch_prefill_tokens: max_step_tokens,
                ..Default::default()
            },
            check_invariants: true,
            ..Default::default()
        };
        let mut engine = EngineCore::new(
            ModelRunner::new(loaded.model, cache),
            Arc::new(loaded.tokenizer),
            Arc::new(EngineStats::default()),
            config,
        );
        let out = generate_greedy(
            &mut engine,
            std::slice::from_ref(&prompt),
            8,
            false,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(engine.pool().num_used(), 0);
        out
    };
    let a = engine(3);
    let b = engine(64);
    assert_eq!(a, b, "chunked and whole prefill disagree");
    assert_eq!(a[0].generated.len(), 8);
}
