//! A generated corpus of malformed and hostile requests (issue 8, part 1): truncated JSON,
//! wrong types, huge numbers, negative and out-of-range values, NaN and infinity
//! literals, unknown fields, deeply nested JSON, oversized and 10 MB bodies, invalid
//! UTF-8, control characters, prompts past the context, 1,000 stop sequences, unknown
//! chat roles and empty message lists, wrong content types and methods, Vast.ai wrapper
//! variants, and a chat template that raises.
//!
//! Every case is built from a seeded generator and classified by construction: an
//! `Invalid` case must be answered 4xx with a JSON error in its route's format (TGI's
//! `{"error", "error_type"}`, OpenAI's `{"error": {...}}` on `/v1/*`); a valid-but-odd
//! one (unknown fields, control characters in a prompt, ...) may also succeed. Nothing
//! may answer 5xx or leave the connection hanging, and the server serves normally after.

mod server_support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reqwest::Method;
use serde_json::{json, Map, Value};
use server_support::*;
use wick::engine::EngineConfig;

/// Cases generated per route family (most of them invalid).
const PER_FAMILY: usize = 720;
/// Invalid cases each family must have at least.
const MIN_INVALID: usize = 500;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Tgi,
    OpenAi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Must be refused with a 4xx.
    Invalid,
    /// Valid but odd: 200 or a 4xx.
    Either,
}

struct Case {
    family: Family,
    method: Method,
    route: &'static str,
    /// None: no Content-Type header.
    content_type: Option<String>,
    body: Vec<u8>,
    expect: Expect,
    what: String,
}

const TGI_ROUTES: &[&str] = &["/generate", "/generate_stream", "/", "/tokenize"];
const GENERATE_ROUTES: &[&str] = &["/generate", "/generate_stream", "/"];
const OPENAI_ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions"];

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "far", "away", "über",
    "日本", "🙂", "1,", "2,", "3,", "Hello", "world",
];

/// Content types the server must refuse (415); None is no header at all.
const BAD_CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=xyz"),
    Some("text/json"),
    Some("application/jsonx"),
    Some("application/xml"),
    Some("json"),
    Some("application/octet-stream"),
    Some("text/html; charset=utf-8"),
];

