//! Logits processors: `logit_bias`, the repetition penalty (TGI), the frequency and
//! presence penalties (OpenAI) over the whole row, and the warpers that work on a list of
//! candidates (top_p, typical_p, min_p; top_k is a selection, see `logprobs::TopSelect`).
//!
//! Candidate lists are `(id, logit)` pairs sorted by logit, most likely first (ties by lower
//! id); `logit` is the processed logit before temperature, and a candidate's weight is
//! `exp((logit - m) / temperature)` for the list's maximum `m`.

use std::collections::HashMap;

use super::logprobs::exp1;

/// Adds each bias to its token's logit (ids outside the row are ignored).
pub(crate) fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(x) = logits.get_mut(id as usize) {
            *x += b;
        }
    }
}

/// TGI's repetition penalty on one logit: positive logits divided, negative multiplied.
#[inline]
pub(crate) fn repetition(x: f32, penalty: f32) -> f32 {
    if x < 0.0 {
        x * penalty
    } else {
        x / penalty
    }
}

/// The token statistics behind the penalties, kept between steps: the set of prompt and
/// generated tokens (repetition penalty) and the counts of generated tokens (frequency and
/// presence). Each step only the newly generated tokens are added; when the prompt or the
/// generated prefix is not the one seen before, everything is rebuilt.
#[derive(Debug, Default)]
pub(crate) struct Penalties {
    vocab: usize,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    /// Bitmap over the vocabulary of the tokens in `unique`.
    seen: Vec<u64>,
    /// Distinct prompt and generated tokens (inside the vocabulary).
    unique: Vec<u32>,
    /// Occurrences of each generated token (inside the vocabulary).
    counts: HashMap<u32, u32>,
}

impl Penalties {
    fn sync(&mut self, vocab: usize, prompt: &[u32], generated: &[u32]) {
        let fresh = self.vocab == vocab
            && self.prompt.as_slice() == prompt
            && generated.starts_with(&self.generated);
        if !fresh {
            self.vocab = vocab;
            self.prompt.clear();
            self.prompt.extend_from_slice(prompt);
            self.generated.clear();
            self.seen.clear();
            self.seen.resize(vocab.div_ceil(64), 0);
            self.unique.clear();
            self.counts.clear();
            for &t in prompt {
                self.see(t);
            }
        }
        for &t in &generated[self.generated.len()..] {
            if (t as usize) < vocab {
                self.see(t);
                *self.counts.entry(t).or_insert(0) += 1;
            }
        }
        self.generated
            .extend_from_slice(&generated[self.generated.len()..]);
    }

    /// Brings the statistics up to `prompt` and `generated` (vocabulary `vocab`).
    pub(crate) fn prepare(&mut self, vocab: usize, prompt: &[u32], generated: &[u32]) {
        self.sync(vocab, prompt, generated);
    }

    /// Distinct prompt and generated tokens inside the vocabulary.
    pub(crate) fn unique(&self) -> &[u32] {
        &self.unique
    }

    /// How often `t` was generated, when it was.
    pub(crate) fn count(&self, t: u32) -> Option<u32> {
        self.counts.get(&t).copied()
    }

    /// (token, times generated) of every generated token.
    pub(crate) fn counts(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.counts.iter().map(|(&t, &c)| (t, c))
    }

    #[inline]
    fn see(&mut self, t: u32) {
        let i = t as usize;
        if i >= self.vocab {
            return;
        }
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if self.seen[w] & b == 0 {
            self.seen[w] |= b;
            self.unique.push(t);
        }
    }

    /// Applies, in order, the repetition penalty over the distinct prompt and generated
    /// tokens (TGI: once per token, whatever its count) and then OpenAI's
    /// `logit -= count * frequency + (count > 0) * presence` over generated tokens.
    pub(crate) fn apply(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        generated: &[u32],
        repetition_penalty: f32,
        frequency: f32,
        presence: f32,
    ) {
        let rep = repetition_penalty != 1.0;
        let freq = frequency != 0.0 || presence != 0.0;
        if !rep && !freq {
            return;
        }
        self.sync(logits.len(), prompt, generated);
        if rep {
            for &t in &self.unique {
                let x = &mut logits[t as usize];
                *x = repetition(*x, repetition_penalty);
            }
        }
        if freq {
            for (&t, &c) in &self.counts {
                logits[t as usize] -= c as f32 * frequency + presence;
            }
        }
    }
}

/// Weights `exp((logit - m) * inv_t)` of a candidate list, into `out`.
pub(crate) fn weights(cands: &[(u32, f32)], m: f32, inv_t: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(cands.iter().map(|c| exp1((c.1 - m) * inv_t)));
}

