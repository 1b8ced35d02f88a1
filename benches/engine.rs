//! Engine benchmarks on the default model: prefill of 512 tokens and decode steps at
//! batch 1, 8 and 32 (each sequence with a 64-token context).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wick::config::ModelsConfig;
use wick::engine::{CacheConfig, ModelRunner, Sequence};
use wick::hub::{resolve, HubOptions};
use wick::kv::BlockPool;
use wick::model::{load, LoadOptions};

fn runner() -> ModelRunner {
    let resolved =
        resolve(None, &ModelsConfig::embedded(), &HubOptions::from_env()).expect("default model");
    let loaded = load(&resolved, &LoadOptions::default()).expect("model loads");
    ModelRunner::new(
        loaded.model,
        CacheConfig {
            block_size: 16,
            num_blocks: 1024,
        },
    )
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 100 + (i.wrapping_mul(2654435761).wrapping_add(salt * 7919)) % 40000)
        .collect()
}

fn engine(c: &mut Criterion) {
    let mut runner = runner();
    let mut pool = BlockPool::new(1024);
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);

    let p = prompt(512, 0);
    group.throughput(Throughput::Elements(512));
    group.bench_function("prefill_512", |b| {
        b.iter(|| {
            let mut seq = Sequence::new(p.clone());
            seq.reserve(p.len(), 16, &mut pool).expect("blocks");
            runner.step(&mut [(&mut seq, p.len())]).expect("step");
            seq.release(&mut pool).expect("release");
        })
    });

    for batch in [1usize, 8, 32] {
        let mut seqs: Vec<Sequence> = (0..batch)
            .map(|i| Sequence::new(prompt(64, i as u32)))
            .collect();
        for s in seqs.iter_mut() {
            s.reserve(65, 16, &mut pool).expect("blocks");
            runner.step(&mut [(s, 64)]).expect("prefill");
        }
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("decode_batch_{batch}"), |b| {
            b.iter(|| {
                // One decode step at a constant context: append, run, roll back.
                let mut items: Vec<(&mut Sequence, usize)> = seqs
                    .iter_mut()
                    .map(|s| {
                        s.tokens.push(42);
                        (s, 1)
                    })
                    .collect();
                runner.step(&mut items).expect("decode");
                for (s, _) in items.iter_mut() {
                    s.tokens.pop();
                    s.num_computed -= 1;
                }
            })
        });
        for s in seqs.iter_mut() {
            s.release(&mut pool).expect("release");
        }
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
