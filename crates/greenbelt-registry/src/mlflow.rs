//! An MLflow tracking directory (the file store, `mlruns/`) as
//! `greenbelt registry import-mlflow` reads it: registered models
//! (`models/<name>/meta.yaml`, `tags/`, `aliases/`), their versions
//! (`version-<n>/meta.yaml`, `tags/`), each version's ONNX file (an
//! `mlflow.onnx` model directory: `MLmodel` + `model.onnx`), and the
//! metrics and parameters of the run that made it. This module only reads;
//! registering is greenbelt-app's (`mlflow_import`).
//!
//! MLflow writes absolute `file://` URIs into meta.yaml. Where such a path
//! does not exist (the store was copied or moved), it is found again under
//! the store's directory by its trailing part
//! (`<experiment>/<run>/artifacts/...`, `<experiment>/models/<id>/artifacts`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_norway::Value;

use crate::RegistryError;

/// MLflow's stage of a version deleted in a file store.
const DELETED_STAGE: &str = "Deleted_Internal";

/// One registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowModel {
    pub name: String,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Alias → MLflow version number.
    pub aliases: BTreeMap<String, i64>,
    /// In version order.
    pub versions: Vec<MlflowVersion>,
}

/// One version of a registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowVersion {
    pub version: i64,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub run_id: Option<String>,
    /// Where MLflow says the model is (`storage_location`, else `source`).
    pub source: String,
    /// Milliseconds since the epoch, as MLflow recorded it.
    pub created_ms: Option<i64>,
    /// The ONNX file, or why there is none to import.
    pub onnx: Result<PathBuf, String>,
    /// The run's metrics (each one's latest value).
    pub metrics: BTreeMap<String, f64>,
    /// The run's parameters.
    pub params: BTreeMap<String, String>,
}

/// A file store: its directory and its registered models, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowStore {
    pub root: PathBuf,
    pub models: Vec<MlflowModel>,
}

fn invalid(msg: String) -> RegistryError {
    RegistryError::Invalid(msg)
}

/// Read the file store at `dir` (the `mlruns` directory, or a directory
/// holding one).
pub fn read_store(dir: &Path) -> Result<MlflowStore, RegistryError> {
    if !dir.exists() {
        return Err(invalid(format!(
            "{} does not exist; pass an MLflow tracking directory (the file store, usually mlruns/)",
            dir.display()
        )));
    }
    let root = if dir.join("models").is_dir() {
        dir.to_path_buf()
    } else if dir.join("mlruns/models").is_dir() {
        dir.join("mlruns")
    } else {
        return Err(invalid(format!(
            "{} is not an MLflow file store with registered models: it has no models/ directory (MLflow keeps them in mlruns/models/<name>/meta.yaml); pass the mlruns directory",
            dir.display()
        )));
    };
    let store = Reader { root: &root };
    let mut models = Vec::new();
    for entry in sorted_dir(&root.join("models"))? {
        if entry.join("meta.yaml").is_file() {
            models.push(store.model(&entry)?);
        }
    }
    Ok(MlflowStore {
        root: root.clone(),
        models,
    })
}

/// The entries of `dir`, sorted by name.
fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    let read =
        std::fs::read_dir(dir).map_err(|e| invalid(format!("reading {}: {e}", dir.display())))?;
    let mut out: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

/// A meta.yaml (or MLmodel) file as a YAML mapping.
fn read_yaml(path: &Path) -> Result<Value, RegistryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
    let v: Value = serde_norway::from_str(&text)
        .map_err(|e| invalid(format!("{} is not YAML: {e}", path.display())))?;
    if !v.is_mapping() {
        return Err(invalid(format!(
            "{} is not a YAML mapping of fields",
            path.display()
        )));
    }
    Ok(v)
}

/// A scalar field as text (numbers too); None when absent, null or empty.
fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A field that is a whole number, written as one or as text.
fn int(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The files under `dir`, recursively, as `relative/path` → trimmed text
/// (MLflow's tags, params and aliases: one file each, named by key).
fn key_files(dir: &Path) -> Result<BTreeMap<String, String>, RegistryError> {
    let mut out = BTreeMap::new();
    if dir.is_dir() {
        collect_key_files(dir, dir, &mut out)?;
    }
    Ok(out)
}

fn collect_key_files(
    base: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, String>,
) -> Result<(), RegistryError> {
    for p in sorted_dir(dir)? {
        if p.is_dir() {
            collect_key_files(base, &p, out)?;
        } else {
            let key = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let value = std::fs::read_to_string(&p)
                .map_err(|e| invalid(format!("reading {}: {e}", p.display())))?;
            out.insert(key, value.trim_end_matches(['\n', '\r']).to_string());
        }
    }
    Ok(())
}

struct Reader<'a> {
    root: &'a Path,
}