struct Gen {
    rng: ChaCha8Rng,
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

impl Gen {
    fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v.choose(&mut self.rng).expect("a non-empty list").clone()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn prompt(&mut self) -> String {
        let n = self.rng.random_range(1..6);
        (0..n)
            .map(|_| self.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Unknown fields and explicit nulls of optional fields: accepted and ignored.
    fn noise(&mut self, m: &mut Map<String, Value>, optional: &[&str]) {
        if self.chance(0.3) {
            let k = format!("x_unknown_{}", self.rng.random_range(0..100));
            let v = self.pick(&[
                json!(1),
                json!("x"),
                json!([1, {"a": null}]),
                json!({"k": []}),
            ]);
            m.insert(k, v);
        }
        if self.chance(0.2) {
            if let Some(k) = optional.choose(&mut self.rng) {
                m.entry(k.to_string()).or_insert(Value::Null);
            }
        }
    }

    /// Valid TGI parameters that keep generation to 1-2 tokens.
    fn tgi_params(&mut self) -> Map<String, Value> {
        let mut p = Map::new();
        p.insert("max_new_tokens".into(), json!(self.rng.random_range(1..=2)));
        let extras: Vec<(&str, Value)> = vec![
            ("seed", json!(self.rng.random_range(0..1000))),
            ("details", json!(self.chance(0.5))),
            ("do_sample", json!(self.chance(0.5))),
            ("temperature", json!(0.7)),
            ("top_k", json!(5)),
            ("top_p", json!(0.9)),
            ("stop", json!(["zzz"])),
            ("return_full_text", json!(self.chance(0.5))),
            ("watermark", json!(false)),
            ("top_n_tokens", json!(2)),
            ("repetition_penalty", json!(1.1)),
            ("frequency_penalty", json!(0.5)),
            ("typical_p", json!(0.9)),
        ];
        for (k, v) in extras {
            if self.chance(0.15) {
                p.insert(k.into(), v);
            }
        }
        self.noise(
            &mut p,
            &["seed", "temperature", "top_k", "grammar", "adapter_id"],
        );
        p
    }

    fn tgi_body(&mut self, route: &str) -> Map<String, Value> {
        let mut b = Map::new();
        b.insert("inputs".into(), json!(self.prompt()));
        if route == "/tokenize" {
            if self.chance(0.3) {
                b.insert("add_special_tokens".into(), json!(self.chance(0.5)));
            }
        } else {
            b.insert("parameters".into(), Value::Object(self.tgi_params()));
            if route == "/" && self.chance(0.5) {
                b.insert("stream".into(), json!(self.chance(0.5)));
            }
        }
        self.noise(&mut b, &[]);
        b
    }

    fn chat_body(&mut self) -> Map<String, Value> {
        let mut b = obj(json!({
            "messages": [{"role": "user", "content": self.prompt()}],
            "max_tokens": self.rng.random_range(1..=2),
        }));
        let extras: Vec<(&str, Value)> = vec![
            ("temperature", json!(self.pick(&[0.0, 0.7]))),
            ("seed", json!(self.rng.random_range(0..1000))),
            ("top_p", json!(0.9)),
            ("stop", json!(["zzz"])),
            ("n", json!(1)),
            ("model", json!("anything")),
            ("stream", json!(self.chance(0.5))),
            ("presence_penalty", json!(0.5)),
            ("logit_bias", json!({"5": 1})),
            ("logprobs", json!(false)),
        ];
        for (k, v) in extras {
            if self.chance(0.15) {
                b.insert(k.into(), v);
            }
        }
        self.noise(
            &mut b,
            &["temperature", "seed", "stop", "n", "tools", "user"],
        );
        b
    }

    fn completion_body(&mut self) -> Map<String, Value> {
        let mut b = obj(json!({
            "prompt": self.prompt(),
            "max_tokens": self.rng.random_range(1..=2),
        }));
        let extras: Vec<(&str, Value)> = vec![
            ("temperature", json!(self.pick(&[0.0, 0.7]))),
            ("seed", json!(self.rng.random_range(0..1000))),
            ("echo", json!(self.chance(0.5))),
            ("logprobs", json!(self.rng.random_range(0..=2))),
            ("n", json!(1)),
            ("best_of", json!(1)),
            ("stream", json!(self.chance(0.5))),
        ];
        for (k, v) in extras {
            if self.chance(0.15) {
                b.insert(k.into(), v);
            }
        }
        self.noise(&mut b, &["temperature", "seed", "stop", "suffix", "user"]);
        b
    }

    fn openai_body(&mut self, route: &str) -> Map<String, Value> {
        if route == "/v1/chat/completions" {
            self.chat_body()
        } else {
            self.completion_body()
        }
    }

    fn valid_body(&mut self, family: Family, route: &str) -> Map<String, Value> {
        match family {
            Family::Tgi => self.tgi_body(route),
            Family::OpenAi => self.openai_body(route),
        }
    }
}

/// One TGI generation parameter with a value no route accepts.
fn bad_tgi_param(g: &mut Gen) -> (&'static str, Value) {
    let stops_5: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    let stops_1000: Vec<String> = (0..1000).map(|i| format!("stop{i}")).collect();
    let table: Vec<(&'static str, Value)> = vec![
        ("max_new_tokens", json!(0)),
        ("max_new_tokens", json!(-1)),
        ("max_new_tokens", json!("2")),
        ("max_new_tokens", json!(1.5)),
        ("max_new_tokens", json!(4294967296u64)),
        ("max_new_tokens", json!(1e20)),
        ("max_new_tokens", json!(1000)),
        ("max_new_tokens", json!(99999999)),
        ("max_new_tokens", json!([1])),
        ("max_new_tokens", json!(true)),
        ("temperature", json!(0)),
        ("temperature", json!(-0.5)),
        ("temperature", json!("hot")),
        ("temperature", json!(1e39)),
        ("temperature", json!(-1e39)),
        ("temperature", json!([0.5])),
        ("temperature", json!({})),
        ("top_p", json!(0)),
        ("top_p", json!(1.0)),
        ("top_p", json!(1.5)),
        ("top_p", json!(-0.1)),
        ("top_p", json!("0.5")),
        ("top_p", json!(1e39)),
        ("top_k", json!(0)),
        ("top_k", json!(-3)),
        ("top_k", json!(1.5)),
        ("top_k", json!("10")),
        ("top_k", json!(1e30)),
        ("top_k", json!(i64::MIN)),
        ("typical_p", json!(0)),
        ("typical_p", json!(1)),
        ("typical_p", json!(7)),
        ("typical_p", json!(-1)),
        ("typical_p", json!("x")),
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(-1)),
        ("repetition_penalty", json!("x")),
        ("repetition_penalty", json!(1e39)),
        ("frequency_penalty", json!(2.5)),
        ("frequency_penalty", json!(-3)),
        ("frequency_penalty", json!("x")),
        ("frequency_penalty", json!(1e39)),
        ("truncate", json!(0)),
        ("truncate", json!(-1)),
        ("truncate", json!(65)),
        ("truncate", json!(1e30)),
        ("truncate", json!("5")),
        ("truncate", json!(1_000_000)),
        ("best_of", json!(0)),
        ("best_of", json!(3)),
        ("best_of", json!(-1)),
        ("best_of", json!("2")),
        ("best_of", json!(1.5)),
        ("best_of", json!(100)),
        ("top_n_tokens", json!(6)),
        ("top_n_tokens", json!(1000)),
        ("top_n_tokens", json!(-1)),
        ("top_n_tokens", json!("1")),
        ("top_n_tokens", json!(1.5)),
        ("seed", json!("abc")),
        ("seed", json!(1.5)),
        ("seed", json!([1])),
        ("seed", json!(1e30)),
        ("seed", json!({})),
        ("seed", json!(true)),
        ("stop", json!(5)),
        ("stop", json!({"a": 1})),
        ("stop", json!([1, 2])),
        ("stop", json!([""])),
        ("stop", json!(["a", null])),
        ("stop", json!(stops_5)),
        ("stop", json!(stops_1000)),
        ("stop", json!([["a"]])),
        ("details", json!("yes")),
        ("details", json!(1)),
        ("decoder_input_details", json!("true")),
        ("decoder_input_details", json!(0)),
        ("do_sample", json!("no")),
        ("do_sample", json!(1)),
        ("return_full_text", json!(1)),
        ("return_full_text", json!("false")),
        ("watermark", json!("x")),
        ("grammar", json!({"type": "json", "value": "{not json"})),
        ("grammar", json!({"type": "json", "value": 5})),
        ("grammar", json!({"type": "regex", "value": "(a"})),
        (
            "grammar",
            json!({"type": "json", "value": {"type": "string", "format": "no-such-format"}}),
        ),
        ("grammar", json!({"type": "lark", "value": "start: x"})),
        ("grammar", json!("x")),
        ("adapter_id", json!(5)),
        ("adapter_id", json!([])),
    ];
    g.pick(&table)
}

/// Shared OpenAI sampling fields with values neither route accepts.
fn bad_openai_param(g: &mut Gen) -> (&'static str, Value) {
    let stops_5: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    let stops_1000: Vec<String> = (0..1000).map(|i| format!("stop{i}")).collect();
    let table: Vec<(&'static str, Value)> = vec![
        ("temperature", json!(-0.1)),
        ("temperature", json!(2.1)),
        ("temperature", json!("x")),
        ("temperature", json!(1e39)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("top_p", json!(-1)),
        ("top_p", json!("x")),
        ("n", json!(0)),
        ("n", json!(17)),
        ("n", json!(-1)),
        ("n", json!("2")),
        ("n", json!(1.5)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!("5")),
        ("max_tokens", json!(1e20)),
        ("max_tokens", json!(1000)),
        ("max_tokens", json!(4294967296u64)),
        ("presence_penalty", json!(3)),
        ("presence_penalty", json!(-3)),
        ("presence_penalty", json!("x")),
        ("frequency_penalty", json!(2.01)),
        ("frequency_penalty", json!(-1e39)),
        ("logit_bias", json!({"abc": 1})),
        ("logit_bias", json!({"99999999": 1})),
        ("logit_bias", json!({"5": 101})),
        ("logit_bias", json!({"5": "x"})),
        ("logit_bias", json!({"-1": 1})),
        ("logit_bias", json!([1])),
        ("logit_bias", json!("x")),
        ("seed", json!("x")),
        ("seed", json!(1.5)),
        ("seed", json!([1])),
        ("stop", json!(stops_5)),
        ("stop", json!(stops_1000)),
        ("stop", json!([""])),
        ("stop", json!(5)),
        ("stop", json!([1])),
        ("stop", json!({"a": 1})),
        ("stream", json!("yes")),
        ("stream", json!(1)),
        ("stream_options", json!("x")),
        ("stream_options", json!(5)),
        ("stream_options", json!({"include_usage": "yes"})),
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(-1)),
        ("repetition_penalty", json!("x")),
        ("repetition_penalty", json!(1e39)),
        ("model", json!(5)),
        ("model", json!([])),
        ("model", json!({})),
    ];
    g.pick(&table)
}

fn bad_chat_field(g: &mut Gen) -> (&'static str, Value) {
    let long = long_text(300);
    let table: Vec<(&'static str, Value)> = vec![
        ("messages", Value::Null),
        ("messages", json!("hello")),
        ("messages", json!(5)),
        ("messages", json!({})),
        ("messages", json!([])),
        ("messages", json!([5])),
        ("messages", json!(["hi"])),
        ("messages", json!([{}])),
        ("messages", json!([{"content": "x"}])),
        ("messages", json!([{"role": "wizard", "content": "x"}])),
        ("messages", json!([{"role": "", "content": "x"}])),
        ("messages", json!([{"role": "USER", "content": "x"}])),
        ("messages", json!([{"role": 5, "content": "x"}])),
        ("messages", json!([{"role": "user", "content": 5}])),
        (
            "messages",
            json!([{"role": "user", "content": {"text": "x"}}]),
        ),
        (
            "messages",
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
        ),
        (
            "messages",
            json!([{"role": "user", "content": [{"text": "x"}]}]),
        ),
        ("messages", json!([{"role": "user", "content": [5]}])),
        (
            "messages",
            json!([{"role": "user", "content": "x"}, {"role": "alien", "content": "y"}]),
        ),
        ("messages", json!([{"role": "user", "content": long}])),
        (
            "messages",
            json!([{"role": "user", "content": "x", "tool_calls": "x"}]),
        ),
        (
            "messages",
            json!([{"role": "user", "name": 5, "content": "x"}]),
        ),
        ("logprobs", json!("yes")),
        ("logprobs", json!(1)),
        ("top_logprobs", json!(21)),
        ("top_logprobs", json!(-1)),
        ("max_completion_tokens", json!(0)),
        ("max_completion_tokens", json!(-1)),
        ("max_completion_tokens", json!(1000)),
        ("response_format", json!({"type": "xml"})),
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {}}),
        ),
        (
            "response_format",
            json!({"type": "json_object", "value": "{not json"}),
        ),
        ("response_format", json!({"type": "regex", "value": "(("})),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "bad name"}}]),
        ),
        (
            "tools",
            json!([{"type": "function", "function": {"description": "no name"}}]),
        ),
        ("tools", json!("x")),
        ("tool_choice", json!({"type": "function", "function": {}})),
        ("tool_choice", json!("required")),
    ];
    let (k, v) = g.pick(&table);
    (k, v)
}

