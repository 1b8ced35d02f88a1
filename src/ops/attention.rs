//! Paged attention on the CPU.
//!
//! Each query token attends to every key of its sequence up to and including its own
//! position: the context cached by earlier steps plus the causal part of the current chunk.
//! Keys are read block by block through the sequence's block table, never gathered into a
//! contiguous copy. Query heads that share a KV head (GQA) are processed together so each
//! key and value is loaded once per group.

use rayon::prelude::*;

use super::simd::{axpy, dot, scale};
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
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    k: &[f32],
    v: &[f32],
    slots: &[u32],
) {
    let d = layout.head_dim;
    let row = layout.num_kv_heads * d;
    for (t, &slot) in slots.iter().enumerate() {
        for h in 0..layout.num_kv_heads {
            let dst = layout.offset(slot as usize, h);
            let src = t * row + h * d;
            k_cache[dst..dst + d].copy_from_slice(&k[src..src + d]);
            v_cache[dst..dst + d].copy_from_slice(&v[src..src + d]);
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
    k_cache: &[f32],
    v_cache: &[f32],
    q: &[f32],
    num_heads: usize,
    seqs: &[AttnSeq<'_>],
    softmax_scale: f32,
    out: &mut [f32],
) {
    let d = layout.head_dim;
    let nkv = layout.num_kv_heads;
    let group = num_heads / nkv;
    let num_tokens = q.len() / (num_heads * d);
    // For each query row: its sequence and how many keys it sees.
    let mut row_info = vec![(0usize, 0usize); num_tokens];
    for (s, seq) in seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.q_len;
        for i in 0..seq.q_len {
            row_info[seq.q_start + i] = (s, first_pos + i + 1);
        }
    }
    // One work item per (token, kv head): its `group` query heads are contiguous.
    out.par_chunks_mut(group * d).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (item, out_group)| {
            let t = item / nkv;
            let kvh = item % nkv;
            let (s, visible) = row_info[t];
            let seq = &seqs[s];
            let q_group = &q[(t * num_heads + kvh * group) * d..][..group * d];
            scores.clear();
            scores.resize(group * visible, 0.0);
            // Pass 1: scores, laid out [head][key].
            for_each_key(layout, seq.block_table, kvh, visible, |j, off| {
                let key = &k_cache[off..off + d];
                for h in 0..group {
                    scores[h * visible + j] =
                        dot(&q_group[h * d..(h + 1) * d], key) * softmax_scale;
                }
            });
            // Softmax per head.
            for h in 0..group {
                let row = &mut scores[h * visible..(h + 1) * visible];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                scale(1.0 / sum, row);
            }
            // Pass 2: weighted sum of values.
            out_group.fill(0.0);
            for_each_key(layout, seq.block_table, kvh, visible, |j, off| {
                let value = &v_cache[off..off + d];
                for h in 0..group {
                    axpy(
                        scores[h * visible + j],
                        value,
                        &mut out_group[h * d..(h + 1) * d],
                    );
                }
            });
        },
    );
}

/// Calls `f(key_index, offset)` for the first `visible` keys of `kv_head`, block by block.
#[inline]
fn for_each_key(
    layout: &CacheLayout,
    block_table: &[u32],
    kv_head: usize,
    visible: usize,
    mut f: impl FnMut(usize, usize),
) {
    let bs = layout.block_size;
    let d = layout.head_dim;
    for (b, &block) in block_table.iter().enumerate() {
        let start = b * bs;
        if start >= visible {
            break;
        }
        let base = layout.block_offset(block as usize, kv_head);
        for i in 0..bs.min(visible - start) {
            f(start + i, base + i * d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention over contiguous K/V for one sequence (no paging).
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        nh: usize,
        nkv: usize,
        d: usize,
        offset: usize,
    ) -> Vec<f32> {
        let t = q.len() / (nh * d);
        let mut out = vec![0.0; q.len()];
        for i in 0..t {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qi = &q[(i * nh + h) * d..][..d];
                let n = offset + i + 1;
                let s: Vec<f32> = (0..n)
                    .map(|j| {
                        qi.iter()
                            .zip(&k[(j * nkv + kvh) * d..][..d])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            / (d as f32).sqrt()
                    })
                    .collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for j in 0..n {
                    for c in 0..d {
                        out[(i * nh + h) * d + c] += e[j] / z * v[(j * nkv + kvh) * d + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_attention_across_blocks_and_chunks() {
        let (nh, nkv, d) = (4, 2, 8);
        let total = 23;
        let r = |i: usize| ((i as f32 * 12.9898).sin() * 43758.547).fract();
        let k: Vec<f32> = (0..total * nkv * d).map(r).collect();
        let v: Vec<f32> = (0..total * nkv * d).map(|i| r(i + 7777)).collect();
        let q: Vec<f32> = (0..total * nh * d).map(|i| r(i + 31337)).collect();
        let expect = naive(&q, &k, &v, nh, nkv, d, 0);
        for bs in [1, 4, 16] {
            let layout = CacheLayout {
                num_blocks: 64,
                block_size: bs,
                num_kv_heads: nkv,
                head_dim: d,
            };
            let mut kc = vec![0.0; layout.layer_len()];
            let mut vc = vec![0.0; layout.layer_len()];
            // Scattered, reversed blocks.
            let table: Vec<u32> = (0..total.div_ceil(bs) as u32).map(|b| 63 - 2 * b).collect();
            let slot = |p: usize| table[p / bs] * bs as u32 + (p % bs) as u32;
            // Two chunks: 9 tokens, then the remaining 14.
            let mut out = vec![0.0; q.len()];
            for (start, end) in [(0, 9), (9, total)] {
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
                paged_attention(
                    &layout,
                    &kc,
                    &vc,
                    &q[start * nh * d..end * nh * d],
                    nh,
                    &seqs,
                    1.0 / (d as f32).sqrt(),
                    &mut out[start * nh * d..end * nh * d],
                );
            }
            for (a, b) in out.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-5, "block size {bs}: {a} vs {b}");
            }
        }
    }
}
