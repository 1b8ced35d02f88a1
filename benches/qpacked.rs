//! Packed quantized matmul benchmarks (the CPU kernels behind every GGUF linear layer), on
//! one 2048 x 2048 matrix (Llama 3.2 1B's attention projection) per format, random blocks.
//!
//! Names (stable across commits):
//! - `qpacked/<format>/rows_{1,8,16,32,64,512}`: `x · Wᵀ` for that many activation rows
//!   (1: decode; 8-64: batched decode, where each format switches from the row kernels to
//!   the batched path at its own `BATCH_FROM`; 512: a prompt).
//!
//! Throughput is in activation rows. The kernel set is this CPU's best (`WICK_CPU_KERNEL`
//! picks a lower one).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wick::ops::qpacked::{matmul_many, Kind, PackedWeight};

const N: usize = 2048;
const K: usize = 2048;

/// Random blocks of `kind` with sane scales: random bytes, then every f16 scale field set
/// to a small value (a random f16 can be inf or NaN).
fn weight(kind: Kind, seed: u64) -> PackedWeight {
    let (block, cols, scales): (usize, usize, &[usize]) = match kind {
        Kind::Q4_0 => (18, 32, &[0]),
        Kind::Q4_1 => (20, 32, &[0, 2]),
        Kind::Q5_0 => (22, 32, &[0]),
        Kind::Q5_1 => (24, 32, &[0, 2]),
        Kind::Q8_0 => (34, 32, &[0]),
        Kind::Q4K => (144, 256, &[0, 2]),
        Kind::Q5K => (176, 256, &[0, 2]),
        Kind::Q6K => (210, 256, &[208]),
    };
    let mut s = seed;
    let mut bytes: Vec<u8> = (0..N * K / cols * block)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    let small = half::f16::from_f32(0.01).to_le_bytes();
    for b in bytes.chunks_exact_mut(block) {
        for &at in scales {
            b[at..at + 2].copy_from_slice(&small);
        }
    }
    PackedWeight::from_bytes(kind, &bytes, N, K).expect("packs")
}

fn qpacked(c: &mut Criterion) {
    let mut group = c.benchmark_group("qpacked");
    group.sample_size(10);
    let kinds = [
        ("Q4_0", Kind::Q4_0),
        ("Q4_1", Kind::Q4_1),
        ("Q8_0", Kind::Q8_0),
        ("Q4_K", Kind::Q4K),
        ("Q5_K", Kind::Q5K),
        ("Q6_K", Kind::Q6K),
    ];
    for (name, kind) in kinds {
        let w = weight(kind, 7);
        for m in [1usize, 8, 16, 32, 64, 512] {
            let x: Vec<f32> = (0..m * K)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut out = vec![0f32; m * N];
            group.throughput(Throughput::Elements(m as u64));
            group.bench_with_input(BenchmarkId::new(name, format!("rows_{m}")), &m, |b, &m| {
                b.iter(|| matmul_many(black_box(&x), m, &[&w], &mut [&mut out]))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, qpacked);
criterion_main!(benches);
