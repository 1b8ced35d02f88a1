//! What a model's forward pass needs from where the K/V live.
//!
//! A family's layer loop is written once, on tensors (candle-transformers' shape: norm,
//! projections, attention, residual, MLP), and runs unchanged on every device. The one
//! part that differs is attention with its cache: rotating the new queries and keys,
//! writing the keys and values into the paged cache, and attending each query row to its
//! sequence's context. That is an [`AttentionBackend`]; each lives beside its cache in
//! `kv` (`kv::cache` for host memory with wick's CPU kernels, `kv::device` for GPU memory
//! with `kernels/*.cu`).

use anyhow::Result;
use candle_core::{DType, Tensor};

use crate::ops::{AttnSeq, Rope};

/// One step's flattened batch.
#[derive(Debug, Clone, Copy)]
pub struct ForwardBatch<'a> {
    /// New token ids of every sequence, concatenated.
    pub tokens: &'a [u32],
    /// Position of each new token in its sequence.
    pub positions: &'a [u32],
    /// Cache slot each new token's K/V is written to.
    pub slots: &'a [u32],
    /// Per sequence: its query rows, context length and block table.
    pub seqs: &'a [AttnSeq<'a>],
    /// Rows of the batch whose logits are wanted (usually each sequence's last token).
    pub logits_rows: &'a [u32],
}

/// A step's token ids and logits rows on the model's device, where the backend put them
/// (on a GPU: views of the step's one upload).
#[derive(Debug, Clone)]
pub struct StepInputs {
    /// `[tokens]` u32.
    pub token_ids: Tensor,
    /// `[logits rows]` u32: the rows whose final hidden states are kept.
    pub logits_rows: Tensor,
}

impl StepInputs {
    /// The batch's token ids and logits rows in host memory (the CPU backends').
    pub fn on_host(batch: &ForwardBatch<'_>) -> Result<Self> {
        let cpu = &candle_core::Device::Cpu;
        Ok(Self {
            token_ids: Tensor::from_slice(batch.tokens, batch.tokens.len(), cpu)?,
            logits_rows: Tensor::from_slice(batch.logits_rows, batch.logits_rows.len(), cpu)?,
        })
    }
}

/// Attention over a paged KV cache, for one forward pass at a time.
pub trait AttentionBackend {
    /// The dtype `attend` takes q, k and v in (and returns its output in).
    fn dtype(&self) -> DType;

    /// Called once per forward pass, before the first layer, with the model's rotary
    /// embedding: the backend checks the batch against its cache, prepares what every
    /// layer shares (rope tables, the step's metadata on the device) and returns the
    /// step's inputs on the device.
    fn begin_step(&mut self, batch: &ForwardBatch<'_>, rope: &Rope) -> Result<StepInputs>;

    /// One layer: rotates `q` (`[tokens, heads * head_dim]`) and `k`
    /// (`[tokens, kv_heads * head_dim]`) at the batch's positions, writes `k` and `v` into
    /// layer `layer`'s cache at the batch's slots, and attends every query row to its
    /// sequence's context (causal within the new rows). Returns
    /// `[tokens, heads * head_dim]`.
    fn attend(
        &mut self,
        layer: usize,
        batch: &ForwardBatch<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor>;
}
