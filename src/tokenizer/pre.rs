//! Pre-tokenization of GGUF `gpt2`-style BPE vocabularies: which regexes split the text
//! before BPE, following the `tokenizer.ggml.pre` names llama.cpp knows.
//!
//! The regexes are the forms llama.cpp runs. Where llama.cpp rewrote a tokenizer.json
//! regex for its own engine (case-insensitive groups spelled out, `\p{Lu}`-style classes
//! that its engine only knows as `\p{L}`), the rewritten form is used, since that is what
//! decides llama.cpp's tokens.

/// The GPT-2 split (llama.cpp's spelling: without the final `|\s+`, which its splitter
/// implies by emitting unmatched text as words of its own).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const JAIS2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}";
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";
const DEEPSEEK3_MAIN: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const SPARK_MAIN: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##;
const CJK_KANA: &str = r"[一-龥぀-ゟ゠-ヿ]+";
const YOUTU_CJK: &str = r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+";
const YOUTU_MAIN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const FINNISH: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GRANITE_EMB_MULTI: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const UFAKZEKA: &str =
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const EXAONE_MOE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+";
const MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// `[一-龥ࠀ-一가-퟿]+`. llama.cpp runs regexes without Unicode categories on text whose
/// non-ASCII whitespace is replaced by `\v`, so such whitespace never matches a class
/// spelled with non-ASCII ranges: hence the `(?!\s)` here and in deepseek-llm's
/// punctuation class.
const DEEPSEEK_CJK: &str = r"(?:(?!\s)[一-龥ࠀ-一가-퟿])+";
const NEWLINES: &str = r"[^\n]+|[\n]+";

/// How a BPE vocabulary is pre-tokenized and what its `tokenizer.ggml.pre` implies.
#[derive(Debug, Clone)]
pub struct BpePre {
    /// Regexes applied in turn; every match and every gap between matches is a word.
    pub regexes: Vec<String>,
    /// GPT-2 byte-to-unicode encoding of words (false: raw UTF-8 with `<0xNN>` bytes).
    pub byte_encode: bool,
    /// Spaces are written `▁` before splitting (SentencePiece-style BPE).
    pub escape_whitespaces: bool,
    /// A word that is a whole vocabulary entry is that token, merges or not.
    pub ignore_merges: bool,
    /// Default for `add_bos_token` when the GGUF does not say.
    pub add_bos: bool,
    /// The model has no BOS token whatever the metadata says (ChatGLM).
    pub no_bos: bool,
    /// Runs of newlines that are a vocabulary entry become that token (Gemma 4).
    pub newline_tokens: bool,
}

impl BpePre {
    fn new(regexes: &[&str]) -> Self {
        Self {
            // llama.cpp's regex engine knows only the major Unicode categories, so a
            // letter subclass such as `\p{Lu}` means any letter to it.
            regexes: regexes
                .iter()
                .map(|r| {
                    ["Lu", "Ll", "Lt", "Lm", "Lo"]
                        .iter()
                        .fold(r.to_string(), |r, c| {
                            r.replace(&format!(r"\p{{{c}}}"), r"\p{L}")
                        })
                })
                .collect(),
            byte_encode: true,
            escape_whitespaces: false,
            ignore_merges: false,
            add_bos: false,
            no_bos: false,
            newline_tokens: false,
        }
    }

    fn ignore_merges(mut self) -> Self {
        self.ignore_merges = true;
        self
    }

    fn add_bos(mut self) -> Self {
        self.add_bos = true;
        self
    }

    fn sentencepiece_style(mut self) -> Self {
        self.byte_encode = false;
        self.escape_whitespaces = true;
        self
    }
}

