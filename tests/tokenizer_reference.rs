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
    assert_eq!(t.eos_ids(), &[2]);
    assert_eq!(t.bos_id(), Some(1));
}
