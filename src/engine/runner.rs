//! The model runner owns the model and the paged KV cache's storage, and runs one
//! flattened step at a time. It allocates nothing: which blocks a sequence's tokens go
//! to is the caller's (the scheduler's block pool), the runner only reads and writes
//! them.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::batch::{recycle, FlatBatch};
use super::sequence::Sequence;
use crate::kv::{CacheLayout, KvCache};
use crate::model::{Model, ModelConfig};

/// How big the KV cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub block_size: usize,
    pub num_blocks: usize,
}

impl CacheConfig {
    /// Sizes the pool from a token budget (`--max-batch-total-tokens`) or, when absent,
    /// from `memory_fraction` of the memory available now.
    pub fn for_model(
        config: &ModelConfig,
        block_size: usize,
        max_batch_total_tokens: Option<usize>,
        memory_fraction: f64,
    ) -> Result<Self> {
        anyhow::ensure!(block_size > 0, "block size must be at least 1");
        let per_token =
            CacheLayout::bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim);
        let tokens = match max_batch_total_tokens {
            Some(t) => t,
            None => {
                let avail = available_memory_bytes().unwrap_or(2 << 30);
                let budget = (avail as f64 * memory_fraction.clamp(0.0, 1.0)) as usize;
                // Never more than the model can use at once across a full batch of long
                // sequences; at least one block.
                (budget / per_token).min(config.max_position_embeddings * 64)
            }
        };
        let num_blocks = tokens.div_ceil(block_size).max(1);
        Ok(Self {
            block_size,
            num_blocks,
        })
    }
}

impl CacheConfig {
    /// Sizes the pool for a model on `device`. On the CPU as [`CacheConfig::for_model`]; on
    /// a GPU (with the weights already loaded) from the device's free memory: at most
    /// `cuda_memory_fraction` of the GPU is used in all, and a reserve for activations and
    /// logits of the largest step (`reserve_bytes`) is left free.
    pub fn for_device(
        config: &ModelConfig,
        device: &Device,
        block_size: usize,
        max_batch_total_tokens: Option<usize>,
        kv_memory_fraction: f64,
        cuda_memory_fraction: f64,
        reserve_bytes: usize,
    ) -> Result<Self> {
        #[cfg(not(feature = "cuda"))]
        let _ = (cuda_memory_fraction, reserve_bytes);
        match device {
            Device::Cpu => Self::for_model(
                config,
                block_size,
                max_batch_total_tokens,
                kv_memory_fraction,
            ),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => {
                anyhow::ensure!(block_size > 0, "block size must be at least 1");
                let tokens = match max_batch_total_tokens {
                    Some(t) => t,
                    None => {
                        let (free, total) = dev.cuda_stream().context().mem_get_info()?;
                        let fraction = cuda_memory_fraction.clamp(0.0, 1.0);
                        let unusable = (total as f64 * (1.0 - fraction)) as usize;
                        let budget = free.saturating_sub(unusable).saturating_sub(reserve_bytes);
                        // bf16/f16 cache: the same bytes per token as the host cache, and
                        // the attention scratch that grows with the pool.
                        let per_token = CacheLayout::bytes_per_token(
                            config.num_layers,
                            config.num_kv_heads,
                            config.head_dim,
                        ) + crate::kv::scratch_bytes_per_part(
                            config.num_heads,
                            config.head_dim,
                        )
                        .div_ceil(crate::ops::launch::PARTITION_SIZE);
                        let tokens = budget / per_token;
                        anyhow::ensure!(
                            tokens >= block_size,
                            "not enough free GPU memory for a KV cache: {} MiB free of {} MiB \
                             after loading the model (CUDA_MEMORY_FRACTION {fraction}, {} MiB \
                             reserved for activations)",
                            free >> 20,
                            total >> 20,
                            reserve_bytes >> 20
                        );
                        tokens
                    }
                };
                Ok(Self {
                    block_size,
                    num_blocks: tokens.div_ceil(block_size).max(1),
                })
            }
            other => anyhow::bail!("unsupported device {other:?}"),
        }
    }
}

/// MemAvailable from /proc/meminfo.
fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where the K/V live: host memory (CPU models) or GPU memory (models on a GPU).
enum Cache {
    Host(Box<KvCache>),
    #[cfg(feature = "cuda")]
    Device(Box<crate::kv::DeviceKvCache>),
}

impl Cache {
    fn attention(&mut self) -> &mut dyn crate::model::AttentionBackend {
        match self {
            Cache::Host(c) => &mut **c,
            #[cfg(feature = "cuda")]
            Cache::Device(c) => &mut **c,
        }
    }
}

pub struct ModelRunner {
    model: Model,
    cache: Cache,
    size: CacheConfig,
    /// Kept between steps so that building a step's attention view does not allocate.
    seq_buf: Vec<crate::ops::AttnSeq<'static>>,
}

