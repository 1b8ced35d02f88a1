//! From a resolved model (a GGUF file, a safetensors snapshot or a random-weight shape) to
//! a runnable model and its tokenizer.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::Model;
use crate::hub::{ModelFormat, ResolvedModel};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Weight dtype for safetensors checkpoints and random models; CPU computes in f32.
    pub dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
        }
    }
}

pub struct LoadedModel {
    pub name: String,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// Chat template override from models.toml (else the model's own).
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("config", self.model.config())
            .finish()
    }
}

/// Parses a dtype name as written in models.toml or on the command line.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => bail!("unsupported dtype '{other}': use f32, f16 or bf16"),
    }
}

pub fn load(resolved: &ResolvedModel, opts: &LoadOptions) -> Result<LoadedModel> {
    let (model, tokenizer) = match resolved.format {
        ModelFormat::Gguf => load_gguf(&resolved.path, &opts.device)?,
        ModelFormat::Safetensors => {
            let dtype = match (&opts.dtype, &resolved.dtype) {
                (Some(d), _) => *d,
                (None, Some(name)) => parse_dtype(name)?,
                // The CPU computes in f32 whatever the dtype; a GPU keeps bf16 weights.
                (None, None) if opts.device.is_cuda() => DType::BF16,
                (None, None) => DType::F32,
            };
            load_safetensors(&resolved.path, dtype, &opts.device)?
        }
        ModelFormat::Random(spec) => {
            // bf16 on a GPU unless asked otherwise; the CPU computes in f32 anyway.
            let dtype = match (&opts.dtype, &resolved.dtype) {
                (Some(d), _) => *d,
                (None, Some(name)) => parse_dtype(name)?,
                (None, None) if opts.device.is_cpu() => DType::F32,
                (None, None) => DType::BF16,
            };
            super::random::load(spec, dtype, &opts.device)?
        }
    };
    tracing::info!(
        model = %resolved.name,
        arch = model.config().arch.as_str(),
        layers = model.config().num_layers,
        hidden = model.config().hidden_size,
        vocab = model.config().vocab_size,
        "model loaded"
    );
    Ok(LoadedModel {
        name: resolved.name.clone(),
        model,
        tokenizer,
        chat_template: resolved.chat_template.clone(),
    })
}

/// The tokenizer of a resolved model, without its weights (e.g. to count prompt tokens).
pub fn load_tokenizer(resolved: &ResolvedModel) -> Result<Tokenizer> {
    match resolved.format {
        ModelFormat::Gguf => {
            let path = &resolved.path;
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot open model file {}", path.display()))?;
            let content = gguf_file::Content::read(&mut file).map_err(|e| {
                anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display())
            })?;
            Tokenizer::from_gguf(&content)
        }
        ModelFormat::Safetensors => Tokenizer::from_dir(&resolved.path),
        ModelFormat::Random(spec) => Tokenizer::byte_level(spec.shape.config().vocab_size),
    }
}

fn load_gguf(path: &Path, device: &Device) -> Result<(Model, Tokenizer)> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open model file {}", path.display()))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a readable GGUF file ({e}): it may be truncated, corrupt, or use a \
             quantization wick does not support; delete it to fetch it again",
            path.display()
        )
    })?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let model = Model::from_gguf(&content, &mut file, device)
        .with_context(|| format!("loading weights from {}", path.display()))?;
    Ok((model, tokenizer))
}

fn load_safetensors(dir: &Path, dtype: DType, device: &Device) -> Result<(Model, Tokenizer)> {
    let config_json = std::fs::read_to_string(dir.join("config.json"))
        .with_context(|| format!("cannot read config.json in {}", dir.display()))?;
    let config = ModelConfig::from_hf_json(&config_json)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .safetensors files in {}", dir.display());
    }
    // The CPU path computes in f32 whatever the stored dtype.
    let compute = if device.is_cpu() { DType::F32 } else { dtype };
    // SAFETY: the files are memory-mapped read-only; wick never writes them.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, compute, device)? };
    let model = Model::from_safetensors(config, vb)
        .with_context(|| format!("loading weights from {}", dir.display()))?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    Ok((model, tokenizer))
}
