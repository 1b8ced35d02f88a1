//! The batched path for many activation rows (prefill, large decode batches) on AVX-512
//! VNNI: weights are unpacked once per work item into a small tile of bytes, and one
//! microkernel multiplies that tile with up to 8 activation rows at a time, whatever the
//! format (only the float steps after the integer sums differ, see `Epilogue`).
//!
//! The per-row kernels (`x86`) unpack a weight block again for every 4 activation rows,
//! and most of their instructions are that unpacking and the per-sub-block scale
//! arithmetic. Here every format is first brought to one form, per 16 weight rows and
//! `KC` columns (`Tile`): the weights as bytes, one 512-bit register per 4 columns (byte
//! `4 r + e` is column `4 c + e` of row `r`), and the format's scales as vectors of the 16
//! rows. The microkernel then does one `vpdpbusd` (16 rows x 4 columns x one activation
//! row, the activation's 4 bytes broadcast) per 64 multiply-adds; the activations are
//! shifted to unsigned bytes (+128) and every sum starts from `-128 Σ q` of its rows.
//!
//! Batch invariance: a row's result must not depend on how many rows share its matmul
//! (greedy decoding gives one text whatever the batch). The integer sums here equal the
//! row kernels' exactly, and the float steps after them (`Epilogue`) are the row kernels'
//! own, in the same order, so both paths give the same bits. Unpacking costs about as much
//! as a few activation rows of the row kernels, so each format takes this path from its
//! own `Unpack::BATCH_FROM` rows on.

use std::arch::x86_64::*;

use super::formats::*;
use super::x86::{fifth_bits, halves, nibbles, q6k_regs, u8x8};
use super::{ActQ8, Items, PackedMatrix, PackedWeight, GROUP};
use crate::ops::qmatmul::QK;

/// Columns unpacked at a time: one K-quant super-block, 16 KiB of tile for `RB` rows.
const KC: usize = 256;
/// Weight rows per work item (4 tiles of 16).
const RB: usize = 64;
/// Most activation rows per work item (the weights of an item are unpacked once).
const MT: usize = 256;
/// Activation rows per microkernel call.
const NT: usize = 8;

/// The row kernels' float steps after each integer sum (see `x86`), per format family.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// Q4_0, Q4_1, Q5_0, Q5_1 per 32 columns: `acc += (a xd) Σ + b xs` (`a` the block
    /// scale, `b` the offset or min).
    Small,
    /// Q8_0 per 32 columns: `acc += (a xd) Σ`.
    Q8,
    /// Q4_K, Q5_K: per sub-block `sacc += Σ (a xd)`, `macc += b xs` (`a`, `b` the
    /// sub-block's integer scale and min), per super-block `acc += d sacc - dmin macc`.
    K,
    /// Q6_K: per 32 columns the integer `Σ_h sc_h (Σ_h - 32 hs_h)` over its two halves,
    /// `sacc += that xd`, per super-block `acc += d sacc`. The weights are stored less 32
    /// (signed), so each half's sum comes out as `Σ_h - 32 hs_h` from a per-weight-row
    /// start; the two products with the scales are taken in f32, where every value
    /// involved is an integer below 2^24 and so exact: the row kernels' i32 to the bit,
    /// without 32-bit integer multiplies.
    Q6,
}

/// A packed format brought to the tile's form.
pub trait Unpack: super::Packed {
    /// Columns per scale: 32, or 16 for Q6_K.
    const SUB: usize;
    const EPILOGUE: Epilogue;
    /// Activation rows from which this path beats the row kernels (measured on 2048 x 2048
    /// matrices with 2 threads, AVX-512 VNNI): unpacking costs about as much as a few rows
    /// of the row kernels, most where those are leanest (Q4_K, Q4_1).
    const BATCH_FROM: usize;
    /// Columns `32 j .. 32 j + 32` of the block as the row kernels' integer weights
    /// (unsigned, except Q8_0's signed ones; at most 63 or Q8_0's -128..127): register `u`
    /// holds columns `4 u .. 4 u + 4` of the 8 rows (byte `4 r + e`).
    ///
    /// # Safety
    /// AVX2 must be available (called from the VNNI kernels only).
    unsafe fn unpack(&self, j: usize) -> [__m256i; 8];
    /// Scale `s` (of `SUB` columns): `(a, b)` of the 8 rows (see `Epilogue`).
    ///
    /// # Safety
    /// As `unpack`.
    unsafe fn coeffs(&self, s: usize) -> (__m256, __m256);
    /// The super-block's `(d, dmin)` of the 8 rows (K-quants; zeros elsewhere).
    ///
    /// # Safety
    /// As `unpack`.
    unsafe fn block_scales(&self) -> (__m256, __m256) {
        (_mm256_setzero_ps(), _mm256_setzero_ps())
    }
}

