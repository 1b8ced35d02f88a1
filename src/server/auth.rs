//! `--api-key`: bearer-token auth, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::{ApiError, Flavor};
use super::state::AppState;

/// Whether `authorization` is `Bearer <key>` (scheme case-insensitive).
pub fn authorized(authorization: Option<&HeaderValue>, key: &str) -> bool {
    let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(key.as_bytes()))
}

pub async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = st.options.api_key.as_deref() else {
        return next.run(req).await;
    };
    if authorized(req.headers().get(header::AUTHORIZATION), key) {
        return next.run(req).await;
    }
    let flavor = if req.uri().path().starts_with("/v1/") {
        Flavor::OpenAi
    } else {
        Flavor::Tgi
    };
    let mut r = ApiError::unauthorized().flavor(flavor).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    // The body is not read: the connection cannot carry another request.
    if super::body::has_body(req.headers()) {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(authorized(Some(&h("Bearer sk-1")), "sk-1"));
        assert!(authorized(Some(&h("bearer  sk-1 ")), "sk-1"));
        assert!(!authorized(Some(&h("Bearer sk-2")), "sk-1"));
        assert!(!authorized(Some(&h("Bearer sk-11")), "sk-1"));
        assert!(!authorized(Some(&h("Basic sk-1")), "sk-1"));
        assert!(!authorized(Some(&h("sk-1")), "sk-1"));
        assert!(!authorized(None, "sk-1"));
    }
}
