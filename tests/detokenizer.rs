//! Incremental detokenization (`DecodeStream`): streamed pieces concatenate to the decoded
//! text, on the default model's byte-level BPE tokenizer and on a small SentencePiece
//! vocabulary with byte fallback.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use proptest::prelude::*;
use proptest::test_runner::Config;
use wick::tokenizer::{DecodeStream, Tokenizer};

fn default_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let resolved = common::default_model();
        let mut f = std::fs::File::open(&resolved.path).expect("model file");
        let content = gguf_file::Content::read(&mut f).expect("gguf");
        Tokenizer::from_gguf(&content).expect("tokenizer")
    })
}

/// A SentencePiece vocabulary (llama style): ids 0-2 `<unk> <s> </s>`, 3-258 the byte
/// tokens `<0x00>`.., then single characters and merged pieces, and a control token.
fn spm_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let mut toks: Vec<(String, f32, i32)> = vec![
            ("<unk>".into(), 0.0, 2),
            ("<s>".into(), 0.0, 3),
            ("</s>".into(), 0.0, 3),
        ];
        toks.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
        let singles = [
            "▁", "h", "e", "l", "o", "w", "r", "d", "a", "c", "t", "s", "!",
        ];
        toks.extend(
            singles
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), -1000.0 - i as f32, 1)),
        );
        let merged = [
            "he", "ll", "▁h", "▁he", "llo", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁c",
            "at", "▁cat", "▁t", "▁▁",
        ];
        toks.extend(
            merged
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), -1.0 - i as f32, 1)),
        );
        toks.push(("<|end|>".into(), 0.0, 3));
        let mut md: HashMap<String, Value> = HashMap::new();
        let s = |x: &str| Value::String(x.into());
        md.insert("general.architecture".into(), s("llama"));
        md.insert("tokenizer.ggml.model".into(), s("llama"));
        md.insert("tokenizer.ggml.pre".into(), s("default"));
        md.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(toks.iter().map(|t| s(&t.0)).collect()),
        );
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(toks.iter().map(|t| Value::F32(t.1)).collect()),
        );
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(toks.iter().map(|t| Value::I32(t.2)).collect()),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(true));
        wick::tokenizer::gguf::from_metadata(&md).expect("SentencePiece tokenizer")
    })
}

/// Streams `ids` after `tail` and returns every piece, the flush included.
fn stream(tok: &Tokenizer, tail: &[u32], ids: &[u32]) -> Vec<String> {
    let mut s = DecodeStream::new(tail);
    let mut pieces: Vec<String> = ids.iter().map(|&id| s.step(tok, id).unwrap()).collect();
    pieces.push(s.flush(tok).unwrap());
    pieces
}

/// What streaming `ids` after `tail` must give: the text `ids` add to `tail`'s.
fn expected(tok: &Tokenizer, tail: &[u32], ids: &[u32]) -> Option<String> {
    let all: Vec<u32> = tail.iter().chain(ids).copied().collect();
    let full = tok.decode(&all, true).unwrap();
    let head = tok.decode(tail, true).unwrap();
    full.strip_prefix(head.as_str()).map(str::to_string)
}

const TEXTS: &[&str] = &[
    "Hello, world! How are you today?",
    "Café crème brûlée, naïve façade, Ångström, São Paulo, Zürich.",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦🇫🇷 and 🤖 mixed with text.",
    "  leading spaces, tabs\tand\nnewlines\n\n  ",
    "Mathematics: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = π ≈ 3.14159",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code",
];

#[test]
fn byte_level_pieces_concatenate_to_the_text() {
    let tok = default_tokenizer();
    for text in TEXTS {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), *text);
        let pieces = stream(tok, &[], &ids);
        assert_eq!(pieces.concat(), *text, "{text:?}");
        // Complete characters only: nothing is left for the flush, no U+FFFD appears.
        assert_eq!(pieces.last().unwrap(), "");
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    }
}

#[test]
fn split_characters_are_held_back() {
    let tok = default_tokenizer();
    // Characters outside the merges come as several byte tokens: all but the last of
    // them add nothing.
    let mut held = 0;
    for text in ["🙂", "👩‍👧", "ℝ", "ᵢ", "𝔸𝔹"] {
        let ids = tok.encode(text, false).unwrap();
        let pieces = stream(tok, &[], &ids);
        assert_eq!(pieces.concat(), text);
        held += pieces[..ids.len()].iter().filter(|p| p.is_empty()).count();
    }
    assert!(held > 0, "no character of the samples spans tokens");
}

#[test]
fn prompt_context_and_special_tokens() {
    let tok = default_tokenizer();
    let id = |s: &str| tok.encode(s, false).unwrap();
    let tail = id("<|im_start|>assistant\n");
    let gen = id("Sure! Voilà: 日本 🙂<|im_end|>");
    let special: Vec<u32> = gen.iter().copied().filter(|&t| tok.is_special(t)).collect();
    assert!(!special.is_empty());
    let pieces = stream(tok, &tail, &gen);
    assert_eq!(pieces.concat(), "Sure! Voilà: 日本 🙂");
    for (t, p) in gen.iter().zip(&pieces) {
        if tok.is_special(*t) {
            assert_eq!(p, "", "special tokens add no text");
        }
    }
    // Continuing a prompt mid-sentence: the first token's leading space is kept.
    let tail = id("The capital of France is");
    let gen = id(" Paris, of course.");
    assert_eq!(stream(tok, &tail, &gen).concat(), " Paris, of course.");
}

