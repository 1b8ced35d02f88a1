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
