//! A tokenizer from GGUF metadata (`tokenizer.ggml.*`), built to tokenize as llama.cpp
//! does.
//!
//! * `gpt2` vocabularies become byte-level BPE split by the regexes llama.cpp associates
//!   with `tokenizer.ggml.pre` (see [`super::pre`]); `gemma4` ones SentencePiece-style BPE
//!   over raw UTF-8.
//! * `llama` vocabularies become what Hugging Face's LlamaConverter builds: BPE with merges
//!   derived from the vocabulary ranked by piece score, byte fallback, `▁` for spaces and a
//!   `▁` prefix when `add_space_prefix` holds.
//! * Token types and the token-text rules llama.cpp applies on load decide which tokens
//!   are matched verbatim in text (control, user-defined, unknown), which are special, and
//!   which end generation.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use super::pre::{bpe_pre, BpePre};
use super::special::{SpecialToken, Specials};
use super::{GgufText, Tokenizer};

// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`.
const UNKNOWN: u32 = 1 << 0;
const NORMAL: u32 = 1 << 1;
const CONTROL: u32 = 1 << 2;
const USER_DEFINED: u32 = 1 << 3;
const BYTE: u32 = 1 << 4;
const UNUSED: u32 = 1 << 5;

/// Tokens llama.cpp takes for end-of-turn when no `eot_token_id` is given.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Tokens that end generation (and are control tokens) whatever their type says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss markers that llama.cpp renders as text.
const USER_DEFINED_TEXTS: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn as_f32(v: &Value) -> Option<f32> {
    match v {
        Value::F32(x) => Some(*x),
        Value::F64(x) => Some(*x as f32),
        other => as_i64(other).map(|x| x as f32),
    }
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    match md.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn get_bool(md: &HashMap<String, Value>, key: &str) -> Option<bool> {
    match md.get(key)? {
        Value::Bool(b) => Some(*b),
        other => as_i64(other).map(|x| x != 0),
    }
}

fn get_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => bail!("GGUF metadata '{key}' is not an array"),
    }
}

