//! Transformer models. One file per architecture family, each reading top to bottom: its
//! block, its layer loop and its weight loading (`llama` covers llama, mistral, qwen2,
//! phi3 and mixtral, which share the block, phi3 with fused q/k/v and gate/up weights,
//! mixtral with a sparse mixture-of-experts MLP; `qwen3` adds per-head q/k norms, and
//! covers qwen3_moe likewise; `gemma2` has its own norms, soft-capping and alternating
//! windows, and covers gemma3 too, which adds per-head q/k norms and a second rope base).
//! The pieces they share (the embedding/norm/head around the blocks, the MLP, the q/k/v/o
//! projections, the call into attention, reading weights by name) are in `common`; the
//! mixture-of-experts MLP (router, top-k, grouped expert matmuls) in `moe`. Each
//! family has one layer loop on tensors for every device; attention and its cache come
//! through `backend::AttentionBackend`. [`Model`] is whichever family a checkpoint is.
//! `loader` turns a resolved model into weights, a tokenizer and a config; `random` makes
//! seeded random-weight models of named shapes (`random:<shape>`).
//!
//! A new family: its `Arch` and config keys in `config`, a file here with its block and
//! loop written with `common`'s pieces, and a variant of [`Model`].

pub mod backend;
mod common;
pub mod config;
pub mod device;
pub mod gemma2;
pub mod linear;
pub mod llama;
pub mod loader;
mod moe;
pub mod qwen3;
pub mod random;

use std::io::{Read, Seek};

use anyhow::Result;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use backend::{AttentionBackend, ForwardBatch, StepInputs};
pub use config::{Arch, ModelConfig};
pub use device::select_device;
pub use gemma2::Gemma2Model;
pub use llama::LlamaModel;
pub use loader::{load, load_tokenizer, LoadOptions, LoadedModel};
pub use qwen3::Qwen3Model;
pub use random::{RandomShape, RandomSpec};

use crate::ops::Rope;

/// A loaded model of any supported family.
#[derive(Debug)]
pub enum Model {
    /// llama, mistral, qwen2, phi3, mixtral.
    Llama(LlamaModel),
    /// qwen3, qwen3_moe.
    Qwen3(Qwen3Model),
    /// gemma2, gemma3 (text).
    Gemma2(Gemma2Model),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Model::Llama($m) => $e,
            Model::Qwen3($m) => $e,
            Model::Gemma2($m) => $e,
        }
    };
}

impl Model {
    /// Loads a GGUF file as the family its `general.architecture` names (`llama` with
    /// experts is Mixtral, `qwen3moe` Qwen3-MoE).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        Ok(match ModelConfig::from_gguf(content)?.arch {
            Arch::Qwen3 | Arch::Qwen3Moe => {
                Model::Qwen3(Qwen3Model::from_gguf(content, reader, device)?)
            }
            Arch::Gemma2 | Arch::Gemma3 => {
                Model::Gemma2(Gemma2Model::from_gguf(content, reader, device)?)
            }
            Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Phi3 | Arch::Mixtral => {
                Model::Llama(LlamaModel::from_gguf(content, reader, device)?)
            }
        })
    }

    /// Loads a Hugging Face safetensors checkpoint as the family of its config.
    pub fn from_safetensors(config: ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(match config.arch {
            Arch::Qwen3 | Arch::Qwen3Moe => Model::Qwen3(Qwen3Model::from_safetensors(config, vb)?),
            Arch::Gemma2 | Arch::Gemma3 => {
                Model::Gemma2(Gemma2Model::from_safetensors(config, vb)?)
            }
            Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Phi3 | Arch::Mixtral => {
                Model::Llama(LlamaModel::from_safetensors(config, vb)?)
            }
        })
    }

    /// What every family has around its blocks.
    fn base(&self) -> &common::Base {
        each!(self, m => m.base())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.base().config
    }

    pub fn device(&self) -> &Device {
        &self.base().device
    }

    /// The dtype a GPU KV cache for this model holds: the activations' dtype when it is
    /// 16-bit (bf16/f16 checkpoints), else f16 (GGUF models compute in f32 on the GPU).
    pub fn kv_dtype(&self) -> DType {
        self.base().kv_dtype()
    }

    /// The rotary embedding the attention backend applies.
    pub fn rope(&self) -> &Rope {
        &self.base().rope
    }

    /// Runs the batch; returns logits `[logits_rows.len(), vocab]` (f32).
    pub fn forward(
        &self,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        self.logits(&self.forward_hidden(batch, attn)?)
    }

    /// Logits (f32) of final hidden states `[rows, hidden]` (what
    /// [`Model::forward_hidden`] returns, or some of its rows).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        each!(self, m => m.logits(hidden))
    }

    /// Runs the batch up to the final norm; returns the hidden states of its
    /// `logits_rows`, `[logits_rows.len(), hidden]`, so that logits can be taken a few
    /// rows at a time. Activations stay on the model's device in the embedding's dtype
    /// (f32 on the CPU); q, k and v go to attention in the backend's dtype.
    pub fn forward_hidden(
        &self,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        each!(self, m => m.forward_hidden(batch, attn))
    }
}
