//! The masks accept exactly what a JSON Schema validator accepts.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::*;
use crate::tokenizer::Tokenizer;

/// Byte-level tokenizer (id b = byte b, then filler words), no end-of-sequence token.
fn compiler() -> Arc<GrammarCompiler> {
    let tok = Arc::new(Tokenizer::byte_level(300).unwrap());
    Arc::new(GrammarCompiler::new(tok, 300, GrammarLimits::default()).unwrap())
}

/// The schemas the engine tests use too: nested objects, bounded arrays, enums,
/// `anyOf`, string patterns, numbers with ranges.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 6},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": false}},
            "required": ["name", "age", "address"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
               "minItems": 1, "maxItems": 3}),
        json!({"type": "object", "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "value": {"anyOf": [{"type": "number", "minimum": 0.5, "maximum": 2.5},
                                {"type": "boolean"}, {"type": "null"}]}},
            "required": ["color", "value"], "additionalProperties": false}),
    ]
}

/// Whether the constraint accepts `text` as a whole (every byte allowed in turn, then
/// end allowed).
fn accepts(compiled: &CompiledGrammar, text: &str) -> bool {
    let mut c = compiled.start();
    let mut mask = TokenMask::default();
    for &b in text.as_bytes() {
        c.mask_into(&mut mask).unwrap();
        if !mask.allows(b as u32) || c.accept(b as u32).is_err() {
            return false;
        }
    }
    c.is_complete() || c.is_accepting()
}

fn validates(schema: &Value, text: &str) -> bool {
    let validator = jsonschema::validator_for(schema).unwrap();
    serde_json::from_str::<Value>(text).is_ok_and(|v| validator.is_valid(&v))
}

#[test]
fn masks_accept_exactly_what_the_validator_accepts() {
    let c = compiler();
    let cases: [&[&str]; 3] = [
        &[
            r#"{"name": "Ann", "age": 30, "address": {"city": "Oslo", "zip": "01234"}}"#,
            r#"{"name": "Ann", "age": 130, "address": {"city": "Oslo", "zip": "01234"}}"#,
            r#"{"name": "Ann", "age": 30, "address": {"city": "Oslo", "zip": "0123"}}"#,
            r#"{"name": "Ann", "age": 30}"#,
            r#"{"name": "Annabella Smith", "age": 3, "address": {"city": "Oslo", "zip": "01234"}}"#,
            r#"{"name": "Ann", "age": 30, "address": {"city": "Oslo", "zip": "01234"}, "x": 1}"#,
            r#"{"name": "Ann", "age": -1, "address": {"city": "Rome", "zip": "99999"}}"#,
        ],
        &[
            "[1]",
            "[-5, 0, 5]",
            "[]",
            "[1, 2, 3, 4]",
            "[6]",
            "[1.5]",
            "[\"a\"]",
            "[0, -4]",
        ],
        &[
            r#"{"color": "red", "value": 1.5}"#,
            r#"{"color": "green", "value": true}"#,
            r#"{"color": "blue", "value": null}"#,
            r#"{"color": "pink", "value": 1}"#,
            r#"{"color": "red", "value": 3}"#,
            r#"{"color": "red", "value": 0.25}"#,
            r#"{"color": "red", "value": "x"}"#,
            r#"{"color": "red"}"#,
        ],
    ];
    for (schema, texts) in schemas().iter().zip(cases) {
        let compiled = c
            .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
            .unwrap();
        let mut both = [0; 2];
        for text in texts {
            let want = validates(schema, text);
            assert_eq!(accepts(&compiled, text), want, "{schema} on {text}");
            both[want as usize] += 1;
        }
        assert!(both[0] > 0 && both[1] > 0, "both verdicts are exercised");
    }
}

/// Random walks through the masks: every finished text validates.
#[test]
fn every_walk_through_the_masks_validates() {
    let tok = Tokenizer::byte_level(300).unwrap();
    let c = compiler();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for schema in schemas() {
        let compiled = c
            .compile_now(&GrammarSpec::JsonSchema(schema.clone()))
            .unwrap();
        let mut finished = 0;
        for _ in 0..20 {
            let mut con = compiled.start();
            let mut mask = TokenMask::default();
            let mut text = Vec::new();
            for _ in 0..400 {
                if con.is_complete() {
                    break;
                }
                con.mask_into(&mut mask).unwrap();
                // Prefer the bytes that close things, so walks end.
                let allowed: Vec<u32> = (0..300).filter(|&t| mask.allows(t)).collect();
                assert!(
                    !allowed.is_empty(),
                    "a grammar that is not complete allows a token"
                );
                let closing: Vec<u32> = allowed
                    .iter()
                    .copied()
                    .filter(|&t| t < 256 && b"\"]},0123456789tfn".contains(&(t as u8)))
                    .collect();
                let pool = if !closing.is_empty() && rng.random_bool(0.7) {
                    &closing
                } else {
                    &allowed
                };
                let t = pool[rng.random_range(0..pool.len())];
                con.accept(t).unwrap();
                text.push(t);
            }
            if con.is_complete() {
                finished += 1;
                let text = tok.decode(&text, false).unwrap();
                assert!(validates(&schema, &text), "{schema} generated {text}");
            }
        }
        assert!(
            finished >= 10,
            "{finished} of 20 walks finished for {schema}"
        );
    }
}

