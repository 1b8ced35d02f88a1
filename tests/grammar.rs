//! Constrained generation through the engine on the default model: every finished
//! output is valid under its grammar, greedy and sampled, alone and 16 at once, with
//! several candidates, under preemption, through the prefix cache, and beside
//! cancellations; constrained greedy output is batch-invariant.

mod common;

use std::sync::Arc;

use serde_json::{json, Value};
use wick::engine::{
    EngineConfig, EngineHandle, Event, EventReceiver, FinishReason, GenerationRequest,
    SchedulerConfig, StoppingParams,
};
use wick::grammar::{CompiledGrammar, GrammarCompiler, GrammarLimits, GrammarSpec};
use wick::model::{self, LoadOptions};
use wick::sampling::SamplingParams;

fn engine(
    kv_tokens: usize,
    tweak: impl FnOnce(&mut EngineConfig),
) -> (EngineHandle, Arc<GrammarCompiler>) {
    let loaded = model::load(&common::default_model(), &LoadOptions::default()).expect("loads");
    let mut config = EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_prefill_tokens: 512,
            max_batch_size: 64,
            ..Default::default()
        },
        max_concurrent_requests: 256,
        max_batch_total_tokens: Some(kv_tokens),
        check_invariants: true,
        ..Default::default()
    };
    tweak(&mut config);
    let handle = EngineHandle::start(loaded, config).expect("engine starts");
    while !handle.is_ready() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let vocab = handle.model_config().vocab_size;
    let compiler =
        GrammarCompiler::new(handle.tokenizer().clone(), vocab, GrammarLimits::default())
            .expect("grammar compiler");
    (handle, Arc::new(compiler))
}

/// Schemas whose every value is bounded, so that every generation can finish:
/// nested objects, arrays with bounds, enums, `anyOf`, string patterns, number ranges.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": false}},
            "required": ["name", "age", "address"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                     "minItems": 1, "maxItems": 3},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 99},
                       "maxItems": 4}},
            "required": ["tags", "scores"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
            "answer": {"anyOf": [{"type": "boolean"}, {"type": "null"},
                                 {"type": "string", "pattern": "^[A-Z][a-z]{1,6}$"}]},
            "confidence": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["answer", "confidence"], "additionalProperties": false}),
    ]
}

/// Each starts with the same instruction (more than two KV blocks long), so the prefix
/// cache has something to reuse.
const PROMPTS: [&str; 4] = [
    "You are a careful assistant. You always answer with one JSON object that follows \
     the requested format exactly, with no other text. Describe a person as JSON:",
    "You are a careful assistant. You always answer with one JSON object that follows \
     the requested format exactly, with no other text. Here is the data, as JSON:",
    "You are a careful assistant. You always answer with one JSON object that follows \
     the requested format exactly, with no other text. Q: Is the sky blue?\nA:",
    "You are a careful assistant. You always answer with one JSON object that follows \
     the requested format exactly, with no other text. The record:",
];

fn request(
    handle: &EngineHandle,
    prompt: &str,
    grammar: &Arc<CompiledGrammar>,
    sampling: SamplingParams,
) -> GenerationRequest {
    GenerationRequest {
        id: 0,
        prompt: handle.tokenizer().encode(prompt, false).unwrap(),
        sampling,
        stopping: StoppingParams {
            max_new_tokens: 120,
            stop_sequences: vec![],
            include_stop_sequence: true,
            ignore_eos: false,
        },
        top_n_tokens: 0,
        prompt_logprobs: false,
        grammar: Some(grammar.clone()),
        candidates: 1,
    }
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        do_sample: true,
        temperature: 1.0,
        top_k: 50,
        seed,
        ..Default::default()
    }
}

/// Each candidate's (text, finish reason), checking that the streamed pieces make the text.
fn collect(mut rx: EventReceiver) -> Vec<(String, FinishReason)> {
    let mut streamed: Vec<String> = Vec::new();
    let mut out: Vec<Option<(String, FinishReason)>> = Vec::new();
    loop {
        match rx.blocking_recv().expect("a terminal event arrives") {
            Event::Token {
                candidate, token, ..
            } => {
                if streamed.len() <= candidate {
                    streamed.resize(candidate + 1, String::new());
                }
                streamed[candidate].push_str(&token.text_piece);
            }
            Event::CandidateFinished {
                candidate,
                reason,
                text,
                ..
            } => {
                if out.len() <= candidate {
                    out.resize(candidate + 1, None);
                }
                assert_eq!(streamed[candidate], text);
                out[candidate] = Some((text, reason));
            }
            Event::Done(_) => return out.into_iter().map(|c| c.expect("finished")).collect(),
            Event::Error(e) => panic!("{e}"),
            Event::Prefill { .. } => {}
        }
    }
}

fn assert_valid(schema: &Value, text: &str, reason: FinishReason) {
    assert_eq!(
        reason,
        FinishReason::EosToken,
        "{text:?} did not finish its grammar"
    );
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let validator = jsonschema::validator_for(schema).unwrap();
    assert!(
        validator.is_valid(&value),
        "{text} is not valid under {schema}"
    );
}

