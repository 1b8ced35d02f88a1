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
