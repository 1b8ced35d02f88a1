//! The llama block family (llama, mistral, qwen2) over a flattened batch.
//!
//! Tokens of every sequence in a step are concatenated into one `[tokens, hidden]`
//! activation; matmuls see one tall matrix whatever the mix of prefill and decode. Only
//! attention looks at sequence boundaries, through the [`Attention`] implementation
//! (the paged KV cache in serving, a contiguous reference in tests).

use std::io::{Read, Seek};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::linear::{Embedding, Linear};
use crate::kv::KvCache;
use crate::ops::{self, AttnSeq, Rope, RopeScaling};

/// One step's flattened batch.
#[derive(Debug, Clone, Copy)]
pub struct ForwardBatch<'a> {
    /// New token ids of every sequence, concatenated.
    pub tokens: &'a [u32],
    /// Position of each new token in its sequence.
    pub positions: &'a [u32],
    /// Cache slot each new token's K/V is written to.
    pub slots: &'a [u32],
    /// Per sequence: its query rows, context length and block table.
    pub seqs: &'a [AttnSeq<'a>],
    /// Rows of the batch whose logits are wanted (usually each sequence's last token).
    pub logits_rows: &'a [u32],
}

/// Where attention gets its keys and values from.
pub trait Attention {
    /// `q`: `[tokens][heads][head_dim]` (rotated); `k`, `v`: `[tokens][kv_heads][head_dim]`
    /// of the new tokens; writes `[tokens][heads][head_dim]` into `out`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        layer: usize,
        batch: &ForwardBatch<'_>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        num_heads: usize,
        out: &mut [f32],
    ) -> Result<()>;

    /// Called once per forward pass, before the first layer (a device cache uploads the
    /// step's block tables here).
    fn begin_step(&mut self, _batch: &ForwardBatch<'_>) -> Result<()> {
        Ok(())
    }

    /// Device attention: writes `k`, `v` (`[tokens, kv_heads * head_dim]`) into layer
    /// `layer`'s cache and attends every row of `q` (`[tokens, heads * head_dim]`), all in
    /// the cache's dtype; returns `[tokens, heads * head_dim]`.
    #[cfg(feature = "cuda")]
    fn attend_device(
        &mut self,
        _layer: usize,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
    ) -> Result<Tensor> {
        anyhow::bail!("this attention backend keeps its cache in host memory")
    }

    /// The dtype device attention takes (`None`: host attention only).
    fn device_dtype(&self) -> Option<DType> {
        None
    }
}

#[cfg(feature = "cuda")]
impl Attention for crate::kv::DeviceKvCache {
    fn attend(
        &mut self,
        _layer: usize,
        _batch: &ForwardBatch<'_>,
        _q: &[f32],
        _k: &[f32],
        _v: &[f32],
        _num_heads: usize,
        _out: &mut [f32],
    ) -> Result<()> {
        anyhow::bail!("the GPU KV cache attends device tensors (attend_device)")
    }

    fn begin_step(&mut self, batch: &ForwardBatch<'_>) -> Result<()> {
        crate::kv::DeviceKvCache::begin_step(self, batch)
    }

    fn attend_device(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        crate::kv::DeviceKvCache::attend(self, layer, q, k, v)
    }

    fn device_dtype(&self) -> Option<DType> {
        Some(self.dtype())
    }
}

impl Attention for KvCache {
    fn attend(
        &mut self,
        layer: usize,
        batch: &ForwardBatch<'_>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        num_heads: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let layout = *self.layout();
        let cache = self.layer_mut(layer);
        ops::write_kv(&layout, &mut cache.k, &mut cache.v, k, v, batch.slots);
        let scale = 1.0 / (layout.head_dim as f32).sqrt();
        ops::paged_attention(
            &layout, &cache.k, &cache.v, q, num_heads, batch.seqs, scale, out,
        );
        Ok(())
    }
}

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
    /// On a GPU: wick's kernels and the rope frequencies in device memory.
    #[cfg(feature = "cuda")]
    gpu: Option<GpuParts>,
}

#[cfg(feature = "cuda")]
#[derive(Debug)]
struct GpuParts {
    kernels: crate::ops::cuda::Kernels,
    inv_freq: candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
}

