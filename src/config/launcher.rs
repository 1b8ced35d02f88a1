//! `wick serve` flags: Text Generation Inference's launcher flags and environment
//! variables (so a TGI command line or container environment works unchanged), plus
//! wick's own. Flags TGI has that mean nothing here (sharding, kernels, telemetry) are
//! accepted and ignored with a warning.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{EngineConfig, SchedulerConfig};

/// `wick serve`: TGI's launcher flags (same names and environment variables).
#[derive(clap::Args, Debug, Clone)]
pub struct LauncherArgs {
    /// A name from models.toml, a .gguf file or snapshot directory, or a Hugging Face
    /// repo id (`org/name`). Default: the models.toml default.
    #[arg(long, env = "MODEL_ID")]
    pub model_id: Option<String>,
    /// Revision of a Hugging Face repo id (same as `--model-id org/name@REVISION`).
    #[arg(long, env = "REVISION")]
    pub revision: Option<String>,
    /// A models.toml to use instead of the embedded one.
    #[arg(long, alias = "models-file", env = "WICK_MODELS_CONFIG")]
    pub models_config: Option<PathBuf>,
    /// Weight dtype for safetensors checkpoints (float16, bfloat16, float32).
    #[arg(long, env = "DTYPE")]
    pub dtype: Option<String>,
    /// Accepted for TGI compatibility; GGUF files carry their own quantization.
    #[arg(long, env = "QUANTIZE")]
    pub quantize: Option<String>,

    /// Interface to listen on.
    #[arg(long, env = "HOSTNAME", default_value = "0.0.0.0")]
    pub hostname: String,
    /// Port to listen on.
    #[arg(long, short = 'p', env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Requests in flight (queued or running) beyond which new ones get 429.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Largest `best_of` (and OpenAI `n`) accepted.
    #[arg(long, env = "MAX_BEST_OF", default_value_t = 2)]
    pub max_best_of: usize,
    /// Most stop sequences per request.
    #[arg(long, env = "MAX_STOP_SEQUENCES", default_value_t = 4)]
    pub max_stop_sequences: usize,
    /// Largest `top_n_tokens` accepted.
    #[arg(long, env = "MAX_TOP_N_TOKENS", default_value_t = 5)]
    pub max_top_n_tokens: u32,
    /// Longest prompt in tokens. Default: max_total_tokens - 1.
    #[arg(long, env = "MAX_INPUT_TOKENS", alias = "max-input-length")]
    pub max_input_tokens: Option<usize>,
    /// Longest prompt + generation in tokens. Default: the model's context length, capped
    /// by the KV cache.
    #[arg(long, env = "MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// While running, admit waiting requests once this fraction of the batch is waiting.
    #[arg(long, env = "WAITING_SERVED_RATIO", default_value_t = 0.3)]
    pub waiting_served_ratio: f32,
    /// Most prompt tokens computed in one step (longer prompts are prefilled in chunks).
    #[arg(long, env = "MAX_BATCH_PREFILL_TOKENS")]
    pub max_batch_prefill_tokens: Option<usize>,
    /// KV cache size in tokens; default: --kv-memory-fraction of available memory.
    #[arg(long, env = "MAX_BATCH_TOTAL_TOKENS")]
    pub max_batch_total_tokens: Option<usize>,
    /// Steps a waiting request may be held back before it is admitted anyway.
    #[arg(long, env = "MAX_WAITING_TOKENS", default_value_t = 20)]
    pub max_waiting_tokens: usize,
    /// Most sequences in one step.
    #[arg(long, env = "MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Most prompts in one /v1/completions request.
    #[arg(long, env = "MAX_CLIENT_BATCH_SIZE", default_value_t = 4)]
    pub max_client_batch_size: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    pub payload_limit: usize,

