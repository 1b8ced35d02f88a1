//! The one sampling rule of wick, written out in Rust: the host sampler draws by it
//! ([`GumbelMax`]), and the device sampler (`kernels/sampling.cu`) is checked against
//! [`sample_row`] token for token, so one seed gives one text on the CPU and the GPU, in
//! any batch, with or without `details`.
//!
//! For a row with temperature, top_k, top_p and min_p (after logit_bias and the penalties,
//! which `sampling::LogitAdjust` applies to the row on the device first; rows with
//! typical_p are truncated on the host, then drawn by the same rule), every filter is a
//! threshold on the tempered logit `y = (x - max) / T`, so the kept set is
//! `{ key(y) <= bound }` and no sort is needed: top_k keeps the k largest (ties with the
//! k-th included), top_p the smallest set of largest values holding `top_p` of the top_k
//! set's mass, min_p the values within `ln(min_p)` of the largest (the host sampler's
//! order and meaning). The mass is a sum of fixed-point weights ([`weight`]: `exp(y)` in
//! units of 2^-32, an integer), so it does not depend on the order of the additions and a
//! GPU's parallel sums give the same bound every run. The kernel finds each bound with a
//! radix select over the keys (four passes of 8 bits); [`keep_bound`] states the same
//! bounds as binary searches.
//!
//! The token is then drawn with the Gumbel-max trick: the argmax of `y + g` over the kept
//! set, `g = -ln(-ln u)` with `u` from a counter-based hash of (seed, step, token id). That
//! is an exact draw from the kept set's softmax, needs no cumulative sum, and depends only
//! on the request's seed and how many tokens it has generated: the same in any batch.
//!
//! Degenerate rows: a NaN logit is never kept or drawn (it counts as -inf); a +inf logit
//! is the maximum (tempered to 0; several share the draw); a row with no logit above -inf
//! has no token ([`sample_row`] gives `None`, the kernel [`NO_TOKEN`]), which fails that
//! request instead of choosing an arbitrary token.

/// The token id the device writes for a row it cannot choose from (every logit -inf or
/// NaN).
pub const NO_TOKEN: u32 = u32::MAX;

/// One row's sampling parameters, as the device kernel reads them (defined with the
/// launches, which take them).
pub use crate::ops::launch::RowSample;

/// A uniform strictly inside (0, 1) from (seed, step, token): splitmix64's finalizer over
/// the three, then 23 of its bits as `(b + 0.5) / 2^23`. Every such value is exact in f32
/// (24 significant bits at most), so the result lies in `[2^-24, 1 - 2^-24]`: never 0 or
/// 1, whose noise would be infinite. (With 24 bits, `2^24 - 1 + 0.5` rounded to `2^24`
/// and gave exactly 1.0, an infinite noise that won the draw whatever its token's
/// probability.)
#[inline]
pub fn uniform(seed: u64, step: u32, id: u32) -> f32 {
    unit(hash(seed, step, id))
}

