//! Reliability over HTTP (issue 8): a thousand streams dropped by their clients leave no
//! KV block behind, a burst of 10× `max_concurrent_requests` turns into fast 429s and the
//! server recovers, engine step failures and an engine panic end the affected requests
//! with JSON errors, a client sending its body slowly is cut off with 408, `--api-key`
//! guards every route but `/health`, and prompts stay out of the logs unless
//! `--log-prompts`.
//!
//! The tests take turns (one lock) so the timing comparisons are not skewed by each other
//! on a small machine.

mod server_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use server_support::*;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use wick::engine::EngineConfig;
use wick::server::ServerOptions;

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A prompt the model continues for a long time.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

fn addr(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// A gauge or counter from Prometheus text (first sample with that exact name).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next()? == name {
            it.next()?.parse().ok()
        } else {
            None
        }
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Gauges {
    blocks_used: f64,
    blocks_cached: f64,
    in_flight: f64,
    queue: f64,
    running: f64,
    cancelled: f64,
}

async fn gauges(server: &TestServer) -> Gauges {
    let text = get(&server.url("/metrics")).await.text;
    let m = |n: &str| metric(&text, n).unwrap_or_else(|| panic!("{n} missing from /metrics"));
    Gauges {
        blocks_used: m("wick_kv_blocks_used"),
        blocks_cached: m("wick_kv_blocks_cached"),
        in_flight: m("wick_requests_in_flight"),
        queue: m("tgi_queue_size"),
        running: m("tgi_batch_current_size"),
        cancelled: metric(&text, "wick_requests_cancelled_total").unwrap_or(0.0),
    }
}

