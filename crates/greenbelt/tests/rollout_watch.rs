//! `greenbelt rollout status --watch` against a live `greenbelt serve`: a
//! short canary (weight steps and timed pauses; analysis never due) started
//! with `greenbelt rollout start` and watched until it is promoted. Each
//! step change is a block of its own, nothing is printed twice, and the
//! watch ends by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{Kill, free_port};

fn greenbelt(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "greenbelt {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_canary_step_by_step_until_it_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/logreg/1/model.onnx")
        .canonicalize()
        .unwrap();
    std::fs::create_dir_all(d.join("models")).unwrap();
    let port = free_port();
    std::fs::write(
        d.join("greenbelt.toml"),
        format!(
            r#"[server]
http_addr = "127.0.0.1:{port}"
grpc_addr = ""
[repository]
path = "models"
[registry]
url = "sqlite://{d}/registry.db"
artifacts = "{d}/artifacts"
poll_interval_ms = 50
[[deployments]]
name = "fraud"
alias = "champion"
[deployments.rollout]
steps = [{{ set_weight = 25 }}, {{ pause = "2s" }}, {{ set_weight = 75 }}, {{ pause = "2s" }}]
[deployments.rollout.analysis]
interval = "1h"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let file = model.to_str().unwrap();
    greenbelt(d, &["registry", "register", "fraud", "--file", file]);
    greenbelt(d, &["registry", "register", "fraud", "--file", file]);
    greenbelt(d, &["registry", "alias", "set", "fraud", "champion", "1"]);

    let _server = Kill(
        Command::new(env!("CARGO_BIN_EXE_greenbelt"))
            .current_dir(d)
            .env("GREENBELT_LOG", "warn")
            .args(["serve", "--config", "greenbelt.toml"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut ready = false;
    for _ in 0..300 {
        if c.get(format!("http://127.0.0.1:{port}/v2/models/fraud/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "greenbelt did not serve fraud@champion");

    greenbelt(d, &["rollout", "start", "fraud", "--version", "2"]);
    let mut watch = Kill(
        Command::new(env!("CARGO_BIN_EXE_greenbelt"))
            .current_dir(d)
            .env("GREENBELT_LOG", "warn")
            .args([
                "rollout",
                "status",
                "fraud",
                "--watch",
                "--interval",
                "100ms",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = tokio::time::Instant::now();
    let status = loop {
        if let Some(s) = watch.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the watch did not end within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    watch
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    watch
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");

    // One block per change, in order: 25% (pausing), 75% (pausing), promoted.
    let heads: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| l.split_once("] rollout ").map_or(l, |(_, rest)| rest))
        .collect();
    let wanted = [
        "Progressing, step 1/4, 25% on candidate v2 (stable v1)",
        "Progressing, step 3/4, 75% on candidate v2 (stable v1)",
        "Promoted, step 4/4, 100% on candidate v2 (stable v1)",
    ];
    assert_eq!(heads.len(), wanted.len(), "{stdout}");
    for (head, want) in heads.iter().zip(wanted) {
        assert!(head.ends_with(want), "{head} vs {want}\n{stdout}");
    }
    assert!(stdout.contains("reason: all steps passed"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("finished: Promoted"),
        "{stdout}"
    );

    // Watching a finished rollout prints it once and returns at once.
    let out = greenbelt(d, &["rollout", "status", "fraud", "--watch"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("] rollout ").count(), 1, "{text}");
    assert!(text.contains("Promoted"), "{text}");
}
