//! The sampling rule of the device sampler (`kernels/sampling.cu`), written out in Rust: the
//! reference the GPU kernel is checked against token for token, and whose distribution is
//! checked here on the CPU.
//!
//! For a row with temperature, top_k, top_p and min_p (after logit_bias and the penalties,
//! which `sampling::LogitAdjust` applies to the row on the device first; rows with
//! typical_p are sampled on the host), every filter is a threshold on the
//! tempered logit `y = (x - max) / T`, so the kept set is `{ y >= threshold }` and no sort
//! is needed: top_k keeps the k largest, top_p the smallest set of largest values holding
//! `top_p` of the top_k set's mass, min_p the values within `ln(min_p)` of the largest
//! (the host sampler's order and meaning). The thresholds are found by binary search over
//! the bit patterns of `-y` (non-negative floats order as their bits), which is what the
//! kernel does with block-wide counts and sums.
//!
//! The token is then drawn with the Gumbel-max trick: the argmax of `y + g` over the kept
//! set, `g = -ln(-ln u)` with `u` from a counter-based hash of (seed, step, token id). That
//! is an exact draw from the kept set's softmax, needs no cumulative sum, and depends only
//! on the request's seed and how many tokens it has generated: the same in any batch.

/// One row's sampling parameters (what the device kernel reads per row).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct RowSample {
    pub temperature: f32,
    pub top_p: f32,
    pub min_p: f32,
    /// 0: no top-k.
    pub top_k: u32,
    pub seed: u64,
    /// Tokens generated so far (one draw per step).
    pub step: u32,
    pub _pad: u32,
}

/// A uniform in (0, 1) from (seed, step, token): splitmix64's finalizer over the three.
#[inline]
pub fn uniform(seed: u64, step: u32, id: u32) -> f32 {
    let mut z = seed ^ (((step as u64) << 32) | id as u64);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 + 0.5) * (1.0 / (1u64 << 24) as f32)
}

/// Gumbel noise for (seed, step, token).
#[inline]
pub fn gumbel(seed: u64, step: u32, id: u32) -> f32 {
    -(-uniform(seed, step, id).ln()).ln()
}

/// The key that orders tempered logits (`y <= 0`): `bits(-y)`, smaller for larger `y`;
/// 0 for the maximum (`y = 0`, whose negation is -0.0: its bits would order last, and
/// `max(-0.0, 0.0)` may return either zero, so the sign is not left to it).
#[inline]
fn key(y: f32) -> u32 {
    if y < 0.0 {
        (-y).to_bits()
    } else {
        0
    }
}

