//! Greedy generation for a fixed set of prompts, run together through the engine's own
//! step loop: each prompt is submitted as a greedy request, then the engine steps until
//! every request is answered (nano-vllm's `generate`: `add_request` + `step`). The CLI
//! and the reference tests use it, so they check the path the server runs: the same
//! scheduler (chunked prefill within `max_batch_prefill_tokens`, prefix caching,
//! preemption), sampler, detokenizer and stop rules.

use anyhow::{bail, Result};

use super::core::EngineCore;
use super::request::{
    EngineError, Event, FinishReason, GeneratedToken, GenerationRequest, StoppingParams,
};
use super::EventReceiver;
use crate::sampling::SamplingParams;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOutput {
    pub prompt_len: usize,
    pub generated: Vec<u32>,
    /// Stopped on an end-of-sequence token (which is included in `generated`).
    pub hit_eos: bool,
}

/// The greedy request for one prompt; with `stop_at_eos` false it runs to
/// `max_new_tokens` whatever it generates.
pub fn greedy_request(
    id: u64,
    prompt: Vec<u32>,
    max_new_tokens: usize,
    stop_at_eos: bool,
) -> GenerationRequest {
    GenerationRequest {
        id,
        prompt,
        sampling: SamplingParams::default(),
        stopping: StoppingParams {
            max_new_tokens,
            stop_sequences: Vec::new(),
            include_stop_sequence: true,
            ignore_eos: !stop_at_eos,
        },
        top_n_tokens: 0,
        prompt_logprobs: false,
        candidates: 1,
    }
}

/// Runs `prompts` to completion on `engine`, greedily, each for at most
/// `max_new_tokens` (and up to an end-of-sequence token with `stop_at_eos`).
/// `on_token(prompt_index, token)` sees every new token as it is produced, with its
/// text piece.
pub fn generate_greedy(
    engine: &mut EngineCore,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_at_eos: bool,
    mut on_token: impl FnMut(usize, &GeneratedToken),
) -> Result<Vec<GenerateOutput>> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {i} is empty");
    }
    let mut outputs: Vec<GenerateOutput> = prompts
        .iter()
        .map(|p| GenerateOutput {
            prompt_len: p.len(),
            generated: Vec::new(),
            hit_eos: false,
        })
        .collect();
    if max_new_tokens == 0 {
        return Ok(outputs);
    }
    let mut receivers: Vec<EventReceiver> = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let request = greedy_request(i as u64, p.clone(), max_new_tokens, stop_at_eos);
        receivers.push(engine.submit(request)?);
    }
    let mut done = vec![false; prompts.len()];
    while done.iter().any(|d| !d) {
        if !engine.has_work() {
            bail!("the engine stopped before every prompt was answered");
        }
        engine.step();
        for (i, rx) in receivers.iter_mut().enumerate() {
            while let Ok(event) = rx.try_recv() {
                match event {
                    Event::Token { token, .. } => {
                        outputs[i].generated.push(token.token.id);
                        on_token(i, &token);
                    }
                    Event::CandidateFinished { reason, .. } => {
                        outputs[i].hit_eos = reason == FinishReason::EosToken;
                    }
                    Event::Done(_) => done[i] = true,
                    Event::Error(e) => return Err(anyhow::Error::new(e)),
                    Event::Prefill { .. } => {}
                }
            }
        }
    }
    Ok(outputs)
}

/// Runs one request to its end on `engine` and returns its terminal event's
/// completion, for timing it.
pub fn run_to_end(
    engine: &mut EngineCore,
    request: GenerationRequest,
) -> Result<super::Completion, EngineError> {
    let mut rx = engine.submit(request)?;
    loop {
        while let Ok(event) = rx.try_recv() {
            match event {
                Event::Done(c) => return Ok(c),
                Event::Error(e) => return Err(e),
                _ => {}
            }
        }
        if !engine.has_work() {
            return Err(EngineError::ShutDown);
        }
        engine.step();
    }
}
