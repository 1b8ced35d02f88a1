//! TGI's request and response types (`router/src/lib.rs`), with the same field names,
//! defaults and omissions. Explicit `null`s mean "not set"; unknown fields are ignored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::server::json::{null_default, string_or_list};

/// Generation parameters of `/generate`, `/generate_stream` and `/`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct GenerateParameters {
    /// Generate best_of sequences and return the one with the highest mean token logprob.
    #[schema(nullable, minimum = 1, example = 1)]
    pub best_of: Option<usize>,
    /// Sampling temperature (> 0).
    #[schema(nullable, example = 0.5)]
    pub temperature: Option<f32>,
    /// Repetition penalty (> 0; 1.0 means none), over prompt and generated tokens.
    #[schema(nullable, example = 1.03)]
    pub repetition_penalty: Option<f32>,
    /// Frequency penalty in [-2, 2] over generated tokens.
    #[schema(nullable, example = 0.1)]
    pub frequency_penalty: Option<f32>,
    /// Keep the k most likely tokens (> 0).
    #[schema(nullable, example = 10)]
    pub top_k: Option<i64>,
    /// Nucleus sampling mass in (0, 1).
    #[schema(nullable, example = 0.95)]
    pub top_p: Option<f32>,
    /// Typical decoding mass in (0, 1).
    #[schema(nullable, example = 0.95)]
    pub typical_p: Option<f32>,
    /// Sample instead of greedy decoding.
    #[serde(default, deserialize_with = "null_default")]
    #[schema(default = false)]
    pub do_sample: bool,
    /// Tokens to generate at most (default: what max_total_tokens leaves).
    #[schema(nullable, minimum = 1, example = 20)]
    pub max_new_tokens: Option<u32>,
    /// Prepend the prompt to the generated text.
    #[schema(nullable)]
    pub return_full_text: Option<bool>,
    /// Stop when one of these is generated (kept in the text).
    #[serde(default, deserialize_with = "string_or_list")]
    #[schema(example = json!(["photographer"]))]
    pub stop: Vec<String>,
    /// Keep only the last `truncate` prompt tokens.
    #[schema(nullable)]
    pub truncate: Option<usize>,
    /// Accepted; watermarking is not implemented.
    #[serde(default, deserialize_with = "null_default")]
    pub watermark: bool,
    /// Return generation details.
    #[serde(default, deserialize_with = "null_default")]
    pub details: bool,
    /// Return the prompt tokens with their logprobs.
    #[serde(default, deserialize_with = "null_default")]
    pub decoder_input_details: bool,
    /// Random seed (drawn at random when absent, reported in details).
    #[serde(default, deserialize_with = "crate::server::json::seed")]
    #[schema(nullable)]
    pub seed: Option<u64>,
    /// Most likely alternatives to report per token.
    #[schema(nullable, example = 5)]
    pub top_n_tokens: Option<u32>,
    /// Constrain the output: `{"type": "json" | "json_object", "value": <JSON Schema, or
    /// a string holding one>}` or `{"type": "regex", "value": "<regex>"}`.
    #[schema(nullable)]
    pub grammar: Option<crate::server::types::structured::GrammarParam>,
    /// LoRA adapter id (accepted and ignored).
    #[schema(nullable)]
    pub adapter_id: Option<String>,
}

impl GenerateParameters {
    /// What TGI uses when `parameters` is absent: sampling on, nothing else set.
    pub fn absent() -> Self {
        Self {
            do_sample: true,
            ..Self::default()
        }
    }
}

/// `/generate` and `/generate_stream` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct GenerateRequest {
    #[schema(example = "My name is Olivier and I")]
    pub inputs: String,
    #[serde(default)]
    #[schema(nullable)]
    pub parameters: Option<GenerateParameters>,
}

/// `POST /` body: a `GenerateRequest` that may ask for a stream.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompatGenerateRequest {
    #[schema(example = "My name is Olivier and I")]
    pub inputs: String,
    #[serde(default)]
    #[schema(nullable)]
    pub parameters: Option<GenerateParameters>,
    #[serde(default, deserialize_with = "null_default")]
    #[schema(default = false)]
    pub stream: bool,
}

