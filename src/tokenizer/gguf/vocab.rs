//! The vocabulary (`tokenizer.ggml.tokens`) with llama.cpp's view of each token: its
//! attributes, derived from `tokenizer.ggml.token_type`, and an index from text to id.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};

use super::metadata::{as_i64, get_per_token, get_strings, Metadata};

// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`.
pub(super) const UNKNOWN: u32 = 1 << 0;
pub(super) const NORMAL: u32 = 1 << 1;
pub(super) const CONTROL: u32 = 1 << 2;
pub(super) const USER_DEFINED: u32 = 1 << 3;
pub(super) const BYTE: u32 = 1 << 4;
pub(super) const UNUSED: u32 = 1 << 5;

/// The vocabulary with llama.cpp's view of each token.
pub(super) struct Vocab {
    pub(super) tokens: Vec<String>,
    pub(super) attrs: Vec<u32>,
    pub(super) index: HashMap<String, u32>,
}

impl Vocab {
    /// Reads the tokens and their types; an empty token text becomes `[EMPTY_<id>]`.
    pub(super) fn from_metadata(md: &Metadata) -> Result<Self> {
        let mut tokens = get_strings(md, "tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF metadata lacks 'tokenizer.ggml.tokens'"))?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            bail!("GGUF vocabulary has {} tokens", tokens.len());
        }
        let n = tokens.len();
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let types = get_per_token(md, "tokenizer.ggml.token_type", n, as_i64, 1)?;
        let attrs = types
            .iter()
            .take(n)
            .map(|t| match t {
                2 => UNKNOWN,
                3 => CONTROL,
                4 => USER_DEFINED,
                5 => UNUSED,
                6 => BYTE,
                1 => NORMAL,
                _ => 0,
            })
            .collect();
        let mut index = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // As llama.cpp: a repeated text names its last token.
            index.insert(t.clone(), i as u32);
        }
        Ok(Self {
            tokens,
            attrs,
            index,
        })
    }

    /// Tokens in the vocabulary.
    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(super) fn id(&self, text: &str) -> Option<u32> {
        self.index.get(text).copied()
    }

    pub(super) fn text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub(super) fn add_attr(&mut self, id: u32, attr: u32) {
        if let Some(a) = self.attrs.get_mut(id as usize) {
            *a |= attr;
        }
    }

    /// The lowest id among tokens with one of these texts.
    pub(super) fn first_of(&self, texts: &[&str]) -> Option<u32> {
        texts.iter().filter_map(|t| self.id(t)).min()
    }
}
