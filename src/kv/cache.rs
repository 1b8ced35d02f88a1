//! Per-layer K/V storage in fixed-size blocks.
//!
//! Layout of one layer's V: `[num_blocks][num_kv_heads][block_size][head_dim]`; of its K:
//! `[num_blocks][num_kv_heads][head_dim][block_size]` (each block's keys transposed, so
//! attention scores for a block's keys build up lane by lane with no horizontal sums).
//! Either way one head's part of a block is contiguous: the attention loop streams through
//! it without gathering a sequence's cache into a contiguous copy. Values are
//! stored as f16 (llama.cpp's and vLLM's default), halving the cache's memory and bandwidth.

use half::f16;

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
}

impl KvCache {
    pub fn new(num_layers: usize, layout: CacheLayout) -> Self {
        let layers = (0..num_layers)
            .map(|_| LayerCache {
                k: zeroed(layout.layer_len()),
                v: zeroed(layout.layer_len()),
            })
            .collect();
        Self { layout, layers }
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
