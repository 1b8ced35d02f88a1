//! A `--features cuda` build of `wick` on a machine with no NVIDIA driver and no CUDA
//! libraries on the library path (CI's): it starts (`--help`), serves a random-weight
//! model on the CPU with `--device auto` after one log line saying so, and `--device cuda`
//! fails with one line naming what it needs: without a driver, and with a stand-in driver
//! library (built here with `cc`) that reports CUDA 12.8 or finds no GPU.
//!
//! The binary comes from `WICK_CUDA_BIN` (`.ci/run` builds one and sets it). Without it
//! the tests say so and pass, unless `WICK_REQUIRE_CUDA_BIN=1` (set by `.ci/run`). On a
//! machine with an NVIDIA driver they are skipped: they are about the machines without.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod server_support;
use server_support::{get, line_reader, post, serving_address};

fn cuda_bin() -> Option<PathBuf> {
    let Some(bin) = std::env::var_os("WICK_CUDA_BIN").map(PathBuf::from) else {
        assert!(
            std::env::var("WICK_REQUIRE_CUDA_BIN").as_deref() != Ok("1"),
            "WICK_REQUIRE_CUDA_BIN=1 but WICK_CUDA_BIN (a `cargo build --features cuda` wick) is not set"
        );
        eprintln!("skipping: WICK_CUDA_BIN is not set (a `cargo build --features cuda` wick)");
        return None;
    };
    assert!(
        bin.is_file(),
        "WICK_CUDA_BIN={} is not a file",
        bin.display()
    );
    if Path::new("/proc/driver/nvidia").exists() {
        eprintln!("skipping: this machine has an NVIDIA driver");
        return None;
    }
    Some(bin)
}

/// The binary, with no CUDA library directory on the library path and no download.
fn wick(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("WICK_CACHE", dir.join("cache"))
        .env("HF_HUB_CACHE", dir.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("WICK_OFFLINE", "1")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("MODEL_ID")
        .env_remove("WICK_DEVICE")
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn starts_and_refuses_cuda_in_one_line() {
    let Some(bin) = cuda_bin() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");

    let help = wick(&bin, dir.path())
        .arg("--help")
        .output()
        .expect("wick runs");
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success() && stdout.contains("serve"),
        "wick --help: {stdout}{}",
        String::from_utf8_lossy(&help.stderr)
    );

    for device in ["cuda", "cuda:1"] {
        let out = wick(&bin, dir.path())
            .args(["generate", "--model-id", "random:tiny", "--prompt", "Hi"])
            .args(["--max-new-tokens", "1", "--device", device])
            .output()
            .expect("wick runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--device {device}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "--device {device}: want one line, got {stderr}"
        );
        let line = lines[0];
        assert!(
            line.starts_with("error: no NVIDIA driver")
                && line.contains("CUDA 13.0 or newer")
                && line.contains("driver 580 or newer")
                && !line.contains("CUDA_ERROR"),
            "--device {device}: {line}"
        );
    }
}

/// The one line `wick generate --device cuda` fails with where `libcuda.so.1` is
/// `driver` (C source), compiled into a directory put on the library path.
fn refusal_with_driver(bin: &Path, dir: &Path, driver: &str) -> Option<String> {
    let lib = dir.join("driver");
    std::fs::create_dir_all(&lib).expect("a directory");
    let src = lib.join("fake_cuda.c");
    std::fs::write(&src, driver).expect("write the stand-in driver");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(lib.join("libcuda.so.1"))
        .arg(&src)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("skipping the stand-in driver: `cc` cannot build a shared library");
        return None;
    }
    let out = wick(bin, dir)
        .env("LD_LIBRARY_PATH", &lib)
        .args(["generate", "--model-id", "random:tiny", "--prompt", "Hi"])
        .args(["--max-new-tokens", "1", "--device", "cuda"])
        .output()
        .expect("wick runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got {stderr}");
    assert!(!lines[0].contains("CUDA_ERROR"), "{}", lines[0]);
    Some(lines[0].to_string())
}

#[test]
fn refuses_an_old_driver_or_no_gpu_in_one_line() {
    let Some(bin) = cuda_bin() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    // cuDriverGetVersion reports CUDA 12.8 (a 570 driver).
    let old = "int cuDriverGetVersion(int *v) { *v = 12080; return 0; }\n";
    if let Some(line) = refusal_with_driver(&bin, dir.path(), old) {
        assert!(
            line.starts_with("error: the NVIDIA driver supports CUDA 12.8, too old")
                && line.contains("driver 580 or newer"),
            "{line}"
        );
    }
    // A 13.0 driver whose cuInit finds no device (CUDA_ERROR_NO_DEVICE is 100).
    let no_gpu = "int cuDriverGetVersion(int *v) { *v = 13000; return 0; }\n\
                  int cuInit(unsigned flags) { (void)flags; return 100; }\n";
    if let Some(line) = refusal_with_driver(&bin, dir.path(), no_gpu) {
        assert!(
            line.starts_with("error: the NVIDIA driver finds no GPU")
                && line.contains("CUDA 13.0 or newer"),
            "{line}"
        );
    }
}

/// Kills the child when the test ends, passed or not.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serves_on_the_cpu_with_device_auto() {
    let Some(bin) = cuda_bin() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Child(
        wick(&bin, dir.path())
            .args(["serve", "--model-id", "random:tiny", "--device", "auto"])
            .args(["--hostname", "127.0.0.1", "--port", "0", "--json-output"])
            .args([
                "--max-batch-total-tokens",
                "1024",
                "--max-total-tokens",
                "128",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wick serve starts"),
    );
    let stderr = child.0.stderr.take().expect("stderr is piped");
    let lines = line_reader(stderr);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let base = serving_address(&lines, Duration::from_secs(120), &mut seen);
    let fallback: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("running on the CPU"))
        .collect();
    assert_eq!(fallback.len(), 1, "one line saying so: {seen:#?}");
    assert!(
        fallback[0].contains("no NVIDIA driver") && !fallback[0].contains("CUDA_ERROR"),
        "{}",
        fallback[0]
    );
    while get(&format!("{base}/health")).await.status != 200 {
        assert!(Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = post(
        &format!("{base}/generate"),
        &json!({"inputs": "Hello", "parameters": {"max_new_tokens": 4, "details": true}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["details"]["generated_tokens"], 4, "{}", a.text);
}
