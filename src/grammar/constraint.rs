//! One sequence's place in its grammar, and the masks it allows.

use anyhow::{anyhow, Result};
use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

/// Allowed tokens as bits: token t is allowed when bit `t % 32` of word `t / 32` is set.
#[derive(Debug, Clone, Default)]
pub struct TokenMask {
    pub words: Vec<u32>,
}

impl TokenMask {
    pub fn allows(&self, token: u32) -> bool {
        self.words
            .get(token as usize / 32)
            .is_some_and(|w| w >> (token % 32) & 1 == 1)
    }

    /// Sets every disallowed entry of `logits` to -inf.
    pub fn apply(&self, logits: &mut [f32]) {
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = self.words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits >> b & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn set_from(&mut self, v: &SimpleVob) {
        self.words.clear();
        self.words.extend_from_slice(v.as_slice());
    }
}

/// A sequence's grammar state: advanced by every token the sequence accepts.
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    pub(super) fn new(matcher: Matcher) -> Self {
        Self { matcher }
    }

    /// The tokens allowed next, into `mask`: end-of-sequence only where the grammar may
    /// end, and only it once the grammar is complete.
    pub fn mask_into(&mut self, mask: &mut TokenMask) -> Result<()> {
        let v = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| anyhow!("grammar: {e}"))?;
        mask.set_from(&v);
        Ok(())
    }

    /// Advances past `token`, which must be allowed.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| anyhow!("grammar refused token {token}: {e}"))
    }

    /// The grammar is complete: nothing but end-of-sequence may follow.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The text so far is a complete match (end-of-sequence is allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// A copy at the same place, for a forked sequence.
    pub fn fork(&self) -> Self {
        Self::new(self.matcher.deep_clone())
    }
}
