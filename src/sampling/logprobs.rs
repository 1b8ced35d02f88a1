//! Log-probabilities over a logits row (log-softmax at one id, the most likely tokens) and
//! the kernels the sampler shares with them: maximum, sum of exponentials and top-n
//! selection over a whole vocabulary, written so that the compiler vectorizes them and
//! with a summation order that does not depend on the SIMD width (the same logits give the
//! same numbers, hence the same seeded draws, on every machine).

/// Elements per block of the blocked passes (maximum, top-n skipping).
pub(crate) const BLOCK: usize = 64;
/// Elements per partial sum of the sums of exponentials (each partial sum is an f32 over
/// 8 lanes, the partial sums are added in f64).
pub(crate) const SUM_BLOCK: usize = 256;

pub(crate) use crate::ops::simd::exp as exp1;

/// `out[i] = exp((v[i] - m) * inv_t)`.
#[inline]
pub(crate) fn exp_into(v: &[f32], m: f32, inv_t: f32, out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o = exp1((x - m) * inv_t);
    }
}

/// The largest value (NaN ignored; -inf when there is none): 32 lanes, then a tree.
#[inline]
pub(crate) fn max_of(v: &[f32]) -> f32 {
    let mut l = [f32::NEG_INFINITY; 32];
    let mut it = v.chunks_exact(32);
    for c in &mut it {
        for j in 0..32 {
            l[j] = if c[j] > l[j] { c[j] } else { l[j] };
        }
    }
    for w in [16usize, 8, 4, 2, 1] {
        for j in 0..w {
            l[j] = if l[j + w] > l[j] { l[j + w] } else { l[j] };
        }
    }
    let mut m = l[0];
    for &x in it.remainder() {
        if x > m {
            m = x;
        }
    }
    m
}

/// Sum of a block's values in 8 f32 lanes, added pairwise (a fixed order).
#[inline]
pub(crate) fn lane_sum(v: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            l[j] += c[j];
        }
    }
    let mut rest = 0f32;
    for &x in it.remainder() {
        rest += x;
    }
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + rest
}

/// `Σ exp((x - m) * inv_t)` over one block of at most [`SUM_BLOCK`] values.
#[inline]
pub(crate) fn block_sum_exp(v: &[f32], m: f32, inv_t: f32) -> f32 {
    let mut buf = [0f32; SUM_BLOCK];
    let buf = &mut buf[..v.len()];
    exp_into(v, m, inv_t, buf);
    lane_sum(buf)
}

/// `Σ exp((x - m) * inv_t)` over a row: f32 sums of [`SUM_BLOCK`] values added in f64, in
/// order. With `blocks`, the block sums are kept there (for a walk to the drawn token).
pub(crate) fn sum_exp_blocks(
    v: &[f32],
    m: f32,
    inv_t: f32,
    mut blocks: Option<&mut Vec<f32>>,
) -> f64 {
    if let Some(b) = blocks.as_deref_mut() {
        b.clear();
    }
    let mut total = 0f64;
    for block in v.chunks(SUM_BLOCK) {
        let s = block_sum_exp(block, m, inv_t);
        if let Some(b) = blocks.as_deref_mut() {
            b.push(s);
        }
        total += s as f64;
    }
    total
}

/// `Σ exp((x - m) * inv_t)` over a row.
pub(crate) fn sum_exp(v: &[f32], m: f32, inv_t: f32) -> f64 {
    sum_exp_blocks(v, m, inv_t, None)
}

/// `(Σ w, Σ w·s)` with `s = (x - m) * inv_t`, `w = exp(s)` (for the entropy).
pub(crate) fn sum_exp_and_moment(v: &[f32], m: f32, inv_t: f32) -> (f64, f64) {
    let (mut z, mut a) = (0f64, 0f64);
    let mut w = [0f32; SUM_BLOCK];
    let mut ws = [0f32; SUM_BLOCK];
    for block in v.chunks(SUM_BLOCK) {
        let n = block.len();
        exp_into(block, m, inv_t, &mut w[..n]);
        for ((o, &e), &x) in ws[..n].iter_mut().zip(&w[..n]).zip(block) {
            // w·s is 0 where w underflows (s may be -inf).
            *o = if e > 0.0 { e * ((x - m) * inv_t) } else { 0.0 };
        }
        z += lane_sum(&w[..n]) as f64;
        a += lane_sum(&ws[..n]) as f64;
    }
    (z, a)
}

/// `ln Σ exp(x)` over a row (-inf for an empty row or one of -inf only).
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let m = max_of(logits);
    if !m.is_finite() {
        return m;
    }
    m + (sum_exp(logits, m, 1.0).ln() as f32)
}

/// The log-softmax of `logits` at `id`: `logits[id] - ln Σ exp(logits)` (NaN when `id` is
/// outside the row).
pub fn log_softmax_at(logits: &[f32], id: u32) -> f32 {
    match logits.get(id as usize) {
        Some(&x) => x - log_sum_exp(logits),
        None => f32::NAN,
    }
}

