//! CPU matmul for GGUF Q4_1 weights, the type of the default model.
//!
//! Candle's CPU backend has no SIMD dot product for Q4_1 (it falls back to scalar code),
//! which made every matmul of the default model several times slower than llama.cpp. This
//! is ggml's AVX2 formulation: activations are quantized to Q8_1 (round half to even, as
//! llama.cpp's AVX2 quantizer), each 32-element block contributes
//! `d_w * d_x * Σ q4·q8 + m_w * s_x`, and the per-lane accumulation and horizontal sum
//! follow ggml's order, so results match llama.cpp's bit for bit. Work is spread over
//! candle's barrier pool, the same threads candle's own matmuls use.

use half::f16;

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

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// Reinterprets GGUF tensor bytes as Q4_1 blocks.
pub fn q4_1_blocks(bytes: &[u8]) -> Option<&[BlockQ4_1]> {
    if !bytes.len().is_multiple_of(std::mem::size_of::<BlockQ4_1>())
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<BlockQ4_1>())
    {
        return None;
    }
    // SAFETY: size and alignment checked; BlockQ4_1 is plain old data (any bit pattern valid).
    Some(unsafe {
        std::slice::from_raw_parts(
            bytes.as_ptr() as *const BlockQ4_1,
            bytes.len() / std::mem::size_of::<BlockQ4_1>(),
        )
    })
}

/// Quantizes one row (length a multiple of 32) to Q8_1.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        // As llama.cpp's AVX2 quantizer: 127 / amax rather than 1 / d.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        yb.d = f16::from_f32(d);
        yb.s = f16::from_f32(sum as f32 * d);
    }
}

/// Scalar dot product of a Q4_1 row and a Q8_1 row.
fn dot_scalar(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_1, BlockQ8_1};
    use std::arch::x86_64::*;

    /// f16 -> f32 with the F16C instruction.
    #[inline(always)]
    unsafe fn h(x: half::f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x.to_bits() as i32)))
    }

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

    /// Four weight rows against one activation row: `out[r] = w_r · x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4(w: [&[BlockQ4_1]; 4], x: &[BlockQ8_1]) -> [f32; 4] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        for (b, xb) in x.iter().enumerate() {
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let dy = _mm256_set1_ps(h(xb.d));
            let sy = h(xb.s);
            for r in 0..4 {
                let wb = w[r].get_unchecked(b);
                summs[r] += h(wb.m) * sy;
                let d = _mm256_mul_ps(_mm256_set1_ps(h(wb.d)), dy);
                let p = _mm256_maddubs_epi16(nibbles(&wb.qs), qy);
                let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, p));
                acc[r] = _mm256_fmadd_ps(d, xy, acc[r]);
            }
        }
        [
            hsum(acc[0]) + summs[0],
            hsum(acc[1]) + summs[1],
            hsum(acc[2]) + summs[2],
            hsum(acc[3]) + summs[3],
        ]
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (wb, xb) in w.iter().zip(x) {
            summs += h(wb.m) * h(xb.s);
            let d = _mm256_mul_ps(_mm256_set1_ps(h(wb.d)), _mm256_set1_ps(h(xb.d)));
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let p = _mm256_maddubs_epi16(nibbles(&wb.qs), qy);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, p)), acc);
        }
        hsum(acc) + summs
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of activations handled together, so a tile of quantized rows stays in L1 while
/// weight rows stream past it.
const ROW_TILE: usize = 8;

