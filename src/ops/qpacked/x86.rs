//! The SIMD kernels, one source compiled twice: with AVX2 (`avx2`), where the byte dot
//! products are `maddubs` (u8 x i8 pairs to i16) then `madd` by ones to i32, and with
//! AVX-512 VNNI on 256-bit registers (`vnni`), where `vpdpbusd` does both in one
//! instruction. In every kernel an activation's 4 values are broadcast to the 8 lanes of
//! a register whose lane `r` holds 4 weights of row `r`, so lane `r` of every sum is row
//! `r`'s result and the scales of the 8 rows are one vector.

use std::arch::x86_64::*;

use super::formats::*;
use super::{ActQ8, GROUP};

/// The 4 activations `4 j .. 4 j + 4` of a block, broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(x: &ActQ8, j: usize) -> __m256i {
    _mm256_set1_epi32((x.qs.as_ptr() as *const i32).add(j).read_unaligned())
}

/// The 8 activation broadcasts of a 32-value block.
#[inline(always)]
unsafe fn bcast_block(x: &ActQ8) -> [__m256i; 8] {
    let mut v = [_mm256_setzero_si256(); 8];
    for (j, v) in v.iter_mut().enumerate() {
        *v = bcast4(x, j);
    }
    v
}

#[inline(always)]
unsafe fn store<const R: usize>(acc: [__m256; R]) -> [[f32; GROUP]; R] {
    let mut out = [[0f32; GROUP]; R];
    for c in 0..R {
        _mm256_storeu_ps(out[c].as_mut_ptr(), acc[c]);
    }
    out
}

#[inline(always)]
pub(super) unsafe fn halves(h: &[f16; GROUP]) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i))
}

/// 8 unsigned bytes as i32 lanes.
#[inline(always)]
unsafe fn u8x8_epi32(p: &[u8]) -> __m256i {
    debug_assert!(p.len() >= 8);
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.as_ptr() as *const __m128i))
}

/// 8 unsigned bytes as f32 lanes.
#[inline(always)]
pub(super) unsafe fn u8x8(p: &[u8]) -> __m256 {
    _mm256_cvtepi32_ps(u8x8_epi32(p))
}

/// How far ahead of the block being multiplied the weight kernels ask for cache lines.
/// With the hardware prefetchers alone, decode spent most of its time waiting on the
/// weight loads; 2 KiB ahead helped the K-quants, and 32 KiB ahead (tried 1 block to
/// 160 KiB; flat from 20 KiB on) took decode on a 2-thread VM from 55 to 67 tok/s (Q6_K),
/// 70 to 88 (Q4_K_M), 74 to 95 (Q4_0) and, on the default model, 174 to 258 (Q4_1).
/// The lines are asked into L2 (`prefetcht1`), not L1: each weight byte is read once, and
/// L1's few outstanding-miss slots then stay free for the loads themselves (decode of the
/// K-quant-shaped file about +5% Q6_K, +9% Q4_K_M and Q4_0, +7% Q8_0 over `prefetcht0`;
/// default-model Q4_1 +8%; 64 KiB ahead with `prefetcht1` gained nothing more).
const PREFETCH_BYTES: usize = 32 * 1024;

/// Asks for the cache lines of the block `PREFETCH_BYTES` after block `b` into L2 (past
/// the slice's end: the next group's blocks, or nothing; a prefetch never faults).
#[inline(always)]
unsafe fn prefetch_ahead<T>(w: &[T], b: usize) {
    let size = std::mem::size_of::<T>();
    let dist = (PREFETCH_BYTES / size).max(1);
    let base = w.as_ptr().wrapping_add(b + dist) as *const i8;
    let mut off = 0;
    while off < size {
        _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(off));
        off += 64;
    }
    _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(size - 1));
}

