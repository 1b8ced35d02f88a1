//! Property tests of the request parsers and validators: arbitrary bytes, arbitrary
//! JSON values and arbitrary parameter values never panic, and either validate (into a
//! request that respects every limit) or give a 4xx error.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

use super::error::ApiError;
use super::json;
use super::state::Limits;
use super::types::openai::{ChatRequest, CompletionRequest, OpenAiSampling};
use super::types::tgi::{CompatGenerateRequest, GenerateParameters, TokenizeRequest};
use super::validation::{self, DefaultMaxNew};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

fn limits() -> Limits {
    Limits {
        max_best_of: 2,
        max_stop_sequences: 4,
        max_top_n_tokens: 5,
        max_input_tokens: 16,
        max_total_tokens: 24,
        max_client_batch_size: 4,
        vocab_size: 8,
    }
}

/// A word-level tokenizer: a few words, everything else `<unk>`, BOS added.
fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tok = serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "unk_token": "<unk>",
                      "vocab": {"<s>": 0, "<unk>": 1, "hello": 2, "world": 3, "a": 4,
                                "b": 5, "c": 6, "d": 7}}});
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).expect("written");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "add_bos_token": true}"#,
        )
        .expect("written");
        Tokenizer::from_dir(dir.path()).expect("the tokenizer loads")
    })
}

fn assert_4xx(e: &ApiError) {
    assert!(
        e.status.is_client_error(),
        "{} is not a client error: {}",
        e.status,
        e.message
    );
    // Both shapes serialize.
    assert!(e.body()["error"].is_string());
    assert!(e.clone().openai().body()["error"]["message"].is_string());
}

const FIELDS: &[&str] = &[
    "inputs",
    "parameters",
    "stream",
    "payload",
    "auth_data",
    "best_of",
    "temperature",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "top_k",
    "top_p",
    "typical_p",
    "do_sample",
    "max_new_tokens",
    "return_full_text",
    "stop",
    "truncate",
    "watermark",
    "details",
    "decoder_input_details",
    "seed",
    "top_n_tokens",
    "grammar",
    "adapter_id",
    "add_special_tokens",
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "tool_calls",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "stream_options",
    "include_usage",
    "response_format",
    "tools",
    "tool_choice",
    "logit_bias",
    "n",
    "prompt",
    "echo",
    "suffix",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.999,
            1.5,
            2.0,
            2.5,
            -2.5,
            100.0,
            101.0,
            1e-45,
            1e39,
            -1e39,
            f64::MAX,
            f64::MIN,
            4294967295.0,
            4294967296.0,
        ])
        .prop_map(|f| Value::Number(Number::from_f64(f).unwrap_or(Number::from(0)))),
        (0i64..30).prop_map(Value::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "hello",
            "hello world",
            "a b c d",
            "user",
            "system",
            "text",
            " ",
            "5",
            "99",
            "\u{0}",
            "\u{fffd}",
            "é",
            "日本",
        ])
        .prop_map(str::to_string),
        any::<String>(),
        "[a-d ]{0,60}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Any JSON value, biased toward the request types' field names and edge numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object of known fields with arbitrary values (nested `parameters` and
/// `messages` of the same kind), closer to what validation looks at.
fn fields() -> impl Strategy<Value = Vec<(&'static str, Value)>> {
    prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..10)
}

fn request_like() -> impl Strategy<Value = Value> {
    let message = (
        prop::sample::select(vec![
            "user",
            "system",
            "assistant",
            "tool",
            "developer",
            "x",
        ]),
        prop_oneof![text().prop_map(Value::from), json_value()],
    )
        .prop_map(|(r, c)| serde_json::json!({"role": r, "content": c}));
    (
        fields(),
        fields(),
        prop::collection::vec(message, 0..4),
        prop::option::of(text()),
    )
        .prop_map(|(top, params, messages, inputs)| {
            let mut o: Map<String, Value> = top.into_iter().map(|(k, v)| (k.into(), v)).collect();
            o.insert(
                "parameters".into(),
                Value::Object(
                    params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                ),
            );
            for (k, v) in params {
                o.entry(k.to_string()).or_insert(v);
            }
            o.insert("messages".into(), Value::Array(messages));
            if let Some(t) = inputs {
                o.insert("inputs".into(), Value::from(t.clone()));
                o.insert("prompt".into(), Value::from(t));
            }
            Value::Object(o)
        })
}

