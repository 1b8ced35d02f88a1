//! Scheduler benchmarks: planning steps with a long waiting queue.
//!
//! Names (stable across commits):
//! - `scheduler/plan/1000_waiting`: 1,000 queued 128-token prompts, nothing running: one
//!   `schedule` (admissions up to the prefill budget) and `complete`.
//! - `scheduler/decode_step/256_running_1000_waiting`: 256 running sequences decoding
//!   (one token each, appended after the step) with 1,000 more queued behind a full
//!   batch: one `schedule`, `complete` and `append_token` round.
//! - `scheduler/plan/1000_waiting_prefix_hits`: as `plan/1000_waiting`, but every prompt
//!   shares a 96-token prefix already in the prefix cache.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wick::engine::{Scheduler, SchedulerConfig, Sequence};

const PROMPT: usize = 128;
const BLOCKS: usize = 16_384;

fn prompt(i: u64, shared_prefix: usize) -> Vec<u32> {
    (0..PROMPT as u64)
        .map(|j| {
            let salt = if (j as usize) < shared_prefix {
                0
            } else {
                i + 1
            };
            (100 + (j.wrapping_mul(2654435761) ^ salt.wrapping_mul(7919)) % 32000) as u32
        })
        .collect()
}

fn queued(n: u64, shared_prefix: usize) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig::default(), BLOCKS);
    for i in 0..n {
        s.add(i, Sequence::new(prompt(i, shared_prefix)), false);
    }
    s
}

/// Runs one step as the engine would: plan, compute (nothing here), record, sample.
fn step(s: &mut Scheduler, token: u32) {
    let plan = s.schedule().expect("plan");
    s.complete(&plan).expect("complete");
    for item in plan.items.iter().filter(|i| i.completes) {
        s.append_token(item.id, token).expect("append");
    }
}

/// 256 sequences past their prefill and decoding, 1,000 more waiting.
fn running_batch() -> Scheduler {
    let mut s = queued(1256, 0);
    for _ in 0..10_000 {
        let plan = s.schedule().expect("plan");
        s.complete(&plan).expect("complete");
        for item in plan.items.iter().filter(|i| i.completes) {
            s.append_token(item.id, 7).expect("append");
        }
        if s.num_running() == 256 && plan.prefill_tokens == 0 {
            assert_eq!(s.num_waiting(), 1000);
            return s;
        }
    }
    panic!("the batch never filled");
}

fn scheduler(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler");

    group.throughput(Throughput::Elements(1));
    group.bench_function("plan/1000_waiting", |b| {
        b.iter_batched_ref(
            || queued(1000, 0),
            |s| {
                let plan = s.schedule().expect("plan");
                assert!(!plan.is_empty());
                s.complete(&plan).expect("complete");
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("plan/1000_waiting_prefix_hits", |b| {
        b.iter_batched_ref(
            || {
                // Compute one sequence with the shared prefix so its blocks are cached.
                let mut s = Scheduler::new(SchedulerConfig::default(), BLOCKS);
                s.add(u64::MAX, Sequence::new(prompt(u64::MAX - 1, 96)), false);
                step(&mut s, 7);
                s.remove(u64::MAX).expect("remove");
                for i in 0..1000 {
                    s.add(i, Sequence::new(prompt(i, 96)), false);
                }
                s
            },
            |s| {
                let plan = s.schedule().expect("plan");
                assert!(plan.prefix_hit_tokens > 0);
                s.complete(&plan).expect("complete");
            },
            BatchSize::LargeInput,
        )
    });

    // 256 running (the batch size limit) with 1,000 more waiting; decode rounds. The
    // sequences grow by one token a round, so a fresh batch is built (untimed) every 256
    // rounds to keep the measured state the same.
    group.throughput(Throughput::Elements(256));
    group.bench_function("decode_step/256_running_1000_waiting", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut s = running_batch();
                let n = (iters - done).min(256);
                let t = Instant::now();
                for k in 0..n {
                    step(&mut s, 100 + k as u32);
                }
                total += t.elapsed();
                done += n;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
