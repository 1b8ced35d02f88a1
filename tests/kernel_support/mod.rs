//! What the kernel tests share (`cuda_kernels.rs` on a GPU, `kernel_emu.rs` on the CPU
//! emulator): reproducible inputs and the plain f64 attention the kernels are held to.
#![allow(dead_code)]

/// A small deterministic generator (xorshift) for reproducible inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        let mut s = 0.0;
        for _ in 0..4 {
            s += (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 1.732
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Causal attention in f64 over a batch of sequences, `seqs[s] = (cached, new)`: `q` is
/// `[rows][heads][d]` for the new tokens, `k` and `v` `[positions][kv_heads][d]` for every
/// position of every sequence, one sequence after another. Calls
/// `check(row, head, dim, want)` for every output element, in order.
#[allow(clippy::too_many_arguments)]
pub fn attention_f64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[(usize, usize)],
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
    mut check: impl FnMut(usize, usize, usize, f64),
) {
    attention_f64_abs(
        q,
        k,
        v,
        seqs,
        heads,
        kv_heads,
        d,
        scale,
        |r, h, e, want, _| check(r, h, e, want),
    )
}

/// [`attention_f64`], also passing `sum_j w_j |v_j| / sum_j w_j` (the softmax average of
/// the values' magnitudes) to `check`: what rounding the softmax weights (as the prefill
/// kernel rounds P to 16 bits for its tensor-core product) can change the output by, per
/// unit of relative weight error.
#[allow(clippy::too_many_arguments)]
pub fn attention_f64_abs(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[(usize, usize)],
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
    check: impl FnMut(usize, usize, usize, f64, f64),
) {
    attention_f64_masked(q, k, v, seqs, heads, kv_heads, d, scale, None, None, check)
}

/// [`attention_f64_abs`] with a sliding window (`Some(w)`: the query at position `p` sees
/// only the keys at `p + 1 - w ..= p`) and soft-capping (`Some(c)`: each scaled score `s`
/// becomes `c * tanh(s / c)`), as `ops::paged_attention_windowed` states them.
#[allow(clippy::too_many_arguments)]
pub fn attention_f64_masked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[(usize, usize)],
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
    window: Option<usize>,
    softcap: Option<f32>,
    mut check: impl FnMut(usize, usize, usize, f64, f64),
) {
    let group = heads / kv_heads;
    let mut base = 0; // first position of sequence s in k and v
    let mut row = 0;
    for &(c, n) in seqs {
        for i in 0..n {
            let visible = c + i + 1;
            let first = window.map_or(0, |w| visible.saturating_sub(w));
            for h in 0..heads {
                let kvh = h / group;
                let qh = &q[((row + i) * heads + h) * d..][..d];
                let scores: Vec<f64> = (first..visible)
                    .map(|j| {
                        let kj = &k[((base + j) * kv_heads + kvh) * d..][..d];
                        let s = qh
                            .iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale as f64;
                        match softcap {
                            Some(c) => c as f64 * (s / c as f64).tanh(),
                            None => s,
                        }
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for e in 0..d {
                    let (mut want, mut abs) = (0f64, 0f64);
                    for (j, wj) in (first..).zip(&w) {
                        let x = v[((base + j) * kv_heads + kvh) * d + e] as f64;
                        want += wj * x;
                        abs += wj * x.abs();
                    }
                    check(row + i, h, e, want / z, abs / z);
                }
            }
        }
        base += c + n;
        row += n;
    }
}

/// A batch's cache and inputs: block tables handed out in a scrambled order, and the K/V
/// of every position of every sequence (`seqs[s] = (cached, new)`), one sequence after
/// another, passed through `round` (the kernel dtype's rounding).
pub struct PagedInputs {
    pub layout: wick::kv::CacheLayout,
    pub tables: Vec<Vec<u32>>,
    /// `[positions][kv_heads][d]`.
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// The cache slot of each position.
    pub slots: Vec<u32>,
}

impl PagedInputs {
    pub fn new(
        rng: &mut Rng,
        seqs: &[(usize, usize)],
        block_size: usize,
        kv_heads: usize,
        d: usize,
        round: impl Fn(f32) -> f32,
    ) -> Self {
        let bs = block_size;
        let blocks_per: Vec<usize> = seqs.iter().map(|&(c, q)| (c + q).div_ceil(bs)).collect();
        let num_blocks: usize = blocks_per.iter().sum::<usize>() + 3;
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.below(i + 1));
        }
        let tables: Vec<Vec<u32>> = blocks_per
            .iter()
            .map(|&n| free.drain(..n).collect())
            .collect();
        let layout = wick::kv::CacheLayout {
            num_blocks,
            block_size: bs,
            num_kv_heads: kv_heads,
            head_dim: d,
        };
        let (mut k, mut v, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (s, &(c, q)) in seqs.iter().enumerate() {
            for pos in 0..c + q {
                slots.push(tables[s][pos / bs] * bs as u32 + (pos % bs) as u32);
                for _ in 0..kv_heads * d {
                    k.push(round(rng.normal()));
                    v.push(round(rng.normal()));
                }
            }
        }
        Self {
            layout,
            tables,
            k,
            v,
            slots,
        }
    }
}
