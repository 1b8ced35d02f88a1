//! CPU paged attention benchmarks at the default model's shape (SmolLM2-135M: 9 query
//! heads, 3 KV heads, head dim 64), one layer, 16-token blocks scattered over the cache.
//!
//! Names (stable across commits):
//! - `attention/decode/ctx_{128,1024,4096}`: one sequence, one new token, that context.
//! - `attention/decode_batch_16/ctx_512`: 16 sequences, one new token each.
//! - `attention/prefill/512`: one 512-token prompt, causal, empty cache before it.
//!
//! Throughput is in query tokens.
//!
//! With `--features cuda` and a GPU, the same kernels' CUDA versions at the
//! llama-3-8b shape (32 query heads, 8 KV heads, head dim 128, bf16, 16-token blocks):
//! - `attention_cuda/decode_batch_64/ctx_{512,4096}`: 64 sequences, one new token each.
//! - `attention_cuda/decode/ctx_32768`: one long context (split across partitions).
//! - `attention_cuda/prefill/{512,2048,8192,32768}`: one prompt of that many tokens in
//!   one step (the tensor-core prefill kernel; blocks interleaved as for the others).
//!   PyTorch's scaled_dot_product_attention on the same shapes: scripts/gpu_check.py
//!   `sdpa`, in scripts/gpu-check.sh's `prefill` step.
//! - `attention_cuda/greedy_64x128256`: device argmax + logprob over 64 rows of logits.

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
    for n in [512, 2048, 8192, 32768] {
        run(&format!("prefill/{n}"), 1, n, n);
    }
    group.finish();
}

#[cfg(feature = "cuda")]
fn attention_cuda(c: &mut Criterion) {
    use candle_core::{DType, Device, Tensor};
    use wick::ops::cuda::{AttnMeta, AttnScratch, Choices, Kernels};
    use wick::ops::launch::plan_splits;
    let dev = match wick::model::select_device("cuda") {
        Ok(Device::Cuda(d)) => d,
        _ => {
            eprintln!("attention_cuda: no CUDA device, skipped");
            return;
        }
    };
    let device = Device::Cuda(dev.clone());
    let kernels = Kernels::new(&dev).expect("kernels");
    let (heads, kv_heads, d, bs) = (32usize, 8usize, 128usize, 16usize);
    let mut group = c.benchmark_group("attention_cuda");
    let mut run = |name: &str, seqs: usize, ctx: usize, q_len: usize| {
        let per = ctx.div_ceil(bs);
        let layout = CacheLayout {
            num_blocks: seqs * per,
            block_size: bs,
            num_kv_heads: kv_heads,
            head_dim: d,
        };
        let k_cache = dev.alloc_zeros::<u16>(layout.layer_len()).expect("alloc");
        let v_cache = dev.alloc_zeros::<u16>(layout.layer_len()).expect("alloc");
        let tables: Vec<u32> = (0..seqs * per)
            .map(|i| ((i % per) * seqs + i / per) as u32)
            .collect();
        let rows = seqs * q_len;
        let row_seq: Vec<u32> = (0..rows).map(|r| (r / q_len) as u32).collect();
        let q_start: Vec<u32> = (0..seqs).map(|s| (s * q_len) as u32).collect();
        let up = |v: &[u32]| dev.clone_htod(v).expect("upload");
        let (rs, qs, ql, cl, bt) = (
            up(&row_seq),
            up(&q_start),
            up(&vec![q_len as u32; seqs]),
            up(&vec![ctx as u32; seqs]),
            up(&tables),
        );
        let mut split = Vec::new();
        let plan = plan_splits(std::iter::repeat_n((q_len, ctx), seqs), 1 << 16, &mut split);
        split.push(0);
        let sp = up(&split);
        let mut scratch = AttnScratch::new(&dev, plan.total_parts, heads, d).expect("scratch");
        let meta = AttnMeta {
            row_seq: rs.slice(..),
            q_start: qs.slice(..),
            q_len: ql.slice(..),
            context_len: cl.slice(..),
            block_tables: bt.slice(..),
            max_blocks: per,
            part_start: sp.slice(..rows),
            split_rows: sp.slice(rows..),
            split: plan,
            num_heads: heads,
            kv_heads,
            head_dim: d,
            block_size: bs,
            scale: 1.0 / (d as f32).sqrt(),
            window: None,
            softcap: None,
        };
        let q = Tensor::randn(0f32, 1.0, (rows, heads * d), &device)
            .and_then(|t| t.to_dtype(DType::BF16))
            .expect("q");
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = kernels
                    .paged_attention(&q, &k_cache, &v_cache, &meta, &mut scratch)
                    .expect("attention");
                device.synchronize().expect("sync");
                black_box(out)
            })
        });
    };
    run("decode_batch_64/ctx_512", 64, 512, 1);
    run("decode_batch_64/ctx_4096", 64, 4096, 1);
    run("decode/ctx_32768", 1, 32768, 1);
    for n in [512, 2048, 8192, 32768] {
        run(&format!("prefill/{n}"), 1, n, n);
    }
    let logits = Tensor::randn(0f32, 3.0, (64, 128_256), &device).expect("logits");
    group.throughput(Throughput::Elements(64));
    // Buffers kept between iterations, as the engine keeps them between steps.
    let mut chosen = Choices::default();
    group.bench_function("greedy_64x128256", |b| {
        b.iter(|| {
            kernels.choose(&logits, &[], &mut chosen).expect("greedy");
            black_box(chosen.greedy_ids[0])
        })
    });
    group.finish();
}

#[cfg(not(feature = "cuda"))]
fn attention_cuda(_: &mut Criterion) {}

criterion_group!(benches, attention, attention_cuda);
criterion_main!(benches);
