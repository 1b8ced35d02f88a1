//! The model's vocabulary as the grammar library sees it: each token id's bytes.

use std::sync::Arc;

use anyhow::Result;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::tokenizer::Tokenizer;

/// wick's tokenizer behind `toktrie`'s interface: a trie of every token's bytes
/// (special tokens are marked, so no text can match them; end-of-sequence is the
/// model's end-of-generation ids), and byte strings tokenized as wick does.
pub(crate) struct Vocab {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl Vocab {
    /// `model_vocab` is the model's logits width, which may exceed the tokenizer's:
    /// the extra ids are special (never allowed as text). A tokenizer without an
    /// end-of-sequence token gets one past the logits (`model_vocab`), which no row can
    /// choose: such a sequence ends when its grammar is complete.
    pub fn env(tokenizer: Arc<Tokenizer>, model_vocab: usize) -> Result<TokEnv> {
        let n = model_vocab.max(tokenizer.vocab_size());
        let mut words: Vec<Vec<u8>> = tokenizer
            .token_bytes()
            .into_iter()
            .enumerate()
            .map(|(id, bytes)| bytes.unwrap_or_else(|| special_word(&tokenizer, id)))
            .collect();
        words.extend((words.len()..n).map(|id| special_word(&tokenizer, id)));
        let mut eos: Vec<TokenId> = tokenizer.eos_ids().to_vec();
        if eos.is_empty() {
            eos.push(words.len() as TokenId);
            words.push(special_word(&tokenizer, words.len()));
        }
        let mut info = TokRxInfo::new(words.len() as u32, eos[0]);
        info.tok_bos = tokenizer.bos_id();
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(&eos);
        }
        Ok(Arc::new(Vocab { trie, tokenizer }))
    }
}

/// A special token's trie word: the marker byte, then its name (or id).
fn special_word(tokenizer: &Tokenizer, id: usize) -> Vec<u8> {
    let name = tokenizer
        .inner()
        .id_to_token(id as u32)
        .unwrap_or_else(|| format!("<[{id}]>"));
    let mut w = Vec::with_capacity(name.len() + 1);
    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
    w.extend_from_slice(name.as_bytes());
    w
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer.encode(text, false).unwrap_or_default()
        })
    }
}