fn json_headers(ct: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(ct) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h
}

fn check_sampling(s: &SamplingParams) {
    for (name, v) in [
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("typical_p", s.typical_p),
        ("repetition_penalty", s.repetition_penalty),
        ("frequency_penalty", s.frequency_penalty),
        ("presence_penalty", s.presence_penalty),
    ] {
        assert!(v.is_finite(), "{name} = {v} validated");
    }
    assert!(s.temperature > 0.0 && s.repetition_penalty > 0.0, "{s:?}");
    assert!(s.top_p > 0.0 && s.top_p <= 1.0, "{s:?}");
    assert!(s.typical_p > 0.0 && s.typical_p <= 1.0, "{s:?}");
    for &(id, b) in &s.logit_bias {
        assert!(
            (id as usize) < limits().vocab_size && b.is_finite(),
            "{s:?}"
        );
    }
}

/// A TGI body through parsing and validation.
fn tgi_body(v: Value) {
    let l = limits();
    let r: CompatGenerateRequest = match json::from_value(v) {
        Ok(r) => r,
        Err(e) => return assert_4xx(&e),
    };
    for stream in [false, true, r.stream] {
        let params = r
            .parameters
            .clone()
            .unwrap_or_else(GenerateParameters::absent);
        match validation::tgi(&l, tokenizer(), &r.inputs, params, true, stream) {
            Err(e) => assert_4xx(&e),
            Ok(t) => {
                let g = &t.request;
                assert!(!g.prompt.is_empty() && g.prompt.len() <= l.max_input_tokens);
                assert!(g.stopping.max_new_tokens >= 1);
                assert!(g.prompt.len() + g.stopping.max_new_tokens <= l.max_total_tokens);
                assert!(g.prompt.iter().all(|&t| (t as usize) < l.vocab_size));
                assert!(t.best_of >= 1 && t.best_of <= l.max_best_of);
                assert!(!(stream && t.best_of > 1));
                assert!(g.stopping.stop_sequences.len() <= l.max_stop_sequences);
                assert!(g.stopping.stop_sequences.iter().all(|s| !s.is_empty()));
                assert!(g.top_n_tokens as u32 <= l.max_top_n_tokens);
                check_sampling(&g.sampling);
            }
        }
    }
}

fn openai_sampling(s: &OpenAiSampling) {
    let l = limits();
    let _ = validation::choices(s.n).map_err(|e| assert_4xx(&e));
    match validation::openai_sampling(&l, s) {
        Err(e) => assert_4xx(&e),
        Ok(p) => {
            check_sampling(&p);
            assert!(s.stop.len() <= l.max_stop_sequences);
        }
    }
}

fn openai_body(v: Value) {
    match json::from_value::<ChatRequest>(v.clone()) {
        Ok(r) => openai_sampling(&r.sampling),
        Err(e) => assert_4xx(&e),
    }
    match json::from_value::<CompletionRequest>(v.clone()) {
        Ok(r) => openai_sampling(&r.sampling),
        Err(e) => assert_4xx(&e),
    }
    match json::from_value::<TokenizeRequest>(v) {
        Ok(r) => {
            let _ = validation::tokenize(tokenizer(), &r.inputs, true);
        }
        Err(e) => assert_4xx(&e),
    }
}

fn f32_edge() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>(),
        prop::sample::select(vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            0.5,
            2.0,
            -2.0,
            f32::MIN_POSITIVE,
            f32::MAX,
        ]),
    ]
}

