//! Paged attention on the CPU.
//!
//! Each query token attends to every key of its sequence up to and including its own
//! position: the context cached by earlier steps plus the causal part of the current chunk.
//! Keys are read block by block through the sequence's block table, never gathered into a
//! contiguous copy. Query heads that share a KV head (GQA) are processed together so each
//! key and value is loaded once per group.
//!
//! K/V are stored as f16 (keys transposed within their block, see `kv::cache`). Like
//! llama.cpp's CPU attention, queries and softmax weights are rounded to f16 before they
//! meet the f16 cache, and products are summed in f32.
//!
//! Every query row gets the same arithmetic whatever its tile, chunk or batch (so outputs
//! do not depend on what else runs). For the common head sizes (64, 128) the weighted sum
//! of values keeps its output head in registers across the keys.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::simd::{axpy, exp};
use crate::kv::CacheLayout;

/// One sequence's part of a flattened batch, as attention sees it.
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a> {
    /// First row of this sequence's queries in the flattened batch.
    pub q_start: usize,
    /// Number of query rows (new tokens) this step.
    pub q_len: usize,
    /// Tokens in the cache after this step (cached context + new tokens).
    pub context_len: usize,
    /// Blocks holding positions `0..context_len`.
    pub block_table: &'a [u32],
}

/// Writes the new tokens' K and V (`[tokens][kv_heads][head_dim]`) into their cache slots.
pub fn write_kv(
    layout: &CacheLayout,
    k_cache: &mut [f16],
    v_cache: &mut [f16],
    k: &[f32],
    v: &[f32],
    slots: &[u32],
) {
    let d = layout.head_dim;
    let bs = layout.block_size;
    let row = layout.num_kv_heads * d;
    for (t, &slot) in slots.iter().enumerate() {
        let (block, within) = (slot as usize / bs, slot as usize % bs);
        for h in 0..layout.num_kv_heads {
            let src = t * row + h * d;
            let dst = layout.offset(slot as usize, h);
            v_cache[dst..dst + d].convert_from_f32_slice(&v[src..src + d]);
            // Keys are stored transposed within their block.
            let kb = &mut k_cache[layout.block_offset(block, h)..][..d * bs];
            for (c, &x) in k[src..src + d].iter().enumerate() {
                kb[c * bs + within] = f16::from_f32(x);
            }
        }
    }
}

/// Computes attention for every query row.
///
/// `q` and `out` are `[tokens][num_heads][head_dim]`; the new K/V must already be in the
/// cache (see [`write_kv`]).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    layout: &CacheLayout,
    k_cache: &[f16],
    v_cache: &[f16],
    q: &[f32],
    num_heads: usize,
    seqs: &[AttnSeq<'_>],
    softmax_scale: f32,
    out: &mut [f32],
) {
    paged_attention_windowed(
        layout,
        k_cache,
        v_cache,
        q,
        num_heads,
        seqs,
        softmax_scale,
        None,
        None,
        out,
    )
}

