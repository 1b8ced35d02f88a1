//! The sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE) and [`FeedForward`], the MLP a
//! block holds: dense, or sparse.
//!
//! A router (one linear layer) scores every expert for every token; the softmax of the
//! scores is taken over all experts, each token keeps its `top_k` best experts and their
//! probabilities (divided by their sum where [`MoeConfig::norm_topk_prob`]: Mixtral
//! always, Qwen3-MoE when its config says so). Experts run as grouped matmuls: for each
//! expert with any routed token, its tokens are gathered (`index_select`) into one
//! `[n_e, hidden]` matrix, the expert's SwiGLU runs once on it, the rows are scaled by
//! their routing weights and added back into the output at their tokens (`index_add`).
//! The routing decision (`[tokens, top_k]` expert ids and weights) is read back to the
//! host to form the groups; everything else stays in tensor ops on the model's device.

use std::io::{Read, Seek};

use anyhow::Result;
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::common::{st_linear, GgufWeights, Mlp};
use super::config::{Arch, ModelConfig, MoeConfig};
use super::linear::Linear;

/// The MLP of a block.
#[derive(Debug)]
pub(super) enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Sparse(m) => m.forward(x),
        }
    }

    /// Layer `layer`'s MLP at `<vb>`: sparse where the config has experts and the layer is
    /// not one of its dense layers.
    pub fn from_safetensors(vb: &VarBuilder<'_>, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        match &cfg.moe {
            Some(moe) if !moe.dense_layers.contains(&layer) => Ok(FeedForward::Sparse(
                SparseMoe::from_safetensors(vb, cfg, moe)?,
            )),
            _ => Ok(FeedForward::Dense(Mlp::from_safetensors(vb, cfg)?)),
        }
    }

    /// Layer `layer`'s MLP at `<prefix>` of a GGUF file: sparse where the config has
    /// experts and the layer is not one of its dense layers.
    pub fn from_gguf<R: Read + Seek>(
        w: &mut GgufWeights<'_, R>,
        prefix: &str,
        cfg: &ModelConfig,
        layer: usize,
    ) -> Result<Self> {
        match &cfg.moe {
            Some(moe) if !moe.dense_layers.contains(&layer) => Ok(FeedForward::Sparse(
                SparseMoe::from_gguf(w, prefix, cfg, moe)?,
            )),
            _ => Ok(FeedForward::Dense(Mlp::from_gguf(w, prefix, cfg)?)),
        }
    }
}

/// Router and experts of one layer.
#[derive(Debug)]
pub(super) struct SparseMoe {
    /// `[num_experts, hidden]`.
    router: Linear,
    experts: Vec<Mlp>,
    top_k: usize,
    norm_topk_prob: bool,
}

