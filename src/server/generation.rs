//! Gathering a request's engine events into a finished result (non-streaming answers).

use super::error::ApiError;
use crate::engine::{Completion, Event, EventReceiver, FinishReason, TokenInfo};

#[derive(Debug, Clone)]
pub struct CandidateResult {
    pub index: usize,
    pub text: String,
    pub reason: FinishReason,
    pub generated_tokens: usize,
    pub cumulative_logprob: f64,
    pub tokens: Vec<TokenInfo>,
    pub top_tokens: Vec<Vec<TokenInfo>>,
}

impl CandidateResult {
    /// Mean logprob per generated token (TGI's best_of criterion).
    pub fn mean_logprob(&self) -> f64 {
        self.cumulative_logprob / self.generated_tokens.max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct GenerationResult {
    pub prefill: Vec<TokenInfo>,
    /// In candidate order.
    pub candidates: Vec<CandidateResult>,
    pub completion: Completion,
}

impl GenerationResult {
    pub fn generated_tokens(&self) -> usize {
        self.candidates.iter().map(|c| c.generated_tokens).sum()
    }
}

/// Waits for all of a request's events. Dropping the future drops `rx`, which cancels
/// the request in the engine.
pub async fn collect(
    mut rx: EventReceiver,
    candidates: usize,
) -> Result<GenerationResult, ApiError> {
    let mut prefill = Vec::new();
    let mut tokens: Vec<Vec<TokenInfo>> = vec![Vec::new(); candidates];
    let mut tops: Vec<Vec<Vec<TokenInfo>>> = vec![Vec::new(); candidates];
    let mut done: Vec<Option<CandidateResult>> = vec![None; candidates];
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Prefill { tokens } => prefill = tokens,
            Event::Token {
                candidate, token, ..
            } => {
                if candidate < candidates {
                    tokens[candidate].push(token.token);
                    tops[candidate].push(token.top_tokens);
                }
            }
            Event::CandidateFinished {
                candidate,
                reason,
                text,
                generated_tokens,
                cumulative_logprob,
            } => {
                if candidate < candidates {
                    done[candidate] = Some(CandidateResult {
                        index: candidate,
                        text,
                        reason,
                        generated_tokens,
                        cumulative_logprob,
                        tokens: std::mem::take(&mut tokens[candidate]),
                        top_tokens: std::mem::take(&mut tops[candidate]),
                    });
                }
            }
            Event::Done(completion) => {
                let candidates: Option<Vec<_>> = done.into_iter().collect();
                return match candidates {
                    Some(candidates) => Ok(GenerationResult {
                        prefill,
                        candidates,
                        completion,
                    }),
                    None => Err(ApiError::incomplete()),
                };
            }
            Event::Error(e) => return Err(e.into()),
        }
    }
    Err(ApiError::incomplete())
}
