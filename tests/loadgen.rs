//! The load generator (`wick benchmark`) against a fake server defined here, which speaks
//! TGI's `/generate_stream` SSE and OpenAI's `/v1/completions` stream exactly as the
//! compatibility notes describe, with known delays: this checks the clients and the
//! report's arithmetic, not wick's server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use wick::loadgen::cli::BenchmarkArgs;
use wick::loadgen::report::BenchmarkReport;

/// Delay before the first token and between tokens.
const TTFT: Duration = Duration::from_millis(40);
const ITL: Duration = Duration::from_millis(6);

#[derive(Default)]
struct Fake {
    bodies: Mutex<Vec<Value>>,
    auth: Mutex<Vec<Option<String>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

type Shared = Arc<Fake>;

/// Tokens of the fake tokenizer: one per word, two for words longer than five letters.
fn fake_tokens(text: &str) -> usize {
    text.split_whitespace()
        .map(|w| if w.len() > 5 { 2 } else { 1 })
        .sum()
}

async fn tokenize(Json(body): Json<Value>) -> Json<Value> {
    let text = body["inputs"].as_str().unwrap_or_default();
    let tokens: Vec<Value> = (0..fake_tokens(text))
        .map(|i| json!({"id": i, "text": "w", "start": 0, "stop": 1}))
        .collect();
    Json(Value::Array(tokens))
}

/// What the prompt asks the fake server to do.
enum Mode {
    Ok,
    Overloaded,
    MidStreamError,
    Truncated,
}

fn mode(prompt: &str) -> Mode {
    match prompt.split_whitespace().next() {
        Some("overload") => Mode::Overloaded,
        Some("midstream") => Mode::MidStreamError,
        Some("truncated") => Mode::Truncated,
        _ => Mode::Ok,
    }
}

/// Streams `events` (already framed) with the fake delays, counting requests in flight.
fn sse(state: Shared, events: Vec<String>) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            tokio::time::sleep(if i == 0 { TTFT } else { ITL }).await;
            if tx.send(e).await.is_err() {
                break;
            }
        }
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn record(state: &Fake, headers: &HeaderMap, body: &Value) {
    state.bodies.lock().unwrap().push(body.clone());
    state.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    );
}

async fn generate_stream(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, &headers, &body);
    let prompt = body["inputs"].as_str().unwrap_or_default().to_string();
    let n = body["parameters"]["max_new_tokens"].as_u64().unwrap_or(20) as usize;
    let input_length = fake_tokens(&prompt) + 1; // BOS
    let token = |i: usize| json!({"id": 1000 + i, "text": " w", "logprob": -0.5, "special": false});
    let mut events: Vec<String> = (0..n)
        .map(|i| {
            let last = i + 1 == n;
            let ev = json!({
                "index": i + 1,
                "token": token(i),
                "top_tokens": null,
                "generated_text": if last { json!(" w".repeat(n)) } else { Value::Null },
                "details": if last {
                    json!({"finish_reason": "length", "generated_tokens": n, "seed": null, "input_length": input_length})
                } else {
                    Value::Null
                },
            });
            format!("data:{ev}\n\n")
        })
        .collect();
    match mode(&prompt) {
        Mode::Ok => {}
        Mode::Overloaded => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": "Model is overloaded", "error_type": "overloaded"})),
            )
                .into_response()
        }
        Mode::MidStreamError => {
            events.truncate(2);
            events.push(format!(
                "data:{}\n\n",
                json!({"error": "Request failed during generation", "error_type": "generation"})
            ));
        }
        Mode::Truncated => events.truncate(2),
    }
    sse(state, events)
}

async fn completions(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, &headers, &body);
    let n = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
    let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |text: &str, finish: Value| {
        json!({
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut events: Vec<String> = (0..n)
        .map(|i| {
            let finish = if i + 1 == n {
                json!("length")
            } else {
                Value::Null
            };
            format!("data: {}\n\n", chunk(" w", finish))
        })
        .collect();
    if usage {
        let p = fake_tokens(&prompt);
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                   "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}})
        ));
    }
    events.push("data: [DONE]\n\n".to_string());
    if let Mode::Overloaded = mode(&prompt) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"message": "overloaded", "type": "overloaded", "param": null, "code": 429}})),
        )
            .into_response();
    }
    sse(state, events)
}

