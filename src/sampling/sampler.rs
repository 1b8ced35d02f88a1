//! The per-sequence sampler: processors, warpers and a seeded draw.

use super::gumbel::{tempered, GumbelMax};
use super::logprobs::{
    by_value_desc, exp_into, gather_at_least, lane_sum, max_of, sum_exp, sum_exp_and_moment,
    sum_exp_blocks, TopSelect, BLOCK, SUM_BLOCK,
};
use super::processors::{
    apply_logit_bias, in_nucleus, max_logit, min_p_filter, nucleus_last, typical_filter, weights,
    Penalties,
};
use super::SamplingParams;

/// No token can be chosen from a row: every logit is -inf or NaN (after logit_bias and the
/// penalties). The request fails; no arbitrary token is made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no token can be chosen: every logit is -inf or NaN after logit_bias and penalties")]
pub struct NoToken;

/// One chosen token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub id: u32,
    /// ln p of `id` under the distribution it was chosen from: for sampling, the
    /// processed and warped one (temperature, top_k, top_p, typical_p, min_p applied and
    /// renormalised, as TGI reports it); for greedy, the log-softmax of the logits after
    /// logit_bias and penalties, without temperature (greedy ignores the warpers).
    pub logprob: f32,
    /// The `top_n` most likely tokens of that same distribution as `(id, logprob)`, most
    /// likely first, ties by lower id. Only tokens of nonzero probability: when sampling
    /// with truncation, fewer than `top_n` if fewer survive it.
    pub top: Vec<(u32, f32)>,
}

/// Chooses the next tokens of one sequence (or one candidate of a best_of / n request).
/// Draws follow the one rule of [`super::gumbel`] (Gumbel-max keyed by the seed, the
/// step and the token), so a seeded sequence gives the same tokens whatever else is in
/// the batch, and the same as the device sampler draws; buffers are kept between steps,
/// so a step allocates nothing but the returned `top`.
///
/// Each step, in order (as TGI and vLLM): `logit_bias`; the repetition penalty (TGI:
/// over the distinct prompt and generated tokens, positive logits divided, negative
/// multiplied); frequency and presence penalties (OpenAI: over generated tokens,
/// `logit -= count * frequency + (count > 0) * presence`). Then with `do_sample`:
/// temperature, top_k (ties with the k-th logit kept, as Hugging Face's warper), top_p,
/// typical_p, min_p, each on the distribution renormalised after the previous one, and a
/// draw; without it, the argmax (the first one on ties) whatever the warpers say. A NaN
/// logit counts as -inf and +inf as the largest finite value.
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    penalties: Penalties,
    select: TopSelect,
    /// Candidates `(id, logit)` that survive truncation, in a deterministic order (the
    /// draw's): most likely first after top_k, else by id.
    cands: Vec<(u32, f32)>,
    /// `cands` is sorted most likely first.
    sorted: bool,
    weights: Vec<f32>,
    order: Vec<(f32, u32)>,
    scratch: Vec<(u32, f32, f32)>,
    top: Vec<(u32, f32)>,
    /// Block sums of the last whole-row normaliser.
    blocks: Vec<f32>,
    /// Weight per bin of the row's weights (top_p over the whole row).
    hist: Vec<f64>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// Bins of the weight histogram: a weight `w` in (0, 1] falls in bin
