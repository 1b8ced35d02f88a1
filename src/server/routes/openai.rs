//! OpenAI's routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};

use super::tgi::{sse_json, stream_headers, timing_headers};
use crate::engine::{
    Event, EventReceiver, GeneratedToken, GenerationRequest, StoppingParams, TokenInfo,
};
use crate::server::error::ApiError;
use crate::server::generation::{collect, CandidateResult};
use crate::server::json::{self, Body};
use crate::server::state::{unix_now, AppState, RequestLog};
use crate::server::types::openai::*;
use crate::server::validation::{self, DefaultMaxNew};
use crate::tokenizer::ChatMessage;

/// Most alternatives per token: chat `top_logprobs`, completions `logprobs`.
const MAX_TOP_LOGPROBS: u32 = 20;
const MAX_COMPLETION_LOGPROBS: u32 = 5;

fn model_name(st: &AppState, requested: Option<&str>) -> String {
    match requested {
        Some(m) if !m.is_empty() && m != "tgi" => m.to_string(),
        _ => st.options.model_id.clone(),
    }
}

fn done_event() -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data("[DONE]"))
}

fn usage(prompt: usize, completion: usize) -> Usage {
    Usage {
        prompt_tokens: prompt as u32,
        completion_tokens: completion as u32,
        total_tokens: (prompt + completion) as u32,
    }
}

fn logprob_content(t: &TokenInfo, top: &[TokenInfo]) -> LogprobContent {
    LogprobContent {
        token: t.text.clone(),
        logprob: t.logprob,
        bytes: t.text.as_bytes().to_vec(),
        top_logprobs: top
            .iter()
            .map(|x| TopLogprob {
                token: x.text.clone(),
                logprob: x.logprob,
                bytes: x.text.as_bytes().to_vec(),
            })
            .collect(),
    }
}

/// The conversation as the template sees it: roles checked, content parts joined.
fn chat_messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }
    req.messages
        .iter()
        .map(|m| {
            let role = match m.role.as_str() {
                r @ ("system" | "user" | "assistant" | "tool") => r,
                "developer" => "system",
                other => {
                    return Err(ApiError::param(
                        "messages",
                        format!(
                            "unknown message role {other:?}: expected system, developer, user, \
                             assistant or tool"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                Some(MessageContent::Text(s)) => s.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut out = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::param(
                                "messages",
                                format!("content parts of type {:?} are not supported", p.kind),
                            ));
                        }
                        out.push_str(p.text.as_deref().unwrap_or(""));
                    }
                    out
                }
                None => match &m.tool_calls {
                    Some(calls) => serde_json::to_string(calls).unwrap_or_default(),
                    None => String::new(),
                },
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

struct ChatPlan {
    request: GenerationRequest,
    logprobs: bool,
    include_usage: bool,
    model: String,
    compute_characters: usize,
}

fn plan_chat(st: &AppState, req: &ChatRequest, id: u64) -> Result<ChatPlan, ApiError> {
    let messages = chat_messages(req)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty())
        && req.tool_choice.as_ref().and_then(|c| c.as_str()) != Some("none")
    {
        return Err(ApiError::param("tools", "tools are not supported"));
    }
    if let Some(f) = &req.response_format {
        let kind = f.get("type").and_then(|t| t.as_str()).unwrap_or("text");
        if !f.is_null() && kind != "text" {
            return Err(ApiError::param(
                "response_format",
                format!("response_format {kind:?} is not supported"),
            ));
        }
    }
    let top = req.top_logprobs.unwrap_or(0);
    if top > 0 && !req.logprobs {
        return Err(ApiError::param(
            "top_logprobs",
            "`logprobs` must be true when `top_logprobs` is set",
        ));
    }
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::param(
            "top_logprobs",
            format!("`top_logprobs` must be <= {MAX_TOP_LOGPROBS}. Given: {top}"),
        ));
    }
    let max_new = req.max_completion_tokens.or(req.max_tokens);
    if max_new == Some(0) {
        return Err(ApiError::param(
            "max_tokens",
            "`max_tokens` must be strictly positive",
        ));
    }
    let n = validation::choices(req.sampling.n)?;
    let sampling = validation::openai_sampling(&st.limits, &req.sampling)?;
    let template = st
        .chat
        .as_ref()
        .map_err(|e| ApiError::template(e.clone()))?;
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::template(format!("{e:#}")))?;
    // The template writes the special tokens itself.
    let ids = validation::tokenize(st.engine.tokenizer(), &text, false)?;
    let prompt = validation::prompt(&st.limits, ids, None, max_new, DefaultMaxNew::Remaining)?;
    Ok(ChatPlan {
        request: GenerationRequest {
            id,
            prompt: prompt.ids,
            sampling,
            stopping: StoppingParams {
                max_new_tokens: prompt.max_new_tokens,
                stop_sequences: req.sampling.stop.clone(),
                include_stop_sequence: false,
                ignore_eos: false,
            },
            top_n_tokens: if req.logprobs { top as usize } else { 0 },
            prompt_logprobs: false,
            candidates: n,
        },
        logprobs: req.logprobs,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        model: model_name(st, req.model.as_deref()),
        compute_characters: text.chars().count(),
    })
}

