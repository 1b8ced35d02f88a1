//! Random-weight models, for benchmarking without downloads: `--model-id random:<shape>`
//! (or a models.toml `source = "random:<shape>"`), optionally `random:<shape>@<seed>`.
//!
//! A named shape is the architecture of a real checkpoint (its config.json numbers, see
//! [`RandomShape::config`]); the weights are seeded random numbers of mean 0 and std
//! [`INIT_STD`] (transformers' `initializer_range`; RMS norm weights are 1) so
//! activations stay finite through every layer and the logits spread over the whole
//! vocabulary. The tensors carry the names of a Hugging Face checkpoint and go through
//! [`Model::from_safetensors`], so a random model runs exactly the code a real
//! safetensors checkpoint of that shape runs, at the same size and speed; only its text
//! is gibberish.
//!
//! The weights are made on the model's device. On a GPU, by the device's own generator
//! (`Device::set_seed`, then `Tensor::randn` in f32, cast to the weight dtype there): a
//! normal distribution, and the 16 GB of an 8B model never cross the host. On the CPU
//! (whose candle generator cannot be seeded), by a counter-based SplitMix64 stream turned
//! into a bounded bell curve (Irwin-Hall, see `fill_normal`), on all cores. Each
//! tensor's seed is derived from the model seed and the tensor's name, so the same seed
//! gives the same weights on the same kind of device (the CPU and a GPU draw different
//! numbers). Seeding replaces the GPU generator's state.
//!
//! The tokenizer is the byte-level one of [`crate::tokenizer::synthetic`], with exactly
//! the shape's vocabulary size and no end-of-sequence token: every generation runs to its
//! token limit.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{Arch, ModelConfig, MoeConfig};
use super::Model;
use crate::ops::{RopeScaling, RopeStyle};
use crate::tokenizer::Tokenizer;

/// The seed of `random:<shape>` without `@<seed>`.
pub const DEFAULT_SEED: u64 = 0;

/// Standard deviation of every random weight (embeddings, projections, biases).
pub const INIT_STD: f64 = 0.02;

/// Host-generated values per thread task (each value depends only on its index, so the
/// split does not change the values).
const HOST_CHUNK: usize = 1 << 16;

/// A named architecture shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RandomShape {
    /// A very small llama (64 wide, 2 layers, 512 tokens) for tests.
    Tiny,
    /// Llama 3.2 1B: llama3 rope scaling, tied embeddings.
    Llama32_1b,
    /// Llama 3 8B (Meta-Llama-3-8B): untied, 8k context.
    Llama3_8b,
    /// Qwen2 0.5B: q/k/v biases, tied embeddings.
    Qwen2_0_5b,
    /// Qwen3 8B: per-head q/k norms, untied, head_dim 128.
    Qwen3_8b,
    /// Qwen3-30B-A3B: Qwen3-MoE, 128 experts of which 8 per token, every layer sparse.
    Qwen3_30bA3b,
    /// Gemma 3 12B (the language model of gemma-3-12b-it): head_dim 256, q/k norms,
    /// five sliding-window layers (1024) to each global one, two rope bases.
    Gemma3_12b,
}

