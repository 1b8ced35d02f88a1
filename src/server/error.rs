//! Error answers: TGI's `{"error", "error_type"}` on TGI routes, OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` on `/v1/*`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::EngineError;

/// Which wire format an error is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Tgi,
    OpenAi,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// TGI's `error_type` (also OpenAI's `code`).
    pub kind: &'static str,
    /// The offending request field (OpenAI's `param`).
    pub param: Option<&'static str>,
    pub flavor: Flavor,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            flavor: Flavor::Tgi,
        }
    }

    /// 422 `validation`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    /// 422 `validation` naming the parameter at fault.
    pub fn param(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::validation(message)
        }
    }

    pub fn template(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "template_error", message)
    }

    pub fn incomplete() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "incomplete_generation",
            "Incomplete generation",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized: a valid `Authorization: Bearer <api key>` header is required",
        )
    }

    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    pub fn openai(self) -> Self {
        self.flavor(Flavor::OpenAi)
    }

    /// The label of `tgi_request_failure{err=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self.kind {
            "template_error" => "validation",
            k => k,
        }
    }

    /// The JSON body (also used as an SSE error event).
    pub fn body(&self) -> serde_json::Value {
        match self.flavor {
            Flavor::Tgi => json!({"error": self.message, "error_type": self.kind}),
            Flavor::OpenAi => {
                let kind = match self.status.as_u16() {
                    401 => "invalid_request_error",
                    429 => "rate_limit_error",
                    s if s >= 500 || s == 424 => "server_error",
                    _ => "invalid_request_error",
                };
                let code = match self.kind {
                    "unauthorized" => "invalid_api_key",
                    k => k,
                };
                json!({"error": {
                    "message": self.message,
                    "type": kind,
                    "param": self.param,
                    "code": code,
                }})
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Overloaded => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "Model is overloaded",
            ),
            EngineError::Validation(m) => Self::validation(format!("Input validation error: {m}")),
            EngineError::Generation(m) => Self::new(
                StatusCode::FAILED_DEPENDENCY,
                "generation",
                format!("Request failed during generation: {m}"),
            ),
            EngineError::ShutDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The server is shutting down",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = ApiError::param("temperature", "`temperature` must be strictly positive");
        assert_eq!(
            e.body(),
            json!({"error": "`temperature` must be strictly positive", "error_type": "validation"})
        );
        let o = e.openai().body();
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert_eq!(o["error"]["param"], "temperature");
        assert_eq!(o["error"]["code"], "validation");
        let e: ApiError = EngineError::Overloaded.into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.body()["error_type"], "overloaded");
        assert_eq!(e.openai().body()["error"]["type"], "rate_limit_error");
        let e: ApiError = EngineError::Generation("boom".into()).into();
        assert_eq!(e.status, StatusCode::FAILED_DEPENDENCY);
        assert_eq!(
            ApiError::unauthorized().openai().body()["error"]["code"],
            "invalid_api_key"
        );
    }
}
