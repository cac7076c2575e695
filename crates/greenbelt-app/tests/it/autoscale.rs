//! The autoscaler through a live server: a deployment under real load
//! (open-loop, 400 requests per second against a target of 20 per
//! replica) makes `greenbelt_autoscaler_desired_replicas` rise, on
//! `/metrics` and `GET /admin/autoscaler`, from the app's own evaluation
//! task; the deployment's latency `[[slo]]` becomes its latency objective.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::App;
use greenbelt_app::loadgen::{self, OpenOptions, Protocol, Target};
use greenbelt_serve::Config;
use serde_json::{Value, json};

fn write_config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n\
         [telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [registry]\nurl = \"sqlite://{d}/registry.db\"\nartifacts = \"{d}/artifacts\"\npoll_interval_ms = 50\n\
         [autoscale]\ninterval = \"100ms\"\n\
         [[slo]]\ndeployment = \"scorer\"\nkind = \"latency\"\nobjective = 0.99\nthreshold_ms = 25.6\n\
         [[deployments]]\nname = \"scorer\"\nalias = \"champion\"\n\
         [deployments.autoscale]\nmetric = \"rps\"\ntarget = 20\ntarget_utilization = 1.0\n\
         max_replicas = 50\nstable_window = \"2s\"\npanic_window = \"400ms\"\n",
        d = dir.display()
    );
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn desired_on_metrics(client: &reqwest::Client, base: &str) -> Option<f64> {
    let text = metrics_text(client, base).await;
    text.lines()
        .find(|l| l.starts_with("greenbelt_autoscaler_desired_replicas{deployment=\"scorer\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A server running `config`, whose deployment `scorer` serves the logreg
/// fixture registered with `tags` and aliased `champion`; ready, with a
/// REST load target and one row of its inputs.
pub(crate) struct Scorer {
    pub running: greenbelt_app::Running,
    pub base: String,
    pub client: reqwest::Client,
    pub target: Target,
    pub inputs: Vec<greenbelt_core::Tensor>,
}

pub(crate) async fn start_scorer(config: Config, tags: Value) -> Scorer {
    let registry = greenbelt_app::registry::open(&config, None).await.unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    let v = greenbelt_app::registry::register_file(
        &registry,
        &config,
        "scorer".into(),
        &fixture,
        json!({}),
        tags,
        "test".into(),
    )
    .await
    .unwrap();
    registry
        .set_alias("scorer", "champion", v.version, "test", "release")
        .await
        .unwrap();
    let running = App::build(config).await.unwrap().spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{base}/v2/health/ready"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let inputs = specs
        .iter()
        .map(|s| loadgen::make_input(s, 1).unwrap())
        .collect();
    Scorer {
        running,
        base,
        client,
        target,
        inputs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_load_makes_desired_replicas_rise() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let Scorer {
        running,
        base,
        client,
        target,
        inputs,
    } = start_scorer(config, json!({})).await;
    // Idle: the recommender asks for the minimum.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let idle = get_json(&client, &format!("{base}/admin/autoscaler")).await;
    let scorer = &idle["deployments"]["scorer"];
    assert_eq!(scorer["desired_replicas"], 1, "{idle}");
    assert_eq!(scorer["metric"], "rps", "{idle}");
    assert_eq!(scorer["effective_target"], 20.0, "{idle}");
    assert_eq!(scorer["latency_slo_ms"], 25.6, "{idle}");
    assert_eq!(idle["interval_s"], 0.1, "{idle}");
    assert_eq!(desired_on_metrics(&client, &base).await, Some(1.0));

    let load = tokio::spawn(async move {
        loadgen::run_open(
            &target,
            std::slice::from_ref(&inputs),
            OpenOptions {
                rate: 400.0,
                max_outstanding: 64,
                warmup: Duration::ZERO,
                duration: Duration::from_millis(1500),
                stop: None,
                keep_samples: false,
            },
        )
        .await
        .unwrap()
    });
    // Within the load: 400 rps / 20 per replica = 20 wanted (panic mode
    // takes it from the 400 ms window); a loaded 2-core machine may fall
    // short of the rate, so ask for well above the idle 1.
    let mut peak_seen = 0.0f64;
    let mut report = Value::Null;
    let until = tokio::time::Instant::now() + Duration::from_millis(1400);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(150)).await;
        report = get_json(&client, &format!("{base}/admin/autoscaler")).await;
        let d = report["deployments"]["scorer"]["desired_replicas"]
            .as_f64()
            .unwrap_or(0.0);
        peak_seen = peak_seen.max(d);
        if let Some(m) = desired_on_metrics(&client, &base).await {
            peak_seen = peak_seen.max(m);
        }
    }
    let r = load.await.unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert!(
        peak_seen >= 8.0,
        "desired replicas rose under load: {peak_seen}, last {report}"
    );
    let scorer = &report["deployments"]["scorer"];
    assert!(scorer["observed_rps"].as_f64().unwrap() > 100.0, "{report}");
    assert!(
        scorer["observed_concurrency"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(scorer["latency_ratio"].is_number(), "{report}");
    let metrics = metrics_text(&client, &base).await;
    for name in [
        "greenbelt_autoscaler_observed_rps{deployment=\"scorer\"}",
        "greenbelt_autoscaler_observed_concurrency{deployment=\"scorer\"}",
        "greenbelt_autoscaler_panic_mode{deployment=\"scorer\"}",
        "greenbelt_autoscaler_current_replicas{deployment=\"scorer\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    running.stop().await.unwrap();
}