#[inline(always)]
unsafe fn nibble_regs(qs: &[u8; 128], qh: Option<&[u8; 32]>) -> [__m256i; 8] {
    let (mut lo, mut hi) = nibbles(qs);
    if let Some(qh) = qh {
        fifth_bits(qh, &mut lo, &mut hi);
    }
    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
}

impl Unpack for Q4_0x8 {
    const SUB: usize = 32;
    const EPILOGUE: Epilogue = Epilogue::Small;
    const BATCH_FROM: usize = 20;
    #[inline(always)]
    unsafe fn unpack(&self, _: usize) -> [__m256i; 8] {
        nibble_regs(&self.qs, None)
    }
    #[inline(always)]
    unsafe fn coeffs(&self, _: usize) -> (__m256, __m256) {
        let d = halves(&self.d);
        (d, _mm256_mul_ps(d, _mm256_set1_ps(-8.0)))
    }
}

impl Unpack for Q4_1x8 {
    const SUB: usize = 32;
    const EPILOGUE: Epilogue = Epilogue::Small;
    const BATCH_FROM: usize = 24;
    #[inline(always)]
    unsafe fn unpack(&self, _: usize) -> [__m256i; 8] {
        nibble_regs(&self.qs, None)
    }
    #[inline(always)]
    unsafe fn coeffs(&self, _: usize) -> (__m256, __m256) {
        (halves(&self.d), halves(&self.m))
    }
}

impl Unpack for Q5_0x8 {
    const SUB: usize = 32;
    const EPILOGUE: Epilogue = Epilogue::Small;
    const BATCH_FROM: usize = 16;
    #[inline(always)]
    unsafe fn unpack(&self, _: usize) -> [__m256i; 8] {
        nibble_regs(&self.qs, Some(&self.qh))
    }
    #[inline(always)]
    unsafe fn coeffs(&self, _: usize) -> (__m256, __m256) {
        let d = halves(&self.d);
        (d, _mm256_mul_ps(d, _mm256_set1_ps(-16.0)))
    }
}

impl Unpack for Q5_1x8 {
    const SUB: usize = 32;
    const EPILOGUE: Epilogue = Epilogue::Small;
    const BATCH_FROM: usize = 24;
    #[inline(always)]
    unsafe fn unpack(&self, _: usize) -> [__m256i; 8] {
        nibble_regs(&self.qs, Some(&self.qh))
    }
    #[inline(always)]
    unsafe fn coeffs(&self, _: usize) -> (__m256, __m256) {
        (halves(&self.d), halves(&self.m))
    }
}

impl Unpack for Q8_0x8 {
    const SUB: usize = 32;
    const EPILOGUE: Epilogue = Epilogue::Q8;
    const BATCH_FROM: usize = 8;
    #[inline(always)]
    unsafe fn unpack(&self, _: usize) -> [__m256i; 8] {
        let p = self.qs.as_ptr() as *const __m256i;
        std::array::from_fn(|u| _mm256_loadu_si256(p.add(u)))
    }
    #[inline(always)]
    unsafe fn coeffs(&self, _: usize) -> (__m256, __m256) {
        (halves(&self.d), _mm256_setzero_ps())
    }
}

/// 8 signed bytes as f32 lanes.
#[inline(always)]
unsafe fn i8x8(p: &[i8]) -> __m256 {
    debug_assert!(p.len() >= 8);
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
        p.as_ptr() as *const __m128i
    )))
}

