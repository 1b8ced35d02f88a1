//! Tokenization and chat-template rendering of the default model against llama.cpp's
//! (tests/reference, made by scripts/make_reference.py).

mod common;

use candle_core::quantized::gguf_file;
use common::{ids, reference_json};
use wick::tokenizer::{ChatMessage, Tokenizer};

fn tokenizer() -> Tokenizer {
    let resolved = common::default_model();
    let mut f = std::fs::File::open(&resolved.path).expect("model file");
    let content = gguf_file::Content::read(&mut f).expect("gguf");
    Tokenizer::from_gguf(&content).expect("tokenizer")
}

#[test]
fn tokenization_matches_llama_cpp() {
    let t = tokenizer();
    let r = reference_json();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for case in r["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let got = t
            .encode(text, case["add_bos"].as_bool().unwrap_or(false))
            .unwrap();
        if got != ids(&case["prompt_ids"]) {
            wrong.push(format!("case {}: {:?}", case["name"], text));
        }
        checked += 1;
    }
    for item in r["tokenize_only"].as_array().expect("tokenize_only") {
        let text = item["text"].as_str().expect("text");
        if t.encode(text, false).unwrap() != ids(&item["ids"]) {
            wrong.push(format!(
                "{text:?}: wick {:?} llama.cpp {:?}",
                t.encode(text, false).unwrap(),
                ids(&item["ids"])
            ));
        }
        checked += 1;
    }
    eprintln!("{checked} strings compared with llama.cpp");
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ: {wrong:#?}",
        wrong.len()
    );
    assert!(checked >= 40);
}

#[test]
fn decoding_round_trips() {
    let t = tokenizer();
    for item in reference_json()["tokenize_only"]
        .as_array()
        .expect("tokenize_only")
    {
        let text = item["text"].as_str().expect("text");
        assert_eq!(t.decode(&ids(&item["ids"]), false).unwrap(), text);
    }
}

