//! A real Prometheus (Debian's `prometheus`) scrapes a live `greenbelt
//! serve` under traffic, with the rules `greenbelt slo rules` wrote: the
//! scrape succeeds (OpenMetrics negotiated), the recording rules evaluate,
//! and every Grafana panel whose series a plain server has returns data.
//! (Panels for canaries, shadows, sheds, errors and feature views need those
//! things to exist; `slo_rules.rs` checks them over synthetic series.)
//! Skips, saying so, without `prometheus` on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Kill, free_port};

/// Panels a server with one plain model and an SLO has data for.
const LIVE_PANELS: [&str; 6] = [
    "Request rate by version",
    "Latency p50 / p99",
    "Queue vs compute per request",
    "In flight vs limit",
    "SLO error ratio",
    "Process CPU and memory",
];

async fn query(c: &reqwest::Client, prom: &str, expr: &str) -> usize {
    let r = c
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await;
    let Ok(r) = r else { return 0 };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["data"]["result"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn prometheus_scrapes_a_live_server_and_the_panels_have_data() {
    if !Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIP: prometheus not found (apt-get install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    std::fs::create_dir_all(d.join("models/logreg/1")).unwrap();
    std::fs::copy(
        fixtures.join("models/logreg/1/model.onnx"),
        d.join("models/logreg/1/model.onnx"),
    )
    .unwrap();
    let gb_port = free_port();
    std::fs::write(
        d.join("greenbelt.toml"),
        format!(
            "[server]\nhttp_addr = \"127.0.0.1:{gb_port}\"\ngrpc_addr = \"\"\n[repository]\npath = \"models\"\n[[slo]]\ndeployment = \"logreg\"\nkind = \"availability\"\nobjective = 0.999\n"
        ),
    )
    .unwrap();
    let gb = env!("CARGO_BIN_EXE_greenbelt");
    let out = Command::new(gb)
        .current_dir(d)
        .env("GREENBELT_LOG", "warn")
        .args([
            "slo",
            "rules",
            "--config",
            "greenbelt.toml",
            "--out",
            "rules.yml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _server = Kill(
        Command::new(gb)
            .current_dir(d)
            .env("GREENBELT_LOG", "warn")
            .args(["serve", "--config", "greenbelt.toml"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{gb_port}");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut ready = false;
    for _ in 0..300 {
        if c.get(format!("{base}/v2/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "greenbelt did not become ready");

    let prom_port = free_port();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nscrape_configs:\n  - job_name: greenbelt\n    static_configs:\n      - targets: ['127.0.0.1:{gb_port}']\n"
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new("prometheus")
            .current_dir(d)
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://127.0.0.1:{prom_port}");

    // Traffic while Prometheus scrapes, then every live panel must answer.
    let row: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "data": row}]});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<String> = Vec::new();
    loop {
        for _ in 0..50 {
            let r = c
                .post(format!("{base}/v2/models/logreg/infer"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        missing.clear();
        if query(&c, &prom, "up{job=\"greenbelt\"} == 1").await == 0 {
            missing.push("up{job=\"greenbelt\"} == 1 (the scrape)".into());
        }
        for (what, expr) in greenbelt_serve::grafana::queries("10s") {
            if LIVE_PANELS.iter().any(|p| what.starts_with(p)) && query(&c, &prom, &expr).await == 0
            {
                missing.push(what);
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(missing.is_empty(), "no data after 60 s for: {missing:#?}");
}
