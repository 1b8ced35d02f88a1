//! Structured output at full speed: 16 concurrent JSON-schema requests against 16
//! unconstrained ones on the default model, the same prompts and the same lengths
//! (64 new tokens each; the schema asks for at least 8 objects, more than 64 tokens, so
//! no constrained candidate ends early), alternated in one run. Prints each side's output tokens per second
//! (median of the rounds), their ratio, and the grammar masks' time per token (p50 and
//! p99, as histogram bucket bounds) and its share of step time.
//!
//! `cargo bench --bench grammar` (`WICK_BENCH_ROUNDS`, default 5).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use wick::config::ModelsConfig;
use wick::engine::{
    CacheConfig, EngineConfig, EngineCore, EngineStats, Event, EventReceiver, FinishReason,
    GenerationRequest, ModelRunner, SchedulerConfig, StoppingParams,
};
use wick::grammar::{GrammarCompiler, GrammarLimits, GrammarSpec};
use wick::hub::{resolve, HubOptions};
use wick::model::{load, LoadOptions};
use wick::sampling::SamplingParams;

const CONCURRENCY: usize = 16;
const NEW_TOKENS: usize = 64;

fn main() {
    let resolved =
        resolve(None, &ModelsConfig::embedded(), &HubOptions::from_env()).expect("default model");
    let loaded = load(&resolved, &LoadOptions::default()).expect("model loads");
    let tokenizer = Arc::new(loaded.tokenizer);
    let vocab = loaded.model.config().vocab_size;
    let runner = ModelRunner::new(
        loaded.model,
        CacheConfig {
            block_size: 16,
            num_blocks: 1024,
        },
    );
    let stats = Arc::new(EngineStats::default());
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_size: CONCURRENCY,
            prefix_caching: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut engine = EngineCore::new(runner, tokenizer.clone(), stats.clone(), config);
    let compiler = GrammarCompiler::new(tokenizer.clone(), vocab, GrammarLimits::default())
        .expect("grammar compiler");
    let schema = json!({"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
        "required": ["name", "age", "tags"], "additionalProperties": false}, "minItems": 8});
    let grammar = compiler
        .compile_now(&GrammarSpec::JsonSchema(schema))
        .expect("schema compiles");
    let prompts: Vec<Vec<u32>> = (0..CONCURRENCY)
        .map(|i| {
            let text = format!("List the people of record {i} as a JSON array of objects:");
            tokenizer.encode(&text, false).expect("tokenizes")
        })
        .collect();
    let mut run = |constrained: bool| -> f64 {
        let start = Instant::now();
        let rxs: Vec<EventReceiver> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let request = GenerationRequest {
                    id: i as u64,
                    prompt: p.clone(),
                    sampling: SamplingParams {
                        do_sample: true,
                        temperature: 0.8,
                        seed: i as u64,
                        ..Default::default()
                    },
                    stopping: StoppingParams {
                        max_new_tokens: NEW_TOKENS,
                        stop_sequences: vec![],
                        include_stop_sequence: true,
                        ignore_eos: true,
                    },
                    top_n_tokens: 0,
                    prompt_logprobs: false,
                    candidates: 1,
                    grammar: constrained.then(|| grammar.clone()),
                };
                engine.submit(request).expect("submits")
            })
            .collect();
        while engine.has_work() {
            engine.step();
        }
        let mut tokens = 0;
        for mut rx in rxs {
            while let Ok(event) = rx.try_recv() {
                match event {
                    Event::CandidateFinished {
                        reason,
                        generated_tokens,
                        ..
                    } => {
                        assert_eq!(
                            reason,
                            FinishReason::Length,
                            "every candidate runs to length"
                        );
                        tokens += generated_tokens;
                    }
                    Event::Error(e) => panic!("{e}"),
                    _ => {}
                }
            }
        }
        assert_eq!(tokens, CONCURRENCY * NEW_TOKENS);
        tokens as f64 / start.elapsed().as_secs_f64()
    };
    let rounds: usize = std::env::var("WICK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    run(false);
    run(true);
    let (before, step_before) = (stats.snapshot().grammar, stats.snapshot().step_us);
    let mut free = Vec::new();
    let mut constrained = Vec::new();
    let mut constrained_step_us = 0;
    for _ in 0..rounds {
        free.push(run(false));
        let s0 = stats.snapshot().step_us;
        constrained.push(run(true));
        constrained_step_us += stats.snapshot().step_us - s0;
    }
    let masks = stats.snapshot().grammar.since(&before);
    let _ = step_before;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, c) = (median(&mut free), median(&mut constrained));
    let fmt = |q: f64| match masks.quantile_us(q) {
        Some(u64::MAX) => "> 10000 us".to_string(),
        Some(us) => format!("<= {us} us"),
        None => "none".to_string(),
    };
    println!(
        "grammar: {CONCURRENCY} concurrent x {NEW_TOKENS} tokens, {rounds} rounds: unconstrained \
         {f:.1} tok/s, json-schema {c:.1} tok/s, ratio {:.3}",
        c / f
    );
    println!(
        "grammar: {} masks, mean {:.1} us, p50 {}, p99 {}; mask time {:.1}% of constrained step \
         time, waited for after the forward pass {:.2}%",
        masks.count,
        masks.sum_us as f64 / masks.count.max(1) as f64,
        fmt(0.5),
        fmt(0.99),
        100.0 * masks.sum_us as f64 / constrained_step_us.max(1) as f64,
        100.0 * masks.wait_us as f64 / constrained_step_us.max(1) as f64,
    );
}