fn bad_completion_field(g: &mut Gen) -> (&'static str, Value) {
    let five: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
    let long_ids: Vec<u32> = (0..100).map(|i| 100 + i).collect();
    let table: Vec<(&'static str, Value)> = vec![
        ("prompt", Value::Null),
        ("prompt", json!(5)),
        ("prompt", json!({})),
        ("prompt", json!([])),
        ("prompt", json!([[]])),
        ("prompt", json!([-1])),
        ("prompt", json!([1.5])),
        ("prompt", json!([99999999])),
        ("prompt", json!(["a", 1])),
        ("prompt", json!([["a"]])),
        ("prompt", json!(five)),
        ("prompt", json!([[1], [2], [3], [4], [5]])),
        ("prompt", json!(long_text(300))),
        ("prompt", json!(long_ids)),
        ("prompt", json!(true)),
        ("suffix", json!("x")),
        ("suffix", json!(5)),
        ("echo", json!("yes")),
        ("echo", json!(1)),
        ("best_of", json!(0)),
        ("best_of", json!(17)),
        ("best_of", json!("x")),
        ("logprobs", json!(6)),
        ("logprobs", json!(-1)),
        ("logprobs", json!("x")),
        ("logprobs", json!(true)),
    ];
    g.pick(&table)
}