#[test]
fn every_constrained_generation_validates_alone_and_sixteen_at_once() {
    let (handle, compiler) = engine(16384, |_| {});
    for schema in schemas() {
        let g = compiler
            .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
            .unwrap();
        // Alone: greedy, then sampled.
        let mut alone = Vec::new();
        for (i, p) in PROMPTS.iter().enumerate() {
            let greedy = collect(
                handle
                    .submit(request(&handle, p, &g, SamplingParams::default()))
                    .unwrap(),
            );
            let drawn = collect(
                handle
                    .submit(request(&handle, p, &g, sampled(i as u64)))
                    .unwrap(),
            );
            for (text, reason) in greedy.iter().chain(&drawn) {
                assert_valid(&schema, text, *reason);
            }
            alone.push((greedy, drawn));
        }
        // Sixteen at once, the same requests four times over: the same texts (greedy
        // is batch-invariant, a seed gives one text).
        let rxs: Vec<_> = (0..16)
            .map(|i| {
                let (p, s) = (PROMPTS[i % 4], i / 4 % 2 == 1);
                let sampling = if s {
                    sampled((i % 4) as u64)
                } else {
                    SamplingParams::default()
                };
                (i, handle.submit(request(&handle, p, &g, sampling)).unwrap())
            })
            .collect();
        for (i, rx) in rxs {
            let got = collect(rx);
            let want = if i / 4 % 2 == 1 {
                &alone[i % 4].1
            } else {
                &alone[i % 4].0
            };
            assert_eq!(&got, want, "request {i} under {schema}");
        }
    }
    let s = handle.stats();
    assert!(s.grammar.count > 0 && s.grammar.buckets.iter().sum::<u64>() == s.grammar.count);
}

#[test]
fn candidates_each_follow_the_grammar() {
    let (handle, compiler) = engine(16384, |_| {});
    let schema = &schemas()[1];
    let g = compiler
        .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
        .unwrap();
    let mut req = request(&handle, PROMPTS[1], &g, sampled(3));
    req.candidates = 4;
    let cands = collect(handle.submit(req).unwrap());
    assert_eq!(cands.len(), 4);
    for (text, reason) in &cands {
        assert_valid(schema, text, *reason);
    }
}

#[test]
fn preemption_and_the_prefix_cache_keep_constrained_output() {
    let schema = &schemas()[0];
    let (big, compiler) = engine(16384, |_| {});
    let g = compiler
        .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
        .unwrap();
    let reference: Vec<_> = (0..8)
        .map(|i| {
            collect(
                big.submit(request(&big, PROMPTS[i % 4], &g, sampled(i as u64)))
                    .unwrap(),
            )
        })
        .collect();
    // Again through the prefix cache (the prompts are cached now).
    let again: Vec<_> = (0..8)
        .map(|i| {
            collect(
                big.submit(request(&big, PROMPTS[i % 4], &g, sampled(i as u64)))
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(again, reference);
    assert!(big.stats().prefix_hit_tokens > 0);
    drop(big);
    // A pool too small for all eight at once.
    let (small, compiler) = engine(256, |c| c.scheduler.prefix_caching = false);
    let g = compiler
        .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
        .unwrap();
    let rxs: Vec<_> = (0..8)
        .map(|i| {
            small
                .submit(request(&small, PROMPTS[i % 4], &g, sampled(i as u64)))
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = rxs.into_iter().map(collect).collect();
    assert_eq!(outs, reference);
    assert!(small.stats().preemptions > 0, "{:?}", small.stats());
    for c in outs.iter().flatten() {
        assert_valid(schema, &c.0, c.1);
    }
}

#[test]
fn a_cancelled_constrained_request_leaves_the_others_and_no_block_behind() {
    let (handle, compiler) = engine(16384, |_| {});
    let schema = &schemas()[2];
    let g = compiler
        .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
        .unwrap();
    let mut keep = Vec::new();
    for i in 0..6 {
        let rx = handle
            .submit(request(&handle, PROMPTS[i % 4], &g, sampled(i as u64)))
            .unwrap();
        if i % 2 == 0 {
            drop(rx);
        } else {
            keep.push(rx);
        }
    }
    for rx in keep {
        for (text, reason) in collect(rx) {
            assert_valid(schema, &text, reason);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while handle.stats().in_flight > 0 || handle.stats().blocks_used > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", handle.stats());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_regex_grammar_bounds_the_text() {
    let (handle, compiler) = engine(8192, |_| {});
    let g = compiler
        .compile_now(&GrammarSpec::Regex(
            "(yes|no), because [a-z ]{3,30}\\.".into(),
        ))
        .unwrap();
    for i in 0..4 {
        let out = collect(
            handle
                .submit(request(&handle, "Is water wet?", &g, sampled(i)))
                .unwrap(),
        );
        let (text, reason) = &out[0];
        assert_eq!(*reason, FinishReason::EosToken, "{text:?}");
        let ok = (text.starts_with("yes, because ") || text.starts_with("no, because "))
            && text.ends_with('.')
            && text
                .split_once("because ")
                .unwrap()
                .1
                .trim_end_matches('.')
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == ' ');
        assert!(ok, "{text:?}");
    }
}
