//! TGI's `POST /tokenize`: the prompt's tokens with their byte ranges in `inputs`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::server::error::ApiError;
use crate::server::json::{self, Body};
use crate::server::state::AppState;
use crate::server::types::tgi::*;
use crate::server::validation;
use crate::tokenizer::Tokenizer;

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
    if let Ok(enc) = tok.inner().encode(input, add_special) {
        if enc.get_ids() == ids.as_slice() && enc.get_offsets().len() == ids.len() {
            return Ok(ids
                .iter()
                .zip(enc.get_offsets())
                .map(|(&id, &(start, stop))| SimpleToken {
                    id,
                    text: slice(input, start, stop),
                    start,
                    stop,
                })
                .collect());
        }
    }
    Ok(walk_offsets(tok, input, &ids))
}

/// The text of bytes `start..stop` of `input` (empty when out of range).
fn slice(input: &str, start: usize, stop: usize) -> String {
    String::from_utf8_lossy(input.as_bytes().get(start..stop).unwrap_or_default()).into_owned()
}

/// Byte ranges found by matching each token's decoded text along the input; tokens not
/// in it (a BOS added by the tokenizer) get an empty range.
fn walk_offsets(tok: &Tokenizer, input: &str, ids: &[u32]) -> Vec<SimpleToken> {
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
                text: slice(input, start, stop),
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
