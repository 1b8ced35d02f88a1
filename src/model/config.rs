//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face config.json.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;

use crate::ops::{Rope, RopeScaling, RopeStyle};

/// Supported architecture families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Phi-3 and Phi-4(-mini): the llama block with fused q/k/v and gate/up projections.
    Phi3,
    Gemma2,
    /// Gemma 3's text model: Gemma 2's block with per-head q/k norms, and a rope base of
    /// its own on the sliding-window layers.
    Gemma3,
    /// Mixtral: the llama block with a sparse mixture-of-experts MLP.
    Mixtral,
    /// Qwen3-MoE: the qwen3 block with a sparse mixture-of-experts MLP.
    Qwen3Moe,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
            "mistral" | "MistralForCausalLM" => Ok(Arch::Mistral),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            "qwen3" | "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
            "phi3" | "Phi3ForCausalLM" => Ok(Arch::Phi3),
            "gemma2" | "Gemma2ForCausalLM" => Ok(Arch::Gemma2),
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Ok(Arch::Gemma3),
            "mixtral" | "MixtralForCausalLM" => Ok(Arch::Mixtral),
            // GGUF spells it `qwen3moe`.
            "qwen3_moe" | "qwen3moe" | "Qwen3MoeForCausalLM" => Ok(Arch::Qwen3Moe),
            other => bail!(
                "unsupported model architecture '{other}': wick runs llama, mistral, qwen2, \
                 qwen3, phi3, gemma2, gemma3 (text), mixtral and qwen3_moe models"
            ),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Mixtral => "mixtral",
            Arch::Qwen3Moe => "qwen3_moe",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    /// Leading dimensions of each head that rope rotates (`head_dim` unless the config has
    /// a `partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Factor on rope's cos and sin (longrope's attention factor; 1 otherwise).
    pub rope_scale: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2).
    pub qkv_bias: bool,
    /// Queries and keys go through a per-head RMSNorm before rope (qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Each query attends to at most this many keys, its own included (mistral's
    /// `sliding_window`); `None`: the whole context.
    pub sliding_window: Option<usize>,
    /// Which layers have that window: empty for every layer; else one flag per layer
    /// (Gemma 2's alternating sliding and global layers).
    pub window_layers: Vec<bool>,
    /// Attention scores become `c * tanh(s / c)` before the softmax (Gemma 2).
    pub attn_logit_softcap: Option<f32>,
    /// Logits become `c * tanh(l / c)` (Gemma 2).
    pub final_logit_softcap: Option<f32>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` rather than
    /// `head_dim^-1/2` (Gemma 2).
    pub query_pre_attn_scalar: Option<f32>,
    /// The rope base of the layers with a sliding window, where it differs from the
    /// global layers' `rope_theta` (Gemma 3's `rope_local_base_freq`; no rope scaling on
    /// those layers). `None`: every layer uses `rope_theta` and `rope_scaling`.
    pub local_rope_theta: Option<f32>,
    /// The sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE); `None`: dense MLPs.
    pub moe: Option<MoeConfig>,
}

/// A sparse mixture-of-experts MLP: a router picks `top_k` of `num_experts` SwiGLU
/// experts per token.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token (`num_experts_per_tok`).
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub intermediate_size: usize,
    /// The top-k softmax weights are divided by their sum (Mixtral always; Qwen3-MoE's
    /// `norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Layers with a dense MLP of the model's `intermediate_size` instead (Qwen3-MoE's
    /// `mlp_only_layers` and `decoder_sparse_step`); empty: none.
    pub dense_layers: Vec<usize>,
}

impl MoeConfig {
    /// Reads the experts of llama.cpp's GGUF metadata: `expert_count` and
    /// `expert_used_count`; each expert's size is `feed_forward_length` (Mixtral) or
    /// `expert_feed_forward_length` (qwen3moe; absent, `feed_forward_length / used` as
    /// llama.cpp takes it). llama.cpp renormalises the top-k weights for both
    /// (`build_moe_ffn` with `norm_w`), whatever a Qwen3-MoE checkpoint's
    /// `norm_topk_prob` said, and has no dense layers in either.
    fn from_gguf(
        content: &gguf_file::Content,
        a: &str,
        arch: Arch,
        feed_forward_length: usize,
    ) -> Result<Option<Self>> {
        if !matches!(arch, Arch::Mixtral | Arch::Qwen3Moe) {
            return Ok(None);
        }
        let num_experts = md_usize(content, &format!("{a}.expert_count"))?;
        let top_k = md_usize(content, &format!("{a}.expert_used_count"))?;
        anyhow::ensure!(
            top_k > 0 && top_k <= num_experts,
            "GGUF asks for {top_k} of {num_experts} experts"
        );
        let intermediate_size = match arch {
            Arch::Qwen3Moe => md_usize(content, &format!("{a}.expert_feed_forward_length"))
                .unwrap_or(feed_forward_length / top_k),
            _ => feed_forward_length,
        };
        anyhow::ensure!(intermediate_size > 0, "GGUF experts of size 0");
        Ok(Some(Self {
            num_experts,
            top_k,
            intermediate_size,
            norm_topk_prob: true,
            dense_layers: Vec::new(),
        }))
    }

