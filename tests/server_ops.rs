//! Operations: API key auth, CORS, 429 when overloaded, client disconnects cancelling
//! requests, generation errors (424), graceful shutdown, and `wick serve` itself (JSON
//! logs, SIGTERM).

mod server_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_support::*;
use wick::engine::EngineConfig;
use wick::server::ServerOptions;

/// A prompt the model continues for a long time.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

/// An engine whose steps each take at least `step` (so tests can act mid-generation) and
/// fail while `fail` is set.
fn slow_engine(step: Duration, fail: Arc<AtomicBool>) -> EngineConfig {
    EngineConfig {
        max_batch_total_tokens: Some(2048),
        fault_hook: Some(Arc::new(move |_ids: &[u64]| {
            std::thread::sleep(step);
            if fail.load(Ordering::SeqCst) {
                Err("injected device failure".to_string())
            } else {
                Ok(())
            }
        })),
        ..engine_config()
    }
}

/// Room for long generations.
fn long_options() -> ServerOptions {
    ServerOptions {
        max_total_tokens: Some(256),
        ..options()
    }
}

#[tokio::test]
async fn api_key_and_cors() {
    let server = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            ..engine_config()
        },
        ServerOptions {
            api_key: Some("sk-secret".into()),
            cors_allow_origin: vec!["http://allowed.example".into()],
            ..options()
        },
    );
    let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}});
    // /health needs no key.
    assert_eq!(get(&server.url("/health")).await.status, 200);
    // Everything else does.
    for (path, openai) in [
        ("/generate", false),
        ("/", false),
        ("/tokenize", false),
        ("/v1/completions", true),
    ] {
        let a = post(&server.url(path), &json!({"inputs": "Hi", "prompt": "Hi"})).await;
        if openai {
            assert_eq!(a.assert_openai_error(401)["code"], "invalid_api_key");
        } else {
            a.assert_tgi_error(401, "unauthorized");
        }
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    }
    for path in ["/info", "/metrics", "/v1/models", "/api-doc/openapi.json"] {
        assert_eq!(get(&server.url(path)).await.status, 401, "{path}");
    }
    let c = client();
    let wrong = answer(
        c.post(server.url("/generate"))
            .bearer_auth("sk-secre")
            .json(&body),
    )
    .await;
    wrong.assert_tgi_error(401, "unauthorized");
    let ok = answer(
        c.post(server.url("/generate"))
            .bearer_auth("sk-secret")
            .json(&body),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let chat = answer(
        c.post(server.url("/v1/chat/completions"))
            .header("authorization", "bearer sk-secret")
            .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.text);
    assert_eq!(
        answer(c.get(server.url("/info")).bearer_auth("sk-secret"))
            .await
            .status,
        200
    );
    // CORS: the allowed origin is echoed (preflight included), others get nothing.
    let pre = answer(
        c.request(reqwest::Method::OPTIONS, server.url("/generate"))
            .header("origin", "http://allowed.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            ),
    )
    .await;
    assert!(pre.status < 300, "{pre:?}");
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://allowed.example")
    );
    let other = answer(
        c.get(server.url("/health"))
            .header("origin", "http://evil.example"),
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    // Without the option any origin is allowed (TGI's default).
    let shared = TestServer::shared();
    let any = answer(
        c.get(shared.url("/health"))
            .header("origin", "http://x.example"),
    )
    .await;
    assert_eq!(any.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn overload_and_disconnects() {
    let fail = Arc::new(AtomicBool::new(false));
    let server = TestServer::start(
        EngineConfig {
            max_concurrent_requests: 1,
            ..slow_engine(Duration::from_millis(30), fail.clone())
        },
        long_options(),
    );
    let c = client();
    let long = json!({"inputs": COUNTING, "parameters": {"max_new_tokens": 100}});
    let mut stream = c
        .post(server.url("/generate_stream"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = read_events(&mut stream, 2).await;
    assert_eq!(first.len(), 2);
    assert_eq!(server.engine.stats().in_flight, 1);
    // Over max_concurrent_requests: 429 before any stream starts, on every route.
    post(&server.url("/generate"), &long)
        .await
        .assert_tgi_error(429, "overloaded");
    post(&server.url("/generate_stream"), &long)
        .await
        .assert_tgi_error(429, "overloaded");
    post(&server.url("/"), &json!({"inputs": "x", "stream": true}))
        .await
        .assert_tgi_error(429, "overloaded");
    let o = post(
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(o.assert_openai_error(429)["code"], "overloaded");
    // The first stream is still running; dropping it cancels the request.
    let more = read_events(&mut stream, 3).await;
    let third: Value = serde_json::from_str(&more[2]).unwrap();
    assert!(
        third["generated_text"].is_null(),
        "finished too early: {third}"
    );
    drop(stream);
    let s = server.wait_idle(Duration::from_secs(20)).await;
    assert!(s.requests_cancelled >= 1, "{s:?}");
    // A non-streaming request whose client goes away is cancelled too.
    let url = server.url("/generate");
    let task = tokio::spawn(async move { client().post(url).json(&long).send().await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.engine.stats().running == 0 {
        assert!(Instant::now() < deadline, "the request never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let s2 = server.wait_idle(Duration::from_secs(20)).await;
    assert!(s2.requests_cancelled > s.requests_cancelled, "{s2:?}");
    // Capacity is back.
    let ok = post(
        &server.url("/generate"),
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    server.wait_idle(Duration::from_secs(20)).await;
    // A failing engine step: 424 `generation`, in a stream an error event.
    fail.store(true, Ordering::SeqCst);
    let g = post(
        &server.url("/generate"),
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    g.assert_tgi_error(424, "generation");
    // The engine frees a request's slot just after its terminal event: with one slot,
    // wait for it before the next request.
    server.wait_idle(Duration::from_secs(20)).await;
    let gs = post(
        &server.url("/generate_stream"),
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(gs.status, 200);
    let last = gs.json_events().pop().unwrap();
    assert_eq!(last["error_type"], "generation", "{last}");
    server.wait_idle(Duration::from_secs(20)).await;
    let gc = post(
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(gc.assert_openai_error(424)["type"], "server_error");
    server.wait_idle(Duration::from_secs(20)).await;
    let gcs = post(
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": true}),
    )
    .await;
    let events = gcs.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "generation", "{err}");
    fail.store(false, Ordering::SeqCst);
    server.wait_idle(Duration::from_secs(20)).await;
    // The metrics saw all of it.
    let m = get(&server.url("/metrics")).await.text;
    for line in [
        "tgi_request_failure{err=\"overloaded\"} 4",
        "tgi_request_failure{err=\"cancelled\"} 2",
        "tgi_request_failure{err=\"generation\"} 4",
        "wick_requests_cancelled_total 2",
        "tgi_request_success 1",
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_short_requests_and_cancels_the_rest() {
    let mut server = TestServer::start(
        slow_engine(Duration::from_millis(60), Arc::new(AtomicBool::new(false))),
        ServerOptions {
            shutdown_timeout: Duration::from_secs(6),
            ..long_options()
        },
    );
    let c = client();
    let mut long = c
        .post(server.url("/generate_stream"))
        .json(&json!({"inputs": COUNTING, "parameters": {"max_new_tokens": 200}}))
        .send()
        .await
        .unwrap();
    let mut short = c
        .post(server.url("/generate_stream"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4}}))
        .send()
        .await
        .unwrap();
    read_events(&mut long, 1).await;
    read_events(&mut short, 1).await;
    let base = server.base.clone();
    let signalled = Instant::now();
    server.signal_shutdown();
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reqwest::Client::new()
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if r.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The short request finishes normally.
    let events = read_events(&mut short, 4).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["generated_text"].is_string(),
        "{last} after {:?}",
        signalled.elapsed()
    );
    // The long one is cut at the deadline with an error event.
    let started = Instant::now();
    let rest = long.text().await.unwrap();
    let last: Value = serde_json::from_str(sse_data(&rest).last().unwrap()).unwrap();
    assert_eq!(last["error_type"], "unavailable", "{last}");
    assert!(signalled.elapsed() >= Duration::from_secs(6));
    assert!(started.elapsed() < Duration::from_secs(20));
    // serve returns, and the engine is stopped.
    server.join().expect("serve returns Ok");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.engine.is_ready());
}

fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    what: impl Fn(&Value) -> bool,
    seen: &mut Vec<String>,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no such log line; got:\n{}", seen.join("\n")));
        seen.push(line.clone());
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if what(&v) {
            return v;
        }
    }
}

#[tokio::test]
async fn wick_serve_logs_json_lines_and_stops_on_sigterm() {
    // The default model is fetched by the test harness if needed.
    let _ = TestServer::shared();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--json-output",
            "--max-batch-total-tokens",
            "1024",
            "--max-total-tokens",
            "256",
            "--num-shard",
            "1",
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wick serve starts");
    let lines = line_reader(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let serving = wait_line(
        &lines,
        |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("serving "))
        },
        &mut seen,
    );
    let msg = serving["message"].as_str().unwrap();
    let base = msg[msg.find("http://").unwrap()..].trim().to_string();
    // The ignored TGI flag was reported.
    assert!(seen.iter().any(|l| l.contains("--num-shard")), "{seen:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(&format!("{base}/health")).await.status != 200 {
        assert!(Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = get(&format!("{base}/info")).await.json();
    assert_eq!(info["max_total_tokens"], 256);
    assert_eq!(info["max_batch_total_tokens"], 1024);
    let a = post(
        &format!("{base}/generate"),
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let bad = post(
        &format!("{base}/generate"),
        &json!({"inputs": "Hi", "parameters": {"top_k": 0}}),
    )
    .await;
    assert_eq!(bad.status, 422);
    // One line per request, with its id, lengths and timings.
    let ok = wait_line(&lines, |v| v["message"] == "request finished", &mut seen);
    assert_eq!(ok["route"], "/generate");
    assert_eq!(
        ok["generated_tokens"].as_u64(),
        a.header("x-generated-tokens").and_then(|h| h.parse().ok())
    );
    assert_eq!(
        ok["prompt_tokens"].as_u64(),
        a.header("x-prompt-tokens").and_then(|h| h.parse().ok())
    );
    for k in [
        "id",
        "total_ms",
        "queue_ms",
        "inference_ms",
        "time_per_token_ms",
        "finish_reason",
        "timestamp",
        "level",
    ] {
        assert!(ok.get(k).is_some(), "{k} missing: {ok}");
    }
    let failed = wait_line(&lines, |v| v["message"] == "request failed", &mut seen);
    assert_eq!(failed["status"], 422);
    assert_eq!(failed["error_type"], "validation");
    // A body that is not JSON gets its line too.
    let junk = post_raw(&format!("{base}/v1/completions"), "application/json", "{").await;
    assert_eq!(junk.status, 400);
    let failed = wait_line(&lines, |v| v["message"] == "request failed", &mut seen);
    assert_eq!(failed["status"], 400);
    assert_eq!(failed["route"], "/v1/completions");
    // SIGTERM: a clean exit.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wick serve did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "{code:?}");
}