/// The logprob of a prompt token under the model's raw distribution: the log-softmax of
/// the logits row that predicts it (the previous position's) at its id.
pub fn prompt_logprob(logits_row: &[f32], next_token: u32) -> f32 {
    log_softmax_at(logits_row, next_token)
}

/// The whole log-softmax of a row, in place.
pub fn log_softmax_in_place(logits: &mut [f32]) {
    let lse = log_sum_exp(logits);
    for x in logits.iter_mut() {
        *x -= lse;
    }
}

/// The `n` most likely tokens of a raw logits row as `(id, logprob)`, most likely first,
/// ties by lower id; tokens of logit -inf (probability 0) are left out.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    TopSelect::default().select(logits, n, false, &mut out);
    let lse = log_sum_exp(logits);
    for e in out.iter_mut() {
        e.1 -= lse;
    }
    out
}

/// Orders `(id, value)` pairs most first, ties by lower id.
#[inline]
pub(crate) fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Top-n selection over a row: the maximum of every block first; the n-th largest block
/// maximum bounds the n-th largest value from below, so only the few blocks reaching it
/// are read element by element, into a heap of the n best so far (its root the worst of
/// them). The buffers are kept between calls.
#[derive(Debug, Default)]
pub(crate) struct TopSelect {
    /// (value, id); root = the worst (smallest value, then largest id).
    heap: Vec<(f32, u32)>,
    block_max: Vec<f32>,
    scratch: Vec<f32>,
}

#[inline]
fn worse(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// The maximum of each [`BLOCK`] of `v`, into `out`.
pub(crate) fn block_maxima(v: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(v.chunks(BLOCK).map(max_of));
}

impl TopSelect {
    /// The `n` largest values of `v` (-inf and NaN never selected) as `(id, value)` into
    /// `out`, most first, ties by lower id. With `ties`, every further element equal to
    /// the n-th is kept as well (top-k as Hugging Face's warper: a threshold at the k-th
    /// value).
    pub(crate) fn select(&mut self, v: &[f32], n: usize, ties: bool, out: &mut Vec<(u32, f32)>) {
        out.clear();
        if n == 0 {
            return;
        }
        if n.saturating_mul(8) > v.len() {
            // A large share of the row: partial sort of the finite values.
            out.extend(
                v.iter()
                    .enumerate()
                    .filter(|(_, &x)| x > f32::NEG_INFINITY)
                    .map(|(i, &x)| (i as u32, x)),
            );
            if out.len() > n {
                out.select_nth_unstable_by(n - 1, by_value_desc);
                let kth = out[n - 1].1;
                let mut keep = n;
                if ties {
                    for i in n..out.len() {
                        if out[i].1 == kth {
                            out.swap(keep, i);
                            keep += 1;
                        }
                    }
                }
                out.truncate(keep);
            }
            out.sort_unstable_by(by_value_desc);
            return;
        }
        block_maxima(v, &mut self.block_max);
        // n blocks reach their maximum: at least n values are >= the n-th largest one.
        let floor0 = if self.block_max.len() >= n {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.block_max);
            let (_, nth, _) = self
                .scratch
                .select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
            *nth
        } else {
            f32::NEG_INFINITY
        };
        let h = &mut self.heap;
        h.clear();
        // Largest value left out that could equal the n-th (for ties).
        let mut max_out = f32::NEG_INFINITY;
        for (b, &bm) in self.block_max.iter().enumerate() {
            // Values below floor0 are below the n-th: never selected, never tied.
            if bm < floor0 || bm == f32::NEG_INFINITY {
                continue;
            }
            if h.len() == n && bm <= h[0].0 {
                if bm > max_out {
                    max_out = bm;
                }
                continue;
            }
            let base = b * BLOCK;
            for (j, &x) in v[base..(base + BLOCK).min(v.len())].iter().enumerate() {
                let floor = if h.len() == n { h[0].0 } else { floor0 };
                // Below the floor: below the n-th value (see above).
                if x.is_nan() || x < floor || x == f32::NEG_INFINITY {
                    continue;
                }
                let e = (x, (base + j) as u32);
                if h.len() < n {
                    h.push(e);
                    let last = h.len() - 1;
                    sift_up(h, last);
                } else if x > h[0].0 {
                    let old = std::mem::replace(&mut h[0], e);
                    sift_down(h, 0);
                    if old.0 > max_out {
                        max_out = old.0;
                    }
                } else if x > max_out {
                    max_out = x;
                }
            }
        }
        out.extend(h.iter().map(|&(x, i)| (i, x)));
        out.sort_unstable_by(by_value_desc);
        if ties && out.len() == n && max_out == out[n - 1].1 {
            // Elements equal to the n-th that were left out all come after the last
            // included one of that value (ids are scanned in order).
            let kth = out[n - 1].1;
            let last = out
                .iter()
                .filter(|e| e.1 == kth)
                .map(|e| e.0)
                .max()
                .unwrap_or(0) as usize;
            for (b, &bm) in self.block_max.iter().enumerate() {
                let base = b * BLOCK;
                if bm < kth || base + BLOCK <= last + 1 {
                    continue;
                }
                let start = base.max(last + 1);
                for (j, &x) in v[start..(base + BLOCK).min(v.len())].iter().enumerate() {
                    if x == kth {
                        out.push(((start + j) as u32, x));
                    }
                }
            }
        }
    }
}

