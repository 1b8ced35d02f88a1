//! Choosing the next token from logits: logits processors and warpers with TGI and
//! OpenAI semantics, a seeded sampler per sequence, logprobs, and stop sequences.
//!
//! Where TGI and OpenAI differ, the choices are:
//! - `do_sample = false` is greedy whatever temperature, top_k, top_p, typical_p and
//!   min_p say (TGI's router turns sampling on when they are set; the server decides what
//!   `do_sample` is); logit_bias and the penalties still apply.
//! - The repetition penalty is TGI's (over the distinct prompt and generated tokens);
//!   frequency and presence penalties are OpenAI's (over generated tokens only, by count).
//! - The reported logprob is under the distribution the token was chosen from: when
//!   sampling, after temperature and truncation, renormalised (TGI's `logprob`); when
//!   greedy, the log-softmax after logit_bias and penalties, without temperature (the
//!   warpers do not apply). vLLM and OpenAI report the raw model logprob instead; for
//!   that, [`log_softmax_at`] of the raw row.
//! - Stop sequences cut at the first point where any stop string is complete (the
//!   longest of those ending there); the stop string stays in the text or not as asked
//!   (TGI: stays, OpenAI: does not).

mod adjust;
pub mod gumbel;
mod logprobs;
mod params;
mod processors;
mod sampler;
mod stop;

pub use adjust::LogitAdjust;
pub use logprobs::{
    log_softmax_at, log_softmax_in_place, log_sum_exp, prompt_logprob, top_logprobs,
};
pub use params::SamplingParams;
pub use sampler::{NoToken, Sampled, Sampler};
pub use stop::{StopSequences, StopStep};

/// Index of the largest value (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn argmax_picks_first_maximum() {
        assert_eq!(super::argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(super::argmax(&[]), None);
    }
}