impl RandomShape {
    pub const ALL: [RandomShape; 7] = [
        RandomShape::Tiny,
        RandomShape::Llama32_1b,
        RandomShape::Llama3_8b,
        RandomShape::Qwen2_0_5b,
        RandomShape::Qwen3_8b,
        RandomShape::Qwen3_30bA3b,
        RandomShape::Gemma3_12b,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RandomShape::Tiny => "tiny",
            RandomShape::Llama32_1b => "llama-3.2-1b",
            RandomShape::Llama3_8b => "llama-3-8b",
            RandomShape::Qwen2_0_5b => "qwen2-0.5b",
            RandomShape::Qwen3_8b => "qwen3-8b",
            RandomShape::Qwen3_30bA3b => "qwen3-30b-a3b",
            RandomShape::Gemma3_12b => "gemma-3-12b",
        }
    }

    /// The known shape names, comma-separated (for error messages and help).
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    pub fn parse(name: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|s| s.name() == name) {
            Some(s) => Ok(s),
            None => bail!(
                "unknown random model shape '{name}': known shapes are {}",
                Self::names()
            ),
        }
    }

    /// The architecture, with the numbers of the real checkpoint's config.json.
    pub fn config(self) -> ModelConfig {
        let llama = |hidden_size, intermediate_size, num_layers, head_dim| ModelConfig {
            arch: Arch::Llama,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim,
            vocab_size: 128_256,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::Neox,
            rotary_dim: head_dim,
            rope_scale: 1.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            qkv_bias: false,
            qk_norm: false,
            sliding_window: None,
            window_layers: Vec::new(),
            attn_logit_softcap: None,
            local_rope_theta: None,
            final_logit_softcap: None,
            query_pre_attn_scalar: None,
            moe: None,
        };
        match self {
            RandomShape::Tiny => ModelConfig {
                arch: Arch::Llama,
                hidden_size: 64,
                intermediate_size: 128,
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                vocab_size: 512,
                rms_norm_eps: 1e-5,
                rope_theta: 10_000.0,
                rope_scaling: RopeScaling::None,
                rope_style: RopeStyle::Neox,
                rotary_dim: 16,
                rope_scale: 1.0,
                max_position_embeddings: 2048,
                tie_word_embeddings: false,
                qkv_bias: false,
                qk_norm: false,
                sliding_window: None,
                window_layers: Vec::new(),
                attn_logit_softcap: None,
                local_rope_theta: None,
                final_logit_softcap: None,
                query_pre_attn_scalar: None,
                moe: None,
            },
            RandomShape::Llama3_8b => llama(4096, 14_336, 32, 128),
            RandomShape::Llama32_1b => ModelConfig {
                rope_scaling: RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
                max_position_embeddings: 131_072,
                tie_word_embeddings: true,
                ..llama(2048, 8192, 16, 64)
            },
            RandomShape::Qwen2_0_5b => ModelConfig {
                arch: Arch::Qwen2,
                hidden_size: 896,
                intermediate_size: 4864,
                num_layers: 24,
                num_heads: 14,
                num_kv_heads: 2,
                head_dim: 64,
                vocab_size: 151_936,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                rope_scaling: RopeScaling::None,
                rope_style: RopeStyle::Neox,
                rotary_dim: 64,
                rope_scale: 1.0,
                max_position_embeddings: 131_072,
                tie_word_embeddings: true,
                qkv_bias: true,
                qk_norm: false,
                sliding_window: None,
                window_layers: Vec::new(),
                attn_logit_softcap: None,
                local_rope_theta: None,
                final_logit_softcap: None,
                query_pre_attn_scalar: None,
                moe: None,
            },
            RandomShape::Qwen3_8b => ModelConfig {
                arch: Arch::Qwen3,
                hidden_size: 4096,
                intermediate_size: 12_288,
                num_layers: 36,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                vocab_size: 151_936,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                rope_scaling: RopeScaling::None,
                rope_style: RopeStyle::Neox,
                rotary_dim: 128,
                rope_scale: 1.0,
                max_position_embeddings: 40_960,
                tie_word_embeddings: false,
                qkv_bias: false,
                qk_norm: true,
                sliding_window: None,
                window_layers: Vec::new(),
                attn_logit_softcap: None,
                local_rope_theta: None,
                final_logit_softcap: None,
                query_pre_attn_scalar: None,
                moe: None,
            },
            RandomShape::Qwen3_30bA3b => ModelConfig {
                arch: Arch::Qwen3Moe,
                hidden_size: 2048,
                intermediate_size: 6144,
                num_layers: 48,
                num_kv_heads: 4,
                moe: Some(MoeConfig {
                    num_experts: 128,
                    top_k: 8,
                    intermediate_size: 768,
                    norm_topk_prob: true,
                    dense_layers: Vec::new(),
                }),
                ..RandomShape::Qwen3_8b.config()
            },
            // gemma-3-12b-it's text_config, with Gemma3TextConfig's defaults for what it
            // leaves out (head_dim, vocabulary, rope bases, query_pre_attn_scalar, the
            // sliding-window pattern of 6).
            RandomShape::Gemma3_12b => ModelConfig {
                arch: Arch::Gemma3,
                hidden_size: 3840,
                intermediate_size: 15_360,
                num_layers: 48,
                num_heads: 16,
                num_kv_heads: 8,
                head_dim: 256,
                vocab_size: 262_208,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                rope_scaling: RopeScaling::Linear { factor: 8.0 },
                rope_style: RopeStyle::Neox,
                rotary_dim: 256,
                rope_scale: 1.0,
                max_position_embeddings: 131_072,
                tie_word_embeddings: true,
                qkv_bias: false,
                qk_norm: true,
                sliding_window: Some(1024),
                window_layers: (0..48).map(|i| (i + 1) % 6 != 0).collect(),
                attn_logit_softcap: None,
                local_rope_theta: Some(10_000.0),
                final_logit_softcap: None,
                query_pre_attn_scalar: Some(256.0),
                moe: None,
            },
        }
    }
}

