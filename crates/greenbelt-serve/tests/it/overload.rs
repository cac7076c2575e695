//! Overload and lifecycle through the real server: the adaptive limit
//! follows a model's latency, low priority sheds first, a request that
//! waited past its queue budget is shed before compute, readiness waits for
//! what must serve, and shutdown serves out its delay then drains within
//! its timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use greenbelt_serve::fault::Fault;
use greenbelt_serve::repository::ModelConfig;
use serde_json::Value;

use crate::support::*;

/// Serve `name` from the logreg fixture, slowed by `slow` when given. Always
/// through the fault wrapper (a zero delay when fast), so every call runs on
/// the compute pool: the native engine alone would run these microsecond
/// calls inline on the request's thread, where no more requests are in
/// flight than there are worker threads and the limit, app-limited, has no
/// reason to grow.
fn install(s: &TestServer, name: &str, slow: Option<Duration>) {
    let file = fixtures().join("models/logreg/1/model.onnx");
    let config = ModelConfig::default();
    let repo = &s.state.repository;
    let d = slow.unwrap_or(Duration::ZERO);
    let v = repo
        .load_file_with_fault(name, 1, &file, &config, Fault::Slow(d))
        .unwrap();
    v.warm().unwrap();
    repo.install(name, config, BTreeMap::from([(1, Arc::new(v))]), None);
}

async fn infer(
    client: &reqwest::Client,
    url: &str,
    priority: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut req = client.post(url).json(&logreg_request(1));
    if let Some(p) = priority {
        req = req.header("x-greenbelt-priority", p);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.text().await.unwrap_or_default())
}

