//! Transformer models. One file per architecture family; `llama` covers llama, mistral
//! and qwen2, which share the block structure. `loader` turns a resolved model into
//! weights, a tokenizer and a config; `random` makes seeded random-weight models of named
//! shapes (`random:<shape>`).

pub mod config;
pub mod device;
pub mod linear;
pub mod llama;
pub mod loader;
pub mod random;

pub use config::{Arch, ModelConfig};
pub use device::select_device;
pub use llama::{Attention, ForwardBatch, LlamaModel};
pub use loader::{load, load_tokenizer, LoadOptions, LoadedModel};
pub use random::{RandomShape, RandomSpec};
