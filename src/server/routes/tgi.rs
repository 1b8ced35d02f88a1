//! TGI's routes: `/generate`, `/generate_stream`, `POST /`, `/info`, `/health`,
//! `/metrics`, `/tokenize`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;

use crate::engine::{Event, EventReceiver, TokenInfo};
use crate::server::error::ApiError;
use crate::server::generation::collect;
use crate::server::json::{self, Body};
use crate::server::state::{AppState, Elapsed, RequestLog};
use crate::server::types::tgi::*;
use crate::server::validation::{self, TgiRequest};
use crate::tokenizer::Tokenizer;

pub(crate) fn token(t: &TokenInfo) -> Token {
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

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// TGI's timing headers of a finished generation.
pub(crate) fn timing_headers(
    st: &AppState,
    e: &Elapsed,
    prompt_tokens: usize,
    generated_tokens: usize,
    compute_characters: usize,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-compute-type", header_value(&st.options.compute_type));
    h.insert("x-compute-time", header_value(e.total.as_secs_f64()));
    h.insert("x-compute-characters", header_value(compute_characters));
    h.insert("x-total-time", header_value(e.total.as_millis()));
    h.insert("x-validation-time", header_value(e.validation.as_millis()));
    h.insert("x-queue-time", header_value(e.queue.as_millis()));
    h.insert("x-inference-time", header_value(e.inference.as_millis()));
    h.insert("x-time-per-token", header_value(e.per_token.as_millis()));
    h.insert("x-prompt-tokens", header_value(prompt_tokens));
    h.insert("x-generated-tokens", header_value(generated_tokens));
    h
}

/// The headers a stream starts with.
pub(crate) fn stream_headers(
    st: &AppState,
    prompt_tokens: usize,
    compute_characters: usize,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-compute-type", header_value(&st.options.compute_type));
    h.insert("x-compute-characters", header_value(compute_characters));
    h.insert("x-prompt-tokens", header_value(prompt_tokens));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h
}

/// One SSE event with a JSON body.
pub(crate) fn sse_json<T: serde::Serialize>(v: &T) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default()
        .json_data(v)
        .unwrap_or_else(|_| SseEvent::default().data("{}")))
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
        Ok(r) => run_stream(st, log, r.inputs, r.parameters, false),
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
        run_stream(st, log, r.inputs, r.parameters, full)
    } else {
        run_generate(st, log, r.inputs, r.parameters, full, true).await
    }
}

fn validate(
    st: &AppState,
    inputs: &str,
    params: Option<GenerateParameters>,
    default_full_text: bool,
    stream: bool,
) -> Result<TgiRequest, ApiError> {
    validation::tgi(
        &st.limits,
        st.engine.tokenizer(),
        inputs,
        params.unwrap_or_else(GenerateParameters::absent),
        default_full_text,
        stream,
    )
}

async fn run_generate(
    st: Arc<AppState>,
    mut log: RequestLog,
    inputs: String,
    params: Option<GenerateParameters>,
    default_full_text: bool,
    as_list: bool,
) -> Response {
    let r = generate_inner(&st, &mut log, inputs, params, default_full_text, as_list).await;
    r.unwrap_or_else(|e| {
        log.fail(&e);
        e.into_response()
    })
}

