//! A tokenizer from GGUF metadata (`tokenizer.ggml.*`), built to tokenize as llama.cpp
//! does.
//!
//! * `gpt2` vocabularies become byte-level BPE split by the regexes llama.cpp associates
//!   with `tokenizer.ggml.pre` (see [`super::pre`]); `gemma4` ones SentencePiece-style BPE
//!   over raw UTF-8 (`bpe`).
//! * `llama` vocabularies become what Hugging Face's LlamaConverter builds: BPE with merges
//!   derived from the vocabulary ranked by piece score, byte fallback, `▁` for spaces and a
//!   `▁` prefix when `add_space_prefix` holds (`spm`).
//! * Token types and the token-text rules llama.cpp applies on load decide which tokens
//!   are matched verbatim in text (control, user-defined, unknown: `verbatim`), which
//!   are special, and which end generation (`roles`).
//!
//! `metadata` reads the typed values, `vocab` the tokens and their attributes, and
//! `parts` assembles the Hugging Face tokenizer.

mod bpe;
mod metadata;
mod parts;
mod roles;
mod spm;
mod verbatim;
mod vocab;

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::Value;

use super::pre::bpe_pre;
use super::{GgufText, Tokenizer};
use metadata::{get_bool, get_str};
use roles::Roles;
use verbatim::Verbatim;
use vocab::Vocab;

pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Tokenizer> {
    let model = get_str(md, "tokenizer.ggml.model").ok_or_else(|| {
        anyhow!("GGUF metadata lacks 'tokenizer.ggml.model': the file carries no tokenizer")
    })?;
    if !matches!(model, "gpt2" | "llama" | "gemma4") {
        bail!(
            "unsupported GGUF tokenizer model '{model}': wick reads 'gpt2' and 'gemma4' (BPE) and 'llama' (SentencePiece)"
        );
    }
    let mut vocab = Vocab::from_metadata(md)?;
    let n = vocab.len();
    let pre_name = get_str(md, "tokenizer.ggml.pre");
    let bpe = (model != "llama").then(|| bpe_pre(model, pre_name));
    let Roles {
        bos_id,
        eos_id,
        unk_id,
        eog,
    } = Roles::resolve(md, &mut vocab, model, bpe.as_ref());
    let Verbatim {
        ids: verbatim,
        specials,
        added,
        special_ids,
    } = Verbatim::new(md, &vocab, pre_name);

    let add_bos_default = match &bpe {
        None => true,
        Some(b) => b.add_bos,
    };
    let mut add_bos = get_bool(md, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default);
    if bpe.as_ref().is_some_and(|b| b.newline_tokens) {
        // llama.cpp always adds BOS for Gemma 4.
        add_bos = true;
    }
    let mut add_eos = get_bool(md, "tokenizer.ggml.add_eos_token").unwrap_or(false);
    if add_bos && bos_id.is_none() {
        tracing::warn!("GGUF asks for a BOS token but names none; adding none");
        add_bos = false;
    }
    if add_eos && eos_id.is_none() {
        tracing::warn!("GGUF asks for an EOS token but names none; adding none");
        add_eos = false;
    }

    let parts = match &bpe {
        Some(b) => bpe::bpe_parts(md, &vocab, b)?,
        None => spm::spm_parts(md, &vocab, unk_id)?,
    };
    let inner = parts.build(added)?;

    // Byte-level decoding would garble verbatim token text that is not byte-level
    // encoded; such tokens are decoded as their text.
    let verbatim_text: HashMap<u32, String> = if bpe.as_ref().is_some_and(|b| b.byte_encode) {
        verbatim
            .iter()
            .map(|&id| (id, vocab.tokens[id as usize].clone()))
            .collect()
    } else {
        HashMap::new()
    };
    let newline_tokens = bpe.as_ref().filter(|b| b.newline_tokens).map(|_| {
        vocab
            .index
            .iter()
            .filter(|(t, _)| !t.is_empty() && t.bytes().all(|b| b == b'\n'))
            .map(|(t, &id)| (t.clone(), id))
            .collect::<HashMap<_, _>>()
    });
    let text_of = |id: Option<u32>| id.and_then(|i| vocab.text(i)).map(str::to_string);
    Ok(Tokenizer {
        inner,
        vocab_size: n,
        add_bos,
        append_eos: if add_eos { eos_id } else { None },
        post_process: false,
        bos_token: text_of(bos_id),
        eos_token: text_of(eos_id),
        bos_id,
        eos_ids: eog.into_iter().collect(),
        special_ids,
        chat_template: get_str(md, "tokenizer.chat_template").map(str::to_string),
        gguf: Some(GgufText {
            no_token: bpe.as_ref().filter(|b| b.byte_encode).map(|_| n as u32),
            specials,
            verbatim_text,
            newline_tokens,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn strings(v: &[String]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.clone())).collect())
    }

    pub(super) fn base(model: &str, tokens: &[String], types: &[i32]) -> HashMap<String, Value> {
        let mut md = HashMap::new();
        md.insert("general.architecture".into(), Value::String("llama".into()));
        md.insert("tokenizer.ggml.model".into(), Value::String(model.into()));
        md.insert("tokenizer.ggml.tokens".into(), strings(tokens));
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        );
        md
    }

    use super::bpe::tests::bpe;
    use super::spm::tests::spm;

    #[test]
    fn bad_metadata_is_rejected() {
        let mut md = spm(true, false);
        md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("unsupported GGUF tokenizer model 'rwkv'"), "{e}");
        let mut md = spm(true, false);
        md.remove("tokenizer.ggml.tokens");
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
        let mut md = bpe("gpt-2");
        md.remove("tokenizer.ggml.merges");
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.merges"), "{e}");
        let mut md = spm(true, false);
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(vec![Value::F32(0.0)]),
        );
        assert!(from_metadata(&md).is_err());
        let mut md = HashMap::new();
        md.insert("general.architecture".into(), Value::String("llama".into()));
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model"), "{e}");
    }
}
