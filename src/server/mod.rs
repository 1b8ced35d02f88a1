//! The HTTP server: a drop-in for Hugging Face TGI and the OpenAI API.
//!
//! Routes: TGI's `/generate`, `/generate_stream`, `POST /`, `/info`, `/health`,
//! `/metrics`, `/tokenize`; OpenAI's `/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`; the OpenAPI document at `/api-doc/openapi.json`. Requests are
//! validated (tokenized, limits checked) before the engine sees them; each request's
//! engine events become one [`stream::GenerationStream`] (exactly one terminal item and
//! one log line) that the routes format as JSON answers or server-sent events. Dropping
//! a response (client gone) drops the stream, which cancels the request in the engine.
//!
//! This is a library of routes and state: [`router`] builds the application's router
//! for an [`AppState`]; `crate::app` loads the model, starts the engine and serves it.

mod auth;
mod body;
pub mod error;
#[cfg(test)]
mod fuzz;
mod generation;
mod json;
mod metrics;
mod openapi;
pub mod routes;
mod state;
mod stream;
mod structured;
pub mod types;
mod validation;

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use self::error::{ApiError, Flavor};
pub use self::state::{AppState, ServerOptions};

async fn openapi_json(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi.clone(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found")
        .flavor(body::flavor(uri.path()))
        .into_response()
}

async fn method_not_allowed(uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
    .flavor(body::flavor(uri.path()))
    .into_response()
}

fn cors(origins: &[String]) -> Result<CorsLayer> {
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim())
                    .with_context(|| format!("invalid CORS origin {o:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .allow_origin(allow))
}

/// The router: every route, auth (all but `/health`), request ids, the body's time and
/// size limits, CORS. `crate::app` serves it.
pub fn router(state: Arc<AppState>) -> Result<Router> {
    use routes::{chat, completions, openai, tgi, tokenize};
    let protected = Router::new()
        .route("/", post(tgi::compat_generate).get(tgi::health))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/info", get(tgi::info))
        .route("/metrics", get(tgi::metrics))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(openai::models))
        .route("/api-doc/openapi.json", get(openapi_json))
        // Auth runs first (no body is read for a refused request), then the body is read.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::prepare,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Ok(Router::new()
        .route("/health", get(tgi::health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.options.payload_limit))
        .layer(cors(&state.options.cors_allow_origin)?)
        .with_state(state))
}
