//! The TGI routes of the real server (default model, ephemeral loopback port):
//! `/generate`, `/generate_stream`, `POST /`, `/info`, `/health`, `/metrics`,
//! `/tokenize`, the Vast.ai wrapper, every generation parameter and validation error.

mod server_support;

use serde_json::{json, Value};
use server_support::*;

const PROMPT: &str = "The capital of France is";

fn url(path: &str) -> String {
    TestServer::shared().url(path)
}

async fn generate(params: Value) -> Answer {
    post(
        &url("/generate"),
        &json!({"inputs": PROMPT, "parameters": params}),
    )
    .await
}

/// Concatenated text of the non-special tokens of stream events.
fn stream_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["token"]["special"] == false)
        .map(|e| e["token"]["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sse_parser() {
    let body = "data: {\"a\":1}\n\n: keep-alive\n\ndata:[DONE]\n\n";
    assert_eq!(sse_data(body), vec!["{\"a\":1}", "[DONE]"]);
}

#[tokio::test]
async fn health_info_metrics_openapi() {
    let h = get(&url("/health")).await;
    assert_eq!(h.status, 200);
    let info = get(&url("/info")).await;
    assert_eq!(info.status, 200);
    let i = info.json();
    assert_eq!(i["model_id"], "smollm2-135m-instruct");
    assert_eq!(i["max_input_tokens"], 64);
    assert_eq!(i["max_total_tokens"], 80);
    assert_eq!(i["max_best_of"], 2);
    assert_eq!(i["max_stop_sequences"], 4);
    assert_eq!(i["max_concurrent_requests"], 64);
    assert_eq!(i["max_batch_total_tokens"], 8192);
    assert!(i["version"].is_string() && i["router"].is_string());
    // A request first, so request metrics exist.
    assert_eq!(generate(json!({"max_new_tokens": 1})).await.status, 200);
    let m = get(&url("/metrics")).await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for name in [
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_duration_bucket",
        "tgi_request_queue_duration",
        "tgi_request_input_length",
        "tgi_request_generated_tokens",
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_batch_current_max_tokens",
        "wick_kv_blocks_total 512",
        "wick_kv_blocks_used",
        "wick_kv_blocks_cached",
        "wick_prefix_cache_hit_tokens_total",
        "wick_preemptions_total",
        "wick_grammar_masks_total",
        "wick_grammar_mask_microseconds_total",
        "wick_step_microseconds_total",
    ] {
        assert!(m.text.contains(name), "{name} missing from\n{}", m.text);
    }
    let doc = get(&url("/api-doc/openapi.json")).await;
    assert_eq!(doc.status, 200);
    let d = doc.json();
    assert!(d["openapi"].as_str().unwrap().starts_with('3'));
    for p in [
        "/",
        "/generate",
        "/generate_stream",
        "/info",
        "/health",
        "/metrics",
        "/tokenize",
    ] {
        assert!(d["paths"][p].is_object(), "{p}");
    }
    assert!(d["components"]["schemas"]["GenerateParameters"]["properties"]["best_of"].is_object());
    let nf = get(&url("/nope")).await;
    nf.assert_tgi_error(404, "not_found");
}

#[tokio::test]
async fn generate_greedy_with_details_and_headers() {
    let a = generate(json!({"max_new_tokens": 6, "details": true})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    let text = v["generated_text"].as_str().unwrap();
    assert!(!text.is_empty());
    let d = &v["details"];
    let n = d["generated_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&n));
    if n < 6 {
        assert_eq!(d["finish_reason"], "eos_token");
    } else {
        assert_eq!(d["finish_reason"], "length");
    }
    // Greedy: no seed reported (as TGI), no prefill unless asked, one entry per token.
    assert!(d["seed"].is_null());
    assert_eq!(d["prefill"], json!([]));
    let tokens = d["tokens"].as_array().unwrap();
    assert_eq!(tokens.len() as u64, n);
    for t in tokens {
        assert!(t["id"].is_u64() && t["text"].is_string() && t["special"].is_boolean());
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
    assert!(d.get("top_tokens").is_none() && d.get("best_of_sequences").is_none());
    // The prompt's token count, as /tokenize counts it.
    let toks = post(&url("/tokenize"), &json!({"inputs": PROMPT}))
        .await
        .json();
    let prompt_tokens = toks.as_array().unwrap().len();
    assert_eq!(
        a.header("x-prompt-tokens").unwrap(),
        prompt_tokens.to_string()
    );
    assert_eq!(a.header("x-generated-tokens").unwrap(), n.to_string());
    assert_eq!(a.header("x-compute-type"), Some("cpu"));
    for h in [
        "x-compute-time",
        "x-total-time",
        "x-validation-time",
        "x-queue-time",
        "x-inference-time",
        "x-time-per-token",
    ] {
        let v: f64 = a
            .header(h)
            .unwrap_or_else(|| panic!("{h}"))
            .parse()
            .unwrap();
        assert!(v >= 0.0);
    }
    // Greedy decoding is deterministic; without details there is no details key.
    let b = generate(json!({"max_new_tokens": 6})).await.json();
    assert_eq!(b["generated_text"], text);
    assert!(b.get("details").is_none());
    // return_full_text prepends the prompt.
    let c = generate(json!({"max_new_tokens": 6, "return_full_text": true}))
        .await
        .json();
    assert_eq!(c["generated_text"], format!("{PROMPT}{text}"));
}

#[tokio::test]
async fn compat_route_lists_streams_and_takes_explicit_nulls() {
    // What text_generation.Client sends: every parameter, nulls included.
    let params = json!({"best_of": null, "decoder_input_details": false, "details": true,
        "do_sample": false, "max_new_tokens": 5, "repetition_penalty": null,
        "frequency_penalty": null, "return_full_text": false, "seed": null, "stop": [],
        "temperature": null, "top_k": null, "top_n_tokens": null, "top_p": null,
        "truncate": null, "typical_p": null, "watermark": false, "grammar": null,
        "adapter_id": null, "an_unknown_field": {"x": 1}});
    let a = post(
        &url("/"),
        &json!({"inputs": PROMPT, "parameters": params, "stream": false}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let list = a.json();
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 1);
    let text = list[0]["generated_text"].as_str().unwrap().to_string();
    assert_eq!(
        list[0]["details"]["generated_tokens"].as_u64().unwrap() as usize,
        list[0]["details"]["tokens"].as_array().unwrap().len()
    );
    assert!(a.header("x-generated-tokens").is_some());
    // Unset return_full_text on `/` defaults to true (TGI, text-generation models).
    let b = post(
        &url("/"),
        &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 5}}),
    )
    .await
    .json();
    assert_eq!(b[0]["generated_text"], format!("{PROMPT}{text}"));
    // Streaming on `/`.
    let mut p = params.clone();
    p["details"] = json!(true);
    let s = post(
        &url("/"),
        &json!({"inputs": PROMPT, "parameters": p, "stream": true}),
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = s.json_events();
    let last = events.last().unwrap();
    assert_eq!(last["generated_text"], text.as_str());
    assert_eq!(stream_text(&events), text);
}

#[tokio::test]
async fn stream_events_concatenate_to_the_final_text() {
    let s = post(
        &url("/generate_stream"),
        &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "details": true, "top_n_tokens": 2}}),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert!(s.header("x-prompt-tokens").is_some());
    let events = s.json_events();
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["index"], i + 1);
        assert!(e["token"]["id"].is_u64());
        assert_eq!(e["top_tokens"].as_array().unwrap().len(), 2, "{e}");
        if i + 1 < events.len() {
            assert!(
                e["generated_text"].is_null() && e["details"].is_null(),
                "{e}"
            );
        }
    }
    let last = events.last().unwrap();
    let text = last["generated_text"].as_str().unwrap();
    assert_eq!(stream_text(&events), text);
    let d = &last["details"];
    assert_eq!(d["generated_tokens"], events.len());
    assert!(d["input_length"].as_u64().unwrap() > 0);
    assert!(["length", "eos_token"].contains(&d["finish_reason"].as_str().unwrap()));
    // The same text as the non-streaming route.
    let g = generate(json!({"max_new_tokens": 8})).await.json();
    assert_eq!(g["generated_text"], text);
    // Without details the last event has generated_text and null details.
    let s = post(
        &url("/generate_stream"),
        &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    let events = s.json_events();
    assert_eq!(
        events.last().unwrap()["generated_text"],
        stream_text(&events).as_str()
    );
    assert!(events.last().unwrap()["details"].is_null());
}

