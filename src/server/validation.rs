//! Request validation before admission, with TGI's rules and messages
//! (`router/src/validation.rs`): every range, lengths, stop sequences, seeds.

use super::error::ApiError;
use super::state::Limits;
use super::structured;
use super::types::openai::OpenAiSampling;
use super::types::tgi::GenerateParameters;
use crate::engine::{GenerationRequest, StoppingParams};
use crate::grammar::GrammarSpec;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// A prompt ready for the engine.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub max_new_tokens: usize,
}

/// How `max_new_tokens` is chosen when the client gives none.
#[derive(Debug, Clone, Copy)]
pub enum DefaultMaxNew {
    /// All that max_total_tokens leaves (TGI).
    Remaining,
    Fixed(usize),
}

/// Tokenizes (or takes) a prompt, truncates it to its last `truncate` tokens, and checks
/// it and `max_new_tokens` against max_input_tokens and max_total_tokens.
pub fn prompt(
    limits: &Limits,
    ids: Vec<u32>,
    truncate: Option<usize>,
    max_new_tokens: Option<u32>,
    default: DefaultMaxNew,
) -> Result<Prompt, ApiError> {
    let mut ids = ids;
    if let Some(t) = truncate {
        if ids.len() > t {
            ids.drain(..ids.len() - t);
        }
    }
    let input_length = ids.len();
    if input_length == 0 {
        return Err(ApiError::param("inputs", "`inputs` cannot be empty"));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= limits.vocab_size) {
        return Err(ApiError::param(
            "prompt",
            format!(
                "token id {bad} is outside the vocabulary ({})",
                limits.vocab_size
            ),
        ));
    }
    let max_new_tokens = match (max_new_tokens, default) {
        (Some(n), _) => n as usize,
        (None, DefaultMaxNew::Fixed(n)) => n,
        (None, DefaultMaxNew::Remaining) => {
            limits.max_total_tokens.saturating_sub(input_length).max(1)
        }
    };
    if input_length + max_new_tokens > limits.max_total_tokens {
        return Err(ApiError::param(
            "max_new_tokens",
            format!(
                "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {} `inputs` tokens \
                 and {} `max_new_tokens`",
                limits.max_total_tokens, input_length, max_new_tokens
            ),
        ));
    }
    if input_length > limits.max_input_tokens {
        return Err(ApiError::param(
            "inputs",
            format!(
                "`inputs` must have less than {} tokens. Given: {}",
                limits.max_input_tokens, input_length
            ),
        ));
    }
    Ok(Prompt {
        ids,
        max_new_tokens,
    })
}

pub fn tokenize(
    tokenizer: &Tokenizer,
    text: &str,
    add_special: bool,
) -> Result<Vec<u32>, ApiError> {
    tokenizer
        .encode(text, add_special)
        .map_err(|e| ApiError::validation(format!("tokenizer error {e:#}")))
}

fn random_seed() -> u64 {
    rand::random()
}