/// Sub-block `j` of a packed Q4_K/Q5_K `qs` (and the fifth bits of Q5_K).
#[inline(always)]
unsafe fn k_regs(qs: &[u8; 1024], qh: Option<&[u8; 256]>, j: usize) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0F);
    let p = qs.as_ptr().add(256 * (j / 2)) as *const __m256i;
    let shift = _mm_cvtsi32_si128(4 * (j % 2) as i32);
    std::array::from_fn(|u| {
        let v = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256(p.add(u)), shift), mask);
        match qh {
            Some(qh) => {
                // Bit j of each byte to bit 4 (bits a 16-bit shift moves across bytes are
                // masked off).
                let h = _mm256_loadu_si256((qh.as_ptr() as *const __m256i).add(u));
                let bit = _mm256_and_si256(
                    _mm256_srl_epi16(h, _mm_cvtsi32_si128(j as i32)),
                    _mm256_set1_epi8(1),
                );
                _mm256_or_si256(v, _mm256_slli_epi16(bit, 4))
            }
            None => v,
        }
    })
}

/// Q4_K and Q5_K: sub-blocks of 32 with an integer scale and min each.
macro_rules! k_unpack {
    ($t:ty, $batch_from:literal, $qh:ident) => {
        impl Unpack for $t {
            const SUB: usize = 32;
            const EPILOGUE: Epilogue = Epilogue::K;
            const BATCH_FROM: usize = $batch_from;
            #[inline(always)]
            unsafe fn unpack(&self, j: usize) -> [__m256i; 8] {
                k_regs(&self.qs, k_unpack!(@qh self $qh), j)
            }
            #[inline(always)]
            unsafe fn coeffs(&self, s: usize) -> (__m256, __m256) {
                (u8x8(&self.sc[8 * s..]), u8x8(&self.m[8 * s..]))
            }
            #[inline(always)]
            unsafe fn block_scales(&self) -> (__m256, __m256) {
                (halves(&self.d), halves(&self.dmin))
            }
        }
    };
    (@qh $s:ident none) => {
        None
    };
    (@qh $s:ident qh) => {
        Some(&$s.qh)
    };
}

k_unpack!(Q4Kx8, 48, none);
k_unpack!(Q5Kx8, 16, qh);