/// `POST /v1/chat/completions`
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "OpenAI",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "Chat completion", content(
            (ChatCompletion = "application/json"),
            (ChatCompletionChunk = "text/event-stream"),
        )),
        (status = 422, description = "Input validation error", body = OpenAiError),
        (status = 429, description = "Model is overloaded", body = OpenAiError),
    )
)]
pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut log = RequestLog::new(&st, "/v1/chat/completions", Instant::now());
    let req: ChatRequest = match json::parse(&headers, body) {
        Ok(r) => r,
        Err(e) => return log.reject(e.openai()),
    };
    let prepared = plan_chat(&st, &req, log.id).and_then(|plan| {
        log.validated(
            plan.request.prompt.len(),
            plan.request.stopping.max_new_tokens,
        );
        let rx = st.submit(plan.request.clone())?;
        Ok((plan, rx))
    });
    let (plan, rx) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let e = e.openai();
            log.fail(&e);
            return e.into_response();
        }
    };
    if req.stream {
        let headers = stream_headers(&st, plan.request.prompt.len(), plan.compute_characters);
        let events = chat_events(st, log, plan, rx);
        return (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response();
    }
    match chat_answer(&st, &mut log, &plan, rx).await {
        Ok(r) => r,
        Err(e) => {
            let e = e.openai();
            log.fail(&e);
            e.into_response()
        }
    }
}

async fn chat_answer(
    st: &AppState,
    log: &mut RequestLog,
    plan: &ChatPlan,
    rx: EventReceiver,
) -> Result<Response, ApiError> {
    let n = plan.request.candidates;
    let result = collect(rx, n).await?;
    let generated = result.generated_tokens();
    let prompt_tokens = plan.request.prompt.len();
    let choices = result
        .candidates
        .iter()
        .map(|c| ChatChoice {
            index: c.index as u32,
            message: OutputMessage {
                role: "assistant",
                content: c.text.clone(),
            },
            logprobs: plan.logprobs.then(|| ChatLogprobs {
                content: c
                    .tokens
                    .iter()
                    .zip(&c.top_tokens)
                    .filter(|(t, _)| !t.special)
                    .map(|(t, top)| logprob_content(t, top))
                    .collect(),
            }),
            finish_reason: c.reason.as_openai(),
        })
        .collect();
    let reason = result.candidates[0].reason.as_openai();
    let e = log.succeed(
        &result.completion.timings,
        generated,
        reason,
        plan.request
            .sampling
            .do_sample
            .then_some(result.completion.seed),
    );
    let headers = timing_headers(st, &e, prompt_tokens, generated, plan.compute_characters);
    let body = ChatCompletion {
        id: format!("chatcmpl-{:x}", log.id),
        object: "chat.completion",
        created: unix_now(),
        model: plan.model.clone(),
        system_fingerprint: st.system_fingerprint.clone(),
        choices,
        usage: usage(prompt_tokens, generated),
    };
    Ok((headers, Json(body)).into_response())
}