fn check_stop(limits: &Limits, stop: &[String]) -> Result<(), ApiError> {
    if stop.len() > limits.max_stop_sequences {
        return Err(ApiError::param(
            "stop",
            format!(
                "`stop` supports up to {} stop sequences. Given: {}",
                limits.max_stop_sequences,
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::param("stop", "`stop` sequences cannot be empty"));
    }
    Ok(())
}

/// A TGI request, validated.
#[derive(Debug, Clone)]
pub struct TgiRequest {
    pub request: GenerationRequest,
    /// Whether tokens are sampled (the seed is reported only then, as TGI does).
    pub sampling: bool,
    pub details: bool,
    pub decoder_input_details: bool,
    pub return_full_text: bool,
    pub best_of: usize,
    /// What `grammar` constrains the output to (compiled by the route).
    pub grammar: Option<GrammarSpec>,
}

/// Validates TGI parameters in TGI's order; `inputs` is tokenized with special tokens.
pub fn tgi(
    limits: &Limits,
    tokenizer: &Tokenizer,
    inputs: &str,
    p: GenerateParameters,
    default_return_full_text: bool,
    stream: bool,
) -> Result<TgiRequest, ApiError> {
    let best_of = p.best_of.unwrap_or(1);
    let sampling = p.do_sample
        || p.temperature.is_some_and(|t| t != 1.0)
        || p.top_k.is_some_and(|k| k != 0)
        || p.top_p.is_some_and(|x| x < 1.0)
        || p.typical_p.is_some_and(|x| x < 1.0);
    if best_of == 0 || best_of > limits.max_best_of {
        return Err(ApiError::param(
            "best_of",
            if limits.max_best_of == 1 {
                "`best_of` != 1 is not allowed for this endpoint".to_string()
            } else {
                format!(
                    "`best_of` must be > 0 and <= {}. Given: {best_of}",
                    limits.max_best_of
                )
            },
        ));
    }
    if best_of > 1 && !sampling {
        return Err(ApiError::param(
            "best_of",
            "you must use sampling when `best_of` is > 1",
        ));
    }
    if best_of > 1 && stream {
        return Err(ApiError::param(
            "best_of",
            "`best_of` != 1 is not supported when streaming tokens",
        ));
    }
    if p.decoder_input_details && stream {
        return Err(ApiError::param(
            "decoder_input_details",
            "`decoder_input_details` == true is not supported when streaming tokens",
        ));
    }
    let temperature = p.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(ApiError::param(
            "temperature",
            "`temperature` must be strictly positive",
        ));
    }
    let repetition_penalty = p.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::param(
            "repetition_penalty",
            "`repetition_penalty` must be strictly positive",
        ));
    }
    let frequency_penalty = p.frequency_penalty.unwrap_or(0.0);
    if !(-2.0..=2.0).contains(&frequency_penalty) {
        return Err(ApiError::param(
            "frequency_penalty",
            "`frequency_penalty` must be >= -2.0 and <= 2.0",
        ));
    }
    let top_p = match p.top_p {
        None => 1.0,
        Some(v) if v > 0.0 && v < 1.0 => v,
        Some(_) => return Err(ApiError::param("top_p", "`top_p` must be > 0.0 and < 1.0")),
    };
    let typical_p = match p.typical_p {
        None => 1.0,
        Some(v) if v > 0.0 && v < 1.0 => v,
        Some(_) => {
            return Err(ApiError::param(
                "typical_p",
                "`typical_p` must be > 0.0 and < 1.0",
            ))
        }
    };
    let top_k = match p.top_k {
        None => 0,
        Some(k) if k > 0 => k as usize,
        Some(_) => {
            return Err(ApiError::param(
                "top_k",
                "`top_k` must be strictly positive",
            ))
        }
    };
    if p.max_new_tokens == Some(0) {
        return Err(ApiError::param(
            "max_new_tokens",
            "`max_new_tokens` must be strictly positive",
        ));
    }
    check_stop(limits, &p.stop)?;
    let seed = match p.seed {
        None => random_seed(),
        Some(_) if best_of > 1 => {
            return Err(ApiError::param(
                "seed",
                "`seed` must not be set when `best_of` > 1",
            ))
        }
        Some(s) => s,
    };
    let top_n_tokens = p.top_n_tokens.unwrap_or(0);
    if top_n_tokens > limits.max_top_n_tokens {
        return Err(ApiError::param(
            "top_n_tokens",
            format!(
                "`top_n_tokens` must be >= 0 and <= {}. Given: {top_n_tokens}",
                limits.max_top_n_tokens
            ),
        ));
    }
    if inputs.is_empty() {
        return Err(ApiError::param("inputs", "`inputs` cannot be empty"));
    }
    if let Some(t) = p.truncate {
        if t == 0 || t > limits.max_input_tokens {
            return Err(ApiError::param(
                "truncate",
                format!(
                    "`truncate` must be strictly positive and less than {}. Given: {t}",
                    limits.max_input_tokens
                ),
            ));
        }
    }
    let grammar = p
        .grammar
        .as_ref()
        .map(structured::tgi_grammar)
        .transpose()?;
    let ids = tokenize(tokenizer, inputs, true)?;
    let prompt = prompt(
        limits,
        ids,
        p.truncate,
        p.max_new_tokens,
        DefaultMaxNew::Remaining,
    )?;
    Ok(TgiRequest {
        request: GenerationRequest {
            id: 0,
            prompt: prompt.ids,
            sampling: SamplingParams {
                do_sample: sampling,
                temperature,
                top_k,
                top_p,
                typical_p,
                repetition_penalty,
                frequency_penalty,
                seed,
                ..SamplingParams::default()
            },
            stopping: StoppingParams {
                max_new_tokens: prompt.max_new_tokens,
                stop_sequences: p.stop,
                include_stop_sequence: true,
                ignore_eos: false,
            },
            top_n_tokens: top_n_tokens as usize,
            prompt_logprobs: p.decoder_input_details,
            grammar: None,
            candidates: best_of,
        },
        sampling,
        details: p.details || p.decoder_input_details,
        decoder_input_details: p.decoder_input_details,
        return_full_text: p.return_full_text.unwrap_or(default_return_full_text),
        best_of,
        grammar,
    })
}

/// Most choices per OpenAI request (`n`, completions `best_of`).
pub const MAX_CHOICES: u32 = 16;

