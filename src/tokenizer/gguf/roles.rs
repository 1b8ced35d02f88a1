//! Which tokens play which part, as llama.cpp resolves them on load: BOS, EOS and
//! unknown (the model type's default, replaced by a metadata key), end-of-turn and
//! fill-in-the-middle tokens (a metadata key, else a known token text), and the set of
//! tokens that end generation. Tokens found by their text become control tokens; a few
//! texts change type (gpt-oss markers are user-defined, `</s>` is normal text beside
//! some end markers).

use std::collections::BTreeSet;

use super::metadata::{as_i64, Metadata};
use super::vocab::{Vocab, CONTROL, NORMAL, USER_DEFINED};
use crate::tokenizer::pre::BpePre;

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

/// The token ids with a part to play.
pub(super) struct Roles {
    pub(super) bos_id: Option<u32>,
    pub(super) eos_id: Option<u32>,
    pub(super) unk_id: Option<u32>,
    /// Tokens that end generation.
    pub(super) eog: BTreeSet<u32>,
}

/// Special token ids as llama.cpp resolves them: the model type's default, replaced by
/// the metadata key when that names a token of the vocabulary.
fn special_id(md: &Metadata, keys: &[&str], default: Option<u32>, n_tokens: usize) -> Option<u32> {
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

impl Roles {
    /// Resolves the parts for a vocabulary of tokenizer model `model` (`bpe`: its
    /// pre-tokenizer, for BPE models), updating token attributes as llama.cpp does.
    pub(super) fn resolve(
        md: &Metadata,
        vocab: &mut Vocab,
        model: &str,
        bpe: Option<&BpePre>,
    ) -> Self {
        let n = vocab.len();
        let (bos_default, eos_default, unk_default) = match model {
            "llama" => (Some(1), Some(2), Some(0)),
            "gpt2" if bpe.is_some_and(|b| b.no_bos) => (None, Some(11), None),
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
        let by_text = [(&mut eot_id, EOT_TEXTS), (&mut eom_id, EOM_TEXTS)]
            .into_iter()
            .chain(fim.iter_mut().map(|(slot, texts)| (slot, *texts)));
        for (slot, texts) in by_text {
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
        let end = in_eog(vocab, &eog, "<|end|>");
        let has = |t: &str| in_eog(vocab, &eog, t).is_some();
        let (has_return, has_call, has_flush) = (
            has("<|return|>"),
            has("<|call|>") || has("<|calls|>"),
            has("<|flush|>"),
        );
        let has_normal_s_marker = has("<|tool_response>") || has("<|plamo:eos|>");
        let s_eog = in_eog(vocab, &eog, "</s>");
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
        Self {
            bos_id,
            eos_id,
            unk_id,
            eog,
        }
    }
}