/// The Vast.ai wrapper around a request: `auth_data` is not checked.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct VastRequest {
    #[schema(value_type = Object)]
    pub auth_data: serde_json::Value,
    pub payload: GenerateRequest,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PrefillToken {
    pub id: u32,
    pub text: String,
    /// null for the first prompt token.
    #[schema(nullable, value_type = Option<f32>)]
    pub logprob: f32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Token {
    pub id: u32,
    pub text: String,
    #[schema(nullable, value_type = Option<f32>)]
    pub logprob: f32,
    pub special: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BestOfSequence {
    pub generated_text: String,
    /// `length`, `eos_token` or `stop_sequence`.
    pub finish_reason: &'static str,
    pub generated_tokens: u32,
    #[schema(nullable)]
    pub seed: Option<u64>,
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Details {
    /// `length`, `eos_token` or `stop_sequence`.
    pub finish_reason: &'static str,
    pub generated_tokens: u32,
    #[schema(nullable)]
    pub seed: Option<u64>,
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_of_sequences: Option<Vec<BestOfSequence>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GenerateResponse {
    pub generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamDetails {
    pub finish_reason: &'static str,
    pub generated_tokens: u32,
    #[schema(nullable)]
    pub seed: Option<u64>,
    pub input_length: u32,
}

/// One SSE event of `/generate_stream`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamResponse {
    pub index: u32,
    pub token: Token,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Token>,
    /// Set on the last event only.
    #[schema(nullable)]
    pub generated_text: Option<String>,
    /// Set on the last event only, when `details` was asked for.
    #[schema(nullable)]
    pub details: Option<StreamDetails>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    pub error_type: String,
}

/// `/info`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Info {
    pub model_id: String,
    #[schema(nullable)]
    pub model_sha: Option<String>,
    pub model_dtype: String,
    pub model_device_type: String,
    #[schema(nullable)]
    pub model_pipeline_tag: Option<String>,
    pub max_concurrent_requests: usize,
    pub max_best_of: usize,
    pub max_stop_sequences: usize,
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub waiting_served_ratio: f32,
    pub max_batch_total_tokens: usize,
    pub max_waiting_tokens: usize,
    #[schema(nullable)]
    pub max_batch_size: Option<usize>,
    pub validation_workers: usize,
    pub max_client_batch_size: usize,
    pub router: &'static str,
    pub version: &'static str,
    #[schema(nullable)]
    pub sha: Option<&'static str>,
    #[schema(nullable)]
    pub docker_label: Option<&'static str>,
}

/// `/tokenize` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub inputs: String,
    /// Add the model's special tokens (BOS) as generation does.
    #[serde(default)]
    #[schema(nullable, default = true)]
    pub add_special_tokens: Option<bool>,
}

/// One token of `/tokenize`: its id, its text and its byte range in the input.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub start: usize,
    pub stop: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn explicit_nulls_unknown_fields_and_defaults() {
        // What text_generation.Client sends, with unset parameters as null.
        let r: CompatGenerateRequest = serde_json::from_value(json!({
            "inputs": "hi",
            "parameters": {"best_of": null, "decoder_input_details": false, "details": true,
                "do_sample": false, "max_new_tokens": 20, "repetition_penalty": null,
                "frequency_penalty": null, "return_full_text": false, "seed": null,
                "stop": [], "temperature": null, "top_k": null, "top_n_tokens": null,
                "top_p": null, "truncate": null, "typical_p": null, "watermark": false,
                "grammar": null, "adapter_id": null, "some_future_field": 1},
            "stream": false,
        }))
        .unwrap();
        let p = r.parameters.unwrap();
        assert_eq!(p.max_new_tokens, Some(20));
        assert!(p.details && !p.do_sample && p.stop.is_empty());
        let r: GenerateRequest =
            serde_json::from_value(json!({"inputs": "x", "parameters": null})).unwrap();
        assert!(r.parameters.is_none());
        assert!(GenerateParameters::absent().do_sample);
        let r: CompatGenerateRequest =
            serde_json::from_value(json!({"inputs": "x", "stream": null, "parameters": {"do_sample": null, "details": null, "stop": null}})).unwrap();
        assert!(!r.stream);
        assert!(serde_json::from_value::<GenerateRequest>(json!({"parameters": {}})).is_err());
    }

    #[test]
    fn response_omissions() {
        let t = Token {
            id: 1,
            text: "a".into(),
            logprob: f32::NAN,
            special: false,
        };
        let v = serde_json::to_value(StreamResponse {
            index: 1,
            token: t.clone(),
            top_tokens: vec![],
            generated_text: None,
            details: None,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"index": 1, "token": {"id": 1, "text": "a", "logprob": null, "special": false},
                   "generated_text": null, "details": null})
        );
        let v = serde_json::to_value(GenerateResponse {
            generated_text: "x".into(),
            details: None,
        })
        .unwrap();
        assert_eq!(v, json!({"generated_text": "x"}));
    }
}
