//! Kubernetes-grade lifecycle of a whole app (registry, deployment
//! controller): readiness stays false until the deployment's version is
//! loaded from the registry, and after a stop signal the app keeps
//! answering (not ready) for `shutdown_delay_ms` before it drains. Also
//! open-loop load against it: a fixed arrival rate, every request counted.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::App;
use greenbelt_app::loadgen::{self, OpenOptions, Protocol, Target};
use greenbelt_serve::Config;
use serde_json::{Value, json};

fn write_config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\nshutdown_delay_ms = 400\ndrain_timeout_ms = 500\n\
         [telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [registry]\nurl = \"sqlite://{d}/registry.db\"\nartifacts = \"{d}/artifacts\"\npoll_interval_ms = 50\n\
         [[deployments]]\nname = \"scorer\"\nalias = \"champion\"\n",
        d = dir.display()
    );
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn infer(client: &reqwest::Client, base: &str) -> u16 {
    let row: Vec<f32> = (0..20).map(|i| i as f32 / 10.0).collect();
    client
        .post(format!("{base}/v2/models/scorer/infer"))
        .json(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_deployment_and_shutdown_serves_out_its_delay() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let registry = greenbelt_app::registry::open(&config, None).await.unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    let v = greenbelt_app::registry::register_file(
        &registry,
        &config,
        "scorer".into(),
        &fixture,
        json!({}),
        json!({}),
        "test".into(),
    )
    .await
    .unwrap();

    let running = App::build(config).await.unwrap().spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let ready = format!("{base}/v2/health/ready");
    let (status, body) = get(&client, &ready).await;
    assert_eq!(status, 503, "no champion yet: {body}");
    assert!(
        body["reason"].as_str().unwrap().contains("scorer"),
        "{body}"
    );

    registry
        .set_alias("scorer", "champion", v.version, "test", "release")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if get(&client, &ready).await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready once the controller loaded the champion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(infer(&client, &base).await, 200);

    // Open-loop load: 200 req/s for 1 s, every due request sent or counted.
    let target = Target {
        rest_url: base.clone(),
        grpc_url: String::new(),
        protocol: Protocol::Rest,
        model: "scorer".into(),
        timeout: Duration::from_secs(5),
    };
    let specs = loadgen::model_inputs(&client, &base, "scorer")
        .await
        .unwrap();
    let inputs: Vec<_> = specs
        .iter()
        .map(|s| loadgen::make_input(s, 1).unwrap())
        .collect();
    let r = loadgen::run_open(
        &target,
        std::slice::from_ref(&inputs),
        OpenOptions {
            rate: 200.0,
            max_outstanding: 64,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
            stop: None,
            keep_samples: false,
        },
    )
    .await
    .unwrap();
    let sent = r.ok + r.errors + r.dropped;
    assert!(
        (190..=210).contains(&sent),
        "the arrival rate is kept: {sent}"
    );
    assert_eq!((r.errors, r.shed), (0, 0), "{:?}", r.first_error);

    // Stop: not ready, still answering for shutdown_delay_ms, then drained.
    let stopped = tokio::time::Instant::now();
    let stop = tokio::spawn(running.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = get(&client, &ready).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        infer(&client, &base).await,
        200,
        "still serving during the delay"
    );
    tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .expect("the app stops in bounded time")
        .unwrap()
        .unwrap();
    assert!(stopped.elapsed() >= Duration::from_millis(400));
    assert!(
        client.get(&ready).send().await.is_err(),
        "nothing listens any more"
    );
}