fn params() -> impl Strategy<Value = GenerateParameters> {
    let floats = prop::collection::vec(prop::option::of(f32_edge()), 6);
    let ints = (
        prop::option::of(prop_oneof![0usize..4, any::<usize>()]),
        prop::option::of(prop_oneof![-2i64..40, any::<i64>()]),
        prop::option::of(prop_oneof![0u32..30, any::<u32>()]),
        prop::option::of(prop_oneof![0usize..30, any::<usize>()]),
        prop::option::of(prop_oneof![0u32..8, any::<u32>()]),
        prop::option::of(any::<u64>()),
    );
    let flags = prop::collection::vec(any::<bool>(), 4);
    let stop = prop::collection::vec(text(), 0..7);
    (floats, ints, flags, stop).prop_map(|(f, i, b, stop)| GenerateParameters {
        best_of: i.0,
        temperature: f[0],
        repetition_penalty: f[1],
        frequency_penalty: f[2],
        top_k: i.1,
        top_p: f[3],
        typical_p: f[4],
        do_sample: b[0],
        max_new_tokens: i.2,
        return_full_text: Some(b[1]),
        stop,
        truncate: i.3,
        watermark: false,
        details: b[2],
        decoder_input_details: b[3],
        seed: i.5,
        top_n_tokens: i.4,
        grammar: None,
        adapter_id: None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn bytes_never_panic(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            // Valid JSON cut short, or with one byte changed.
            (request_like(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>())
                .prop_map(|(v, at, b, cut)| {
                    let mut s = v.to_string().into_bytes();
                    let i = at.index(s.len().max(1));
                    if cut { s.truncate(i) } else if let Some(x) = s.get_mut(i) { *x = b }
                    s
                }),
        ],
        ct in prop_oneof![
            Just("application/json".to_string()),
            Just("application/json; charset=utf-8".to_string()),
            Just("text/plain".to_string()),
            Just(String::new()),
            any::<String>(),
        ],
    ) {
        let h = json_headers(&ct);
        match json::value(&h, Ok(Bytes::from(body.clone()))) {
            Err(e) => assert_4xx(&e),
            Ok(v) => {
                tgi_body(v.clone());
                openai_body(v);
            }
        }
    }

    #[test]
    fn json_values_validate_or_give_4xx(v in json_value()) {
        tgi_body(v.clone());
        openai_body(v);
    }

    #[test]
    fn request_like_values_validate_or_give_4xx(v in request_like()) {
        tgi_body(v.clone());
        openai_body(v);
    }

    #[test]
    fn tgi_parameters_validate_or_give_4xx(
        p in params(),
        inputs in text(),
        stream in any::<bool>(),
    ) {
        match validation::tgi(&limits(), tokenizer(), &inputs, p, false, stream) {
            Err(e) => assert_4xx(&e),
            Ok(t) => {
                assert!(t.request.prompt.len() + t.request.stopping.max_new_tokens
                    <= limits().max_total_tokens);
                check_sampling(&t.request.sampling);
            }
        }
    }

    #[test]
    fn openai_fields_validate_or_give_4xx(
        f in prop::collection::vec(prop::option::of(f32_edge()), 5),
        bias in prop::option::of(prop::collection::vec((text(), f32_edge()), 0..4)),
        n in prop::option::of(any::<u32>()),
        stop in prop::collection::vec(text(), 0..7),
    ) {
        let s = OpenAiSampling {
            temperature: f[0],
            top_p: f[1],
            presence_penalty: f[2],
            frequency_penalty: f[3],
            repetition_penalty: f[4],
            logit_bias: bias.map(|b| b.into_iter().collect()),
            seed: None,
            stop,
            n,
        };
        openai_sampling(&s);
    }

    #[test]
    fn prompts_respect_the_limits(
        ids in prop::collection::vec(prop_oneof![0u32..8, any::<u32>()], 0..40),
        truncate in prop::option::of(prop_oneof![0usize..40, any::<usize>()]),
        max_new in prop::option::of(prop_oneof![0u32..40, any::<u32>()]),
        fixed in prop::option::of(0usize..40),
    ) {
        let l = limits();
        let default = fixed.map_or(DefaultMaxNew::Remaining, DefaultMaxNew::Fixed);
        match validation::prompt(&l, ids, truncate, max_new, default) {
            Err(e) => assert_4xx(&e),
            Ok(p) => {
                assert!(!p.ids.is_empty() && p.ids.len() <= l.max_input_tokens);
                assert!(p.ids.len() + p.max_new_tokens <= l.max_total_tokens);
                assert!(p.ids.iter().all(|&t| (t as usize) < l.vocab_size));
            }
        }
    }
}
