//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face config.json.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;

use crate::ops::{RopeScaling, RopeStyle};

/// Supported architecture families (all share the llama block structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
            "mistral" | "MistralForCausalLM" => Ok(Arch::Mistral),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            other => bail!(
                "unsupported model architecture '{other}': wick runs llama, mistral and qwen2 models"
            ),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
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
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2).
    pub qkv_bias: bool,
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
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let arch_name = md(content, "general.architecture")?
            .to_string()
            .map_err(|_| anyhow!("GGUF metadata 'general.architecture' is not a string"))?
            .clone();
        let arch = Arch::parse(&arch_name)?;
        let a = arch_name.as_str();
        let hidden_size = md_usize(content, &format!("{a}.embedding_length"))?;
        let num_heads = md_usize(content, &format!("{a}.attention.head_count"))?;
        let num_kv_heads =
            md_usize(content, &format!("{a}.attention.head_count_kv")).unwrap_or(num_heads);
        let head_dim = md_usize(content, &format!("{a}.attention.key_length"))
            .or_else(|_| md_usize(content, &format!("{a}.rope.dimension_count")))
            .unwrap_or(hidden_size / num_heads.max(1));
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
        let cfg = Self {
            arch,
            hidden_size,
            intermediate_size: md_usize(content, &format!("{a}.feed_forward_length"))?,
            num_layers: md_usize(content, &format!("{a}.block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: md_f32(content, &format!("{a}.attention.layer_norm_rms_epsilon"))? as f64,
            rope_theta: md_f32(content, &format!("{a}.rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            // llama.cpp permutes llama/mistral q,k at conversion and rotates adjacent pairs;
            // qwen2 keeps the Hugging Face layout (NEOX rope).
            rope_style: match arch {
                Arch::Llama | Arch::Mistral => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::Neox,
            },
            max_position_embeddings: md_usize(content, &format!("{a}.context_length"))
                .unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        };
        cfg.validate()
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
        let rope_scaling = match v.get("rope_scaling").filter(|s| !s.is_null()) {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s["rope_type"]
                    .as_str()
                    .or_else(|| s["type"].as_str())
                    .unwrap_or("");
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
                    "default" => RopeScaling::None,
                    other => bail!("unsupported rope_scaling type '{other}' in config.json"),
                }
            }
        };
        let cfg = Self {
            arch,
            hidden_size,
            intermediate_size: get("intermediate_size")?,
            num_layers: get("num_hidden_layers")?,
            num_heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(num_heads),
            head_dim: get("head_dim").unwrap_or(hidden_size / num_heads.max(1)),
            vocab_size: get("vocab_size")?,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10000.0) as f32,
            rope_scaling,
            rope_style: RopeStyle::Neox,
            max_position_embeddings: get("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2,
        };
        cfg.validate()
    }

    pub(crate) fn validate(self) -> Result<Self> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
            || self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
        {
            bail!(
                "inconsistent attention shape: {} heads, {} kv heads, head dim {}",
                self.num_heads,
                self.num_kv_heads,
                self.head_dim
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