fn get_strings(md: &HashMap<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    let Some(a) = get_array(md, key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.clone()),
            _ => Err(anyhow!("GGUF metadata '{key}' holds a non-string")),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The vocabulary with llama.cpp's view of each token.
struct Vocab {
    tokens: Vec<String>,
    attrs: Vec<u32>,
    index: HashMap<String, u32>,
}

impl Vocab {
    fn id(&self, text: &str) -> Option<u32> {
        self.index.get(text).copied()
    }

    fn text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    fn add_attr(&mut self, id: u32, attr: u32) {
        if let Some(a) = self.attrs.get_mut(id as usize) {
            *a |= attr;
        }
    }

    /// The lowest id among tokens with one of these texts.
    fn first_of(&self, texts: &[&str]) -> Option<u32> {
        texts.iter().filter_map(|t| self.id(t)).min()
    }
}

/// Special token ids as llama.cpp resolves them: the model type's default, replaced by
/// the metadata key when that names a token of the vocabulary.
fn special_id(
    md: &HashMap<String, Value>,
    keys: &[&str],
    default: Option<u32>,
    n_tokens: usize,
) -> Option<u32> {
    let mut id = default.filter(|&i| (i as usize) < n_tokens);
    for key in keys {
        if let Some(v) = md.get(*key).and_then(as_i64) {
            if v >= 0 && (v as usize) < n_tokens {
                id = Some(v as u32);
            } else {
                tracing::warn!(
                    key,
                    value = v,
                    "GGUF special token id out of the vocabulary; ignored"
                );
            }
        }
    }
    id
}

pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Tokenizer> {
    let model = get_str(md, "tokenizer.ggml.model").ok_or_else(|| {
        anyhow!("GGUF metadata lacks 'tokenizer.ggml.model': the file carries no tokenizer")
    })?;
    if !matches!(model, "gpt2" | "llama" | "gemma4") {
        bail!(
            "unsupported GGUF tokenizer model '{model}': wick reads 'gpt2' and 'gemma4' (BPE) and 'llama' (SentencePiece)"
        );
    }
    let mut tokens = get_strings(md, "tokenizer.ggml.tokens")?
        .ok_or_else(|| anyhow!("GGUF metadata lacks 'tokenizer.ggml.tokens'"))?;
    if tokens.is_empty() || tokens.len() > u32::MAX as usize {
        bail!("GGUF vocabulary has {} tokens", tokens.len());
    }
    let n = tokens.len();
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[EMPTY_{i}]");
        }
    }
    let types: Vec<i64> = match get_array(md, "tokenizer.ggml.token_type")? {
        Some(a) if a.len() >= n => a.iter().map(|v| as_i64(v).unwrap_or(1)).collect(),
        Some(a) => bail!(
            "GGUF 'tokenizer.ggml.token_type' has {} entries for {n} tokens",
            a.len()
        ),
        None => vec![1; n],
    };
    let attrs = types
        .iter()
        .take(n)
        .map(|t| match t {
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            1 => NORMAL,
            _ => 0,
        })
        .collect();
    let mut index = HashMap::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        // As llama.cpp: a repeated text names its last token.
        index.insert(t.clone(), i as u32);
    }
    let mut vocab = Vocab {
        tokens,
        attrs,
        index,
    };

    let pre_name = get_str(md, "tokenizer.ggml.pre");
    let bpe = (model != "llama").then(|| bpe_pre(model, pre_name));
    let (bos_default, eos_default, unk_default) = match model {
        "llama" => (Some(1), Some(2), Some(0)),
        "gpt2" if bpe.as_ref().is_some_and(|b| b.no_bos) => (None, Some(11), None),
        "gpt2" => (Some(11), Some(11), None),
        _ => (None, None, None),
    };
    let bos_id = special_id(md, &["tokenizer.ggml.bos_token_id"], bos_default, n);
    let eos_id = special_id(md, &["tokenizer.ggml.eos_token_id"], eos_default, n);
    let unk_id = special_id(md, &["tokenizer.ggml.unknown_token_id"], unk_default, n);
    let key_id = |keys: &[&str]| special_id(md, keys, None, n);
    let mut eot_id = key_id(&["tokenizer.ggml.eot_token_id"]);
    let mut eom_id = key_id(&["tokenizer.ggml.eom_token_id"]);
    let mut fim = [
        (
            key_id(&[
                "tokenizer.ggml.fim_pre_token_id",
                "tokenizer.ggml.prefix_token_id",
            ]),
            FIM_PRE_TEXTS,
        ),
        (
            key_id(&[
                "tokenizer.ggml.fim_suf_token_id",
                "tokenizer.ggml.suffix_token_id",
            ]),
            FIM_SUF_TEXTS,
        ),
        (
            key_id(&[
                "tokenizer.ggml.fim_mid_token_id",
                "tokenizer.ggml.middle_token_id",
            ]),
            FIM_MID_TEXTS,
        ),
        (key_id(&["tokenizer.ggml.fim_pad_token_id"]), FIM_PAD_TEXTS),
        (key_id(&["tokenizer.ggml.fim_rep_token_id"]), FIM_REP_TEXTS),
        (key_id(&["tokenizer.ggml.fim_sep_token_id"]), FIM_SEP_TEXTS),
    ];

    // Tokens llama.cpp recognises by their text become control tokens.
    for (slot, texts) in [(&mut eot_id, EOT_TEXTS), (&mut eom_id, EOM_TEXTS)] {
        if slot.is_none() {
            *slot = vocab.first_of(texts);
            if let Some(id) = *slot {
                vocab.add_attr(id, CONTROL);
            }
        }
    }
    for (slot, texts) in fim.iter_mut() {
        if slot.is_none() {
            *slot = vocab.first_of(texts);
            if let Some(id) = *slot {
                vocab.add_attr(id, CONTROL);
            }
        }
    }
    // End-of-generation tokens.
    let mut eog: BTreeSet<u32> = fim[3..].iter().filter_map(|(id, _)| *id).collect();
    for text in EOG_TEXTS {
        if let Some(id) = vocab.id(text) {
            eog.insert(id);
            vocab.add_attr(id, CONTROL);
        }
    }
    for text in USER_DEFINED_TEXTS {
        if let Some(id) = vocab.id(text) {
            vocab.attrs[id as usize] = USER_DEFINED;
        }
    }
    eog.extend([eos_id, eot_id, eom_id].into_iter().flatten());
    let in_eog = |vocab: &Vocab, eog: &BTreeSet<u32>, text: &str| {
        vocab.id(text).filter(|id| eog.contains(id))
    };
    let end = in_eog(&vocab, &eog, "<|end|>");
    let has = |t: &str| in_eog(&vocab, &eog, t).is_some();
    let (has_return, has_call, has_flush) = (
        has("<|return|>"),
        has("<|call|>") || has("<|calls|>"),
        has("<|flush|>"),
    );
    let has_normal_s_marker = has("<|tool_response>") || has("<|plamo:eos|>");
    let s_eog = in_eog(&vocab, &eog, "</s>");
    if let Some(end) = end {
        if has_call && (has_return || has_flush) {
            eog.remove(&end);
            vocab.attrs[end as usize] = USER_DEFINED;
        }
    }
    if let (true, Some(s)) = (has_normal_s_marker, s_eog) {
        eog.remove(&s);
        vocab.attrs[s as usize] = NORMAL;
    }

    // Tokens matched verbatim in text, and the whitespace they swallow.
    let name = get_str(md, "general.name").unwrap_or("").to_lowercase();
    let arch = get_str(md, "general.architecture").unwrap_or("");
    let pre_str = pre_name.unwrap_or("");
    let mut strip: HashMap<u32, (bool, bool)> = HashMap::new();
    let verbatim_mask = CONTROL | USER_DEFINED | UNKNOWN;
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
            if a & verbatim_mask != 0 {
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
    let verbatim: Vec<u32> = (0..n as u32)
        .filter(|&i| vocab.attrs[i as usize] & verbatim_mask != 0)
        .collect();
    let specials = Specials::new(
        verbatim
            .iter()
            .map(|&id| {
                let (lstrip, rstrip) = strip.get(&id).copied().unwrap_or((false, false));
                SpecialToken {
                    text: vocab.tokens[id as usize].clone(),
                    id,
                    lstrip,
                    rstrip,
                }
            })
            .collect(),
    );
    let is_special = |id: u32| vocab.attrs[id as usize] & (CONTROL | UNKNOWN) != 0;
    let added: Vec<tokenizers::AddedToken> = verbatim
        .iter()
        .map(|&id| {
            let (lstrip, rstrip) = strip.get(&id).copied().unwrap_or((false, false));
            tokenizers::AddedToken::from(vocab.tokens[id as usize].clone(), is_special(id))
                .lstrip(lstrip)
                .rstrip(rstrip)
                .normalized(false)
        })
        .collect();
    let special_ids: HashSet<u32> = verbatim
        .iter()
        .copied()
        .filter(|&id| is_special(id))
        .collect();

    let add_bos_default = match &bpe {
        None => true,
        Some(b) => b.add_bos,
    };
    let mut add_bos = get_bool(md, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default);
    if bpe.as_ref().is_some_and(|b| b.newline_tokens) {
        // llama.cpp always adds BOS for Gemma 4.
        add_bos = true;
    }
    let mut add_eos = get_bool(md, "tokenizer.ggml.add_eos_token").unwrap_or(false);
    if add_bos && bos_id.is_none() {
        tracing::warn!("GGUF asks for a BOS token but names none; adding none");
        add_bos = false;
    }
    if add_eos && eos_id.is_none() {
        tracing::warn!("GGUF asks for an EOS token but names none; adding none");
        add_eos = false;
    }

    let parts = match &bpe {
        Some(b) => bpe_parts(md, &vocab, b)?,
        None => spm_parts(md, &vocab, unk_id)?,
    };
    let inner = parts.build(added)?;

    // Byte-level decoding would garble verbatim token text that is not byte-level
    // encoded; such tokens are decoded as their text.
    let verbatim_text: HashMap<u32, String> = if bpe.as_ref().is_some_and(|b| b.byte_encode) {
        verbatim
            .iter()
            .map(|&id| (id, vocab.tokens[id as usize].clone()))
            .collect()
    } else {
        HashMap::new()
    };
    let newline_tokens = bpe.as_ref().filter(|b| b.newline_tokens).map(|_| {
        vocab
            .index
            .iter()
            .filter(|(t, _)| !t.is_empty() && t.bytes().all(|b| b == b'\n'))
            .map(|(t, &id)| (t.clone(), id))
            .collect::<HashMap<_, _>>()
    });
    let text_of = |id: Option<u32>| id.and_then(|i| vocab.text(i)).map(str::to_string);
    Ok(Tokenizer {
        inner,
        vocab_size: n,
        add_bos,
        append_eos: if add_eos { eos_id } else { None },
        post_process: false,
        bos_token: text_of(bos_id),
        eos_token: text_of(eos_id),
        bos_id,
        eos_ids: eog.into_iter().collect(),
        special_ids,
        chat_template: get_str(md, "tokenizer.chat_template").map(str::to_string),
        gguf: Some(GgufText {
            no_token: bpe.as_ref().filter(|b| b.byte_encode).map(|_| n as u32),
            specials,
            verbatim_text,
            newline_tokens,
        }),
    })
}