#[tokio::test]
async fn vast_wrapper() {
    let auth =
        json!({"signature": "sig", "cost": "1", "endpoint": "e", "reqnum": 3, "url": "http://x"});
    let payload = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 4}});
    let direct = generate(json!({"max_new_tokens": 4})).await.json();
    let a = post(
        &url("/generate"),
        &json!({"auth_data": auth, "payload": payload}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["generated_text"], direct["generated_text"]);
    let s = post(
        &url("/generate_stream"),
        &json!({"auth_data": auth, "payload": payload}),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    let events = s.json_events();
    assert_eq!(
        events.last().unwrap()["generated_text"],
        direct["generated_text"]
    );
    // A wrapper around an invalid payload is a validation error.
    let bad = post(
        &url("/generate"),
        &json!({"auth_data": auth, "payload": {"parameters": {}}}),
    )
    .await;
    bad.assert_tgi_error(422, "validation");
}

#[tokio::test]
async fn sampling_seeds() {
    let p = json!({"max_new_tokens": 6, "do_sample": true, "temperature": 1.5, "top_k": 50,
                   "top_p": 0.95, "typical_p": 0.99, "repetition_penalty": 1.1,
                   "frequency_penalty": 0.5, "seed": 42, "details": true, "watermark": true});
    let a = generate(p.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = a.json();
    let b = generate(p).await.json();
    assert_eq!(a["generated_text"], b["generated_text"]);
    assert_eq!(a["details"]["seed"], 42);
    // Without a seed one is drawn and reported.
    let c = generate(json!({"max_new_tokens": 2, "do_sample": true, "details": true}))
        .await
        .json();
    let d = generate(json!({"max_new_tokens": 2, "do_sample": true, "details": true}))
        .await
        .json();
    assert!(c["details"]["seed"].is_u64() && d["details"]["seed"].is_u64());
    assert_ne!(c["details"]["seed"], d["details"]["seed"]);
    // A temperature alone switches sampling on (TGI's warpers), and reports a seed.
    let e = generate(json!({"max_new_tokens": 2, "temperature": 0.7, "details": true}))
        .await
        .json();
    assert!(e["details"]["seed"].is_u64());
}

#[tokio::test]
async fn best_of_returns_the_best_and_the_others() {
    let a =
        generate(json!({"max_new_tokens": 4, "best_of": 2, "do_sample": true, "details": true}))
            .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    let d = &v["details"];
    let others = d["best_of_sequences"]
        .as_array()
        .expect("best_of_sequences");
    assert_eq!(others.len(), 1);
    let mean = |tokens: &Value| {
        let t = tokens.as_array().unwrap();
        t.iter()
            .map(|x| x["logprob"].as_f64().unwrap())
            .sum::<f64>()
            / t.len() as f64
    };
    assert!(mean(&d["tokens"]) >= mean(&others[0]["tokens"]) - 1e-4);
    assert!(others[0]["generated_text"].is_string() && others[0]["finish_reason"].is_string());
    // TGI's rules.
    generate(json!({"best_of": 2, "max_new_tokens": 2}))
        .await
        .assert_tgi_error(422, "validation");
    generate(json!({"best_of": 3, "do_sample": true, "max_new_tokens": 2}))
        .await
        .assert_tgi_error(422, "validation");
    generate(json!({"best_of": 2, "do_sample": true, "seed": 1, "max_new_tokens": 2}))
        .await
        .assert_tgi_error(422, "validation");
    let s = post(
        &url("/generate_stream"),
        &json!({"inputs": PROMPT, "parameters": {"best_of": 2, "do_sample": true}}),
    )
    .await;
    s.assert_tgi_error(422, "validation");
}

#[tokio::test]
async fn decoder_input_details_and_top_n_tokens() {
    let a =
        generate(json!({"max_new_tokens": 3, "decoder_input_details": true, "top_n_tokens": 3}))
            .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    let d = &v["details"];
    let prefill = d["prefill"].as_array().unwrap();
    let prompt_tokens: usize = a.header("x-prompt-tokens").unwrap().parse().unwrap();
    assert_eq!(prefill.len(), prompt_tokens);
    assert!(prefill[0]["logprob"].is_null());
    assert!(prefill[1..]
        .iter()
        .all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
    let top = d["top_tokens"].as_array().unwrap();
    assert_eq!(top.len(), d["tokens"].as_array().unwrap().len());
    for (t, alts) in d["tokens"].as_array().unwrap().iter().zip(top) {
        let alts = alts.as_array().unwrap();
        assert_eq!(alts.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(alts[0]["id"], t["id"]);
    }
    generate(json!({"top_n_tokens": 6}))
        .await
        .assert_tgi_error(422, "validation");
    let s = post(
        &url("/generate_stream"),
        &json!({"inputs": PROMPT, "parameters": {"decoder_input_details": true}}),
    )
    .await;
    s.assert_tgi_error(422, "validation");
}

#[tokio::test]
async fn stop_sequences_are_kept_in_tgi_text() {
    let base = generate(json!({"max_new_tokens": 8, "details": true}))
        .await
        .json();
    let tokens = base["details"]["tokens"].as_array().unwrap().clone();
    // A stop sequence made of the third generated token's text.
    let stop = tokens
        .iter()
        .skip(2)
        .map(|t| t["text"].as_str().unwrap())
        .find(|t| !t.trim().is_empty())
        .expect("a visible token")
        .to_string();
    let full = base["generated_text"].as_str().unwrap();
    let cut = &full[..full.find(stop.as_str()).unwrap() + stop.len()];
    for route in ["/generate", "/generate_stream"] {
        let a = post(&url(route), &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "stop": [stop], "details": true}})).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let (text, reason) = if route == "/generate" {
            let v = a.json();
            (
                v["generated_text"].as_str().unwrap().to_string(),
                v["details"]["finish_reason"].clone(),
            )
        } else {
            let e = a.json_events();
            let last = e.last().unwrap().clone();
            assert_eq!(stream_text(&e), last["generated_text"].as_str().unwrap());
            (
                last["generated_text"].as_str().unwrap().to_string(),
                last["details"]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, cut, "{route}");
        assert_eq!(reason, "stop_sequence", "{route}");
    }
    generate(json!({"stop": ["a", "b", "c", "d", "e"]}))
        .await
        .assert_tgi_error(422, "validation");
}

#[tokio::test]
async fn truncate_and_lengths() {
    let long = "one two three four five six seven eight nine ten ".repeat(3);
    let a = post(
        &url("/generate"),
        &json!({"inputs": long, "parameters": {"max_new_tokens": 2, "truncate": 5}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-prompt-tokens"), Some("5"));
    // Too long for max_input_tokens (64) / max_total_tokens (80).
    let huge = "word ".repeat(200);
    let e = post(
        &url("/generate"),
        &json!({"inputs": huge, "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    e.assert_tgi_error(422, "validation");
    let e = post(
        &url("/generate"),
        &json!({"inputs": "word ".repeat(30), "parameters": {"max_new_tokens": 60}}),
    )
    .await;
    e.assert_tgi_error(422, "validation");
    assert!(
        e.json()["error"]
            .as_str()
            .unwrap()
            .contains("must be <= 80"),
        "{}",
        e.text
    );
    generate(json!({"truncate": 0}))
        .await
        .assert_tgi_error(422, "validation");
    generate(json!({"truncate": 65}))
        .await
        .assert_tgi_error(422, "validation");
    // Without max_new_tokens, generation may use what max_total_tokens leaves.
    let d = generate(json!({"details": true})).await;
    assert_eq!(d.status, 200, "{}", d.text);
    let prompt: u64 = d.header("x-prompt-tokens").unwrap().parse().unwrap();
    let v = d.json();
    let n = v["details"]["generated_tokens"].as_u64().unwrap();
    assert!(prompt + n <= 80);
    if v["details"]["finish_reason"] == "length" {
        assert_eq!(prompt + n, 80);
    }
}

#[tokio::test]
async fn validation_errors() {
    for (params, what) in [
        (json!({"temperature": 0}), "temperature"),
        (json!({"temperature": -1}), "temperature"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"frequency_penalty": 2.5}), "frequency_penalty"),
        (json!({"top_p": 1.0}), "top_p"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"typical_p": 1.0}), "typical_p"),
        (json!({"top_k": 0}), "top_k"),
        (json!({"top_k": -3}), "top_k"),
        (json!({"max_new_tokens": 0}), "max_new_tokens"),
        (
            json!({"grammar": {"type": "regex", "value": "(unclosed"}}),
            "grammar",
        ),
    ] {
        let a = generate(params.clone()).await;
        a.assert_tgi_error(422, "validation");
        assert!(
            a.json()["error"].as_str().unwrap().contains(what),
            "{params}: {}",
            a.text
        );
    }
    // Shapes: negative max_new_tokens, wrong types, missing or empty inputs.
    generate(json!({"max_new_tokens": -1}))
        .await
        .assert_tgi_error(422, "validation");
    post(&url("/generate"), &json!({"inputs": 5}))
        .await
        .assert_tgi_error(422, "validation");
    post(&url("/generate"), &json!({"parameters": {}}))
        .await
        .assert_tgi_error(422, "validation");
    post(&url("/generate"), &json!({"inputs": ""}))
        .await
        .assert_tgi_error(422, "validation");
    post(&url("/generate_stream"), &json!({"inputs": ""}))
        .await
        .assert_tgi_error(422, "validation");
    // Malformed JSON, wrong content type, oversized body.
    post_raw(&url("/generate"), "application/json", "{\"inputs\": ")
        .await
        .assert_tgi_error(400, "validation");
    post_raw(&url("/generate"), "text/plain", "{\"inputs\": \"x\"}")
        .await
        .assert_tgi_error(415, "validation");
    let big = json!({"inputs": "x".repeat(200_000)}).to_string();
    post_raw(&url("/generate"), "application/json", big)
        .await
        .assert_tgi_error(413, "validation");
    // Nothing above reached the engine.
    let s = TestServer::shared().engine.stats();
    assert!(s.blocks_used <= s.blocks_total);
}

#[tokio::test]
async fn tokenize_gives_ids_and_byte_ranges() {
    let input = "Hello world, héllo!";
    let a = post(&url("/tokenize"), &json!({"inputs": input})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let toks = a.json();
    let toks = toks.as_array().unwrap();
    assert!(toks.len() >= 4);
    let mut cursor = 0;
    let mut rebuilt = String::new();
    for t in toks {
        let (start, stop) = (
            t["start"].as_u64().unwrap() as usize,
            t["stop"].as_u64().unwrap() as usize,
        );
        assert!(start <= stop && stop <= input.len(), "{t}");
        let piece = input
            .get(start..stop)
            .expect("ranges fall on character boundaries");
        assert_eq!(t["text"], piece, "{t}");
        if start >= cursor {
            rebuilt.push_str(piece);
        }
        cursor = cursor.max(stop);
    }
    assert_eq!(rebuilt, input);
    // The ids are the ones generation uses: as many as x-prompt-tokens counts.
    let g = post(
        &url("/generate"),
        &json!({"inputs": input, "parameters": {"max_new_tokens": 1}}),
    )
    .await;
    assert_eq!(g.header("x-prompt-tokens").unwrap(), toks.len().to_string());
    post(&url("/tokenize"), &json!({"text": "x"}))
        .await
        .assert_tgi_error(422, "validation");
}