/// `super::quantize_row_scalar` (`G` 32) or `super::quantize_row_super_scalar` (`G` 256)
/// with AVX2: the same products and the same rounding (`cvtps` rounds half to even), so
/// the same bytes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_row<const G: usize>(x: &[f32], out: &mut [ActQ8]) {
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (xg, yg) in x.chunks_exact(G).zip(out.chunks_exact_mut(G / 32)) {
        let mut m8 = _mm256_setzero_ps();
        for v in xg.chunks_exact(8) {
            m8 = _mm256_max_ps(m8, _mm256_andnot_ps(sign, _mm256_loadu_ps(v.as_ptr())));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        for (xb, yb) in xg.chunks_exact(32).zip(yg.iter_mut()) {
            let p = xb.as_ptr();
            let r: [__m256i; 4] = std::array::from_fn(|i| {
                let q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(8 * i)), id));
                _mm256_min_epi32(_mm256_max_epi32(q, lo), hi)
            });
            let bytes = _mm256_packs_epi16(
                _mm256_packs_epi32(r[0], r[1]),
                _mm256_packs_epi32(r[2], r[3]),
            );
            _mm256_storeu_si256(
                yb.qs.as_mut_ptr() as *mut __m256i,
                _mm256_permutevar8x32_epi32(bytes, order),
            );
            let hsum = |v: __m256i| {
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                _mm_cvtsi128_si32(s)
            };
            let hs = [
                hsum(_mm256_add_epi32(r[0], r[1])),
                hsum(_mm256_add_epi32(r[2], r[3])),
            ];
            yb.d = d;
            yb.s = d * (hs[0] + hs[1]) as f32;
            yb.hs = hs.map(|h| h as i16);
        }
    }
}

/// Low and high nibbles of the 4 registers of a packed 32-column block.
#[inline(always)]
pub(super) unsafe fn nibbles(qs: &[u8; 128]) -> ([__m256i; 4], [__m256i; 4]) {
    let mask = _mm256_set1_epi8(0x0F);
    let p = qs.as_ptr() as *const __m256i;
    let (mut lo, mut hi) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
    for t in 0..4 {
        let v = _mm256_loadu_si256(p.add(t));
        lo[t] = _mm256_and_si256(v, mask);
        hi[t] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
    (lo, hi)
}

/// Q5_0/Q5_1: the fifth bits (see `Q5_0x8`) ORed into the nibbles as bit 4.
#[inline(always)]
pub(super) unsafe fn fifth_bits(qh: &[u8; 32], lo: &mut [__m256i; 4], hi: &mut [__m256i; 4]) {
    let h = _mm256_loadu_si256(qh.as_ptr() as *const __m256i);
    let bit4 = _mm256_set1_epi8(0x10);
    // Shifts within 16-bit lanes move bits across bytes only into bits that the mask drops.
    let lo_bits = [
        _mm256_slli_epi16(h, 4),
        _mm256_slli_epi16(h, 3),
        _mm256_slli_epi16(h, 2),
        _mm256_slli_epi16(h, 1),
    ];
    let hi_bits = [
        h,
        _mm256_srli_epi16(h, 1),
        _mm256_srli_epi16(h, 2),
        _mm256_srli_epi16(h, 3),
    ];
    for t in 0..4 {
        lo[t] = _mm256_or_si256(lo[t], _mm256_and_si256(lo_bits[t], bit4));
        hi[t] = _mm256_or_si256(hi[t], _mm256_and_si256(hi_bits[t], bit4));
    }
}

/// Sub-block `j` (32 columns) of a packed Q6_K block: its 6-bit weights (0..64), register
/// `t` holding columns `4 t .. 4 t + 4` of the 8 rows (weights 0..16 in registers 0..4,
/// 16..32 in 4..8).
#[inline(always)]
pub(super) unsafe fn q6k_regs(w: &Q6Kx8, j: usize) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0F);
    let bits = _mm256_set1_epi8(0x30);
    let pl = w.ql.as_ptr().add(128 * j) as *const __m256i;
    let ph = w.qh.as_ptr().add(64 * j) as *const __m256i;
    let hr = [_mm256_loadu_si256(ph), _mm256_loadu_si256(ph.add(1))];
    let mut out = [_mm256_setzero_si256(); 8];
    for t in 0..4 {
        let v = _mm256_loadu_si256(pl.add(t));
        let h = hr[t & 1];
        let (h0, h1) = if t < 2 {
            (_mm256_slli_epi16(h, 4), h)
        } else {
            (_mm256_slli_epi16(h, 2), _mm256_srli_epi16(h, 2))
        };
        out[t] = _mm256_or_si256(_mm256_and_si256(v, mask), _mm256_and_si256(h0, bits));
        out[4 + t] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
            _mm256_and_si256(h1, bits),
        );
    }
    out
}

/// The parts of a Q4_K or Q5_K group block (Q4_K: `qh` unused).
#[derive(Clone, Copy)]
struct KBlock<'a> {
    d: &'a [f16; GROUP],
    dmin: &'a [f16; GROUP],
    sc: &'a [u8; 64],
    m: &'a [u8; 64],
    qs: &'a [u8; 1024],
    qh: &'a [u8; 256],
}

