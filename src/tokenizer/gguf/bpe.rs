//! BPE vocabularies with merges (`gpt2`, `gemma4`): byte-level BPE split by the regexes
//! llama.cpp associates with `tokenizer.ggml.pre` (see `tokenizer::pre`), or
//! SentencePiece-style BPE over raw UTF-8.

use std::collections::HashSet;

use anyhow::{anyhow, Result};
use serde_json::json;

use super::metadata::{get_strings, Metadata};
use super::parts::{bpe_model, Parts};
use super::vocab::Vocab;
use crate::tokenizer::pre::BpePre;

pub(super) fn bpe_parts(md: &Metadata, vocab: &Vocab, pre: &BpePre) -> Result<Parts> {
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

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::Value;

    use super::super::from_metadata;
    use super::super::tests::{base, strings};

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

    pub(in super::super) fn bpe(pre: &str) -> HashMap<String, Value> {
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
}
