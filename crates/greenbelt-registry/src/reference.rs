//! A model version as people name it on the command line: `NAME` (the
//! newest version), `NAME@ALIAS` or `NAME:VERSION`, and its resolution to a
//! registered version.

use std::fmt;
use std::str::FromStr;

use crate::{ModelVersion, Registry, RegistryError};

/// `NAME`, `NAME@ALIAS` or `NAME:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// `NAME`: the newest version.
    Latest(String),
    /// `NAME@ALIAS`: the version the alias points to.
    Alias(String, String),
    /// `NAME:VERSION`.
    Version(String, i64),
}

impl ModelRef {
    pub fn name(&self) -> &str {
        match self {
            ModelRef::Latest(n) | ModelRef::Alias(n, _) | ModelRef::Version(n, _) => n,
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Latest(n) => write!(f, "{n}"),
            ModelRef::Alias(n, a) => write!(f, "{n}@{a}"),
            ModelRef::Version(n, v) => write!(f, "{n}:{v}"),
        }
    }
}

impl FromStr for ModelRef {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<ModelRef, RegistryError> {
        let bad = |why: &str| {
            RegistryError::Invalid(format!(
                "model \"{s}\": {why}; write NAME, NAME@ALIAS (e.g. fraud@champion) or NAME:VERSION (e.g. fraud:3), or MLflow's models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest"
            ))
        };
        // MLflow's model URIs: models:/NAME@ALIAS, models:/NAME/VERSION,
        // models:/NAME/latest (MLflow's other stages are not aliases here).
        if let Some(rest) = s.strip_prefix("models:/") {
            let r = match rest.split_once('/') {
                Some((name, "latest")) => ModelRef::Latest(name.into()),
                Some((name, version)) => {
                    let v: i64 = version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                        bad("after models:/NAME/ comes a version (a whole number above 0) or latest")
                    })?;
                    ModelRef::Version(name.into(), v)
                }
                None if rest.contains(':') => return Err(bad("':' is not part of a model URI")),
                None => rest
                    .parse::<ModelRef>()
                    .map_err(|_| bad("not a model URI"))?,
            };
            if r.name().is_empty() || r.name().contains(['/', ':']) {
                return Err(bad("no model name, or one with '/' or ':' in it"));
            }
            return Ok(r);
        }
        let (name, r) = if let Some((name, alias)) = s.split_once('@') {
            if alias.is_empty() || alias.contains([':', '@']) {
                return Err(bad("the alias is empty or has ':' or '@' in it"));
            }
            (name, ModelRef::Alias(name.into(), alias.into()))
        } else if let Some((name, version)) = s.split_once(':') {
            let v: i64 = version
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| bad("the version is not a whole number above 0"))?;
            (name, ModelRef::Version(name.into(), v))
        } else {
            (s, ModelRef::Latest(s.into()))
        };
        if name.is_empty() {
            return Err(bad("no model name"));
        }
        Ok(r)
    }
}

impl Registry {
    /// The version `reference` names.
    pub async fn resolve(&self, reference: &ModelRef) -> Result<ModelVersion, RegistryError> {
        let name = reference.name();
        let version = match reference {
            ModelRef::Version(_, v) => *v,
            ModelRef::Alias(_, alias) => self.alias(name, alias).await?.ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "model \"{name}\" has no alias \"{alias}\"; set it with `greenbelt registry alias set {name} {alias} VERSION` or name a version ({name}:VERSION)"
                ))
            })?,
            ModelRef::Latest(_) => self
                .versions(name)
                .await?
                .iter()
                .map(|v| v.version)
                .max()
                .ok_or_else(|| {
                    RegistryError::NotFound(format!(
                        "model \"{name}\" has no versions; register one with `greenbelt registry register {name} --file model.onnx`"
                    ))
                })?,
        };
        self.version(name, version).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_say_the_forms() {
        for (text, want) in [
            ("fraud", ModelRef::Latest("fraud".into())),
            (
                "fraud@champion",
                ModelRef::Alias("fraud".into(), "champion".into()),
            ),
            ("fraud:3", ModelRef::Version("fraud".into(), 3)),
        ] {
            let got: ModelRef = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), text);
        }
        for bad in [
            "fraud:x",
            "fraud:0",
            "fraud@",
            "@champion",
            ":3",
            "",
            "a@b:1",
        ] {
            let e = bad.parse::<ModelRef>().unwrap_err().to_string();
            assert!(e.contains("NAME@ALIAS"), "{bad}: {e}");
        }
    }

    #[test]
    fn mlflow_model_uris_parse() {
        for (text, want) in [
            (
                "models:/fraud@champion",
                ModelRef::Alias("fraud".into(), "champion".into()),
            ),
            ("models:/fraud/3", ModelRef::Version("fraud".into(), 3)),
            ("models:/fraud/latest", ModelRef::Latest("fraud".into())),
            ("models:/fraud", ModelRef::Latest("fraud".into())),
        ] {
            assert_eq!(text.parse::<ModelRef>().unwrap(), want, "{text}");
        }
        for bad in [
            "models:/fraud/Production",
            "models:/fraud/0",
            "models:/",
            "models:/@champion",
            "models:/a:1",
            "models:/fraud@",
        ] {
            let e = bad.parse::<ModelRef>().unwrap_err().to_string();
            assert!(e.contains("models:/NAME@ALIAS"), "{bad}: {e}");
        }
    }
}