/// Q4_K's missing fifth bits.
static NO_QH: [u8; 256] = [0; 256];

impl<'a> KBlock<'a> {
    fn q4(w: &'a Q4Kx8) -> Self {
        Self {
            d: &w.d,
            dmin: &w.dmin,
            sc: &w.sc,
            m: &w.m,
            qs: &w.qs,
            qh: &NO_QH,
        }
    }

    fn q5(w: &'a Q5Kx8) -> Self {
        Self {
            d: &w.d,
            dmin: &w.dmin,
            sc: &w.sc,
            m: &w.m,
            qs: &w.qs,
            qh: &w.qh,
        }
    }
}

/// Sub-block `j`'s scales of a Q6_K group block: weights 0..16's (`sc0`) and 16..32's
/// (`sc1`), row r's in both i16 of lane r, and lane r's pair (-32 sc0, -32 sc1)
/// (|.| <= 4096).
#[inline(always)]
unsafe fn q6k_scales(w: &Q6Kx8, j: usize) -> (__m256i, __m256i, __m256i) {
    let v = _mm_loadu_si128(w.sc.as_ptr().add(16 * j) as *const __m128i);
    let sc0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, v));
    let sc1 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(v, v));
    let pair = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, _mm_srli_si128(v, 8)));
    (sc0, sc1, _mm256_mullo_epi16(pair, _mm256_set1_epi16(-32)))
}

/// Q4_K/Q5_K sub-blocks `2 p` and `2 p + 1`'s mins as i16 pairs: lane `r` holds row `r`'s
/// `(m_2p, m_2p+1)`.
#[inline(always)]
unsafe fn k_mins(m: &[u8; 64], p: usize) -> __m256i {
    let v = _mm_loadu_si128(m.as_ptr().add(16 * p) as *const __m128i);
    _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, _mm_srli_si128(v, 8)))
}

/// The activation sums `Σ xq` of blocks `j` and `j + 1` as one i16 pair (the lane that
/// `k_mins` multiplies; `|Σ| <= 32 * 127` fits i16).
#[inline(always)]
unsafe fn act_sums(x: &[ActQ8], j: usize) -> i32 {
    let sum = |b: &ActQ8| (b.hs[0] as i32 + b.hs[1] as i32) as u16 as i32;
    sum(x.get_unchecked(j)) | sum(x.get_unchecked(j + 1)) << 16
}

