//! Quantized weights repacked for batched CPU matmuls (AVX2): groups of 8 weight rows are
//! interleaved block by block, so one 256-bit register holds 4 consecutive weights of each
//! of the 8 rows. An activation's 4 matching values are broadcast to all lanes, and
//! `maddubs` then computes 4-element partial dot products for all 8 rows at once, so the
//! results of a block land one row per lane: the block scales of the 8 rows are one vector
//! (no per-pair scalar scale arithmetic, no horizontal sums) and each unpacked weight
//! register serves up to four activation rows.
//!
//! Per 32-weight block and activation row this costs about 20 vector instructions for 8
//! weight rows, where the row-by-row dot product (ggml's arithmetic, `qmatmul`) costs about
//! 60 plus scalar f16 conversions. The arithmetic is exact in integers within a block;
//! only the order of the float sums across blocks differs from ggml's (and activation
//! scales stay f32 instead of being rounded to f16).
//!
//! Repacking keeps the size of the weights: a Q4_1 group block is the 8 rows' 20-byte
//! blocks, rearranged.

use half::f16;

use super::qmatmul::{BlockQ4_1, BlockQ8_0, QK};
use super::simd::has_avx2;

/// Weight rows per group.
pub const GROUP: usize = 8;

/// Eight rows' Q4_1 blocks for the same 32 columns. `qs[32 t + 4 r + e]` is byte `4 t + e`
/// of row `r`'s ggml block: its low nibble is weight `4 t + e`, its high nibble weight
/// `4 t + e + 16`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4_1x8 {
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
    pub qs: [u8; 128],
}

/// Eight rows' Q8_0 blocks for the same 32 columns: `qs[32 j + 4 r + e]` is weight
/// `4 j + e` of row `r`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q8_0x8 {
    pub d: [f16; GROUP],
    pub qs: [i8; 256],
}

const _: () = assert!(std::mem::size_of::<Q4_1x8>() == 8 * 20);
const _: () = assert!(std::mem::size_of::<Q8_0x8>() == 8 * 34);

/// 32 activations quantized as `d * q` (`q` in -127..=127), with `s = d * Σ q`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ActQ8 {
    pub qs: [i8; QK],
    pub d: f32,
    pub s: f32,
}

const ZERO_ACT: ActQ8 = ActQ8 {
    qs: [0; QK],
    d: 0.0,
    s: 0.0,
};

/// Quantizes one row of activations (`x.len()` a multiple of 32): per block
/// `d = amax / 127`, `q = round_half_even(x * 127 / amax)`.
pub fn quantize_row(x: &[f32], out: &mut [ActQ8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            let r = ((v * id).round_ties_even() as i32).clamp(-127, 127);
            *q = r as i8;
            sum += r;
        }
        yb.d = d;
        yb.s = d * sum as f32;
    }
}

/// A weight type that can be repacked into groups of 8 rows.
pub trait Packed: Copy + Send + Sync + 'static {
    /// The ggml block it is made from.
    type Block: Copy;
    /// `rows`: the group's 8 rows, each `kb` blocks; returns `kb` group blocks.
    fn pack(rows: [&[Self::Block]; GROUP], out: &mut Vec<Self>);
    /// `out[c][r] = w_r · x_c` over the group's blocks `w` (8 rows) for `R` activation rows.
    fn dot_8xr<const R: usize>(w: &[Self], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R];
}

impl Packed for Q4_1x8 {
    type Block = BlockQ4_1;

    fn pack(rows: [&[BlockQ4_1]; GROUP], out: &mut Vec<Self>) {
        for b in 0..rows[0].len() {
            let mut g = Q4_1x8 {
                d: [f16::ZERO; GROUP],
                m: [f16::ZERO; GROUP],
                qs: [0; 128],
            };
            for (r, row) in rows.iter().enumerate() {
                let wb = &row[b];
                g.d[r] = wb.d;
                g.m[r] = wb.m;
                for t in 0..4 {
                    g.qs[32 * t + 4 * r..][..4].copy_from_slice(&wb.qs[4 * t..4 * t + 4]);
                }
            }
            out.push(g);
        }
    }

