//! Gemma 2: the embedding scaled by `sqrt(hidden)`, RMSNorms that multiply by `1 + w`
//! (folded into the weights at load), a norm before and after both attention and the MLP,
//! a GeGLU MLP (tanh-approximated GELU), attention scores scaled by
//! `query_pre_attn_scalar^-1/2` and soft-capped, sliding-window attention on even layers
//! and global attention on odd ones, and soft-capped logits.
//!
//! Like [`super::llama`], one layer loop over a flattened batch for every device. The
//! score scale is applied to the queries (`q * sqrt(head_dim / query_pre_attn_scalar)`,
//! the backend dividing by `sqrt(head_dim)`, the host and the device cache alike); the
//! soft-cap and the per-layer windows are the attention backend's (the host cache's, or the
//! device cache's kernels).
//!
//! Gemma 3's text model (`Gemma3ForCausalLM`, `gemma3_text`) is this block with a `(1 + w)`
//! RMSNorm on each query and key head before rope, windows on all but every
//! `sliding_window_pattern`-th layer, and on the sliding layers a rope base of their own
//! (`rope_local_base_freq`, which the backend applies, on the host or the device:
//! `ModelConfig::local_rope`); it is loaded here as well.

use std::io::{Read, Seek};

use anyhow::Result;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::backend::{AttentionBackend, ForwardBatch};
use super::common::{add, attend, per_head_norm, rms_norm, Base, GgufWeights, Mlp, Projections};
use super::config::{Arch, ModelConfig};

#[derive(Debug)]
struct Block {
    /// Norm weights with the `1 +` folded in.
    attn_norm: Tensor,
    post_attn_norm: Tensor,
    attn: Projections,
    /// Gemma 3's per-head query and key norms (`[head_dim]`, `1 +` folded in).
    qk_norm: Option<(Tensor, Tensor)>,
    ffn_norm: Tensor,
    post_ffn_norm: Tensor,
    mlp: Mlp,
}

#[derive(Debug)]
pub struct Gemma2Model {
    base: Base,
    blocks: Vec<Block>,
}

/// `c * tanh(x / c)`.
fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    let cap = cap as f64;
    Ok(((x / cap)?.tanh()? * cap)?)
}

impl Gemma2Model {
    /// The embedding, final norm, head, rope and config around the blocks.
    pub(super) fn base(&self) -> &Base {
        &self.base
    }

    /// Logits (f32) of final hidden states `[rows, hidden]`, soft-capped.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.base.logits(hidden)?;
        match self.base.config.final_logit_softcap {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// Runs the batch up to the final norm; returns the hidden states of its
    /// `logits_rows` (see [`super::LlamaModel::forward_hidden`]).
    pub fn forward_hidden(
        &self,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let cfg = &self.base.config;
        let eps = cfg.rms_norm_eps as f32;
        let q_scale = cfg
            .query_pre_attn_scalar
            .map_or(1.0, |s| (cfg.head_dim as f64 / s as f64).sqrt());
        let (x, inputs) = self.base.begin(batch, attn)?;
        let act = x.dtype();
        let mut x = (x * (cfg.hidden_size as f64).sqrt())?;
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, eps)?;
            let (q, k, v) = b.attn.qkv(&h)?;
            let (q, k) = match &b.qk_norm {
                Some((qn, kn)) => (
                    per_head_norm(&q, qn, cfg.head_dim, eps)?,
                    per_head_norm(&k, kn, cfg.head_dim, eps)?,
                ),
                None => (q, k),
            };
            let q = (q * q_scale)?;
            let a = attend(attn, layer, batch, (q, k, v), act)?;
            let a = rms_norm(&b.attn.o.forward(&a)?, &b.post_attn_norm, eps)?;
            x = add(&x, &a)?;
            let h = rms_norm(&x, &b.ffn_norm, eps)?;
            let m = rms_norm(&b.mlp.forward(&h)?, &b.post_ffn_norm, eps)?;
            x = add(&x, &m)?;
        }
        self.base.finish(&x, &inputs)
    }

    /// Loads llama.cpp's `gemma2` or `gemma3` GGUF. Its converter has already added 1 to
    /// every norm weight (`attn_norm`, `post_attention_norm`, `ffn_norm`, `post_ffw_norm`,
    /// gemma3's `attn_{q,k}_norm`, `output_norm`), so they are taken as they are; the
    /// hyperparameters llama.cpp fixes itself are in `ModelConfig::gguf_gemma`.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(content)?;
        anyhow::ensure!(
            matches!(config.arch, Arch::Gemma2 | Arch::Gemma3),
            "a {} model is not gemma2 or gemma3",
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
                let mut norm = |n: &str| w.dense(&format!("{p}.{n}.weight"));
                let qk_norm = if config.qk_norm {
                    Some((norm("attn_q_norm")?, norm("attn_k_norm")?))
                } else {
                    None
                };
                Ok(Block {
                    attn_norm: norm("attn_norm")?,
                    post_attn_norm: norm("post_attention_norm")?,
                    ffn_norm: norm("ffn_norm")?,
                    post_ffn_norm: norm("post_ffw_norm")?,
                    qk_norm,
                    attn: Projections::from_gguf(&mut w, &p, &config)?,
                    mlp: Mlp::from_gguf(&mut w, &p, &config)?,
                })
            })
            .collect::<Result<_>>()?;
        let base = Base::from_gguf(config, &mut w)?;
        Ok(Self { base, blocks })
    }

    /// Loads a Hugging Face `Gemma2ForCausalLM` or `Gemma3ForCausalLM` checkpoint through
    /// a `VarBuilder`.
    pub fn from_safetensors(config: ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        anyhow::ensure!(
            matches!(config.arch, Arch::Gemma2 | Arch::Gemma3),
            "a {} model is not gemma2 or gemma3",
            config.arch.as_str()
        );
        let (h, d) = (config.hidden_size, config.head_dim);
        let norm =
            |vb: VarBuilder<'_>, n: usize| -> Result<Tensor> { Ok((vb.get(n, "weight")? + 1.0)?) };
        let blocks = (0..config.num_layers)
            .map(|i| {
                let l = vb.pp(format!("model.layers.{i}"));
                let at = l.pp("self_attn");
                let qk_norm = if config.qk_norm {
                    Some((norm(at.pp("q_norm"), d)?, norm(at.pp("k_norm"), d)?))
                } else {
                    None
                };
                Ok(Block {
                    attn_norm: norm(l.pp("input_layernorm"), h)?,
                    post_attn_norm: norm(l.pp("post_attention_layernorm"), h)?,
                    attn: Projections::from_safetensors(&at, &config)?,
                    qk_norm,
                    ffn_norm: norm(l.pp("pre_feedforward_layernorm"), h)?,
                    post_ffn_norm: norm(l.pp("post_feedforward_layernorm"), h)?,
                    mlp: Mlp::from_safetensors(&l.pp("mlp"), &config)?,
                })
            })
            .collect::<Result<_>>()?;
        let mut base = Base::from_safetensors(config, &vb)?;
        base.norm = (&base.norm + 1.0)?;
        Ok(Self { base, blocks })
    }
}