/// OpenAI sampling fields, validated with OpenAI's ranges. Sampling is on unless
/// `temperature` is 0 (as TGI's OpenAI routes do).
pub fn openai_sampling(limits: &Limits, s: &OpenAiSampling) -> Result<SamplingParams, ApiError> {
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::param(
            "temperature",
            "`temperature` must be >= 0 and <= 2",
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param("top_p", "`top_p` must be > 0 and <= 1"));
    }
    let penalty = |v: Option<f32>, name: &'static str| -> Result<f32, ApiError> {
        let v = v.unwrap_or(0.0);
        if (-2.0..=2.0).contains(&v) {
            Ok(v)
        } else {
            Err(ApiError::param(
                name,
                format!("`{name}` must be >= -2.0 and <= 2.0"),
            ))
        }
    };
    let presence_penalty = penalty(s.presence_penalty, "presence_penalty")?;
    let frequency_penalty = penalty(s.frequency_penalty, "frequency_penalty")?;
    let repetition_penalty = s.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::param(
            "repetition_penalty",
            "`repetition_penalty` must be strictly positive",
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, &v) in s.logit_bias.iter().flatten() {
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::param(
                "logit_bias",
                format!("`logit_bias` key {k:?} is not a token id"),
            )
        })?;
        if id as usize >= limits.vocab_size {
            return Err(ApiError::param(
                "logit_bias",
                format!(
                    "`logit_bias` token id {id} is outside the vocabulary ({})",
                    limits.vocab_size
                ),
            ));
        }
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::param(
                "logit_bias",
                "`logit_bias` values must be >= -100 and <= 100",
            ));
        }
        logit_bias.push((id, v));
    }
    logit_bias.sort_by_key(|&(id, _)| id);
    check_stop(limits, &s.stop)?;
    Ok(SamplingParams {
        do_sample: temperature != 0.0,
        temperature: if temperature == 0.0 { 1.0 } else { temperature },
        top_p,
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
        logit_bias,
        seed: s.seed.unwrap_or_else(random_seed),
        ..SamplingParams::default()
    })
}

/// OpenAI `n` (1 by default).
pub fn choices(n: Option<u32>) -> Result<usize, ApiError> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_CHOICES => Ok(n as usize),
        n => Err(ApiError::param(
            "n",
            format!("`n` must be >= 1 and <= {MAX_CHOICES}. Given: {n}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_best_of: 2,
            max_stop_sequences: 2,
            max_top_n_tokens: 5,
            max_input_tokens: 10,
            max_total_tokens: 16,
            max_client_batch_size: 4,
            vocab_size: 100,
        }
    }

    #[test]
    fn prompt_lengths() {
        let l = limits();
        let p = prompt(&l, vec![1; 6], None, None, DefaultMaxNew::Remaining).unwrap();
        assert_eq!(p.max_new_tokens, 10);
        let p = prompt(&l, vec![1; 6], None, None, DefaultMaxNew::Fixed(3)).unwrap();
        assert_eq!(p.max_new_tokens, 3);
        let e = prompt(&l, vec![1; 6], None, Some(11), DefaultMaxNew::Remaining).unwrap_err();
        assert!(e.message.contains("must be <= 16"), "{}", e.message);
        let e = prompt(&l, vec![1; 11], None, Some(1), DefaultMaxNew::Remaining).unwrap_err();
        assert!(e.message.contains("less than 10 tokens"), "{}", e.message);
        let p = prompt(
            &l,
            (0..20).collect(),
            Some(4),
            Some(1),
            DefaultMaxNew::Remaining,
        )
        .unwrap();
        assert_eq!(p.ids, vec![16, 17, 18, 19]);
        assert!(prompt(&l, vec![], None, None, DefaultMaxNew::Remaining).is_err());
        assert!(prompt(&l, vec![100], None, None, DefaultMaxNew::Remaining).is_err());
    }

    #[test]
    fn openai_ranges() {
        let l = limits();
        let s = |v: serde_json::Value| -> OpenAiSampling { serde_json::from_value(v).unwrap() };
        let p = openai_sampling(&l, &s(serde_json::json!({"temperature": 0}))).unwrap();
        assert!(!p.do_sample);
        let p = openai_sampling(&l, &s(serde_json::json!({"top_p": 1.0, "seed": 5}))).unwrap();
        assert!(p.do_sample);
        assert_eq!(p.seed, 5);
        for bad in [
            serde_json::json!({"temperature": 2.5}),
            serde_json::json!({"top_p": 0}),
            serde_json::json!({"presence_penalty": 3}),
            serde_json::json!({"logit_bias": {"abc": 1}}),
            serde_json::json!({"logit_bias": {"100": 1}}),
            serde_json::json!({"logit_bias": {"5": 101}}),
            serde_json::json!({"stop": ["a", "b", "c"]}),
        ] {
            assert!(openai_sampling(&l, &s(bad.clone())).is_err(), "{bad}");
        }
        let p = openai_sampling(
            &l,
            &s(serde_json::json!({"logit_bias": {"7": -100, "3": 5}})),
        )
        .unwrap();
        assert_eq!(p.logit_bias, vec![(3, 5.0), (7, -100.0)]);
        assert!(choices(Some(0)).is_err());
        assert_eq!(choices(None).unwrap(), 1);
    }
}
