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
//!
//! With AMX (`amx`), the K-quants take `run_item_amx` instead: their tiles hold the
//! weights already multiplied by their integer sub-block scales, as two byte planes, so
//! the tile unit computes a whole super-block's integer sum (the K-quant numerics compute
//! one exactly in integers, see `formats`) and the float steps run once per 256 columns:
//! the same integers and the same float steps as the microkernel's, so the same bits.

use std::arch::x86_64::*;

mod amx;

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
    /// Q4_K, Q5_K, per super-block (the activations' one scale `xd` per 256 columns): the
    /// integer `isum = Σ_j sc_j Σ_j` and `imin = Σ_j m_j bs_j` (`bs_j` the activations'
    /// integer sum over sub-block `j`), then `acc += (d xd) isum` and `acc -= (dmin xd)
    /// imin`, each one fused multiply-add.
    K,
    /// Q6_K, per super-block: the integer `isum = Σ_h sc_h (Σ_h - 32 hs_h)` over its 16
    /// scales, then `acc += (d xd) isum`. The weights are stored less 32 (signed), so each
    /// scale's sum comes out as `Σ_h - 32 hs_h` from a per-weight-row start.
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
    /// Scale `s`'s integer scales of the 8 rows as bytes (K-quants: unsigned 0..63, Q6_K
    /// signed; zeros elsewhere).
    ///
    /// # Safety
    /// As `unpack`.
    unsafe fn int_scales(&self, _s: usize) -> __m128i {
        _mm_setzero_si128()
    }
    /// Scale `s`'s integer mins of the 8 rows as bytes (Q4_K, Q5_K; zeros elsewhere).
    ///
    /// # Safety
    /// As `unpack`.
    unsafe fn int_mins(&self, _s: usize) -> __m128i {
        _mm_setzero_si128()
    }
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
            unsafe fn int_scales(&self, s: usize) -> __m128i {
                _mm_loadl_epi64(self.sc.as_ptr().add(8 * s) as *const __m128i)
            }
            #[inline(always)]
            unsafe fn int_mins(&self, s: usize) -> __m128i {
                _mm_loadl_epi64(self.m.as_ptr().add(8 * s) as *const __m128i)
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
    unsafe fn int_scales(&self, s: usize) -> __m128i {
        _mm_loadl_epi64(self.sc.as_ptr().add(8 * s) as *const __m128i)
    }
    #[inline(always)]
    unsafe fn block_scales(&self) -> (__m256, __m256) {
        (halves(&self.d), _mm256_setzero_ps())
    }
}

/// Up to `RB` weight rows over `KC` columns in the microkernel's form, 16 rows per tile.
struct Tile {
    /// `[tile][KC / 4]` (not filled for AMX).
    q: Vec<__m512i>,
    /// `[tile][KC / SUB]`: `-128 Σ q` per row over the scale's columns (every product sum
    /// starts from it: the activations are shifted to unsigned bytes by +128; Q6_K's `q`
    /// are stored less 32; not filled for AMX).
    base: Vec<__m512i>,
    /// `[tile][KC / SUB][16]`: `Unpack::coeffs`.
    a: Vec<f32>,
    b: Vec<f32>,
    /// `[tile][KC / SUB]`: K-quants' integer scales as i32 lanes.
    sc: Vec<__m512i>,
    /// `[tile][16]`: `Unpack::block_scales` (K-quants: `KC` is one super-block).
    d: Vec<f32>,
    dmin: Vec<f32>,
    /// `[tile][KC / 64]`: Q4_K's and Q5_K's integer mins of sub-blocks `2 p`, `2 p + 1`
    /// as i16 pairs, lane `r` row `r`'s.
    mins: Vec<__m512i>,
    /// With AMX (K-quants): `[tile][2][amx::PLANE]`, the weights times their integer
    /// scale as planes `lo`, `hi` (see `amx`); empty otherwise.
    planes: Vec<u8>,
}

