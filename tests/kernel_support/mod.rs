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
    let group = heads / kv_heads;
    let mut base = 0; // first position of sequence s in k and v
    let mut row = 0;
    for &(c, n) in seqs {
        for i in 0..n {
            let visible = c + i + 1;
            for h in 0..heads {
                let kvh = h / group;
                let qh = &q[((row + i) * heads + h) * d..][..d];
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        let kj = &k[((base + j) * kv_heads + kvh) * d..][..d];
                        qh.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for e in 0..d {
                    let want: f64 = (0..visible)
                        .map(|j| w[j] * v[((base + j) * kv_heads + kvh) * d + e] as f64)
                        .sum::<f64>()
                        / z;
                    check(row + i, h, e, want);
                }
            }
        }
        base += c + n;
        row += n;
    }
}