/// The pieces of a Hugging Face tokenizer: a BPE model and the JSON forms of the rest.
struct Parts {
    model: tokenizers::models::bpe::BPE,
    normalizer: serde_json::Value,
    pre_tokenizer: serde_json::Value,
    decoder: serde_json::Value,
}

impl Parts {
    fn build(self, added: Vec<tokenizers::AddedToken>) -> Result<tokenizers::Tokenizer> {
        fn part<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
            what: &str,
        ) -> Result<Option<T>> {
            if v.is_null() {
                return Ok(None);
            }
            serde_json::from_value(v)
                .map(Some)
                .map_err(|e| anyhow!("cannot build the tokenizer's {what}: {e}"))
        }
        let mut t = tokenizers::Tokenizer::new(self.model);
        t.with_normalizer(part::<tokenizers::NormalizerWrapper>(
            self.normalizer,
            "normalizer",
        )?);
        t.with_pre_tokenizer(part::<tokenizers::PreTokenizerWrapper>(
            self.pre_tokenizer,
            "pre-tokenizer",
        )?);
        t.with_decoder(part::<tokenizers::DecoderWrapper>(self.decoder, "decoder")?);
        let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
        t.add_special_tokens(&special);
        t.add_tokens(&normal);
        Ok(t)
    }
}

