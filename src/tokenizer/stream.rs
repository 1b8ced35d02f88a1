//! Incremental detokenization: the text each generated token adds, such that the pieces
//! concatenate to the decoded text of all the tokens.
//!
//! The prefix-offset / read-offset algorithm of TGI and vLLM: the stream keeps a short
//! window of tokens, `window[..read]` already emitted (decoding to `prefix_text`) and the
//! rest not yet. Each step decodes the window; if its text is longer than `prefix_text`
//! and does not end in U+FFFD (a character whose bytes are still arriving), the new
//! suffix is emitted and the window slides: it restarts at the old read offset, so the
//! next token is still decoded after some context (SentencePiece's leading space,
//! byte-level BPE's split characters). Only the window is ever decoded, so a step costs
//! the same at token 10 and at token 10,000.

use anyhow::Result;

use super::Tokenizer;

/// Tokens decoded without emitting before the window is flushed anyway (bounds the
/// window when tokens never complete a character).
const MAX_PENDING: usize = 16;

#[derive(Debug, Clone)]
pub struct DecodeStream {
    /// The window: `tokens[..read]` emitted, `tokens[read..]` pending.
    tokens: Vec<u32>,
    read: usize,
    /// `decode(tokens[..read])`, computed at the first step.
    prefix_text: Option<String>,
}

impl DecodeStream {
    /// A stream whose first window holds `prompt_tail` (a few of the last prompt tokens,
    /// or none): its text is never emitted, it only gives the first generated token its
    /// context (as TGI's prefix offset).
    pub fn new(prompt_tail: &[u32]) -> Self {
        Self {
            tokens: prompt_tail.to_vec(),
            read: prompt_tail.len(),
            prefix_text: None,
        }
    }

    /// The text `id` adds (possibly empty): special tokens and ids outside the vocabulary
    /// add nothing; an incomplete UTF-8 character is held back until its last byte comes.
    /// (Special tokens still enter the window: a GGUF byte-level decode splits its byte
    /// runs at them, and the stream must decode as `decode` does.)
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        if id as usize >= tok.vocab_size() {
            return Ok(String::new());
        }
        let prefix_text = match self.prefix_text.take() {
            Some(t) => t,
            None => tok.decode(&self.tokens[..self.read], true)?,
        };
        self.tokens.push(id);
        let text = tok.decode(&self.tokens, true)?;
        let ready = text.len() > prefix_text.len() && !text.ends_with('\u{FFFD}');
        if ready || self.tokens.len() - self.read >= MAX_PENDING {
            return self.advance(tok, &text, &prefix_text);
        }
        self.prefix_text = Some(prefix_text);
        Ok(String::new())
    }

    /// Whatever is still held back (an incomplete character at the end of generation, as
    /// U+FFFD), leaving the stream empty.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.tokens.len() == self.read {
            return Ok(String::new());
        }
        let prefix_text = match self.prefix_text.take() {
            Some(t) => t,
            None => tok.decode(&self.tokens[..self.read], true)?,
        };
        let text = tok.decode(&self.tokens, true)?;
        self.advance(tok, &text, &prefix_text)
    }

    /// Emits what `text` (the whole window's) adds to `prefix_text` and slides the window
    /// to start at the old read offset.
    fn advance(&mut self, tok: &Tokenizer, text: &str, prefix_text: &str) -> Result<String> {
        let start = if text.starts_with(prefix_text) {
            prefix_text.len()
        } else {
            // The decoder changed text already emitted (SentencePiece byte fallback
            // turns a whole run of byte tokens into U+FFFD when a later byte makes it
            // invalid UTF-8): as TGI, skip as many characters as were emitted.
            let n = prefix_text.chars().count();
            text.char_indices().nth(n).map_or(text.len(), |(i, _)| i)
        };
        let piece = text[start..].to_string();
        self.tokens.drain(..self.read);
        self.read = self.tokens.len();
        self.prefix_text = Some(tok.decode(&self.tokens, true)?);
        Ok(piece)
    }
}
