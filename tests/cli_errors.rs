//! Bad input to the command line: a one-line error naming the problem, a non-zero exit,
//! never a panic.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str], cache: &Path, extra_env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.args(args)
        .env("WICK_CACHE", cache)
        .env("HF_HUB_CACHE", cache.join("hf"))
        .env("RUST_LOG", "error")
        .env_remove("MODEL_ID");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("wick runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

fn generate(model: &str) -> Vec<String> {
    [
        "generate",
        "--model-id",
        model,
        "--prompt",
        "hi",
        "--max-new-tokens",
        "1",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn missing_corrupt_and_unsupported_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = run(&strs(&generate("no-such-model")), d, &[]);
    assert!(
        e.contains("unknown model 'no-such-model'") && e.contains("smollm2-135m-instruct"),
        "{e}"
    );

    let garbage = d.join("garbage.gguf");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    let e = run(&strs(&generate(garbage.to_str().unwrap())), d, &[]);
    assert!(e.contains("not a GGUF file"), "{e}");

    let truncated = d.join("truncated.gguf");
    std::fs::write(&truncated, b"GGUF\x03\x00\x00\x00\x10\x00").unwrap();
    let e = run(&strs(&generate(truncated.to_str().unwrap())), d, &[]);
    assert!(
        e.contains("not a readable GGUF file") && e.contains("delete it"),
        "{e}"
    );

    let neox = d.join("neox");
    std::fs::create_dir(&neox).unwrap();
    std::fs::write(
        neox.join("config.json"),
        r#"{"architectures": ["GPTNeoXForCausalLM"]}"#,
    )
    .unwrap();
    let e = run(&strs(&generate(neox.to_str().unwrap())), d, &[]);
    assert!(
        e.contains("unsupported model architecture 'GPTNeoXForCausalLM'"),
        "{e}"
    );

    let e = run(
        &strs(&generate("someorg/somemodel")),
        d,
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert!(
        e.contains("config.json of someorg/somemodel@main is not in the Hugging Face cache"),
        "{e}"
    );
}

#[test]
fn bad_models_toml_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let toml = d.join("models.toml");
    let with_config = |text: &str| -> String {
        std::fs::write(&toml, text).unwrap();
        let mut args = generate("m");
        args.extend(["--models-config".to_string(), toml.display().to_string()]);
        run(&strs(&args), d, &[])
    };
    let e = with_config(
        "[[model]]\nname = \"m\"\nsource = \"path:x.gguf\"\ndefault = true\nsize = 3\n",
    );
    assert!(e.contains("unknown field `size`"), "{e}");
    let e = with_config(
        "[[model]]\nname = \"m\"\nsource = \"path:x\"\ndefault = true\n[[model]]\nname = \"m\"\nsource = \"path:y\"\n",
    );
    assert!(e.contains("duplicate model name 'm'"), "{e}");
    let e = with_config(
        "[[model]]\nname = \"m\"\nsource = \"path:/nonexistent/x.gguf\"\ndefault = true\n",
    );
    assert!(e.contains("does not exist"), "{e}");

    let file = d.join("model.gguf");
    std::fs::write(&file, b"GGUF-ish bytes").unwrap();
    let e = with_config(&format!(
        "[[model]]\nname = \"m\"\nsource = \"path:{}\"\nsha256 = \"{}\"\ndefault = true\n",
        file.display(),
        "0".repeat(64)
    ));
    assert!(
        e.contains("sha256 mismatch") && e.contains(&"0".repeat(64)),
        "{e}"
    );
}
