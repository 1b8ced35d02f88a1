//! CPU paged attention benchmarks at the default model's shape (SmolLM2-135M: 9 query
//! heads, 3 KV heads, head dim 64), one layer, 16-token blocks scattered over the cache.
//!
//! Names (stable across commits):
//! - `attention/decode/ctx_{128,1024,4096}`: one sequence, one new token, that context.
//! - `attention/decode_batch_16/ctx_512`: 16 sequences, one new token each.
//! - `attention/prefill/512`: one 512-token prompt, causal, empty cache before it.
//!
//! Throughput is in query tokens.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::f16;
use std::hint::black_box;
use wick::kv::CacheLayout;
use wick::ops::{paged_attention, AttnSeq};

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const BS: usize = 16;

struct Setup {
    layout: CacheLayout,
    k: Vec<f16>,
    v: Vec<f16>,
}

impl Setup {
    fn new(num_blocks: usize) -> Self {
        let layout = CacheLayout {
            num_blocks,
            block_size: BS,
            num_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
        };
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
        };
        let k = (0..layout.layer_len()).map(|_| next()).collect();
        let v = (0..layout.layer_len()).map(|_| next()).collect();
        Self { layout, k, v }
    }
}

/// Block tables for sequences of `ctx` tokens each, blocks interleaved across sequences
/// (as a busy cache hands them out).
fn tables(seqs: usize, ctx: usize) -> Vec<Vec<u32>> {
    let per = ctx.div_ceil(BS);
    (0..seqs)
        .map(|s| (0..per).map(|j| (j * seqs + s) as u32).collect())
        .collect()
}

fn queries(rows: usize) -> Vec<f32> {
    (0..rows * HEADS * HEAD_DIM)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let setup = Setup::new(16 * 512 / BS + 4096 / BS);

    let mut run = |name: &str, seqs: usize, ctx: usize, q_len: usize| {
        let tables = tables(seqs, ctx);
        let attn: Vec<AttnSeq> = tables
            .iter()
            .enumerate()
            .map(|(s, t)| AttnSeq {
                q_start: s * q_len,
                q_len,
                context_len: ctx,
                block_table: t,
            })
            .collect();
        let q = queries(seqs * q_len);
        let mut out = vec![0.0f32; q.len()];
        group.throughput(Throughput::Elements((seqs * q_len) as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                paged_attention(
                    &setup.layout,
                    &setup.k,
                    &setup.v,
                    black_box(&q),
                    HEADS,
                    &attn,
                    scale,
                    &mut out,
                );
                black_box(out[0])
            })
        });
    };
    for ctx in [128usize, 1024, 4096] {
        run(&format!("decode/ctx_{ctx}"), 1, ctx, 1);
    }
    run("decode_batch_16/ctx_512", 16, 512, 1);
    run("prefill/512", 1, 512, 512);
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
