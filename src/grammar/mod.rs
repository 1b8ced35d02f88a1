//! Structured output: grammars that constrain which tokens a sequence may generate.
//!
//! A request's grammar (a JSON Schema, a regex or a Lark grammar: TGI `grammar`, OpenAI
//! `response_format` and `tools`) is compiled once, off the engine thread, by the
//! [`GrammarCompiler`] built over the model's vocabulary at start-up; compiled grammars
//! are cached by their text. The engine starts a [`Constraint`] from the compiled
//! grammar for each candidate, computes its allowed-token mask for the next step while
//! the forward pass runs, applies it to the candidate's logits before sampling, and
//! advances it with every token the candidate accepts. End-of-sequence is allowed only
//! where the grammar may end; once the grammar is complete, only end-of-sequence is.
//!
//! The grammar engine is `llguidance` (Earley parsing over a lexer, with masks computed
//! on the tokenizer's trie): on the default model's 49k vocabulary and on a 128k one it
//! compiles a JSON schema in about a millisecond and computes a mask in tens of
//! microseconds, where outlines-core (TGI's) took 77-780 ms to compile and up to 4 ms
//! for a mask on the same schemas.

mod compiler;
mod constraint;
mod vocab;

pub use compiler::{CompiledGrammar, GrammarCompiler, GrammarError, GrammarLimits, GrammarSpec};
pub use constraint::{Constraint, TokenMask};

#[cfg(test)]
mod tests;
