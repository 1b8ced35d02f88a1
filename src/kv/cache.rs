//! Per-layer K/V storage in fixed-size blocks.
//!
//! Layout of one layer's V: `[num_blocks][num_kv_heads][block_size][head_dim]`; of its K:
//! `[num_blocks][num_kv_heads][head_dim][block_size]` (each block's keys transposed, so
//! attention scores for a block's keys build up lane by lane with no horizontal sums).
//! Either way one head's part of a block is contiguous: the attention loop streams through
//! it without gathering a sequence's cache into a contiguous copy. Values are
//! stored as f16 (llama.cpp's and vLLM's default), halving the cache's memory and bandwidth.
//!
//! [`KvCache`] is also the host [`AttentionBackend`]: rope, cache writes and paged
//! attention by wick's CPU kernels (`ops`), on f32 activations.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use half::f16;

use crate::model::{AttentionBackend, ForwardBatch, StepInputs};
use crate::ops::{self, Rope, RopeTables};

/// Shape of the cache, shared by every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLayout {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl CacheLayout {
    /// Floats per layer for K (and again for V).
    pub fn layer_len(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Offset of (slot, kv head) in a layer's V buffer (in K, the same block region holds
    /// the keys transposed: component `c` of the key at `slot` is at
    /// `block_offset + c * block_size + slot % block_size`).
    #[inline]
    pub fn offset(&self, slot: usize, kv_head: usize) -> usize {
        let block = slot / self.block_size;
        let within = slot % self.block_size;
        ((block * self.num_kv_heads + kv_head) * self.block_size + within) * self.head_dim
    }

    /// Offset of the first key of `kv_head` in `block`.
    #[inline]
    pub fn block_offset(&self, block: usize, kv_head: usize) -> usize {
        (block * self.num_kv_heads + kv_head) * self.block_size * self.head_dim
    }

    /// Bytes needed per token slot across `num_layers` layers (K and V).
    pub fn bytes_per_token(num_layers: usize, num_kv_heads: usize, head_dim: usize) -> usize {
        2 * num_layers * num_kv_heads * head_dim * std::mem::size_of::<f16>()
    }
}

/// K and V buffers of one layer.
#[derive(Debug)]
pub struct LayerCache {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

/// A zeroed buffer from the allocator's zeroed pages: untouched blocks cost no resident
/// memory.
fn zeroed(len: usize) -> Vec<f16> {
    use half::vec::HalfBitsVecExt;
    vec![0u16; len].reinterpret_into()
}

/// The paged cache of every layer (host memory).
#[derive(Debug)]
pub struct KvCache {
    layout: CacheLayout,
    layers: Vec<LayerCache>,
    /// The model's rope and this step's tables (set by `begin_step`).
    rope: Option<(Rope, RopeTables)>,
    /// Keys a query attends to at most (the model's sliding window), if limited: one
    /// window for every layer, or per layer where `layer_windows` is not empty.
    sliding_window: Option<usize>,
    layer_windows: Vec<Option<usize>>,
    /// Attention logit soft-capping (Gemma 2), if any.
    softcap: Option<f32>,
    /// The rope of the layers with a window of their own (`layer_windows[layer]` is
    /// `Some`) where it is not the model's (Gemma 3's local base), and this step's tables.
    local_rope: Option<(Rope, RopeTables)>,
}

impl KvCache {
    pub fn new(num_layers: usize, layout: CacheLayout) -> Self {
        let layers = (0..num_layers)
            .map(|_| LayerCache {
                k: zeroed(layout.layer_len()),
                v: zeroed(layout.layer_len()),
            })
            .collect();
        Self {
            layout,
            layers,
            rope: None,
            sliding_window: None,
            layer_windows: Vec::new(),
            softcap: None,
            local_rope: None,
        }
    }

    /// Limits attention to the last `window` keys of each query (the model's
    /// `sliding_window`); `None`: the whole context.
    pub fn with_sliding_window(mut self, window: Option<usize>) -> Self {
        self.sliding_window = window;
        self
    }

