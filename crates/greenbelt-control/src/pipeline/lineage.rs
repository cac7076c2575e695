//! The training-code reference stored in a version's lineage: the trainer
//! (built-in algorithm and parameters, or the external command), the git
//! revision of the pipeline's directory with a dirty flag when it is in a git
//! work tree, and the sha256 of every file an external command names (its
//! training script).
//!
//! Git runs as a subprocess (`git rev-parse HEAD`, `git status --porcelain
//! --untracked-files=no`) with a timeout and `GIT_OPTIONAL_LOCKS=0`, so it
//! never takes the index lock from someone committing in the same tree. Any
//! failure (not a repository, no git, no commit yet, too slow) leaves the git
//! entry out rather than failing the run.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::definition::{PipelineDef, TrainDef};

/// How long each git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `code` entry of the lineage: `trainer` plus `git` (when in a git work
/// tree) and `scripts` (external commands).
pub async fn code_reference(def: &PipelineDef, trainer: &Value) -> Value {
    let dir = base_dir(def);
    let mut code = match trainer {
        Value::Object(map) => map.clone(),
        other => serde_json::Map::from_iter([("trainer".to_string(), other.clone())]),
    };
    if let Some(git) = git_revision(dir).await {
        code.insert("git".into(), git);
    }
    if let TrainDef::Command { command, .. } = &def.train {
        code.insert("scripts".into(), Value::Array(script_files(dir, command)));
    }
    Value::Object(code)
}

fn base_dir(def: &PipelineDef) -> &Path {
    if def.base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        def.base_dir.as_path()
    }
}

/// `{"revision": <HEAD sha>, "dirty": <tracked files differ from HEAD>}`,
/// or None when `dir` is not in a git work tree with a commit.
pub async fn git_revision(dir: &Path) -> Option<Value> {
    let revision = git(dir, &["rev-parse", "--verify", "HEAD"]).await?;
    let revision = revision.trim().to_string();
    if revision.len() < 40 || !revision.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let status = git(dir, &["status", "--porcelain", "--untracked-files=no"]).await?;
    Some(json!({ "revision": revision, "dirty": !status.trim().is_empty() }))
}

/// Stdout of a successful `git <args>` in `dir`, or None.
async fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let child = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(GIT_TIMEOUT, child).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8(out.stdout).ok(),
        Ok(Ok(_)) | Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!(
                "`git {}` in {} took over {GIT_TIMEOUT:?}; lineage has no git revision",
                args.join(" "),
                dir.display()
            );
            None
        }
    }
}

/// `[{"path", "sha256"}]` for each word of `command` (the program included)
/// that names a regular file relative to `dir`, before placeholders are
/// filled: the training script and whatever else the command reads by name.
pub fn script_files(dir: &Path, command: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for word in command {
        if word.contains('{') || word.is_empty() {
            continue;
        }
        let path = dir.join(word);
        if !path.is_file() {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => out.push(json!({
                "path": word,
                "sha256": greenbelt_registry::artifacts::sha256_hex(&bytes),
            })),
            Err(e) => tracing::warn!("lineage: cannot read {}: {e}", path.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_files_hash_the_named_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.py"), b"print('hi')\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let command: Vec<String> = [
            "python3",
            "train.py",
            "--out",
            "{output}",
            "sub",
            "missing.py",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let files = script_files(dir.path(), &command);
        assert_eq!(
            files,
            vec![json!({
                "path": "train.py",
                "sha256": greenbelt_registry::artifacts::sha256_hex(b"print('hi')\n"),
            })]
        );
    }

    #[tokio::test]
    async fn no_git_revision_outside_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(git_revision(dir.path()).await, None);
    }
}
