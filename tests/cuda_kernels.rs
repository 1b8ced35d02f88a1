//! wick's CUDA kernels against independent references (`--features cuda`, on a GPU).
//!
//! Paged attention is checked against a plain f64 attention over the same (dtype-rounded)
//! inputs and against wick's CPU kernel, over head sizes 64/128/256, GQA ratios 1 to 16,
//! block sizes 16 and 32, scattered block tables, and batches that mix decode rows
//! (contexts up to 32k, which take the split-context path), whole prompts and prompt
//! chunks over a cached context, also with sliding windows and logit soft-capping. Rope is
//! checked against the CPU rope in both pair layouts, whole and partial with an attention
//! factor, and block copies byte for byte.
//!
//! Without a GPU the tests print why and pass, unless `WICK_REQUIRE_GPU=1` (set by
//! scripts/gpu-check.sh), which turns a missing GPU into a failure.
#![cfg(feature = "cuda")]

mod kernel_support;

use kernel_support::{PagedInputs, Rng};

use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use wick::ops::cuda::{AttnMeta, AttnScratch, Choices, Kernels};
use wick::ops::launch::plan_splits;
use wick::ops::{AttnSeq, Rope, RopeScaling, RopeStyle};

fn gpu() -> Option<CudaDevice> {
    match wick::model::select_device("cuda") {
        Ok(Device::Cuda(d)) => Some(d),
        other => {
            assert!(
                std::env::var_os("WICK_REQUIRE_GPU").is_none(),
                "WICK_REQUIRE_GPU is set but no GPU opened: {:?}",
                other.err()
            );
            eprintln!("skipping: no CUDA device ({:?})", other.err());
            None
        }
    }
}

/// Rounds through the kernel dtype, so the reference sees exactly the kernel's inputs.
fn round(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => f16::from_f32(x).to_f32(),
    }
}

fn to_gpu(dev: &CudaDevice, x: &[f32], shape: (usize, usize), dtype: DType) -> Tensor {
    Tensor::from_slice(x, shape, &Device::Cuda(dev.clone()))
        .and_then(|t| t.to_dtype(dtype))
        .expect("upload")
}

fn from_gpu(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("download")
}

struct Case {
    head_dim: usize,
    num_heads: usize,
    kv_heads: usize,
    block_size: usize,
    /// Per sequence: (tokens already cached, new query tokens this step).
    seqs: Vec<(usize, usize)>,
    dtype: DType,
    /// The layer's sliding window and attention logit soft-cap.
    window: Option<usize>,
    softcap: Option<f32>,
}