/// Wait (bounded) until `f` holds, polling.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_drops_under_a_slow_model_and_recovers() {
    let mut s = start(
        |_| {},
        "allow_fault_injection = true\ncompute_threads = 2\n[server.concurrency]\nalgorithm = \"gradient2\"\ninitial_limit = 40\nmin_limit = 2\nwindow_ms = 50\ntolerated_queue = \"10ms\"\n",
    )
    .await;
    install(&s, "m", None);
    let url = format!("{}/v2/models/m/infer", s.http);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, shed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let (client, url, stop) = (s.client.clone(), url.clone(), stop.clone());
            let (ok, shed) = (ok.clone(), shed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match infer(&client, &url, None).await.0 {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        503 => {
                            // A shed client backs off a little, as a real one would.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            shed.fetch_add(1, Ordering::SeqCst)
                        }
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    let limiter = s.state.limiters.get("m").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fast = limiter.limit();
    assert!(
        fast >= 30,
        "fast model under load keeps a high limit ({fast})"
    );

    install(&s, "m", Some(Duration::from_millis(20)));
    let l = limiter.clone();
    eventually(
        "the limit falls under a slow model",
        Duration::from_secs(10),
        || l.limit() <= fast / 3,
    )
    .await;
    let slow = limiter.limit();
    assert!(slow >= 2, "never below min_limit");
    assert!(shed.load(Ordering::SeqCst) > 0, "over the limit: shed");

    install(&s, "m", None);
    let l = limiter.clone();
    eventually(
        "the limit recovers once the model is fast",
        Duration::from_secs(15),
        || l.limit() >= slow * 2 + 4,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert!(ok.load(Ordering::SeqCst) > 0);
    let text = s.metrics_text().await;
    assert!(
        text.contains("greenbelt_concurrency_limit{model=\"m\"}"),
        "{text}"
    );
    assert!(
        text.contains("greenbelt_overload_shed_total{model=\"m\",reason=\"concurrency_limit\",priority=\"normal\"}"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_sheds_before_normal_and_high() {
    // A fixed limit of 10: low may hold 5, normal 9, high 10.
    let mut s = start(
        |_| {},
        "allow_fault_injection = true\ncompute_threads = 16\n[server.concurrency]\nalgorithm = \"gradient2\"\ninitial_limit = 10\nmin_limit = 10\nmax_limit = 10\n",
    )
    .await;
    install(&s, "m", Some(Duration::from_millis(600)));
    let url = format!("{}/v2/models/m/infer", s.http);
    let held: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (s.client.clone(), url.clone());
            tokio::spawn(async move { infer(&client, &url, Some("normal")).await.0 })
        })
        .collect();
    let limiter = s.state.limiters.get("m").unwrap();
    let l = limiter.clone();
    eventually("six requests in flight", Duration::from_secs(5), || {
        l.inflight() == 6
    })
    .await;
    let (low, normal, high) = tokio::join!(
        infer(&s.client, &url, Some("low")),
        infer(&s.client, &url, Some("normal")),
        infer(&s.client, &url, Some("high")),
    );
    assert_eq!(low.0, 503, "{}", low.2);
    assert_eq!(low.1.as_deref(), Some("1"), "503 carries Retry-After");
    assert!(
        low.2.contains("concurrency limit for low priority"),
        "{}",
        low.2
    );
    assert_eq!(normal.0, 200, "{}", normal.2);
    assert_eq!(high.0, 200, "{}", high.2);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    let (status, _, body) = infer(&s.client, &url, Some("urgent")).await;
    assert_eq!(
        status, 400,
        "an unknown priority is the client's mistake: {body}"
    );
    let text = s.metrics_text().await;
    assert!(
        text.contains("greenbelt_overload_shed_total{model=\"m\",reason=\"concurrency_limit\",priority=\"low\"} 1"),
        "{text}"
    );
    assert!(!text.contains("priority=\"normal\"} 1"), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_queue_budget_is_shed_before_compute() {
    let mut s = start(
        |_| {},
        "allow_fault_injection = true\ncompute_threads = 1\nqueue_budget_ms = 100\n",
    )
    .await;
    install(&s, "m", Some(Duration::from_millis(400)));
    let url = format!("{}/v2/models/m/infer", s.http);
    let started = tokio::time::Instant::now();
    let answers: Vec<_> = (0..3)
        .map(|i| {
            let (client, url) = (s.client.clone(), url.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30 * i)).await;
                let t = tokio::time::Instant::now();
                let a = infer(&client, &url, None).await;
                (a, t.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for a in answers {
        let ((status, retry, body), took) = a.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert!(body.contains("queue budget"), "{body}");
                assert!(
                    took < Duration::from_millis(350),
                    "shed when the budget ran out, not after compute ({took:?})"
                );
            }
            other => panic!("status {other}: {body}"),
        }
    }
    assert_eq!((ok, shed), (1, 2));
    assert!(started.elapsed() < Duration::from_millis(1200));
    let text = s.metrics_text().await;
    assert!(
        text.contains("greenbelt_compute_duration_seconds_count{model=\"m\",version=\"1\"} 1"),
        "only the admitted request was computed: {text}"
    );
    assert!(
        text.contains(
            "greenbelt_overload_shed_total{model=\"m\",reason=\"queue_time\",priority=\"normal\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("greenbelt_shed_total{reason=\"queue_time\"} 2"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_answering_not_ready_then_drains_within_its_timeout() {
    let mut s = start(
        |_| {},
        "allow_fault_injection = true\nshutdown_delay_ms = 600\ndrain_timeout_ms = 300\n",
    )
    .await;
    install(&s, "m", None);
    install(&s, "slow", Some(Duration::from_secs(5)));
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    let url = format!("{}/v2/models/m/infer", s.http);
    let signalled = tokio::time::Instant::now();
    s.signal_stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body) = s.get("/v2/health/ready").await;
    assert_eq!(status, 503, "not ready during the delay: {body}");
    assert!(
        body["reason"].as_str().unwrap().contains("shutdown_delay"),
        "{body}"
    );
    assert_eq!(infer(&s.client, &url, None).await.0, 200, "still serving");
    // A request that will not finish in the drain timeout.
    let stuck = {
        let (client, url) = (s.client.clone(), format!("{}/v2/models/slow/infer", s.http));
        tokio::spawn(async move { client.post(url).json(&logreg_request(1)).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        infer(&s.client, &url, None).await.0,
        200,
        "still serving at 350 ms"
    );
    s.stop().await;
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "served out the delay ({took:?})"
    );
    assert!(
        took < Duration::from_millis(600 + 300 + 700),
        "the drain does not overrun its timeout ({took:?})"
    );
    let stuck = stuck.await.unwrap();
    assert!(
        stuck.as_ref().map_or(true, |r| r.status() != 200),
        "the stuck request was cut, not answered: {stuck:?}"
    );
    assert!(
        reqwest::Client::new()
            .get(format!("{}/v2/health/live", s.http))
            .send()
            .await
            .is_err(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn readiness_waits_for_startup_models_and_deployments_and_drops_when_one_fails() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            let bad = r.join("broken/1");
            std::fs::create_dir_all(&bad).unwrap();
            std::fs::write(bad.join("model.onnx"), b"not a model").unwrap();
        },
        "[[deployments]]\nname = \"dep\"\n",
    )
    .await;
    let reason = |v: &Value| v["reason"].as_str().unwrap_or_default().to_string();
    let (status, body) = s.get("/v2/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        reason(&body).contains("broken") && reason(&body).contains("dep"),
        "{body}"
    );
    assert!(!reason(&body).contains("logreg"), "{body}");
    // A model that serves is still served while the server is not ready.
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);

    // The deployment's version arrives; the broken model is fixed.
    install(&s, "dep", None);
    copy_model(s.repo.path(), "logreg", 1, "broken", 1);
    let (status, body) = s
        .post("/v2/repository/models/broken/load", &serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get("/v2/health/ready").await;
    assert_eq!((status, &body), (200, &serde_json::json!({"ready": true})));

    // A deployment that must serve loses its only version: not ready.
    s.state
        .repository
        .install("dep", ModelConfig::default(), BTreeMap::new(), None);
    let (status, body) = s.get("/v2/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(reason(&body).contains("dep"), "{body}");
    install(&s, "dep", None);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);

    // An operator's unload is deliberate: it does not fail readiness.
    let (status, body) = s
        .post(
            "/v2/repository/models/logreg/unload",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_takes_the_priority_from_metadata_and_sheds_unavailable() {
    use greenbelt_serve::grpc::pb;
    use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    // A limit of 2: low and normal may hold 1, high 2.
    let mut s = start(
        |_| {},
        "allow_fault_injection = true\ncompute_threads = 4\n[server.concurrency]\nalgorithm = \"gradient2\"\ninitial_limit = 2\nmin_limit = 2\nmax_limit = 2\n",
    )
    .await;
    install(&s, "m", Some(Duration::from_millis(500)));
    let held = {
        let (client, url) = (s.client.clone(), format!("{}/v2/models/m/infer", s.http));
        tokio::spawn(async move { infer(&client, &url, Some("normal")).await.0 })
    };
    let limiter = s.state.limiters.get("m").unwrap();
    let l = limiter.clone();
    eventually("one request in flight", Duration::from_secs(5), || {
        l.inflight() == 1
    })
    .await;
    let row: Vec<u8> = logreg_row().iter().flat_map(|x| x.to_le_bytes()).collect();
    let request = |priority: &str| {
        let mut r = tonic::Request::new(pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 20],
                parameters: Default::default(),
                contents: None,
            }],
            raw_input_contents: vec![row.clone().into()],
            ..Default::default()
        });
        r.metadata_mut()
            .insert("x-greenbelt-priority", priority.parse().unwrap());
        r
    };
    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let e = c.model_infer(request("low")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("low priority"), "{e:?}");
    let e = c.model_infer(request("urgent")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(c.model_infer(request("high")).await.is_ok());
    assert_eq!(held.await.unwrap(), 200);
    s.stop().await;
}
