//! The pieces the families share: the embedding, final norm and output head around the
//! blocks ([`Base`]), the gated MLP ([`Mlp`]: SwiGLU, or GeGLU for gemma2/3), the q/k/v/o
//! projections ([`Projections`]; phi3's q/k/v and gate/up are one matrix each, split after
//! the matmul), the call into the attention backend ([`attend`]), and reading weights by
//! name from a safetensors `VarBuilder` or a GGUF file. A family's file holds its block and
//! its layer loop, written with these.

use std::io::{Read, Seek};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::backend::{AttentionBackend, ForwardBatch, StepInputs};
use super::config::{Arch, ModelConfig};
use super::linear::{Embedding, Linear};
use crate::ops::{Rope, RopeScaling};

/// RMS norm over the last dimension. On the CPU with f32 tensors it runs on wick's
/// thread pool (`ops::simd::rms_norm`, candle's steps), elsewhere as candle's op.
pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let n = weight.elem_count();
    if x.dims().last() == Some(&n) && weight.rank() == 1 {
        if let Some(y) = on_cpu_f32(&[x, weight], x.shape(), |s, out| {
            crate::ops::simd::rms_norm(s[0], s[1], eps, out)
        })? {
            return Ok(y);
        }
    }
    Ok(candle_nn::ops::rms_norm(x, weight, eps)?)
}

/// `x + y` of two tensors of one shape (the residual adds). On the CPU with f32 tensors
/// on wick's thread pool (where the matmuls and attention run: candle's own pool would be
/// a second set of threads competing for the same cores), elsewhere candle's add.
pub(super) fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.shape() == y.shape() {
        if let Some(z) = on_cpu_f32(&[x, y], x.shape(), |s, out| {
            crate::ops::simd::add(s[0], s[1], out)
        })? {
            return Ok(z);
        }
    }
    Ok((x + y)?)
}

/// `run` over the f32 contents of `inputs` into a fresh CPU tensor of `shape`, which it
/// writes in full; `None` unless every input is a contiguous f32 CPU tensor.
fn on_cpu_f32<const N: usize>(
    inputs: &[&Tensor; N],
    shape: &candle_core::Shape,
    run: impl FnOnce([&[f32]; N], &mut [std::mem::MaybeUninit<f32>]),
) -> Result<Option<Tensor>> {
    use candle_core::Storage;
    if inputs
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous())
    {
        return Ok(None);
    }
    let guards = inputs.map(|t| t.storage_and_layout());
    let mut slices = [&[][..]; N];
    for (s, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let Storage::Cpu(cpu) = &**storage else {
            return Ok(None);
        };
        let len = layout.shape().elem_count();
        *s = &cpu.as_slice::<f32>()?[layout.start_offset()..][..len];
    }
    let n = shape.elem_count();
    let mut out = Vec::with_capacity(n);
    run(slices, &mut out.spare_capacity_mut()[..n]);
    // SAFETY: `run` wrote all `n` values.
    unsafe { out.set_len(n) };
    Ok(Some(Tensor::from_vec(out, shape, &Device::Cpu)?))
}

