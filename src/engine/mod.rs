//! The engine: sequences, flattened batches and the model runner that owns the model, the
//! KV cache and its block pool. The continuous-batching scheduler builds on these.

pub mod batch;
mod core;
pub mod generate;
pub mod handle;
pub mod memory;
pub mod request;
pub mod runner;
pub mod scheduler;
pub mod sequence;
pub mod stats;

pub use batch::FlatBatch;
pub use generate::{generate_greedy, GenerateOutput};
pub use handle::{EngineConfig, EngineHandle, EventReceiver, FaultHook};
pub use request::{
    Completion, EngineError, Event, FinishReason, GeneratedToken, GenerationRequest,
    StoppingParams, Timings, TokenInfo,
};
pub use runner::{CacheConfig, ModelRunner};
pub use scheduler::{Scheduler, SchedulerConfig, SeqId, StepPlan};
pub use sequence::Sequence;
pub use stats::StatsSnapshot;