impl Reader<'_> {
    fn model(&self, dir: &Path) -> Result<MlflowModel, RegistryError> {
        let meta_path = dir.join("meta.yaml");
        let meta = read_yaml(&meta_path)?;
        let name = text(&meta, "name").unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut aliases = BTreeMap::new();
        if let Some(Value::Mapping(m)) = meta.get("aliases") {
            for (k, v) in m {
                if let (Some(k), Some(n)) = (k.as_str(), yaml_int(v)) {
                    aliases.insert(k.to_string(), n);
                }
            }
        }
        for (alias, v) in key_files(&dir.join("aliases"))? {
            let n = v.trim().parse().map_err(|_| {
                invalid(format!(
                    "{}: alias \"{alias}\" holds \"{v}\", not a version number",
                    dir.join("aliases").display()
                ))
            })?;
            aliases.insert(alias, n);
        }
        let mut versions = Vec::new();
        for entry in sorted_dir(dir)? {
            let is_version = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("version-"));
            if is_version && entry.join("meta.yaml").is_file() {
                versions.push(self.version(&entry)?);
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok(MlflowModel {
            name,
            description: text(&meta, "description"),
            tags: key_files(&dir.join("tags"))?,
            aliases,
            versions,
        })
    }

    fn version(&self, dir: &Path) -> Result<MlflowVersion, RegistryError> {
        let meta_path = dir.join("meta.yaml");
        let meta = read_yaml(&meta_path)?;
        let version = int(&meta, "version").ok_or_else(|| {
            invalid(format!(
                "{}: field version is missing or not a whole number",
                meta_path.display()
            ))
        })?;
        let run_id = text(&meta, "run_id");
        let source = text(&meta, "storage_location")
            .or_else(|| text(&meta, "source"))
            .unwrap_or_default();
        let onnx = if text(&meta, "current_stage").as_deref() == Some(DELETED_STAGE) {
            Err("deleted in MLflow".to_string())
        } else if source.is_empty() {
            Err(format!(
                "{} names no source or storage_location",
                meta_path.display()
            ))
        } else {
            self.local(&source).and_then(|p| onnx_in(&p, &source))
        };
        let run = run_id.as_deref().and_then(|r| self.run_dir(r));
        let (metrics, params) = match &run {
            Some(d) => (metrics(&d.join("metrics"))?, key_files(&d.join("params"))?),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        Ok(MlflowVersion {
            version,
            description: text(&meta, "description"),
            tags: key_files(&dir.join("tags"))?,
            run_id,
            source,
            created_ms: int(&meta, "creation_timestamp"),
            onnx,
            metrics,
            params,
        })
    }

    /// The run's directory: `<experiment>/<run_id>` under the store.
    fn run_dir(&self, run_id: &str) -> Option<PathBuf> {
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return None;
        }
        let experiments = std::fs::read_dir(self.root).ok()?;
        experiments
            .filter_map(|e| e.ok().map(|e| e.path().join(run_id)))
            .find(|d| d.join("meta.yaml").is_file())
    }

    /// The local path of an artifact URI: `file://` or a plain path
    /// (found again under the store when it does not exist), `runs:/` and
    /// `models:/m-...` (a logged model) through their meta.yaml.
    fn local(&self, uri: &str) -> Result<PathBuf, String> {
        if let Some(rest) = uri.strip_prefix("runs:/") {
            let (run_id, path) = rest.split_once('/').unwrap_or((rest, ""));
            let run = self
                .run_dir(run_id)
                .ok_or_else(|| format!("its run {run_id} is not in {}", self.root.display()))?;
            let meta = read_yaml(&run.join("meta.yaml")).map_err(|e| e.to_string())?;
            let base = text(&meta, "artifact_uri")
                .ok_or_else(|| format!("run {run_id}'s meta.yaml names no artifact_uri"))?;
            return Ok(self.local(&base)?.join(path));
        }
        if let Some(id) = uri.strip_prefix("models:/") {
            let logged = self
                .logged_model(id)
                .ok_or_else(|| format!("{uri} is not a logged model in {}", self.root.display()))?;
            let meta = read_yaml(&logged.join("meta.yaml")).map_err(|e| e.to_string())?;
            let base = text(&meta, "artifact_location")
                .unwrap_or_else(|| logged.join("artifacts").display().to_string());
            return self.local(&base);
        }
        let path = match uri.strip_prefix("file://") {
            Some(p) => p,
            None if uri.contains(":/") => {
                return Err(format!(
                    "its artifact {uri} is not in the file store; download it (mlflow artifacts download) and register the ONNX file with `greenbelt registry register`"
                ));
            }
            None => uri,
        };
        let p = Path::new(path);
        if p.is_relative() {
            // Relative to the store, never to the working directory.
            let under = self.root.join(p);
            if under.exists() && !p.components().any(|c| matches!(c, Component::ParentDir)) {
                return Ok(under);
            }
        } else if p.exists() {
            return Ok(p.to_path_buf());
        }
        self.moved(p).ok_or_else(|| {
            format!(
                "its artifact {uri} does not exist, nor under {}",
                self.root.display()
            )
        })
    }

    /// A logged model's directory: `<experiment>/models/<id>`.
    fn logged_model(&self, id: &str) -> Option<PathBuf> {
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return None;
        }
        let experiments = std::fs::read_dir(self.root).ok()?;
        experiments
            .filter_map(|e| e.ok().map(|e| e.path().join("models").join(id)))
            .find(|d| d.join("meta.yaml").is_file())
    }

    /// `path` (absolute, from another machine or before a move) found
    /// under the store: its longest trailing part (at least two
    /// components, no `..`) that exists there.
    fn moved(&self, path: &Path) -> Option<PathBuf> {
        let parts: Vec<&std::ffi::OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s),
                _ => None,
            })
            .collect();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return None;
        }
        (0..parts.len().saturating_sub(1))
            .map(|i| {
                parts[i..]
                    .iter()
                    .fold(self.root.to_path_buf(), |p, s| p.join(s))
            })
            .find(|p| p.exists())
    }
}