fn bpe_model(
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    unk: Option<String>,
    byte_fallback: bool,
    fuse_unk: bool,
    ignore_merges: bool,
) -> Result<tokenizers::models::bpe::BPE> {
    let mut b = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .byte_fallback(byte_fallback)
        .fuse_unk(fuse_unk)
        .ignore_merges(ignore_merges);
    if let Some(unk) = unk {
        b = b.unk_token(unk);
    }
    b.build()
        .map_err(|e| anyhow!("cannot build the BPE model from GGUF metadata: {e}"))
}

fn bpe_parts(md: &HashMap<String, Value>, vocab: &Vocab, pre: &BpePre) -> Result<Parts> {
    let raw = get_strings(md, "tokenizer.ggml.merges")?
        .ok_or_else(|| anyhow!("GGUF metadata lacks 'tokenizer.ggml.merges'"))?;
    // llama.cpp splits a merge at its first space after the first byte, and the first
    // rank of a repeated pair counts. Pairs whose parts or result are not tokens can
    // never produce a token and are left out (Hugging Face's BPE rejects them).
    let mut seen = HashSet::new();
    let mut merges = Vec::with_capacity(raw.len());
    for m in &raw {
        let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ') else {
            continue;
        };
        let (a, b) = (&m[..pos + 1], &m[pos + 2..]);
        if vocab.id(a).is_none() || vocab.id(b).is_none() || vocab.id(&format!("{a}{b}")).is_none()
        {
            continue;
        }
        if seen.insert((a, b)) {
            merges.push((a.to_string(), b.to_string()));
        }
    }
    let mut pretok: Vec<serde_json::Value> = pre
        .regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    let mut vocab_map = vocab.index.clone();
    // llama.cpp keeps a character that is no token as a symbol of its own while merging
    // and drops it afterwards; an unknown token that `encode` removes does the same.
    let unk = if pre.byte_encode {
        let mut sentinel = String::from("<wick:no-token>");
        while vocab_map.contains_key(&sentinel) {
            sentinel.push('_');
        }
        vocab_map.insert(sentinel.clone(), vocab.tokens.len() as u32);
        Some(sentinel)
    } else {
        None
    };
    let (normalizer, decoder) = if pre.byte_encode {
        pretok.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
        (
            serde_json::Value::Null,
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}),
        )
    } else {
        (
            if pre.escape_whitespaces {
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
            } else {
                serde_json::Value::Null
            },
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ]}),
        )
    };
    Ok(Parts {
        model: bpe_model(
            vocab_map,
            merges,
            unk,
            !pre.byte_encode,
            false,
            pre.ignore_merges,
        )?,
        normalizer,
        pre_tokenizer: json!({"type": "Sequence", "pretokenizers": pretok}),
        decoder,
    })
}