    /// Require `Authorization: Bearer <key>` on every route but /health.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allowed CORS origins (repeat the flag or separate with commas); default: any.
    #[arg(long, env = "CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Logs as JSON lines (one line per request).
    #[arg(long, env = "JSON_OUTPUT")]
    pub json_output: bool,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT before they are
    /// cancelled.
    #[arg(long, env = "GRACEFUL_TERMINATION_TIMEOUT", default_value_t = 90)]
    pub graceful_termination_timeout: u64,
    /// Seconds a client may take to send a request's whole body; slower ones are cut
    /// off with 408.
    #[arg(long, env = "REQUEST_BODY_TIMEOUT", default_value_t = 30.0)]
    pub request_body_timeout: f64,
    /// Log request bodies (prompts included); off by default, so prompts stay out of
    /// the logs.
    #[arg(long, env = "LOG_PROMPTS")]
    pub log_prompts: bool,

    /// Tokens per KV cache block.
    #[arg(long, env = "BLOCK_SIZE", default_value_t = crate::kv::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Fraction of available memory for the KV cache when no token budget is given.
    #[arg(long, env = "WICK_KV_MEMORY_FRACTION", default_value_t = 0.2)]
    pub kv_memory_fraction: f64,
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, env = "WICK_THREADS")]
    pub threads: Option<usize>,
    /// Where the model runs: auto (the first GPU when built with CUDA and one is present,
    /// else the CPU), cpu, cuda or cuda:N.
    #[arg(long, env = "WICK_DEVICE", default_value = "auto")]
    pub device: String,
    /// On a GPU, the fraction of its memory wick may use (weights, activations and the KV
    /// cache, which gets the rest).
    #[arg(long, env = "CUDA_MEMORY_FRACTION")]
    pub cuda_memory_fraction: Option<f32>,
    /// Do not reuse the KV blocks of shared prompt prefixes.
    #[arg(long, env = "DISABLE_PREFIX_CACHING")]
    pub disable_prefix_caching: bool,

    /// Refuse grammars, JSON response formats and tools (422), as TGI.
    #[arg(long, env = "DISABLE_GRAMMAR_SUPPORT")]
    pub disable_grammar_support: bool,

    // TGI launcher flags accepted and ignored.
    #[arg(long, env = "VALIDATION_WORKERS", hide = true)]
    pub validation_workers: Option<usize>,
    #[arg(long, env = "SHARDED", hide = true)]
    pub sharded: Option<bool>,
    #[arg(long, env = "NUM_SHARD", hide = true)]
    pub num_shard: Option<usize>,
    #[arg(long, env = "TRUST_REMOTE_CODE", hide = true)]
    pub trust_remote_code: bool,
    #[arg(long, env = "PROMETHEUS_PORT", hide = true)]
    pub prometheus_port: Option<u16>,
    #[arg(long, env = "OTLP_ENDPOINT", hide = true)]
    pub otlp_endpoint: Option<String>,
    #[arg(long, env = "DISABLE_CUSTOM_KERNELS", hide = true)]
    pub disable_custom_kernels: bool,
    #[arg(long, env = "HUGGINGFACE_HUB_CACHE", hide = true)]
    pub huggingface_hub_cache: Option<String>,
}

impl Default for LauncherArgs {
    /// The defaults, whatever the environment says.
    fn default() -> Self {
        Self::parse_ignoring_env(["wick"]).expect("the defaults parse")
    }
}

impl LauncherArgs {
    /// Parses a command line (the first item is the program name) without reading
    /// environment variables.
    pub fn parse_ignoring_env<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: LauncherArgs,
        }
        let matches = Wrapper::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(args)?;
        Ok(Wrapper::from_arg_matches(&matches)?.args)
    }
}

impl LauncherArgs {
    /// The address to bind. Like TGI, a hostname that is not an IP address (containers
    /// set HOSTNAME to their own name) falls back to 0.0.0.0; `localhost` is loopback.
    pub fn bind_addr(&self) -> SocketAddr {
        let ip = match self.hostname.trim() {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .unwrap_or_else(|_| {
                    tracing::warn!("invalid hostname {h:?}, listening on 0.0.0.0");
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                }),
        };
        SocketAddr::new(ip, self.port)
    }

