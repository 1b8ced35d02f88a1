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
        grammar: None,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{CacheConfig, EngineConfig, EngineStats, ModelRunner};
    use crate::model::random::{load, RandomShape, RandomSpec};
    use candle_core::{DType, Device};

    fn engine() -> EngineCore {
        let spec = RandomSpec {
            shape: RandomShape::Tiny,
            seed: 2,
        };
        let (model, tok) = load(spec, DType::F32, &Device::Cpu).unwrap();
        let cache = CacheConfig {
            block_size: 16,
            num_blocks: 16,
        };
        let config = EngineConfig {
            check_invariants: true,
            ..Default::default()
        };
        EngineCore::new(
            ModelRunner::new(model, cache),
            Arc::new(tok),
            Arc::new(EngineStats::default()),
            config,
        )
    }

    #[test]
    fn every_prompt_gets_its_tokens_and_the_blocks_come_back() {
        let mut e = engine();
        let prompts = vec![vec![3, 4, 5], vec![9; 20]];
        let mut seen = vec![0; 2];
        let out = generate_greedy(&mut e, &prompts, 5, false, |i, _| seen[i] += 1).unwrap();
        assert_eq!(seen, vec![5, 5]);
        assert_eq!(
            out.iter()
                .map(|o| (o.prompt_len, o.generated.len()))
                .collect::<Vec<_>>(),
            vec![(3, 5), (20, 5)]
        );
        assert!(!e.has_work());
        assert_eq!(e.pool().num_used(), 0);
        assert_eq!(e.stats().in_flight, 0);
        assert_eq!(e.stats().requests_finished, 2);
    }

    #[test]
    fn no_new_tokens_runs_nothing_and_empty_prompts_are_refused() {
        let mut e = engine();
        let out = generate_greedy(&mut e, &[vec![1, 2]], 0, false, |_, _| {}).unwrap();
        assert_eq!(out[0].generated, Vec::<u32>::new());
        assert_eq!(e.stats().steps, 0);
        assert!(generate_greedy(&mut e, &[vec![1], vec![]], 3, false, |_, _| {}).is_err());
    }

    #[test]
    fn a_request_runs_to_its_end_with_ordered_timings() {
        let mut e = engine();
        let c = run_to_end(&mut e, greedy_request(0, vec![5; 30], 4, false)).unwrap();
        let t = c.timings;
        assert_eq!(c.prompt_tokens, 30);
        assert!(t.queued <= t.started && t.started <= t.first_token);
        assert!(t.first_token <= t.finished);
        // Longer than the cache: refused before it runs.
        let err = run_to_end(&mut e, greedy_request(1, vec![5; 300], 4, false)).unwrap_err();
        assert!(matches!(err, EngineError::Validation(_)), "{err:?}");
    }
}
