//! Sampler benchmarks: one sampling step for batches of 1, 64 and 256 rows over a 128k
//! vocabulary (each row its own `Sampler`, 512 prompt and 128 generated tokens), with
//! top_k + top_p + repetition/frequency/presence penalties, with top_p alone, with
//! temperature alone (the whole row), and greedy, on LLM-like rows; top_p alone on flat
//! rows (a worst case); and one detokenizer step on the default model's tokenizer.
//!
//! With `--features cuda` and a GPU: `sampler_cuda/{top_k_top_p,greedy}/batch_{1,64,256}`,
//! the device sampler (temperature 0.8, top_k 50, top_p 0.9) and the device argmax, over
//! the same LLM-like rows already in GPU memory, copying only the chosen tokens back; and
//! `sampler_cuda/top_k_top_p_penalties/batch_*`, the case: the same with the
//! repetition, frequency and presence penalties on (512 prompt and 128 generated tokens
//! per row), timing the host's listing of the adjusted logits, their application on the
//! device (`sampling::LogitAdjust`) and the draw.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wick::sampling::{Sampler, SamplingParams};

const VOCAB: usize = 128_256;

/// Pseudo-random logits. `peaked`: like an LLM's row, a roughly normal bulk (standard
/// deviation 2) with 16 tokens 6 to 14 above it (the top tokens hold most of the mass);
/// else only the bulk (a flat row: top_p 0.9 keeps tens of thousands of tokens).
fn logits(seed: u64, peaked: bool) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut row: Vec<f32> = (0..VOCAB)
        .map(|_| (next() + next() + next() + next() - 2.0) * 3.46)
        .collect();
    if peaked {
        for _ in 0..16 {
            let i = (next() * VOCAB as f32) as usize % VOCAB;
            row[i] += 6.0 + 8.0 * next();
        }
    }
    row
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(salt * 7919)) % VOCAB as u32)
        .collect()
}

