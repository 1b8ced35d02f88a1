//! The engine: sequences, the scheduler (which owns the one block pool), flattened
//! batches, the model runner (the model and the KV cache's storage) and the step loop
//! over them (`core`, with `placement`, `output` and `requests`), run on its own thread
//! behind an [`EngineHandle`] for the server or in place for the CLI and tests.

pub mod batch;
mod core;
pub mod generate;
pub mod handle;
mod masks;
pub mod memory;
mod output;
mod placement;
pub mod request;
mod requests;
pub mod runner;
pub mod scheduler;
pub mod sequence;
pub mod stats;

pub use batch::FlatBatch;
pub use core::EngineCore;
pub use generate::{generate_greedy, greedy_request, run_to_end, GenerateOutput};
pub use handle::{EngineConfig, EngineHandle, EventReceiver, FaultHook};
pub use request::{
    Completion, EngineError, Event, FinishReason, GeneratedToken, GenerationRequest,
    StoppingParams, Timings, TokenInfo,
};
pub use runner::{CacheConfig, ModelRunner};
pub use scheduler::{Scheduler, SchedulerConfig, SeqId, StepPlan};
pub use sequence::Sequence;
pub use stats::{EngineStats, MaskSnapshot, StatsSnapshot, MASK_BUCKETS_US};