    /// Reads Mixtral's or Qwen3-MoE's keys of a config.json.
    fn from_hf(v: &serde_json::Value, arch: Arch, num_layers: usize) -> Result<Option<Self>> {
        let get = |k: &str| v[k].as_u64().map(|x| x as usize);
        let cfg = match arch {
            Arch::Mixtral => Self {
                num_experts: get("num_local_experts").unwrap_or(8),
                top_k: get("num_experts_per_tok").unwrap_or(2),
                intermediate_size: get("intermediate_size")
                    .context("config.json lacks integer 'intermediate_size'")?,
                norm_topk_prob: true,
                dense_layers: Vec::new(),
            },
            Arch::Qwen3Moe => {
                let step = get("decoder_sparse_step").unwrap_or(1);
                anyhow::ensure!(step > 0, "config.json has decoder_sparse_step 0");
                let only: Vec<usize> = match v["mlp_only_layers"].as_array() {
                    Some(l) => l
                        .iter()
                        .map(|x| x.as_u64().map(|x| x as usize))
                        .collect::<Option<_>>()
                        .context("config.json's mlp_only_layers holds a non-integer")?,
                    None => Vec::new(),
                };
                // As transformers: layer i is sparse unless listed in mlp_only_layers or
                // (i + 1) is not a multiple of decoder_sparse_step.
                let dense_layers = (0..num_layers)
                    .filter(|i| only.contains(i) || (i + 1) % step != 0)
                    .collect();
                Self {
                    num_experts: get("num_experts")
                        .or_else(|| get("num_local_experts"))
                        .context("config.json lacks integer 'num_experts'")?,
                    top_k: get("num_experts_per_tok").unwrap_or(8),
                    intermediate_size: get("moe_intermediate_size")
                        .context("config.json lacks integer 'moe_intermediate_size'")?,
                    norm_topk_prob: v["norm_topk_prob"].as_bool().unwrap_or(false),
                    dense_layers,
                }
            }
            _ => return Ok(None),
        };
        anyhow::ensure!(
            cfg.top_k > 0 && cfg.top_k <= cfg.num_experts && cfg.intermediate_size > 0,
            "config.json asks for {} of {} experts of intermediate size {}",
            cfg.top_k,
            cfg.num_experts,
            cfg.intermediate_size
        );
        Ok(Some(cfg))
    }
}

fn md<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content.metadata.get(key).ok_or_else(|| {
        anyhow!("GGUF metadata lacks '{key}': the file is incomplete or not a supported model")
    })
}

fn md_usize(content: &gguf_file::Content, key: &str) -> Result<usize> {
    let v = md(content, key)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .or_else(|_| v.to_i32().map(|x| x.max(0) as usize))
        .map_err(|_| anyhow!("GGUF metadata '{key}' is not an integer"))
}

fn md_f32(content: &gguf_file::Content, key: &str) -> Result<f32> {
    let v = md(content, key)?;
    v.to_f32()
        .or_else(|_| v.to_f64().map(|x| x as f32))
        .map_err(|_| anyhow!("GGUF metadata '{key}' is not a float"))
}

