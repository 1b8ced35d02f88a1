//! A request's stream gathered into finished results (the non-streaming answers).

use super::error::ApiError;
use super::stream::{CandidateEnd, Finished, GenerationStream, Item, Ledger};
use crate::engine::{Completion, FinishReason, TokenInfo};

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

/// One prompt's result.
#[derive(Debug, Clone)]
pub struct GenerationResult {
    pub prefill: Vec<TokenInfo>,
    /// In candidate order.
    pub candidates: Vec<CandidateResult>,
    pub completion: Completion,
}

/// One candidate's tokens and their alternatives, as they arrive.
#[derive(Default, Clone)]
struct Gathered {
    tokens: Vec<TokenInfo>,
    top_tokens: Vec<Vec<TokenInfo>>,
}

impl<L: Ledger> GenerationStream<L> {
    /// Waits for the whole request: one result per prompt, in prompt order, and what the
    /// request reports. The error (already logged) is the stream's terminal failure.
    /// Dropping the future drops the stream, which cancels the request in the engine.
    pub async fn collect(mut self) -> Result<(Vec<GenerationResult>, Finished), ApiError> {
        let mut prefill: Vec<Vec<TokenInfo>> = Vec::new();
        let mut gathered: Vec<Vec<Gathered>> = Vec::new();
        while let Some(item) = self.next().await {
            match item {
                Item::Prefill { prompt, tokens } => {
                    if prefill.len() <= prompt {
                        prefill.resize(prompt + 1, Vec::new());
                    }
                    prefill[prompt] = tokens;
                }
                Item::Token {
                    prompt,
                    candidate,
                    token,
                    ..
                } => {
                    if gathered.len() <= prompt {
                        gathered.resize(prompt + 1, Vec::new());
                    }
                    let g = &mut gathered[prompt];
                    if g.len() <= candidate {
                        g.resize(candidate + 1, Gathered::default());
                    }
                    g[candidate].tokens.push(token.token);
                    g[candidate].top_tokens.push(token.top_tokens);
                }
                Item::Finished(f) => return Ok((results(&f, prefill, gathered), f)),
                Item::Failed(e) => return Err(e),
            }
        }
        // `next` always ends with a terminal item.
        Err(ApiError::incomplete())
    }
}

fn results(
    f: &Finished,
    mut prefill: Vec<Vec<TokenInfo>>,
    mut gathered: Vec<Vec<Gathered>>,
) -> Vec<GenerationResult> {
    f.completions
        .iter()
        .zip(&f.ends)
        .enumerate()
        .map(|(p, (completion, ends))| {
            let mut g = gathered.get_mut(p).map(std::mem::take).unwrap_or_default();
            g.resize(ends.len(), Gathered::default());
            GenerationResult {
                prefill: prefill.get_mut(p).map(std::mem::take).unwrap_or_default(),
                candidates: ends
                    .iter()
                    .zip(g)
                    .enumerate()
                    .map(|(index, (e, g))| candidate(index, e, g))
                    .collect(),
                completion: completion.clone(),
            }
        })
        .collect()
}

fn candidate(index: usize, e: &CandidateEnd, g: Gathered) -> CandidateResult {
    CandidateResult {
        index,
        text: e.text.clone(),
        reason: e.reason,
        generated_tokens: e.generated_tokens,
        cumulative_logprob: e.cumulative_logprob,
        tokens: g.tokens,
        top_tokens: g.top_tokens,
    }
}