fn check_attention(dev: &CudaDevice, case: &Case, seed: u64) {
    let Case {
        head_dim: d,
        num_heads: nh,
        kv_heads: nkv,
        block_size: bs,
        dtype,
        ..
    } = *case;
    let mut rng = Rng(seed | 1);
    let kernels = Kernels::new(dev).expect("kernels load");
    // Blocks for every sequence, handed out in a scrambled order, and every position's
    // K/V (context and new tokens), written to the cache in one launch.
    let PagedInputs {
        layout,
        tables,
        k: all_k,
        v: all_v,
        slots,
    } = PagedInputs::new(&mut rng, &case.seqs, bs, nkv, d, |x| round(x, dtype));
    let row_kv = nkv * d;
    let n_all = slots.len();
    let mut k_cache: CudaSlice<u16> = dev.alloc_zeros(layout.layer_len()).unwrap();
    let mut v_cache: CudaSlice<u16> = dev.alloc_zeros(layout.layer_len()).unwrap();
    let slots_dev = dev.clone_htod(&slots).unwrap();
    kernels
        .write_kv(
            &to_gpu(dev, &all_k, (n_all, row_kv), dtype),
            &to_gpu(dev, &all_v, (n_all, row_kv), dtype),
            &mut k_cache,
            &mut v_cache,
            &slots_dev.slice(..),
            nkv,
            d,
            bs,
        )
        .expect("write_kv");

    // Queries for the new tokens.
    let tokens: usize = case.seqs.iter().map(|s| s.1).sum();
    let q: Vec<f32> = (0..tokens * nh * d)
        .map(|_| round(rng.normal(), dtype))
        .collect();
    let mut row_seq = Vec::new();
    let (mut q_start, mut q_len, mut ctx) = (Vec::new(), Vec::new(), Vec::new());
    let max_blocks = tables.iter().map(Vec::len).max().unwrap();
    let mut flat_tables = Vec::new();
    for (s, &(c, n)) in case.seqs.iter().enumerate() {
        q_start.push(row_seq.len() as u32);
        q_len.push(n as u32);
        ctx.push((c + n) as u32);
        row_seq.extend(std::iter::repeat_n(s as u32, n));
        flat_tables.extend_from_slice(&tables[s]);
        flat_tables.extend(std::iter::repeat_n(0, max_blocks - tables[s].len()));
    }
    let up = |v: &[u32]| dev.clone_htod(v).unwrap();
    let (rs, qs, ql, cl, bt) = (
        up(&row_seq),
        up(&q_start),
        up(&q_len),
        up(&ctx),
        up(&flat_tables),
    );
    let scale = 1.0 / (d as f32).sqrt();
    // Split decode rows as the device cache plans them; the split-row list after the
    // per-row starts (one placeholder word when empty: a buffer is never empty).
    let mut split = Vec::new();
    let plan = plan_splits(
        case.seqs.iter().map(|&(c, q)| (q, c + q)),
        1 << 16,
        &mut split,
    );
    split.push(0);
    let sp = up(&split);
    let mut scratch = AttnScratch::new(dev, plan.total_parts, nh, d).expect("scratch");
    let meta = AttnMeta {
        row_seq: rs.slice(..),
        q_start: qs.slice(..),
        q_len: ql.slice(..),
        context_len: cl.slice(..),
        block_tables: bt.slice(..),
        max_blocks,
        part_start: sp.slice(..tokens),
        split_rows: sp.slice(tokens..),
        split: plan,
        num_heads: nh,
        kv_heads: nkv,
        head_dim: d,
        block_size: bs,
        scale,
        window: case.window,
        softcap: case.softcap,
    };
    let out = kernels
        .paged_attention(
            &to_gpu(dev, &q, (tokens, nh * d), dtype),
            &k_cache,
            &v_cache,
            &meta,
            &mut scratch,
        )
        .expect("paged attention");
    let got = from_gpu(&out);

    // Reference 1: plain f64 attention over the inputs.
    let (atol, rtol) = match dtype {
        DType::BF16 => (1.5e-2, 2e-2),
        _ => (2e-3, 4e-3),
    };
    let mut worst = 0f64;
    kernel_support::attention_f64_masked(
        &q,
        &all_k,
        &all_v,
        &case.seqs,
        nh,
        nkv,
        d,
        scale,
        case.window,
        case.softcap,
        |r, h, e, want, _| {
            let g = got[(r * nh + h) * d + e] as f64;
            let err = (g - want).abs();
            worst = worst.max(err);
            assert!(
                err <= atol + rtol * want.abs(),
                "d={d} heads={nh}/{nkv} bs={bs} {dtype:?} seqs={:?} window={:?} softcap={:?}: \
                 row {r} head {h} dim {e}: gpu {g} vs f64 {want}",
                case.seqs,
                case.window,
                case.softcap
            );
        },
    );

    // Reference 2: wick's CPU kernel (f16 cache, keys transposed) on the same inputs.
    let mut kc = vec![f16::ZERO; layout.layer_len()];
    let mut vc = vec![f16::ZERO; layout.layer_len()];
    wick::ops::write_kv(&layout, &mut kc, &mut vc, &all_k, &all_v, &slots);
    let seqs: Vec<AttnSeq<'_>> = case
        .seqs
        .iter()
        .enumerate()
        .map(|(s, &(c, n))| AttnSeq {
            q_start: q_start[s] as usize,
            q_len: n,
            context_len: c + n,
            block_table: &tables[s],
        })
        .collect();
    let mut cpu = vec![0f32; tokens * nh * d];
    wick::ops::paged_attention_windowed(
        &layout,
        &kc,
        &vc,
        &q,
        nh,
        &seqs,
        scale,
        case.window,
        case.softcap,
        &mut cpu,
    );
    let cpu_worst = got
        .iter()
        .zip(&cpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        (cpu_worst as f64) <= 2.0 * atol + 0.05,
        "d={d} heads={nh}/{nkv} bs={bs} {dtype:?}: GPU and CPU kernels differ by {cpu_worst}"
    );
    eprintln!(
        "ok d={d} heads={nh}/{nkv} bs={bs} {dtype:?} seqs={:?}: max err vs f64 {worst:.2e}, vs CPU {cpu_worst:.2e}",
        case.seqs
    );
}

