//! The OpenAI routes of the real server: `/v1/chat/completions`, `/v1/completions` and
//! `/v1/models`, streaming and not, with the shapes the openai-python SDK parses.

mod server_support;

use serde_json::{json, Value};
use server_support::*;

fn url(path: &str) -> String {
    TestServer::shared().url(path)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

async fn chat(body: Value) -> Answer {
    post(&url("/v1/chat/completions"), &body).await
}

async fn complete(body: Value) -> Answer {
    post(&url("/v1/completions"), &body).await
}

/// The text of a chat stream's content deltas for choice `index`.
fn chat_stream_text(events: &[Value], index: u64) -> String {
    events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == index)
        .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn chat_completion_shape_and_greedy_determinism() {
    let body = json!({"model": "tgi", "messages": [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0});
    let a = chat(body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], "smollm2-135m-instruct");
    assert!(v["system_fingerprint"].is_string());
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    let c = &choices[0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    let content = c["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert!(c["logprobs"].is_null());
    let u = &v["usage"];
    let (p, n) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && (1..=8).contains(&n));
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + n);
    assert_eq!(c["finish_reason"], if n == 8 { "length" } else { "stop" });
    assert_eq!(a.header("x-generated-tokens").unwrap(), n.to_string());
    // temperature 0 is greedy: the same answer again; a named model is echoed back.
    let mut b = body.clone();
    b["model"] = json!("my-model");
    let w = chat(b).await.json();
    assert_eq!(w["choices"][0]["message"]["content"], content);
    assert_eq!(w["model"], "my-model");
    // Content as a list of text parts renders the same prompt.
    let mut parts = body.clone();
    parts["messages"][1]["content"] = json!([{"type": "text", "text": "What is the capital"}, {"type": "text", "text": " of France?"}]);
    let x = chat(parts).await.json();
    assert_eq!(x["choices"][0]["message"]["content"], content);
    assert_eq!(x["usage"]["prompt_tokens"], p);
    // max_completion_tokens is max_tokens' newer name.
    let y = chat(
        json!({"messages": user("Count to ten."), "max_completion_tokens": 2, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(y["usage"]["completion_tokens"], 2);
    assert_eq!(y["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn chat_stream_matches_the_answer() {
    let body = json!({"model": "tgi", "messages": user("Name three colors."), "max_tokens": 10, "temperature": 0});
    let full = chat(body.clone()).await.json();
    let content = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let s = chat(sb.clone()).await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let raw = s.events();
    assert_eq!(raw.last().unwrap(), "[DONE]");
    assert!(s.text.trim_end().ends_with("data: [DONE]"));
    let events = s.json_events();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    for e in &events {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert!(e["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(
            e.get("usage").is_none(),
            "no usage without include_usage: {e}"
        );
    }
    assert_eq!(chat_stream_text(&events, 0), content);
    let last = events.last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        full["choices"][0]["finish_reason"]
    );
    // include_usage: usage null on every chunk, then a last chunk with the totals.
    sb["stream_options"] = json!({"include_usage": true});
    let s = chat(sb).await.json_events();
    let (last, rest) = s.split_last().unwrap();
    assert!(rest.iter().all(|e| e["usage"].is_null()));
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], full["usage"]);
}

#[tokio::test]
async fn chat_logprobs_n_seed_stop_penalties_bias() {
    // logprobs with alternatives.
    let v = chat(
        json!({"messages": user("Say hello."), "max_tokens": 4, "temperature": 0,
                        "logprobs": true, "top_logprobs": 2}),
    )
    .await;
    assert_eq!(v.status, 200, "{}", v.text);
    let v = v.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    let joined: String = content
        .iter()
        .map(|c| c["token"].as_str().unwrap())
        .collect();
    assert_eq!(
        joined,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    for c in content {
        assert!(c["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(
            c["bytes"].as_array().unwrap().len(),
            c["token"].as_str().unwrap().len()
        );
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], c["token"]);
    }
    // n choices, streaming and not.
    let v = chat(
        json!({"messages": user("Hi"), "max_tokens": 3, "n": 2, "temperature": 0.9, "seed": 7}),
    )
    .await
    .json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(
        (choices[0]["index"].clone(), choices[1]["index"].clone()),
        (json!(0), json!(1))
    );
    let total = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((2..=6).contains(&total));
    let s = chat(json!({"messages": user("Hi"), "max_tokens": 3, "n": 2, "stream": true}))
        .await
        .json_events();
    let finishes: Vec<_> = s
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| !c["finish_reason"].is_null())
        .map(|c| c["index"].clone())
        .collect();
    assert_eq!(finishes.len(), 2);
    // The same seed gives the same sample.
    let body = json!({"messages": user("Tell me a story."), "max_tokens": 8, "temperature": 1.0, "seed": 1234});
    let a = chat(body.clone()).await.json();
    let b = chat(body).await.json();
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    // A stop string ends the answer and is left out of it (OpenAI).
    let g = chat(
        json!({"messages": user("List the days of the week."), "max_tokens": 12, "temperature": 0}),
    )
    .await
    .json();
    let text = g["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let word = text
        .split_whitespace()
        .nth(1)
        .expect("two words")
        .to_string();
    let s = chat(json!({"messages": user("List the days of the week."), "max_tokens": 12, "temperature": 0, "stop": word})).await.json();
    let cut = s["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(cut, &text[..text.find(word.as_str()).unwrap()]);
    assert_eq!(s["choices"][0]["finish_reason"], "stop");
    // Penalties are accepted in range.
    let p = chat(json!({"messages": user("Hi"), "max_tokens": 3, "presence_penalty": 1.5, "frequency_penalty": 1.0, "temperature": 0})).await;
    assert_eq!(p.status, 200, "{}", p.text);
    // logit_bias +100 on one token makes greedy decoding repeat it.
    let toks = post(
        &url("/tokenize"),
        &json!({"inputs": " blue", "add_special_tokens": false}),
    )
    .await
    .json();
    let id = toks[0]["id"].as_u64().unwrap();
    let v = chat(
        json!({"messages": user("Hi"), "max_tokens": 3, "temperature": 0,
                        "logit_bias": {id.to_string(): 100}}),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["message"]["content"], " blue blue blue");
}

#[tokio::test]
async fn chat_errors_have_openai_shape() {
    let cases = [
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "hi"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
        json!({"messages": user("hi"), "temperature": 3}),
        json!({"messages": user("hi"), "top_p": 0}),
        json!({"messages": user("hi"), "presence_penalty": 2.5}),
        json!({"messages": user("hi"), "top_logprobs": 2}),
        json!({"messages": user("hi"), "logprobs": true, "top_logprobs": 21}),
        json!({"messages": user("hi"), "max_tokens": 0}),
        json!({"messages": user("hi"), "n": 0}),
        json!({"messages": user("hi"), "stop": ["a", "b", "c", "d", "e"]}),
        json!({"messages": user("hi"), "logit_bias": {"notanid": 1}}),
        json!({"messages": user("hi"), "max_tokens": 500}),
        json!({"messages": user("hi"), "response_format": {"type": "xml"}}),
        json!({"messages": user("hi"), "tools": [{"type": "function", "function": {}}]}),
        json!({"messages": user("hi"), "tool_choice": "required"}),
        json!({"model": "x"}),
    ];
    for body in cases {
        let a = chat(body.clone()).await;
        let e = a.assert_openai_error(422);
        assert_eq!(e["type"], "invalid_request_error", "{body}");
    }
    let e = post_raw(&url("/v1/chat/completions"), "application/json", "{nope")
        .await
        .assert_openai_error(400);
    assert_eq!(e["type"], "invalid_request_error");
    post_raw(&url("/v1/chat/completions"), "text/plain", "{}")
        .await
        .assert_openai_error(415);
    // Unknown fields are ignored; with tool_choice none the tools are not used.
    let ok = chat(json!({"messages": user("hi"), "max_tokens": 1, "user": "u", "parallel_tool_calls": false,
                         "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none",
                         "response_format": {"type": "text"}})).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[tokio::test]
async fn completions() {
    let prompt = "Once upon a time";
    let a = complete(json!({"model": "tgi", "prompt": prompt, "max_tokens": 6, "temperature": 0}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    let c = &v["choices"][0];
    let text = c["text"].as_str().unwrap().to_string();
    assert_eq!(c["index"], 0);
    assert!(c["logprobs"].is_null());
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(c["finish_reason"], if n == 6 { "length" } else { "stop" });
    // The same text as TGI's greedy /generate.
    let g = post(
        &url("/generate"),
        &json!({"inputs": prompt, "parameters": {"max_new_tokens": 6}}),
    )
    .await
    .json();
    assert_eq!(g["generated_text"], text.as_str());
    // Default max_tokens is 16, as OpenAI.
    let d = complete(json!({"prompt": prompt, "temperature": 0}))
        .await
        .json();
    assert!(d["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
    // Streaming: chunks whose texts concatenate to the answer, then [DONE].
    let s = complete(
        json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "stream": true,
                            "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s.events().last().unwrap(), "[DONE]");
    let events = s.json_events();
    let joined: String = events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(joined, text);
    assert_eq!(events.last().unwrap()["usage"], v["usage"]);
    // echo and logprobs.
    let e = complete(
        json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": true, "logprobs": 2}),
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text);
    let e = e.json();
    let c = &e["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with(prompt));
    let lp = &c["logprobs"];
    let prompt_tokens = e["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let completion_tokens = e["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let tokens = lp["tokens"].as_array().unwrap();
    assert!(tokens.len() <= prompt_tokens + completion_tokens && tokens.len() > prompt_tokens);
    assert!(lp["token_logprobs"][0].is_null());
    assert!(lp["top_logprobs"][0].is_null());
    let last_top = lp["top_logprobs"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_object()
        .unwrap()
        .clone();
    assert!(!last_top.is_empty() && last_top.len() <= 2);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), tokens.len());
    // Several prompts (text and token ids), and n.
    let ids: Vec<u64> = post(&url("/tokenize"), &json!({"inputs": prompt}))
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let m = complete(json!({"prompt": [prompt, "Hello"], "max_tokens": 2, "n": 2}))
        .await
        .json();
    let idx: Vec<u64> = m["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    let t = complete(json!({"prompt": ids, "max_tokens": 6, "temperature": 0}))
        .await
        .json();
    assert_eq!(t["choices"][0]["text"], text.as_str());
    let t2 = complete(
        json!({"prompt": [ids.clone(), ids], "max_tokens": 2, "temperature": 0, "stream": true}),
    )
    .await;
    let finished = t2
        .json_events()
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| !c["finish_reason"].is_null())
        .count();
    assert_eq!(finished, 2);
    // best_of > n picks the best candidates.
    let b = complete(json!({"prompt": prompt, "max_tokens": 2, "best_of": 2, "n": 1}))
        .await
        .json();
    assert_eq!(b["choices"].as_array().unwrap().len(), 1);
    // Errors.
    for body in [
        json!({"prompt": prompt, "suffix": "end"}),
        json!({"prompt": [prompt, prompt, prompt, prompt, prompt]}),
        json!({"prompt": prompt, "logprobs": 6}),
        json!({"prompt": prompt, "best_of": 1, "n": 2}),
        json!({"prompt": prompt, "best_of": 2, "stream": true}),
        json!({"prompt": ""}),
        json!({"prompt": [999999]}),
        json!({"prompt": 3}),
    ] {
        complete(body.clone()).await.assert_openai_error(422);
    }
}

#[tokio::test]
async fn models_list() {
    let m = get(&url("/v1/models")).await;
    assert_eq!(m.status, 200);
    let v = m.json();
    assert_eq!(v["object"], "list");
    let d = &v["data"][0];
    assert_eq!(d["id"], "smollm2-135m-instruct");
    assert_eq!(d["object"], "model");
    assert!(d["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(d["owned_by"].is_string());
}