impl Unpack for Q6Kx8 {
    const SUB: usize = 16;
    const EPILOGUE: Epilogue = Epilogue::Q6;
    const BATCH_FROM: usize = 12;
    #[inline(always)]
    unsafe fn unpack(&self, j: usize) -> [__m256i; 8] {
        q6k_regs(self, j)
    }
    #[inline(always)]
    unsafe fn coeffs(&self, s: usize) -> (__m256, __m256) {
        (i8x8(&self.sc[8 * s..]), _mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn block_scales(&self) -> (__m256, __m256) {
        (halves(&self.d), _mm256_setzero_ps())
    }
}

/// Up to `RB` weight rows over `KC` columns in the microkernel's form, 16 rows per tile.
struct Tile {
    /// `[tile][KC / 4]`.
    q: Vec<__m512i>,
    /// `[tile][KC / SUB]`: `-128 Σ q` per row over the scale's columns (every product sum
    /// starts from it: the activations are shifted to unsigned bytes by +128; Q6_K's `q`
    /// are stored less 32).
    base: Vec<__m512i>,
    /// `[tile][KC / SUB][16]`: `Unpack::coeffs`.
    a: Vec<f32>,
    b: Vec<f32>,
    /// `[tile][16]`: `Unpack::block_scales` (K-quants: `KC` is one super-block).
    d: Vec<f32>,
    dmin: Vec<f32>,
}

impl Tile {
    fn new() -> Self {
        let tiles = RB / 16;
        // SAFETY: an all-zero bit pattern is a valid vector.
        let zero: __m512i = unsafe { std::mem::zeroed() };
        Self {
            q: vec![zero; tiles * KC / 4],
            base: vec![zero; tiles * KC / 16],
            a: vec![0.0; tiles * KC],
            b: vec![0.0; tiles * KC],
            d: vec![0.0; tiles * 16],
            dmin: vec![0.0; tiles * 16],
        }
    }

    /// Unpacks groups `groups` of `w` over columns `c0 .. c0 + kc` (`kc <= KC`, a multiple
    /// of 32 within one block row); a missing second group of a tile is zeros.
    #[inline(always)]
    unsafe fn fill<W: Unpack>(
        &mut self,
        w: &PackedMatrix<W>,
        groups: std::ops::Range<usize>,
        c0: usize,
        kc: usize,
    ) {
        let per = 32 / W::SUB;
        let ones = _mm512_set1_epi8(1);
        let zeros = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (t, g) in groups.clone().step_by(2).enumerate() {
            let pair = [
                Some(w.group(g)),
                (g + 1 < groups.end).then(|| w.group(g + 1)),
            ];
            // The next chunk's blocks of these groups, asked for now: without it the
            // first loads of each chunk waited on memory.
            let size = std::mem::size_of::<W>();
            let bytes = kc.div_ceil(W::COLS) * size;
            for p in pair.iter().flatten() {
                let next = p.as_ptr().wrapping_add((c0 + KC) / W::COLS) as *const i8;
                for off in (0..bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(off));
                }
            }
            if W::EPILOGUE == Epilogue::K || W::EPILOGUE == Epilogue::Q6 {
                let blk = c0 / W::COLS;
                let [(d0, m0), (d1, m1)] =
                    pair.map(|p| p.map_or(zeros, |p| p.get_unchecked(blk).block_scales()));
                let d = self.d.as_mut_ptr().add(16 * t);
                let dm = self.dmin.as_mut_ptr().add(16 * t);
                _mm256_storeu_ps(d, d0);
                _mm256_storeu_ps(d.add(8), d1);
                _mm256_storeu_ps(dm, m0);
                _mm256_storeu_ps(dm.add(8), m1);
            }
            for c in (0..kc).step_by(32) {
                let col = c0 + c;
                let (blk, j) = (col / W::COLS, (col % W::COLS) / 32);
                let regs = pair.map(|p| match p {
                    Some(p) => p.get_unchecked(blk).unpack(j),
                    None => [_mm256_setzero_si256(); 8],
                });
                let q = self.q.as_mut_ptr().add(t * KC / 4 + c / 4);
                let mut sums = [_mm512_setzero_si512(); 2];
                for (u, (&lo, &hi)) in regs[0].iter().zip(&regs[1]).enumerate() {
                    let mut v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    if W::EPILOGUE == Epilogue::Q6 {
                        v = _mm512_sub_epi8(v, _mm512_set1_epi8(32));
                    }
                    *q.add(u) = v;
                    let h = u * per / 8;
                    sums[h] = _mm512_dpbusd_epi32(sums[h], ones, v);
                }
                for (h, &sum) in sums.iter().take(per).enumerate() {
                    let sub = t * KC / W::SUB + c / W::SUB + h;
                    *self.base.get_unchecked_mut(sub) =
                        _mm512_slli_epi32::<7>(_mm512_sub_epi32(_mm512_setzero_si512(), sum));
                    let s = (col % W::COLS) / W::SUB + h;
                    let [(a0, b0), (a1, b1)] =
                        pair.map(|p| p.map_or(zeros, |p| p.get_unchecked(blk).coeffs(s)));
                    let at = self.a.as_mut_ptr().add(16 * sub);
                    let bt = self.b.as_mut_ptr().add(16 * sub);
                    _mm256_storeu_ps(at, a0);
                    _mm256_storeu_ps(at.add(8), a1);
                    _mm256_storeu_ps(bt, b0);
                    _mm256_storeu_ps(bt.add(8), b1);
                }
            }
        }
    }
}

/// The integer sums of a tile's 16 rows (`q`: its first register) over `SUB` columns from
/// column `col` for `N` activation rows, each started from `init[i]`.
#[inline(always)]
unsafe fn sums<const N: usize, const SUB: usize>(
    q: *const __m512i,
    x: Batch,
    col: usize,
    init: [__m512i; N],
) -> [__m512i; N] {
    let mut sum = init;
    for g in 0..SUB / 4 {
        let col4 = col / 4 + g;
        let w = *q.add(col4);
        let xu = x.q.add(col4 * NT * 4) as *const i32;
        for (i, sum) in sum.iter_mut().enumerate() {
            *sum = _mm512_dpbusd_epi32(*sum, _mm512_set1_epi32(xu.add(i).read_unaligned()), w);
        }
    }
    sum
}

/// `Epilogue` as a const parameter.
const SMALL: u8 = 0;
const Q8: u8 = 1;
const K: u8 = 2;
const Q6: u8 = 3;

/// Where a microkernel call's sums come from and go: row `i` of the earlier chunks'
/// partial sums at `src + i src_n` (none before the first chunk), its new ones to
/// `dst + i dst_n`.
#[derive(Clone, Copy)]
struct Acc {
    src: Option<(*const f32, usize)>,
    dst: (*mut f32, usize),
}

/// Tile `t`'s 16 rows over `kc` columns against the first `N` activation rows of a batch
/// (`x`: the batch's interleaved input from the tile's first column on), accumulated as
/// `out` says (`lanes` of 16 or 8 columns) with the row kernels' float steps
/// (`Epilogue`).
#[inline(always)]
unsafe fn micro<const N: usize, const EPI: u8>(
    tile: &Tile,
    t: usize,
    kc: usize,
    x: Batch,
    out: Acc,
    lanes: usize,
) {
    let mask: __mmask16 = if lanes == 16 { 0xFFFF } else { 0x00FF };
    let mut acc: [__m512; N] = std::array::from_fn(|i| match out.src {
        None => _mm512_setzero_ps(),
        Some((src, n)) => _mm512_maskz_loadu_ps(mask, src.add(i * n)),
    });
    let q = tile.q.as_ptr().add(t * KC / 4);
    let xd = |i: usize, blk: usize| _mm512_set1_ps(*x.d.add(blk * NT + i));
    let xs = |i: usize, blk: usize| _mm512_set1_ps(*x.s.add(blk * NT + i));
    if EPI == Q6 {
        let base = tile.base.as_ptr().add(t * KC / 16);
        let a = tile.a.as_ptr().add(16 * t * KC / 16);
        let mut sacc = [_mm512_setzero_ps(); N];
        for blk in 0..kc / 32 {
            // |Σ_h - 32 hs_h| <= 16 * 127 * 32 < 2^16 and |sc_h| <= 128: each product is
            // below 2^23 and their sum below 2^24, so both steps are exact.
            let (sub0, sub1) = (2 * blk, 2 * blk + 1);
            let s0 = sums::<N, 16>(q, x, 16 * sub0, [*base.add(sub0); N]);
            let s1 = sums::<N, 16>(q, x, 16 * sub1, [*base.add(sub1); N]);
            let (a0, a1) = (
                _mm512_loadu_ps(a.add(16 * sub0)),
                _mm512_loadu_ps(a.add(16 * sub1)),
            );
            for i in 0..N {
                let s = _mm512_mul_ps(_mm512_cvtepi32_ps(s0[i]), a0);
                let s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[i]), a1, s);
                sacc[i] = _mm512_fmadd_ps(s, xd(i, blk), sacc[i]);
            }
        }
        let d = _mm512_loadu_ps(tile.d.as_ptr().add(16 * t));
        for i in 0..N {
            acc[i] = _mm512_fmadd_ps(d, sacc[i], acc[i]);
        }
    } else {
        let base = tile.base.as_ptr().add(t * KC / 32);
        let a = tile.a.as_ptr().add(16 * t * KC / 32);
        let b = tile.b.as_ptr().add(16 * t * KC / 32);
        let mut sacc = [_mm512_setzero_ps(); N];
        let mut macc = [_mm512_setzero_ps(); N];
        for blk in 0..kc / 32 {
            let sum = sums::<N, 32>(q, x, 32 * blk, [*base.add(blk); N]);
            let av = _mm512_loadu_ps(a.add(16 * blk));
            let bv = _mm512_loadu_ps(b.add(16 * blk));
            for i in 0..N {
                let scale = _mm512_mul_ps(av, xd(i, blk));
                let sumf = _mm512_cvtepi32_ps(sum[i]);
                if EPI == K {
                    sacc[i] = _mm512_fmadd_ps(sumf, scale, sacc[i]);
                    macc[i] = _mm512_fmadd_ps(bv, xs(i, blk), macc[i]);
                } else {
                    acc[i] = _mm512_fmadd_ps(scale, sumf, acc[i]);
                    if EPI == SMALL {
                        acc[i] = _mm512_fmadd_ps(bv, xs(i, blk), acc[i]);
                    }
                }
            }
        }
        if EPI == K {
            let d = _mm512_loadu_ps(tile.d.as_ptr().add(16 * t));
            let dm = _mm512_loadu_ps(tile.dmin.as_ptr().add(16 * t));
            for i in 0..N {
                acc[i] = _mm512_fmadd_ps(d, sacc[i], acc[i]);
                acc[i] = _mm512_fnmadd_ps(dm, macc[i], acc[i]);
            }
        }
    }
    let (dst, n) = out.dst;
    for (i, acc) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(dst.add(i * n), mask, *acc);
    }
}