/// Starts the fake server on its own thread and runtime; returns its address and state.
fn start_fake() -> (SocketAddr, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/generate_stream", post(generate_stream))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .with_state(state.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), state)
}

fn args(addr: SocketAddr, extra: &[&str]) -> BenchmarkArgs {
    let url = format!("http://{addr}");
    let mut v = vec!["wick-benchmark", "--url", url.as_str(), "--quiet"];
    v.extend_from_slice(extra);
    BenchmarkArgs::parse_from(v)
}

fn run(args: &BenchmarkArgs) -> BenchmarkReport {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(wick::loadgen::run(args))
        .expect("the benchmark runs")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn tgi_sweep_measures_tokens_latency_and_concurrency() {
    let (addr, fake) = start_fake();
    let a = args(
        addr,
        &[
            "--api",
            "tgi",
            "--concurrency",
            "1,4",
            "--num-prompts",
            "8",
            "--input-len",
            "24",
            "--output-len",
            "10",
            "--seed",
            "3",
        ],
    );
    let report = run(&a);
    assert_eq!(report.api, "tgi");
    assert_eq!(report.prompt_tokens_by, "the server's /tokenize");
    // Exact-length prompts by the server's tokenizer (some words are two tokens).
    assert_eq!(report.mean_prompt_tokens, Some(24.0));
    assert_eq!(report.levels.len(), 2);
    for (level, c) in report.levels.iter().zip([1, 4]) {
        assert_eq!(level.concurrency, c);
        assert_eq!((level.completed, level.failed), (8, 0), "{level:?}");
        assert!(level.errors.is_empty());
        assert_eq!(level.total_output_tokens, 80);
        assert_eq!(level.short_requests, 0);
        assert_eq!(
            level.total_input_tokens,
            8 * 25,
            "input_length from details"
        );
        // TTFT is at least the server's delay, ITL at least its gap, TPOT about the gap.
        assert!(level.ttft_ms.p50 >= ms(TTFT) - 1.0, "{:?}", level.ttft_ms);
        assert!(level.ttft_ms.p50 < ms(TTFT) + 400.0, "{:?}", level.ttft_ms);
        assert_eq!(level.itl_ms.count, 8 * 9);
        assert!(level.itl_ms.p50 >= ms(ITL) - 1.0, "{:?}", level.itl_ms);
        assert!(level.tpot_ms.mean >= ms(ITL) - 1.0, "{:?}", level.tpot_ms);
        assert!(level.tpot_ms.mean < ms(ITL) + 50.0, "{:?}", level.tpot_ms);
        assert!(level.e2e_ms.p50 >= level.ttft_ms.p50 + 9.0 * ms(ITL) - 2.0);
        assert!(level.ttft_ms.p50 <= level.ttft_ms.p90 && level.ttft_ms.p90 <= level.ttft_ms.p99);
        // Throughput is completions (and their tokens) over the level's wall time.
        let rps = level.completed as f64 / level.duration_s;
        assert!((level.request_throughput - rps).abs() < 1e-6 * rps.max(1.0));
        assert!((level.output_throughput - 10.0 * rps).abs() < 1e-6 * rps.max(1.0));
    }
    // Four at a time is faster than one at a time against a server that overlaps them.
    assert!(report.levels[1].request_throughput > 2.0 * report.levels[0].request_throughput);
    let max = fake.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=4).contains(&max), "max in flight {max}");
    // Every generation request asked for the tokens and details, streaming, greedy.
    let bodies = fake.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1 + 16, "one warm-up and the sweep");
    for b in bodies.iter() {
        assert_eq!(b["parameters"]["max_new_tokens"], 10);
        assert_eq!(b["parameters"]["details"], true);
        assert_eq!(b["parameters"]["do_sample"], false);
        assert_eq!(b["stream"], true);
        assert_eq!(fake_tokens(b["inputs"].as_str().unwrap()), 24);
    }
    // Distinct prompts (no accidental prefix caching), the same for the same seed.
    let mut prompts: Vec<&str> = bodies
        .iter()
        .map(|b| b["inputs"].as_str().unwrap())
        .collect();
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 17);
}

