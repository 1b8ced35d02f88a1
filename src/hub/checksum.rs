//! sha256 of model files, with a sidecar record so a verified file is not hashed again on
//! every start.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Hashes a file (with a progress bar for large files).
pub fn sha256_file(path: &Path, progress: bool) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len, "verifying", progress);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a file's hash.
pub fn verify_file(path: &Path, expected: &str, progress: bool) -> Result<()> {
    let got = sha256_file(path, progress)?;
    check(path, expected, &got)
}

pub fn check(path: &Path, expected: &str, got: &str) -> Result<()> {
    if !got.eq_ignore_ascii_case(expected) {
        bail!(
            "sha256 mismatch for {}: expected {expected}, got {got}; the file is corrupt or not the \
             pinned version: delete it to fetch it again, or fix sha256 in models.toml",
            path.display()
        );
    }
    Ok(())
}

fn sidecar(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    path.with_file_name(name)
}

fn stamp(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {mtime}", m.len()))
}

/// Like [`verify_file`], but trusts a sidecar written after an earlier successful check
/// when the file's size and mtime are unchanged.
pub fn verify_cached(path: &Path, expected: &str, progress: bool) -> Result<()> {
    let record = stamp(path).map(|s| format!("{} {s}", expected.to_ascii_lowercase()));
    if let (Some(r), Ok(saved)) = (&record, std::fs::read_to_string(sidecar(path))) {
        if saved.trim() == r {
            return Ok(());
        }
    }
    verify_file(path, expected, progress)?;
    if let Some(r) = record {
        // Best effort: a read-only cache only costs a re-hash next time.
        let _ = std::fs::write(sidecar(path), r);
    }
    Ok(())
}

/// Records a hash computed while writing `path`, so the next start skips hashing.
pub fn record_verified(path: &Path, hash: &str) {
    if let Some(s) = stamp(path) {
        let _ = std::fs::write(sidecar(path), format!("{} {s}", hash.to_ascii_lowercase()));
    }
}

pub fn progress_bar(len: u64, what: &str, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        std::fs::write(&p, b"abc").unwrap();
        let h = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&p, false).unwrap(), h);
        verify_cached(&p, h, false).unwrap();
        assert!(sidecar(&p).exists());
        let bad = "0".repeat(64);
        let e = verify_cached(&p, &bad, false).unwrap_err().to_string();
        assert!(e.contains(&bad) && e.contains(h), "{e}");
    }
}
