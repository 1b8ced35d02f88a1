//! `hf:` sources: Hugging Face repos through the hf-hub cache layout
//! (`models--org--name/{refs,snapshots,blobs}`). Files already in the cache are used as
//! they are, without touching the network; missing ones are downloaded with hf-hub unless
//! offline.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};

use super::HubOptions;

const WEIGHTS: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

/// Returns the snapshot directory holding a safetensors checkpoint (config.json,
/// tokenizer.json and the weights), or the path of the one `file`.
pub fn fetch(repo: &str, revision: &str, file: Option<&str>, opts: &HubOptions) -> Result<PathBuf> {
    let root = match &opts.hf_cache {
        Some(dir) => dir.clone(),
        None => dirs::home_dir()
            .map(|h| h.join(".cache").join("huggingface").join("hub"))
            .context("no home directory to find the Hugging Face cache in: set HF_HUB_CACHE")?,
    };
    let mut hub = Hub {
        repo,
        revision,
        root,
        opts,
        api: None,
    };
    if let Some(file) = file {
        check_relative(file)?;
        return match hub.cached(file) {
            Some(p) => Ok(p),
            None if opts.offline => Err(hub.offline_error(&[file], Some(file))),
            None => hub.download(file),
        };
    }

    // Everything already cached: no network at all.
    let missing = hub.missing_safetensors()?;
    if missing.is_empty() {
        return hub.snapshot_dir();
    }
    if opts.offline {
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        return Err(hub.offline_error(&names, None));
    }
    let config = hub.get("config.json")?;
    hub.get("tokenizer.json")?;
    for optional in OPTIONAL {
        if hub.cached(optional).is_none() {
            if let Err(e) = hub.download(optional) {
                tracing::debug!("{optional} of {repo}@{revision} not fetched: {e:#}");
            }
        }
    }
    if hub.cached(WEIGHTS).is_none() {
        match hub.get(INDEX) {
            Ok(index) => {
                for shard in shards(&index)? {
                    hub.get(&shard)?;
                }
            }
            Err(_) => {
                hub.get(WEIGHTS)?;
            }
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The shard files a `model.safetensors.index.json` lists, sorted and deduplicated.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid JSON ({e}): delete it to fetch it again",
            index.display()
        )
    })?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        bail!(
            "{} has no weight_map: delete it to fetch it again",
            index.display()
        );
    };
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    for s in &shards {
        check_relative(s)?;
    }
    Ok(shards)
}

fn check_relative(file: &str) -> Result<()> {
    if file.is_empty() || file.starts_with('/') || file.split('/').any(|c| c == "..") {
        bail!("'{file}' is not a plain file name inside a repo");
    }
    Ok(())
}