/// Smallest `b` in `0..=hi` with `f(b)` true (`f` monotone); `hi` if none.
fn search(hi: u32, f: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0u32, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if f(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// The kept set's key bound: a token is kept when `key(y) <= bound`.
pub fn keep_bound(y: &[f32], p: &RowSample) -> u32 {
    let all = f32::INFINITY.to_bits();
    let vocab = y.len();
    let mut bound = all;
    if p.top_k > 0 && (p.top_k as usize) < vocab {
        let k = p.top_k as usize;
        bound = search(all, |b| y.iter().filter(|&&v| key(v) <= b).count() >= k);
    }
    if p.top_p < 1.0 {
        let mass = |b: u32| -> f64 {
            y.iter()
                .filter(|&&v| key(v) <= b)
                .map(|&v| (v as f64).exp())
                .sum()
        };
        let target = p.top_p as f64 * mass(bound);
        bound = search(bound, |b| mass(b) >= target);
    }
    if p.min_p > 0.0 {
        bound = bound.min(key(p.min_p.ln()));
    }
    bound
}

/// Draws a token from raw logits `x` by the rule above; returns it and its log-probability
/// under the kept set's renormalised softmax of tempered logits.
pub fn sample_row(x: &[f32], p: &RowSample) -> (u32, f32) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / p.temperature;
    let y: Vec<f32> = x.iter().map(|&v| (v - m) * inv_t).collect();
    let bound = keep_bound(&y, p);
    let mut best = (f32::NEG_INFINITY, 0u32);
    let mut z = 0f64;
    for (i, &v) in y.iter().enumerate() {
        if key(v) <= bound {
            z += (v as f64).exp();
            let s = v + gumbel(p.seed, p.step, i as u32);
            if s > best.0 {
                best = (s, i as u32);
            }
        }
    }
    let id = best.1;
    (id, y[id as usize] - z.ln() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> RowSample {
        RowSample {
            temperature,
            top_p,
            min_p,
            top_k,
            seed: 0,
            step: 0,
            _pad: 0,
        }
    }

    /// The processed distribution, computed the plain way: sort, cut, renormalise.
    fn reference(x: &[f32], p: &RowSample) -> Vec<f64> {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
        let t = p.temperature as f64;
        let mut kept: Vec<usize> = order.clone();
        if p.top_k > 0 {
            kept.truncate(p.top_k as usize);
        }
        let w = |i: usize| ((x[i] as f64 - m) / t).exp();
        if p.top_p < 1.0 {
            let z: f64 = kept.iter().map(|&i| w(i)).sum();
            let mut acc = 0.0;
            let mut n = 0;
            for &i in &kept {
                acc += w(i);
                n += 1;
                if acc >= p.top_p as f64 * z {
                    break;
                }
            }
            kept.truncate(n);
        }
        if p.min_p > 0.0 {
            kept.retain(|&i| w(i) >= p.min_p as f64);
        }
        let z: f64 = kept.iter().map(|&i| w(i)).sum();
        let mut out = vec![0.0; x.len()];
        for &i in &kept {
            out[i] = w(i) / z;
        }
        out
    }

    fn chi_square(x: &[f32], p: RowSample, support: usize) {
        // Significance 0.001 critical values by degrees of freedom.
        const CRITICAL: [f64; 8] = [
            f64::NAN,
            10.828,
            13.816,
            16.266,
            18.467,
            20.515,
            22.458,
            24.322,
        ];
        let want = reference(x, &p);
        assert_eq!(want.iter().filter(|&&w| w > 0.0).count(), support);
        let draws = 20_000u32;
        let mut counts = vec![0usize; x.len()];
        for step in 0..draws {
            // One request (one seed) over many steps, as a stream draws.
            let (id, lp) = sample_row(
                x,
                &RowSample {
                    step,
                    seed: 42,
                    ..p
                },
            );
            assert!(
                want[id as usize] > 0.0,
                "token {id} is outside the kept set"
            );
            assert!(
                (lp as f64 - want[id as usize].ln()).abs() < 1e-4,
                "logprob {lp}"
            );
            counts[id as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&want)
            .filter(|(_, &w)| w > 0.0)
            .map(|(&c, &w)| {
                let e = w * draws as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(
            chi2 < CRITICAL[support - 1],
            "chi2 {chi2}: counts {counts:?}, probabilities {want:?}"
        );
    }

    #[test]
    fn draws_follow_the_processed_distribution() {
        let x = [2.0f32, 1.5, 1.0, 0.5, 0.0, -1.0, 0.25, 1.25];
        chi_square(&x, row(1.0, 0, 1.0, 0.0), 8);
        chi_square(&x, row(0.8, 5, 0.9, 0.0), 4);
        chi_square(&x, row(1.3, 0, 0.7, 0.0), 4);
        chi_square(&x, row(1.0, 0, 1.0, 0.2), 5);
        chi_square(&x, row(0.7, 6, 0.95, 0.1), 5);
    }

    #[test]
    fn thresholds_match_the_sorted_definition() {
        // Many random rows: the kept set by thresholds equals the sorted one.
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        for case in 0..200 {
            let x: Vec<f32> = (0..300).map(|_| next() * 12.0 - 6.0).collect();
            let p = row(
                0.5 + next(),
                [0, 1, 7, 40, 299][case % 5],
                [1.0, 0.5, 0.9, 0.99][case % 4],
                [0.0, 0.05][case % 2],
            );
            let want = reference(&x, &p);
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let y: Vec<f32> = x.iter().map(|&v| (v - m) / p.temperature).collect();
            let bound = keep_bound(&y, &p);
            for (i, &v) in y.iter().enumerate() {
                assert_eq!(
                    key(v) <= bound,
                    want[i] > 0.0,
                    "case {case} token {i}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn draws_depend_only_on_seed_and_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = RowSample {
            seed: 7,
            step: 3,
            ..row(1.0, 0, 0.9, 0.0)
        };
        assert_eq!(sample_row(&x, &p), sample_row(&x, &p));
        let others: Vec<u32> = (0..20)
            .map(|s| sample_row(&x, &RowSample { seed: s, ..p }).0)
            .collect();
        assert!(others.iter().any(|&t| t != others[0]), "seeds change draws");
        let u = (0..10_000).map(|i| uniform(1, 2, i)).collect::<Vec<_>>();
        assert!(u.iter().all(|&v| v > 0.0 && v < 1.0));
        let mean = u.iter().sum::<f32>() / u.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