impl ModelRunner {
    /// A runner whose cache is in host memory (for CPU models; see [`ModelRunner::try_new`]
    /// for any device).
    pub fn new(model: Model, cache: CacheConfig) -> Self {
        let layout = Self::layout(&model, cache);
        let cfg = model.config();
        let kv = KvCache::new(cfg.num_layers, layout)
            .with_sliding_window(cfg.sliding_window)
            .with_layer_attention(
                (0..cfg.num_layers).map(|l| cfg.layer_window(l)).collect(),
                cfg.attn_logit_softcap,
            )
            .with_local_rope(cfg.local_rope());
        Self::log(cache, kv.size_in_bytes(), "host");
        Self::with_cache(model, cache, Cache::Host(Box::new(kv)))
    }

    /// A runner whose cache lives where the model does: host memory for a CPU model, GPU
    /// memory (in the model's 16-bit dtype) for a model on a GPU.
    pub fn try_new(model: Model, cache: CacheConfig) -> Result<Self> {
        match model.device().clone() {
            Device::Cpu => Ok(Self::new(model, cache)),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => {
                let layout = Self::layout(&model, cache);
                let cfg = model.config();
                // The same per-layer windows, soft-cap and local rope as the host cache's.
                let kv = crate::kv::DeviceKvCache::new(
                    &dev,
                    cfg.num_layers,
                    layout,
                    model.kv_dtype(),
                    cfg.num_heads,
                    model.rope(),
                )?
                .with_layer_attention(
                    (0..cfg.num_layers).map(|l| cfg.layer_window(l)).collect(),
                    cfg.attn_logit_softcap,
                )
                .with_local_rope(cfg.local_rope())?;
                Self::log(cache, kv.size_in_bytes(), "gpu");
                Ok(Self::with_cache(model, cache, Cache::Device(Box::new(kv))))
            }
            other => anyhow::bail!("unsupported device {other:?}"),
        }
    }

    fn layout(model: &Model, cache: CacheConfig) -> CacheLayout {
        let cfg = model.config();
        CacheLayout {
            num_blocks: cache.num_blocks,
            block_size: cache.block_size,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        }
    }

    fn log(cache: CacheConfig, bytes: usize, place: &str) {
        tracing::info!(
            blocks = cache.num_blocks,
            block_size = cache.block_size,
            tokens = cache.num_blocks * cache.block_size,
            mib = bytes >> 20,
            memory = place,
            "KV cache allocated"
        );
    }

    fn with_cache(model: Model, cache: CacheConfig, kv: Cache) -> Self {
        Self {
            model,
            cache: kv,
            size: cache,
            seq_buf: Vec::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// wick's CUDA kernels, when the cache is on a GPU.
    #[cfg(feature = "cuda")]
    pub fn kernels(&self) -> Option<&crate::ops::cuda::Kernels> {
        match &self.cache {
            Cache::Host(_) => None,
            Cache::Device(c) => Some(c.kernels()),
        }
    }

    /// Whether tokens are chosen where the logits are: on a GPU with wick's kernels.
    pub fn chooses_on_device(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.kernels().is_some();
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// Blocks in the cache.
    pub fn num_blocks(&self) -> usize {
        self.size.num_blocks
    }

    /// Tokens per cache block.
    pub fn block_size(&self) -> usize {
        self.size.block_size
    }

    /// Copies a block's K/V to another block (copy-on-write of a shared partial block).
    pub fn copy_block(&mut self, src: u32, dst: u32) -> Result<()> {
        match &mut self.cache {
            Cache::Host(c) => c.copy_block(src as usize, dst as usize),
            #[cfg(feature = "cuda")]
            Cache::Device(c) => c.copy_block(src as usize, dst as usize)?,
        }
        Ok(())
    }

    /// Runs a prepared batch (slots must be reserved) and returns the logits of its
    /// `logits_rows`.
    pub fn forward(&mut self, batch: &FlatBatch) -> Result<Tensor> {
        let hidden = self.forward_hidden(batch)?;
        self.model.logits(&hidden)
    }

    /// Runs a prepared batch (slots must be reserved) and returns the final hidden states
    /// of its `logits_rows` (see [`ModelRunner::logits`]).
    pub fn forward_hidden(&mut self, batch: &FlatBatch) -> Result<Tensor> {
        let mut seqs = recycle(std::mem::take(&mut self.seq_buf));
        batch.fill_attn_seqs(&mut seqs);
        let out = self
            .model
            .forward_hidden(&batch.forward_batch(&seqs), self.cache.attention());
        self.seq_buf = recycle(seqs);
        out
    }

    /// The f32 logits of some final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.model.logits(hidden)
    }

    /// Runs `n` pending tokens of each sequence (their slots must be in its block table
    /// already) and returns the logits of each item's last token, `[items, vocab]`.
    /// Marks the tokens computed.
    pub fn step(&mut self, items: &mut [(&mut Sequence, usize)]) -> Result<Tensor> {
        let view: Vec<(&Sequence, usize)> = items.iter().map(|(s, n)| (&**s, *n)).collect();
        let batch = FlatBatch::build(&view, self.size.block_size)?;
        let logits = self.forward(&batch)?;
        for (seq, n) in items.iter_mut() {
            seq.num_computed += *n;
        }
        Ok(logits)
    }
}
