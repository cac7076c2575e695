//! `greenbelt config check`: validate a project's configuration the way
//! `serve` reads it — greenbelt.toml with its `GREENBELT__*` environment
//! overrides, the feature definitions it names, every model's
//! `config.toml`/`config.pbtxt` in the repository, the deployments' rollout
//! analysis, and any pipeline files given — report every error (file, line
//! where the parser knows it, and the fix the message names), and the
//! effective configuration with the defaults filled in (secrets redacted).

use std::path::{Path, PathBuf};

use greenbelt_serve::Config;
use serde::Serialize;

/// One file checked.
#[derive(Debug, Serialize)]
pub struct Checked {
    /// The file, as shown.
    pub file: String,
    pub what: &'static str,
    /// None: the file is valid.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checked: Vec<Checked>,
    /// The configuration `serve` would run with (defaults and environment
    /// overrides applied, secrets redacted); absent when greenbelt.toml
    /// itself does not load.
    pub effective: Option<serde_json::Value>,
}

/// Check `file` (default ./greenbelt.toml, else the built-in defaults),
/// what it names, and `pipelines`.
pub fn check(file: Option<&Path>, pipelines: &[PathBuf]) -> Report {
    let mut checked = Vec::new();
    let default = PathBuf::from("greenbelt.toml");
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| default.is_file().then_some(default));
    let shown = path
        .as_ref()
        .map_or("<built-in defaults>".to_string(), |p| {
            p.display().to_string()
        });
    let config = match Config::load(path.as_deref()) {
        Ok(c) => {
            checked.push(ok(&shown, "project config"));
            Some(c)
        }
        Err(e) => {
            checked.push(failed(&shown, "project config", e.to_string()));
            None
        }
    };
    if let Some(config) = &config {
        related(config, path.as_deref(), &mut checked);
    }
    for p in pipelines {
        let shown = p.display().to_string();
        checked.push(
            match greenbelt_control::pipeline::definition::PipelineDef::read(p) {
                Ok(_) => ok(&shown, "pipeline"),
                Err(e) => failed(&shown, "pipeline", e.to_string()),
            },
        );
    }
    Report {
        ok: checked.iter().all(|c| c.error.is_none()),
        checked,
        effective: config.as_ref().map(effective),
    }
}

fn ok(file: &str, what: &'static str) -> Checked {
    Checked {
        file: file.to_string(),
        what,
        error: None,
    }
}

fn failed(file: &str, what: &'static str, error: String) -> Checked {
    Checked {
        file: file.to_string(),
        what,
        error: Some(error),
    }
}

/// What greenbelt.toml names: the feature definitions, the models'
/// config.toml files, the deployments' analysis conditions.
fn related(config: &Config, path: Option<&Path>, checked: &mut Vec<Checked>) {
    let project = path.map_or("greenbelt.toml".into(), |p| p.display().to_string());
    if let Some(defs) = crate::features::definitions_path(config) {
        let shown = defs.display().to_string();
        checked.push(match greenbelt_features::Definitions::load(&defs) {
            Ok(_) => ok(&shown, "feature definitions"),
            Err(e) => failed(&shown, "feature definitions", e.to_string()),
        });
    }
    let repo = &config.repository.path;
    if let Ok(entries) = std::fs::read_dir(repo) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .flat_map(|p| [p.join("config.toml"), p.join("config.pbtxt")])
            .filter(|f| f.is_file())
            .collect();
        files.sort();
        files.dedup_by(|a, b| a.parent() == b.parent());
        for file in files {
            let Some(dir) = file.parent() else { continue };
            let shown = file.display().to_string();
            checked.push(match greenbelt_serve::repository::ModelConfig::read(dir) {
                Ok(_) => ok(&shown, "model config"),
                // The message already starts with the file.
                Err(e) => failed(
                    &shown,
                    "model config",
                    e.strip_prefix(&format!("{shown}: "))
                        .unwrap_or(&e)
                        .to_string(),
                ),
            });
        }
    }
    for d in &config.deployments {
        if let Err(e) = greenbelt_control::rollout::analysis::conditions(&d.rollout.analysis) {
            checked.push(failed(
                &project,
                "project config",
                format!("[[deployments]] \"{}\": rollout.analysis: {e}", d.name),
            ));
        }
    }
}

