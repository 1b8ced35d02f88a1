//! Helpers for the server tests: a real server on an ephemeral loopback port with the
//! default model, HTTP helpers and an SSE parser.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use wick::engine::{EngineConfig, EngineHandle, SchedulerConfig};
use wick::server::ServerOptions;

#[path = "../common/mod.rs"]
mod common;

/// The default model, loaded.
pub fn load_default_model() -> wick::model::LoadedModel {
    let resolved = common::default_model();
    wick::model::load(&resolved, &wick::model::LoadOptions::default())
        .expect("the default model loads")
}

/// A server running on its own thread and runtime.
pub struct TestServer {
    pub base: String,
    pub engine: EngineHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// A small KV cache and limits that keep prompts short, so tests stay fast on 2 cores.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_prefill_tokens: 512,
            ..SchedulerConfig::default()
        },
        max_concurrent_requests: 64,
        max_batch_total_tokens: Some(8192),
        ..EngineConfig::default()
    }
}

pub fn options() -> ServerOptions {
    ServerOptions {
        max_input_tokens: Some(64),
        max_total_tokens: Some(80),
        payload_limit: 100_000,
        shutdown_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    }
}

impl TestServer {
    pub fn start(config: EngineConfig, options: ServerOptions) -> Self {
        Self::start_model(load_default_model(), config, options)
    }

    /// A server for an already loaded model (e.g. one given another chat template).
    pub fn start_model(
        loaded: wick::model::LoadedModel,
        config: EngineConfig,
        options: ServerOptions,
    ) -> Self {
        let engine = EngineHandle::start(loaded, config).expect("the engine starts");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let e = engine.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?)?;
                wick::app::serve(listener, e, options, async move {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server listens");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !engine.is_ready() {
            assert!(Instant::now() < deadline, "the engine did not warm up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            base: format!("http://{addr}"),
            engine,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// One server per test binary, shared by its tests.
    pub fn shared() -> &'static TestServer {
        static SERVER: OnceLock<TestServer> = OnceLock::new();
        SERVER.get_or_init(|| TestServer::start(engine_config(), options()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the shutdown signal; `join` waits for `serve` to return.
    pub fn signal_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub fn join(&mut self) -> anyhow::Result<()> {
        self.signal_shutdown();
        match self.thread.take() {
            Some(t) => t.join().expect("the server thread panicked"),
            None => Ok(()),
        }
    }

    /// Waits until the engine holds no request and no KV block.
    pub async fn wait_idle(&self, timeout: Duration) -> wick::engine::StatsSnapshot {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.engine.stats();
            if s.in_flight == 0 && s.blocks_used == 0 {
                return s;
            }
            assert!(Instant::now() < deadline, "the engine is not idle: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// A finished answer: status, headers and body (JSON when it parses).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.text)
    }

    /// The SSE payloads parsed as JSON, `[DONE]` excluded.
    pub fn json_events(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d:?}: {e}")))
            .collect()
    }

    /// Asserts a TGI error: status, `error` and `error_type`.
    pub fn assert_tgi_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let v = self.json();
        assert!(v["error"].is_string(), "{v}");
        assert_eq!(v["error_type"], error_type, "{v}");
    }

    /// Asserts an OpenAI error: `{"error": {"message", "type", "param", "code"}}`.
    pub fn assert_openai_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e.clone()
    }
}

pub async fn answer(r: reqwest::RequestBuilder) -> Answer {
    let r = r.send().await.expect("the request is answered");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("the body is read");
    Answer {
        status,
        headers,
        text,
    }
}

pub async fn post(url: &str, body: &Value) -> Answer {
    answer(client().post(url).json(body)).await
}

pub async fn post_raw(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
    answer(
        client()
            .post(url)
            .header(CONTENT_TYPE, content_type)
            .body(body),
    )
    .await
}

pub async fn get(url: &str) -> Answer {
    answer(client().get(url)).await
}

/// The `data:` payloads of a server-sent-events body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let lines: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

/// Reads SSE payloads from a streaming response until `n` have arrived.
pub async fn read_events(resp: &mut reqwest::Response, n: usize) -> Vec<String> {
    let mut buf = String::new();
    loop {
        let events = sse_data(&buf);
        // The last block may be incomplete until its blank line arrives.
        let complete = buf.matches("\n\n").count();
        if events.len() >= n && complete >= n {
            return events;
        }
        match resp.chunk().await.expect("the stream continues") {
            Some(c) => buf.push_str(&String::from_utf8_lossy(&c)),
            None => return events,
        }
    }
}

/// Reads the lines of a child's stderr on a thread.
pub fn line_reader(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads a `wick serve --json-output` child's log lines (from [`line_reader`]) into `seen`
/// until its "serving http://..." line, and returns that address; panics with what it saw
/// if the line does not come within `timeout`.
pub fn serving_address(
    lines: &std::sync::mpsc::Receiver<String>,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("wick serve did not start:\n{}", seen.join("\n")));
        seen.push(line.clone());
        let msg = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string));
        if let Some(m) = msg.filter(|m| m.starts_with("serving ")) {
            let at = m.find("http://").expect("an address in the serving line");
            return m[at..].trim().to_string();
        }
    }
}