/// The largest logit of a candidate list (-inf when empty).
pub(crate) fn max_logit(cands: &[(u32, f32)]) -> f32 {
    cands
        .iter()
        .fold(f32::NEG_INFINITY, |m, c| if c.1 > m { c.1 } else { m })
}

/// `a` comes before `b` in the order most likely first, ties by lower id.
#[inline]
fn precedes(a: (u32, f32), b: (u32, f32)) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
}

/// Whether `e` is kept by a nucleus whose last token is `last` (see [`nucleus_last`]).
#[inline]
pub(crate) fn in_nucleus(e: (u32, f32), last: (u32, f32)) -> bool {
    e == last || precedes(e, last)
}

/// Top-p (nucleus) over a candidate list in any order, with weights `w` (same order) and
/// the total weight `z` of the distribution (which may hold more tokens than the list, if
/// the list holds the nucleus). In the order most likely first (ties by lower id), a token
/// is kept when the probability before it is below `p`, as Hugging Face's warper (which
/// removes tokens whose ascending cumulative probability is at most 1 - p); at least one.
/// Returns the last kept token `(id, logit)`; the kept ones are those [`in_nucleus`].
/// Quickselect on the weights: expected linear time, no sort of the list.
pub(crate) fn nucleus_last(
    cands: &[(u32, f32)],
    w: &[f32],
    z: f64,
    p: f32,
    scratch: &mut Vec<(u32, f32, f32)>,
) -> (u32, f32) {
    let limit = p as f64 * z;
    scratch.clear();
    scratch.extend(cands.iter().zip(w).map(|(c, &w)| (c.0, c.1, w)));
    let key = |e: &(u32, f32, f32)| (e.0, e.1);
    let (mut lo, mut hi) = (0usize, scratch.len());
    // Weight of the tokens before scratch[lo..hi] (all kept), and the last kept so far.
    let mut before = 0f64;
    let mut last: Option<(u32, f32)> = None;
    while hi - lo > 16 {
        let r = &mut scratch[lo..hi];
        let n = r.len();
        // Median of three as the pivot, moved to the end.
        let (a, b, c) = (0, n / 2, n - 1);
        let (ka, kb, kc) = (key(&r[a]), key(&r[b]), key(&r[c]));
        let mid = if precedes(ka, kb) == precedes(kb, kc) {
            b
        } else if precedes(kb, ka) == precedes(ka, kc) {
            a
        } else {
            c
        };
        r.swap(mid, n - 1);
        let pivot = r[n - 1];
        let kp = key(&pivot);
        let mut store = 0;
        let mut mass = 0f64;
        for i in 0..n - 1 {
            if precedes(key(&r[i]), kp) {
                mass += r[i].2 as f64;
                r.swap(i, store);
                store += 1;
            }
        }
        r.swap(store, n - 1);
        if before + mass < limit {
            // The pivot is kept: the last kept one is the pivot or after it.
            last = Some(kp);
            before += mass + pivot.2 as f64;
            lo += store + 1;
        } else {
            hi = lo + store;
        }
    }
    let r = &mut scratch[lo..hi];
    r.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for e in r.iter() {
        if before >= limit {
            break;
        }
        last = Some(key(e));
        before += e.2 as f64;
    }
    last.unwrap_or_else(|| {
        cands
            .iter()
            .copied()
            .reduce(|a, b| if precedes(b, a) { b } else { a })
            .unwrap_or((0, f32::NEG_INFINITY))
    })
}

/// Locally typical sampling (Hugging Face's `TypicalLogitsWarper`) over a candidate list
/// with weights `w`, for a distribution of total weight `z` and `Σ w·s = moment`
/// (`s = (logit - m) * inv_t`; these may cover more tokens than the list, which must then
/// hold every token of shift at most the kept ones'). Tokens are ordered by
/// `|-ln p - H|`; the smallest prefix whose cumulative probability reaches `mass` is kept
/// (with every token tied with its last); the rest are removed from `cands`, whose order
/// is kept. `m` is the list's largest logit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn typical_filter(
    cands: &mut Vec<(u32, f32)>,
    w: &[f32],
    m: f32,
    inv_t: f32,
    z: f64,
    moment: f64,
    mass: f32,
    order: &mut Vec<(f32, u32)>,
) {
    let lnz = z.ln();
    let entropy = lnz - moment / z;
    // shift = |-ln p - H| = |lnz - H - s|.
    let c = (lnz - entropy) as f32;
    let shift = |l: f32| (c - (l - m) * inv_t).abs();
    order.clear();
    order.extend(
        cands
            .iter()
            .enumerate()
            .map(|(i, e)| (shift(e.1), i as u32)),
    );
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mass = mass as f64;
    let mut cum = 0f64;
    let mut last = order.len() - 1;
    for (k, &(_, i)) in order.iter().enumerate() {
        cum += w[i as usize] as f64 / z;
        if cum >= mass {
            last = k;
            break;
        }
    }
    let limit = order[last].0;
    cands.retain(|e| shift(e.1) <= limit);
}

