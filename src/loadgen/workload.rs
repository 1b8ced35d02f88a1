//! What the load generator sends and when: prompts (synthetic, of an exact token length,
//! or read from a file) and arrival times (Poisson, or closed loop).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::client::Client;
use crate::tokenizer::Tokenizer;

/// A small, seedable generator (SplitMix64): the same seed gives the same prompts and
/// arrival times on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for item `index` of a run seeded with `seed`.
    pub fn derive(seed: u64, index: u64) -> Self {
        let mut r = Self(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Send times of `n` requests arriving as a Poisson process of `rate` per second: the
/// first at zero, then exponentially distributed gaps of mean `1 / rate`.
pub fn poisson_arrivals(n: usize, rate: f64, rng: &mut Rng) -> Vec<Duration> {
    let mut t = 0.0f64;
    (0..n)
        .map(|i| {
            if i > 0 {
                t += -rng.next_f64().ln() / rate;
            }
            Duration::from_secs_f64(t)
        })
        .collect()
}

/// One prompt to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    /// Its length in tokens (without special tokens), when a tokenizer measured it.
    pub tokens: Option<usize>,
}

/// How prompt lengths are measured.
pub enum TokenCounter {
    /// The served model's tokenizer, loaded here.
    Local(Box<Tokenizer>),
    /// The server's TGI `/tokenize` route.
    Remote(Box<Client>),
    /// No tokenizer: one token per word (prompts then have about, not exactly, the length).
    Estimate,
}

impl TokenCounter {
    /// Loads the tokenizer of `model` (a models.toml name, .gguf file, model directory or
    /// repo id) without its weights.
    pub fn local(model: &str) -> Result<Self> {
        use crate::config::ModelsConfig;
        use crate::hub::{self, HubOptions};
        let models = ModelsConfig::load(None)?;
        let resolved = hub::resolve(Some(model), &models, &HubOptions::from_env())?;
        let tokenizer = crate::model::load_tokenizer(&resolved)?;
        Ok(Self::Local(Box::new(tokenizer)))
    }

    pub fn is_exact(&self) -> bool {
        !matches!(self, TokenCounter::Estimate)
    }

    pub fn describe(&self) -> &'static str {
        match self {
            TokenCounter::Local(_) => "local tokenizer",
            TokenCounter::Remote(_) => "the server's /tokenize",
            TokenCounter::Estimate => "estimate (one token per word)",
        }
    }

    /// Tokens of `text` without special tokens.
    pub async fn count(&self, text: &str) -> Result<usize> {
        match self {
            TokenCounter::Local(t) => Ok(t.encode(text, false)?.len()),
            TokenCounter::Remote(c) => c.tokenize_count(text).await,
            TokenCounter::Estimate => Ok(text.split_whitespace().count()),
        }
    }
}

/// Common English words, each one token (with its leading space) in the usual BPE
/// vocabularies, so that a prompt's length moves one token per word added or removed.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "she",
    "other",
    "its",
    "may",
    "these",
    "what",
    "them",
    "than",
    "some",
    "him",
    "time",
    "into",
    "only",
    "do",
    "could",
    "new",
    "about",
    "two",
    "my",
    "then",
    "first",
    "any",
    "like",
    "very",
    "our",
    "people",
    "over",
    "such",
    "me",
    "out",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "here",
    "get",
    "both",
    "between",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "go",
    "against",
    "came",
    "right",
    "used",
    "take",
    "three",
    "small",
    "house",
    "part",
    "place",
    "water",
    "number",
    "school",
    "every",
    "found",
    "city",
    "family",
    "light",
    "night",
    "river",
    "music",
    "green",
    "open",
    "table",
    "story",
    "paper",
    "road",
    "money",
    "field",
    "power",
    "point",
    "group",
    "line",
    "book",
    "hand",
    "head",
    "side",
    "home",
    "game",
    "team",
    "body",
    "party",
    "street",
    "market",
    "church",
    "war",
    "system",
    "program",
    "question",
    "government",
    "company",
    "country",
    "service",
    "problem",
    "area",
    "case",
    "week",
    "order",
    "change",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "history",
    "friend",
    "member",
    "law",
    "car",
    "child",
    "face",
    "name",
    "idea",
    "study",
    "month",
];