#[test]
fn regex_masks_match_in_full() {
    let c = compiler();
    let g = c
        .compile_now(&GrammarSpec::Regex("[0-9]{3}-[a-z]+".into()))
        .unwrap();
    assert!(accepts(&g, "123-abc"));
    assert!(!accepts(&g, "12-abc"));
    assert!(!accepts(&g, "123-"));
    assert!(!accepts(&g, "123-abc!"));
}

#[test]
fn end_of_sequence_only_where_the_grammar_may_end() {
    let tok = Arc::new(crate::tokenizer::Tokenizer::byte_level(300).unwrap());
    let c = GrammarCompiler::new(tok, 300, GrammarLimits::default()).unwrap();
    // No EOS in this tokenizer: the stand-in end id is one past the logits.
    let eos = 300;
    let g = c
        .compile_now(&GrammarSpec::Regex("ab|abcd".into()))
        .unwrap();
    let mut con = g.start();
    let mut mask = TokenMask::default();
    for &b in b"ab" {
        con.mask_into(&mut mask).unwrap();
        assert!(!mask.allows(eos));
        con.accept(b as u32).unwrap();
    }
    con.mask_into(&mut mask).unwrap();
    assert!(mask.allows(eos) && mask.allows(b'c' as u32) && !con.is_complete());
    for &b in b"cd" {
        con.accept(b as u32).unwrap();
    }
    assert!(con.is_complete());
    con.mask_into(&mut mask).unwrap();
    assert_eq!(mask.count(), 1);
    assert!(mask.allows(eos));
}

#[test]
fn a_disallowed_token_is_refused() {
    let c = compiler();
    let g = c.compile_now(&GrammarSpec::Regex("[0-9]+".into())).unwrap();
    let mut con = g.start();
    assert!(con.accept(b'x' as u32).is_err());
}

#[test]
fn bad_grammars_are_refused_with_a_reason() {
    let c = compiler();
    let bad = [
        GrammarSpec::Regex("(unclosed".into()),
        GrammarSpec::JsonSchema(json!({"type": "no-such-type"})),
        GrammarSpec::JsonSchema(json!({"$ref": "#/definitions/missing"})),
        GrammarSpec::Lark("start: missing_rule".into()),
    ];
    for spec in bad {
        match c.compile_now(&spec) {
            Err(GrammarError::Invalid(msg)) => assert!(!msg.is_empty()),
            other => panic!("{spec:?} gave {other:?}"),
        }
    }
    let small = GrammarCompiler::new(
        Arc::new(Tokenizer::byte_level(300).unwrap()),
        300,
        GrammarLimits {
            max_bytes: 64,
            ..GrammarLimits::default()
        },
    )
    .unwrap();
    let big = GrammarSpec::Regex("a".repeat(100));
    assert!(matches!(
        small.compile_now(&big),
        Err(GrammarError::TooLarge { .. })
    ));
}

#[test]
fn compiled_grammars_are_cached_by_text() {
    let c = compiler();
    let a = c.compile_now(&GrammarSpec::Regex("x+".into())).unwrap();
    let b = c.compile_now(&GrammarSpec::Regex("x+".into())).unwrap();
    let other = c.compile_now(&GrammarSpec::Regex("y+".into())).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &other));
}

#[tokio::test]
async fn compiling_off_the_caller_thread_respects_the_time_limit() {
    let tok = Arc::new(Tokenizer::byte_level(300).unwrap());
    let limits = GrammarLimits {
        timeout: std::time::Duration::ZERO,
        ..GrammarLimits::default()
    };
    let c = Arc::new(GrammarCompiler::new(tok, 300, limits).unwrap());
    let r = c
        .compile(GrammarSpec::JsonSchema(schemas()[0].clone()))
        .await;
    assert!(matches!(r, Err(GrammarError::Timeout(_))), "{r:?}");
    let ok = compiler()
        .compile(GrammarSpec::Regex("[ab]+".into()))
        .await
        .unwrap();
    assert!(accepts(&ok, "abba"));
}

#[test]
fn forks_continue_independently() {
    let c = compiler();
    let g = c
        .compile_now(&GrammarSpec::Regex("a(b|c)d".into()))
        .unwrap();
    let mut one = g.start();
    one.accept(b'a' as u32).unwrap();
    let mut two = one.fork();
    one.accept(b'b' as u32).unwrap();
    two.accept(b'c' as u32).unwrap();
    two.accept(b'd' as u32).unwrap();
    assert!(two.is_complete() && !one.is_complete());
}

#[test]
fn token_mask_apply_sets_disallowed_logits_to_minus_infinity() {
    let mut m = TokenMask {
        words: vec![0b101, 1 << 1],
    };
    let mut logits = vec![1.0f32; 40];
    m.apply(&mut logits);
    for (t, l) in logits.iter().enumerate() {
        assert_eq!(l.is_finite(), t == 0 || t == 2 || t == 33, "token {t}");
    }
    m.words.clear();
    assert_eq!(m.count(), 0);
}