fn spm_parts(md: &HashMap<String, Value>, vocab: &Vocab, unk_id: Option<u32>) -> Result<Parts> {
    let n = vocab.tokens.len();
    let scores: Vec<f32> = match get_array(md, "tokenizer.ggml.scores")? {
        Some(a) if a.len() >= n => a.iter().map(|v| as_f32(v).unwrap_or(0.0)).collect(),
        Some(a) => bail!(
            "GGUF 'tokenizer.ggml.scores' has {} entries for {n} tokens",
            a.len()
        ),
        None => vec![0.0; n],
    };
    // llama.cpp merges the adjacent pair whose concatenation is the highest-scoring
    // token. As BPE merges (Hugging Face's SentencePiece extractor): every split of a
    // piece into two pieces, ranked by the piece's score.
    let mut merges: Vec<(f32, u32, u32, u32, &str, &str)> = Vec::new();
    for (piece, &id) in &vocab.index {
        for (pos, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(pos);
            if let (Some(li), Some(ri)) = (vocab.id(l), vocab.id(r)) {
                merges.push((scores[id as usize], id, li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|m| (m.4.to_string(), m.5.to_string()))
        .collect();
    let unk = unk_id.and_then(|i| vocab.text(i)).map(str::to_string);
    let add_space = get_bool(md, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let mut norm = Vec::new();
    if add_space {
        norm.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut dec = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space {
        dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(Parts {
        model: bpe_model(vocab.index.clone(), merges, unk, true, true, false)?,
        normalizer: json!({"type": "Sequence", "normalizers": norm}),
        pre_tokenizer: serde_json::Value::Null,
        decoder: json!({"type": "Sequence", "decoders": dec}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[String]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.clone())).collect())
    }

    fn base(model: &str, tokens: &[String], types: &[i32]) -> HashMap<String, Value> {
        let mut md = HashMap::new();
        md.insert("general.architecture".into(), Value::String("llama".into()));
        md.insert("tokenizer.ggml.model".into(), Value::String(model.into()));
        md.insert("tokenizer.ggml.tokens".into(), strings(tokens));
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        );
        md
    }

    // A small SentencePiece vocabulary: ids 0-2 <unk> <s> </s>, 3-258 the bytes <0x00>..,
    // 259-271 single characters (low scores), 272-287 merged pieces (scores -1, -2, ...),
    // 288 user-defined <|user|>, 289 control <|end|>, 290 unused <unused0>.
    const SINGLES: [&str; 13] = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "a", "c", "t", "s", "!",
    ];
    const MERGED: [&str; 16] = [
        "he", "ll", "▁h", "▁he", "llo", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁c", "at",
        "▁cat", "▁t", "▁▁",
    ];

    fn spm(add_space_prefix: bool, add_eos: bool) -> HashMap<String, Value> {
        let mut toks: Vec<(String, f32, i32)> = vec![
            ("<unk>".into(), 0.0, 2),
            ("<s>".into(), 0.0, 3),
            ("</s>".into(), 0.0, 3),
        ];
        toks.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
        toks.extend(
            SINGLES
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), -1000.0 - i as f32, 1)),
        );
        toks.extend(
            MERGED
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), -1.0 - i as f32, 1)),
        );
        toks.extend([
            ("<|user|>".into(), 0.0, 4),
            ("<|end|>".into(), 0.0, 3),
            ("<unused0>".into(), 0.0, 5),
        ]);
        let names: Vec<String> = toks.iter().map(|t| t.0.clone()).collect();
        let types: Vec<i32> = toks.iter().map(|t| t.2).collect();
        let mut md = base("llama", &names, &types);
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(toks.iter().map(|t| Value::F32(t.1)).collect()),
        );
        md.insert("tokenizer.ggml.pre".into(), Value::String("default".into()));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos));
        md.insert(
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(add_space_prefix),
        );
        md
    }

    /// (text, ids without add_special) for the vocabulary above, default options. Made
    /// by llama.cpp (llama-cpp-python 0.3.36, `Llama(path, vocab_only=True)
    /// .tokenize(text, add_bos=False, special=True)`) on this vocabulary written as GGUF
    /// with the `gguf` Python package.
    const SPM_CASES: &[(&str, &[u32])] = &[
        ("hello world", &[277, 282]),
        ("hello", &[277]),
        (" hello", &[259, 277]),
        ("hé", &[274, 198, 172]),
        ("<|user|>hello<|end|>", &[288, 277, 289]),
        ("<unk>", &[0]),
        (
            "<unused0>",
            &[259, 63, 120, 113, 120, 270, 261, 266, 51, 65],
        ),
        ("", &[]),
        ("cat!", &[285, 271]),
        ("the cat", &[286, 272, 285]),
        ("  hello  world ", &[287, 277, 259, 282, 259]),
        ("hello</s><s>", &[277, 2, 1]),
        ("<|user|> hello", &[288, 259, 277]),
        ("wor\u{a0}ld", &[280, 197, 163, 281]),
        ("é!", &[259, 198, 172, 271]),
    ];

    /// The same with `add_space_prefix = false` (llama.cpp, as above).
    const SPM_NO_PREFIX_CASES: &[(&str, &[u32])] = &[
        ("hello world", &[272, 276, 282]),
        (" hello", &[277]),
        ("hé", &[260, 198, 172]),
        ("<|user|>hello<|end|>", &[288, 272, 276, 289]),
        ("<unused0>", &[63, 120, 113, 120, 270, 261, 266, 51, 65]),
        ("cat!", &[268, 284, 271]),
        ("the cat", &[269, 272, 285]),
        ("  hello  world ", &[259, 277, 259, 282, 259]),
        ("<|user|> hello", &[288, 277]),
        ("wor\u{a0}ld", &[264, 279, 197, 163, 281]),
        ("é!", &[198, 172, 271]),
    ];

    #[test]
    fn sentencepiece_vocab_tokenizes_as_llama_cpp() {
        let t = from_metadata(&spm(true, false)).unwrap();
        for (text, want) in SPM_CASES {
            assert_eq!(t.encode(text, false).unwrap(), *want, "{text:?}");
            let mut with_bos = vec![1];
            with_bos.extend_from_slice(want);
            assert_eq!(t.encode(text, true).unwrap(), with_bos, "{text:?}");
        }
        let t = from_metadata(&spm(false, false)).unwrap();
        for (text, want) in SPM_NO_PREFIX_CASES {
            assert_eq!(t.encode(text, false).unwrap(), *want, "{text:?}");
        }
        // add_eos_token appends EOS with add_special.
        let t = from_metadata(&spm(true, true)).unwrap();
        assert_eq!(t.encode("hello", true).unwrap(), vec![1, 277, 2]);
        assert_eq!(t.encode("", true).unwrap(), vec![1, 2]);
        assert_eq!(t.encode("hello", false).unwrap(), vec![277]);
    }

    #[test]
    fn sentencepiece_vocab_by_hand() {
        // "hello": ▁ h e l l o -> he (-1) -> ll (-2) -> ▁he (-4) -> llo (-5) -> ▁hello (-6).
        // "hé": é is no piece, so its UTF-8 bytes C3 A9 are tokens 3 + 0xC3 and 3 + 0xA9.
        let t = from_metadata(&spm(true, false)).unwrap();
        let id = |s: &str| t.inner().token_to_id(s).unwrap();
        assert_eq!(t.encode("hello", false).unwrap(), vec![id("▁hello")]);
        assert_eq!(
            t.encode("hé", false).unwrap(),
            vec![id("▁h"), 3 + 0xC3, 3 + 0xA9]
        );
        assert_eq!(t.bos_id(), Some(1));
        // <|end|> ends generation by its text, as in llama.cpp.
        assert_eq!(t.eos_ids(), &[2, 289]);
        assert_eq!(t.vocab_size(), 291);
        // Control and unknown tokens are special; user-defined and unused ones are not.
        assert!(t.is_special(0) && t.is_special(1) && t.is_special(289));
        assert!(!t.is_special(288) && !t.is_special(290) && !t.is_special(277));
        for text in ["hello world", "  hello  world ", "hé wörld!", "cat\n\tthe"] {
            let ids = t.encode(text, false).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text);
        }
        assert_eq!(t.decode(&[1, 277, 2], true).unwrap(), "hello");
        assert_eq!(t.token_str(277).as_deref(), Some("hello"));
        assert_eq!(t.token_str(198).as_deref(), Some("\u{fffd}"));
        assert_eq!(t.token_str(5000), None);
    }

    /// GPT-2's byte-to-unicode table.
    fn byte_chars() -> Vec<char> {
        let mut printable: Vec<u32> = (0x21..=0x7e)
            .chain(0xa1..=0xac)
            .chain(0xae..=0xff)
            .collect();
        let mut chars = vec!['\0'; 256];
        for &b in &printable {
            chars[b as usize] = char::from_u32(b).unwrap();
        }
        let mut next = 256;
        for b in 0..256u32 {
            if !printable.contains(&b) {
                chars[b as usize] = char::from_u32(next).unwrap();
                next += 1;
            }
        }
        printable.clear();
        chars
    }

    // A byte-level BPE vocabulary: ids 0-255 the bytes, 256-266 the merge results,
    // 267 <|im_start|> (control, BOS), 268 <|im_end|> (control, EOS), 269 <think>
    // (user-defined), 270 <|endoftext|> (normal by type, control to llama.cpp).
    const BPE_MERGES: [&str; 11] = [
        "Ġ t", "h e", "Ġt he", "Ġ a", "i s", "Ġ is", "1 2", "12 3", "Ġ 1", "Ġ Ġ", "Ċ Ċ",
    ];

    fn bpe(pre: &str) -> HashMap<String, Value> {
        let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        tokens.extend(BPE_MERGES.iter().map(|m| m.replace(' ', "")));
        tokens.extend(["<|im_start|>", "<|im_end|>", "<think>", "<|endoftext|>"].map(String::from));
        let mut types = vec![1; 256 + BPE_MERGES.len()];
        types.extend([3, 3, 4, 1]);
        let mut md = base("gpt2", &tokens, &types);
        md.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        md.insert(
            "tokenizer.ggml.merges".into(),
            strings(&BPE_MERGES.map(String::from)),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(267));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(268));
        md
    }

    #[test]
    fn byte_level_vocab_tokenizes_as_llama_cpp() {
        // Made by llama.cpp as SPM_CASES were, on this vocabulary with each pre-tokenizer.
        let common: &[(&str, &[u32])] = &[
            ("the is", &[116, 257, 261]),
            (" the", &[258]),
            (
                "<|im_start|>user\nthe<|im_end|>",
                &[267, 117, 115, 101, 114, 10, 116, 257, 268],
            ),
            ("<think>x<|endoftext|>", &[269, 120, 270]),
            ("é", &[195, 169]),
            ("\u{a0} the", &[194, 160, 258]),
            ("  the  \n\n\n a", &[32, 258, 265, 266, 10, 259]),
            ("", &[]),
        ];
        let digits_split: &[(&str, &[u32])] = &[
            ("123 12", &[49, 50, 51, 32, 49, 50]),
            ("1234", &[49, 50, 51, 52]),
            (" 12345", &[32, 49, 50, 51, 52, 53]),
        ];
        let digits_merged: &[(&str, &[u32])] = &[
            ("123 12", &[263, 32, 262]),
            ("1234", &[263, 52]),
            (" 12345", &[32, 263, 52, 53]),
        ];
        for (pre, digits, bos) in [
            ("smollm", digits_split, false),
            ("qwen2", digits_split, false),
            ("gpt-2", digits_merged, false),
            ("llama-bpe", digits_merged, true),
        ] {
            let t = from_metadata(&bpe(pre)).unwrap();
            for (text, want) in common.iter().chain(digits.iter()) {
                assert_eq!(t.encode(text, false).unwrap(), *want, "{pre} {text:?}");
                let with_bos: Vec<u32> = bos
                    .then_some(267)
                    .into_iter()
                    .chain(want.iter().copied())
                    .collect();
                assert_eq!(t.encode(text, true).unwrap(), with_bos, "{pre} {text:?}");
                assert_eq!(t.decode(want, false).unwrap(), *text, "{pre} {text:?}");
            }
            // llama.cpp's end-of-generation set: EOS and the <|endoftext|> text rule.
            assert_eq!(t.eos_ids(), &[268, 270], "{pre}");
            assert_eq!(t.bos_id(), Some(267));
            assert!(t.is_special(270) && !t.is_special(269));
            assert_eq!(
                t.decode(&[267, 116, 257, 269, 268], true).unwrap(),
                "the<think>"
            );
        }
    }

    #[test]
    fn bad_metadata_is_rejected() {
        let mut md = spm(true, false);
        md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("unsupported GGUF tokenizer model 'rwkv'"), "{e}");
        let mut md = spm(true, false);
        md.remove("tokenizer.ggml.tokens");
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
        let mut md = bpe("gpt-2");
        md.remove("tokenizer.ggml.merges");
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.merges"), "{e}");
        let mut md = spm(true, false);
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(vec![Value::F32(0.0)]),
        );
        assert!(from_metadata(&md).is_err());
        let mut md = HashMap::new();
        md.insert("general.architecture".into(), Value::String("llama".into()));
        let e = from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model"), "{e}");
    }
}