/// The pre-tokenization for a `gpt2` (or `gemma4`) vocabulary with pre-tokenizer name
/// `pre` (None: the key is absent, which llama.cpp treats as "default").
pub fn bpe_pre(model: &str, pre: Option<&str>) -> BpePre {
    if model == "gemma4" {
        let mut p = BpePre::new(&[NEWLINES]).sentencepiece_style().add_bos();
        p.newline_tokens = true;
        return p;
    }
    let Some(pre) = pre.filter(|p| !p.is_empty()) else {
        tracing::warn!("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer");
        return default_pre();
    };
    match pre {
        "default" => default_pre(),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => BpePre::new(&[LLAMA3]).ignore_merges().add_bos(),
        "dbrx" | "smaug-bpe" => BpePre::new(&[LLAMA3]),
        "jais-2" => BpePre::new(&[JAIS2]),
        "deepseek-llm" => BpePre::new(&[
            r"[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            r"\s?(?:(?!\s)[!-/:-~！-／：-～‘-‟　-。])+",
            r"\s+$",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ]),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            BpePre::new(&[r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3_MAIN])
        }
        "spark2_5" => BpePre::new(&[r"\p{N}{1,3}", CJK_KANA, SPARK_MAIN, r"\p{N}"]),
        "youtu" => BpePre::new(&[YOUTU_CJK, YOUTU_MAIN]).ignore_merges(),
        "deepseek-coder" => BpePre::new(&[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            DEEPSEEK_CJK,
            r"\p{N}",
        ]),
        "falcon" => BpePre::new(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => BpePre::new(&[r"\p{N}", GPT2]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "exaone4" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
            BpePre::new(&[GPT2])
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" | "grok-2" => BpePre::new(&[QWEN2]),
        "qwen35" => BpePre::new(&[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => BpePre::new(&[FINNISH]),
        "chatglm-bpe" => {
            let mut p = BpePre::new(&[LLAMA3]);
            p.no_bos = true;
            p
        }
        "glm4" | "glm5" => {
            let mut p = BpePre::new(&[LLAMA3]).ignore_merges();
            p.no_bos = true;
            p
        }
        "viking" => BpePre::new(&[FINNISH, r"\p{N}"]),
        "tekken" => BpePre::new(&[TEKKEN]).ignore_merges().add_bos(),
        "chameleon" => BpePre::new(&[
            r"<sentinel:[0-9]+>",
            r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
            r"([\t\n]|    |  )",
            r"\p{N}",
            r"[\p{P}!-/:-@\[-`{-~]",
            GPT2,
        ])
        .add_bos(),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => BpePre::new(&[GPT4O]),
        "granite-embed-multi-97m" => BpePre::new(&[GRANITE_EMB_MULTI]).ignore_merges(),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => BpePre::new(&[BAILINGMOE]),
        "seed-coder" => BpePre::new(&[SEED_CODER]),
        "ufakzeka" => BpePre::new(&[UFAKZEKA]),
        "laguna" => BpePre::new(&[NEWLINES, QWEN2]),
        "exaone-moe" => BpePre::new(&[EXAONE_MOE]),
        "minicpm5" => BpePre::new(&[r"\p{N}{1,3}", MINICPM5]).ignore_merges(),
        "sarvam-moe" => BpePre::new(&[NEWLINES]).sentencepiece_style(),
        "gemma4" | "granite-embed-multi-311m" => {
            let mut p = BpePre::new(&[NEWLINES]).sentencepiece_style().add_bos();
            p.newline_tokens = true;
            p
        }
        other => {
            tracing::warn!(
                pre = other,
                "GGUF pre-tokenizer not supported; splitting with GPT-2's regex, so tokens may differ from llama.cpp's"
            );
            BpePre::new(&[GPT2])
        }
    }
}

/// llama.cpp's pre-tokenizer for "default" (and for GGUFs that do not name one).
fn default_pre() -> BpePre {
    BpePre::new(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every regex in the table compiles with the engine the tokenizer uses.
    #[test]
    fn all_regexes_compile() {
        let names = [
            "default",
            "llama3",
            "dbrx",
            "jais-2",
            "deepseek-llm",
            "deepseek-v3",
            "spark2_5",
            "youtu",
            "deepseek-coder",
            "falcon",
            "smollm",
            "gpt-2",
            "qwen2",
            "qwen35",
            "bloom",
            "chatglm-bpe",
            "glm4",
            "viking",
            "tekken",
            "chameleon",
            "gpt-4o",
            "granite-embed-multi-97m",
            "bailingmoe",
            "seed-coder",
            "ufakzeka",
            "laguna",
            "exaone-moe",
            "minicpm5",
            "sarvam-moe",
            "gemma4",
        ];
        for name in names {
            for r in bpe_pre("gpt2", Some(name)).regexes {
                let split = tokenizers::pre_tokenizers::split::Split::new(
                    tokenizers::pre_tokenizers::split::SplitPattern::Regex(r.clone()),
                    tokenizers::SplitDelimiterBehavior::Isolated,
                    false,
                );
                assert!(split.is_ok(), "{name}: {r}");
            }
        }
        assert!(bpe_pre("gpt2", Some("youtu")).regexes[1].contains(r"[\p{L}\p{L}\p{L}\p{L}\p{M}]*"));
    }
}