fn chat_events(
    st: Arc<AppState>,
    mut log: RequestLog,
    plan: ChatPlan,
    mut rx: EventReceiver,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let id = format!("chatcmpl-{:x}", log.id);
    let created = unix_now();
    let prompt_tokens = plan.request.prompt.len();
    let seed = plan
        .request
        .sampling
        .do_sample
        .then_some(plan.request.sampling.seed);
    let chunk =
        move |choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: plan.model.clone(),
            system_fingerprint: st.system_fingerprint.clone(),
            choices,
            usage,
        };
    let usage_field = if plan.include_usage { Some(None) } else { None };
    let n = plan.request.candidates;
    let logprobs = plan.logprobs;
    async_stream::stream! {
        for i in 0..n {
            yield sse_json(&chunk(vec![ChunkChoice {
                index: i as u32,
                delta: Delta { role: Some("assistant"), content: Some(String::new()) },
                logprobs: None,
                finish_reason: None,
            }], usage_field));
        }
        let mut generated = 0;
        let mut reason = "stop";
        loop {
            match rx.recv().await {
                None => {
                    let e = ApiError::incomplete().openai();
                    log.fail(&e);
                    yield sse_json(&e.body());
                    break;
                }
                Some(Event::Prefill { .. }) => {}
                Some(Event::Token { candidate, token: GeneratedToken { token, text_piece, top_tokens }, .. }) => {
                    let lp = (logprobs && !token.special).then(|| ChatLogprobs {
                        content: vec![logprob_content(&token, &top_tokens)],
                    });
                    if !text_piece.is_empty() || lp.is_some() {
                        yield sse_json(&chunk(vec![ChunkChoice {
                            index: candidate as u32,
                            delta: Delta { role: None, content: Some(text_piece) },
                            logprobs: lp,
                            finish_reason: None,
                        }], usage_field));
                    }
                }
                Some(Event::CandidateFinished { candidate, reason: r, generated_tokens, .. }) => {
                    generated += generated_tokens;
                    reason = r.as_openai();
                    yield sse_json(&chunk(vec![ChunkChoice {
                        index: candidate as u32,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason: Some(r.as_openai()),
                    }], usage_field));
                }
                Some(Event::Done(c)) => {
                    log.succeed(&c.timings, generated, reason, seed);
                    if usage_field.is_some() {
                        yield sse_json(&chunk(Vec::new(), Some(Some(usage(prompt_tokens, generated)))));
                    }
                    break;
                }
                Some(Event::Error(e)) => {
                    let e = ApiError::from(e).openai();
                    log.fail(&e);
                    yield sse_json(&e.body());
                    break;
                }
            }
        }
        yield done_event();
    }
}

struct CompletionPlan {
    requests: Vec<GenerationRequest>,
    /// The prompts' text, for `echo`.
    texts: Vec<String>,
    n: usize,
    logprobs: Option<usize>,
    echo: bool,
    include_usage: bool,
    model: String,
    compute_characters: usize,
}

