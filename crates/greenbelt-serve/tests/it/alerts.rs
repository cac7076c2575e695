//! In-process SLO alerts through the real server: errors driven into a
//! deployment make the fast-burn alert fire (webhook in Alertmanager's
//! shape, `/admin/alerts`), and good traffic afterwards resolves it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_serve::fault::Fault;
use greenbelt_serve::repository::ModelConfig;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::support::*;

/// A webhook receiver on a free port: every POSTed JSON body arrives on the channel.
async fn receiver() -> (String, mpsc::Receiver<Value>) {
    let (tx, rx) = mpsc::channel(64);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, rx)
}

/// The next notification for `alertname` with `status`, within 10 s.
async fn next(rx: &mut mpsc::Receiver<Value>, alertname: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {status} notification for {alertname} within 10 s"))
            .expect("receiver closed");
        if msg["status"] == status && msg["alerts"][0]["labels"]["alertname"] == alertname {
            return msg;
        }
    }
}

fn install(s: &TestServer, fault: Option<Fault>) {
    let file = fixtures().join("models/logreg/1/model.onnx");
    let config = ModelConfig::default();
    let repo = &s.state.repository;
    let v = match fault {
        Some(f) => repo.load_file_with_fault("flaky", 1, &file, &config, f),
        None => repo.load_file("flaky", 1, &file, &config),
    }
    .unwrap();
    // The drill wrapper breaks a version after its warm-up call, as a real
    // bad deploy loads fine and fails on live traffic.
    v.warm().unwrap();
    repo.install("flaky", config, BTreeMap::from([(1, Arc::new(v))]), None);
}

#[tokio::test]
async fn fast_burn_fires_then_resolves_with_webhook_and_admin_view() {
    let (hook, mut rx) = receiver().await;
    let mut s = start(
        |_| {},
        &format!(
            "allow_fault_injection = true\n[[slo]]\ndeployment = \"flaky\"\nkind = \"availability\"\nobjective = 0.99\n[alerts]\neval_interval = \"50ms\"\nwebhook_url = \"{hook}\"\n"
        ),
    )
    .await;
    install(&s, Some(Fault::Error));
    for _ in 0..20 {
        let (status, _) = s.infer_logreg("/v2/models/flaky/infer").await;
        assert_eq!(status, 500);
    }
    let fired = next(&mut rx, "GreenbeltSLOBurnRatePage", "firing").await;
    let alert = &fired["alerts"][0];
    assert_eq!(fired["version"], "4");
    assert_eq!(alert["labels"]["slo"], "flaky-availability");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("slo-burn-rate.md")
    );
    let (status, report) = s.get("/admin/alerts").await;
    assert_eq!(status, 200);
    let slo = &report["slos"][0];
    assert_eq!(slo["bad"], 20);
    assert_eq!(slo["alerts"][0]["state"], "firing", "{report}");
    assert!(slo["burn_rate"]["5m"].as_f64().unwrap() > 14.4);

    // The version is fixed; good traffic dilutes every page window under its
    // limit (20 bad of 420 = 4.8%: under 14.4x and 6x the 1% budget), and
    // the page resolves.
    install(&s, None);
    for _ in 0..400 {
        let (status, _) = s.infer_logreg("/v2/models/flaky/infer").await;
        assert_eq!(status, 200);
    }
    let resolved = next(&mut rx, "GreenbeltSLOBurnRatePage", "resolved").await;
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let (_, report) = s.get("/admin/alerts").await;
    assert_eq!(report["slos"][0]["alerts"][0]["state"], "inactive");
    // Counted at the last evaluation: at least enough to resolve the page
    // (20 bad in 140 is under 14.4 x the 1% budget), at most all. On a busy
    // machine the evaluation after the last request may not have run yet.
    assert_eq!(report["slos"][0]["bad"], 20);
    let counted = report["slos"][0]["requests"].as_u64().unwrap();
    assert!((140..=420).contains(&counted), "{report}");
    s.stop().await;
}