/// A shape and a seed: what follows `random:` in a model source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RandomSpec {
    pub shape: RandomShape,
    pub seed: u64,
}

impl FromStr for RandomSpec {
    type Err = anyhow::Error;

    /// `<shape>` or `<shape>@<seed>` (a decimal u64).
    fn from_str(s: &str) -> Result<Self> {
        let (name, seed) = match s.split_once('@') {
            Some((name, seed)) => {
                let seed = seed.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!(
                        "random model seed '{seed}' is not a non-negative integer: use \
                         random:<shape>@<seed>"
                    )
                })?;
                (name, seed)
            }
            None => (s, DEFAULT_SEED),
        };
        if name.is_empty() {
            bail!(
                "a random model needs a shape: random:<shape>[@<seed>] with one of {}",
                RandomShape::names()
            );
        }
        Ok(Self {
            shape: RandomShape::parse(name)?,
            seed,
        })
    }
}

impl fmt::Display for RandomSpec {
    /// `<shape>`, with `@<seed>` unless the seed is the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seed {
            DEFAULT_SEED => write!(f, "{}", self.shape.name()),
            seed => write!(f, "{}@{seed}", self.shape.name()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    Normal,
    Ones,
    /// Gemma's norms, whose scale is `1 + w`: zero is the identity.
    Zeros,
}

/// Every tensor of a Hugging Face checkpoint of this shape: name, shape, initialisation.
fn tensor_list(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (h, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![v, h],
        Init::Normal,
    )];
    let gemma = matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3);
    let norm = if gemma { Init::Zeros } else { Init::Ones };
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let mut add = |name: &str, shape: Vec<usize>, init| {
            out.push((format!("{p}.{name}"), shape, init));
        };
        add("input_layernorm.weight", vec![h], norm);
        if cfg.arch == Arch::Phi3 {
            add(
                "self_attn.qkv_proj.weight",
                vec![q + 2 * kv, h],
                Init::Normal,
            );
        } else {
            add("self_attn.q_proj.weight", vec![q, h], Init::Normal);
            add("self_attn.k_proj.weight", vec![kv, h], Init::Normal);
            add("self_attn.v_proj.weight", vec![kv, h], Init::Normal);
        }
        if cfg.qkv_bias {
            add("self_attn.q_proj.bias", vec![q], Init::Normal);
            add("self_attn.k_proj.bias", vec![kv], Init::Normal);
            add("self_attn.v_proj.bias", vec![kv], Init::Normal);
        }
        if cfg.qk_norm {
            add("self_attn.q_norm.weight", vec![cfg.head_dim], norm);
            add("self_attn.k_norm.weight", vec![cfg.head_dim], norm);
        }
        add("self_attn.o_proj.weight", vec![h, q], Init::Normal);
        add("post_attention_layernorm.weight", vec![h], norm);
        if gemma {
            add("pre_feedforward_layernorm.weight", vec![h], norm);
            add("post_feedforward_layernorm.weight", vec![h], norm);
        }
        match &cfg.moe {
            Some(moe) if !moe.dense_layers.contains(&i) => {
                let (mlp, [g, u, d]) = match cfg.arch {
                    Arch::Mixtral => ("block_sparse_moe", ["w1", "w3", "w2"]),
                    _ => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
                };
                let e_inter = moe.intermediate_size;
                add(
                    &format!("{mlp}.gate.weight"),
                    vec![moe.num_experts, h],
                    Init::Normal,
                );
                for e in 0..moe.num_experts {
                    let x = format!("{mlp}.experts.{e}");
                    add(&format!("{x}.{g}.weight"), vec![e_inter, h], Init::Normal);
                    add(&format!("{x}.{u}.weight"), vec![e_inter, h], Init::Normal);
                    add(&format!("{x}.{d}.weight"), vec![h, e_inter], Init::Normal);
                }
            }
            _ if cfg.arch == Arch::Phi3 => {
                add("mlp.gate_up_proj.weight", vec![2 * inter, h], Init::Normal);
                add("mlp.down_proj.weight", vec![h, inter], Init::Normal);
            }
            _ => {
                add("mlp.gate_proj.weight", vec![inter, h], Init::Normal);
                add("mlp.up_proj.weight", vec![inter, h], Init::Normal);
                add("mlp.down_proj.weight", vec![h, inter], Init::Normal);
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h], norm));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h], Init::Normal));
    }
    out
}