/// RMS norm of each `head_dim` slice of `x` (`[tokens, heads * head_dim]`): the per-head
/// q/k norms of qwen3 and gemma3.
pub(super) fn per_head_norm(
    x: &Tensor,
    weight: &Tensor,
    head_dim: usize,
    eps: f32,
) -> Result<Tensor> {
    let (tokens, width) = x.dims2()?;
    let heads = x.reshape((tokens, width / head_dim, head_dim))?;
    Ok(rms_norm(&heads, weight, eps)?.reshape((tokens, width))?)
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
        let rope = Rope::partial(
            config.head_dim,
            config.rotary_dim,
            config.rope_scale,
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
    /// frequency factors when present, or phi3's longrope `rope_factors_long`/`_short`).
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
        } else if w.has("rope_factors_long.weight") {
            // As from config.json (`ModelConfig::hf_longrope`): the long factors when the
            // context exceeds the original one, and the converter's attention factor.
            let a = config.arch.as_str();
            let original = w
                .content
                .metadata
                .get(&format!("{a}.rope.scaling.original_context_length"))
                .and_then(|v| v.to_u32().ok())
                .map(|o| o as usize)
                .context("GGUF longrope factors without rope.scaling.original_context_length")?;
            let which = if config.max_position_embeddings > original {
                "long"
            } else {
                "short"
            };
            let factors = w
                .dense(&format!("rope_factors_{which}.weight"))?
                .to_vec1::<f32>()?;
            anyhow::ensure!(
                factors.len() == config.rotary_dim / 2,
                "GGUF rope_factors_{which} has {} factors, not {}",
                factors.len(),
                config.rotary_dim / 2
            );
            config.rope_scaling = RopeScaling::FreqFactors(factors);
            if let Some(f) = w
                .content
                .metadata
                .get(&format!("{a}.rope.scaling.attn_factor"))
                .and_then(|v| v.to_f32().ok())
            {
                config.rope_scale = f;
            }
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

/// The gate and up projections of an [`Mlp`]: two matrices, or one (phi3's
/// `gate_up_proj`, gate rows first) whose output is split in halves.
#[derive(Debug)]
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

/// `silu(gate) * up` in one pass over CPU f32 tensors of one shape (both contiguous), on
/// the thread pool, with candle's own steps (so the same numbers as `gate.silu()? * up`,
/// without the intermediate tensor); `None` for other tensors (candle's ops run them).
fn silu_mul_cpu(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if gate.shape() != up.shape() {
        return Ok(None);
    }
    on_cpu_f32(&[gate, up], gate.shape(), |s, out| {
        crate::ops::simd::silu_mul(s[0], s[1], out)
    })
}

/// The gated MLP: `down(act(gate(x)) * up(x))`, `act` SiLU (SwiGLU) or, for gemma2/3,
/// tanh-approximated GELU (GeGLU).
#[derive(Debug)]
pub(super) struct Mlp {
    gate_up: GateUp,
    down: Linear,
    gelu: bool,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let mut gu = Linear::forward_many(&[gate, up], x)?.into_iter();
                match (gu.next(), gu.next()) {
                    (Some(g), Some(u)) => (g, u),
                    _ => anyhow::bail!("gate/up projection returned fewer than two outputs"),
                }
            }
            GateUp::Fused(w) => {
                let gu = w.forward(x)?;
                let inter = gu.dim(D::Minus1)? / 2;
                (
                    gu.narrow(D::Minus1, 0, inter)?,
                    gu.narrow(D::Minus1, inter, inter)?,
                )
            }
        };
        let act = if self.gelu {
            (gate.gelu()? * up)?
        } else if let Some(act) = silu_mul_cpu(&gate, &up)? {
            act
        } else {
            (gate.silu()? * up)?
        };
        Ok(self.down.forward(&act)?)
    }

    /// A SwiGLU MLP whose gate and up rows are one matrix, gate rows first (an expert of
    /// transformers 5's fused `experts.gate_up_proj`).
    pub fn swiglu_fused(gate_up: Linear, down: Linear) -> Self {
        Self {
            gate_up: GateUp::Fused(gate_up),
            down,
            gelu: false,
        }
    }

    /// A SwiGLU MLP of three matrices (a mixture-of-experts' expert).
    pub fn swiglu(gate: Linear, up: Linear, down: Linear) -> Self {
        Self {
            gate_up: GateUp::Separate { gate, up },
            down,
            gelu: false,
        }
    }

    /// `<vb>.{gate,up,down}_proj`, or `<vb>.{gate_up,down}_proj` for phi3.
    pub fn from_safetensors(vb: &VarBuilder<'_>, cfg: &ModelConfig) -> Result<Self> {
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let gate_up = if cfg.arch == Arch::Phi3 {
            GateUp::Fused(st_linear(vb, "gate_up_proj", 2 * inter, h, false)?)
        } else {
            GateUp::Separate {
                gate: st_linear(vb, "gate_proj", inter, h, false)?,
                up: st_linear(vb, "up_proj", inter, h, false)?,
            }
        };
        Ok(Self {
            gate_up,
            down: st_linear(vb, "down_proj", h, inter, false)?,
            gelu: matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3),
        })
    }

    /// `<prefix>.ffn_{gate,up,down}`; for phi3, `ffn_up` holds gate and up (as llama.cpp's
    /// converter keeps them) and there is no `ffn_gate`.
    pub fn from_gguf<R: Read + Seek>(
        w: &mut GgufWeights<'_, R>,
        prefix: &str,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        let gate_up = if cfg.arch == Arch::Phi3 {
            GateUp::Fused(w.linear(&format!("{prefix}.ffn_up"), false)?)
        } else {
            GateUp::Separate {
                gate: w.linear(&format!("{prefix}.ffn_gate"), false)?,
                up: w.linear(&format!("{prefix}.ffn_up"), false)?,
            }
        };
        Ok(Self {
            gate_up,
            down: w.linear(&format!("{prefix}.ffn_down"), false)?,
            gelu: matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3),
        })
    }
}