fn sampler_benches(c: &mut Criterion) {
    let configs = [
        (
            "topk_topp_penalties",
            SamplingParams {
                do_sample: true,
                temperature: 0.7,
                top_k: 50,
                top_p: 0.9,
                repetition_penalty: 1.1,
                frequency_penalty: 0.5,
                presence_penalty: 0.1,
                ..SamplingParams::default()
            },
        ),
        (
            "topp",
            SamplingParams {
                do_sample: true,
                top_p: 0.9,
                ..SamplingParams::default()
            },
        ),
        (
            "temperature",
            SamplingParams {
                do_sample: true,
                temperature: 0.8,
                ..SamplingParams::default()
            },
        ),
        ("greedy", SamplingParams::default()),
        (
            "topp_flat",
            SamplingParams {
                do_sample: true,
                top_p: 0.9,
                ..SamplingParams::default()
            },
        ),
    ];
    let max_batch = 256;
    let rows: Vec<Vec<f32>> = (0..max_batch).map(|i| logits(i as u64 + 1, true)).collect();
    let flat: Vec<Vec<f32>> = (0..max_batch)
        .map(|i| logits(i as u64 + 1, false))
        .collect();
    let prompts: Vec<Vec<u32>> = (0..max_batch).map(|i| tokens(512, i as u32)).collect();
    let generated: Vec<Vec<u32>> = (0..max_batch)
        .map(|i| tokens(128, 1000 + i as u32))
        .collect();
    let mut group = c.benchmark_group("sampler");
    group.sample_size(10);
    for (name, params) in &configs {
        for batch in [1usize, 64, 256] {
            let mut samplers: Vec<Sampler> =
                (0..batch).map(|i| Sampler::new(params, i as u64)).collect();
            let rows = if *name == "topp_flat" { &flat } else { &rows };
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{name}/{batch}"), |b| {
                b.iter_batched_ref(
                    || rows[..batch].to_vec(),
                    |work| {
                        let mut sum = 0u64;
                        for (i, (s, row)) in samplers.iter_mut().zip(work.iter_mut()).enumerate() {
                            sum += s
                                .sample(row, &prompts[i], &generated[i], 0)
                                .map_or(0, |t| t.id) as u64;
                        }
                        sum
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

fn detokenizer_bench(c: &mut Criterion) {
    use wick::tokenizer::{DecodeStream, Tokenizer};
    let Ok(resolved) = wick::hub::resolve(
        None,
        &wick::config::ModelsConfig::embedded(),
        &wick::hub::HubOptions::from_env(),
    ) else {
        eprintln!("default model unavailable: detokenizer benchmark skipped");
        return;
    };
    let mut f = std::fs::File::open(&resolved.path).expect("model file");
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).expect("gguf");
    let tok = Tokenizer::from_gguf(&content).expect("tokenizer");
    let text = "The quick brown fox jumps over the lazy dog. Café crème, 日本語のテキスト, \
                emoji 🙂🚀 and numbers 12345. "
        .repeat(8);
    let ids = tok.encode(&text, false).expect("encode");
    let mut group = c.benchmark_group("detokenizer");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("step", |b| {
        b.iter(|| {
            let mut stream = DecodeStream::new(&[]);
            let mut n = 0;
            for &id in &ids {
                n += stream.step(&tok, id).expect("step").len();
            }
            n
        })
    });
    group.finish();
}

#[cfg(feature = "cuda")]
fn sampler_cuda(c: &mut Criterion) {
    use candle_core::{Device, Tensor};
    use wick::ops::cuda::{Choices, Kernels};
    use wick::sampling::gumbel::RowSample;
    let dev = match wick::model::select_device("cuda") {
        Ok(Device::Cuda(d)) => d,
        _ => {
            eprintln!("sampler_cuda: no CUDA device, skipped");
            return;
        }
    };
    let device = Device::Cuda(dev.clone());
    let kernels = Kernels::new(&dev).expect("kernels");
    let mut group = c.benchmark_group("sampler_cuda");
    for batch in [1usize, 64, 256] {
        let rows: Vec<f32> = (0..batch).flat_map(|r| logits(r as u64, true)).collect();
        let t = Tensor::from_vec(rows, (batch, VOCAB), &device).expect("upload");
        let params: Vec<RowSample> = (0..batch)
            .map(|r| RowSample {
                temperature: 0.8,
                top_p: 0.9,
                min_p: 0.0,
                top_k: 50,
                seed: r as u64,
                step: 0,
                row: r as u32,
            })
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        // One `choose` per step, as the engine makes it: every row's argmax, and the
        // draws; buffers kept between iterations, as between steps.
        let mut chosen = Choices::default();
        group.bench_function(format!("greedy_and_top_k_top_p/batch_{batch}"), |b| {
            b.iter(|| kernels.choose(&t, &params, &mut chosen).expect("choose"))
        });
        group.bench_function(format!("greedy/batch_{batch}"), |b| {
            b.iter(|| kernels.choose(&t, &[], &mut chosen).expect("greedy"))
        });
        let penalised = SamplingParams {
            do_sample: true,
            temperature: 0.8,
            top_k: 50,
            top_p: 0.9,
            repetition_penalty: 1.1,
            frequency_penalty: 0.5,
            presence_penalty: 0.1,
            ..SamplingParams::default()
        };
        let mut samplers: Vec<Sampler> = (0..batch)
            .map(|r| Sampler::new(&penalised, r as u64))
            .collect();
        let prompts: Vec<Vec<u32>> = (0..batch).map(|r| tokens(512, r as u32)).collect();
        let generated: Vec<Vec<u32>> = (0..batch).map(|r| tokens(128, 1000 + r as u32)).collect();
        let mut adjust = wick::sampling::LogitAdjust::default();
        group.bench_function(format!("top_k_top_p_penalties/batch_{batch}"), |b| {
            b.iter_batched(
                || t.copy().expect("copy"),
                |rows| {
                    adjust.clear();
                    for (r, s) in samplers.iter_mut().enumerate() {
                        s.device_adjust(&prompts[r], &generated[r], VOCAB, r, &mut adjust);
                    }
                    kernels.adjust(&rows, adjust.packed()).expect("adjust");
                    kernels.choose(&rows, &params, &mut chosen).expect("choose")
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

#[cfg(not(feature = "cuda"))]
fn sampler_cuda(_: &mut Criterion) {}

criterion_group!(benches, sampler_benches, detokenizer_bench, sampler_cuda);
criterion_main!(benches);
