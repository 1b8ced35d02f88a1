//! logit_bias and the penalties, applied to a step's logits where they are (on a GPU, so
//! that a penalised row can still be chosen on the device and only its token comes back).
//!
//! The host builds, per row, one entry for each token whose logit changes: its bias, its
//! repetition factor and what the frequency and presence penalties subtract. One kernel
//! (`wick_adjust_f32`, a thread per entry) then transforms those logits in place. The
//! transform is the host sampler's, in the same order and the same f32
//! arithmetic (`Sampler::sample`): `x += bias`; `x = x < 0 ? x * r : x / r` for a token
//! seen in the prompt or the generated text; `x -= count * frequency + presence` for a
//! generated one. So a row's processed logits are the same wherever they are computed
//! (the one exception: a token listed twice in logit_bias gets `x + (b1 + b2)` here and
//! `(x + b1) + b2` on the host).

use super::processors::Penalties;
use super::SamplingParams;

/// Every adjusted logit of one step (all rows), kept between steps.
#[derive(Debug, Default, Clone)]
pub struct LogitAdjust {
    /// Index of each adjusted logit in the flattened `[rows, vocab]` logits; each appears
    /// once.
    index: Vec<u32>,
    bias: Vec<f32>,
    /// Repetition penalty factor; 1.0 for none.
    factor: Vec<f32>,
    /// `count * frequency + presence`; 0.0 for none.
    sub: Vec<f32>,
    /// One row's logit_bias, merged by token.
    row_bias: Vec<(u32, f32, bool)>,
    /// What `packed` returns.
    upload: Vec<u32>,
}