macro_rules! kernels {
    ($features:literal) => {
        use super::*;

        /// `lo` against activations `0..16` and `hi` against `16..32` (each register
        /// product at most 2 * 31 * 127, four of them fit in i16).
        #[inline(always)]
        unsafe fn dot_halves(lo: &[__m256i; 4], hi: &[__m256i; 4], x: &[__m256i; 8]) -> __m256i {
            let s = dot_acc(_mm256_setzero_si256(), lo, &[x[0], x[1], x[2], x[3]]);
            dot_acc(s, hi, &[x[4], x[5], x[6], x[7]])
        }

        /// The frame of every row kernel: `step` adds block `b` (`wb`) to the `R` rows'
        /// accumulators, with the blocks `PREFETCH_BYTES` ahead asked for first.
        #[inline(always)]
        unsafe fn blocks<T, const R: usize>(
            w: &[T],
            mut step: impl FnMut(&T, usize, &mut [__m256; R]),
        ) -> [[f32; GROUP]; R] {
            let mut acc = [_mm256_setzero_ps(); R];
            for (b, wb) in w.iter().enumerate() {
                prefetch_ahead(w, b);
                step(wb, b, &mut acc);
            }
            store(acc)
        }

        /// Shared by Q4_0, Q4_1, Q5_0 and Q5_1 (`d * xd * Σ q xq + m * xs` per row, `m`
        /// the offset: Q4_0's `-8 d`, Q5_0's `-16 d`, or the block's own).
        #[inline(always)]
        unsafe fn small<T, const R: usize>(
            w: &[T],
            x: [&[ActQ8]; R],
            block: impl Fn(&T) -> ([__m256i; 4], [__m256i; 4], __m256, __m256),
        ) -> [[f32; GROUP]; R] {
            blocks(w, |wb, b, acc| {
                let (lo, hi, dw, mw) = block(wb);
                for c in 0..R {
                    let xb = x[c].get_unchecked(b);
                    let sumi = _mm256_cvtepi32_ps(dot_halves(&lo, &hi, &bcast_block(xb)));
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
                    acc[c] = _mm256_fmadd_ps(scale, sumi, acc[c]);
                    acc[c] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), acc[c]);
                }
            })
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q4_0<const R: usize>(w: &[Q4_0x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            small(w, x, |wb| {
                let (lo, hi) = nibbles(&wb.qs);
                let dw = halves(&wb.d);
                (lo, hi, dw, _mm256_mul_ps(dw, _mm256_set1_ps(-8.0)))
            })
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q4_1<const R: usize>(w: &[Q4_1x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            small(w, x, |wb| {
                let (lo, hi) = nibbles(&wb.qs);
                (lo, hi, halves(&wb.d), halves(&wb.m))
            })
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q5_0<const R: usize>(w: &[Q5_0x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            small(w, x, |wb| {
                let (mut lo, mut hi) = nibbles(&wb.qs);
                fifth_bits(&wb.qh, &mut lo, &mut hi);
                let dw = halves(&wb.d);
                (lo, hi, dw, _mm256_mul_ps(dw, _mm256_set1_ps(-16.0)))
            })
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q5_1<const R: usize>(w: &[Q5_1x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            small(w, x, |wb| {
                let (mut lo, mut hi) = nibbles(&wb.qs);
                fifth_bits(&wb.qh, &mut lo, &mut hi);
                (lo, hi, halves(&wb.d), halves(&wb.m))
            })
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q8_0<const R: usize>(w: &[Q8_0x8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            blocks(w, |wb, b, acc| {
                let p = wb.qs.as_ptr() as *const __m256i;
                let mut aq = [_mm256_setzero_si256(); 8];
                let mut q = [_mm256_setzero_si256(); 8];
                for j in 0..8 {
                    q[j] = _mm256_loadu_si256(p.add(j));
                    aq[j] = _mm256_sign_epi8(q[j], q[j]);
                }
                let dw = halves(&wb.d);
                for c in 0..R {
                    let xb = x[c].get_unchecked(b);
                    let mut s32 = _mm256_setzero_si256();
                    // One register at a time: a product pair can reach 2 * 127 * 127.
                    for j in 0..8 {
                        let sx = _mm256_sign_epi8(bcast4(xb, j), q[j]);
                        s32 = dot_acc(s32, &[aq[j]], &[sx]);
                    }
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
                    acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s32), acc[c]);
                }
            })
        }

        /// Q4_K and Q5_K, super-block `b`: `isum = Σ_j sc_j Σ q xq` (`dot_scaled`) and
        /// `imin = Σ_j m_j Σ xq` (`k_mins`: two sub-blocks' mins against their activation
        /// sums in one `madd`), exact in i32, then `acc = fma(d xd, isum, acc)` and
        /// `acc = fnmadd(dmin xd, imin, acc)` (`formats`' module comment).
        #[inline(always)]
        unsafe fn k_quant<const R: usize, const FIVE: bool>(
            w: KBlock,
            x: [&[ActQ8]; R],
            b: usize,
            acc: &mut [__m256; R],
        ) {
            let KBlock {
                d,
                dmin,
                sc,
                m,
                qs,
                qh,
            } = w;
            let mask = _mm256_set1_epi8(0x0F);
            let bit4 = _mm256_set1_epi8(0x10);
            let p = qs.as_ptr() as *const __m256i;
            let ph = qh.as_ptr() as *const __m256i;
            let mut isum = [_mm256_setzero_si256(); R];
            let mut imin = [_mm256_setzero_si256(); R];
            for pair in 0..4 {
                let mut q = [[_mm256_setzero_si256(); 8]; 2];
                for u in 0..8 {
                    let v = _mm256_loadu_si256(p.add(8 * pair + u));
                    q[0][u] = _mm256_and_si256(v, mask);
                    q[1][u] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                    if FIVE {
                        // Bits 2 pair and 2 pair + 1 of qh moved to bit 4 (16-bit shifts
                        // leak across bytes only into bits the mask drops).
                        let h = _mm256_loadu_si256(ph.add(u));
                        let (h0, h1) = match pair {
                            0 => (_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 3)),
                            1 => (_mm256_slli_epi16(h, 2), _mm256_slli_epi16(h, 1)),
                            2 => (h, _mm256_srli_epi16(h, 1)),
                            _ => (_mm256_srli_epi16(h, 2), _mm256_srli_epi16(h, 3)),
                        };
                        q[0][u] = _mm256_or_si256(q[0][u], _mm256_and_si256(h0, bit4));
                        q[1][u] = _mm256_or_si256(q[1][u], _mm256_and_si256(h1, bit4));
                    }
                }
                let mins = k_mins(m, pair);
                for c in 0..R {
                    let sums = _mm256_set1_epi32(act_sums(x[c], 8 * b + 2 * pair));
                    imin[c] = madd_acc(imin[c], mins, sums);
                }
                for (s, q) in q.iter().enumerate() {
                    let j = 2 * pair + s;
                    let scj = u8x8_epi32(&sc[8 * j..]);
                    for c in 0..R {
                        let xs = bcast_block(x[c].get_unchecked(8 * b + j));
                        // Q4: 8 products of at most 2 * 15 * 127 fit in i16; Q5: 4.
                        isum[c] = if FIVE {
                            dot_scaled::<4>(isum[c], q, &xs, scj)
                        } else {
                            dot_scaled::<8>(isum[c], q, &xs, scj)
                        };
                    }
                }
            }
            let dw = halves(d);
            let dm = halves(dmin);
            for c in 0..R {
                let xd = _mm256_set1_ps(x[c].get_unchecked(8 * b).d);
                let (isum, imin) = (_mm256_cvtepi32_ps(isum[c]), _mm256_cvtepi32_ps(imin[c]));
                acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(dw, xd), isum, acc[c]);
                acc[c] = _mm256_fnmadd_ps(_mm256_mul_ps(dm, xd), imin, acc[c]);
            }
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q4_k<const R: usize>(w: &[Q4Kx8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            blocks(w, |wb, b, acc| {
                k_quant::<R, false>(KBlock::q4(wb), x, b, acc)
            })
        }

        #[target_feature(enable = $features)]
        pub unsafe fn q5_k<const R: usize>(w: &[Q5Kx8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            blocks(w, |wb, b, acc| {
                k_quant::<R, true>(KBlock::q5(wb), x, b, acc)
            })
        }

        /// Q6_K: the 6-bit weights `q` (0..64) as unsigned bytes against the signed
        /// activations, and per 16 weights of one scale `sc Σ (q - 32) x = sc Σ q x -
        /// 32 sc Σ x` (`ActQ8::hs`), all in i32 over the super-block (`isum`): a `maddubs`
        /// pair sum is at most 2 * 63 * 127, so two register products fit in i16, and the
        /// i8 scales multiply in the widening i16 product (`madd_acc`). Then one
        /// `acc = fma(d xd, isum, acc)` per super-block (`formats`' module comment).
        #[target_feature(enable = $features)]
        pub unsafe fn q6_k<const R: usize>(w: &[Q6Kx8], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
            blocks(w, |wb, b, acc| {
                let mut isum = [_mm256_setzero_si256(); R];
                for j in 0..8 {
                    // Weights 0..16 (`q[0]`) and 16..32 (`q[1]`) of the 8 rows, 0..64.
                    let u = q6k_regs(wb, j);
                    let q = [[u[0], u[1], u[2], u[3]], [u[4], u[5], u[6], u[7]]];
                    let (sc0, sc1, off) = q6k_scales(wb, j);
                    let sc = [sc0, sc1];
                    for c in 0..R {
                        let xb = x[c].get_unchecked(8 * b + j);
                        let xs = bcast_block(xb);
                        let hs = (xb.hs.as_ptr() as *const i32).read_unaligned();
                        // A chain per sub-block, short for latency.
                        let mut s = _mm256_madd_epi16(off, _mm256_set1_epi32(hs));
                        for (half, sc) in sc.iter().enumerate() {
                            for u in [0, 2] {
                                let p = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(q[half][u], xs[4 * half + u]),
                                    _mm256_maddubs_epi16(q[half][u + 1], xs[4 * half + u + 1]),
                                );
                                s = madd_acc(s, p, *sc);
                            }
                        }
                        isum[c] = _mm256_add_epi32(isum[c], s);
                    }
                }
                let dw = halves(&wb.d);
                for c in 0..R {
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x[c].get_unchecked(8 * b).d));
                    acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum[c]), acc[c]);
                }
            })
        }
    };
}

use half::f16;

pub mod avx2 {
    /// `acc + Σ_i w_i · x_i` per 32-bit lane (4 byte products each), `w` unsigned and `x`
    /// signed; the caller keeps the `N` products' pair sums within i16.
    #[inline(always)]
    unsafe fn dot_acc<const N: usize>(acc: __m256i, w: &[__m256i; N], x: &[__m256i; N]) -> __m256i {
        let mut s = _mm256_maddubs_epi16(w[0], x[0]);
        for i in 1..N {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[i], x[i]));
        }
        _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)))
    }

    /// `acc + madd(p, s)`: i16 pairs times i16 pairs, summed per 32-bit lane.
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }

    /// `acc + sc · Σ_i w_i · x_i` per 32-bit lane over a sub-block's 8 registers, `w`
    /// unsigned, `x` signed, `sc` the lane's scale (0..64): the `maddubs` pair sums added
    /// in i16 `N` registers at a time (the caller keeps them within i16), then multiplied
    /// by the scale in the widening `madd` (where `dot_acc` multiplies by 1).
    #[inline(always)]
    unsafe fn dot_scaled<const N: usize>(
        acc: __m256i,
        w: &[__m256i; 8],
        x: &[__m256i; 8],
        sc: __m256i,
    ) -> __m256i {
        let sc = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
        let mut acc = acc;
        for c in (0..8).step_by(N) {
            let mut s = _mm256_maddubs_epi16(w[c], x[c]);
            for i in c + 1..c + N {
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[i], x[i]));
            }
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, sc));
        }
        acc
    }

    kernels!("avx2,fma,f16c");
}