impl Tile {
    fn new(amx: bool) -> Self {
        let tiles = RB / 16;
        // SAFETY: an all-zero bit pattern is a valid vector.
        let zero: __m512i = unsafe { std::mem::zeroed() };
        let vecs = if amx { 0 } else { tiles * KC / 4 };
        Self {
            q: vec![zero; vecs],
            base: vec![zero; vecs / 4],
            a: vec![0.0; tiles * KC],
            b: vec![0.0; tiles * KC],
            sc: vec![zero; tiles * KC / 16],
            mins: vec![zero; tiles * KC / 64],
            d: vec![0.0; tiles * 16],
            dmin: vec![0.0; tiles * 16],
            planes: vec![0; if amx { tiles * 2 * amx::PLANE } else { 0 }],
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
        let amx = !self.planes.is_empty();
        let kq = W::EPILOGUE == Epilogue::K || W::EPILOGUE == Epilogue::Q6;
        let ones = _mm512_set1_epi8(1);
        let zeros = (_mm256_setzero_ps(), _mm256_setzero_ps());
        // The planes' byte picks: the low (even) and high (odd) bytes of 64 i16 products.
        let even = _mm512_set_epi64(
            0x7e7c7a7876747270,
            0x6e6c6a6866646260,
            0x5e5c5a5856545250,
            0x4e4c4a4846444240,
            0x3e3c3a3836343230,
            0x2e2c2a2826242220,
            0x1e1c1a1816141210,
            0x0e0c0a0806040200,
        );
        let odd = _mm512_add_epi8(even, ones);
        // Rows 0..8 (`spread[0]`) and 8..16 of 16 i16 scales, each to its row's 4 lanes.
        let spread = [0, 8].map(|r0| {
            let idx: [i16; 32] = std::array::from_fn(|l| (r0 + l / 4) as i16);
            _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
        });
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
            if kq {
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
                // The integer scales of this sub-block's (Q6_K: two) scales, 16 rows.
                let mut sc16 = [[_mm512_setzero_si512(); 2]; 2];
                for (h, sc16) in sc16.iter_mut().enumerate().take(per) {
                    let sub = t * KC / W::SUB + c / W::SUB + h;
                    let s = (col % W::COLS) / W::SUB + h;
                    let [(a0, b0), (a1, b1)] =
                        pair.map(|p| p.map_or(zeros, |p| p.get_unchecked(blk).coeffs(s)));
                    let at = self.a.as_mut_ptr().add(16 * sub);
                    let bt = self.b.as_mut_ptr().add(16 * sub);
                    _mm256_storeu_ps(at, a0);
                    _mm256_storeu_ps(at.add(8), a1);
                    _mm256_storeu_ps(bt, b0);
                    _mm256_storeu_ps(bt.add(8), b1);
                    if kq {
                        let [s0, s1] = pair.map(|p| {
                            p.map_or(_mm_setzero_si128(), |p| p.get_unchecked(blk).int_scales(s))
                        });
                        let bytes = _mm_unpacklo_epi64(s0, s1);
                        *self.sc.get_unchecked_mut(sub) = _mm512_cvtepi8_epi32(bytes);
                        if W::EPILOGUE == Epilogue::K && s % 2 == 1 {
                            let [m0, m1] = [s - 1, s].map(|s| {
                                let [g0, g1] = pair.map(|p| {
                                    p.map_or(_mm_setzero_si128(), |p| {
                                        p.get_unchecked(blk).int_mins(s)
                                    })
                                });
                                _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(g0, g1))
                            });
                            *self.mins.get_unchecked_mut(t * KC / 64 + s / 2) =
                                _mm512_or_si512(m0, _mm512_slli_epi32::<16>(m1));
                        }
                        let words = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(bytes));
                        *sc16 = spread.map(|idx| _mm512_permutexvar_epi16(idx, words));
                    }
                }
                let q = self.q.as_mut_ptr().wrapping_add(t * KC / 4 + c / 4);
                let planes =
                    (self.planes.as_mut_ptr()).wrapping_add(t * 2 * amx::PLANE + c / 4 * 64);
                let mut sums = [_mm512_setzero_si512(); 2];
                for (u, (&lo, &hi)) in regs[0].iter().zip(&regs[1]).enumerate() {
                    let mut v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    if W::EPILOGUE == Epilogue::Q6 {
                        v = _mm512_sub_epi8(v, _mm512_set1_epi8(32));
                    }
                    let h = u * per / 8;
                    if amx {
                        // Rows 0..8 and 8..16 as i16 times their scale, then split.
                        let [s0, s1] = sc16[h];
                        let p0 =
                            _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(v)), s0);
                        let p1 = _mm512_mullo_epi16(
                            _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(v)),
                            s1,
                        );
                        let line = planes.add(u * 64) as *mut __m512i;
                        _mm512_storeu_si512(line, _mm512_permutex2var_epi8(p0, even, p1));
                        _mm512_storeu_si512(
                            line.add(amx::PLANE / 64),
                            _mm512_permutex2var_epi8(p0, odd, p1),
                        );
                        continue;
                    }
                    *q.add(u) = v;
                    sums[h] = _mm512_dpbusd_epi32(sums[h], ones, v);
                }
                if !amx {
                    for (h, &sum) in sums.iter().take(per).enumerate() {
                        let sub = t * KC / W::SUB + c / W::SUB + h;
                        *self.base.get_unchecked_mut(sub) =
                            _mm512_slli_epi32::<7>(_mm512_sub_epi32(_mm512_setzero_si512(), sum));
                    }
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
    if EPI == Q6 || EPI == K {
        // One super-block: the integer sums times their scales in i32 (exact), then the
        // float steps once.
        debug_assert_eq!(kc, KC);
        const SUBS: [usize; 2] = [KC / 16, KC / 32];
        let subs = SUBS[(EPI == K) as usize];
        let base = tile.base.as_ptr().add(t * subs);
        let sc = tile.sc.as_ptr().add(t * subs);
        let m = tile.b.as_ptr().add(16 * t * KC / 32);
        let mut isum = [_mm512_setzero_si512(); N];
        let mut imin = [_mm512_setzero_ps(); N];
        for sub in 0..subs {
            let s = if EPI == Q6 {
                sums::<N, 16>(q, x, 16 * sub, [*base.add(sub); N])
            } else {
                sums::<N, 32>(q, x, 32 * sub, [*base.add(sub); N])
            };
            let scv = *sc.add(sub);
            for i in 0..N {
                isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(s[i], scv));
            }
            if EPI == K {
                // m_j bs_j <= 63 * 4064 and their sum below 2^24: exact in f32.
                let mv = _mm512_loadu_ps(m.add(16 * sub));
                for (i, imin) in imin.iter_mut().enumerate() {
                    *imin = _mm512_fmadd_ps(mv, _mm512_set1_ps(*x.bs.add(sub * NT + i)), *imin);
                }
            }
        }
        let d = _mm512_loadu_ps(tile.d.as_ptr().add(16 * t));
        let dm = _mm512_loadu_ps(tile.dmin.as_ptr().add(16 * t));
        for i in 0..N {
            let xd = xd(i, 0);
            acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), _mm512_cvtepi32_ps(isum[i]), acc[i]);
            if EPI == K {
                acc[i] = _mm512_fnmadd_ps(_mm512_mul_ps(dm, xd), imin[i], acc[i]);
            }
        }
    } else {
        let base = tile.base.as_ptr().add(t * KC / 32);
        let a = tile.a.as_ptr().add(16 * t * KC / 32);
        let b = tile.b.as_ptr().add(16 * t * KC / 32);
        for blk in 0..kc / 32 {
            let sum = sums::<N, 32>(q, x, 32 * blk, [*base.add(blk); N]);
            let av = _mm512_loadu_ps(a.add(16 * blk));
            let bv = _mm512_loadu_ps(b.add(16 * blk));
            for i in 0..N {
                let scale = _mm512_mul_ps(av, xd(i, blk));
                let sumf = _mm512_cvtepi32_ps(sum[i]);
                acc[i] = _mm512_fmadd_ps(scale, sumf, acc[i]);
                if EPI == SMALL {
                    acc[i] = _mm512_fmadd_ps(bv, xs(i, blk), acc[i]);
                }
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
    let mut tile = Tile::new(false);
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

/// `run_item` with AMX for the K-quants: per super-block, the integer sums of 16
/// activation rows and two weight tiles at a time (`amx::Tiles::super_block`), then the
/// float steps of `Epilogue::K` or `Epilogue::Q6` (the same operations as `micro`'s, on
/// the same integers, so the same bits).
///
/// # Safety
/// As `run_item`, and `amx::available()` returned true; `x` was built with `amx` and
/// `rows.start` is a multiple of 16.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn run_item_amx<W: Unpack>(
    w: &PackedMatrix<W>,
    groups: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    x: &Input,
    dst: *mut f32,
) {
    let (n, k) = (w.rows(), w.cols());
    let q6 = W::EPILOGUE == Epilogue::Q6;
    let amx = amx::Tiles::new();
    let mut tile = Tile::new(true);
    let tiles = groups.len().div_ceil(2);
    // As in `run_item`.
    let mut part: Vec<f32> = Vec::with_capacity(rows.len() * RB);
    let mut sums = [[[0i32; 16]; amx::ROWS]; 4];
    for c0 in (0..k).step_by(KC) {
        tile.fill(w, groups.clone(), c0, KC);
        let (first, last) = (c0 == 0, c0 + KC >= k);
        let blk = c0 / QK;
        for i0 in rows.clone().step_by(2 * amx::ROWS) {
            let count = (2 * amx::ROWS).min(rows.end - i0);
            let a0 = x.tile_at(i0, c0);
            let a1 = if count > amx::ROWS {
                x.tile_at(i0 + amx::ROWS, c0)
            } else {
                a0
            };
            for t in 0..tiles {
                let w0 = tile.planes.as_ptr().add(t * 2 * amx::PLANE);
                match q6 {
                    true => amx.super_block::<true>(a0, a1, w0, &mut sums),
                    false => amx.super_block::<false>(a0, a1, w0, &mut sums),
                }
                let g = groups.start + 2 * t;
                let mask: __mmask16 = if g + 1 < groups.end { 0xFFFF } else { 0x00FF };
                let d = _mm512_loadu_ps(tile.d.as_ptr().add(16 * t));
                let dm = _mm512_loadu_ps(tile.dmin.as_ptr().add(16 * t));
                let mins = &tile.mins[t * KC / 64..(t + 1) * KC / 64];
                for i in 0..count {
                    let row = i0 + i;
                    let (lo, hi) = (&sums[2 * (i / 16)][i % 16], &sums[2 * (i / 16) + 1][i % 16]);
                    let local = part
                        .as_mut_ptr()
                        .add((row - rows.start) * RB + (g - groups.start) * GROUP);
                    let mut acc = match first {
                        true => _mm512_setzero_ps(),
                        false => _mm512_maskz_loadu_ps(mask, local),
                    };
                    let isum = _mm512_add_epi32(
                        _mm512_loadu_si512(lo.as_ptr() as *const __m512i),
                        _mm512_slli_epi32::<8>(_mm512_loadu_si512(hi.as_ptr() as *const __m512i)),
                    );
                    let xd = _mm512_set1_ps(x.d_at(row, blk));
                    acc = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), _mm512_cvtepi32_ps(isum), acc);
                    if !q6 {
                        // `Σ_j m_j bs_j`: exact, as `micro`'s (below 2^24).
                        let bsp = x.bsp.as_ptr().add((row * k + c0) / 64);
                        let mut imin = _mm512_setzero_si512();
                        for (p, &mv) in mins.iter().enumerate() {
                            imin = _mm512_dpwssd_epi32(imin, mv, _mm512_set1_epi32(*bsp.add(p)));
                        }
                        acc =
                            _mm512_fnmadd_ps(_mm512_mul_ps(dm, xd), _mm512_cvtepi32_ps(imin), acc);
                    }
                    let to = match last {
                        true => dst.add(row * n + g * GROUP),
                        false => local,
                    };
                    _mm512_mask_storeu_ps(to, mask, acc);
                }
            }
        }
    }
}