fn sift_up(h: &mut [(f32, u32)], mut i: usize) {
    while i > 0 {
        let p = (i - 1) / 2;
        if worse(h[i], h[p]) {
            h.swap(i, p);
            i = p;
        } else {
            break;
        }
    }
}

fn sift_down(h: &mut [(f32, u32)], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut w = i;
        if l < h.len() && worse(h[l], h[w]) {
            w = l;
        }
        if r < h.len() && worse(h[r], h[w]) {
            w = r;
        }
        if w == i {
            return;
        }
        h.swap(i, w);
        i = w;
    }
}

/// Every `(id, value)` of `v` with `value >= threshold` (and > -inf) into `out`, in id
/// order; blocks whose maximum is below the threshold are skipped.
pub(crate) fn gather_at_least(v: &[f32], threshold: f32, out: &mut Vec<(u32, f32)>) {
    out.clear();
    for (b, block) in v.chunks(BLOCK).enumerate() {
        if max_of(block) < threshold {
            continue;
        }
        let base = (b * BLOCK) as u32;
        for (j, &x) in block.iter().enumerate() {
            if x >= threshold && x > f32::NEG_INFINITY {
                out.push((base + j as u32, x));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp1(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp1(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp1(-100.0), 0.0);
        assert_eq!(exp1(f32::NAN), 0.0);
        assert_eq!(exp1(0.0), 1.0);
    }

    #[test]
    fn log_softmax_by_hand() {
        let v = [1.0f32, 2.0, 3.0];
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (i, &x) in v.iter().enumerate() {
            let want = x as f64 - z;
            assert!((log_softmax_at(&v, i as u32) as f64 - want).abs() < 1e-6);
            assert!((prompt_logprob(&v, i as u32) as f64 - want).abs() < 1e-6);
        }
        assert!(log_softmax_at(&v, 3).is_nan());
        let mut w = v;
        log_softmax_in_place(&mut w);
        let total: f64 = w.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        // Long rows, with -inf entries, against a plain f64 computation.
        let long: Vec<f32> = (0..100_003)
            .map(|i| {
                if i % 97 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919 % 1000) as f32) / 50.0 - 10.0
                }
            })
            .collect();
        let m = long.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want = m + long.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&long) as f64 - want).abs() < 1e-4);
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY]), f32::NEG_INFINITY);
    }

    fn naive_top(v: &[f32], n: usize, ties: bool) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = v
            .iter()
            .enumerate()
            .filter(|(_, &x)| x > f32::NEG_INFINITY)
            .map(|(i, &x)| (i as u32, x))
            .collect();
        all.sort_by(by_value_desc);
        if all.len() > n {
            let kth = all[n - 1].1;
            let keep = if ties {
                all.iter().filter(|e| e.1 >= kth).count()
            } else {
                n
            };
            all.truncate(keep);
        }
        all
    }

    #[test]
    fn top_select_matches_a_full_sort() {
        let mut sel = TopSelect::default();
        let mut out = Vec::new();
        let mut state = 12345u64;
        for case in 0..300 {
            let len = 1 + (case * 37) % 700;
            // Few distinct values, so ties are common.
            let distinct = 1 + case % 23;
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let k = (state >> 33) as usize % (distinct + 1);
                    if k == distinct {
                        f32::NEG_INFINITY
                    } else {
                        k as f32 * 0.5 - 3.0
                    }
                })
                .collect();
            for n in [1, 2, 5, 17, 64, 200] {
                for ties in [false, true] {
                    sel.select(&v, n, ties, &mut out);
                    let mut got = out.clone();
                    let want = naive_top(&v, n, ties);
                    if ties {
                        // The tied tail may come in any order.
                        got.sort_by(by_value_desc);
                    }
                    assert_eq!(got, want, "len {len} n {n} ties {ties}");
                }
            }
        }
    }

    #[test]
    fn top_logprobs_by_hand() {
        let v = [0.5f32, 2.0, f32::NEG_INFINITY, 2.0, 1.0];
        let lse = log_sum_exp(&v);
        let top = top_logprobs(&v, 3);
        assert_eq!(
            top.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![1, 3, 4],
            "ties by lower id"
        );
        assert!((top[0].1 - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(top_logprobs(&v, 10).len(), 4, "-inf left out");
        assert!(top_logprobs(&v, 0).is_empty());
    }

    #[test]
    fn gather_by_threshold() {
        let v: Vec<f32> = (0..300).map(|i| (i % 10) as f32).collect();
        let mut out = Vec::new();
        gather_at_least(&v, 8.0, &mut out);
        assert_eq!(out.len(), 60);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(out.iter().all(|e| e.1 >= 8.0 && v[e.0 as usize] == e.1));
    }
}