/// min_p over a candidate list: keeps tokens whose probability is at least `min_p` times
/// the most likely one's (`exp((logit - max) * inv_t) >= min_p`). The order is kept.
pub(crate) fn min_p_filter(cands: &mut Vec<(u32, f32)>, inv_t: f32, min_p: f32) {
    let m = max_logit(cands);
    cands.retain(|e| exp1((e.1 - m) * inv_t) >= min_p);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn logit_bias_adds_and_ignores_unknown_ids() {
        let mut v = [1.0f32, 2.0, 3.0];
        apply_logit_bias(&mut v, &[(0, 0.5), (2, -5.0), (9, 1.0)]);
        assert_eq!(v, [1.5, 2.0, -2.0]);
    }

    #[test]
    fn repetition_penalty_by_hand() {
        // Tokens 0 and 2 repeat (2 several times): penalised once each.
        let mut v = [2.0f32, 1.0, -1.0, 0.0];
        let mut p = Penalties::default();
        p.apply(&mut v, &[0, 2], &[2, 2, 3], 2.0, 0.0, 0.0);
        assert_eq!(v, [1.0, 1.0, -2.0, 0.0]);
        // Ids beyond the row are ignored.
        let mut v = [2.0f32, 1.0];
        p.apply(&mut v, &[7], &[1, 5], 2.0, 0.0, 0.0);
        assert_eq!(v, [2.0, 0.5]);
    }

    #[test]
    fn frequency_and_presence_by_hand() {
        // Generated: token 1 twice, token 3 once; prompt tokens do not count.
        let mut v = [0.0f32, 1.0, 2.0, 3.0];
        let mut p = Penalties::default();
        p.apply(&mut v, &[0, 0, 2], &[1, 3, 1], 1.0, 0.5, 0.25);
        assert!(close(
            &v,
            &[0.0, 1.0 - 2.0 * 0.5 - 0.25, 2.0, 3.0 - 0.5 - 0.25]
        ));
        // Repetition (prompt + generated) first, then frequency/presence.
        let mut v = [4.0f32, 1.0, 2.0, -3.0];
        p.apply(&mut v, &[0], &[3, 3], 2.0, 1.0, 0.0);
        assert!(close(&v, &[2.0, 1.0, 2.0, -6.0 - 2.0]));
        // Negative penalties encourage.
        let mut v = [0.0f32, 0.0];
        p.apply(&mut v, &[], &[1], 1.0, -1.0, -0.5);
        assert!(close(&v, &[0.0, 1.5]));
    }

    #[test]
    fn penalties_follow_steps_and_rebuild_on_a_new_sequence() {
        let mut p = Penalties::default();
        let row = [1.0f32; 5];
        let run = |p: &mut Penalties, prompt: &[u32], gen: &[u32]| {
            let mut v = row;
            p.apply(&mut v, prompt, gen, 1.0, 1.0, 0.0);
            v
        };
        assert_eq!(run(&mut p, &[0], &[]), row);
        assert_eq!(run(&mut p, &[0], &[1]), [1.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(run(&mut p, &[0], &[1, 1]), [1.0, -1.0, 1.0, 1.0, 1.0]);
        // A different history (not an extension): rebuilt.
        assert_eq!(run(&mut p, &[0], &[2]), [1.0, 1.0, 0.0, 1.0, 1.0]);
        assert_eq!(run(&mut p, &[4], &[2, 3]), [1.0, 1.0, 0.0, 0.0, 1.0]);
    }

    fn nucleus(cands: &[(u32, f32)], p: f32) -> Vec<u32> {
        let mut w = Vec::new();
        weights(cands, max_logit(cands), 1.0, &mut w);
        let z: f64 = w.iter().map(|&x| x as f64).sum();
        let last = nucleus_last(cands, &w, z, p, &mut Vec::new());
        let mut kept: Vec<u32> = cands
            .iter()
            .filter(|&&e| in_nucleus(e, last))
            .map(|e| e.0)
            .collect();
        kept.sort_unstable();
        kept
    }

    #[test]
    fn top_p_by_hand() {
        // probs 0.5, 0.25, 0.125, 0.125 (listed in any order).
        let cands: Vec<(u32, f32)> = [(2u32, 0.125f32), (0, 0.5), (3, 0.125), (1, 0.25)]
            .iter()
            .map(|&(i, p)| (i, p.ln()))
            .collect();
        // Kept: tokens whose preceding cumulative probability (0, 0.5, 0.75, 0.875) is
        // below p; the two 0.125s in id order.
        assert_eq!(nucleus(&cands, 0.45), vec![0]);
        assert_eq!(nucleus(&cands, 0.55), vec![0, 1]);
        assert_eq!(nucleus(&cands, 0.7), vec![0, 1]);
        assert_eq!(nucleus(&cands, 0.8), vec![0, 1, 2]);
        assert_eq!(nucleus(&cands, 0.9), vec![0, 1, 2, 3]);
        assert_eq!(nucleus(&cands, 1.0), vec![0, 1, 2, 3]);
        assert_eq!(nucleus(&cands, 0.01), vec![0]);
    }

    #[test]
    fn nucleus_quickselect_matches_a_sorted_walk() {
        let mut state = 7u64;
        for case in 0..400 {
            let n = 1 + case * 3 % 500;
            let distinct = 1 + case % 40;
            let cands: Vec<(u32, f32)> = (0..n as u32)
                .map(|i| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (i * 7 % 1009, ((state >> 33) % distinct as u64) as f32 * 0.3)
                })
                .collect();
            let mut w = Vec::new();
            weights(&cands, max_logit(&cands), 1.0, &mut w);
            let z: f64 = w.iter().map(|&x| x as f64).sum();
            for p in [0.05f32, 0.3, 0.5, 0.77, 0.9, 0.99, 1.0] {
                // The plain definition: sort, walk.
                let mut sorted: Vec<((u32, f32), f32)> =
                    cands.iter().copied().zip(w.iter().copied()).collect();
                sorted.sort_by(|a, b| b.0 .1.total_cmp(&a.0 .1).then(a.0 .0.cmp(&b.0 .0)));
                let mut want = Vec::new();
                let mut cum = 0f64;
                for (c, x) in sorted {
                    if !want.is_empty() && cum >= p as f64 * z {
                        break;
                    }
                    want.push(c.0);
                    cum += x as f64;
                }
                want.sort_unstable();
                let last = nucleus_last(&cands, &w, z, p, &mut Vec::new());
                let mut got: Vec<u32> = cands
                    .iter()
                    .filter(|&&e| in_nucleus(e, last))
                    .map(|e| e.0)
                    .collect();
                got.sort_unstable();
                assert_eq!(got, want, "case {case} p {p}");
            }
        }
    }

    /// The ids typical_p keeps of candidates (sorted, most likely first) at `mass`.
    fn typical_kept(base: &[(u32, f32)], mass: f32) -> Vec<u32> {
        let mut cands = base.to_vec();
        let mut w = Vec::new();
        weights(&cands, cands[0].1, 1.0, &mut w);
        let z: f64 = w.iter().map(|&x| x as f64).sum();
        let moment: f64 = cands
            .iter()
            .zip(&w)
            .map(|(c, &x)| x as f64 * (c.1 - cands[0].1) as f64)
            .sum();
        let m = cands[0].1;
        typical_filter(&mut cands, &w, m, 1.0, z, moment, mass, &mut Vec::new());
        cands.iter().map(|c| c.0).collect()
    }

    #[test]
    fn typical_by_hand() {
        // probs 0.7, 0.1, 0.1, 0.1: H = -(0.7 ln 0.7 + 0.3 ln 0.1) = 0.9404;
        // shifts |-ln p - H|: 0.7 -> 0.584, 0.1 -> 1.362. Sorted: the 0.7 token first.
        let probs = [0.7f32, 0.1, 0.1, 0.1];
        let base: Vec<(u32, f32)> = probs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.ln()))
            .collect();
        let run = |mass: f32| typical_kept(&base, mass);
        assert_eq!(run(0.5), vec![0]);
        assert_eq!(run(0.65), vec![0]);
        // Past 0.7 the next shift (1.362) is shared by all three 0.1 tokens: all kept.
        assert_eq!(run(0.75), vec![0, 1, 2, 3]);
        // A distribution where the most likely token is not typical: probs 0.4, 0.3,
        // 0.3 -> H = 1.0889; shifts 0.1726 (0.4) and 0.1150 (0.3): the 0.3s come first.
        let cands0: Vec<(u32, f32)> = [0.4f32, 0.3, 0.3]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.ln()))
            .collect();
        assert_eq!(typical_kept(&cands0, 0.5), vec![1, 2]);
    }

    #[test]
    fn min_p_by_hand() {
        // probs proportional to 1, 0.5, 0.2, 0.05 at temperature 1.
        let mut cands: Vec<(u32, f32)> = [1.0f32, 0.5, 0.2, 0.05]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.ln() + 3.0))
            .collect();
        min_p_filter(&mut cands, 1.0, 0.3);
        assert_eq!(cands.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        // At temperature 2 the ratios are square roots: 0.707, 0.447, 0.224.
        let mut cands: Vec<(u32, f32)> = [1.0f32, 0.5, 0.2, 0.05]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.ln()))
            .collect();
        min_p_filter(&mut cands, 0.5, 0.3);
        assert_eq!(cands.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
