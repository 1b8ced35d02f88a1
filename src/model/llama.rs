//! The llama family (llama, mistral, qwen2, phi3, mixtral): pre-norm blocks of attention
//! (q/k/v biases for qwen2) and a SwiGLU MLP, over a flattened batch. Phi-3/Phi-4 have the
//! same block with q/k/v in one matrix and gate/up in another (read as such, split after
//! the matmul: [`super::common`]), and may rotate only part of each head. Mixtral has the
//! same block with a sparse mixture of SwiGLU experts as its MLP ([`super::moe`], weights
//! under `block_sparse_moe`).
//!
//! Tokens of every sequence in a step are concatenated into one `[tokens, hidden]`
//! activation; matmuls see one tall matrix whatever the mix of prefill and decode. Only
//! attention looks at sequence boundaries, through the [`AttentionBackend`] (the paged KV
//! cache in host or GPU memory in serving, a contiguous reference in tests). The layer
//! loop is the same on every device.

use std::io::{Read, Seek};

use anyhow::Result;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::backend::{AttentionBackend, ForwardBatch};
use super::common::{add, attend, rms_norm, Base, GgufWeights, Projections};
use super::config::{Arch, ModelConfig};
use super::moe::FeedForward;

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    attn: Projections,
    ffn_norm: Tensor,
    mlp: FeedForward,
}

#[derive(Debug)]
pub struct LlamaModel {
    base: Base,
    blocks: Vec<Block>,
}

impl LlamaModel {
    /// The embedding, final norm, head, rope and config around the blocks.
    pub(super) fn base(&self) -> &Base {
        &self.base
    }

    /// Logits (f32) of final hidden states `[rows, hidden]` (what
    /// [`LlamaModel::forward_hidden`] returns, or some of its rows).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.base.logits(hidden)
    }

    /// Runs the batch up to the final norm; returns the hidden states of its `logits_rows`,
    /// `[logits_rows.len(), hidden]`, so that logits can be taken a few rows at a time.
    /// Activations stay on the model's device in the embedding's dtype (f32 on the CPU);
    /// q, k and v go to attention in the backend's dtype.
    pub fn forward_hidden(
        &self,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let eps = self.base.config.rms_norm_eps as f32;
        let (mut x, inputs) = self.base.begin(batch, attn)?;
        let act = x.dtype();
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, eps)?;
            let a = attend(attn, layer, batch, b.attn.qkv(&h)?, act)?;
            x = add(&x, &b.attn.o.forward(&a)?)?;
            let h = rms_norm(&x, &b.ffn_norm, eps)?;
            x = add(&x, &b.mlp.forward(&h)?)?;
        }
        self.base.finish(&x, &inputs)
    }

    /// Loads weights from a GGUF file (quantized matmuls stay quantized).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        anyhow::ensure!(
            !config.qk_norm,
            "a {} model is not of the llama family",
            config.arch.as_str()
        );
        let mut w = GgufWeights {
            content,
            reader,
            device,
        };
        let blocks = (0..config.num_layers)
            .map(|i| {
                let p = format!("blk.{i}");
                Ok(Block {
                    attn_norm: w.dense(&format!("{p}.attn_norm.weight"))?,
                    attn: Projections::from_gguf(&mut w, &p, &config)?,
                    ffn_norm: w.dense(&format!("{p}.ffn_norm.weight"))?,
                    mlp: FeedForward::from_gguf(&mut w, &p, &config, i)?,
                })
            })
            .collect::<Result<_>>()?;
        let base = Base::from_gguf(config, &mut w)?;
        Ok(Self { base, blocks })
    }

    /// Loads a Hugging Face safetensors checkpoint through a `VarBuilder`.
    pub fn from_safetensors(config: ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        anyhow::ensure!(
            !config.qk_norm,
            "a {} model is not of the llama family",
            config.arch.as_str()
        );
        let h = config.hidden_size;
        let blocks = (0..config.num_layers)
            .map(|i| {
                let l = vb.pp(format!("model.layers.{i}"));
                // Mixtral's experts: `block_sparse_moe` per expert as saved, `mlp` when
                // fused as transformers 5 holds them.
                let mlp = match config.arch {
                    Arch::Mixtral if !l.contains_tensor("mlp.experts.gate_up_proj") => {
                        "block_sparse_moe"
                    }
                    _ => "mlp",
                };
                Ok(Block {
                    attn_norm: l.pp("input_layernorm").get(h, "weight")?,
                    attn: Projections::from_safetensors(&l.pp("self_attn"), &config)?,
                    ffn_norm: l.pp("post_attention_layernorm").get(h, "weight")?,
                    mlp: FeedForward::from_safetensors(&l.pp(mlp), &config, i)?,
                })
            })
            .collect::<Result<_>>()?;
        let base = Base::from_safetensors(config, &vb)?;
        Ok(Self { base, blocks })
    }
}
