//! Transformer models. One file per architecture family; `llama` covers llama, mistral
//! and qwen2, which share the block structure. Each family has one layer loop on tensors
//! for every device; attention and its cache come through `backend::AttentionBackend`. `loader` turns a resolved model into
//! weights, a tokenizer and a config; `random` makes seeded random-weight models of named
//! shapes (`random:<shape>`).

pub mod backend;
pub mod config;
pub mod device;
pub mod linear;
pub mod llama;
pub mod loader;
pub mod random;

pub use backend::{AttentionBackend, ForwardBatch, StepInputs};
pub use config::{Arch, ModelConfig};
pub use device::select_device;
pub use llama::LlamaModel;
pub use loader::{load, load_tokenizer, LoadOptions, LoadedModel};
pub use random::{RandomShape, RandomSpec};
