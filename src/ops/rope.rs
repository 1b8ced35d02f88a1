//! Rotary position embeddings with per-token positions (tokens of many sequences are
//! concatenated, so positions are arbitrary).

/// How the two halves of a rotated pair are laid out in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs are adjacent: (x[2i], x[2i+1]). llama.cpp's "normal" rope, used by GGUF llama
    /// files (whose q/k weights were permuted at conversion).
    Interleaved,
    /// Pairs are split across halves: (x[i], x[i + d/2]). Hugging Face llama, qwen2 GGUF.
    Neox,
}

/// Frequency scaling schemes.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Explicit per-frequency divisors (GGUF `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
    /// The leading dimensions of each head that are rotated (`2 * inv_freq.len()`); the
    /// rest pass through (partial rotary, e.g. Phi-4-mini's 0.75).
    rot_dim: usize,
    /// cos and sin are multiplied by this (longrope's attention factor; 1 otherwise).
    scale: f32,
    style: RopeStyle,
}

/// cos/sin of every (token, frequency) of one forward pass, shared by all layers.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    /// Every dimension of a `head_dim` head rotated, cos/sin unscaled.
    pub fn new(head_dim: usize, base: f32, scaling: &RopeScaling, style: RopeStyle) -> Self {
        Self::partial(head_dim, head_dim, 1.0, base, scaling, style)
    }

    /// The first `rot_dim` (even, at most `head_dim`) dimensions of each head rotated, the
    /// frequencies spread over `rot_dim`, cos and sin multiplied by `scale`.
    pub fn partial(
        head_dim: usize,
        rot_dim: usize,
        scale: f32,
        base: f32,
        scaling: &RopeScaling,
        style: RopeStyle,
    ) -> Self {
        let rot_dim = rot_dim.min(head_dim) & !1;
        let half = rot_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / rot_dim as f32))
            .collect();
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::FreqFactors(factors) => {
                for (f, d) in inv_freq.iter_mut().zip(factors) {
                    *f /= d;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen < high_wavelen {
                        // high frequency: unchanged
                    } else if wavelen > low_wavelen {
                        *f /= factor;
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Self {
            inv_freq,
            head_dim,
            rot_dim,
            scale,
            style,
        }
    }

    /// Dimensions of each head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The leading dimensions of each head that are rotated (even, at most `head_dim`);
    /// the rest pass through.
    pub fn rot_dim(&self) -> usize {
        self.rot_dim
    }

    /// What cos and sin are multiplied by (longrope's attention factor; 1 otherwise).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Inverse frequency of each rotated pair (`rot_dim / 2` values, scaling applied).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    pub fn tables(&self, positions: &[u32]) -> RopeTables {
        let mut t = RopeTables {
            cos: Vec::new(),
            sin: Vec::new(),
        };
        self.tables_into(positions, &mut t);
        t
    }

    /// [`Rope::tables`] into `out`, reusing its buffers.
    pub fn tables_into(&self, positions: &[u32], out: &mut RopeTables) {
        out.cos.clear();
        out.sin.clear();
        for &p in positions {
            for &f in &self.inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                out.cos.push(c * self.scale);
                out.sin.push(s * self.scale);
            }
        }
    }

    /// Rotates `x`, laid out `[tokens][heads][head_dim]`, in place (a prompt's tokens
    /// spread over the thread pool).
    pub fn apply(&self, x: &mut [f32], num_heads: usize, tables: &RopeTables) {
        super::simd::spread(x, num_heads * self.head_dim, |tokens, x| {
            self.apply_tokens(x, tokens.start, num_heads, tables)
        });
    }

    /// `apply` to tokens `first..` (`x`: theirs only).
    fn apply_tokens(&self, x: &mut [f32], first: usize, num_heads: usize, tables: &RopeTables) {
        let d = self.head_dim;
        let half = self.rot_dim / 2;
        for (t, token) in x.chunks_exact_mut(num_heads * d).enumerate() {
            let t = first + t;
            let cos = &tables.cos[t * half..(t + 1) * half];
            let sin = &tables.sin[t * half..(t + 1) * half];
            for head in token.chunks_exact_mut(d) {
                let head = &mut head[..self.rot_dim];
                match self.style {
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (head[2 * i], head[2 * i + 1]);
                            head[2 * i] = a * cos[i] - b * sin[i];
                            head[2 * i + 1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeStyle::Neox => {
                        let (lo, hi) = head.split_at_mut(half);
                        for i in 0..half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] - b * sin[i];
                            hi[i] = a * sin[i] + b * cos[i];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let rope = Rope::new(8, 10000.0, &RopeScaling::None, style);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 - 5.0).collect();
            let mut x = orig.clone();
            rope.apply(&mut x, 1, &rope.tables(&[0, 7]));
            assert_eq!(&x[..8], &orig[..8]);
            let n0: f32 = orig[8..].iter().map(|v| v * v).sum();
            let n1: f32 = x[8..].iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
            assert_ne!(&x[8..], &orig[8..]);
        }
    }

    #[test]
    fn styles_agree_after_permutation() {
        // Interleaved on a permuted head equals neox on the original.
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).cos()).collect();
        let mut permuted = vec![0.0; d];
        for i in 0..d / 2 {
            permuted[2 * i] = x[i];
            permuted[2 * i + 1] = x[i + d / 2];
        }
        let a = Rope::new(d, 500.0, &RopeScaling::None, RopeStyle::Neox);
        let b = Rope::new(d, 500.0, &RopeScaling::None, RopeStyle::Interleaved);
        let mut xa = x.clone();
        a.apply(&mut xa, 1, &a.tables(&[13]));
        b.apply(&mut permuted, 1, &b.tables(&[13]));
        for i in 0..d / 2 {
            assert!((xa[i] - permuted[2 * i]).abs() < 1e-6);
            assert!((xa[i + d / 2] - permuted[2 * i + 1]).abs() < 1e-6);
        }
    }

    /// Partial rotary: the first `rot_dim` dimensions rotate as a `rot_dim` head would, the
    /// rest pass through; the scale multiplies the rotated part only.
    #[test]
    fn partial_rotation_leaves_the_tail_and_scales_the_rotated_part() {
        let (d, r, scale) = (16, 12, 1.25);
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.61).sin()).collect();
        let part = Rope::partial(d, r, scale, 300.0, &RopeScaling::None, RopeStyle::Neox);
        let small = Rope::new(r, 300.0, &RopeScaling::None, RopeStyle::Neox);
        let mut got = x.clone();
        part.apply(&mut got, 2, &part.tables(&[9]));
        for h in 0..2 {
            let mut want = x[h * d..h * d + r].to_vec();
            small.apply(&mut want, 1, &small.tables(&[9]));
            for i in 0..r {
                assert!((got[h * d + i] - scale * want[i]).abs() < 1e-5);
            }
            assert_eq!(&got[h * d + r..(h + 1) * d], &x[h * d + r..(h + 1) * d]);
        }
        assert_eq!(
            (part.head_dim(), part.rot_dim(), part.scale()),
            (d, r, scale)
        );
        assert_eq!(
            (small.head_dim(), small.rot_dim(), small.scale()),
            (r, r, 1.0)
        );
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = Rope::new(64, 500000.0, &RopeScaling::None, RopeStyle::Neox);
        let scaled = Rope::new(64, 500000.0, &scaling, RopeStyle::Neox);
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 8.0 - scaled.inv_freq[last]).abs() < 1e-12);
    }
}