/// `{"inputs": ..., "parameters": {...}}` bodies that no generate route accepts.
fn bad_tgi_structure(g: &mut Gen, route: &str) -> Value {
    let params = Value::Object(g.tgi_params());
    let choices: Vec<Value> = vec![
        json!([]),
        json!("inputs"),
        json!(5),
        Value::Null,
        json!(true),
        json!({}),
        json!({"parameters": params}),
        json!({"inputs": null, "parameters": params}),
        json!({"inputs": 5, "parameters": params}),
        json!({"inputs": [], "parameters": params}),
        json!({"inputs": ["a"], "parameters": params}),
        json!({"inputs": {"a": 1}, "parameters": params}),
        json!({"inputs": true, "parameters": params}),
        json!({"inputs": "", "parameters": params}),
        json!({"inputs": long_text(300), "parameters": params}),
        json!({"inputs": "Hi", "parameters": "x"}),
        json!({"inputs": "Hi", "parameters": 5}),
        json!({"inputs": "Hi", "parameters": []}),
        json!({"inputs": "Hi", "parameters": true}),
    ];
    let mut v = g.pick(&choices);
    if route == "/tokenize" {
        // /tokenize takes `inputs` only: keep the cases that are wrong there too.
        v = g.pick(&[
            json!([]),
            json!("x"),
            json!({}),
            json!({"inputs": 5}),
            json!({"inputs": null}),
            json!({"inputs": ["a"]}),
            json!({"inputs": "Hi", "add_special_tokens": "yes"}),
            json!({"inputs": "Hi", "add_special_tokens": 1}),
        ]);
    }
    v
}

/// The Vast.ai wrapper `{"auth_data", "payload"}` around a bad payload.
fn bad_vast(g: &mut Gen) -> Value {
    let (k, bad) = bad_tgi_param(g);
    let payloads = vec![
        json!("str"),
        json!(5),
        Value::Null,
        json!([]),
        json!({}),
        json!({"inputs": 5}),
        json!({"parameters": {"max_new_tokens": 1}}),
        json!({"inputs": "Hi", "parameters": {k: bad}}),
        json!({"inputs": "", "parameters": {"max_new_tokens": 1}}),
    ];
    let payload = g.pick(&payloads);
    let auth = g.pick(&[json!({"api_key": "x"}), Value::Null, json!("x"), json!([1])]);
    let mut w = json!({"auth_data": auth, "payload": payload});
    if g.chance(0.3) {
        w["stream"] = json!(g.chance(0.5));
    }
    w
}

