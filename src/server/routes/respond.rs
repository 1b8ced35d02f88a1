//! What the generation routes' answers share: TGI's timing headers (on TGI's and
//! OpenAI's routes alike), the headers a stream starts with, and SSE events.

use std::convert::Infallible;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

use crate::server::state::AppState;
use crate::server::stream::Finished;

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// TGI's timing headers of a finished generation.
pub(crate) fn timing_headers(st: &AppState, f: &Finished, compute_characters: usize) -> HeaderMap {
    let e = &f.elapsed;
    let mut h = HeaderMap::new();
    h.insert("x-compute-type", header_value(&st.options.compute_type));
    h.insert("x-compute-time", header_value(e.total.as_secs_f64()));
    h.insert("x-compute-characters", header_value(compute_characters));
    h.insert("x-total-time", header_value(e.total.as_millis()));
    h.insert("x-validation-time", header_value(e.validation.as_millis()));
    h.insert("x-queue-time", header_value(e.queue.as_millis()));
    h.insert("x-inference-time", header_value(e.inference.as_millis()));
    h.insert("x-time-per-token", header_value(e.per_token.as_millis()));
    h.insert("x-prompt-tokens", header_value(f.prompt_tokens));
    h.insert("x-generated-tokens", header_value(f.generated_tokens));
    h
}

/// A server-sent-events answer: the headers a stream starts with, then `events`.
pub(crate) fn sse(
    st: &AppState,
    prompt_tokens: usize,
    compute_characters: usize,
    events: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Response {
    let mut h = HeaderMap::new();
    h.insert("x-compute-type", header_value(&st.options.compute_type));
    h.insert("x-compute-characters", header_value(compute_characters));
    h.insert("x-prompt-tokens", header_value(prompt_tokens));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (h, Sse::new(events).keep_alive(KeepAlive::default())).into_response()
}

/// One SSE event with a JSON body.
pub(crate) fn sse_json<T: serde::Serialize>(v: &T) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default()
        .json_data(v)
        .unwrap_or_else(|_| SseEvent::default().data("{}")))
}
