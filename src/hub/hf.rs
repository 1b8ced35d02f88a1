//! `hf:` sources: Hugging Face repos through the hf-hub cache layout. Files already in the
//! cache are used as they are (offline works); missing ones are downloaded unless offline.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};

use super::HubOptions;

/// Returns the snapshot directory holding a safetensors checkpoint, or the one `file`.
pub fn fetch(repo: &str, revision: &str, file: Option<&str>, opts: &HubOptions) -> Result<PathBuf> {
    let cache = match &opts.hf_cache {
        Some(dir) => Cache::new(dir.clone()),
        None => Cache::from_env(),
    };
    let hf_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let cached = cache.repo(hf_repo.clone());
    let mut getter = Getter {
        repo,
        revision,
        cached: &cached,
        api: None,
        hf_repo,
        cache: &cache,
        opts,
    };
    if let Some(file) = file {
        return getter.get(file);
    }
    let config = getter.get("config.json")?;
    getter.get("tokenizer.json")?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        let _ = getter.get(optional);
    }
    match getter.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let mut shards: Vec<&str> = v["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                getter.get(shard)?;
            }
        }
        Err(_) => {
            getter.get("model.safetensors")?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

struct Getter<'a> {
    repo: &'a str,
    revision: &'a str,
    cached: &'a hf_hub::CacheRepo,
    api: Option<hf_hub::api::sync::ApiRepo>,
    hf_repo: Repo,
    cache: &'a Cache,
    opts: &'a HubOptions,
}

impl Getter<'_> {
    fn get(&mut self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached.get(file) {
            return Ok(p);
        }
        if self.opts.offline {
            bail!(
                "{file} of {}@{} is not in the Hugging Face cache ({}) and offline mode is on: run \
                 `huggingface-cli download {} --revision {}` on a machine with network and copy the cache, \
                 or set HF_HUB_CACHE to where it is",
                self.repo,
                self.revision,
                self.cache.path().display(),
                self.repo,
                self.revision
            );
        }
        if self.api.is_none() {
            let api = hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone())
                .with_progress(self.opts.progress)
                .build()
                .context("cannot set up the Hugging Face client")?;
            self.api = Some(api.repo(self.hf_repo.clone()));
        }
        let api = self.api.as_ref().context("Hugging Face client")?;
        api.get(file).map_err(|e| {
            anyhow::anyhow!(
                "cannot download {file} of {}@{} ({e}): check the network, the repo name and revision, and \
                 HF_TOKEN for gated repos; or download it elsewhere (`huggingface-cli download {}`) and set HF_HUB_CACHE",
                self.repo,
                self.revision,
                self.repo
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(hf: &Path) -> HubOptions {
        HubOptions {
            cache_dir: hf.join("wick"),
            hf_cache: Some(hf.to_path_buf()),
            offline: true,
            python: "python3".into(),
            pip_args: vec![],
            progress: false,
        }
    }

    #[test]
    fn offline_snapshot_and_missing_file() {
        let hf = tempfile::tempdir().unwrap();
        let repo = hf.path().join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        let dir = fetch("org/tiny", "main", None, &opts(hf.path())).unwrap();
        assert_eq!(dir, snap);
        let e = fetch("org/tiny", "main", Some("model-q4.gguf"), &opts(hf.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model-q4.gguf of org/tiny@main is not in the Hugging Face cache"),
            "{e}"
        );
        let e = fetch("org/other", "main", None, &opts(hf.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json of org/other@main"), "{e}");
    }
}