/// Polls `/metrics` until no request is queued, running or in flight and no KV block is
/// held by a sequence (prefix-cached free blocks may stay), for at most `timeout`.
async fn wait_drained(server: &TestServer, timeout: Duration) -> Gauges {
    let deadline = Instant::now() + timeout;
    loop {
        let g = gauges(server).await;
        if g.blocks_used == 0.0 && g.in_flight == 0.0 && g.queue == 0.0 && g.running == 0.0 {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "not drained after {timeout:?}: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw HTTP/1.1 request's head.
fn head(method: &str, path: &str, host: &str, extra: &[(&str, String)]) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Reads a raw response until the server closes or `timeout` passes.
fn read_raw(s: &mut TcpStream, timeout: Duration) -> String {
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn raw_json(resp: &str) -> Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp:?}"))
}

/// Reads SSE payloads until `n` arrived or the stream ended; None on a transport error.
async fn next_events(resp: &mut reqwest::Response, buf: &mut String, n: usize) -> Option<usize> {
    loop {
        let complete = buf.matches("\n\n").count();
        if complete >= n {
            return Some(complete);
        }
        match resp.chunk().await {
            Ok(Some(c)) => buf.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => return Some(complete),
            Err(_) => return None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StreamRoute {
    Generate,
    Compat,
    Chat,
}

impl StreamRoute {
    fn path(self) -> &'static str {
        match self {
            Self::Generate => "/generate_stream",
            Self::Compat => "/",
            Self::Chat => "/v1/chat/completions",
        }
    }

    fn body(self, prompt: &str, max_new: u32) -> Value {
        match self {
            Self::Generate => {
                json!({"inputs": prompt, "parameters": {"max_new_tokens": max_new}})
            }
            Self::Compat => {
                json!({"inputs": prompt, "stream": true, "parameters": {"max_new_tokens": max_new}})
            }
            Self::Chat => json!({
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new,
                "stream": true,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DropAt {
    /// The request is sent whole, then the socket closed before any byte comes back.
    BeforeFirstByte,
    /// Half the body is sent, then the socket closed.
    MidBody,
    /// Dropped after the response head and `k` events.
    AfterEvents(usize),
    /// Read to the end.
    Never,
}

/// Sends one stream request and lets it go at `at`.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    host: &str,
    route: StreamRoute,
    at: DropAt,
    body: Vec<u8>,
) -> Result<(), String> {
    if matches!(at, DropAt::BeforeFirstByte | DropAt::MidBody) {
        let sent = if at == DropAt::MidBody {
            body.len() / 2
        } else {
            body.len()
        };
        let h = head(
            "POST",
            route.path(),
            host,
            &[
                ("content-type", "application/json".into()),
                ("content-length", body.len().to_string()),
            ],
        );
        let host = host.to_string();
        return tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&host).map_err(|e| format!("connect: {e}"))?;
            let _ = s.write_all(h.as_bytes());
            let _ = s.write_all(&body[..sent]);
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    let mut resp = client
        .post(format!("{base}{}", route.path()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut buf = String::new();
    match at {
        DropAt::AfterEvents(k) => {
            next_events(&mut resp, &mut buf, k).await;
            Ok(())
        }
        _ => {
            next_events(&mut resp, &mut buf, usize::MAX)
                .await
                .ok_or("the stream broke")?;
            let events = sse_data(&buf);
            let last = events
                .iter()
                .rev()
                .find(|e| e.as_str() != "[DONE]")
                .cloned()
                .unwrap_or_default();
            if events.is_empty() || last.starts_with("{\"error\"") {
                Err(format!("the stream ended badly: {last}"))
            } else {
                Ok(())
            }
        }
    }
}

/// 1,000 streams over three routes, each dropped at a random point: afterwards no KV
/// block is held (read from the `/metrics` gauge), nothing is queued or running, and the
/// server serves normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_dropped_streams_leave_no_blocks_in_use() {
    let _turn = SERIAL.lock().await;
    let server = TestServer::start(
        EngineConfig {
            max_concurrent_requests: 256,
            max_batch_total_tokens: Some(8192),
            ..engine_config()
        },
        options(),
    );
    let host = addr(&server);
    let mut rng = ChaCha8Rng::seed_from_u64(0xd15c0);
    let words = [
        "cat", "dog", "sun", "tree", "river", "stone", "bird", "cloud",
    ];
    let routes = [
        StreamRoute::Generate,
        StreamRoute::Compat,
        StreamRoute::Chat,
    ];
    let plans: Vec<(StreamRoute, DropAt, String, u32)> = (0..1000)
        .map(|i| {
            // Chat prompts are the longest (the template's system turn): fewer of them.
            let route = match rng.random_range(0..5) {
                0 | 1 => routes[0],
                2 | 3 => routes[1],
                _ => routes[2],
            };
            let at = match rng.random_range(0..100) {
                0..=19 => DropAt::BeforeFirstByte,
                20..=27 => DropAt::MidBody,
                28..=89 => DropAt::AfterEvents(rng.random_range(0..=4)),
                _ => DropAt::Never,
            };
            // Short prompts: prefill is most of the work on a small CPU.
            let prompt = format!(
                "{} {}",
                words[i % words.len()],
                words[rng.random_range(0..words.len())]
            );
            (route, at, prompt, rng.random_range(2..=6))
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let started = Instant::now();
    let outcomes: Vec<(DropAt, Result<(), String>)> = futures::stream::iter(plans)
        .map(|(route, at, prompt, max_new)| {
            let client = client.clone();
            let base = server.base.clone();
            let host = host.clone();
            async move {
                let body = serde_json::to_vec(&route.body(&prompt, max_new)).unwrap();
                (at, drive(&client, &base, &host, route, at, body).await)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let sent_in = started.elapsed();
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(at, r)| r.as_ref().err().map(|e| format!("{at:?}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    let mut by_point: BTreeMap<String, usize> = BTreeMap::new();
    for (at, _) in &outcomes {
        let k = match at {
            DropAt::AfterEvents(k) => format!("after {k} events"),
            other => format!("{other:?}"),
        };
        *by_point.entry(k).or_default() += 1;
    }
    let g = wait_drained(&server, Duration::from_secs(30)).await;
    let drained_in = started.elapsed();
    println!(
        "disconnects: {} streams in {:.1}s, drained at {:.1}s; drop points {by_point:?}; \
         afterwards {} KV blocks used, {} prefix-cached, {} requests cancelled by the engine",
        outcomes.len(),
        sent_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        g.blocks_used,
        g.blocks_cached,
        g.cancelled,
    );
    assert_eq!(g.blocks_used, 0.0, "{g:?}");
    assert!(g.cancelled > 100.0, "few requests were cancelled: {g:?}");
    // The engine agrees with the gauge, and the server serves normally.
    let s = server.engine.stats();
    assert_eq!((s.blocks_used, s.in_flight), (0, 0), "{s:?}");
    let ok = post(
        &server.url("/generate"),
        &json!({"inputs": "Hello", "parameters": {"max_new_tokens": 3}}),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(drained_in < Duration::from_secs(90), "took {drained_in:?}");
}

#[derive(Debug, Clone, Copy)]
enum BurstRoute {
    Generate,
    GenerateStream,
    Chat,
    Completions,
}

impl BurstRoute {
    const ALL: [BurstRoute; 4] = [
        BurstRoute::Generate,
        BurstRoute::GenerateStream,
        BurstRoute::Chat,
        BurstRoute::Completions,
    ];

    fn request(self, base: &str, max_new: u32) -> (String, Value) {
        match self {
            Self::Generate => (
                format!("{base}/generate"),
                json!({"inputs": COUNTING, "parameters": {"max_new_tokens": max_new}}),
            ),
            Self::GenerateStream => (
                format!("{base}/generate_stream"),
                json!({"inputs": COUNTING, "parameters": {"max_new_tokens": max_new}}),
            ),
            Self::Chat => (
                format!("{base}/v1/chat/completions"),
                json!({"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": max_new}),
            ),
            Self::Completions => (
                format!("{base}/v1/completions"),
                json!({"prompt": COUNTING, "max_tokens": max_new, "stream": true}),
            ),
        }
    }
}

/// An engine whose every step takes at least `step`.
fn paced(step: Duration) -> EngineConfig {
    EngineConfig {
        max_batch_total_tokens: Some(4096),
        fault_hook: Some(Arc::new(move |_ids: &[u64]| {
            std::thread::sleep(step);
            Ok(())
        })),
        ..engine_config()
    }
}

/// Sends `10 × max_concurrent_requests` requests at once; returns (route, status,
/// latency, body) for each.
async fn burst(
    server: &TestServer,
    n: usize,
    max_new: u32,
) -> Vec<(BurstRoute, u16, Duration, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let route = BurstRoute::ALL[i % BurstRoute::ALL.len()];
            let (url, body) = route.request(&server.base, max_new);
            let client = client.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let t = Instant::now();
                let r = client.post(url).json(&body).send().await.expect("answered");
                let status = r.status().as_u16();
                let text = r.text().await.expect("body read");
                (route, status, t.elapsed(), text)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("the task ran"));
    }
    out
}

fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// 10× `max_concurrent_requests` at once: the excess get 429 (in TGI's or OpenAI's
/// format) faster than any accepted request completes, the accepted ones complete, the
/// queue and batch gauges return to zero and the server serves normally; twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_turns_into_fast_429s_and_the_server_recovers() {
    let _turn = SERIAL.lock().await;
    const MAX: usize = 4;
    let server = TestServer::start(
        EngineConfig {
            max_concurrent_requests: MAX,
            ..paced(Duration::from_millis(25))
        },
        options(),
    );
    for round in 1..=2 {
        let results = burst(&server, 10 * MAX, 12).await;
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        for (route, status, latency, text) in &results {
            match status {
                200 => {
                    // Completed: a full answer or a stream that ends without an error.
                    match route {
                        BurstRoute::Generate => {
                            let v: Value = serde_json::from_str(text).unwrap();
                            assert!(v["generated_text"].is_string(), "{v}");
                        }
                        BurstRoute::Chat => {
                            let v: Value = serde_json::from_str(text).unwrap();
                            assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
                        }
                        BurstRoute::GenerateStream => {
                            let events = sse_data(text);
                            let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
                            assert!(last["generated_text"].is_string(), "{last}");
                        }
                        BurstRoute::Completions => {
                            let events = sse_data(text);
                            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                            assert!(!text.contains("\"error\""), "{text}");
                        }
                    }
                    ok.push(*latency);
                }
                429 => {
                    let v: Value = serde_json::from_str(text).unwrap();
                    match route {
                        BurstRoute::Chat | BurstRoute::Completions => {
                            assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
                            assert_eq!(v["error"]["code"], "overloaded", "{v}");
                        }
                        _ => assert_eq!(v["error_type"], "overloaded", "{v}"),
                    }
                    refused.push(*latency);
                }
                s => panic!("unexpected status {s}: {text}"),
            }
        }
        let slowest_429 = refused.iter().max().copied().unwrap_or_default();
        let fastest_ok = ok.iter().min().copied().unwrap_or_default();
        println!(
            "overload round {round}: {} requests with max_concurrent_requests {MAX}: {} accepted \
             (latency min {:?}, median {:?}), {} refused 429 (latency median {:?}, max {:?})",
            results.len(),
            ok.len(),
            fastest_ok,
            quantile(ok.clone(), 0.5),
            refused.len(),
            quantile(refused.clone(), 0.5),
            slowest_429,
        );
        assert!(ok.len() >= MAX, "only {} accepted", ok.len());
        assert!(refused.len() >= 5 * MAX, "only {} refused", refused.len());
        assert!(
            slowest_429 < fastest_ok,
            "a 429 took {slowest_429:?}, an accepted request only {fastest_ok:?}"
        );
        let g = wait_drained(&server, Duration::from_secs(20)).await;
        assert_eq!(
            (g.queue, g.running, g.in_flight, g.blocks_used),
            (0.0, 0.0, 0.0, 0.0)
        );
        let a = post(
            &server.url("/generate"),
            &json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let m = get(&server.url("/metrics")).await.text;
    assert!(
        metric(&m, "tgi_request_failure{err=\"overloaded\"}").unwrap_or(0.0) >= 10.0 * MAX as f64,
        "{m}"
    );
}

/// Failing engine steps (as a device error or out-of-memory would) on every generating
/// route: a JSON error (TGI 424 `generation`, OpenAI 424 `server_error`), or in a stream
/// an error event after the tokens already sent; the server serves on and holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_failures_give_json_errors_and_the_server_serves_on() {
    let _turn = SERIAL.lock().await;
    let armed = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let (a, f) = (armed.clone(), failures.clone());
    let server = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(4096),
            fault_hook: Some(Arc::new(move |_ids: &[u64]| {
                std::thread::sleep(Duration::from_millis(5));
                if a.swap(false, Ordering::SeqCst) {
                    f.fetch_add(1, Ordering::SeqCst);
                    Err("injected failure: CUDA out of memory".to_string())
                } else {
                    Ok(())
                }
            })),
            ..engine_config()
        },
        options(),
    );
    let c = client();
    let chat = |stream: bool| json!({"messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 40, "stream": stream});
    let tgi = json!({"inputs": COUNTING, "parameters": {"max_new_tokens": 40}});
    let non_stream: Vec<(&str, Value)> = vec![
        ("/generate", tgi.clone()),
        ("/", tgi.clone()),
        ("/v1/chat/completions", chat(false)),
        (
            "/v1/completions",
            json!({"prompt": COUNTING, "max_tokens": 40}),
        ),
    ];
    for (path, body) in &non_stream {
        armed.store(true, Ordering::SeqCst);
        let a = post(&server.url(path), body).await;
        if path.starts_with("/v1/") {
            let e = a.assert_openai_error(424);
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str()),
                (Some("server_error"), Some("generation"))
            );
            assert!(
                e["message"].as_str().unwrap().contains("out of memory"),
                "{e}"
            );
        } else {
            a.assert_tgi_error(424, "generation");
        }
        server.wait_idle(Duration::from_secs(20)).await;
    }
    let streams: Vec<(&str, Value)> = vec![
        ("/generate_stream", tgi.clone()),
        (
            "/",
            json!({"inputs": COUNTING, "stream": true, "parameters": {"max_new_tokens": 40}}),
        ),
        ("/v1/chat/completions", chat(true)),
        (
            "/v1/completions",
            json!({"prompt": COUNTING, "max_tokens": 40, "stream": true}),
        ),
    ];
    for (path, body) in &streams {
        let mut resp = c.post(server.url(path)).json(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut buf = String::new();
        // The first events (tokens; the chat stream's role chunk), then a failing step.
        next_events(&mut resp, &mut buf, 3).await.expect("events");
        armed.store(true, Ordering::SeqCst);
        next_events(&mut resp, &mut buf, usize::MAX).await;
        let events = sse_data(&buf);
        let json_events: Vec<Value> = events
            .iter()
            .filter(|e| e.as_str() != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let last = json_events.last().unwrap();
        if path.starts_with("/v1/") {
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{path}");
            assert_eq!(last["error"]["code"], "generation", "{path}: {last}");
            assert_eq!(last["error"]["type"], "server_error", "{path}: {last}");
        } else {
            assert_eq!(last["error_type"], "generation", "{path}: {last}");
            assert!(last["error"].as_str().unwrap().contains("out of memory"));
            // Tokens went out before the failure.
            assert!(json_events.len() >= 3, "{events:?}");
        }
        server.wait_idle(Duration::from_secs(20)).await;
        // The server serves on.
        let ok = post(
            &server.url("/generate"),
            &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.text);
    }
    assert_eq!(failures.load(Ordering::SeqCst), 8);
    let g = wait_drained(&server, Duration::from_secs(10)).await;
    assert_eq!(g.blocks_used, 0.0);
    let m = get(&server.url("/metrics")).await.text;
    assert_eq!(
        metric(&m, "tgi_request_failure{err=\"generation\"}"),
        Some(8.0),
        "{m}"
    );
}

/// An engine thread that panics: the request in flight ends with a JSON error event, the
/// health check stops answering 200, and `serve` returns an error (so `wick serve` exits
/// non-zero) instead of answering errors forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_requests_and_stops_the_server() {
    let _turn = SERIAL.lock().await;
    let armed = Arc::new(AtomicBool::new(false));
    let a = armed.clone();
    let mut server = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            fault_hook: Some(Arc::new(move |_ids: &[u64]| {
                std::thread::sleep(Duration::from_millis(5));
                if a.load(Ordering::SeqCst) {
                    panic!("injected engine panic");
                }
                Ok(())
            })),
            ..engine_config()
        },
        options(),
    );
    assert_eq!(get(&server.url("/health")).await.status, 200);
    let mut resp = client()
        .post(server.url("/generate_stream"))
        .json(&json!({"inputs": COUNTING, "parameters": {"max_new_tokens": 40}}))
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    next_events(&mut resp, &mut buf, 2).await.expect("events");
    armed.store(true, Ordering::SeqCst);
    next_events(&mut resp, &mut buf, usize::MAX).await;
    let last: Value = serde_json::from_str(sse_data(&buf).last().unwrap()).unwrap();
    assert_eq!(last["error_type"], "incomplete_generation", "{last}");
    // The server stops on its own: wait until it no longer accepts connections.
    let started = Instant::now();
    loop {
        let r = reqwest::Client::new()
            .get(server.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match r {
            Err(_) => break,
            Ok(r) => assert_ne!(r.status(), 200, "healthy without an engine"),
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = tokio::task::spawn_blocking(move || {
        let r = server.join();
        (r, server)
    })
    .await
    .unwrap();
    let (r, server) = joined;
    let err = r.expect_err("serve returns an error");
    assert!(format!("{err:#}").contains("engine stopped"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(server.engine.has_stopped() && !server.engine.is_ready());
}

/// A client that sends its body slowly is cut off with 408 (a JSON error in the route's
/// format) after `request_body_timeout`, whether it stalls or trickles; a body that
/// arrives in time in pieces is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_off_with_408() {
    let _turn = SERIAL.lock().await;
    let limit = Duration::from_millis(400);
    let server = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            ..engine_config()
        },
        ServerOptions {
            request_body_timeout: limit,
            ..options()
        },
    );
    let host = addr(&server);
    tokio::task::spawn_blocking(move || raw_slow_clients(&host, limit))
        .await
        .expect("the raw clients ran");
    // And the server is fine.
    let ok = post(
        &server.url("/generate"),
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(ok.status, 200);
    let m = get(&server.url("/metrics")).await.text;
    assert_eq!(
        metric(&m, "tgi_request_failure{err=\"timeout\"}"),
        Some(4.0),
        "{m}"
    );
}

/// The slow clients of `slow_bodies_are_cut_off_with_408`, over plain sockets.
fn raw_slow_clients(host: &str, limit: Duration) {
    let body = serde_json::to_vec(&json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}))
        .unwrap();
    let chat = serde_json::to_vec(
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    )
    .unwrap();
    let len_head = |path: &str, len: usize| {
        head(
            "POST",
            path,
            host,
            &[
                ("content-type", "application/json".into()),
                ("content-length", len.to_string()),
            ],
        )
    };
    let wait = Duration::from_secs(10);
    // Stalls after a few bytes.
    let mut s = TcpStream::connect(host).unwrap();
    let t = Instant::now();
    s.write_all(len_head("/generate", body.len()).as_bytes())
        .unwrap();
    s.write_all(&body[..5]).unwrap();
    let resp = read_raw(&mut s, wait);
    let waited = t.elapsed();
    assert_eq!(raw_status(&resp), 408, "{resp}");
    let v = raw_json(&resp);
    assert_eq!(v["error_type"], "timeout", "{v}");
    assert!(v["error"].is_string(), "{v}");
    assert!(
        waited >= limit && waited < limit * 5,
        "cut off after {waited:?}"
    );
    println!("slow body: a stalled body was cut off with 408 after {waited:?} (limit {limit:?})");
    // Headers only, no body at all; OpenAI's format on /v1/*.
    let mut s = TcpStream::connect(host).unwrap();
    s.write_all(len_head("/v1/chat/completions", chat.len()).as_bytes())
        .unwrap();
    let resp = read_raw(&mut s, wait);
    assert_eq!(raw_status(&resp), 408, "{resp}");
    assert_eq!(raw_json(&resp)["error"]["code"], "timeout", "{resp}");
    // A trickle (one byte every 50 ms) does not reset the clock.
    let mut s = TcpStream::connect(host).unwrap();
    let t = Instant::now();
    s.write_all(len_head("/v1/chat/completions", chat.len()).as_bytes())
        .unwrap();
    let mut wr = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for b in chat.iter() {
            if wr.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let resp = read_raw(&mut s, wait);
    let waited = t.elapsed();
    assert_eq!(raw_status(&resp), 408, "{resp}");
    assert_eq!(
        raw_json(&resp)["error"]["type"],
        "invalid_request_error",
        "{resp}"
    );
    assert!(waited < limit * 5, "the trickle held on for {waited:?}");
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = trickle.join();
    println!("slow body: a trickling body was cut off with 408 after {waited:?}");
    // A chunked body that never ends.
    let mut s = TcpStream::connect(host).unwrap();
    let h = head(
        "POST",
        "/generate",
        host,
        &[
            ("content-type", "application/json".into()),
            ("transfer-encoding", "chunked".into()),
        ],
    );
    s.write_all(h.as_bytes()).unwrap();
    s.write_all(b"5\r\n{\"inp\r\n").unwrap();
    let resp = read_raw(&mut s, wait);
    assert_eq!(raw_status(&resp), 408, "{resp}");
    // In time, in two pieces: served.
    let mut s = TcpStream::connect(host).unwrap();
    s.write_all(len_head("/generate", body.len()).as_bytes())
        .unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&body[10..]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(raw_status(&resp), 200, "{resp}");
}

/// With an API key every route but `/health` refuses a missing, wrong or malformed token
/// with 401 (JSON in the route's format, `WWW-Authenticate: Bearer`), the streaming
/// routes included, before any stream starts; the right token is served; and a refused
/// request with a body does not break the next one on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_guards_every_route_but_health() {
    let _turn = SERIAL.lock().await;
    const KEY: &str = "sk-reliability-key";
    let server = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            ..engine_config()
        },
        ServerOptions {
            api_key: Some(KEY.into()),
            ..options()
        },
    );
    let tgi = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}});
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let routes: Vec<(reqwest::Method, &str, Option<Value>)> = vec![
        (reqwest::Method::GET, "/", None),
        (reqwest::Method::POST, "/", Some(tgi.clone())),
        (
            reqwest::Method::POST,
            "/",
            Some(json!({"inputs": "Hi", "stream": true, "parameters": {"max_new_tokens": 1}})),
        ),
        (reqwest::Method::POST, "/generate", Some(tgi.clone())),
        (reqwest::Method::POST, "/generate_stream", Some(tgi.clone())),
        (
            reqwest::Method::POST,
            "/tokenize",
            Some(json!({"inputs": "Hi"})),
        ),
        (reqwest::Method::GET, "/info", None),
        (reqwest::Method::GET, "/metrics", None),
        (reqwest::Method::GET, "/api-doc/openapi.json", None),
        (
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(chat.clone()),
        ),
        (
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(
                json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": true}),
            ),
        ),
        (
            reqwest::Method::POST,
            "/v1/completions",
            Some(json!({"prompt": "Hi", "max_tokens": 1})),
        ),
        (
            reqwest::Method::POST,
            "/v1/completions",
            Some(json!({"prompt": "Hi", "max_tokens": 1, "stream": true})),
        ),
        (reqwest::Method::GET, "/v1/models", None),
    ];
    let bad_tokens: Vec<Option<String>> = vec![
        None,
        Some("Bearer wrong".into()),
        Some(format!("Bearer {KEY}x")),
        Some(format!("Bearer {}", &KEY[..KEY.len() - 1])),
        Some(format!("Basic {KEY}")),
        Some(KEY.into()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Token {KEY}")),
    ];
    let c = client();
    let mut refused = 0;
    for (method, path, body) in &routes {
        let build = |auth: Option<&str>| {
            let mut r = c.request(method.clone(), server.url(path));
            if let Some(b) = body {
                r = r.json(b);
            }
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r
        };
        for t in &bad_tokens {
            let a = answer(build(t.as_deref())).await;
            if path.starts_with("/v1/") {
                assert_eq!(
                    a.assert_openai_error(401)["code"],
                    "invalid_api_key",
                    "{path} {t:?}"
                );
            } else {
                a.assert_tgi_error(401, "unauthorized");
            }
            assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{path}");
            assert!(
                !a.text.contains("data:"),
                "{path}: a stream started: {}",
                a.text
            );
            refused += 1;
        }
        let ok = answer(build(Some(&format!("Bearer {KEY}")))).await;
        assert_eq!(ok.status, 200, "{method} {path}: {}", ok.text);
        // The scheme is case-insensitive.
        let ok = answer(build(Some(&format!("bearer {KEY}")))).await;
        assert_eq!(ok.status, 200, "{method} {path}: {}", ok.text);
    }
    // /health is open.
    assert_eq!(get(&server.url("/health")).await.status, 200);
    // Refusals with a body, then a good request, over one connection at a time.
    let one = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for i in 0..20 {
        let r = one.post(server.url("/generate")).json(&tgi);
        let r = if i % 2 == 0 { r } else { r.bearer_auth(KEY) };
        let a = answer(r).await;
        assert_eq!(
            a.status,
            if i % 2 == 0 { 401 } else { 200 },
            "{i}: {}",
            a.text
        );
    }
    println!(
        "auth: {} routes × {} bad credentials refused with 401 ({refused} requests), /health open",
        routes.len(),
        bad_tokens.len()
    );
}

/// Captured log output (the global subscriber of this test binary).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.0.clone())
    }
}

fn captured_logs() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c = Capture::default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("wick=info"))
            .with_writer(c.clone())
            .with_ansi(false)
            .try_init();
        c
    })
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Sends a canary prompt through every generating route (and echoed in refusals); returns
/// the ids the server gave the requests.
async fn send_canaries(server: &TestServer, canary: &str) -> Vec<String> {
    let c = client();
    let prompt = format!("{canary} says hello");
    let requests: Vec<(&str, Value)> = vec![
        (
            "/generate",
            json!({"inputs": prompt, "parameters": {"max_new_tokens": 1}}),
        ),
        (
            "/generate_stream",
            json!({"inputs": prompt, "parameters": {"max_new_tokens": 1}}),
        ),
        (
            "/",
            json!({"inputs": prompt, "parameters": {"max_new_tokens": 1}}),
        ),
        ("/tokenize", json!({"inputs": prompt})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "stream": true}),
        ),
        (
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 1}),
        ),
        // Refusals whose messages quote the request.
        ("/v1/chat/completions", json!({"messages": prompt})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": prompt, "content": "x"}]}),
        ),
        (
            "/generate",
            json!({"inputs": prompt, "parameters": {"stop": prompt.len()}}),
        ),
        ("/generate", json!({"inputs": [prompt]})),
    ];
    let mut ids = Vec::new();
    for (path, body) in requests {
        let a = answer(c.post(server.url(path)).json(&body)).await;
        assert!(a.status == 200 || a.status == 422, "{path}: {}", a.text);
        ids.push(a.header("x-request-id").expect("x-request-id").to_string());
    }
    ids
}

