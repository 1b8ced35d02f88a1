//! wick's chat template rendering against references made by an independent
//! implementation: `scripts/make_chat_fixtures.py` renders real model templates
//! (SmolLM2, Llama 3.1 and 3.2, Mistral v0.3, Qwen2.5, Qwen3, Phi-3.5, Gemma 2) with
//! Python's jinja2 set up as transformers' `apply_chat_template` (and with transformers
//! itself), and commits the results in `tests/fixtures/chat_templates/<name>.json` next to
//! `<name>.jinja`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use wick::tokenizer::{ChatMessage, ChatTemplate};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn reference_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/chat_templates")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Content as a string, or OpenAI's list of `{"type": "text", "text"}` parts, flattened
/// the way TGI's router flattens text-only content (joined with "") and the references were
/// rendered.
fn flatten(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .map(|p| p["text"].as_str().expect("text part"))
            .collect(),
        other => panic!("unexpected content {other}"),
    }
}

fn messages(case: &Value) -> Vec<ChatMessage> {
    case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage {
            role: m["role"].as_str().expect("role").to_string(),
            content: flatten(&m["content"]),
            ..Default::default()
        })
        .collect()
}

/// The reference was rendered with strftime_now pinned; wick reads the clock. Put today's
/// value of each recorded format in place of the pinned one.
fn expected_today(case: &Value, text: &str) -> String {
    let mut text = text.to_string();
    if let Some(calls) = case["strftime_now"].as_object() {
        for (format, pinned) in calls {
            let today = chrono::Local::now().format(format).to_string();
            text = text.replace(pinned.as_str().expect("pinned output"), &today);
        }
    }
    text
}

struct Outcome {
    checked: usize,
    failures: Vec<String>,
}

fn check_file(path: &Path) -> Outcome {
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("reference"))
        .expect("reference json");
    let template_file = fixtures_dir().join(data["template"].as_str().expect("template"));
    let source = std::fs::read_to_string(&template_file).expect("template file");
    let template = ChatTemplate::new(
        &source,
        data["bos_token"].as_str(),
        data["eos_token"].as_str(),
    )
    .unwrap_or_else(|e| panic!("{}: does not compile: {e}", template_file.display()));
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let mut out = Outcome {
        checked: 0,
        failures: Vec::new(),
    };
    for case in data["cases"].as_array().expect("cases") {
        let name = format!("{file}/{}", case["name"].as_str().expect("name"));
        let gen = case["add_generation_prompt"]
            .as_bool()
            .expect("add_generation_prompt");
        let msgs = messages(case);
        out.checked += 1;
        // Render and read the clock around it; on a date change in between, go again.
        let (got, want) = loop {
            let before = case["text"].as_str().map(|t| expected_today(case, t));
            let got = template.render(&msgs, gen);
            let after = case["text"].as_str().map(|t| expected_today(case, t));
            if before == after {
                break (got, before);
            }
        };
        match (got, want, case.get("error")) {
            (Ok(got), Some(want), _) if got == want => {}
            (Ok(got), Some(want), _) => out.failures.push(format!(
                "{name}: rendering differs\n  wick      {got:?}\n  reference {want:?}\n  first difference at byte {}",
                got.bytes()
                    .zip(want.bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()))
            )),
            (Err(e), Some(_), _) => out
                .failures
                .push(format!("{name}: wick fails ({e}), the reference renders")),
            (Err(e), None, Some(err)) => {
                let msg = err["message"].as_str().unwrap_or_default();
                let e = e.to_string();
                if err["kind"] == "TemplateError" && !e.contains(msg) {
                    out.failures.push(format!(
                        "{name}: wick's error does not carry the template's message\n  wick      {e}\n  reference {msg}"
                    ));
                }
            }
            (Ok(got), None, Some(err)) => out.failures.push(format!(
                "{name}: wick renders {got:?} where the reference raises {err}"
            )),
            (_, None, None) => panic!("{name}: a case needs \"text\" or \"error\""),
        }
    }
    out
}

#[test]
fn real_templates_render_like_transformers() {
    let files = reference_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    for want in ["smollm2", "llama3.1", "llama3.2", "mistral-v0.3", "qwen2.5"] {
        assert!(
            names.iter().any(|n| n == want),
            "missing fixture {want}: {names:?}"
        );
    }
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in &files {
        let o = check_file(f);
        checked += o.checked;
        failures.extend(o.failures);
    }
    assert!(checked >= 50, "only {checked} cases");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn mistral_rejects_non_alternating_roles() {
    let source = std::fs::read_to_string(fixtures_dir().join("mistral-v0.3.jinja")).unwrap();
    let t = ChatTemplate::new(&source, Some("<s>"), Some("</s>")).unwrap();
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    };
    let e = t
        .render(&[msg("user", "a"), msg("user", "b")], true)
        .expect_err("two user turns in a row must be rejected")
        .to_string();
    assert!(
        e.contains("conversation roles must alternate user/assistant"),
        "{e}"
    );
    // The same conversation with the roles alternating renders.
    let ok = t
        .render(
            &[msg("user", "a"), msg("assistant", "b"), msg("user", "c")],
            true,
        )
        .unwrap();
    assert_eq!(ok, "<s>[INST] a[/INST] b</s>[INST] c[/INST]");
}

#[test]
fn references_cover_what_the_brief_asks() {
    // Each template is exercised with system + user, multi-turn, list-of-parts content,
    // both values of add_generation_prompt, and at least one raising case overall.
    let mut raising = 0;
    for f in reference_files() {
        let data: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let cases = data["cases"].as_array().unwrap();
        let has = |pred: &dyn Fn(&Value) -> bool| cases.iter().any(pred);
        let file = f.display().to_string();
        assert!(has(&|c| c["messages"][0]["role"] == "system"), "{file}");
        assert!(
            has(&|c| c["messages"].as_array().unwrap().len() >= 4),
            "{file}"
        );
        assert!(has(&|c| c["messages"][0]["content"].is_array()), "{file}");
        assert!(has(&|c| c["add_generation_prompt"] == true), "{file}");
        assert!(has(&|c| c["add_generation_prompt"] == false), "{file}");
        raising += cases.iter().filter(|c| c.get("error").is_some()).count();
    }
    assert!(raising >= 1);
}