fn yaml_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The ONNX file a version's artifact holds: an `.onnx` file; a model
/// directory whose MLmodel has an `onnx` flavor (its `data` file); or a
/// directory without MLmodel holding exactly one `.onnx` file.
fn onnx_in(path: &Path, uri: &str) -> Result<PathBuf, String> {
    let is_onnx = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    };
    if path.is_file() {
        return if is_onnx(path) {
            Ok(path.to_path_buf())
        } else {
            Err(format!("its artifact {uri} is a file that is not .onnx"))
        };
    }
    let mlmodel = path.join("MLmodel");
    if mlmodel.is_file() {
        let m = read_yaml(&mlmodel).map_err(|e| e.to_string())?;
        let flavors = match m.get("flavors") {
            Some(Value::Mapping(f)) => f,
            _ => return Err(format!("{} has no flavors", mlmodel.display())),
        };
        let Some(onnx) = flavors.get("onnx") else {
            let names: Vec<&str> = flavors.keys().filter_map(Value::as_str).collect();
            return Err(format!(
                "it is not an ONNX model (its MLmodel's flavors are {}); Greenbelt serves ONNX: convert it and log it with mlflow.onnx.log_model",
                names.join(", ")
            ));
        };
        let data = text(onnx, "data").unwrap_or_else(|| "model.onnx".into());
        let file = path.join(&data);
        if data.contains("..") || !file.is_file() {
            return Err(format!(
                "its MLmodel's onnx flavor names {data}, which is not in {}",
                path.display()
            ));
        }
        return Ok(file);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_onnx(p))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "its artifact {uri} has no ONNX model (no MLmodel with an onnx flavor, no .onnx file)"
        )),
        _ => Err(format!(
            "its artifact {uri} has {} .onnx files and no MLmodel to say which is the model",
            found.len()
        )),
    }
}

