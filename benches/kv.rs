//! KV block pool benchmarks: allocation and release, prefix-cache lookup and reuse.
//!
//! Names (stable across commits):
//! - `kv/allocate_release/{1,16,64}`: take n blocks from a 4,096-block pool, give them back.
//! - `kv/block_hash/16_tokens`: hash one full block of 16 tokens chained to its parent.
//! - `kv/prefix_lookup/32_blocks`: hash a 512-token prompt block by block and look each
//!   block up in a pool whose cache holds it (the scheduler's admission path).
//! - `kv/acquire_cached/32_blocks`: revive 32 cached free blocks, then release them.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wick::kv::{block_hash, BlockHash, BlockPool};

const POOL: usize = 4096;
const BS: usize = 16;

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 100 + i.wrapping_mul(2654435761) % 32000)
        .collect()
}

fn hashes(tokens: &[u32]) -> Vec<BlockHash> {
    let mut parent = None;
    tokens
        .chunks_exact(BS)
        .map(|c| {
            let h = block_hash(parent, c);
            parent = Some(h);
            h
        })
        .collect()
}

fn kv(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv");

    for n in [1usize, 16, 64] {
        let mut pool = BlockPool::new(POOL);
        // Fragment the free list a little, as a running server's is.
        let held = pool.allocate(POOL / 2).expect("blocks");
        for b in held.iter().step_by(2) {
            pool.release(*b).expect("release");
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("allocate_release", n), &n, |b, &n| {
            b.iter(|| {
                let blocks = pool.allocate(n).expect("blocks");
                pool.release_all(black_box(&blocks)).expect("release");
            })
        });
    }

    let block = tokens(BS);
    group.throughput(Throughput::Elements(1));
    group.bench_function("block_hash/16_tokens", |b| {
        b.iter(|| block_hash(black_box(Some(0x1234_5678)), black_box(&block)))
    });

    // A pool whose prefix cache holds a 512-token prompt (32 blocks), all free.
    let prompt = tokens(32 * BS);
    let chain = hashes(&prompt);
    let mut pool = BlockPool::new(POOL);
    let blocks = pool.allocate(chain.len()).expect("blocks");
    for (&b, &h) in blocks.iter().zip(&chain) {
        assert!(pool.register(b, h));
    }
    pool.release_all(&blocks).expect("release");

    group.throughput(Throughput::Elements(chain.len() as u64));
    group.bench_function("prefix_lookup/32_blocks", |b| {
        b.iter(|| {
            let chain = hashes(black_box(&prompt));
            let hits = chain.iter().map_while(|&h| pool.lookup(h)).count();
            assert_eq!(hits, 32);
            hits
        })
    });

    group.bench_function("acquire_cached/32_blocks", |b| {
        b.iter(|| {
            for &h in &chain {
                let block = pool.lookup(h).expect("cached");
                pool.acquire_cached(block).expect("acquire");
            }
            for &h in chain.iter().rev() {
                let block = pool.lookup(h).expect("cached");
                pool.release(block).expect("release");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, kv);
criterion_main!(benches);