fn good_vast(g: &mut Gen) -> Value {
    let inner = Value::Object(g.tgi_body("/generate"));
    json!({"auth_data": {"signature": "x"}, "payload": inner})
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializable")
}

/// Inserts `bytes` inside the first string value of a serialized body.
fn inside_first_string(body: &[u8], bytes: &[u8]) -> Vec<u8> {
    // The first `":"` ends a key; the value's opening quote follows it.
    let text = String::from_utf8_lossy(body);
    let at = text
        .find(":\"")
        .map(|i| i + 2)
        .unwrap_or(body.len().saturating_sub(1));
    let mut out = body[..at].to_vec();
    out.extend_from_slice(bytes);
    out.extend_from_slice(&body[at..]);
    out
}

/// A case from byte-level damage to a valid body, or None when the mutation does not
/// apply.
fn byte_case(g: &mut Gen, family: Family, route: &'static str) -> (Vec<u8>, String) {
    let base = Value::Object(g.valid_body(family, route));
    let bytes = json_bytes(&base);
    match g.rng.random_range(0..11) {
        0 => {
            let k = g.rng.random_range(0..bytes.len());
            (bytes[..k].to_vec(), format!("truncated at {k}"))
        }
        1 => {
            let k = g.rng.random_range(1..bytes.len());
            let mut b = bytes[..k].to_vec();
            b.extend_from_slice(g.pick(&[&b"}}}"[..], b"\"", b",,", b"]"]));
            (b, "truncated with a bad tail".into())
        }
        2 => {
            let mut b = bytes.clone();
            b.extend_from_slice(g.pick(&[&b"xyz"[..], b"{}", b",", b"\"a\""]));
            (b, "trailing garbage".into())
        }
        3 => {
            let bad: &[u8] = g.pick(&[
                &b"\xff\xfe"[..],
                b"\xc3",
                b"\xc0\xaf",
                b"\xed\xa0\x80",
                b"\x80",
            ]);
            (inside_first_string(&bytes, bad), "invalid UTF-8".into())
        }
        4 => {
            let c = g.pick(&[0u8, 1, 7, 8, 9, 10, 13, 27, 31]);
            (
                inside_first_string(&bytes, &[c]),
                format!("raw control byte {c}"),
            )
        }
        5 => (
            inside_first_string(&bytes, b"\\ud800"),
            "lone surrogate escape".into(),
        ),
        6 => {
            let lit = g.pick(&[
                "NaN",
                "Infinity",
                "-Infinity",
                "1e999",
                "-1e999",
                "0x10",
                "+1",
                "01",
            ]);
            let key = match family {
                Family::Tgi if route == "/tokenize" => "add_special_tokens",
                Family::Tgi => "max_new_tokens",
                Family::OpenAi => "temperature",
            };
            let text = String::from_utf8_lossy(&bytes[..bytes.len() - 1]).into_owned();
            let b = format!("{text},\"{key}\":{lit}}}");
            (b.into_bytes(), format!("number literal {lit}"))
        }
        7 => {
            let d = g.pick(&[129usize, 1000, 100_000]);
            let text = String::from_utf8_lossy(&bytes[..bytes.len() - 1]).into_owned();
            let b = format!("{text},\"x_deep\":{}}}", nested(d));
            (b.into_bytes(), format!("nested {d} deep"))
        }
        8 => {
            let d = g.pick(&[129usize, 5000]);
            (nested(d).into_bytes(), format!("bare nesting {d} deep"))
        }
        9 => (
            b"{\"inputs\": \"Hi\" \"prompt\": \"Hi\"}".to_vec(),
            "missing comma".into(),
        ),
        _ => {
            let junk: Vec<u8> = (0..g.rng.random_range(1..64))
                .map(|_| g.rng.random())
                .collect();
            (junk, "random bytes".into())
        }
    }
}

fn case(
    family: Family,
    route: &'static str,
    body: Vec<u8>,
    expect: Expect,
    what: impl Into<String>,
) -> Case {
    Case {
        family,
        method: Method::POST,
        route,
        content_type: Some("application/json".into()),
        body,
        expect,
        what: what.into(),
    }
}

