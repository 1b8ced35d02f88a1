//! Tokens matched verbatim in text before tokenizing (control, user-defined and unknown
//! ones, as llama.cpp does), which of them are special, and the whitespace beside them
//! that some models' tokens swallow (llama.cpp's per-model `lstrip`/`rstrip` rules).

use std::collections::{HashMap, HashSet};

use super::metadata::{get_str, Metadata};
use super::vocab::{Vocab, CONTROL, UNKNOWN, USER_DEFINED};
use crate::tokenizer::special::{SpecialToken, Specials};

/// Attributes that make a token matched verbatim in text.
const VERBATIM: u32 = CONTROL | USER_DEFINED | UNKNOWN;

/// The verbatim tokens, in the forms the tokenizer's parts take them.
pub(super) struct Verbatim {
    /// Their ids, ascending.
    pub(super) ids: Vec<u32>,
    /// wick's matcher for them (`tokenizer::special`).
    pub(super) specials: Specials,
    /// The same as Hugging Face added tokens.
    pub(super) added: Vec<tokenizers::AddedToken>,
    /// Those that are special (control and unknown tokens).
    pub(super) special_ids: HashSet<u32>,
}

impl Verbatim {
    pub(super) fn new(md: &Metadata, vocab: &Vocab, pre_name: Option<&str>) -> Self {
        let strip = strip_rules(md, vocab, pre_name);
        let ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&i| vocab.attrs[i as usize] & VERBATIM != 0)
            .collect();
        let is_special = |id: u32| vocab.attrs[id as usize] & (CONTROL | UNKNOWN) != 0;
        let mut tokens = Vec::with_capacity(ids.len());
        let mut added = Vec::with_capacity(ids.len());
        for &id in &ids {
            let (lstrip, rstrip) = strip.get(&id).copied().unwrap_or((false, false));
            let text = vocab.tokens[id as usize].clone();
            added.push(
                tokenizers::AddedToken::from(text.clone(), is_special(id))
                    .lstrip(lstrip)
                    .rstrip(rstrip)
                    .normalized(false),
            );
            tokens.push(SpecialToken {
                text,
                id,
                lstrip,
                rstrip,
            });
        }
        let special_ids = ids.iter().copied().filter(|&id| is_special(id)).collect();
        Self {
            ids,
            specials: Specials::new(tokens),
            added,
            special_ids,
        }
    }
}

/// `(lstrip, rstrip)` of the verbatim tokens that swallow whitespace beside them, by
/// llama.cpp's rules for the model (by pre-tokenizer, architecture or name).
fn strip_rules(md: &Metadata, vocab: &Vocab, pre_name: Option<&str>) -> HashMap<u32, (bool, bool)> {
    let name = get_str(md, "general.name").unwrap_or("").to_lowercase();
    let arch = get_str(md, "general.architecture").unwrap_or("");
    let pre_str = pre_name.unwrap_or("");
    let mut strip: HashMap<u32, (bool, bool)> = HashMap::new();
    if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
        .iter()
        .any(|p| pre_str.contains(p))
        || ["nomic-bert-moe", "jina-bert-v3"]
            .iter()
            .any(|a| arch.contains(a))
    {
        if let Some(id) = vocab.id("<mask>") {
            strip.insert(id, (true, false));
        }
    } else if name.contains("phi-3") || name.contains("phi3") {
        for (i, a) in vocab.attrs.iter().enumerate() {
            if a & VERBATIM != 0 {
                strip.insert(i as u32, (false, true));
            }
        }
        if let Some(id) = vocab.id("</s>") {
            strip.insert(id, (false, true));
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(id) = vocab.id(t) {
                strip.insert(id, (false, false));
            }
        }
    } else if name.contains("modern-bert") {
        if let Some(id) = vocab.id("[MASK]") {
            strip.insert(id, (true, false));
        }
    }
    strip
}
