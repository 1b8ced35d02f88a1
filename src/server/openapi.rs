//! The OpenAPI document, generated from the handler and wire types.

use utoipa::OpenApi;

use super::routes::{chat, completions, openai, tgi, tokenize};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wick",
        description = "Text Generation Inference and OpenAI compatible API",
        license(name = "Apache-2.0")
    ),
    paths(
        tgi::compat_generate,
        tgi::generate,
        tgi::generate_stream,
        tgi::info,
        tgi::health,
        tgi::metrics,
        tokenize::tokenize,
        chat::chat_completions,
        completions::completions,
        openai::models,
    ),
    components(schemas(
        super::types::tgi::VastRequest,
        super::types::openai::ChatCompletionChunk,
    )),
    tags(
        (name = "Text Generation Inference", description = "Hugging Face TGI's API"),
        (name = "OpenAI", description = "OpenAI's chat and completions API"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_lists_routes_and_schemas() {
        let v: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        for p in [
            "/",
            "/generate",
            "/generate_stream",
            "/v1/chat/completions",
            "/v1/completions",
            "/tokenize",
        ] {
            assert!(v["paths"][p].is_object(), "{p}");
        }
        for s in [
            "GenerateRequest",
            "GenerateParameters",
            "GenerateResponse",
            "StreamResponse",
            "ChatRequest",
            "ChatCompletion",
        ] {
            assert!(v["components"]["schemas"][s].is_object(), "{s}");
        }
    }
}
