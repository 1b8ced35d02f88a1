//! The pieces the families share: the embedding, final norm and output head around the
//! blocks ([`Base`]), the SwiGLU MLP ([`Mlp`]), the q/k/v/o projections ([`Projections`]),
//! the call into the attention backend ([`attend`]), and reading weights by name from a
//! safetensors `VarBuilder` or a GGUF file. A family's file holds its block and its layer
//! loop, written with these.

use std::io::{Read, Seek};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::backend::{AttentionBackend, ForwardBatch, StepInputs};
use super::config::ModelConfig;
use super::linear::{Embedding, Linear};
use crate::ops::{Rope, RopeScaling};

/// RMS norm over the last dimension.
pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, weight, eps)?)
}

/// What surrounds the blocks: token embedding, final norm, output head and rotary
/// embedding, with the model's config and device.
#[derive(Debug)]
pub(super) struct Base {
    pub config: ModelConfig,
    pub embed: Embedding,
    pub norm: Tensor,
    pub lm_head: Linear,
    pub rope: Rope,
    pub device: Device,
}

impl Base {
    fn new(
        config: ModelConfig,
        embed: Embedding,
        norm: Tensor,
        lm_head: Linear,
        device: &Device,
    ) -> Self {
        let rope = Rope::new(
            config.head_dim,
            config.rope_theta,
            &config.rope_scaling,
            config.rope_style,
        );
        Self {
            config,
            embed,
            norm,
            lm_head,
            rope,
            device: device.clone(),
        }
    }

    /// The dtype a GPU KV cache for this model holds: the activations' dtype when it is
    /// 16-bit (bf16/f16 checkpoints), else f16 (GGUF models compute in f32 on the GPU).
    pub fn kv_dtype(&self) -> DType {
        match self.embed.dtype() {
            DType::BF16 => DType::BF16,
            _ => DType::F16,
        }
    }

    /// Checks the batch, starts the backend's step and embeds the tokens: the first
    /// residual stream `[tokens, hidden]` (f32 on the CPU) and the step's inputs.
    pub fn begin(
        &self,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<(Tensor, StepInputs)> {
        let n = batch.tokens.len();
        anyhow::ensure!(
            batch.positions.len() == n && batch.slots.len() == n,
            "batch has {n} tokens but {} positions and {} slots",
            batch.positions.len(),
            batch.slots.len()
        );
        let vocab = self.config.vocab_size;
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("token id {bad} is outside the vocabulary ({vocab})");
        }
        let inputs = attn.begin_step(batch, &self.rope)?;
        let mut x = self.embed.forward(&inputs.token_ids)?;
        if self.device.is_cpu() {
            x = x.to_dtype(DType::F32)?;
        }
        Ok((x, inputs))
    }

    /// The final norm of the rows whose logits are wanted.
    pub fn finish(&self, x: &Tensor, inputs: &StepInputs) -> Result<Tensor> {
        let x = x.index_select(&inputs.logits_rows, 0)?;
        rms_norm(&x, &self.norm, self.config.rms_norm_eps as f32)
    }

    /// Logits (f32) of final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// Embedding, final norm and head of a Hugging Face checkpoint.
    pub fn from_safetensors(config: ModelConfig, vb: &VarBuilder<'_>) -> Result<Self> {
        let h = config.hidden_size;
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").get((config.vocab_size, h), "weight")?;
        let norm = m.pp("norm").get(h, "weight")?;
        let lm_head = if config.tie_word_embeddings {
            Linear::dense(embed.clone(), None)
        } else {
            st_linear(vb, "lm_head", config.vocab_size, h, false)?
        };
        let device = vb.device().clone();
        Ok(Self::new(
            config,
            Embedding::Dense(embed),
            norm,
            lm_head,
            &device,
        ))
    }

    /// Embedding, final norm and head of a GGUF file (with llama.cpp's `rope_freqs`
    /// frequency factors when present).
    pub fn from_gguf<R: Read + Seek>(
        mut config: ModelConfig,
        w: &mut GgufWeights<'_, R>,
    ) -> Result<Self> {
        let embed = w.qtensor("token_embd.weight")?;
        let norm = w.dense("output_norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            Linear::quantized(embed.clone(), None)?
        } else {
            w.linear("output", false)?
        };
        if w.has("rope_freqs.weight") {
            let factors = w.dense("rope_freqs.weight")?.to_vec1::<f32>()?;
            config.rope_scaling = RopeScaling::FreqFactors(factors);
        }
        let device = w.device.clone();
        Ok(Self::new(
            config,
            Embedding::Quantized(embed),
            norm,
            lm_head,
            &device,
        ))
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub(super) struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = Linear::forward_many(&[&self.gate, &self.up], x)?;
        Ok(self.down.forward(&(gu[0].silu()? * &gu[1])?)?)
    }