/// One work item: weight groups `groups` of `w` against activation rows `rows`, results to
/// `dst` (`[m, n]`).
///
/// # Safety
/// AVX-512 VNNI must be available; no other item writes these rows and columns of `dst`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_item<W: Unpack>(
    w: &PackedMatrix<W>,
    groups: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    x: &Input,
    dst: *mut f32,
) {
    let (n, k) = (w.rows(), w.cols());
    let mut tile = Tile::new();
    let tiles = groups.len().div_ceil(2);
    // The partial sums between chunks, `RB` columns per row: rows of the output itself lie
    // `n` floats apart, a power of two that maps them all onto a few cache sets.
    // Only reached through raw pointers, every value stored by one chunk before the next
    // loads it, so it is not zeroed.
    let mut part: Vec<f32> = Vec::with_capacity(rows.len() * RB);
    for c0 in (0..k).step_by(KC) {
        let kc = KC.min(k - c0);
        tile.fill(w, groups.clone(), c0, kc);
        let (first, last) = (c0 == 0, c0 + KC >= k);
        let mut i = rows.start;
        while i < rows.end {
            let count = NT.min(rows.end - i);
            let xb = x.batch(i / NT, c0);
            for t in 0..tiles {
                let g = groups.start + 2 * t;
                let lanes = if g + 1 < groups.end { 16 } else { 8 };
                let local = part
                    .as_mut_ptr()
                    .add((i - rows.start) * RB + (g - groups.start) * GROUP);
                let out = Acc {
                    src: (!first).then_some((local as *const f32, RB)),
                    dst: match last {
                        true => (dst.add(i * n + g * GROUP), n),
                        false => (local, RB),
                    },
                };
                macro_rules! go {
                    ($($c:literal)*) => {
                        match count {
                            $($c => match W::EPILOGUE {
                                Epilogue::Small => micro::<$c, SMALL>(&tile, t, kc, xb, out, lanes),
                                Epilogue::Q8 => micro::<$c, Q8>(&tile, t, kc, xb, out, lanes),
                                Epilogue::K => micro::<$c, K>(&tile, t, kc, xb, out, lanes),
                                Epilogue::Q6 => micro::<$c, Q6>(&tile, t, kc, xb, out, lanes),
                            },)*
                            _ => unreachable!("1 to NT rows"),
                        }
                    };
                }
                go!(1 2 3 4 5 6 7 8);
            }
            i += count;
        }
    }
}

