//! OpenAI's chat and completion types (as the openai-python SDK sends and parses them).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::server::json::{null_default, seed, string_or_list};
pub use crate::server::types::structured::*;

/// A message's content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    /// `text` (other part types are refused).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    #[serde(default)]
    #[schema(nullable)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant turn's tool calls (given to templates that take them, else written
    /// as the JSON the model answers calls with).
    #[serde(default)]
    #[schema(nullable)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "null_default")]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct OpenAiSampling {
    /// In [0, 2]; 0 is greedy decoding.
    #[schema(nullable)]
    pub temperature: Option<f32>,
    /// In (0, 1].
    #[schema(nullable)]
    pub top_p: Option<f32>,
    /// In [-2, 2].
    #[schema(nullable)]
    pub presence_penalty: Option<f32>,
    /// In [-2, 2].
    #[schema(nullable)]
    pub frequency_penalty: Option<f32>,
    /// TGI's repetition penalty (> 0), an extension.
    #[schema(nullable)]
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string) to a bias in [-100, 100].
    #[serde(default)]
    #[schema(nullable)]
    pub logit_bias: Option<HashMap<String, f32>>,
    #[serde(default, deserialize_with = "seed")]
    #[schema(nullable)]
    pub seed: Option<u64>,
    /// Up to max_stop_sequences strings (not included in the output).
    #[serde(default, deserialize_with = "string_or_list")]
    #[schema(value_type = Option<Vec<String>>)]
    pub stop: Vec<String>,
    /// Choices to generate (default 1).
    #[schema(nullable)]
    pub n: Option<u32>,
}

/// `/v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// Any name is accepted.
    #[schema(nullable, example = "tgi")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
    #[schema(nullable)]
    pub max_tokens: Option<u32>,
    #[schema(nullable)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    pub logprobs: bool,
    /// 0..=20 alternatives per token (needs `logprobs`).
    #[schema(nullable)]
    pub top_logprobs: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    pub stream: bool,
    #[serde(default)]
    #[schema(nullable)]
    pub stream_options: Option<StreamOptions>,
    /// `text`, `json_object`, `json_schema` (OpenAI), or TGI's `{"type": "json" |
    /// "regex", "value"}`: the output is constrained to it.
    #[serde(default)]
    #[schema(nullable)]
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call.
    #[serde(default)]
    #[schema(nullable)]
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto` (the default with tools), `required` or a named function.
    #[serde(default)]
    #[schema(nullable, value_type = Option<Object>)]
    pub tool_choice: Option<ToolChoice>,
    /// Several calls in one answer (default true) or exactly one.
    #[serde(default)]
    #[schema(nullable)]
    pub parallel_tool_calls: Option<bool>,
    /// TGI: the text before the tools' description, for chat templates that do not
    /// take `tools`.
    #[serde(default)]
    #[schema(nullable)]
    pub tool_prompt: Option<String>,
}

/// A completion prompt: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `/v1/completions` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[schema(nullable, example = "tgi")]
    pub model: Option<String>,
    pub prompt: PromptInput,
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
    /// Default 16, as OpenAI.
    #[schema(nullable)]
    pub max_tokens: Option<u32>,
    /// Alternatives per token to report, 0..=5.
    #[schema(nullable)]
    pub logprobs: Option<u32>,
    /// Include the prompt in the text (and its logprobs).
    #[serde(default, deserialize_with = "null_default")]
    pub echo: bool,
    /// Candidates generated per prompt, of which the `n` best are returned.
    #[schema(nullable)]
    pub best_of: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    pub stream: bool,
    #[serde(default)]
    #[schema(nullable)]
    pub stream_options: Option<StreamOptions>,
    /// Not supported (422 when set).
    #[serde(default)]
    #[schema(nullable)]
    pub suffix: Option<String>,
    /// `text`, `json_object` or `json_schema` (or TGI's `json` / `regex` form).
    #[serde(default)]
    #[schema(nullable)]
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogprobContent {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<LogprobContent>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputMessage {
    pub role: &'static str,
    /// null when the answer is tool calls.
    #[schema(nullable)]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: OutputMessage,
    #[schema(nullable)]
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[schema(nullable)]
    pub logprobs: Option<ChatLogprobs>,
    #[schema(nullable)]
    pub finish_reason: Option<&'static str>,
}

/// One SSE event of a chat stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    /// With `stream_options.include_usage`: null, except on the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable, value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

/// Legacy completion logprobs.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    #[schema(value_type = Vec<Option<f32>>)]
    pub token_logprobs: Vec<Option<f32>>,
    #[schema(value_type = Vec<Option<Object>>)]
    pub top_logprobs: Vec<Option<HashMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: u32,
    #[schema(nullable)]
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null in stream chunks until the choice ends.
    #[schema(nullable)]
    pub finish_reason: Option<&'static str>,
}

/// `/v1/completions` answer, and (with `usage` absent or null) one stream chunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable, value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    pub id: String,
    /// `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<ModelInfo>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(nullable)]
    pub param: Option<String>,
    #[schema(nullable)]
    pub code: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpenAiError {
    pub error: OpenAiErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_request_forms() {
        let r: ChatRequest = serde_json::from_value(json!({
            "model": "tgi",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "0", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
            ],
            "max_completion_tokens": 5, "temperature": 0, "stop": "x", "seed": 3, "n": null,
            "logprobs": null, "stream": null, "stream_options": {"include_usage": true},
            "logit_bias": {"42": -100}, "user": "ignored",
        }))
        .unwrap();
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.max_completion_tokens, Some(5));
        assert_eq!(r.sampling.temperature, Some(0.0));
        assert_eq!(r.sampling.stop, vec!["x"]);
        assert_eq!(r.sampling.seed, Some(3));
        assert_eq!(r.sampling.logit_bias.as_ref().unwrap()["42"], -100.0);
        assert!(r.stream_options.unwrap().include_usage);
        assert!(matches!(
            r.messages[1].content,
            Some(MessageContent::Parts(ref p)) if p[0].text.as_deref() == Some("hi")
        ));
        assert!(serde_json::from_value::<ChatRequest>(json!({"model": "x"})).is_err());
    }

    #[test]
    fn prompt_forms() {
        for (v, ok) in [
            (json!("a"), true),
            (json!(["a", "b"]), true),
            (json!([1, 2]), true),
            (json!([[1], [2, 3]]), true),
            (json!(3), false),
        ] {
            let r = serde_json::from_value::<CompletionRequest>(json!({"prompt": v}));
            assert_eq!(r.is_ok(), ok, "{v}");
        }
    }

    #[test]
    fn chunk_usage_is_null_or_absent() {
        let mut c = CompletionResponse {
            id: "x".into(),
            object: "text_completion",
            created: 0,
            model: "m".into(),
            system_fingerprint: "f".into(),
            choices: vec![],
            usage: None,
        };
        assert!(serde_json::to_value(&c).unwrap().get("usage").is_none());
        c.usage = Some(None);
        assert_eq!(serde_json::to_value(&c).unwrap()["usage"], json!(null));
    }
}