/// Request ids in the log lines (and the `x-request-id` header); no prompt text in the
/// logs by default, the request bodies with `--log-prompts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_prompts_only_when_asked() {
    let _turn = SERIAL.lock().await;
    let logs = captured_logs();
    let quiet = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            ..engine_config()
        },
        options(),
    );
    let ids = send_canaries(&quiet, "canary-quokka-4411").await;
    quiet.wait_idle(Duration::from_secs(20)).await;
    drop(quiet);
    let loud = TestServer::start(
        EngineConfig {
            max_batch_total_tokens: Some(2048),
            ..engine_config()
        },
        ServerOptions {
            log_prompts: true,
            ..options()
        },
    );
    send_canaries(&loud, "canary-wombat-9902").await;
    loud.wait_idle(Duration::from_secs(20)).await;
    let _ = std::io::stderr().flush();
    let text = logs.text();
    assert!(
        !text.contains("canary-quokka"),
        "the prompt reached the logs without --log-prompts:\n{}",
        text.lines()
            .filter(|l| l.contains("canary-quokka"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.contains("canary-wombat-9902 says hello"),
        "--log-prompts logged no prompt:\n{text}"
    );
    // Every request's end is logged with its id (the one in x-request-id), /tokenize
    // aside (it has no request log).
    for (i, id) in ids.iter().enumerate() {
        if i == 3 {
            continue;
        }
        let tag = format!("id={id} ");
        assert!(
            text.lines().any(|l| l.contains(&tag)
                && (l.contains("request finished") || l.contains("request failed"))),
            "no log line for request {id}:\n{text}"
        );
    }
}