impl LogitAdjust {
    pub fn clear(&mut self) {
        self.index.clear();
        self.bias.clear();
        self.factor.clear();
        self.sub.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adjusted logits in all rows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn push(&mut self, index: u32, bias: f32, factor: f32, sub: f32) {
        self.index.push(index);
        self.bias.push(bias);
        self.factor.push(factor);
        self.sub.push(sub);
    }

    /// Adds the entries of logits row `row` (`vocab` wide) for `params`, with `penalties`
    /// synchronised to the row's sequence. Returns how many were added.
    pub(crate) fn push_row(
        &mut self,
        row: usize,
        vocab: usize,
        params: &SamplingParams,
        penalties: &Penalties,
    ) -> usize {
        let before = self.len();
        let base = (row * vocab) as u32;
        let mut row_bias = std::mem::take(&mut self.row_bias);
        row_bias.clear();
        row_bias.extend(
            params
                .logit_bias
                .iter()
                .filter(|&&(id, _)| (id as usize) < vocab)
                .map(|&(id, b)| (id, b, false)),
        );
        // Stable: a token listed twice keeps its biases in order.
        row_bias.sort_by_key(|e| e.0);
        row_bias.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 += next.1;
            }
            same
        });
        let mut bias_of = |t: u32| match row_bias.binary_search_by_key(&t, |e| e.0) {
            Ok(i) => {
                row_bias[i].2 = true;
                row_bias[i].1
            }
            Err(_) => 0.0,
        };
        let rep = params.repetition_penalty;
        let (freq, presence) = (params.frequency_penalty, params.presence_penalty);
        let freq_on = freq != 0.0 || presence != 0.0;
        let sub_of = |c: u32| c as f32 * freq + presence;
        if rep != 1.0 {
            for &t in penalties.unique() {
                let sub = match penalties.count(t) {
                    Some(c) if freq_on => sub_of(c),
                    _ => 0.0,
                };
                let b = bias_of(t);
                self.push(base + t, b, rep, sub);
            }
        } else if freq_on {
            for (t, c) in penalties.counts() {
                let b = bias_of(t);
                self.push(base + t, b, 1.0, sub_of(c));
            }
        }
        for &(t, b, used) in &row_bias {
            if !used {
                self.push(base + t, b, 1.0, 0.0);
            }
        }
        self.row_bias = row_bias;
        self.len() - before
    }

    /// The entries as the device kernel reads them (`kernels/sampling.cu`,
    /// `wick_adjust_f32`): `n` logit indices, then the `n` biases, factors and subtrahends
    /// as f32 bits.
    pub fn packed(&mut self) -> &[u32] {
        self.upload.clear();
        self.upload.extend_from_slice(&self.index);
        for v in [&self.bias, &self.factor, &self.sub] {
            self.upload.extend(v.iter().map(|x| x.to_bits()));
        }
        &self.upload
    }

    /// The rule, on host memory: applies every entry to the flattened `[rows, vocab]`
    /// `logits` (the statement the device kernel is checked against).
    pub fn apply_to(&self, logits: &mut [f32]) {
        for i in 0..self.len() {
            let Some(x) = logits.get_mut(self.index[i] as usize) else {
                continue;
            };
            let y = *x + self.bias[i];
            let y = if y < 0.0 {
                y * self.factor[i]
            } else {
                y / self.factor[i]
            };
            *x = y - self.sub[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Sampler;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn uniform(rng: &mut ChaCha8Rng) -> f32 {
        (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// For random rows, parameters and histories, the adjusted logits equal the host
    /// sampler's processed logits.
    #[test]
    fn matches_the_host_processors() {
        let vocab = 300;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..60 {
            let rows = 1 + case % 4;
            let mut logits: Vec<f32> = (0..rows * vocab)
                .map(|_| uniform(&mut rng) * 20.0 - 10.0)
                .collect();
            // Some exact zeros and infinities.
            logits[3] = 0.0;
            logits[7] = f32::NEG_INFINITY;
            let mut adjust = LogitAdjust::default();
            let mut want = logits.clone();
            for r in 0..rows {
                let pick = |rng: &mut ChaCha8Rng, n: u32| rng.next_u32() % n;
                let params = SamplingParams {
                    do_sample: case % 2 == 0,
                    repetition_penalty: [1.0, 1.3, 0.7][pick(&mut rng, 3) as usize],
                    frequency_penalty: [0.0, 0.5, -0.25][pick(&mut rng, 3) as usize],
                    presence_penalty: [0.0, 0.8][pick(&mut rng, 2) as usize],
                    logit_bias: (0..pick(&mut rng, 4))
                        .map(|_| {
                            (
                                pick(&mut rng, vocab as u32 + 5),
                                uniform(&mut rng) * 8.0 - 4.0,
                            )
                        })
                        .collect(),
                    ..Default::default()
                };
                let prompt: Vec<u32> = (0..pick(&mut rng, 40))
                    .map(|_| pick(&mut rng, vocab as u32))
                    .collect();
                let generated: Vec<u32> = (0..pick(&mut rng, 30))
                    .map(|_| pick(&mut rng, 50))
                    .collect();
                let mut sampler = Sampler::new(&params, 1);
                sampler.process_for_test(
                    &mut want[r * vocab..(r + 1) * vocab],
                    &prompt,
                    &generated,
                );
                let mut sampler = Sampler::new(&params, 1);
                sampler.device_adjust(&prompt, &generated, vocab, r, &mut adjust);
            }
            let mut got = logits;
            adjust.apply_to(&mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g == w || (g.is_nan() && w.is_nan()),
                    "case {case}, logit {i}: {g} vs host {w}"
                );
            }
        }
    }

    #[test]
    fn entries_are_unique_and_only_where_needed() {
        let vocab = 100;
        let params = SamplingParams {
            repetition_penalty: 1.0,
            presence_penalty: 0.5,
            logit_bias: vec![(4, 1.0), (9, 2.0), (4, 0.5), (500, 1.0)],
            ..Default::default()
        };
        let mut sampler = Sampler::new(&params, 1);
        let mut adjust = LogitAdjust::default();
        let n = sampler.device_adjust(&[1, 2, 3], &[4, 5, 5], vocab, 2, &mut adjust);
        // Generated 4 and 5 (presence), bias on 4 and 9; 500 is outside the vocabulary.
        assert_eq!(n, 3);
        let mut idx = adjust.index.clone();
        idx.sort_unstable();
        assert_eq!(idx, [204, 205, 209]);
        let at = |i: u32| adjust.index.iter().position(|&x| x == i).unwrap();
        assert_eq!(adjust.bias[at(204)], 1.5);
        assert_eq!(adjust.sub[at(205)], 2.0 * 0.0 + 0.5);
        assert_eq!(adjust.factor[at(209)], 1.0);
        // Nothing to do: nothing added.
        let plain = Sampler::new(&SamplingParams::default(), 1);
        let mut plain = plain;
        assert_eq!(plain.device_adjust(&[1], &[2], vocab, 0, &mut adjust), 0);
    }
}
