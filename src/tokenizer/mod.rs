//! Tokenizers: Hugging Face `tokenizers` built from GGUF metadata (to match llama.cpp) or
//! loaded from a snapshot's tokenizer.json, plus chat templates.

pub mod chat;
pub mod gguf;

use std::path::Path;

use anyhow::{anyhow, Context, Result};

pub use chat::{ChatMessage, ChatTemplate};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    pub fn from_gguf(content: &candle_core::quantized::gguf_file::Content) -> Result<Self> {
        gguf::from_metadata(&content.metadata)
    }

    /// A Hugging Face snapshot: tokenizer.json, tokenizer_config.json (bos/eos tokens,
    /// add_bos_token, chat_template) and generation_config.json (eos ids).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("cannot load tokenizer.json in {}: {e}", dir.display()))?;
        let read_json = |name: &str| -> Result<serde_json::Value> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => {
                    serde_json::from_str(&text).with_context(|| format!("{name} is not valid JSON"))
                }
                Err(_) => Ok(serde_json::Value::Null),
            }
        };
        let cfg = read_json("tokenizer_config.json")?;
        let gen = read_json("generation_config.json")?;
        let token_str = |v: &serde_json::Value| -> Option<String> {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v["content"].as_str().map(str::to_string))
        };
        let bos_token = token_str(&cfg["bos_token"]);
        let eos_token = token_str(&cfg["eos_token"]);
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let mut eos_ids: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        match &gen["eos_token_id"] {
            serde_json::Value::Number(n) => eos_ids.extend(n.as_u64().map(|x| x as u32)),
            serde_json::Value::Array(a) => {
                eos_ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
            }
            _ => {}
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        // Templates may be a string or a list of named templates.
        let chat_template = match &cfg["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first())
                .and_then(|t| t["template"].as_str().map(str::to_string)),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        // tokenizer.json's post-processor adds BOS itself when the model wants it.
        Ok(Self {
            add_bos: false,
            inner,
            bos_id,
            eos_ids,
            bos_token,
            eos_token,
            chat_template,
        })
    }

    /// Token ids of `text`; special-token text is parsed as special tokens. With
    /// `add_special`, BOS (or whatever the tokenizer's post-processor adds) is added.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("detokenization failed: {e}"))
    }

    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.decode(&[id], false).ok()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The chat template (an override, else the model's own), compiled.
    pub fn chat(&self, override_template: Option<&str>) -> Result<Option<ChatTemplate>> {
        match override_template.or(self.chat_template.as_deref()) {
            None => Ok(None),
            Some(src) => Ok(Some(ChatTemplate::new(
                src,
                self.bos_token.as_deref(),
                self.eos_token.as_deref(),
            )?)),
        }
    }
}