async fn generate_inner(
    st: &Arc<AppState>,
    log: &mut RequestLog,
    inputs: String,
    params: Option<GenerateParameters>,
    default_full_text: bool,
    as_list: bool,
) -> Result<Response, ApiError> {
    let v = validate(st, &inputs, params, default_full_text, false)?;
    let prompt_tokens = v.request.prompt.len();
    log.validated(prompt_tokens, v.request.stopping.max_new_tokens);
    let mut request = v.request.clone();
    request.id = log.id;
    let rx = st.submit(request)?;
    let result = collect(rx, v.best_of).await?;
    let mut candidates = result.candidates;
    // best_of: the candidate with the highest mean token logprob, the others beside it.
    let best = (0..candidates.len())
        .max_by(|&a, &b| {
            candidates[a]
                .mean_logprob()
                .total_cmp(&candidates[b].mean_logprob())
                .then(b.cmp(&a))
        })
        .unwrap_or(0);
    let best = candidates.remove(best);
    // Candidate i samples with seed + i (as the engine seeds it).
    let seed_of = |i: usize| {
        v.sampling
            .then_some(result.completion.seed.wrapping_add(i as u64))
    };
    let seed = seed_of(best.index);
    let prefix = if v.return_full_text {
        inputs.as_str()
    } else {
        ""
    };
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
        seed,
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
    let e = log.succeed(
        &result.completion.timings,
        best.generated_tokens,
        best.reason.as_tgi(),
        seed,
    );
    let headers = timing_headers(
        st,
        &e,
        prompt_tokens,
        best.generated_tokens,
        inputs.chars().count(),
    );
    let body = GenerateResponse {
        generated_text: format!("{prefix}{}", best.text),
        details,
    };
    Ok(if as_list {
        (headers, Json(vec![body])).into_response()
    } else {
        (headers, Json(body)).into_response()
    })
}

