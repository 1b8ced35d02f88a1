//! Paged attention on the CPU.
//!
//! Each query token attends to every key of its sequence up to and including its own
//! position: the context cached by earlier steps plus the causal part of the current chunk.
//! Keys are read block by block through the sequence's block table, never gathered into a
//! contiguous copy. Query heads that share a KV head (GQA) are processed together so each
//! key and value is loaded once per group.
//!
//! K/V are stored as f16. Like llama.cpp's CPU attention, queries and softmax weights are
//! rounded to f16 before they meet the f16 cache, and products are summed in f32.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::simd::{axpy, dot_ggml};
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
    let row = layout.num_kv_heads * d;
    for (t, &slot) in slots.iter().enumerate() {
        for h in 0..layout.num_kv_heads {
            let dst = layout.offset(slot as usize, h);
            let src = t * row + h * d;
            k_cache[dst..dst + d].convert_from_f32_slice(&k[src..src + d]);
            v_cache[dst..dst + d].convert_from_f32_slice(&v[src..src + d]);
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
    // One work item per (token, kv head): its `group` query heads are contiguous. Items
    // run on candle's barrier pool, the threads the matmuls use, so the two never
    // compete for cores.
    let out_ptr = out.as_mut_ptr() as usize;
    let item_len = group * d;
    let n_items = num_tokens * nkv;
    candle_core::utils::barrier_pool().execute_chunked(n_items, |items| {
        let mut scratch = Scratch::default();
        for item in items {
            // SAFETY: items are disjoint `item_len` chunks of `out`, each visited once.
            let out_group = unsafe {
                std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(item * item_len), item_len)
            };
            let scratch = &mut scratch;
            let t = item / nkv;
            let kvh = item % nkv;
            let (s, visible) = row_info[t];
            let seq = &seqs[s];
            let Scratch { scores, q16, row } = scratch;
            q16.clear();
            q16.extend(
                q[(t * num_heads + kvh * group) * d..][..group * d]
                    .iter()
                    .map(|&x| f16::from_f32(x).to_f32()),
            );
            row.resize(layout.block_size * d, 0.0);
            scores.clear();
            scores.resize(group * visible, 0.0);
            // Pass 1: scores, laid out [head][key].
            for_each_block(layout, seq.block_table, kvh, visible, |first, n, off| {
                k_cache[off..off + n * d].convert_to_f32_slice(&mut row[..n * d]);
                for (i, key) in row[..n * d].chunks_exact(d).enumerate() {
                    for h in 0..group {
                        scores[h * visible + first + i] =
                            dot_ggml(&q16[h * d..(h + 1) * d], key) * softmax_scale;
                    }
                }
            });
            // Softmax per head; weights rounded to f16 as they meet f16 values.
            for h in 0..group {
                let r = &mut scores[h * visible..(h + 1) * visible];
                let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in r.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in r.iter_mut() {
                    *x = f16::from_f32(*x * inv).to_f32();
                }
            }
            // Pass 2: weighted sum of values.
            out_group.fill(0.0);
            for_each_block(layout, seq.block_table, kvh, visible, |first, n, off| {
                v_cache[off..off + n * d].convert_to_f32_slice(&mut row[..n * d]);
                for (i, value) in row[..n * d].chunks_exact(d).enumerate() {
                    for h in 0..group {
                        axpy(
                            scores[h * visible + first + i],
                            value,
                            &mut out_group[h * d..(h + 1) * d],
                        );
                    }
                }
            });
        }
    });
}

#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    q16: Vec<f32>,
    row: Vec<f32>,
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
            let mut kc = vec![f16::ZERO; layout.layer_len()];
            let mut vc = vec![f16::ZERO; layout.layer_len()];
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
                // f16 storage: agreement to f16 precision.
                assert!((a - b).abs() < 2e-3, "block size {bs}: {a} vs {b}");
            }
        }
    }
}