fn generate(seed: u64, family: Family) -> Vec<Case> {
    let mut g = Gen::new(seed);
    let mut out = Vec::new();
    let routes = match family {
        Family::Tgi => TGI_ROUTES,
        Family::OpenAi => OPENAI_ROUTES,
    };
    for i in 0..PER_FAMILY {
        let route: &'static str = g.pick(routes);
        let generate_route = GENERATE_ROUTES.contains(&route);
        let kind = g.rng.random_range(0..100);
        let c = match kind {
            // Byte-level damage: never JSON.
            0..=24 => {
                let (b, what) = byte_case(&mut g, family, route);
                case(family, route, b, Expect::Invalid, what)
            }
            // A valid body with the wrong content type.
            25..=31 => {
                let b = json_bytes(&Value::Object(g.valid_body(family, route)));
                let ct = g.pick(BAD_CONTENT_TYPES);
                Case {
                    content_type: ct.map(str::to_string),
                    ..case(
                        family,
                        route,
                        b,
                        Expect::Invalid,
                        format!("content type {ct:?}"),
                    )
                }
            }
            // A wrong method on a POST route (GET / is the health check).
            32..=34 => {
                let m = if route == "/" {
                    g.pick(&[Method::PUT, Method::DELETE, Method::PATCH])
                } else {
                    g.pick(&[Method::GET, Method::PUT, Method::DELETE, Method::PATCH])
                };
                let b = json_bytes(&Value::Object(g.valid_body(family, route)));
                Case {
                    method: m.clone(),
                    ..case(family, route, b, Expect::Invalid, format!("method {m}"))
                }
            }
            // Structurally wrong bodies.
            35..=49 => match family {
                Family::Tgi => {
                    let v = bad_tgi_structure(&mut g, route);
                    case(
                        family,
                        route,
                        json_bytes(&v),
                        Expect::Invalid,
                        "wrong shape",
                    )
                }
                Family::OpenAi => {
                    let mut b = g.openai_body(route);
                    let (k, v) = if route == "/v1/chat/completions" {
                        bad_chat_field(&mut g)
                    } else {
                        bad_completion_field(&mut g)
                    };
                    b.insert(k.into(), v);
                    let what = format!("bad {k}");
                    case(
                        family,
                        route,
                        json_bytes(&Value::Object(b)),
                        Expect::Invalid,
                        what,
                    )
                }
            },
            // One bad parameter in an otherwise valid body.
            50..=79 => match family {
                Family::Tgi if generate_route => {
                    let mut b = g.tgi_body(route);
                    let (k, v) = bad_tgi_param(&mut g);
                    if let Some(Value::Object(p)) = b.get_mut("parameters") {
                        p.insert(k.into(), v);
                    }
                    case(
                        family,
                        route,
                        json_bytes(&Value::Object(b)),
                        Expect::Invalid,
                        format!("bad {k}"),
                    )
                }
                Family::Tgi => {
                    // /tokenize ignores `parameters`: the body stays valid.
                    let mut b = g.tgi_body(route);
                    let (k, v) = bad_tgi_param(&mut g);
                    b.insert("parameters".into(), json!({k: v}));
                    case(
                        family,
                        route,
                        json_bytes(&Value::Object(b)),
                        Expect::Either,
                        "ignored parameters",
                    )
                }
                Family::OpenAi => {
                    let mut b = g.openai_body(route);
                    let (k, v) = bad_openai_param(&mut g);
                    b.insert(k.into(), v);
                    case(
                        family,
                        route,
                        json_bytes(&Value::Object(b)),
                        Expect::Invalid,
                        format!("bad {k}"),
                    )
                }
            },
            // Rule combinations TGI refuses, and the Vast.ai wrapper.
            80..=87 => match family {
                Family::Tgi if generate_route => {
                    let stream = route == "/generate_stream";
                    let v = match g.rng.random_range(0..5) {
                        0 => {
                            json!({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": false, "max_new_tokens": 1}})
                        }
                        1 => {
                            json!({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": true, "seed": 3, "max_new_tokens": 1}})
                        }
                        2 if stream => {
                            json!({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": true, "max_new_tokens": 1}})
                        }
                        2 if route == "/" => {
                            json!({"inputs": "Hi", "stream": true, "parameters": {"decoder_input_details": true, "max_new_tokens": 1}})
                        }
                        2 => {
                            json!({"inputs": "Hi", "stream": "yes", "parameters": {"max_new_tokens": 1}})
                        }
                        3 if stream => {
                            json!({"inputs": "Hi", "parameters": {"decoder_input_details": true, "max_new_tokens": 1}})
                        }
                        _ => bad_vast(&mut g),
                    };
                    case(
                        family,
                        route,
                        json_bytes(&v),
                        Expect::Invalid,
                        "rule combination or wrapper",
                    )
                }
                Family::Tgi => {
                    let v = json!({"inputs": long_text(g.rng.random_range(1..400))});
                    case(
                        family,
                        route,
                        json_bytes(&v),
                        Expect::Either,
                        "long input to tokenize",
                    )
                }
                Family::OpenAi => {
                    let v = if route == "/v1/chat/completions" {
                        match g.rng.random_range(0..3) {
                            0 => {
                                json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})
                            }
                            1 => {
                                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})
                            }
                            _ => {
                                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}], "tool_choice": "auto"})
                            }
                        }
                    } else {
                        match g.rng.random_range(0..3) {
                            0 => json!({"prompt": "x", "n": 2, "best_of": 1}),
                            1 => {
                                json!({"prompt": "x", "n": 1, "best_of": 2, "stream": true, "temperature": 0.5})
                            }
                            _ => json!({"prompt": ["a", "b", "c", "d", "e"], "max_tokens": 1}),
                        }
                    };
                    case(
                        family,
                        route,
                        json_bytes(&v),
                        Expect::Invalid,
                        "rule combination",
                    )
                }
            },
            // Bodies over the payload limit (100 kB in the test server).
            88..=89 => {
                let size = g.rng.random_range(100_001..300_000);
                let key = if family == Family::OpenAi && route == "/v1/completions" {
                    "prompt"
                } else {
                    "inputs"
                };
                let b = format!("{{\"{key}\":\"{}\"}}", "a".repeat(size));
                case(
                    family,
                    route,
                    b.into_bytes(),
                    Expect::Invalid,
                    format!("{size} byte body"),
                )
            }
            // Valid but odd: escaped control characters, unknown fields, explicit nulls,
            // the Vast.ai wrapper around a valid request.
            _ => {
                let mut b = g.valid_body(family, route);
                let odd = g.pick(&[
                    "\u{0}\u{7}\u{1b}[31m",
                    "\u{202e}rtl",
                    "\u{feff}bom",
                    "a\r\nb",
                    "\u{fffd}",
                ]);
                match (family, route) {
                    (Family::Tgi, _) => {
                        b.insert("inputs".into(), json!(format!("{odd} {}", g.prompt())));
                    }
                    (Family::OpenAi, "/v1/chat/completions") => {
                        b.insert(
                            "messages".into(),
                            json!([{"role": "user", "content": format!("{odd} hi")}]),
                        );
                    }
                    _ => {
                        b.insert("prompt".into(), json!(format!("{odd} hi")));
                    }
                }
                b.insert(format!("x_odd_{i}"), json!({"nested": [[[1]]]}));
                let v = if generate_route && g.chance(0.3) {
                    good_vast(&mut g)
                } else {
                    Value::Object(b)
                };
                case(
                    family,
                    route,
                    json_bytes(&v),
                    Expect::Either,
                    "valid but odd",
                )
            }
        };
        out.push(c);
    }
    // A few fixed ones: 10 MB bodies, 1,000 stop sequences, unknown paths.
    let ten_mb = |key: &str| format!("{{\"{key}\":\"{}\"}}", "a".repeat(10 << 20)).into_bytes();
    match family {
        Family::Tgi => {
            for route in TGI_ROUTES {
                out.push(case(
                    family,
                    route,
                    ten_mb("inputs"),
                    Expect::Invalid,
                    "10 MB body",
                ));
            }
            let stops: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
            let v = json!({"inputs": "Hi", "parameters": {"stop": stops, "max_new_tokens": 1}});
            out.push(case(
                family,
                "/generate",
                json_bytes(&v),
                Expect::Invalid,
                "1000 stops",
            ));
        }
        Family::OpenAi => {
            out.push(case(
                family,
                "/v1/chat/completions",
                ten_mb("model"),
                Expect::Invalid,
                "10 MB body",
            ));
            out.push(case(
                family,
                "/v1/completions",
                ten_mb("prompt"),
                Expect::Invalid,
                "10 MB body",
            ));
            let stops: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
            let v = json!({"messages": [{"role": "user", "content": "x"}], "stop": stops});
            out.push(case(
                family,
                "/v1/chat/completions",
                json_bytes(&v),
                Expect::Invalid,
                "1000 stops",
            ));
            out.push(case(
                family,
                "/v1/chat/completion",
                b"{}".to_vec(),
                Expect::Invalid,
                "unknown path",
            ));
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    tried: usize,
    invalid: usize,
    statuses: BTreeMap<u16, usize>,
    failures: Vec<String>,
}

/// Checks one answer: never 5xx; 4xx for invalid cases; every error a JSON body in the
/// route's format; a 200 stream carries no error event.
fn check(c: &Case, status: u16, text: &str) -> Result<(), String> {
    let openai = c.route.starts_with("/v1/");
    if status >= 500 {
        return Err(format!("{status}: {text}"));
    }
    if c.expect == Expect::Invalid && !(400..500).contains(&status) {
        return Err(format!(
            "an invalid request got {status}: {}",
            &text[..text.len().min(300)]
        ));
    }
    if status == 200 {
        if text.starts_with("data:") || text.contains("\ndata:") {
            for e in sse_data(text) {
                let v: Value = match serde_json::from_str(&e) {
                    Ok(v) => v,
                    Err(_) if e == "[DONE]" => continue,
                    Err(err) => return Err(format!("bad event {e:?}: {err}")),
                };
                if v.get("error").is_some() {
                    return Err(format!("error event in a 200 stream: {e}"));
                }
            }
        }
        return Ok(());
    }
    if !(400..500).contains(&status) {
        return Err(format!("unexpected status {status}"));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("{status} body is not JSON ({e}): {text:?}"))?;
    let ok = if openai {
        let e = &v["error"];
        e["message"].is_string()
            && e["type"].is_string()
            && e.get("param").is_some()
            && e.get("code").is_some()
    } else {
        v["error"].is_string() && v["error_type"].is_string()
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{status} body has the wrong shape: {v}"))
    }
}

async fn send(client: &reqwest::Client, base: &str, c: &Case) -> Result<(u16, String), String> {
    let mut r = client.request(c.method.clone(), format!("{base}{}", c.route));
    if let Some(ct) = &c.content_type {
        r = r.header(reqwest::header::CONTENT_TYPE, ct.as_str());
    }
    let resp = r
        .body(c.body.clone())
        .send()
        .await
        .map_err(|e| format!("no answer: {e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{status}, body not read: {e:?}"))?;
    Ok((status, text))
}

/// A case's family, expectation, label, and status (or what went wrong).
type Outcome = (Family, Expect, String, Result<(u16, String), String>);

async fn run_corpus(base: &str, cases: Vec<Case>) -> BTreeMap<Family, Tally> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client");
    let results: Vec<Outcome> = futures::stream::iter(cases.into_iter().map(|c| {
        let client = client.clone();
        async move {
            let r = send(&client, base, &c)
                .await
                .and_then(|(s, t)| check(&c, s, &t).map(|()| (s, String::new())));
            let label = format!("{} {} [{}]", c.method, c.route, c.what);
            (c.family, c.expect, label, r)
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    let mut tallies: BTreeMap<Family, Tally> = BTreeMap::new();
    for (family, expect, label, r) in results {
        let t = tallies.entry(family).or_default();
        t.tried += 1;
        if expect == Expect::Invalid {
            t.invalid += 1;
        }
        match r {
            Ok((status, _)) => *t.statuses.entry(status).or_default() += 1,
            Err(e) => t.failures.push(format!("{label}: {e}")),
        }
    }
    tallies
}

fn report(tallies: &BTreeMap<Family, Tally>) -> String {
    let mut s = String::new();
    for (f, t) in tallies {
        let _ = writeln!(
            s,
            "{f:?}: {} requests, {} invalid by construction, statuses {:?}, {} failures",
            t.tried,
            t.invalid,
            t.statuses,
            t.failures.len()
        );
        for e in t.failures.iter().take(25) {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

#[tokio::test]
async fn generated_bad_input_corpus() {
    let server = TestServer::shared();
    let mut cases = generate(0x8bad_f00d, Family::Tgi);
    cases.extend(generate(0x0a1_5eed, Family::OpenAi));
    let tallies = run_corpus(&server.base, cases).await;
    let summary = report(&tallies);
    println!("{summary}");
    for (f, t) in &tallies {
        assert!(
            t.invalid >= MIN_INVALID,
            "{f:?}: only {} invalid cases",
            t.invalid
        );
        assert!(t.failures.is_empty(), "{summary}");
        assert!(!t.statuses.keys().any(|&s| s >= 500), "{summary}");
    }
    // Still serving: a normal request on every route.
    for (path, body) in [
        (
            "/generate",
            json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
        ),
        (
            "/generate_stream",
            json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
        ),
        (
            "/",
            json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
        ),
        ("/tokenize", json!({"inputs": "Hello"})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
        ),
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2})),
    ] {
        let a = post(&server.url(path), &body).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    // Nothing was left behind in the engine.
    let s = server.wait_idle(Duration::from_secs(30)).await;
    assert_eq!(s.queue_size + s.running, 0, "{s:?}");
}

/// A chat template that raises (as Hugging Face templates do with `raise_exception`):
/// 422 `template_error` in OpenAI's format, and the server goes on serving.
#[tokio::test]
async fn a_raising_chat_template_is_a_4xx() {
    let mut model = load_default_model();
    model.chat_template = Some(
        "{% if messages[0]['role'] != 'system' %}\
         {{ raise_exception('Conversations must start with a system message') }}\
         {% endif %}\
         {% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}\
         {% if add_generation_prompt %}assistant:{% endif %}"
            .into(),
    );
    let server = TestServer::start_model(
        model,
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            ..engine_config()
        },
        options(),
    );
    let url = server.url("/v1/chat/completions");
    let mut g = Gen::new(0x7e47);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for i in 0..60 {
        let first = g.pick(&["user", "assistant", "tool", "developer", "system"]);
        let stream = i % 2 == 0;
        let body = json!({
            "messages": [{"role": first, "content": g.prompt()}, {"role": "user", "content": "x"}],
            "max_tokens": 1,
            "stream": stream,
        });
        let a = post(&url, &body).await;
        *statuses.entry(a.status).or_default() += 1;
        if first == "system" || first == "developer" {
            assert_eq!(a.status, 200, "{}", a.text);
        } else {
            let e = a.assert_openai_error(422);
            assert_eq!(e["code"], "template_error", "{e}");
            assert!(
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("must start with a system"),
                "{e}"
            );
        }
    }
    println!("raising template: 60 requests, statuses {statuses:?}");
    server.wait_idle(Duration::from_secs(30)).await;
}