/// The quantized input interleaved for the microkernel, in batches of `NT` rows (the last
/// padded with zeros): per batch, `q` holds `[k / 4][NT][4]` bytes `q + 128` (one
/// 4-byte broadcast per row and 4 columns, the rows of a batch side by side), `d`, `s`
/// and `bs` hold `[k / 32][NT]` block scales, scaled sums and integer sums (as f32).
/// For AMX, `xa` holds the signed bytes in tiles instead (`[m16 / 16][k / 64][16][64]`,
/// `m16` rows a multiple of 16, the padding rows zeros) and `q` is empty.
struct Input {
    k: usize,
    /// The bytes, 4 per element.
    q: Vec<u32>,
    d: Vec<f32>,
    s: Vec<f32>,
    bs: Vec<f32>,
    xa: Vec<i8>,
    /// For AMX, `[m][k / 64]`: the integer sums of blocks `2 p`, `2 p + 1` as an i16 pair.
    bsp: Vec<i32>,
}

/// One batch of `Input` from some column on.
#[derive(Clone, Copy)]
struct Batch {
    q: *const u8,
    d: *const f32,
    s: *const f32,
    bs: *const f32,
}

impl Input {
    /// Built batch by batch on the thread pool (every value is written once, 4 bytes at a
    /// time; the padding rows of the last batch are zeros).
    fn new(xq: &[ActQ8], m: usize, k: usize, amx: bool) -> Self {
        let kb = k / QK;
        let batches = m.div_ceil(NT);
        let qlen = if amx { 0 } else { batches * k / 4 * NT };
        let alen = if amx { m.next_multiple_of(16) * k } else { 0 };
        let mut q: Vec<u32> = Vec::with_capacity(qlen);
        let mut xa: Vec<i8> = vec![0; alen];
        let mut d = vec![0.0; batches * kb * NT];
        let mut s = vec![0.0; batches * kb * NT];
        let mut bs = vec![0.0; batches * kb * NT];
        let mut bsp = vec![0i32; if amx { m * kb / 2 } else { 0 }];
        let ptrs = (
            q.as_mut_ptr() as usize,
            d.as_mut_ptr() as usize,
            s.as_mut_ptr() as usize,
            bs.as_mut_ptr() as usize,
            xa.as_mut_ptr() as usize,
            bsp.as_mut_ptr() as usize,
        );
        crate::ops::pool::global().execute_chunked(batches, |range| {
            let (q, d, s, bs, xa, bsp) = (
                ptrs.0 as *mut u32,
                ptrs.1 as *mut f32,
                ptrs.2 as *mut f32,
                ptrs.3 as *mut f32,
                ptrs.4 as *mut i8,
                ptrs.5 as *mut i16,
            );
            for bt in range {
                for i in 0..NT {
                    let row = bt * NT + i;
                    let q = q.wrapping_add(bt * k / 4 * NT + i);
                    if row >= m {
                        if !amx {
                            for c4 in 0..k / 4 {
                                // SAFETY: in bounds of the capacity; batch `bt` is this
                                // item's alone.
                                unsafe { q.add(c4 * NT).write(0x8080_8080) };
                            }
                        }
                        continue;
                    }
                    for (j, b) in xq[row * kb..(row + 1) * kb].iter().enumerate() {
                        // SAFETY: as above (`d`, `s`, `bs` and `xa` are zeros where not
                        // written; row `row` of `xa` is this item's alone).
                        unsafe {
                            let at = (bt * kb + j) * NT + i;
                            *d.add(at) = b.d;
                            *s.add(at) = b.s;
                            *bs.add(at) = (b.hs[0] as i32 + b.hs[1] as i32) as f32;
                            if amx {
                                bsp.add(row * kb + j).write(b.hs[0] + b.hs[1]);
                                let col = j * QK;
                                let at = ((row / 16 * k + col) / 64 * 16 + row % 16) * 64;
                                std::ptr::copy_nonoverlapping(
                                    b.qs.as_ptr(),
                                    xa.add(at + col % 64),
                                    QK,
                                );
                                continue;
                            }
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
        unsafe { q.set_len(qlen) };
        Self {
            k,
            q,
            d,
            s,
            bs,
            xa,
            bsp,
        }
    }

    fn batch(&self, b: usize, c0: usize) -> Batch {
        let kb = self.k / QK;
        let at = (b * kb + c0 / QK) * NT;
        Batch {
            q: (self.q.as_ptr() as *const u8).wrapping_add((b * self.k + c0) * NT),
            d: self.d[at..].as_ptr(),
            s: self.s[at..].as_ptr(),
            bs: self.bs[at..].as_ptr(),
        }
    }

    /// The AMX activation tile of rows `row .. row + 16` (`row` a multiple of 16) and
    /// columns `c0 .. c0 + 64` (the next 64 columns' tile follows it).
    fn tile_at(&self, row: usize, c0: usize) -> *const i8 {
        self.xa[(row * self.k + c0 * 16)..].as_ptr()
    }

    /// Row `row`'s scale of block `blk` (32 columns).
    fn d_at(&self, row: usize, blk: usize) -> f32 {
        self.d[((row / NT) * (self.k / QK) + blk) * NT + row % NT]
    }
}

/// Whether `w` takes this path for `m` activation rows.
pub fn batched(w: &PackedWeight, m: usize) -> bool {
    fn from<W: Unpack>(_: &PackedMatrix<W>) -> usize {
        W::BATCH_FROM
    }
    m >= each!(w, p => from(p))
}

/// Whether this CPU and OS run the AMX path (see `amx`).
pub fn amx_available() -> bool {
    amx::available()
}

/// `matmul_many` on a CPU with AVX-512 VNNI (`xq`: the quantized input,
/// `[m, k / 32]`); the K-quants on AMX with `use_amx` (`amx_available()` must be true).
pub fn matmul_many(
    xq: &[ActQ8],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [std::mem::MaybeUninit<f32>]],
    use_amx: bool,
) {
    let Some(k) = ws.first().map(|w| w.cols()) else {
        return;
    };
    let amx = use_amx && ws.iter().all(|w| w.super_blocks());
    let x = Input::new(xq, m, k, amx);
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let row_tiles = m.div_ceil(MT);
    // Whole batches (AMX: whole tiles of 16 rows) per item.
    let tile_rows = m
        .div_ceil(row_tiles)
        .next_multiple_of(if amx { amx::ROWS } else { NT });
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
            // SAFETY: the caller checked the CPU's features (and AMX's); each
            // (matrix, rows, groups) is one item's alone; with AMX every matrix is a
            // K-quant and `rows` starts at a multiple of 16.
            unsafe {
                match (amx, w) {
                    (true, PackedWeight::Q4K(p)) => run_item_amx(p, groups, rows, &x, dst),
                    (true, PackedWeight::Q5K(p)) => run_item_amx(p, groups, rows, &x, dst),
                    (true, PackedWeight::Q6K(p)) => run_item_amx(p, groups, rows, &x, dst),
                    _ => each!(w, p => run_item(p, groups, rows, &x, dst)),
                }
            }
        }
    };
    crate::ops::pool::global().execute_chunked(items.len(), run);
}
