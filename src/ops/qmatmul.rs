//! CPU matmuls for GGUF Q4_1 and Q8_0 weights, the types of the default model.
//!
//! Candle's CPU backend has no SIMD dot product for Q4_1 (it falls back to scalar code),
//! and its decode matmuls split rows across threads in interleaved chunks. These kernels
//! use ggml's AVX2 arithmetic: activations are quantized per 32-element block (Q8_1 for
//! Q4_1 weights, Q8_0 for Q8_0 weights; round half to even with `127 / amax`, as
//! llama.cpp's AVX2 quantizers), integer dot products per block, scaled and summed in the
//! same lane order, so results match llama.cpp's bit for bit. Work runs on candle's
//! barrier pool (the threads candle's own ops use): for decode each thread streams one
//! contiguous slice of the weight rows; for prefill a micro-kernel computes 4 weight rows
//! by 2 activation rows, unpacking each weight block once for both.

use half::f16;

use super::simd::has_avx2;

pub const QK: usize = 32;

/// ggml `block_q4_1`: 32 weights as `d * q + m`, q in 0..16.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// ggml `block_q8_1`: 32 activations as `d * q`, with `s = d * Σ q`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// ggml `block_q8_0`: 32 values as `d * q`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// A weight block type with its activation block type and dot-product kernels.
pub trait QType: Copy + Send + Sync + 'static {
    type Act: Copy + Send + Sync;
    const ZERO_ACT: Self::Act;
    fn quantize_row(x: &[f32], out: &mut [Self::Act]);
    fn dot_scalar(w: &[Self], x: &[Self::Act]) -> f32;
    /// Four weight rows against `R` activation rows: `out[c][r] = w_r · x_c`.
    fn dot_4xr<const R: usize>(w: [&[Self]; 4], x: [&[Self::Act]; R]) -> [[f32; 4]; R];
}

/// Reinterprets GGUF tensor bytes as blocks.
pub fn blocks<T: QType>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: size and alignment checked; the block types are plain old data for which
    // any bit pattern is valid.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) })
}

/// Shared by both activation quantizers: per block `d = amax / 127`, `q = round(x * 127 / amax)`.
fn quantize_block(xb: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xb) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    (d, sum)
}

impl QType for BlockQ4_1 {
    type Act = BlockQ8_1;
    const ZERO_ACT: BlockQ8_1 = BlockQ8_1 {
        d: f16::ZERO,
        s: f16::ZERO,
        qs: [0; QK],
    };

    fn quantize_row(x: &[f32], out: &mut [BlockQ8_1]) {
        for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let (d, sum) = quantize_block(xb, &mut yb.qs);
            yb.d = f16::from_f32(d);
            yb.s = f16::from_f32(sum as f32 * d);
        }
    }

    fn dot_scalar(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        let mut sumf = 0f32;
        for (wb, xb) in w.iter().zip(x) {
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let lo = (wb.qs[j] & 0x0F) as i32;
                let hi = (wb.qs[j] >> 4) as i32;
                sumi += lo * xb.qs[j] as i32 + hi * xb.qs[j + QK / 2] as i32;
            }
            sumf += sumi as f32 * wb.d.to_f32() * xb.d.to_f32() + wb.m.to_f32() * xb.s.to_f32();
        }
        sumf
    }

    fn dot_4xr<const R: usize>(w: [&[Self]; 4], x: [&[BlockQ8_1]; R]) -> [[f32; 4]; R] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has avx2, fma and f16c.
            return unsafe { avx2::q4_1_4xr(w, x) };
        }
        std::array::from_fn(|c| std::array::from_fn(|r| Self::dot_scalar(w[r], x[c])))
    }
}

impl QType for BlockQ8_0 {
    type Act = BlockQ8_0;
    const ZERO_ACT: BlockQ8_0 = BlockQ8_0 {
        d: f16::ZERO,
        qs: [0; QK],
    };

    fn quantize_row(x: &[f32], out: &mut [BlockQ8_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let (d, _) = quantize_block(xb, &mut yb.qs);
            yb.d = f16::from_f32(d);
        }
    }

