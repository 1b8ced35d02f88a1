//! Qwen3: the llama block with an RMSNorm on each head of the queries and keys, applied
//! before rope, and no q/k/v biases. Qwen3-MoE is the same block with a sparse mixture of
//! SwiGLU experts as the MLP ([`super::moe`]) on all but its dense layers.
//!
//! Like [`super::llama`], one layer loop over a flattened batch for every device; the
//! per-head norms are tensor ops on `[tokens, heads, head_dim]` views.

use std::io::{Read, Seek};

use anyhow::Result;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::backend::{AttentionBackend, ForwardBatch};
use super::common::{add, attend, per_head_norm, rms_norm, Base, GgufWeights, Projections};
use super::config::{Arch, ModelConfig};
use super::moe::FeedForward;

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    attn: Projections,
    /// `[head_dim]`, shared by every query head.
    q_norm: Tensor,
    /// `[head_dim]`, shared by every key head.
    k_norm: Tensor,
    ffn_norm: Tensor,
    mlp: FeedForward,
}

#[derive(Debug)]
pub struct Qwen3Model {
    base: Base,
    blocks: Vec<Block>,
}

impl Qwen3Model {
    /// The embedding, final norm, head, rope and config around the blocks.
    pub(super) fn base(&self) -> &Base {
        &self.base
    }

    /// Logits (f32) of final hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.base.logits(hidden)
    }

    /// Runs the batch up to the final norm; returns the hidden states of its
    /// `logits_rows` (see [`super::LlamaModel::forward_hidden`]).
    pub fn forward_hidden(
        &self,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let (eps, d) = (
            self.base.config.rms_norm_eps as f32,
            self.base.config.head_dim,
        );
        let (mut x, inputs) = self.base.begin(batch, attn)?;
        let act = x.dtype();
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, eps)?;
            let (q, k, v) = b.attn.qkv(&h)?;
            let q = per_head_norm(&q, &b.q_norm, d, eps)?;
            let k = per_head_norm(&k, &b.k_norm, d, eps)?;
            let a = attend(attn, layer, batch, (q, k, v), act)?;
            x = add(&x, &b.attn.o.forward(&a)?)?;
            let h = rms_norm(&x, &b.ffn_norm, eps)?;
            x = add(&x, &b.mlp.forward(&h)?)?;
        }
        self.base.finish(&x, &inputs)
    }

    /// Loads weights from a GGUF file (llama.cpp's `qwen3` and `qwen3moe` architectures).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        anyhow::ensure!(
            matches!(config.arch, Arch::Qwen3 | Arch::Qwen3Moe),
            "a {} model is not qwen3",
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
                    q_norm: w.dense(&format!("{p}.attn_q_norm.weight"))?,
                    k_norm: w.dense(&format!("{p}.attn_k_norm.weight"))?,
                    ffn_norm: w.dense(&format!("{p}.ffn_norm.weight"))?,
                    mlp: FeedForward::from_gguf(&mut w, &p, &config, i)?,
                })
            })
            .collect::<Result<_>>()?;
        let base = Base::from_gguf(config, &mut w)?;
        Ok(Self { base, blocks })
    }

    /// Loads a Hugging Face `Qwen3ForCausalLM` checkpoint through a `VarBuilder`.
    pub fn from_safetensors(config: ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        anyhow::ensure!(
            matches!(config.arch, Arch::Qwen3 | Arch::Qwen3Moe),
            "a {} model is not qwen3",
            config.arch.as_str()
        );
        let (h, d) = (config.hidden_size, config.head_dim);
        let blocks = (0..config.num_layers)
            .map(|i| {
                let l = vb.pp(format!("model.layers.{i}"));
                let at = l.pp("self_attn");
                Ok(Block {
                    attn_norm: l.pp("input_layernorm").get(h, "weight")?,
                    attn: Projections::from_safetensors(&at, &config)?,
                    q_norm: at.pp("q_norm").get(d, "weight")?,
                    k_norm: at.pp("k_norm").get(d, "weight")?,
                    ffn_norm: l.pp("post_attention_layernorm").get(h, "weight")?,
                    mlp: FeedForward::from_safetensors(&l.pp("mlp"), &config, i)?,
                })
            })
            .collect::<Result<_>>()?;
        let base = Base::from_safetensors(config, &vb)?;
        Ok(Self { base, blocks })
    }
}