impl SparseMoe {
    /// `x`: `[tokens, hidden]` -> `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n_experts = self.experts.len();
        let scores = self.router.forward(x)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let top = probs
            .arg_sort_last_dim(false)?
            .narrow(D::Minus1, 0, self.top_k)?
            .contiguous()?;
        let mut weights = probs.gather(&top, D::Minus1)?;
        if self.norm_topk_prob {
            weights = weights.broadcast_div(&weights.sum_keepdim(D::Minus1)?)?;
        }
        let top = top.to_vec2::<u32>()?;
        let weights = weights.to_vec2::<f32>()?;
        // Per expert: its tokens and their routing weights.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n_experts];
        let mut scale: Vec<Vec<f32>> = vec![Vec::new(); n_experts];
        for (t, (ids, ws)) in top.iter().zip(&weights).enumerate() {
            for (&e, &w) in ids.iter().zip(ws) {
                let e = e as usize;
                anyhow::ensure!(e < n_experts, "router picked expert {e} of {n_experts}");
                rows[e].push(t as u32);
                scale[e].push(w);
            }
        }
        let mut out = x.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            let n = rows[e].len();
            if n == 0 {
                continue;
            }
            let idx = Tensor::from_vec(std::mem::take(&mut rows[e]), n, x.device())?;
            let w = Tensor::from_vec(std::mem::take(&mut scale[e]), (n, 1), x.device())?
                .to_dtype(x.dtype())?;
            let y = expert.forward(&x.index_select(&idx, 0)?)?;
            out = out.index_add(&idx, &y.broadcast_mul(&w)?, 0)?;
        }
        Ok(out)
    }

    /// `<prefix>.ffn_gate_inp` (the router, `[experts, hidden]`) and the experts merged
    /// into 3-D tensors as llama.cpp's converter writes them, `<prefix>.ffn_gate_exps`
    /// and `.ffn_up_exps` (`[experts, inter, hidden]`) and `.ffn_down_exps`
    /// (`[experts, hidden, inter]`), of any type wick reads (each expert becomes a 2-D
    /// layer of that type: [`GgufWeights::experts`]). Older GGUFs with one tensor per
    /// expert (`ffn_gate.<e>`) and the converter's optional fused `ffn_gate_up_exps` are
    /// refused with a word on reconverting.
    fn from_gguf<R: Read + Seek>(
        w: &mut GgufWeights<'_, R>,
        prefix: &str,
        cfg: &ModelConfig,
        moe: &MoeConfig,
    ) -> Result<Self> {
        let (h, inter, n) = (cfg.hidden_size, moe.intermediate_size, moe.num_experts);
        if !w.has(&format!("{prefix}.ffn_gate_exps.weight"))
            && w.has(&format!("{prefix}.ffn_gate.0.weight"))
        {
            anyhow::bail!(
                "this GGUF stores each expert as its own tensor ({prefix}.ffn_gate.0), a layout \
                 llama.cpp no longer writes; convert the checkpoint again"
            );
        }
        if !w.has(&format!("{prefix}.ffn_gate_exps.weight"))
            && w.has(&format!("{prefix}.ffn_gate_up_exps.weight"))
        {
            anyhow::bail!(
                "this GGUF holds gate and up experts in one tensor ({prefix}.ffn_gate_up_exps, \
                 the converter's --fuse-gate-up-exps), which wick does not read; convert \
                 without that option"
            );
        }
        let router_name = format!("{prefix}.ffn_gate_inp.weight");
        let router = w.qtensor(&router_name)?;
        anyhow::ensure!(
            router.shape().dims() == [n, h],
            "GGUF tensor '{router_name}' is {:?}, not [{n} experts, {h}]",
            router.shape().dims()
        );
        let router = Linear::quantized(router, None)?;
        let gate = w.experts(&format!("{prefix}.ffn_gate_exps.weight"), n, inter, h)?;
        let up = w.experts(&format!("{prefix}.ffn_up_exps.weight"), n, inter, h)?;
        let down = w.experts(&format!("{prefix}.ffn_down_exps.weight"), n, h, inter)?;
        let experts = gate
            .into_iter()
            .zip(up)
            .zip(down)
            .map(|((g, u), d)| Mlp::swiglu(g, u, d))
            .collect();
        Ok(Self {
            router,
            experts,
            top_k: moe.top_k,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// `<vb>.gate` (the router) and `<vb>.experts.<e>.{w1,w3,w2}` (Mixtral's gate, up,
    /// down) or `.{gate,up,down}_proj` (Qwen3-MoE), as `save_pretrained` writes them; or
    /// the experts fused as transformers 5 holds them in memory, `<vb>.experts.gate_up_proj`
    /// (`[experts, 2 * inter, hidden]`, gate rows first) and `<vb>.experts.down_proj`
    /// (`[experts, hidden, inter]`).
    fn from_safetensors(vb: &VarBuilder<'_>, cfg: &ModelConfig, moe: &MoeConfig) -> Result<Self> {
        let (h, inter, n) = (cfg.hidden_size, moe.intermediate_size, moe.num_experts);
        let names = match cfg.arch {
            Arch::Mixtral => ["w1", "w3", "w2"],
            _ => ["gate_proj", "up_proj", "down_proj"],
        };
        let router = st_linear(vb, "gate", n, h, false)?;
        let fused = vb.pp("experts");
        if fused.contains_tensor("gate_up_proj") {
            let gate_up = fused.get((n, 2 * inter, h), "gate_up_proj")?;
            let down = fused.get((n, h, inter), "down_proj")?;
            let experts = (0..n)
                .map(|e| {
                    Ok(Mlp::swiglu_fused(
                        Linear::dense(gate_up.get(e)?.contiguous()?, None),
                        Linear::dense(down.get(e)?.contiguous()?, None),
                    ))
                })
                .collect::<Result<_>>()?;
            return Ok(Self {
                router,
                experts,
                top_k: moe.top_k,
                norm_topk_prob: moe.norm_topk_prob,
            });
        }
        let experts = (0..n)
            .map(|e| {
                let x = vb.pp(format!("experts.{e}"));
                Ok(Mlp::swiglu(
                    st_linear(&x, names[0], inter, h, false)?,
                    st_linear(&x, names[1], inter, h, false)?,
                    st_linear(&x, names[2], h, inter, false)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            router,
            experts,
            top_k: moe.top_k,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }
}