struct Hub<'a> {
    repo: &'a str,
    revision: &'a str,
    root: PathBuf,
    opts: &'a HubOptions,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl Hub<'_> {
    fn hf_repo(&self) -> Repo {
        Repo::with_revision(
            self.repo.to_string(),
            RepoType::Model,
            self.revision.to_string(),
        )
    }

    /// The cached snapshot for the revision: `refs/<revision>` names the commit (a branch
    /// or tag), or the revision is itself a commit with a snapshot directory.
    fn snapshot(&self) -> Option<PathBuf> {
        let repo_dir = self.root.join(self.hf_repo().folder_name());
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(self.revision))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.revision.to_string());
        let dir = repo_dir.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }

    fn snapshot_dir(&self) -> Result<PathBuf> {
        self.snapshot().with_context(|| {
            format!(
                "no snapshot of {}@{} in {}",
                self.repo,
                self.revision,
                self.root.display()
            )
        })
    }

    /// A file of the snapshot, if present (a dangling blob link counts as missing).
    fn cached(&self, file: &str) -> Option<PathBuf> {
        let p = self.snapshot()?.join(file);
        p.is_file().then_some(p)
    }

    /// The files of a safetensors checkpoint not yet in the cache.
    fn missing_safetensors(&self) -> Result<Vec<String>> {
        let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
            .iter()
            .filter(|f| self.cached(f).is_none())
            .map(|f| f.to_string())
            .collect();
        if self.cached(WEIGHTS).is_none() {
            match self.cached(INDEX) {
                Some(index) => missing.extend(
                    shards(&index)?
                        .into_iter()
                        .filter(|s| self.cached(s).is_none()),
                ),
                None => missing.push(format!("{WEIGHTS} (or {INDEX} and its shards)")),
            }
        }
        Ok(missing)
    }

    /// `file`: the one file asked for (a GGUF), else the whole checkpoint is wanted.
    fn offline_error(&self, missing: &[&str], file: Option<&str>) -> anyhow::Error {
        let also = if missing.len() > 1 {
            format!("; also missing: {}", missing[1..].join(", "))
        } else {
            String::new()
        };
        let what = file.map(|f| format!(" {f}")).unwrap_or_default();
        anyhow::anyhow!(
            "{} of {}@{} is not in the Hugging Face cache ({}{also}) and offline mode is on: run \
             `huggingface-cli download {}{what} --revision {}` on a machine with network and copy \
             its cache here, set HF_HUB_CACHE to where the files are, or unset HF_HUB_OFFLINE",
            missing.first().copied().unwrap_or("a file"),
            self.repo,
            self.revision,
            self.root.display(),
            self.repo,
            self.revision
        )
    }

    /// A cached file, else a download.
    fn get(&mut self, file: &str) -> Result<PathBuf> {
        match self.cached(file) {
            Some(p) => Ok(p),
            None => self.download(file),
        }
    }

    fn download(&mut self, file: &str) -> Result<PathBuf> {
        if self.api.is_none() {
            let mut builder =
                hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(self.root.clone()))
                    .with_progress(self.opts.progress);
            if let Some(endpoint) = &self.opts.hf_endpoint {
                builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
            }
            if let Some(token) = &self.opts.hf_token {
                builder = builder.with_token(Some(token.clone()));
            }
            let api = builder
                .build()
                .map_err(|e| anyhow::anyhow!("cannot set up the Hugging Face client: {e}"))?;
            self.api = Some(api.repo(self.hf_repo()));
        }
        let api = self.api.as_ref().context("Hugging Face client")?;
        api.download(file).map_err(|e| {
            let reason = e.to_string().replace(['\n', '\r'], " ");
            anyhow::anyhow!(
                "cannot download {file} of {}@{} ({reason}): check the network, the repo name and \
                 revision, and HF_TOKEN for gated repos; or run `huggingface-cli download {} \
                 --revision {}` on a machine with network and set HF_HUB_CACHE to its cache",
                self.repo,
                self.revision,
                self.repo,
                self.revision
            )
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn opts(hf: &Path, offline: bool, endpoint: Option<String>) -> HubOptions {
        HubOptions {
            cache_dir: hf.join("wick"),
            hf_cache: Some(hf.to_path_buf()),
            offline,
            python: "python3".into(),
            pip_args: vec![],
            hf_endpoint: endpoint,
            hf_token: None,
            progress: false,
        }
    }

    /// A fake hf cache entry: `refs/<rev>` naming `commit`, the snapshot holding `files`
    /// as links into `blobs/` (as the real cache does).
    pub(crate) fn fake_repo(
        hf: &Path,
        repo: &str,
        rev: &str,
        commit: &str,
        files: &[(&str, &str)],
    ) -> PathBuf {
        let dir = hf.join(format!("models--{}", repo.replace('/', "--")));
        let snap = dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs").join(rev), format!("{commit}\n")).unwrap();
        for (i, (name, text)) in files.iter().enumerate() {
            let blob = dir.join("blobs").join(format!("blob{i}"));
            std::fs::write(&blob, text).unwrap();
            let link = snap.join(name);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(&blob, &link).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, &link).unwrap();
        }
        snap
    }

    /// An endpoint where nothing listens: any download attempt fails at once.
    fn dead_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    pub(crate) const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn offline_snapshot_and_missing_files() {
        let hf = tempfile::tempdir().unwrap();
        let snap = fake_repo(
            hf.path(),
            "org/tiny",
            "main",
            COMMIT,
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors", "x"),
            ],
        );
        let o = opts(hf.path(), true, None);
        assert_eq!(fetch("org/tiny", "main", None, &o).unwrap(), snap);
        // A commit hash as the revision finds the snapshot without a ref.
        assert_eq!(fetch("org/tiny", COMMIT, None, &o).unwrap(), snap);
        let e = fetch("org/tiny", "main", Some("model-q4.gguf"), &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model-q4.gguf of org/tiny@main is not in the Hugging Face cache")
                && e.contains("huggingface-cli download org/tiny model-q4.gguf --revision main"),
            "{e}"
        );
        let e = fetch("org/other", "main", None, &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json of org/other@main is not in the Hugging Face cache")
                && e.contains("also missing: tokenizer.json, model.safetensors")
                && e.contains("huggingface-cli download org/other --revision main"),
            "{e}"
        );
        let e = fetch("org/tiny", "v2", None, &o).unwrap_err().to_string();
        assert!(e.contains("config.json of org/tiny@v2"), "{e}");
    }

    #[test]
    fn sharded_checkpoints_and_gguf_files() {
        let hf = tempfile::tempdir().unwrap();
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#;
        let mut files = vec![
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", "x"),
            ("model-00002-of-00002.safetensors", "y"),
            ("m.Q4_0.gguf", "GGUF"),
        ];
        let snap = fake_repo(hf.path(), "org/big", "main", COMMIT, &files);
        let o = opts(hf.path(), true, None);
        assert_eq!(fetch("org/big", "main", None, &o).unwrap(), snap);
        assert_eq!(
            fetch("org/big", "main", Some("m.Q4_0.gguf"), &o).unwrap(),
            snap.join("m.Q4_0.gguf")
        );
        // One shard missing: named in the error.
        files.remove(4);
        let hf2 = tempfile::tempdir().unwrap();
        fake_repo(hf2.path(), "org/big", "main", COMMIT, &files);
        let e = fetch("org/big", "main", None, &opts(hf2.path(), true, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model-00002-of-00002.safetensors of org/big@main is not in"),
            "{e}"
        );
    }

    #[test]
    fn a_complete_snapshot_needs_no_network_and_a_missing_file_names_the_repo() {
        let hf = tempfile::tempdir().unwrap();
        let snap = fake_repo(
            hf.path(),
            "org/tiny",
            "main",
            COMMIT,
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors", "x"),
            ],
        );
        // Not offline: a complete snapshot (even without the optional
        // tokenizer_config.json / generation_config.json) resolves without a single
        // connection to the endpoint.
        // The "server" counts connections and closes each at once.
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", server.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in server.incoming() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        let o = opts(hf.path(), false, Some(endpoint));
        assert_eq!(fetch("org/tiny", "main", None, &o).unwrap(), snap);
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the hub was contacted for a complete snapshot"
        );
        // Unreachable server and a missing file: a one-line error naming the file.
        let o = opts(hf.path(), false, Some(dead_endpoint()));
        let e = fetch("org/tiny", "main", Some("x.gguf"), &o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot download x.gguf of org/tiny@main") && !e.contains('\n'),
            "{e}"
        );
    }
}
