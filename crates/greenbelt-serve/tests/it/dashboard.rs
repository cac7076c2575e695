//! The built-in dashboard in a real browser: headless Chromium loads
//! `/dashboard` from a live server under traffic; the rendered DOM has every
//! panel and non-zero numbers, and a screenshot is saved for CI
//! (`target/artifacts/dashboard.png`). Skips, saying so, without Chromium.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

fn chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(name.to_string());
        }
    }
    eprintln!(
        "SKIP: no chromium on PATH (apt-get install chromium); the dashboard was not rendered"
    );
    None
}

async fn headless(browser: &str, args: &[&str], url: &str) -> String {
    // coreutils' `timeout` bounds the browser; it runs on a blocking thread.
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["90", browser])
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=6000",
        ])
        .args(args)
        .arg(url);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-value` of every cell of `metric` in the DOM.
fn values(dom: &str, metric: &str) -> Vec<f64> {
    let needle = format!("data-metric=\"{metric}\" data-value=\"");
    dom.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &dom[i + needle.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn dashboard_renders_live_numbers_in_chromium() {
    let Some(browser) = chromium() else { return };
    let mut s = start(
        |r| copy_model(r, "logreg", 1, "logreg", 1),
        "[[slo]]\ndeployment = \"logreg\"\nkind = \"availability\"\nobjective = 0.999\n[alerts]\neval_interval = \"200ms\"\n",
    )
    .await;
    // Traffic until the browser is done.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (client, url, stop) = (
            s.client.clone(),
            format!("{}/v2/models/logreg/infer", s.http),
            stop.clone(),
        );
        tokio::spawn(async move {
            let body = logreg_request(1);
            while !stop.load(Ordering::Relaxed) {
                let _ = client.post(&url).json(&body).send().await;
            }
        })
    };
    // Two sampler ticks with traffic between them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let url = format!("{}/dashboard", s.http);
    let dom = headless(&browser, &["--dump-dom"], &url).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded its data:\n{dom}"
    );
    for panel in [
        "traffic", "latency", "errors", "queue", "inflight", "rollout", "shadow", "drift",
        "features", "cost", "alerts",
    ] {
        assert!(
            dom.contains(&format!("id=\"panel-{panel}\"")),
            "panel {panel} missing"
        );
    }
    let rate = values(&dom, "rate_rps");
    assert!(
        rate.iter().any(|r| *r > 0.0),
        "request rate not positive: {rate:?}\n{dom}"
    );
    let p99 = values(&dom, "p99_ms");
    assert!(p99.iter().any(|p| *p > 0.0), "p99 not positive: {p99:?}");
    assert!(values(&dom, "compute_ms").iter().any(|c| *c > 0.0));
    assert_eq!(values(&dom, "inflight_limit"), vec![4096.0]);
    let dollars = values(&dom, "cost_dollars");
    assert!(
        dollars.iter().any(|d| *d > 0.0),
        "the cost panel has no positive dollars: {dollars:?}"
    );
    assert!(values(&dom, "cost_per_million").iter().any(|c| *c > 0.0));
    assert!(
        dom.contains("logreg-availability"),
        "the SLO row is missing"
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let shot = format!("--screenshot={}", png.display());
    headless(
        &browser,
        &[&shot, "--window-size=1400,900", "--hide-scrollbars"],
        &url,
    )
    .await;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        png.display()
    );
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    s.stop().await;
}
