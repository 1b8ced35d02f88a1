//! SentencePiece (`llama`) vocabularies as Hugging Face's LlamaConverter builds them: BPE
//! with merges derived from the vocabulary ranked by piece score, byte fallback, `▁` for
//! spaces and a `▁` prefix when `add_space_prefix` holds.

use anyhow::Result;
use serde_json::json;

use super::metadata::{as_f32, get_bool, get_per_token, Metadata};
use super::parts::{bpe_model, Parts};
use super::vocab::Vocab;

pub(super) fn spm_parts(md: &Metadata, vocab: &Vocab, unk_id: Option<u32>) -> Result<Parts> {
    let n = vocab.tokens.len();
    let scores = get_per_token(md, "tokenizer.ggml.scores", n, as_f32, 0.0)?;
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
pub(super) mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::Value;

    use super::super::from_metadata;
    use super::super::tests::base;

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

    pub(in super::super) fn spm(add_space_prefix: bool, add_eos: bool) -> HashMap<String, Value> {
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
}