pub mod vnni {
    /// As `avx2::dot_acc`, with `vpdpbusd` (no i16 intermediate), two chains for latency.
    #[inline(always)]
    unsafe fn dot_acc<const N: usize>(acc: __m256i, w: &[__m256i; N], x: &[__m256i; N]) -> __m256i {
        let mut a = [acc, _mm256_setzero_si256()];
        for i in 0..N {
            a[i & 1] = _mm256_dpbusd_epi32(a[i & 1], w[i], x[i]);
        }
        if N > 1 {
            _mm256_add_epi32(a[0], a[1])
        } else {
            a[0]
        }
    }

    /// As `avx2::madd_acc`, in one instruction (`vpdpwssd`).
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, p, s)
    }

    /// As `avx2::dot_scaled` (the same integers; no i16 limit, so `N` is unused): the
    /// byte products summed in i32 (`dot_acc`), then one `mullo` by the scale.
    #[inline(always)]
    unsafe fn dot_scaled<const N: usize>(
        acc: __m256i,
        w: &[__m256i; 8],
        x: &[__m256i; 8],
        sc: __m256i,
    ) -> __m256i {
        let s = dot_acc(_mm256_setzero_si256(), w, x);
        _mm256_add_epi32(acc, _mm256_mullo_epi32(s, sc))
    }

    kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni");
}

