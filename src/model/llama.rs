//! The llama block family (llama, mistral, qwen2) over a flattened batch.
//!
//! Tokens of every sequence in a step are concatenated into one `[tokens, hidden]`
//! activation; matmuls see one tall matrix whatever the mix of prefill and decode. Only
//! attention looks at sequence boundaries, through the [`AttentionBackend`] (the paged KV
//! cache in host or GPU memory in serving, a contiguous reference in tests). The layer
//! loop is the same on every device.

use std::io::{Read, Seek};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::backend::{AttentionBackend, ForwardBatch};
use super::config::ModelConfig;
use super::linear::{Embedding, Linear};
use crate::ops::{Rope, RopeScaling};

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug)]
pub struct LlamaModel {
    config: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rope: Rope,
    device: Device,
}

impl LlamaModel {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype a GPU KV cache for this model holds: the activations' dtype when it is
    /// 16-bit (bf16/f16 checkpoints), else f16 (GGUF models compute in f32 on the GPU).
    pub fn kv_dtype(&self) -> DType {
        match self.embed.dtype() {
            DType::BF16 => DType::BF16,
            _ => DType::F16,
        }
    }

    /// The rotary embedding the attention backend applies.
    pub fn rope(&self) -> &Rope {
        &self.rope
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
    /// [`LlamaModel::forward_hidden`] returns, or some of its rows).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
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
        let cfg = &self.config;
        let n = batch.tokens.len();
        anyhow::ensure!(
            batch.positions.len() == n && batch.slots.len() == n,
            "batch has {n} tokens but {} positions and {} slots",
            batch.positions.len(),
            batch.slots.len()
        );
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            anyhow::bail!(
                "token id {bad} is outside the vocabulary ({})",
                cfg.vocab_size
            );
        }
        let eps = cfg.rms_norm_eps as f32;
        let inputs = attn.begin_step(batch, &self.rope)?;
        let kv_dtype = attn.dtype();
        let mut x = self.embed.forward(&inputs.token_ids)?;
        if self.device.is_cpu() {
            x = x.to_dtype(DType::F32)?;
        }
        let act = x.dtype();
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let qkv = Linear::forward_many(&[&b.q, &b.k, &b.v], &h)?;
            let (q, k, v) = (
                qkv[0].to_dtype(kv_dtype)?,
                qkv[1].to_dtype(kv_dtype)?,
                qkv[2].to_dtype(kv_dtype)?,
            );
            let a = attn.attend(layer, batch, &q, &k, &v)?.to_dtype(act)?;
            x = (x + b.o.forward(&a)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let gu = Linear::forward_many(&[&b.gate, &b.up], &h)?;
            let g = gu[0].silu()?;
            x = (x + b.down.forward(&(g * &gu[1])?)?)?;
        }
        let x = x.index_select(&inputs.logits_rows, 0)?;
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }

    /// Loads weights from a GGUF file (quantized matmuls stay quantized).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut config = ModelConfig::from_gguf(content)?;
        anyhow::ensure!(!config.qk_norm, "q/k norm (qwen3) is not implemented yet");
        let mut w = GgufWeights {
            content,
            reader,
            device,
        };
        let embed_q = w.qtensor("token_embd.weight")?;
        let qb = config.qkv_bias;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: w.dense(&format!("{p}.attn_norm.weight"))?,
                q: w.linear(&format!("{p}.attn_q"), qb)?,
                k: w.linear(&format!("{p}.attn_k"), qb)?,
                v: w.linear(&format!("{p}.attn_v"), qb)?,
                o: w.linear(&format!("{p}.attn_output"), false)?,
                ffn_norm: w.dense(&format!("{p}.ffn_norm.weight"))?,
                gate: w.linear(&format!("{p}.ffn_gate"), false)?,
                up: w.linear(&format!("{p}.ffn_up"), false)?,
                down: w.linear(&format!("{p}.ffn_down"), false)?,
            });
        }
        let norm = w.dense("output_norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            Linear::quantized(embed_q.clone(), None)?
        } else {
            w.linear("output", false)?
        };
        if content.tensor_infos.contains_key("rope_freqs.weight") {
            let factors = w.dense("rope_freqs.weight")?.to_vec1::<f32>()?;
            config.rope_scaling = RopeScaling::FreqFactors(factors);
        }
        let rope = Rope::new(
            config.head_dim,
            config.rope_theta,
            &config.rope_scaling,
            config.rope_style,
        );
        Ok(Self {
            embed: Embedding::Quantized(embed_q),
            blocks,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            config,
        })
    }

    /// Loads a Hugging Face safetensors checkpoint through a `VarBuilder`.
    pub fn from_safetensors(config: ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        anyhow::ensure!(!config.qk_norm, "q/k norm (qwen3) is not implemented yet");
        let device = vb.device().clone();
        let (h, nh, nkv, d, inter) = (
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            config.intermediate_size,
        );
        let lin = |vb: &VarBuilder<'_>,
                   name: &str,
                   out: usize,
                   inp: usize,
                   bias: bool|
         -> Result<Linear> {
            let vb = vb.pp(name);
            let w = vb.get((out, inp), "weight")?;
            let b = if bias {
                Some(vb.get(out, "bias")?)
            } else {
                None
            };
            Ok(Linear::dense(w, b))
        };
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").get((config.vocab_size, h), "weight")?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let l = m.pp(format!("layers.{i}"));
            let at = l.pp("self_attn");
            let mlp = l.pp("mlp");
            let qb = config.qkv_bias;
            blocks.push(Block {
                attn_norm: l.pp("input_layernorm").get(h, "weight")?,
                q: lin(&at, "q_proj", nh * d, h, qb)?,
                k: lin(&at, "k_proj", nkv * d, h, qb)?,
                v: lin(&at, "v_proj", nkv * d, h, qb)?,
                o: lin(&at, "o_proj", h, nh * d, false)?,
                ffn_norm: l.pp("post_attention_layernorm").get(h, "weight")?,
                gate: lin(&mlp, "gate_proj", inter, h, false)?,
                up: lin(&mlp, "up_proj", inter, h, false)?,
                down: lin(&mlp, "down_proj", h, inter, false)?,
            });
        }
        let norm = m.pp("norm").get(h, "weight")?;
        let lm_head = if config.tie_word_embeddings {
            Linear::dense(embed.clone(), None)
        } else {
            lin(&vb, "lm_head", config.vocab_size, h, false)?
        };
        let rope = Rope::new(
            d,
            config.rope_theta,
            &config.rope_scaling,
            config.rope_style,
        );
        Ok(Self {
            embed: Embedding::Dense(embed),
            blocks,
            norm,
            lm_head,
            rope,
            device,
            config,
        })
    }
}

/// Reads named tensors out of an open GGUF file.
struct GgufWeights<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
}

impl<R: Read + Seek> GgufWeights<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<Arc<QTensor>> {
        self.content
            .tensor(self.reader, name, self.device)
            .map(Arc::new)
            .with_context(|| format!("GGUF tensor '{name}' is missing or unreadable"))
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.device)?)
    }

    fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear> {
        let w = self.qtensor(&format!("{prefix}.weight"))?;
        let b = if bias {
            Some(self.dense(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Linear::quantized(w, b)?)
    }
}
