//! Paged KV cache: the block pool (free list and reference counts), per-sequence block
//! tables, and the per-layer cache storage the attention kernels read and write.

pub mod block_pool;
pub mod block_table;
pub mod cache;
#[cfg(feature = "cuda")]
pub mod device;
pub mod step_meta;

pub use block_pool::{block_hash, BlockHash, BlockId, BlockPool, PoolError};
pub use block_table::BlockTable;
pub use cache::{CacheLayout, KvCache};
#[cfg(feature = "cuda")]
pub use device::DeviceKvCache;

/// Default number of token slots per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// How layer `layer` attends, on the host cache and the device cache alike: its sliding
/// window (`windows[layer]`, or `fallback` for a layer past the list) and whether it rotates
/// by the model's local rope where the model has one (the layers with a window of their
/// own do: Gemma 3's sliding layers).
pub fn layer_attention(
    windows: &[Option<usize>],
    fallback: Option<usize>,
    layer: usize,
) -> (Option<usize>, bool) {
    match windows.get(layer) {
        Some(&w) => (w, w.is_some()),
        None => (fallback, false),
    }
}

/// Attention scratch partitions a GPU cache allocates for split decode rows
/// (`ops::launch::plan_splits`): one per `PARTITION_SIZE` tokens the cache holds, and
/// [`FIXED_SCRATCH_PARTS`] more for decode rows whose context ends inside a partition.
/// Decode rows that share no blocks fit it at the smallest partition size; shared prefixes
/// (forks, prefix hits) may make a step use larger partitions, never more scratch.
pub fn scratch_parts(layout: &CacheLayout) -> usize {
    layout.num_blocks * layout.block_size / crate::ops::launch::PARTITION_SIZE + FIXED_SCRATCH_PARTS
}

/// See [`scratch_parts`].
pub const FIXED_SCRATCH_PARTS: usize = 512;

/// Bytes of that scratch for `num_heads` query heads: f32 partial sums of `head_dim`
/// plus a maximum and a sum, per head and partition.
pub fn scratch_bytes(layout: &CacheLayout, num_heads: usize) -> usize {
    scratch_parts(layout) * scratch_bytes_per_part(num_heads, layout.head_dim)
}

/// Bytes of one scratch partition.
pub fn scratch_bytes_per_part(num_heads: usize, head_dim: usize) -> usize {
    num_heads * (head_dim + 2) * 4
}

#[cfg(test)]
mod layer_tests {
    use super::layer_attention;

    #[test]
    fn windowed_layers_take_the_local_rope() {
        // Gemma 2's pattern: a window on even layers.
        let w = [Some(4096), None, Some(4096), None];
        assert_eq!(layer_attention(&w, None, 0), (Some(4096), true));
        assert_eq!(layer_attention(&w, None, 1), (None, false));
        assert_eq!(layer_attention(&w, Some(7), 3), (None, false));
        // Past the list (a model-wide window, Mistral's): the fallback, the model's rope.
        assert_eq!(layer_attention(&[], Some(7), 5), (Some(7), false));
        assert_eq!(layer_attention(&[], None, 0), (None, false));
    }
}