#[test]
fn paged_attention_matches_references() {
    let Some(dev) = gpu() else { return };
    let mixes: Vec<Vec<(usize, usize)>> = vec![
        // decode rows of assorted context lengths
        vec![(0, 1), (16, 1), (31, 1), (511, 1), (512, 1), (1500, 1)],
        // whole prompts, a chunk over a cached context, and decodes together
        vec![(0, 37), (600, 100), (5, 1), (0, 1)],
    ];
    let shapes = [
        (64, 8, 8),   // MHA
        (128, 32, 8), // llama-3-8b: GQA 4
        (128, 64, 8), // GQA 8
        (64, 14, 2),  // qwen2-0.5b: GQA 7
        (128, 32, 2), // GQA 16: two head subgroups per KV head
        (256, 8, 2),
    ];
    let mut seed = 1;
    for &(d, nh, nkv) in &shapes {
        for bs in [16, 32] {
            for dtype in [DType::BF16, DType::F16] {
                for seqs in &mixes {
                    seed += 1;
                    let case = Case {
                        head_dim: d,
                        num_heads: nh,
                        kv_heads: nkv,
                        block_size: bs,
                        seqs: seqs.clone(),
                        dtype,
                        window: None,
                        softcap: None,
                    };
                    check_attention(&dev, &case, seed);
                }
            }
        }
    }
}

/// Sliding windows (shorter than a K/V tile, than a partition, than some contexts, and
/// longer than all) and soft-capping, on decode rows (split and not), whole prompts and
/// chunks over cached prefixes, head sizes 128 and 256 (Gemma's).
#[test]
fn windows_and_softcap_match_references() {
    let Some(dev) = gpu() else { return };
    let mixes: Vec<Vec<(usize, usize)>> = vec![
        vec![(0, 1), (16, 1), (511, 1), (1500, 1), (4000, 1)],
        vec![(0, 150), (600, 100), (2000, 40), (5, 1), (3000, 1)],
    ];
    let mut seed = 900;
    for (d, nh, nkv) in [(128, 32, 8), (256, 8, 4), (256, 16, 8)] {
        for (window, softcap) in [
            (Some(8), None),
            (Some(100), Some(50.0)),
            (Some(1024), Some(2.0)),
            (Some(100_000), None),
            (None, Some(1.5)),
        ] {
            for (i, seqs) in mixes.iter().enumerate() {
                seed += 1;
                let case = Case {
                    head_dim: d,
                    num_heads: nh,
                    kv_heads: nkv,
                    block_size: 16 << (i % 2),
                    seqs: seqs.clone(),
                    dtype: if seed % 2 == 0 {
                        DType::BF16
                    } else {
                        DType::F16
                    },
                    window,
                    softcap,
                };
                check_attention(&dev, &case, seed);
            }
        }
    }
}

#[test]
fn long_contexts_split_across_partitions() {
    let Some(dev) = gpu() else { return };
    for (bs, dtype) in [(16, DType::BF16), (32, DType::F16)] {
        let case = Case {
            head_dim: 128,
            num_heads: 32,
            kv_heads: 8,
            block_size: bs,
            seqs: vec![(32767, 1), (8191, 1), (4000, 3)],
            dtype,
            window: None,
            softcap: None,
        };
        check_attention(&dev, &case, 99 + bs as u64);
    }
}

