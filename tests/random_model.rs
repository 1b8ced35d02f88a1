//! Random-weight models (`random:<shape>`) served end to end, with no download: the tiny
//! shape through the TGI and OpenAI routes in process, and `wick serve --model-id
//! random:tiny` / `wick generate` as a user runs them.

mod server_support;

use std::time::{Duration, Instant};

use serde_json::json;
use server_support::*;
use wick::config::ModelsConfig;
use wick::hub::{self, HubOptions};

/// The tiny shape's vocabulary size.
const TINY_VOCAB: u64 = 512;

fn offline_hub(cache: &std::path::Path) -> HubOptions {
    HubOptions {
        cache_dir: cache.join("cache"),
        hf_cache: Some(cache.join("hf")),
        offline: true,
        ..HubOptions::from_env()
    }
}

#[tokio::test]
async fn random_tiny_serves_tgi_and_openai_routes() {
    let dir = tempfile::tempdir().unwrap();
    let resolved = hub::resolve(
        Some("random:tiny@5"),
        &ModelsConfig::embedded(),
        &offline_hub(dir.path()),
    )
    .expect("random:tiny resolves offline");
    let loaded = wick::model::load(&resolved, &wick::model::LoadOptions::default())
        .expect("random:tiny loads");
    assert_eq!(loaded.model.config().vocab_size as u64, TINY_VOCAB);
    let server = TestServer::start_model(loaded, engine_config(), options());

    let info = get(&server.url("/info")).await.json();
    assert_eq!(info["model_id"], "random:tiny@5", "{info}");

    // Greedy: exactly max_new_tokens (no end-of-sequence token), every id in the
    // vocabulary, and the same text twice.
    let body = json!({"inputs": "The capital of France is",
                      "parameters": {"max_new_tokens": 8, "details": true}});
    let a = post(&server.url("/generate"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    let details = &v["details"];
    assert_eq!(details["generated_tokens"], 8, "{v}");
    assert_eq!(details["finish_reason"], "length", "{v}");
    let tokens = details["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 8);
    assert!(tokens
        .iter()
        .all(|t| t["id"].as_u64().is_some_and(|id| id < TINY_VOCAB) && t["text"].is_string()));
    assert!(v["generated_text"].is_string());
    let again = post(&server.url("/generate"), &body).await.json();
    assert_eq!(again["generated_text"], v["generated_text"]);

    // Sampled and streamed: one event per token, the text on the last.
    let a = post(
        &server.url("/generate_stream"),
        &json!({"inputs": "Once upon a time",
                "parameters": {"max_new_tokens": 6, "do_sample": true, "seed": 1}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let events = a.json_events();
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(events.last().unwrap()["generated_text"].is_string());

    // The prompt is tokenized byte by byte.
    let t = post(&server.url("/tokenize"), &json!({"inputs": "hi!"}))
        .await
        .json();
    let ids: Vec<u64> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![104, 105, 33]);

    // OpenAI chat, through the synthetic tokenizer's plain chat template.
    let a = post(
        &server.url("/v1/chat/completions"),
        &json!({"model": "tgi", "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 5}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    // "user: Hello!\nassistant:", one token per byte.
    assert_eq!(v["usage"]["prompt_tokens"], 23, "{v}");
    server.wait_idle(Duration::from_secs(10)).await;
}

/// Kills the child when the test ends, passed or not.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wick(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.env("WICK_CACHE", dir.join("cache"))
        .env("HF_HUB_CACHE", dir.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("WICK_OFFLINE", "1")
        .env_remove("MODEL_ID")
        .env_remove("RUST_LOG");
    cmd
}

#[tokio::test]
async fn wick_serve_and_generate_with_random_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let out = wick(dir.path())
        .args([
            "generate",
            "--model-id",
            "random:tiny",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "4",
        ])
        .output()
        .expect("wick generate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = Child(
        wick(dir.path())
            .args([
                "serve",
                "--model-id",
                "random:tiny",
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                "--json-output",
                "--max-batch-total-tokens",
                "1024",
                "--max-total-tokens",
                "128",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("wick serve starts"),
    );
    let lines = line_reader(child.0.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let base = serving_address(&lines, Duration::from_secs(60), &mut seen);
    while get(&format!("{base}/health")).await.status != 200 {
        assert!(Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = get(&format!("{base}/info")).await.json();
    assert_eq!(info["model_id"], "random:tiny", "{info}");
    assert_eq!(info["max_total_tokens"], 128, "{info}");
    let a = post(
        &format!("{base}/generate"),
        &json!({"inputs": "Hello", "parameters": {"max_new_tokens": 4, "details": true}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["details"]["generated_tokens"], 4, "{}", a.text);
}
