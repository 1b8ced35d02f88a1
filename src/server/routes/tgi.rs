//! TGI's routes: `/generate`, `/generate_stream`, `POST /` (plain or in the Vast.ai
//! wrapper), `/info`, `/health`, `/metrics`. Each generation is a [`GenerationStream`]
//! these handlers format: one `GenerateResponse`, a list of one, or SSE.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;

use super::respond::{sse, sse_json, timing_headers};
use crate::engine::TokenInfo;
use crate::server::error::{ApiError, Flavor};
use crate::server::generation::GenerationResult;
use crate::server::json::{self, Body};
use crate::server::state::{AppState, RequestLog};
use crate::server::stream::{Finished, GenerationStream, Item, Summary};
use crate::server::types::tgi::*;
use crate::server::validation::{self, TgiRequest};

fn token(t: &TokenInfo) -> Token {
    Token {
        id: t.id,
        text: t.text.clone(),
        logprob: t.logprob,
        special: t.special,
    }
}

fn prefill_token(t: &TokenInfo) -> PrefillToken {
    PrefillToken {
        id: t.id,
        text: t.text.clone(),
        logprob: t.logprob,
    }
}

/// A generate body, plain or in the Vast.ai wrapper `{"auth_data", "payload"}`.
fn parse_generate(headers: &HeaderMap, body: Body) -> Result<CompatGenerateRequest, ApiError> {
    let mut v = json::value(headers, body)?;
    if let Some(obj) = v.as_object_mut() {
        if !obj.contains_key("inputs") && obj.contains_key("payload") {
            let payload = obj.remove("payload").unwrap_or_default();
            let stream = obj.remove("stream");
            v = payload;
            if let (Some(s), Some(p)) = (stream, v.as_object_mut()) {
                p.entry("stream").or_insert(s);
            }
        }
    }
    json::from_value(v)
}

/// `POST /generate`
#[utoipa::path(
    post,
    path = "/generate",
    tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated text", body = GenerateResponse),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 424, description = "Generation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
        (status = 500, description = "Incomplete generation", body = ErrorResponse),
    )
)]
pub async fn generate(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let log = RequestLog::new(&st, "/generate", Instant::now());
    match parse_generate(&headers, body) {
        Ok(r) => run_generate(st, log, r.inputs, r.parameters, false, false).await,
        Err(e) => log.reject(e),
    }
}

/// `POST /generate_stream`: SSE, one `StreamResponse` per token.
#[utoipa::path(
    post,
    path = "/generate_stream",
    tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated tokens", body = StreamResponse, content_type = "text/event-stream"),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
    )
)]
pub async fn generate_stream(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let log = RequestLog::new(&st, "/generate_stream", Instant::now());
    match parse_generate(&headers, body) {
        Ok(r) => run_stream(st, log, r.inputs, r.parameters, false).await,
        Err(e) => log.reject(e),
    }
}

/// `POST /`: a list `[GenerateResponse]`, or SSE with `"stream": true`.
#[utoipa::path(
    post,
    path = "/",
    tag = "Text Generation Inference",
    request_body = CompatGenerateRequest,
    responses(
        (status = 200, description = "Generated text", content(
            (Vec<GenerateResponse> = "application/json"),
            (StreamResponse = "text/event-stream"),
        )),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 424, description = "Generation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
    )
)]
pub async fn compat_generate(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let log = RequestLog::new(&st, "/", Instant::now());
    let r = match parse_generate(&headers, body) {
        Ok(r) => r,
        Err(e) => return log.reject(e),
    };
    let full = st.options.compat_return_full_text;
    if r.stream {
        run_stream(st, log, r.inputs, r.parameters, full).await
    } else {
        run_generate(st, log, r.inputs, r.parameters, full, true).await
    }
}

/// Validates a request, compiles its grammar and hands it to the engine; a refusal is
/// logged (as the request's end) and returned to answer with.
async fn start(
    st: &Arc<AppState>,
    log: RequestLog,
    inputs: &str,
    params: Option<GenerateParameters>,
    default_full_text: bool,
    stream: bool,
) -> Result<(TgiRequest, GenerationStream), ApiError> {
    let v = validation::tgi(
        &st.limits,
        st.engine.tokenizer(),
        inputs,
        params.unwrap_or_else(GenerateParameters::absent),
        default_full_text,
        stream,
    );
    let mut v = match v {
        Ok(v) => v,
        Err(e) => return Err(log.refuse(e)),
    };
    if let Some(spec) = v.grammar.clone() {
        match st.compile_grammar(spec, "grammar").await {
            Ok(g) => v.request.grammar = Some(g),
            Err(e) => return Err(log.refuse(e)),
        }
    }
    let request = v.request.clone();
    let s = GenerationStream::start(st, log, vec![request], Flavor::Tgi, Summary::Best)?;
    Ok((v, s))
}

async fn run_generate(
    st: Arc<AppState>,
    log: RequestLog,
    inputs: String,
    params: Option<GenerateParameters>,
    default_full_text: bool,
    as_list: bool,
) -> Response {
    let (v, s) = match start(&st, log, &inputs, params, default_full_text, false).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let (results, f) = match s.collect().await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let Some(result) = results.into_iter().next() else {
        return ApiError::incomplete().into_response();
    };
    let Some(body) = generate_response(&v, &inputs, result, &f) else {
        return ApiError::incomplete().into_response();
    };
    let headers = timing_headers(&st, &f, inputs.chars().count());
    if as_list {
        (headers, Json(vec![body])).into_response()
    } else {
        (headers, Json(body)).into_response()
    }
}