#[test]
fn chat_template_renders_like_jinja2() {
    let t = tokenizer();
    let template = t
        .chat(None)
        .unwrap()
        .expect("the default model has a chat template");
    let mut checked = 0;
    for case in reference_json()["cases"].as_array().expect("cases") {
        if case["kind"] != "chat" {
            continue;
        }
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        assert_eq!(
            template.render(&messages, true).unwrap(),
            case["text"].as_str().unwrap()
        );
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn special_ids_match_llama_cpp() {
    let t = tokenizer();
    // llama.cpp's end-of-generation set for this model (llama_vocab_is_eog): EOS
    // <|im_end|>, and <|endoftext|> and <reponame> by their text.
    assert_eq!(t.eos_ids(), &[0, 2, 4]);
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.vocab_size(), 49152);
    assert!(t.is_special(1) && t.is_special(2) && !t.is_special(504));
    // add_bos_token is false in this GGUF.
    assert_eq!(
        t.encode("Hi", true).unwrap(),
        t.encode("Hi", false).unwrap()
    );
    assert_eq!(t.token_str(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(t.token_str(7042).as_deref(), Some(" Paris"));
    let template = t.chat(None).unwrap().expect("template");
    let text = template
        .render(
            &[ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
                ..Default::default()
            }],
            true,
        )
        .unwrap();
    let ids = t.encode(&text, true).unwrap();
    assert_eq!(ids[0], 1, "the rendered prompt starts with <|im_start|>");
    assert_eq!(t.decode(&ids, false).unwrap(), text);
}

/// Strings that stress the pre-tokenizer, byte-level BPE and special-token matching,
/// with the ids llama.cpp gives for the default model: llama-cpp-python 0.3.36,
/// `Llama(gguf, vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)`.
const TRICKY: &[(&str, &[u32])] = &[
    ("", &[]),
    (" ", &[216]),
    ("  ", &[256]),
    ("\n", &[198]),
    ("\n\n\n", &[16506]),
    ("\t\t", &[1656]),
    ("\r\n", &[2738]),
    (" \n ", &[3717, 216]),
    ("  Hello  world  ", &[216, 38699, 216, 905, 256]),
    ("don't", &[12420, 982]),
    ("I'M", &[57, 23, 61]),
    ("we'll've", &[677, 3060, 3543]),
    ("'s'S", &[506, 23, 67]),
    ("12345", &[33, 34, 35, 36, 37]),
    ("3.14159", &[35, 30, 33, 36, 33, 37, 41]),
    ("1,000,000", &[33, 28, 32, 32, 32, 28, 32, 32, 32]),
    ("١٢٣", &[164, 111, 164, 112, 164, 113]),
    ("½²", &[16738, 19133]),
    ("a\u{a0}b", &[81, 15442, 82]),
    ("x\u{3000}y", &[104, 12109, 218, 105]),
    ("a\u{2028}b", &[81, 321, 118, 82]),
    ("tab\u{b}vt", &[15999, 199, 35038]),
    ("\u{85}", &[141, 223]),
    ("e\u{301}", &[85, 151, 219]),
    ("naïve", &[3546, 46494]),
    (
        "日本語のテキスト",
        &[
            23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226,
        ],
    ),
    ("한국어", &[33085, 246, 181, 130, 251, 183, 240, 129]),
    ("👍🏽", &[10813, 235, 231, 10813, 233, 138]),
    (
        "👨\u{200d}👩\u{200d}👧",
        &[
            10813, 235, 118, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117,
        ],
    ),
    ("🇫🇷", &[10813, 225, 121, 10813, 225, 132]),
    ("مرحبا", &[21706, 20602, 44626, 31462, 10805]),
    ("नमस्ते", &[30658, 35090, 38770, 16525, 26293, 30581]),
    (
        "<|im_start|>user\nHi<|im_end|>\n",
        &[1, 4093, 198, 26843, 2, 198],
    ),
    ("<|im_start|><|im_end|>", &[1, 2]),
    ("<|im_start", &[44, 108, 306, 79, 3738]),
    ("x<|endoftext|>y", &[104, 0, 105]),
    ("<reponame>", &[4]),
    ("<|im_start|> leading", &[1, 2899]),
    ("trailing <|im_end|>", &[4861, 4966, 216, 2]),
    (
        "def f(x):\n    return x**2\n",
        &[1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 198],
    ),
    (
        "fn main() { println!(\"hi\"); }",
        &[
            7853, 1085, 1000, 1662, 1628, 34115, 17, 1470, 6004, 21646, 4029,
        ],
    ),
    (
        "<div class=\"a\">&amp;</div>",
        &[
            44, 10014, 1128, 2671, 81, 15889, 22, 1613, 43, 9617, 10014, 46,
        ],
    ),
    ("\u{0}\u{1}\u{1b}[0m", &[190, 191, 212, 75, 32, 93]),
    ("\u{7f}", &[217]),
    (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &[46880, 46880, 46880, 46880, 46880, 46880, 46880, 46880],
    ),
    ("!!!!!!!!", &[36689, 36689]),
    ("........", &[13548]),
    (
        "http://example.com/a?b=c&d=e#f",
        &[
            5031, 1742, 7434, 30, 824, 31, 81, 47, 82, 45, 83, 22, 84, 45, 85, 19, 86,
        ],
    ),
];

#[test]
fn tricky_strings_match_llama_cpp() {
    let t = tokenizer();
    let mut wrong = Vec::new();
    for (text, want) in TRICKY {
        let got = t.encode(text, false).unwrap();
        if got != *want {
            wrong.push(format!("{text:?}: wick {got:?} llama.cpp {want:?}"));
        }
        assert_eq!(t.decode(want, false).unwrap(), *text, "decode {text:?}");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Extra strings from files named by `WICK_TOKENIZER_CASES` (comma-separated): each a
/// JSON object `{"gguf": path (optional, else the default model), "cases": [{"text", "ids",
/// "ids_special" (optional)}]}` with ids from llama.cpp's tokenizer (special tokens parsed;
/// `ids` without, `ids_special` with add_special). Run with `--ignored`.
#[test]
#[ignore = "needs case files named by WICK_TOKENIZER_CASES"]
fn extra_cases_from_files_match_llama_cpp() {
    let files =
        std::env::var("WICK_TOKENIZER_CASES").expect("set WICK_TOKENIZER_CASES to case files");
    let mut failures = Vec::new();
    for file in files.split(',').filter(|f| !f.is_empty()) {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("cases file"))
                .expect("json");
        let start = std::time::Instant::now();
        let t = match doc["gguf"].as_str() {
            Some(path) => {
                let mut f = std::fs::File::open(path).expect("gguf file");
                let content = gguf_file::Content::read(&mut f).expect("gguf");
                eprintln!("{file}: metadata read in {:.2?}", start.elapsed());
                match Tokenizer::from_gguf(&content) {
                    Ok(t) => t,
                    Err(e) => {
                        failures.push(format!("{file}: {e}"));
                        continue;
                    }
                }
            }
            None => tokenizer(),
        };
        let loaded = start.elapsed();
        let cases = doc["cases"].as_array().expect("cases");
        let start = std::time::Instant::now();
        let bytes: usize = cases
            .iter()
            .filter_map(|c| c["text"].as_str())
            .map(str::len)
            .sum();
        for case in cases {
            t.encode(case["text"].as_str().expect("text"), false)
                .unwrap();
        }
        eprintln!(
            "{file}: loaded in {loaded:.2?}, encoded {bytes} bytes in {:.2?}",
            start.elapsed()
        );
        let mut wrong = Vec::new();
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let want = ids(&case["ids"]);
            let got = t.encode(text, false).unwrap();
            if got != want {
                wrong.push(format!("{text:?}: wick {got:?} llama.cpp {want:?}"));
            }
            if !case["ids_special"].is_null() {
                let want = ids(&case["ids_special"]);
                let got = t.encode(text, true).unwrap();
                if got != want {
                    wrong.push(format!(
                        "(add_special) {text:?}: wick {got:?} llama.cpp {want:?}"
                    ));
                }
            }
        }
        // llama.cpp's view of the vocabulary, when the file has it.
        let v = &doc["vocab"];
        if !v.is_null() {
            if t.eos_ids() != ids(&v["eog"]).as_slice() {
                wrong.push(format!(
                    "eos ids: wick {:?} llama.cpp {:?}",
                    t.eos_ids(),
                    v["eog"]
                ));
            }
            let bos = v["bos"].as_i64().filter(|&b| b >= 0).map(|b| b as u32);
            if t.bos_id() != bos {
                wrong.push(format!("bos: wick {:?} llama.cpp {bos:?}", t.bos_id()));
            }
            let n = v["n_tokens"].as_u64().expect("n_tokens") as u32;
            if t.vocab_size() != n as usize {
                wrong.push(format!("vocab size: wick {} llama.cpp {n}", t.vocab_size()));
            }
            let special: Vec<u32> = (0..n).filter(|&i| t.is_special(i)).collect();
            if special != ids(&v["special"]) {
                wrong.push(format!(
                    "special: wick {special:?} llama.cpp {:?}",
                    v["special"]
                ));
            }
        }
        let mismatched_round_trips = cases
            .iter()
            .filter_map(|c| c["text"].as_str())
            .filter(|text| t.decode(&t.encode(text, false).unwrap(), false).unwrap() != *text)
            .count();
        eprintln!("{file}: {mismatched_round_trips} texts do not survive encode + decode");
        eprintln!("{file}: {} of {} differ", wrong.len(), cases.len());
        for w in wrong.iter().take(8) {
            eprintln!("  {w}");
        }
        if !wrong.is_empty() {
            failures.push(format!("{file}: {} differ", wrong.len()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Chat templates rendered by transformers' Jinja setup, from files named by
/// `WICK_CHAT_CASES` (comma-separated): JSON arrays of `{"name", "template", "messages",
/// "add_generation_prompt", "text" | "error" | "compile_error"}` (bos_token "<s>",
/// eos_token "</s>"). Run with `--ignored`.
#[test]
#[ignore = "needs case files named by WICK_CHAT_CASES"]
fn extra_chat_cases_from_files_render_like_transformers() {
    let files = std::env::var("WICK_CHAT_CASES").expect("set WICK_CHAT_CASES to case files");
    let mut wrong = Vec::new();
    let mut checked = 0;
    let mut lenient = 0;
    for file in files.split(',').filter(|f| !f.is_empty()) {
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("cases file"))
                .expect("json");
        for case in cases.as_array().expect("array") {
            let name = case["name"].as_str().unwrap_or("?");
            let template = wick::tokenizer::ChatTemplate::new(
                case["template"].as_str().expect("template"),
                Some("<s>"),
                Some("</s>"),
            );
            let template = match (template, case["compile_error"].is_null()) {
                (Ok(t), true) => t,
                (Err(_), false) => continue,
                (Ok(_), false) => {
                    wrong.push(format!("{name}: compiles here, not in jinja2"));
                    continue;
                }
                (Err(e), true) => {
                    wrong.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).expect("messages");
            let got = template.render(
                &messages,
                case["add_generation_prompt"].as_bool().unwrap_or(true),
            );
            checked += 1;
            match (got, case["text"].as_str()) {
                (Ok(got), Some(want)) if got == want => {}
                (Ok(got), Some(want)) => {
                    wrong.push(format!("{name}:\n  wick  {got:?}\n  jinja {want:?}"))
                }
                // minijinja iterates none as an empty sequence where Python raises
                // (tool-use templates given no tools): lenient, not wrong.
                (Ok(_), None) => lenient += 1,
                (Err(e), Some(_)) => {
                    wrong.push(format!("{name}: fails here ({e}), renders in jinja2"))
                }
                (Err(_), None) => {}
            }
        }
    }
    eprintln!(
        "{} of {checked} chat renders differ; {lenient} render where jinja2 raises",
        wrong.len()
    );
    for w in wrong.iter().take(30) {
        eprintln!("{w}");
    }
    assert!(wrong.is_empty());
}