#[test]
fn rope_matches_the_cpu_rope() {
    let Some(dev) = gpu() else { return };
    let kernels = Kernels::new(&dev).unwrap();
    let mut rng = Rng(7);
    // (style, head size, heads, rotated dimensions, cos/sin scale): whole heads, and
    // partial rotary with an attention factor (Phi-3 longrope's).
    for (style, d, heads, rot, scale) in [
        (RopeStyle::Interleaved, 64, 9, 64, 1.0),
        (RopeStyle::Neox, 128, 32, 128, 1.0),
        (RopeStyle::Neox, 64, 14, 64, 1.0),
        (RopeStyle::Neox, 128, 8, 96, 1.19),
        (RopeStyle::Interleaved, 64, 3, 32, 1.0),
    ] {
        let scaling = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let rope = Rope::partial(d, rot, scale, 500_000.0, &scaling, style);
        let positions: Vec<u32> = vec![0, 1, 2, 17, 511, 4096, 32767, 100_000];
        let n = positions.len();
        for dtype in [DType::BF16, DType::F16] {
            let x: Vec<f32> = (0..n * heads * d)
                .map(|_| round(rng.normal(), dtype))
                .collect();
            let mut want = x.clone();
            rope.apply(&mut want, heads, &rope.tables(&positions));
            let pos = dev.clone_htod(&positions).unwrap();
            let inv = dev.clone_htod(rope.inv_freq()).unwrap();
            let out = kernels
                .rope(
                    &to_gpu(&dev, &x, (n, heads * d), dtype),
                    &pos.slice(..),
                    &rope,
                    &inv,
                    heads,
                )
                .unwrap();
            let got = from_gpu(&out);
            let tol = if dtype == DType::BF16 { 3e-2 } else { 4e-3 };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= tol * (1.0 + w.abs()),
                    "{style:?} d={d} {dtype:?} element {i}: gpu {g} vs cpu {w}"
                );
            }
        }
    }
}

#[test]
fn copy_range_copies_a_block() {
    let Some(dev) = gpu() else { return };
    let kernels = Kernels::new(&dev).unwrap();
    let host: Vec<u16> = (0..4096u32).map(|i| (i * 7919 % 65521) as u16).collect();
    let mut buf = dev.clone_htod(&host).unwrap();
    kernels.copy_range(&mut buf, 100, 3000, 900).unwrap();
    let back = dev.clone_dtoh(&buf).unwrap();
    let mut want = host.clone();
    want.copy_within(100..1000, 3000);
    assert_eq!(back, want);
}

/// The whole GPU forward pass (rope, cache writes, paged attention through the device
/// cache, candle's matmuls and norms) against the CPU forward pass on the same random
/// weights: three sequences prefilled together (one of them in two chunks), then decoded
/// together for several steps, comparing every step's logits.
#[test]
fn gpu_forward_matches_the_cpu_forward() {
    let Some(dev) = gpu() else { return };
    // f32 weights (f16 KV cache, as for GGUF models) and bf16 weights (bf16 cache).
    for (shape, dtype, tol) in [
        (wick::model::RandomShape::Qwen2_0_5b, DType::F32, 1e-2),
        (wick::model::RandomShape::Llama32_1b, DType::BF16, 6e-2),
    ] {
        forward_matches(&dev, &format!("{shape:?}"), shape.config(), dtype, tol);
    }
}

/// The same comparison for a small model of every family, each with what sets it apart
/// on the device: sliding windows shorter than the prompts (Mistral, Mixtral, Gemma's
/// alternating layers), attention and final soft-capping (Gemma 2), Gemma 3's local rope
/// base and q/k norms, Phi-3's partial rotary with longrope factors and attention factor,
/// and routed experts (Mixtral's renormalised top-2, Qwen3-MoE's with a dense layer).
#[test]
fn gpu_forward_matches_the_cpu_forward_in_every_family() {
    use wick::model::config::MoeConfig;
    use wick::model::{Arch, RandomShape};
    let Some(dev) = gpu() else { return };
    let base = wick::model::ModelConfig {
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rotary_dim: 64,
        vocab_size: 1024,
        ..RandomShape::Tiny.config()
    };
    let moe = |dense_layers| {
        Some(MoeConfig {
            num_experts: 8,
            top_k: 2,
            intermediate_size: 128,
            norm_topk_prob: true,
            dense_layers,
        })
    };
    let gemma_layers = vec![true, false, true];
    let families = [
        wick::model::ModelConfig {
            arch: Arch::Mistral,
            sliding_window: Some(24),
            ..base.clone()
        },
        wick::model::ModelConfig {
            arch: Arch::Phi3,
            rotary_dim: 32,
            rope_scaling: RopeScaling::FreqFactors((0..16).map(|i| 1.0 + i as f32 * 0.5).collect()),
            rope_scale: 1.19,
            ..base.clone()
        },
        wick::model::ModelConfig {
            arch: Arch::Gemma2,
            sliding_window: Some(24),
            window_layers: gemma_layers.clone(),
            attn_logit_softcap: Some(5.0),
            final_logit_softcap: Some(3.0),
            query_pre_attn_scalar: Some(48.0),
            tie_word_embeddings: true,
            ..base.clone()
        },
        wick::model::ModelConfig {
            arch: Arch::Gemma3,
            qk_norm: true,
            sliding_window: Some(24),
            window_layers: gemma_layers,
            local_rope_theta: Some(10_000.0),
            rope_theta: 1_000_000.0,
            rope_scaling: RopeScaling::Linear { factor: 8.0 },
            query_pre_attn_scalar: Some(64.0),
            tie_word_embeddings: true,
            ..base.clone()
        },
        wick::model::ModelConfig {
            arch: Arch::Mixtral,
            sliding_window: Some(24),
            moe: moe(Vec::new()),
            ..base.clone()
        },
        wick::model::ModelConfig {
            arch: Arch::Qwen3Moe,
            qk_norm: true,
            moe: moe(vec![1]),
            ..base.clone()
        },
    ];
    for cfg in families {
        let name = cfg.arch.as_str().to_string();
        forward_matches(&dev, &name, cfg, DType::F32, 1e-2);
    }
}

