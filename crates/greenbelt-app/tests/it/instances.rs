//! In-process scaling through a live server under real load: a deployment
//! whose every call holds its model instance for 20 ms (the drill's
//! `slow:20ms` fault, so that one instance's capacity, 50 calls a second,
//! does not depend on how busy this 2-core machine is) serves one client,
//! then eight. The app's evaluation task raises the version's instances
//! (ONNX Runtime sessions when the library is there, and the batcher's
//! concurrency) within `[deployments.instances]`, throughput rises past
//! what one instance can give, `/metrics` and `/admin/autoscaler` show it,
//! and the count falls back to the minimum once the load stops.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::loadgen::{self, LoadOptions, Stop, Target};
use greenbelt_serve::Config;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::autoscale::{Scorer, start_scorer};

fn write_config(dir: &Path, backend: &str) -> Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    // Target 1.5 requests in flight per instance at 100 %: one client
    // (about 1 in flight) needs one instance, eight need the maximum.
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\ncompute_threads = 8\nallow_fault_injection = true\n\
         [telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [registry]\nurl = \"sqlite://{d}/registry.db\"\nartifacts = \"{d}/artifacts\"\npoll_interval_ms = 50\n\
         [autoscale]\ninterval = \"100ms\"\n\
         [[deployments]]\nname = \"scorer\"\nalias = \"champion\"\n\
         [deployments.config]\nbackend = \"{backend}\"\n\
         [deployments.config.batching]\nmax_batch_size = 1\nmax_queue_delay_us = 0\n\
         [deployments.autoscale]\nstable_window = \"2s\"\npanic_window = \"400ms\"\n\
         [deployments.instances]\nmin = 1\nmax = 4\ntarget = 1.5\ntarget_utilization = 1.0\nload_timeout = \"10s\"\n",
        d = dir.display()
    );
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// The version's instance report on `/admin/autoscaler`.
async fn report(client: &reqwest::Client, base: &str) -> Value {
    let all: Value = client
        .get(format!("{base}/admin/autoscaler"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all["instances"]["scorer"]["1"].clone()
}

/// `name{deployment="scorer",version="1"}` on `/metrics`.
async fn gauge(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("{name}{{deployment=\"scorer\",version=\"1\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

async fn closed_loop(
    target: &Target,
    inputs: &[greenbelt_core::Tensor],
    clients: usize,
    warmup: Duration,
    measured: Duration,
) -> loadgen::LoadResult {
    loadgen::run(
        target,
        std::slice::from_ref(&inputs.to_vec()),
        LoadOptions {
            connections: clients,
            warmup,
            stop: Stop::After(measured),
            keep_samples: false,
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_step_raises_instances_and_throughput() {
    let ort = greenbelt_runtime::Runtimes::probe(None)
        .onnxruntime
        .is_some();
    if !ort {
        eprintln!(
            "note: ONNX Runtime is not available (set ORT_DYLIB_PATH): the native engine is served, so only the batcher's concurrency scales, not sessions"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), if ort { "onnxruntime" } else { "native" });
    let Scorer {
        running,
        base,
        client,
        target,
        inputs,
    } = start_scorer(config, json!({"fault": "slow:20ms"})).await;

    // One client: about one request in flight, one instance.
    let one = closed_loop(
        &target,
        &inputs,
        1,
        Duration::from_millis(300),
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(one.errors, 0, "{:?}", one.first_error);
    let one_rps = one.ok as f64 / one.measured.as_secs_f64();
    let r = report(&client, &base).await;
    assert_eq!(r["instances"], 1, "{r}");
    assert_eq!(r["batch_concurrency"], 1, "{r}");
    assert!(
        one_rps <= 55.0,
        "one 20 ms instance gives at most 50 calls a second: {one_rps:.1}"
    );

    // Eight clients. The scaler sees ~8 in flight (panic window), asks for
    // ceil(8 / 1.5) = 6, bounded to 4; watch it from outside meanwhile.
    let watch = {
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut peak_admin = 0.0f64;
            let mut peak_metrics = 0.0f64;
            let mut peak_concurrency = 0.0f64;
            // The report from the busiest interval seen.
            let mut busiest = Value::Null;
            let until = Instant::now() + Duration::from_millis(3400);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let r = report(&client, &base).await;
                let n = r["instances"].as_f64().unwrap_or(0.0);
                assert!((1.0..=4.0).contains(&n), "left the bounds: {r}");
                peak_admin = peak_admin.max(n);
                if let Some(m) = gauge(&client, &base, "greenbelt_model_instances").await {
                    peak_metrics = peak_metrics.max(m);
                }
                let c = r["observed_concurrency"].as_f64().unwrap_or(0.0);
                if c >= peak_concurrency {
                    peak_concurrency = c;
                    busiest = r;
                }
            }
            (peak_admin, peak_metrics, busiest)
        })
    };
    let eight = closed_loop(
        &target,
        &inputs,
        8,
        Duration::from_millis(1500),
        Duration::from_secs(2),
    )
    .await;
    let (peak_admin, peak_metrics, last) = watch.await.unwrap();
    let eight_rps = eight.ok as f64 / eight.measured.as_secs_f64();
    eprintln!(
        "one client: {one_rps:.1} calls/s; eight: {eight_rps:.1} calls/s, p99 {:.1} ms; instances peaked at {peak_admin} (admin) / {peak_metrics} (metrics); busiest interval: {last}",
        eight.hist.value_at_quantile(0.99) as f64 / 1e6
    );
    assert_eq!(eight.errors, 0, "{:?}", eight.first_error);
    assert!(
        peak_admin >= 3.0 && peak_metrics >= 3.0,
        "instances rose: admin {peak_admin}, metrics {peak_metrics}; last {last}"
    );
    // More than one 20 ms instance can give (50/s), and well above one
    // client's rate: only several instances in service serve this.
    assert!(
        eight_rps > 100.0 && eight_rps > 2.0 * one_rps,
        "throughput: one client {one_rps:.1}/s, eight {eight_rps:.1}/s; {last}"
    );
    assert_eq!(last["max"], 4, "{last}");
    assert_eq!(last["failures"], 0, "{last}");
    assert!(
        last["observed_concurrency"].as_f64().unwrap() > 2.0,
        "{last}"
    );
    assert_eq!(last["batch_concurrency"], last["instances"], "{last}");
    if ort {
        let sessions = gauge(&client, &base, "greenbelt_model_sessions").await;
        assert!(sessions.is_some_and(|s| s >= 3.0), "{sessions:?} {last}");
    }
    assert!(
        gauge(&client, &base, "greenbelt_batcher_concurrency")
            .await
            .is_some_and(|c| c >= 3.0)
    );
    assert!(
        gauge(&client, &base, "greenbelt_model_instances_desired")
            .await
            .is_some_and(|d| (1.0..=4.0).contains(&d))
    );

    // Load stops: after the stable window (2 s) the count halves per
    // evaluation down to the minimum, and the sessions follow.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = report(&client, &base).await;
        if r["instances"] == 1 && (!ort || r["sessions"] == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "never scaled back down: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        gauge(&client, &base, "greenbelt_model_instances").await,
        Some(1.0)
    );
    running.stop().await.unwrap();
}