#[cfg(feature = "cuda")]
fn gpu_parts(device: &Device, rope: &Rope) -> Result<Option<GpuParts>> {
    match device {
        Device::Cuda(dev) => Ok(Some(GpuParts {
            kernels: crate::ops::cuda::Kernels::new(dev)?,
            inv_freq: dev.clone_htod(rope.inv_freq())?,
        })),
        _ => Ok(None),
    }
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
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

    /// Runs the batch; returns logits `[logits_rows.len(), vocab]` (f32).
    pub fn forward(&self, batch: &ForwardBatch<'_>, attn: &mut dyn Attention) -> Result<Tensor> {
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
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return self.forward_gpu(gpu, batch, attn);
        }
        let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let ids = Tensor::from_slice(batch.tokens, n, &self.device)?;
        let mut x = self.embed.forward(&ids)?.to_dtype(DType::F32)?;
        let tables = self.rope.tables(batch.positions);
        let mut attn_out = vec![0f32; n * nh * d];
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let qkv = Linear::forward_many(&[&b.q, &b.k, &b.v], &h)?;
            let mut q = to_f32_vec(&qkv[0])?;
            let mut k = to_f32_vec(&qkv[1])?;
            let v = to_f32_vec(&qkv[2])?;
            self.rope.apply(&mut q, nh, &tables);
            self.rope.apply(&mut k, nkv, &tables);
            attn.attend(layer, batch, &q, &k, &v, nh, &mut attn_out)?;
            let a = Tensor::from_slice(&attn_out, (n, nh * d), &self.device)?;
            x = (x + b.o.forward(&a)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let gu = Linear::forward_many(&[&b.gate, &b.up], &h)?;
            let g = gu[0].silu()?;
            let u = &gu[1];
            x = (x + b.down.forward(&(g * u)?)?)?;
        }
        let rows = Tensor::from_slice(batch.logits_rows, batch.logits_rows.len(), &self.device)?;
        let x = x.index_select(&rows, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// The forward pass on a GPU: activations stay on the device; q/k/v are cast to the
    /// cache's dtype for rope and attention (wick's kernels), matmuls and norms are
    /// candle's (cuBLAS, and candle's quantized CUDA matmuls for GGUF weights).
    #[cfg(feature = "cuda")]
    fn forward_gpu(
        &self,
        gpu: &GpuParts,
        batch: &ForwardBatch<'_>,
        attn: &mut dyn Attention,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let n = batch.tokens.len();
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let eps = cfg.rms_norm_eps as f32;
        let Some(kv_dtype) = attn.device_dtype() else {
            anyhow::bail!("a model on the GPU needs a GPU KV cache");
        };
        let Device::Cuda(dev) = &self.device else {
            anyhow::bail!("GPU forward on a non-GPU device");
        };
        attn.begin_step(batch)?;
        let positions = dev.clone_htod(batch.positions)?;
        let positions = positions.slice(0..n);
        let interleaved = self.rope.style() == crate::ops::RopeStyle::Interleaved;
        let ids = Tensor::from_slice(batch.tokens, n, &self.device)?;
        let mut x = self.embed.forward(&ids)?;
        let act = x.dtype();
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let qkv = Linear::forward_many(&[&b.q, &b.k, &b.v], &h)?;
            let q = qkv[0].to_dtype(kv_dtype)?;
            let k = qkv[1].to_dtype(kv_dtype)?;
            let v = qkv[2].to_dtype(kv_dtype)?.contiguous()?;
            let q = gpu
                .kernels
                .rope(&q, &positions, &gpu.inv_freq, nh, interleaved)?;
            let k = gpu
                .kernels
                .rope(&k, &positions, &gpu.inv_freq, nkv, interleaved)?;
            let a = attn.attend_device(layer, &q, &k, &v)?.to_dtype(act)?;
            x = (x + b.o.forward(&a)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let gu = Linear::forward_many(&[&b.gate, &b.up], &h)?;
            let g = gu[0].silu()?;
            x = (x + b.down.forward(&(g * &gu[1])?)?)?;
        }
        let rows = Tensor::from_slice(batch.logits_rows, batch.logits_rows.len(), &self.device)?;
        let x = x.index_select(&rows, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Loads weights from a GGUF file (quantized matmuls stay quantized).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut config = ModelConfig::from_gguf(content)?;
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
            #[cfg(feature = "cuda")]
            gpu: gpu_parts(device, &rope)?,
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
            #[cfg(feature = "cuda")]
            gpu: gpu_parts(&device, &rope)?,
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
