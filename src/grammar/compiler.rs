//! Compiling grammars: once per distinct text, off the engine thread, within limits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{InferenceCapabilities, TokEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::constraint::Constraint;
use super::vocab::Vocab;
use crate::tokenizer::Tokenizer;

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Text that is one JSON value valid under this JSON Schema (`{"type": "object"}`
    /// for any object).
    JsonSchema(Value),
    /// Text that matches this regular expression (Rust `regex` syntax) in full.
    Regex(String),
    /// A grammar in llguidance's Lark syntax, which can embed JSON schemas (`%json`).
    Lark(String),
}

impl GrammarSpec {
    /// The cache key: the kind and the exact text.
    fn key(&self) -> String {
        match self {
            GrammarSpec::JsonSchema(v) => format!("json:{v}"),
            GrammarSpec::Regex(r) => format!("regex:{r}"),
            GrammarSpec::Lark(g) => format!("lark:{g}"),
        }
    }

    /// llguidance's form. JSON is written compactly with one space after `,` and `:`
    /// (as Python's `json.dumps`), with no free whitespace between tokens, unless the
    /// schema sets its own `x-guidance` options: a small model cannot wander into
    /// endless whitespace.
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            GrammarSpec::JsonSchema(schema) => {
                let mut schema = schema.clone();
                if let Value::Object(map) = &mut schema {
                    map.entry("x-guidance").or_insert_with(|| {
                        serde_json::json!({
                            "whitespace_flexible": false,
                            "item_separator": ", ",
                            "key_separator": ": ",
                        })
                    });
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            GrammarSpec::Regex(r) => TopLevelGrammar::from_regex(r),
            GrammarSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// Why a grammar was refused: all are the client's fault (422), but `Busy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("invalid grammar: {0}")]
    Invalid(String),
    #[error("grammar is too large: {size} bytes, at most {max}")]
    TooLarge { size: usize, max: usize },
    #[error("grammar took longer than {0:?} to compile")]
    Timeout(Duration),
    #[error("grammar compilation failed: {0}")]
    Internal(String),
}

/// Bounds on what one grammar may cost.
#[derive(Debug, Clone)]
pub struct GrammarLimits {
    /// Wall-clock time for one compilation.
    pub timeout: Duration,
    /// Bytes of grammar text (a JSON schema as JSON).
    pub max_bytes: usize,
    /// Compiled grammars kept (oldest dropped first).
    pub cache_entries: usize,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
            cache_entries: 256,
        }
    }
}

/// A grammar ready to constrain sequences: each [`CompiledGrammar::start`] is a fresh
/// [`Constraint`] at the grammar's beginning.
pub struct CompiledGrammar {
    /// The parser at the start of the grammar; cloned for each sequence.
    start: Mutex<Matcher>,
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledGrammar")
    }
}

impl CompiledGrammar {
    /// A constraint at the grammar's beginning, for one sequence.
    pub fn start(&self) -> Constraint {
        let m = self.start.lock().unwrap_or_else(|e| e.into_inner());
        Constraint::new(m.deep_clone())
    }
}

/// Compiles grammars against one model's vocabulary, caching them by text.
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
    limits: GrammarLimits,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Arc<CompiledGrammar>>,
    order: VecDeque<String>,
}

impl GrammarCompiler {
    /// Builds the token trie of `tokenizer`'s vocabulary, padded to the model's
    /// `model_vocab` logits (tens of milliseconds for a 128k vocabulary).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        model_vocab: usize,
        limits: GrammarLimits,
    ) -> Result<Self> {
        let env: TokEnv = Vocab::env(tokenizer, model_vocab)?;
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            max_grammar_size: limits.max_bytes.max(1) * 2,
            ..ParserLimits::default()
        };
        Ok(Self {
            factory: Arc::new(factory),
            limits,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The logits width masks cover.
    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// Compiles `spec` on a blocking thread (never the engine's), within the time limit,
    /// or returns the cached grammar of the same text.
    pub async fn compile(
        self: &Arc<Self>,
        spec: GrammarSpec,
    ) -> Result<Arc<CompiledGrammar>, GrammarError> {
        let key = spec.key();
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let this = Arc::clone(self);
        let timeout = self.limits.timeout;
        let started = std::time::Instant::now();
        let job = tokio::task::spawn_blocking(move || this.compile_uncached(&spec, key));
        match tokio::time::timeout(timeout, job).await {
            // A result that came in late is late (and stays cached for next time).
            Ok(Ok(_)) if started.elapsed() > timeout => Err(GrammarError::Timeout(timeout)),
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(GrammarError::Internal(e.to_string())),
            Err(_) => Err(GrammarError::Timeout(timeout)),
        }
    }

    /// Compiles `spec` on this thread (no time limit: for the CLI and tests), or returns
    /// the cached grammar of the same text.
    pub fn compile_now(&self, spec: &GrammarSpec) -> Result<Arc<CompiledGrammar>, GrammarError> {
        let key = spec.key();
        match self.cached(&key) {
            Some(hit) => Ok(hit),
            None => self.compile_uncached(spec, key),
        }
    }

    fn cached(&self, key: &str) -> Option<Arc<CompiledGrammar>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.map.get(key).cloned()
    }

    fn compile_uncached(
        &self,
        spec: &GrammarSpec,
        key: String,
    ) -> Result<Arc<CompiledGrammar>, GrammarError> {
        let size = key.len();
        if size > self.limits.max_bytes {
            return Err(GrammarError::TooLarge {
                size,
                max: self.limits.max_bytes,
            });
        }
        let parser = self
            .factory
            .create_parser(spec.top_level())
            .map_err(|e| GrammarError::Invalid(first_line(&e.to_string())))?;
        let mut matcher = Matcher::new(Ok(parser));
        // The first mask is where most lexer work happens: pay for it here, and refuse
        // a grammar that cannot even start.
        matcher
            .compute_mask()
            .map_err(|e| GrammarError::Invalid(first_line(&e.to_string())))?;
        let compiled = Arc::new(CompiledGrammar {
            start: Mutex::new(matcher),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.map.contains_key(&key) {
            while cache.order.len() >= self.limits.cache_entries.max(1) {
                if let Some(old) = cache.order.pop_front() {
                    cache.map.remove(&old);
                }
            }
            cache.order.push_back(key.clone());
            cache.map.insert(key, Arc::clone(&compiled));
        }
        Ok(compiled)
    }
}

/// llguidance's errors can carry the whole grammar after the first line.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    line.chars().take(500).collect()
}