/// [`paged_attention`] with a sliding window: with `Some(w)`, the query at position `p`
/// attends only to the keys at positions `p + 1 - w ..= p` (transformers' sliding-window
/// mask, `key > query - w`). Keys before the window get weight exactly 0; they are still
/// read, so a window costs what full attention does. With `softcap` `Some(c)`, each scaled
/// score `s` becomes `c * tanh(s / c)` before the softmax (Gemma 2's attention logit
/// soft-capping).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_windowed(
    layout: &CacheLayout,
    k_cache: &[f16],
    v_cache: &[f16],
    q: &[f32],
    num_heads: usize,
    seqs: &[AttnSeq<'_>],
    softmax_scale: f32,
    window: Option<usize>,
    softcap: Option<f32>,
    out: &mut [f32],
) {
    let d = layout.head_dim;
    let nkv = layout.num_kv_heads;
    let group = num_heads / nkv;
    // Work items: (sequence, kv head, tile of up to Q_TILE query rows). The rows of a
    // tile share each converted K/V block, so a block is widened from f16 once per tile
    // rather than once per query row. Items run on wick's thread pool, the threads the
    // matmuls use, so the two never compete for cores.
    let mut items = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        for kvh in 0..nkv {
            for start in (0..seq.q_len).step_by(Q_TILE) {
                items.push((s, kvh, start, Q_TILE.min(seq.q_len - start)));
            }
        }
    }
    let out_ptr = out.as_mut_ptr() as usize;
    let bs = layout.block_size;
    // With AVX-512 and no soft-capping, the softmax scales the raw scores itself (one
    // pass fewer; the same numbers, see `avx512::softmax`).
    #[cfg(target_arch = "x86_64")]
    let fused_scale = softcap.is_none() && softmax_scale > 0.0 && avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    let fused_scale = false;
    super::pool::global().execute_chunked(items.len(), |range| {
        let mut scratch = Scratch::default();
        for &(s, kvh, start, len) in &items[range] {
            let seq = &seqs[s];
            let first_pos = seq.context_len - seq.q_len;
            // Keys visible to tile row i: positions 0..=first_pos + start + i, of which the
            // first `hidden(i)` fall outside the window.
            let visible = |i: usize| first_pos + start + i + 1;
            let hidden = |i: usize| window.map_or(0, |w| visible(i).saturating_sub(w));
            let vmax = visible(len - 1);
            let Scratch {
                scores,
                q16,
                row,
                half16,
            } = &mut scratch;
            q16.clear();
            for i in 0..len {
                let t = seq.q_start + start + i;
                // Rounded to f16 as they meet f16 keys (slice conversions: vector
                // instructions where the CPU has them).
                let src = &q[(t * num_heads + kvh * group) * d..][..group * d];
                half16.clear();
                half16.resize(src.len(), f16::ZERO);
                half16.convert_from_f32_slice(src);
                let at = q16.len();
                q16.resize(at + src.len(), 0.0);
                half16.convert_to_f32_slice(&mut q16[at..]);
            }
            row.resize(bs * d, 0.0);
            // Pass 1 writes every score the later passes read (keys below `visible`), so
            // what earlier items left in the buffer needs no clearing.
            if scores.len() < len * group * vmax {
                scores.resize(len * group * vmax, 0.0);
            }
            // Pass 1: scores, laid out [row][head][key].
            for_each_block(layout, seq.block_table, kvh, vmax, |first, n, off| {
                // The block's keys, transposed: row[c * bs + j] = component c of key j.
                k_cache[off..off + bs * d].convert_to_f32_slice(&mut row[..bs * d]);
                // Query vectors (row, head) in sets of `QUERY_SET`, then one at a time.
                let pairs = len * group;
                let keys = |p: usize| n.min(visible(p / group).saturating_sub(first));
                let sets = pairs / QUERY_SET * QUERY_SET;
                for p0 in (0..sets).step_by(QUERY_SET) {
                    let qs = &q16[p0 * d..][..QUERY_SET * d];
                    let offs = std::array::from_fn(|x| (p0 + x) * vmax + first);
                    block_scores_set(
                        qs,
                        row,
                        bs,
                        scores,
                        offs,
                        std::array::from_fn(|x| keys(p0 + x)),
                    );
                }
                for p in sets..pairs {
                    let qh = &q16[p * d..][..d];
                    block_scores(qh, row, bs, &mut scores[p * vmax + first..][..keys(p)]);
                }
                if fused_scale {
                    // The softmax below scales them.
                    return;
                }
                for i in 0..len {
                    let n_i = n.min(visible(i).saturating_sub(first));
                    for h in 0..group {
                        let sc = &mut scores[(i * group + h) * vmax + first..][..n_i];
                        match softcap {
                            None => sc.iter_mut().for_each(|x| *x *= softmax_scale),
                            Some(c) => sc
                                .iter_mut()
                                .for_each(|x| *x = c * (*x * softmax_scale / c).tanh()),
                        }
                    }
                }
            });
            // Softmax per (row, head); weights rounded to f16 as they meet f16 values.
            for i in 0..len {
                for h in 0..group {
                    let r = &mut scores[(i * group + h) * vmax..][..visible(i)];
                    let (outside, r) = r.split_at_mut(hidden(i));
                    outside.fill(0.0);
                    #[cfg(target_arch = "x86_64")]
                    if fused_scale {
                        // SAFETY: `fused_scale` holds only where AVX-512 was detected.
                        unsafe { avx512::softmax(r, softmax_scale) };
                        continue;
                    }
                    softmax(r, half16);
                }
            }
            // Pass 2: weighted sums of values into each row's `group` heads.
            let out_rows: Vec<&mut [f32]> = (0..len)
                .map(|i| {
                    let t = seq.q_start + start + i;
                    // SAFETY: the (row, kv head) slices of `out` are disjoint across
                    // items, and each item writes only its own.
                    unsafe {
                        std::slice::from_raw_parts_mut(
                            (out_ptr as *mut f32).add((t * num_heads + kvh * group) * d),
                            group * d,
                        )
                    }
                })
                .collect();
            let mut out_rows = out_rows;
            for o in out_rows.iter_mut() {
                o.fill(0.0);
            }
            for_each_block(layout, seq.block_table, kvh, vmax, |first, n, off| {
                v_cache[off..off + n * d].convert_to_f32_slice(&mut row[..n * d]);
                for (i, o) in out_rows.iter_mut().enumerate() {
                    let n_i = n.min(visible(i).saturating_sub(first));
                    let p = |h: usize| &scores[(i * group + h) * vmax + first..][..n_i];
                    // Heads in pairs where the head size has a two-head kernel: the two
                    // share each value row's loads.
                    let paired = match d {
                        64 | 128 => group / 2 * 2,
                        _ => 0,
                    };
                    for h in (0..paired).step_by(2) {
                        let (o0, o1) = o[h * d..(h + 2) * d].split_at_mut(d);
                        match d {
                            64 => weighted_sum2::<64>([p(h), p(h + 1)], row, [o0, o1]),
                            _ => weighted_sum2::<128>([p(h), p(h + 1)], row, [o0, o1]),
                        }
                    }
                    for h in paired..group {
                        let p = p(h);
                        let oh = &mut o[h * d..(h + 1) * d];
                        match d {
                            64 => weighted_sum::<64>(p, row, oh),
                            128 => weighted_sum::<128>(p, row, oh),
                            _ => {
                                for (&w, value) in p.iter().zip(row.chunks_exact(d)) {
                                    axpy(w, value, oh);
                                }
                            }
                        }
                    }
                }
            });
        }
    });
}