fn plan_completion(
    st: &AppState,
    req: &CompletionRequest,
    id: u64,
) -> Result<CompletionPlan, ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param(
            "suffix",
            "Suffix is not supported and can be achieved by preprocessing the prompt.",
        ));
    }
    let tok = st.engine.tokenizer();
    let (ids, texts): (Vec<Vec<u32>>, Vec<String>) = match &req.prompt {
        PromptInput::Text(s) => (vec![validation::tokenize(tok, s, true)?], vec![s.clone()]),
        PromptInput::Texts(v) => {
            let ids = v
                .iter()
                .map(|s| validation::tokenize(tok, s, true))
                .collect::<Result<_, _>>()?;
            (ids, v.clone())
        }
        PromptInput::Tokens(t) => (
            vec![t.clone()],
            vec![tok.decode(t, false).unwrap_or_default()],
        ),
        PromptInput::TokenLists(l) => (
            l.clone(),
            l.iter()
                .map(|t| tok.decode(t, false).unwrap_or_default())
                .collect(),
        ),
    };
    if ids.is_empty() {
        return Err(ApiError::param("prompt", "`prompt` must not be empty"));
    }
    if ids.len() > st.limits.max_client_batch_size {
        return Err(ApiError::param(
            "prompt",
            format!(
                "Number of prompts exceeds the maximum allowed batch size of {}",
                st.limits.max_client_batch_size
            ),
        ));
    }
    if req.max_tokens == Some(0) {
        return Err(ApiError::param(
            "max_tokens",
            "`max_tokens` must be strictly positive",
        ));
    }
    let n = validation::choices(req.sampling.n)?;
    let best_of = req.best_of.map(|b| b as usize).unwrap_or(n);
    if best_of < n || best_of > validation::MAX_CHOICES as usize {
        return Err(ApiError::param(
            "best_of",
            format!(
                "`best_of` must be >= `n` and <= {}. Given: {best_of}",
                validation::MAX_CHOICES
            ),
        ));
    }
    if best_of > n && req.stream {
        return Err(ApiError::param(
            "best_of",
            "`best_of` > `n` is not supported when streaming",
        ));
    }
    let logprobs = req.logprobs.map(|k| k as usize);
    if req.logprobs.is_some_and(|k| k > MAX_COMPLETION_LOGPROBS) {
        return Err(ApiError::param(
            "logprobs",
            format!("`logprobs` must be <= {MAX_COMPLETION_LOGPROBS}"),
        ));
    }
    let sampling = validation::openai_sampling(&st.limits, &req.sampling)?;
    let mut requests = Vec::with_capacity(ids.len());
    for ids in ids {
        let p = validation::prompt(
            &st.limits,
            ids,
            None,
            req.max_tokens,
            DefaultMaxNew::Fixed(16),
        )?;
        requests.push(GenerationRequest {
            id,
            prompt: p.ids,
            sampling: sampling.clone(),
            stopping: StoppingParams {
                max_new_tokens: p.max_new_tokens,
                stop_sequences: req.sampling.stop.clone(),
                include_stop_sequence: false,
                ignore_eos: false,
            },
            top_n_tokens: logprobs.unwrap_or(0),
            prompt_logprobs: req.echo && logprobs.is_some(),
            candidates: best_of,
        });
    }
    Ok(CompletionPlan {
        requests,
        compute_characters: texts.iter().map(|t| t.chars().count()).sum(),
        texts,
        n,
        logprobs,
        echo: req.echo,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        model: model_name(st, req.model.as_deref()),
    })
}

/// `POST /v1/completions`
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "Completion", content(
            (CompletionResponse = "application/json"),
            (CompletionResponse = "text/event-stream"),
        )),
        (status = 422, description = "Input validation error", body = OpenAiError),
        (status = 429, description = "Model is overloaded", body = OpenAiError),
    )
)]
pub async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut log = RequestLog::new(&st, "/v1/completions", Instant::now());
    let req: CompletionRequest = match json::parse(&headers, body) {
        Ok(r) => r,
        Err(e) => return log.reject(e.openai()),
    };
    let prepared = plan_completion(&st, &req, log.id).and_then(|plan| {
        let prompt_tokens: usize = plan.requests.iter().map(|r| r.prompt.len()).sum();
        log.validated(prompt_tokens, plan.requests[0].stopping.max_new_tokens);
        // All or none: receivers already taken are dropped (cancelled) on failure.
        let rxs = plan
            .requests
            .iter()
            .map(|r| st.submit(r.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((plan, rxs))
    });
    let (plan, rxs) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let e = e.openai();
            log.fail(&e);
            return e.into_response();
        }
    };
    if req.stream {
        let prompt_tokens = plan.requests.iter().map(|r| r.prompt.len()).sum();
        let headers = stream_headers(&st, prompt_tokens, plan.compute_characters);
        let events = completion_events(st, log, plan, rxs);
        return (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response();
    }
    match completion_answer(&st, &mut log, &plan, rxs).await {
        Ok(r) => r,
        Err(e) => {
            let e = e.openai();
            log.fail(&e);
            e.into_response()
        }
    }
}

