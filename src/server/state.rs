//! What every handler shares: the engine, the limits, the chat template, metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};

use super::error::ApiError;
use super::metrics::{Metrics, RequestFigures};
use crate::config::LauncherArgs;
use crate::engine::{EngineHandle, EventReceiver, GenerationRequest, Timings};
use crate::grammar::{CompiledGrammar, GrammarCompiler, GrammarError, GrammarSpec};
use crate::tokenizer::ChatTemplate;

/// Server settings (TGI's router options).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The name reported by /info and /v1/models.
    pub model_id: String,
    pub max_best_of: usize,
    pub max_stop_sequences: usize,
    pub max_top_n_tokens: u32,
    /// Default: max_total_tokens - 1.
    pub max_input_tokens: Option<usize>,
    /// Default: the model's context length, capped by the KV cache.
    pub max_total_tokens: Option<usize>,
    pub max_client_batch_size: usize,
    /// Largest request body in bytes.
    pub payload_limit: usize,
    pub api_key: Option<String>,
    /// Allowed CORS origins; empty: any.
    pub cors_allow_origin: Vec<String>,
    /// How long in-flight requests may run on after the shutdown signal.
    pub shutdown_timeout: Duration,
    /// Longest time a client may take to send a request's body (408 beyond).
    pub request_body_timeout: Duration,
    /// Log request bodies (prompts); off: no prompt text reaches the logs.
    pub log_prompts: bool,
    /// `return_full_text` on `POST /` when the request leaves it unset (TGI: true for
    /// text-generation models).
    pub compat_return_full_text: bool,
    /// The `x-compute-type` header.
    pub compute_type: String,
    /// For /info: the weights' type and the device.
    pub model_dtype: String,
    pub device_type: String,
    /// For /info only.
    pub waiting_served_ratio: f32,
    pub max_waiting_tokens: usize,
    pub max_batch_size: Option<usize>,
    /// Refuse `grammar`, `response_format` JSON modes and `tools` (422), as TGI's
    /// `--disable-grammar-support`.
    pub disable_grammar_support: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self::from_args(&LauncherArgs::default(), String::new())
    }
}

impl ServerOptions {
    pub fn from_args(a: &LauncherArgs, model_id: String) -> Self {
        Self {
            model_id,
            max_best_of: a.max_best_of,
            max_stop_sequences: a.max_stop_sequences,
            max_top_n_tokens: a.max_top_n_tokens,
            max_input_tokens: a.max_input_tokens,
            max_total_tokens: a.max_total_tokens,
            max_client_batch_size: a.max_client_batch_size,
            payload_limit: a.payload_limit,
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
            cors_allow_origin: a.cors_allow_origin.clone(),
            shutdown_timeout: a.shutdown_timeout(),
            request_body_timeout: a.request_body_timeout(),
            log_prompts: a.log_prompts,
            compat_return_full_text: true,
            compute_type: std::env::var("COMPUTE_TYPE").unwrap_or_else(|_| "cpu".into()),
            model_dtype: a.dtype.clone().unwrap_or_else(|| "auto".into()),
            device_type: "cpu".into(),
            waiting_served_ratio: a.waiting_served_ratio,
            max_waiting_tokens: a.max_waiting_tokens,
            max_batch_size: a.max_batch_size,
            disable_grammar_support: a.disable_grammar_support,
        }
    }
}

/// Validation limits, resolved against the model and the KV cache.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_best_of: usize,
    pub max_stop_sequences: usize,
    pub max_top_n_tokens: u32,
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_client_batch_size: usize,
    pub vocab_size: usize,
}

