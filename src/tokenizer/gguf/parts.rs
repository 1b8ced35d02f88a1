//! The pieces of a Hugging Face tokenizer built from GGUF metadata: a BPE model and the
//! JSON forms of its normalizer, pre-tokenizer and decoder, assembled with the verbatim
//! tokens as added tokens.

use std::collections::HashMap;

use anyhow::{anyhow, Result};

/// The pieces of a Hugging Face tokenizer: a BPE model and the JSON forms of the rest.
pub(super) struct Parts {
    pub(super) model: tokenizers::models::bpe::BPE,
    pub(super) normalizer: serde_json::Value,
    pub(super) pre_tokenizer: serde_json::Value,
    pub(super) decoder: serde_json::Value,
}

impl Parts {
    pub(super) fn build(self, added: Vec<tokenizers::AddedToken>) -> Result<tokenizers::Tokenizer> {
        fn part<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
            what: &str,
        ) -> Result<Option<T>> {
            if v.is_null() {
                return Ok(None);
            }
            serde_json::from_value(v)
                .map(Some)
                .map_err(|e| anyhow!("cannot build the tokenizer's {what}: {e}"))
        }
        let mut t = tokenizers::Tokenizer::new(self.model);
        t.with_normalizer(part::<tokenizers::NormalizerWrapper>(
            self.normalizer,
            "normalizer",
        )?);
        t.with_pre_tokenizer(part::<tokenizers::PreTokenizerWrapper>(
            self.pre_tokenizer,
            "pre-tokenizer",
        )?);
        t.with_decoder(part::<tokenizers::DecoderWrapper>(self.decoder, "decoder")?);
        let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
        t.add_special_tokens(&special);
        t.add_tokens(&normal);
        Ok(t)
    }
}

pub(super) fn bpe_model(
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    unk: Option<String>,
    byte_fallback: bool,
    fuse_unk: bool,
    ignore_merges: bool,
) -> Result<tokenizers::models::bpe::BPE> {
    let mut b = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .byte_fallback(byte_fallback)
        .fuse_unk(fuse_unk)
        .ignore_merges(ignore_merges);
    if let Some(unk) = unk {
        b = b.unk_token(unk);
    }
    b.build()
        .map_err(|e| anyhow!("cannot build the BPE model from GGUF metadata: {e}"))
}
