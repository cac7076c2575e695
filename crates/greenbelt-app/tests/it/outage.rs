//! The server and a failing online store, through the real HTTP server:
//! `App::build` starts while Redis is down (nothing listens on its port),
//! serves a model that needs no features, serves a model whose feature
//! service falls back to defaults (flagged `x-greenbelt-degraded` and
//! `DEFAULT` statuses, over REST and gRPC) and refuses one without a
//! fallback with a 503; and,
//! with a `redis-server` the test starts, kills and restarts, a model with
//! `last_value` keeps answering (STALE, 0 failures) while the breaker opens,
//! then half-opens, closes and serves fresh values once Redis is back.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::App;
use greenbelt_serve::Config;
use greenbelt_serve::grpc::pb;
use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::redis_proc::{self, RedisProc};

const WIDTH: usize = 20;

fn write_project(dir: &Path, online: &str) -> Config {
    let feats: Vec<String> = (0..WIDTH)
        .map(|i| format!("{{ name = \"f{i:02}\", type = \"float64\", default = 0.5 }}"))
        .collect();
    std::fs::write(
        dir.join("features.toml"),
        format!(
            r#"[store]
offline = "offline"
online = "{online}"
online_timeout = "200ms"
online_cache_ttl = "0s"
[store.online_breaker]
sliding_window_size = 8
minimum_number_of_calls = 4
wait_duration_in_open = "1s"
permitted_calls_in_half_open = 2

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
name = "last"
features = ["profile:*"]
fallback = "last_value"

[[feature_service]]
name = "dflt"
features = ["profile:*"]
fallback = "default"

[[feature_service]]
name = "strict"
features = ["profile:*"]
"#,
            feats.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("events.csv"), "user_id,event_ts\n").unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    for (model, service) in [
        ("plain", None),
        ("with_last", Some("last")),
        ("with_default", Some("dflt")),
        ("strict", Some("strict")),
    ] {
        let d = dir.join(format!("models/{model}/1"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&fixture, d.join("model.onnx")).unwrap();
        let features = service.map_or(String::new(), |s| {
            format!("[features]\nservice = \"{s}\"\nmissing = \"error\"\n")
        });
        std::fs::write(
            dir.join(format!("models/{model}/config.toml")),
            format!("backend = \"auto\"\n{features}"),
        )
        .unwrap();
    }
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [features]\ndefinitions = \"{d}/features.toml\"\n",
        d = dir.display()
    );
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

struct Answer {
    status: u16,
    degraded: Option<String>,
    body: Value,
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> Answer {
    let r = tokio::time::timeout(Duration::from_secs(10), client.post(url).json(&body).send())
        .await
        .expect("an answer within 10s")
        .unwrap();
    let status = r.status().as_u16();
    let degraded = r
        .headers()
        .get("x-greenbelt-degraded")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Answer {
        status,
        degraded,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

fn by_key(user: &str) -> Value {
    json!({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]}]})
}

fn statuses(body: &Value) -> Vec<String> {
    body["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "feature_status"))
        .and_then(|t| t["data"].as_array())
        .map(|d| {
            d.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_server_starts_while_redis_is_down_and_serves_what_it_can() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let mut config = write_project(dir.path(), &format!("redis://127.0.0.1:{}", free_port()));
    config.server.grpc_addr = "127.0.0.1:0".into();
    let app = tokio::time::timeout(Duration::from_secs(20), App::build(config))
        .await
        .expect("start-up does not wait for Redis")
        .unwrap();
    let running = app.spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{base}/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // A model that needs no features serves normally.
    let a = post(
        &client,
        &format!("{base}/v2/models/plain/infer"),
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, WIDTH], "data": vec![0.1; WIDTH]}]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.degraded, None);

    // Defaults answer, flagged.
    let a = post(
        &client,
        &format!("{base}/v2/models/with_default/infer"),
        by_key("u1"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.degraded.as_deref(), Some("features"));
    assert_eq!(statuses(&a.body), vec!["DEFAULT".to_string(); WIDTH]);

    // The same over gRPC: the degraded flag is response metadata.
    let mut grpc =
        GrpcInferenceServiceClient::connect(format!("http://{}", running.grpc_addr().unwrap()))
            .await
            .unwrap();
    let key = b"u1";
    let mut raw = (key.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(key);
    let reply = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: "with_default".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "user_id".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                parameters: Default::default(),
                contents: None,
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        reply
            .metadata()
            .get("x-greenbelt-degraded")
            .and_then(|v| v.to_str().ok()),
        Some("features")
    );

    // No fallback: a clear 503, not a 500.
    let a = post(
        &client,
        &format!("{base}/v2/models/strict/infer"),
        by_key("u1"),
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("online"),
        "{}",
        a.body
    );

    // Once the breaker is open, readiness says which models can serve.
    for _ in 0..8 {
        let a = post(
            &client,
            &format!("{base}/v2/models/strict/infer"),
            by_key("u1"),
        )
        .await;
        assert_eq!(a.status, 503, "{}", a.body);
    }
    let ready = |model: &str| {
        let url = format!("{base}/v2/models/{model}/ready");
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready("strict").await, 503);
    assert_eq!(ready("with_default").await, 200);
    assert_eq!(ready("with_last").await, 200);
    assert_eq!(ready("plain").await, 200);

    // The breaker and the degraded reads (REST and gRPC: 2) are visible.
    let s: Value = client
        .get(format!("{base}/features/online/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(s["read"]["counts"]["failed"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["degraded_reads"]["dflt"]["reads"].as_u64().unwrap() >= 1,
        "{s}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("greenbelt_feature_degraded_reads_total{service=\"dflt\"} 2") {
            assert!(
                text.contains(
                    "greenbelt_feature_store_breaker_state{store=\"online\",op=\"read\"}"
                )
            );
            break;
        }
        assert!(Instant::now() < deadline, "metrics not exported:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), running.stop())
        .await
        .expect("the app stops in bounded time")
        .unwrap();
}

#[tokio::test]
async fn killing_and_restarting_redis_under_load_fails_no_prediction() {
    if !redis_proc::available() {
        return;
    }
    let mut redis = RedisProc::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_project(dir.path(), &redis.url());
    let app = App::build(config).await.unwrap();
    let running = app.spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let push = |v: f64| {
        let mut df = serde_json::Map::new();
        df.insert("user_id".into(), json!(["u1"]));
        df.insert(
            "event_timestamp".into(),
            json!([greenbelt_features::time::format_ts(
                greenbelt_features::time::now_us()
            )]),
        );
        for i in 0..WIDTH {
            df.insert(format!("f{i:02}"), json!([v]));
        }
        json!({"feature_view": "profile", "df": df})
    };
    let a = post(&client, &format!("{base}/features/push"), push(0.25)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let infer = format!("{base}/v2/models/with_last/infer");
    let a = post(&client, &infer, by_key("u1")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(statuses(&a.body), vec!["PRESENT".to_string(); WIDTH]);
    assert_eq!(a.degraded, None);

    let breaker = |client: reqwest::Client| {
        let url = format!("{base}/features/online/status");
        async move {
            let s: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            s["read"]["state"].as_str().unwrap_or("?").to_string()
        }
    };
    redis.kill();
    let killed = Instant::now();
    let mut opened_after = None;
    let (mut ok, mut failed) = (0, 0);
    while killed.elapsed() < Duration::from_secs(3) {
        let a = post(&client, &infer, by_key("u1")).await;
        if a.status == 200 {
            ok += 1;
            assert_eq!(a.degraded.as_deref(), Some("features"));
            assert_eq!(statuses(&a.body), vec!["STALE".to_string(); WIDTH]);
        } else {
            failed += 1;
            eprintln!("failed: {} {}", a.status, a.body);
        }
        if opened_after.is_none() && breaker(client.clone()).await == "open" {
            opened_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        failed, 0,
        "predictions failed while Redis was down ({ok} answered)"
    );
    let opened_after = opened_after.expect("the breaker opens");
    assert!(opened_after < Duration::from_secs(2), "{opened_after:?}");

    redis.restart().await;
    // The restarted Redis is empty: push the value to read back. The first
    // push may meet the connection's last failed reconnect (a 503 that
    // starts a new one); a client retries.
    let pushed = Instant::now();
    loop {
        let a = post(&client, &format!("{base}/features/push"), push(0.75)).await;
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(pushed.elapsed() < Duration::from_secs(10), "{}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = Instant::now();
    let mut seen = Vec::new();
    loop {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "not fresh within 15s of Redis coming back; breaker states seen: {seen:?}"
        );
        let a = post(&client, &infer, by_key("u1")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let state = breaker(client.clone()).await;
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if a.degraded.is_none() {
            assert_eq!(statuses(&a.body), vec!["PRESENT".to_string(); WIDTH]);
            if state == "closed" {
                break;
            }
        } else {
            assert_eq!(statuses(&a.body), vec!["STALE".to_string(); WIDTH]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fresh: the value pushed after the restart.
    let a = post(
        &client,
        &format!("{base}/features/online"),
        json!({"entities": {"user_id": ["u1"]}, "feature_service": "last"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.degraded, None);
    assert_eq!(a.body["results"][1]["values"], json!([0.75]));
    assert_eq!(a.body["results"][1]["statuses"], json!(["PRESENT"]));
    println!(
        "outage: {ok} predictions answered, breaker opened after {opened_after:?}; after restart: {seen:?}"
    );
    tokio::time::timeout(Duration::from_secs(20), running.stop())
        .await
        .expect("the app stops in bounded time")
        .unwrap();
}