/// Runs `cfg`'s random model (seed 7) on the CPU and, in `dtype`, on the GPU through the
/// same steps, and asserts every step's logits agree within `tol` (relative L2).
fn forward_matches(
    dev: &CudaDevice,
    name: &str,
    cfg: wick::model::ModelConfig,
    dtype: DType,
    tol: f64,
) {
    use candle_nn::VarBuilder;
    use std::collections::HashMap;
    use wick::engine::{CacheConfig, ModelRunner, Sequence};
    use wick::model::{random::random_weights, Model};

    let gpu_dev = Device::Cuda(dev.clone());
    {
        let weights = random_weights(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
        // The CPU model sees exactly the GPU's weights (rounded through dtype).
        let cpu_w: HashMap<String, Tensor> = weights
            .into_iter()
            .map(|(k, t)| {
                let t = t
                    .to_dtype(dtype)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .unwrap();
                (k, t)
            })
            .collect();
        let gpu_w: HashMap<String, Tensor> = cpu_w
            .iter()
            .map(|(k, t)| {
                let g = t
                    .to_device(&gpu_dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap();
                (k.clone(), g)
            })
            .collect();
        let cpu_model = Model::from_safetensors(
            cfg.clone(),
            VarBuilder::from_tensors(cpu_w, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let gpu_model = Model::from_safetensors(
            cfg.clone(),
            VarBuilder::from_tensors(gpu_w, dtype, &gpu_dev),
        )
        .unwrap();
        let cache = CacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let mut cpu = ModelRunner::try_new(cpu_model, cache).unwrap();
        let mut gpu = ModelRunner::try_new(gpu_model, cache).unwrap();
        let mut cpu_pool = wick::kv::BlockPool::new(cache.num_blocks);
        let mut gpu_pool = wick::kv::BlockPool::new(cache.num_blocks);
        let vocab = cfg.vocab_size as u32;
        let prompt = |n: usize, salt: u32| -> Vec<u32> {
            (0..n as u32)
                .map(|i| (i.wrapping_mul(2654435761) ^ salt) % vocab)
                .collect()
        };
        let mut seqs_cpu = vec![
            Sequence::new(prompt(40, 1)),
            Sequence::new(prompt(7, 2)),
            Sequence::new(prompt(100, 3)),
        ];
        let mut seqs_gpu = seqs_cpu.clone();
        let mut worst = 0f64;
        let mut agree = 0;
        let mut total = 0;
        // Step plan: (tokens per sequence); the third prompt is prefilled in two chunks.
        let mut plans: Vec<[usize; 3]> = vec![[40, 7, 60], [0, 0, 40]];
        plans.extend(std::iter::repeat_n([1, 1, 1], 8));
        for (step, plan) in plans.iter().enumerate() {
            let run = |runner: &mut ModelRunner,
                       pool: &mut wick::kv::BlockPool,
                       seqs: &mut [Sequence]|
             -> Vec<Vec<f32>> {
                let mut items: Vec<(&mut Sequence, usize)> = seqs
                    .iter_mut()
                    .zip(plan)
                    .filter(|(_, &n)| n > 0)
                    .map(|(s, &n)| (s, n))
                    .collect();
                for (s, n) in items.iter_mut() {
                    s.reserve(*n, 16, pool).unwrap();
                }
                let logits = runner.step(&mut items).unwrap();
                logits
                    .to_device(&Device::Cpu)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| t.to_vec2::<f32>())
                    .unwrap()
            };
            let c = run(&mut cpu, &mut cpu_pool, &mut seqs_cpu);
            let g = run(&mut gpu, &mut gpu_pool, &mut seqs_gpu);
            for (cr, gr) in c.iter().zip(&g) {
                let norm = cr.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let diff = cr
                    .iter()
                    .zip(gr)
                    .map(|(a, b)| ((*a - *b) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let rel = diff / norm.max(1e-12);
                worst = worst.max(rel);
                assert!(
                    rel <= tol,
                    "{name} {dtype:?} step {step}: GPU logits differ from the CPU's by {rel:.3e} (relative L2)"
                );
                let am = |r: &[f32]| wick::sampling::argmax(r).unwrap();
                agree += (am(cr) == am(gr)) as usize;
                total += 1;
            }
            // A sequence whose prompt is done continues with the CPU's greedy token, in
            // both runs.
            let ran = (0..3).filter(|&i| plan[i] > 0);
            for (i, row) in ran.zip(&c) {
                if seqs_cpu[i].num_computed == seqs_cpu[i].tokens.len() {
                    let t = wick::sampling::argmax(row).unwrap();
                    seqs_cpu[i].tokens.push(t);
                    seqs_gpu[i].tokens.push(t);
                }
            }
        }
        eprintln!(
            "ok {name} {dtype:?}: worst relative L2 logit error {worst:.2e}, argmax agrees on {agree}/{total} rows"
        );
    }
}

/// The device sampler draws exactly the token its Rust statement (`sampling::gumbel`)
/// draws, row for row, and its greedy kernel picks the CPU argmax.
#[test]
fn device_sampling_matches_its_reference() {
    use wick::sampling::gumbel::{sample_row, RowSample};
    let Some(dev) = gpu() else { return };
    let device = Device::Cuda(dev.clone());
    let kernels = Kernels::new(&dev).unwrap();
    let mut rng = Rng(11);
    let vocab = 32_000;
    let rows = 96;
    let x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
    let logits = Tensor::from_slice(&x, (rows, vocab), &device).unwrap();
    let params: Vec<RowSample> = (0..rows)
        .map(|r| RowSample {
            temperature: [1.0, 0.7, 1.3][r % 3],
            top_p: [1.0, 0.9, 0.5, 0.95][r % 4],
            min_p: [0.0, 0.05][r % 2],
            top_k: [0, 50, 1, 1000][r % 4] as u32,
            seed: 1000 + r as u64,
            step: (r * 7) as u32,
            row: r as u32,
        })
        .collect();
    let mut chosen = Choices::default();
    kernels.choose(&logits, &params, &mut chosen).unwrap();
    let (ids, lps) = (&chosen.sample_ids, &chosen.sample_lps);
    let mut same = 0;
    for r in 0..rows {
        let row = &x[r * vocab..(r + 1) * vocab];
        let (want, want_lp) = sample_row(row, &params[r]).unwrap();
        if ids[r] == want {
            same += 1;
            assert!(
                (lps[r] - want_lp).abs() < 1e-3,
                "row {r}: logprob {} vs {want_lp}",
                lps[r]
            );
        }
    }
    // Sums in another order may move a threshold that sits on a rounding boundary;
    // anything beyond a rare row is a bug.
    assert!(
        same >= rows - 1,
        "device draws match the reference on {same} of {rows} rows"
    );
    let gids = &chosen.greedy_ids;
    for r in 0..rows {
        let row = &x[r * vocab..(r + 1) * vocab];
        assert_eq!(gids[r], wick::sampling::argmax(row).unwrap(), "row {r}");
    }
    eprintln!("ok device sampling: {same}/{rows} rows identical to the reference");
}

/// logit_bias and penalties applied on the GPU (`wick_adjust_f32` with a
/// `sampling::LogitAdjust`) give the host sampler's processed logits exactly, and the device argmax of a penalised row is the host
/// sampler's greedy token.
#[test]
fn device_penalties_match_the_host() {
    use wick::sampling::{LogitAdjust, Sampler, SamplingParams};
    let Some(dev) = gpu() else { return };
    let kernels = Kernels::new(&dev).expect("kernels");
    let (rows, vocab) = (6usize, 32_000usize);
    let mut rng = Rng(77);
    let logits: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
    let mut adjust = LogitAdjust::default();
    let mut want = Vec::new();
    for r in 0..rows {
        let params = SamplingParams {
            repetition_penalty: [1.0, 1.3, 0.8][r % 3],
            frequency_penalty: [0.0, 0.4][r % 2],
            presence_penalty: [0.2, 0.0][r % 2],
            logit_bias: vec![(rng.below(vocab) as u32, 5.0), (7, -2.5)],
            ..Default::default()
        };
        let prompt: Vec<u32> = (0..300).map(|_| rng.below(vocab) as u32).collect();
        let generated: Vec<u32> = (0..120).map(|_| rng.below(2000) as u32).collect();
        let mut host = Sampler::new(&params, 0);
        let mut row = logits[r * vocab..(r + 1) * vocab].to_vec();
        let greedy = host.sample(&mut row, &prompt, &generated, 0).unwrap();
        want.push((row, greedy.id));
        let mut device = Sampler::new(&params, 0);
        device.device_adjust(&prompt, &generated, vocab, r, &mut adjust);
    }
    let t = Tensor::from_vec(logits, (rows, vocab), &Device::Cuda(dev.clone())).unwrap();
    kernels.adjust(&t, adjust.packed()).unwrap();
    let got = from_gpu(&t);
    let mut chosen = Choices::default();
    kernels.choose(&t, &[], &mut chosen).unwrap();
    let ids = &chosen.greedy_ids;
    for (r, (row, id)) in want.iter().enumerate() {
        assert_eq!(&got[r * vocab..(r + 1) * vocab], row.as_slice(), "row {r}");
        assert_eq!(ids[r], *id, "row {r}: device argmax vs host greedy");
    }
}

/// Host-device copies of a decode step: the forward pass uploads its batch once (token
/// ids, positions, slots, block tables, row splits, logits rows in one copy) and brings
/// nothing back; choosing every row's token on the device (greedy and sampled rows
/// together) is one upload of the sampling parameters and one copy back.
#[test]
fn a_decode_step_uploads_once_and_copies_back_once() {
    use wick::engine::{CacheConfig, FlatBatch, ModelRunner, Sequence};
    use wick::model::random::{load, RandomSpec};
    use wick::model::RandomShape;
    use wick::sampling::gumbel::RowSample;

    let Some(dev) = gpu() else { return };
    let spec = RandomSpec {
        shape: RandomShape::Tiny,
        seed: 3,
    };
    let (model, _) = load(spec, DType::BF16, &Device::Cuda(dev)).unwrap();
    let cache = CacheConfig {
        block_size: 16,
        num_blocks: 32,
    };
    let mut runner = ModelRunner::try_new(model, cache).unwrap();
    let mut pool = wick::kv::BlockPool::new(cache.num_blocks);
    let mut seqs: Vec<Sequence> = (0..3)
        .map(|s| Sequence::new((0..20).map(|t| 40 + t + s).collect()))
        .collect();
    for seq in &mut seqs {
        seq.reserve(20, 16, &mut pool).unwrap();
    }
    let mut items: Vec<(&mut Sequence, usize)> = seqs.iter_mut().map(|s| (s, 20)).collect();
    runner.step(&mut items).unwrap();
    for seq in &mut seqs {
        seq.tokens.push(7);
        seq.reserve(1, 16, &mut pool).unwrap();
    }
    let view: Vec<(&Sequence, usize)> = seqs.iter().map(|s| (s, 1)).collect();
    let batch = FlatBatch::build(&view, 16).unwrap();
    let kernels = runner.kernels().expect("a GPU runner").clone();
    let before = kernels.transfers();
    let hidden = runner.forward_hidden(&batch).unwrap();
    let logits = runner.logits(&hidden).unwrap();
    let mid = kernels.transfers();
    assert_eq!((mid.htod - before.htod, mid.dtoh - before.dtoh), (1, 0));
    let params = [RowSample {
        temperature: 0.8,
        top_p: 0.9,
        min_p: 0.0,
        top_k: 20,
        seed: 5,
        step: 0,
        row: 1,
    }];
    let mut chosen = Choices::default();
    kernels.choose(&logits, &params, &mut chosen).unwrap();
    let after = kernels.transfers();
    assert_eq!((after.htod - mid.htod, after.dtoh - mid.dtoh), (1, 1));
    assert_eq!((chosen.greedy_ids.len(), chosen.sample_ids.len()), (3, 1));
}

/// Prefill attention time at the llama-3-8b shape (32 query heads, 8 KV heads, head dim
/// 128, bf16, 16-token blocks in order: contiguous K/V) for one whole 2k, 8k and 32k-token
/// prompt in one step: the attention op as the engine calls it (the prompt rows go to the
/// tensor-core prefill kernel). One JSON line per size on stderr, and into the file
/// `WICK_PREFILL_TIMES` names when set (scripts/gpu-check.sh's `prefill` step sets it, and
/// puts PyTorch's scaled_dot_product_attention on the same shapes beside it).
#[test]
fn prefill_attention_timing() {
    let Some(dev) = gpu() else { return };
    let device = Device::Cuda(dev.clone());
    let kernels = Kernels::new(&dev).expect("kernels");
    let (heads, kv_heads, d, bs) = (32usize, 8usize, 128usize, 16usize);
    let mut lines = Vec::new();
    for n in [2048usize, 8192, 32768] {
        let per = n.div_ceil(bs);
        let cache_len = per * kv_heads * bs * d;
        let k_cache: CudaSlice<u16> = dev.alloc_zeros(cache_len).unwrap();
        let v_cache: CudaSlice<u16> = dev.alloc_zeros(cache_len).unwrap();
        let table: Vec<u32> = (0..per as u32).collect();
        let up = |v: &[u32]| dev.clone_htod(v).expect("upload");
        let (rs, qs, ql, cl, bt) = (
            up(&vec![0u32; n]),
            up(&[0u32]),
            up(&[n as u32]),
            up(&[n as u32]),
            up(&table),
        );
        let mut split = Vec::new();
        let plan = plan_splits(std::iter::once((n, n)), 1 << 16, &mut split);
        assert_eq!((plan.prompt_rows, plan.split_rows), (n, 0));
        split.push(0);
        let sp = up(&split);
        let mut scratch = AttnScratch::new(&dev, 1, heads, d).expect("scratch");
        let meta = AttnMeta {
            row_seq: rs.slice(..),
            q_start: qs.slice(..),
            q_len: ql.slice(..),
            context_len: cl.slice(..),
            block_tables: bt.slice(..),
            max_blocks: per,
            part_start: sp.slice(..n),
            split_rows: sp.slice(n..n),
            split: plan,
            num_heads: heads,
            kv_heads,
            head_dim: d,
            block_size: bs,
            scale: 1.0 / (d as f32).sqrt(),
            window: None,
            softcap: None,
        };
        let q = Tensor::randn(0f32, 1.0, (n, heads * d), &device)
            .and_then(|t| t.to_dtype(DType::BF16))
            .expect("q");
        let mut run = || {
            let out = kernels
                .paged_attention(&q, &k_cache, &v_cache, &meta, &mut scratch)
                .expect("attention");
            device.synchronize().expect("sync");
            out
        };
        run();
        let iters = if n >= 32768 { 5 } else { 20 };
        let t = std::time::Instant::now();
        for _ in 0..iters {
            std::hint::black_box(run());
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        // Causal: n (n + 1) / 2 scores per head, 2 flops each for QK^T and for PV.
        let flops = 4.0 * (n * (n + 1) / 2) as f64 * (heads * d) as f64;
        let line = format!(
            "{{\"impl\": \"wick\", \"tokens\": {n}, \"heads\": {heads}, \"kv_heads\": {kv_heads}, \
             \"head_dim\": {d}, \"ms\": {:.4}, \"tflops\": {:.2}}}",
            secs * 1e3,
            flops / secs / 1e12
        );
        eprintln!("{line}");
        lines.push(line);
    }
    if let Some(path) = std::env::var_os("WICK_PREFILL_TIMES") {
        std::fs::write(path, lines.join("\n") + "\n").expect("write WICK_PREFILL_TIMES");
    }
}