/// The number of parameters of a model of this shape.
pub fn parameter_count(cfg: &ModelConfig) -> usize {
    tensor_list(cfg)
        .iter()
        .map(|(_, shape, _)| shape.iter().product::<usize>())
        .sum()
}

/// SplitMix64's finalizer: spreads a seed's bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of one tensor: the model seed and the tensor's name (FNV-1a), mixed.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    mix(mix(seed) ^ fnv)
}

/// Approximately normal samples: value `i` of a tensor is the sum of the four 16-bit
/// parts of SplitMix64's `i`-th output (Irwin-Hall), centred and scaled to `std`. Bounded
/// at 3.46 standard deviations, like the truncated normals of many initialisations, and
/// cheap enough that a CPU-side model of billions of weights takes seconds. `out` holds
/// the values from index `start`.
fn fill_normal(out: &mut [f32], seed: u64, start: usize, std: f64) {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    // The sum of four (k + 0.5) / 2^16 has mean 2 and variance 4/12.
    let scale = (3f64.sqrt() * std / 65536.0) as f32;
    let mut state = seed.wrapping_add((start as u64).wrapping_mul(GAMMA));
    for x in out.iter_mut() {
        let r = mix(state);
        state = state.wrapping_add(GAMMA);
        let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        *x = (sum as f32 + 2.0 - 131_072.0) * scale;
    }
}

/// `n` samples of [`fill_normal`] on the host, on all cores.
fn host_normal(n: usize, seed: u64, std: f64) -> Vec<f32> {
    let mut data = vec![0f32; n];
    let chunks: Vec<(usize, &mut [f32])> = data.chunks_mut(HOST_CHUNK).enumerate().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunks.len())
        .max(1);
    if threads == 1 {
        fill_normal(&mut data, seed, 0, std);
        return data;
    }
    let per_thread = chunks.len().div_ceil(threads);
    std::thread::scope(|s| {
        let mut rest = chunks.into_iter();
        loop {
            let group: Vec<_> = rest.by_ref().take(per_thread).collect();
            if group.is_empty() {
                break;
            }
            s.spawn(move || {
                for (i, c) in group {
                    fill_normal(c, seed, i * HOST_CHUNK, std);
                }
            });
        }
    });
    data
}

/// One random tensor on `device`: drawn there (a GPU's generator) or on the host (CPU).
fn normal_tensor(
    shape: &[usize],
    seed: u64,
    std: f64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if device.is_cpu() {
        let data = host_normal(shape.iter().product(), seed, std);
        return Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?);
    }
    device
        .set_seed(seed)
        .context("seeding the device's random generator")?;
    // candle's GPU generators draw f32 (or f64) only: draw f32, cast on the device.
    Ok(Tensor::randn(0f32, std as f32, shape, device)?.to_dtype(dtype)?)
}