/// splitmix64's finalizer over (seed, step, token).
#[inline]
fn hash(seed: u64, step: u32, id: u32) -> u64 {
    let mut z = seed ^ (((step as u64) << 32) | id as u64);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 23 bits of a hash as a uniform in `[2^-24, 1 - 2^-24]`.
#[inline]
fn unit(z: u64) -> f32 {
    ((z >> 41) as f32 + 0.5) * (1.0 / (1u64 << 23) as f32)
}

/// Gumbel noise for (seed, step, token): finite, at most [`gumbel_max`].
#[inline]
pub fn gumbel(seed: u64, step: u32, id: u32) -> f32 {
    -(-uniform(seed, step, id).ln()).ln()
}

/// The largest noise [`gumbel`] returns (its uniform's largest value, `1 - 2^-24`): about
/// 16.6. A token whose `y` is further than this below the best score so far cannot win.
#[inline]
pub fn gumbel_max() -> f32 {
    -(-(1.0f32 - 1.0 / (1u64 << 24) as f32).ln()).ln()
}

/// The row's maximum, NaN ignored (-inf when no logit is above -inf).
pub fn row_max(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The tempered logit of `x` in a row whose maximum is `m` (not -inf): `(x - m) / T` as
/// `(x - m) * inv_t`, 0 for the maximum itself (also when it is +inf), -inf for NaN.
#[inline]
pub fn tempered(x: f32, m: f32, inv_t: f32) -> f32 {
    if x == m {
        0.0
    } else if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        (x - m) * inv_t
    }
}

/// The key that orders tempered logits (`y <= 0`): `bits(-y)`, smaller for larger `y`;
/// 0 for the maximum (`y = 0`, whose negation is -0.0: its bits would order last, and
/// `max(-0.0, 0.0)` may return either zero, so the sign is not left to it); `u32::MAX`,
/// never kept, for NaN.
#[inline]
pub fn key(y: f32) -> u32 {
    if y < 0.0 {
        (-y).to_bits()
    } else if y == 0.0 {
        0
    } else {
        u32::MAX
    }
}

/// The bound that keeps every token whose tempered logit is above -inf (the bits of +inf;
/// -inf itself has this key too and is kept, with no weight and no chance in the draw).
pub const KEEP_ALL: u32 = 0x7f80_0000;

/// A tempered logit's weight in the top_p mass: `exp(y)` in units of 2^-32, truncated
/// (the maximum weighs exactly 2^32; a vocabulary of 2^20 tokens sums below 2^52).
#[inline]
pub fn weight(y: f32) -> u64 {
    (y.exp() * 4_294_967_296.0) as u64
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
/// - top_k (`0 < k < vocab`): the k-th smallest key (at most [`KEEP_ALL`]);
/// - top_p (`< 1`): the smallest `b` at most that with `mass(b) >= top_p * mass(bound)`,
///   `mass(b)` the sum of [`weight`]s of the keys `<= b`, compared in f64;
/// - min_p (`> 0`): at most `key(ln min_p)`.
pub fn keep_bound(y: &[f32], p: &RowSample) -> u32 {
    let vocab = y.len();
    let mut bound = KEEP_ALL;
    if p.top_k > 0 && (p.top_k as usize) < vocab {
        let k = p.top_k as usize;
        bound = search(KEEP_ALL, |b| {
            y.iter().filter(|&&v| key(v) <= b).count() >= k
        });
    }
    if p.top_p < 1.0 {
        let mass = |b: u32| -> u64 { y.iter().filter(|&&v| key(v) <= b).map(|&v| weight(v)).sum() };
        let target = p.top_p as f64 * mass(bound) as f64;
        bound = search(bound, |b| mass(b) as f64 >= target);
    }
    if p.min_p > 0.0 {
        bound = bound.min(key(p.min_p.ln()));
    }
    bound
}

/// The Gumbel-max draw of one row at one step: offer it the kept tokens with their
/// tempered logits, in any order; the token is the largest `y + gumbel(seed, step, id)`,
/// the lowest id on ties. Tokens that cannot beat the best so far (`y` more than
/// [`gumbel_max`] below it) cost no noise.
#[derive(Debug, Clone, Copy)]
pub struct GumbelMax {
    seed: u64,
    step: u32,
    reach: f32,
    best: f32,
    id: u32,
}

impl GumbelMax {
    pub fn new(seed: u64, step: u32) -> Self {
        Self {
            seed,
            step,
            reach: gumbel_max(),
            best: f32::NEG_INFINITY,
            id: NO_TOKEN,
        }
    }

    /// Offers token `id` with tempered logit `y` (-inf and NaN are never drawn).
    #[inline]
    pub fn offer(&mut self, id: u32, y: f32) {
        // fl(y + g) <= fl(y + reach): rounding is monotone, so nothing skipped could win.
        if y.is_nan() || y == f32::NEG_INFINITY || y + self.reach < self.best {
            return;
        }
        let s = y + gumbel(self.seed, self.step, id);
        if s > self.best || (s == self.best && id < self.id) {
            self.best = s;
            self.id = id;
        }
    }

    /// The drawn token (`None` when nothing above -inf was offered).
    pub fn token(&self) -> Option<u32> {
        (self.id != NO_TOKEN).then_some(self.id)
    }
}

/// Draws a token from raw logits `x` by the rule above; returns it and its log-probability
/// under the kept set's renormalised softmax of tempered logits, or `None` when no logit is
/// above -inf.
pub fn sample_row(x: &[f32], p: &RowSample) -> Option<(u32, f32)> {
    let m = row_max(x);
    if m == f32::NEG_INFINITY {
        return None;
    }
    let inv_t = 1.0 / p.temperature;
    let y: Vec<f32> = x.iter().map(|&v| tempered(v, m, inv_t)).collect();
    let bound = keep_bound(&y, p);
    let mut draw = GumbelMax::new(p.seed, p.step);
    let mut z = 0f64;
    for (i, &v) in y.iter().enumerate() {
        if key(v) <= bound {
            z += (v as f64).exp();
            draw.offer(i as u32, v);
        }
    }
    let id = draw.token()?;
    Some((id, y[id as usize] - z.ln() as f32))
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
            row: 0,
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
            )
            .unwrap();
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
            .map(|s| sample_row(&x, &RowSample { seed: s, ..p }).unwrap().0)
            .collect();
        assert!(others.iter().any(|&t| t != others[0]), "seeds change draws");
        let u = (0..10_000).map(|i| uniform(1, 2, i)).collect::<Vec<_>>();
        assert!(u.iter().all(|&v| v > 0.0 && v < 1.0));
        let mean = u.iter().sum::<f32>() / u.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    /// The seed whose hash at (step 0, token 0) is `z`: splitmix64's finalizer inverted.
    fn seed_hashing_to(z: u64) -> u64 {
        fn inverse(m: u64) -> u64 {
            let mut x = m; // Newton's iteration for the inverse of an odd m mod 2^64
            for _ in 0..6 {
                x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
            }
            x
        }
        fn unshift(y: u64, s: u32) -> u64 {
            let mut x = y;
            let mut k = s;
            while k < 64 {
                x ^= y >> k;
                k += s;
            }
            x
        }
        let mut x = unshift(z, 31);
        x = unshift(x.wrapping_mul(inverse(0x94D0_49BB_1331_11EB)), 27);
        x = unshift(x.wrapping_mul(inverse(0xBF58_476D_1CE4_E5B9)), 30);
        x.wrapping_sub(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn uniform_stays_strictly_inside_zero_and_one() {
        // The 24-bit form `((z >> 40) + 0.5) / 2^24` rounded 2^24 - 0.5 up to 2^24: u = 1.0,
        // infinite noise, a token drawn whatever its probability.
        let old = |z: u64| ((z >> 40) as f32 + 0.5) * (1.0 / (1u64 << 24) as f32);
        assert_eq!(old(u64::MAX), 1.0, "the value that rounded to 1.0");
        let extremes = [
            0u64,
            1,
            1 << 40,
            (1 << 41) - 1,
            u64::MAX,
            u64::MAX - 1,
            u64::MAX << 41,
            (u64::MAX >> 1) << 40,
        ];
        for z in extremes {
            let u = unit(z);
            assert!(u > 0.0 && u < 1.0, "hash {z:#x}: u = {u}");
            let g = -(-u.ln()).ln();
            assert!(g.is_finite() && g <= gumbel_max(), "hash {z:#x}: noise {g}");
        }
        assert!(gumbel_max().is_finite() && gumbel_max() > 16.0);
        // Through the whole path: the seeds whose hash is all ones and all zeros.
        for z in [u64::MAX, 0] {
            let seed = seed_hashing_to(z);
            assert_eq!(hash(seed, 0, 0), z);
            let g = gumbel(seed, 0, 0);
            assert!(g.is_finite(), "seed {seed:#x}: noise {g}");
        }
        // That seed's token 0 is drawn only with its probability: a token with a far lower
        // logit than the rest does not win.
        let seed = seed_hashing_to(u64::MAX);
        let mut x = vec![0.0f32; 50];
        x[0] = -40.0;
        let p = RowSample {
            seed,
            ..row(1.0, 0, 1.0, 0.0)
        };
        assert_ne!(sample_row(&x, &p).unwrap().0, 0);
    }

    #[test]
    fn nan_logits_are_never_kept_or_drawn() {
        let mut x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.7).cos()).collect();
        for i in (0..40).step_by(3) {
            x[i] = f32::NAN;
        }
        for (case, p) in [
            row(1.0, 0, 1.0, 0.0),
            row(0.7, 5, 1.0, 0.0),
            row(1.2, 0, 0.8, 0.0),
            row(1.0, 0, 1.0, 0.1),
            row(0.9, 30, 0.95, 0.02),
        ]
        .into_iter()
        .enumerate()
        {
            for step in 0..200 {
                let p = RowSample { step, ..p };
                let (id, lp) = sample_row(&x, &p).unwrap();
                assert!(!x[id as usize].is_nan(), "case {case}: NaN token {id}");
                assert!(lp.is_finite() && lp <= 0.0, "case {case}: logprob {lp}");
            }
        }
    }

    #[test]
    fn a_row_with_nothing_above_minus_infinity_has_no_token() {
        let p = row(1.0, 3, 0.9, 0.0);
        assert_eq!(sample_row(&[f32::NEG_INFINITY; 10], &p), None);
        assert_eq!(
            sample_row(&[f32::NAN, f32::NEG_INFINITY, f32::NAN], &p),
            None
        );
        // One finite token is always drawn.
        let mut x = [f32::NEG_INFINITY; 10];
        x[7] = -3.0;
        assert_eq!(sample_row(&x, &p), Some((7, 0.0)));
    }

    #[test]
    fn infinite_logits_share_the_draw() {
        let mut x = vec![1.0f32; 30];
        x[4] = f32::INFINITY;
        x[20] = f32::INFINITY;
        let mut seen = [0usize; 2];
        for step in 0..400 {
            let p = RowSample {
                step,
                ..row(1.0, 0, 0.9, 0.0)
            };
            let (id, lp) = sample_row(&x, &p).unwrap();
            assert!(id == 4 || id == 20, "token {id}");
            assert!((lp + std::f32::consts::LN_2).abs() < 1e-6, "logprob {lp}");
            seen[(id == 20) as usize] += 1;
        }
        assert!(seen[0] > 150 && seen[1] > 150, "{seen:?}");
    }

    #[test]
    fn pruned_draws_equal_the_full_argmax() {
        // The draw skips tokens too far below the best: the result is the plain argmax.
        let x: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.03)
            .collect();
        for step in 0..50 {
            let mut draw = GumbelMax::new(9, step);
            let mut full = (f32::NEG_INFINITY, 0u32);
            for (i, &v) in x.iter().enumerate() {
                let y = v - 30.0;
                draw.offer(i as u32, y);
                let s = y + gumbel(9, step, i as u32);
                if s > full.0 {
                    full = (s, i as u32);
                }
            }
            assert_eq!(draw.token(), Some(full.1));
        }
    }
}