/// The softmax of one (row, head)'s scaled scores in place, the weights rounded to f16 as
/// they meet f16 values (`half16`: scratch).
fn softmax(r: &mut [f32], half16: &mut Vec<f16>) {
    let max = lanes_fold(r, f32::NEG_INFINITY, f32::max);
    for x in r.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / lanes_fold(r, 0.0, |a, b| a + b);
    for x in r.iter_mut() {
        *x *= inv;
    }
    for c in r.chunks_mut(64) {
        half16.clear();
        half16.resize(c.len(), f16::ZERO);
        half16.convert_from_f32_slice(c);
        half16.convert_to_f32_slice(c);
    }
}

/// Query rows of one sequence that share each widened K/V block.
const Q_TILE: usize = 16;

#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    q16: Vec<f32>,
    row: Vec<f32>,
    half16: Vec<f16>,
}

/// `f` folded over `x` in 16 interleaved lanes (element `j` into lane `j % 16`), then the
/// lanes in order: vectorizes where one running value would not, and gives the same value
/// for the same input wherever it runs.
#[inline]
fn lanes_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = f(*l, v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = f(*l, v);
    }
    lanes.into_iter().fold(init, f)
}

/// Keys whose scores build up together, one per vector lane.
const KEY_LANES: usize = 16;

/// `out[j] = Σ_c q[c] · kt[c * bs + j]` for the first `out.len()` keys of a transposed
/// block (`kt`: `[d][bs]`). Each score is one fused multiply-add chain over `c` in order,
/// whichever lane computes it, so scores do not depend on the block size or on how many
/// keys are visible.
#[inline]
fn block_scores(q: &[f32], kt: &[f32], bs: usize, out: &mut [f32]) {
    let mut j0 = 0;
    // Whole groups of lanes, also past the visible keys while the block has room (the
    // extra lanes read other slots of the block and are dropped).
    while j0 < out.len() && j0 + KEY_LANES <= bs {
        let mut acc = [0f32; KEY_LANES];
        for (c, &qc) in q.iter().enumerate() {
            let keys = &kt[c * bs + j0..][..KEY_LANES];
            for (a, &k) in acc.iter_mut().zip(keys) {
                *a = k.mul_add(qc, *a);
            }
        }
        let take = KEY_LANES.min(out.len() - j0);
        out[j0..j0 + take].copy_from_slice(&acc[..take]);
        j0 += take;
    }
    for (j, o) in out.iter_mut().enumerate().skip(j0) {
        let mut a = 0f32;
        for (c, &qc) in q.iter().enumerate() {
            a = kt[c * bs + j].mul_add(qc, a);
        }
        *o = a;
    }
}