/// A prompt of random words measuring exactly `len` tokens by `counter` (or as close as
/// a few adjustments get; the measured length is returned with it).
pub async fn synthetic_prompt(counter: &TokenCounter, len: usize, rng: &mut Rng) -> Result<Prompt> {
    let mut words: Vec<&str> = (0..len.max(1))
        .map(|_| WORDS[rng.below(WORDS.len())])
        .collect();
    if !counter.is_exact() {
        return Ok(Prompt {
            text: words.join(" "),
            tokens: None,
        });
    }
    let mut best: Option<(usize, String, usize)> = None;
    for _ in 0..64 {
        let text = words.join(" ");
        let n = counter.count(&text).await?;
        let off = n.abs_diff(len);
        if best.as_ref().is_none_or(|b| off < b.0) {
            best = Some((off, text, n));
        }
        if n == len {
            break;
        }
        if n > len {
            // Each word is at least one token: dropping (excess × words / tokens) words
            // removes about the excess without passing it by much.
            let k = ((n - len) * words.len() / n).max(1).min(words.len() - 1);
            if k == 0 {
                break;
            }
            words.truncate(words.len() - k);
        } else {
            let k = ((len - n) * words.len() / n.max(1)).max(1);
            words.extend((0..k).map(|_| WORDS[rng.below(WORDS.len())]));
        }
    }
    let (_, text, n) = best.expect("at least one try");
    Ok(Prompt {
        text,
        tokens: Some(n),
    })
}

/// Prompts from a file: one per non-empty line, either plain text or a JSON object with
/// a "prompt" (or "text") string field, so JSONL data sets work as they are.
pub fn load_prompts_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            if line.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    if let Some(p) = v
                        .get("prompt")
                        .or_else(|| v.get("text"))
                        .and_then(|p| p.as_str())
                    {
                        return p.to_string();
                    }
                }
            }
            line.to_string()
        })
        .collect();
    anyhow::ensure!(!prompts.is_empty(), "{} holds no prompt", path.display());
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_uniform() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let n = 100_000;
        let mean = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let mut r = Rng::new(2);
        assert!((0..1000).map(|_| r.next_f64()).all(|x| x > 0.0 && x <= 1.0));
        assert_ne!(Rng::derive(0, 1).next_u64(), Rng::derive(0, 2).next_u64());
    }

    #[test]
    fn poisson_arrivals_have_the_requested_rate() {
        let mut rng = Rng::new(42);
        let rate = 8.0;
        let n = 20_000;
        let t = poisson_arrivals(n, rate, &mut rng);
        assert_eq!(t[0], Duration::ZERO);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "sorted");
        let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 1.0 / rate).abs() < 0.005, "mean gap {mean}");
        // Exponential gaps: the standard deviation equals the mean, and about
        // e^-1 of the gaps exceed the mean.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "cv {}",
            var.sqrt() / mean
        );
        let above = gaps.iter().filter(|&&g| g > 1.0 / rate).count() as f64 / gaps.len() as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.02, "{above}");
        // Same seed, same schedule.
        assert_eq!(
            poisson_arrivals(50, rate, &mut Rng::new(3)),
            poisson_arrivals(50, rate, &mut Rng::new(3))
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn estimate_prompts_have_one_word_per_token() {
        let p = synthetic_prompt(&TokenCounter::Estimate, 37, &mut Rng::new(0))
            .await
            .unwrap();
        assert_eq!(p.text.split_whitespace().count(), 37);
        assert_eq!(p.tokens, None);
    }

    #[test]
    fn prompts_file_reads_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.txt");
        std::fs::write(
            &path,
            "hello there\n\n{\"prompt\": \"from json\"}\n{not json}\n",
        )
        .unwrap();
        assert_eq!(
            load_prompts_file(&path).unwrap(),
            vec!["hello there", "from json", "{not json}"]
        );
    }
}