    /// The model id with `--revision` applied to a Hugging Face repo id.
    pub fn model_id_with_revision(&self) -> Option<String> {
        match (&self.model_id, &self.revision) {
            (Some(id), Some(rev)) if id.contains('/') && !id.contains('@') => {
                Some(match id.split_once('#') {
                    Some((repo, file)) => format!("{repo}@{rev}#{file}"),
                    None => format!("{id}@{rev}"),
                })
            }
            (id, _) => id.clone(),
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        let defaults = SchedulerConfig::default();
        EngineConfig {
            scheduler: SchedulerConfig {
                max_batch_prefill_tokens: self
                    .max_batch_prefill_tokens
                    .unwrap_or(defaults.max_batch_prefill_tokens),
                max_batch_size: self.max_batch_size.unwrap_or(defaults.max_batch_size),
                max_waiting_tokens: self.max_waiting_tokens,
                waiting_served_ratio: self.waiting_served_ratio,
                block_size: self.block_size,
                prefix_caching: !self.disable_prefix_caching,
            },
            max_concurrent_requests: self.max_concurrent_requests,
            max_batch_total_tokens: self.max_batch_total_tokens,
            kv_memory_fraction: self.kv_memory_fraction,
            cuda_memory_fraction: self.cuda_memory_fraction.map_or(1.0, f64::from),
            ..EngineConfig::default()
        }
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.graceful_termination_timeout)
    }

    /// `--request-body-timeout` as a duration (non-finite or negative: the default).
    pub fn request_body_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.request_body_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(30))
    }

    /// Warnings for flags that are accepted but have no effect here.
    pub fn ignored_flags(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |set: bool, name: &'static str| {
            if set {
                out.push(name)
            }
        };
        note(self.quantize.is_some(), "--quantize");
        note(self.validation_workers.is_some(), "--validation-workers");
        note(self.sharded.is_some(), "--sharded");
        note(self.num_shard.is_some(), "--num-shard");
        note(self.trust_remote_code, "--trust-remote-code");
        note(self.prometheus_port.is_some(), "--prometheus-port");
        note(self.otlp_endpoint.is_some(), "--otlp-endpoint");
        note(self.disable_custom_kernels, "--disable-custom-kernels");
        note(
            self.huggingface_hub_cache.is_some(),
            "--huggingface-hub-cache",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tgi_command_line_parses() {
        let a = LauncherArgs::parse_ignoring_env([
            "wick",
            "--model-id",
            "org/model",
            "--revision",
            "abc",
            "--port",
            "8080",
            "--hostname",
            "127.0.0.1",
            "--max-input-tokens",
            "100",
            "--max-total-tokens",
            "200",
            "--max-batch-prefill-tokens",
            "300",
            "--max-concurrent-requests",
            "7",
            "--cors-allow-origin",
            "http://a,http://b",
            "--api-key",
            "k",
            "--json-output",
            "--request-body-timeout",
            "0.5",
            "--log-prompts",
            "--quantize",
            "bitsandbytes",
            "--num-shard",
            "2",
        ])
        .unwrap();
        assert_eq!(a.bind_addr(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(a.model_id_with_revision().as_deref(), Some("org/model@abc"));
        assert_eq!(a.cors_allow_origin, vec!["http://a", "http://b"]);
        assert_eq!(a.api_key.as_deref(), Some("k"));
        assert!(a.json_output);
        assert_eq!(a.request_body_timeout(), Duration::from_millis(500));
        assert!(a.log_prompts);
        let e = a.engine_config();
        assert_eq!(e.scheduler.max_batch_prefill_tokens, 300);
        assert_eq!(e.max_concurrent_requests, 7);
        assert_eq!(a.ignored_flags(), vec!["--quantize", "--num-shard"]);
    }

    #[test]
    fn defaults_and_hostname_fallback() {
        let a = LauncherArgs {
            hostname: "3f2a9c1d".into(),
            ..LauncherArgs::default()
        };
        assert_eq!(a.port, 3000);
        assert_eq!(a.max_best_of, 2);
        assert_eq!(a.max_stop_sequences, 4);
        assert_eq!(a.max_top_n_tokens, 5);
        assert_eq!(a.request_body_timeout(), Duration::from_secs(30));
        assert!(!a.log_prompts);
        assert_eq!(a.bind_addr(), "0.0.0.0:3000".parse().unwrap());
        let a = LauncherArgs {
            hostname: "localhost".into(),
            ..a
        };
        assert_eq!(a.bind_addr(), "127.0.0.1:3000".parse().unwrap());
        assert!(a.engine_config().scheduler.prefix_caching);
    }
}
