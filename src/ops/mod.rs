//! Device kernels the model calls between its matmuls: rotary embeddings, KV cache writes
//! and paged attention. The CPU versions are plain Rust over slices, run on wick's own
//! thread pool (`pool`: spin, then yield, then sleep). The CUDA versions (kernels/*.cu) are
//! launched by `cuda`, configured by `launch`, and run on the CPU for tests by `emu`.

pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod emu;
pub mod launch;
pub mod pool;
pub mod qmatmul;
pub mod qpacked;
pub mod rope;
pub mod simd;

pub use attention::{paged_attention, paged_attention_windowed, write_kv, AttnSeq};
pub use rope::{Rope, RopeScaling, RopeStyle, RopeTables};
