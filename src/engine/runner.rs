//! The model runner owns the model, the paged KV cache and the block pool, and runs one
//! flattened step at a time.

use anyhow::Result;
use candle_core::Tensor;

use super::batch::FlatBatch;
use super::sequence::Sequence;
use crate::kv::block_pool::PoolError;
use crate::kv::{BlockPool, CacheLayout, KvCache};
use crate::model::{LlamaModel, ModelConfig};

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

/// MemAvailable from /proc/meminfo.
fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub struct ModelRunner {
    model: LlamaModel,
    cache: KvCache,
    pool: BlockPool,
    block_size: usize,
}

impl ModelRunner {
    pub fn new(model: LlamaModel, cache: CacheConfig) -> Self {
        let cfg = model.config();
        let layout = CacheLayout {
            num_blocks: cache.num_blocks,
            block_size: cache.block_size,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        };
        let kv = KvCache::new(cfg.num_layers, layout);
        tracing::info!(
            blocks = cache.num_blocks,
            block_size = cache.block_size,
            tokens = cache.num_blocks * cache.block_size,
            mib = kv.size_in_bytes() >> 20,
            "KV cache allocated"
        );
        Self {
            model,
            cache: kv,
            pool: BlockPool::new(cache.num_blocks),
            block_size: cache.block_size,
        }
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Reserves cache slots for the next `n` tokens of `seq`. On failure nothing changes.
    pub fn reserve(&mut self, seq: &mut Sequence, n: usize) -> Result<(), PoolError> {
        let have = seq.block_table.num_tokens();
        let want = seq.num_computed + n;
        if want > have {
            seq.block_table
                .grow(want - have, self.block_size, &mut self.pool)?;
        }
        Ok(())
    }

    /// Returns a sequence's blocks to the pool.
    pub fn release(&mut self, seq: &mut Sequence) -> Result<(), PoolError> {
        seq.num_computed = 0;
        seq.block_table.release(&mut self.pool)
    }

    /// Copies a block's K/V to another block (copy-on-write of a shared partial block).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        self.cache.copy_block(src as usize, dst as usize);
    }

    /// Runs a prepared batch (slots must be reserved) and returns the logits of its
    /// `logits_rows`.
    pub fn forward(&mut self, batch: &FlatBatch) -> Result<Tensor> {
        let seqs = batch.attn_seqs();
        self.model
            .forward(&batch.forward_batch(&seqs), &mut self.cache)
    }

    /// Runs `n` pending tokens of each sequence (slots must be reserved) and returns the
    /// logits of each item's last token, `[items, vocab]`. Marks the tokens computed.
    pub fn step(&mut self, items: &mut [(&mut Sequence, usize)]) -> Result<Tensor> {
        let view: Vec<(&Sequence, usize)> = items.iter().map(|(s, n)| (&**s, *n)).collect();
        let batch = FlatBatch::build(&view, self.block_size)?;
        let seqs = batch.attn_seqs();
        let logits = self
            .model
            .forward(&batch.forward_batch(&seqs), &mut self.cache)?;
        for (seq, n) in items.iter_mut() {
            seq.num_computed += *n;
        }
        Ok(logits)
    }
}