    /// Each layer's window (`windows[layer]`, for models that alternate sliding and
    /// global layers) and the attention logit soft-cap.
    pub fn with_layer_attention(
        mut self,
        windows: Vec<Option<usize>>,
        softcap: Option<f32>,
    ) -> Self {
        self.layer_windows = windows;
        self.softcap = softcap;
        self
    }

    /// Rotates the sliding-window layers' queries and keys by `rope` rather than by the
    /// model's rope of `begin_step` (Gemma 3's local rope base); `None`: every layer by
    /// the model's.
    pub fn with_local_rope(mut self, rope: Option<Rope>) -> Self {
        self.local_rope = rope.map(|r| {
            (
                r,
                RopeTables {
                    cos: Vec::new(),
                    sin: Vec::new(),
                },
            )
        });
        self
    }

    pub fn layout(&self) -> &CacheLayout {
        &self.layout
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layer(&self, i: usize) -> &LayerCache {
        &self.layers[i]
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    pub fn size_in_bytes(&self) -> usize {
        self.layers.len() * 2 * self.layout.layer_len() * std::mem::size_of::<f16>()
    }
}

impl KvCache {
    /// Copies the K/V of every layer from block `src` to block `dst`.
    pub fn copy_block(&mut self, src: usize, dst: usize) {
        let l = self.layout;
        let len = l.num_kv_heads * l.block_size * l.head_dim;
        let (s, d) = (l.block_offset(src, 0), l.block_offset(dst, 0));
        for layer in &mut self.layers {
            layer.k.copy_within(s..s + len, d);
            layer.v.copy_within(s..s + len, d);
        }
    }
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl AttentionBackend for KvCache {
    fn dtype(&self) -> DType {
        DType::F32
    }

    fn begin_step(&mut self, batch: &ForwardBatch<'_>, rope: &Rope) -> Result<StepInputs> {
        match &mut self.rope {
            Some((_, tables)) => rope.tables_into(batch.positions, tables),
            None => self.rope = Some((rope.clone(), rope.tables(batch.positions))),
        }
        if let Some((local, tables)) = &mut self.local_rope {
            local.tables_into(batch.positions, tables);
        }
        StepInputs::on_host(batch)
    }

    fn attend(
        &mut self,
        layer: usize,
        batch: &ForwardBatch<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let layout = self.layout;
        let (window, local) =
            super::layer_attention(&self.layer_windows, self.sliding_window, layer);
        let (rope, tables) = match &self.local_rope {
            Some(local_rope) if local => local_rope,
            _ => self.rope.as_ref().context("attend before begin_step")?,
        };
        let cache = self
            .layers
            .get_mut(layer)
            .with_context(|| format!("layer {layer} is outside the cache"))?;
        let (tokens, d, nkv) = (batch.tokens.len(), layout.head_dim, layout.num_kv_heads);
        let num_heads = q.dim(1)? / d;
        let (mut q, mut k, v) = (to_f32_vec(q)?, to_f32_vec(k)?, to_f32_vec(v)?);
        anyhow::ensure!(
            q.len() == tokens * num_heads * d && k.len() == tokens * nkv * d && v.len() == k.len(),
            "q/k/v do not match {tokens} tokens of {num_heads}/{nkv} heads of {d}"
        );
        rope.apply(&mut q, num_heads, tables);
        rope.apply(&mut k, nkv, tables);
        ops::write_kv(&layout, &mut cache.k, &mut cache.v, &k, &v, batch.slots);
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; tokens * num_heads * d];
        ops::paged_attention_windowed(
            &layout,
            &cache.k,
            &cache.v,
            &q,
            num_heads,
            batch.seqs,
            scale,
            window,
            self.softcap,
            &mut out,
        );
        Ok(Tensor::from_vec(
            out,
            (tokens, num_heads * d),
            &candle_core::Device::Cpu,
        )?)
    }
}