/// `HIST_TOP - (bits(w) >> 20)` (its exponent and 3 mantissa bits: 8 bins per octave,
/// larger weights in lower bins); 0 falls in the last.
const HIST_TOP: u32 = 0x3F80_0000 >> 20;
const HIST_BINS: usize = HIST_TOP as usize + 1;

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Self {
        Self {
            params: params.clone(),
            seed,
            penalties: Penalties::default(),
            select: TopSelect::default(),
            cands: Vec::new(),
            sorted: false,
            weights: Vec::new(),
            order: Vec::new(),
            scratch: Vec::new(),
            top: Vec::new(),
            blocks: Vec::new(),
            hist: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The device sampler's parameters for this row at generation step `step`, when it can
    /// sample it (temperature with top_k / top_p / min_p, after logit_bias and penalties,
    /// which [`Sampler::device_adjust`] lists; typical_p is the host sampler's). Draws then
    /// follow [`super::gumbel`]'s rule: the same distribution as [`Sampler::sample`], from
    /// a counter-based generator seeded by the request's seed.
    pub fn device_params(&self, step: u32) -> Option<super::gumbel::RowSample> {
        let p = &self.params;
        let t = p.temperature;
        let samples = p.do_sample && t > 0.0 && (1.0 / t).is_finite();
        (samples && p.typical_p >= 1.0).then(|| super::gumbel::RowSample {
            temperature: t,
            top_p: p.top_p,
            min_p: p.min_p,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            seed: self.seed,
            step,
            row: 0,
        })
    }

    /// True when [`Sampler::sample`] is an argmax of the logits after logit_bias and the
    /// penalties (no sampling). Such rows can be chosen on the device, after
    /// [`Sampler::device_adjust`], with the same result.
    pub fn is_greedy(&self) -> bool {
        let p = &self.params;
        let t = p.temperature;
        !(p.do_sample && t > 0.0 && (1.0 / t).is_finite())
    }

    /// Whether logit_bias or a penalty changes this sampler's logits.
    pub fn adjusts(&self) -> bool {
        let p = &self.params;
        !p.logit_bias.is_empty()
            || p.repetition_penalty != 1.0
            || p.frequency_penalty != 0.0
            || p.presence_penalty != 0.0
    }

    /// Lists in `out` what logit_bias and the penalties do to logits row `row` of a step
    /// (`vocab` wide), for a sequence with these `prompt` and `generated` tokens: what the
    /// device applies before choosing the row's token ([`super::adjust`]). Returns how
    /// many logits change.
    pub fn device_adjust(
        &mut self,
        prompt: &[u32],
        generated: &[u32],
        vocab: usize,
        row: usize,
        out: &mut super::LogitAdjust,
    ) -> usize {
        if !self.adjusts() {
            return 0;
        }
        let p = &self.params;
        if p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            self.penalties.prepare(vocab, prompt, generated);
        }
        out.push_row(row, vocab, &self.params, &self.penalties)
    }

    #[cfg(test)]
    pub(crate) fn process_for_test(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        generated: &[u32],
    ) {
        self.process(logits, prompt, generated);
    }

    /// Chooses the next token from one row of logits. `prompt` and `generated` are the
    /// sequence's tokens so far (for the penalties; the draw is keyed by
    /// `generated.len()`). On return `logits` holds the logits after logit_bias and
    /// penalties (what greedy takes the argmax of), NaN as -inf and +inf as `f32::MAX`;
    /// temperature and the other warpers work on internal buffers. A logit of -inf is
    /// never chosen; a row with nothing else is [`NoToken`].
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        generated: &[u32],
        top_n: usize,
    ) -> Result<Sampled, NoToken> {
        self.process(logits, prompt, generated);
        let t = self.params.temperature;
        if !(self.params.do_sample && t > 0.0 && (1.0 / t).is_finite()) {
            return self.greedy(logits, top_n);
        }
        let draw = GumbelMax::new(self.seed, generated.len() as u32);
        let inv_t = 1.0 / t;
        if self.truncate(logits, inv_t) {
            self.draw_candidates(inv_t, draw, top_n)
        } else {
            self.draw_full(logits, inv_t, draw, top_n)
        }
    }

    /// logit_bias, then the penalties; then NaN becomes -inf (never chosen) and +inf the
    /// largest finite value (so that sums and differences stay numbers).
    fn process(&mut self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        let p = &self.params;
        apply_logit_bias(logits, &p.logit_bias);
        self.penalties.apply(
            logits,
            prompt,
            generated,
            p.repetition_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        );
        for x in logits.iter_mut() {
            if x.is_nan() {
                *x = f32::NEG_INFINITY;
            } else if *x == f32::INFINITY {
                *x = f32::MAX;
            }
        }
    }

    /// The argmax and its log-softmax, `-ln(sum exp(x - max))`: finite whenever there is a
    /// token (the maximum's own term is 1).
    fn greedy(&mut self, logits: &[f32], top_n: usize) -> Result<Sampled, NoToken> {
        let (id, m) = argmax_and_max(logits);
        if m == f32::NEG_INFINITY {
            return Err(NoToken);
        }
        let lnz = sum_exp(logits, m, 1.0).ln() as f32;
        let mut top = Vec::new();
        if top_n > 0 {
            self.select.select(logits, top_n, false, &mut self.cands);
            top.extend(self.cands.iter().map(|&(i, x)| (i, (x - m) - lnz)));
        }
        Ok(Sampled {
            id,
            logprob: -lnz,
            top,
        })
    }

    /// Applies top_k, top_p, typical_p and min_p. Returns false when none is on (the
    /// distribution is the whole row), else leaves the surviving tokens in `cands`.
    fn truncate(&mut self, logits: &[f32], inv_t: f32) -> bool {
        let p = &self.params;
        let vocab = logits.len();
        let top_k = if p.top_k > 0 && p.top_k < vocab {
            p.top_k
        } else {
            0
        };
        let (top_p, typical_p, min_p) = (p.top_p, p.typical_p, p.min_p);
        let (use_p, use_typical, use_min) = (top_p < 1.0, typical_p < 1.0, min_p > 0.0);
        if top_k == 0 && !use_p && !use_typical && !use_min {
            return false;
        }
        // The first active filter builds the candidate list from the row without
        // looking at more of it than needed; the later ones work on the list.
        let (mut p_done, mut typical_done, mut min_done) = (false, false, false);
        self.sorted = top_k > 0;
        if top_k > 0 {
            self.select.select(logits, top_k, true, &mut self.cands);
        } else if use_p {
            self.nucleus(logits, inv_t, top_p);
            p_done = true;
        } else if use_typical {
            self.typical_over_row(logits, inv_t, typical_p);
            typical_done = true;
        } else {
            let m = max_of(logits);
            // A little below the exact threshold; the exact test follows.
            let threshold = m + (min_p.ln() - 1e-3) / inv_t;
            gather_at_least(logits, threshold, &mut self.cands);
            min_p_filter(&mut self.cands, inv_t, min_p);
            min_done = true;
        }
        if self.cands.is_empty() {
            return false;
        }
        if use_p && !p_done {
            let m = max_logit(&self.cands);
            weights(&self.cands, m, inv_t, &mut self.weights);
            let z: f64 = self.weights.iter().map(|&w| w as f64).sum();
            let last = nucleus_last(&self.cands, &self.weights, z, top_p, &mut self.scratch);
            self.cands.retain(|&e| in_nucleus(e, last));
        }
        if use_typical && !typical_done {
            let m = max_logit(&self.cands);
            weights(&self.cands, m, inv_t, &mut self.weights);
            let (mut z, mut moment) = (0f64, 0f64);
            for (c, &w) in self.cands.iter().zip(&self.weights) {
                z += w as f64;
                if w > 0.0 {
                    moment += w as f64 * ((c.1 - m) * inv_t) as f64;
                }
            }
            typical_filter(
                &mut self.cands,
                &self.weights,
                m,
                inv_t,
                z,
                moment,
                typical_p,
                &mut self.order,
            );
        }
        if use_min && !min_done {
            min_p_filter(&mut self.cands, inv_t, min_p);
        }
        true
    }

    /// top_p over the whole row: one pass computes the weights, their total and a
    /// histogram of them (by exponent); the bins holding the nucleus give a threshold, and
    /// only the tokens above it are gathered and searched.
    fn nucleus(&mut self, logits: &[f32], inv_t: f32, top_p: f32) {
        let m = max_of(logits);
        if !m.is_finite() {
            self.cands.clear();
            return;
        }
        self.hist.clear();
        self.hist.resize(2 * HIST_BINS, 0.0);
        let (even, odd) = self.hist.split_at_mut(HIST_BINS);
        let mut z = 0f64;
        let mut w = [0f32; SUM_BLOCK];
        for block in logits.chunks(SUM_BLOCK) {
            let w = &mut w[..block.len()];
            exp_into(block, m, inv_t, w);
            z += lane_sum(w) as f64;
            // Two histograms, so consecutive adds to one bin do not wait on each other.
            let mut it = w.chunks_exact(2);
            for pair in &mut it {
                even[hist_bin(pair[0])] += pair[0] as f64;
                odd[hist_bin(pair[1])] += pair[1] as f64;
            }
            for &x in it.remainder() {
                even[hist_bin(x)] += x as f64;
            }
        }
        // Tokens in bins after `cut` have at least top_p of the mass before them.
        let limit = top_p as f64 * z;
        let mut cum = 0f64;
        let mut cut = HIST_BINS - 1;
        for b in 0..HIST_BINS {
            cum += even[b] + odd[b];
            if cum >= limit {
                cut = b;
                break;
            }
        }
        // One more bin against rounding; its lower edge as a logit threshold.
        let edge_bin = (cut + 1).min(HIST_BINS - 1) as u32;
        let threshold = if edge_bin + 1 >= HIST_BINS as u32 {
            f32::NEG_INFINITY
        } else {
            let w_low = f32::from_bits((HIST_TOP - edge_bin) << 20);
            m + (w_low.ln() - 1e-4) / inv_t
        };
        gather_at_least(logits, threshold, &mut self.cands);
        weights(&self.cands, m, inv_t, &mut self.weights);
        let last = nucleus_last(&self.cands, &self.weights, z, top_p, &mut self.scratch);
        self.cands.retain(|&e| in_nucleus(e, last));
    }

    /// typical_p over the whole row: the entropy from one pass, then only the tokens
    /// whose shift `|-ln p - H|` is within a widening bound are gathered.
    fn typical_over_row(&mut self, logits: &[f32], inv_t: f32, mass: f32) {
        let m = max_of(logits);
        if !m.is_finite() {
            self.cands.clear();
            return;
        }
        let (z, moment) = sum_exp_and_moment(logits, m, inv_t);
        let lnz = z.ln();
        let c = (lnz - (lnz - moment / z)) as f32;
        let shift = |x: f32| (c - (x - m) * inv_t).abs();
        let mut eps = 1.0f32;
        loop {
            let all = eps > 1e4;
            let low = if all {
                f32::NEG_INFINITY
            } else {
                m + (c - eps - 1e-3) / inv_t
            };
            gather_at_least(logits, low, &mut self.cands);
            if !all {
                self.cands.retain(|e| shift(e.1) <= eps);
            }
            weights(&self.cands, m, inv_t, &mut self.weights);
            let got: f64 = self.weights.iter().map(|&w| w as f64).sum::<f64>() / z;
            if got >= mass as f64 || all {
                break;
            }
            eps *= 4.0;
        }
        typical_filter(
            &mut self.cands,
            &self.weights,
            m,
            inv_t,
            z,
            moment,
            mass,
            &mut self.order,
        );
    }

    /// The draw among the candidates that survived truncation.
    fn draw_candidates(
        &mut self,
        inv_t: f32,
        mut draw: GumbelMax,
        top_n: usize,
    ) -> Result<Sampled, NoToken> {
        let m = max_logit(&self.cands);
        weights(&self.cands, m, inv_t, &mut self.weights);
        let z: f64 = self.weights.iter().map(|&w| w as f64).sum();
        for &(i, x) in &self.cands {
            draw.offer(i, tempered(x, m, inv_t));
        }
        let id = draw.token().ok_or(NoToken)?;
        let x = self
            .cands
            .iter()
            .find(|c| c.0 == id)
            .map_or(f32::NEG_INFINITY, |c| c.1);
        let lnz = z.ln() as f32;
        let logprob = |x: f32| (x - m) * inv_t - lnz;
        let n = top_n.min(self.cands.len());
        let top: &[(u32, f32)] = if self.sorted || n == 0 {
            &self.cands[..n]
        } else {
            self.top.clear();
            self.top.extend_from_slice(&self.cands);
            self.top.select_nth_unstable_by(n - 1, by_value_desc);
            self.top.truncate(n);
            self.top.sort_unstable_by(by_value_desc);
            &self.top
        };
        Ok(Sampled {
            id,
            logprob: logprob(x),
            top: top.iter().map(|&(i, x)| (i, logprob(x))).collect(),
        })
    }

    /// A draw from the whole row at temperature `1 / inv_t`. The maximum is offered first,
    /// so the draw then skips, without noise, every token too far below it to win.
    fn draw_full(
        &mut self,
        logits: &[f32],
        inv_t: f32,
        mut draw: GumbelMax,
        top_n: usize,
    ) -> Result<Sampled, NoToken> {
        let (first, m) = argmax_and_max(logits);
        if m == f32::NEG_INFINITY {
            return Err(NoToken);
        }
        draw.offer(first, 0.0);
        for (i, &x) in logits.iter().enumerate() {
            draw.offer(i as u32, tempered(x, m, inv_t));
        }
        let id = draw.token().ok_or(NoToken)? as usize;
        let z = sum_exp_blocks(logits, m, inv_t, Some(&mut self.blocks));
        let lnz = z.ln() as f32;
        let logprob = |x: f32| (x - m) * inv_t - lnz;
        let mut top = Vec::new();
        if top_n > 0 {
            self.select.select(logits, top_n, false, &mut self.cands);
            top.extend(self.cands.iter().map(|&(i, x)| (i, logprob(x))));
        }
        Ok(Sampled {
            id: id as u32,
            logprob: logprob(logits[id]),
            top,
        })
    }

    /// The probability of every token of the row under the distribution `sample` would
    /// draw from (for tests).
    #[cfg(test)]
    pub(crate) fn probabilities(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        generated: &[u32],
    ) -> Vec<f64> {
        self.process(logits, prompt, generated);
        let mut out = vec![0f64; logits.len()];
        if !self.params.do_sample {
            out[argmax_and_max(logits).0 as usize] = 1.0;
            return out;
        }
        let inv_t = 1.0 / self.params.temperature;
        if self.truncate(logits, inv_t) {
            let m = max_logit(&self.cands);
            weights(&self.cands, m, inv_t, &mut self.weights);
            let z: f64 = self.weights.iter().map(|&w| w as f64).sum();
            for (c, &w) in self.cands.iter().zip(&self.weights) {
                out[c.0 as usize] = w as f64 / z;
            }
        } else {
            let m = max_of(logits);
            let z = sum_exp(logits, m, inv_t);
            for (o, &x) in out.iter_mut().zip(logits.iter()) {
                *o = super::logprobs::exp1((x - m) * inv_t) as f64 / z;
            }
        }
        out
    }
}

