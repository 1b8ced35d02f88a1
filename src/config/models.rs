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

    pub fn from_toml_str(text: &str) -> Result<Self> {
        let file: File =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("models.toml: {}", e.message()))?;
        let mut names = HashSet::new();
        for m in &file.model {
            if m.name.trim().is_empty() {
                bail!("models.toml: a model has an empty name");
            }
            if !names.insert(m.name.as_str()) {
                bail!(
                    "models.toml: duplicate model name '{}': names must be unique",
                    m.name
                );
            }
            m.source
                .parse::<crate::hub::Source>()
                .with_context(|| format!("models.toml: model '{}'", m.name))?;
            if let Some(h) = &m.sha256 {
                if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!(
                        "models.toml: model '{}' has a malformed sha256 (want 64 hex digits)",
                        m.name
                    );
                }
            }
        }
        let defaults = file.model.iter().filter(|m| m.default).count();
        if defaults != 1 {
            bail!("models.toml: exactly one model must have `default = true` ({defaults} do)");
        }
        Ok(Self { models: file.model })
    }

    /// A models.toml file if given, else the embedded one.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Self::embedded()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read models config {}", p.display()))?;
                Self::from_toml_str(&text).with_context(|| format!("in {}", p.display()))
            }
        }
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

    const ONE: &str = "[[model]]\nname = \"a\"\nsource = \"path:/x.gguf\"\ndefault = true\n";

    fn err(text: &str) -> String {
        format!("{:#}", ModelsConfig::from_toml_str(text).unwrap_err())
    }

    #[test]
    fn embedded_parses_with_one_default() {
        let c = ModelsConfig::embedded();
        assert_eq!(c.default_entry().name, "smollm2-135m-instruct");
        assert!(c.default_entry().sha256.is_some());
    }

    #[test]
    fn rejects_bad_files() {
        assert!(ModelsConfig::from_toml_str(ONE).is_ok());
        assert!(err(&format!("{ONE}color = \"red\"\n")).contains("unknown field `color`"));
        assert!(err(&format!(
            "{ONE}[[model]]\nname = \"a\"\nsource = \"path:y\"\n"
        ))
        .contains("duplicate model name 'a'"));
        assert!(err("[[model]]\nname = \"a\"\nsource = \"path:y\"\n").contains("exactly one model"));
        assert!(err(&format!(
            "{ONE}[[model]]\nname = \"b\"\nsource = \"path:y\"\ndefault = true\n"
        ))
        .contains("(2 do)"));
        assert!(
            err("[[model]]\nname = \"a\"\nsource = \"ftp:x\"\ndefault = true\n")
                .contains("unknown source")
        );
        assert!(err(
            "[[model]]\nname = \"a\"\nsource = \"path:x\"\nsha256 = \"abc\"\ndefault = true\n"
        )
        .contains("malformed sha256"));
        assert!(err("[[modle]]\n").contains("unknown field `modle`"));
    }
}
