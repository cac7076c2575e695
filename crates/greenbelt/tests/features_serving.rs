//! `greenbelt serve` with a feature store: a model that declares a feature
//! service answers requests that carry entity keys, with the vector read
//! from the online store in the service's order, per-feature statuses in a
//! `feature_status` output, a 400 naming the entity and feature when one is
//! missing (or NaN when the model allows it), freshness gauges and the
//! scheduled canary on /metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The fixture model takes 20 FP32 features.
const WIDTH: usize = 20;

fn features_toml() -> String {
    let feats: Vec<String> = (0..WIDTH)
        .map(|i| format!("{{ name = \"f{i:02}\", type = \"float64\" }}"))
        .collect();
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

# The first 15 features come from one view, the last 5 from another with a
# one-hour TTL, so the model's vector crosses views.
[[feature_view]]
name = "profile"
entities = ["user"]
source = "events"
ttl = "30days"
freshness_sla = "1h"
features = [{}]

[feature_view.contract]
policy = "quarantine"
rules = [{{ check = "range", column = "f00", min = -3.0, max = 3.0 }}]

[[feature_view]]
name = "recent"
entities = ["user"]
source = "events"
ttl = "1h"
features = [{}]

[[feature_service]]
name = "scoring"
features = ["profile:*", "recent:*"]
"#,
        feats[..15].join(", "),
        feats[15..].join(", ")
    )
}

