//! Structured output and tool calls through the real server: TGI `grammar` on every
//! generate route (and the Vast wrapper), `response_format` in OpenAI's and TGI's forms
//! on chat and completions, `tools` with each `tool_choice`, streamed and not, a tool
//! result sent back, and `--disable-grammar-support`. Outputs that end by themselves are
//! validated against their schema (the schemas are bounded, so every constrained
//! answer ends within the token budget).

mod server_support;

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use server_support::*;
use wick::server::ServerOptions;

/// One server for this file, with room for the tools' description in chat prompts.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start(engine_config(), wide_options()))
}

fn wide_options() -> ServerOptions {
    ServerOptions {
        max_input_tokens: Some(1024),
        max_total_tokens: Some(1200),
        payload_limit: 100_000,
        shutdown_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    }
}

fn url(path: &str) -> String {
    server().url(path)
}

/// A person: bounded strings, an integer range, an enum, a nested object, a bounded
/// array.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
            "address": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": false},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2}
        },
        "required": ["name", "age", "role", "address", "tags"],
        "additionalProperties": false
    })
}

fn assert_valid(schema: &Value, text: &str) -> Value {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{text} does not follow the schema: {errors:?}"
    );
    v
}

fn tgi_params(grammar: Value) -> Value {
    json!({"max_new_tokens": 80, "details": true, "grammar": grammar})
}

const PROMPT: &str = "Describe a user of a web site as JSON.";

