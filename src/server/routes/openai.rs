//! OpenAI's `GET /v1/models` and what the chat and completions routes share: a
//! request's start (body, plan, engine), the model name, usage, logprobs, and the frame
//! of a stream (its error object, usage chunk and closing `[DONE]`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::Json;
use futures::Stream;
use serde::de::DeserializeOwned;

use super::respond::sse_json;
use crate::engine::{GenerationRequest, TokenInfo};
use crate::grammar::GrammarSpec;
use crate::server::error::{ApiError, Flavor};
use crate::server::json::{self, Body};
use crate::server::state::{AppState, RequestLog};
use crate::server::stream::{GenerationStream, Item, Summary};
use crate::server::types::openai::*;

/// One SSE event of an OpenAI stream.
pub(super) type SseItem = Result<SseEvent, Infallible>;

/// A planned OpenAI request: the engine requests it submits (one per prompt).
pub(super) trait Plan {
    fn requests(&self) -> Vec<GenerationRequest>;
    /// What the output is constrained to (`response_format`, `tools`) and the request
    /// field that asked for it.
    fn grammar(&self) -> Option<(GrammarSpec, &'static str)> {
        None
    }
}

/// Parses the body, plans the request (`plan` gets the request id), compiles its
/// grammar and starts it; a refusal at any step is logged (as the request's end) and
/// returned, in OpenAI's error shape, to answer with.
pub(super) async fn start<R: DeserializeOwned, P: Plan>(
    st: &Arc<AppState>,
    route: &'static str,
    headers: &HeaderMap,
    body: Body,
    streamed: impl FnOnce(&R) -> bool,
    plan: impl FnOnce(&R, u64) -> Result<P, ApiError>,
) -> Result<(P, bool, GenerationStream), ApiError> {
    let log = RequestLog::new(st, route, Instant::now());
    let req: R = match json::parse(headers, body) {
        Ok(r) => r,
        Err(e) => return Err(log.refuse(e.openai())),
    };
    let plan = match plan(&req, log.id) {
        Ok(p) => p,
        Err(e) => return Err(log.refuse(e.openai())),
    };
    let mut requests = plan.requests();
    if let Some((spec, param)) = plan.grammar() {
        match st.compile_grammar(spec, param).await {
            Ok(g) => {
                for r in &mut requests {
                    r.grammar = Some(g.clone());
                }
            }
            Err(e) => return Err(log.refuse(e.openai())),
        }
    }
    let stream = streamed(&req);
    // A stream's log reports what its client saw last; a whole answer, its first choice.
    let summary = if stream {
        Summary::ByArrival
    } else {
        Summary::ByIndex
    };
    let s = GenerationStream::start(st, log, requests, Flavor::OpenAi, summary)?;
    Ok((plan, stream, s))
}

/// The events of an OpenAI stream: `opening`, then what `format` makes of each prefill
/// and token, the usage chunk (`usage_chunk`, when asked) once the request finished, or
/// one error object if it failed, then `[DONE]`.
pub(super) fn events<F, U>(
    mut s: GenerationStream,
    opening: Vec<SseItem>,
    mut format: F,
    usage_chunk: Option<U>,
) -> impl Stream<Item = SseItem>
where
    F: FnMut(Item) -> Vec<SseItem> + Send + 'static,
    U: Fn(Usage) -> SseItem + Send + 'static,
{
    async_stream::stream! {
        for e in opening {
            yield e;
        }
        while let Some(item) = s.next().await {
            match item {
                Item::Finished(f) => {
                    if let Some(chunk) = &usage_chunk {
                        yield chunk(usage(f.prompt_tokens, f.generated_tokens));
                    }
                }
                Item::Failed(e) => yield sse_json(&e.body()),
                item => {
                    for e in format(item) {
                        yield e;
                    }
                }
            }
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    }
}

/// The `model` of an answer: the one asked for, else the served model's name.
pub(super) fn model_name(st: &AppState, requested: Option<&str>) -> String {
    match requested {
        Some(m) if !m.is_empty() && m != "tgi" => m.to_string(),
        _ => st.options.model_id.clone(),
    }
}

pub(super) fn usage(prompt: usize, completion: usize) -> Usage {
    Usage {
        prompt_tokens: prompt as u32,
        completion_tokens: completion as u32,
        total_tokens: (prompt + completion) as u32,
    }
}

/// A chat token's logprob with its alternatives.
pub(super) fn logprob_content(t: &TokenInfo, top: &[TokenInfo]) -> LogprobContent {
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