#[test]
fn openai_stream_counts_usage_and_sends_ignore_eos() {
    let (addr, fake) = start_fake();
    let a = args(
        addr,
        &[
            "--api",
            "openai",
            "--concurrency",
            "2",
            "--num-prompts",
            "4",
            "--input-len",
            "8",
            "--output-len",
            "5",
            "--model",
            "my-model",
            "--api-key",
            "sekret",
            "--extra-body",
            r#"{"repeat_penalty": 1.0}"#,
            "--warmup",
            "0",
        ],
    );
    let report = run(&a);
    let l = &report.levels[0];
    assert_eq!((l.completed, l.failed), (4, 0), "{l:?}");
    assert_eq!(l.total_output_tokens, 20);
    assert_eq!(l.itl_ms.count, 4 * 4);
    assert!(l.ttft_ms.p50 >= ms(TTFT) - 1.0);
    // No --tokenizer and no /tokenize in the OpenAI API: word-count estimate.
    assert_eq!(report.mean_prompt_tokens, None);
    let bodies = fake.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 4);
    let input: usize = bodies
        .iter()
        .map(|b| fake_tokens(b["prompt"].as_str().unwrap()))
        .sum();
    assert_eq!(l.total_input_tokens, input, "usage.prompt_tokens");
    for b in bodies.iter() {
        assert_eq!(b["model"], "my-model");
        assert_eq!(b["max_tokens"], 5);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["repeat_penalty"], 1.0, "--extra-body");
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["prompt"].as_str().unwrap().split_whitespace().count(), 8);
    }
    assert!(fake
        .auth
        .lock()
        .unwrap()
        .iter()
        .all(|a| a.as_deref() == Some("Bearer sekret")));
}

#[test]
fn failures_are_counted_by_kind() {
    let (addr, _fake) = start_fake();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "fine prompt\n{\"prompt\": \"overload me\"}\nmidstream please\ntruncated stream\n",
    )
    .unwrap();
    let a = args(
        addr,
        &[
            "--api",
            "tgi",
            "--concurrency",
            "2",
            "--num-prompts",
            "8",
            "--output-len",
            "6",
            "--warmup",
            "0",
            "--prompts-file",
            prompts.to_str().unwrap(),
        ],
    );
    let report = run(&a);
    let l = &report.levels[0];
    assert_eq!((l.completed, l.failed, l.num_prompts), (2, 6, 8), "{l:?}");
    let errors: Vec<(&str, usize)> = l.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        errors,
        vec![("http_429", 2), ("incomplete", 2), ("stream_error", 2)]
    );
    assert_eq!(l.error_examples["http_429"], "Model is overloaded");
    assert_eq!(
        l.error_examples["stream_error"],
        "Request failed during generation"
    );
    assert_eq!(l.total_output_tokens, 12, "only completed requests count");
    assert!(report.table().contains("http_429:2"));
}

#[test]
fn poisson_arrivals_spread_the_requests() {
    let (addr, _fake) = start_fake();
    let a = args(
        addr,
        &[
            "--concurrency",
            "10",
            "--num-prompts",
            "10",
            "--input-len",
            "4",
            "--output-len",
            "2",
            "--request-rate",
            "20",
            "--warmup",
            "0",
            "--seed",
            "9",
        ],
    );
    let report = run(&a);
    let l = &report.levels[0];
    assert_eq!(l.completed, 10);
    assert_eq!(report.request_rate, Some(20.0));
    // Nine gaps of mean 50 ms: far longer than one request (~50 ms) that a burst would take.
    assert!(l.duration_s > 0.15, "{}", l.duration_s);
}

#[test]
fn benchmark_subcommand_writes_table_json_and_chart() {
    let (addr, _fake) = start_fake();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let svg_path = dir.path().join("out.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args([
            "benchmark",
            "--url",
            &format!("http://{addr}"),
            "--concurrency",
            "1,2",
        ])
        .args([
            "--num-prompts",
            "2",
            "--input-len",
            "6",
            "--output-len",
            "3",
            "--quiet",
        ])
        .args(["--label", "fake"])
        .arg("--json-out")
        .arg(&json_path)
        .arg("--chart-out")
        .arg(&svg_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("TTFT ms p50/p90/p99"), "{stdout}");
    assert!(stdout.starts_with("fake (tgi API"), "{stdout}");
    let report: BenchmarkReport =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report.label, "fake");
    assert_eq!(
        report
            .levels
            .iter()
            .map(|l| l.concurrency)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Output throughput"));

    // A server that is not there: a clear error, not a table of failures.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args([
            "benchmark",
            "--url",
            "http://127.0.0.1:9",
            "--concurrency",
            "1",
        ])
        .args(["--num-prompts", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the server up"), "{stderr}");
}