    /// `<vb>.{gate,up,down}_proj`.
    pub fn from_safetensors(vb: &VarBuilder<'_>, cfg: &ModelConfig) -> Result<Self> {
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: st_linear(vb, "gate_proj", inter, h, false)?,
            up: st_linear(vb, "up_proj", inter, h, false)?,
            down: st_linear(vb, "down_proj", h, inter, false)?,
        })
    }

    /// `<prefix>.ffn_{gate,up,down}`.
    pub fn from_gguf<R: Read + Seek>(w: &mut GgufWeights<'_, R>, prefix: &str) -> Result<Self> {
        Ok(Self {
            gate: w.linear(&format!("{prefix}.ffn_gate"), false)?,
            up: w.linear(&format!("{prefix}.ffn_up"), false)?,
            down: w.linear(&format!("{prefix}.ffn_down"), false)?,
        })
    }
}

/// The attention projections: q, k, v (with biases where `cfg.qkv_bias`) and o.
#[derive(Debug)]
pub(super) struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    pub o: Linear,
}

impl Projections {
    /// q `[tokens, heads * head_dim]`, k and v `[tokens, kv_heads * head_dim]`.
    pub fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mut qkv = Linear::forward_many(&[&self.q, &self.k, &self.v], x)?.into_iter();
        match (qkv.next(), qkv.next(), qkv.next()) {
            (Some(q), Some(k), Some(v)) => Ok((q, k, v)),
            _ => anyhow::bail!("q/k/v projection returned fewer than three outputs"),
        }
    }

    /// `<vb>.{q,k,v,o}_proj`.
    pub fn from_safetensors(vb: &VarBuilder<'_>, cfg: &ModelConfig) -> Result<Self> {
        let (h, nh, nkv, d, b) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.qkv_bias,
        );
        Ok(Self {
            q: st_linear(vb, "q_proj", nh * d, h, b)?,
            k: st_linear(vb, "k_proj", nkv * d, h, b)?,
            v: st_linear(vb, "v_proj", nkv * d, h, b)?,
            o: st_linear(vb, "o_proj", h, nh * d, false)?,
        })
    }

    /// `<prefix>.attn_{q,k,v,output}`.
    pub fn from_gguf<R: Read + Seek>(
        w: &mut GgufWeights<'_, R>,
        prefix: &str,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        let b = cfg.qkv_bias;
        Ok(Self {
            q: w.linear(&format!("{prefix}.attn_q"), b)?,
            k: w.linear(&format!("{prefix}.attn_k"), b)?,
            v: w.linear(&format!("{prefix}.attn_v"), b)?,
            o: w.linear(&format!("{prefix}.attn_output"), false)?,
        })
    }
}

/// Layer `layer`'s attention through the backend (rope, cache write, attention over the
/// context): q, k and v go in the backend's dtype, the output comes back in `x`'s.
pub(super) fn attend(
    attn: &mut dyn AttentionBackend,
    layer: usize,
    batch: &ForwardBatch<'_>,
    (q, k, v): (Tensor, Tensor, Tensor),
    act: DType,
) -> Result<Tensor> {
    let kv = attn.dtype();
    let (q, k, v) = (q.to_dtype(kv)?, k.to_dtype(kv)?, v.to_dtype(kv)?);
    Ok(attn.attend(layer, batch, &q, &k, &v)?.to_dtype(act)?)
}

/// `y = x W^T (+ b)` from `<vb>.<name>.weight` (`[out, inp]`) and `.bias`.
pub(super) fn st_linear(
    vb: &VarBuilder<'_>,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    let vb = vb.pp(name);
    let w = vb.get((out, inp), "weight")?;
    let b = if bias {
        Some(vb.get(out, "bias")?)
    } else {
        None
    };
    Ok(Linear::dense(w, b))
}

/// Reads named tensors out of an open GGUF file.
pub(super) struct GgufWeights<'a, R> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
}

impl<R: Read + Seek> GgufWeights<'_, R> {
    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn qtensor(&mut self, name: &str) -> Result<Arc<QTensor>> {
        self.content
            .tensor(self.reader, name, self.device)
            .map(Arc::new)
            .with_context(|| format!("GGUF tensor '{name}' is missing or unreadable"))
    }

    pub fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.device)?)
    }

    pub fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear> {
        let w = self.qtensor(&format!("{prefix}.weight"))?;
        let b = if bias {
            Some(self.dense(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Linear::quantized(w, b)?)
    }
}