impl ModelConfig {
    /// The sliding window of layer `layer`, if it has one.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match self.window_layers.get(layer) {
            Some(false) => None,
            _ => self.sliding_window,
        }
    }

    /// The rotary embedding of the sliding-window layers when it is not the model's
    /// (Gemma 3's local base, unscaled).
    pub fn local_rope(&self) -> Option<Rope> {
        self.local_rope_theta.map(|theta| {
            Rope::partial(
                self.head_dim,
                self.rotary_dim,
                self.rope_scale,
                theta,
                &RopeScaling::None,
                self.rope_style,
            )
        })
    }

    /// Reads llama.cpp's GGUF metadata, as its converter writes it and its runtime reads
    /// it. Mixtral is GGUF architecture `llama` with `llama.expert_count` experts; Qwen3-MoE
    /// is `qwen3moe`. Where llama.cpp's runtime fixes something the metadata does not say,
    /// wick does as llama.cpp does (see [`ModelConfig::gguf_gemma`] and
    /// [`MoeConfig::from_gguf`]).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let arch_name = md(content, "general.architecture")?
            .to_string()
            .map_err(|_| anyhow!("GGUF metadata 'general.architecture' is not a string"))?
            .clone();
        let a = arch_name.as_str();
        let mut arch = Arch::parse(&arch_name)?;
        if arch == Arch::Llama && md_usize(content, &format!("{a}.expert_count")).unwrap_or(0) > 0 {
            arch = Arch::Mixtral;
        }
        let hidden_size = md_usize(content, &format!("{a}.embedding_length"))?;
        let num_heads = md_usize(content, &format!("{a}.attention.head_count"))?;
        let num_kv_heads =
            md_usize(content, &format!("{a}.attention.head_count_kv")).unwrap_or(num_heads);
        // phi3's rope dimension count is its rotated part (Phi-4-mini rotates 3/4 of each
        // head), not the head size.
        let head_dim = match arch {
            Arch::Phi3 => md_usize(content, &format!("{a}.attention.key_length")),
            _ => md_usize(content, &format!("{a}.attention.key_length"))
                .or_else(|_| md_usize(content, &format!("{a}.rope.dimension_count"))),
        }
        .unwrap_or(hidden_size / num_heads.max(1));
        let rotary_dim =
            md_usize(content, &format!("{a}.rope.dimension_count")).unwrap_or(head_dim);
        let vocab_size = match md_usize(content, &format!("{a}.vocab_size")) {
            Ok(v) => v,
            Err(_) => md(content, "tokenizer.ggml.tokens")?
                .to_vec()
                .map(|v| v.len())
                .map_err(|_| anyhow!("GGUF metadata 'tokenizer.ggml.tokens' is not an array"))?,
        };
        let rope_scaling = match content
            .metadata
            .get(&format!("{a}.rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
        {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: md_f32(content, &format!("{a}.rope.scaling.factor"))?,
            },
            Some(other) => bail!("unsupported rope scaling '{other}' in GGUF metadata"),
        };
        let num_layers = md_usize(content, &format!("{a}.block_count"))?;
        let intermediate_size = md_usize(content, &format!("{a}.feed_forward_length"))?;
        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        let mut cfg = Self {
            arch,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: md_f32(content, &format!("{a}.attention.layer_norm_rms_epsilon"))? as f64,
            rope_theta: md_f32(content, &format!("{a}.rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            // llama.cpp permutes llama/mistral/mixtral q,k at conversion and rotates
            // adjacent pairs; qwen2/qwen3/phi3/gemma keep the Hugging Face layout (NEOX).
            rope_style: match arch {
                Arch::Llama | Arch::Mistral | Arch::Mixtral => RopeStyle::Interleaved,
                _ => RopeStyle::Neox,
            },
            rotary_dim,
            // phi3's longrope factors and attention factor are read with its tensors
            // (`Base::from_gguf`).
            rope_scale: 1.0,
            max_position_embeddings: md_usize(content, &format!("{a}.context_length"))
                .unwrap_or(4096),
            // llama.cpp's gemma2 always takes the embedding as the output head (its
            // converter skips lm_head).
            tie_word_embeddings: arch == Arch::Gemma2
                || !content.tensor_infos.contains_key("output.weight"),
            qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            qk_norm: content
                .tensor_infos
                .contains_key("blk.0.attn_q_norm.weight"),
            // llama.cpp's GGUF metadata carries no sliding window for llama/mistral/qwen;
            // phi3's is `phi3.attention.sliding_window` (0: none, Phi-4); gemma's below.
            sliding_window: match arch {
                Arch::Phi3 => md_usize(content, &format!("{a}.attention.sliding_window"))
                    .ok()
                    .filter(|&w| w > 0),
                _ => None,
            },
            window_layers: Vec::new(),
            attn_logit_softcap: None,
            final_logit_softcap: None,
            query_pre_attn_scalar: None,
            local_rope_theta: None,
            moe: MoeConfig::from_gguf(content, a, arch, intermediate_size)?,
        };
        if gemma {
            cfg.gguf_gemma(content, a)?;
        }
        cfg.validate()
    }

    /// Gemma 2 and 3 from GGUF, as llama.cpp's runtime reads them: the sliding window
    /// (`attention.sliding_window`; gemma2 4096 when absent, gemma3 none) on the layers of
    /// `attention.sliding_window_pattern` (a flag per layer, or a period `n`: layer `i`
    /// slides unless `i % n == n - 1`; absent, 2 for gemma2 and 6 for gemma3, which the
    /// converter never writes); gemma2's soft-caps (50 and 30 when absent) and gemma3's
    /// final one (none when absent); the query scale `head_dim^-1/2`, or
    /// `(hidden / heads)^-1/2` for the 27B models (46 gemma2 layers, 62 gemma3 layers),
    /// whatever the checkpoint's `query_pre_attn_scalar` was (the GGUF does not carry
    /// it); and the sliding layers' rope base `rope.freq_base_swa` (gemma3: 10000 when
    /// absent; those layers unscaled).
    fn gguf_gemma(&mut self, content: &gguf_file::Content, a: &str) -> Result<()> {
        let key = |k: &str| format!("{a}.{k}");
        let gemma2 = self.arch == Arch::Gemma2;
        let window = md_usize(content, &key("attention.sliding_window"))
            .ok()
            .or(gemma2.then_some(4096))
            .filter(|&w| w > 0);
        if let Some(window) = window {
            let sliding: Vec<bool> = match content
                .metadata
                .get(&key("attention.sliding_window_pattern"))
            {
                Some(gguf_file::Value::Array(flags)) => flags
                    .iter()
                    .map(|f| f.to_bool().ok())
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        anyhow!("GGUF attention.sliding_window_pattern holds a non-boolean")
                    })?,
                Some(_) => {
                    let n = md_usize(content, &key("attention.sliding_window_pattern"))?;
                    (0..self.num_layers)
                        .map(|i| n == 0 || i % n < n - 1)
                        .collect()
                }
                None => {
                    let n = if gemma2 { 2 } else { 6 };
                    (0..self.num_layers).map(|i| i % n < n - 1).collect()
                }
            };
            anyhow::ensure!(
                sliding.len() == self.num_layers,
                "GGUF sliding-window pattern has {} flags for {} layers",
                sliding.len(),
                self.num_layers
            );
            self.sliding_window = Some(window);
            self.window_layers = if sliding.iter().all(|&s| s) {
                Vec::new()
            } else {
                sliding
            };
            let local = md_f32(content, &key("rope.freq_base_swa")).ok();
            self.local_rope_theta = match (gemma2, local) {
                (false, l) => Some(l.unwrap_or(10000.0)),
                (true, Some(l)) if l != self.rope_theta => Some(l),
                (true, _) => None,
            };
        }
        let cap = |k: &str, default: f32| -> Option<f32> {
            Some(md_f32(content, &key(k)).unwrap_or(default)).filter(|&c| c > 0.0)
        };
        if gemma2 {
            self.attn_logit_softcap = cap("attn_logit_softcapping", 50.0);
            self.final_logit_softcap = cap("final_logit_softcapping", 30.0);
        } else {
            self.final_logit_softcap = cap("final_logit_softcapping", 0.0);
        }
        let big = self.num_layers == if gemma2 { 46 } else { 62 };
        self.query_pre_attn_scalar = Some(if big {
            (self.hidden_size / self.num_heads) as f32
        } else {
            self.head_dim as f32
        });
        Ok(())
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).context("config.json is not valid JSON")?;
        let arch_name = v["architectures"]
            .get(0)
            .and_then(|a| a.as_str())
            .or_else(|| v["model_type"].as_str())
            .ok_or_else(|| {
                anyhow!("config.json names no architecture (architectures / model_type)")
            })?;
        let arch = Arch::parse(arch_name)?;
        let get = |k: &str| -> Result<usize> {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| anyhow!("config.json lacks integer '{k}'"))
        };
        let hidden_size = get("hidden_size")?;
        let num_heads = get("num_attention_heads")?;
        // Absent or null: hidden / heads.
        let head_dim = get("head_dim").unwrap_or(hidden_size / num_heads.max(1));
        let max_position_embeddings = get("max_position_embeddings").unwrap_or(4096);
        // transformers 5 writes `rope_parameters` (with `rope_theta` inside it); earlier
        // versions `rope_scaling` (null when absent) beside a top-level `rope_theta`.
        let rope = ["rope_parameters", "rope_scaling"]
            .iter()
            .find_map(|k| v.get(*k).filter(|s| s.is_object()));
        // Gemma 3 under transformers 5: one set per layer type; `rope_theta` and the
        // scaling are the global layers', the sliding layers' base is read below.
        let per_layer_type = rope.filter(|r| r["full_attention"].is_object());
        let rope = per_layer_type.map(|r| &r["full_attention"]).or(rope);
        let rope_theta = v["rope_theta"]
            .as_f64()
            .or_else(|| rope.and_then(|r| r["rope_theta"].as_f64()))
            .unwrap_or(10000.0) as f32;
        let partial_rotary_factor = v["partial_rotary_factor"]
            .as_f64()
            .or_else(|| rope.and_then(|r| r["partial_rotary_factor"].as_f64()))
            .unwrap_or(1.0);
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            bail!("config.json has partial_rotary_factor {partial_rotary_factor}, not in (0, 1]");
        }
        // As transformers: int(head_dim * factor).
        let rotary_dim = (head_dim as f64 * partial_rotary_factor) as usize;
        let mut rope_scale = 1.0f32;
        let rope_scaling = match rope {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s["rope_type"]
                    .as_str()
                    .or_else(|| s["type"].as_str())
                    .unwrap_or("default");
                let f = |k: &str, default: f64| s[k].as_f64().unwrap_or(default) as f32;
                match kind {
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor", 8.0),
                        low_freq_factor: f("low_freq_factor", 1.0),
                        high_freq_factor: f("high_freq_factor", 4.0),
                        original_max_position_embeddings: s["original_max_position_embeddings"]
                            .as_u64()
                            .unwrap_or(8192)
                            as usize,
                    },
                    "linear" => RopeScaling::Linear {
                        factor: f("factor", 1.0),
                    },
                    "longrope" | "su" => {
                        let (factors, scale) =
                            Self::hf_longrope(s, &v, max_position_embeddings, rotary_dim)?;
                        rope_scale = scale;
                        RopeScaling::FreqFactors(factors)
                    }
                    "default" => RopeScaling::None,
                    other => bail!("unsupported rope scaling type '{other}' in config.json"),
                }
            }
        };
        let flag = |k: &str| v[k].as_bool().unwrap_or(false);
        if (arch != Arch::Qwen2 && flag("attention_bias")) || flag("mlp_bias") {
            bail!("config.json asks for attention_bias or mlp_bias, which wick does not run for {arch_name}");
        }
        let num_layers = get("num_hidden_layers")?;
        let (sliding_window, window_layers) = Self::hf_sliding_window(&v, arch, num_layers)?;
        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        let float = |k: &str| v[k].as_f64().map(|x| x as f32);
        let local_rope_theta = if arch == Arch::Gemma3 {
            let local = per_layer_type.map(|r| &r["sliding_attention"]);
            if let Some(kind) = local.and_then(|l| l["rope_type"].as_str()) {
                if kind != "default" {
                    bail!("config.json asks for rope scaling '{kind}' on the sliding layers, which wick does not run");
                }
            }
            Some(
                local
                    .and_then(|l| l["rope_theta"].as_f64())
                    .or_else(|| v["rope_local_base_freq"].as_f64())
                    .unwrap_or(10000.0) as f32,
            )
        } else {
            None
        };
        if flag("use_bidirectional_attention") {
            bail!("config.json asks for bidirectional attention, which wick does not run");
        }
        if gemma {
            let act = v["hidden_activation"]
                .as_str()
                .or_else(|| v["hidden_act"].as_str())
                .unwrap_or("gelu_pytorch_tanh");
            if act != "gelu_pytorch_tanh" {
                bail!("config.json asks for activation '{act}': wick runs {arch_name} with gelu_pytorch_tanh");
            }
        }
        let cfg = Self {
            arch,
            hidden_size,
            intermediate_size: get("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(num_heads),
            head_dim,
            vocab_size: get("vocab_size")?,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_style: RopeStyle::Neox,
            rotary_dim,
            rope_scale,
            max_position_embeddings,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
            sliding_window,
            window_layers,
            attn_logit_softcap: float("attn_logit_softcapping").filter(|_| gemma),
            final_logit_softcap: float("final_logit_softcapping").filter(|_| gemma),
            query_pre_attn_scalar: float("query_pre_attn_scalar").filter(|_| gemma),
            local_rope_theta,
            moe: MoeConfig::from_hf(&v, arch, num_layers)?,
        };
        cfg.validate()
    }

    /// Longrope (Phi-3 "su"/"longrope"): the frequency divisors and the factor on cos/sin.
    /// transformers uses `long_factor` for a forward pass longer than
    /// `original_max_position_embeddings` and `short_factor` otherwise; a paged cache cannot
    /// re-rotate cached keys when a sequence crosses that length, so wick picks once, as
    /// vLLM and llama.cpp do: the long factors when the model's context exceeds the
    /// original one. The attention factor is `attention_factor` if given, else
    /// `sqrt(1 + ln(s) / ln(original))` for `s = factor` (default: context / original), or
    /// 1 where `s <= 1`, applied with either set of factors (as transformers does).
    fn hf_longrope(
        s: &serde_json::Value,
        v: &serde_json::Value,
        max_position_embeddings: usize,
        rotary_dim: usize,
    ) -> Result<(Vec<f32>, f32)> {
        let original = s["original_max_position_embeddings"]
            .as_u64()
            .or_else(|| v["original_max_position_embeddings"].as_u64())
            .filter(|&o| o > 0)
            .ok_or_else(|| anyhow!("longrope scaling without original_max_position_embeddings"))?
            as usize;
        let list = |k: &str| -> Result<Vec<f32>> {
            let xs = s[k]
                .as_array()
                .ok_or_else(|| anyhow!("longrope scaling lacks the list '{k}'"))?;
            let xs = xs
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| anyhow!("longrope '{k}' holds something other than numbers"))?;
            if xs.len() != rotary_dim / 2 {
                bail!(
                    "longrope '{k}' has {} factors, not one per rotated pair ({})",
                    xs.len(),
                    rotary_dim / 2
                );
            }
            Ok(xs)
        };
        let (short, long) = (list("short_factor")?, list("long_factor")?);
        let factor = s["factor"]
            .as_f64()
            .unwrap_or(max_position_embeddings as f64 / original as f64);
        let scale = match s["attention_factor"].as_f64() {
            Some(a) => a,
            None if factor <= 1.0 => 1.0,
            None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
        };
        let factors = if max_position_embeddings > original {
            long
        } else {
            short
        };
        Ok((factors, scale as f32))
    }

    /// The sliding window of a config.json and the layers that have it (empty: every
    /// layer). Mistral's applies to
    /// every layer; qwen2/qwen3 use theirs only with `use_sliding_window`, and then only
    /// from layer `max_window_layers` on; Gemma 2's on even layers; Gemma 3's on all but
    /// every `sliding_window_pattern`-th; transformers 5 also lists `layer_types`. A window
    /// on some layers but not others is refused rather than ignored, except for Gemma 2
    /// and 3, where it is the design.
    fn hf_sliding_window(
        v: &serde_json::Value,
        arch: Arch,
        num_layers: usize,
    ) -> Result<(Option<usize>, Vec<bool>)> {
        let Some(window) = v["sliding_window"].as_u64().map(|w| w as usize) else {
            return Ok((None, Vec::new()));
        };
        let sliding: Vec<bool> = match v["layer_types"].as_array() {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            None => match arch {
                // Phi-3's (when not null) applies to every layer, as mistral's.
                Arch::Mistral | Arch::Phi3 | Arch::Mixtral => vec![true; num_layers],
                Arch::Gemma2 => (0..num_layers).map(|i| i % 2 == 0).collect(),
                // Gemma 3's older configs: every `sliding_window_pattern`-th layer global.
                Arch::Gemma3 => {
                    let every = v["sliding_window_pattern"].as_u64().unwrap_or(6).max(1) as usize;
                    (0..num_layers).map(|i| (i + 1) % every != 0).collect()
                }
                Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe
                    if v["use_sliding_window"].as_bool() == Some(true) =>
                {
                    let from = v["max_window_layers"].as_u64().unwrap_or(0) as usize;
                    (0..num_layers).map(|i| i >= from).collect()
                }
                _ => vec![false; num_layers],
            },
        };
        if window == 0 {
            bail!("config.json has sliding_window 0");
        }
        if sliding.iter().all(|&s| s) {
            Ok((Some(window), Vec::new()))
        } else if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
            anyhow::ensure!(
                sliding.len() == num_layers,
                "config.json lists {} layer_types for {num_layers} layers",
                sliding.len()
            );
            Ok((Some(window), sliding))
        } else if sliding.iter().any(|&s| s) {
            bail!(
                "config.json gives {} of {} layers a sliding window: wick runs a window on \
                 every layer or on none",
                sliding.iter().filter(|&&s| s).count(),
                sliding.len()
            )
        } else {
            Ok((None, Vec::new()))
        }
    }

    pub(crate) fn validate(self) -> Result<Self> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
            || self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.rotary_dim == 0
            || self.rotary_dim > self.head_dim
            || !self.rotary_dim.is_multiple_of(2)
        {
            bail!(
                "inconsistent attention shape: {} heads, {} kv heads, head dim {}, {} rotated",
                self.num_heads,
                self.num_kv_heads,
                self.head_dim,
                self.rotary_dim
            );
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_llama3_config() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,
            "rms_norm_eps":1e-5,"rope_theta":500000.0,"max_position_embeddings":131072,"tie_word_embeddings":true,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        let c = ModelConfig::from_hf_json(json).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 64);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        assert!(c.tie_word_embeddings);
    }

    /// The same Llama 3.2 config as transformers 4 writes it (`rope_scaling` beside a
    /// top-level `rope_theta`, `torch_dtype`, no `head_dim`) and as transformers 5 does
    /// (`rope_parameters` holding `rope_theta`, `dtype`, `head_dim`).
    #[test]
    fn reads_transformers_4_and_5_spellings_alike() {
        let shape = r#""architectures":["LlamaForCausalLM"],"hidden_size":2048,
            "intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
            "num_key_value_heads":8,"vocab_size":128256,"rms_norm_eps":1e-5,
            "max_position_embeddings":131072,"tie_word_embeddings":true"#;
        let scaling = r#""factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3""#;
        let v4 = format!(
            r#"{{{shape},"torch_dtype":"bfloat16","rope_theta":500000.0,
            "rope_scaling":{{{scaling}}}}}"#
        );
        let v5 = format!(
            r#"{{{shape},"dtype":"bfloat16","head_dim":64,
            "rope_parameters":{{{scaling},"rope_theta":500000.0}}}}"#
        );
        let (a, b) = (
            ModelConfig::from_hf_json(&v4).unwrap(),
            ModelConfig::from_hf_json(&v5).unwrap(),
        );
        for c in [&a, &b] {
            assert_eq!(c.rope_theta, 500_000.0);
            assert_eq!(c.head_dim, 64);
            assert_eq!(
                c.rope_scaling,
                RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }
            );
        }
        // Plain rope in either spelling; a null head_dim is hidden / heads.
        let plain = |rope: &str| {
            ModelConfig::from_hf_json(&format!(r#"{{{shape},"head_dim":null,{rope}}}"#)).unwrap()
        };
        for c in [
            plain(r#""rope_theta":20000.0,"rope_scaling":null"#),
            plain(r#""rope_parameters":{"rope_type":"default","rope_theta":20000.0}"#),
        ] {
            assert_eq!((c.rope_theta, c.head_dim), (20_000.0, 64));
            assert_eq!(c.rope_scaling, RopeScaling::None);
        }
    }

    /// Mixtral always renormalises its top-k weights; Qwen3-MoE when `norm_topk_prob`, with
    /// dense layers from `mlp_only_layers` and `decoder_sparse_step`; a top-k larger than
    /// the experts is refused.
    #[test]
    fn reads_mixture_of_experts_keys() {
        let cfg = |arch: &str, extra: &str| {
            ModelConfig::from_hf_json(&format!(
                r#"{{"architectures":["{arch}"],"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":6,"num_attention_heads":4,"vocab_size":100{extra}}}"#
            ))
        };
        let m = cfg(
            "MixtralForCausalLM",
            r#","num_local_experts":8,"num_experts_per_tok":2"#,
        )
        .unwrap()
        .moe
        .unwrap();
        assert_eq!((m.num_experts, m.top_k, m.intermediate_size), (8, 2, 128));
        assert!(m.norm_topk_prob && m.dense_layers.is_empty());
        let q = cfg(
            "Qwen3MoeForCausalLM",
            r#","num_experts":16,"num_experts_per_tok":4,"moe_intermediate_size":32,
            "norm_topk_prob":true,"decoder_sparse_step":2,"mlp_only_layers":[3]"#,
        )
        .unwrap();
        assert!(q.qk_norm);
        let m = q.moe.unwrap();
        assert_eq!((m.num_experts, m.top_k, m.intermediate_size), (16, 4, 32));
        assert!(m.norm_topk_prob);
        assert_eq!(m.dense_layers, vec![0, 2, 3, 4]);
        assert!(cfg(
            "Qwen3MoeForCausalLM",
            r#","num_experts":2,"num_experts_per_tok":4,"moe_intermediate_size":32"#
        )
        .is_err());
        assert!(cfg("LlamaForCausalLM", "").unwrap().moe.is_none());
    }

    #[test]
    fn sliding_windows_per_family() {
        let cfg = |arch: &str, extra: &str| {
            ModelConfig::from_hf_json(&format!(
                r#"{{"architectures":["{arch}"],"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":4,"num_attention_heads":4,"vocab_size":100{extra}}}"#
            ))
        };
        let window = |arch: &str, extra: &str| cfg(arch, extra).unwrap().sliding_window;
        assert_eq!(
            window("MistralForCausalLM", r#","sliding_window":4096"#),
            Some(4096)
        );
        assert_eq!(
            window("MistralForCausalLM", r#","sliding_window":null"#),
            None
        );
        assert_eq!(window("LlamaForCausalLM", ""), None);
        // Qwen's window is off unless use_sliding_window, and then only from layer
        // max_window_layers on.
        let qwen = r#","sliding_window":32768,"max_window_layers":"#;
        assert_eq!(
            window(
                "Qwen2ForCausalLM",
                &format!(r#"{qwen}28,"use_sliding_window":false"#)
            ),
            None
        );
        assert_eq!(
            window(
                "Qwen2ForCausalLM",
                &format!(r#"{qwen}4,"use_sliding_window":true"#)
            ),
            None
        );
        assert_eq!(
            window(
                "Qwen3ForCausalLM",
                &format!(r#"{qwen}0,"use_sliding_window":true"#)
            ),
            Some(32768)
        );
        let err = cfg(
            "Qwen2ForCausalLM",
            &format!(r#"{qwen}2,"use_sliding_window":true"#),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("2 of 4 layers a sliding window"), "{err}");
        // transformers 5's layer_types decide where given.
        let types = r#","sliding_window":8,"layer_types":["#;
        assert_eq!(
            window(
                "MistralForCausalLM",
                &format!(
                    r#"{types}"full_attention","full_attention","full_attention","full_attention"]"#
                )
            ),
            None
        );
        assert!(cfg(
            "Qwen3ForCausalLM",
            &format!(
                r#"{types}"sliding_attention","full_attention","full_attention","full_attention"]"#
            )
        )
        .is_err());
    }

    #[test]
    fn parses_hf_qwen3_config() {
        // Qwen3-0.6B's numbers: head_dim 128 with 16 heads of a 1024-wide model.
        let json = r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,
            "head_dim":128,"hidden_size":1024,"intermediate_size":3072,"max_position_embeddings":40960,
            "max_window_layers":28,"model_type":"qwen3","num_attention_heads":16,"num_hidden_layers":28,
            "num_key_value_heads":8,"rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,
            "sliding_window":null,"tie_word_embeddings":true,"torch_dtype":"bfloat16",
            "use_sliding_window":false,"vocab_size":151936}"#;
        let c = ModelConfig::from_hf_json(json).unwrap();
        assert_eq!(c.arch, Arch::Qwen3);
        assert_eq!((c.head_dim, c.num_heads, c.num_kv_heads), (128, 16, 8));
        assert!(c.qk_norm && !c.qkv_bias && c.tie_word_embeddings);
        assert_eq!((c.rope_theta, c.sliding_window), (1_000_000.0, None));
        let err = ModelConfig::from_hf_json(
            &json.replace(r#""attention_bias":false"#, r#""attention_bias":true"#),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("attention_bias"), "{err}");
    }

    /// Phi-3's longrope: the long factors and the attention factor of context / original
    /// when the context exceeds the original length, the short factors (and factor 1)
    /// when it does not; a partial rotary factor gives the rotated width, which the factor
    /// lists must match.
    #[test]
    fn parses_phi3_longrope_and_partial_rotary() {
        let cfg = |max_pos: usize, extra: &str| {
            ModelConfig::from_hf_json(&format!(
                r#"{{"architectures":["Phi3ForCausalLM"],"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,
                "max_position_embeddings":{max_pos},"original_max_position_embeddings":16,
                "partial_rotary_factor":0.75,"sliding_window":null,
                "rope_scaling":{{"type":"longrope","short_factor":[1,2,3,4,5,6],
                "long_factor":[7,8,9,10,11,12]{extra}}}}}"#
            ))
        };
        let long = cfg(256, "").unwrap();
        assert_eq!(
            (long.arch, long.head_dim, long.rotary_dim),
            (Arch::Phi3, 16, 12)
        );
        assert_eq!(
            long.rope_scaling,
            RopeScaling::FreqFactors(vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0])
        );
        let want = (1.0 + 16f64.ln() / 16f64.ln()).sqrt() as f32;
        assert!((long.rope_scale - want).abs() < 1e-6, "{}", long.rope_scale);
        assert_eq!(long.sliding_window, None);
        let short = cfg(16, "").unwrap();
        assert_eq!(
            short.rope_scaling,
            RopeScaling::FreqFactors(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert_eq!(short.rope_scale, 1.0);
        assert_eq!(
            cfg(256, r#","attention_factor":1.5"#).unwrap().rope_scale,
            1.5
        );
        // Without the partial factor all 16 dimensions rotate: 6 factors are too few.
        let err = ModelConfig::from_hf_json(
            r#"{"architectures":["Phi3ForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,
            "max_position_embeddings":256,"original_max_position_embeddings":16,
            "rope_scaling":{"type":"longrope","short_factor":[1,2,3,4,5,6],
            "long_factor":[7,8,9,10,11,12]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not one per rotated pair (8)"), "{err}");
    }

    /// Gemma 2: a window on even layers (from layer_types, or by position without them),
    /// its soft-caps and query scalar; other families ignore those keys.
    #[test]
    fn parses_gemma2_windows_and_soft_caps() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":4,
            "num_attention_heads":4,"head_dim":16,"vocab_size":100,"sliding_window":8,
            "query_pre_attn_scalar":24,"attn_logit_softcapping":50.0,
            "final_logit_softcapping":30.0"#;
        let with_types = format!(
            r#"{{"architectures":["Gemma2ForCausalLM"],{base},"layer_types":["sliding_attention",
            "full_attention","sliding_attention","full_attention"]}}"#
        );
        let without = format!(r#"{{"architectures":["Gemma2ForCausalLM"],{base}}}"#);
        for json in [with_types, without] {
            let c = ModelConfig::from_hf_json(&json).unwrap();
            assert_eq!(c.arch, Arch::Gemma2);
            let windows: Vec<_> = (0..4).map(|l| c.layer_window(l)).collect();
            assert_eq!(windows, [Some(8), None, Some(8), None]);
            assert_eq!(
                (
                    c.attn_logit_softcap,
                    c.final_logit_softcap,
                    c.query_pre_attn_scalar
                ),
                (Some(50.0), Some(30.0), Some(24.0))
            );
        }
        let err = ModelConfig::from_hf_json(&format!(
            r#"{{"architectures":["Gemma2ForCausalLM"],{base},"hidden_activation":"gelu"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("gelu_pytorch_tanh"), "{err}");
        let m = ModelConfig::from_hf_json(&format!(
            r#"{{"architectures":["MistralForCausalLM"],{base}}}"#
        ))
        .unwrap();
        assert_eq!(
            (
                m.attn_logit_softcap,
                m.query_pre_attn_scalar,
                m.layer_window(3)
            ),
            (None, None, Some(8))
        );
    }

    /// Gemma 3's text config as transformers 4 writes it (gemma-3-1b-it: top-level
    /// `rope_local_base_freq`, `sliding_window_pattern`, linear `rope_scaling` for the
    /// global layers) and as transformers 5 does (`rope_parameters` per layer type,
    /// `layer_types`): the global layers keep `rope_theta` and the scaling, the sliding
    /// ones the local base.
    #[test]
    fn parses_gemma3_layer_pattern_and_two_rope_bases() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":7,
            "num_attention_heads":4,"head_dim":16,"vocab_size":100,"sliding_window":512,
            "query_pre_attn_scalar":256,"attn_logit_softcapping":null,
            "final_logit_softcapping":null"#;
        let v4 = format!(
            r#"{{"architectures":["Gemma3ForCausalLM"],{base},"rope_theta":1000000.0,
            "rope_local_base_freq":10000.0,"sliding_window_pattern":6,
            "rope_scaling":{{"rope_type":"linear","factor":8.0}}}}"#
        );
        let types = ["sliding_attention"; 7]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i == 5 {
                    "\"full_attention\"".to_string()
                } else {
                    format!("\"{t}\"")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let v5 = format!(
            r#"{{"model_type":"gemma3_text",{base},"layer_types":[{types}],
            "rope_parameters":{{"full_attention":{{"rope_type":"linear","factor":8.0,
            "rope_theta":1000000.0}},"sliding_attention":{{"rope_type":"default",
            "rope_theta":10000.0}}}}}}"#
        );
        for json in [v4, v5] {
            let c = ModelConfig::from_hf_json(&json).unwrap();
            assert_eq!(c.arch, Arch::Gemma3);
            let windows: Vec<_> = (0..7).map(|l| c.layer_window(l)).collect();
            let s = Some(512);
            assert_eq!(windows, [s, s, s, s, s, None, s]);
            assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
            assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
            assert_eq!(
                (
                    c.attn_logit_softcap,
                    c.final_logit_softcap,
                    c.query_pre_attn_scalar
                ),
                (None, None, Some(256.0))
            );
            let local = c.local_rope().unwrap();
            assert_eq!(local.inv_freq()[1], 1.0 / 10000f32.powf(2.0 / 16.0));
        }
    }

    /// In-memory GGUF metadata (no tensor data) with the given keys and tensor names.
    fn gguf(arch: &str, keys: &[(&str, gguf_file::Value)], tensors: &[&str]) -> gguf_file::Content {
        use gguf_file::Value::{String as S, F32, U32};
        let mut metadata: std::collections::HashMap<String, gguf_file::Value> = [
            ("general.architecture".to_string(), S(arch.into())),
            (format!("{arch}.embedding_length"), U32(64)),
            (format!("{arch}.feed_forward_length"), U32(128)),
            (format!("{arch}.block_count"), U32(8)),
            (format!("{arch}.attention.head_count"), U32(4)),
            (format!("{arch}.attention.head_count_kv"), U32(2)),
            (format!("{arch}.attention.key_length"), U32(32)),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                F32(1e-6),
            ),
            (format!("{arch}.vocab_size"), U32(100)),
        ]
        .into_iter()
        .collect();
        for (k, v) in keys {
            metadata.insert(format!("{arch}.{k}"), v.clone());
        }
        let tensor_infos = tensors
            .iter()
            .map(|n| {
                let info = gguf_file::TensorInfo {
                    ggml_dtype: candle_core::quantized::GgmlDType::F32,
                    shape: candle_core::Shape::from(1),
                    offset: 0,
                };
                (n.to_string(), info)
            })
            .collect();
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos,
            tensor_data_offset: 0,
        }
    }

    /// Gemma from GGUF as llama.cpp's runtime reads it: gemma2's defaults (window 4096 on
    /// even layers, soft-caps 50 and 30, tied head), gemma3's window on all but every 6th
    /// layer with its swa rope base (10000 when absent), a pattern given as a period or as
    /// flags, and the query scale: head_dim, or hidden / heads for the 27B layer counts.
    #[test]
    fn reads_gemma_gguf_as_llamacpp_does() {
        use gguf_file::Value::{Array, Bool, F32, U32};
        let g2 = ModelConfig::from_gguf(&gguf("gemma2", &[], &["output.weight"])).unwrap();
        assert_eq!(g2.arch, Arch::Gemma2);
        let w: Vec<_> = (0..8).map(|l| g2.layer_window(l)).collect();
        assert_eq!(w, [Some(4096), None].repeat(4));
        assert_eq!(
            (g2.attn_logit_softcap, g2.final_logit_softcap),
            (Some(50.0), Some(30.0))
        );
        assert!(g2.tie_word_embeddings && !g2.qk_norm);
        assert_eq!(
            (g2.query_pre_attn_scalar, g2.local_rope_theta),
            (Some(32.0), None)
        );
        assert_eq!(g2.rope_style, RopeStyle::Neox);
        let g3 = ModelConfig::from_gguf(&gguf(
            "gemma3",
            &[
                ("attention.sliding_window", U32(512)),
                ("rope.freq_base", F32(1e6)),
            ],
            &["output.weight", "blk.0.attn_q_norm.weight"],
        ))
        .unwrap();
        let w: Vec<_> = (0..8).map(|l| g3.layer_window(l)).collect();
        let s = Some(512);
        assert_eq!(w, [s, s, s, s, s, None, s, s]);
        assert_eq!((g3.rope_theta, g3.local_rope_theta), (1e6, Some(1e4)));
        assert_eq!(
            (g3.attn_logit_softcap, g3.final_logit_softcap),
            (None, None)
        );
        assert!(!g3.tie_word_embeddings && g3.qk_norm);
        let period = ModelConfig::from_gguf(&gguf(
            "gemma3",
            &[
                ("attention.sliding_window", U32(8)),
                ("attention.sliding_window_pattern", U32(3)),
                ("rope.freq_base_swa", F32(100.0)),
            ],
            &[],
        ))
        .unwrap();
        let w: Vec<_> = (0..8).map(|l| period.layer_window(l).is_some()).collect();
        assert_eq!(w, [true, true, false, true, true, false, true, true]);
        assert_eq!(period.local_rope_theta, Some(100.0));
        let flags: Vec<_> = (0..8).map(|i| Bool(i == 1)).collect();
        let listed = ModelConfig::from_gguf(&gguf(
            "gemma3",
            &[
                ("attention.sliding_window", U32(8)),
                ("attention.sliding_window_pattern", Array(flags)),
            ],
            &[],
        ))
        .unwrap();
        let w: Vec<_> = (0..8).map(|l| listed.layer_window(l).is_some()).collect();
        assert_eq!(w, (0..8).map(|i| i == 1).collect::<Vec<_>>());
        // No window key: gemma3 attends globally everywhere.
        let global = ModelConfig::from_gguf(&gguf("gemma3", &[], &[])).unwrap();
        assert_eq!(
            (global.sliding_window, global.local_rope_theta),
            (None, None)
        );
        // The 27B models scale queries by hidden / heads, not head_dim.
        let big =
            ModelConfig::from_gguf(&gguf("gemma3", &[("block_count", U32(62))], &[])).unwrap();
        assert_eq!(big.query_pre_attn_scalar, Some(16.0));
        let big2 =
            ModelConfig::from_gguf(&gguf("gemma2", &[("block_count", U32(46))], &[])).unwrap();
        assert_eq!(big2.query_pre_attn_scalar, Some(16.0));
    }

    /// llama with `expert_count` is Mixtral (permuted q/k: interleaved rope), qwen3moe
    /// Qwen3-MoE with its expert size (feed_forward_length / used when absent); both
    /// renormalise the top-k weights, as llama.cpp does; more experts used than exist is
    /// refused.
    #[test]
    fn reads_moe_gguf_as_llamacpp_does() {
        use gguf_file::Value::U32;
        let experts = [("expert_count", U32(8)), ("expert_used_count", U32(2))];
        let m = ModelConfig::from_gguf(&gguf("llama", &experts, &[])).unwrap();
        assert_eq!(
            (m.arch, m.rope_style),
            (Arch::Mixtral, RopeStyle::Interleaved)
        );
        let moe = m.moe.unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.intermediate_size),
            (8, 2, 128)
        );
        assert!(moe.norm_topk_prob && moe.dense_layers.is_empty());
        let l = ModelConfig::from_gguf(&gguf("llama", &[], &[])).unwrap();
        assert_eq!((l.arch, l.moe), (Arch::Llama, None));
        let q = ModelConfig::from_gguf(&gguf("qwen3moe", &experts, &["blk.0.attn_q_norm.weight"]))
            .unwrap();
        assert_eq!((q.arch, q.rope_style), (Arch::Qwen3Moe, RopeStyle::Neox));
        assert!(q.qk_norm);
        assert_eq!(q.moe.as_ref().unwrap().intermediate_size, 64);
        let mut keys = experts.to_vec();
        keys.push(("expert_feed_forward_length", U32(48)));
        let q = ModelConfig::from_gguf(&gguf("qwen3moe", &keys, &[])).unwrap();
        let moe = q.moe.unwrap();
        assert_eq!((moe.intermediate_size, moe.norm_topk_prob), (48, true));
        let err = ModelConfig::from_gguf(&gguf(
            "qwen3moe",
            &[("expert_count", U32(2)), ("expert_used_count", U32(4))],
            &[],
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("4 of 2 experts"), "{err}");
    }

    #[test]
    fn rejects_unknown_architecture() {
        let err = ModelConfig::from_hf_json(r#"{"architectures":["GPTNeoXForCausalLM"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported model architecture 'GPTNeoXForCausalLM'"),
            "{err}"
        );
    }
}
