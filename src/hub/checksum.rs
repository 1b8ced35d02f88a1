//! sha256 of model files, with a small record so a verified file is not hashed again on
//! every start.
//!
//! Records live in wick's own cache (`<cache_dir>/verified/<sha256>`), never next to the
//! model file: a Hugging Face snapshot or a user's directory stays untouched. A record
//! holds the file's canonical path, size and mtime; any change means a full re-hash.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Hashes a file (with a progress bar on stderr when `progress`).
pub fn sha256_file(path: &Path, progress: bool) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len, "verifying sha256", progress);
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

/// Checks a file's hash (always hashing it).
pub fn verify_file(path: &Path, expected: &str, progress: bool) -> Result<()> {
    let got = sha256_file(path, progress)?;
    check(path, expected, &got)
}

/// Compares a computed hash with the pinned one; the error names both and the fix.
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

fn record_path(record_dir: &Path, hash: &str) -> PathBuf {
    record_dir.join(hash.to_ascii_lowercase())
}

/// `<canonical path>\n<size> <mtime ns>` for an existing file.
fn stamp(path: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&canonical).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}\n{} {mtime}", canonical.display(), m.len()))
}

/// Like [`verify_file`], but skips hashing when `record_dir` holds a record of an earlier
/// successful check of this same file (same path, size and mtime).
pub fn verify_cached(path: &Path, expected: &str, record_dir: &Path, progress: bool) -> Result<()> {
    let record = record_path(record_dir, expected);
    let now = stamp(path);
    if let (Some(now), Ok(saved)) = (&now, std::fs::read_to_string(&record)) {
        if &saved == now {
            return Ok(());
        }
    }
    verify_file(path, expected, progress)?;
    record_verified(path, expected, record_dir);
    Ok(())
}

/// Records that `path` has hash `hash` (computed while writing it, or just checked), so
/// the next start skips hashing. Best effort: a read-only cache only costs a re-hash.
pub fn record_verified(path: &Path, hash: &str, record_dir: &Path) {
    if let Some(s) = stamp(path) {
        if std::fs::create_dir_all(record_dir).is_ok() {
            let _ = std::fs::write(record_path(record_dir, hash), s);
        }
    }
}

/// A byte progress bar on stderr (hidden when `visible` is false or stderr is no terminal).
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

/// A spinner on stderr with the elapsed time, for work of unknown size (a pip download).
pub fn spinner(what: &str, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn verifies_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("verified");
        let p = dir.path().join("f.bin");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p, false).unwrap(), ABC);
        verify_cached(&p, ABC, &records, false).unwrap();
        assert!(record_path(&records, ABC).exists());
        let bad = "0".repeat(64);
        let e = verify_cached(&p, &bad, &records, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&bad) && e.contains(ABC) && e.contains("sha256 mismatch"),
            "{e}"
        );
        assert!(!record_path(&records, &bad).exists());
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("verified");
        let p = dir.path().join("f.bin");
        std::fs::write(&p, b"abc").unwrap();
        verify_cached(&p, ABC, &records, false).unwrap();
        // Same size, different content: the record no longer matches (mtime or, on
        // coarse clocks, the explicit rewrite below), so the hash is checked again.
        std::fs::write(&p, b"abd").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(12345))
            .unwrap();
        drop(f);
        let e = verify_cached(&p, ABC, &records, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
    }

    #[test]
    fn a_record_for_another_file_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("verified");
        let good = dir.path().join("good.bin");
        let other = dir.path().join("other.bin");
        std::fs::write(&good, b"abc").unwrap();
        std::fs::write(&other, b"xyz").unwrap();
        verify_cached(&good, ABC, &records, false).unwrap();
        assert!(verify_cached(&other, ABC, &records, false).is_err());
    }
}
