//! OpenAI's `POST /v1/completions`: one engine request per prompt (all or none), with
//! `best_of` candidates each of which the best `n` are answered, as one
//! `CompletionResponse` or as `text_completion` events.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;

use super::openai::{self, model_name, usage, Plan, SseItem};
use super::respond::{sse, sse_json, timing_headers};
use crate::engine::{GeneratedToken, GenerationRequest, StoppingParams, TokenInfo};
use crate::grammar::GrammarSpec;
use crate::server::error::ApiError;
use crate::server::generation::CandidateResult;
use crate::server::json::Body;
use crate::server::state::{unix_now, AppState};
use crate::server::stream::{GenerationStream, Item};
use crate::server::structured;
use crate::server::types::openai::*;
use crate::server::validation::{self, DefaultMaxNew};

/// Most alternatives per token (`logprobs`).
const MAX_COMPLETION_LOGPROBS: u32 = 5;

struct CompletionPlan {
    requests: Vec<GenerationRequest>,
    /// The prompts' text, for `echo`.
    texts: Vec<String>,
    n: usize,
    /// Candidates per prompt; the best `n` are answered.
    best_of: usize,
    logprobs: Option<usize>,
    echo: bool,
    include_usage: bool,
    model: String,
    compute_characters: usize,
    grammar: Option<GrammarSpec>,
}

impl Plan for CompletionPlan {
    fn requests(&self) -> Vec<GenerationRequest> {
        self.requests.clone()
    }

    fn grammar(&self) -> Option<(GrammarSpec, &'static str)> {
        self.grammar.clone().map(|g| (g, "response_format"))
    }
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
    let grammar = match &req.response_format {
        Some(f) => structured::response_format(f)?,
        None => None,
    };
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
            grammar: None,
            candidates: best_of,
        });
    }
    Ok(CompletionPlan {
        requests,
        compute_characters: texts.iter().map(|t| t.chars().count()).sum(),
        texts,
        n,
        best_of,
        logprobs,
        echo: req.echo,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        model: model_name(st, req.model.as_deref()),
        grammar,
    })
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
    let started = openai::start(
        &st,
        "/v1/completions",
        &headers,
        body,
        |r: &CompletionRequest| r.stream,
        |r, id| plan_completion(&st, r, id),
    )
    .await;
    let (plan, stream, s) = match started {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if stream {
        let prompt_tokens = plan.requests.iter().map(|r| r.prompt.len()).sum();
        let characters = plan.compute_characters;
        return sse(
            &st,
            prompt_tokens,
            characters,
            completion_events(st.clone(), s, plan),
        );
    }
    completion_answer(&st, s, &plan).await
}

async fn completion_answer(st: &AppState, s: GenerationStream, plan: &CompletionPlan) -> Response {
    let id = format!("cmpl-{:x}", s.id());
    let (results, f) = match s.collect().await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let mut choices = Vec::new();
    for (p, result) in results.iter().enumerate() {
        let mut cands: Vec<&CandidateResult> = result.candidates.iter().collect();
        if plan.best_of > plan.n {
            cands.sort_by(|a, b| b.mean_logprob().total_cmp(&a.mean_logprob()));
            cands.truncate(plan.n);
        }
        let prefix = match plan.texts.get(p) {
            Some(text) if plan.echo => text.as_str(),
            _ => "",
        };
        for (j, c) in cands.into_iter().enumerate() {
            let logprobs = plan.logprobs.map(|_| {
                let prompt = plan.echo.then_some(result.prefill.as_slice());
                completion_logprobs(prompt, &c.tokens, &c.top_tokens)
            });
            let text = format!("{prefix}{}", c.text);
            let reason = Some(c.reason.as_openai());
            choices.push(choice(text, p * plan.n + j, logprobs, reason));
        }
    }
    let headers = timing_headers(st, &f, plan.compute_characters);
    let body = CompletionResponse {
        id,
        object: "text_completion",
        created: unix_now(),
        model: plan.model.clone(),
        system_fingerprint: st.system_fingerprint.clone(),
        choices,
        usage: Some(Some(usage(f.prompt_tokens, f.generated_tokens))),
    };
    (headers, Json(body)).into_response()
}

/// The chunks of a streamed completion: the prompts' text first with `echo` (with their
/// logprobs once the prompt's `Prefill` arrives), then each choice's text token by token
/// and its finish reason; `openai::events` frames them.
fn completion_events(
    st: Arc<AppState>,
    s: GenerationStream,
    plan: CompletionPlan,
) -> impl Stream<Item = SseItem> {
    let id = format!("cmpl-{:x}", s.id());
    let created = unix_now();
    let model = plan.model;
    let chunk = move |choices: Vec<CompletionChoice>, usage: Option<Option<Usage>>| {
        sse_json(&CompletionResponse {
            id: id.clone(),
            object: "text_completion",
            created,
            model: model.clone(),
            system_fingerprint: st.system_fingerprint.clone(),
            choices,
            usage,
        })
    };
    let usage_field = if plan.include_usage { Some(None) } else { None };
    let n = plan.n;
    let want_logprobs = plan.logprobs.is_some();
    let echo = plan.echo;
    let texts = plan.texts;
    let mut opening = Vec::new();
    if echo && !want_logprobs {
        for (p, text) in texts.iter().enumerate() {
            for c in 0..n {
                let choice = choice(text.clone(), p * n + c, None, None);
                opening.push(chunk(vec![choice], usage_field));
            }
        }
    }
    let usage_chunk = plan.include_usage.then(|| {
        let chunk = chunk.clone();
        move |u| chunk(Vec::new(), Some(Some(u)))
    });
    let format = move |item: Item| {
        let mut out = Vec::new();
        match item {
            Item::Prefill { prompt: p, tokens } if echo && want_logprobs => {
                let text = texts.get(p).cloned().unwrap_or_default();
                for c in 0..n {
                    let lp = completion_logprobs(Some(&tokens), &[], &[]);
                    let choice = choice(text.clone(), p * n + c, Some(lp), None);
                    out.push(chunk(vec![choice], usage_field));
                }
            }
            Item::Token {
                prompt: p,
                candidate,
                token:
                    GeneratedToken {
                        token,
                        text_piece,
                        top_tokens,
                    },
                end,
            } => {
                let index = p * n + candidate;
                let lp = (want_logprobs && !token.special).then(|| {
                    let (t, top) = (
                        std::slice::from_ref(&token),
                        std::slice::from_ref(&top_tokens),
                    );
                    completion_logprobs(None, t, top)
                });
                if !text_piece.is_empty() || lp.is_some() {
                    out.push(chunk(
                        vec![choice(text_piece, index, lp, None)],
                        usage_field,
                    ));
                }
                if let Some(end) = end {
                    let reason = Some(end.reason.as_openai());
                    out.push(chunk(
                        vec![choice(String::new(), index, None, reason)],
                        usage_field,
                    ));
                }
            }
            _ => {}
        }
        out
    };
    openai::events(s, opening, format, usage_chunk)
}

fn choice(
    text: String,
    index: usize,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<&'static str>,
) -> CompletionChoice {
    CompletionChoice {
        text,
        index: index as u32,
        logprobs,
        finish_reason,
    }
}
