//! docs/runbooks/pipeline-outage.md, run: a live `greenbelt serve` of
//! examples/pipeline-outage whose view's pipeline has stopped (the source
//! holds rows materialization never delivered), then every command of the
//! runbook's ```sh blocks, in order, each of which must succeed: detect
//! (the breach and the stale view are visible), mitigate (reads are
//! flagged), backfill, verify (fresh, unflagged).
//!
//! The online store is Redis, shared by the server and the CLI
//! (`GREENBELT_TEST_REDIS_URL`; the test says SKIP without it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Kill, free_port};

const ENTITIES: usize = 5;

/// The runbook's commands, in order, with the heading they are under.
fn runbook_commands(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut in_sh = false;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.trim().to_string();
        } else if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
        } else if in_sh && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            out.push((heading.clone(), line.trim().to_string()));
        }
    }
    out
}

fn ts(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn rows(event_us: i64) -> String {
    (0..ENTITIES)
        .map(|i| {
            let feats: Vec<String> = (0..20)
                .map(|f| format!("{}", (i + f) as f64 / 10.0))
                .collect();
            format!("d{i:05},{},{}\n", ts(event_us), feats.join(","))
        })
        .collect()
}

/// The example project in `dir`, on `redis`, with a view name of its own
/// (tests share the Redis) and a 120 s SLA (the runbook's commands take a
/// few seconds each in a debug build).
fn write_project(dir: &Path, port: u16, redis: &str, view: &str) {
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipeline-outage");
    let features = std::fs::read_to_string(ex.join("features.toml"))
        .unwrap()
        .replace("redis://127.0.0.1:6379/0", redis)
        .replace("user_activity", view)
        .replace("freshness_sla = \"5s\"", "freshness_sla = \"120s\"");
    std::fs::write(dir.join("features.toml"), features).unwrap();
    let server = std::fs::read_to_string(ex.join("greenbelt.toml"))
        .unwrap()
        .replace("127.0.0.1:18100", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.join("greenbelt.toml"), server).unwrap();
    std::fs::create_dir_all(dir.join("models/scorer/1")).unwrap();
    std::fs::copy(
        ex.join("models/scorer/config.toml"),
        dir.join("models/scorer/config.toml"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx"),
        dir.join("models/scorer/1/model.onnx"),
    )
    .unwrap();
}

fn greenbelt(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "greenbelt {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn status(c: &reqwest::Client, base: &str) -> serde_json::Value {
    match c.get(format!("{base}/features/online/status")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_outage_runbook_runs_in_order_against_a_live_server() {
    let Ok(redis) = std::env::var("GREENBELT_TEST_REDIS_URL") else {
        eprintln!(
            "SKIP: GREENBELT_TEST_REDIS_URL is not set (the runbook's online store is Redis)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let view = format!("rb_{}_{}", std::process::id(), now_us() % 1_000_000);
    write_project(d, port, &redis, &view);

    // The pipeline ran ten minutes ago, then stopped; the source kept growing.
    let now = now_us();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let header: Vec<String> = (0..20).map(|f| format!("f{f:02}")).collect();
    std::fs::write(
        d.join("data/activity.csv"),
        format!(
            "user_id,event_ts,{}\n{}",
            header.join(","),
            rows(now - 600_000_000)
        ),
    )
    .unwrap();
    greenbelt(
        d,
        &[
            "features",
            "-f",
            "features.toml",
            "materialize-incremental",
            "--end",
            &ts(now - 500_000_000),
        ],
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("data/activity.csv"))
        .unwrap();
    std::io::Write::write_all(&mut f, rows(now - 1_000_000).as_bytes()).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(d)
        .env("GREENBELT_LOG", "warn")
        .args(["serve", "--config", "greenbelt.toml"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serving = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // The state the runbook is for: the server lists the view as stale.
    let mut stale = false;
    for _ in 0..600 {
        let s = status(&c, &base).await;
        if s["stale_views"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v["view"] == view.as_str()))
        {
            stale = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stale, "the server never listed {view} as stale");

    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks/pipeline-outage.md"),
    )
    .unwrap();
    let commands = runbook_commands(&text);
    let sections: Vec<&str> = commands.iter().map(|(h, _)| h.as_str()).collect();
    for want in ["1. Detect", "2. Mitigate", "3. Backfill", "4. Verify"] {
        assert!(
            sections.contains(&want),
            "no commands under \"{want}\": {sections:?}"
        );
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_greenbelt")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut outputs = Vec::new();
    for (section, cmd) in &commands {
        let out = tokio::task::spawn_blocking({
            let (cmd, path, d, view) = (cmd.clone(), path.clone(), d.to_path_buf(), view.clone());
            let base = base.clone();
            move || {
                Command::new("bash")
                    .args(["-o", "pipefail", "-c", &cmd])
                    .current_dir(d)
                    .env("PATH", path)
                    .env("GREENBELT_LOG", "warn")
                    .env("GREENBELT_SERVER", base)
                    .env("FEATURES", "features.toml")
                    .env("VIEW", view)
                    .env("SOURCE", "activity")
                    .env("SERVICE", "activity_scoring")
                    .env("ENTITIES", r#"{"user_id": ["d00000"]}"#)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "runbook step ({section}) failed: {cmd}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((section.clone(), stdout));
    }
    let said = |section: &str| -> String {
        outputs
            .iter()
            .filter(|(s, _)| s == section)
            .map(|(_, o)| o.as_str())
            .collect()
    };
    let detect = said("1. Detect");
    assert!(
        detect.contains(&format!(
            "greenbelt_feature_view_freshness_breach{{view=\"{view}\"}} 1"
        )),
        "{detect}"
    );
    assert!(detect.contains(&format!("\"view\":\"{view}\"")), "{detect}");
    let mitigate = said("2. Mitigate");
    assert!(
        mitigate.contains("past its freshness SLA") && mitigate.contains("\"stale_values\":20"),
        "{mitigate}"
    );
    let backfill = said("3. Backfill");
    let verify = said("4. Verify");
    assert!(
        verify.contains(&format!("ok     {view}")),
        "{backfill}\n{verify}"
    );
}
