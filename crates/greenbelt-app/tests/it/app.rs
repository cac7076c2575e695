//! `App::build` against a real project directory: the feature store opens
//! before models load, so a model whose `[features]` service does not fit
//! its input is refused at load (not ready, with a reason naming the
//! service and the widths) instead of failing requests with a 500; the
//! app serves the `/features` API and stops its background tasks.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::App;
use greenbelt_serve::Config;
use greenbelt_serve::repository::ModelState;
use serde_json::{Value, json};

/// The fixture model takes 20 FP32 features.
const WIDTH: usize = 20;

fn write_project(dir: &Path) -> Config {
    let feats: Vec<String> = (0..WIDTH)
        .map(|i| format!("{{ name = \"f{i:02}\", type = \"float64\" }}"))
        .collect();
    std::fs::write(
        dir.join("features.toml"),
        format!(
            r#"[store]
offline = "offline"
online = "online.redb"

[[entity]]
name = "user"
join_keys = [{{ name = "user_id", type = "string" }}]

[[source]]
name = "events"
path = "events.csv"
event_timestamp = "event_ts"

[[feature_view]]
name = "profile"
entities = ["user"]
source = "events"
features = [{}]

[[feature_service]]
name = "all"
features = ["profile:*"]

[[feature_service]]
name = "short"
features = ["profile:f00", "profile:f01", "profile:f02"]
"#,
            feats.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("events.csv"), "user_id,event_ts\n").unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    for (model, service) in [("fits", "all"), ("misfit", "short")] {
        let d = dir.join(format!("models/{model}/1"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&fixture, d.join("model.onnx")).unwrap();
        std::fs::write(
            dir.join(format!("models/{model}/config.toml")),
            format!("backend = \"auto\"\n[features]\nservice = \"{service}\"\n"),
        )
        .unwrap();
    }
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [features]\ndefinitions = \"{d}/features.toml\"\ncanary_interval = \"200ms\"\nfreshness_interval = \"200ms\"\n",
        d = dir.display()
    );
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_width_mismatch_is_refused_at_load_not_at_request_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_project(dir.path());
    let app = App::build(config).await.unwrap();
    let index = app.state().repository.index(false);
    let state = |name: &str| index.iter().find(|e| e.name == name).unwrap().clone();
    assert_eq!(state("fits").state, ModelState::Ready);
    let misfit = state("misfit");
    assert_eq!(misfit.state, ModelState::Unavailable);
    assert!(
        misfit.reason.contains("service \"short\" has 3 features")
            && misfit.reason.contains("[-1, 20]")
            && misfit.reason.contains("[-1, 3]"),
        "{}",
        misfit.reason
    );
    assert_eq!(
        app.tasks(),
        8,
        "freshness gauges, canary, the online store's breaker metrics, the autoscaler, the drift windows, the cost ledger and its scans of the offline and online stores"
    );

    let running = app.spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let (status, body) = post(
        &client,
        &format!("{base}/v2/models/misfit/infer"),
        json!({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]}]}),
    )
    .await;
    assert_ne!(status, 500, "{body}");
    assert!(
        (400..500).contains(&status) || status == 503,
        "{status} {body}"
    );
    // The model that fits takes entity keys; an unknown user is a 400
    // naming it, not a 500.
    let (status, body) = post(
        &client,
        &format!("{base}/v2/models/fits/infer"),
        json!({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["nobody"]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nobody"), "{body}");
    // The /features API is mounted.
    let (status, body) = post(
        &client,
        &format!("{base}/features/online"),
        json!({"entities": {"user_id": ["u1"]}, "feature_service": "short"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["statuses"], json!(["NOT_FOUND"]));

    tokio::time::timeout(Duration::from_secs(20), running.stop())
        .await
        .expect("the app stops in bounded time")
        .unwrap();
}

#[tokio::test]
async fn a_feature_service_a_deployment_names_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = write_project(dir.path());
    config.features.definitions = Some(dir.path().join("missing.toml"));
    let e = App::build(config).await.err().unwrap().to_string();
    assert!(e.contains("missing.toml"), "{e}");
}