pub struct AppState {
    pub engine: EngineHandle,
    pub options: ServerOptions,
    pub limits: Limits,
    /// The compiled chat template, or why there is none.
    pub chat: Result<ChatTemplate, String>,
    pub metrics: Metrics,
    pub system_fingerprint: String,
    /// Unix time the server started (OpenAI `created` of the model).
    pub started: u64,
    pub openapi: String,
    /// Compiles request grammars over the model's vocabulary; `None` with
    /// `--disable-grammar-support`.
    pub grammar: Option<Arc<GrammarCompiler>>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    /// The state of a server for `engine`; `grammar` compiles the requests' grammars
    /// (`None`: grammars and tools are refused).
    pub fn new(
        engine: EngineHandle,
        mut options: ServerOptions,
        grammar: Option<Arc<GrammarCompiler>>,
    ) -> Result<Arc<Self>> {
        if options.model_id.is_empty() {
            options.model_id = engine.model_name().to_string();
        }
        let kv = engine.kv_capacity_tokens();
        let max_pos = engine.model_config().max_position_embeddings.max(2);
        let max_total_tokens = options.max_total_tokens.unwrap_or(max_pos.min(kv));
        let max_input_tokens = options
            .max_input_tokens
            .unwrap_or(max_total_tokens.saturating_sub(1));
        ensure!(
            max_input_tokens >= 1 && max_input_tokens < max_total_tokens,
            "max_input_tokens ({max_input_tokens}) must be at least 1 and less than \
             max_total_tokens ({max_total_tokens})"
        );
        if max_total_tokens > kv {
            tracing::warn!(
                "max_total_tokens ({max_total_tokens}) exceeds the KV cache ({kv} tokens): \
                 requests that need more are refused"
            );
        }
        let limits = Limits {
            max_best_of: options.max_best_of.max(1),
            max_stop_sequences: options.max_stop_sequences,
            max_top_n_tokens: options.max_top_n_tokens,
            max_input_tokens,
            max_total_tokens,
            max_client_batch_size: options.max_client_batch_size.max(1),
            vocab_size: engine.model_config().vocab_size,
        };
        let chat = match engine.tokenizer().chat(engine.chat_template_override()) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err("This model has no chat template: use /generate or \
                             /v1/completions, or set chat_template in models.toml"
                .to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(e) = &chat {
            tracing::warn!("chat completions unavailable: {e}");
        }
        let metrics = Metrics::new(max_input_tokens, max_total_tokens);
        Ok(Arc::new(Self {
            engine,
            options,
            limits,
            chat,
            metrics,
            system_fingerprint: format!(
                "{}-{}-native",
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION")
            ),
            started: unix_now(),
            openapi: super::openapi::document(),
            grammar,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }))
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Compiles a request's grammar (off the engine thread, within the compiler's time
    /// and size limits; cached by text). A bad grammar, or any grammar when grammar
    /// support is disabled, is a 422 naming `param`.
    pub async fn compile_grammar(
        &self,
        spec: GrammarSpec,
        param: &'static str,
    ) -> Result<Arc<CompiledGrammar>, ApiError> {
        let Some(compiler) = &self.grammar else {
            return Err(ApiError::param(
                param,
                "grammar is not supported (the server runs with --disable-grammar-support)",
            ));
        };
        compiler.compile(spec).await.map_err(|e| match e {
            GrammarError::Internal(m) => ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "grammar",
                format!("grammar compilation failed: {m}"),
            ),
            e => ApiError::param(param, format!("Grammar is not valid: {e}")),
        })
    }

    /// Hands a validated request to the engine.
    pub fn submit(&self, request: GenerationRequest) -> Result<EventReceiver, ApiError> {
        if self.is_shutting_down() {
            return Err(crate::engine::EngineError::ShutDown.into());
        }
        self.engine.submit(request).map_err(ApiError::from)
    }
}

/// The life of one request for logs and metrics: created when the body is parsed, ended
/// by `succeed` or `fail`; dropped before either (client gone), it logs a cancellation.
pub struct RequestLog {
    state: Arc<AppState>,
    pub id: u64,
    route: &'static str,
    start: Instant,
    pub prompt_tokens: usize,
    ended: bool,
}

/// Timings of a finished request.
#[derive(Debug, Clone, Copy)]
pub struct Elapsed {
    pub total: Duration,
    pub validation: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub per_token: Duration,
}

impl Elapsed {
    pub fn new(start: Instant, t: &Timings, generated_tokens: usize) -> Self {
        let now = Instant::now();
        let inference = now.saturating_duration_since(t.started);
        Self {
            total: now.saturating_duration_since(start),
            validation: t.queued.saturating_duration_since(start),
            queue: t.started.saturating_duration_since(t.queued),
            inference,
            per_token: inference / generated_tokens.max(1) as u32,
        }
    }
}

impl RequestLog {
    /// A request's log, with the id the body middleware gave it (a fresh one outside it).
    pub fn new(state: &Arc<AppState>, route: &'static str, start: Instant) -> Self {
        state.metrics.request();
        let id = super::body::current_request_id().unwrap_or_else(|| state.next_id());
        Self {
            state: state.clone(),
            id,
            route,
            start,
            prompt_tokens: 0,
            ended: false,
        }
    }