fn completion_logprobs(
    prompt: Option<&[TokenInfo]>,
    tokens: &[TokenInfo],
    tops: &[Vec<TokenInfo>],
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let mut offset = 0;
    let mut push = |t: &TokenInfo, top: Option<&[TokenInfo]>| {
        lp.tokens.push(t.text.clone());
        lp.token_logprobs
            .push(Some(t.logprob).filter(|x| x.is_finite()));
        lp.top_logprobs.push(top.map(|top| {
            top.iter()
                .map(|x| (x.text.clone(), x.logprob))
                .collect::<HashMap<_, _>>()
        }));
        lp.text_offset.push(offset);
        offset += t.text.len();
    };
    for t in prompt.unwrap_or_default() {
        push(t, None);
    }
    for (t, top) in tokens.iter().zip(tops) {
        if !t.special {
            push(t, Some(top));
        }
    }
    lp
}

async fn completion_answer(
    st: &AppState,
    log: &mut RequestLog,
    plan: &CompletionPlan,
    rxs: Vec<EventReceiver>,
) -> Result<Response, ApiError> {
    let best_of = plan.requests[0].candidates;
    let results =
        futures::future::try_join_all(rxs.into_iter().map(|rx| collect(rx, best_of))).await?;
    let mut choices = Vec::new();
    let (mut generated, mut prompt_tokens) = (0, 0);
    for (p, result) in results.iter().enumerate() {
        prompt_tokens += result.completion.prompt_tokens;
        generated += result.generated_tokens();
        let mut cands: Vec<&CandidateResult> = result.candidates.iter().collect();
        if best_of > plan.n {
            cands.sort_by(|a, b| b.mean_logprob().total_cmp(&a.mean_logprob()));
            cands.truncate(plan.n);
        }
        for (j, c) in cands.into_iter().enumerate() {
            let prefix = if plan.echo {
                plan.texts[p].as_str()
            } else {
                ""
            };
            choices.push(CompletionChoice {
                text: format!("{prefix}{}", c.text),
                index: (p * plan.n + j) as u32,
                logprobs: plan.logprobs.map(|_| {
                    completion_logprobs(
                        plan.echo.then_some(result.prefill.as_slice()),
                        &c.tokens,
                        &c.top_tokens,
                    )
                }),
                finish_reason: Some(c.reason.as_openai()),
            });
        }
    }
    let first = &results[0];
    let e = log.succeed(
        &first.completion.timings,
        generated,
        first.candidates[0].reason.as_openai(),
        plan.requests[0]
            .sampling
            .do_sample
            .then_some(first.completion.seed),
    );
    let headers = timing_headers(st, &e, prompt_tokens, generated, plan.compute_characters);
    Ok((
        headers,
        Json(CompletionResponse {
            id: format!("cmpl-{:x}", log.id),
            object: "text_completion",
            created: unix_now(),
            model: plan.model.clone(),
            system_fingerprint: st.system_fingerprint.clone(),
            choices,
            usage: Some(Some(usage(prompt_tokens, generated))),
        }),
    )
        .into_response())
}