/// Query vectors whose scores `block_scores_set` builds up together: independent chains
/// of multiply-adds keep both FMA units busy, where one query's chain waits on each
/// previous step.
const QUERY_SET: usize = 8;

/// `block_scores` for `QUERY_SET` query vectors (`qs`: one after another) into
/// `out[offs[x]..][..lens[x]]`, every score the same chain as `block_scores` computes.
#[inline]
fn block_scores_set(
    qs: &[f32],
    kt: &[f32],
    bs: usize,
    out: &mut [f32],
    offs: [usize; QUERY_SET],
    lens: [usize; QUERY_SET],
) {
    let d = qs.len() / QUERY_SET;
    let most = lens.iter().copied().max().unwrap_or(0);
    let mut j0 = 0;
    while j0 < most && j0 + KEY_LANES <= bs {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            assert!(kt.len() >= (d - 1) * bs + j0 + KEY_LANES);
            // SAFETY: AVX-512F was detected; the loads stay in `kt` (checked above).
            let acc = unsafe { avx512::scores_set(qs, kt, bs, j0) };
            for x in 0..QUERY_SET {
                let take = KEY_LANES.min(lens[x].saturating_sub(j0));
                out[offs[x] + j0..][..take].copy_from_slice(&acc[x][..take]);
            }
            j0 += KEY_LANES;
            continue;
        }
        let mut acc = [[0f32; KEY_LANES]; QUERY_SET];
        let q: [&[f32]; QUERY_SET] = std::array::from_fn(|x| &qs[x * d..][..d]);
        for c in 0..d {
            let keys: &[f32; KEY_LANES] = kt[c * bs + j0..][..KEY_LANES]
                .try_into()
                .expect("a whole group of lanes");
            let xs: [f32; QUERY_SET] = std::array::from_fn(|x| q[x][c]);
            for l in 0..KEY_LANES {
                for x in 0..QUERY_SET {
                    acc[x][l] = keys[l].mul_add(xs[x], acc[x][l]);
                }
            }
        }
        for x in 0..QUERY_SET {
            let take = KEY_LANES.min(lens[x].saturating_sub(j0));
            out[offs[x] + j0..][..take].copy_from_slice(&acc[x][..take]);
        }
        j0 += KEY_LANES;
    }
    if j0 < most {
        // The block's last keys, past its whole groups of lanes.
        for x in 0..QUERY_SET {
            if lens[x] > j0 {
                let q = &qs[x * d..][..d];
                for (j, o) in out[offs[x]..][..lens[x]].iter_mut().enumerate().skip(j0) {
                    let mut a = 0f32;
                    for (c, &qc) in q.iter().enumerate() {
                        a = kt[c * bs + j].mul_add(qc, a);
                    }
                    *o = a;
                }
            }
        }
    }
}

/// `out += Σ_j p[j] · values[j]` over rows of `D` values, with `out` held in registers.
#[inline]
fn weighted_sum<const D: usize>(p: &[f32], values: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: AVX-512F was detected.
        return unsafe { avx512::weighted_sum::<D, 1>([p], values, [out]) };
    }
    let mut acc = [0f32; D];
    acc.copy_from_slice(&out[..D]);
    for (&w, v) in p.iter().zip(values.chunks_exact(D)) {
        for (a, &x) in acc.iter_mut().zip(v) {
            *a = x.mul_add(w, *a);
        }
    }
    out[..D].copy_from_slice(&acc);
}