    pub fn validated(&mut self, prompt_tokens: usize, max_new_tokens: usize) {
        self.prompt_tokens = prompt_tokens;
        self.state.metrics.validated(prompt_tokens, max_new_tokens);
    }

    pub fn succeed(
        &mut self,
        timings: &Timings,
        generated_tokens: usize,
        finish_reason: &str,
        seed: Option<u64>,
    ) -> Elapsed {
        self.ended = true;
        let e = Elapsed::new(self.start, timings, generated_tokens);
        self.state.metrics.success(&RequestFigures {
            total: e.total.as_secs_f64(),
            validation: e.validation.as_secs_f64(),
            queue: e.queue.as_secs_f64(),
            inference: e.inference.as_secs_f64(),
            time_per_token: e.per_token.as_secs_f64(),
            generated_tokens: generated_tokens as u64,
        });
        tracing::info!(
            target: "wick::request",
            id = self.id,
            route = self.route,
            status = 200u16,
            prompt_tokens = self.prompt_tokens,
            generated_tokens,
            finish_reason,
            seed,
            total_ms = e.total.as_millis() as u64,
            validation_ms = e.validation.as_millis() as u64,
            queue_ms = e.queue.as_millis() as u64,
            inference_ms = e.inference.as_millis() as u64,
            time_per_token_ms = e.per_token.as_millis() as u64,
            "request finished"
        );
        e
    }

    pub fn fail(&mut self, err: &ApiError) {
        self.ended = true;
        self.state.metrics.failure(err.metric_label());
        tracing::info!(
            target: "wick::request",
            id = self.id,
            route = self.route,
            status = err.status.as_u16(),
            error_type = err.kind,
            error = %log_text(&err.message, self.state.options.log_prompts),
            prompt_tokens = self.prompt_tokens,
            total_ms = self.start.elapsed().as_millis() as u64,
            "request failed"
        );
    }
}

/// An error message as logged: unless prompts may be logged, the contents of its quoted
/// strings (which may echo request text, e.g. `invalid type: string "..."`) are elided.
pub fn log_text(message: &str, log_prompts: bool) -> std::borrow::Cow<'_, str> {
    if log_prompts || !message.contains('"') {
        return message.into();
    }
    let mut out = String::with_capacity(message.len());
    let (mut quoted, mut escaped, mut elided) = (false, false, false);
    for c in message.chars() {
        if quoted && escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            elided = false;
            out.push(c);
        } else if !quoted {
            out.push(c);
        } else if !elided {
            out.push('…');
            elided = true;
        }
    }
    out.into()
}

impl RequestLog {
    /// Logs `err` as this request's end and answers with it.
    pub fn reject(self, err: ApiError) -> axum::response::Response {
        use axum::response::IntoResponse;
        self.refuse(err).into_response()
    }

    /// Logs `err` as this request's end and gives it back, to answer with.
    pub fn refuse(mut self, err: ApiError) -> ApiError {
        self.fail(&err);
        err
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if !self.ended {
            self.state.metrics.failure("cancelled");
            tracing::info!(
                target: "wick::request",
                id = self.id,
                route = self.route,
                status = 499u16,
                prompt_tokens = self.prompt_tokens,
                total_ms = self.start.elapsed().as_millis() as u64,
                "request cancelled by the client"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_text;

    #[test]
    fn logged_errors_elide_quoted_text() {
        let m = r#"invalid type: string "my \"secret\" prompt", expected a sequence"#;
        assert_eq!(
            log_text(m, false),
            "invalid type: string \"…\", expected a sequence"
        );
        assert_eq!(log_text(m, true), m);
        assert_eq!(log_text("`n` must be >= 1", false), "`n` must be >= 1");
    }
}
