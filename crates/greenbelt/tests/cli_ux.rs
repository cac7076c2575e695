//! The command line as a newcomer meets it: `--help` with examples, shell
//! completions, man pages, and `greenbelt config check` (every file's
//! errors with their line, the effective configuration with the defaults
//! and environment overrides applied and secrets redacted).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn greenbelt(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .env_remove("GREENBELT_LOG_FORMAT")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_shows_examples_and_every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = greenbelt(dir.path(), &["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for needle in [
        "Examples:",
        "greenbelt quickstart",
        "greenbelt config check",
        "models:/fraud@champion",
        "completions",
    ] {
        assert!(help.contains(needle), "{needle} missing from\n{help}");
    }
    // Every subcommand line of the list has a description.
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(commands.len() >= 18, "{commands:?}");
    for line in commands {
        assert!(line.split_whitespace().count() >= 2, "no help text: {line}");
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (shell, needle) in [
        ("bash", "_greenbelt()"),
        ("zsh", "#compdef greenbelt"),
        ("fish", "complete -c greenbelt"),
    ] {
        let out = greenbelt(d, &["completions", shell]);
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(needle), "{shell}: {needle} missing");
        assert!(
            script.contains("materialize"),
            "{shell}: nested subcommands"
        );
    }
    let out = greenbelt(d, &["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("possible values"), "{}", stderr(&out));

    let out = greenbelt(d, &["man", "--dir", "man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let top = std::fs::read_to_string(d.join("man/greenbelt.1")).unwrap();
    assert!(top.contains(".TH greenbelt 1"), "{top}");
    assert!(top.contains("Examples"), "the examples are in the page");
    let serve = std::fs::read_to_string(d.join("man/greenbelt-serve.1")).unwrap();
    assert!(serve.contains("model\\-repository"), "{serve}");
}

#[test]
fn config_check_reports_every_file_and_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("models/good/1")).unwrap();
    std::fs::create_dir_all(d.join("models/bad/1")).unwrap();
    std::fs::write(d.join("models/good/config.toml"), "instances = 2\n").unwrap();
    std::fs::write(d.join("models/bad/config.toml"), "instances = 0\n").unwrap();
    std::fs::write(
        d.join("greenbelt.toml"),
        "[server]\nhttp_addr = \"127.0.0.1:0\"\n[repository]\npath = \"models\"\n\
         [registry]\nurl = \"postgres://app:hunter2@db:5432/reg\"\n",
    )
    .unwrap();

    let out = greenbelt(d, &["config", "check"]);
    assert!(!out.status.success(), "a bad model config fails the check");
    let text = stdout(&out);
    assert!(
        text.contains("ok     greenbelt.toml (project config)"),
        "{text}"
    );
    assert!(text.contains("ok     models/good/config.toml"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("error  models/bad/config.toml")
                && l.contains("instances = 0 must be between 1 and")),
        "{text}"
    );
    assert!(
        stderr(&out).contains("1 of 3 files have errors"),
        "{}",
        stderr(&out)
    );
    // The effective configuration: defaults filled in, password redacted.
    assert!(text.contains("max_inflight"), "defaults shown: {text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("app:***@db"), "{text}");

    // Environment overrides are applied, as serve applies them.
    std::fs::write(d.join("models/bad/config.toml"), "instances = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(d)
        .env("GREENBELT__SERVER__MAX_INFLIGHT", "77")
        .args(["config", "check", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["effective"]["server"]["max_inflight"], 77);

    // A typo: the file, the line and the key.
    std::fs::write(
        d.join("broken.toml"),
        "[server]\nhttp_addr = \"127.0.0.1:0\"\nmax_inflihgt = 3\n",
    )
    .unwrap();
    let out = greenbelt(d, &["config", "check", "broken.toml", "--quiet"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("broken.toml") && text.contains("line 3") && text.contains("max_inflihgt"),
        "{text}"
    );
    assert!(!text.contains("effective configuration"), "{text}");
}

mod common;

/// `[telemetry] log_file`: request lines go to the file, the process log
/// (stdout for `serve`) keeps only its own lines.
#[tokio::test]
async fn the_request_log_can_go_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("models/m/1")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx"),
        d.join("models/m/1/model.onnx"),
    )
    .unwrap();
    let port = common::free_port();
    std::fs::write(
        d.join("greenbelt.toml"),
        format!(
            "[server]\nhttp_addr = \"127.0.0.1:{port}\"\ngrpc_addr = \"\"\n[repository]\npath = \"models\"\n\
             [telemetry]\nlog_file = \"logs/requests.log\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(d)
        .env("GREENBELT_LOG", "info")
        .args(["serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut serving = common::Kill(child);
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,20],\"datatype\":\"FP32\",\"data\":[{}]}}]}}",
        vec!["0.5"; 20].join(",")
    );
    let url = format!("http://127.0.0.1:{port}/v2/models/m/infer");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let mut answered = false;
    for _ in 0..300 {
        if client
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answered, "the server did not answer");
    let log = d.join("logs/requests.log");
    let mut line = String::new();
    for _ in 0..100 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(first["target"], "greenbelt::request", "{line}");
    assert_eq!(first["model"], "m", "{line}");
    let _ = serving.0.kill();
    let out = serving.0.wait_with_output_taken();
    assert!(out.contains("greenbelt serving"), "the process log: {out}");
    assert!(!out.contains("greenbelt::request"), "{out}");
}

trait TakeOutput {
    fn wait_with_output_taken(&mut self) -> String;
}

impl TakeOutput for std::process::Child {
    /// The stdout a killed child wrote.
    fn wait_with_output_taken(&mut self) -> String {
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut o) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        s
    }
}

/// Text output is tables with headers; `--json` is for machines.
#[test]
fn registry_text_output_is_tables_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    let out = greenbelt(
        d,
        &[
            "registry",
            "register",
            "lr",
            "--file",
            f.to_str().unwrap(),
            "--metrics",
            r#"{"auc": 0.91234567}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = greenbelt(d, &["registry", "alias", "set", "lr", "champion", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let versions = stdout(&greenbelt(d, &["registry", "versions", "lr"]));
    let mut lines = versions.lines();
    let head = lines.next().unwrap();
    assert!(head.starts_with("VERSION  CREATED"), "{versions}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with('1') && row.contains("auc=0.9123") && row.contains("@champion"),
        "{versions}"
    );

    let shown = stdout(&greenbelt(d, &["registry", "show", "lr", "1"]));
    assert!(shown.starts_with("FIELD"), "{shown}");
    for needle in ["sha256", "metrics.auc", "@champion", "inputs", "input FP32"] {
        assert!(shown.contains(needle), "{needle} missing from\n{shown}");
    }
    assert!(!shown.trim_start().starts_with('{'), "text, not JSON");
    let history = stdout(&greenbelt(d, &["registry", "history", "lr"]));
    assert!(
        history.starts_with("AT ") && history.contains("lr@champion"),
        "{history}"
    );
    // Tags, as MLflow's model version tags.
    let out = greenbelt(d, &["registry", "tag", "set", "lr", "1", "reviewed", "yes"]);
    assert!(
        stdout(&out).contains("lr:1 tags: reviewed=yes"),
        "{}",
        stderr(&out)
    );
    let out = greenbelt(d, &["registry", "tag", "delete", "lr", "1", "reviewed"]);
    assert!(stdout(&out).contains("lr:1 tags: -"), "{}", stderr(&out));
    let out = greenbelt(d, &["registry", "tag", "delete", "lr", "1", "reviewed"]);
    assert!(!out.status.success() && stderr(&out).contains("no tag \"reviewed\""));
    // --json still prints JSON.
    let json = stdout(&greenbelt(d, &["registry", "--json", "show", "lr", "1"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["version"], 1);
}
