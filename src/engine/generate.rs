//! Greedy generation for a fixed set of prompts, run together: every step carries one
//! decode token per running sequence plus prompt chunks up to a token budget. This is the
//! path the CLI and the correctness tests use; the serving scheduler adds admission,
//! preemption and sampling on top of the same runner.

use anyhow::{bail, Result};

use super::runner::ModelRunner;
use super::sequence::Sequence;
use crate::sampling::argmax;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOutput {
    pub prompt_len: usize,
    pub generated: Vec<u32>,
    /// Stopped on an end-of-sequence token (which is included in `generated`).
    pub hit_eos: bool,
}

/// Runs `prompts` to completion. `max_step_tokens` bounds the tokens of one forward pass
/// (long prompts are prefilled in chunks); `on_token(prompt_index, token)` sees every new
/// token as it is produced.
pub fn generate_greedy(
    runner: &mut ModelRunner,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos_ids: &[u32],
    max_step_tokens: usize,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<GenerateOutput>> {
    if max_step_tokens == 0 {
        bail!("the step token budget must be at least 1");
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {i} is empty");
    }
    let mut seqs: Vec<Sequence> = prompts.iter().map(|p| Sequence::new(p.clone())).collect();
    let mut done: Vec<Option<bool>> = vec![None; prompts.len()];
    if max_new_tokens == 0 {
        done.iter_mut().for_each(|d| *d = Some(false));
    }
    let result = run(
        runner,
        &mut seqs,
        &mut done,
        max_new_tokens,
        eos_ids,
        max_step_tokens,
        &mut on_token,
    );
    for seq in seqs.iter_mut() {
        runner.release(seq)?;
    }
    result?;
    Ok(seqs
        .iter()
        .zip(done)
        .map(|(s, d)| GenerateOutput {
            prompt_len: s.prompt_len,
            generated: s.generated().to_vec(),
            hit_eos: d.unwrap_or(false),
        })
        .collect())
}

fn run(
    runner: &mut ModelRunner,
    seqs: &mut [Sequence],
    done: &mut [Option<bool>],
    max_new_tokens: usize,
    eos_ids: &[u32],
    max_step_tokens: usize,
    on_token: &mut impl FnMut(usize, u32),
) -> Result<()> {
    while done.iter().any(|d| d.is_none()) {
        // Decodes first (one token each), then prompt chunks while the budget lasts.
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut budget = max_step_tokens;
        for decode_pass in [true, false] {
            for (i, seq) in seqs.iter().enumerate() {
                let pending = seq.num_pending();
                if done[i].is_some() || budget == 0 || (pending == 1) != decode_pass {
                    continue;
                }
                let n = pending.min(budget);
                budget -= n;
                plan.push((i, n));
            }
        }
        for &(i, n) in &plan {
            runner.reserve(&mut seqs[i], n)?;
        }
        let completes: Vec<bool> = plan
            .iter()
            .map(|&(i, n)| seqs[i].num_pending() == n)
            .collect();
        let logits = {
            let mut items: Vec<(&mut Sequence, usize)> = Vec::with_capacity(plan.len());
            let mut rest: Vec<Option<&mut Sequence>> = seqs.iter_mut().map(Some).collect();
            for &(i, n) in &plan {
                if let Some(seq) = rest[i].take() {
                    items.push((seq, n));
                }
            }
            runner.step(&mut items)?
        };
        for (row, (&(i, _), &complete)) in plan.iter().zip(&completes).enumerate() {
            if !complete {
                continue;
            }
            let row_logits = logits.get(row)?.to_vec1::<f32>()?;
            let token = argmax(&row_logits).ok_or_else(|| anyhow::anyhow!("empty logits"))?;
            seqs[i].tokens.push(token);
            on_token(i, token);
            let eos = eos_ids.contains(&token);
            if eos || seqs[i].generated().len() >= max_new_tokens {
                done[i] = Some(eos);
            }
        }
    }
    Ok(())
}
