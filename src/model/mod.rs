//! Transformer models. One file per architecture family; `llama` covers llama, mistral
//! and qwen2, which share the block structure. `loader` turns a resolved model into
//! weights, a tokenizer and a config.

pub mod config;
pub mod linear;
pub mod llama;
pub mod loader;

pub use config::{Arch, ModelConfig};
pub use llama::{Attention, ForwardBatch, LlamaModel};
pub use loader::{load, LoadOptions, LoadedModel};