/// The quantized input interleaved for the microkernel, in batches of `NT` rows (the last
/// padded with zeros): per batch, `q` holds `[k / 4][NT][4]` bytes `q + 128` (one
/// 4-byte broadcast per row and 4 columns, the rows of a batch side by side), `d` and `s`
/// hold `[k / 32][NT]` block scales and scaled sums.
struct Input {
    k: usize,
    /// The bytes, 4 per element.
    q: Vec<u32>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// One batch of `Input` from some column on.
#[derive(Clone, Copy)]
struct Batch {
    q: *const u8,
    d: *const f32,
    s: *const f32,
}

impl Input {
    /// Built batch by batch on the thread pool (every value is written once, 4 bytes at a
    /// time; the padding rows of the last batch are zeros).
    fn new(xq: &[ActQ8], m: usize, k: usize) -> Self {
        let kb = k / QK;
        let batches = m.div_ceil(NT);
        let mut q: Vec<u32> = Vec::with_capacity(batches * k / 4 * NT);
        let mut d = vec![0.0; batches * kb * NT];
        let mut s = vec![0.0; batches * kb * NT];
        let ptrs = (
            q.as_mut_ptr() as usize,
            d.as_mut_ptr() as usize,
            s.as_mut_ptr() as usize,
        );
        crate::ops::pool::global().execute_chunked(batches, |range| {
            let (q, d, s) = (ptrs.0 as *mut u32, ptrs.1 as *mut f32, ptrs.2 as *mut f32);
            for bt in range {
                for i in 0..NT {
                    let row = bt * NT + i;
                    let q = q.wrapping_add(bt * k / 4 * NT + i);
                    if row >= m {
                        for c4 in 0..k / 4 {
                            // SAFETY: in bounds of the capacity; batch `bt` is this
                            // item's alone.
                            unsafe { q.add(c4 * NT).write(0x8080_8080) };
                        }
                        continue;
                    }
                    for (j, b) in xq[row * kb..(row + 1) * kb].iter().enumerate() {
                        // SAFETY: as above (`d` and `s` are zeros where not written).
                        unsafe {
                            *d.add((bt * kb + j) * NT + i) = b.d;
                            *s.add((bt * kb + j) * NT + i) = b.s;
                            for (c4, v) in b.qs.chunks_exact(4).enumerate() {
                                let v =
                                    u32::from_le_bytes([v[0], v[1], v[2], v[3]].map(|x| x as u8));
                                q.add((j * QK / 4 + c4) * NT).write(v ^ 0x8080_8080);
                            }
                        }
                    }
                }
            }
        });
        // SAFETY: every element below the capacity was written above.
        unsafe { q.set_len(batches * k / 4 * NT) };
        Self { k, q, d, s }
    }

