//! What happens to every request before its handler: it gets an id (in its log lines,
//! its span and the `x-request-id` header), and its body is read whole within
//! `--request-body-timeout` (408 beyond: a client sending slowly cannot hold a
//! connection and a handler) and `--payload-limit` (413 beyond), each answered with a
//! JSON error in the route's format. An oversized body is still read (and dropped) up to
//! a bound, so the client, still sending, gets the 413 instead of a reset connection.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tracing::Instrument;

use super::error::{ApiError, Flavor};
use super::state::AppState;

tokio::task_local! {
    static REQUEST_ID: u64;
}

/// The id of the request being handled, inside the middleware's scope.
pub fn current_request_id() -> Option<u64> {
    REQUEST_ID.try_with(|id| *id).ok()
}

/// The error format of a path: OpenAI's on `/v1/*`, TGI's elsewhere.
pub fn flavor(path: &str) -> Flavor {
    if path.starts_with("/v1/") {
        Flavor::OpenAi
    } else {
        Flavor::Tgi
    }
}

/// Whether a request announces a body (a length above zero, or chunks).
pub fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => false,
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0),
    }
}

/// Most bytes of an oversized body read and dropped before answering 413.
fn drain_limit(limit: usize) -> usize {
    limit.saturating_mul(4).max(32 << 20)
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads `body` whole if it has at most `limit` bytes; past that, reads on (dropping
/// the bytes) up to `drain_limit` and reports it too large.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total <= limit {
            buf.extend_from_slice(&data);
        } else {
            buf = bytes::BytesMut::new();
            if total > drain_limit(limit) {
                break;
            }
        }
    }
    if total > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(buf.freeze())
}

/// An answer before the body was read whole: the connection is closed after it, as
/// what is left of the body would be read as the next request.
fn reject(err: ApiError, id: u64) -> Response {
    let mut r = err.into_response();
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        r.headers_mut().insert("x-request-id", v);
    }
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The middleware: id, body within its time and size limits, then the handler.
pub async fn prepare(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = st.next_id();
    let path = req.uri().path().to_string();
    let flavor = flavor(&path);
    let limit = st.options.payload_limit;
    let timeout = st.options.request_body_timeout;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let read = match declared {
        // Declared too large: drain what comes (bounded) and refuse.
        Some(n) if n > drain_limit(limit) as u64 => Err(BodyError::TooLarge),
        _ => match tokio::time::timeout(timeout, read_limited(body, limit)).await {
            Ok(r) => r,
            Err(_) => {
                let err = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "The request body was not received within {}s",
                        timeout.as_secs_f64()
                    ),
                );
                log_refusal(&st, id, &path, &err, timeout);
                return reject(err.flavor(flavor), id);
            }
        },
    };
    let bytes = match read {
        Ok(b) => b,
        Err(e) => {
            let err = match e {
                BodyError::TooLarge => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "validation",
                    format!("Request body is too large (limit: {limit} bytes)"),
                ),
                BodyError::Read(m) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "validation",
                    format!("Failed to read the request body: {m}"),
                ),
            };
            log_refusal(&st, id, &path, &err, Duration::ZERO);
            return reject(err.flavor(flavor), id);
        }
    };
    if st.options.log_prompts && !bytes.is_empty() {
        const MOST: usize = 16 << 10;
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MOST)]);
        tracing::info!(
            target: "wick::request",
            id,
            route = %path,
            bytes = bytes.len(),
            body = %shown,
            "request body"
        );
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    let span = tracing::info_span!("request", id);
    let mut response = REQUEST_ID.scope(id, next.run(req)).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn log_refusal(st: &AppState, id: u64, path: &str, err: &ApiError, waited: Duration) {
    st.metrics.request();
    st.metrics.failure(err.metric_label());
    tracing::info!(
        target: "wick::request",
        id,
        route = %path,
        status = err.status.as_u16(),
        error_type = err.kind,
        error = %err.message,
        waited_ms = waited.as_millis() as u64,
        "request refused while reading its body"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits() {
        let b = read_limited(Body::from("12345"), 5).await.unwrap();
        assert_eq!(&b[..], b"12345");
        assert!(matches!(
            read_limited(Body::from("123456"), 5).await,
            Err(BodyError::TooLarge)
        ));
        assert_eq!(flavor("/v1/models"), Flavor::OpenAi);
        assert_eq!(flavor("/generate"), Flavor::Tgi);
        assert_eq!(current_request_id(), None);
        let id = REQUEST_ID.scope(7, async { current_request_id() }).await;
        assert_eq!(id, Some(7));
        let mut h = HeaderMap::new();
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(has_body(&h));
    }
}