/// The weights of a random model of shape `cfg`, named as in a Hugging Face checkpoint,
/// made on `device` in `dtype`.
pub fn random_weights(
    cfg: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, shape, init) in tensor_list(cfg) {
        let t = match init {
            Init::Ones => Tensor::ones(shape.as_slice(), dtype, device)?,
            Init::Zeros => Tensor::zeros(shape.as_slice(), dtype, device)?,
            Init::Normal => {
                normal_tensor(&shape, tensor_seed(seed, &name), INIT_STD, dtype, device)
                    .with_context(|| format!("making random tensor {name} {shape:?}"))?
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// A random model and its byte-level tokenizer. `dtype` is the weight dtype on a GPU; the
/// CPU computes in f32, as for safetensors checkpoints.
pub fn load(spec: RandomSpec, dtype: DType, device: &Device) -> Result<(Model, Tokenizer)> {
    let config = spec.shape.config().validate()?;
    let dtype = if device.is_cpu() { DType::F32 } else { dtype };
    let params = parameter_count(&config);
    tracing::info!(
        shape = spec.shape.name(),
        seed = spec.seed,
        params,
        gbytes = (params * dtype.size_in_bytes()) as f64 / 1e9,
        ?dtype,
        "making random weights on {device:?}"
    );
    let started = Instant::now();
    let tensors = random_weights(&config, spec.seed, dtype, device)?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let vocab_size = config.vocab_size;
    let model = Model::from_safetensors(config, vb)
        .with_context(|| format!("building the random model random:{spec}"))?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "random weights ready"
    );
    Ok((model, Tokenizer::byte_level(vocab_size)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CacheConfig, ModelRunner, Sequence};

    #[test]
    fn parses_shapes_and_seeds() {
        let s: RandomSpec = "tiny".parse().unwrap();
        assert_eq!((s.shape, s.seed), (RandomShape::Tiny, DEFAULT_SEED));
        let s: RandomSpec = "llama-3-8b@42".parse().unwrap();
        assert_eq!((s.shape, s.seed), (RandomShape::Llama3_8b, 42));
        for shape in RandomShape::ALL {
            assert_eq!(RandomShape::parse(shape.name()).unwrap(), shape);
            let spec = RandomSpec { shape, seed: 7 };
            assert_eq!(spec.to_string().parse::<RandomSpec>().unwrap(), spec);
        }
        assert_eq!(
            "qwen2-0.5b@0".parse::<RandomSpec>().unwrap().to_string(),
            "qwen2-0.5b"
        );

        let err = |s: &str| format!("{:#}", s.parse::<RandomSpec>().unwrap_err());
        let e = err("llama-9000");
        assert!(
            e.contains("unknown random model shape 'llama-9000'")
                && e.contains("tiny, llama-3.2-1b, llama-3-8b, qwen2-0.5b"),
            "{e}"
        );
        let e = err("tiny@-1");
        assert!(e.contains("seed '-1' is not a non-negative integer"), "{e}");
        assert!(err("tiny@").contains("seed ''"));
        let e = err("@3");
        assert!(
            e.contains("needs a shape") && e.contains("qwen2-0.5b"),
            "{e}"
        );
        assert!(err("").contains("needs a shape"));
    }

    #[test]
    fn shapes_have_the_checkpoints_numbers() {
        let c = RandomShape::Llama3_8b.config();
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (4096, 32, 32, 8, 128)
        );
        assert_eq!((c.intermediate_size, c.vocab_size), (14_336, 128_256));
        assert_eq!((c.rope_theta, c.rms_norm_eps), (500_000.0, 1e-5));
        assert!(!c.tie_word_embeddings && !c.qkv_bias);
        assert!(matches!(c.rope_scaling, RopeScaling::None));
        // The parameter counts the released checkpoints report.
        assert_eq!(parameter_count(&c), 8_030_261_248);

        let c = RandomShape::Llama32_1b.config();
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (2048, 16, 32, 8, 64)
        );
        assert_eq!((c.intermediate_size, c.vocab_size), (8192, 128_256));
        assert!(c.tie_word_embeddings);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Llama3 { factor, original_max_position_embeddings: 8192, .. }
                if factor == 32.0
        ));
        assert_eq!(parameter_count(&c), 1_235_814_400);

        let c = RandomShape::Qwen2_0_5b.config();
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (896, 24, 14, 2, 64)
        );
        assert_eq!((c.intermediate_size, c.vocab_size), (4864, 151_936));
        assert_eq!((c.rope_theta, c.rms_norm_eps), (1_000_000.0, 1e-6));
        assert!(c.tie_word_embeddings && c.qkv_bias);
        assert_eq!(parameter_count(&c), 494_032_768);

        let c = RandomShape::Qwen3_8b.config();
        assert_eq!(c.arch, Arch::Qwen3);
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (4096, 36, 32, 8, 128)
        );
        assert_eq!((c.intermediate_size, c.vocab_size), (12_288, 151_936));
        assert_eq!((c.rope_theta, c.rms_norm_eps), (1_000_000.0, 1e-6));
        assert!(c.qk_norm && !c.qkv_bias && !c.tie_word_embeddings);
        // Qwen3-8B's safetensors index: total_size 16_381_470_720 bytes of bf16.
        assert_eq!(parameter_count(&c), 16_381_470_720 / 2);

        let c = RandomShape::Qwen3_30bA3b.config();
        assert_eq!(c.arch, Arch::Qwen3Moe);
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (2048, 48, 32, 4, 128)
        );
        assert_eq!(c.vocab_size, 151_936);
        assert_eq!((c.rope_theta, c.rms_norm_eps), (1_000_000.0, 1e-6));
        assert!(c.qk_norm && !c.qkv_bias && !c.tie_word_embeddings);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.intermediate_size),
            (128, 8, 768)
        );
        assert!(moe.norm_topk_prob && moe.dense_layers.is_empty());
        // The model card's 30.5B parameters: per layer attention (q, k, v, o: 18.87M),
        // norms, router (128 x 2048) and 128 experts of 3 x 768 x 2048; embeddings and
        // head of 151936 x 2048 each.
        assert_eq!(parameter_count(&c), 30_532_122_624);

        let c = RandomShape::Gemma3_12b.config();
        assert_eq!(c.arch, Arch::Gemma3);
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (3840, 48, 16, 8, 256)
        );
        assert_eq!((c.intermediate_size, c.vocab_size), (15_360, 262_208));
        assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
        assert!(matches!(c.rope_scaling, RopeScaling::Linear { factor } if factor == 8.0));
        assert!(c.qk_norm && c.tie_word_embeddings);
        assert_eq!(c.query_pre_attn_scalar, Some(256.0));
        // Five sliding-window layers, then a global one.
        let windows: Vec<_> = (0..12).map(|l| c.layer_window(l)).collect();
        let (s, g) = (Some(1024), None);
        assert_eq!(windows, [s, s, s, s, s, g, s, s, s, s, s, g]);
        // Keras' gemma3_12b_text preset reports 11,765,788,416 parameters with a vocabulary
        // of 262,144; the Hugging Face checkpoint's 262,208 rows add 64 x 3840.
        assert_eq!(parameter_count(&c), 11_765_788_416 + 64 * 3840);

        for shape in RandomShape::ALL {
            let c = shape.config().validate().unwrap();
            assert!(
                c.vocab_size >= 256,
                "{shape:?}: the byte tokenizer needs 256 ids"
            );
        }
    }

    #[test]
    fn same_seed_same_weights() {
        let cfg = RandomShape::Tiny.config();
        let dev = Device::Cpu;
        let a = random_weights(&cfg, 7, DType::F32, &dev).unwrap();
        let b = random_weights(&cfg, 7, DType::F32, &dev).unwrap();
        let c = random_weights(&cfg, 8, DType::F32, &dev).unwrap();
        assert_eq!(a.len(), tensor_list(&cfg).len());
        let values = |m: &HashMap<String, Tensor>, k: &str| {
            m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        for name in a.keys() {
            assert_eq!(values(&a, name), values(&b, name), "{name}");
        }
        let q = "model.layers.1.self_attn.q_proj.weight";
        assert_ne!(values(&a, q), values(&c, q));
        // Tensors of one model differ from each other.
        assert_ne!(
            values(&a, "model.layers.0.mlp.up_proj.weight"),
            values(&a, "model.layers.0.mlp.gate_proj.weight")
        );
        assert!(values(&a, "model.norm.weight").iter().all(|&x| x == 1.0));
        // Chunked host generation: the same values whatever the thread count, and the
        // intended distribution.
        let n = 3 * HOST_CHUNK + 5;
        let big = host_normal(n, 11, 0.02);
        let mut serial = vec![0f32; n];
        fill_normal(&mut serial, 11, 0, 0.02);
        assert_eq!(big, serial);
        assert!(big.iter().all(|x| x.abs() < 0.02 * 3.47));
        let mean = big.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let std = (big.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 5e-4,
            "{mean} {std}"
        );
    }

    /// Greedy steps on the tiny model: finite logits, tokens inside the vocabulary that
    /// the tokenizer decodes; the same seed gives the same tokens.
    fn greedy(seed: u64) -> Vec<u32> {
        let spec = RandomSpec {
            shape: RandomShape::Tiny,
            seed,
        };
        let (model, tok) = load(spec, DType::BF16, &Device::Cpu).unwrap();
        let vocab = model.config().vocab_size;
        assert_eq!(tok.vocab_size(), vocab);
        let cache = CacheConfig {
            block_size: 16,
            num_blocks: 8,
        };
        let mut runner = ModelRunner::new(model, cache);
        let mut pool = crate::kv::BlockPool::new(cache.num_blocks);
        let prompt = tok.encode("The capital of France is", true).unwrap();
        let mut seq = Sequence::new(prompt.clone());
        seq.reserve(prompt.len(), 16, &mut pool).unwrap();
        let mut logits = runner.step(&mut [(&mut seq, prompt.len())]).unwrap();
        let mut out = Vec::new();
        for _ in 0..12 {
            let row = logits.get(0).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(row.len(), vocab);
            assert!(row.iter().all(|x| x.is_finite()), "non-finite logits");
            let next = crate::sampling::argmax(&row).unwrap();
            assert!((next as usize) < vocab);
            out.push(next);
            seq.tokens.push(next);
            seq.reserve(1, 16, &mut pool).unwrap();
            logits = runner.step(&mut [(&mut seq, 1)]).unwrap();
        }
        tok.decode(&out, true).unwrap();
        out
    }

    /// Every family's tensor list is what its loader reads: a tiny config of each builds
    /// and runs one step.
    #[test]
    fn tensor_lists_load_in_every_family() {
        // 4 experts (router + 3 matrices each); Qwen3-MoE with its layer 1 dense.
        let moe = |dense_layers| {
            Some(MoeConfig {
                num_experts: 4,
                top_k: 2,
                intermediate_size: 32,
                norm_topk_prob: true,
                dense_layers,
            })
        };
        for (arch, qkv_bias, qk_norm, moe) in [
            (Arch::Llama, false, false, None),
            (Arch::Qwen2, true, false, None),
            (Arch::Qwen3, false, true, None),
            (Arch::Mixtral, false, false, moe(Vec::new())),
            (Arch::Qwen3Moe, false, true, moe(vec![1])),
            (Arch::Gemma2, false, false, None),
            (Arch::Gemma3, false, true, None),
            (Arch::Phi3, false, false, None),
        ] {
            let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
            let tiny = RandomShape::Tiny.config();
            let cfg = ModelConfig {
                arch,
                qkv_bias,
                qk_norm,
                head_dim: 24,
                moe,
                // Gemma's windows on the first layer only, soft-capping (2) and a local
                // rope base (3).
                sliding_window: gemma.then_some(2),
                window_layers: if gemma { vec![true, false] } else { Vec::new() },
                attn_logit_softcap: (arch == Arch::Gemma2).then_some(50.0),
                final_logit_softcap: (arch == Arch::Gemma2).then_some(30.0),
                query_pre_attn_scalar: gemma.then_some(16.0),
                local_rope_theta: (arch == Arch::Gemma3).then_some(10_000.0),
                ..tiny
            };
            assert_eq!(cfg.num_layers, 2);
            let weights = random_weights(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
            let n = weights.len();
            let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
            let model = Model::from_safetensors(cfg.clone(), vb).unwrap();
            assert_eq!(model.config().arch, arch);
            // Phi-3 fuses q, k, v into one matrix and gate, up into another.
            let per_layer = 9 + 3 * qkv_bias as usize + 2 * qk_norm as usize + 2 * gemma as usize
                - 3 * (arch == Arch::Phi3) as usize;
            let sparse_layers = cfg
                .moe
                .as_ref()
                .map_or(0, |m| cfg.num_layers - m.dense_layers.len());
            // A sparse layer has a router and 4 x 3 expert matrices for its 3 MLP ones.
            assert_eq!(
                n,
                3 + cfg.num_layers * per_layer + sparse_layers * (1 + 12 - 3),
                "{arch:?}"
            );
            let cache = CacheConfig {
                block_size: 16,
                num_blocks: 4,
            };
            let mut runner = ModelRunner::new(model, cache);
            let mut pool = crate::kv::BlockPool::new(cache.num_blocks);
            let mut seq = Sequence::new(vec![1, 2, 3]);
            seq.reserve(3, 16, &mut pool).unwrap();
            let logits = runner.step(&mut [(&mut seq, 3)]).unwrap();
            let row = logits.get(0).unwrap().to_vec1::<f32>().unwrap();
            assert!(row.iter().all(|x| x.is_finite()), "{arch:?}");
        }
    }

    #[test]
    fn tiny_model_generates() {
        let a = greedy(3);
        assert_eq!(a, greedy(3));
        assert_ne!(a, greedy(4));
    }
}
