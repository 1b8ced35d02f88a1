//! Device kernels the model calls between its matmuls: rotary embeddings, KV cache writes
//! and paged attention. The CPU versions are plain Rust over slices, run on candle's barrier
//! thread pool (spinning workers, as llama.cpp's), the same threads candle's ops use.

pub mod attention;
pub mod qmatmul;
pub mod rope;
pub mod simd;

pub use attention::{paged_attention, write_kv, AttnSeq};
pub use rope::{Rope, RopeScaling, RopeStyle};