/// `out[m, n] = x[m, k] · w[n, k]^T` for Q4_1 weights `w` (`n * k / 32` blocks).
pub fn matmul_q4_1(x: &[f32], m: usize, k: usize, w: &[BlockQ4_1], n: usize, out: &mut [f32]) {
    assert!(
        k.is_multiple_of(QK) && x.len() == m * k && w.len() == n * k / QK && out.len() == m * n
    );
    let kb = k / QK;
    let zero = BlockQ8_1 {
        d: f16::ZERO,
        s: f16::ZERO,
        qs: [0; QK],
    };
    let mut xq = vec![zero; m * kb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        quantize_row_q8_1(row, q);
    }
    let simd = has_avx2();
    let quads = n / 4;
    let row_tiles = m.div_ceil(ROW_TILE);
    let out_ptr = out.as_mut_ptr() as usize;
    let wrow = |j: usize| &w[j * kb..(j + 1) * kb];
    let xrow = |i: usize| &xq[i * kb..(i + 1) * kb];
    // SAFETY (raw writes): each (row, column) of `out` is written by exactly one item.
    let write = |i: usize, j: usize, v: f32| unsafe { *(out_ptr as *mut f32).add(i * n + j) = v };
    let dot1 = |j: usize, i: usize| -> f32 {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has avx2, fma and f16c (checked above).
            return unsafe { avx2::dot1(wrow(j), xrow(i)) };
        }
        dot_scalar(wrow(j), xrow(i))
    };
    let pool = candle_core::utils::barrier_pool();
    pool.execute_chunked(row_tiles * quads.max(1), |items| {
        for item in items {
            let tile = item / quads.max(1);
            let quad = item % quads.max(1);
            let rows = tile * ROW_TILE..m.min((tile + 1) * ROW_TILE);
            if quads == 0 {
                continue;
            }
            let j = quad * 4;
            for i in rows {
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: as above.
                    let d = unsafe {
                        avx2::dot4([wrow(j), wrow(j + 1), wrow(j + 2), wrow(j + 3)], xrow(i))
                    };
                    for (c, v) in d.into_iter().enumerate() {
                        write(i, j + c, v);
                    }
                    continue;
                }
                for c in 0..4 {
                    write(i, j + c, dot1(j + c, i));
                }
            }
        }
    });
    for j in quads * 4..n {
        for i in 0..m {
            write(i, j, dot1(j, i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(i: usize) -> f32 {
        ((i as f32 * 12.9898).sin() * 43758.547).fract()
    }

    #[test]
    fn matches_dequantized_reference() {
        let (m, k, n) = (5, 96, 11);
        // Random Q4_1 weights.
        let w: Vec<BlockQ4_1> = (0..n * k / QK)
            .map(|b| BlockQ4_1 {
                d: f16::from_f32(0.01 + rand(b).abs() * 0.05),
                m: f16::from_f32(-0.2 * rand(b + 999).abs()),
                qs: std::array::from_fn(|i| (rand(b * 16 + i + 5) * 255.0).abs() as u8),
            })
            .collect();
        let x: Vec<f32> = (0..m * k).map(|i| rand(i + 12345)).collect();
        let mut out = vec![0.0; m * n];
        matmul_q4_1(&x, m, k, &w, n, &mut out);
        // Reference: dequantize W, quantize-dequantize x the same way, dot in f64.
        let kb = k / QK;
        for i in 0..m {
            let mut xq = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; QK]
                };
                kb
            ];
            quantize_row_q8_1(&x[i * k..(i + 1) * k], &mut xq);
            for j in 0..n {
                let mut s = 0f64;
                for b in 0..kb {
                    let wb = &w[j * kb + b];
                    for e in 0..QK {
                        let q = if e < 16 {
                            wb.qs[e] & 15
                        } else {
                            wb.qs[e - 16] >> 4
                        };
                        let wv = wb.d.to_f32() as f64 * q as f64 + wb.m.to_f32() as f64;
                        s += wv * xq[b].d.to_f32() as f64 * xq[b].qs[e] as f64;
                    }
                }
                let got = out[i * n + j] as f64;
                assert!(
                    (got - s).abs() < 1e-2 * (1.0 + s.abs()),
                    "({i},{j}): {got} vs {s}"
                );
                let scalar = dot_scalar(&w[j * kb..(j + 1) * kb], &xq) as f64;
                assert!((got - scalar).abs() < 1e-4 * (1.0 + s.abs()));
            }
        }
    }
}