/// The answer: the best candidate (the one the request's log reports), the others in
/// `best_of_sequences`; `None` if the result lacks it.
fn generate_response(
    v: &TgiRequest,
    inputs: &str,
    result: GenerationResult,
    f: &Finished,
) -> Option<GenerateResponse> {
    let mut candidates = result.candidates;
    let best = (f.best < candidates.len()).then(|| candidates.remove(f.best))?;
    // Candidate i samples with seed + i (as the engine seeds it).
    let seed_of = |i: usize| {
        v.sampling
            .then_some(result.completion.seed.wrapping_add(i as u64))
    };
    let prefix = if v.return_full_text { inputs } else { "" };
    let prefill: Vec<PrefillToken> = if v.decoder_input_details {
        result.prefill.iter().map(prefill_token).collect()
    } else {
        Vec::new()
    };
    let with_top = v.request.top_n_tokens > 0;
    let top = |t: &[Vec<TokenInfo>]| -> Vec<Vec<Token>> {
        if with_top {
            t.iter().map(|x| x.iter().map(token).collect()).collect()
        } else {
            Vec::new()
        }
    };
    let details = v.details.then(|| Details {
        finish_reason: best.reason.as_tgi(),
        generated_tokens: best.generated_tokens as u32,
        seed: seed_of(best.index),
        prefill: prefill.clone(),
        tokens: best.tokens.iter().map(token).collect(),
        best_of_sequences: (v.best_of > 1).then(|| {
            candidates
                .iter()
                .map(|c| BestOfSequence {
                    generated_text: format!("{prefix}{}", c.text),
                    finish_reason: c.reason.as_tgi(),
                    generated_tokens: c.generated_tokens as u32,
                    seed: seed_of(c.index),
                    prefill: prefill.clone(),
                    tokens: c.tokens.iter().map(token).collect(),
                    top_tokens: top(&c.top_tokens),
                })
                .collect()
        }),
        top_tokens: top(&best.top_tokens),
    });
    Some(GenerateResponse {
        generated_text: format!("{prefix}{}", best.text),
        details,
    })
}

async fn run_stream(
    st: Arc<AppState>,
    log: RequestLog,
    inputs: String,
    params: Option<GenerateParameters>,
    default_full_text: bool,
) -> Response {
    let (v, s) = match start(&st, log, &inputs, params, default_full_text, true).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let characters = inputs.chars().count();
    let prefix = if v.return_full_text {
        inputs
    } else {
        String::new()
    };
    sse(
        &st,
        v.request.prompt.len(),
        characters,
        stream_events(s, v, prefix),
    )
}

/// The SSE events of a TGI stream: one `StreamResponse` per token; the last carries
/// `generated_text` (and `details`); an error ends it as one `{"error", "error_type"}`.
fn stream_events(
    mut s: GenerationStream,
    v: TgiRequest,
    prefix: String,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let seed = v.sampling.then_some(v.request.sampling.seed);
    let input_length = v.request.prompt.len() as u32;
    async_stream::stream! {
        let mut index = 0u32;
        while let Some(item) = s.next().await {
            match item {
                Item::Prefill { .. } | Item::Finished(_) => {}
                Item::Token { token: t, end, .. } => {
                    index += 1;
                    let mut tok = token(&t.token);
                    if !t.token.special {
                        tok.text = t.text_piece.clone();
                    }
                    let top_tokens: Vec<Token> = t.top_tokens.iter().map(token).collect();
                    let generated_text = end.as_ref().map(|e| format!("{prefix}{}", e.text));
                    let details = end.filter(|_| v.details).map(|e| StreamDetails {
                        finish_reason: e.reason.as_tgi(),
                        generated_tokens: e.generated_tokens as u32,
                        seed,
                        input_length,
                    });
                    yield sse_json(&StreamResponse {
                        index,
                        token: tok,
                        top_tokens,
                        generated_text,
                        details,
                    });
                }
                Item::Failed(e) => yield sse_json(&e.body()),
            }
        }
    }
}

/// `GET /info`
#[utoipa::path(
    get,
    path = "/info",
    tag = "Text Generation Inference",
    responses((status = 200, description = "Served model info", body = Info))
)]
pub async fn info(State(st): State<Arc<AppState>>) -> Json<Info> {
    let o = &st.options;
    Json(Info {
        model_id: o.model_id.clone(),
        model_sha: None,
        model_dtype: o.model_dtype.clone(),
        model_device_type: o.device_type.clone(),
        model_pipeline_tag: Some("text-generation".into()),
        max_concurrent_requests: st.engine.max_concurrent_requests(),
        max_best_of: st.limits.max_best_of,
        max_stop_sequences: st.limits.max_stop_sequences,
        max_input_tokens: st.limits.max_input_tokens,
        max_total_tokens: st.limits.max_total_tokens,
        waiting_served_ratio: o.waiting_served_ratio,
        max_batch_total_tokens: st.engine.kv_capacity_tokens(),
        max_waiting_tokens: o.max_waiting_tokens,
        max_batch_size: o.max_batch_size,
        validation_workers: 1,
        max_client_batch_size: st.limits.max_client_batch_size,
        router: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        sha: None,
        docker_label: None,
    })
}

/// `GET /health`: 200 once the model has warmed up, 503 before and while shutting down.
#[utoipa::path(
    get,
    path = "/health",
    tag = "Text Generation Inference",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "Not ready", body = ErrorResponse),
    )
)]
pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.engine.is_ready() && !st.is_shutting_down() {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "healthcheck", "unhealthy").into_response()
    }
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Text Generation Inference",
    responses((status = 200, description = "Prometheus metrics", body = String))
)]
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st
        .metrics
        .render(&st.engine.stats(), st.engine.kv_capacity_tokens());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
