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

/// An output slice seen as not yet written, for the kernels that write every element of
/// theirs (`matmul_many_uninit`); they store only initialized floats, so the slice stays
/// valid `f32`s.
pub fn as_uninit(out: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: same layout; writes through the result are of initialized f32s only.
    unsafe { &mut *(out as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}
