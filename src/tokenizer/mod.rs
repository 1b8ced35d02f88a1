//! Tokenizers: Hugging Face `tokenizers` built from GGUF metadata (to match llama.cpp) or
//! loaded from a snapshot's tokenizer.json, plus chat templates.

pub mod chat;
pub mod gguf;
mod pre;
mod special;
pub mod stream;
pub mod synthetic;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

pub use chat::{ChatMessage, ChatTemplate};
use special::{Fragment, Specials};
pub use stream::DecodeStream;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    /// Appended by `encode` with `add_special` (GGUF `add_eos_token`).
    append_eos: Option<u32>,
    /// `inner`'s post-processor adds special tokens (Hugging Face snapshots).
    post_process: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
    special_ids: HashSet<u32>,
    /// llama.cpp's text handling for tokenizers built from GGUF metadata.
    gguf: Option<GgufText>,
}

/// How a GGUF tokenizer treats text beyond what `inner` does.
struct GgufText {
    /// Control, user-defined and unknown tokens, found in text before tokenizing.
    specials: Specials,
    /// Tokens decoded as their text rather than through the byte-level decoder.
    verbatim_text: HashMap<u32, String>,
    /// Newline runs that are tokens of their own (Gemma 4), when applicable.
    newline_tokens: Option<HashMap<String, u32>>,
    /// `inner`'s id for text that is no token, which llama.cpp drops.
    no_token: Option<u32>,
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
        // tokenizer.json's post-processor adds BOS/EOS. transformers' Llama and Gemma
        // tokenizers rebuild it from add_bos_token/add_eos_token; other classes keep it,
        // but a BOS asked for and not added by it is added here.
        let class = cfg["tokenizer_class"].as_str().unwrap_or("");
        let class = class.strip_suffix("Fast").unwrap_or(class);
        let (add_bos_cfg, add_eos_cfg) = (
            cfg["add_bos_token"].as_bool(),
            cfg["add_eos_token"].as_bool(),
        );
        let rebuilds = matches!(
            class,
            "LlamaTokenizer" | "CodeLlamaTokenizer" | "GemmaTokenizer"
        ) && (add_bos_cfg.is_some() || add_eos_cfg.is_some());
        let eos_id = eos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let (post_process, add_bos, append_eos) = if rebuilds {
            (
                false,
                add_bos_cfg.unwrap_or(true) && bos_id.is_some(),
                eos_id.filter(|_| add_eos_cfg.unwrap_or(false)),
            )
        } else {
            let adds_bos = inner
                .encode_fast("", true)
                .is_ok_and(|e| e.get_ids().first().is_some_and(|&id| Some(id) == bos_id));
            (
                true,
                add_bos_cfg == Some(true) && !adds_bos && bos_id.is_some(),
                None,
            )
        };
        let special_ids = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Ok(Self {
            vocab_size: inner.get_vocab_size(true),
            add_bos,
            append_eos,
            post_process,
            inner,
            bos_id,
            eos_ids,
            bos_token,
            eos_token,
            chat_template,
            special_ids,
            gguf: None,
        })
    }

    /// A byte-level tokenizer built in code with exactly `vocab_size` ids, for models that
    /// ship none (random-weight models); see [`synthetic`].
    pub fn byte_level(vocab_size: usize) -> Result<Self> {
        synthetic::byte_level(vocab_size)
    }

    /// Token ids of `text`; special-token text is parsed as special tokens (llama.cpp's
    /// `parse_special`). With `add_special`, BOS (and EOS) are added as the model asks.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }
        let Some(g) = &self.gguf else {
            let enc = self
                .inner
                .encode_fast(text, add_special && self.post_process)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?;
            ids.extend_from_slice(enc.get_ids());
            if add_special {
                ids.extend(self.append_eos);
            }
            return Ok(ids);
        };
        for fragment in g.specials.partition(text) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(t) => match &g.newline_tokens {
                    None => self.encode_plain(t, &mut ids)?,
                    Some(newlines) => {
                        // Newline runs are words of their own; one that is a token is it.
                        let mut rest = t;
                        while !rest.is_empty() {
                            let nl = rest.starts_with('\n');
                            let len = rest.find(|c: char| (c == '\n') != nl).unwrap_or(rest.len());
                            let (word, tail) = rest.split_at(len);
                            match newlines.get(word).filter(|_| nl) {
                                Some(&id) => ids.push(id),
                                None => self.encode_plain(word, &mut ids)?,
                            }
                            rest = tail;
                        }
                    }
                },
            }
        }
        if add_special {
            ids.extend(self.append_eos);
        }
        Ok(ids)
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let no_token = self.gguf.as_ref().and_then(|g| g.no_token);
        ids.extend(enc.get_ids().iter().filter(|&&id| Some(id) != no_token));
        Ok(())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let decode = |ids: &[u32]| {
            self.inner
                .decode(ids, skip_special)
                .map_err(|e| anyhow!("detokenization failed: {e}"))
        };
        let Some(g) = &self.gguf else {
            return decode(ids);
        };
        // Ids outside the vocabulary are ignored.
        let known: Vec<u32>;
        let ids = if ids.iter().any(|&id| id as usize >= self.vocab_size) {
            known = ids
                .iter()
                .copied()
                .filter(|&id| (id as usize) < self.vocab_size)
                .collect();
            &known[..]
        } else {
            ids
        };
        if g.verbatim_text.is_empty() {
            return decode(ids);
        }
        let verbatim = &g.verbatim_text;
        let mut out = String::new();
        let mut run_start = 0;
        for (i, id) in ids.iter().enumerate() {
            if let Some(text) = verbatim.get(id) {
                out.push_str(&decode(&ids[run_start..i])?);
                if !(skip_special && self.special_ids.contains(id)) {
                    out.push_str(text);
                }
                run_start = i + 1;
            }
        }
        out.push_str(&decode(&ids[run_start..])?);
        Ok(out)
    }

    /// The decoded text of one token.
    pub fn token_str(&self, id: u32) -> Option<String> {
        if (id as usize) >= self.vocab_size {
            return None;
        }
        self.decode(&[id], false).ok()
    }

    /// The raw bytes each id stands for in generated text, by id, for byte-level
    /// constraints (`crate::grammar`): byte-level BPE pieces through GPT-2's byte map,
    /// `<0xHH>` byte-fallback pieces as their byte, SentencePiece's `▁` as a space,
    /// added tokens as their text. None for special tokens and ids without a piece.
    pub fn token_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let byte_level = self
            .inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|d| d.contains("ByteLevel"));
        let unmap: Option<HashMap<char, u8>> = byte_level.then(|| {
            let chars = synthetic::byte_chars();
            (0..=255u8).map(|b| (chars[b as usize], b)).collect()
        });
        let added = self.inner.get_added_tokens_decoder();
        let verbatim = self.gguf.as_ref().map(|g| &g.verbatim_text);
        (0..self.vocab_size as u32)
            .map(|id| {
                if self.special_ids.contains(&id) {
                    return None;
                }
                if let Some(text) = verbatim.and_then(|v| v.get(&id)) {
                    return Some(text.as_bytes().to_vec());
                }
                if let Some(a) = added.get(&id) {
                    return (!a.special).then(|| a.content.as_bytes().to_vec());
                }
                let piece = self.inner.id_to_token(id)?;
                if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
                    if let Ok(b) = u8::from_str_radix(&piece[3..5], 16) {
                        return Some(vec![b]);
                    }
                }
                match &unmap {
                    Some(m) => piece.chars().map(|c| m.get(&c).copied()).collect(),
                    None => Some(piece.replace('\u{2581}', " ").into_bytes()),
                }
            })
            .collect()
    }

    /// Whether `id` is a special token (control or unknown in GGUF terms): skipped by
    /// `decode(.., skip_special = true)`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A word-level tokenizer.json, with or without a post-processor adding `<s>`.
    fn tokenizer_json(post_processor: bool) -> serde_json::Value {
        let added: Vec<_> = ["<s>", "</s>", "<eot>"]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                                 "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let pp = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}});
        json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
               "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
               "post_processor": if post_processor { pp } else { serde_json::Value::Null },
               "decoder": null,
               "model": {"type": "WordLevel", "unk_token": "[UNK]",
                         "vocab": {"<s>": 0, "</s>": 1, "<eot>": 2, "hello": 3, "world": 4, "[UNK]": 5}}})
    }

    fn snapshot(
        post_processor: bool,
        config: serde_json::Value,
        generation: Option<serde_json::Value>,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: &serde_json::Value| {
            std::fs::write(dir.path().join(name), v.to_string()).unwrap()
        };
        write("tokenizer.json", &tokenizer_json(post_processor));
        write("tokenizer_config.json", &config);
        if let Some(g) = generation {
            write("generation_config.json", &g);
        }
        dir
    }

    #[test]
    fn snapshot_special_tokens_and_templates() {
        let dir = snapshot(
            true,
            json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                   "chat_template": [{"name": "tool_use", "template": "tools"},
                                     {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}),
            Some(json!({"eos_token_id": [1, 2]})),
        );
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.bos_id(), Some(0));
        assert_eq!(t.eos_ids(), &[1, 2]);
        assert_eq!(t.encode("hello world", true).unwrap(), vec![0, 3, 4]);
        assert_eq!(t.encode("hello<eot>world", false).unwrap(), vec![3, 2, 4]);
        assert!(t.is_special(2) && !t.is_special(3));
        assert_eq!(t.vocab_size(), 6);
        let chat = t.chat(None).unwrap().unwrap();
        let m = [ChatMessage {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        }];
        assert_eq!(chat.render(&m, true).unwrap(), "<s>hi");
        let chat = t.chat(Some("[{{ eos_token }}]")).unwrap().unwrap();
        assert_eq!(chat.render(&m, true).unwrap(), "[</s>]");
    }

    #[test]
    fn snapshot_add_bos_and_eos_flags() {
        // transformers' Llama tokenizer rebuilds the post-processor from the flags.
        let dir = snapshot(
            true,
            json!({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "add_bos_token": false, "add_eos_token": true}),
            None,
        );
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.encode("hello world", true).unwrap(), vec![3, 4, 1]);
        assert_eq!(t.encode("hello world", false).unwrap(), vec![3, 4]);
        assert_eq!(t.eos_ids(), &[1]);
        // A BOS asked for that the post-processor does not add is added.
        let dir = snapshot(
            false,
            json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}),
            None,
        );
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.encode("hello", true).unwrap(), vec![0, 3]);
        assert_eq!(t.chat_template(), None);
        // The template may live in chat_template.jinja.
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{{ messages | length }}",
        )
        .unwrap();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.chat_template(), Some("{{ messages | length }}"));
        let e = Tokenizer::from_dir(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
