//! The engine: sequences, flattened batches and the model runner that owns the model, the
//! KV cache and its block pool. The continuous-batching scheduler builds on these.

pub mod batch;
pub mod generate;
pub mod runner;
pub mod sequence;

pub use batch::FlatBatch;
pub use generate::{generate_greedy, GenerateOutput};
pub use runner::{CacheConfig, ModelRunner};
pub use sequence::Sequence;