#[tokio::test]
async fn tgi_json_grammar_on_generate_routes() {
    let schema = person_schema();
    // A schema object, a string holding one, and the json_object alias.
    let forms = [
        json!({"type": "json", "value": schema}),
        json!({"type": "json", "value": schema.to_string()}),
        json!({"type": "json_object", "value": schema}),
    ];
    for grammar in forms {
        let body = json!({"inputs": PROMPT, "parameters": tgi_params(grammar.clone())});
        let a = post(&url("/generate"), &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let v = a.json();
        assert_eq!(v["details"]["finish_reason"], "eos_token", "{grammar}: {v}");
        assert_valid(&schema, v["generated_text"].as_str().unwrap());
    }
    // POST /: a list, and with return_full_text the prompt before the JSON.
    let body = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 80, "details": true,
        "return_full_text": false, "do_sample": true, "seed": 7,
        "grammar": {"type": "json", "value": schema}}});
    let a = post(&url("/"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(v[0]["details"]["finish_reason"], "eos_token", "{v}");
    assert_valid(&schema, v[0]["generated_text"].as_str().unwrap());
    // The Vast wrapper.
    let body = json!({"auth_data": {"signature": "x", "cost": 1, "endpoint": "e", "reqnum": 1, "url": "u"},
        "payload": {"inputs": PROMPT, "parameters": tgi_params(json!({"type": "json", "value": schema}))}});
    let a = post(&url("/generate"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_valid(&schema, a.json()["generated_text"].as_str().unwrap());
}

#[tokio::test]
async fn tgi_grammar_streams() {
    let schema = person_schema();
    let grammar = json!({"type": "json", "value": schema});
    for (route, body) in [
        (
            "/generate_stream",
            json!({"inputs": PROMPT, "parameters": tgi_params(grammar.clone())}),
        ),
        (
            "/",
            json!({"inputs": PROMPT, "stream": true, "parameters": tgi_params(grammar.clone())}),
        ),
    ] {
        let a = post(&url(route), &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let events = a.json_events();
        let last = events.last().expect("events");
        assert_eq!(last["details"]["finish_reason"], "eos_token", "{last}");
        let joined: String = events
            .iter()
            .filter(|e| !e["token"]["special"].as_bool().unwrap_or(false))
            .map(|e| e["token"]["text"].as_str().unwrap_or("").to_string())
            .collect();
        // `POST /` returns the full text (TGI's default for text-generation models).
        let prefix = if route == "/" { PROMPT } else { "" };
        let text = last["generated_text"].as_str().unwrap();
        assert_eq!(format!("{prefix}{joined}"), text, "{route}");
        assert_valid(&schema, &joined);
    }
}

#[tokio::test]
async fn tgi_regex_grammar() {
    for (regex, check) in [
        (
            "[0-9]{3}-[0-9]{4}",
            (|s: &str| {
                s.len() == 8
                    && s.char_indices()
                        .all(|(i, c)| if i == 3 { c == '-' } else { c.is_ascii_digit() })
            }) as fn(&str) -> bool,
        ),
        ("(yes|no)", |s: &str| s == "yes" || s == "no"),
    ] {
        let body = json!({"inputs": "Is the sky blue? Answer:", "parameters": {
            "max_new_tokens": 20, "details": true, "grammar": {"type": "regex", "value": regex}}});
        let a = post(&url("/generate"), &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let v = a.json();
        let text = v["generated_text"].as_str().unwrap();
        assert!(check(text), "{regex}: {text:?}");
        assert_eq!(v["details"]["finish_reason"], "eos_token", "{v}");
    }
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": "tgi", "max_tokens": 80, "temperature": 0,
        "messages": [{"role": "user", "content": PROMPT}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[tokio::test]
async fn openai_json_schema_and_json_object() {
    let schema = person_schema();
    let formats = [
        // OpenAI's json_schema (what `chat.completions.parse` sends).
        json!({"type": "json_schema", "json_schema": {"name": "Person", "schema": schema,
               "strict": true, "description": "a user"}}),
        // TGI's chat form.
        json!({"type": "json", "value": schema}),
        json!({"type": "json_object", "value": schema}),
    ];
    for format in formats {
        let a = post(
            &url("/v1/chat/completions"),
            &chat_body(json!({"response_format": format})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        let c = &a.json()["choices"][0];
        assert_eq!(c["finish_reason"], "stop", "{format}: {c}");
        assert!(c["message"].get("tool_calls").is_none(), "{c}");
        assert_valid(&schema, c["message"]["content"].as_str().unwrap());
    }
    // Streamed, with two sampled choices: each choice's deltas join into valid JSON.
    let body = chat_body(
        json!({"stream": true, "n": 2, "temperature": 0.8, "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "Person", "schema": schema}}}),
    );
    let a = post(&url("/v1/chat/completions"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"));
    let events = a.json_events();
    for index in 0..2u64 {
        let choices: Vec<Value> = events
            .iter()
            .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["index"] == index)
            .collect();
        let text: String = choices
            .iter()
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect();
        let reason = choices.iter().find_map(|c| c["finish_reason"].as_str());
        assert_eq!(reason, Some("stop"), "{choices:?}");
        assert_valid(&schema, &text);
    }
    // json_object: any JSON object (unbounded, so only its start is certain).
    let a = post(
        &url("/v1/chat/completions"),
        &chat_body(json!({"max_tokens": 30, "response_format": {"type": "json_object"}})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c = &a.json()["choices"][0];
    let content = c["message"]["content"].as_str().unwrap();
    assert!(content.starts_with('{'), "{content:?}");
    if c["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).is_ok_and(|v| v.is_object()));
    }
    // `text` constrains nothing.
    let a = post(
        &url("/v1/chat/completions"),
        &chat_body(json!({"max_tokens": 4, "response_format": {"type": "text"}})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn completions_response_format() {
    let schema = person_schema();
    for stream in [false, true] {
        let body = json!({"prompt": PROMPT, "max_tokens": 80, "temperature": 0, "stream": stream,
            "response_format": {"type": "json_schema", "json_schema": {"name": "P", "schema": schema}}});
        let a = post(&url("/v1/completions"), &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let (text, reason) = if stream {
            let events = a.json_events();
            let text: String = events
                .iter()
                .filter_map(|e| e["choices"][0]["text"].as_str())
                .collect();
            let reason = events.iter().find_map(|e| {
                e["choices"][0]["finish_reason"]
                    .as_str()
                    .map(str::to_string)
            });
            (text, reason)
        } else {
            let v = a.json();
            let c = &v["choices"][0];
            (
                c["text"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().map(str::to_string),
            )
        };
        assert_eq!(reason.as_deref(), Some("stop"), "{text:?}");
        assert_valid(&schema, &text);
    }
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "description": "Adds two numbers",
            "parameters": {"type": "object", "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 1000},
                "b": {"type": "integer", "minimum": 0, "maximum": 1000}},
                "required": ["a", "b"], "additionalProperties": false}}}
    ])
}

fn tool_schema(name: &str) -> Value {
    tools()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name:?}"))["function"]["parameters"]
        .clone()
}

fn tool_body(extra: Value) -> Value {
    let mut body = json!({"model": "tgi", "max_tokens": 60, "temperature": 0, "tools": tools(),
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Checks an answer's tool calls (OpenAI's shape); returns them.
fn assert_calls(message: &Value) -> Vec<Value> {
    assert!(message["content"].is_null(), "{message}");
    let calls = message["tool_calls"]
        .as_array()
        .expect("tool_calls")
        .clone();
    assert!(!calls.is_empty(), "{message}");
    for c in &calls {
        assert!(
            c["id"].as_str().is_some_and(|id| id.starts_with("call_")),
            "{c}"
        );
        assert_eq!(c["type"], "function", "{c}");
        let name = c["function"]["name"].as_str().expect("a name");
        let args = c["function"]["arguments"]
            .as_str()
            .expect("arguments as a string");
        assert_valid(&tool_schema(name), args);
    }
    calls
}

#[tokio::test]
async fn tool_choice_required_and_named() {
    // required, one call.
    let a = post(
        &url("/v1/chat/completions"),
        &tool_body(json!({"tool_choice": "required", "parallel_tool_calls": false})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c = &a.json()["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{c}");
    assert_eq!(assert_calls(&c["message"]).len(), 1);
    // Named, in OpenAI's form and TGI's bare name.
    for choice in [
        json!({"type": "function", "function": {"name": "add"}}),
        json!("add"),
    ] {
        let a = post(
            &url("/v1/chat/completions"),
            &tool_body(json!({"tool_choice": choice, "parallel_tool_calls": false,
                "messages": [{"role": "user", "content": "What is 2 plus 3?"}]})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        let c = &a.json()["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{c}");
        let calls = assert_calls(&c["message"]);
        assert!(
            calls.iter().all(|c| c["function"]["name"] == "add"),
            "{calls:?}"
        );
    }
    // Parallel calls allowed: one or more, each valid (an unbounded list may run out of
    // tokens, then the finished calls are still whole).
    let a = post(
        &url("/v1/chat/completions"),
        &tool_body(json!({"tool_choice": "required", "max_tokens": 120})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c = &a.json()["choices"][0];
    if c["finish_reason"] == "tool_calls" {
        assert_calls(&c["message"]);
    } else {
        assert_eq!(c["finish_reason"], "length", "{c}");
        assert!(c["message"]["content"].is_null(), "{c}");
    }
}

#[tokio::test]
async fn tool_calls_stream_as_openai_does() {
    let body = tool_body(
        json!({"tool_choice": "required", "parallel_tool_calls": false,
        "stream": true, "stream_options": {"include_usage": true}}),
    );
    let a = post(&url("/v1/chat/completions"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"));
    let events = a.json_events();
    let deltas: Vec<Value> = events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(deltas[0]["delta"]["role"], "assistant");
    // Never any content: the call is in tool_calls only.
    for d in &deltas {
        let content = &d["delta"]["content"];
        assert!(content.is_null() || content == "", "{d}");
    }
    let parts: Vec<Value> = deltas
        .iter()
        .flat_map(|d| {
            d["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert!(!parts.is_empty(), "{deltas:?}");
    let first = &parts[0];
    assert_eq!(first["index"], 0);
    assert!(
        first["id"].as_str().is_some_and(|s| s.starts_with("call_")),
        "{first}"
    );
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["arguments"], "");
    let name = first["function"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    for p in &parts[1..] {
        assert_eq!(p["index"], 0, "{p}");
        assert!(
            p.get("id").is_none() && p["function"].get("name").is_none(),
            "{p}"
        );
    }
    let args: String = parts
        .iter()
        .filter_map(|p| p["function"]["arguments"].as_str())
        .collect();
    assert_valid(&tool_schema(&name), &args);
    let reason = deltas.iter().find_map(|d| d["finish_reason"].as_str());
    assert_eq!(reason, Some("tool_calls"));
    assert!(events.last().unwrap()["usage"]["completion_tokens"].as_u64() > Some(0));
}

#[tokio::test]
async fn tool_choice_auto_and_none() {
    // auto: text or calls, never both, and whichever it is, well formed.
    for stream in [false, true] {
        let body = tool_body(json!({"stream": stream,
            "messages": [{"role": "user", "content": "Say hello."}]}));
        let a = post(&url("/v1/chat/completions"), &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        if stream {
            let deltas: Vec<Value> = a
                .json_events()
                .iter()
                .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
                .collect();
            let text: String = deltas
                .iter()
                .filter_map(|d| d["delta"]["content"].as_str())
                .collect();
            let calls = deltas.iter().any(|d| d["delta"]["tool_calls"].is_array());
            assert!(text.is_empty() || !calls, "{deltas:?}");
            assert!(!text.starts_with('{') && !text.starts_with('['), "{text:?}");
        } else {
            let c = &a.json()["choices"][0];
            if c["finish_reason"] == "tool_calls" {
                assert_calls(&c["message"]);
            } else {
                let content = c["message"]["content"].as_str().expect("text content");
                assert!(
                    !content.starts_with('{') && !content.starts_with('['),
                    "{c}"
                );
                assert!(c["message"].get("tool_calls").is_none(), "{c}");
            }
        }
    }
    // none: plain text, tools unused.
    let a = post(
        &url("/v1/chat/completions"),
        &tool_body(json!({"tool_choice": "none", "max_tokens": 8})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c = &a.json()["choices"][0];
    assert!(c["message"]["content"].is_string(), "{c}");
    assert!(c["message"].get("tool_calls").is_none(), "{c}");
    assert_ne!(c["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn tool_results_round_trip() {
    // The history OpenAI clients send back: the assistant's call (content null), then
    // the tool's result; with a TGI tool_prompt leading the tools' description.
    let messages = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}"}
    ]);
    let a = post(
        &url("/v1/chat/completions"),
        &tool_body(
            json!({"messages": messages, "tool_choice": "none", "max_tokens": 12,
            "tool_prompt": "Use these tools when they help."}),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c = &a.json()["choices"][0];
    assert!(
        c["message"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    // And again with tools still on offer: whatever it answers is well formed.
    let a = post(
        &url("/v1/chat/completions"),
        &tool_body(json!({"messages": messages, "tool_prompt": "Use these tools when they help."})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c = &a.json()["choices"][0];
    if c["finish_reason"] == "tool_calls" {
        assert_calls(&c["message"]);
    } else {
        assert!(c["message"]["content"].is_string(), "{c}");
    }
}

#[tokio::test]
async fn bad_grammars_and_tools_are_422() {
    let tgi = [
        json!({"type": "json", "value": "{not json"}),
        json!({"type": "json", "value": 5}),
        json!({"type": "regex", "value": "(unclosed"}),
        // uniqueItems is not supported.
        json!({"type": "json", "value": {"type": "array", "items": {"type": "integer"}, "uniqueItems": true}}),
        json!({"type": "lark", "value": "start: x"}),
    ];
    for g in tgi {
        for route in ["/generate", "/generate_stream", "/"] {
            let body = json!({"inputs": "x", "parameters": {"max_new_tokens": 4, "grammar": g}});
            post(&url(route), &body)
                .await
                .assert_tgi_error(422, "validation");
        }
    }
    let openai = [
        json!({"response_format": {"type": "xml"}}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}}}}}),
        json!({"response_format": {"type": "regex", "value": "(("}}),
        json!({"tools": [{"type": "function", "function": {"description": "no name"}}]}),
        json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
        json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        json!({"tools": tools(), "tool_choice": "nope"}),
        json!({"tool_choice": "required"}),
        json!({"tools": tools(), "tool_choice": 3}),
        json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"a": {"type": "array", "uniqueItems": true}}}}}], "tool_choice": "required"}),
    ];
    for extra in openai {
        let e = post(&url("/v1/chat/completions"), &chat_body(extra.clone()))
            .await
            .assert_openai_error(422);
        assert_eq!(e["type"], "invalid_request_error", "{extra}");
    }
    let e = post(
        &url("/v1/completions"),
        &json!({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": "{nope"}}}),
    )
    .await
    .assert_openai_error(422);
    assert_eq!(e["param"], "response_format");
}

#[tokio::test]
async fn disabled_grammar_support_refuses_grammars() {
    let mut s = TestServer::start(
        engine_config(),
        ServerOptions {
            disable_grammar_support: true,
            ..wide_options()
        },
    );
    let body = json!({"inputs": "x", "parameters": {"max_new_tokens": 2,
        "grammar": {"type": "regex", "value": "a+"}}});
    let a = post(&s.url("/generate"), &body).await;
    a.assert_tgi_error(422, "validation");
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("grammar is not supported"));
    for extra in [
        json!({"response_format": {"type": "json_object"}}),
        json!({"tools": tools(), "tool_choice": "required"}),
    ] {
        post(&s.url("/v1/chat/completions"), &chat_body(extra))
            .await
            .assert_openai_error(422);
    }
    // What needs no grammar still works.
    let a = post(
        &s.url("/v1/chat/completions"),
        &chat_body(json!({"max_tokens": 2, "response_format": {"type": "text"},
            "tools": tools(), "tool_choice": "none"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    s.join().expect("the server stops");
}
