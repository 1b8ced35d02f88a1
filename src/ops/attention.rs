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
    // rather than once per query row. Items run on candle's barrier pool, the threads the
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
                q16.extend(
                    q[(t * num_heads + kvh * group) * d..][..group * d]
                        .iter()
                        .map(|&x| f16::from_f32(x).to_f32()),
                );
            }
            row.resize(bs * d, 0.0);
            scores.clear();
            scores.resize(len * group * vmax, 0.0);
            // Pass 1: scores, laid out [row][head][key].
            for_each_block(layout, seq.block_table, kvh, vmax, |first, n, off| {
                // The block's keys, transposed: row[c * bs + j] = component c of key j.
                k_cache[off..off + bs * d].convert_to_f32_slice(&mut row[..bs * d]);
                for i in 0..len {
                    let n_i = n.min(visible(i).saturating_sub(first));
                    for h in 0..group {
                        let qh = &q16[(i * group + h) * d..][..d];
                        let sc = &mut scores[(i * group + h) * vmax + first..][..n_i];
                        block_scores(qh, row, bs, sc);
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
                    for h in 0..group {
                        let p = &scores[(i * group + h) * vmax + first..][..n_i];
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

/// `out += Σ_j p[j] · values[j]` over rows of `D` values, with `out` held in registers.
#[inline]
fn weighted_sum<const D: usize>(p: &[f32], values: &[f32], out: &mut [f32]) {
    let mut acc = [0f32; D];
    acc.copy_from_slice(&out[..D]);
    for (&w, v) in p.iter().zip(values.chunks_exact(D)) {
        for (a, &x) in acc.iter_mut().zip(v) {
            *a = x.mul_add(w, *a);
        }
    }
    out[..D].copy_from_slice(&acc);
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