/// `weighted_sum` for two heads with the same keys (`p[0]`, `p[1]` of one length): each
/// value row is loaded once for both, and each head's sum is the same chain.
#[inline]
fn weighted_sum2<const D: usize>(p: [&[f32]; 2], values: &[f32], out: [&mut [f32]; 2]) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: AVX-512F was detected.
        return unsafe { avx512::weighted_sum::<D, 2>(p, values, out) };
    }
    let mut a0 = [0f32; D];
    let mut a1 = [0f32; D];
    a0.copy_from_slice(&out[0][..D]);
    a1.copy_from_slice(&out[1][..D]);
    for ((&w0, &w1), v) in p[0].iter().zip(p[1]).zip(values.chunks_exact(D)) {
        let v: &[f32; D] = v.try_into().expect("D values per row");
        for c in 0..D {
            a0[c] = v[c].mul_add(w0, a0[c]);
            a1[c] = v[c].mul_add(w1, a1[c]);
        }
    }
    out[0][..D].copy_from_slice(&a0);
    out[1][..D].copy_from_slice(&a1);
}

/// The score and value-sum kernels with AVX-512: the same fused multiply-add chains (one
/// key, or one value component, per lane), with the accumulators held in registers, which
/// the compiler's vectorization of the portable loops did not manage (it kept them on the
/// stack, a store per multiply-add).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{KEY_LANES, QUERY_SET};

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c")
    }

    /// `super::super::simd::exp` on 16 lanes, step for step (the same roundings, no fused
    /// multiply-adds where it has none), so the same bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        use crate::ops::simd::{EXP_HI, EXP_LO, LN2_HI, LN2_LO};
        const MAGIC: f32 = 12_582_912.0;
        let set = _mm512_set1_ps;
        let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
        // NaN lanes end as 0 below, whatever the clamp makes of them.
        let c = _mm512_min_ps(_mm512_max_ps(x, set(EXP_LO)), set(EXP_HI));
        let t = add(mul(c, set(std::f32::consts::LOG2_E)), set(MAGIC));
        let n = sub(t, set(MAGIC));
        let r = sub(sub(c, mul(n, set(LN2_HI))), mul(n, set(LN2_LO)));
        let mut q = set(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            q = add(mul(q, r), set(k));
        }
        let p = add(add(mul(q, mul(r, r)), r), set(1.0));
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_sub_epi32(
                _mm512_castps_si512(t),
                _mm512_set1_epi32(MAGIC.to_bits() as i32),
            ),
            _mm512_set1_epi32(127),
        ));
        let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, set(EXP_LO));
        _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(bits))
    }

    /// The attention softmax of one (row, head) from raw scores `r`: `r * scale`, then
    /// the portable path's steps (max and sum folded in 16 lanes, `exp`, scaled by the
    /// inverse sum, rounded to f16), with the same bits: the max of the scaled scores is
    /// the scaled max (rounding is monotone and `scale > 0`).
    ///
    /// # Safety
    /// AVX-512F and F16C must be available.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn softmax(r: &mut [f32], scale: f32) {
        let n = r.len();
        let p = r.as_mut_ptr();
        let tail = |j: usize| -> __mmask16 { (((1u32 << (n - j).min(16)) - 1) & 0xFFFF) as u16 };
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..n).step_by(16) {
            let x = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), tail(j), p.add(j));
            // NaN scores are passed over, as `f32::max` does.
            m = _mm512_max_ps(x, m);
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(m) * scale);
        let sv = _mm512_set1_ps(scale);
        let mut sum = _mm512_setzero_ps();
        for j in (0..n).step_by(16) {
            let k = tail(j);
            let x = _mm512_maskz_loadu_ps(k, p.add(j));
            let e = exp16(_mm512_sub_ps(_mm512_mul_ps(x, sv), max));
            _mm512_mask_storeu_ps(p.add(j), k, e);
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
        }
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), sum);
        let inv = _mm512_set1_ps(1.0 / lanes.iter().fold(0.0, |a, &b| a + b));
        for j in (0..n).step_by(16) {
            let k = tail(j);
            let w = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(j)), inv);
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(w);
            _mm512_mask_storeu_ps(p.add(j), k, _mm512_cvtph_ps(h));
        }
    }

    /// Keys `j0 .. j0 + 16` of a transposed block against `QUERY_SET` query vectors, as
    /// `block_scores_set` computes them.
    ///
    /// # Safety
    /// AVX-512F must be available; `kt` must hold `(d - 1) bs + j0 + 16` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores_set(
        qs: &[f32],
        kt: &[f32],
        bs: usize,
        j0: usize,
    ) -> [[f32; KEY_LANES]; QUERY_SET] {
        const { assert!(KEY_LANES == 16) };
        let d = qs.len() / QUERY_SET;
        let mut acc = [_mm512_setzero_ps(); QUERY_SET];
        for c in 0..d {
            let keys = _mm512_loadu_ps(kt.as_ptr().add(c * bs + j0));
            for (x, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(keys, _mm512_set1_ps(qs[x * d + c]), *a);
            }
        }
        acc.map(|a| {
            let mut o = [0f32; KEY_LANES];
            _mm512_storeu_ps(o.as_mut_ptr(), a);
            o
        })
    }

    /// `out[h] += Σ_j p[h][j] · values[j]` for `H` heads over rows of `D` (64 or 128)
    /// values, as `weighted_sum` computes each.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum<const D: usize, const H: usize>(
        p: [&[f32]; H],
        values: &[f32],
        out: [&mut [f32]; H],
    ) {
        const { assert!(D == 64 || D == 128) };
        let mut acc = [[_mm512_setzero_ps(); 8]; H];
        for (a, o) in acc.iter_mut().zip(&out) {
            let o = &o[..D];
            for (v, a) in a.iter_mut().take(D / 16).enumerate() {
                *a = _mm512_loadu_ps(o[16 * v..].as_ptr());
            }
        }
        let keys = p.iter().map(|p| p.len()).fold(values.len() / D, usize::min);
        for j in 0..keys {
            let row = values[j * D..].as_ptr();
            let w: [__m512; H] = std::array::from_fn(|h| _mm512_set1_ps(p[h][j]));
            for v in 0..D / 16 {
                let x = _mm512_loadu_ps(row.add(16 * v));
                for (a, &w) in acc.iter_mut().zip(&w) {
                    a[v] = _mm512_fmadd_ps(x, w, a[v]);
                }
            }
        }
        for (a, o) in acc.iter().zip(out) {
            let o = &mut o[..D];
            for (v, a) in a.iter().take(D / 16).enumerate() {
                _mm512_storeu_ps(o[16 * v..].as_mut_ptr(), *a);
            }
        }
    }
}