fn write_project(dir: &Path, port: u16) {
    let header: Vec<String> = (0..WIDTH).map(|i| format!("f{i:02}")).collect();
    std::fs::write(
        dir.join("events.csv"),
        format!(
            "user_id,event_ts,{}\nu0,2026-01-01T00:00:00Z,{}\n",
            header.join(","),
            vec!["0"; WIDTH].join(",")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("features.toml"), features_toml()).unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    for (model, missing) in [("scorer", "error"), ("lenient", "nan")] {
        let d = dir.join(format!("models/{model}/1"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&fixture, d.join("model.onnx")).unwrap();
        std::fs::write(
            dir.join(format!("models/{model}/config.toml")),
            format!(
                "backend = \"auto\"\n[features]\nservice = \"scoring\"\nmissing = \"{missing}\"\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("greenbelt.toml"),
        format!(
            "[server]\nhttp_addr = \"127.0.0.1:{port}\"\ngrpc_addr = \"\"\n[telemetry]\nlog_requests = false\n[repository]\npath = \"models\"\n[registry]\nurl = \"sqlite://registry.db\"\nartifacts = \"artifacts\"\n[features]\ndefinitions = \"features.toml\"\ncanary_interval = \"200ms\"\nfreshness_interval = \"200ms\"\n"
        ),
    )
    .unwrap();
}

mod common;
use common::{Kill as Serving, free_port};

fn row(seed: u64) -> Vec<f64> {
    (0..WIDTH)
        .map(|i| ((seed * 31 + i as u64 * 17) % 61) as f64 / 10.0 - 3.0)
        .collect()
}

fn ts(offset_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = now + offset_s;
    // RFC 3339 (UTC) without a date crate.
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
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

async fn push(
    c: &reqwest::Client,
    base: &str,
    view: &str,
    users: &[&str],
    event_offset_s: i64,
    cols: std::ops::Range<usize>,
) {
    let mut df = serde_json::Map::new();
    df.insert("user_id".into(), json!(users));
    df.insert(
        "event_timestamp".into(),
        json!(vec![ts(event_offset_s); users.len()]),
    );
    for i in cols {
        let vals: Vec<f64> = (0..users.len()).map(|u| row(u as u64 + 1)[i]).collect();
        df.insert(format!("f{i:02}"), json!(vals));
    }
    let r = c
        .post(format!("{base}/features/push"))
        .json(&json!({"feature_view": view, "df": df}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn infer(c: &reqwest::Client, base: &str, model: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(format!("{base}/v2/models/{model}/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn keys(users: &[&str]) -> Value {
    json!({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [users.len()], "data": users}]})
}

fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {resp}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_keys_are_served_from_the_online_store() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_project(dir.path(), port);
    let child = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir.path())
        .env("GREENBELT_LOG", "warn")
        .args(["serve", "--config", "greenbelt.toml"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serving = Serving(child);
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut up = false;
    for _ in 0..300 {
        if let Ok(r) = c.get(format!("{base}/v2/health/ready")).send().await
            && r.status() == 200
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server never became ready");

    // u1 and u2 have every feature fresh; u3 has only the profile view.
    push(&c, &base, "profile", &["u1", "u2", "u3"], -60, 0..15).await;
    push(&c, &base, "recent", &["u1", "u2"], -60, 15..20).await;

    // The same vectors sent directly give the same answer, row by row.
    let direct: Vec<f32> = [1u64, 2]
        .iter()
        .flat_map(|s| row(*s))
        .map(|x| x as f32)
        .collect();
    let (status, want) = infer(
        &c,
        &base,
        "scorer",
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, WIDTH], "data": direct}]}),
    )
    .await;
    assert_eq!(status, 200, "{want}");
    let (status, got) = infer(&c, &base, "scorer", keys(&["u1", "u2"])).await;
    assert_eq!(status, 200, "{got}");
    for o in want["outputs"].as_array().unwrap() {
        assert_eq!(
            output(&got, o["name"].as_str().unwrap())["data"],
            o["data"],
            "{got}"
        );
    }
    let st = output(&got, "feature_status");
    assert_eq!(st["shape"], json!([2, WIDTH]));
    assert!(
        st["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "PRESENT"),
        "{st}"
    );
    // Asking for named outputs hides the statuses unless named too.
    let mut named = keys(&["u1"]);
    named["outputs"] = json!([{"name": "probabilities"}]);
    let (status, r) = infer(&c, &base, "scorer", named.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outputs"].as_array().unwrap().len(), 1, "{r}");
    named["outputs"] = json!([{"name": "probabilities"}, {"name": "feature_status"}]);
    let (status, r) = infer(&c, &base, "scorer", named).await;
    assert_eq!(
        (status, r["outputs"].as_array().unwrap().len()),
        (200, 2),
        "{r}"
    );

    // Missing features: a clear 400 naming the row, entity and feature ...
    let (status, err) = infer(&c, &base, "scorer", keys(&["u1", "u3"])).await;
    assert_eq!(status, 400, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("row 1")
            && msg.contains("u3")
            && msg.contains("recent:f15")
            && msg.contains("NOT_FOUND")
            && msg.contains("missing = \"nan\""),
        "{msg}"
    );
    let (status, err) = infer(&c, &base, "scorer", keys(&["nobody"])).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("profile:f00"),
        "{err}"
    );
    // ... or NaN with the status when the model allows it.
    let (status, r) = infer(&c, &base, "lenient", keys(&["u3"])).await;
    assert_eq!(status, 200, "{r}");
    let statuses = output(&r, "feature_status")["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(statuses[14], "PRESENT");
    assert_eq!(statuses[15], "NOT_FOUND");

    // TTL on read: a "recent" value older than its one-hour TTL.
    push(&c, &base, "profile", &["u4"], -60, 0..15).await;
    push(&c, &base, "recent", &["u4"], -7200, 15..20).await;
    let (status, r) = infer(&c, &base, "lenient", keys(&["u4"])).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        output(&r, "feature_status")["data"][19],
        "OUTSIDE_MAX_AGE",
        "{r}"
    );
    let (status, err) = infer(&c, &base, "scorer", keys(&["u4"])).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("OUTSIDE_MAX_AGE"),
        "{err}"
    );

    // A push replaces the cached value: the next request sees it.
    let (_, before) = infer(&c, &base, "scorer", keys(&["u2"])).await;
    push(&c, &base, "profile", &["u2", "u1"], -30, 0..15).await;
    let (_, after) = infer(&c, &base, "scorer", keys(&["u2"])).await;
    assert_ne!(
        output(&before, "probabilities")["data"],
        output(&after, "probabilities")["data"],
        "u2's profile changed (it now holds u1's old values)"
    );

    // Bad keys: wrong name, wrong type, ragged.
    let (status, err) = infer(
        &c,
        &base,
        "scorer",
        json!({"inputs": [{"name": "userid", "datatype": "BYTES", "shape": [1], "data": ["u1"]}]}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("\"user_id\" is missing"),
        "{err}"
    );
    let (status, err) = infer(
        &c,
        &base,
        "scorer",
        json!({"inputs": [{"name": "user_id", "datatype": "FP32", "shape": [1], "data": [1.0]}]}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("BYTES"), "{err}");

    // A feature tensor sent directly must keep the features' contracts.
    let mut bad = row(1);
    bad[0] = 10.0;
    let (status, err) = infer(
        &c,
        &base,
        "scorer",
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, WIDTH], "data": bad}]}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("profile:f00") && msg.contains("range") && msg.contains("row 0"),
        "{msg}"
    );

    // Freshness gauges and the canary on /metrics.
    let mut text = String::new();
    for _ in 0..100 {
        // as Prometheus scrapes: OpenMetrics, which ends with # EOF
        text = c
            .get(format!("{base}/metrics"))
            .header("accept", "application/openmetrics-text;version=1.0.0")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("greenbelt_feature_canary_lag_seconds{view=\"profile\"}")
            && text.contains("greenbelt_feature_view_age_seconds")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("greenbelt_feature_canary_success{view=\"profile\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# HELP greenbelt_feature_view_age_seconds"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "the exposition still ends with # EOF"
    );
}