/// The histogram bin of a weight in [0, 1] (see [`HIST_TOP`]).
#[inline(always)]
fn hist_bin(w: f32) -> usize {
    (HIST_TOP.saturating_sub(w.to_bits() >> 20) as usize).min(HIST_BINS - 1)
}

/// The first index of the maximum and the maximum (NaN ignored; index 0 and -inf when
/// there is no value above -inf). Whole blocks are compared first.
fn argmax_and_max(v: &[f32]) -> (u32, f32) {
    let (mut best, mut m) = (0usize, f32::NEG_INFINITY);
    for (b, block) in v.chunks(BLOCK).enumerate() {
        let bm = max_of(block);
        if bm > m {
            let j = block.iter().position(|&x| x == bm).unwrap_or(0);
            best = b * BLOCK + j;
            m = bm;
        }
    }
    (best as u32, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            do_sample: true,
            ..SamplingParams::default()
        }
    }

    /// Hugging Face's warpers, in f64 with full sorts: the distribution after
    /// temperature, top_k, top_p, typical_p and min_p (penalties not included).
    #[allow(clippy::needless_range_loop)]
    fn reference(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
        let n = logits.len();
        let s: Vec<f64> = logits
            .iter()
            .map(|&x| x as f64 / p.temperature as f64)
            .collect();
        let mut alive: Vec<bool> = logits.iter().map(|&x| x > f32::NEG_INFINITY).collect();
        let probs = |alive: &[bool]| -> Vec<f64> {
            let m = (0..n)
                .filter(|&i| alive[i])
                .map(|i| s[i])
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = (0..n)
                .map(|i| if alive[i] { (s[i] - m).exp() } else { 0.0 })
                .collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let by_prob = |pr: &[f64], alive: &[bool]| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
            idx.sort_by(|&a, &b| pr[b].total_cmp(&pr[a]).then(a.cmp(&b)));
            idx
        };
        if p.top_k > 0 && p.top_k < n {
            let mut v: Vec<f64> = (0..n).filter(|&i| alive[i]).map(|i| s[i]).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            if v.len() >= p.top_k {
                let kth = v[p.top_k - 1];
                for i in 0..n {
                    alive[i] &= s[i] >= kth;
                }
            }
        }
        if p.top_p < 1.0 {
            let pr = probs(&alive);
            let mut cum = 0.0;
            for (r, i) in by_prob(&pr, &alive).into_iter().enumerate() {
                if r > 0 && cum >= p.top_p as f64 {
                    alive[i] = false;
                }
                cum += pr[i];
            }
        }
        if p.typical_p < 1.0 {
            let pr = probs(&alive);
            let ent: f64 = (0..n)
                .filter(|&i| alive[i] && pr[i] > 0.0)
                .map(|i| -pr[i] * pr[i].ln())
                .sum();
            let shift = |i: usize| (-pr[i].ln() - ent).abs();
            let mut idx: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
            idx.sort_by(|&a, &b| shift(a).total_cmp(&shift(b)).then(a.cmp(&b)));
            let mut cum = 0.0;
            let mut last = idx.len() - 1;
            for (r, &i) in idx.iter().enumerate() {
                cum += pr[i];
                if cum >= p.typical_p as f64 {
                    last = r;
                    break;
                }
            }
            let limit = shift(idx[last]);
            for i in 0..n {
                alive[i] = alive[i] && shift(i) <= limit + 1e-9;
            }
        }
        if p.min_p > 0.0 {
            let pr = probs(&alive);
            let pmax = pr.iter().cloned().fold(0.0, f64::max);
            for i in 0..n {
                alive[i] &= pr[i] >= p.min_p as f64 * pmax;
            }
        }
        probs(&alive)
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                *g > 0.0,
                *w > 0.0,
                "{what}: support differs at {i} ({g} vs {w})"
            );
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w,
                "{what}: token {i}: {g} vs {w}"
            );
        }
    }

    fn probs(p: &SamplingParams, logits: &[f32]) -> Vec<f64> {
        Sampler::new(p, 0).probabilities(&mut logits.to_vec(), &[], &[])
    }

    /// Deterministic pseudo-random logits, roughly normal with standard deviation `sd`.
    fn random_logits(n: usize, sd: f32, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                let mut acc = 0f32;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                acc * sd * 1.7
            })
            .collect()
    }

    #[test]
    fn greedy_ignores_warpers_and_reports_untempered_logprob() {
        let p = SamplingParams {
            do_sample: false,
            temperature: 0.5,
            top_k: 1,
            top_p: 0.1,
            logit_bias: vec![(0, 1.0)],
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&p, 7);
        // After the bias, tokens 0 and 2 tie at 3.0: the first wins.
        let mut logits = [2.0f32, 1.0, 3.0, -1.0];
        let out = s.sample(&mut logits, &[], &[], 3).unwrap();
        assert_eq!(out.id, 0);
        assert_eq!(logits, [3.0, 1.0, 3.0, -1.0], "logits after bias");
        let lse = (3f64.exp() * 2.0 + 1f64.exp() + (-1f64).exp()).ln();
        assert!((out.logprob as f64 - (3.0 - lse)).abs() < 1e-6);
        let ids: Vec<u32> = out.top.iter().map(|e| e.0).collect();
        assert_eq!(ids, vec![0, 2, 1]);
        assert!((out.top[2].1 as f64 - (1.0 - lse)).abs() < 1e-6);
        // Penalties do change greedy.
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::default()
        };
        let mut logits = [2.0f32, 1.5, 0.0];
        assert_eq!(
            Sampler::new(&p, 0)
                .sample(&mut logits, &[0], &[], 0)
                .unwrap()
                .id,
            1
        );
        assert_eq!(logits, [1.0, 1.5, 0.0]);
    }

    #[test]
    fn temperature_by_hand() {
        let p = SamplingParams {
            temperature: 0.5,
            ..params()
        };
        let got = probs(&p, &[1.0, 0.0, -1.0]);
        // Logits doubled: e^2 : e^0 : e^-2.
        let z = 2f64.exp() + 1.0 + (-2f64).exp();
        assert_close(
            &got,
            &[2f64.exp() / z, 1.0 / z, (-2f64).exp() / z],
            "temperature",
        );
    }

    #[test]
    fn top_k_by_hand_keeps_ties() {
        let p = SamplingParams {
            top_k: 2,
            ..params()
        };
        let got = probs(&p, &[1.0, 3.0, 2.0, 2.0, 0.0]);
        // The 2nd largest is 2.0, held by tokens 2 and 3: both kept.
        let z = 3f64.exp() + 2.0 * 2f64.exp();
        let want = [0.0, 3f64.exp() / z, 2f64.exp() / z, 2f64.exp() / z, 0.0];
        assert_close(&got, &want, "top_k");
        let p = SamplingParams {
            top_k: 1,
            ..params()
        };
        assert_close(&probs(&p, &[1.0, 3.0, 2.0]), &[0.0, 1.0, 0.0], "top_k 1");
    }

    #[test]
    fn top_p_by_hand() {
        // probs 0.5, 0.25, 0.15, 0.1: with top_p 0.7, tokens whose preceding cumulative
        // probability is below 0.7 stay: 0.5 (0) and 0.25 (0.5); 0.15 comes after 0.75.
        let logits: Vec<f32> = [0.5f32, 0.25, 0.15, 0.1].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            top_p: 0.7,
            ..params()
        };
        assert_close(
            &probs(&p, &logits),
            &[0.5 / 0.75, 0.25 / 0.75, 0.0, 0.0],
            "top_p",
        );
        // top_p 0.8 alone keeps three (0.15 follows 0.75 < 0.8); after top_k 3 the
        // probabilities are 0.556, 0.278, 0.167 and 0.15 follows 0.833: two.
        let p = SamplingParams {
            top_p: 0.8,
            ..params()
        };
        assert_close(
            &probs(&p, &logits),
            &[0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0],
            "top_p",
        );
        let p = SamplingParams {
            top_k: 3,
            top_p: 0.8,
            ..params()
        };
        assert_close(
            &probs(&p, &logits),
            &[0.5 / 0.75, 0.25 / 0.75, 0.0, 0.0],
            "top_k then top_p",
        );
    }

    #[test]
    fn typical_p_by_hand() {
        // probs 0.4, 0.3, 0.3: the 0.3s are the typical ones (see processors' test).
        let logits: Vec<f32> = [0.4f32, 0.3, 0.3].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            typical_p: 0.5,
            ..params()
        };
        assert_close(&probs(&p, &logits), &[0.0, 0.5, 0.5], "typical_p");
    }

    #[test]
    fn min_p_by_hand() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            min_p: 0.25,
            ..params()
        };
        // Threshold 0.25 * 0.5 = 0.125: 0.05 goes.
        assert_close(
            &probs(&p, &logits),
            &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
            "min_p",
        );
        // After top_p 0.6 (0.5, 0.3 left), min_p 0.7 relative to 0.5 drops 0.3.
        let p = SamplingParams {
            top_p: 0.6,
            min_p: 0.7,
            ..params()
        };
        assert_close(&probs(&p, &logits), &[1.0, 0.0, 0.0, 0.0], "top_p, min_p");
    }

    #[test]
    fn warpers_match_reference_on_large_rows() {
        let cases = [
            SamplingParams {
                top_p: 0.9,
                ..params()
            },
            SamplingParams {
                top_p: 0.3,
                temperature: 1.7,
                ..params()
            },
            SamplingParams {
                typical_p: 0.5,
                ..params()
            },
            SamplingParams {
                typical_p: 0.95,
                temperature: 0.6,
                ..params()
            },
            SamplingParams {
                min_p: 0.05,
                ..params()
            },
            SamplingParams {
                top_k: 50,
                top_p: 0.95,
                typical_p: 0.9,
                min_p: 0.02,
                temperature: 0.8,
                ..params()
            },
            SamplingParams {
                top_k: 2000,
                top_p: 0.5,
                temperature: 1.3,
                ..params()
            },
            SamplingParams {
                top_k: 40_000,
                ..params()
            },
            SamplingParams {
                temperature: 0.9,
                ..params()
            },
        ];
        for (k, p) in cases.iter().enumerate() {
            for (seed, sd) in [(1u64, 1.0f32), (2, 3.0), (3, 0.2)] {
                let mut logits = random_logits(128_000, sd, seed + 10 * k as u64);
                logits[77] = f32::NEG_INFINITY;
                let got = probs(p, &logits);
                let want = reference(&logits, p);
                assert_close(&got, &want, &format!("case {k} sd {sd}"));
            }
        }
    }

    #[test]
    fn nucleus_keeps_nothing_between_steps() {
        // A peaked row, then a flat one, then peaked again: nothing kept from one step
        // changes the next one's result.
        let p = SamplingParams {
            top_p: 0.95,
            ..params()
        };
        let mut s = Sampler::new(&p, 3);
        for (i, sd) in [4.0f32, 0.05, 6.0, 0.01, 2.0].into_iter().enumerate() {
            let logits = random_logits(50_000, sd, i as u64);
            let got = s.probabilities(&mut logits.clone(), &[], &[]);
            assert_close(&got, &reference(&logits, &p), &format!("step {i}"));
        }
    }

    #[test]
    fn sampled_logprob_and_top_describe_the_distribution() {
        let logits = random_logits(5000, 2.0, 9);
        for p in [
            SamplingParams {
                top_k: 10,
                temperature: 0.7,
                ..params()
            },
            SamplingParams {
                temperature: 1.2,
                ..params()
            },
            SamplingParams::default(),
        ] {
            let want = probs(&p, &logits);
            let mut s = Sampler::new(&p, 5);
            for _ in 0..20 {
                let out = s.sample(&mut logits.clone(), &[], &[], 5).unwrap();
                if p.do_sample {
                    let lp = want[out.id as usize].ln();
                    assert!((out.logprob as f64 - lp).abs() < 1e-4, "{p:?}");
                    for w in out.top.windows(2) {
                        assert!(w[0].1 >= w[1].1);
                    }
                    for &(id, lp) in &out.top {
                        assert!((lp as f64 - want[id as usize].ln()).abs() < 1e-4);
                    }
                } else {
                    let lse = crate::sampling::log_sum_exp(&logits);
                    assert_eq!(out.id, crate::sampling::argmax(&logits).unwrap());
                    assert!((out.logprob - (logits[out.id as usize] - lse)).abs() < 1e-5);
                    assert_eq!(out.top[0].0, out.id);
                }
                assert_eq!(out.top.len(), 5);
            }
        }
    }

    /// Chi-square goodness of fit of 20,000 draws (one per seed) against the processed
    /// distribution. Critical values for significance 0.001.
    fn chi_square(p: &SamplingParams, logits: &[f32], expect_support: usize) {
        const CRITICAL: [f64; 6] = [f64::NAN, 10.828, 13.816, 16.266, 18.467, 20.515];
        let want = reference(logits, p);
        let support = want.iter().filter(|&&x| x > 0.0).count();
        assert_eq!(support, expect_support);
        let draws = 20_000;
        let mut counts = vec![0usize; logits.len()];
        for seed in 0..draws {
            let mut s = Sampler::new(p, seed as u64);
            counts[s.sample(&mut logits.to_vec(), &[], &[], 0).unwrap().id as usize] += 1;
        }
        let mut chi2 = 0.0;
        for (i, &c) in counts.iter().enumerate() {
            if want[i] == 0.0 {
                assert_eq!(c, 0, "token {i} is outside the distribution");
                continue;
            }
            let e = want[i] * draws as f64;
            chi2 += (c as f64 - e).powi(2) / e;
        }
        let critical = CRITICAL[support - 1];
        assert!(
            chi2 < critical,
            "chi2 {chi2} >= {critical} (df {}): counts {counts:?}, probabilities {want:?}",
            support - 1
        );
    }

    #[test]
    fn draws_follow_the_processed_distribution() {
        let logits = [2.0f32, 1.5, 1.0, 0.5, 0.0, -1.0];
        // T 0.8, top_k 5 drops the last; probabilities 0.486 0.260 0.139 0.075 0.040:
        // top_p 0.9 keeps four (the fifth follows a cumulative 0.960... of 0.885 < 0.9).
        chi_square(
            &SamplingParams {
                temperature: 0.8,
                top_k: 5,
                top_p: 0.9,
                ..params()
            },
            &logits,
            4,
        );
        // The whole row at temperature 1.3.
        chi_square(
            &SamplingParams {
                temperature: 1.3,
                ..params()
            },
            &logits,
            6,
        );
        // min_p alone, and top_p alone (the row-level searches).
        chi_square(
            &SamplingParams {
                min_p: 0.2,
                ..params()
            },
            &logits,
            4,
        );
        chi_square(
            &SamplingParams {
                top_p: 0.8,
                temperature: 0.9,
                ..params()
            },
            &logits,
            3,
        );
    }

    #[test]
    fn seeded_runs_are_reproducible_whatever_runs_beside_them() {
        let p = SamplingParams {
            temperature: 0.9,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.2,
            frequency_penalty: 0.3,
            presence_penalty: 0.2,
            ..params()
        };
        let prompt: Vec<u32> = (0..20).map(|i| i * 7 % 300).collect();
        let row = |step: usize| random_logits(1000, 2.0, 100 + (step % 5) as u64);
        let run = |with_neighbour: bool| -> Vec<(u32, f32)> {
            let mut s = Sampler::new(&p, 42);
            let mut other = Sampler::new(
                &SamplingParams {
                    temperature: 1.5,
                    ..params()
                },
                42,
            );
            let mut gen = Vec::new();
            let mut out = Vec::new();
            for step in 0..60 {
                if with_neighbour {
                    other.sample(&mut row(step + 1), &prompt, &[], 3).unwrap();
                }
                let r = s.sample(&mut row(step), &prompt, &gen, 0).unwrap();
                gen.push(r.id);
                out.push((r.id, r.logprob));
            }
            out
        };
        let alone = run(false);
        assert_eq!(alone, run(true));
        assert_eq!(alone, run(false));
        // Another seed gives another sequence.
        let mut s = Sampler::new(&p, 43);
        let mut gen = Vec::new();
        for step in 0..60 {
            gen.push(s.sample(&mut row(step), &prompt, &gen, 0).unwrap().id);
        }
        assert_ne!(gen, alone.iter().map(|e| e.0).collect::<Vec<_>>());
    }

    #[test]
    fn degenerate_rows_do_not_panic() {
        for p in [
            params(),
            SamplingParams::default(),
            SamplingParams {
                top_p: 0.5,
                ..params()
            },
            SamplingParams {
                top_k: 3,
                typical_p: 0.5,
                ..params()
            },
            SamplingParams {
                min_p: 0.1,
                ..params()
            },
        ] {
            let mut s = Sampler::new(&p, 1);
            let mut all_neg = vec![f32::NEG_INFINITY; 10];
            assert_eq!(s.sample(&mut all_neg, &[], &[], 2), Err(NoToken));
            let mut all_nan = vec![f32::NAN, f32::NEG_INFINITY, f32::NAN];
            assert_eq!(s.sample(&mut all_nan, &[], &[], 2), Err(NoToken));
            let mut one = vec![f32::NEG_INFINITY; 10];
            one[7] = 0.0;
            let out = s.sample(&mut one, &[], &[], 4).unwrap();
            assert_eq!((out.id, out.logprob, out.top.len()), (7, 0.0, 1));
            let mut single = vec![1.0];
            assert_eq!(s.sample(&mut single, &[5], &[0], 1).unwrap().id, 0);
        }
    }

    /// NaN logits are never chosen and leave logprobs finite; +inf logits share the
    /// choice, with finite logprobs, greedy or sampled.
    #[test]
    fn nan_and_infinite_logits_leave_logprobs_finite() {
        let sampled = SamplingParams {
            top_p: 0.9,
            ..params()
        };
        for p in [SamplingParams::default(), params(), sampled] {
            for step in 0..50u32 {
                let gen = vec![0u32; step as usize];
                let mut row: Vec<f32> = (0..64).map(|i| (i as f32 * 0.3).sin()).collect();
                row[3] = f32::NAN;
                row[40] = f32::NAN;
                let out = Sampler::new(&p, 5).sample(&mut row, &[], &gen, 3).unwrap();
                assert!(out.id != 3 && out.id != 40, "NaN token chosen: {out:?}");
                assert!(out.logprob.is_finite(), "{out:?}");
                assert!(out.top.iter().all(|t| t.1.is_finite()), "{out:?}");
                let mut row = vec![0.5f32; 64];
                row[10] = f32::INFINITY;
                row[50] = f32::INFINITY;
                let out = Sampler::new(&p, 5).sample(&mut row, &[], &gen, 2).unwrap();
                assert!(out.id == 10 || out.id == 50, "{out:?}");
                assert!(out.logprob.is_finite(), "{out:?}");
            }
        }
    }
}