/// Calls `f(first_key_index, keys_in_block, offset)` for each block holding the first
/// `visible` keys of `kv_head`.
#[inline]
fn for_each_block(
    layout: &CacheLayout,
    block_table: &[u32],
    kv_head: usize,
    visible: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let bs = layout.block_size;
    for (b, &block) in block_table.iter().enumerate() {
        let start = b * bs;
        if start >= visible {
            break;
        }
        f(
            start,
            bs.min(visible - start),
            layout.block_offset(block as usize, kv_head),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 kernels against the chains they must reproduce (one `mul_add` per key,
    /// in key order, per score or value component), to the bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernels_keep_each_chain() {
        if !avx512::available() {
            eprintln!("no AVX-512 on this CPU: the portable kernels run, nothing to compare");
            return;
        }
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for d in [64usize, 128] {
            let (bs, keys) = (32usize, 29usize);
            let kt: Vec<f32> = (0..d * bs).map(|_| next()).collect();
            let qs: Vec<f32> = (0..QUERY_SET * d).map(|_| next()).collect();
            for j0 in [0, 16] {
                // SAFETY: AVX-512F detected; `kt` holds d * bs values.
                let got = unsafe { avx512::scores_set(&qs, &kt, bs, j0) };
                for x in 0..QUERY_SET {
                    for l in 0..KEY_LANES {
                        let mut a = 0f32;
                        for c in 0..d {
                            a = kt[c * bs + j0 + l].mul_add(qs[x * d + c], a);
                        }
                        assert_eq!(got[x][l].to_bits(), a.to_bits(), "d {d} query {x} key {l}");
                    }
                }
            }
            let values: Vec<f32> = (0..keys * d).map(|_| next()).collect();
            let p: Vec<Vec<f32>> = (0..2)
                .map(|_| (0..keys).map(|_| next()).collect())
                .collect();
            let init: Vec<f32> = (0..2 * d).map(|_| next()).collect();
            let mut want = init.clone();
            for h in 0..2 {
                for c in 0..d {
                    let mut a = want[h * d + c];
                    for j in 0..keys {
                        a = values[j * d + c].mul_add(p[h][j], a);
                    }
                    want[h * d + c] = a;
                }
            }
            let (mut two, mut one) = (init.clone(), init.clone());
            let (o0, o1) = two.split_at_mut(d);
            // SAFETY: AVX-512F detected.
            unsafe {
                match d {
                    64 => avx512::weighted_sum::<64, 2>([&p[0], &p[1]], &values, [o0, o1]),
                    _ => avx512::weighted_sum::<128, 2>([&p[0], &p[1]], &values, [o0, o1]),
                }
                match d {
                    64 => avx512::weighted_sum::<64, 1>([&p[0]], &values, [&mut one[..d]]),
                    _ => avx512::weighted_sum::<128, 1>([&p[0]], &values, [&mut one[..d]]),
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&two), bits(&want), "two heads, d {d}");
            assert_eq!(bits(&one[..d]), bits(&want[..d]), "one head, d {d}");
        }
        // The softmax from raw scores against scaling first and the portable softmax, over
        // lengths around the 16 lanes, with scores far apart (exp's clamps) and ties.
        let mut half16 = Vec::new();
        for n in (1..50).chain([200, 517]) {
            let raw: Vec<f32> = (0..n)
                .map(|j| match j % 11 {
                    3 => -3000.0,
                    7 => 4.0,
                    _ => next() * 40.0,
                })
                .collect();
            for scale in [0.125f32, 1.0 / 3.0] {
                let mut want: Vec<f32> = raw.iter().map(|x| x * scale).collect();
                softmax(&mut want, &mut half16);
                let mut got = raw.clone();
                // SAFETY: `available` said AVX-512F and F16C.
                unsafe { avx512::softmax(&mut got, scale) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{n} scores, scale {scale}");
            }
        }
    }

    /// Plain attention over contiguous K/V for one sequence (no paging), each query seeing
    /// at most the `window` last keys, scores soft-capped at `softcap`.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        nh: usize,
        nkv: usize,
        d: usize,
        offset: usize,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Vec<f32> {
        let t = q.len() / (nh * d);
        let mut out = vec![0.0; q.len()];
        for i in 0..t {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qi = &q[(i * nh + h) * d..][..d];
                let n = offset + i + 1;
                let lo = window.map_or(0, |w| n.saturating_sub(w));
                let s: Vec<f32> = (lo..n)
                    .map(|j| {
                        qi.iter()
                            .zip(&k[(j * nkv + kvh) * d..][..d])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            / (d as f32).sqrt()
                    })
                    .map(|s| softcap.map_or(s, |c| c * (s / c).tanh()))
                    .collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (e, j) in e.iter().zip(lo..n) {
                    for c in 0..d {
                        out[(i * nh + h) * d + c] += e / z * v[(j * nkv + kvh) * d + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_attention_across_blocks_and_chunks() {
        for d in [8, 64, 128] {
            for window in [None, Some(5), Some(16)] {
                // A cap of 0.3 is below most of these scores: capping changes them.
                for softcap in [None, Some(0.3)] {
                    check_against_naive(d, window, softcap);
                }
            }
        }
    }

    /// A query row's output does not depend on the rows it shares a tile with (the score
    /// and value kernels for several queries or heads keep each one's own chain), so a
    /// prompt gives the same bits as its tokens one at a time.
    #[test]
    fn a_query_row_gets_the_same_bits_alone_and_in_a_tile() {
        for d in [64, 128] {
            let (nh, nkv, total, bs) = (8, 2, 37, 16);
            let r = |i: usize| ((i as f32 * 12.9898).sin() * 43758.547).fract();
            let k: Vec<f32> = (0..total * nkv * d).map(r).collect();
            let v: Vec<f32> = (0..total * nkv * d).map(|i| r(i + 7777)).collect();
            let q: Vec<f32> = (0..total * nh * d).map(|i| r(i + 31337)).collect();
            let layout = CacheLayout {
                num_blocks: 8,
                block_size: bs,
                num_kv_heads: nkv,
                head_dim: d,
            };
            let mut kc = vec![f16::ZERO; layout.layer_len()];
            let mut vc = vec![f16::ZERO; layout.layer_len()];
            let table: Vec<u32> = vec![5, 2, 7];
            let slots: Vec<u32> = (0..total)
                .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
                .collect();
            write_kv(&layout, &mut kc, &mut vc, &k, &v, &slots);
            let run = |q_start: usize, q_len: usize, out: &mut [f32]| {
                let seqs = [AttnSeq {
                    q_start: 0,
                    q_len,
                    context_len: q_start + q_len,
                    block_table: &table,
                }];
                let q = &q[q_start * nh * d..(q_start + q_len) * nh * d];
                paged_attention_windowed(&layout, &kc, &vc, q, nh, &seqs, 0.125, None, None, out);
            };
            let mut together = vec![0.0; q.len()];
            run(0, total, &mut together);
            for t in 0..total {
                let mut alone = vec![0.0; nh * d];
                run(t, 1, &mut alone);
                let want: Vec<u32> = alone.iter().map(|x| x.to_bits()).collect();
                let got: Vec<u32> = together[t * nh * d..(t + 1) * nh * d]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                assert_eq!(got, want, "head dim {d}, row {t}");
            }
        }
    }

    fn check_against_naive(d: usize, window: Option<usize>, softcap: Option<f32>) {
        let (nh, nkv) = (6, 2);
        let total = 23;
        let r = |i: usize| ((i as f32 * 12.9898).sin() * 43758.547).fract();
        let k: Vec<f32> = (0..total * nkv * d).map(r).collect();
        let v: Vec<f32> = (0..total * nkv * d).map(|i| r(i + 7777)).collect();
        let q: Vec<f32> = (0..total * nh * d).map(|i| r(i + 31337)).collect();
        let expect = naive(&q, &k, &v, nh, nkv, d, 0, window, softcap);
        if softcap.is_some() {
            // The cap shows in the output.
            let uncapped = naive(&q, &k, &v, nh, nkv, d, 0, window, None);
            let moved = expect
                .iter()
                .zip(&uncapped)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(moved > 1e-2, "soft-capping changed nothing ({moved})");
        }
        for (bs, chunks) in [
            (1, vec![(0, 9), (9, total)]),
            (4, vec![(0, total)]),
            (16, vec![(0, 9), (9, total)]),
        ] {
            let layout = CacheLayout {
                num_blocks: 64,
                block_size: bs,
                num_kv_heads: nkv,
                head_dim: d,
            };
            let mut kc = vec![f16::ZERO; layout.layer_len()];
            let mut vc = vec![f16::ZERO; layout.layer_len()];
            // Scattered, reversed blocks.
            let table: Vec<u32> = (0..total.div_ceil(bs) as u32).map(|b| 63 - 2 * b).collect();
            let slot = |p: usize| table[p / bs] * bs as u32 + (p % bs) as u32;
            // Two chunks: 9 tokens, then the remaining 14.
            let mut out = vec![0.0; q.len()];
            for (start, end) in chunks {
                let slots: Vec<u32> = (start..end).map(slot).collect();
                write_kv(
                    &layout,
                    &mut kc,
                    &mut vc,
                    &k[start * nkv * d..end * nkv * d],
                    &v[start * nkv * d..end * nkv * d],
                    &slots,
                );
                let seqs = [AttnSeq {
                    q_start: 0,
                    q_len: end - start,
                    context_len: end,
                    block_table: &table,
                }];
                paged_attention_windowed(
                    &layout,
                    &kc,
                    &vc,
                    &q[start * nh * d..end * nh * d],
                    nh,
                    &seqs,
                    1.0 / (d as f32).sqrt(),
                    window,
                    softcap,
                    &mut out[start * nh * d..end * nh * d],
                );
            }
            for (a, b) in out.iter().zip(&expect) {
                // f16 storage: agreement to f16 precision.
                assert!(
                    (a - b).abs() < 2e-3,
                    "head dim {d}, block size {bs}, window {window:?}, cap {softcap:?}: \
                     {a} vs {b}"
                );
            }
        }
    }
}