#[test]
fn sentencepiece_leading_spaces_and_byte_fallback() {
    let tok = spm_tokenizer();
    let ids = |s: &str| tok.encode(s, false).unwrap();
    let hello = ids("hello");
    // "world" encodes as "▁world" (SentencePiece's space prefix).
    let world = ids("world");
    // Alone, the first piece loses its SentencePiece space, as decode does.
    assert_eq!(stream(tok, &[], &world).concat(), "world");
    // After context it keeps it.
    assert_eq!(stream(tok, &hello, &world).concat(), " world");
    let both = ids("hello world cat!");
    let pieces = stream(tok, &[], &both);
    assert_eq!(pieces.concat(), "hello world cat!");
    // "é" is two byte tokens: the first adds nothing.
    let he = ids("hé wörld");
    let pieces = stream(tok, &[], &he);
    assert_eq!(pieces.concat(), "hé wörld");
    assert!(pieces.iter().any(|p| p.is_empty()));
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    // An invalid run of byte tokens (not text a model writes) decodes as one U+FFFD per
    // byte, also over the "A" already streamed; the stream cannot take "A" back and, as
    // TGI, gives as many characters as the decoded text has.
    let invalid = [3 + 0x41, 3 + 0x80];
    assert_eq!(tok.decode(&invalid, true).unwrap(), "\u{FFFD}\u{FFFD}");
    assert_eq!(stream(tok, &[], &invalid).concat(), "A\u{FFFD}");
    // Control tokens add nothing.
    let mut with_specials = vec![1];
    with_specials.extend(&hello);
    with_specials.push(tok.inner().token_to_id("<|end|>").unwrap());
    with_specials.extend(&world);
    assert_eq!(
        stream(tok, &[], &with_specials).concat(),
        tok.decode(&with_specials, true).unwrap()
    );
}

#[test]
fn window_stays_bounded() {
    // A long generation: each step decodes a few tokens, however long the text.
    let tok = default_tokenizer();
    let text = TEXTS.concat().repeat(40);
    let ids = tok.encode(&text, false).unwrap();
    let mut s = DecodeStream::new(&[]);
    let start = std::time::Instant::now();
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&s.step(tok, id).unwrap());
    }
    out.push_str(&s.flush(tok).unwrap());
    assert_eq!(out, text);
    let per_token = start.elapsed() / ids.len() as u32;
    assert!(
        per_token < std::time::Duration::from_millis(1),
        "{per_token:?} per token over {} tokens",
        ids.len()
    );
}

/// One "unit" of a SentencePiece generation: a piece (ids 259.. of the vocabulary, the
/// control tokens 1, 2 and `<|end|>` included) or the byte tokens of one character that
/// has no piece.
fn spm_unit() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        (259u32..289).prop_map(|id| vec![id]),
        prop::sample::select(vec![1u32, 2, 288]).prop_map(|id| vec![id]),
        prop::sample::select(vec!['é', 'ö', '日', '語', '🙂', '🚀', 'x', '\n', '\0']).prop_map(
            |c| {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| 3 + b as u32)
                    .collect()
            }
        ),
    ]
}

fn config() -> Config {
    Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Random id sequences (incomplete UTF-8, special tokens and all): the pieces and the
    /// flush concatenate to decode(ids).
    #[test]
    fn byte_level_random_ids(ids in prop::collection::vec(0u32..49_152, 0..48)) {
        let tok = default_tokenizer();
        let ids: Vec<u32> = ids.into_iter().filter(|&i| (i as usize) < tok.vocab_size()).collect();
        prop_assert_eq!(stream(tok, &[], &ids).concat(), tok.decode(&ids, true).unwrap());
    }

    /// The same after a few context tokens, and with byte tokens drawn often (ids below
    /// 300 are single bytes and short pieces in this vocabulary).
    #[test]
    fn byte_level_random_ids_with_context(
        tail in prop::collection::vec(0u32..49_152, 0..5),
        ids in prop::collection::vec(prop_oneof![0u32..300, 0u32..49_152], 0..48),
    ) {
        let tok = default_tokenizer();
        if let Some(want) = expected(tok, &tail, &ids) {
            prop_assert_eq!(stream(tok, &tail, &ids).concat(), want);
        }
    }

    /// Random sequences of SentencePiece pieces and of the byte tokens of whole
    /// characters (valid UTF-8, as a model emits): pieces == decode.
    #[test]
    fn sentencepiece_random_units(
        tail in prop::collection::vec(spm_unit(), 0..3),
        units in prop::collection::vec(spm_unit(), 0..30),
    ) {
        let tok = spm_tokenizer();
        let tail: Vec<u32> = tail.concat();
        let ids: Vec<u32> = units.concat();
        prop_assert_eq!(stream(tok, &[], &ids).concat(), tok.decode(&ids, true).unwrap());
        if let Some(want) = expected(tok, &tail, &ids) {
            prop_assert_eq!(stream(tok, &tail, &ids).concat(), want);
        }
    }
}