/// A run's metrics: each file holds lines `timestamp value step`; the
/// latest (highest step, then time) is the metric's value.
fn metrics(dir: &Path) -> Result<BTreeMap<String, f64>, RegistryError> {
    let mut out = BTreeMap::new();
    for (key, text) in key_files(dir)? {
        let latest = text
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let ts: i64 = f.next()?.parse().ok()?;
                let value: f64 = f.next()?.parse().ok()?;
                let step: i64 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                Some((step, ts, value))
            })
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        if let Some((_, _, v)) = latest
            && v.is_finite()
        {
            out.insert(key, v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mlflow/mlruns")
    }

    #[test]
    fn the_committed_store_reads_with_its_absolute_paths_moved() {
        let store = read_store(&fixture()).unwrap();
        assert_eq!(store.models.len(), 1);
        let m = &store.models[0];
        assert_eq!(m.name, "fraud");
        assert_eq!(m.description.as_deref(), Some("Card fraud classifier"));
        assert_eq!(m.tags.get("team").map(String::as_str), Some("risk"));
        assert_eq!(m.aliases.get("champion"), Some(&2));
        assert_eq!(m.aliases.get("challenger"), Some(&1));
        let numbers: Vec<i64> = m.versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, [1, 2, 3]);
        // 1: a logged model (models:/m-...); 2: a run artifact.
        for v in &m.versions[..2] {
            let onnx = v.onnx.as_ref().unwrap();
            assert!(onnx.starts_with(&store.root), "{}", onnx.display());
            assert!(onnx.ends_with("model.onnx"));
            assert!(v.source.starts_with("file:///"), "{}", v.source);
        }
        assert_eq!(m.versions[0].metrics.get("auc"), Some(&0.93));
        assert_eq!(
            m.versions[1].params.get("C").map(String::as_str),
            Some("0.5")
        );
        assert_eq!(
            m.versions[1].description.as_deref(),
            Some("Retrained with C=0.5")
        );
        assert_eq!(
            m.versions[1].tags.get("dataset").map(String::as_str),
            Some("tx-2026-11")
        );
        let why = m.versions[2].onnx.as_ref().unwrap_err();
        assert!(why.contains("no ONNX model"), "{why}");
    }

    #[test]
    fn a_directory_that_is_not_a_store_is_a_clear_error() {
        let e = read_store(Path::new("/no/such/mlruns"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/mlruns does not exist"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_store(dir.path()).unwrap_err().to_string();
        assert!(e.contains("has no models/ directory"), "{e}");
    }

    #[test]
    fn broken_meta_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("models/m");
        std::fs::create_dir_all(m.join("version-1")).unwrap();
        std::fs::write(m.join("meta.yaml"), "name: m\n").unwrap();
        std::fs::write(m.join("version-1/meta.yaml"), "name: m\nversion: [\n").unwrap();
        let e = read_store(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version-1/meta.yaml is not YAML"), "{e}");
        std::fs::write(m.join("version-1/meta.yaml"), "name: m\nversion: one\n").unwrap();
        let e = read_store(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("field version is missing or not a whole number"),
            "{e}"
        );
        std::fs::write(m.join("version-1/meta.yaml"), "- a list\n").unwrap();
        let e = read_store(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a YAML mapping"), "{e}");
        std::fs::create_dir_all(m.join("aliases")).unwrap();
        std::fs::write(
            m.join("version-1/meta.yaml"),
            "version: 1\nsource: s3://b/k\n",
        )
        .unwrap();
        std::fs::write(m.join("aliases/champion"), "two").unwrap();
        let e = read_store(dir.path()).unwrap_err().to_string();
        assert!(e.contains("alias \"champion\" holds \"two\""), "{e}");
    }

    #[test]
    fn versions_without_a_local_onnx_model_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("models/m");
        for (n, meta) in [
            (1, "version: 1\nsource: s3://bucket/model\n"),
            (2, "version: 2\nsource: /nowhere/at/all\n"),
            (
                3,
                "version: 3\ncurrent_stage: Deleted_Internal\nsource: /x\n",
            ),
            (4, "version: 4\nsource: sk\n"),
            (5, "version: '5'\nsource: runs:/abc/model\n"),
        ] {
            std::fs::create_dir_all(m.join(format!("version-{n}"))).unwrap();
            std::fs::write(m.join(format!("version-{n}/meta.yaml")), meta).unwrap();
        }
        std::fs::write(m.join("meta.yaml"), "name: m\n").unwrap();
        std::fs::create_dir_all(dir.path().join("sk")).unwrap();
        std::fs::write(
            dir.path().join("sk/MLmodel"),
            "flavors:\n  sklearn:\n    pickled_model: model.pkl\n  python_function: {}\n",
        )
        .unwrap();
        let store = read_store(dir.path()).unwrap();
        let why: Vec<String> = store.models[0]
            .versions
            .iter()
            .map(|v| v.onnx.clone().unwrap_err())
            .collect();
        assert!(why[0].contains("not in the file store"), "{}", why[0]);
        assert!(why[1].contains("does not exist"), "{}", why[1]);
        assert_eq!(why[2], "deleted in MLflow");
        assert!(
            why[3].contains("flavors are sklearn, python_function"),
            "{}",
            why[3]
        );
        assert!(why[4].contains("run abc is not in"), "{}", why[4]);
    }

    #[test]
    fn the_latest_metric_value_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auc"), "10 0.5 0\n5 0.7 1\n20 0.6 1\n").unwrap();
        std::fs::write(dir.path().join("loss"), "garbage\n").unwrap();
        let m = metrics(dir.path()).unwrap();
        assert_eq!(m.get("auc"), Some(&0.6));
        assert!(!m.contains_key("loss"));
    }
}