fn completion_events(
    st: Arc<AppState>,
    mut log: RequestLog,
    plan: CompletionPlan,
    rxs: Vec<EventReceiver>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let id = format!("cmpl-{:x}", log.id);
    let created = unix_now();
    let usage_field = if plan.include_usage { Some(None) } else { None };
    let chunk =
        move |choices: Vec<CompletionChoice>, usage: Option<Option<Usage>>| CompletionResponse {
            id: id.clone(),
            object: "text_completion",
            created,
            model: plan.model.clone(),
            system_fingerprint: st.system_fingerprint.clone(),
            choices,
            usage,
        };
    let prompts = rxs.len();
    let n = plan.n;
    let want_logprobs = plan.logprobs.is_some();
    let echo = plan.echo;
    let texts = plan.texts;
    let prompt_tokens: usize = plan.requests.iter().map(|r| r.prompt.len()).sum();
    let seed = plan.requests[0]
        .sampling
        .do_sample
        .then_some(plan.requests[0].sampling.seed);
    // One stream of (prompt, event) over all prompts.
    let merged = futures::stream::select_all(rxs.into_iter().enumerate().map(|(p, rx)| {
        futures::stream::unfold(rx, move |mut rx| async move {
            rx.recv().await.map(|e| ((p, e), rx))
        })
        .boxed()
    }));
    async_stream::stream! {
        if echo && !want_logprobs {
            for (p, text) in texts.iter().enumerate() {
                for c in 0..n {
                    yield sse_json(&chunk(vec![CompletionChoice {
                        text: text.clone(),
                        index: (p * n + c) as u32,
                        logprobs: None,
                        finish_reason: None,
                    }], usage_field));
                }
            }
        }
        let mut merged = merged;
        let mut done = 0;
        let mut generated = 0;
        let mut reason = "stop";
        let mut timings = None;
        let mut failed = false;
        while let Some((p, ev)) = merged.next().await {
            let index = |c: usize| (p * n + c) as u32;
            match ev {
                Event::Prefill { tokens } => {
                    if echo && want_logprobs {
                        for c in 0..n {
                            yield sse_json(&chunk(vec![CompletionChoice {
                                text: texts[p].clone(),
                                index: index(c),
                                logprobs: want_logprobs.then(|| completion_logprobs(Some(&tokens), &[], &[])),
                                finish_reason: None,
                            }], usage_field));
                        }
                    }
                }
                Event::Token { candidate, token: GeneratedToken { token, text_piece, top_tokens }, .. } => {
                    let lp = (want_logprobs && !token.special).then(|| {
                        completion_logprobs(None, std::slice::from_ref(&token), std::slice::from_ref(&top_tokens))
                    });
                    if !text_piece.is_empty() || lp.is_some() {
                        yield sse_json(&chunk(vec![CompletionChoice {
                            text: text_piece,
                            index: index(candidate),
                            logprobs: lp,
                            finish_reason: None,
                        }], usage_field));
                    }
                }
                Event::CandidateFinished { candidate, reason: r, generated_tokens, .. } => {
                    generated += generated_tokens;
                    reason = r.as_openai();
                    yield sse_json(&chunk(vec![CompletionChoice {
                        text: String::new(),
                        index: index(candidate),
                        logprobs: None,
                        finish_reason: Some(r.as_openai()),
                    }], usage_field));
                }
                Event::Done(c) => {
                    done += 1;
                    timings.get_or_insert(c.timings);
                }
                Event::Error(e) => {
                    let e = ApiError::from(e).openai();
                    log.fail(&e);
                    yield sse_json(&e.body());
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            match timings {
                Some(t) if done == prompts => {
                    log.succeed(&t, generated, reason, seed);
                    if usage_field.is_some() {
                        yield sse_json(&chunk(Vec::new(), Some(Some(usage(prompt_tokens, generated)))));
                    }
                }
                _ => {
                    let e = ApiError::incomplete().openai();
                    log.fail(&e);
                    yield sse_json(&e.body());
                }
            }
        }
        yield done_event();
    }
}

/// `GET /v1/models`: the served model.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    responses((status = 200, description = "Served models", body = ModelList))
)]
pub async fn models(State(st): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelInfo {
            id: st.options.model_id.clone(),
            object: "model",
            created: st.started,
            owned_by: "wick".into(),
        }],
    })
}