    fn dot_8xr<const R: usize>(w: &[Self], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has avx2, fma and f16c.
            return unsafe { avx2::q4_1x8(w, x) };
        }
        q4_1x8_scalar(w, x)
    }
}

/// The Q4_1 group kernel without SIMD (CPUs without AVX2, and the tests' check of it).
fn q4_1x8_scalar<const R: usize>(w: &[Q4_1x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
    let mut out = [[0f32; GROUP]; R];
    for (o, xr) in out.iter_mut().zip(x.iter()) {
        for (wb, xb) in w.iter().zip(xr.iter()) {
            for (r, acc) in o.iter_mut().enumerate() {
                let mut sumi = 0i32;
                for t in 0..4 {
                    for e in 0..4 {
                        let q = wb.qs[32 * t + 4 * r + e];
                        sumi += (q & 0x0F) as i32 * xb.qs[4 * t + e] as i32
                            + (q >> 4) as i32 * xb.qs[4 * t + e + 16] as i32;
                    }
                }
                *acc += wb.d[r].to_f32() * xb.d * sumi as f32 + wb.m[r].to_f32() * xb.s;
            }
        }
    }
    out
}

impl Packed for Q8_0x8 {
    type Block = BlockQ8_0;

    fn pack(rows: [&[BlockQ8_0]; GROUP], out: &mut Vec<Self>) {
        for b in 0..rows[0].len() {
            let mut g = Q8_0x8 {
                d: [f16::ZERO; GROUP],
                qs: [0; 256],
            };
            for (r, row) in rows.iter().enumerate() {
                let wb = &row[b];
                g.d[r] = wb.d;
                for j in 0..8 {
                    g.qs[32 * j + 4 * r..][..4].copy_from_slice(&wb.qs[4 * j..4 * j + 4]);
                }
            }
            out.push(g);
        }
    }

    fn dot_8xr<const R: usize>(w: &[Self], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has avx2, fma and f16c.
            return unsafe { avx2::q8_0x8(w, x) };
        }
        q8_0x8_scalar(w, x)
    }
}

/// The Q8_0 group kernel without SIMD.
fn q8_0x8_scalar<const R: usize>(w: &[Q8_0x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
    let mut out = [[0f32; GROUP]; R];
    for (o, xr) in out.iter_mut().zip(x.iter()) {
        for (wb, xb) in w.iter().zip(xr.iter()) {
            for (r, acc) in o.iter_mut().enumerate() {
                let mut sumi = 0i32;
                for j in 0..8 {
                    for e in 0..4 {
                        sumi += wb.qs[32 * j + 4 * r + e] as i32 * xb.qs[4 * j + e] as i32;
                    }
                }
                *acc += wb.d[r].to_f32() * xb.d * sumi as f32;
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ActQ8, Q4_1x8, Q8_0x8, GROUP};
    use std::arch::x86_64::*;

    /// The 4 activations `4 j .. 4 j + 4` of a block, broadcast to every 32-bit lane.
    #[inline(always)]
    unsafe fn bcast4(x: &ActQ8, j: usize) -> __m256i {
        _mm256_set1_epi32((x.qs.as_ptr() as *const i32).add(j).read_unaligned())
    }

    #[inline(always)]
    unsafe fn store<const R: usize>(acc: [__m256; R]) -> [[f32; GROUP]; R] {
        let mut out = [[0f32; GROUP]; R];
        for c in 0..R {
            _mm256_storeu_ps(out[c].as_mut_ptr(), acc[c]);
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1x8<const R: usize>(w: &[Q4_1x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, wb) in w.iter().enumerate() {
            let p = wb.qs.as_ptr() as *const __m256i;
            // Per lane pair 2r, 2r+1: row r's partial sums. At most 8 maddubs results of
            // |15 * 127 * 2| each are added, which fits in i16.
            let mut s16 = [_mm256_setzero_si256(); R];
            for t in 0..4 {
                let pt = _mm256_loadu_si256(p.add(t));
                let lo = _mm256_and_si256(pt, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(pt, 4), mask);
                for c in 0..R {
                    let xb = x[c].get_unchecked(b);
                    s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(lo, bcast4(xb, t)));
                    s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(hi, bcast4(xb, t + 4)));
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(wb.d.as_ptr() as *const __m128i));
            let mw = _mm256_cvtph_ps(_mm_loadu_si128(wb.m.as_ptr() as *const __m128i));
            for c in 0..R {
                let xb = x[c].get_unchecked(b);
                let sumi = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[c], ones));
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
                acc[c] = _mm256_fmadd_ps(scale, sumi, acc[c]);
                acc[c] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), acc[c]);
            }
        }
        store(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0x8<const R: usize>(w: &[Q8_0x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, wb) in w.iter().enumerate() {
            let p = wb.qs.as_ptr() as *const __m256i;
            // i32 sums: a maddubs lane can reach 2 * 127 * 127, so each is widened at once.
            let mut s32 = [_mm256_setzero_si256(); R];
            for j in 0..8 {
                let q = _mm256_loadu_si256(p.add(j));
                let aq = _mm256_sign_epi8(q, q);
                for c in 0..R {
                    let sx = _mm256_sign_epi8(bcast4(x[c].get_unchecked(b), j), q);
                    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, sx), ones);
                    s32[c] = _mm256_add_epi32(s32[c], prod);
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(wb.d.as_ptr() as *const __m128i));
            for c in 0..R {
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x[c].get_unchecked(b).d));
                acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s32[c]), acc[c]);
            }
        }
        store(acc)
    }
}