/// Decode (one activation row) on 512-bit registers: two groups of 8 weight rows side by
/// side, lanes 0..8 the first group's rows and 8..16 the second's, so each instruction of
/// the 256-bit kernels serves 16 rows. Every lane goes through the 256-bit kernel's own
/// steps, so the results have the same bits.
pub mod vnni512 {
    use super::*;

    /// Two 256-bit halves as one register.
    #[inline(always)]
    unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    #[inline(always)]
    unsafe fn join_ps(lo: __m256, hi: __m256) -> __m512 {
        _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi)
    }

    /// The 16 lanes as the two groups' 8 results.
    #[inline(always)]
    unsafe fn store_pair(acc: __m512) -> [[f32; GROUP]; 2] {
        let mut out = [[0f32; GROUP]; 2];
        _mm256_storeu_ps(out[0].as_mut_ptr(), _mm512_castps512_ps256(acc));
        _mm256_storeu_ps(out[1].as_mut_ptr(), _mm512_extractf32x8_ps::<1>(acc));
        out
    }

    /// The frame of every two-group kernel: `step` adds block `b` of both groups (`wb0`,
    /// `wb1`) to the 16-lane accumulator, with each group's blocks `PREFETCH_BYTES` ahead
    /// asked for first.
    #[inline(always)]
    unsafe fn pair_blocks<T>(
        w0: &[T],
        w1: &[T],
        mut step: impl FnMut(&T, &T, usize, &mut __m512),
    ) -> [[f32; GROUP]; 2] {
        let mut acc = _mm512_setzero_ps();
        for (b, (wb0, wb1)) in w0.iter().zip(w1).enumerate() {
            prefetch_ahead(w0, b);
            prefetch_ahead(w1, b);
            step(wb0, wb1, b, &mut acc);
        }
        store_pair(acc)
    }

    /// `q6k_regs` of two group blocks, one per half.
    #[inline(always)]
    unsafe fn q6k_regs2(w0: &Q6Kx8, w1: &Q6Kx8, j: usize) -> [__m512i; 8] {
        let mask = _mm512_set1_epi8(0x0F);
        let bits = _mm512_set1_epi8(0x30);
        let load = |w: &Q6Kx8, off: usize, hi: bool| {
            let p = if hi {
                w.qh.as_ptr().add(off)
            } else {
                w.ql.as_ptr().add(off)
            };
            _mm256_loadu_si256(p as *const __m256i)
        };
        let hr = [
            join(load(w0, 64 * j, true), load(w1, 64 * j, true)),
            join(load(w0, 64 * j + 32, true), load(w1, 64 * j + 32, true)),
        ];
        let mut out = [_mm512_setzero_si512(); 8];
        for t in 0..4 {
            let v = join(
                load(w0, 128 * j + 32 * t, false),
                load(w1, 128 * j + 32 * t, false),
            );
            let h = hr[t & 1];
            let (h0, h1) = if t < 2 {
                (_mm512_slli_epi16::<4>(h), h)
            } else {
                (_mm512_slli_epi16::<2>(h), _mm512_srli_epi16::<2>(h))
            };
            out[t] = _mm512_or_si512(_mm512_and_si512(v, mask), _mm512_and_si512(h0, bits));
            out[4 + t] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
                _mm512_and_si512(h1, bits),
            );
        }
        out
    }

    /// `vnni::q8_0` for one activation row against groups `w0` and `w1` at once. The
    /// integer sums are the same, found another way: the weights shifted to unsigned bytes
    /// (`q + 128`, one XOR) against the signed activations, less `128 Σ x` (`ActQ8::hs`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn q8_0_pair(w0: &[Q8_0x8], w1: &[Q8_0x8], x: &[ActQ8]) -> [[f32; GROUP]; 2] {
        let flip = _mm512_set1_epi8(-128);
        pair_blocks(w0, w1, |wb0, wb1, b, acc| {
            let (p0, p1) = (
                wb0.qs.as_ptr() as *const __m256i,
                wb1.qs.as_ptr() as *const __m256i,
            );
            let xb = x.get_unchecked(b);
            let xq = xb.qs.as_ptr() as *const i32;
            let bias = -128 * (xb.hs[0] as i32 + xb.hs[1] as i32);
            let mut s = [_mm512_set1_epi32(bias), _mm512_setzero_si512()];
            for j in 0..8 {
                let q = join(_mm256_loadu_si256(p0.add(j)), _mm256_loadu_si256(p1.add(j)));
                let u = _mm512_xor_si512(q, flip);
                s[j & 1] =
                    _mm512_dpbusd_epi32(s[j & 1], u, _mm512_set1_epi32(xq.add(j).read_unaligned()));
            }
            let s32 = _mm512_add_epi32(s[0], s[1]);
            let dw = join_ps(halves(&wb0.d), halves(&wb1.d));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xb.d));
            *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(s32), *acc);
        })
    }

    /// `vnni::k_quant` (one super-block of Q4_K or Q5_K) for one activation row against
    /// two groups' blocks at once.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `u` indexes the loads as well as `q`.
    unsafe fn k_quant_pair<const FIVE: bool>(
        w: [KBlock; 2],
        x: &[ActQ8],
        b: usize,
        acc: &mut __m512,
    ) {
        let mask = _mm512_set1_epi8(0x0F);
        let bit4 = _mm512_set1_epi8(0x10);
        let p = w.map(|w| w.qs.as_ptr() as *const __m256i);
        let ph = w.map(|w| w.qh.as_ptr() as *const __m256i);
        let mut isum = _mm512_setzero_si512();
        let mut imin = _mm512_setzero_si512();
        for pair in 0..4 {
            let mut q = [[_mm512_setzero_si512(); 8]; 2];
            for u in 0..8 {
                let v = join(
                    _mm256_loadu_si256(p[0].add(8 * pair + u)),
                    _mm256_loadu_si256(p[1].add(8 * pair + u)),
                );
                q[0][u] = _mm512_and_si512(v, mask);
                q[1][u] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                if FIVE {
                    let h = join(
                        _mm256_loadu_si256(ph[0].add(u)),
                        _mm256_loadu_si256(ph[1].add(u)),
                    );
                    let (h0, h1) = match pair {
                        0 => (_mm512_slli_epi16::<4>(h), _mm512_slli_epi16::<3>(h)),
                        1 => (_mm512_slli_epi16::<2>(h), _mm512_slli_epi16::<1>(h)),
                        2 => (h, _mm512_srli_epi16::<1>(h)),
                        _ => (_mm512_srli_epi16::<2>(h), _mm512_srli_epi16::<3>(h)),
                    };
                    q[0][u] = _mm512_or_si512(q[0][u], _mm512_and_si512(h0, bit4));
                    q[1][u] = _mm512_or_si512(q[1][u], _mm512_and_si512(h1, bit4));
                }
            }
            let mins = join(k_mins(w[0].m, pair), k_mins(w[1].m, pair));
            let sums = _mm512_set1_epi32(act_sums(x, 8 * b + 2 * pair));
            imin = _mm512_dpwssd_epi32(imin, mins, sums);
            for (s, q) in q.iter().enumerate() {
                let j = 2 * pair + s;
                let scj = join(u8x8_epi32(&w[0].sc[8 * j..]), u8x8_epi32(&w[1].sc[8 * j..]));
                let xq = x.get_unchecked(8 * b + j).qs.as_ptr() as *const i32;
                let mut a = [_mm512_setzero_si512(); 2];
                for (u, &q) in q.iter().enumerate() {
                    let xs = _mm512_set1_epi32(xq.add(u).read_unaligned());
                    a[u & 1] = _mm512_dpbusd_epi32(a[u & 1], q, xs);
                }
                let sumi = _mm512_add_epi32(a[0], a[1]);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(sumi, scj));
            }
        }
        let xd = _mm512_set1_ps(x.get_unchecked(8 * b).d);
        let dw = join_ps(halves(w[0].d), halves(w[1].d));
        let dm = join_ps(halves(w[0].dmin), halves(w[1].dmin));
        let (isum, imin) = (_mm512_cvtepi32_ps(isum), _mm512_cvtepi32_ps(imin));
        *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd), isum, *acc);
        *acc = _mm512_fnmadd_ps(_mm512_mul_ps(dm, xd), imin, *acc);
    }

    /// `vnni::q4_k` for one activation row against groups `w0` and `w1` at once.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn q4_k_pair(w0: &[Q4Kx8], w1: &[Q4Kx8], x: &[ActQ8]) -> [[f32; GROUP]; 2] {
        pair_blocks(w0, w1, |wb0, wb1, b, acc| {
            k_quant_pair::<false>([wb0, wb1].map(KBlock::q4), x, b, acc)
        })
    }

    /// `vnni::q5_k` for one activation row against groups `w0` and `w1` at once.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn q5_k_pair(w0: &[Q5Kx8], w1: &[Q5Kx8], x: &[ActQ8]) -> [[f32; GROUP]; 2] {
        pair_blocks(w0, w1, |wb0, wb1, b, acc| {
            k_quant_pair::<true>([wb0, wb1].map(KBlock::q5), x, b, acc)
        })
    }

    /// `vnni::q6_k` for one activation row against groups `w0` and `w1` at once.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn q6_k_pair(w0: &[Q6Kx8], w1: &[Q6Kx8], x: &[ActQ8]) -> [[f32; GROUP]; 2] {
        pair_blocks(w0, w1, |wb0, wb1, b, acc| {
            let mut isum = _mm512_setzero_si512();
            for j in 0..8 {
                let u = q6k_regs2(wb0, wb1, j);
                let q = [[u[0], u[1], u[2], u[3]], [u[4], u[5], u[6], u[7]]];
                let (a0, a1, ao) = q6k_scales(wb0, j);
                let (b0, b1, bo) = q6k_scales(wb1, j);
                let sc = [join(a0, b0), join(a1, b1)];
                let off = join(ao, bo);
                let xb = x.get_unchecked(8 * b + j);
                let xq = xb.qs.as_ptr() as *const i32;
                let xs: [__m512i; 8] =
                    std::array::from_fn(|t| _mm512_set1_epi32(xq.add(t).read_unaligned()));
                let hs = (xb.hs.as_ptr() as *const i32).read_unaligned();
                // A chain per sub-block, short for latency.
                let mut s = _mm512_madd_epi16(off, _mm512_set1_epi32(hs));
                for (half, sc) in sc.iter().enumerate() {
                    for u in [0, 2] {
                        let p = _mm512_add_epi16(
                            _mm512_maddubs_epi16(q[half][u], xs[4 * half + u]),
                            _mm512_maddubs_epi16(q[half][u + 1], xs[4 * half + u + 1]),
                        );
                        s = _mm512_dpwssd_epi32(s, p, *sc);
                    }
                }
                isum = _mm512_add_epi32(isum, s);
            }
            let dw = join_ps(halves(&wb0.d), halves(&wb1.d));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.get_unchecked(8 * b).d));
            *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), *acc);
        })
    }
}
