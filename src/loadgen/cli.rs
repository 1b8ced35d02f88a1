//! `wick benchmark`'s command line.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Which wire format the target server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// TGI: `POST /generate_stream` (SSE, one event per token).
    Tgi,
    /// OpenAI: `POST /v1/completions` with `"stream": true`.
    Openai,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Tgi => "tgi",
            Api::Openai => "openai",
        }
    }
}

/// Load-test a running TGI- or OpenAI-compatible server (wick, TGI, vLLM, llama.cpp, ...)
/// and report throughput and latency for each concurrency level.
#[derive(Parser, Debug, Clone)]
pub struct BenchmarkArgs {
    /// Base URL of the server (http only), e.g. http://127.0.0.1:3000.
    #[arg(long)]
    pub url: String,
    /// Wire format: TGI's /generate_stream or OpenAI's /v1/completions.
    #[arg(long, value_enum, default_value_t = Api::Tgi)]
    pub api: Api,
    /// Concurrency levels to sweep (most requests in flight at once), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Requests per concurrency level (default: `--prompts-per-concurrency` × the level).
    #[arg(long)]
    pub num_prompts: Option<usize>,
    /// Without `--num-prompts`: requests per level as a multiple of the level (at least 4).
    #[arg(long, default_value_t = 4)]
    pub prompts_per_concurrency: usize,
    /// Prompt length in tokens for synthetic prompts.
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    /// Tokens each request asks for (TGI `max_new_tokens`; OpenAI `max_tokens` with
    /// `ignore_eos`).
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Prompts to send instead of synthetic ones: one per line, plain text or a JSON
    /// object with a "prompt" (or "text") field; used in turn.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Tokenizer for exact-length synthetic prompts: a model name, .gguf file, model
    /// directory or repo id (as `--model-id`). Default: the server's `/tokenize` route,
    /// else an estimate of one token per word.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Mean request arrival rate per second (Poisson arrivals, still capped by the
    /// concurrency level). Default: closed loop, a new request as soon as one finishes.
    #[arg(long)]
    pub request_rate: Option<f64>,
    /// Seed for prompts and arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests sent (and not measured) before the sweep.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// The `model` field of OpenAI requests.
    #[arg(long, default_value = "tgi")]
    pub model: String,
    /// A JSON object merged into every generation request (for TGI, into `parameters`),
    /// e.g. `{"repeat_penalty": 1.0}` for a server whose defaults differ.
    #[arg(long, value_parser = parse_json_object)]
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    /// Bearer token sent as `Authorization: Bearer ...`.
    #[arg(long, env = "WICK_BENCHMARK_API_KEY")]
    pub api_key: Option<String>,
    /// A name for this run in the JSON and the chart (e.g. the server's name).
    #[arg(long)]
    pub label: Option<String>,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write an SVG chart of throughput and TTFT against concurrency here.
    #[arg(long)]
    pub chart_out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_json_object(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

impl BenchmarkArgs {
    /// Requests to send at concurrency level `c`.
    pub fn prompts_for(&self, c: usize) -> usize {
        self.num_prompts
            .unwrap_or((self.prompts_per_concurrency * c).max(4))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.concurrency.is_empty(), "--concurrency needs a level");
        anyhow::ensure!(
            self.concurrency.iter().all(|&c| c > 0),
            "--concurrency levels must be positive"
        );
        anyhow::ensure!(self.output_len > 0, "--output-len must be positive");
        anyhow::ensure!(
            self.prompts_file.is_some() || self.input_len > 0,
            "--input-len must be positive"
        );
        anyhow::ensure!(
            self.num_prompts != Some(0),
            "--num-prompts must be positive"
        );
        anyhow::ensure!(
            self.prompts_per_concurrency > 0,
            "--prompts-per-concurrency must be positive"
        );
        if let Some(r) = self.request_rate {
            anyhow::ensure!(
                r.is_finite() && r > 0.0,
                "--request-rate must be a positive number of requests per second"
            );
        }
        anyhow::ensure!(
            self.timeout.is_finite() && self.timeout > 0.0,
            "--timeout must be positive"
        );
        anyhow::ensure!(
            !self.url.trim().starts_with("https://"),
            "--url: https is not supported; give the server's plain-HTTP address"
        );
        Ok(())
    }
}
