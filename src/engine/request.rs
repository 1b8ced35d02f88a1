//! What the server hands the engine, and what the engine sends back.

use std::time::Instant;

use crate::sampling::SamplingParams;

/// A validated generation request: the prompt is already tokenized (and truncated).
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// For logs and metrics only.
    pub id: u64,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stopping: StoppingParams,
    /// Alternatives to report per generated token (TGI `top_n_tokens`, OpenAI
    /// `top_logprobs`); 0 = none.
    pub top_n_tokens: usize,
    /// Report the prompt tokens' logprobs (TGI `decoder_input_details`, OpenAI
    /// completions `echo` + `logprobs`).
    pub prompt_logprobs: bool,
    /// Independent candidates to generate from the one prompt (TGI `best_of`, OpenAI
    /// `n`); at least 1. They share the prompt's KV blocks.
    pub candidates: usize,
    /// The grammar the output must follow (TGI `grammar`, OpenAI `response_format`,
    /// `tools`), compiled off the engine thread; each candidate starts its own
    /// constraint from it.
    pub grammar: Option<std::sync::Arc<crate::grammar::CompiledGrammar>>,
}

impl GenerationRequest {
    /// Whether the request can run on a model with `vocab_size` tokens and a KV cache of
    /// `kv_tokens`: a `Validation` error says why not.
    pub fn validate(&self, vocab_size: usize, kv_tokens: usize) -> Result<(), EngineError> {
        let invalid = |m: String| Err(EngineError::Validation(m));
        if self.prompt.is_empty() {
            return invalid("the prompt has no tokens".into());
        }
        if let Some(&t) = self.prompt.iter().find(|&&t| t as usize >= vocab_size) {
            return invalid(format!(
                "token id {t} is outside the vocabulary ({vocab_size})"
            ));
        }
        if self.stopping.max_new_tokens == 0 {
            return invalid("max_new_tokens must be at least 1".into());
        }
        if self.candidates == 0 {
            return invalid("at least one candidate must be generated".into());
        }
        let total = self
            .prompt
            .len()
            .saturating_add(self.stopping.max_new_tokens);
        if total > kv_tokens {
            return invalid(format!(
                "prompt ({} tokens) + max_new_tokens ({}) = {total} exceeds the KV cache \
                 capacity of {kv_tokens} tokens",
                self.prompt.len(),
                self.stopping.max_new_tokens,
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppingParams {
    /// At least 1.
    pub max_new_tokens: usize,
    /// Stop strings, matched on the decoded text across token boundaries.
    pub stop_sequences: Vec<String>,
    /// Whether a matched stop string stays in the text (TGI: yes; OpenAI: no).
    pub include_stop_sequence: bool,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    EosToken,
    StopSequence,
}

impl FinishReason {
    /// TGI's name.
    pub fn as_tgi(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken => "eos_token",
            FinishReason::StopSequence => "stop_sequence",
        }
    }

    /// OpenAI's name.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken | FinishReason::StopSequence => "stop",
        }
    }
}

/// One token with its text and logprob.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    /// The token's own text (special tokens included), as TGI reports it in `tokens`.
    pub text: String,
    /// ln p under the processed distribution the token was chosen from (for prompt
    /// tokens: under the model's raw distribution; NaN for the first prompt token).
    pub logprob: f32,
    pub special: bool,
}

/// A generated token as streamed to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub token: TokenInfo,
    /// The text this token adds to the output: empty while a multi-byte character or a
    /// possible stop sequence is held back, and for special tokens. Concatenated over the
    /// stream it is exactly the candidate's final `text`.
    pub text_piece: String,
    /// The `top_n_tokens` most likely alternatives, most likely first.
    pub top_tokens: Vec<TokenInfo>,
}

/// Events of one request, in order: `Prefill` (only when prompt logprobs were asked),
/// then `Token`s (interleaved across candidates), one `CandidateFinished` per candidate,
/// then exactly one terminal `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    Prefill {
        tokens: Vec<TokenInfo>,
    },
    Token {
        candidate: usize,
        token: GeneratedToken,
        /// This is the candidate's last token: its `CandidateFinished` follows at once.
        last: bool,
    },
    CandidateFinished {
        candidate: usize,
        reason: FinishReason,
        /// The full generated text (special tokens skipped; stop sequence kept or cut
        /// per `include_stop_sequence`).
        text: String,
        generated_tokens: usize,
        /// Sum of the chosen tokens' logprobs.
        cumulative_logprob: f64,
    },
    Done(Completion),
    Error(EngineError),
}

/// The terminal success event.
#[derive(Debug, Clone)]
pub struct Completion {
    pub prompt_tokens: usize,
    pub seed: u64,
    pub timings: Timings,
}

#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// When the engine received the request.
    pub queued: Instant,
    /// When its first prefill step ran.
    pub started: Instant,
    /// When its first token was sampled.
    pub first_token: Instant,
    pub finished: Instant,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// More than `max_concurrent_requests` in flight (HTTP 429).
    #[error("Model is overloaded")]
    Overloaded,
    /// The request cannot ever run here, e.g. needs more KV blocks than exist (HTTP 422).
    #[error("{0}")]
    Validation(String),
    /// The engine failed while running this request (HTTP 424 / 500).
    #[error("generation failed: {0}")]
    Generation(String),
    /// The engine is shutting down or has stopped (HTTP 503).
    #[error("the engine has stopped")]
    ShutDown,
}