    fn dot_scalar(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        let mut sumf = 0f32;
        for (wb, xb) in w.iter().zip(x) {
            let sumi: i32 = wb
                .qs
                .iter()
                .zip(&xb.qs)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            sumf += sumi as f32 * wb.d.to_f32() * xb.d.to_f32();
        }
        sumf
    }

    fn dot_4xr<const R: usize>(w: [&[Self]; 4], x: [&[BlockQ8_0]; R]) -> [[f32; 4]; R] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has avx2, fma and f16c.
            return unsafe { avx2::q8_0_4xr(w, x) };
        }
        std::array::from_fn(|c| std::array::from_fn(|r| Self::dot_scalar(w[r], x[c])))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
    use std::arch::x86_64::*;

    /// f16 -> f32 with the F16C instruction.
    #[inline(always)]
    unsafe fn h(x: half::f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x.to_bits() as i32)))
    }

    /// ggml's hsum_float_8.
    #[inline(always)]
    unsafe fn hsum(x: __m256) -> f32 {
        let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
        let tmp = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let both = _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1);
        _mm256_and_si256(_mm256_set1_epi8(0x0F), both)
    }

    /// Σ of unsigned x signed byte products, as 8 floats (ggml's mul_sum_us8_pairs_float).
    #[inline(always)]
    unsafe fn mul_sum_us8(ax: __m256i, sy: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(
            _mm256_set1_epi16(1),
            _mm256_maddubs_epi16(ax, sy),
        ))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_4xr<const R: usize>(
        w: [&[BlockQ4_1]; 4],
        x: [&[BlockQ8_1]; R],
    ) -> [[f32; 4]; R] {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut summs = [[0f32; 4]; R];
        for b in 0..x[0].len() {
            let mut qy = [_mm256_setzero_si256(); R];
            let mut dy = [0f32; R];
            let mut sy = [0f32; R];
            for c in 0..R {
                let xb = x[c].get_unchecked(b);
                qy[c] = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                dy[c] = h(xb.d);
                sy[c] = h(xb.s);
            }
            for r in 0..4 {
                let wb = w[r].get_unchecked(b);
                let qx = nibbles(&wb.qs);
                let (dw, mw) = (h(wb.d), h(wb.m));
                for c in 0..R {
                    summs[c][r] += mw * sy[c];
                    let d = _mm256_set1_ps(dw * dy[c]);
                    acc[c][r] = _mm256_fmadd_ps(d, mul_sum_us8(qx, qy[c]), acc[c][r]);
                }
            }
        }
        let mut out = [[0f32; 4]; R];
        for c in 0..R {
            for r in 0..4 {
                out[c][r] = hsum(acc[c][r]) + summs[c][r];
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_4xr<const R: usize>(
        w: [&[BlockQ8_0]; 4],
        x: [&[BlockQ8_0]; R],
    ) -> [[f32; 4]; R] {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for b in 0..x[0].len() {
            let mut qy = [_mm256_setzero_si256(); R];
            let mut dy = [0f32; R];
            for c in 0..R {
                let xb = x[c].get_unchecked(b);
                qy[c] = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                dy[c] = h(xb.d);
            }
            for r in 0..4 {
                let wb = w[r].get_unchecked(b);
                let qx = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
                let ax = _mm256_sign_epi8(qx, qx);
                let dw = h(wb.d);
                for c in 0..R {
                    let d = _mm256_set1_ps(dw * dy[c]);
                    let p = mul_sum_us8(ax, _mm256_sign_epi8(qy[c], qx));
                    acc[c][r] = _mm256_fmadd_ps(d, p, acc[c][r]);
                }
            }
        }
        let mut out = [[0f32; 4]; R];
        for c in 0..R {
            for r in 0..4 {
                out[c][r] = hsum(acc[c][r]);
            }
        }
        out
    }
}

/// Rows of activations handled together, so a tile of quantized rows stays in L1 while
/// weight rows stream past it.
const ROW_TILE: usize = 8;

/// `out[m, n] = x[m, k] · w[n, k]^T` for quantized weights `w` (`n * k / 32` blocks).
pub fn matmul<T: QType>(x: &[f32], m: usize, k: usize, w: &[T], n: usize, out: &mut [f32]) {
    matmul_many(x, m, k, &[(w, n)], &mut [out]);
}

/// Several matmuls of the same input (q/k/v, gate/up): the input is quantized once and
/// all products run in one dispatch to the thread pool.
pub fn matmul_many<T: QType>(
    x: &[f32],
    m: usize,
    k: usize,
    ws: &[(&[T], usize)],
    outs: &mut [&mut [f32]],
) {
    let mut outs: Vec<_> = outs.iter_mut().map(|o| super::as_uninit(o)).collect();
    matmul_many_uninit(x, m, k, ws, &mut outs)
}

/// `matmul_many` into outputs not yet written (every element is written).
pub fn matmul_many_uninit<T: QType>(
    x: &[f32],
    m: usize,
    k: usize,
    ws: &[(&[T], usize)],
    outs: &mut [&mut [std::mem::MaybeUninit<f32>]],
) {
    assert!(k.is_multiple_of(QK) && x.len() == m * k && ws.len() == outs.len());
    for ((w, n), out) in ws.iter().zip(outs.iter()) {
        assert!(w.len() == n * k / QK && out.len() == m * n);
    }
    let kb = k / QK;
    let mut xq = vec![T::ZERO_ACT; m * kb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        T::quantize_row(row, q);
    }
    let xrow = |i: usize| &xq[i * kb..(i + 1) * kb];
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    // SAFETY (raw writes): each (matrix, row, column) of the outputs is written by exactly
    // one item.
    let write = |mat: usize, i: usize, j: usize, v: f32| unsafe {
        *(out_ptrs[mat] as *mut f32).add(i * ws[mat].1 + j) = v
    };
    let row_tiles = m.div_ceil(ROW_TILE);
    // Items are numbered matrix after matrix: `first[mat]` is the first of matrix `mat`.
    let mut first = Vec::with_capacity(ws.len() + 1);
    first.push(0);
    for (_, n) in ws {
        first.push(first[first.len() - 1] + row_tiles * (n / 4));
    }
    let n_items = first[ws.len()];
    let run = |items: std::ops::Range<usize>| {
        for item in items {
            let mat = first.partition_point(|&f| f <= item) - 1;
            let (w, n) = ws[mat];
            let quads = n / 4;
            let local = item - first[mat];
            let (tile, quad) = (local / quads, local % quads);
            let j = quad * 4;
            let wrow = |j: usize| &w[j * kb..(j + 1) * kb];
            let wq = [wrow(j), wrow(j + 1), wrow(j + 2), wrow(j + 3)];
            let rows = tile * ROW_TILE..m.min((tile + 1) * ROW_TILE);
            let mut i = rows.start;
            while i + 2 <= rows.end {
                let d = T::dot_4xr(wq, [xrow(i), xrow(i + 1)]);
                for (c, row) in d.iter().enumerate() {
                    for (r, &v) in row.iter().enumerate() {
                        write(mat, i + c, j + r, v);
                    }
                }
                i += 2;
            }
            if i < rows.end {
                let [d] = T::dot_4xr(wq, [xrow(i)]);
                for (r, v) in d.into_iter().enumerate() {
                    write(mat, i, j + r, v);
                }
            }
        }
    };
    let pool = super::pool::global();
    if m == 1 {
        // Decode: one contiguous slice of weight rows per thread.
        pool.execute_contiguous(n_items, run);
    } else {
        pool.execute_chunked(n_items, run);
    }
    for (mat, (w, n)) in ws.iter().enumerate() {
        for j in n / 4 * 4..*n {
            for i in 0..m {
                write(mat, i, j, T::dot_scalar(&w[j * kb..(j + 1) * kb], xrow(i)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(i: usize) -> f32 {
        ((i as f32 * 12.9898).sin() * 43758.547).fract()
    }

    /// `matmul` against a plain f64 evaluation of the same quantized operands, for shapes
    /// that exercise the 4x2 and 4x1 kernels and the leftover columns.
    fn check<T: QType>(
        w: &[T],
        dequant: impl Fn(&T, usize) -> f64,
        act: impl Fn(&T::Act, usize) -> f64,
    ) {
        let (k, n) = (96, w.len() * QK / 96);
        for m in [1, 5, 16] {
            let x: Vec<f32> = (0..m * k).map(|i| rand(i + 12345)).collect();
            let mut out = vec![0.0; m * n];
            matmul(&x, m, k, w, n, &mut out);
            let kb = k / QK;
            for i in 0..m {
                let mut xq = vec![T::ZERO_ACT; kb];
                T::quantize_row(&x[i * k..(i + 1) * k], &mut xq);
                for j in 0..n {
                    let mut s = 0f64;
                    for b in 0..kb {
                        for e in 0..QK {
                            s += dequant(&w[j * kb + b], e) * act(&xq[b], e);
                        }
                    }
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - s).abs() < 1e-3 * (1.0 + s.abs()),
                        "m={m} ({i},{j}): {got} vs {s}"
                    );
                    let scalar = T::dot_scalar(&w[j * kb..(j + 1) * kb], &xq) as f64;
                    assert!((got - scalar).abs() < 1e-4 * (1.0 + s.abs()));
                }
            }
        }
    }

    #[test]
    fn q4_1_matches_reference() {
        let n = 11;
        let w: Vec<BlockQ4_1> = (0..n * 3)
            .map(|b| BlockQ4_1 {
                d: f16::from_f32(0.01 + rand(b).abs() * 0.05),
                m: f16::from_f32(-0.2 * rand(b + 999).abs()),
                qs: std::array::from_fn(|i| (rand(b * 16 + i + 5) * 255.0).abs() as u8),
            })
            .collect();
        check(
            &w,
            |wb, e| {
                let q = if e < 16 {
                    wb.qs[e] & 15
                } else {
                    wb.qs[e - 16] >> 4
                };
                wb.d.to_f32() as f64 * q as f64 + wb.m.to_f32() as f64
            },
            |xb, e| xb.d.to_f32() as f64 * xb.qs[e] as f64,
        );
    }

    #[test]
    fn q8_0_matches_reference() {
        let n = 10;
        let w: Vec<BlockQ8_0> = (0..n * 3)
            .map(|b| BlockQ8_0 {
                d: f16::from_f32(0.01 + rand(b).abs() * 0.05),
                qs: std::array::from_fn(|i| (rand(b * 32 + i + 5) * 127.0) as i8),
            })
            .collect();
        check(
            &w,
            |wb, e| wb.d.to_f32() as f64 * wb.qs[e] as f64,
            |xb, e| xb.d.to_f32() as f64 * xb.qs[e] as f64,
        );
    }

    #[test]
    fn many_equals_separate() {
        let k = 64;
        let mk = |n: usize, salt: usize| -> Vec<BlockQ8_0> {
            (0..n * k / QK)
                .map(|b| BlockQ8_0 {
                    d: f16::from_f32(0.02),
                    qs: std::array::from_fn(|i| (rand(b * 32 + i + salt) * 127.0) as i8),
                })
                .collect()
        };
        let (wa, wb) = (mk(6, 1), mk(9, 2));
        for m in [1, 3] {
            let x: Vec<f32> = (0..m * k).map(|i| rand(i + 77)).collect();
            let (mut a, mut b) = (vec![0.0; m * 6], vec![0.0; m * 9]);
            matmul(&x, m, k, &wa, 6, &mut a);
            matmul(&x, m, k, &wb, 9, &mut b);
            let (mut a2, mut b2) = (vec![0.0; m * 6], vec![0.0; m * 9]);
            matmul_many(&x, m, k, &[(&wa, 6), (&wb, 9)], &mut [&mut a2, &mut b2]);
            assert_eq!((a, b), (a2, b2));
        }
    }

    #[test]
    fn quantizer_rounds_half_to_even_with_127_over_amax() {
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let mut out = [BlockQ8_0::ZERO_ACT];
        BlockQ8_0::quantize_row(&x, &mut out);
        assert_eq!(&out[0].qs[..3], &[127, 2, -4]);
    }
}