/// The configuration as JSON, secrets redacted: values of keys that name a
/// token, password or secret, and the password of any URL.
fn effective(config: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    redact(&mut v, "");
    v
}

fn redact(v: &mut serde_json::Value, key: &str) {
    let secret = ["token", "password", "secret"]
        .iter()
        .any(|s| key.to_ascii_lowercase().contains(s));
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                // A map of secrets (e.g. admin_tokens: name = token).
                let k = if secret { key } else { k.as_str() };
                redact(x, k);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| redact(x, key)),
        serde_json::Value::String(s) if secret && !s.is_empty() => *s = "<redacted>".into(),
        serde_json::Value::String(s) if s.contains("://") => {
            *s = greenbelt_serve::auth::redact_url(s);
        }
        _ => {}
    }
}

fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// The report as text; with `quiet`, without the effective configuration.
pub fn text(r: &Report, quiet: bool) -> String {
    let mut out = String::new();
    for c in &r.checked {
        match &c.error {
            None => out.push_str(&format!("ok     {} ({})\n", c.file, c.what)),
            Some(e) => out.push_str(&format!("error  {} ({}): {e}\n", c.file, c.what)),
        }
    }
    if let (false, Some(e)) = (quiet, &r.effective) {
        out.push_str("\n# the effective configuration (defaults and GREENBELT__* overrides applied, secrets redacted)\n");
        // TOML has no null: an unset key is absent.
        let mut e = e.clone();
        drop_nulls(&mut e);
        match toml::Value::try_from(&e).and_then(|v| toml::to_string_pretty(&v)) {
            Ok(t) => out.push_str(&t),
            Err(_) => out.push_str(&serde_json::to_string_pretty(&e).unwrap_or_default()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_reported_and_a_pbtxt_error_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("models/t/1")).unwrap();
        std::fs::write(d.join("models/t/config.pbtxt"), "max_batch_size 4\n").unwrap();
        let cfg = d.join("greenbelt.toml");
        std::fs::write(
            &cfg,
            format!("[repository]\npath = \"{}\"\n", d.join("models").display()),
        )
        .unwrap();
        let r = check(Some(&cfg), &[d.join("missing-pipeline.toml")]);
        assert!(!r.ok);
        assert_eq!(r.checked.len(), 3, "{r:?}");
        assert!(r.checked[0].error.is_none(), "{r:?}");
        let pbtxt = r.checked[1].error.as_deref().unwrap();
        assert!(
            pbtxt.contains("line 1") && pbtxt.contains("expected ':'"),
            "{pbtxt}"
        );
        assert!(r.checked[2].error.is_some(), "{r:?}");
        assert!(r.effective.is_some());
        let t = text(&r, true);
        assert!(
            t.contains("error  ") && !t.contains("effective configuration"),
            "{t}"
        );
    }

    #[test]
    fn secrets_are_redacted_and_urls_lose_their_password() {
        let mut v = serde_json::json!({
            "registry": {
                "url": "postgres://app:hunter2@db:5432/reg",
                "admin_tokens": {"ci": "s3cret-token"},
                "actor": "cli",
            },
            "alerts": {"webhook_url": "https://hooks.example/x"},
        });
        redact(&mut v, "");
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert_eq!(v["registry"]["admin_tokens"]["ci"], "<redacted>");
        assert_eq!(v["registry"]["actor"], "cli");
        assert_eq!(v["alerts"]["webhook_url"], "https://hooks.example/x");
    }
}