/// The q, k and v projections: three matrices, or one (phi3's `qkv_proj`: q rows, then
/// k, then v) whose output is split.
#[derive(Debug)]
enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    Fused {
        w: Linear,
        q_out: usize,
        kv_out: usize,
    },
}

/// The attention projections: q, k, v (with biases where `cfg.qkv_bias`) and o.
#[derive(Debug)]
pub(super) struct Projections {
    qkv: Qkv,
    pub o: Linear,
}

impl Projections {
    /// q `[tokens, heads * head_dim]`, k and v `[tokens, kv_heads * head_dim]`.
    pub fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match &self.qkv {
            Qkv::Separate { q, k, v } => {
                let mut qkv = Linear::forward_many(&[q, k, v], x)?.into_iter();
                match (qkv.next(), qkv.next(), qkv.next()) {
                    (Some(q), Some(k), Some(v)) => Ok((q, k, v)),
                    _ => anyhow::bail!("q/k/v projection returned fewer than three outputs"),
                }
            }
            Qkv::Fused { w, q_out, kv_out } => {
                let qkv = w.forward(x)?;
                let part = |start, len| -> Result<Tensor> {
                    Ok(qkv.narrow(D::Minus1, start, len)?.contiguous()?)
                };
                Ok((
                    part(0, *q_out)?,
                    part(*q_out, *kv_out)?,
                    part(q_out + kv_out, *kv_out)?,
                ))
            }
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
        let qkv = if cfg.arch == Arch::Phi3 {
            Qkv::Fused {
                w: st_linear(vb, "qkv_proj", (nh + 2 * nkv) * d, h, b)?,
                q_out: nh * d,
                kv_out: nkv * d,
            }
        } else {
            Qkv::Separate {
                q: st_linear(vb, "q_proj", nh * d, h, b)?,
                k: st_linear(vb, "k_proj", nkv * d, h, b)?,
                v: st_linear(vb, "v_proj", nkv * d, h, b)?,
            }
        };
        Ok(Self {
            qkv,
            o: st_linear(vb, "o_proj", h, nh * d, false)?,
        })
    }

    /// `<prefix>.attn_{q,k,v,output}`, or `<prefix>.attn_{qkv,output}` for phi3.
    pub fn from_gguf<R: Read + Seek>(
        w: &mut GgufWeights<'_, R>,
        prefix: &str,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        let b = cfg.qkv_bias;
        let qkv = if cfg.arch == Arch::Phi3 {
            let w = w.linear(&format!("{prefix}.attn_qkv"), b)?;
            let (q_out, kv_out) = (
                cfg.num_heads * cfg.head_dim,
                cfg.num_kv_heads * cfg.head_dim,
            );
            Qkv::Fused { w, q_out, kv_out }
        } else {
            Qkv::Separate {
                q: w.linear(&format!("{prefix}.attn_q"), b)?,
                k: w.linear(&format!("{prefix}.attn_k"), b)?,
                v: w.linear(&format!("{prefix}.attn_v"), b)?,
            }
        };
        Ok(Self {
            qkv,
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

    /// A 3-D expert tensor as llama.cpp's converter merges them (`ffn_{gate,up,down}_exps`,
    /// `[experts, rows, cols]`), one linear layer per expert: each expert's rows are one
    /// contiguous run of blocks, handed on as a 2-D tensor of the file's type (so a
    /// quantized expert runs wick's quantized matmuls, as any quantized layer does).
    pub fn experts(
        &mut self,
        name: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Linear>> {
        let t = self
            .content
            .tensor(self.reader, name, &Device::Cpu)
            .with_context(|| format!("GGUF tensor '{name}' is missing or unreadable"))?;
        anyhow::ensure!(
            t.shape().dims() == [n, rows, cols],
            "GGUF tensor '{name}' is {:?}, not [{n} experts, {rows}, {cols}]",
            t.shape().dims()
        );
        let bytes = t.data()?;
        let per = bytes.len() / n;
        (0..n)
            .map(|e| {
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    t.dtype(),
                    &bytes[e * per..(e + 1) * per],
                    vec![rows, cols],
                    self.device,
                )?;
                Ok(Linear::quantized(Arc::new(q), None)?)
            })
            .collect()
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
