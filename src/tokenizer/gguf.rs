//! A `tokenizers::Tokenizer` from GGUF metadata, built to tokenize as llama.cpp does.
//!
//! `gpt2` vocabularies become byte-level BPE with the pre-tokenizer regexes llama.cpp
//! associates with `tokenizer.ggml.pre`; `llama` vocabularies become SentencePiece-style
//! BPE (merges ranked by piece score, byte fallback), as Hugging Face's converter builds.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use super::Tokenizer;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pre-tokenizer regexes (applied in order) for a `tokenizer.ggml.pre` name, following
/// llama.cpp's llama-vocab.cpp.
fn pre_regexes(pre: &str) -> Vec<&'static str> {
    match pre {
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "falcon3" | "pixtral" => vec![LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "hunyuan" => vec![QWEN2],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "gpt-2" | "gpt2" | "default" | "phi-2" | "jina-es" | "jina-de" | "olmo" | "jais"
        | "mpt" => vec![GPT2],
        other => {
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer; using GPT-2's regex"
            );
            vec![GPT2]
        }
    }
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &str) -> Option<&'a Value> {
    md.get(key)
}

fn get_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    let v = get(md, key)?;
    v.to_u32()
        .ok()
        .or_else(|| v.to_i32().ok().map(|x| x as u32))
        .or_else(|| v.to_u64().ok().map(|x| x as u32))
}

fn get_bool(md: &HashMap<String, Value>, key: &str) -> Option<bool> {
    get(md, key)?.to_bool().ok()
}

fn strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let v = get(md, key).ok_or_else(|| anyhow!("GGUF metadata lacks '{key}'"))?;
    v.to_vec()
        .map_err(|_| anyhow!("GGUF metadata '{key}' is not an array"))?
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|_| anyhow!("GGUF metadata '{key}' holds a non-string"))
        })
        .collect()
}

pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Tokenizer> {
    let model = get(md, "tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| {
            anyhow!("GGUF metadata lacks 'tokenizer.ggml.model': the file carries no tokenizer")
        })?
        .clone();
    let tokens = strings(md, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match get(md, "tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    // Control (3) and user-defined (4) tokens are matched as whole tokens in text.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types.get(i) == Some(&3)})
        })
        .collect();
    let (spec, default_add_bos) = match model.as_str() {
        "gpt2" => (gpt2_spec(md, &tokens)?, false),
        "llama" => (llama_spec(md, &tokens)?, true),
        other => bail!("unsupported GGUF tokenizer model '{other}': wick reads 'gpt2' (BPE) and 'llama' (SentencePiece)"),
    };
    let mut spec = spec;
    spec["added_tokens"] = serde_json::Value::Array(added);
    let inner: tokenizers::Tokenizer = spec
        .to_string()
        .parse()
        .map_err(|e| anyhow!("cannot build the tokenizer from GGUF metadata: {e}"))?;
    let bos_id = get_u32(md, "tokenizer.ggml.bos_token_id");
    let mut eos_ids: Vec<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|k| get_u32(md, k))
    .filter(|&id| (id as usize) < tokens.len())
    .collect();
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let name = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
    Ok(Tokenizer {
        inner,
        add_bos: get_bool(md, "tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos),
        bos_token: name(bos_id),
        eos_token: name(get_u32(md, "tokenizer.ggml.eos_token_id")),
        bos_id,
        eos_ids,
        chat_template: get(md, "tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
    })
}

fn gpt2_spec(md: &HashMap<String, Value>, tokens: &[String]) -> Result<serde_json::Value> {
    let merges = strings(md, "tokenizer.ggml.merges")?;
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let pre = get(md, "tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let mut pretok: Vec<serde_json::Value> = pre_regexes(pre)
        .into_iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pretok.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretok},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": matches!(pre, "llama3" | "llama-bpe" | "llama-v3"),
                  "vocab": vocab, "merges": merges}
    }))
}

fn llama_spec(md: &HashMap<String, Value>, tokens: &[String]) -> Result<serde_json::Value> {
    let scores: Vec<f32> = match get(md, "tokenizer.ggml.scores").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|x| x.to_f32().unwrap_or(0.0)).collect(),
        None => vec![0.0; tokens.len()],
    };
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // Merges as Hugging Face's SentencePiece extractor derives them: every split of a
    // piece into two pieces of the vocabulary, ranked by the merged piece's score.
    let mut merges: Vec<(f32, usize, usize, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (pos, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(pos);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((
                    scores.get(id).copied().unwrap_or(0.0),
                    id,
                    li,
                    ri,
                    l.to_string(),
                    r.to_string(),
                ));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let merges: Vec<[String; 2]> = merges.into_iter().map(|m| [m.4, m.5]).collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let unk = get_u32(md, "tokenizer.ggml.unknown_token_id")
        .and_then(|i| tokens.get(i as usize).cloned());
    let add_space = get_bool(md, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let mut norm = Vec::new();
    if add_space {
        norm.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut dec = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space {
        dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "normalizer": {"type": "Sequence", "normalizers": norm},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": dec},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A tiny SentencePiece vocabulary: bytes, a few pieces with scores.
    fn spm() -> HashMap<String, Value> {
        let mut tokens = vec!["<unk>", "<s>", "</s>"];
        let bytes: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
        tokens.extend(bytes.iter().map(String::as_str));
        let pieces = [
            "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "llo", "▁hello", "▁w", "or",
            "▁wor", "ld", "▁world",
        ];
        tokens.extend(pieces);
        let mut scores = vec![0.0f32; 3 + 256];
        scores.extend((0..pieces.len()).map(|i| {
            if pieces[i].chars().count() > 1 {
                -(i as f32)
            } else {
                -100.0
            }
        }));
        let mut types = vec![2, 3, 3];
        types.extend(std::iter::repeat_n(6, 256));
        types.extend(std::iter::repeat_n(1, pieces.len()));
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        md.insert("tokenizer.ggml.tokens".into(), arr(&tokens));
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        );
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        md
    }

    #[test]
    fn sentencepiece_vocab_tokenizes_and_round_trips() {
        let t = from_metadata(&spm()).unwrap();
        let id = |s: &str| t.inner().token_to_id(s).unwrap();
        assert_eq!(
            t.encode("hello world", true).unwrap(),
            vec![1, id("▁hello"), id("▁world")]
        );
        // Unknown characters fall back to bytes: "é" is C3 A9.
        let ids = t.encode("hé", false).unwrap();
        assert_eq!(ids, vec![id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")]);
        assert_eq!(t.decode(&ids, true).unwrap(), "hé");
        assert_eq!(
            t.decode(&t.encode("hello world", true).unwrap(), true)
                .unwrap(),
            "hello world"
        );
        assert_eq!(t.eos_ids(), &[2]);
        assert!(t.is_special(1) && !t.is_special(id("he")));
    }

    #[test]
    fn unknown_tokenizer_model_is_rejected() {
        let mut md = spm();
        md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("unsupported GGUF tokenizer model 'rwkv'"), "{e}");
    }
}