fn run_stream(
    st: Arc<AppState>,
    mut log: RequestLog,
    inputs: String,
    params: Option<GenerateParameters>,
    default_full_text: bool,
) -> Response {
    let prepared = (|| {
        let v = validate(&st, &inputs, params, default_full_text, true)?;
        log.validated(v.request.prompt.len(), v.request.stopping.max_new_tokens);
        let mut request = v.request.clone();
        request.id = log.id;
        let rx = st.submit(request)?;
        Ok::<_, ApiError>((v, rx))
    })();
    let (v, rx) = match prepared {
        Ok(x) => x,
        Err(e) => {
            log.fail(&e);
            return e.into_response();
        }
    };
    let headers = stream_headers(&st, v.request.prompt.len(), inputs.chars().count());
    let prefix = if v.return_full_text {
        inputs
    } else {
        String::new()
    };
    let events = tgi_events(log, v, prefix, rx);
    (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response()
}

/// The SSE events of a TGI stream. The last token's event carries `generated_text` (and
/// `details`): the engine flags a candidate's last token and sends its
/// `CandidateFinished` right after it, so that event is awaited before the token goes out.
fn tgi_events(
    mut log: RequestLog,
    v: TgiRequest,
    prefix: String,
    mut rx: EventReceiver,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let seed = v.sampling.then_some(v.request.sampling.seed);
    let input_length = v.request.prompt.len() as u32;
    async_stream::stream! {
        let mut index = 0u32;
        let mut finish = None;
        loop {
            match rx.recv().await {
                None => {
                    let e = ApiError::incomplete();
                    log.fail(&e);
                    yield sse_json(&e.body());
                    break;
                }
                Some(Event::Prefill { .. }) | Some(Event::CandidateFinished { .. }) => {}
                Some(Event::Token { token: t, last, .. }) => {
                    index += 1;
                    let mut tok = token(&t.token);
                    if !t.token.special {
                        tok.text = t.text_piece.clone();
                    }
                    let top_tokens: Vec<Token> = t.top_tokens.iter().map(token).collect();
                    let mut generated_text = None;
                    let mut details = None;
                    if last {
                        match rx.recv().await {
                            Some(Event::CandidateFinished { reason, text: full, generated_tokens, .. }) => {
                                finish = Some((reason, generated_tokens));
                                generated_text = Some(format!("{prefix}{full}"));
                                details = v.details.then_some(StreamDetails {
                                    finish_reason: reason.as_tgi(),
                                    generated_tokens: generated_tokens as u32,
                                    seed,
                                    input_length,
                                });
                            }
                            Some(Event::Error(e)) => {
                                let e = ApiError::from(e);
                                log.fail(&e);
                                yield sse_json(&e.body());
                                break;
                            }
                            _ => {
                                let e = ApiError::incomplete();
                                log.fail(&e);
                                yield sse_json(&e.body());
                                break;
                            }
                        }
                    }
                    yield sse_json(&StreamResponse {
                        index,
                        token: tok,
                        top_tokens,
                        generated_text,
                        details,
                    });
                }
                Some(Event::Done(c)) => {
                    let (reason, n) = finish.unwrap_or((crate::engine::FinishReason::Length, index as usize));
                    log.succeed(&c.timings, n, reason.as_tgi(), seed);
                    break;
                }
                Some(Event::Error(e)) => {
                    let e = ApiError::from(e);
                    log.fail(&e);
                    yield sse_json(&e.body());
                    break;
                }
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

/// `POST /tokenize`: the prompt's tokens with their byte ranges in `inputs`.
#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "Text Generation Inference",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "Tokens", body = Vec<SimpleToken>),
        (status = 422, description = "Input validation error", body = ErrorResponse),
    )
)]
pub async fn tokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let r: TokenizeRequest = match json::parse(&headers, body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match simple_tokens(
        st.engine.tokenizer(),
        &r.inputs,
        r.add_special_tokens.unwrap_or(true),
    ) {
        Ok(t) => Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Tokens with byte offsets: the `tokenizers` offsets when its encoding is the one the
/// model uses, else found by matching each token's text along the input.
pub(crate) fn simple_tokens(
    tok: &Tokenizer,
    input: &str,
    add_special: bool,
) -> Result<Vec<SimpleToken>, ApiError> {
    let ids = validation::tokenize(tok, input, add_special)?;
    let slice = |start: usize, stop: usize| -> String {
        String::from_utf8_lossy(input.as_bytes().get(start..stop).unwrap_or_default()).into_owned()
    };
    if let Ok(enc) = tok.inner().encode(input, add_special) {
        if enc.get_ids() == ids.as_slice() && enc.get_offsets().len() == ids.len() {
            return Ok(ids
                .iter()
                .zip(enc.get_offsets())
                .map(|(&id, &(start, stop))| SimpleToken {
                    id,
                    text: slice(start, stop),
                    start,
                    stop,
                })
                .collect());
        }
    }
    Ok(walk_offsets(tok, input, &ids))
}

/// Byte ranges found by matching each token's decoded text along the input; tokens not
/// in it (a BOS added by the tokenizer) get an empty range.
fn walk_offsets(tok: &Tokenizer, input: &str, ids: &[u32]) -> Vec<SimpleToken> {
    let slice = |start: usize, stop: usize| -> String {
        String::from_utf8_lossy(input.as_bytes().get(start..stop).unwrap_or_default()).into_owned()
    };
    let mut out = Vec::with_capacity(ids.len());
    let mut cursor = 0;
    let mut i = 0;
    while i < ids.len() {
        // A character split over several byte-level tokens decodes whole only together.
        let mut j = i;
        let mut text = tok.decode(&ids[i..=j], false).unwrap_or_default();
        while text.contains('\u{FFFD}') && j + 1 < ids.len() && j - i < 4 {
            j += 1;
            text = tok.decode(&ids[i..=j], false).unwrap_or_default();
        }
        let rest = &input[cursor..];
        let lead = rest.len() - rest.trim_start().len();
        let (start, stop) = if !text.is_empty() && rest.starts_with(text.as_str()) {
            (cursor, cursor + text.len())
        } else if !text.trim_start().is_empty() && rest[lead..].starts_with(text.trim_start()) {
            (cursor, cursor + lead + text.trim_start().len())
        } else {
            // Not in the input (a BOS added by the tokenizer).
            (cursor, cursor)
        };
        for &id in &ids[i..=j] {
            out.push(SimpleToken {
                id,
                text: slice(start, stop),
                start,
                stop,
            });
        }
        cursor = stop;
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_by_walking_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let tok = serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "unk_token": "<s>",
                      "vocab": {"<s>": 0, "hello": 1, "world": 2}}});
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "add_bos_token": true}"#,
        )
        .unwrap();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        let input = "hello  world";
        let got = walk_offsets(&t, input, &[0, 1, 2]);
        let ranges: Vec<_> = got.iter().map(|t| (t.id, t.start, t.stop)).collect();
        assert_eq!(ranges, vec![(0, 0, 0), (1, 0, 5), (2, 5, 12)]);
        assert_eq!(got[2].text, "  world");
        // The public path agrees (here through the tokenizer's own offsets).
        let toks = simple_tokens(&t, input, true).unwrap();
        assert_eq!(toks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(toks[1].text, "hello");
    }
}