/// A weight matrix `[n, k]` repacked into groups of 8 rows (`n` a multiple of 8).
#[derive(Debug, Clone)]
pub struct PackedMatrix<T: Packed> {
    n: usize,
    k: usize,
    /// Group after group, each `k / 32` blocks.
    blocks: Vec<T>,
}

impl<T: Packed> PackedMatrix<T> {
    /// `None` when `n` is not a multiple of 8, `k` not a multiple of 32, or `w` is not
    /// `n * k / 32` blocks.
    pub fn new(w: &[T::Block], n: usize, k: usize) -> Option<Self> {
        if !n.is_multiple_of(GROUP) || !k.is_multiple_of(QK) || w.len() != n * (k / QK) {
            return None;
        }
        let kb = k / QK;
        let mut blocks = Vec::with_capacity(n / GROUP * kb);
        for g in 0..n / GROUP {
            let rows: [&[T::Block]; GROUP] =
                std::array::from_fn(|r| &w[(g * GROUP + r) * kb..(g * GROUP + r + 1) * kb]);
            T::pack(rows, &mut blocks);
        }
        Some(Self { n, k, blocks })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    fn group(&self, g: usize) -> &[T] {
        let kb = self.k / QK;
        &self.blocks[g * kb..(g + 1) * kb]
    }
}

/// Activation rows handled by one work item: a tile stays in L1 while the weight groups
/// stream past it.
const ROW_TILE: usize = 16;

/// Several matmuls of the same input `x` (`[m, k]`, row-major) with packed weights:
/// `outs[i] = x · ws[i]^T` (`[m, n_i]`). The input is quantized once and all products run
/// in one dispatch to the thread pool.
pub fn matmul_many<T: Packed>(
    x: &[f32],
    m: usize,
    ws: &[&PackedMatrix<T>],
    outs: &mut [&mut [f32]],
) {
    let Some(k) = ws.first().map(|w| w.k) else {
        return;
    };
    assert!(x.len() == m * k && ws.len() == outs.len());
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert!(w.k == k && out.len() == m * w.n);
    }
    let kb = k / QK;
    let mut xq = vec![ZERO_ACT; m * kb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        quantize_row(row, q);
    }
    let xrow = |i: usize| &xq[i * kb..(i + 1) * kb];
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    // SAFETY (raw writes): each (matrix, row, group) of the outputs is written by exactly
    // one item, and the 8 columns of a group are in bounds (`n` is a multiple of 8).
    let write = |mat: usize, i: usize, g: usize, v: &[f32; GROUP]| unsafe {
        let dst = (out_ptrs[mat] as *mut f32).add(i * ws[mat].n + g * GROUP);
        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, GROUP);
    };
    let row_tiles = m.div_ceil(ROW_TILE);
    // Items are numbered matrix after matrix, row tile after row tile, group after group.
    let mut first = Vec::with_capacity(ws.len() + 1);
    first.push(0);
    for w in ws {
        first.push(first[first.len() - 1] + row_tiles * (w.n / GROUP));
    }
    let n_items = first[ws.len()];
    let run = |items: std::ops::Range<usize>| {
        for item in items {
            let mat = first.partition_point(|&f| f <= item) - 1;
            let w = ws[mat];
            let groups = w.n / GROUP;
            let local = item - first[mat];
            let (tile, g) = (local / groups, local % groups);
            let wg = w.group(g);
            let rows = tile * ROW_TILE..m.min((tile + 1) * ROW_TILE);
            let mut i = rows.start;
            while i + 4 <= rows.end {
                let d = T::dot_8xr(wg, [xrow(i), xrow(i + 1), xrow(i + 2), xrow(i + 3)]);
                for (c, v) in d.iter().enumerate() {
                    write(mat, i + c, g, v);
                }
                i += 4;
            }
            match rows.end - i {
                3 => {
                    let d = T::dot_8xr(wg, [xrow(i), xrow(i + 1), xrow(i + 2)]);
                    for (c, v) in d.iter().enumerate() {
                        write(mat, i + c, g, v);
                    }
                }
                2 => {
                    let d = T::dot_8xr(wg, [xrow(i), xrow(i + 1)]);
                    for (c, v) in d.iter().enumerate() {
                        write(mat, i + c, g, v);
                    }
                }
                1 => {
                    let [d] = T::dot_8xr(wg, [xrow(i)]);
                    write(mat, i, g, &d);
                }
                _ => {}
            }
        }
    };
    let pool = super::pool::global();
    if m == 1 {
        // Decode: one contiguous slice of weight groups per thread.
        pool.execute_contiguous(n_items, run);
    } else {
        pool.execute_chunked(n_items, run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn q4_1_weights(n: usize, k: usize, seed: u64) -> Vec<BlockQ4_1> {
        let mut s = seed;
        (0..n * k / QK)
            .map(|_| {
                let mut qs = [0u8; 16];
                for q in &mut qs {
                    *q = ((rand(&mut s) + 1.0) * 127.9) as u8;
                }
                BlockQ4_1 {
                    d: f16::from_f32(rand(&mut s) * 0.05),
                    m: f16::from_f32(rand(&mut s) * 0.2),
                    qs,
                }
            })
            .collect()
    }

    fn q8_0_weights(n: usize, k: usize, seed: u64) -> Vec<BlockQ8_0> {
        let mut s = seed;
        (0..n * k / QK)
            .map(|_| {
                let mut qs = [0i8; 32];
                for q in &mut qs {
                    *q = (rand(&mut s) * 127.0) as i8;
                }
                BlockQ8_0 {
                    d: f16::from_f32(rand(&mut s) * 0.05),
                    qs,
                }
            })
            .collect()
    }

    /// The dequantized weights times the quantized activations, in f64.
    fn reference(
        deq: &dyn Fn(usize, usize) -> f64,
        xq: &[ActQ8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<(f64, f64)> {
        let kb = k / QK;
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut mag) = (0f64, 0f64);
                for col in 0..k {
                    let xb = &xq[i * kb + col / QK];
                    let t = deq(j, col) * xb.qs[col % QK] as f64 * xb.d as f64;
                    sum += t;
                    mag += t.abs();
                }
                out.push((sum, mag));
            }
        }
        out
    }

    fn check(got: &[f32], want: &[(f64, f64)]) {
        for (i, (&g, &(w, mag))) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= 1e-5 * mag + 1e-6,
                "element {i}: {g} vs {w} (magnitude {mag})"
            );
        }
    }

    fn inputs(m: usize, k: usize) -> (Vec<f32>, Vec<ActQ8>) {
        let mut s = 7;
        let x: Vec<f32> = (0..m * k).map(|_| rand(&mut s) * 3.0).collect();
        let mut xq = vec![ZERO_ACT; m * k / QK];
        for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(k / QK)) {
            quantize_row(row, q);
        }
        (x, xq)
    }

    #[test]
    fn q4_1_packed_matches_the_dequantized_product() {
        let (n, k) = (24, 96);
        let w = q4_1_weights(n, k, 1);
        let kb = k / QK;
        let deq = |j: usize, col: usize| {
            let b = &w[j * kb + col / QK];
            let e = col % QK;
            let q = if e < 16 {
                b.qs[e] & 0x0F
            } else {
                b.qs[e - 16] >> 4
            };
            b.d.to_f64() * q as f64 + b.m.to_f64()
        };
        let p = PackedMatrix::<Q4_1x8>::new(&w, n, k).unwrap();
        for m in [1, 2, 3, 4, 5, 17, 40] {
            let (x, xq) = inputs(m, k);
            let mut out = vec![0f32; m * n];
            matmul_many(&x, m, &[&p], &mut [&mut out]);
            check(&out, &reference(&deq, &xq, m, n, k));
        }
    }

    #[test]
    fn q8_0_packed_matches_the_dequantized_product() {
        let (n, k) = (16, 128);
        let w = q8_0_weights(n, k, 3);
        let kb = k / QK;
        let deq = |j: usize, col: usize| {
            let b = &w[j * kb + col / QK];
            b.d.to_f64() * b.qs[col % QK] as f64
        };
        let p = PackedMatrix::<Q8_0x8>::new(&w, n, k).unwrap();
        for m in [1, 3, 4, 9, 33] {
            let (x, xq) = inputs(m, k);
            let mut out = vec![0f32; m * n];
            matmul_many(&x, m, &[&p], &mut [&mut out]);
            check(&out, &reference(&deq, &xq, m, n, k));
        }
    }

    #[test]
    fn extreme_weights_and_activations_do_not_overflow() {
        // All nibbles 15 against activations of +-127 everywhere: the largest i16 partial
        // sums the Q4_1 kernel can see.
        let (n, k) = (8, 32);
        let w = vec![
            BlockQ4_1 {
                d: f16::from_f32(1.0),
                m: f16::from_f32(0.0),
                qs: [0xFF; 16],
            };
            n * k / QK
        ];
        let p = PackedMatrix::<Q4_1x8>::new(&w, n, k).unwrap();
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; k];
            let mut out = vec![0f32; n];
            matmul_many(&x, 1, &[&p], &mut [&mut out]);
            for v in out {
                assert!((v - sign * 15.0 * 32.0).abs() < 1e-3, "{v}");
            }
        }
        let w8 = vec![
            BlockQ8_0 {
                d: f16::from_f32(1.0),
                qs: [-127; 32],
            };
            n * k / QK
        ];
        let p8 = PackedMatrix::<Q8_0x8>::new(&w8, n, k).unwrap();
        let x = vec![-1.0f32; k];
        let mut out = vec![0f32; n];
        matmul_many(&x, 1, &[&p8], &mut [&mut out]);
        for v in out {
            assert!((v - 127.0 * 32.0).abs() < 1e-2, "{v}");
        }
    }

    #[test]
    fn simd_and_scalar_kernels_agree() {
        let (n, k) = (8, 160);
        let (_, xq) = inputs(4, k);
        let kb = k / QK;
        let x: [&[ActQ8]; 4] = std::array::from_fn(|c| &xq[c * kb..(c + 1) * kb]);
        let close = |a: [[f32; GROUP]; 4], b: [[f32; GROUP]; 4]| {
            for (ra, rb) in a.iter().zip(&b) {
                for (u, v) in ra.iter().zip(rb) {
                    assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{u} vs {v}");
                }
            }
        };
        let p4 = PackedMatrix::<Q4_1x8>::new(&q4_1_weights(n, k, 11), n, k).unwrap();
        close(
            Q4_1x8::dot_8xr(p4.group(0), x),
            q4_1x8_scalar(p4.group(0), x),
        );
        let p8 = PackedMatrix::<Q8_0x8>::new(&q8_0_weights(n, k, 12), n, k).unwrap();
        close(
            Q8_0x8::dot_8xr(p8.group(0), x),
            q8_0x8_scalar(p8.group(0), x),
        );
    }

    #[test]
    fn shapes_that_do_not_pack_are_refused() {
        let w = q4_1_weights(12, 64, 5);
        assert!(PackedMatrix::<Q4_1x8>::new(&w, 12, 64).is_none());
        assert!(PackedMatrix::<Q4_1x8>::new(&w[..8], 8, 64).is_none());
    }
}