    fn batch(&self, b: usize, c0: usize) -> Batch {
        let kb = self.k / QK;
        Batch {
            q: (self.q.as_ptr() as *const u8).wrapping_add((b * self.k + c0) * NT),
            d: self.d[(b * kb + c0 / QK) * NT..].as_ptr(),
            s: self.s[(b * kb + c0 / QK) * NT..].as_ptr(),
        }
    }
}

/// Whether `w` takes this path for `m` activation rows.
pub fn batched(w: &PackedWeight, m: usize) -> bool {
    fn from<W: Unpack>(_: &PackedMatrix<W>) -> usize {
        W::BATCH_FROM
    }
    m >= each!(w, p => from(p))
}

/// `matmul_many` on a CPU with AVX-512 VNNI (`xq`: the quantized input,
/// `[m, k / 32]`).
pub fn matmul_many(
    xq: &[ActQ8],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [std::mem::MaybeUninit<f32>]],
) {
    let Some(k) = ws.first().map(|w| w.cols()) else {
        return;
    };
    let x = Input::new(xq, m, k);
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let row_tiles = m.div_ceil(MT);
    // Whole batches per item.
    let tile_rows = m.div_ceil(row_tiles).next_multiple_of(NT);
    let blocks = |w: &PackedWeight| (w.rows() / GROUP).div_ceil(RB / GROUP);
    // Per matrix: row tile after row tile, row block after row block.
    let items = Items::new(ws, |w| row_tiles * blocks(w));
    let run = |range: std::ops::Range<usize>| {
        for item in range {
            let (mat, local) = items.locate(item);
            let w = ws[mat];
            let (block, tile) = (local % blocks(w), local / blocks(w));
            let g0 = block * RB / GROUP;
            let groups = g0..(w.rows() / GROUP).min(g0 + RB / GROUP);
            let rows = tile * tile_rows..m.min((tile + 1) * tile_rows);
            let dst = out_ptrs[mat] as *mut f32;
            // SAFETY: the caller checked the CPU's features; each (matrix, rows, groups)
            // is one item's alone.
            unsafe { each!(w, p => run_item(p, groups, rows, &x, dst)) }
        }
    };
    crate::ops::pool::global().execute_chunked(items.len(), run);
}
