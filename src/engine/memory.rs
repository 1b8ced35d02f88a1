//! The device memory a step can need besides the weights and the KV cache, from the
//! budgets alone, so that it is set aside before the KV pool takes the rest of the GPU
//! and no step can run out of memory.
//!
//! A step runs at most `max_batch_prefill_tokens` prompt tokens and `max_batch_size`
//! decode rows through the layer loop, then takes logits of at most `max_batch_size`
//! rows at once (each item's last row) and of prompt-logprob rows
//! [`PROMPT_LOGPROB_CHUNK`] at a time. The attention scratch of split decode rows is
//! allocated with the cache (`kv::scratch_bytes`), one part per cached token
//! and one fixed part, counted here. Elements are counted at 4 bytes (GGUF models compute
//! in f32 on a GPU; bf16 checkpoints need half), q/k/v and attention at 2 (the cache's
//! 16-bit dtype).

use super::placement::PROMPT_LOGPROB_CHUNK;
use super::scheduler::SchedulerConfig;
use crate::kv::{scratch_bytes_per_part, FIXED_SCRATCH_PARTS};
use crate::model::ModelConfig;

/// Bytes of one activation element (the worst case: f32).
const ACT: usize = 4;
/// Bytes of one q/k/v or attention-output element (the cache's 16-bit dtype).
const KV: usize = 2;
/// cuBLAS workspaces, the allocator's rounding and small per-step buffers.
const SLACK: usize = 512 << 20;
/// Peak bytes of the layer loop over `tokens` rows: the larger of the attention half
/// (residual, norm, q/k/v projections and their 16-bit copies, rotated q and k, attention
/// output and its cast back, the output projection) and the MLP half (residual, norm,
/// gate and up, their product, the down projection), with the residual sum.
pub fn forward_bytes(cfg: &ModelConfig, tokens: usize) -> usize {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let attention = ACT * (3 * h + q + 2 * kv + q) + KV * (q + 2 * kv + q + kv + q);
    let mlp = ACT * (4 * h + 4 * i);
    tokens * attention.max(mlp)
}

/// Bytes of the logits of `rows` rows: the head's output in the activation dtype and its
/// f32 copy, and a downloaded copy of each row for the host sampler.
pub fn logits_bytes(cfg: &ModelConfig, rows: usize) -> usize {
    rows * cfg.vocab_size * (ACT + 4 + 4)
}

/// The fixed part of the attention scratch (the part per cached token is counted with
/// the KV cache).
pub fn fixed_scratch_bytes(cfg: &ModelConfig) -> usize {
    FIXED_SCRATCH_PARTS * scratch_bytes_per_part(cfg.num_heads, cfg.head_dim)
}

/// What a GPU keeps free for the largest step the budgets allow.
pub fn reserve_bytes(cfg: &ModelConfig, budgets: &SchedulerConfig) -> usize {
    let tokens = budgets.max_batch_prefill_tokens + budgets.max_batch_size;
    let logit_rows = budgets.max_batch_size.max(PROMPT_LOGPROB_CHUNK);
    // The final hidden states of every row stay while prompt logprobs are taken.
    let hidden = tokens * cfg.hidden_size * ACT;
    forward_bytes(cfg, tokens).max(hidden + logits_bytes(cfg, logit_rows))
        + fixed_scratch_bytes(cfg)
        + SLACK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::CacheLayout;
    use crate::model::RandomShape;
    use crate::ops::launch::{plan_splits, PARTITION_SIZE};

    fn llama3_8b() -> ModelConfig {
        RandomShape::Llama3_8b.config()
    }

    fn budgets() -> SchedulerConfig {
        SchedulerConfig {
            max_batch_prefill_tokens: 4096,
            max_batch_size: 256,
            ..Default::default()
        }
    }

    /// 4,096 prompt tokens plus 256 decode rows at 32k context, on the llama-3-8b shape:
    /// the layer loop and the logits of every item fit the reserve, and the decode rows'
    /// attention partitions fit the scratch the cache allocated, whatever the pool.
    #[test]
    fn the_reserve_covers_a_full_prefill_beside_long_decodes() {
        let cfg = llama3_8b();
        let reserve = reserve_bytes(&cfg, &budgets());
        let step = forward_bytes(&cfg, 4096 + 256);
        let logits = logits_bytes(&cfg, 256 + 1);
        assert!(step <= reserve, "layer loop {step} > reserve {reserve}");
        assert!(logits <= reserve, "logits {logits} > reserve {reserve}");
        eprintln!(
            "llama-3-8b, 4096 + 256 rows: reserve {} MiB, layer loop {} MiB, logits {} MiB",
            reserve >> 20,
            step >> 20,
            logits >> 20
        );
        // Pools of 100k and 500k tokens (a GPU's worth for this shape): 256 rows at 32k
        // cannot all be distinct there, but shared prefixes make them possible; the plan
        // widens partitions to stay within the scratch.
        for pool in [100_000usize, 500_000] {
            let layout = CacheLayout {
                num_blocks: pool / 16,
                block_size: 16,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            };
            let capacity = crate::kv::scratch_parts(&layout);
            let mut seqs = vec![(4096usize, 4096usize)];
            seqs.extend(std::iter::repeat_n((1, 32_768), 256));
            let plan = plan_splits(seqs.into_iter(), capacity, &mut Vec::new());
            assert!(plan.total_parts <= capacity, "{plan:?} > {capacity}");
            assert!(plan.part_size >= PARTITION_SIZE);
        }
    }

    /// Prompt logprobs of a 4,096-token prompt: logits a chunk at a time fit the reserve;
    /// the whole `[4096, vocab]` at once would not.
    #[test]
    fn prompt_logprobs_fit_because_they_come_in_chunks() {
        let cfg = llama3_8b();
        let reserve = reserve_bytes(&cfg, &budgets());
        let hidden = (4096 + 256) * cfg.hidden_size * ACT;
        let chunked = hidden + logits_bytes(&cfg, PROMPT_LOGPROB_CHUNK);
        assert!(chunked <= reserve, "{chunked} > {reserve}");
        let whole = logits_bytes(&cfg, 4096);
        assert!(
            whole > reserve,
            "the whole prompt's logits would fit: {whole}"
        );
    }

    /// Smaller budgets reserve less; the reserve grows with each budget.
    #[test]
    fn the_reserve_follows_the_budgets() {
        let cfg = llama3_8b();
        let small = SchedulerConfig {
            max_batch_prefill_tokens: 512,
            max_batch_size: 16,
            ..Default::default()
        };
        let r = |b: &SchedulerConfig| reserve_bytes(&cfg, b);
        assert!(r(&small) < r(&budgets()));
        let more_rows = SchedulerConfig {
            max_batch_size: 1024,
            ..budgets()
        };
        assert!(r(&more_rows) > r(&budgets()));
    }
}
